// Chaos suite: writes one document under the id the caller chose, so a retried call
// overwrites instead of adding.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event) => {
  await cloud.database().collection('chaos').doc(event.id).set({ data: { kind: 'function', worker: event.worker } });
  return { id: event.id };
};
