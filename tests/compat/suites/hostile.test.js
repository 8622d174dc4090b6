'use strict';
// Tenant isolation (issue 14): a hostile tenant's functions against the platform and
// against another tenant. Env `dev` holds the victim's data (a document, a private file,
// a function whose code holds a secret); env `other` deploys the attacker functions
// (tests/compat/functions/hostile) with its own key, and every test below is one attack
// with the EXACT refusal expected from the instance sandbox (read-only tmpfs root with
// read-only binds, private /tmp and /dev/shm, PID namespace, a uid per instance, seccomp,
// no_new_privs, a network policy that leaves only /admin reachable, cgroup limits).
// After every attack the victim must still answer.
//
// Yun runs as root here (and in CI), so every protection is expected to be in force.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const tcb = require('@cloudbase/node-sdk');
const { startYun, sleep, waitFor, instanceGone: instanceGoneByUid, BIN } = require('../lib/yun');
const { tarGz } = require('../lib/tar');

const LAYER = path.resolve(__dirname, '..');
const DOC_SECRET = 'DOC-SECRET-4c2f9e7a11';
const FILE_SECRET = 'FILE-SECRET-93d0b6a2ee';
const CODE_MARKER = 'VICTIM-CODE-SECRET-b7e1c04d9a'; // in functions/hostile-victim/index.js
const NONCE = `${process.pid}-${Date.now()}`;
// Distinctive `sleep` arguments, so the host can find exactly the processes the attacks start.
const SLEEP_DETACHED = '241.5';
const SLEEP_SETSID = '242.5';
const SLEEP_NEIGHBOUR = '243.5';
// The per-instance uid range of the sandbox.
const UID_MIN = 6000000;
const UID_MAX = 6065535;
// What a stolen temporary credential gets, used from another tenant's instance (the
// caller is an instance of env `other`) and from the host (outside any instance).
const STOLEN_FROM_OTHER_INSTANCE = 'PERMISSION_DENIED';
const STOLEN_FROM_HOST = 'PERMISSION_DENIED';
// FunctionCodeInvalid's code on the wire (crates/yun-types/src/error.rs), HTTP 400.
const CODE_INVALID = 'INVALID_PARAM';

let yun;
let otherKey;
let dev; // @cloudbase/node-sdk app of env dev, with dev's key
let victimCodeFile;
let fileObject; // the private file's bytes on the host
let fileID;

const asOther = () => ({ YUN_ENV: 'other', YUN_SECRET_ID: otherKey.secretId, YUN_SECRET_KEY: otherKey.secretKey });
const otherApp = () => yun.admin({ env: 'other', ...otherKey });

/** Invokes an attacker function in env other; a failed invocation is reported, not thrown. */
async function attack(attempt, args = {}, name = 'hostile') {
  try {
    const res = await otherApp().callFunction({ name, data: { attempt, ...args } });
    return res.result;
  } catch (e) {
    return { invocationFailed: true, code: e.code, message: e.message };
  }
}

/** The attack was refused with exactly this code. */
function refused(result, code) {
  assert.deepEqual({ ok: result.ok, code: result.code }, { ok: false, code }, JSON.stringify(result).slice(0, 2000));
}

/** Host pids whose command line is exactly `args`. */
function hostPids(args) {
  const want = args.join('\0') + '\0';
  const pids = [];
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      if (fs.readFileSync(`/proc/${n}/cmdline`, 'utf8') === want) pids.push(Number(n));
    } catch (_) { /* gone */ }
  }
  return pids;
}

/** The host pids still running `args` after up to 5 s for them to go. */
async function stillRunning(args) {
  const deadline = Date.now() + 5000;
  while (hostPids(args).length > 0 && Date.now() < deadline) await sleep(100);
  return hostPids(args);
}

function killHost(pids) {
  for (const pid of pids) try { process.kill(pid, 'SIGKILL'); } catch (_) { /* gone */ }
}

/** Every path under `dir` (no symlinks followed), relative to it. */
function walk(dir, out = [], rel = '') {
  let entries;
  try { entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true }); } catch (_) { return out; }
  for (const e of entries) {
    const r = path.join(rel, e.name);
    out.push(r);
    if (e.isDirectory()) walk(dir, out, r);
  }
  return out;
}

function findFileContaining(dir, text) {
  return walk(dir).map((r) => path.join(dir, r)).find((f) => {
    try { return fs.statSync(f).isFile() && fs.readFileSync(f, 'utf8').includes(text); } catch (_) { return false; }
  });
}

