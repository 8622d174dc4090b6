// Unmodified CloudBase code using the database from inside a function.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();
const _ = db.command;
exports.main = async (event) => {
  const added = await db.collection('notes').add({ data: { text: event.text, n: event.n, at: db.serverDate() } });
  const got = await db.collection('notes').where({ n: _.gte(event.n) }).orderBy('n', 'asc').get();
  const one = await db.collection('notes').doc(added._id).get();
  const counted = await db.collection('notes').count();
  return { id: added._id, texts: got.data.map((d) => d.text), one: one.data, total: counted.total, atIsDate: one.data.at instanceof Date };
};
