'use strict';
// The photo-album example end to end in Debian's Chromium, as two users: A signs in with
// a name, creates a public and a private album, uploads photos and shares one album by
// code; B (anonymous) opens the code, likes and comments, and can neither delete A's
// photos nor read A's private album. Then the album moves to a cluster (`yun export`, `yun
// import` into three `yun serve` nodes behind HAProxy) and both users carry on there,
// still signed in. Screenshots go to tests/compat/artifacts/.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const { startYun, startCluster, BIN } = require('../lib/yun');
const { bundle, serveStatic, launchBrowser, screenshot } = require('../lib/browser');
const { png } = require('../lib/png');

const ALBUM = path.resolve(__dirname, '../../../examples/album');

let yun;
let site;
let browser;
let cluster;
// The two users' pages, kept across the tests: the move must not sign them out.
let a;
let b;

before(async () => {
  yun = await startYun();
  await new Promise((resolve, reject) => {
    execFile(path.join(ALBUM, 'deploy.sh'), [], {
      env: { ...process.env, YUN: BIN, YUN_URL: yun.url, YUN_ENV: yun.envId, YUN_SECRET_ID: yun.secretId, YUN_SECRET_KEY: yun.secretKey },
    }, (err, stdout, stderr) => (err ? reject(new Error(`deploy.sh failed: ${stderr || err.message}`)) : resolve(stdout)));
  });
  const app = await bundle(path.join(ALBUM, 'web/app.js'), 'album-app.js');
  site = await serveStatic({
    '/index.html': path.join(ALBUM, 'web/index.html'),
    '/style.css': path.join(ALBUM, 'web/style.css'),
    '/dist/app.js': app,
  });
  browser = await launchBrowser();
});

after(async () => {
  if (cluster) await cluster.stop();
  if (browser) await browser.close();
  if (site) await site.close();
  if (yun) await yun.stop();
});

