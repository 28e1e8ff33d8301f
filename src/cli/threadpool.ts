/**
 * Sizes libuv's thread pool before anything uses it (imported first by main.ts; ES modules run in
 * import order). Every asynchronous file operation holds one of its threads until it ends, and
 * the daemon issues many at once: NBD reads and writes above 64 KiB, a backup's reads 8 runs
 * ahead, a restore's 4 batches, background fdatasyncs. With the default four, one slow operation
 * class queues all the others behind it. More threads cost a little memory each, not CPU. (On the
 * backup benchmark this alone did not change the times measured.) An explicit UV_THREADPOOL_SIZE
 * in the environment wins.
 */
const DAEMON_THREADPOOL_SIZE = 16;

process.env.UV_THREADPOOL_SIZE ??= String(DAEMON_THREADPOOL_SIZE);