before(async () => {
  yun = await startYun(['--queue-timeout', '5s']);
  const created = await yun.cliJson(['env', 'create', 'other']);
  otherKey = { secretId: created.key.secret_id, secretKey: created.key.secret_key };
  dev = yun.admin();
  // The victim tenant's data: a document, a private file, a function.
  await yun.cliJson(['db', 'create', 'vault']);
  await dev.database().collection('vault').add({ _id: 'doc', secret: DOC_SECRET });
  const up = await dev.uploadFile({ cloudPath: 'private/vault.txt', fileContent: Buffer.from(FILE_SECRET) });
  fileID = up.fileID;
  await yun.cliJson(['storage', 'rules', 'set', 'ADMINONLY']);
  fileObject = findFileContaining(path.join(yun.dataDir, 'files', yun.envId), FILE_SECRET);
  assert.ok(fileObject, 'the private file is on the host');
  await yun.deploy('hostile-victim', 'victim');
  const victimDir = path.join(yun.dataDir, 'functions', yun.envId, 'victim');
  victimCodeFile = path.join(victimDir, fs.readdirSync(victimDir)[0], 'index.js');
  assert.ok(fs.readFileSync(victimCodeFile, 'utf8').includes(CODE_MARKER));
  // The attacker tenant, with its own key only.
  await yun.cliJson(['db', 'create', 'loot'], asOther());
  await yun.deploy('hostile', 'hostile', ['--timeout', '25s'], asOther());
  await yun.deploy('hostile', 'hostile2', ['--timeout', '25s', '--memory', '128'], asOther());
});

after(async () => {
  killHost([SLEEP_DETACHED, SLEEP_SETSID, SLEEP_NEIGHBOUR].flatMap((s) => hostPids(['sleep', s])));
  for (const p of [`/tmp/hostile-${NONCE}`, `/dev/shm/hostile-${NONCE}`]) try { fs.unlinkSync(p); } catch (_) { /* gone */ }
  if (yun) await yun.stop();
});

// Whatever the attack did, the other tenant's function keeps working.
afterEach(async () => {
  const res = await dev.callFunction({ name: 'victim', data: { mode: 'ping' } });
  assert.equal(res.result.alive, true, 'the victim still answers');
});

// ---------------------------------------------------------------------------------------
// Filesystem: the instance sees a read-only root with only what it needs.

test('fs: reading the metadata database {data}/meta/yun.db -> ENOENT', async () => {
  refused(await attack('read', { path: path.join(yun.dataDir, 'meta', 'yun.db') }), 'ENOENT');
});

test('fs: reading {data}/credentials.json -> ENOENT', async () => {
  refused(await attack('read', { path: path.join(yun.dataDir, 'credentials.json') }), 'ENOENT');
});

test("fs: reading dev's private file's bytes under {data}/files/dev -> ENOENT", async () => {
  refused(await attack('read', { path: fileObject }), 'ENOENT');
});

test("fs: listing dev's storage {data}/files/dev -> ENOENT", async () => {
  refused(await attack('readdir', { path: path.join(yun.dataDir, 'files', yun.envId) }), 'ENOENT');
});

test("fs: reading the victim's code {data}/functions/dev/victim/*/index.js -> ENOENT", async () => {
  refused(await attack('read', { path: victimCodeFile }), 'ENOENT');
});

test("fs: searching {data}/functions/dev for the victim's secret -> ENOENT", async () => {
  refused(await attack('grep', { path: path.join(yun.dataDir, 'functions', yun.envId), marker: CODE_MARKER }), 'ENOENT');
});

for (const p of ['/root', '/home', '/var/lib/postgresql']) {
  test(`fs: ${p} does not exist -> ENOENT`, async () => {
    refused(await attack('stat', { path: p }), 'ENOENT');
  });
}

test('fs: reading /etc/shadow -> ENOENT', async () => {
  refused(await attack('read', { path: '/etc/shadow' }), 'ENOENT');
});

for (const p of ['/x', '/etc/x', '/usr/x']) {
  test(`fs: writing ${p} -> EROFS`, async () => {
    refused(await attack('write', { path: p }), 'EROFS');
  });
}

test("fs: writing into the function's own code folder -> EROFS", async () => {
  refused(await attack('writeOwnCode'), 'EROFS');
});

test('fs: /proc/self/root/{data}/meta/yun.db -> ENOENT', async () => {
  refused(await attack('read', { path: `/proc/self/root${path.join(yun.dataDir, 'meta', 'yun.db')}` }), 'ENOENT');
});

test('fs: /proc/1/root/{data}/credentials.json -> EACCES (pid 1 is the sandbox init) or ENOENT', async () => {
  const r = await attack('read', { path: `/proc/1/root${path.join(yun.dataDir, 'credentials.json')}` });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.ok(['EACCES', 'ENOENT'].includes(r.code), JSON.stringify(r));
});

test('fs: / (and /proc/self/root) hold only the binds: system folders, /tmp, /proc, /dev, /run (the gateway), /var/user (the code) and the parents of the node and layer paths', async () => {
  const top = (p) => path.resolve(p).split('/')[1];
  const allowed = new Set(['bin', 'dev', 'etc', 'lib', 'lib32', 'lib64', 'libx32', 'proc', 'sbin', 'tmp', 'usr', 'run', 'var',
    top(yun.dataDir), top(LAYER), top(fs.realpathSync('/usr/bin/node'))]);
  const cwd = await attack('readlink', { path: '/proc/self/cwd' });
  assert.equal(cwd.target, '/var/user', JSON.stringify(cwd));
  for (const where of ['/', '/proc/self/root']) {
    const r = await attack('readdir', { path: where });
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.deepEqual(r.entries.filter((e) => !allowed.has(e)), [], `${where}: ${r.entries.join(' ')}`);
  }
});

