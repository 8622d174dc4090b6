// An async event handler that fails its first `failTimes` attempts (unless FIXED=1),
// counting attempts in the database as any CloudBase function would keep state.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();
const _ = db.command;
exports.main = async (event, context) => {
  const attempts = db.collection('attempts');
  // The first attempt creates the counter; later ones find it (a duplicate _id fails).
  await attempts.add({ data: { _id: event.key, n: 0, seen: [] } }).catch(() => {});
  await attempts.doc(event.key).update({ data: { n: _.inc(1), seen: _.push(context.request_id) } });
  const { data } = await attempts.doc(event.key).get();
  console.log(`attempt ${data.n} of ${event.key}`);
  if (process.env.FIXED !== '1' && data.n <= event.failTimes) {
    throw new Error(`failing on purpose, attempt ${data.n}`);
  }
  await attempts.doc(event.key).update({ data: { done: true, source: process.env.TCB_SOURCE || '' } });
  return { n: data.n };
};
