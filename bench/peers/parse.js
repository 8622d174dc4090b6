// Parse Server for `bench/run peers`: one Node process, express + ParseServer on the local
// PostgreSQL, the Cloud Code in cloud.js. Usage: node parse.js PORT, with NODE_PATH at the
// node_modules that `npm ci` put outside the repo (yun-bench does that). PARSE_LOG=verbose
// logs every request to stdout, for debugging.
const path = require('node:path');
// No log files: parse-server's logger starts at require time, from this variable.
process.env.PARSE_SERVER_LOGS_FOLDER = 'null';
const express = require('express');
const { ParseServer } = require('parse-server');

const port = Number(process.argv[2]);
const server = new ParseServer({
  appId: 'yun-bench',
  masterKey: 'yun-bench-master-key',
  databaseURI: 'postgres://postgres@127.0.0.1:5432/yun_bench_parse',
  cloud: path.join(__dirname, 'cloud.js'),
  serverURL: `http://127.0.0.1:${port}/parse`,
  // Nothing beyond the rows: no console or file logs, no self-check request, no GraphQL,
  // no live query (neither is configured), Cloud Code's Parse calls in-process.
  silent: !process.env.PARSE_LOG,
  logLevel: process.env.PARSE_LOG || 'error',
  logsFolder: null,
  verifyServerUrl: false,
  directAccess: true,
});

(async () => {
  await server.start();
  const app = express();
  app.use('/parse', server.app);
  app.listen(port, '127.0.0.1', () => console.log('listening'));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