test('fs: /var holds only the code folder, /run only the gateway socket and the init\'s private folder (closed to the function)', async () => {
  assert.deepEqual((await attack('readdir', { path: '/var' })).entries, ['user']);
  assert.deepEqual((await attack('readdir', { path: '/run' })).entries.sort(), ['yun-init', 'yun.sock']);
  assert.equal((await attack('readdir', { path: '/run/yun-init' })).code, 'EACCES');
});

test('fs: /etc holds only certificates, resolv.conf, hosts, nsswitch.conf, localtime, passwd, group and the loader\'s and alternatives\' links', async () => {
  const r = await attack('readdir', { path: '/etc' });
  assert.equal(r.ok, true, JSON.stringify(r));
  const allowed = new Set(['ssl', 'ca-certificates', 'ca-certificates.conf', 'resolv.conf', 'hosts', 'nsswitch.conf', 'localtime', 'passwd', 'group',
    'alternatives', 'ld.so.cache', 'ld.so.conf', 'ld.so.conf.d']);
  assert.deepEqual(r.entries.filter((e) => !allowed.has(e)), [], r.entries.join(' '));
});

test('fs: /dev holds exactly null zero full random urandom shm fd stdin stdout stderr', async () => {
  const r = await attack('readdir', { path: '/dev' });
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.deepEqual(r.entries, ['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'urandom', 'zero']);
});

test('fs: filling /tmp with 200 MB -> ENOSPC before 64 MiB + 1 MiB', async () => {
  const r = await attack('tmpFill', { mb: 200 });
  refused(r, 'ENOSPC');
  assert.ok(r.written <= (65 << 20), `wrote ${r.written} bytes`);
});

test('fs: a file left in /tmp or /dev/shm is gone in the next instance (after process.exit)', async () => {
  const name = `hostile-${NONCE}`;
  const planted = await attack('tmpPlant', { name });
  assert.equal(planted.ok, true, JSON.stringify(planted));
  assert.deepEqual(await attack('tmpCheck', { name }), { ok: true, tmp: true, shm: true }, 'the same instance sees it');
  const exit = await attack('exit');
  assert.equal(exit.code, 'FUNCTIONS_EXECUTE_FAIL');
  assert.deepEqual(await attack('tmpCheck', { name }), { ok: true, tmp: false, shm: false });
});

// ---------------------------------------------------------------------------------------
// Processes: a PID namespace and a uid per instance.

test('proc: the instance sees only its own few processes, none of another instance', async () => {
  // A neighbouring instance (another function of the same tenant) with a child process.
  const neighbour = await attack('persistDetached', { seconds: SLEEP_NEIGHBOUR }, 'hostile2');
  assert.equal(neighbour.ok, true, JSON.stringify(neighbour));
  await waitFor(() => hostPids(['sleep', SLEEP_NEIGHBOUR]).length === 1, 'the neighbour to start its sleep');
  await dev.callFunction({ name: 'victim', data: { mode: 'ping' } });
  const r = await attack('ps');
  assert.equal(r.ok, true, JSON.stringify(r));
  const pids = r.procs.map((p) => p.pid);
  assert.ok(pids.includes(1), `pid 1 (the init) is visible: ${pids}`);
  assert.ok(pids.includes(r.self), 'itself');
  // Yun itself, the databases, the neighbour's child: none of them may be visible.
  const foreign = r.procs.filter((p) => p.pid !== r.self && p.cmdline && /\bsleep\b|yun dev|postgres|redis|mariadbd|nats|beam/.test(p.cmdline));
  assert.deepEqual(foreign, []);
  assert.ok(r.procs.length <= 4, `a handful of pids, got ${r.procs.length}`);
  killHost(hostPids(['sleep', SLEEP_NEIGHBOUR]));
});

test('proc: kill(1, SIGKILL) -> EPERM', async () => {
  refused(await attack('kill', { pid: 1, signal: 'SIGKILL' }), 'EPERM');
});

test("proc: signalling Yun's host pid -> ESRCH", async () => {
  // Signal 0: the probe an attacker makes first (a real signal would stop the suite if it got through).
  refused(await attack('kill', { pid: yun.child.pid, signal: 0 }), 'ESRCH');
});

test("proc: SIGKILL to the victim's instance by its host pid -> ESRCH", async () => {
  const res = await dev.callFunction({ name: 'victim', data: { mode: 'ping' } });
  // The host pid of the victim's instance: the host sees through every namespace.
  const victimPids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => {
    try {
      const ns = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^NSpid:\s+(.*)$/m)[1].trim().split(/\s+/).map(Number);
      const uid = Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)[1]);
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return ns[ns.length - 1] === res.result.pid && uid === res.result.uid && cmdline.includes('bootstrap');
    } catch (_) { return false; }
  });
  assert.ok(victimPids.length >= 1, 'found the victim instance on the host');
  for (const pid of victimPids) refused(await attack('kill', { pid, signal: 'SIGKILL' }), 'ESRCH');
});

test('proc: reading /proc/1/environ -> EACCES', async () => {
  refused(await attack('read', { path: '/proc/1/environ' }), 'EACCES');
});

