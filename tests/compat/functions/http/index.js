exports.main = async (event) => {
  if (event.path.endsWith('/plain')) return { method: event.httpMethod, path: event.path, query: event.queryStringParameters, body: event.body };
  if (event.path.endsWith('/binary')) return { statusCode: 200, headers: { 'content-type': 'application/octet-stream' }, body: Buffer.from([0, 1, 2, 255]).toString('base64'), isBase64Encoded: true };
  return {
    statusCode: 201,
    headers: { 'content-type': 'text/plain', 'x-from': 'yun-function' },
    body: `hello ${event.httpMethod} ${event.path} ${event.isBase64Encoded ? 'b64:' + event.body : event.body}`,
  };
};
