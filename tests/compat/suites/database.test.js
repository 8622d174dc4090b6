'use strict';
// The document database through the official SDKs: CRUD, every query command the v2
// protocol sends, update operators, ordering/paging/projection, errors, env isolation.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startYun, waitFor } = require('../lib/yun');

let yun;
let db;
let _;
before(async () => {
  yun = await startYun();
  db = yun.admin().database();
  _ = db.command;
  await db.createCollection('todos');
});
after(async () => yun && yun.stop());

test('add, get by id, count, and the CloudBase result shapes', async () => {
  const due = new Date('2024-06-01T08:00:00Z');
  const one = await db.collection('todos').add({ title: 'buy milk', done: false, n: 3, price: 9.5, due, tags: ['x', 'y'], owner: { name: 'bob', age: 30 } });
  assert.match(one.id, /^[0-9a-f]{32}$/);
  assert.ok(one.requestId);
  const many = await db.collection('todos').add([{ _id: 'my-id', title: 'walk', n: 7, tags: ['z'] }, { title: 'Buy bread', n: 1, done: true }]);
  assert.equal(many.ids.length, 2);
  assert.equal(many.ids[0], 'my-id');

  const got = await db.collection('todos').doc(one.id).get();
  assert.equal(got.data.length, 1);
  const doc = got.data[0];
  assert.equal(doc._id, one.id);
  assert.equal(doc.title, 'buy milk');
  assert.equal(doc.price, 9.5);
  assert.ok(doc.due instanceof Date, 'dates come back as Date');
  assert.equal(doc.due.getTime(), due.getTime());
  assert.deepEqual(doc.owner, { name: 'bob', age: 30 });
  assert.equal((await db.collection('todos').count()).total, 3);
});

test('where with every filter command the SDK sends', async () => {
  const q = async (where) => (await db.collection('todos').where(where).get()).data.map((d) => d.title).sort();
  assert.deepEqual(await q({ done: false }), ['buy milk']);
  assert.deepEqual(await q({ n: _.gt(1).and(_.lte(7)) }), ['buy milk', 'walk']);
  assert.deepEqual(await q({ n: _.lt(2).or(_.gt(5)) }), ['Buy bread', 'walk']);
  assert.deepEqual(await q({ tags: _.in(['x', 'z']) }), ['buy milk', 'walk']);
  assert.deepEqual(await q({ n: _.nin([1, 3]) }), ['walk']);
  assert.deepEqual(await q({ n: _.neq(3) }), ['Buy bread', 'walk']);
  assert.deepEqual(await q({ tags: _.all(['x', 'y']) }), ['buy milk']);
  assert.deepEqual(await q({ tags: _.size(1) }), ['walk']);
  assert.deepEqual(await q({ done: _.exists(false) }), ['walk']);
  assert.deepEqual(await q({ n: _.mod(2, 1) }), ['Buy bread', 'buy milk', 'walk']);
  assert.deepEqual(await q({ title: /^buy/i }), ['Buy bread', 'buy milk']);
  assert.deepEqual(await q({ title: db.RegExp({ regexp: '^BUY', options: 'i' }) }), ['Buy bread', 'buy milk']);
  assert.deepEqual(await q({ owner: { name: 'bob', age: _.gte(18) } }), ['buy milk'], 'nested objects become dotted paths');
  assert.deepEqual(await q({ 'owner.age': _.lt(18) }), []);
  assert.deepEqual(await q({ due: _.lt(new Date('2025-01-01')) }), ['buy milk']);
  assert.deepEqual(await q({ due: new Date('2024-06-01T08:00:00Z') }), ['buy milk'], 'a date is matched by equality');
  assert.deepEqual(await q({ n: _.not(_.gt(2)) }), ['Buy bread']);
  assert.deepEqual(await q(_.or([{ n: 7 }, { done: true }])), ['Buy bread', 'walk']);
  assert.deepEqual(await q(_.nor([{ n: 7 }, { done: true }])), ['buy milk']);
  await db.collection('todos').add({ title: 'items', items: [{ qty: 2 }, { qty: 5 }] });
  assert.deepEqual(await q({ items: _.elemMatch({ qty: _.gt(3) }) }), ['items']);
  assert.deepEqual(await q({ 'items.qty': 2 }), ['items'], 'paths reach into arrays of documents');
});

