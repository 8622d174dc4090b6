// Parse Cloud Code for `bench/run peers`: the same two handlers as the Yun functions.
Parse.Cloud.define('hello', (req) => ({ msg: `hello ${req.params.name}`, n: req.params.n + 1 }));

Parse.Cloud.define('likePhoto', async (req) => {
  const p = await new Parse.Query('Photo').get(req.params.id, { useMasterKey: true });
  p.increment('likes');
  await p.save(null, { useMasterKey: true });
  return { likes: p.get('likes') };
});

// The feed query of issue 16: `n > 500`, newest (largest `n`) first, 20 of them.
Parse.Cloud.define('feed', async (req) => {
  const q = new Parse.Query(req.params.cls);
  q.greaterThan('n', 500);
  q.descending('n');
  q.limit(20);
  const found = await q.find({ useMasterKey: true });
  return { count: found.length, first: found.length ? found[0].get('n') : null };
});

// Seeds `count` objects `{n, album, s}` into a class, 500 per save.
Parse.Cloud.define('seedItems', async (req) => {
  const Item = Parse.Object.extend(req.params.cls);
  for (let start = 0; start < req.params.count; start += 500) {
    const batch = [];
    for (let n = start; n < Math.min(start + 500, req.params.count); n++) {
      batch.push(new Item({ n, album: `a${n % 100}`, s: `item ${n}` }));
    }
    await Parse.Object.saveAll(batch, { useMasterKey: true });
  }
  return { count: req.params.count };
});