test('proc: reading /proc/1/mem -> EACCES', async () => {
  refused(await attack('read', { path: '/proc/1/mem' }), 'EACCES');
});

test('proc: the instance runs as a uid of its own in 6000000..6065535', async () => {
  const r = await attack('whoami');
  assert.ok(r.uid >= UID_MIN && r.uid <= UID_MAX, `uid ${r.uid}`);
  assert.equal(r.euid, r.uid);
});

test('proc: different instances (two functions of other, the victim in dev) get different uids', async () => {
  const a = await attack('whoami', {}, 'hostile');
  const b = await attack('whoami', {}, 'hostile2');
  const v = (await dev.callFunction({ name: 'victim', data: { mode: 'ping' } })).result;
  for (const uid of [a.uid, b.uid, v.uid]) assert.ok(uid >= UID_MIN && uid <= UID_MAX, `uid ${uid}`);
  assert.equal(new Set([a.uid, b.uid, v.uid]).size, 3, `uids ${a.uid} ${b.uid} ${v.uid}`);
});

// ---------------------------------------------------------------------------------------
// Syscalls: seccomp refuses the kernel's attack surface with EPERM.

for (const name of ['ptrace', 'unshare', 'mount', 'keyctl', 'bpf', 'init_module', 'reboot', 'io_uring_setup', 'process_vm_readv', 'setns']) {
  test(`seccomp: raw ${name}() -> EPERM`, async () => {
    refused(await attack('syscall', { name }), 'EPERM');
  });
}

test('seccomp: the unshare tool cannot make a user namespace (exit 1, Operation not permitted)', async () => {
  const r = await attack('exec', { file: '/usr/bin/unshare', args: ['-U', '/bin/true'] });
  assert.deepEqual([r.ok, r.status], [false, 1], JSON.stringify(r));
  assert.match(r.stderr, /Operation not permitted/);
});

test('seccomp: the mount tool fails (exit 32, must be superuser)', async () => {
  const r = await attack('exec', { file: '/bin/mount', args: ['-t', 'tmpfs', 'none', '/tmp'] });
  assert.deepEqual([r.ok, r.status], [false, 32], JSON.stringify(r));
  assert.match(r.stderr, /must be superuser|Operation not permitted/);
});

test('seccomp: strace cannot trace (exit 1, Operation not permitted)', async () => {
  const r = await attack('exec', { file: '/usr/bin/strace', args: ['-o', '/dev/null', '/bin/true'] });
  assert.deepEqual([r.ok, r.status], [false, 1], JSON.stringify(r));
  assert.match(r.stderr, /Operation not permitted/);
});

// ---------------------------------------------------------------------------------------
// setuid binaries gain nothing (no_new_privs).

test('setuid: `su -c id root` fails (exit 1) and never runs id as root', async () => {
  const r = await attack('exec', { file: '/usr/bin/su', args: ['-c', 'id', 'root'], input: '\n' });
  assert.deepEqual([r.ok, r.status], [false, 1], JSON.stringify(r));
  assert.doesNotMatch(r.stdout + r.stderr, /uid=0/);
});

test('setuid: a running setuid binary (su) keeps the instance uid as its effective uid, under no_new_privs', async () => {
  const r = await attack('setuidEuid', { file: '/usr/bin/su', args: ['root'] });
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.deepEqual(r.seen, { comm: 'su', ruid: r.instanceUid, euid: r.instanceUid, suid: r.instanceUid, noNewPrivs: 1 });
});

test("setuid: `passwd -S root` (setuid root, reads /etc/shadow) fails (exit 1) and shows nothing of root's password", async () => {
  // passwd exits at once, too fast to read its effective uid; what it prints is the proof.
  const r = await attack('exec', { file: '/usr/bin/passwd', args: ['-S', 'root'] });
  assert.deepEqual([r.ok, r.status], [false, 1], JSON.stringify(r));
  assert.doesNotMatch(r.stdout, /^root /m);
});

// ---------------------------------------------------------------------------------------
// Nothing outlives its instance.

test('persistence: a detached `sleep` is gone once its instance crashed (process.exit)', async () => {
  const r = await attack('persistDetached', { seconds: SLEEP_DETACHED });
  assert.equal(r.ok, true, JSON.stringify(r));
  await waitFor(() => hostPids(['sleep', SLEEP_DETACHED]).length === 1, 'the attack to start its sleep');
  const exit = await attack('exit');
  assert.equal(exit.code, 'FUNCTIONS_EXECUTE_FAIL');
  const left = await stillRunning(['sleep', SLEEP_DETACHED]);
  killHost(left);
  assert.deepEqual(left, [], 'no detached sleep survives on the host');
});

test('persistence: `setsid nohup sleep &` is gone once the attacker is redeployed', async () => {
  const r = await attack('persistSetsid', { seconds: SLEEP_SETSID }, 'hostile2');
  assert.equal(r.ok, true, JSON.stringify(r));
  await waitFor(() => hostPids(['sleep', SLEEP_SETSID]).length === 1, 'the attack to start its sleep');
  await yun.deploy('hostile', 'hostile2', [], asOther());
  const left = await stillRunning(['sleep', SLEEP_SETSID]);
  killHost(left);
  assert.deepEqual(left, [], 'no setsid sleep survives on the host');
});

