//! The executor: runs a [`Plan`] as a stream over the store (index range or collection
//! scan → fetch → filter → order → skip/limit) and stops as soon as it has what the
//! query asks for. Nothing is read whole into memory: an order an index serves is read
//! in that order; any other order keeps only the best `skip + limit` documents (top-k);
//! a filter first decodes only the fields it reads.
//!
//! The reference for results and their order is the evaluator over every document in
//! `_id` order: matches sorted stably (ties by `_id`), then skip and limit.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use yun_types::{ErrorCode, YunError};

use crate::filter::Filter;
use crate::find::SortKeys;
use crate::geo::Near;
use crate::index::{component, KeyRange};
use crate::plan::{IndexScan, Plan};
use crate::store::DocTxn;

/// A read that runs longer is stopped: the SDKs give up after 15 s by default, so a
/// query still running then only takes CPU from everyone else.
pub const QUERY_TIME_LIMIT: Duration = Duration::from_secs(10);

/// The most a sort without an index may hold (MongoDB's limit for a blocking sort).
pub const SORT_MEMORY_LIMIT: usize = 100 << 20;

/// Index entries read per statement: the walk fetches documents between batches.
const BATCH: usize = 256;
/// Documents of a known list of `_id`s fetched per store call: few at first (a `limit`
/// often stops early), then more.
const FETCH_FIRST: usize = 32;
const FETCH_MAX: usize = 512;

/// What a query examined, for `explain` and the slow-query log.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub keys_examined: u64,
    pub docs_examined: u64,
    pub returned: u64,
}

/// Counts what a query examines, stops it when over its budget (the caller then runs
/// it where it may take longer) and fails it when over its time.
pub(crate) struct Meter {
    pub stats: Stats,
    budget: u64,
    pub over_budget: bool,
    started: Instant,
    time_limit: Option<Duration>,
    /// What a sort may hold (see [`TopK`]).
    sort_memory: usize,
}

impl Meter {
    /// `budget`: index entries plus documents it may examine (`usize::MAX`: no bound);
    /// `time_limit`: reads have one, writes finish what they started; `sort_memory`:
    /// what a sort without an index may hold.
    pub fn new(budget: usize, time_limit: Option<Duration>, sort_memory: usize) -> Self {
        Self {
            stats: Stats::default(),
            budget: budget as u64,
            over_budget: false,
            started: Instant::now(),
            time_limit,
            sort_memory,
        }
    }

    fn tick(&mut self) -> Result<bool, YunError> {
        let examined = self.stats.keys_examined + self.stats.docs_examined;
        if examined > self.budget {
            self.over_budget = true;
            return Ok(false);
        }
        if examined.is_multiple_of(1024) {
            if let Some(limit) = self.time_limit {
                if self.started.elapsed() > limit {
                    return Err(YunError::new(
                        ErrorCode::DatabaseQueryLimit,
                        format!(
                            "the query ran over {} s and was stopped (it had examined {} index entries and {} documents): \
                             bound it by an indexed field, or create an index for its filter and order",
                            limit.as_secs(),
                            self.stats.keys_examined,
                            self.stats.docs_examined
                        ),
                    ));
                }
            }
        }
        Ok(true)
    }

    /// How many more entries or documents it may examine (at least one: the one that
    /// finds the budget spent).
    fn remaining(&self) -> usize {
        let examined = self.stats.keys_examined + self.stats.docs_examined;
        usize::try_from(self.budget.saturating_sub(examined))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    fn key(&mut self) -> Result<bool, YunError> {
        self.stats.keys_examined += 1;
        self.tick()
    }

    fn doc(&mut self) -> Result<bool, YunError> {
        self.stats.docs_examined += 1;
        self.tick()
    }
}

/// Decides matches on stored JSON text, decoding only the fields the filter reads
/// before the whole document.
pub(crate) struct Matcher<'f> {
    filter: &'f Filter,
    fields: Vec<String>,
}

impl<'f> Matcher<'f> {
    pub fn new(filter: &'f Filter) -> Self {
        let mut fields = Vec::new();
        filter.top_fields(&mut fields);
        Self { filter, fields }
    }

