/**
 * The `thinarray` command as a user runs it: the real daemon (`serve` on a temporary home and
 * random ports), the real CLI in a child process, qemu-img/qemu-io against the NBD exports.
 * Checks human and --json output, exit codes (0 ok, 1 array error, 2 usage, 3 unreachable),
 * one-line errors, the home lock, and a clean SIGTERM shutdown followed by a restart.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { CLI_MAIN, startDaemon, type CliResult, type Daemon } from '../helpers/daemon.js';
import { qemuIo, run, runOk } from '../helpers/tools.js';

const GiB = 1024 ** 3;

function assertFails(result: CliResult, exitCode: number, messagePattern: RegExp): void {
  assert.equal(result.code, exitCode, `exit ${result.code}, stderr: ${result.stderr}`);
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got: ${result.stderr}`);
  assert.match(lines[0]!, /^thinarray: /);
  assert.match(lines[0]!, messagePattern);
}

async function qemuImgVirtualSize(uri: string): Promise<number> {
  const result = await runOk('qemu-img', ['info', '--output=json', uri]);
  return (JSON.parse(result.stdout) as { 'virtual-size': number })['virtual-size'];
}

/** A loopback port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Runs the CLI with only the given environment (no --home), from a directory without a home. */
function runCliWithEnv(args: string[], environment: NodeJS.ProcessEnv, cwd: string): Promise<CliResult> {
  return run(process.execPath, [CLI_MAIN, ...args], { env: { PATH: process.env['PATH'] ?? '', ...environment }, cwd });
}

