'use strict';
// File storage through the official SDKs: every storage action, the upload step (PUT and
// POST form), temporary URLs (ranges, ETag, expiry, signatures), paths, limits, env
// isolation, use from inside functions. With YUN_TEST_S3=1 the same suite runs against
// an S3 server (moto) instead of the local disk.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const { CLUSTER, startYun, startMoto, sleep, waitFor } = require('../lib/yun');

const S3 = process.env.YUN_TEST_S3 === '1';
// Files are on this host's disk only with one `yun dev` on its default storage.
const FILES_ON_DISK = !S3 && !CLUSTER;
let yun;
let app;
let moto;

/** An S3 server (moto) with one bucket. */
async function startS3() {
  const s3 = await startMoto();
  await s3.bucket('yun-files');
  return s3;
}

async function start(extra = []) {
  if (!S3) return startYun(extra);
  Object.assign(process.env, moto.env);
  return startYun(['--storage', 's3://yun-files', ...extra]);
}

before(async () => {
  if (S3) moto = await startS3();
  yun = await start();
  app = yun.admin();
});
after(async () => {
  if (yun) await yun.stop();
  if (moto) moto.child.kill();
});

const bytes = (n, seed = 1) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};

test('upload, temp URL, download, file info, delete: the SDK shapes', async () => {
  const content = bytes(100_000);
  const up = await app.uploadFile({ cloudPath: 'docs/report one.bin', fileContent: content });
  assert.equal(up.fileID, `cloud://${yun.envId}.${yun.envId}-yun/docs/report one.bin`);

  const urls = await app.getTempFileURL({ fileList: [up.fileID, { fileID: `cloud://${yun.envId}.x/missing.txt`, maxAge: 60 }] });
  assert.ok(urls.requestId);
  assert.equal(urls.fileList[0].code, 'SUCCESS');
  assert.ok(urls.fileList[0].tempFileURL.includes('/docs/report one.bin?'), 'the URL is returned un-percent-encoded');
  assert.equal(urls.fileList[1].code, 'STORAGE_FILE_NONEXIST');
  assert.equal(urls.fileList[1].tempFileURL, '');

  const down = await app.downloadFile({ fileID: up.fileID });
  assert.ok(Buffer.compare(down.fileContent, content) === 0, 'downloaded bytes equal the upload');
  if (S3) {
    const listing = await (await fetch(`${moto.env.AWS_ENDPOINT}/yun-files?list-type=2&prefix=${yun.envId}/`)).text();
    assert.match(listing, /<Size>100000<\/Size>/, 'the bytes are in the S3 bucket');
  }

  const info = await app.getFileInfo({ fileList: [up.fileID] });
  assert.equal(info.fileList[0].size, 100_000);
  assert.equal(info.fileList[0].fileName, 'report one.bin');

  const del = await app.deleteFile({ fileList: [up.fileID, `cloud://${yun.envId}.x/never.txt`] });
  assert.deepEqual(del.fileList.map((f) => f.code), ['SUCCESS', 'STORAGE_FILE_NONEXIST']);
  const gone = await app.getTempFileURL({ fileList: [up.fileID] });
  assert.equal(gone.fileList[0].code, 'STORAGE_FILE_NONEXIST');
  await assert.rejects(app.downloadFile({ fileID: up.fileID }), { code: 'STORAGE_FILE_NONEXIST' });
});

test('content types: declared, sniffed from bytes, guessed from the name; Unicode names', async () => {
  const png = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d2e6d50000000049454e44ae426082', 'hex');
  const up = await app.uploadFile({ cloudPath: '相册/照片 1', fileContent: png });
  const info = await app.getFileInfo({ fileList: [up.fileID] });
  assert.equal(info.fileList[0].mime, 'image/png', 'sniffed: the name has no extension');
  const css = await app.uploadFile({ cloudPath: 'site/a.css', fileContent: Buffer.from('body{}') });
  assert.equal((await app.getFileInfo({ fileList: [css.fileID] })).fileList[0].mime, 'text/css');
  // The same name typed decomposed (é as e + U+0301) is the same file.
  const nfc = await app.uploadFile({ cloudPath: 'caf\u00e9.txt', fileContent: Buffer.from('one') });
  await app.uploadFile({ cloudPath: 'cafe\u0301.txt', fileContent: Buffer.from('two') });
  assert.equal((await app.downloadFile({ fileID: nfc.fileID })).fileContent.toString(), 'two');
});