test('persistence: an orphan that exits is reaped (no zombie) -> ENOENT', async () => {
  refused(await attack('zombie'), 'ENOENT');
});

// ---------------------------------------------------------------------------------------
// Resources: limits stop the bombs, and the neighbours do not notice.

test('resources: a fork bomb is stopped by the pids limit -> EAGAIN', async () => {
  const r = await attack('forkBomb', { max: 1000 }, 'hostile2');
  refused(r, 'EAGAIN');
  assert.ok(r.spawned < 128, `spawned ${r.spawned}`);
});

test('resources: native memory beyond the limit -> the invocation fails as out of memory', async () => {
  const r = await attack('memoryBomb', { mb: 1024 }, 'hostile2');
  assert.deepEqual([r.invocationFailed, r.code], [true, 'FUNCTIONS_EXECUTE_FAIL'], JSON.stringify(r));
  assert.match(r.message, /memory limit/);
});

test('proc: kernel-wide corners are hidden or read-only (/proc/keys and /proc/kallsyms empty, /proc/sys read-only)', async () => {
  assert.deepEqual(await attack('read', { path: '/proc/keys' }), { ok: true, bytes: 0, head: '' });
  assert.deepEqual(await attack('read', { path: '/proc/kallsyms' }), { ok: true, bytes: 0, head: '' });
  const r = await attack('exec', { file: '/bin/sh', args: ['-c', 'grep " /proc/sys " /proc/self/mounts'] });
  assert.match(r.stdout, / \/proc\/sys proc ro,/, JSON.stringify(r));
});

test('processes: an instance that dies while idle is dropped; the next call runs on a fresh one', async () => {
  const before = await attack('dieIdle', { ms: 100 });
  assert.equal(before.ok, true, JSON.stringify(before));
  await waitFor(() => instanceGoneByUid(before.uid), 'the instance to die', 5000);
  const after = await attack('whoami');
  assert.equal(after.ok, true, JSON.stringify(after));
  assert.notEqual(after.uid, before.uid);
});

// ---------------------------------------------------------------------------------------
// Network: only the SDK surface of Yun is reachable.

for (const [service, port] of [['PostgreSQL', 5432], ['Redis', 6379], ['MariaDB', 3306]]) {
  test(`net: connecting to ${service} on 127.0.0.1:${port} -> ECONNREFUSED`, async () => {
    refused(await attack('connect', { host: '127.0.0.1', port }), 'ECONNREFUSED');
  });
}

test("net: Yun's management API (/api/v1/openapi.json) -> HTTP 404", async () => {
  const r = await attack('http', { url: `${yun.url}/api/v1/openapi.json` });
  assert.deepEqual([r.ok, r.status], [true, 404], JSON.stringify(r));
});

test("net: the management API with other's own key -> HTTP 404", async () => {
  const auth = 'Basic ' + Buffer.from(`${otherKey.secretId}:${otherKey.secretKey}`).toString('base64');
  const r = await attack('http', { url: `${yun.url}/api/v1/envs/other/functions`, headers: { authorization: auth } });
  assert.deepEqual([r.ok, r.status], [true, 404], JSON.stringify(r));
});

test('net: /admin without keys -> SIGN_PARAM_INVALID in the CloudBase envelope', async () => {
  const r = await attack('http', { url: `${yun.url}/admin?env=${yun.envId}`, method: 'POST', body: '{"action":"database.queryDocument"}', headers: { 'content-type': 'application/json' } });
  assert.equal(r.status, 200, JSON.stringify(r));
  assert.equal(JSON.parse(r.body).code, 'SIGN_PARAM_INVALID', r.body);
});

test("net: the function's own database, storage and callFunction still work", async () => {
  const r = await attack('ownCloud');
  assert.deepEqual(r, { ok: true, db: 1, file: 'own bytes', called: true, calledUid: r.calledUid });
});

// The network policy per env: internet (the default: a user-mode stack, slirp4netns,
// that refuses the host's loopback), yun-only, none. A change replaces running instances.

const procNet = async (file) => (await attack('text', { path: `/proc/net/${file}` })).text;

test('net (internet, the default): a tap device and a default route through slirp4netns; its DNS; the host loopback through it refused', async () => {
  assert.match(await procNet('dev'), /tap0:/);
  assert.match(await procNet('route'), /\ntap0\t00000000\t/, 'a default route via tap0');
  assert.equal((await attack('read', { path: '/etc/resolv.conf' })).head, 'nameserver 10.0.2.3\n');
  // 10.0.2.2 is slirp4netns's name for the host inside the instance's own namespace;
  // with --disable-host-loopback it answers "network unreachable".
  refused(await attack('connect', { host: '10.0.2.2', port: 5432 }), 'ENETUNREACH');
  refused(await attack('connect', { host: '10.0.2.2', port: Number(new URL(yun.url).port) }), 'ENETUNREACH');
});

