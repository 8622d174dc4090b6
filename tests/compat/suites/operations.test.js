'use strict';
// Operating Yun: Prometheus metrics scraped by a real Prometheus, usage that reconciles
// with the invocation records, log levels/search/causal chains, retention, readiness
// and draining on SIGTERM.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { startYun, waitFor, sleep, freePort } = require('../lib/yun');

let yun;
before(async () => {
  yun = await startYun();
  await yun.cliJson(['db', 'create', 'ops']);
  await yun.deploy('ops', 'ops', ['--memory', '256']);
});
after(async () => yun && yun.stop());

const basic = (id, key) => 'Basic ' + Buffer.from(`${id}:${key}`).toString('base64');

async function api(server, pathAndQuery) {
  const res = await fetch(`${server.url}/api/v1/envs/${server.envId}${pathAndQuery}`, {
    headers: { authorization: basic(server.secretId, server.secretKey) },
  });
  return { status: res.status, body: await res.json() };
}

async function invoke(server, name, data) {
  return server.admin().callFunction({ name, data }).catch((e) => ({ failed: e }));
}

test('a real Prometheus scrapes /metrics (platform key, Basic auth) and counts the invocations made', async () => {
  for (let i = 0; i < 7; i++) await invoke(yun, 'ops', { tag: `m${i}`, write: true });
  for (let i = 0; i < 2; i++) await invoke(yun, 'ops', { tag: `f${i}`, fail: true });

  const anonymous = await fetch(`${yun.url}/metrics`);
  assert.notEqual(anonymous.status, 200, 'metrics need a key');
  const envKey = await yun.cliJson(['key', 'create', '--description', 'not the platform']);
  const refused = await fetch(`${yun.url}/metrics`, { headers: { authorization: basic(envKey.key.secret_id, envKey.key.secret_key) } });
  assert.equal(refused.status, 403, 'an env key may not read every env\'s metrics');

  const text = await (await fetch(`${yun.url}/metrics`, { headers: { authorization: basic(yun.secretId, yun.secretKey) } })).text();
  for (const needle of [
    /yun_invocations_total\{env="dev",function="ops",outcome="success"\} 7/,
    /yun_invocations_total\{env="dev",function="ops",outcome="error"\} 2/,
    /yun_invocation_duration_seconds_bucket\{env="dev",function="ops",le="/,
    /yun_cold_starts_total\{env="dev",function="ops"\} [1-9]/,
    /yun_http_requests_total\{surface="admin",status="2xx"\} \d+/,
    /yun_db_operations_total\{env="dev",op="insert"\} 7/,
    /yun_db_operation_duration_seconds_count\{op="insert"\} \d+/,
    /yun_instances\{env="dev",function="ops",state="idle"\} [1-9]/,
    /yun_store_commits_total\{store="yun"\} [1-9]/,
    /yun_store_queued_writes\{store="documents"\} \d+/,
    /yun_ready 1/,
  ]) {
    assert.match(text, needle);
  }
  assert.doesNotMatch(text, /request_id|uid=/, 'labels are bounded: no request ids, no user ids');

  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-prom-'));
  const target = new URL(yun.url).host;
  fs.writeFileSync(path.join(dir, 'prometheus.yml'), [
    'global:',
    '  scrape_interval: 1s',
    'scrape_configs:',
    '  - job_name: yun',
    '    scrape_interval: 1s',
    '    metrics_path: /metrics',
    '    basic_auth:',
    `      username: ${JSON.stringify(yun.secretId)}`,
    `      password: ${JSON.stringify(yun.secretKey)}`,
    '    static_configs:',
    `      - targets: [${JSON.stringify(target)}]`,
    '',
  ].join('\n'));
  const prom = spawn('prometheus', [
    `--config.file=${path.join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let promLog = '';
  prom.stderr.on('data', (d) => (promLog += d));
  try {
    const query = async (q) => {
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`);
      const body = await res.json();
      return body.status === 'success' ? body.data.result : [];
    };
    const byOutcome = await waitFor(async () => {
      if (prom.exitCode !== null) throw new Error(`prometheus exited:\n${promLog}`);
      const rows = await query('sum by (outcome) (yun_invocations_total{function="ops"})').catch(() => []);
      return rows.some((r) => Number(r.value[1]) === 7) ? rows : null;
    }, 'Prometheus to scrape Yun', 30000);
    const counts = Object.fromEntries(byOutcome.map((r) => [r.metric.outcome, Number(r.value[1])]));
    // Every outcome's series exists from the function's first call (at 0 until one happens).
    assert.deepEqual(counts, { success: 7, error: 2, timeout: 0, crashed: 0, out_of_memory: 0, throttled: 0 });
    const up = await query('up{job="yun"}');
    assert.equal(up[0].value[1], '1', 'the scrape succeeds with the platform key');
  } finally {
    prom.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('usage reconciles with the invocation records: invocations, errors, GB-seconds, egress, writes', async () => {
  await yun.deploy('ops', 'metered', ['--memory', '512']);
  const sizes = [0, 1000, 5000, 20000];
  let expectedEgress = 0;
  for (const size of sizes) {
    const res = await invoke(yun, 'metered', { tag: `u${size}`, size, write: true });
    assert.equal(res.result.body.length, size);
    // The result's JSON text, as the caller got it.
    expectedEgress += Buffer.byteLength(JSON.stringify(res.result));
  }
  await invoke(yun, 'metered', { tag: 'ufail', fail: true });

  const records = (await api(yun, '/functions/metered/invocations?limit=100')).body.invocations;
  assert.equal(records.length, 5);
  const recorded = records.reduce((acc, r) => ({
    mbMs: acc.mbMs + r.memory_mb * r.billed_ms,
    egress: acc.egress + r.response_bytes,
    errors: acc.errors + (r.status === 'success' ? 0 : 1),
  }), { mbMs: 0, egress: 0, errors: 0 });
  assert.ok(records.every((r) => r.memory_mb === 512), 'records carry the memory limit they ran with');
  assert.equal(recorded.egress, expectedEgress, 'egress is the result bytes the callers got');

  const report = await yun.cliJson(['usage', '--by', 'function', '--function', 'metered']);
  assert.equal(report.rows.length, 1);
  const row = report.rows[0];
  assert.equal(row.key, 'metered');
  assert.equal(row.invocations, 5);
  assert.equal(row.errors, 1);
  assert.equal(row.mb_ms, recorded.mbMs);
  assert.ok(Math.abs(row.gb_seconds - recorded.mbMs / 1024 / 1000) < 1e-9);
  assert.equal(row.egress_bytes, expectedEgress);
  assert.equal(row.db_writes, sizes.length, 'one insert per successful call');
  assert.ok(report.documents >= sizes.length, 'documents are counted as they are now');

  const hourly = (await api(yun, '/usage?by=hour&function=metered')).body;
  assert.equal(hourly.total.invocations, 5, 'the hourly roll-ups add up to the same');
  const bad = await api(yun, '/usage?by=week');
  assert.equal(bad.status, 400);
  assert.match(bad.body.error.message, /by must be function, hour or day/);
  const table = await yun.cli(['usage']);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /metered\s+5\s+1\s/);
});

test('logs: levels, --grep, --until, --json, and a request id finds the invocations it caused', async () => {
  const root = await yun.admin().callFunction({ name: 'ops', data: { tag: 'root', call: 'ops', grandchild: 'ops' } });
  assert.equal(root.result.child.child.tag, 'root/child/child');
  const rid = root.requestId;

  const chain = await yun.logs('ops', rid);
  const ids = new Set(chain.map((l) => l.request_id));
  assert.equal(ids.size, 3, 'the root, its child and its grandchild');
  for (const tag of ['root', 'root/child', 'root/child/child']) {
    assert.ok(chain.some((l) => l.message === `info line ${tag}`), tag);
  }
  const levels = Object.fromEntries(chain.filter((l) => l.request_id === rid).map((l) => [l.message, l.level]));
  assert.deepEqual(levels, {
    'debug line root': 'debug', 'info line root': 'info', 'warn line root': 'warn', 'error line root': 'error',
  });

  const own = await yun.cli(['fn', 'logs', 'ops', '--request-id', rid, '--only', '--json']);
  assert.deepEqual([...new Set(own.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).request_id))], [rid]);

  const warn = await yun.cli(['fn', 'logs', 'ops', '--request-id', rid, '--level', 'warn', '--json']);
  const warnLevels = new Set(warn.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).level));
  assert.deepEqual([...warnLevels].sort(), ['error', 'warn']);

  const grep = await yun.cli(['fn', 'logs', 'ops', '--grep', '^info line root/child$', '--json']);
  const grepped = grep.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).message);
  assert.deepEqual(grepped, ['info line root/child']);

  const old = await yun.cli(['fn', 'logs', 'ops', '--until', '1h', '--json']);
  assert.equal(old.code, 0, old.stderr);
  assert.equal(old.stdout.trim(), '', 'nothing is an hour old');

  const text = await yun.cli(['fn', 'logs', 'ops', '--request-id', rid, '--only']);
  assert.match(text.stdout, new RegExp(`${rid} warn +warn line root`));

  // A write that fires a database trigger: the delivery is an invocation the request
  // caused, in its trace.
  await yun.deploy('ops', 'onops');
  await yun.cliJson(['fn', 'trigger', 'create', 'onops', '--name', 'tagged', '--type', 'database',
    '--config', JSON.stringify({ collection: 'ops', events: ['create'], filter: { tag: 'fires' } })]);
  const writer = await yun.admin().callFunction({ name: 'ops', data: { tag: 'fires', write: true } });
  const fired = await waitFor(async () => {
    const lines = await yun.logs('ops', writer.requestId);
    return lines.some((l) => l.message === 'info line untagged') ? lines : null;
  }, 'the triggered invocation in the writer\'s logs', 20000);
  const delivery = fired.find((l) => l.message === 'info line untagged').request_id;
  assert.notEqual(delivery, writer.requestId);
  const writerTrace = await yun.cliJson(['trace', writer.requestId]);
  const triggered = writerTrace.spans.find((s) => s.name === 'invoke onops');
  assert.equal(triggered.request_id, delivery);
  const writerSpan = writerTrace.spans.find((s) => s.request_id === writer.requestId);
  assert.equal(triggered.parent_span_id, writerSpan.span_id, 'the trigger delivery hangs under the invocation that wrote');

  const badRegex = await yun.cli(['fn', 'logs', 'ops', '--grep', '(unclosed']);
  assert.notEqual(badRegex.code, 0);
  assert.match(badRegex.stderr, /grep is not a valid regular expression/);
});

