// A database trigger: records each change event, and tags new photos by writing to the
// very collection it watches (its own writes must not trigger it again).
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();
exports.main = async (event) => {
  await db.collection('seen').add({ data: { event } });
  if (event.Event === 'create') {
    await db.collection(event.Collection).doc(event.DocId).update({ data: { tagged: true } });
  }
  return 'seen';
};
