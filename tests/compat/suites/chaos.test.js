'use strict';
// Three `yun serve` nodes behind HAProxy under a mixed write load (documents set by id,
// transactions, functions that write), and one node killed with SIGKILL in the middle.
// Clients retry what failed, as production clients do. Afterwards: every acknowledged
// write is there, no retried transaction applied twice, the two nodes left kept serving
// while the third was gone, and the killed node, started again, serves its share.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor, sleep } = require('../lib/yun');

const WORKERS = 8;
let yun;
let db;

before(async () => {
  yun = await startCluster();
  db = yun.admin().database();
  for (const c of ['chaos', 'chaos_ledger', 'chaos_totals']) await db.createCollection(c);
  await db.collection('chaos_totals').add({ _id: 'total', n: 0 });
  await yun.deploy('chaoswriter', 'chaoswriter');
});
after(async () => yun && yun.stop());

/** Every document id of a collection, paged in _id order. */
async function allIds(collection) {
  const ids = [];
  for (;;) {
    const page = await db.collection(collection).orderBy('_id', 'asc').skip(ids.length).limit(1000).field({ _id: true }).get();
    ids.push(...page.data.map((d) => d._id));
    if (page.data.length < 1000) return ids;
  }
}

test('kill -9 of a node under a mixed write load: no acknowledged write lost, no transaction applied twice; the node rejoins', async () => {
  const app = yun.admin();
  const _ = db.command;
  const acked = { set: new Set(), txn: new Set(), fn: new Set() };
  const ackTimes = [];
  let failures = 0;
  let running = true;

  // Each kind of write is retried until acknowledged; ids are the client's, so a retry of
  // something that did commit finds it done instead of doing it again.
  const kinds = {
    set: (id, worker) => db.collection('chaos').doc(id).set({ kind: 'set', worker }),
    txn: (id) => db.runTransaction(async (tx) => {
      const entry = await tx.collection('chaos_ledger').doc(id).get();
      if (entry.data) return;
      await tx.collection('chaos_ledger').add({ _id: id });
      await tx.collection('chaos_totals').doc('total').update({ n: _.inc(1) });
    }),
    fn: async (id, worker) => {
      const res = await app.callFunction({ name: 'chaoswriter', data: { id, worker } });
      assert.equal(res.result.id, id);
    },
  };
  const names = Object.keys(kinds);
  const worker = async (w) => {
    for (let seq = 0; running; seq++) {
      const kind = names[seq % names.length];
      const id = `${kind}-${w}-${seq}`;
      for (;;) {
        try {
          await kinds[kind](id, w);
          acked[kind].add(id);
          ackTimes.push(Date.now());
          break;
        } catch (_e) {
          failures += 1;
          await sleep(50);
        }
      }
    }
  };
  const load = Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));

  await sleep(2000);
  const victim = yun.nodes[1];
  const killedAt = Date.now();
  await victim.stop('SIGKILL');
  await waitFor(async () => (await yun.states()).b.status.startsWith('DOWN'), 'haproxy to mark the killed node down', 10000);
  await sleep(3000);
  const restartedAt = Date.now();
  const servedWhileDown = ackTimes.filter((t) => t > killedAt && t < restartedAt).length;
  const rejoined = await yun.restart('b');
  await waitFor(async () => (await yun.states()).b.status === 'UP', 'haproxy to mark the restarted node up', 20000);
  const sessionsBefore = (await yun.states()).b.sessions;
  await sleep(2000);
  running = false;
  await load;

  const total = acked.set.size + acked.txn.size + acked.fn.size;
  console.log(`chaos: ${total} writes acknowledged (${acked.set.size} set, ${acked.txn.size} transactions, ${acked.fn.size} function calls), ${failures} failed attempts retried, ${servedWhileDown} acknowledged while a node was down`);
  assert.ok(servedWhileDown > 0, 'the two nodes left kept serving');

  const written = new Set(await allIds('chaos'));
  for (const id of [...acked.set, ...acked.fn]) assert.ok(written.has(id), `acknowledged write ${id} is missing`);
  assert.equal(written.size, acked.set.size + acked.fn.size, 'nothing but the acknowledged writes');
  const ledger = await allIds('chaos_ledger');
  assert.deepEqual(new Set(ledger), acked.txn, 'every acknowledged transaction, once');
  const { data: [totals] } = await db.collection('chaos_totals').doc('total').get();
  assert.equal(totals.n, ledger.length, 'no transaction applied twice');

  // The restarted node serves: its share through HAProxy, and directly.
  const after = (await yun.states()).b;
  assert.equal(after.status, 'UP');
  assert.ok(after.sessions > sessionsBefore, `HAProxy sent the rejoined node requests (${sessionsBefore} → ${after.sessions})`);
  const direct = await rejoined.admin().database().collection('chaos').count();
  assert.equal(direct.total, written.size);
});
