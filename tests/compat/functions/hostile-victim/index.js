// The victim: env dev's function. Its code holds a secret no other tenant may read; it
// answers pings (the suite checks it after every attack) and, in `leak` mode, hands out
// its own temporary credential so the suite can try it elsewhere.
const MARKER = 'VICTIM-CODE-SECRET-b7e1c04d9a';

exports.main = async (event) => {
  if (event.mode === 'leak') {
    return {
      secretId: process.env.TENCENTCLOUD_SECRETID,
      secretKey: process.env.TENCENTCLOUD_SECRETKEY,
      sessionToken: process.env.TENCENTCLOUD_SESSIONTOKEN,
    };
  }
  return { alive: true, uid: process.getuid(), pid: process.pid, markerLength: MARKER.length };
};
