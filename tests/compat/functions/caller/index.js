// Unmodified CloudBase code: wx-server-sdk, current env, call another function.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event) => {
  const res = await cloud.callFunction({ name: event.target || 'echo', data: { via: 'caller', n: event.n } });
  let failure = null;
  try {
    await cloud.callFunction({ name: 'faults', data: { kind: 'throw' } });
  } catch (e) {
    failure = { errCode: e.errCode, errMsg: e.errMsg };
  }
  return { res, wxContext: cloud.getWXContext(), failure };
};
