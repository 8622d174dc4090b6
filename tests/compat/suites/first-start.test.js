'use strict';
// A newcomer's first start: an empty data folder, no SDK layer given, so Yun installs its
// own from the npm registry in the background. A wx-server-sdk function deployed and
// invoked at once must work: the deploy waits for the layer, and the stem cells started
// before it are replaced.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { startYun, FUNCTIONS } = require('../lib/yun');

let yun;
after(async () => {
  if (yun) await yun.stop();
});

test('first start: /readyz says the layer is installing; a wx-server-sdk function deployed at once works', async () => {
  yun = await startYun([], { installLayer: true });
  const early = await fetch(`${yun.url}/readyz`);
  assert.equal(early.status, 503, 'not ready while the layer installs');
  assert.deepEqual(await early.json(), { ready: false, reason: 'the Node SDK layer is installing' });

  const deployed = await yun.cli(['fn', 'deploy', path.join(FUNCTIONS, 'whoami'), '--name', 'whoami']);
  assert.equal(deployed.code, 0, deployed.stderr);
  const res = await yun.admin().callFunction({ name: 'whoami', data: { first: true } });
  assert.deepEqual(res.result.event, { first: true });
  assert.equal(res.result.wxContext.ENV, yun.envId);

  const ready = await fetch(`${yun.url}/readyz`);
  assert.equal(ready.status, 200);
  assert.equal(await ready.text(), 'ready');
  const layer = path.join(yun.dataDir, 'layers', 'node');
  assert.ok(fs.existsSync(path.join(layer, 'node_modules', 'wx-server-sdk', 'package.json')));
  assert.ok(fs.existsSync(path.join(layer, '.yun-layer')), 'the install is stamped complete');

  // A second function, cold: it runs on a stem cell that was started with the layer.
  const again = await yun.cli(['fn', 'deploy', path.join(FUNCTIONS, 'whoami'), '--name', 'whoami2']);
  assert.equal(again.code, 0, again.stderr);
  const second = await yun.admin().callFunction({ name: 'whoami2', data: {} });
  assert.equal(second.result.wxContext.ENV, yun.envId);
});

test('a layer that cannot be installed is a clear error in /readyz and at deploy, naming the fix', async () => {
  // `false` stands for an npm that cannot reach its registry.
  const broken = await startYun(['--npm', '/bin/false'], { installLayer: true });
  try {
    let body;
    for (let i = 0; i < 100; i++) {
      const r = await fetch(`${broken.url}/readyz`);
      body = await r.json();
      if (body.reason !== 'the Node SDK layer is installing') break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.match(body.reason, /could not be installed: npm install: exit status: 1.*--node-layer DIR/);
    const deployed = await broken.cli(['fn', 'deploy', path.join(FUNCTIONS, 'whoami'), '--name', 'whoami']);
    assert.notEqual(deployed.code, 0);
    assert.match(deployed.stderr, /Cannot find module 'wx-server-sdk'.*could not be installed.*--node-layer DIR/s);
  } finally {
    await broken.stop();
  }
});