test('orderBy on two keys, skip, limit and field projection', async () => {
  const res = await db.collection('todos').where({ n: _.exists(true) }).orderBy('n', 'desc').orderBy('title', 'asc').skip(1).limit(2).field({ title: true, n: 1, _id: false }).get();
  assert.deepEqual(res.data, [{ title: 'buy milk', n: 3 }, { title: 'Buy bread', n: 1 }]);
  assert.equal(res.limit, 2);
  assert.equal(res.offset, 1);
  const sliced = await db.collection('todos').doc('my-id').field({ tags: _.project.slice(1) }).get();
  assert.deepEqual(sliced.data[0].tags, ['z']);
});

test('update with operators, doc.update, doc.set with upsert, remove', async () => {
  const res = await db.collection('todos').where({ title: 'walk' }).update({ n: _.inc(1), tags: _.push(['w']), 'meta.seen': true, done: _.remove() });
  assert.equal(res.updated, 1);
  const walk = (await db.collection('todos').doc('my-id').get()).data[0];
  assert.equal(walk.n, 8);
  assert.deepEqual(walk.tags, ['z', 'w']);
  assert.deepEqual(walk.meta, { seen: true });

  const docUpdate = await db.collection('todos').doc('my-id').update({ tags: _.addToSet('z'), n: _.mul(2), stamp: db.serverDate() });
  assert.equal(docUpdate.updated, 1);
  const after = (await db.collection('todos').doc('my-id').get()).data[0];
  assert.equal(after.n, 16);
  assert.deepEqual(after.tags, ['z', 'w']);
  assert.ok(after.stamp instanceof Date && Math.abs(after.stamp.getTime() - Date.now()) < 60000, 'serverDate is the server time');

  const created = await db.collection('todos').doc('fresh').set({ title: 'set', n: 0 });
  assert.equal(created.upsertedId, 'fresh');
  const replaced = await db.collection('todos').doc('fresh').set({ title: 'replaced' });
  assert.equal(replaced.updated, 1);
  assert.deepEqual((await db.collection('todos').doc('fresh').get()).data[0], { _id: 'fresh', title: 'replaced' });

  const removedOne = await db.collection('todos').doc('fresh').remove();
  assert.equal(removedOne.deleted, 1);
  const removed = await db.collection('todos').where({ title: /^buy/i }).remove();
  assert.equal(removed.deleted, 2);
  assert.equal((await db.collection('todos').where({ title: /^buy/i }).count()).total, 0);
});

test('database errors carry CloudBase codes', async () => {
  await assert.rejects(db.collection('nope').add({ a: 1 }), { code: 'DATABASE_COLLECTION_NOT_EXIST' });
  await assert.rejects(db.collection('nope').where({ a: 1 }).get(), { code: 'DATABASE_COLLECTION_NOT_EXIST' });
  await assert.rejects(db.createCollection('todos'), { code: 'DATABASE_COLLECTION_ALREADY_EXIST' });
  await assert.rejects(db.collection('todos').add({ _id: 'my-id' }), (e) => e.code === 'DATABASE_REQUEST_FAILED' && /E11000 duplicate key/.test(e.message));
  await assert.rejects(db.collection('todos').where({ $where: 'this.n > 1' }).get(), { code: 'DATABASE_INVALID_OPERRATOR' });
  await assert.rejects(db.collection('todos').where({ title: db.RegExp({ regexp: '(' }) }).get(), { code: 'DATABASE_INVALID_OPERRATOR' });
});

test('unmodified wx-server-sdk code uses the database from inside a function', async () => {
  await db.createCollection('notes');
  await yun.deploy('dbuser', 'dbuser');
  const res = await yun.admin().callFunction({ name: 'dbuser', data: { text: 'from a function', n: 5 } });
  assert.deepEqual(res.result.texts, ['from a function']);
  assert.equal(res.result.total, 1);
  assert.equal(res.result.one._id, res.result.id);
  assert.equal(res.result.atIsDate, true);
  // The same document, read from outside.
  const outside = await db.collection('notes').doc(res.result.id).get();
  assert.equal(outside.data[0].text, 'from a function');
});