test('temporary URLs: ranges, ETag, HEAD, disposition, cache headers', async () => {
  const up = await app.uploadFile({ cloudPath: 'r/range.txt', fileContent: Buffer.from('0123456789') });
  const url = encodeURI((await app.getTempFileURL({ fileList: [up.fileID] })).fileList[0].tempFileURL);
  const part = await fetch(url, { headers: { range: 'bytes=2-5' } });
  assert.equal(part.status, 206);
  assert.equal(await part.text(), '2345');
  assert.equal(part.headers.get('content-range'), 'bytes 2-5/10');
  const tail = await fetch(url, { headers: { range: 'bytes=-3' } });
  assert.equal(await tail.text(), '789');
  const beyond = await fetch(url, { headers: { range: 'bytes=50-' } });
  assert.equal(beyond.status, 416);
  assert.equal(beyond.headers.get('content-range'), 'bytes */10');

  const full = await fetch(url);
  assert.equal(full.status, 200);
  const etag = full.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]{32}"$/);
  assert.match(full.headers.get('cache-control'), /^public, max-age=\d+$/);
  assert.equal(full.headers.get('accept-ranges'), 'bytes');
  assert.match(full.headers.get('content-disposition'), /^inline; filename\*=UTF-8''range.txt$/);
  const again = await fetch(url, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
  const head = await fetch(url, { method: 'HEAD' });
  assert.equal(head.headers.get('content-length'), '10');
  const attach = await fetch(`${url}&download`);
  assert.match(attach.headers.get('content-disposition'), /^attachment;/);
});

