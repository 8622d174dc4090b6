// The photo album: a web front end on @cloudbase/js-sdk, unchanged CloudBase code
// pointed at Yun. Security rules (rules/*.json) decide what each user reads and writes;
// the share function resolves share codes.
import cloudbase from '@cloudbase/js-sdk';

// Where Yun is: ?yun=http://host:port&env=ENV, else yun dev's defaults.
const params = new URLSearchParams(location.search);
const YUN = params.get('yun') || 'http://127.0.0.1:8787';
const ENV = params.get('env') || 'dev';

// The two lines a web app adds to use Yun.
const app = cloudbase.init({ env: ENV, endPointMode: 'CLOUD_API' });
app.registerEndPoint(`${YUN.replace(/^https?:/, '')}/web`, YUN.startsWith('https:') ? 'https' : 'http');

const auth = app.auth({ persistence: 'local' });
const db = app.database();

const $ = (id) => document.getElementById(id);
const state = { user: null, album: null, photo: null };

function say(message, ok = false) {
  $('status').textContent = message || '';
  $('status').className = ok ? 'ok' : '';
}

function show(section) {
  for (const id of ['signin', 'albums', 'album', 'photo']) $(id).hidden = id !== section;
}

/** A database or storage result: the SDK hands refusals back as `{code, message}`. */
function check(result, what) {
  if (result && result.code) throw new Error(`${what}: ${result.code}${result.message ? ` (${result.message})` : ''}`);
  return result;
}

async function run(what, action) {
  try {
    say('');
    return await action();
  } catch (e) {
    say(`${what} failed: ${e.message || e}`);
    return undefined;
  }
}

async function tempUrl(fileID, thumbnail) {
  const { fileList } = check(await app.getTempFileURL({ fileList: [fileID] }), 'getTempFileURL');
  const url = fileList[0].tempFileURL;
  return thumbnail ? `${url}&imageMogr2/thumbnail/!320x320r/crop/320x320/gravity/center` : url;
}

// ---- sign-in

async function signedIn() {
  const { data } = await auth.getUser();
  state.user = data.user;
  if (!state.user) return show('signin');
  const name = state.user.user_metadata && state.user.user_metadata.username;
  $('who').textContent = state.user.is_anonymous ? 'anonymous' : name || state.user.id;
  $('signout').hidden = false;
  const code = params.get('share');
  if (code) return openCode(code);
  return listAlbums();
}

$('anon').onclick = () => run('Anonymous sign-in', async () => {
  const { error } = await auth.signInAnonymously();
  if (error) throw error;
  await signedIn();
});

$('named').onsubmit = (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const username = form.get('username');
  const password = form.get('password');
  return run('Sign-in', async () => {
    let { error } = await auth.signInWithPassword({ username, password });
    if (error && /not found|wrong username|invalid_password/i.test(`${error.code} ${error.message}`)) {
      // A new name: sign up (Yun's /auth/v1/signup), then sign in with the SDK.
      const res = await fetch(`${YUN}/auth/v1/signup?client_id=${ENV}`, { method: 'POST', body: JSON.stringify({ username, password }) });
      const body = await res.json();
      if (body.error && body.error !== 'already_exists') throw new Error(body.error_description || body.error);
      if (body.error === 'already_exists') throw new Error('wrong password for this name');
      ({ error } = await auth.signInWithPassword({ username, password }));
    }
    if (error) throw error;
    await signedIn();
  });
};

$('signout').onclick = () => run('Sign-out', async () => {
  await auth.signOut();
  $('who').textContent = '';
  $('signout').hidden = true;
  show('signin');
});

// ---- albums

async function listAlbums() {
  show('albums');
  const { data } = check(await db.collection('albums').where({ _openid: '{openid}' }).orderBy('createdAt', 'desc').get(), 'albums');
  const list = $('album-list');
  list.replaceChildren(...data.map((album) => {
    const li = document.createElement('li');
    const open = document.createElement('button');
    open.textContent = `${album.title}${album.private ? ' (private)' : ''}`;
    open.dataset.testid = 'open-album';
    open.dataset.albumId = album._id;
    open.onclick = () => run('Opening the album', () => openAlbum(album._id));
    li.append(open);
    return li;
  }));
}

$('new-album').onsubmit = (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  return run('Creating the album', async () => {
    check(await db.collection('albums').add({ title: form.get('title'), private: form.get('private') === 'on', createdAt: db.serverDate() }), 'add album');
    e.target.reset();
    await listAlbums();
  });
};

$('open-code').onsubmit = (e) => {
  e.preventDefault();
  return run('Opening the code', () => openCode(new FormData(e.target).get('code')));
};

async function openCode(code) {
  const { result } = await app.callFunction({ name: 'share', data: { action: 'resolve', code } });
  if (result.error) throw new Error(result.error);
  await openAlbum(result.albumId);
}