test("env b's key never sees env dev's collections", async () => {
  const created = await yun.cliJson(['env', 'create', 'b']);
  const keyB = { secretId: created.key.secret_id, secretKey: created.key.secret_key };
  await assert.rejects(yun.admin({ env: yun.envId, ...keyB }).database().collection('todos').get(), { code: 'PERMISSION_DENIED' });
  const dbB = yun.admin({ env: 'b', ...keyB }).database();
  await assert.rejects(dbB.collection('todos').get(), { code: 'DATABASE_COLLECTION_NOT_EXIST' });
  await dbB.createCollection('todos');
  await dbB.collection('todos').add({ title: 'only in b' });
  const inDev = await db.collection('todos').where({ title: 'only in b' }).count();
  assert.equal(inDev.total, 0);
});

test('transactions: commit applies all writes at once; rollback applies none', async () => {
  await db.createCollection('accounts');
  await db.collection('accounts').add([{ _id: 'alice', balance: 100 }, { _id: 'bob', balance: 0 }]);
  const t = await db.startTransaction();
  const alice = (await t.collection('accounts').doc('alice').get()).data;
  assert.equal(alice.balance, 100, 'in a transaction doc().get() returns the document itself');
  await t.collection('accounts').doc('alice').update({ balance: _.inc(-30) });
  await t.collection('accounts').doc('bob').update({ balance: _.inc(30) });
  const added = await t.collection('accounts').add({ _id: 'log-1', what: 'transfer' });
  assert.equal(added.id, 'log-1');
  assert.equal((await db.collection('accounts').doc('bob').get()).data[0].balance, 0, 'not visible before commit');
  assert.equal((await t.collection('accounts').doc('bob').get()).data.balance, 30, 'the transaction sees its own writes');
  await t.commit();
  const after = (await db.collection('accounts').get()).data.map((d) => [d._id, d.balance ?? d.what]).sort();
  assert.deepEqual(after, [['alice', 70], ['bob', 30], ['log-1', 'transfer']]);

  await assert.rejects(
    db.runTransaction(async (tx) => {
      await tx.collection('accounts').doc('alice').update({ balance: 0 });
      await tx.rollback('changed my mind');
    }),
    (e) => e === 'changed my mind',
  );
  assert.equal((await db.collection('accounts').doc('alice').get()).data[0].balance, 70);
});

test('transactions: a concurrent write makes the commit conflict and runTransaction retries', async () => {
  let attempts = 0;
  const seen = await db.runTransaction(async (tx) => {
    attempts += 1;
    const before = (await tx.collection('accounts').doc('alice').get()).data.balance;
    if (attempts === 1) {
      // Someone else writes the same document between our read and our commit.
      await db.collection('accounts').doc('alice').update({ balance: _.inc(1000) });
      const again = (await tx.collection('accounts').doc('alice').get()).data.balance;
      assert.equal(again, before, 'reads inside a transaction are repeatable');
    }
    await tx.collection('accounts').doc('alice').update({ balance: before - 10 });
    return before;
  });
  assert.equal(attempts, 2, 'the first attempt conflicted and was retried');
  assert.equal(seen, 1070);
  assert.equal((await db.collection('accounts').doc('alice').get()).data[0].balance, 1060, 'no lost update');
});

test('transactions: unknown ids and queries not by _id are clear errors', async () => {
  const t = await db.startTransaction();
  await assert.rejects(t.collection('accounts').where({ balance: _.gt(0) }).get(), { code: 'INVALID_PARAM' });
  await t.rollback();
  await assert.rejects(t.commit(), { code: 'INVALID_PARAM' }, 'an ended transaction cannot commit');
});

test('aggregate: the captured pipeline through the SDK', async () => {
  await db.createCollection('orders');
  await db.createCollection('users');
  await db.collection('users').add([{ _id: 'u1', name: 'Ann' }, { _id: 'u2', name: 'Bo' }]);
  await db.collection('orders').add([
    { user: 'u1', status: 'paid', amount: 30, at: new Date('2024-01-05') },
    { user: 'u2', status: 'paid', amount: 50, at: new Date('2024-02-05') },
    { user: 'u1', status: 'paid', amount: 25, at: new Date('2024-02-07') },
    { user: 'u1', status: 'open', amount: 99, at: new Date('2024-03-01') },
  ]);
  const $ = db.command.aggregate;
  const res = await db.collection('orders').aggregate()
    .match({ status: 'paid', amount: _.gt(10) })
    .group({ _id: '$user', total: $.sum('$amount'), cnt: $.sum(1) })
    .sort({ total: -1 })
    .skip(0)
    .limit(10)
    .project({ _id: 0, user: '$_id', total: 1, cnt: 1 })
    .lookup({ from: 'users', localField: 'user', foreignField: '_id', as: 'u' })
    .unwind('$u')
    .addFields({ name: '$u.name' })
    .end();
  assert.deepEqual(res.data.map((d) => [d.user, d.total, d.cnt, d.name]), [['u1', 55, 2, 'Ann'], ['u2', 50, 1, 'Bo']]);
  const months = await db.collection('orders').aggregate().group({ _id: $.month('$at'), n: $.sum(1) }).sort({ _id: 1 }).end();
  assert.deepEqual(months.data, [{ _id: 1, n: 1 }, { _id: 2, n: 2 }, { _id: 3, n: 1 }]);
  const counted = await db.collection('orders').aggregate().match({ status: 'paid' }).count('n').end();
  assert.deepEqual(counted.data, [{ n: 3 }]);
});

