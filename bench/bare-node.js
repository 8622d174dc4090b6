// The baseline for the warm benchmark: the same handler in a bare Node http server.
// Usage: node bare-node.js PORT [WORKERS]. With WORKERS > 1, a `node:cluster` primary
// forks that many workers sharing the port (the primary hands out connections).
const cluster = require('node:cluster');
const http = require('node:http');
const port = Number(process.argv[2]);
const workers = Number(process.argv[3] || 1);
// GET: the trivial handler; POST: parse a JSON body and answer from it, as the Yun
// function of the wrk row does.
const handler = async () => ({ ok: true });
const fromBody = async (body) => {
  const b = JSON.parse(body);
  return { msg: `hello ${b.name}`, n: b.n + 1 };
};
if (workers > 1 && cluster.isPrimary) {
  let up = 0;
  cluster.on('listening', () => { if (++up === workers) console.log('listening'); });
  for (let i = 0; i < workers; i++) cluster.fork();
  // Stopped with SIGTERM, the primary stops its workers and waits for them.
  process.on('SIGTERM', () => {
    let left = Object.keys(cluster.workers).length;
    if (left === 0) process.exit(0);
    cluster.on('exit', () => { if (--left === 0) process.exit(0); });
    for (const w of Object.values(cluster.workers)) w.process.kill();
  });
} else {
  http.createServer(async (req, res) => {
    let body = '';
    if (req.method === 'POST') for await (const chunk of req) body += chunk;
    const value = req.method === 'POST' ? await fromBody(body) : await handler();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(value));
  }).listen(port, '127.0.0.1', () => { if (workers === 1) console.log('listening'); });
}
