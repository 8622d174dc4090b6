'use strict';
// Events: async invocations with SCF's retry policy, the dead-letter queue and replay.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startYun, waitFor, deleteStreams, FUNCTIONS } = require('../lib/yun');

let yun;
before(async () => {
  yun = await startYun();
  await yun.cliJson(['db', 'create', 'attempts']);
  // Retries a second apart so the suite does not wait SCF's minute.
  await yun.deploy('flaky', 'flaky', ['--async-retries', '2', '--async-retry-interval', '1s']);
});
after(async () => yun && yun.stop());

async function api(method, path) {
  const res = await fetch(`${yun.url}/api/v1/envs/${yun.envId}${path}`, {
    method,
    headers: { authorization: 'Basic ' + Buffer.from(`${yun.secretId}:${yun.secretKey}`).toString('base64') },
  });
  return { status: res.status, body: await res.json() };
}

async function attempts(key) {
  const got = await yun.admin().database().collection('attempts').doc(key).get();
  return got.data[0];
}

test('an async event that throws twice succeeds on its second retry; every attempt is a record', async () => {
  const queued = await yun.cliJson(['fn', 'invoke', 'flaky', '--async', JSON.stringify({ key: 'k1', failTimes: 2 })]);
  assert.equal(queued.queued, true);
  assert.match(queued.request_id, /^[0-9a-f]{32}$/);
  const done = await waitFor(async () => {
    const doc = await attempts('k1');
    return doc && doc.done ? doc : null;
  }, 'the third attempt', 30000);
  assert.equal(done.n, 3);
  assert.deepEqual(done.seen, [queued.request_id, queued.request_id, queued.request_id], 'every attempt keeps the request id');
  assert.equal(done.source, 'async');
  const record = await waitFor(async () => {
    const r = await api('GET', `/invocations/${queued.request_id}`);
    return r.body.invocation && r.body.invocation.status === 'success' ? r.body.invocation : null;
  }, 'the last attempt\'s record');
  assert.equal(record.attempt, 3);
  assert.equal(record.trigger, 'async');
  const lines = await yun.logs('flaky', queued.request_id);
  for (const n of [1, 2, 3]) assert.ok(lines.some((l) => l.message.includes(`attempt ${n} of k1`)), `attempt ${n} logged under the request id`);
  assert.equal(lines.filter((l) => l.stream === 'platform' && /failing on purpose/.test(l.message)).length, 2);
  const { body } = await api('GET', '/functions/flaky/dead-letters');
  assert.deepEqual(body.dead_letters, []);
});

test('an event that always throws lands in the dead-letter queue and a replay after a fix succeeds', async () => {
  const queued = await yun.cliJson(['fn', 'invoke', 'flaky', '--async', JSON.stringify({ key: 'k2', failTimes: 99 })]);
  const letters = await waitFor(async () => {
    const l = (await yun.cliJson(['fn', 'dlq', 'list', 'flaky'])).dead_letters;
    return l.length ? l : null;
  }, 'the dead letter', 30000);
  assert.equal(letters.length, 1);
  const [letter] = letters;
  assert.equal(letter.request_id, queued.request_id);
  assert.equal(letter.retry_num, 2, "SCF's RetryNum: retries after the first attempt");
  assert.equal(letter.error_code, 'FUNCTIONS_EXECUTE_FAIL');
  assert.match(letter.error_message, /failing on purpose, attempt 3/);
  assert.deepEqual(JSON.parse(letter.event), { key: 'k2', failTimes: 99 });
  assert.equal(letter.source, 'async');
  assert.ok(letter.failed_at_ms >= letter.enqueued_at_ms);
  assert.equal((await attempts('k2')).n, 3, 'no attempt after the last retry');
  const shown = await yun.cliJson(['fn', 'dlq', 'show', 'flaky', queued.request_id]);
  assert.equal(shown.request_id, queued.request_id);
  const table = await yun.cli(['fn', 'dlq', 'list', 'flaky']);
  assert.match(table.stdout, /failing on purpose/);

  // The fix is a redeploy; the replay runs the fixed version under a new request id.
  await yun.deploy('flaky', 'flaky', ['--env-var', 'FIXED=1']);
  const replayed = await yun.cliJson(['fn', 'dlq', 'replay', 'flaky']);
  assert.equal(replayed.replayed.length, 1);
  assert.notEqual(replayed.replayed[0], queued.request_id);
  const done = await waitFor(async () => {
    const doc = await attempts('k2');
    return doc && doc.done ? doc : null;
  }, 'the replayed event', 30000);
  assert.equal(done.n, 4);
  assert.equal(done.source, 'replay');
  assert.deepEqual((await yun.cliJson(['fn', 'dlq', 'list', 'flaky'])).dead_letters, []);
});

