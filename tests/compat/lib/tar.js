'use strict';
// Function archives built by hand, header by header: the tests need hostile ones (links
// out, devices, setuid bits, `..` names) that tar tools and libraries refuse to write.
const zlib = require('node:zlib');

/** A ustar writer that writes whatever headers it is given (tar libraries refuse these). */
function tarGz(entries) {
  const blocks = [];
  const octal = (n, width) => n.toString(8).padStart(width - 1, '0') + '\0';
  for (const e of entries) {
    const h = Buffer.alloc(512);
    const body = Buffer.from(e.body || '');
    h.write(e.name, 0, 100);
    h.write(octal(e.mode ?? 0o644, 8), 100);
    h.write(octal(0, 8), 108);
    h.write(octal(0, 8), 116);
    h.write(octal(body.length, 12), 124);
    h.write(octal(Math.floor(Date.now() / 1000), 12), 136);
    h.write(e.type || '0', 156);
    if (e.link) h.write(e.link, 157, 100);
    h.write('ustar\0', 257);
    h.write('00', 263);
    h.write(octal(e.major || 0, 8), 329);
    h.write(octal(e.minor || 0, 8), 337);
    h.fill(' ', 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return zlib.gzipSync(Buffer.concat(blocks));
}

module.exports = { tarGz };