describe('thinarray CLI against a running daemon', () => {
  let daemon: Daemon;

  before(async () => {
    daemon = await startDaemon({ extraArgs: ['--pool-size', '1G'] });
  });

  after(async () => {
    await daemon?.cleanup();
  });

  describe('serve', () => {
    test('writes a 0600 token and daemon.json, prints how to connect', () => {
      const tokenMode = fs.statSync(path.join(daemon.home, 'token')).mode & 0o777;
      assert.equal(tokenMode, 0o600);
      assert.match(daemon.token, /^[0-9a-f]{64}$/);
      const info = JSON.parse(fs.readFileSync(path.join(daemon.home, 'daemon.json'), 'utf8'));
      assert.equal(info.pid, daemon.pid);
      assert.ok(info.nbd.port > 0);
      assert.match(info.api.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.ok(!Number.isNaN(Date.parse(info.startedAt)));
      const { stdout } = daemon.logs();
      assert.ok(stdout.includes(`qemu-img info nbd://127.0.0.1:${daemon.nbdPort}/VOLUME`), stdout);
      assert.ok(stdout.includes(`${daemon.apiUrl}/api/v1`), stdout);
      assert.ok(fs.statSync(path.join(daemon.home, 'thinarray.log')).size > 0);
    });

    test('a second serve on the same home is refused', async () => {
      const second = await daemon.cli(['serve', '--nbd-listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0']);
      assertFails(second, 1, new RegExp(`another thinarray daemon \\(pid ${daemon.pid}\\) is using this home`));
      assert.equal(JSON.parse(fs.readFileSync(path.join(daemon.home, 'daemon.json'), 'utf8')).pid, daemon.pid, 'daemon.json untouched');
    });

    test('bad serve options are usage errors', async () => {
      assertFails(await daemon.cli(['serve', '--api-listen', 'nowhere']), 2, /--api-listen: expected HOST:PORT/);
      assertFails(await daemon.cli(['serve', '--extent-size', '3K']), 2, /--extent-size/);
    });
  });

  describe('volumes', () => {
    test('create (human and --json) and the export exists over NBD with the right size', async () => {
      const human = await daemon.cli(['volume', 'create', 'vm1', '--size', '1G']);
      assert.equal(human.code, 0, human.stderr);
      assert.equal(human.stdout.trim(), 'created volume vm1 (1 GiB, thin)');
      const created = await daemon.cliJson(['volume', 'create', 'vm2', '--size', '10G', '--read-only']);
      assert.equal(created.capacityBytes, 10 * GiB);
      assert.equal(created.readOnly, true);
      assert.equal(await qemuImgVirtualSize(daemon.nbdUri('vm1')), GiB);
      assert.equal(await qemuImgVirtualSize(daemon.nbdUri('vm2')), 10 * GiB);
    });

    test('list: an aligned table; --json before or after the subcommand', async () => {
      await qemuIo(daemon.nbdUri('vm1'), ['write -P 0xab 1M 128k']);
      const human = await daemon.cli(['volume', 'list']);
      assert.equal(human.code, 0, human.stderr);
      const lines = human.stdout.trimEnd().split('\n');
      assert.match(lines[0]!, /^NAME\s+CAPACITY\s+ALLOCATED\s+USED\s+ATTR\s+ACCESS\s+STATE$/);
      assert.match(lines[1]!, /^vm1\s+1 GiB\s+128 KiB\s+0\.01%\s+user\s+rw\s+ready$/);
      assert.match(lines[2]!, /^vm2\s+10 GiB\s+0 B\s+0\.0%\s+user\s+ro\s+ready$/);
      assert.equal(lines[1]!.indexOf('user'), lines[2]!.indexOf('user'), 'columns aligned');

      const jsonBefore = await daemon.cliJson(['volume', 'list']);
      const jsonAfter = await daemon.cli(['volume', 'list', '--json']);
      assert.deepEqual(JSON.parse(jsonAfter.stdout), jsonBefore);
      assert.deepEqual(jsonBefore.volumes.map((volume: { name: string }) => volume.name), ['vm1', 'vm2']);
      assert.equal(jsonBefore.volumes[0].allocatedBytes, 128 * 1024);
    });

    test('the NBD write shows in /metrics', async () => {
      const response = await fetch(`${daemon.apiUrl}/api/v1/metrics`, { headers: { authorization: `Bearer ${daemon.token}` } });
      assert.equal(response.status, 200);
      const text = await response.text();
      assert.match(text, /^thinarray_nbd_requests_total\{command="write",errno="0"\} [1-9]\d*$/m);
      assert.match(text, /^thinarray_nbd_bytes_total\{command="write"\} 131072$/m);
      assert.match(text, /^thinarray_volume_allocated_bytes\{volume="vm1"\} 131072$/m);
      assert.equal((await fetch(`${daemon.apiUrl}/api/v1/metrics`)).status, 401);
    });

    test('show and show --map', async () => {
      const shown = await daemon.cli(['volume', 'show', 'vm1']);
      assert.equal(shown.code, 0, shown.stderr);
      assert.match(shown.stdout, /^capacity\s+1 GiB \(1073741824 bytes\)$/m);
      assert.match(shown.stdout, /^allocated\s+128 KiB \(0\.01%, 2 extents\)$/m);
      const mapped = await daemon.cli(['volume', 'show', 'vm1', '--map']);
      assert.match(mapped.stdout, /^\s*1048576\s+131072\s+128 KiB\s+mapped$/m);
      const json = await daemon.cliJson(['volume', 'show', 'vm1', '--map']);
      assert.deepEqual(json.map.runs, [
        { offsetBytes: 0, lengthBytes: 1048576, mapped: false },
        { offsetBytes: 1048576, lengthBytes: 131072, mapped: true },
        { offsetBytes: 1179648, lengthBytes: GiB - 1179648, mapped: false },
      ]);
    });

    test('resize grows the export; shrink is refused with one line, exit 1', async () => {
      const resized = await daemon.cli(['volume', 'resize', 'vm1', '--size', '2G']);
      assert.equal(resized.code, 0, resized.stderr);
      assert.equal(resized.stdout.trim(), 'resized volume vm1 to 2 GiB');
      assert.equal(await qemuImgVirtualSize(daemon.nbdUri('vm1')), 2 * GiB);
      assertFails(await daemon.cli(['volume', 'resize', 'vm1', '--size', '1G']), 1, /sizeBytes: volumes only grow/);
      assert.equal((await daemon.cliJson(['volume', 'show', 'vm1'])).capacityBytes, 2 * GiB);
    });

    test('set-attr', async () => {
      const work = await daemon.cliJson(['volume', 'set-attr', 'vm2', 'work']);
      assert.equal(work.attr, 'work');
      const user = await daemon.cli(['volume', 'set-attr', 'vm2', 'user']);
      assert.equal(user.stdout.trim(), 'volume vm2 is now user');
    });

    test('errors from the array: exit 1, one line', async () => {
      assertFails(await daemon.cli(['volume', 'create', 'vm1', '--size', '1G']), 1, /vm1/);
      assertFails(await daemon.cli(['volume', 'delete', 'ghost']), 1, /ghost/);
      assertFails(await daemon.cli(['volume', 'show', 'ghost']), 1, /ghost/);
      assertFails(await daemon.cli(['volume', 'create', 'a/b', '--size', '1G']), 1, /^thinarray: name: /);
      assertFails(await daemon.cli(['volume', 'create', '../x', '--size', '1G']), 1, /^thinarray: name: /);
      const names = (await daemon.cliJson(['volume', 'list'])).volumes.map((volume: { name: string }) => volume.name);
      assert.deepEqual(names, ['vm1', 'vm2'], 'nothing created by the refused commands');
    });

    test('bad usage: exit 2, one line', async () => {
      assertFails(await daemon.cli(['volume', 'create', 'v', '--size', '12Q']), 2, /--size: cannot read "12Q"/);
      assertFails(await daemon.cli(['volume', 'create', 'v']), 2, /--size/);
      assertFails(await daemon.cli(['volume', 'create', '--size', '1G']), 2, /missing required argument 'name'/);
      assertFails(await daemon.cli(['volume', 'lsit']), 2, /unknown command 'lsit'.*list/);
      assertFails(await daemon.cli(['volume', 'set-attr', 'vm1', 'admin']), 2, /user, work/);
      assertFails(await daemon.cli(['--frobnicate', 'volume', 'list']), 2, /unknown option '--frobnicate'/);
    });

    test('delete', async () => {
      const deleted = await daemon.cli(['volume', 'delete', 'vm2']);
      assert.equal(deleted.code, 0, deleted.stderr);
      assert.equal(deleted.stdout.trim(), 'deleted volume vm2');
      assert.deepEqual((await daemon.cliJson(['volume', 'list'])).volumes.length, 1);
    });
  });

  describe('pool and check', () => {
    test('pool show (human and --json), pool add', async () => {
      const shown = await daemon.cli(['pool', 'show']);
      assert.equal(shown.code, 0, shown.stderr);
      assert.match(shown.stdout, /^extent size\s+64 KiB$/m);
      assert.match(shown.stdout, /^provisioned\s+2 GiB \(over-commit 2\.\d\dx\)$/m);
      assert.match(shown.stdout, /^DISK\s+PATH\s+KIND\s+SIZE\s+USED$/m);
      const added = await daemon.cli(['pool', 'add', 'extra.img', '--size', '64M']);
      assert.equal(added.code, 0, added.stderr);
      assert.match(added.stdout, new RegExp(`added ${path.join(daemon.home, 'extra.img')} to the pool \\(64 MiB`), 'relative path resolved against the CLI directory');
      const pool = await daemon.cliJson(['pool', 'show']);
      assert.equal(pool.disks.length, 2);
    });

    test('check and check --repair', async () => {
      const checked = await daemon.cli(['check']);
      assert.equal(checked.code, 0, checked.stderr);
      assert.match(checked.stdout, /^checked 1 volume\(s\), 2 mapped extent\(s\): no problems$/m);
      const repaired = await daemon.cliJson(['check', '--repair']);
      assert.equal(repaired.ok, true);
    });
  });

  describe('finding the daemon and the token', () => {
    test('the environment (THINARRAY_API, THINARRAY_TOKEN) works without a home', async () => {
      const result = await runCliWithEnv(['--json', 'volume', 'list'], { THINARRAY_API: daemon.apiUrl, THINARRAY_TOKEN: daemon.token }, path.dirname(daemon.home));
      assert.equal(result.code, 0, result.stderr);
      assert.equal(JSON.parse(result.stdout).volumes[0].name, 'vm1');
    });

    test('THINARRAY_HOME finds daemon.json and the token', async () => {
      const result = await runCliWithEnv(['volume', 'list', '--json'], { THINARRAY_HOME: daemon.home }, '/');
      assert.equal(result.code, 0, result.stderr);
    });

    test('a wrong token: exit 1, says where the token came from', async () => {
      assertFails(await daemon.cli(['--token', 'nope', 'volume', 'list']), 1, /token was refused \(token from --token\)/);
    });

    test('unreachable daemon: exit 3, says where it tried', async () => {
      const closedUrl = `http://127.0.0.1:${await closedPort()}`;
      assertFails(await daemon.cli(['--api', closedUrl, 'volume', 'list']), 3, new RegExp(`cannot reach the thinarray daemon at ${closedUrl} \\(from --api\\): ECONNREFUSED`));
      const emptyHome = fs.mkdtempSync(path.join(path.dirname(daemon.home), 'thinarray-empty-'));
      try {
        const result = await runCliWithEnv(['volume', 'list'], { THINARRAY_HOME: emptyHome, THINARRAY_API: closedUrl }, emptyHome);
        assertFails(result, 3, /\(from THINARRAY_API\)/);
      } finally {
        fs.rmSync(emptyHome, { recursive: true, force: true });
      }
    });
  });

  describe('shutdown and restart', () => {
    test('SIGTERM: exit 0, daemon.json and the lock removed; a restart sees the same volumes and data', async () => {
      const exit = await daemon.stop();
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(fs.existsSync(path.join(daemon.home, 'daemon.json')), false);
      assert.equal(fs.existsSync(path.join(daemon.home, 'daemon.pid')), false);

      await daemon.restart();
      const volumes = (await daemon.cliJson(['volume', 'list'])).volumes;
      assert.deepEqual(
        volumes.map((volume: { name: string; capacityBytes: number; allocatedBytes: number }) => [volume.name, volume.capacityBytes, volume.allocatedBytes]),
        [['vm1', 2 * GiB, 128 * 1024]],
      );
      await qemuIo(daemon.nbdUri('vm1'), ['read -P 0xab 1M 128k', 'read -P 0 0 1M'], { readOnly: true });
    });

    test('a stale lock left by a killed daemon does not block the next start', async () => {
      await daemon.kill9();
      assert.equal(fs.existsSync(path.join(daemon.home, 'daemon.pid')), true, 'kill -9 leaves the lock behind');
      await daemon.restart();
      assert.equal((await daemon.cliJson(['volume', 'list'])).volumes.length, 1);
    });
  });
});