/** A width x height RGB PNG with a gradient, encoded here so the test needs no image library. */
function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'ascii');
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) raw.set([x & 0xff, y & 0xff, 128], y * (1 + width * 3) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from('89504e470d0a1a0a', 'hex'),
    chunk('IHDR', ihdr),
    chunk('IDAT', require('node:zlib').deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** [format, width, height] read from the PNG or JPEG header bytes. */
function imageSize(buf) {
  if (buf.subarray(0, 4).toString('hex') === '89504e47') return ['png', buf.readUInt32BE(16), buf.readUInt32BE(20)];
  assert.equal(buf.readUInt16BE(0), 0xffd8, 'a JPEG');
  for (let i = 2; i < buf.length;) {
    const marker = buf.readUInt16BE(i);
    if (marker >= 0xffc0 && marker <= 0xffc2) return ['jpeg', buf.readUInt16BE(i + 7), buf.readUInt16BE(i + 5)];
    i += 2 + buf.readUInt16BE(i + 2);
  }
  throw new Error('no JPEG frame header');
}

test('thumbnails: imageMogr2 scales, crops and converts, cached per version, bad requests refused', async () => {
  const up = await app.uploadFile({ cloudPath: 'photos/wide.png', fileContent: png(300, 200) });
  const url = encodeURI((await app.getTempFileURL({ fileList: [up.fileID] })).fileList[0].tempFileURL);
  const get = async (spec, headers = {}) => {
    const res = await fetch(`${url}&imageMogr2/${spec}`, { headers });
    return { res, body: Buffer.from(await res.arrayBuffer()) };
  };

  const fit = await get('thumbnail/100x100');
  assert.equal(fit.res.status, 200);
  assert.equal(fit.res.headers.get('content-type'), 'image/png');
  assert.deepEqual(imageSize(fit.body), ['png', 100, 67]);
  const etag = fit.res.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]{32}-[0-9a-f]{16}"$/, 'a rendering has its own ETag');
  assert.equal((await get('thumbnail/100x100', { 'if-none-match': etag })).res.status, 304);
  const cached = await get('thumbnail/100x100');
  assert.equal(Buffer.compare(cached.body, fit.body), 0);
  const cachedRenderings = () => fs.readdirSync(`${yun.dataDir}/files/.thumbs/${yun.envId}`, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile()).length;
  if (FILES_ON_DISK) assert.equal(cachedRenderings(), 1, 'the rendering is cached in storage');

  const square = await get('thumbnail/!64x64r/crop/64x64/gravity/center/format/jpg/quality/80');
  assert.equal(square.res.headers.get('content-type'), 'image/jpeg');
  assert.deepEqual(imageSize(square.body), ['jpeg', 64, 64]);
  assert.deepEqual(imageSize((await get('thumbnail/x50')).body), ['png', 75, 50]);
  assert.deepEqual(imageSize((await get('thumbnail/!10p')).body), ['png', 30, 20]);
  assert.deepEqual(imageSize((await get(encodeURIComponent('thumbnail/1000x1000>'))).body), ['png', 300, 200]);

  // A new upload at the same path renders from the new bytes, not the cached rendering.
  await app.uploadFile({ cloudPath: 'photos/wide.png', fileContent: png(100, 400) });
  const fresh = encodeURI((await app.getTempFileURL({ fileList: [up.fileID] })).fileList[0].tempFileURL);
  const redone = await fetch(`${fresh}&imageMogr2/thumbnail/100x100`);
  assert.deepEqual(imageSize(Buffer.from(await redone.arrayBuffer())), ['png', 25, 100]);
  if (FILES_ON_DISK) assert.equal(cachedRenderings(), 1, "the replaced version's renderings are deleted with it");

  for (const spec of ['thumbnail/abc', 'thumbnail/0x10', 'thumbnail/!20000p', 'rotate/90', 'format/bmp']) {
    const bad = await get(spec);
    assert.equal(bad.res.status, 400, spec);
    assert.equal(JSON.parse(bad.body).code, 'INVALID_PARAM', spec);
  }
  const text = await app.uploadFile({ cloudPath: 'photos/notes.txt', fileContent: Buffer.from('not an image') });
  const textUrl = encodeURI((await app.getTempFileURL({ fileList: [text.fileID] })).fileList[0].tempFileURL);
  const refused = await fetch(`${textUrl}&imageMogr2/thumbnail/10x10`);
  assert.equal(refused.status, 415);
  assert.equal((await refused.json()).code, 'STORAGE_IMAGE_UNSUPPORTED');
  const liar = await app.uploadFile({ cloudPath: 'photos/fake.png', fileContent: Buffer.from('text pretending') });
  const liarUrl = encodeURI((await app.getTempFileURL({ fileList: [liar.fileID] })).fileList[0].tempFileURL);
  assert.equal((await fetch(`${liarUrl}&imageMogr2/thumbnail/10x10`)).status, 415, 'named .png, but not an image');
  const unsigned = await fetch(url.replace(/sign=[^&]+/, 'sign=00') + '&imageMogr2/thumbnail/10x10');
  assert.equal(unsigned.status, 403, 'a rendering needs a valid signature too');
  await app.deleteFile({ fileList: [up.fileID] });
  if (FILES_ON_DISK) assert.equal(cachedRenderings(), 0, "a deleted file's renderings go with it");
});

test('temporary URLs expire, and a changed signature, path or env is refused', async () => {
  const up = await app.uploadFile({ cloudPath: 'secret/a.txt', fileContent: Buffer.from('s') });
  await app.uploadFile({ cloudPath: 'secret/b.txt', fileContent: Buffer.from('b') });
  const short = (await app.getTempFileURL({ fileList: [{ fileID: up.fileID, maxAge: 1 }] })).fileList[0].tempFileURL;
  assert.equal((await fetch(short)).status, 200);
  const tampered = short.replace(/sign=([0-9a-f])/, (_, c) => `sign=${c === '0' ? '1' : '0'}`);
  const refused = await fetch(tampered);
  assert.equal(refused.status, 403);
  assert.equal((await refused.json()).code, 'STORAGE_SIGN_PARAM_INVALID');
  assert.equal((await fetch(short.replace('secret/a.txt', 'secret/b.txt'))).status, 403);
  assert.equal((await fetch(short.replace(/t=(\d+)/, (_, t) => `t=${Number(t) + 1000}`))).status, 403);
  assert.equal((await fetch(short.split('?')[0])).status, 403);
  await sleep(2100);
  assert.equal((await fetch(short)).status, 403, 'expired');
});

test('the upload step: wrong signatures get the XML error, POST forms answer 201', async () => {
  const meta = await app.getUploadMetadata({ cloudPath: 'form/photo.jpg' });
  const { url, token, authorization } = meta.data;
  const bad = await fetch(url, { method: 'PUT', body: 'x', headers: { authorization: authorization.replace(/^./, (c) => (c === 'a' ? 'b' : 'a')), 'x-cos-security-token': token } });
  assert.equal(bad.status, 403);
  assert.match(await bad.text(), /<Code>SignatureDoesNotMatch<\/Code>/);
  // An authorization for one path does not upload to another.
  const other = await fetch(url.replace('photo.jpg', 'other.jpg'), { method: 'PUT', body: 'x', headers: { authorization, 'x-cos-security-token': token } });
  assert.equal(other.status, 403);
  assert.equal((await app.getTempFileURL({ fileList: [meta.data.fileId.replace('photo', 'other')] })).fileList[0].code, 'STORAGE_FILE_NONEXIST');

  const form = new FormData();
  form.append('key', 'form/photo.jpg');
  form.append('signature', authorization);
  form.append('x-cos-security-token', token);
  form.append('x-cos-meta-fileid', meta.data.cosFileId);
  form.append('success_action_status', '201');
  form.append('file', new Blob([Buffer.from('ffd8ffe000104a464946', 'hex')]), 'photo.jpg');
  const posted = await fetch(url, { method: 'POST', body: form });
  assert.equal(posted.status, 201);
  const info = await app.getFileInfo({ fileList: [meta.data.fileId] });
  assert.equal(info.fileList[0].size, 10);
  assert.equal(info.fileList[0].mime, 'image/jpeg');
});

test('an interrupted upload leaves no visible file and keeps the previous version', async () => {
  const first = await app.uploadFile({ cloudPath: 'partial/file.bin', fileContent: Buffer.from('version one') });
  const meta = await app.getUploadMetadata({ cloudPath: 'partial/file.bin' });
  const target = new URL(meta.data.url);
  await new Promise((resolve) => {
    const req = http.request({ host: target.hostname, port: target.port, path: target.pathname, method: 'PUT', headers: { authorization: meta.data.authorization, 'x-cos-security-token': meta.data.token, 'transfer-encoding': 'chunked' } });
    req.on('error', () => resolve());
    req.write(bytes(1 << 20));
    setTimeout(() => { req.destroy(); resolve(); }, 200);
  });
  await sleep(300);
  const down = await app.downloadFile({ fileID: first.fileID });
  assert.equal(down.fileContent.toString(), 'version one');
  const fresh = await app.getUploadMetadata({ cloudPath: 'partial/never.bin' });
  const t2 = new URL(fresh.data.url);
  await new Promise((resolve) => {
    const req = http.request({ host: t2.hostname, port: t2.port, path: t2.pathname, method: 'PUT', headers: { authorization: fresh.data.authorization, 'x-cos-security-token': fresh.data.token, 'transfer-encoding': 'chunked' } });
    req.on('error', () => resolve());
    req.write(bytes(1 << 20));
    setTimeout(() => { req.destroy(); resolve(); }, 200);
  });
  await sleep(300);
  assert.equal((await app.getTempFileURL({ fileList: [fresh.data.fileId] })).fileList[0].code, 'STORAGE_FILE_NONEXIST');
});

test('copy and move', async () => {
  const src = await app.uploadFile({ cloudPath: 'c/src/a.txt', fileContent: Buffer.from('copy me') });
  const copied = await app.copyFile({ fileList: [{ srcPath: src.fileID, dstPath: `cloud://${yun.envId}.x/c/dst/a.txt` }] });
  assert.equal(copied.fileList[0].code, 'SUCCESS');
  const dst = `cloud://${yun.envId}.${yun.envId}-yun/c/dst/a.txt`;
  assert.equal((await app.downloadFile({ fileID: dst })).fileContent.toString(), 'copy me');
  await app.deleteFile({ fileList: [src.fileID] });
  assert.equal((await app.downloadFile({ fileID: dst })).fileContent.toString(), 'copy me', 'the copy lives on its own');
  const refused = await app.copyFile({ fileList: [{ srcPath: dst, dstPath: 'c/dst2/a.txt', overwrite: false }] });
  assert.equal(refused.fileList[0].code, 'SUCCESS');
  const again = await app.copyFile({ fileList: [{ srcPath: dst, dstPath: 'c/dst2/a.txt', overwrite: false }] });
  assert.equal(again.fileList[0].code, 'RESOURCE_ALREADY_EXISTS');
  const moved = await app.copyFile({ fileList: [{ srcPath: dst, dstPath: 'c/moved/a.txt', removeOriginal: true }] });
  assert.equal(moved.fileList[0].code, 'SUCCESS');
  assert.equal((await app.getTempFileURL({ fileList: [dst] })).fileList[0].code, 'STORAGE_FILE_NONEXIST');
});

test('unsafe paths are refused with INVALID_PARAM', async () => {
  for (const p of ['../etc/passwd', '/abs.txt', 'a/../../b', 'a\\b', 'x/%2e%2e/y', 'a//b', 'nul\u0000.txt', 'q?.txt']) {
    await assert.rejects(app.getUploadMetadata({ cloudPath: p }), { code: 'INVALID_PARAM' }, p);
  }
  const res = await app.getTempFileURL({ fileList: [`cloud://${yun.envId}.x/../x`] });
  assert.equal(res.fileList[0].code, 'INVALID_PARAM');
});

test("env b cannot read env dev's files by id or by URL", async () => {
  const up = await app.uploadFile({ cloudPath: 'private/diary.txt', fileContent: Buffer.from('dear diary') });
  const url = (await app.getTempFileURL({ fileList: [up.fileID] })).fileList[0].tempFileURL;
  const created = await yun.cliJson(['env', 'create', 'b']);
  const appB = yun.admin({ env: 'b', secretId: created.key.secret_id, secretKey: created.key.secret_key });
  const byId = await appB.getTempFileURL({ fileList: [up.fileID] });
  assert.equal(byId.fileList[0].code, 'STORAGE_EXCEED_AUTHORITY');
  assert.equal((await appB.deleteFile({ fileList: [up.fileID] })).fileList[0].code, 'STORAGE_EXCEED_AUTHORITY');
  assert.equal((await fetch(encodeURI(url.replace(`/files/${yun.envId}/`, '/files/b/')))).status, 403);
  const same = await appB.uploadFile({ cloudPath: 'private/diary.txt', fileContent: Buffer.from('b only') });
  assert.equal((await app.downloadFile({ fileID: up.fileID })).fileContent.toString(), 'dear diary');
  assert.equal((await appB.downloadFile({ fileID: same.fileID })).fileContent.toString(), 'b only');
});

test('from inside a function: wx-server-sdk uploadFile, getTempFileURL, downloadFile, deleteFile', async () => {
  await yun.deploy('files', 'files');
  const outside = await app.uploadFile({ cloudPath: 'shared/from-admin.txt', fileContent: Buffer.from('hello function') });
  const res = await app.callFunction({ name: 'files', data: { path: 'fn/hello.txt', text: 'written inside', outsideId: outside.fileID } });
  assert.equal(res.result.text, 'written inside');
  assert.equal(res.result.outside, 'hello function');
  assert.equal(res.result.status, 0);
  assert.equal(res.result.deleted, 0);
  assert.equal((await app.getTempFileURL({ fileList: [res.result.fileID] })).fileList[0].code, 'STORAGE_FILE_NONEXIST');
});

test('the yun storage CLI: upload and download folders, ls, cp, mv, url, rm, with --json', async () => {
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-cli-files-'));
  fs.mkdirSync(path.join(dir, 'trip/sub/deep'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'trip/a.txt'), 'alpha');
  fs.writeFileSync(path.join(dir, 'trip/sub/b.bin'), bytes(300_000, 9));
  fs.writeFileSync(path.join(dir, 'trip/sub/deep/照片.txt'), 'photo');

  const up = await yun.cliJson(['storage', 'upload', path.join(dir, 'trip'), 'cli/trip']);
  assert.deepEqual(up.files.map((f) => f.path).sort(), ['cli/trip/a.txt', 'cli/trip/sub/b.bin', 'cli/trip/sub/deep/照片.txt']);
  const b = up.files.find((f) => f.path === 'cli/trip/sub/b.bin');
  assert.equal(b.size, 300_000);
  assert.equal(b.fileId, `cloud://${yun.envId}.${yun.envId}-yun/cli/trip/sub/b.bin`);
  const viaSdk = await app.downloadFile({ fileID: b.fileId });
  assert.equal(Buffer.compare(viaSdk.fileContent, bytes(300_000, 9)), 0, 'the SDK reads what the CLI stored');
  const single = await yun.cliJson(['storage', 'upload', path.join(dir, 'trip/a.txt'), 'cli/', '--content-type', 'text/x-note']);
  assert.deepEqual([single.files[0].path, single.files[0].contentType], ['cli/a.txt', 'text/x-note']);

  const listed = await yun.cliJson(['storage', 'ls', 'cli/trip/']);
  assert.deepEqual(listed.files.map((f) => f.path), ['cli/trip/a.txt', 'cli/trip/sub/b.bin', 'cli/trip/sub/deep/照片.txt']);
  const table = await yun.cli(['storage', 'ls', 'cli/']);
  assert.match(table.stdout, /^PATH\s+SIZE\s+TYPE\s+UPLOADED/);
  assert.match(table.stdout, /cli\/trip\/sub\/b\.bin\s+292\.97 KiB\s+application\/octet-stream/);
  // The listing pages: limit and after.
  const auth = `Basic ${Buffer.from(`${yun.secretId}:${yun.secretKey}`).toString('base64')}`;
  const page = async (after) => (await fetch(`${yun.url}/api/v1/envs/${yun.envId}/storage/files?prefix=cli/trip/&limit=2&after=${encodeURIComponent(after)}`, { headers: { authorization: auth } })).json();
  const first = await page('');
  assert.deepEqual([first.files.length, first.next], [2, 'cli/trip/sub/b.bin']);
  const second = await page(first.next);
  assert.deepEqual([second.files.map((f) => f.path), second.next], [['cli/trip/sub/deep/照片.txt'], null]);

  const out = path.join(dir, 'out');
  const down = await yun.cliJson(['storage', 'download', 'cli/trip', out, '-r']);
  assert.equal(down.files.length, 3);
  assert.equal(fs.readFileSync(path.join(out, 'sub/deep/照片.txt'), 'utf8'), 'photo');
  assert.equal(Buffer.compare(fs.readFileSync(path.join(out, 'sub/b.bin')), bytes(300_000, 9)), 0);
  assert.deepEqual(fs.readdirSync(path.join(out, 'sub')).sort(), ['b.bin', 'deep'], 'no partial files left behind');
  await yun.cliJson(['storage', 'download', `cloud://${yun.envId}.x/cli/trip/a.txt`, out]);
  assert.equal(fs.readFileSync(path.join(out, 'a.txt'), 'utf8'), 'alpha');

  const copied = await yun.cliJson(['storage', 'cp', 'cli/trip', 'cli/copy', '-r']);
  assert.equal(copied.files.length, 3);
  await yun.cliJson(['storage', 'cp', 'cli/copy/a.txt', 'cli/moved.txt', '--move']);
  const clobber = await yun.cli(['storage', 'cp', 'cli/trip/a.txt', 'cli/moved.txt', '--no-clobber']);
  assert.notEqual(clobber.code, 0);
  assert.match(clobber.stderr, /RESOURCE_ALREADY_EXISTS/);
  const after = (await yun.cliJson(['storage', 'ls', 'cli/'])).files.map((f) => f.path);
  assert.ok(after.includes('cli/moved.txt') && !after.includes('cli/copy/a.txt') && after.includes('cli/copy/sub/b.bin'));

  const url = await yun.cli(['storage', 'url', 'cli/moved.txt', '--expires', '10m']);
  assert.equal(url.code, 0, url.stderr);
  const fetched = await fetch(encodeURI(url.stdout.trim()));
  assert.equal(await fetched.text(), 'alpha');
  assert.match(fetched.headers.get('cache-control'), /max-age=(59\d|600)$/);

  const missing = await yun.cli(['storage', 'download', 'cli/nope.txt', out]);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /STORAGE_FILE_NONEXIST/);
  assert.ok(!fs.existsSync(path.join(out, 'nope.txt')));
  const unsafe = await yun.cli(['storage', 'upload', path.join(dir, 'trip/a.txt'), 'x/../../etc/passwd']);
  assert.match(unsafe.stderr, /INVALID_PARAM/);
  const foreign = await yun.cli(['storage', 'rm', 'cloud://other.x/cli/moved.txt']);
  assert.match(foreign.stderr, /env "other"/);

  const removed = await yun.cliJson(['storage', 'rm', 'cli', '-r']);
  assert.equal(removed.deleted.length, 7, 'trip 3, a.txt, copy 2 after the move, moved.txt');
  assert.deepEqual((await yun.cliJson(['storage', 'ls', 'cli/'])).files, []);
});

