// A function that ships its own copy of the node-sdk (installed at deploy from its
// package.json): that copy is the one it gets, and it reaches Yun over HTTP.
const http = require('http');
const tcb = require('@cloudbase/node-sdk');

let adminRequests = 0;
const httpRequest = http.request;
http.request = function request(url, ...rest) {
  if (String(url && url.href ? url.href : url).includes('/admin')) adminRequests++;
  return httpRequest.call(this, url, ...rest);
};

exports.main = async () => {
  const app = tcb.init({ env: tcb.SYMBOL_CURRENT_ENV });
  const counted = await app.database().collection('secrets').count();
  return { resolved: require.resolve('@cloudbase/node-sdk'), cwd: process.cwd(), total: counted.total, adminRequests };
};