test('dead letters are purged one or all; a missing one is a clear error', async () => {
  await yun.deploy('flaky', 'flaky', ['--env-var', 'FIXED=0', '--async-retries', '0', '--async-retry-interval', '1s']);
  const ids = [];
  for (const key of ['p1', 'p2']) {
    ids.push((await yun.cliJson(['fn', 'invoke', 'flaky', '--async', JSON.stringify({ key, failTimes: 9 })])).request_id);
  }
  await waitFor(async () => (await yun.cliJson(['fn', 'dlq', 'list', 'flaky'])).dead_letters.length === 2 || null, 'two dead letters', 30000);
  assert.equal((await attempts('p1')).n, 1, 'retries 0: one attempt only');
  assert.equal((await yun.cliJson(['fn', 'dlq', 'purge', 'flaky', ids[0]])).purged, 1);
  const left = (await yun.cliJson(['fn', 'dlq', 'list', 'flaky'])).dead_letters;
  assert.deepEqual(left.map((l) => l.request_id), [ids[1]]);
  for (const args of [['show', 'flaky', ids[0]], ['purge', 'flaky', ids[0]], ['replay', 'flaky', ids[0]]]) {
    const r = await yun.cli(['fn', 'dlq', ...args]);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, new RegExp(`no dead letter ${ids[0]}`));
  }
  assert.equal((await yun.cliJson(['fn', 'dlq', 'purge', 'flaky'])).purged, 1);
});

test('the /admin invoke action queues with InvocationType Event; bad async requests are refused', async () => {
  await yun.deploy('flaky', 'flaky', ['--env-var', 'FIXED=1']);
  const { json } = await yun.signedAdmin({
    action: 'functions.invokeFunction', function_name: 'flaky', InvocationType: 'Event',
    request_data: JSON.stringify({ key: 'a1', failTimes: 0 }),
  });
  const answer = JSON.parse(json.data.response_data);
  assert.equal(answer.InvocationType, 'Event');
  assert.match(answer.RequestId, /^[0-9a-f]{32}$/);
  await waitFor(async () => ((await attempts('a1')) || {}).done || null, 'the queued event');

  const wrong = await yun.signedAdmin({ action: 'functions.invokeFunction', function_name: 'flaky', InvocationType: 'Later', request_data: '{}' });
  assert.equal(wrong.json.code, 'INVALID_PARAM');
  const missing = await yun.cli(['fn', 'invoke', 'nosuch', '--async']);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /nosuch does not exist/);
  const big = await api('POST', '/functions/flaky/invoke?async=true');
  assert.equal(big.status, 200, 'an empty body is the event {}');
  const huge = await fetch(`${yun.url}/api/v1/envs/${yun.envId}/functions/flaky/invoke?async=true`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from(`${yun.secretId}:${yun.secretKey}`).toString('base64') },
    body: JSON.stringify({ key: 'x', pad: 'x'.repeat(130 << 10) }),
  });
  assert.equal(huge.status, 413);
  assert.match((await huge.json()).error.message, /at most 131072 bytes/);
  const bad = await yun.cli(['fn', 'deploy', path.join(FUNCTIONS, 'flaky'), '--name', 'flaky', '--async-retries', '11']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /async retries must be between 0 and 10, got 11/);
});

test('a retry that finds its function deleted is dead-lettered, and a deleted function\'s letters cannot be replayed', async () => {
  await yun.deploy('flaky', 'gone', ['--async-retries', '1', '--async-retry-interval', '2s']);
  const id = (await yun.cliJson(['fn', 'invoke', 'gone', '--async', JSON.stringify({ key: 'g1', failTimes: 9 })])).request_id;
  // Deleted between the failed first attempt and its retry, two seconds later.
  await waitFor(async () => ((await attempts('g1')) || {}).n === 1 || null, 'the first attempt', 30000);
  await yun.cliJson(['fn', 'delete', 'gone']);
  const [letter] = await waitFor(async () => {
    const l = (await yun.cliJson(['fn', 'dlq', 'list', 'gone'])).dead_letters;
    return l.length ? l : null;
  }, 'the dead letter', 30000);
  assert.equal(letter.request_id, id);
  assert.equal(letter.error_code, 'FUNCTION_NOT_FOUND');
  assert.equal(letter.retry_num, 1);
  assert.equal((await attempts('g1')).n, 1);
  const r = await yun.cli(['fn', 'dlq', 'replay', 'gone']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /gone does not exist/);
  // The letter is still there to read or purge.
  assert.equal((await yun.cliJson(['fn', 'dlq', 'purge', 'gone'])).purged, 1);
});