test('geo: geoNear nearest first within a distance band, geoWithin, geoIntersects, and the $geoNear stage', async () => {
  const { Point, Polygon, LineString } = db.Geo;
  await db.createCollection('places');
  // Around Guangzhou: the tower, the fair (3.3 km away), the airport (about 30 km).
  await db.collection('places').add([
    { _id: 'tower', loc: new Point(113.3245, 23.1064) },
    { _id: 'fair', loc: new Point(113.3619, 23.1005) },
    { _id: 'airport', loc: new Point(113.3070, 23.3924) },
  ]);
  const tower = new Point(113.3245, 23.1064);
  const near = await db.collection('places').where({ loc: _.geoNear({ geometry: tower, maxDistance: 10000 }) }).get();
  assert.deepEqual(near.data.map((d) => d._id), ['tower', 'fair'], 'nearest first, within 10 km');
  const band = await db.collection('places').where({ loc: _.geoNear({ geometry: tower, minDistance: 1000, maxDistance: 50000 }) }).get();
  assert.deepEqual(band.data.map((d) => d._id), ['fair', 'airport']);
  assert.ok(near.data[0].loc instanceof Point, 'points come back as Geo.Point');

  const city = new Polygon([new LineString([new Point(113.2, 23.0), new Point(113.5, 23.0), new Point(113.5, 23.2), new Point(113.2, 23.2), new Point(113.2, 23.0)])]);
  const within = await db.collection('places').where({ loc: _.geoWithin({ geometry: city }) }).get();
  assert.deepEqual(within.data.map((d) => d._id).sort(), ['fair', 'tower']);
  const circle = await db.collection('places').where({ loc: _.geoWithin({ centerSphere: [tower, 5000 / 6378100] }) }).get();
  assert.deepEqual(circle.data.map((d) => d._id).sort(), ['fair', 'tower']);
  const crossing = await db.collection('places').where({ loc: _.geoIntersects({ geometry: city }) }).get();
  assert.equal(crossing.data.length, 2);

  const staged = await db.collection('places').aggregate().geoNear({ near: tower, spherical: true, distanceField: 'meters', maxDistance: 50000 }).end();
  assert.deepEqual(staged.data.map((d) => d._id), ['tower', 'fair', 'airport']);
  assert.equal(staged.data[0].meters, 0);
  assert.ok(staged.data[1].meters > 3000 && staged.data[1].meters < 4000, `${staged.data[1].meters}`);
});