test('limits: max file size and the env quota give clear errors and store nothing', async () => {
  const small = await start(['--max-file-size', '1000', '--storage-quota', '2500']);
  try {
    const a = small.admin();
    await assert.rejects(a.uploadFile({ cloudPath: 'big.bin', fileContent: bytes(1001) }), (e) => e.code === 'STORAGE_REQUEST_FAIL' && /EntityTooLarge/.test(e.message));
    await a.uploadFile({ cloudPath: 'one.bin', fileContent: bytes(1000) });
    await a.uploadFile({ cloudPath: 'two.bin', fileContent: bytes(1000) });
    await assert.rejects(a.uploadFile({ cloudPath: 'three.bin', fileContent: bytes(1000) }), (e) => /QuotaExceeded/.test(e.message));
    // Replacing a file counts its old size out.
    await a.uploadFile({ cloudPath: 'two.bin', fileContent: bytes(1000, 7) });
    assert.equal((await a.getTempFileURL({ fileList: [`cloud://${small.envId}.x/three.bin`] })).fileList[0].code, 'STORAGE_FILE_NONEXIST');
  } finally {
    await small.stop();
  }
});

test('large files stream through in bounded memory', async () => {
  const size = FILES_ON_DISK ? 1 << 30 : 64 << 20;
  // Every node's: behind a load balancer the upload and the download may go to any.
  const rssOf = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
  const rss = () => yun.nodes.reduce((sum, n) => sum + rssOf(n.child.pid), 0);
  const base = rss();
  let peak = base;
  const sampler = setInterval(() => { peak = Math.max(peak, rss()); }, 20);
  try {
    const meta = await app.getUploadMetadata({ cloudPath: 'big/blob.bin' });
    const target = new URL(meta.data.url);
    const chunk = bytes(1 << 20, 3);
    const hash = crypto.createHash('sha256');
    await new Promise((resolve, reject) => {
      const req = http.request({ host: target.hostname, port: target.port, path: target.pathname, method: 'PUT', headers: { authorization: meta.data.authorization, 'x-cos-security-token': meta.data.token } }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`upload status ${res.statusCode}`))));
      });
      req.on('error', reject);
      let sent = 0;
      const pump = () => {
        while (sent < size) {
          sent += chunk.length;
          hash.update(chunk);
          if (!req.write(chunk)) return req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    const url = encodeURI((await app.getTempFileURL({ fileList: [meta.data.fileId] })).fileList[0].tempFileURL);
    const down = crypto.createHash('sha256');
    let received = 0;
    await new Promise((resolve, reject) => {
      http.get(url, (res) => {
        res.on('data', (d) => { received += d.length; down.update(d); });
        res.on('end', resolve);
        res.on('error', reject);
      }).on('error', reject);
    });
    assert.equal(received, size);
    assert.equal(down.digest('hex'), hash.digest('hex'));
  } finally {
    clearInterval(sampler);
  }
  const growth = (peak - base) / (1 << 20);
  assert.ok(growth < 64, `yun's RSS grew by ${growth.toFixed(1)} MiB while moving ${size >> 20} MiB`);
  await app.deleteFile({ fileList: [`cloud://${yun.envId}.x/big/blob.bin`] });
});