async function docs(collection, where = {}) {
  const got = await yun.admin().database().collection(collection).where(where).limit(1000).get();
  return got.data;
}

test('a timer trigger from config.json fires every second with SCF\'s event, until deleted', async () => {
  await yun.cliJson(['db', 'create', 'ticks']);
  await yun.deploy('ticker', 'ticker');
  const listed = await yun.cliJson(['fn', 'trigger', 'list', 'ticker']);
  assert.deepEqual(listed.triggers.map((t) => [t.name, t.type, t.config]), [['everySecond', 'timer', '* * * * * * *']]);
  const ticks = await waitFor(async () => {
    const t = await docs('ticks');
    return t.length >= 3 ? t : null;
  }, 'three ticks', 15000);
  for (const { event, triggerSrc } of ticks) {
    assert.equal(event.Type, 'Timer');
    assert.equal(event.TriggerName, 'everySecond');
    assert.equal(event.Message, '');
    assert.match(event.Time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'a whole second, in UTC');
    assert.equal(triggerSrc, 'timer');
  }
  const times = ticks.map((t) => t.event.Time);
  assert.equal(new Set(times).size, times.length, 'one event per tick');
  const records = await api('GET', '/functions/ticker/invocations?limit=5');
  assert.ok(records.body.invocations.every((r) => r.trigger === 'everySecond'));
  await yun.cliJson(['fn', 'trigger', 'delete', 'ticker', 'everySecond']);
  await new Promise((r) => setTimeout(r, 1500));
  const after = (await docs('ticks')).length;
  await new Promise((r) => setTimeout(r, 2000));
  assert.equal((await docs('ticks')).length, after, 'no tick after the delete');
});

test('a database trigger sees create, update and delete with before and after, and not its own writes', async () => {
  await yun.cliJson(['db', 'create', 'photos']);
  await yun.cliJson(['db', 'create', 'seen']);
  await yun.deploy('onchange', 'onchange');
  await yun.cliJson(['fn', 'trigger', 'create', 'onchange', '--name', 'photos', '--type', 'database',
    '--config', JSON.stringify({ collection: 'photos' })]);
  const photos = yun.admin().database().collection('photos');
  const { id } = await photos.add({ title: 'first', album: 'a1' });
  await waitFor(async () => ((await photos.doc(id).get()).data[0] || {}).tagged || null, 'the trigger tagging the photo');
  await photos.doc(id).update({ title: 'renamed' });
  await photos.doc(id).remove();
  const seen = await waitFor(async () => {
    const s = await docs('seen');
    return s.length >= 3 ? s : null;
  }, 'three change events');
  await new Promise((r) => setTimeout(r, 1000));
  const events = (await docs('seen')).map((s) => s.event).sort((a, b) => a.Seq - b.Seq);
  assert.deepEqual(events.map((e) => e.Event), ['create', 'update', 'delete'], 'the tagging update made by the trigger itself fired nothing');
  const [created, updated, deleted] = events;
  for (const e of events) {
    assert.equal(e.Type, 'Database');
    assert.equal(e.TriggerName, 'photos');
    assert.equal(e.Collection, 'photos');
    assert.equal(e.DocId, id);
  }
  assert.equal(created.Before, null);
  assert.equal(created.After.title, 'first');
  assert.equal(updated.Before.title, 'first');
  assert.equal(updated.Before.tagged, true, 'the trigger\'s own write is in the history');
  assert.equal(updated.After.title, 'renamed');
  assert.equal(deleted.Before.title, 'renamed');
  assert.equal(deleted.After, null);
  assert.ok(seen.length >= 3);
  await yun.cliJson(['fn', 'trigger', 'delete', 'onchange', 'photos']);
});