test('net (yun-only): no route out, Yun still answers', async () => {
  await yun.cliJson(['env', 'configure', '--network', 'yun-only'], asOther());
  try {
    assert.doesNotMatch(await procNet('dev'), /tap0/, 'the instances were replaced without the internet');
    assert.doesNotMatch(await procNet('route'), /\n\w+\t00000000\t/, 'no default route');
    const r = await attack('ownCloud');
    assert.equal(r.ok, true, JSON.stringify(r));
  } finally {
    await yun.cliJson(['env', 'configure', '--network', 'internet'], asOther());
  }
});

test('net (none): not even Yun; other envs keep theirs', async () => {
  await yun.cliJson(['env', 'configure', '--network', 'none'], asOther());
  try {
    refused(await attack('connect', { host: '127.0.0.1', port: Number(new URL(yun.url).port) }), 'ECONNREFUSED');
    const r = await attack('ownCloud');
    assert.equal(r.ok, false, JSON.stringify(r));
    assert.match(JSON.stringify(r), /ECONNREFUSED/);
  } finally {
    await yun.cliJson(['env', 'configure', '--network', 'internet'], asOther());
  }
  assert.equal((await attack('ownCloud')).ok, true, 'back to the default');
});

// ---------------------------------------------------------------------------------------
// Credentials: a function's temporary credential works only from its own instance.

async function leak() {
  const r = (await dev.callFunction({ name: 'victim', data: { mode: 'leak' } })).result;
  assert.match(r.secretId, /^tmp:/);
  return r;
}

test(`creds: the victim's temporary credential used inside an other function against dev -> ${STOLEN_FROM_OTHER_INSTANCE}`, async () => {
  const stolen = await leak();
  refused(await attack('sdk', { env: yun.envId, ...stolen, op: 'db', collection: 'vault', id: 'doc' }), STOLEN_FROM_OTHER_INSTANCE);
});

test(`creds: the victim's temporary credential used from the host -> ${STOLEN_FROM_HOST}`, async () => {
  const stolen = await leak();
  const app = tcb.init({ env: yun.envId, ...stolen, serviceUrl: `${yun.url}/admin`, timeout: 10000 });
  let code;
  try {
    const r = await app.database().collection('vault').doc('doc').get();
    code = r.code || `read ${JSON.stringify(r.data)}`;
  } catch (e) {
    code = e.code;
  }
  assert.equal(code, STOLEN_FROM_HOST);
});

test("creds: other's own credential reading dev's database -> PERMISSION_DENIED", async () => {
  refused(await attack('sdk', { env: yun.envId, op: 'db', collection: 'vault', id: 'doc' }), 'PERMISSION_DENIED');
});

test("creds: other's own credential calling dev's victim -> PERMISSION_DENIED", async () => {
  refused(await attack('sdk', { env: yun.envId, op: 'call', name: 'victim' }), 'PERMISSION_DENIED');
});

test("creds: other's own credential downloading dev's private file -> PERMISSION_DENIED", async () => {
  refused(await attack('sdk', { env: yun.envId, op: 'download', fileID }), 'PERMISSION_DENIED');
});

// ---------------------------------------------------------------------------------------
// Deploys: hostile archives through the management API, with other's own key.


const INDEX = { name: 'index.js', body: 'exports.main = async () => "deployed"' };
const HOSTILE_ARCHIVES = [
  ['evil-chain', 'a symlink chain (a -> ., a/b -> .., ...) then a file through it', [
    INDEX,
    { name: 'a', type: '2', link: '.' },
    { name: 'a/b', type: '2', link: '..' },
    { name: 'a/b/c', type: '2', link: '..' },
    { name: 'a/b/c/d', type: '2', link: '..' },
    { name: 'a/b/c/d/e', type: '2', link: '..' },
    { name: 'a/b/c/d/e/f/PWNED.txt', body: 'PWNED' },
  ]],
  ['evil-abslink', 'a symlink to /etc/passwd', [INDEX, { name: 'passwd', type: '2', link: '/etc/passwd' }]],
  ['evil-uplink', 'a symlink to ../../..', [INDEX, { name: 'up', type: '2', link: '../../..' }]],
  ['evil-hardlink', 'a hard link to /etc/passwd', [INDEX, { name: 'passwd', type: '1', link: '/etc/passwd' }]],
  ['evil-absolute', 'an absolute entry /tmp/yun-hostile-x', [INDEX, { name: '/tmp/yun-hostile-x', body: 'PWNED' }]],
  ['evil-dotdot', 'a ../yun-hostile-x entry', [INDEX, { name: '../yun-hostile-x', body: 'PWNED' }]],
  ['evil-chardev', 'a character device (/dev/null, 1:3)', [INDEX, { name: 'null', type: '3', major: 1, minor: 3 }]],
  ['evil-fifo', 'a fifo', [INDEX, { name: 'pipe', type: '6' }]],
  ['evil-setuid', 'a setuid file', [INDEX, { name: 'tool', mode: 0o4755, body: '#!/bin/sh\nid\n' }]],
];

