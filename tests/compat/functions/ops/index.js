// Operations suite: a line at each console level, an optional call to another function
// (a causal chain), an optional document write, a result of a chosen size.
const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
exports.main = async (event) => {
  const tag = event.tag || 'untagged';
  console.debug(`debug line ${tag}`);
  console.log(`info line ${tag}`);
  console.warn(`warn line ${tag}`);
  console.error(`error line ${tag}`);
  if (event.pad) console.log('p'.repeat(event.pad));
  if (event.fail) throw new Error(`asked to fail ${tag}`);
  let child = null;
  if (event.call) {
    child = (await cloud.callFunction({ name: event.call, data: { tag: `${tag}/child`, call: event.grandchild } })).result;
  }
  if (event.write) {
    await cloud.database().collection('ops').add({ data: { tag } });
  }
  return { tag, child, traceparent: process.env.TRACEPARENT, body: 'x'.repeat(event.size || 0) };
};