test('a database trigger\'s filter and events select the changes it gets', async () => {
  await yun.cliJson(['db', 'create', 'albums']);
  await yun.cliJson(['fn', 'trigger', 'create', 'onchange', '--name', 'a1Only', '--type', 'database',
    '--config', JSON.stringify({ collection: 'albums', events: ['update'], filter: { album: 'a1' } })]);
  const albums = yun.admin().database().collection('albums');
  const one = await albums.add({ album: 'a1', n: 1 });
  const two = await albums.add({ album: 'a2', n: 1 });
  await albums.doc(two.id).update({ n: 2 });
  await albums.doc(one.id).update({ n: 2 });
  const got = await waitFor(async () => {
    const s = await docs('seen', { 'event.Collection': 'albums' });
    return s.length ? s : null;
  }, 'the selected change');
  await new Promise((r) => setTimeout(r, 1000));
  const all = await docs('seen', { 'event.Collection': 'albums' });
  assert.equal(all.length, 1, 'only the update of a1');
  assert.equal(got[0].event.DocId, one.id);
  assert.equal(got[0].event.After.n, 2);
});

test('bad triggers are refused with clear errors', async () => {
  const create = (fn, name, type, config) => yun.cli(['fn', 'trigger', 'create', fn, '--name', name, '--type', type, '--config', config]);
  for (const [args, says] of [
    [['onchange', 't1', 'timer', '0 0 2 1 * *'], /7 fields/],
    [['onchange', 't1', 'timer', '0 0 2 1 * * 2100'], /year field: 2100 is out of range/],
    [['onchange', 't1', 'timer', '61 * * * * * *'], /second field: 61/],
    [['onchange', 't1', 'timer', '0 0 0 30 2 * *'], /never fires again/],
    [['onchange', 't1', 'timer', '0 0 0 1 1 * 2020'], /never fires again/],
    [['nosuch', 't1', 'timer', '* * * * * * *'], /nosuch does not exist/],
    [['onchange', 't1', 'database', '{"collection":"missing"}'], /collection missing does not exist/],
    [['onchange', 't1', 'database', '{"collection":"albums","filter":{"n":{"$bad":1}}}'], /filter/],
    [['onchange', 't1', 'queue', '"x"'], /unknown type "queue"/],
    [['onchange', '1bad', 'timer', '* * * * * * *'], /a name is a letter/],
    [['onchange', 'a1Only', 'timer', '0 0 0 * * * *'], /already has a trigger "a1Only"/],
  ]) {
    const r = await create(...args);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, says, args.join(' '));
  }
  const del = await yun.cli(['fn', 'trigger', 'delete', 'onchange', 'nosuch']);
  assert.match(del.stderr, /has no trigger "nosuch"/);
  const offset = await yun.cli(['env', 'configure', '--timer-utc-offset', '8']);
  assert.match(offset.stderr, /timer_utc_offset must look like \+08:00/);
});

test('storage triggers fire on uploadFile and deleteFile in COS\'s shape, by prefix and suffix', async () => {
  await yun.cliJson(['db', 'create', 'uploads']);
  await yun.deploy('onupload', 'onupload');
  const config = (event) => JSON.stringify({ event, filter: { Prefix: 'photos/', Suffix: '.jpg' } });
  await yun.cliJson(['fn', 'trigger', 'create', 'onupload', '--name', 'created', '--type', 'storage', '--config', config('cos:ObjectCreated:*')]);
  await yun.cliJson(['fn', 'trigger', 'create', 'onupload', '--name', 'removed', '--type', 'storage', '--config', config('cos:ObjectRemove:*')]);
  const app = yun.admin();
  const { fileID } = await app.uploadFile({ cloudPath: 'photos/cat.jpg', fileContent: Buffer.from('meow') });
  await app.uploadFile({ cloudPath: 'photos/notes.txt', fileContent: Buffer.from('no') });
  await app.uploadFile({ cloudPath: 'other/dog.jpg', fileContent: Buffer.from('no') });
  await app.deleteFile({ fileList: [fileID] });
  const got = await waitFor(async () => {
    const u = await docs('uploads');
    return u.length >= 2 ? u : null;
  }, 'two storage events');
  await new Promise((r) => setTimeout(r, 1000));
  const all = (await docs('uploads')).map(({ name, key, size, fileID: id }) => ({ name, key, size, id }));
  all.sort((a, b) => a.name.localeCompare(b.name));
  assert.deepEqual(all, [
    { name: 'cos:ObjectCreated:Put', key: `/yun/${yun.envId}/photos/cat.jpg`, size: 4, id: fileID },
    { name: 'cos:ObjectRemove:Delete', key: `/yun/${yun.envId}/photos/cat.jpg`, size: 4, id: fileID },
  ]);
  assert.equal(got.length >= 2, true);
  const bad = await yun.cli(['fn', 'trigger', 'create', 'onupload', '--name', 'x', '--type', 'storage', '--config', '{"event":"cos:ObjectCreated:Put"}']);
  assert.match(bad.stderr, /cos:ObjectCreated:\* or cos:ObjectRemove:\*/);
});

