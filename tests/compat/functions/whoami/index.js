// Who called: the identity a function sees through both server SDKs.
const cloud = require('wx-server-sdk');
const tcb = require('@cloudbase/node-sdk');

cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });

exports.main = async (event, context) => {
  const app = tcb.init({ env: tcb.SYMBOL_CURRENT_ENV });
  return {
    event,
    wxContext: cloud.getWXContext(),
    userInfo: app.auth().getUserInfo(),
    authContext: await app.auth().getAuthContext(context),
    environment: JSON.parse(context.environment || '{}'),
  };
};