    /// Also decodes the fields `sorter` reads, so [`Self::partial`] documents sort as
    /// the whole ones do.
    pub fn sorting(mut self, sorter: Option<&Sorter>) -> Self {
        let paths: Vec<&[String]> = match sorter {
            Some(Sorter::Keys(keys)) => keys.keys().iter().map(|(p, _)| p.as_slice()).collect(),
            Some(Sorter::Near(path, _)) => vec![path],
            None => Vec::new(),
        };
        for p in paths {
            if !self.fields.contains(&p[0]) {
                self.fields.push(p[0].clone());
            }
        }
        self
    }

    /// The fields read (filter and order) of the stored document, when it matches.
    fn partial(&self, text: &str) -> Result<Option<Value>, YunError> {
        let partial = Value::Object(if self.fields.is_empty() {
            Map::new()
        } else {
            Partial(&self.fields)
                .deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(stored)?
        });
        Ok(self.filter.matches(&partial).then_some(partial))
    }

    /// Whether the stored document matches.
    pub fn accepts(&self, text: &str) -> Result<bool, YunError> {
        Ok(self.partial(text)?.is_some())
    }

    /// The stored document, decoded, when it matches.
    pub fn matched(&self, text: &str) -> Result<Option<Value>, YunError> {
        if !self.accepts(text)? {
            return Ok(None);
        }
        serde_json::from_str(text).map(Some).map_err(stored)
    }
}

fn stored(e: serde_json::Error) -> YunError {
    YunError::internal(format!("a stored document does not decode: {e}"))
}

