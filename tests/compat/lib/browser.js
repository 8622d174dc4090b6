'use strict';
// Browser harness: the js-sdk bundled as a web app bundles it (esbuild), served from its
// own origin (so every call to Yun is cross-origin, as in production), driven in
// Debian's Chromium by playwright-core. Never downloads a browser.
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const esbuild = require('esbuild');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.YUN_CHROMIUM || '/usr/bin/chromium';
const BUILD = path.resolve(__dirname, '../.build');
const ARTIFACTS = path.resolve(__dirname, '../artifacts');

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Bundles an entry script into `.build/`; returns the output path. */
async function bundle(entry, name) {
  fs.mkdirSync(BUILD, { recursive: true });
  const outfile = path.join(BUILD, name);
  await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'chrome120',
    outfile,
    // Examples bundle with this suite's pinned packages (no install of their own).
    nodePaths: [path.resolve(__dirname, '../node_modules')],
    logLevel: 'warning',
  });
  return outfile;
}

/**
 * Serves `files` ({urlPath: absolute file path}) on a free loopback port; `/` is a blank
 * page that loads every `.js` file listed.
 */
async function serveStatic(files) {
  const types = { '.js': 'text/javascript', '.html': 'text/html', '.css': 'text/css' };
  const scripts = Object.keys(files)
    .filter((p) => p.endsWith('.js'))
    .map((p) => `<script src="${p}"></script>`)
    .join('');
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/' && !files['/index.html']) {
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end(`<!doctype html><meta charset="utf-8"><title>yun test</title>${scripts}`);
    }
    const file = files[url.pathname === '/' ? '/index.html' : url.pathname];
    if (!file) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/** Saves a screenshot under tests/compat/artifacts/ (kept by CI as a test artifact). */
async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

module.exports = { bundle, serveStatic, launchBrowser, screenshot, ARTIFACTS };
