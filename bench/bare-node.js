// The baseline for the warm benchmark: the same handler in a bare Node http server.
const http = require('http');
// GET: the trivial handler; POST: parse a JSON body and answer from it, as the Yun
// function of the wrk row does.
const handler = async () => ({ ok: true });
const fromBody = async (body) => {
  const b = JSON.parse(body);
  return { msg: `hello ${b.name}`, n: b.n + 1 };
};
http.createServer(async (req, res) => {
  let body = '';
  if (req.method === 'POST') for await (const chunk of req) body += chunk;
  const value = req.method === 'POST' ? await fromBody(body) : await handler();
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(value));
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