async function userPage() {
  const context = await browser.newContext({ viewport: { width: 960, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await openAlbum(page, yun);
  return page;
}

/** Opens the album app on `server` (its URL in the page's query, as a user bookmarks it). */
async function openAlbum(page, server, extra = '') {
  await page.goto(`${site.url}/?yun=${encodeURIComponent(server.url)}&env=${server.envId}${extra}`);
}

const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

/** Waits until every thumbnail in the grid has loaded real pixels. */
async function thumbsLoaded(page, count) {
  await page.waitForFunction((n) => {
    const imgs = [...document.querySelectorAll('[data-testid="thumb"]')];
    return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth > 0);
  }, count, { timeout: 20000 });
}

async function status(page) {
  return (await byTestId(page, 'status').textContent()).trim();
}

test('two users through the album: share by code, like, comment, and the rules hold', async () => {
  // ---- A signs in with a name (first time: signs up) and makes two albums.
  a = await userPage();
  await a.fill('#named [name=username]', 'alice');
  await a.fill('#named [name=password]', 'alice-password');
  await a.click('#named button');
  await byTestId(a, 'albums').waitFor({ state: 'visible' });
  assert.equal(await byTestId(a, 'who').textContent(), 'alice');
  for (const [title, isPrivate] of [['Diary', true], ['Trip', false]]) {
    await a.fill('#new-album [name=title]', title);
    await a.setChecked('#new-album [name=private]', isPrivate);
    await a.click('#new-album button');
    await a.waitForSelector(`[data-testid="open-album"]:has-text("${title}")`);
  }
  const diaryId = await a.getAttribute('[data-testid="open-album"]:has-text("Diary")', 'data-album-id');

  // ---- A uploads two photos to Trip, with progress, and sees the thumbnails.
  await a.click('[data-testid="open-album"]:has-text("Trip")');
  await byTestId(a, 'owner-tools').waitFor({ state: 'visible' });
  await byTestId(a, 'files').setInputFiles([
    { name: 'red.png', mimeType: 'image/png', buffer: png(640, 480, [220, 40, 40]) },
    { name: 'blue.png', mimeType: 'image/png', buffer: png(480, 640, [40, 60, 220]) },
  ]);
  await thumbsLoaded(a, 2);
  assert.equal(await byTestId(a, 'progress').getAttribute('value'), '100');
  assert.match(await status(a), /Uploaded 2 photos/);
  const thumbSize = await a.evaluate(() => [...document.querySelectorAll('[data-testid="thumb"]')].map((i) => [i.naturalWidth, i.naturalHeight]));
  assert.deepEqual(thumbSize, [[320, 320], [320, 320]], 'thumbnails are rendered by Yun (imageMogr2), not the full images');

  // ---- A shares Trip: a code and a QR image from the share function.
  await a.click('[data-testid="share"]');
  await a.waitForFunction(() => document.querySelector('[data-testid="share-code"]').textContent || document.querySelector('[data-testid="status"]').textContent, null, { timeout: 60000 });
  assert.equal(await status(a), '', 'sharing works');
  const code = (await byTestId(a, 'share-code').textContent()).trim();
  assert.match(code, /^[A-HJ-NP-Z2-9]{6}$/);
  await a.waitForFunction(() => { const q = document.querySelector('[data-testid="share-qr"]'); return q.complete && q.naturalWidth > 0; });
  await screenshot(a, 'album-a-shared');

  // ---- A puts a photo in the private Diary too.
  await a.click('[data-testid="back"]');
  await a.click('[data-testid="open-album"]:has-text("Diary")');
  await byTestId(a, 'files').setInputFiles([{ name: 'secret.png', mimeType: 'image/png', buffer: png(64, 64, [10, 10, 10]) }]);
  await thumbsLoaded(a, 1);

  // ---- B, anonymous, opens the code: sees Trip, not the owner's tools.
  b = await userPage();
  await b.click('[data-testid="anon"]');
  await byTestId(b, 'albums').waitFor({ state: 'visible' });
  await b.fill('#open-code [name=code]', code.toLowerCase());
  await b.click('#open-code button');
  await byTestId(b, 'album').waitFor({ state: 'visible' });
  assert.equal(await byTestId(b, 'album-title').textContent(), 'Trip');
  assert.equal(await byTestId(b, 'owner-tools').isHidden(), true);
  await thumbsLoaded(b, 2);

  // ---- B opens a photo, likes it and comments; no delete button for someone else's photo.
  await byTestId(b, 'thumb').first().click();
  await byTestId(b, 'photo').waitFor({ state: 'visible' });
  assert.equal(await byTestId(b, 'delete-photo').isHidden(), true);
  await b.click('[data-testid="like"]');
  await b.waitForFunction(() => document.querySelector('[data-testid="likes"]').textContent === '1');
  await b.fill('#comment [name=text]', 'nice colours!');
  await b.click('#comment button');
  await b.waitForSelector('[data-testid="comment"]:has-text("nice colours!")');
  await screenshot(b, 'album-b-liked-and-commented');

  // ---- B cannot delete A's photos or read A's private album, whatever it tries.
  const attempts = await b.evaluate(async (diary) => {
    const { app, db, state } = window.album;
    const photo = state.photo;
    const removeDoc = await db.collection('photos').doc(photo._id).remove();
    const removeFile = await app.deleteFile({ fileList: [photo.fileID] });
    const album = await db.collection('albums').doc(diary).get();
    const photos = await db.collection('photos').where({ albumId: diary }).get();
    const everything = await db.collection('photos').get();
    return { removeDoc: removeDoc.code, removeFile: removeFile.fileList[0].code, album: album.code, photos: photos.code, everything: everything.code };
  }, diaryId);
  assert.deepEqual(attempts, {
    removeDoc: 'DATABASE_PERMISSION_DENIED',
    removeFile: 'STORAGE_EXCEED_AUTHORITY',
    album: 'DATABASE_PERMISSION_DENIED',
    photos: 'DATABASE_PERMISSION_DENIED',
    everything: 'DATABASE_PERMISSION_DENIED',
  });
  // Through the UI too: a share link cannot be forged into the private album.
  await openAlbum(b, yun, '&share=NOPE23');
  await b.waitForFunction(() => /no album has the code/.test(document.querySelector('[data-testid="status"]').textContent));
  await screenshot(b, 'album-b-refused');

  // ---- A sees B's like and comment, and deletes a photo.
  await a.click('[data-testid="back"]');
  await a.click('[data-testid="open-album"]:has-text("Trip")');
  await thumbsLoaded(a, 2);
  await byTestId(a, 'thumb').first().click();
  await a.waitForSelector('[data-testid="comment"]:has-text("nice colours!")');
  // Likes and comments render from two queries at once: wait for the count, not only the comment.
  await a.waitForFunction(() => document.querySelector('[data-testid="likes"]').textContent === '1');
  await a.click('[data-testid="delete-photo"]');
  await thumbsLoaded(a, 1);
  assert.match(await status(a), /Photo deleted/);
  await screenshot(a, 'album-a-after-delete');
  const shots = fs.readdirSync(path.resolve(__dirname, '../artifacts')).filter((f) => f.startsWith('album-'));
  assert.ok(shots.length >= 4, `screenshots kept: ${shots}`);
});

test('the album moves into a cluster with yun export and yun import; both users carry on there, still signed in', async () => {
  // ---- Before the move: B likes the photo left in Trip.
  await openAlbum(b, yun, `&share=${await shareCode(a, yun)}`);
  await byTestId(b, 'album').waitFor({ state: 'visible' });
  await thumbsLoaded(b, 1);
  await byTestId(b, 'thumb').first().click();
  await b.click('[data-testid="like"]');
  await b.waitForFunction(() => document.querySelector('[data-testid="likes"]').textContent === '1');
  const before = await Promise.all([a, b].map((p) => p.evaluate(() => window.album.state.user.id)));

  const archive = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'yun-export-')), 'album.yun.tar.gz');
  const exported = await yun.cliJson(['export', '--out', archive]);
  assert.equal(exported.bytes, fs.statSync(archive).size);

  cluster = await startCluster();
  const imported = await cluster.cliJson(['import', archive]);
  assert.equal(imported.env, yun.envId);
  assert.equal(imported.imported.collections, 5, 'albums, photos, likes, comments, shares');
  assert.equal(imported.imported.functions, 1, 'the share function');
  assert.equal(imported.imported.users, 2, 'alice and the anonymous B');
  assert.ok(imported.imported.files >= 2, `the photos left (and the share QR images): ${imported.imported.files}`);
  assert.ok(imported.imported.rules >= 6, 'the rules of five collections and of storage');
  const again = await cluster.cli(['import', archive]);
  assert.notEqual(again.code, 0, 'a second import is refused');
  assert.match(again.stderr, /never overwrites/);

  // ---- After the move, against the load balancer: A is still alice, without signing in.
  await openAlbum(a, cluster);
  await byTestId(a, 'albums').waitFor({ state: 'visible' });
  assert.equal(await byTestId(a, 'who').textContent(), 'alice');
  await a.waitForSelector('[data-testid="open-album"]:has-text("Diary")');
  await a.click('[data-testid="open-album"]:has-text("Trip")');
  await thumbsLoaded(a, 1);
  await byTestId(a, 'thumb').first().click();
  await a.waitForFunction(() => document.querySelector('[data-testid="likes"]').textContent === '1');
  // The share function runs on the cluster; its code opens Trip for B, still the same
  // anonymous user, who comments.
  const code = await shareCode(a, cluster);
  await openAlbum(b, cluster, `&share=${code}`);
  await byTestId(b, 'album').waitFor({ state: 'visible' });
  assert.equal(await byTestId(b, 'album-title').textContent(), 'Trip');
  await thumbsLoaded(b, 1);
  await byTestId(b, 'thumb').first().click();
  await b.fill('#comment [name=text]', 'moved and still here');
  await b.click('#comment button');
  await b.waitForSelector('[data-testid="comment"]:has-text("moved and still here")');
  const after = await Promise.all([a, b].map((p) => p.evaluate(() => window.album.state.user.id)));
  assert.deepEqual(after, before, 'the same users, signed in before the move');
  // The rules moved with the data: B still cannot read A's private album.
  const refused = await b.evaluate(async () => (await window.album.db.collection('photos').get()).code);
  assert.equal(refused, 'DATABASE_PERMISSION_DENIED');
  await screenshot(b, 'album-b-on-the-cluster');
});

/** A opens Trip on `server`, shares it and returns its code. */
async function shareCode(page, server) {
  await openAlbum(page, server);
  await page.click('[data-testid="open-album"]:has-text("Trip")');
  await byTestId(page, 'owner-tools').waitFor({ state: 'visible' });
  await page.evaluate(() => { document.querySelector('[data-testid="share-code"]').textContent = ''; });
  await page.click('[data-testid="share"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="share-code"]').textContent || document.querySelector('[data-testid="status"]').textContent, null, { timeout: 60000 });
  assert.equal(await status(page), '', 'sharing works');
  return (await byTestId(page, 'share-code').textContent()).trim();
}
