// Parse Cloud Code for `bench/run peers`: the same two handlers as the Yun functions.
Parse.Cloud.define('hello', (req) => ({ msg: `hello ${req.params.name}`, n: req.params.n + 1 }));

Parse.Cloud.define('likePhoto', async (req) => {
  const p = await new Parse.Query('Photo').get(req.params.id, { useMasterKey: true });
  p.increment('likes');
  await p.save(null, { useMasterKey: true });
  return { likes: p.get('likes') };
});
