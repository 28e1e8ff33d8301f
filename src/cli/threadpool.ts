/**
 * Sizes libuv's thread pool before anything uses it (imported first by main.ts; ES modules run in
 * import order). Every asynchronous file operation takes one of its threads, and the default four
 * are too few for a storage daemon: four 2 MiB pool writes of a restore held all of them while the
 * read of the backup medium waited behind, so the restore alternated between reading and writing
 * instead of overlapping them. More threads cost a little memory each, not CPU. An explicit
 * UV_THREADPOOL_SIZE in the environment wins.
 */
const DAEMON_THREADPOOL_SIZE = 16;

process.env.UV_THREADPOOL_SIZE ??= String(DAEMON_THREADPOOL_SIZE);