test('two Yun processes on one NATS JetStream fire each timer tick once between them', async () => {
  // Each process has its own data folder (its own env dev, function and trigger); they
  // share the queue, so a tick both publish is one event, delivered by one of them.
  const prefix = `yuntest${Date.now().toString(36)}`;
  const events = `nats://127.0.0.1:4222/${prefix}`;
  const pair = [await startYun(['--events', events]), await startYun(['--events', events])];
  try {
    for (const y of pair) {
      await y.cliJson(['db', 'create', 'ticks']);
      await y.deploy('ticker', 'ticker');
    }
    await new Promise((r) => setTimeout(r, 4500));
    for (const y of pair) await y.cliJson(['fn', 'trigger', 'delete', 'ticker', 'everySecond']);
    await new Promise((r) => setTimeout(r, 1500));
    const times = [];
    for (const y of pair) {
      const got = await y.admin().database().collection('ticks').limit(1000).get();
      times.push(...got.data.map((t) => t.event.Time));
    }
    assert.ok(times.length >= 3, `ticks: ${times.length}`);
    assert.equal(new Set(times).size, times.length, `a tick fired twice: ${times.sort().join(' ')}`);
  } finally {
    for (const y of pair) await y.stop();
    await deleteStreams('nats://127.0.0.1:4222', prefix);
  }
});

test('kill -9: changes committed before it fire their triggers after the restart; acked events do not come again', async () => {
  const dataDir = require('node:fs').mkdtempSync(path.join(require('node:os').tmpdir(), 'yun-kill-'));
  let y = await startYun([], { dataDir });
  try {
    for (const c of ['watched', 'seen']) await y.cliJson(['db', 'create', c]);
    await y.deploy('onchange', 'onchange');
    await y.cliJson(['fn', 'trigger', 'create', 'onchange', '--name', 'w', '--type', 'database',
      '--config', JSON.stringify({ collection: 'watched', events: ['create'] })]);
    const seenOf = async (app) => (await app.database().collection('seen').limit(1000).get()).data.map((s) => s.event.DocId);
    const first = await y.admin().database().collection('watched').add({ n: 0 });
    await waitFor(async () => (await seenOf(y.admin())).includes(first.id) || null, 'the first event');
    await new Promise((r) => setTimeout(r, 1000)); // its delivery acked
    // Committed (answered), then the process dies at once: their events may not even be
    // on the queue yet.
    const added = await Promise.all([1, 2, 3, 4, 5].map((n) => y.admin().database().collection('watched').add({ n })));
    await y.stop('SIGKILL');
    y = await startYun([], { dataDir });
    const ids = added.map((a) => a.id);
    const seen = await waitFor(async () => {
      const s = await seenOf(y.admin());
      return ids.every((id) => s.includes(id)) ? s : null;
    }, 'every committed change delivered after the restart', 90000);
    assert.equal(seen.filter((id) => id === first.id).length, 1, 'the acked event was not delivered again');
  } finally {
    await y.stop();
  }
});

test('a deleted function\'s triggers stop at once', async () => {
  await yun.deploy('onchange', 'doomed');
  await yun.cliJson(['fn', 'trigger', 'create', 'doomed', '--name', 'albums', '--type', 'database',
    '--config', JSON.stringify({ collection: 'albums' })]);
  await yun.cliJson(['fn', 'delete', 'doomed']);
  assert.deepEqual((await yun.cliJson(['fn', 'trigger', 'list'])).triggers.filter((t) => t.function === 'doomed'), []);
  await yun.admin().database().collection('albums').add({ album: 'a9' });
  await new Promise((r) => setTimeout(r, 1500));
  // Had the trigger fired, its event would be a dead letter (no such function).
  assert.deepEqual((await yun.cliJson(['fn', 'dlq', 'list', 'doomed'])).dead_letters, []);
});

