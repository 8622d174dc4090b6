// Share codes, as a CloudBase developer writes them with wx-server-sdk: the owner of an
// album gets a short code (and a QR image of the share link, kept in storage); anyone
// signed in resolves a code to its album. The `shares` collection is ADMINONLY: only
// this function reads and writes it.
const cloud = require('wx-server-sdk');
const QRCode = require('qrcode');

cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();

// No 0/O or 1/I: codes are read aloud and typed.
const ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';

function newCode() {
  let code = '';
  for (let i = 0; i < 6; i += 1) code += ALPHABET[Math.floor(Math.random() * ALPHABET.length)];
  return code;
}

async function shareOf(albumId) {
  const { data } = await db.collection('shares').where({ albumId }).limit(1).get();
  return data[0];
}

async function create(openid, { albumId, link }) {
  const { data } = await db.collection('albums').where({ _id: albumId }).get();
  const album = data[0];
  if (!album || album._openid !== openid) return { error: 'only the owner can share an album' };
  if (album.private) return { error: 'a private album cannot be shared' };
  const existing = await shareOf(albumId);
  if (existing) return { code: existing.code, qrFileID: existing.qrFileID };
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const code = newCode();
    const png = await QRCode.toBuffer(String(link || '{code}').replace('{code}', code), { type: 'png', margin: 1, width: 240 });
    const { fileID } = await cloud.uploadFile({ cloudPath: `shares/${code}.png`, fileContent: png });
    try {
      await db.collection('shares').add({ data: { _id: code, code, albumId, owner: openid, qrFileID: fileID, createdAt: db.serverDate() } });
      return { code, qrFileID: fileID };
    } catch (e) {
      // A taken code: try another.
      await cloud.deleteFile({ fileList: [fileID] });
    }
  }
  return { error: 'could not find a free code; try again' };
}

async function resolve({ code }) {
  const wanted = String(code || '').trim().toUpperCase();
  const { data } = await db.collection('shares').where({ _id: wanted }).get();
  if (!data[0]) return { error: `no album has the code ${wanted}` };
  return { albumId: data[0].albumId, qrFileID: data[0].qrFileID };
}

exports.main = async (event) => {
  const { OPENID } = cloud.getWXContext();
  if (!OPENID) return { error: 'sign in first' };
  switch (event.action) {
    case 'create':
      return create(OPENID, event);
    case 'resolve':
      return resolve(event);
    default:
      return { error: `unknown action ${event.action}` };
  }
};
