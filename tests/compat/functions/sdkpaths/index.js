// Every kind of SDK call the suites make from inside functions, run twice in one event:
// over the instance's channel (the in-function data path) and over HTTP (as SCF does it,
// chosen with YUN_SDK_TRANSPORT=http). The test compares the two, byte for byte.
const http = require('http');
const cloud = require('wx-server-sdk');
const tcb = require('@cloudbase/node-sdk');

cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });

// How many requests went to Yun over HTTP: to /admin, and in all (file bytes too).
let adminRequests = 0;
let yunRequests = 0;
const httpRequest = http.request;
http.request = function request(url, ...rest) {
  const text = String(url && url.href ? url.href : url);
  if (text.startsWith(JSON.parse(process.env.TCB_CONTEXT_CNFG).URL.replace(/\/admin$/, ''))) yunRequests++;
  if (text.includes('/admin')) adminRequests++;
  return httpRequest.call(this, url, ...rest);
};

// What the caller sees of a result or an error; request ids differ on every call.
const seen = (value) => JSON.parse(JSON.stringify(value, (k, v) => {
  if (k === 'requestId' || k === 'requestID') return typeof v;
  if (k === 'tempFileURL' || k === 'download_url') return typeof v === 'string' ? v.replace(/\?.*/, '?…') : v;
  return v;
}));
async function attempt(out, name, call) {
  try {
    out[name] = { ok: seen(await call()) };
  } catch (e) {
    out[name] = { error: seen({ name: e.name, code: e.code, errCode: e.errCode, errMsg: e.errMsg, message: e.message }) };
  }
}

async function battery() {
  const db = cloud.database();
  const _ = db.command;
  const $ = db.command.aggregate;
  const c = db.collection('paths');
  const app = tcb.init({ env: tcb.SYMBOL_CURRENT_ENV });
  const out = {};
  await attempt(out, 'add', () => c.add({ data: { _id: 'a1', n: 1, tag: 't', at: new Date(86400000), nested: { list: [1, 'two', null] } } }));
  await attempt(out, 'addDuplicate', () => c.add({ data: { _id: 'a1', n: 1 } }));
  await attempt(out, 'addMany', () => c.add({ data: [{ _id: 'a2', n: 2, tag: 't' }, { _id: 'a3', n: 3, tag: 'u' }] }));
  await attempt(out, 'get', () => c.doc('a1').get());
  await attempt(out, 'getMissing', () => c.doc('missing').get());
  await attempt(out, 'update', () => c.doc('a1').update({ data: { n: _.inc(2), 'nested.list': _.push(4) } }));
  await attempt(out, 'set', () => c.doc('a2').set({ data: { n: 20, tag: 't' } }));
  await attempt(out, 'where', () => c.where({ tag: 't', n: _.gte(1) }).orderBy('n', 'desc').field({ n: true, tag: true }).get());
  await attempt(out, 'count', () => c.where({ tag: 't' }).count());
  await attempt(out, 'updateWhere', () => c.where({ tag: 'u' }).update({ data: { seen: true } }));
  await attempt(out, 'aggregate', () => c.aggregate().match({ tag: 't' }).group({ _id: '$tag', total: $.sum('$n') }).end());
  await attempt(out, 'badQuery', () => c.where({ n: _.foo(1) }).get());
  await attempt(out, 'noCollection', () => db.collection('absent').get());
  await attempt(out, 'otherEnv', () => cloud.database({ env: 'elsewhere' }).collection('paths').get());
  await attempt(out, 'transaction', () => db.runTransaction(async (t) => {
    const doc = await t.collection('paths').doc('a3').get();
    await t.collection('paths').doc('a3').update({ data: { n: doc.data.n + 1 } });
    return doc.data.n;
  }));
  await attempt(out, 'removeWhere', () => c.where({ tag: _.in(['t', 'u']) }).remove());
  await attempt(out, 'nodeSdkDb', () => app.database().collection('paths').where({ tag: 't' }).get());
  let fileID = 'none';
  await attempt(out, 'upload', async () => {
    const uploaded = await cloud.uploadFile({ cloudPath: 'paths/one.txt', fileContent: Buffer.from('one €') });
    fileID = uploaded.fileID;
    return uploaded;
  });
  const elsewhere = fileID.replace(cloud.getWXContext().ENV, 'elsewhere');
  await attempt(out, 'tempUrl', () => cloud.getTempFileURL({ fileList: [fileID, elsewhere] }));
  await attempt(out, 'download', async () => (await cloud.downloadFile({ fileID })).fileContent.toString());
  await attempt(out, 'downloadElsewhere', () => cloud.downloadFile({ fileID: elsewhere }));
  await attempt(out, 'deleteFile', () => cloud.deleteFile({ fileList: [fileID] }));
  await attempt(out, 'callFunction', () => cloud.callFunction({ name: 'whoami', data: { from: 'sdkpaths' } }));
  await attempt(out, 'callMissing', () => cloud.callFunction({ name: 'missing', data: {} }));
  await attempt(out, 'nodeSdkCall', () => app.callFunction({ name: 'whoami', data: { from: 'node-sdk' } }));
  await attempt(out, 'wxContext', () => cloud.getWXContext());
  await attempt(out, 'userInfo', () => app.auth().getUserInfo());
  return out;
}

exports.main = async (event) => {
  const results = {};
  for (const transport of event.transports) {
    if (transport === 'http') process.env.YUN_SDK_TRANSPORT = 'http';
    else delete process.env.YUN_SDK_TRANSPORT;
    adminRequests = 0;
    yunRequests = 0;
    const out = await battery();
    results[transport] = { out, adminRequests, yunRequests };
  }
  delete process.env.YUN_SDK_TRANSPORT;
  return results;
};
