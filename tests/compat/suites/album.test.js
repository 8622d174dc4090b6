'use strict';
// The photo-album example end to end in Debian's Chromium, as two users: A signs in with
// a name, creates a public and a private album, uploads photos and shares one album by
// code; B (anonymous) opens the code, likes and comments, and can neither delete A's
// photos nor read A's private album. Screenshots go to tests/compat/artifacts/.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const { startYun, BIN } = require('../lib/yun');
const { bundle, serveStatic, launchBrowser, screenshot } = require('../lib/browser');

const ALBUM = path.resolve(__dirname, '../../../examples/album');

let yun;
let site;
let browser;

// ---- a PNG encoder small enough to live here: solid-colour test photos.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}
function png(width, height, [r, g, b]) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => [r, g, b]).flat())]);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

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
  if (browser) await browser.close();
  if (site) await site.close();
  if (yun) await yun.stop();
});

async function userPage() {
  const context = await browser.newContext({ viewport: { width: 960, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${site.url}/?yun=${encodeURIComponent(yun.url)}&env=${yun.envId}`);
  return page;
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
  const a = await userPage();
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
  const b = await userPage();
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
  await b.goto(`${site.url}/?yun=${encodeURIComponent(yun.url)}&env=${yun.envId}&share=NOPE23`);
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