/// Decodes the named top-level fields of a JSON object and skips the rest unbuilt.
struct Partial<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for Partial<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Partial<'_> {
    type Value = Map<String, Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(wanted) = map.next_key_seed(WantedKey(self.0))? {
            match wanted {
                Some(key) => {
                    out.insert(key, map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A key, kept (owned) only when it is one of the wanted fields.
struct WantedKey<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for WantedKey<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for WantedKey<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().any(|f| f == key).then(|| key.to_owned()))
    }
}

/// The order a query's results come in when it has one.
pub(crate) enum Sorter<'q> {
    Keys(&'q SortKeys),
    /// `$nearSphere` without an order: nearest first.
    Near(&'q [String], &'q Near),
}

impl<'q> Sorter<'q> {
    pub fn of(filter: &'q Filter, order: &'q SortKeys) -> Option<Self> {
        if !order.is_empty() {
            Some(Sorter::Keys(order))
        } else {
            filter.near().map(|(path, near)| Sorter::Near(path, near))
        }
    }

    fn compare(&self, a: &Value, b: &Value) -> Ordering {
        match self {
            Sorter::Keys(keys) => keys.compare(a, b),
            Sorter::Near(path, near) => {
                let distance = |d: &Value| {
                    let mut found = Vec::new();
                    crate::filter::lookup(d, path, &mut found);
                    found
                        .into_iter()
                        .flatten()
                        .filter_map(|v| near.distance(v))
                        .fold(f64::INFINITY, f64::min)
                };
                distance(a).total_cmp(&distance(b))
            }
        }
    }

    /// The sort fields, for the error that asks for an index.
    fn describe(&self) -> String {
        match self {
            Sorter::Keys(keys) => keys
                .keys()
                .iter()
                .map(|(p, desc)| format!("{} {}", p.join("."), if *desc { "desc" } else { "asc" }))
                .collect::<Vec<_>>()
                .join(", "),
            Sorter::Near(path, _) => format!("{} (distance)", path.join(".")),
        }
    }
}

/// The best `want` documents seen, by the sorter and then `_id`: never a sort of all
/// matches, and an error rather than more than its memory bound held.
struct TopK<'s, 'q> {
    want: usize,
    memory: usize,
    sorter: &'s Sorter<'q>,
    items: Vec<Ranked>,
    bytes: usize,
    /// Once `want` are kept: the worst of them. A candidate that does not beat it is
    /// dropped at once, without copying its text.
    bar: Option<(Value, String)>,
}

/// What sorts (the document, or the fields it sorts by), its `_id`, its stored text when
/// it is decoded only if it wins, and about how much memory it holds.
type Ranked = (Value, String, Option<String>, usize);

impl<'s, 'q> TopK<'s, 'q> {
    fn new(want: usize, sorter: &'s Sorter<'q>, memory: usize) -> Self {
        Self {
            bar: None,
            want,
            memory,
            sorter,
            items: Vec::new(),
            bytes: 0,
        }
    }

    fn cmp(sorter: &Sorter, a: &Ranked, b: &Ranked) -> Ordering {
        sorter.compare(&a.0, &b.0).then_with(|| a.1.cmp(&b.1))
    }

    /// A whole document (`bytes`: its stored size).
    fn push(&mut self, doc: Value, id: &str, bytes: usize) -> Result<(), YunError> {
        self.add((doc, id.to_owned(), None, bytes))
    }

    /// The fields a document sorts by, with its stored text for decoding if it wins.
    fn push_partial(&mut self, partial: Value, id: &str, text: &str) -> Result<(), YunError> {
        if let Some((value, bar_id)) = &self.bar {
            let beats = self
                .sorter
                .compare(&partial, value)
                .then_with(|| id.cmp(bar_id.as_str()))
                .is_lt();
            if !beats {
                return Ok(());
            }
        }
        // The text twice over covers the fields decoded from it.
        self.add((
            partial,
            id.to_owned(),
            Some(text.to_owned()),
            2 * text.len(),
        ))
    }

    fn add(&mut self, ranked: Ranked) -> Result<(), YunError> {
        self.bytes += ranked.3;
        self.items.push(ranked);
        if self.items.len() >= self.want.saturating_mul(2).max(64) || self.bytes > self.memory {
            self.compact();
            if self.bytes > self.memory {
                return Err(YunError::new(
                    ErrorCode::DatabaseQueryLimit,
                    format!(
                        "the sort by {} needs more than {} KiB of memory: create an index on those fields \
                         (in that order and direction, after the fields the query matches by equality), or lower skip + limit",
                        self.sorter.describe(),
                        self.memory >> 10
                    ),
                ));
            }
        }
        Ok(())
    }

    fn compact(&mut self) {
        if self.items.len() > self.want {
            let sorter = self.sorter;
            self.items
                .select_nth_unstable_by(self.want, |a, b| Self::cmp(sorter, a, b));
            self.items.truncate(self.want);
            self.bytes = self.items.iter().map(|r| r.3).sum();
            self.bar = self
                .items
                .iter()
                .max_by(|a, b| Self::cmp(sorter, a, b))
                .map(|r| (r.0.clone(), r.1.clone()));
        }
    }

    /// The winners in order, decoded.
    fn finish(mut self) -> Result<Vec<Value>, YunError> {
        self.compact();
        let sorter = self.sorter;
        self.items.sort_by(|a, b| Self::cmp(sorter, a, b));
        self.items
            .into_iter()
            .map(|(doc, _, text, _)| match text {
                Some(t) => serde_json::from_str(&t).map_err(stored),
                None => Ok(doc),
            })
            .collect()
    }
}

/// Gets each index entry of a walk (key, `_id`) with the source and meter to fetch its
/// document; returns whether to go on.
type EntryVisit<'v, 't> =
    &'v mut dyn FnMut(&mut Source<'t>, &mut Meter, &[u8], &str) -> Result<bool, YunError>;

/// Where a plan's candidates are read from.
pub(crate) struct Source<'t> {
    pub txn: &'t mut dyn DocTxn,
    pub collection: &'t str,
    /// Collection sizes and the env: whether a wide index range is read or the
    /// collection scanned instead.
    pub sizes: (&'t Sizes, &'t str),
}

/// How long a collection's counted size is trusted for planning.
const SIZE_TTL: Duration = Duration::from_secs(30);

/// Collection sizes by (env, collection), counted at most every [`SIZE_TTL`]: an index
/// range holding more than an eighth of the collection costs more in fetches by `_id`
/// than a scan of it (SQLite has no statistics this cheap).
#[derive(Default)]
pub(crate) struct Sizes(
    std::sync::Mutex<std::collections::HashMap<(String, String), (u64, Instant)>>,
);