test('yun db: collections, indexes, a unique violation through the SDK, quick queries', async () => {
  await yun.cliJson(['db', 'create', 'people']);
  assert.ok((await yun.cliJson(['db', 'collections'])).collections.includes('people'));
  await yun.cliJson(['db', 'index', 'create', 'people', 'by_email', '--field', 'email', '--unique']);
  await yun.cliJson(['db', 'index', 'create', 'people', 'by_age', '--field', 'age:desc', '--field', 'email']);
  const listed = await yun.cliJson(['db', 'index', 'list', 'people']);
  assert.deepEqual(listed.indexes.map((i) => [i.name, i.unique, i.fields.map((f) => `${f.field}:${f.direction}`)]), [
    ['by_age', false, ['age:-1', 'email:1']],
    ['by_email', true, ['email:1']],
  ]);
  const table = await yun.cli(['db', 'index', 'list', 'people']);
  assert.match(table.stdout, /^NAME\s+FIELDS\s+UNIQUE\n/);
  assert.match(table.stdout, /by_age\s+age:desc, email\s+false/);

  await db.collection('people').add([{ email: 'a@x', age: 30 }, { email: 'b@x', age: 12 }, { email: 'c@x', age: 30 }]);
  await assert.rejects(db.collection('people').add({ email: 'a@x' }), (e) => e.code === 'DATABASE_REQUEST_FAILED' && /E11000 duplicate key/.test(e.message));
  await assert.rejects(db.collection('people').where({ email: 'b@x' }).update({ email: 'a@x' }), (e) => e.code === 'DATABASE_REQUEST_FAILED');
  const adults = await db.collection('people').where({ email: _.in(['a@x', 'b@x']), age: _.gte(18) }).get();
  assert.deepEqual(adults.data.map((d) => d.email), ['a@x']);

  const q = await yun.cliJson(['db', 'query', 'people', '--where', '{"age":{"$gte":10}}', '--order', '{"age":1,"email":-1}', '--fields', '{"email":1,"_id":0}']);
  assert.deepEqual(q.documents, [{ email: 'b@x' }, { email: 'c@x' }, { email: 'a@x' }]);
  const bad = await yun.cli(['db', 'index', 'create', 'people', 'dup', '--field', 'age', '--unique']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^error: DATABASE_REQUEST_FAILED: E11000/);

  await yun.cliJson(['db', 'index', 'drop', 'people', 'by_email']);
  await db.collection('people').add({ email: 'a@x' });
  await yun.cliJson(['db', 'drop', 'people']);
  await assert.rejects(db.collection('people').count(), { code: 'DATABASE_COLLECTION_NOT_EXIST' });
});

test('yun db explain shows the index a feed query walks in order; slow queries are logged without their values', async () => {
  await db.createCollection('feed');
  await db.collection('feed').add(Array.from({ length: 60 }, (_, i) => ({ _id: `f${String(i).padStart(2, '0')}`, album: `a${i % 3}`, n: i, secret: `s${i}` })));
  await yun.cliJson(['db', 'index', 'create', 'feed', 'album_n', '--field', 'album', '--field', 'n:desc']);
  const feed = await db.collection('feed').where({ album: 'a1' }).orderBy('n', 'desc').limit(5).get();
  assert.deepEqual(feed.data.map((d) => d.n), [58, 55, 52, 49, 46]);
  const plan = await yun.cliJson(['db', 'explain', 'feed', '--where', '{"album":"a1"}', '--order', '{"n":-1}', '--limit', '5']);
  assert.equal(plan.plan.stage, 'INDEX_SCAN');
  assert.equal(plan.plan.index, 'album_n');
  assert.equal(plan.plan.servesOrder, true);
  assert.equal(plan.returned, 5);
  assert.ok(plan.keysExamined <= 6 && plan.docsExamined <= 6, `it stops at the limit: ${JSON.stringify(plan)}`);
  const scan = await yun.cliJson(['db', 'explain', 'feed', '--where', '{"secret":"s7"}']);
  assert.equal(scan.plan.stage, 'COLLECTION_SCAN');
  assert.equal(scan.docsExamined, 60);
  const table = await yun.cli(['db', 'explain', 'feed', '--where', '{"album":"a1"}', '--order', '{"n":-1}']);
  assert.match(table.stdout, /index album_n \(1 range, forward, in order\)/);
  // Every query is slow at a threshold of 0 ms; the log keeps shapes, never values.
  await yun.cliJson(['env', 'configure', '--db-slow-query-ms', '0']);
  // Each node keeps the log of the queries it ran (in memory): ask every node.
  const slowLogs = async () => {
    const logs = await Promise.all(yun.nodes.map((n) => n.cliJson(['db', 'slow-queries'])));
    return { queries: logs.flatMap((l) => l.queries) };
  };
  const slow = await waitFor(async () => {
    await db.collection('feed').where({ secret: 's42' }).count();
    const logs = await slowLogs();
    return logs.queries.some((q) => q.collection === 'feed' && q.operation === 'count') ? logs : null;
  }, 'the count in the slow-query log', 5000);
  const logged = slow.queries.find((q) => q.collection === 'feed' && q.operation === 'count');
  assert.deepEqual(logged.filter, { secret: '?' });
  assert.ok(!JSON.stringify(slow).includes('s42'), 'no value is kept');
  await yun.cliJson(['env', 'configure', '--db-slow-query-ms', '100000']);
  const before = (await slowLogs()).queries.length;
  await db.collection('feed').where({ secret: 's43' }).count();
  assert.equal((await slowLogs()).queries.length, before, 'fast queries are not logged');
  const tables = await Promise.all(yun.nodes.map((n) => n.cli(['db', 'slow-queries'])));
  assert.ok(tables.some((t) => /count feed/.test(t.stdout)), tables.map((t) => t.stdout).join('\n'));
});