test('yun deploy reads a cloudbaserc.json project as tcb does: defaults, nested config, .env templating, triggers', async () => {
  const fs = require('node:fs');
  const project = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'yun-project-'));
  fs.cpSync(path.join(FUNCTIONS, 'echo'), path.join(project, 'functions', 'echo'), { recursive: true });
  fs.cpSync(path.join(FUNCTIONS, 'ticker'), path.join(project, 'code', 'ticker'), { recursive: true });
  fs.writeFileSync(path.join(project, '.env'), 'GREETING=from .env\n');
  fs.writeFileSync(path.join(project, '.env.staging'), 'GREETING=from .env.staging\n');
  fs.writeFileSync(path.join(project, 'cloudbaserc.json'), JSON.stringify({
    version: '2.0',
    envId: '{{tcb.envId}}',
    functionRoot: './functions',
    functionDefaultConfig: { memorySize: 128, envVariables: { GREETING: '{{env.GREETING}}' } },
    functions: [
      { name: 'rcecho', dir: './functions/echo', timeout: 5 },
      { name: 'rcticker', dir: './code/ticker', config: { timeout: 9, runtime: 'Nodejs18.15' },
        triggers: [{ name: 'nightly', type: 'timer', config: '0 0 2 1 * * *' }] },
    ],
  }));
  const r = await yun.cli(['deploy', '--dir', project, '--mode', 'staging']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Deployed rcecho version 1/);
  assert.match(r.stdout, /Deployed rcticker version 1/);
  const res = await yun.admin().callFunction({ name: 'rcecho', data: {} });
  assert.equal(res.result.env.GREETING, 'from .env.staging');
  assert.equal(res.result.context.time_limit_in_ms, 5000);
  assert.equal(res.result.context.memory_limit_in_mb, 128);
  const triggers = (await yun.cliJson(['fn', 'trigger', 'list', 'rcticker'])).triggers;
  assert.deepEqual(triggers.map((t) => t.name), ['nightly'], "the project's triggers, not the folder's config.json");
  const fn = (await api('GET', '/functions/rcticker')).body.function;
  assert.equal(fn.timeout_ms, 9000, 'the nested config of older files');
  // One function by name; a name not in the project, a variable no .env has.
  const one = await yun.cli(['deploy', 'rcecho', '--dir', project]);
  assert.match(one.stdout, /Deployed rcecho version 2/);
  assert.doesNotMatch(one.stdout, /rcticker/);
  const missing = await yun.cli(['deploy', 'nosuch', '--dir', project]);
  assert.match(missing.stderr, /nosuch is not among the project's functions/);
  fs.writeFileSync(path.join(project, 'cloudbaserc.json'), JSON.stringify({ version: '2.0', functions: [{ name: '{{env.NOPE}}' }] }));
  const bad = await yun.cli(['deploy', '--dir', project]);
  assert.match(bad.stderr, /NOPE is in none of \.env/);
});

test('reserved concurrency 0 disables a function: calls are throttled, async events end in the dead-letter queue', async () => {
  await yun.deploy('flaky', 'held', ['--env-var', 'FIXED=1', '--async-retries', '0', '--async-retry-interval', '1s', '--async-max-age', '60s']);
  await yun.cliJson(['fn', 'concurrency', 'held', '--reserved', '0']);
  await assert.rejects(yun.admin().callFunction({ name: 'held', data: { key: 'h0', failTimes: 0 } }), (e) => {
    assert.equal(e.code, 'EXCEED_CONCURRENT_REQUEST_LIMIT');
    assert.match(e.message, /disabled: its reserved concurrency is 0/);
    return true;
  });
  // Throttles are retried until the event's max age (60 s here), then dead-lettered;
  // re-enabled before that, the event runs.
  const id = (await yun.cliJson(['fn', 'invoke', 'held', '--async', JSON.stringify({ key: 'h1', failTimes: 0 })])).request_id;
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await attempts('h1'), undefined, 'not run while disabled');
  await yun.cliJson(['fn', 'concurrency', 'held', '--reserved', '2']);
  await waitFor(async () => ((await attempts('h1')) || {}).done || null, 'the event, once enabled', 30000);
  const record = (await api('GET', `/invocations/${id}`)).body.invocation;
  assert.ok(record.attempt >= 2, `throttled attempts came first (attempt ${record.attempt})`);
  assert.equal((await api('GET', '/functions/held')).body.function.reserved_concurrency, 2);
  await yun.cliJson(['fn', 'concurrency', 'held', '--clear']);
  assert.equal((await api('GET', '/functions/held')).body.function.reserved_concurrency, undefined);
  const bad = await yun.cli(['fn', 'concurrency', 'held', '--reserved', '5000']);
  assert.match(bad.stderr, /reserved concurrency must be between 0 and 1000/);
});