$('back').onclick = () => run('Listing albums', listAlbums);

// ---- one album

async function openAlbum(albumId) {
  const { data } = check(await db.collection('albums').doc(albumId).get(), 'album');
  if (!data.length) throw new Error('no such album');
  const album = data[0];
  state.album = album;
  const mine = album._openid === state.user.id;
  $('album-title').textContent = album.title;
  $('owner-tools').hidden = !mine;
  $('share-box').hidden = true;
  show('album');
  await renderGrid();
}

async function albumPhotos() {
  const album = state.album;
  const query = album._openid === state.user.id
    ? { albumId: album._id, _openid: '{openid}' }
    : { albumId: album._id, private: false };
  const { data } = check(await db.collection('photos').where(query).orderBy('createdAt', 'asc').get(), 'photos');
  return data;
}

async function renderGrid() {
  const photos = await albumPhotos();
  const images = await Promise.all(photos.map(async (photo) => {
    const img = document.createElement('img');
    img.src = await tempUrl(photo.fileID, true);
    img.alt = photo.name || 'photo';
    img.dataset.testid = 'thumb';
    img.dataset.photoId = photo._id;
    img.onclick = () => run('Opening the photo', () => openPhoto(photo));
    return img;
  }));
  $('grid').replaceChildren(...images);
}

$('files').onchange = (e) => run('Uploading', async () => {
  const files = [...e.target.files];
  const bar = $('progress');
  bar.hidden = false;
  for (const [i, file] of files.entries()) {
    const ext = (file.name.split('.').pop() || 'jpg').toLowerCase();
    const cloudPath = `photos/${state.user.id}/${Date.now()}-${i}.${ext}`;
    const uploaded = check(await app.uploadFile({
      cloudPath,
      filePath: file,
      onUploadProgress: ({ loaded, total }) => { bar.value = Math.round(((i + loaded / total) / files.length) * 100); },
    }), 'upload');
    check(await db.collection('photos').add({
      albumId: state.album._id,
      private: Boolean(state.album.private),
      fileID: uploaded.fileID,
      name: file.name,
      createdAt: db.serverDate(),
    }), 'add photo');
  }
  bar.value = 100;
  e.target.value = '';
  say(`Uploaded ${files.length} photo${files.length === 1 ? '' : 's'}.`, true);
  await renderGrid();
});

$('share').onclick = () => run('Sharing', async () => {
  const link = `${location.origin}${location.pathname}?yun=${encodeURIComponent(YUN)}&env=${ENV}&share={code}`;
  const { result } = await app.callFunction({ name: 'share', data: { action: 'create', albumId: state.album._id, link } });
  if (result.error) throw new Error(result.error);
  $('share-code').textContent = result.code;
  $('share-qr').src = await tempUrl(result.qrFileID);
  $('share-box').hidden = false;
});

// ---- one photo

async function openPhoto(photo) {
  state.photo = photo;
  show('photo');
  $('photo-img').src = await tempUrl(photo.fileID);
  $('delete-photo').hidden = photo._openid !== state.user.id;
  await Promise.all([renderLikes(), renderComments()]);
}

async function renderLikes() {
  const { total } = check(await db.collection('likes').where({ photoId: state.photo._id }).count(), 'likes');
  $('likes').textContent = String(total);
}

async function renderComments() {
  const { data } = check(await db.collection('comments').where({ photoId: state.photo._id }).orderBy('createdAt', 'asc').get(), 'comments');
  $('comments').replaceChildren(...data.map((c) => {
    const li = document.createElement('li');
    li.dataset.testid = 'comment';
    li.textContent = c.text;
    return li;
  }));
}

$('like').onclick = () => run('Liking', async () => {
  const mine = check(await db.collection('likes').where({ photoId: state.photo._id, _openid: '{openid}' }).get(), 'my like');
  if (mine.data.length) check(await db.collection('likes').doc(mine.data[0]._id).remove(), 'unlike');
  else check(await db.collection('likes').add({ photoId: state.photo._id }), 'like');
  await renderLikes();
});

$('comment').onsubmit = (e) => {
  e.preventDefault();
  const text = new FormData(e.target).get('text');
  return run('Commenting', async () => {
    check(await db.collection('comments').add({ photoId: state.photo._id, text, createdAt: db.serverDate() }), 'comment');
    e.target.reset();
    await renderComments();
  });
};

$('delete-photo').onclick = () => run('Deleting', async () => {
  check(await db.collection('photos').doc(state.photo._id).remove(), 'delete photo');
  check(await app.deleteFile({ fileList: [state.photo.fileID] }), 'delete file');
  say('Photo deleted.', true);
  show('album');
  await renderGrid();
});

$('close-photo').onclick = () => run('Back to the album', async () => {
  show('album');
  await renderGrid();
});

// For tests and the console: the SDK objects this page uses.
window.album = { app, auth, db, state };

signedIn().catch((e) => say(e.message));
