'use strict';
// End users with @cloudbase/js-sdk 3.7.0 in Chromium: anonymous, username + password and
// custom-ticket sign-in against /auth/v1, refresh rotation and replay, sign-out, password
// change, functions that see who called, and `yun user` / `yun auth` management.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const tcb = require('@cloudbase/node-sdk');
const { startYun } = require('../lib/yun');
const { bundle, serveStatic, launchBrowser } = require('../lib/browser');

let yun;
let site;
let browser;

before(async () => {
  yun = await startYun();
  await yun.deploy('whoami', 'whoami');
  const sdk = await bundle(path.join(__dirname, '../lib/web/sdk-entry.js'), 'cloudbase.js');
  site = await serveStatic({ '/cloudbase.js': sdk });
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (site) await site.close();
  if (yun) await yun.stop();
});

/** A fresh browser profile (its own localStorage) on the test site, js-sdk loaded. */
async function newUserPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(site.url);
  await page.waitForFunction(() => typeof window.connectYun === 'function');
  return page;
}

/** Runs `body` (source of an async function of (app, arg)) in the page with a connected app. */
function inApp(page, body, arg) {
  return page.evaluate(
    async ({ url, env, body, arg }) => {
      window.app = window.app || window.connectYun(url, env);
      // eslint-disable-next-line no-new-func
      const fn = new Function('app', 'arg', `return (${body})(app, arg);`);
      return fn(window.app, arg);
    },
    { url: yun.url, env: yun.envId, body: body.toString(), arg },
  );
}