test('retention: with small limits old logs and records go, new ones stay', async () => {
  const small = await startYun(['--retention-interval', '1s']);
  try {
    await small.deploy('ops', 'ops');
    // 1 MiB of logs at most: about 3 MiB are written, 200 KiB per call.
    await small.cliJson(['env', 'configure', '--log-max-mb', '1']);
    const ids = [];
    for (let i = 0; i < 15; i++) ids.push((await small.admin().callFunction({ name: 'ops', data: { tag: `r${i}`, pad: 200000 } })).requestId);
    const keptBytes = async () => (await api(small, '/logs?limit=10000')).body.logs
      .reduce((sum, l) => sum + Buffer.byteLength(l.message) + 64, 0);
    await waitFor(async () => (await keptBytes()) <= 1 << 20, 'the logs to shrink to 1 MiB', 20000);
    assert.equal((await small.logs('ops', ids[0])).length, 0, 'the oldest lines went');
    const newest = await small.logs('ops', ids[14]);
    assert.equal(newest.length, 5, 'the newest invocation keeps every line');
    assert.ok((await keptBytes()) > (1 << 20) - 250000, 'no more than one call\'s lines beyond the limit went');

    // By age: everything older than two seconds.
    await small.cliJson(['env', 'configure', '--log-retention', '2s']);
    const late = (await small.admin().callFunction({ name: 'ops', data: { tag: 'late' } })).requestId;
    await waitFor(async () => (await api(small, '/logs?limit=10000')).body.logs.length === 0, 'every line to age out', 20000);
    const record = await api(small, `/invocations/${late}`);
    assert.equal(record.status, 404, 'the invocation record aged out too');
    const fresh = (await small.admin().callFunction({ name: 'ops', data: { tag: 'fresh' } })).requestId;
    assert.equal((await small.logs('ops', fresh)).length, 4, 'new lines are written and found');
  } finally {
    await small.stop();
  }
});

