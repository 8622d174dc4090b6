'use strict';
// Security rules and identities, table-driven: every row is one request to /web (the
// js-sdk's CLOUD_API wire format) or /auth, by one kind of caller, with the expected
// allow/deny and error code. Plus the js-sdk itself in Chromium under the rules.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startYun } = require('../lib/yun');
const { bundle, serveStatic, launchBrowser } = require('../lib/browser');

let yun;
const tokens = {};
const ids = {};

async function authPost(route, body, env) {
  const res = await fetch(`${yun.url}/auth/v1${route}?client_id=${env || yun.envId}`, { method: 'POST', body: JSON.stringify(body) });
  return res.json();
}

async function web(body, token, env = yun.envId) {
  const res = await fetch(`${yun.url}/web?env=${env}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json;charset=UTF-8' },
    body: JSON.stringify({ dataVersion: '2020-01-10', env, ...body, ...(token === undefined ? {} : { access_token: token }) }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

const query = (collectionName, q, extra = {}) => ({ action: 'database.queryDocument', collectionName, queryType: 'WHERE', query: q, ...extra });
const doc = (collectionName, id) => ({ action: 'database.queryDocument', collectionName, queryType: 'DOC', query: { _id: id } });
const add = (collectionName, data) => ({ action: 'database.addDocument', collectionName, data });
const update = (collectionName, q, data, extra = {}) => ({ action: 'database.updateDocument', collectionName, query: q, data, multi: false, merge: true, ...extra });
const remove = (collectionName, q, multi = false) => ({ action: 'database.deleteDocument', collectionName, query: q, multi });
const agg = (collectionName, ...stages) => ({ action: 'database.aggregate', collectionName, stages: stages.map(([k, v]) => ({ stageKey: k, stageValue: JSON.stringify(v) })) });
const count = (collectionName, q) => ({ action: 'database.countDocument', collectionName, query: q });

before(async () => {
  yun = await startYun();
  const admin = yun.admin();
  for (const c of ['notes', 'posts', 'config', 'secrets', 'custom']) await yun.cliJson(['db', 'create', c]);
  await yun.cliJson(['db', 'rules', 'posts', 'set', 'READONLY']);
  await yun.cliJson(['db', 'rules', 'config', 'set', 'ADMINWRITE']);
  await yun.cliJson(['db', 'rules', 'secrets', 'set', 'ADMINONLY']);
  await yun.cliJson(['db', 'rules', 'custom', 'set', JSON.stringify({
    read: 'doc.public == true || doc._openid == auth.openid',
    create: 'auth.isAnonymous == false && request.data.title != null',
    update: 'doc._openid == auth.openid && doc.locked != true',
    delete: false,
  })]);
  for (const name of ['alice', 'bob']) {
    tokens[name] = (await authPost('/signup', { username: name, password: `${name}-password` })).access_token;
  }
  tokens.anon = (await authPost('/signin/anonymously', {})).access_token;
  await yun.cliJson(['env', 'create', 'other']);
  tokens.otherEnv = (await authPost('/signin/anonymously', {}, 'other')).access_token;
  tokens.tampered = tokens.alice.slice(0, -4) + (tokens.alice.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  tokens.uid = {};
  for (const name of ['alice', 'bob', 'anon']) {
    tokens.uid[name] = JSON.parse(Buffer.from(tokens[name].split('.')[1], 'base64url')).sub;
  }
  ids.aliceNote = (await web(add('notes', { text: 'alice private' }), tokens.alice)).data._id;
  ids.bobNote = (await web(add('notes', { text: 'bob private' }), tokens.bob)).data._id;
  ids.alicePost = (await web(add('posts', { text: 'alice public' }), tokens.alice)).data._id;
  ids.alicePublic = (await web(add('custom', { title: 'open', public: true }), tokens.alice)).data._id;
  ids.aliceHidden = (await web(add('custom', { title: 'closed', public: false }), tokens.alice)).data._id;
  ids.aliceLocked = (await web(add('custom', { title: 'locked', locked: true }), tokens.alice)).data._id;
  await admin.database().collection('config').add({ _id: 'site', theme: 'dark' });
  await admin.database().collection('secrets').add({ _id: 'key', value: 's3cret' });
  for (const [k, v] of Object.entries(ids)) assert.ok(v, `seeded ${k}`);
});

after(async () => yun && yun.stop());

// [name, caller, request, expected code or 'ok', optional check of data]
const cases = () => [
  // Who may call at all.
  ['no token', undefined, query('posts', {}), 'UNAUTHENTICATED'],
  ['empty token', '', query('posts', {}), 'UNAUTHENTICATED'],
  ['garbage token', 'x.y.z', query('posts', {}), 'UNAUTHENTICATED'],
  ['tampered token', 'tampered', query('posts', {}), 'UNAUTHENTICATED'],
  ["other env's token", 'otherEnv', query('posts', {}), 'UNAUTHENTICATED'],
  ['a token for this env sent to another env', ['alice', 'other'], query('posts', {}), 'UNAUTHENTICATED'],
  ['unknown action', 'alice', { action: 'database.nosuch', collectionName: 'notes' }, 'INVALID_ACTION'],
  ['transactions are not for end users', 'alice', { action: 'database.startTransaction' }, 'INVALID_ACTION'],
  ['aggregation over a collection everyone reads', 'bob', agg('posts', ['$group', { _id: null, n: { $sum: 1 } }]), 'ok', (d) => JSON.parse(JSON.parse(d.list)[0]).n >= 1],
  ['aggregation whose first $match stays within the rule', 'alice', agg('notes', ['$match', { _openid: '{openid}' }], ['$count', 'n']), 'ok', (d) => JSON.parse(JSON.parse(d.list)[0]).n === 1],
  ['aggregation without a $match under PRIVATE', 'alice', agg('notes', ['$count', 'n']), 'DATABASE_PERMISSION_DENIED'],
  ['aggregation whose $match escapes the rule', 'alice', agg('notes', ['$match', { text: 'bob private' }]), 'DATABASE_PERMISSION_DENIED'],
  ['$lookup into a private collection', 'alice', agg('posts', ['$lookup', { from: 'notes', localField: '_openid', foreignField: '_openid', as: 'notes' }]), 'DATABASE_PERMISSION_DENIED'],
  // PRIVATE (the default): only the creator.
  ['owner reads own notes by {openid}', 'alice', query('notes', { _openid: '{openid}' }), 'ok', (d) => d.list.length === 1 && d.list[0].text === 'alice private'],
  ['owner reads own notes by uid', 'alice', query('notes', { _openid: () => tokens.uid.alice }), 'ok', (d) => d.list.length === 1],
  ['owner reads own note by id', 'alice', doc('notes', () => ids.aliceNote), 'ok', (d) => d.list[0]._openid === tokens.uid.alice],
  ['a query outside the read rule is refused, not filtered', 'alice', query('notes', {}), 'DATABASE_PERMISSION_DENIED'],
  ['a query for another owner is refused', 'alice', query('notes', { _openid: () => tokens.uid.bob }), 'DATABASE_PERMISSION_DENIED'],
  ['$in with another owner is refused', 'alice', query('notes', { _openid: { $in: [() => tokens.uid.alice, () => tokens.uid.bob] } }), 'DATABASE_PERMISSION_DENIED'],
  ['$or escaping the owner is refused', 'alice', query('notes', { $or: [{ _openid: '{openid}' }, { text: 'bob private' }] }), 'DATABASE_PERMISSION_DENIED'],
  ['$ne owner is refused', 'alice', query('notes', { _openid: { $ne: 'nobody' } }), 'DATABASE_PERMISSION_DENIED'],
  ["another user's note by id", 'bob', doc('notes', () => ids.aliceNote), 'DATABASE_PERMISSION_DENIED'],
  ["anonymous reads another's note by id", 'anon', doc('notes', () => ids.aliceNote), 'DATABASE_PERMISSION_DENIED'],
  ['count within the rule', 'alice', count('notes', { _openid: '{openid}' }), 'ok', (d) => d.total === 1],
  ['count outside the rule', 'alice', count('notes', {}), 'DATABASE_PERMISSION_DENIED'],
  ["count of another's note by id", 'bob', count('notes', { _id: () => ids.aliceNote }), 'DATABASE_PERMISSION_DENIED'],
  ["update of another's note", 'bob', update('notes', { _id: () => ids.aliceNote }, { text: 'hacked' }), 'DATABASE_PERMISSION_DENIED'],
  ["replace of another's note", 'bob', update('notes', { _id: () => ids.aliceNote }, { text: 'hacked' }, { merge: false }), 'DATABASE_PERMISSION_DENIED'],
  ["delete of another's note", 'bob', remove('notes', { _id: () => ids.aliceNote }), 'DATABASE_PERMISSION_DENIED'],
  ['multi delete outside the rule', 'alice', remove('notes', {}, true), 'DATABASE_PERMISSION_DENIED'],
  ['multi update outside the rule', 'alice', update('notes', { text: { $exists: true } }, { seen: true }, { multi: true }), 'DATABASE_PERMISSION_DENIED'],
  ['owner updates own note', 'alice', update('notes', { _id: () => ids.aliceNote }, { seen: true }), 'ok', (d) => d.updated === 1],
  ['owner multi-updates within the rule', 'alice', update('notes', { _openid: '{openid}' }, { touched: 1 }, { multi: true }), 'ok', (d) => d.updated === 1],
  ['changing _openid with $set is refused', 'alice', update('notes', { _id: () => ids.aliceNote }, { $set: { _openid: () => tokens.uid.bob } }), 'DATABASE_PERMISSION_DENIED'],
  ['removing _openid is refused', 'alice', update('notes', { _id: () => ids.aliceNote }, { $unset: { _openid: '' } }), 'DATABASE_PERMISSION_DENIED'],
  ['replacing with another _openid is refused', 'alice', update('notes', { _id: () => ids.aliceNote }, { _openid: () => tokens.uid.bob, text: 'x' }, { merge: false }), 'DATABASE_PERMISSION_DENIED'],
  ["creating a note in another's name", 'alice', add('notes', { _openid: () => tokens.uid.bob, text: 'forged' }), 'DATABASE_PERMISSION_DENIED'],
  ['creating a note stamps the creator', 'bob', add('notes', { text: 'mine' }), 'ok', (d) => typeof d._id === 'string'],
  ['upsert creates as the caller', 'bob', update('notes', { _id: 'bob-upsert' }, { text: 'u' }, { upsert: true }), 'ok', (d) => d.upsert_id === 'bob-upsert'],
  ['upsert onto an existing foreign id is refused', 'bob', update('notes', { _id: () => ids.aliceNote }, { text: 'u' }, { upsert: true }), 'DATABASE_PERMISSION_DENIED'],
  // READONLY: everyone reads, the creator writes.
  ['anyone lists posts', 'bob', query('posts', {}), 'ok', (d) => d.list.length === 1],
  ['anonymous lists posts', 'anon', query('posts', {}), 'ok', (d) => d.list.length === 1],
  ["another user cannot edit a post", 'bob', update('posts', { _id: () => ids.alicePost }, { text: 'x' }), 'DATABASE_PERMISSION_DENIED'],
  ["another user cannot delete a post", 'bob', remove('posts', { _id: () => ids.alicePost }), 'DATABASE_PERMISSION_DENIED'],
  ['the creator edits a post', 'alice', update('posts', { _id: () => ids.alicePost }, { text: 'edited' }), 'ok', (d) => d.updated === 1],
  ['anyone may create a post', 'anon', add('posts', { text: 'anon post' }), 'ok'],
  // ADMINWRITE: everyone reads, only admins write.
  ['users read config', 'alice', doc('config', 'site'), 'ok', (d) => d.list[0].theme === 'dark'],
  ['users cannot write config', 'alice', update('config', { _id: 'site' }, { theme: 'light' }), 'DATABASE_PERMISSION_DENIED'],
  ['users cannot add config', 'alice', add('config', { x: 1 }), 'DATABASE_PERMISSION_DENIED'],
  ['users cannot delete config', 'alice', remove('config', { _id: 'site' }), 'DATABASE_PERMISSION_DENIED'],
  // ADMINONLY.
  ['users cannot read secrets', 'alice', query('secrets', {}), 'DATABASE_PERMISSION_DENIED'],
  ['users cannot read a secret by id', 'alice', doc('secrets', 'key'), 'DATABASE_PERMISSION_DENIED'],
  ['users cannot count secrets', 'alice', count('secrets', {}), 'DATABASE_PERMISSION_DENIED'],
  ['users cannot add secrets', 'alice', add('secrets', { value: 'x' }), 'DATABASE_PERMISSION_DENIED'],
  // Custom rules.
  ['public documents by query', 'bob', query('custom', { public: true }), 'ok', (d) => d.list.length === 1 && d.list[0].title === 'open'],
  ['a hidden document of another user', 'bob', doc('custom', () => ids.aliceHidden), 'DATABASE_PERMISSION_DENIED'],
  ['own hidden document', 'alice', doc('custom', () => ids.aliceHidden), 'ok'],
  ['public OR own, as the rule says', 'alice', query('custom', { $or: [{ public: true }, { _openid: '{openid}' }] }), 'ok', (d) => d.list.length === 3],
  ['public false is not provable', 'bob', query('custom', { public: false }), 'DATABASE_PERMISSION_DENIED'],
  ['anonymous users may not create', 'anon', add('custom', { title: 'anon' }), 'DATABASE_PERMISSION_DENIED'],
  ['request.data must carry a title', 'bob', add('custom', { body: 'no title' }), 'DATABASE_PERMISSION_DENIED'],
  ['signed-in users create with a title', 'bob', add('custom', { title: 'bob' }), 'ok'],
  ['a locked document cannot be updated', 'alice', update('custom', { _id: () => ids.aliceLocked }, { title: 'x' }), 'DATABASE_PERMISSION_DENIED'],
  ['an unlocked own document can', 'alice', update('custom', { _id: () => ids.alicePublic }, { title: 'open 2' }), 'ok'],
  ['delete: false means never', 'alice', remove('custom', { _id: () => ids.alicePublic }), 'DATABASE_PERMISSION_DENIED'],
  // Functions are callable by any signed-in user.
  ['an unknown function', 'anon', { action: 'functions.invokeFunction', function_name: 'nosuch', request_data: '{}' }, 'FUNCTION_NOT_FOUND'],
];

/** Replaces `() => value` placeholders (ids known only after setup). */
function resolve(v) {
  if (typeof v === 'function') return v();
  if (Array.isArray(v)) return v.map(resolve);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolve(x)]));
  return v;
}

test('the security table: every caller, every rule, every way around them', async () => {
  const table = cases();
  assert.ok(table.length >= 50, `${table.length} cases`);
  const failures = [];
  for (const [name, caller, request, expected, check] of table) {
    const [who, env] = Array.isArray(caller) ? caller : [caller, undefined];
    const token = who === undefined || who === '' || who === 'x.y.z' ? who : tokens[who];
    const res = await web(resolve(request), token, env);
    const got = res.code || 'ok';
    if (got !== expected) failures.push(`${name}: expected ${expected}, got ${got} ${res.message || ''}`);
    else if (check && expected === 'ok' && !check(res.data)) failures.push(`${name}: unexpected data ${JSON.stringify(res.data)}`);
  }
  assert.deepEqual(failures, []);
  // Nothing the refused writes tried is visible to the admin.
  const admin = yun.admin().database();
  const note = (await admin.collection('notes').doc(ids.aliceNote).get()).data[0];
  assert.equal(note.text, 'alice private');
  assert.equal(note._openid, tokens.uid.alice);
  assert.equal((await admin.collection('config').doc('site').get()).data[0].theme, 'dark');
  assert.equal((await admin.collection('custom').doc(ids.alicePublic).get()).data.length, 1);
});

/** An end user's upload, as the js-sdk does it: metadata from /web, then a signed PUT. */
async function upload(token, cloudPath, text) {
  const meta = await web({ action: 'storage.getUploadMetadata', path: cloudPath, method: 'put' }, token);
  if (meta.code) return meta.code;
  const res = await fetch(meta.data.url, {
    method: 'PUT',
    headers: { authorization: meta.data.authorization, 'x-cos-security-token': meta.data.token },
    body: text,
  });
  if (res.status === 200) return 'ok';
  // COS-style XML errors, as the SDKs expect from the upload URL.
  return `${res.status} ${((await res.text()).match(/<Code>([^<]+)<\/Code>/) || [])[1]}`;
}

const fileId = (p) => `cloud://${yun.envId}.${yun.envId}-yun/${p}`;
const urls = (token, ...paths) => web({ action: 'storage.batchGetDownloadUrl', file_list: paths.map((p) => ({ fileid: fileId(p) })) }, token);
const deletes = (token, ...paths) => web({ action: 'storage.batchDeleteFile', fileid_list: paths.map(fileId) }, token);
const copy = (token, from, to) => web({ action: 'storage.batchCopyFile', file_list: [{ src_path: fileId(from), dst_path: fileId(to), overwrite: true, remove_original: false }] }, token);

test('storage rules: the default lets everyone read and only the uploader write; PRIVATE hides files', async () => {
  assert.equal(await upload(tokens.alice, 'photos/a.txt', 'alice'), 'ok');
  assert.equal(await upload(tokens.bob, 'photos/b.txt', 'bob'), 'ok');
  const rows = [];
  const expect = (name, got, want) => rows.push([name, got, want]);
  expect('the uploader replaces their file', await upload(tokens.alice, 'photos/a.txt', 'alice 2'), 'ok');
  expect("another user cannot overwrite it", await upload(tokens.bob, 'photos/a.txt', 'hacked'), 'STORAGE_EXCEED_AUTHORITY');
  expect('anonymous users upload their own files', await upload(tokens.anon, 'photos/anon.txt', 'anon'), 'ok');
  expect('everyone reads under READONLY', (await urls(tokens.bob, 'photos/a.txt')).data.download_list[0].code, 'SUCCESS');
  expect("another user cannot delete it", (await deletes(tokens.bob, 'photos/a.txt')).data.delete_list[0].code, 'STORAGE_EXCEED_AUTHORITY');
  expect("another user cannot copy over it", (await copy(tokens.bob, 'photos/b.txt', 'photos/a.txt')).data.copy_list[0].code, 'STORAGE_EXCEED_AUTHORITY');
  expect('copying to a fresh path is allowed', (await copy(tokens.bob, 'photos/a.txt', 'photos/bob-copy.txt')).data.copy_list[0].code, 'SUCCESS');
  expect('a missing token', await upload(undefined, 'photos/x.txt', 'x'), 'UNAUTHENTICATED');
  expect("another env's token", await upload(tokens.otherEnv, 'photos/x.txt', 'x'), 'UNAUTHENTICATED');
  // A grant is checked again when the bytes arrive: the path may have changed hands.
  const grant = await web({ action: 'storage.getUploadMetadata', path: 'photos/race.txt', method: 'put' }, tokens.alice);
  expect('bob takes the path first', await upload(tokens.bob, 'photos/race.txt', 'bob first'), 'ok');
  const late = await fetch(grant.data.url, { method: 'PUT', headers: { authorization: grant.data.authorization, 'x-cos-security-token': grant.data.token }, body: 'alice late' });
  expect("a stale grant cannot overwrite another user's file", `${late.status} ${((await late.text()).match(/<Code>([^<]+)<\/Code>/) || [])[1]}`, '403 AccessDenied');
  const authority = await web({ action: 'storage.getFileAuthority', fileList: [{ path: 'photos/a.txt', type: 'READWRITE' }] }, tokens.bob);
  expect('getFileAuthority says read, not write', JSON.stringify([authority.data.file_list[0].read, authority.data.file_list[0].write]), '[true,false]');
  await yun.cliJson(['storage', 'rules', 'set', 'PRIVATE']);
  expect('PRIVATE: others cannot read', (await urls(tokens.bob, 'photos/a.txt')).data.download_list[0].code, 'STORAGE_EXCEED_AUTHORITY');
  expect('PRIVATE: the owner reads', (await urls(tokens.alice, 'photos/a.txt')).data.download_list[0].code, 'SUCCESS');
  await yun.cliJson(['storage', 'rules', 'set', 'ADMINONLY']);
  expect('ADMINONLY: nobody uploads', await upload(tokens.alice, 'photos/new.txt', 'x'), 'STORAGE_EXCEED_AUTHORITY');
  expect('the owner deletes under READONLY', (await (async () => { await yun.cliJson(['storage', 'rules', 'reset']); return (await deletes(tokens.alice, 'photos/a.txt')).data.delete_list[0].code; })()), 'SUCCESS');
  const failures = rows.filter(([, got, want]) => got !== want).map(([n, got, want]) => `${n}: expected ${want}, got ${got}`);
  assert.deepEqual(failures, []);
  // The refused overwrite left alice's bytes alone (read through the admin SDK).
  const { fileContent } = await yun.admin().downloadFile({ fileID: fileId('photos/bob-copy.txt') });
  assert.equal(fileContent.toString(), 'alice 2');
});

test('refresh replay, disabled users and key rotation also end /web access', async () => {
  const s = await authPost('/signup', { username: 'erin', password: 'erin-password' });
  const first = await authPost('/token', { grant_type: 'refresh_token', refresh_token: s.refresh_token });
  assert.equal((await authPost('/token', { grant_type: 'refresh_token', refresh_token: s.refresh_token })).error, 'invalid_grant');
  assert.equal((await authPost('/token', { grant_type: 'refresh_token', refresh_token: first.refresh_token })).error, 'invalid_grant');
  await yun.cliJson(['user', 'disable', s.sub]);
  assert.equal((await web(query('posts', {}), first.access_token)).code, 'PERMISSION_DENIED');
  await yun.cliJson(['user', 'enable', s.sub]);
  assert.equal((await web(query('posts', {}), first.access_token)).code, undefined);
});

test('admin keys bypass rules; end users never do', async () => {
  const admin = yun.admin().database();
  const all = await admin.collection('notes').get();
  assert.ok(all.data.length >= 3, 'the admin reads every note');
  await admin.collection('secrets').doc('key').update({ value: 'rotated' });
  assert.equal((await web(doc('secrets', 'key'), tokens.alice)).code, 'DATABASE_PERMISSION_DENIED');
});

test('the js-sdk in Chromium under the default rules: own documents only, refusals as error objects', async () => {
  const sdk = await bundle(path.join(__dirname, '../lib/web/sdk-entry.js'), 'cloudbase.js');
  const site = await serveStatic({ '/cloudbase.js': sdk });
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.goto(site.url);
    const out = await page.evaluate(async ({ url, env }) => {
      const app = window.connectYun(url, env);
      await app.auth().signInAnonymously();
      const db = app.database();
      const _ = db.command;
      const added = await db.collection('notes').add({ n: 1, at: new Date(5), when: db.serverDate() });
      const mine = await db.collection('notes').where({ _openid: '{openid}', n: _.gt(0) }).orderBy('n', 'desc').get();
      const all = await db.collection('notes').get();
      const one = await db.collection('notes').doc(added.id).get();
      const updated = await db.collection('notes').doc(added.id).update({ n: _.inc(1) });
      const counted = await db.collection('notes').where({ _openid: '{openid}' }).count();
      const aggregated = await db.collection('notes').aggregate().match({ _openid: '{openid}' }).group({ _id: null, sum: db.command.aggregate.sum('$n') }).end();
      const removed = await db.collection('notes').doc(added.id).remove();
      return {
        added: added.id,
        mine: mine.data.map((d) => ({ n: d.n, atIsDate: d.at instanceof Date, at: d.at.getTime(), whenRecent: Math.abs(d.when.getTime() - Date.now()) < 60000 })),
        allCode: all.code,
        one: one.data.length,
        updated: updated.updated,
        total: counted.total,
        aggregated: aggregated.data,
        deleted: removed.deleted,
      };
    }, { url: yun.url, env: yun.envId });
    assert.match(out.added, /^[0-9a-f]{32}$/);
    assert.deepEqual(out.mine, [{ n: 1, atIsDate: true, at: 5, whenRecent: true }]);
    assert.equal(out.allCode, 'DATABASE_PERMISSION_DENIED');
    assert.equal(out.one, 1);
    assert.equal(out.updated, 1);
    assert.equal(out.total, 1);
    assert.deepEqual(out.aggregated, [{ _id: null, sum: 2 }]);
    assert.equal(out.deleted, 1);
  } finally {
    await browser.close();
    await site.close();
  }
});

test('yun rules test: the album\'s case table passes against the engine, and a wrong expectation fails the run', async () => {
  const album = path.resolve(__dirname, '../../../examples/album/rules/test.json');
  const report = await yun.cliJson(['rules', 'test', album]);
  assert.equal(report.failed, 0);
  assert.ok(report.passed >= 19, `${report.passed} cases`);
  const dir = require('node:fs').mkdtempSync(path.join(require('node:os').tmpdir(), 'yun-rules-'));
  const wrong = path.join(dir, 'cases.json');
  require('node:fs').writeFileSync(wrong, JSON.stringify({
    rules: { notes: 'PRIVATE' },
    cases: [
      { name: 'owner reads', target: 'notes', op: 'read', auth: { uid: 'a' }, doc: { _openid: 'a' }, expect: 'allow' },
      { name: 'wrongly expected', target: 'notes', op: 'query', auth: { uid: 'a' }, query: {}, expect: 'allow' },
    ],
  }));
  const r = await yun.cli(['rules', 'test', wrong]);
  assert.notEqual(r.code, 0);
  assert.match(r.stdout, /FAIL \(got deny\)\s+notes\s+query\s+allow\s+wrongly expected/);
  assert.match(r.stderr, /1 of 2 rule cases failed/);
  const bad = await yun.cli(['rules', 'test', album.replace('test.json', 'nosuch.json')]);
  assert.match(bad.stderr, /cannot read/);
});