async function authPost(route, body, { env = yun.envId, headers = {} } = {}) {
  const res = await fetch(`${yun.url}/auth/v1${route}?client_id=${env}`, {
    method: 'POST',
    headers: { 'content-type': 'text/plain;charset=UTF-8', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function web(body, { env = yun.envId } = {}) {
  const res = await fetch(`${yun.url}/web?env=${env}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json;charset=UTF-8' },
    body: JSON.stringify({ dataVersion: '2020-01-10', env, ...body }),
  });
  assert.equal(res.status, 200, '/web always answers 200');
  return res.json();
}

const callWhoami = async (app) => (await app.callFunction({ name: 'whoami', data: { hi: 1 } })).result;

test('anonymous sign-in: the js-sdk gets a user and a function sees who called', async () => {
  const page = await newUserPage();
  const user = await inApp(page, async (app) => {
    const { data, error } = await app.auth().signInAnonymously();
    if (error) throw new Error(error.message);
    return data.user;
  });
  assert.equal(user.is_anonymous, true);
  assert.match(user.id, /^[0-9a-f]{32}$/);
  const who = await inApp(page, callWhoami);
  assert.deepEqual(who.event, { hi: 1 });
  assert.equal(who.wxContext.OPENID, user.id, 'getWXContext().OPENID is the user id');
  assert.equal(who.wxContext.SOURCE, 'web');
  assert.deepEqual(who.userInfo, { openId: user.id, appId: '', uid: user.id, customUserId: '', isAnonymous: true });
  assert.equal(who.authContext.uid, user.id);
  assert.equal(who.authContext.loginType, 'ANONYMOUS');
  assert.equal(who.environment.TCB_UUID, user.id, 'context.environment carries the identity');
  assert.equal(who.environment.TCB_ISANONYMOUS_USER, 'true');
  // The session survives a reload: the SDK keeps it in localStorage.
  await page.reload();
  await page.waitForFunction(() => typeof window.connectYun === 'function');
  const again = await inApp(page, callWhoami);
  assert.equal(again.userInfo.uid, user.id);
  await page.context().close();
});

test('username sign-up and sign-in; a wrong password is invalid_password, a taken name already_exists', async () => {
  const signup = await authPost('/signup', { username: 'alice', password: 'alice-secret-1' });
  assert.equal(signup.status, 200);
  assert.equal(signup.body.token_type, 'Bearer');
  assert.equal(signup.body.scope, 'user');
  assert.equal(signup.body.expires_in, 7200);
  const taken = await authPost('/signup', { username: 'alice', password: 'another-secret' });
  assert.equal(taken.body.error, 'already_exists');
  const short = await authPost('/signup', { username: 'bob', password: 'short' });
  assert.equal(short.body.error, 'invalid_argument');

  const page = await newUserPage();
  const wrong = await inApp(page, async (app) => {
    const { error } = await app.auth().signInWithPassword({ username: 'alice', password: 'not-her-password' });
    return error && { code: error.code, message: error.message };
  });
  assert.ok(wrong, 'a wrong password is an error');
  assert.match(`${wrong.code} ${wrong.message}`, /invalid_password|wrong username or password/);
  const user = await inApp(page, async (app) => {
    const { data, error } = await app.auth().signInWithPassword({ username: 'alice', password: 'alice-secret-1' });
    if (error) throw new Error(error.message);
    return data.user;
  });
  assert.equal(user.id, signup.body.sub);
  assert.equal(user.user_metadata.username, 'alice');
  assert.equal(user.is_anonymous, false);
  const who = await inApp(page, callWhoami);
  assert.equal(who.authContext.loginType, 'USERNAME');
  assert.equal(who.userInfo.isAnonymous, false);
  await page.context().close();
});

test('custom tickets: a backend mints one with node-sdk createTicket and the browser redeems it', async () => {
  const keyFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'yun-ticket-')), 'key.json');
  const created = await yun.cliJson(['auth', 'ticket-key', 'create', '--out', keyFile]);
  assert.equal((fs.statSync(keyFile).mode & 0o777), 0o600, 'the key file is private');
  const key = JSON.parse(fs.readFileSync(keyFile, 'utf8'));
  assert.equal(key.private_key_id, created.private_key_id);
  assert.equal(key.env_id, yun.envId);
  const listed = await yun.cliJson(['auth', 'ticket-key', 'list']);
  assert.deepEqual(listed.keys.map((k) => k.privateKeyId), [key.private_key_id]);
  assert.equal(JSON.stringify(listed).includes('PRIVATE KEY'), false, 'Yun never hands the private key out again');

  const backend = tcb.init({ env: yun.envId, credentials: key });
  const ticket = backend.auth().createTicket('shop-user-42');
  const page = await newUserPage();
  const user = await inApp(page, async (app, ticket) => {
    const auth = app.auth();
    auth.setCustomSignFunc(async () => ticket);
    const { data, error } = await auth.signInWithCustomTicket();
    if (error) throw new Error(error.message);
    return data.user;
  }, ticket);
  assert.equal(user.is_anonymous, false);
  const who = await inApp(page, callWhoami);
  assert.equal(who.userInfo.customUserId, 'shop-user-42');
  assert.equal(who.userInfo.uid, user.id);
  assert.equal(who.authContext.loginType, 'CUSTOM');
  // The same custom id is the same user next time.
  const again = await authPost('/signin/custom', { provider_id: 'custom', ticket: backend.auth().createTicket('shop-user-42') });
  assert.equal(again.body.sub, user.id);
  // A ticket for another env, or signed by a revoked key, is refused.
  const foreign = await authPost('/signin/custom', { provider_id: 'custom', ticket }, { env: 'nosuchenv' });
  assert.equal(foreign.body.error, 'not_found');
  await yun.cliJson(['auth', 'ticket-key', 'revoke', key.private_key_id]);
  const revoked = await authPost('/signin/custom', { provider_id: 'custom', ticket: backend.auth().createTicket('shop-user-42') });
  assert.equal(revoked.body.error, 'invalid_grant');
  await page.context().close();
});

test('refresh tokens rotate; replaying a spent one ends the whole session', async () => {
  const first = (await authPost('/signin/anonymously', {})).body;
  const second = (await authPost('/token', { grant_type: 'refresh_token', refresh_token: first.refresh_token, client_id: yun.envId })).body;
  assert.ok(second.access_token);
  assert.notEqual(second.refresh_token, first.refresh_token);
  assert.equal(second.sub, first.sub);
  const replay = await authPost('/token', { grant_type: 'refresh_token', refresh_token: first.refresh_token });
  assert.equal(replay.body.error, 'invalid_grant');
  const afterReplay = await authPost('/token', { grant_type: 'refresh_token', refresh_token: second.refresh_token });
  assert.equal(afterReplay.body.error, 'invalid_grant', 'the replay revoked the newest token of the family too');
  const badGrant = await authPost('/token', { grant_type: 'password', refresh_token: 'x' });
  assert.equal(badGrant.body.error, 'invalid_argument');
});

test('sign-out ends the session in the browser and on the server', async () => {
  const page = await newUserPage();
  const result = await inApp(page, async (app) => {
    const auth = app.auth();
    const { error } = await auth.signInWithPassword({ username: 'alice', password: 'alice-secret-1' });
    if (error) throw new Error(error.message);
    const refreshToken = (await auth.getSession()).data.session.refresh_token;
    const out = await auth.signOut();
    const after = await auth.getUser();
    return { refreshToken, signOutError: out.error && out.error.message, userAfter: after.data.user };
  });
  assert.equal(result.signOutError, null);
  assert.equal(result.userAfter, null);
  const refresh = await authPost('/token', { grant_type: 'refresh_token', refresh_token: result.refreshToken });
  assert.equal(refresh.body.error, 'invalid_grant', 'the signed-out session cannot be refreshed');
  await page.context().close();
});

test('changing the password with the js-sdk: the old one stops working', async () => {
  await authPost('/signup', { username: 'carol', password: 'carol-first-pw' });
  const page = await newUserPage();
  await inApp(page, async (app) => {
    const auth = app.auth();
    const { error } = await auth.signInWithPassword({ username: 'carol', password: 'carol-first-pw' });
    if (error) throw new Error(error.message);
    const changed = await auth.resetPasswordForOld({ old_password: 'carol-first-pw', new_password: 'carol-second-pw' });
    if (changed.error) throw new Error(changed.error.message);
    const wrongOld = await auth.resetPasswordForOld({ old_password: 'not-the-old-one', new_password: 'carol-third-pw' });
    if (!wrongOld.error) throw new Error('a wrong old password was accepted');
  });
  assert.equal((await authPost('/signin', { username: 'carol', password: 'carol-first-pw' })).body.error, 'invalid_password');
  assert.ok((await authPost('/signin', { username: 'carol', password: 'carol-second-pw' })).body.access_token);
  await page.context().close();
});

test('/web refuses missing, tampered, foreign-env and rotated tokens with clear codes', async () => {
  const session = (await authPost('/signin/anonymously', {})).body;
  const call = (token, env) => web({ action: 'functions.invokeFunction', function_name: 'whoami', request_data: '{}', access_token: token }, { env });
  const ok = await call(session.access_token);
  assert.equal(JSON.parse(ok.data.response_data).userInfo.uid, session.sub);
  assert.equal((await call(undefined)).code, 'UNAUTHENTICATED');
  const tampered = session.access_token.slice(0, -3) + (session.access_token.endsWith('AAA') ? 'BBB' : 'AAA');
  assert.equal((await call(tampered)).code, 'UNAUTHENTICATED');
  assert.equal((await call('not-a-jwt')).code, 'UNAUTHENTICATED');
  await yun.cliJson(['env', 'create', 'other']);
  const foreign = await call(session.access_token, 'other');
  assert.equal(foreign.code, 'UNAUTHENTICATED', "a dev user's token does not work in env other");
  const otherUser = (await authPost('/signin/anonymously', {}, { env: 'other' })).body;
  assert.equal((await call(otherUser.access_token)).code, 'UNAUTHENTICATED', "and other's token does not work in dev");
  // Key rotation ends every access token; the refresh token still gets a new one.
  await yun.cliJson(['auth', 'rotate-signing-key']);
  assert.equal((await call(session.access_token)).code, 'UNAUTHENTICATED');
  const renewed = (await authPost('/token', { grant_type: 'refresh_token', refresh_token: session.refresh_token })).body;
  assert.equal(JSON.parse((await call(renewed.access_token)).data.response_data).userInfo.uid, session.sub);
  // Unknown actions and unserved auth endpoints say so.
  assert.equal((await web({ action: 'nosuch.action', access_token: renewed.access_token })).code, 'INVALID_ACTION');
  const verification = await authPost('/verification', { phone_number: '+86 1' });
  assert.equal(verification.body.error, 'unimplemented');
});

test('yun user list, disable, enable and delete', async () => {
  const s = (await authPost('/signup', { username: 'dave', password: 'dave-password' })).body;
  const listed = await yun.cliJson(['user', 'list']);
  const dave = listed.users.find((u) => u.uid === s.sub);
  assert.deepEqual({ username: dave.username, anonymous: dave.anonymous, disabled: dave.disabled }, { username: 'dave', anonymous: false, disabled: false });
  assert.equal('password_hash' in dave, false, 'no password hashes leave the server');
  const table = await yun.cli(['user', 'list']);
  assert.match(table.stdout, /dave/);

  const me = () => fetch(`${yun.url}/auth/v1/user/me`, { headers: { authorization: `Bearer ${s.access_token}` } }).then((r) => r.json());
  assert.equal((await me()).name, 'dave');
  await yun.cliJson(['user', 'disable', s.sub]);
  assert.equal((await me()).error, 'permission_denied', 'a disabled user is refused at once');
  assert.equal((await authPost('/signin', { username: 'dave', password: 'dave-password' })).body.error, 'permission_denied');
  await yun.cliJson(['user', 'enable', s.sub]);
  const back = (await authPost('/signin', { username: 'dave', password: 'dave-password' })).body;
  assert.ok(back.access_token);
  await yun.cliJson(['user', 'delete', s.sub]);
  const gone = await fetch(`${yun.url}/auth/v1/user/me`, { headers: { authorization: `Bearer ${back.access_token}` } }).then((r) => r.json());
  assert.equal(gone.error, 'unauthenticated');
  const missing = await yun.cli(['user', 'get', s.sub]);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /no user/);
});

test('yun db rules and yun storage rules: presets, custom rules checked before they are stored, reset', async () => {
  assert.deepEqual(await yun.cliJson(['db', 'rules', 'get', 'photos']), { rules: 'PRIVATE', default: true });
  assert.deepEqual(await yun.cliJson(['db', 'rules', 'set', 'photos', 'READONLY']), { rules: 'READONLY', default: false });
  const custom = { read: 'doc.public == true || doc._openid == auth.openid', write: 'doc._openid == auth.openid' };
  assert.deepEqual(await yun.cliJson(['db', 'rules', 'set', 'photos', JSON.stringify(custom)]), { rules: custom, default: false });
  const split = { read: true, create: 'auth != null', update: false, delete: 'doc._openid == auth.uid' };
  assert.deepEqual((await yun.cliJson(['db', 'rules', 'set', 'likes', JSON.stringify(split)])).rules, split);
  for (const [bad, message] of [
    ['{"read": "doc.x =="}', /rule syntax/],
    ['{"read": "window.x == 1", "write": false}', /unknown variable/],
    ['{"read": true}', /write\) is required/],
    ['EVERYONE', /unknown preset/],
  ]) {
    const r = await yun.cli(['db', 'rules', 'set', 'photos', bad]);
    assert.notEqual(r.code, 0, bad);
    assert.match(r.stderr, message);
  }
  // The older order (collection first) still reads.
  assert.deepEqual((await yun.cliJson(['db', 'rules', 'photos', 'get'])).rules, custom, 'a refused set changes nothing');
  assert.deepEqual(await yun.cliJson(['db', 'rules', 'photos', 'reset']), { rules: 'PRIVATE', default: true });
  assert.deepEqual(await yun.cliJson(['storage', 'rules', 'get']), { rules: 'READONLY', default: true });
  assert.deepEqual(await yun.cliJson(['storage', 'rules', 'set', 'PRIVATE']), { rules: 'PRIVATE', default: false });
  const table = await yun.cli(['storage', 'rules', 'get']);
  assert.match(table.stdout, /Rules of storage:\n"PRIVATE"/);
});