impl Sizes {
    fn get(&self, txn: &mut dyn DocTxn, env: &str, collection: &str) -> Result<u64, YunError> {
        let key = (env.to_owned(), collection.to_owned());
        if let Some((n, at)) = self.0.lock().ok().and_then(|m| m.get(&key).copied()) {
            if at.elapsed() < SIZE_TTL {
                return Ok(n);
            }
        }
        let n = txn.count_documents(collection)?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, (n, Instant::now()));
        }
        Ok(n)
    }
}

/// Index entries a plan reads before a scan would be cheaper, whatever the size.
const MIN_RANGE_BEFORE_SCAN: usize = 1000;

impl<'t> Source<'t> {
    pub fn new(txn: &'t mut dyn DocTxn, collection: &'t str, sizes: (&'t Sizes, &'t str)) -> Self {
        Self {
            txn,
            collection,
            sizes,
        }
    }

    /// Every entry of one range, in order (batched, so `visit` may use the store).
    fn walk(
        &mut self,
        meter: &mut Meter,
        scan: &IndexScan,
        range: &KeyRange,
        visit: EntryVisit<'_, 't>,
    ) -> Result<(), YunError> {
        let mut after: Option<(Vec<u8>, String)> = None;
        loop {
            let mut batch: Vec<(Vec<u8>, String)> = Vec::with_capacity(BATCH);
            self.txn.index_each(
                self.collection,
                &scan.spec.name,
                range,
                after.as_ref().map(|(k, i)| (k.as_slice(), i.as_str())),
                scan.backward,
                &mut |key, id| {
                    batch.push((key.to_vec(), id.to_owned()));
                    Ok(batch.len() < BATCH)
                },
            )?;
            let complete = batch.len() < BATCH;
            for (key, id) in &batch {
                if !meter.key()? || !visit(self, meter, key, id)? {
                    return Ok(());
                }
            }
            if complete {
                return Ok(());
            }
            after = batch.pop();
        }
    }

    /// The `_id`s a plan's index ranges hold (unsorted, maybe repeated); false when they
    /// are more than `cap`.
    fn ids(
        &mut self,
        meter: &mut Meter,
        plan: &Plan,
        cap: usize,
        out: &mut Vec<String>,
    ) -> Result<bool, YunError> {
        match plan {
            Plan::Ids(ids) => out.extend(ids.iter().cloned()),
            Plan::Index(scan) => {
                for range in &scan.ranges {
                    self.walk(meter, scan, range, &mut |_, _, _, id| {
                        out.push(id.to_owned());
                        Ok(out.len() <= cap)
                    })?;
                    if meter.over_budget || out.len() > cap {
                        return Ok(out.len() <= cap);
                    }
                }
            }
            Plan::Union(branches) => {
                for b in branches {
                    if !self.ids(meter, b, cap, out)? || meter.over_budget {
                        return Ok(false);
                    }
                }
            }
            Plan::Scan => unreachable!("a scan has no index ranges"),
        }
        Ok(true)
    }