test('yun db export and import: JSON Lines and CSV round trips, upsert, all or nothing', async () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-io-'));
  await db.createCollection('src');
  await db.collection('src').add([
    { _id: 'a', title: 'first', n: 1, tags: ['x'], due: new Date('2024-06-01T00:00:00Z') },
    { _id: 'b', title: 'second, with a comma', n: 2.5, ok: true },
  ]);
  const jsonl = path.join(dir, 'src.jsonl');
  const csv = path.join(dir, 'src.csv');
  assert.equal((await yun.cliJson(['db', 'export', 'src', jsonl])).exported, 2);
  assert.equal((await yun.cliJson(['db', 'export', 'src', csv])).exported, 2);
  assert.equal(fs.readFileSync(jsonl, 'utf8').trim().split('\n').length, 2);
  assert.match(fs.readFileSync(csv, 'utf8'), /^_id,title,n,tags,due,ok\n/);

  await db.createCollection('fromjsonl');
  assert.deepEqual(await yun.cliJson(['db', 'import', 'fromjsonl', jsonl]), { inserted: 2, replaced: 0 });
  const a = (await db.collection('fromjsonl').doc('a').get()).data[0];
  assert.ok(a.due instanceof Date && a.due.toISOString() === '2024-06-01T00:00:00.000Z', 'dates survive the round trip');
  assert.deepEqual(a.tags, ['x']);

  await db.createCollection('fromcsv');
  await yun.cliJson(['db', 'import', 'fromcsv', csv]);
  const b = (await db.collection('fromcsv').doc('b').get()).data[0];
  assert.deepEqual([b.title, b.n, b.ok], ['second, with a comma', 2.5, true], 'CSV cells keep their types');

  // Insert mode refuses a duplicate _id and writes nothing of the file.
  const mixed = path.join(dir, 'mixed.jsonl');
  fs.writeFileSync(mixed, '{"_id":"c","title":"new"}\n{"_id":"a","title":"clash"}\n');
  const refused = await yun.cli(['db', 'import', 'fromjsonl', mixed]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /E11000 duplicate key/);
  assert.equal((await db.collection('fromjsonl').count()).total, 2, 'nothing of the failed import was written');
  assert.deepEqual(await yun.cliJson(['db', 'import', 'fromjsonl', mixed, '--mode', 'upsert']), { inserted: 1, replaced: 1 });
  assert.equal((await db.collection('fromjsonl').doc('a').get()).data[0].title, 'clash');

  const broken = path.join(dir, 'broken.jsonl');
  fs.writeFileSync(broken, '{"_id":"z"}\nnot json\n');
  const bad = await yun.cli(['db', 'import', 'fromjsonl', broken]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /line 2 is not a JSON document/);
});

test('limits are per env: an honest error above the max, and a default for calls that name none', async () => {
  await db.createCollection('many');
  await db.collection('many').add(Array.from({ length: 60 }, (_, i) => ({ i })));
  assert.equal((await db.collection('many').limit(60).get()).data.length, 60);
  const set = await yun.cliJson(['env', 'configure', '--db-max-limit', '50', '--db-default-limit', '5']);
  assert.deepEqual([set.settings.db_default_limit, set.settings.db_max_limit], [5, 50]);
  await assert.rejects(db.collection('many').limit(60).get(), (e) => e.code === 'INVALID_PARAM' && /maximum of 50/.test(e.message));
  assert.equal((await db.collection('many').limit(50).get()).data.length, 50);
  // The SDK always names a limit (100 by default); other callers get the env's default.
  const quick = await yun.cliJson(['db', 'query', 'many']);
  assert.equal(quick.documents.length, 5);
  const bad = await yun.cli(['env', 'configure', '--db-default-limit', '0']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /db_default_limit <= db_max_limit/);
  await yun.cliJson(['env', 'configure', '--db-max-limit', '1000', '--db-default-limit', '100']);
  assert.equal((await db.collection('many').limit(60).get()).data.length, 60);
});