test('traces: a traceparent at the edge, a call to another function and a write give one trace; an OTLP receiver gets the same spans', async () => {
  const received = [];
  const receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      received.push({ path: req.url, type: req.headers['content-type'], token: req.headers['x-otlp-token'], body: JSON.parse(body) });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const traced = await startYun([], {
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.address().port}`,
      OTEL_EXPORTER_OTLP_HEADERS: 'x-otlp-token=s%3Dcret',
      OTEL_SERVICE_NAME: 'yun-under-test',
    },
  });
  try {
    await traced.cliJson(['db', 'create', 'ops']);
    await traced.deploy('ops', 'ops');
    await traced.deploy('ops', 'callee');
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpan = '00f067aa0ba902b7';
    const res = await fetch(`${traced.url}/api/v1/envs/${traced.envId}/functions/ops/invoke`, {
      method: 'POST',
      headers: { authorization: basic(traced.secretId, traced.secretKey), traceparent: `00-${traceId}-${callerSpan}-01` },
      body: JSON.stringify({ tag: 't', call: 'callee', write: true }),
    });
    const invoked = await res.json();
    const rid = invoked.request_id;

    const trace = await traced.cliJson(['trace', rid]);
    assert.equal(trace.trace_id, traceId, 'the trace the caller started');
    const byName = (name) => trace.spans.filter((s) => s.name === name);
    const [root] = byName('invoke ops');
    assert.equal(root.request_id, rid);
    assert.equal(root.parent_span_id, callerSpan, 'under the caller\'s span');
    assert.equal(invoked.result.traceparent, `00-${traceId}-${root.span_id}-01`, 'the function sees its own span in TRACEPARENT');
    const [child] = byName('invoke callee');
    assert.ok(child, JSON.stringify(trace.spans));
    assert.equal(child.parent_span_id, root.span_id, 'the called function is a child of its caller');
    assert.notEqual(child.request_id, rid);
    const [insert] = byName('db.insert');
    assert.equal(insert.parent_span_id, root.span_id, 'the write is a child of the invocation that made it');
    assert.equal(insert.function, 'ops');
    for (const span of trace.spans) {
      assert.ok(span.start_us >= root.start_us - 1000 && span.duration_us >= 0, JSON.stringify(span));
    }
    const tree = await traced.cli(['trace', rid]);
    assert.match(tree.stdout, new RegExp(`^trace ${traceId}`));
    assert.match(tree.stdout, /invoke ops {2}[\d.]+ ms {2}success/);
    assert.match(tree.stdout, /[├└]─ invoke callee/);
    assert.match(tree.stdout, /[├└]─ db\.insert/);

    const plain = await traced.admin().callFunction({ name: 'callee', data: { tag: 'alone' } });
    assert.equal((await traced.cliJson(['trace', plain.requestId])).trace_id, plain.requestId, 'without a traceparent the request id names the trace');

    const exported = await waitFor(() => {
      const spans = received.flatMap((r) => r.body.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)));
      const ours = spans.filter((s) => s.traceId === traceId);
      return ours.length >= trace.spans.length ? ours : null;
    }, 'the OTLP receiver to get the trace', 20000);
    assert.deepEqual(new Set(exported.map((s) => s.spanId)), new Set(trace.spans.map((s) => s.span_id)));
    const exportedRoot = exported.find((s) => s.spanId === root.span_id);
    assert.equal(exportedRoot.parentSpanId, callerSpan);
    assert.equal(exportedRoot.name, 'invoke ops');
    const first = received[0];
    assert.equal(first.path, '/v1/traces');
    assert.match(first.type, /application\/json/);
    assert.equal(first.token, 's=cret', 'OTEL_EXPORTER_OTLP_HEADERS, percent-decoded');
    assert.deepEqual(first.body.resourceSpans[0].resource.attributes, [{ key: 'service.name', value: { stringValue: 'yun-under-test' } }]);
  } finally {
    await traced.stop();
    receiver.closeAllConnections();
    receiver.close();
  }
});

test('alerts: a failing function trips an error-rate rule; the webhook gets it, with retries, and the resolution', async () => {
  const got = [];
  let refuseNext = 1;
  const receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (refuseNext > 0) {
        refuseNext -= 1;
        res.writeHead(503);
        res.end();
        return;
      }
      got.push(JSON.parse(body));
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const webhook = `http://127.0.0.1:${receiver.address().port}/hook`;
  const alerting = await startYun(['--alert-interval', '1s']);
  try {
    await alerting.deploy('ops', 'ops');
    const bad = await alerting.cli(['alert', 'create', 'errors', '--metric', 'error_rate', '--threshold', '50', '--window', '5s', '--function', 'ops', '--webhook', 'ftp://nope']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /webhook must be an http or https URL/);
    const created = await alerting.cliJson(['alert', 'create', 'errors', '--metric', 'error_rate', '--threshold', '50', '--window', '5s', '--function', 'ops', '--webhook', webhook]);
    assert.equal(created.alert.name, 'errors');
    const twice = await alerting.cli(['alert', 'create', 'errors', '--metric', 'p95_ms', '--threshold', '1', '--webhook', webhook]);
    assert.notEqual(twice.code, 0, 'names are unique per env');

    for (let i = 0; i < 3; i++) await invoke(alerting, 'ops', { tag: `bad${i}`, fail: true });
    await invoke(alerting, 'ops', { tag: 'good' });
    const firing = await waitFor(() => got.find((a) => a.state === 'firing'), 'the firing alert', 20000);
    assert.equal(firing.alert, 'errors');
    assert.equal(firing.function, 'ops');
    assert.equal(firing.metric, 'error_rate');
    assert.equal(firing.value, 75);
    assert.equal(firing.threshold, 50);
    assert.equal(refuseNext, 0, 'the first delivery was refused and retried');
    const listed = (await alerting.cliJson(['alert', 'list'])).alerts;
    assert.equal(listed[0].firing, true);

    // The failures leave the 5 s window: the rule is resolved.
    const resolved = await waitFor(() => got.find((a) => a.state === 'resolved'), 'the resolution', 20000);
    assert.equal(resolved.value, 0);

    const tested = await alerting.cliJson(['alert', 'test', 'errors']);
    assert.equal(tested.delivery.delivered, true);
    assert.equal(got.at(-1).state, 'test');
    await alerting.cliJson(['alert', 'delete', 'errors']);
    assert.deepEqual((await alerting.cliJson(['alert', 'list'])).alerts, []);
  } finally {
    await alerting.stop();
    receiver.closeAllConnections();
    receiver.close();
  }
});

test('backups: taken online while writes go on, consistent across documents and files; a restore makes a new data folder as of then', async () => {
  const live = await startYun();
  let restored;
  const restoreDir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-restored-'));
  try {
    const app = live.admin();
    const db = app.database();
    await live.cliJson(['db', 'create', 'notes']);
    await live.cliJson(['db', 'create', 'pairs']);
    await live.deploy('ops', 'ops');
    for (const id of ['a', 'b', 'c']) await db.collection('notes').add({ _id: id, text: `note ${id}` });
    const bytes = (seed, n) => Buffer.from(Array.from({ length: n }, (_, i) => (i * seed + seed) % 256));
    const f1 = (await app.uploadFile({ cloudPath: 'keep/one.bin', fileContent: bytes(7, 300000) })).fileID;
    const f2 = (await app.uploadFile({ cloudPath: 'keep/two.bin', fileContent: bytes(11, 5000) })).fileID;

    // A writer that uploads a file, then records it: a consistent backup never holds a
    // record without its file.
    let writing = true;
    const writer = (async () => {
      for (let k = 0; writing; k++) {
        const up = await app.uploadFile({ cloudPath: `pairs/${k}.bin`, fileContent: bytes(k % 251 + 1, 2000) });
        await db.collection('pairs').add({ k, fileID: up.fileID });
      }
    })();
    await sleep(300);
    const envKey = await live.cliJson(['key', 'create']);
    const refused = await live.cli(['backup', 'create'], { YUN_SECRET_ID: envKey.key.secret_id, YUN_SECRET_KEY: envKey.key.secret_key });
    assert.notEqual(refused.code, 0, 'a backup holds every env: platform keys only');
    const { backup } = await live.cliJson(['backup', 'create']);
    await sleep(300);
    writing = false;
    await writer;
    assert.ok(backup.files >= 2, JSON.stringify(backup));
    assert.deepEqual((await live.cliJson(['backup', 'list'])).backups.map((b) => b.id), [backup.id]);

    // After the backup: a change, a delete, an insert; a file deleted, one replaced, one added.
    await db.collection('notes').doc('a').update({ text: 'changed' });
    await db.collection('notes').doc('b').remove();
    await db.collection('notes').add({ _id: 'd', text: 'after' });
    await app.deleteFile({ fileList: [f1] });
    await app.uploadFile({ cloudPath: 'keep/two.bin', fileContent: bytes(13, 9000) });
    await app.uploadFile({ cloudPath: 'keep/three.bin', fileContent: bytes(17, 10) });

    const notEmpty = await live.cli(['backup', 'restore', backup.id, '--data-dir', live.dataDir, '--to', live.dataDir]);
    assert.notEqual(notEmpty.code, 0);
    assert.match(notEmpty.stderr, /is not empty/);
    const done = await live.cli(['backup', 'restore', backup.id, '--data-dir', live.dataDir, '--to', restoreDir, '--json']);
    assert.equal(done.code, 0, done.stderr);

    restored = await startYun([], { dataDir: restoreDir });
    const rapp = restored.admin();
    const rdb = rapp.database();
    const notes = (await rdb.collection('notes').orderBy('_id', 'asc').get()).data;
    assert.deepEqual(notes.map((n) => [n._id, n.text]), [['a', 'note a'], ['b', 'note b'], ['c', 'note c']]);
    const one = await rapp.downloadFile({ fileID: f1 });
    assert.ok(one.fileContent.equals(bytes(7, 300000)), 'a file deleted after the backup is back, byte for byte');
    const two = await rapp.downloadFile({ fileID: f2 });
    assert.ok(two.fileContent.equals(bytes(11, 5000)), 'a file replaced after the backup has its old bytes');
    await assert.rejects(rapp.downloadFile({ fileID: f2.replace('two.bin', 'three.bin') }), { code: 'STORAGE_FILE_NONEXIST' });
    const pairs = (await rdb.collection('pairs').limit(1000).get()).data;
    assert.ok(pairs.length > 0, 'the backup caught some of the writer\'s work');
    for (const pair of pairs) {
      const file = await rapp.downloadFile({ fileID: pair.fileID });
      assert.ok(file.fileContent.equals(bytes(pair.k % 251 + 1, 2000)), `record ${pair.k} has its file`);
    }
    const ran = await rapp.callFunction({ name: 'ops', data: { tag: 'restored' } });
    assert.equal(ran.result.tag, 'restored', 'function code and records come back too');
    // The live folder did not move.
    assert.deepEqual((await db.collection('notes').orderBy('_id', 'asc').get()).data.map((n) => n._id), ['a', 'c', 'd']);
    await restored.stop();
    restored = null;

    // Point in time: the state at t1, between two rounds of changes, from the backup and
    // the change logs (files retired after t1 are still found).
    await sleep(50);
    const t1 = Date.now();
    await sleep(50);
    await db.collection('notes').doc('c').update({ text: 'later' });
    await db.collection('notes').doc('d').remove();
    await app.deleteFile({ fileList: [f2.replace('two.bin', 'three.bin')] });
    await app.uploadFile({ cloudPath: 'keep/two.bin', fileContent: bytes(19, 100) });
    const atDir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-at-'));
    const pitr = await live.cli(['db', 'restore', '--to', new Date(t1).toISOString(), '--into', atDir, '--data-dir', live.dataDir]);
    assert.equal(pitr.code, 0, pitr.stderr);
    assert.match(pitr.stdout, new RegExp(`Restored backup ${backup.id} and the changes that followed it`));
    const early = await live.cli(['db', 'restore', '--to', String(backup.created_at_ms - 60000), '--into', fs.mkdtempSync(path.join(os.tmpdir(), 'yun-at-')), '--data-dir', live.dataDir]);
    assert.notEqual(early.code, 0);
    assert.match(early.stderr, /no backup .* was taken before that time/);
    restored = await startYun([], { dataDir: atDir });
    const adb = restored.admin().database();
    const atNotes = (await adb.collection('notes').orderBy('_id', 'asc').get()).data;
    assert.deepEqual(atNotes.map((n) => [n._id, n.text]), [['a', 'changed'], ['c', 'note c'], ['d', 'after']]);
    const ratapp = restored.admin();
    await assert.rejects(ratapp.downloadFile({ fileID: f1 }), { code: 'STORAGE_FILE_NONEXIST' });
    assert.ok((await ratapp.downloadFile({ fileID: f2 })).fileContent.equals(bytes(13, 9000)), 'the version of t1, retired since');
    assert.ok((await ratapp.downloadFile({ fileID: f2.replace('two.bin', 'three.bin') })).fileContent.equals(bytes(17, 10)), 'deleted after t1, back');
    const indexed = await adb.collection('notes').where({ text: 'after' }).get();
    assert.deepEqual(indexed.data.map((n) => n._id), ['d']);
  } finally {
    if (restored) await restored.stop();
    await live.stop();
  }
});

test('readiness: /readyz answers 503 while draining on SIGTERM; requests are still served, then Yun stops', async () => {
  const draining = await startYun(['--drain', '3s']);
  try {
    await waitFor(async () => (await fetch(`${draining.url}/readyz`)).status === 200, 'ready');
    await draining.deploy('ops', 'ops');
    draining.child.kill('SIGTERM');
    const reason = await waitFor(async () => {
      const res = await fetch(`${draining.url}/readyz`);
      return res.status === 503 ? (await res.json()).reason : null;
    }, 'readyz to say draining', 5000);
    assert.match(reason, /draining/);
    const served = await draining.admin().callFunction({ name: 'ops', data: { tag: 'during-drain' } });
    assert.equal(served.result.traceparent, `00-${served.requestId}-${served.requestId.slice(16)}-01`, 'a trace Yun starts is named by the request id');
    assert.equal(served.result.tag, 'during-drain', 'requests arriving while draining are served');
    const { code } = await draining.stop();
    assert.equal(code, 0, draining.output());
  } finally {
    await draining.stop();
  }
});