    /// The plan's candidate documents in `_id` order, as (`_id`, stored text), until
    /// `visit` says stop.
    pub fn each(
        &mut self,
        meter: &mut Meter,
        plan: &Plan,
        visit: &mut dyn FnMut(&str, &str) -> Result<bool, YunError>,
    ) -> Result<(), YunError> {
        let cap = match plan {
            Plan::Index(_) | Plan::Union(_) => {
                let (sizes, env) = self.sizes;
                let n = sizes.get(self.txn, env, self.collection)?;
                (n as usize / 8).max(MIN_RANGE_BEFORE_SCAN)
            }
            _ => usize::MAX,
        };
        let mut ids = Vec::new();
        let narrow = !matches!(plan, Plan::Scan) && self.ids(meter, plan, cap, &mut ids)?;
        if meter.over_budget {
            return Ok(());
        }
        if !narrow {
            return self.txn.scan_each(self.collection, None, &mut |id, text| {
                Ok(meter.doc()? && visit(id, text)?)
            });
        }
        ids.sort_unstable();
        ids.dedup();
        // Fetched a chunk at a time (one round trip on a networked store); the first
        // chunk is small, since a `limit` often stops the visit early.
        let mut chunk = FETCH_FIRST;
        let mut rest = ids.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(chunk.min(rest.len()).min(meter.remaining()));
            rest = later;
            chunk = (chunk * 4).min(FETCH_MAX);
            for (id, text) in now.iter().zip(self.txn.get_texts(self.collection, now)?) {
                if !meter.doc()? {
                    return Ok(());
                }
                if let Some(text) = text {
                    if !visit(id, &text)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The matches at positions `skip..skip + limit` in the query's order (in `_id` order
/// without one). Matches before `skip` are counted, not kept.
pub(crate) fn select(
    source: &mut Source,
    meter: &mut Meter,
    plan: &Plan,
    matcher: &Matcher,
    sorter: Option<&Sorter>,
    skip: usize,
    limit: usize,
) -> Result<Vec<Value>, YunError> {
    let want = skip.saturating_add(limit);
    if limit == 0 {
        return Ok(Vec::new());
    }
    match (plan, sorter) {
        (Plan::Index(scan), Some(Sorter::Keys(keys))) if scan.order_components.is_some() => {
            ordered(source, meter, scan, matcher, keys, Window::new(skip, want))
        }
        (_, Some(sorter)) => {
            // Documents are ranked by the fields they sort by, and decoded only if they
            // end in the top.
            let mut top = TopK::new(want, sorter, meter.sort_memory);
            source.each(meter, plan, &mut |id, text| {
                if let Some(partial) = matcher.partial(text)? {
                    top.push_partial(partial, id, text)?;
                }
                Ok(true)
            })?;
            Ok(top.finish()?.into_iter().skip(skip).collect())
        }
        (_, None) => {
            let mut window = Window::new(skip, want);
            source.each(meter, plan, &mut |_, text| {
                if window.position < skip {
                    if matcher.accepts(text)? {
                        window.position += 1;
                    }
                } else if let Some(doc) = matcher.matched(text)? {
                    window.place(doc);
                }
                Ok(!window.full())
            })?;
            Ok(window.out)
        }
    }
}

/// The results being placed: positions before `skip` are only counted. Documents known
/// to match by `_id` take their place at once and are fetched later, together (one
/// round trip for a page on a networked store).
struct Window {
    skip: usize,
    want: usize,
    position: usize,
    out: Vec<Value>,
    /// `_id`s placed (in order, after `out`) whose documents are yet to be fetched.
    pending: Vec<String>,
}

impl Window {
    fn new(skip: usize, want: usize) -> Self {
        Self {
            skip,
            want,
            position: 0,
            out: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.position >= self.want
    }

    /// Places a document; what is pending must be fetched first ([`Window::fetch`]).
    fn place(&mut self, doc: Value) {
        debug_assert!(self.pending.is_empty(), "pending documents go first");
        if self.position >= self.skip && self.position < self.want {
            self.out.push(doc);
        }
        self.position += 1;
    }

    /// Places documents known to match by `_id` (in order): those before the window are
    /// counted, those in it wait for [`Window::fetch`].
    fn place_ids(&mut self, ids: &mut Vec<String>) {
        ids.sort_unstable();
        let before = ids.len().min(self.skip.saturating_sub(self.position));
        let inside = (ids.len() - before).min(self.want.saturating_sub(self.position + before));
        self.position += before + inside;
        self.pending.extend(ids.drain(..).skip(before).take(inside));
        ids.clear();
    }

    /// Fetches the pending documents into their places.
    fn fetch(&mut self, source: &mut Source, meter: &mut Meter) -> Result<(), YunError> {
        let pending = std::mem::take(&mut self.pending);
        let mut rest = pending.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(meter.remaining()));
            rest = later;
            for text in source.txn.get_texts(source.collection, now)? {
                if !meter.doc()? {
                    return Ok(());
                }
                // Gone only if the entry outlived its document: nothing to place.
                if let Some(text) = text {
                    self.out.push(serde_json::from_str(&text).map_err(stored)?);
                }
            }
        }
        Ok(())
    }
}

/// Type brackets whose key bytes order exactly as their values: equal keys are equal
/// values. Objects, arrays and regexes are keyed by their JSON text.
fn exact_bracket(b: u8) -> bool {
    matches!(b, 1 | 2 | 3 | 7 | 8 | 9)
}

/// The length of the key component at the start of `k` (see `index::encode`).
fn component_len(k: &[u8], descending: bool) -> usize {
    let at = |i: usize| if descending { !k[i] } else { k[i] };
    if k.is_empty() {
        return 0;
    }
    match at(0) {
        1 => 1,
        2 | 9 => 9.min(k.len()),
        8 => 2.min(k.len()),
        _ => {
            let mut i = 1;
            while i + 1 < k.len() {
                if at(i) == 0 {
                    if at(i + 1) == 0 {
                        return i + 2;
                    }
                    i += 2;
                } else {
                    i += 1;
                }
            }
            k.len()
        }
    }
}

/// The part of a key that decides order among the first `components` (after `skip`):
/// whole components while their bracket is exact, then the bracket byte of the first
/// that is not (its documents are ordered by comparing their values); and whether all
/// were exact.
fn order_prefix(
    key: &[u8],
    descending: &[bool],
    skip: usize,
    components: usize,
) -> (Vec<u8>, bool) {
    let mut at = 0;
    let mut out = Vec::new();
    for (i, desc) in descending.iter().enumerate().take(components) {
        if at >= key.len() {
            break;
        }
        let len = component_len(&key[at..], *desc);
        if i >= skip {
            let b = if *desc { !key[at] } else { key[at] };
            if !exact_bracket(b) {
                out.push(key[at]);
                return (out, false);
            }
            out.extend_from_slice(&key[at..at + len]);
        }
        at += len;
    }
    (out, true)
}

/// Reads an index in the query's order and stops once the window is full. Entries with
/// equal order prefixes form a group, sorted by the evaluator's comparison and `_id`
/// before it is placed (ties, and the brackets whose keys do not order exactly). When
/// the index alone decides matches ([`IndexScan::covered`]) and a group's keys are
/// exact, its documents are fetched only if they land in the window: a `skip` is
/// counted in the index. A document with several entries is placed at its first one in
/// the walk, after checking that this entry is its sort key (a whole-array entry may
/// come first).
fn ordered(
    source: &mut Source,
    meter: &mut Meter,
    scan: &IndexScan,
    matcher: &Matcher,
    keys: &SortKeys,
    mut window: Window,
) -> Result<Vec<Value>, YunError> {
    let Some(range) = scan.ranges.first() else {
        return Ok(Vec::new());
    };
    let components = scan.order_components.unwrap_or(0);
    let descending: Vec<bool> = scan.spec.fields.iter().map(|f| f.direction < 0).collect();
    let sorter = Sorter::Keys(keys);
    let fetch_free = scan.covered && !scan.several_keys;
    let mut group_prefix: Option<(Vec<u8>, bool)> = None;
    let memory = meter.sort_memory;
    let mut group = TopK::new(window.want, &sorter, memory);
    let mut group_ids: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    source.walk(meter, scan, range, &mut |source, meter, key, id| {
        if scan.several_keys && seen.contains(id) {
            return Ok(true);
        }
        let prefix = order_prefix(key, &descending, 0, components);
        if group_prefix.as_ref() != Some(&prefix) {
            window.place_ids(&mut group_ids);
            let done = std::mem::replace(&mut group, TopK::new(0, &sorter, memory));
            let docs = done.finish()?;
            if !docs.is_empty() {
                window.fetch(source, meter)?;
            }
            docs.into_iter().for_each(|d| window.place(d));
            if window.full() {
                return Ok(false);
            }
            group = TopK::new(window.want - window.position, &sorter, memory);
            group_prefix = Some(prefix);
        }
        if fetch_free && group_prefix.as_ref().is_some_and(|(_, exact)| *exact) {
            group_ids.push(id.to_owned());
            return Ok(true);
        }
        if !meter.doc()? {
            return Ok(false);
        }
        let Some(text) = source.txn.get_text(source.collection, id)? else {
            return Ok(true);
        };
        let doc = matcher.matched(&text)?;
        if scan.several_keys {
            if let Some(d) = &doc {
                let own: Vec<u8> = keys
                    .keys()
                    .iter()
                    .enumerate()
                    .flat_map(|(j, _)| {
                        component(
                            keys.key_of(d, j),
                            scan.spec.fields[scan.equal_fields + j].direction,
                        )
                    })
                    .collect();
                let equal = scan.equal_fields;
                let entry_sort = order_prefix(key, &descending, equal, components);
                let own_sort = order_prefix(&own, &descending[equal..], 0, components - equal);
                if entry_sort != own_sort {
                    // Not its place: the walk reaches its sort key later.
                    return Ok(true);
                }
            }
            seen.insert(id.to_owned());
        }
        if let Some(d) = doc {
            group.push(d, id, text.len())?;
        }
        Ok(true)
    })?;
    if !window.full() {
        window.place_ids(&mut group_ids);
        let docs = group.finish()?;
        if !docs.is_empty() {
            window.fetch(source, meter)?;
        }
        docs.into_iter().for_each(|d| window.place(d));
    }
    window.fetch(source, meter)?;
    Ok(window.out)
}

/// How many documents match: from the index alone when it is exact for the filter.
pub(crate) fn count(
    source: &mut Source,
    meter: &mut Meter,
    plan: &Plan,
    matcher: &Matcher,
) -> Result<u64, YunError> {
    if let Plan::Index(scan) = plan {
        if scan.covered {
            if meter.budget != u64::MAX {
                // Unknown length: count where it blocks nothing.
                meter.over_budget = true;
                return Ok(0);
            }
            let mut n = 0;
            for range in &scan.ranges {
                n += source
                    .txn
                    .index_count(source.collection, &scan.spec.name, range)?;
            }
            meter.stats.keys_examined += n;
            return Ok(n);
        }
    }
    let mut n = 0;
    source.each(meter, plan, &mut |_, text| {
        if matcher.accepts(text)? {
            n += 1;
        }
        Ok(true)
    })?;
    Ok(n)
}

/// The `_id`s of the matches in `_id` order (the first only with `first_only`), for a
/// write to apply to one by one.
pub(crate) fn matching_ids(
    source: &mut Source,
    plan: &Plan,
    matcher: &Matcher,
    first_only: bool,
) -> Result<Vec<String>, YunError> {
    let mut meter = Meter::new(usize::MAX, None, SORT_MEMORY_LIMIT);
    let mut ids = Vec::new();
    source.each(&mut meter, plan, &mut |id, text| {
        if matcher.accepts(text)? {
            ids.push(id.to_owned());
        }
        Ok(!first_only || ids.is_empty())
    })?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_documents_hold_exactly_the_fields_read() {
        let filter =
            Filter::parse(&json!({"a.b": 1, "$or": [{"c": 2}, {"d": {"$exists": false}}]}))
                .unwrap();
        let m = Matcher::new(&filter);
        let text =
            r#"{"_id":"x","a":{"b":[1,2]},"big":{"deep":[1,2,{"e":"\u0041"}]},"c":2,"d\u0041":3}"#;
        assert!(m.accepts(text).unwrap());
        assert_eq!(
            m.matched(text).unwrap().unwrap()["big"]["deep"][2]["e"],
            "A"
        );
        assert!(!m.accepts(r#"{"a":{"b":2},"c":2}"#).unwrap());
        assert!(m.accepts(r#"{"a":{"b":1},"c":3}"#).unwrap(), "d is missing");
        assert!(Matcher::new(&Filter::all()).accepts(r#"{"x":1}"#).unwrap());
    }

    #[test]
    fn components_are_measured_in_both_directions() {
        for v in [
            json!(null),
            json!(5),
            json!("a\u{0}b"),
            json!(true),
            json!({"$date": 3}),
            json!({"x": 1}),
        ] {
            for dir in [1i8, -1] {
                let mut key = component(Some(&v), dir);
                let len = key.len();
                key.extend(component(Some(&json!("tail")), dir));
                assert_eq!(component_len(&key, dir < 0), len, "{v} {dir}");
            }
        }
    }
}