async function deployArchive(name, archive) {
  const res = await fetch(`${yun.url}/api/v1/envs/other/functions/${name}`, {
    method: 'PUT',
    headers: { authorization: 'Basic ' + Buffer.from(`${otherKey.secretId}:${otherKey.secretKey}`).toString('base64'), 'content-type': 'application/json' },
    body: JSON.stringify({ code_base64: archive.toString('base64') }),
  });
  return { status: res.status, body: await res.json() };
}

for (const [name, what, entries] of HOSTILE_ARCHIVES) {
  test(`deploy: ${what} -> HTTP 400 ${CODE_INVALID}`, async () => {
    const r = await deployArchive(name, tarGz(entries));
    assert.deepEqual([r.status, r.body.error && r.body.error.code], [400, CODE_INVALID], JSON.stringify(r.body));
  });
}

test('deploy: after the hostile archives nothing was planted and nothing is left over', async () => {
  const planted = walk(yun.dataDir).filter((r) => /PWNED|yun-hostile-x/.test(r));
  assert.deepEqual(planted, [], 'nothing planted under the data dir');
  for (const p of ['/tmp/yun-hostile-x', '/tmp/PWNED.txt', '/tmp/f', path.join(path.dirname(yun.dataDir), 'yun-hostile-x')]) {
    assert.equal(fs.existsSync(p), false, p);
  }
  assert.deepEqual(fs.readdirSync(path.join(yun.dataDir, 'functions')).sort(), [yun.envId, 'other']);
  assert.deepEqual(fs.readdirSync(path.join(yun.dataDir, 'functions', 'other')).sort(), ['hostile', 'hostile2']);
  const listed = await yun.cliJson(['fn', 'list'], asOther());
  assert.deepEqual(listed.functions.map((f) => f.name).sort(), ['hostile', 'hostile2']);
});

// ---------------------------------------------------------------------------------------
// Imports (`yun import`, platform key): an env archive that tries to read the host through
// a link or write outside its folder is refused before anything is made.

const DATA_FOLDER = '{data}';
const MANIFEST = { name: 'yun-export.json', body: JSON.stringify({ format: 1, env: 'stolen', exported_at_ms: 0, counts: {} }) };
const EMPTY_PARTS = [
  { name: 'settings.json', body: '{}' }, { name: 'rules.json', body: '[]' }, { name: 'alerts.json', body: '[]' },
  { name: 'users.ndjson', body: '' }, { name: 'ticket-keys.json', body: '[]' }, { name: 'refresh-tokens.ndjson', body: '' },
  { name: 'signing-key.json', body: JSON.stringify({ kid: 'k1', secret_hex: '00'.repeat(32) }) }, { name: 'files.ndjson', body: '' },
];
const keyOf = (secretId, role) => ({ secret_id: secretId, secret_key: 'x'.repeat(32), env: 'stolen', role, description: '', created_at: 0, revoked_at: null });
// [what, entries (or a function of the suite's state), expected status, expected message]
const HOSTILE_IMPORTS = [
  ['a file entry that is a link to /etc/passwd', [MANIFEST, { name: 'files.ndjson', body: '{"path":"p","size":1,"contentType":"text/plain","etag":"x","owner":"","createdAt":0}\n' }, { name: 'files/0', type: '2', link: '/etc/passwd' }], 400, /not a Yun export.*(outside|inside)/],
  ['settings read through a link to the data folder', [MANIFEST, { name: 'settings.json', type: '2', link: `${'../'.repeat(12)}${DATA_FOLDER}/credentials.json` }], 400, /not a Yun export.*outside/],
  ['an entry named ../../escape', [MANIFEST, { name: '../../yun-hostile-import', body: 'PWNED' }], 400, /not a Yun export/],
  ['a device node', [MANIFEST, { name: 'settings.json', type: '3', major: 1, minor: 3 }], 400, /not a Yun export/],
  ['a key that claims the platform role', [MANIFEST, ...EMPTY_PARTS, { name: 'keys.json', body: JSON.stringify([keyOf('AKIDstolenplatform', 'platform')]) }], 400, /not a live env key/],
  ["a key that is another env's", () => [MANIFEST, ...EMPTY_PARTS, { name: 'keys.json', body: JSON.stringify([keyOf(otherKey.secretId, 'env')]) }], 409, /belongs to another env/],
  ['documents that are not JSON, after the env was made (the import is taken back)', [MANIFEST, ...EMPTY_PARTS, { name: 'keys.json', body: JSON.stringify([keyOf('AKIDstolenenv', 'env')]) }, { name: 'collections/0.json', body: JSON.stringify({ name: 'loot', indexes: [] }) }, { name: 'collections/0.ndjson', body: '{"_id": "a"}\nnot json\n' }], 400, /not a Yun export: 0\.ndjson/],
];

