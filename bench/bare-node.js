// The baseline for the warm benchmark: the same handler in a bare Node http server.
const http = require('http');
const handler = async () => ({ ok: true });
http.createServer(async (req, res) => {
  const value = await handler();
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(value));
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
