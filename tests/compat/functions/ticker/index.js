// A timer-triggered function: records each event it gets, as a CloudBase app would log
// a nightly job's runs.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event, context) => {
  await cloud.database().collection('ticks').add({
    data: { event, triggerSrc: process.env.TRIGGER_SRC || '', requestId: context.request_id },
  });
  return 'ticked';
};