for (const [what, entries, status, message] of HOSTILE_IMPORTS) {
  test(`import: ${what} -> HTTP ${status}, nothing made, nothing left`, async () => {
    const list = typeof entries === 'function' ? entries() : entries;
    const archive = tarGz(list.map((e) => (e.link ? { ...e, link: e.link.replace(DATA_FOLDER, yun.dataDir.slice(1)) } : e)));
    const res = await fetch(`${yun.url}/api/v1/import`, {
      method: 'POST',
      headers: { authorization: 'Basic ' + Buffer.from(`${yun.secretId}:${yun.secretKey}`).toString('base64'), 'content-type': 'application/gzip' },
      body: archive,
    });
    const body = await res.json();
    assert.equal(res.status, status, JSON.stringify(body));
    assert.match(body.error.message, message);
    const envs = await yun.cliJson(['env', 'list']);
    assert.ok(!envs.envs.some((e) => e.id === 'stolen'), 'no env was made, or it was taken back');
    const transfers = path.join(yun.dataDir, 'transfers');
    assert.deepEqual(fs.existsSync(transfers) ? fs.readdirSync(transfers) : [], [], 'the import folder is gone');
    const bad = await fetch(`${yun.url}/api/v1/envs/dev/keys`, { headers: { authorization: 'Basic ' + Buffer.from('AKIDstolenenv:' + 'x'.repeat(32)).toString('base64') } });
    assert.equal(bad.status, 401, 'no key of the archive works');
  });
}

// ---------------------------------------------------------------------------------------
// yun doctor: exactly the protections the host gives. As root here: all of them. Without
// CAP_SYS_ADMIN (as in a container that does not grant it): no namespaces, so none of the
// sandbox, but the cgroup limits. As an ordinary user: none.

const { execFile } = require('node:child_process');
const run = (cmd, args, env = process.env) => new Promise((resolve) => {
  execFile(cmd, args, { env, timeout: 60000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
});
const SANDBOX_FIELDS = ['namespaces', 'seccomp', 'uid_per_instance', 'private_tmp', 'network_policy'];
const doctor = async (prefix = []) => {
  const r = prefix.length ? await run(prefix[0], [...prefix.slice(1), BIN, 'doctor', '--json']) : await run(BIN, ['doctor', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
};
const expectReport = (report, sandbox, cgroups) => {
  const got = Object.fromEntries([...SANDBOX_FIELDS, 'memory_limit', 'pids_limit'].map((f) => [f, report[f]]));
  const want = Object.fromEntries([...SANDBOX_FIELDS.map((f) => [f, sandbox]), ['memory_limit', cgroups], ['pids_limit', cgroups]]);
  assert.deepEqual(got, want, JSON.stringify(report));
};

test('doctor reports exactly the available protections: all of them as root', async () => {
  const report = await doctor();
  expectReport(report, true, true);
  assert.deepEqual(report.missing, []);
});

test('doctor without CAP_SYS_ADMIN: no sandbox (unshare refused), cgroup limits still in force', async () => {
  const report = await doctor(['setpriv', '--bounding-set=-sys_admin']);
  expectReport(report, false, true);
  assert.match(report.missing.join('\n'), /unshare: EPERM/);
});

test('doctor as an ordinary user: nothing, and it says why', async () => {
  const report = await doctor(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);
  expectReport(report, false, false);
  assert.match(report.missing.join('\n'), /not running as root/);
});

test('yun dev --sandbox on refuses to start where the sandbox cannot be built; auto starts without it and says so', async () => {
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'yun-nosandbox-'));
  const args = ['dev', '--data-dir', dir, '--listen', '127.0.0.1:0', '--node-layer', LAYER];
  const refused = await run('setpriv', ['--bounding-set=-sys_admin', BIN, ...args, '--sandbox', 'on']);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /instance sandbox cannot be built on this host: .*unshare: EPERM.*yun doctor/);
  const child = require('node:child_process').spawn('setpriv', ['--bounding-set=-sys_admin', BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  try {
    await waitFor(() => /Isolation/.test(out), 'the banner', 20000);
    assert.match(out, /Isolation .*no sandbox/);
    assert.match(out, /instances run without the sandbox/);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.on('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------
// Instance cgroups go with the Yun that made them: at a clean stop, and after a kill -9
// at the next start.

const cgroupDirs = (pid) => ['memory', 'pids'].map((controller) => {
  const own = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n')
    .map((l) => l.split(':')).find((parts) => parts[1] && parts[1].split(',').includes(controller));
  return path.join('/sys/fs/cgroup', controller, own ? own[2] : '', `yun-${pid}`);
});

test('instance cgroups are removed at a clean stop, and after kill -9 at the next start', async () => {
  const dataDir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'yun-cgroups-'));
  const first = await startYun([], { dataDir });
  await first.admin().callFunction({ name: 'nonexistent' }).catch(() => {});
  await waitFor(() => cgroupDirs(first.child.pid).every((d) => fs.existsSync(d)), 'the cgroups to exist');
  await first.stop('SIGINT');
  for (const dir of cgroupDirs(first.child.pid)) assert.equal(fs.existsSync(dir), false, dir);

  const second = await startYun([], { dataDir });
  await waitFor(() => cgroupDirs(second.child.pid).every((d) => fs.existsSync(d)), 'the cgroups to exist');
  await second.stop('SIGKILL');
  const left = cgroupDirs(second.child.pid);
  const third = await startYun([], { dataDir });
  try {
    // Swept at start, and every 5 s while the killed instances wait to be reaped.
    for (const dir of left) await waitFor(() => !fs.existsSync(dir), `${dir} to be swept`, 15000);
  } finally {
    await third.stop('SIGINT');
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
