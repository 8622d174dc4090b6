//! The database operations, in one env: the model (filters, updates, order, projection)
//! over the storage seam. Every write is one transaction: it applies completely or not
//! at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use yun_types::{new_sortable_id, EnvId, ErrorCode, YunError};

use crate::exec::{self, Matcher, Meter, Sizes, Sorter, Source, QUERY_TIME_LIMIT};
use crate::filter::Filter;
use crate::find::{Projection, SortKeys};
use crate::index::{self, IndexSpec};
use crate::plan::{self, Plan};
use crate::slow::{QueryReport, SlowLog};
use crate::store::{run, Access, ChangeOp, DocStore, DocTxn, NewChange};
use crate::update;

/// Per-call limits, CloudBase's by default.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `limit` when a query names none.
    pub default_limit: usize,
    /// The largest `limit` a query may ask for; more is an error, not a silent cut.
    pub max_limit: usize,
    /// The largest document, as stored JSON (MongoDB's 16 MiB).
    pub max_document_bytes: usize,
    /// Finds and counts that run longer go to the slow-query log.
    pub slow_query: Duration,
    /// The most a sort without an index may hold (MongoDB's 100 MiB).
    pub sort_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_limit: 100,
            max_limit: 1000,
            max_document_bytes: 16 << 20,
            slow_query: Duration::from_millis(100),
            sort_memory: exec::SORT_MEMORY_LIMIT,
        }
    }
}

#[derive(Clone)]
pub struct Find {
    pub filter: Filter,
    pub order: SortKeys,
    pub skip: usize,
    pub limit: Option<usize>,
    pub projection: Projection,
}

/// Checks each document a write touches, inside the write's transaction, so an error
/// aborts the whole write and the check sees exactly what is written: `(before, after)`;
/// an insert has no before, a delete no after. End users' security rules use it.
pub type WriteGuard =
    Arc<dyn Fn(Option<&Value>, Option<&Value>) -> Result<(), YunError> + Send + Sync>;

fn check_guard(
    guard: &Option<WriteGuard>,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), YunError> {
    guard.as_ref().map_or(Ok(()), |g| g(before, after))
}

/// How an update applies beyond its filter and change: to every match or the first,
/// inserting the upsert seed when nothing matches, under an optional guard.
#[derive(Default)]
pub struct UpdateMode {
    pub multi: bool,
    pub upsert: Option<Value>,
    pub guard: Option<WriteGuard>,
}

/// What an update writes: operators merged into the document, or a replacement.
pub enum Change {
    Operators(Value),
    Replace(Value),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Updated {
    pub matched: u64,
    pub updated: u64,
    pub upserted_id: Option<String>,
}

pub struct DocDb {
    store: Arc<dyn DocStore>,
    limits: Limits,
    sizes: Arc<Sizes>,
    slow: SlowLog,
}

/// A valid collection name: CloudBase's rule (letters, digits, `_` `-` `.`; 1–100; no `$`).
pub fn check_collection(name: &str) -> Result<(), YunError> {
    let ok = (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(YunError::invalid_param(format!(
            "invalid collection name {name:?}"
        )))
    }
}

fn unbounded<T>(found: Option<T>) -> Result<T, YunError> {
    found.ok_or_else(|| YunError::internal("an unbounded read ran over its budget"))
}

/// Documents an index build reads between writes of their entries.
const INDEX_BUILD_BATCH: usize = 1000;

/// Runs an aggregation's leading `$match`, `$sort`, `$skip` and `$limit` as a query (the
/// planner's indexes, top-k), and returns its documents with the stages left.
fn leading_stages<'s>(
    txn: &mut dyn DocTxn,
    sizes: (&Sizes, &str),
    collection: &str,
    stages: &'s [crate::aggregate::Stage],
) -> Result<(Vec<Value>, &'s [crate::aggregate::Stage]), YunError> {
    use crate::aggregate::Stage;
    let mut rest = stages;
    let take = |rest: &mut &'s [Stage], want: fn(&Stage) -> bool| match rest.split_first() {
        Some((first, tail)) if want(first) => {
            *rest = tail;
            Some(first)
        }
        _ => None,
    };
    let filter = match take(&mut rest, |s| matches!(s, Stage::Match(_))) {
        Some(Stage::Match(f)) => f.clone(),
        _ => Filter::all(),
    };
    let order = match take(&mut rest, |s| matches!(s, Stage::Sort(_))) {
        Some(Stage::Sort(k)) => k.clone(),
        _ => SortKeys::default(),
    };
    let skip = match take(&mut rest, |s| matches!(s, Stage::Skip(_))) {
        Some(Stage::Skip(n)) => *n,
        _ => 0,
    };
    let limit = match take(&mut rest, |s| matches!(s, Stage::Limit(_))) {
        Some(Stage::Limit(n)) => Some(*n),
        _ => None,
    };
    let docs = select(
        txn,
        sizes,
        collection,
        &filter,
        &order,
        skip,
        limit.unwrap_or(usize::MAX),
        Meter::new(usize::MAX, Some(QUERY_TIME_LIMIT), exec::SORT_MEMORY_LIMIT),
    )?;
    let (docs, _, _) = unbounded(docs)?;
    Ok((docs, rest))
}

/// Index-range reads that find at most this many entries run on the caller's thread
/// (see [`DocDb::find`]): reading 256 small documents costs less than a thread hand-off
/// plus its queueing under load.
const INLINE_ENTRIES: usize = 256;

/// Runs a read that takes an index-entry budget: first on the caller's thread within
/// [`INLINE_ENTRIES`] (most index ranges are small), then, if that was not enough, on the
/// blocking pool without a budget, so a scan never stalls a runtime worker.
async fn read_bounded<T: Send + 'static>(
    store: &dyn DocStore,
    env: &EnvId,
    access: Access,
    read: impl Fn(&mut dyn DocTxn, usize) -> Result<Option<T>, YunError> + Send + Sync + 'static,
) -> Result<T, YunError> {
    let read = Arc::new(read);
    if access == Access::Read {
        let first = read.clone();
        if let Some(found) = run(store, env, Access::Point, move |txn| {
            first(txn, INLINE_ENTRIES)
        })
        .await?
        {
            return Ok(found);
        }
    }
    run(store, env, access, move |txn| {
        unbounded(read(txn, usize::MAX)?)
    })
    .await
}

/// The plan for a query. One pinned to `_id`s needs no index: their definitions are not
/// read (a point read is one statement fewer).
fn plan_for(
    txn: &mut dyn DocTxn,
    collection: &str,
    filter: &Filter,
    order: &SortKeys,
) -> Result<Plan, YunError> {
    if let Some(ids) = filter.id_candidates() {
        return Ok(Plan::Ids(ids));
    }
    Ok(plan::plan(filter, order, &txn.list_indexes(collection)?))
}

/// A result, with its report when the query ran long enough to be reported.
type Reported<T> = (T, Option<QueryReport>);

/// A find in one snapshot; `None` when it would examine more than `budget` index
/// entries and documents. With its report when it ran for `report_after` or longer.
fn find_in(
    txn: &mut dyn DocTxn,
    sizes: (&Sizes, &str),
    collection: &str,
    q: &Find,
    limit: usize,
    budget: usize,
    limits: &Limits,
) -> Result<Option<Reported<Vec<Value>>>, YunError> {
    let started = Instant::now();
    require_collection(txn, collection)?;
    let meter = Meter::new(budget, Some(QUERY_TIME_LIMIT), limits.sort_memory);
    let Some((docs, plan, stats)) = select(
        txn, sizes, collection, &q.filter, &q.order, q.skip, limit, meter,
    )?
    else {
        return Ok(None);
    };
    let took = started.elapsed();
    let report = (took >= limits.slow_query).then(|| QueryReport {
        at: yun_types::unix_ms(),
        collection: collection.to_owned(),
        operation: "find",
        filter: q.filter.shape(),
        order: q.order.to_value(),
        skip: q.skip,
        limit: Some(limit),
        plan: plan.describe(),
        stats: exec::Stats {
            returned: docs.len() as u64,
            ..stats
        },
        millis: took.as_secs_f64() * 1000.0,
    });
    let docs = docs.iter().map(|d| q.projection.apply(d)).collect();
    Ok(Some((docs, report)))
}

/// The matches at `skip..skip + limit` in `order`, planned over the collection's
/// indexes, with the plan and what it examined; `None` when over the meter's budget.
#[allow(clippy::too_many_arguments)]
fn select(
    txn: &mut dyn DocTxn,
    sizes: (&Sizes, &str),
    collection: &str,
    filter: &Filter,
    order: &SortKeys,
    skip: usize,
    limit: usize,
    mut meter: Meter,
) -> Result<Option<(Vec<Value>, Plan, exec::Stats)>, YunError> {
    let plan = plan_for(txn, collection, filter, order)?;
    let sorter = Sorter::of(filter, order);
    let docs = exec::select(
        &mut Source::new(txn, collection, sizes),
        &mut meter,
        &plan,
        &Matcher::new(filter).sorting(sorter.as_ref()),
        sorter.as_ref(),
        skip,
        limit,
    )?;
    Ok((!meter.over_budget).then_some((docs, plan, meter.stats)))
}

/// A count in one snapshot; `None` when over `budget` (see [`find_in`]).
fn count_in(
    txn: &mut dyn DocTxn,
    sizes: (&Sizes, &str),
    collection: &str,
    filter: &Filter,
    budget: usize,
    report_after: Duration,
) -> Result<Option<Reported<u64>>, YunError> {
    let started = Instant::now();
    require_collection(txn, collection)?;
    let plan = plan_for(txn, collection, filter, &SortKeys::default())?;
    let mut meter = Meter::new(budget, Some(QUERY_TIME_LIMIT), exec::SORT_MEMORY_LIMIT);
    let n = exec::count(
        &mut Source::new(txn, collection, sizes),
        &mut meter,
        &plan,
        &Matcher::new(filter),
    )?;
    if meter.over_budget {
        return Ok(None);
    }
    let took = started.elapsed();
    let report = (took >= report_after).then(|| QueryReport {
        at: yun_types::unix_ms(),
        collection: collection.to_owned(),
        operation: "count",
        filter: filter.shape(),
        order: Value::Object(Map::new()),
        skip: 0,
        limit: None,
        plan: plan.describe(),
        stats: exec::Stats {
            returned: 1,
            ..meter.stats
        },
        millis: took.as_secs_f64() * 1000.0,
    });
    Ok(Some((n, report)))
}

/// The `_id`s a write by filter applies to, in `_id` order: only `_id`s are held, the
/// documents are read again one by one as they are written.
fn matching_ids(
    txn: &mut dyn DocTxn,
    sizes: (&Sizes, &str),
    collection: &str,
    filter: &Filter,
    first_only: bool,
) -> Result<Vec<String>, YunError> {
    let plan = plan_for(txn, collection, filter, &SortKeys::default())?;
    exec::matching_ids(
        &mut Source::new(txn, collection, sizes),
        &plan,
        &Matcher::new(filter),
        first_only,
    )
}

/// Every document of a collection, decoded (an aggregation's `$lookup`).
fn all_documents(txn: &mut dyn DocTxn, collection: &str) -> Result<Vec<Value>, YunError> {
    let mut docs = Vec::new();
    txn.scan_each(collection, None, &mut |_, text| {
        docs.push(
            serde_json::from_str(text).map_err(|e| {
                YunError::internal(format!("a stored document does not decode: {e}"))
            })?,
        );
        Ok(true)
    })?;
    Ok(docs)
}

/// Document writes that keep the collection's indexes in step and enforce unique ones.
/// Every write to documents goes through here.
pub(crate) struct IndexedWriter<'t> {
    txn: &'t mut dyn DocTxn,
    collection: String,
    indexes: Vec<IndexSpec>,
}

impl<'t> IndexedWriter<'t> {
    pub(crate) fn new(txn: &'t mut dyn DocTxn, collection: &str) -> Result<Self, YunError> {
        let indexes = txn.list_indexes(collection)?;
        Ok(Self {
            txn,
            collection: collection.to_owned(),
            indexes,
        })
    }

    fn put_keys(&mut self, id: &str, doc: &Value) -> Result<(), YunError> {
        for spec in &mut self.indexes {
            if !spec.multikey && index::has_array(spec, doc)? {
                self.txn.mark_multikey(&self.collection, spec)?;
                spec.multikey = true;
            }
            let keys = index::keys(spec, doc)?;
            if spec.unique {
                for key in &keys {
                    if self
                        .txn
                        .index_key_taken(&self.collection, &spec.name, key, id)?
                    {
                        return Err(index::duplicate(spec));
                    }
                }
            }
            self.txn
                .put_index_keys(&self.collection, &spec.name, id, &keys)?;
        }
        Ok(())
    }

    fn drop_keys(&mut self, id: &str) -> Result<(), YunError> {
        for spec in &self.indexes {
            self.txn
                .delete_index_keys(&self.collection, &spec.name, id)?;
        }
        Ok(())
    }

    pub(crate) fn get(&mut self, id: &str) -> Result<Option<Value>, YunError> {
        self.txn.get(&self.collection, id)
    }

    /// The documents of `ids` that still match `filter` as this write reads them (locked,
    /// on a backend with several writers), and whether any had changed since it matched
    /// (see [`CONCURRENT_WRITE_RETRIES`]).
    fn still_matching(
        &mut self,
        ids: &[String],
        filter: &Filter,
    ) -> Result<(Vec<(String, Value)>, bool), YunError> {
        let mut docs = Vec::with_capacity(ids.len());
        let mut changed = false;
        for id in ids {
            match self.get(id)?.filter(|doc| filter.matches(doc)) {
                Some(doc) => docs.push((id.clone(), doc)),
                None => changed = true,
            }
        }
        Ok((docs, changed))
    }

    pub(crate) fn insert(&mut self, id: &str, doc: &Value) -> Result<(), YunError> {
        let text = doc.to_string();
        self.txn.insert(&self.collection, id, &text)?;
        self.put_keys(id, doc)?;
        self.log(ChangeOp::Create, id, None, Some(&text))
    }

    pub(crate) fn replace(&mut self, id: &str, doc: &Value) -> Result<(), YunError> {
        let before = self.txn.get_text(&self.collection, id)?;
        let text = doc.to_string();
        self.drop_keys(id)?;
        self.txn.replace(&self.collection, id, &text)?;
        self.put_keys(id, doc)?;
        self.log(ChangeOp::Update, id, before.as_deref(), Some(&text))
    }

    pub(crate) fn delete(&mut self, id: &str) -> Result<bool, YunError> {
        let Some(before) = self.txn.get_text(&self.collection, id)? else {
            return Ok(false);
        };
        self.drop_keys(id)?;
        self.txn.delete(&self.collection, id)?;
        self.log(ChangeOp::Delete, id, Some(&before), None)?;
        Ok(true)
    }

    /// Every document write goes through here, so none escapes the change log.
    fn log(
        &mut self,
        op: ChangeOp,
        doc_id: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<(), YunError> {
        self.txn.append_change(&NewChange {
            target: &self.collection,
            op: op.as_str(),
            key: doc_id,
            before,
            after,
        })
    }
}

/// How often an update or remove of one document looks for a match again. A backend with
/// several writers at once (PostgreSQL) finds matches without locking them, then reads
/// each locked, by which time another transaction may have changed or removed it (the
/// filter is checked again on what it locked). When that left nothing, another document
/// may match: look again. Each retry follows a commit of another writer (writers racing
/// for the first match of a queue take turns, so a loser may retry once per rival); with
/// one writer (SQLite) none happens.
const CONCURRENT_WRITE_RETRIES: usize = 64;

/// A write whose filter pins `_id` touches a bounded number of documents.
fn write_access(filter: &Filter) -> Access {
    if filter.id_candidates().is_some() {
        Access::PointWrite
    } else {
        Access::Write
    }
}

/// Inserts of at most this many documents are short writes.
const SHORT_INSERT: usize = 16;

/// A query that pins `_id` reads a bounded number of documents; any other may scan.
fn read_access(filter: &Filter) -> Access {
    if filter.id_candidates().is_some() {
        Access::Point
    } else {
        Access::Read
    }
}

/// Fails with `DATABASE_COLLECTION_NOT_EXIST` unless the collection exists.
pub(crate) fn require_collection(txn: &mut dyn DocTxn, collection: &str) -> Result<(), YunError> {
    if txn.collection_exists(collection)? {
        Ok(())
    } else {
        Err(not_found(collection))
    }
}

fn not_found(collection: &str) -> YunError {
    YunError::new(
        ErrorCode::CollectionNotFound,
        format!("collection {collection} does not exist"),
    )
}

fn id_text(v: &Value) -> Result<String, YunError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(YunError::invalid_param(
            "_id must be a non-empty string or a number",
        )),
    }
}

impl DocDb {
    pub fn new(store: Arc<dyn DocStore>, limits: Limits) -> Self {
        Self {
            store,
            limits,
            sizes: Default::default(),
            slow: Default::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn DocStore> {
        &self.store
    }

    fn check_size(&self, doc: &Value) -> Result<(), YunError> {
        let bytes = doc.to_string().len();
        if bytes > self.limits.max_document_bytes {
            return Err(YunError::invalid_param(format!(
                "document is {bytes} bytes, over the {}-byte limit",
                self.limits.max_document_bytes
            )));
        }
        Ok(())
    }

    pub async fn create_collection(&self, env: &EnvId, name: &str) -> Result<(), YunError> {
        check_collection(name)?;
        let name = name.to_owned();
        let created = run(&*self.store, env, Access::Write, move |txn| {
            txn.create_collection(&name)
        })
        .await?;
        if !created {
            return Err(YunError::new(
                ErrorCode::CollectionExists,
                "the collection already exists",
            ));
        }
        Ok(())
    }

    pub async fn list_collections(&self, env: &EnvId) -> Result<Vec<String>, YunError> {
        run(&*self.store, env, Access::Point, |txn| {
            txn.list_collections()
        })
        .await
    }

    /// Applies change-log entries of `env` in order, each leaving its document as the
    /// entry says (a point-in-time restore replays what followed a backup). One write.
    pub async fn replay(
        &self,
        env: &EnvId,
        changes: Vec<yun_types::changes::ChangeEntry>,
    ) -> Result<(), YunError> {
        run(&*self.store, env, Access::Write, move |txn| {
            for change in &changes {
                if change.op == "drop" {
                    txn.drop_collection(&change.target)?;
                    continue;
                }
                if !txn.collection_exists(&change.target)? {
                    txn.create_collection(&change.target)?;
                }
                let mut writer = IndexedWriter::new(txn, &change.target)?;
                match &change.after {
                    Some(text) => {
                        let doc: Value = serde_json::from_str(text).map_err(|e| {
                            YunError::internal(format!("a logged document does not decode: {e}"))
                        })?;
                        if writer.get(&change.key)?.is_some() {
                            writer.replace(&change.key, &doc)?;
                        } else {
                            writer.insert(&change.key, &doc)?;
                        }
                    }
                    None => {
                        writer.delete(&change.key)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Documents in all of the env's collections (usage reports).
    pub async fn document_count(&self, env: &EnvId) -> Result<u64, YunError> {
        run(&*self.store, env, Access::Read, |txn| {
            let mut total = 0;
            for collection in txn.list_collections()? {
                total += txn.count_documents(&collection)?;
            }
            Ok(total)
        })
        .await
    }

    pub async fn drop_collection(&self, env: &EnvId, name: &str) -> Result<(), YunError> {
        let owned = name.to_owned();
        if !run(&*self.store, env, Access::Write, move |txn| {
            let dropped = txn.drop_collection(&owned)?;
            if dropped {
                txn.append_change(&NewChange {
                    target: &owned,
                    op: ChangeOp::Drop.as_str(),
                    key: "",
                    before: None,
                    after: None,
                })?;
            }
            Ok(dropped)
        })
        .await?
        {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Inserts all documents or none. Documents without `_id` get a new one; `owner`
    /// (the caller's openid, when there is one) is stamped as `_openid`.
    /// Validates documents and gives each its `_id` (and `_openid` when `owner` is set).
    pub(crate) fn prepare_inserts(
        &self,
        docs: Vec<Value>,
        owner: Option<&str>,
    ) -> Result<Vec<(String, Value)>, YunError> {
        let mut prepared = Vec::with_capacity(docs.len());
        for doc in docs {
            let Value::Object(mut map) = doc else {
                return Err(YunError::invalid_param("a document must be an object"));
            };
            if let Some(bad) = map.keys().find(|k| k.starts_with('$') || k.is_empty()) {
                return Err(YunError::new(
                    ErrorCode::DatabaseInvalidOperator,
                    format!("field name {bad:?} is not allowed"),
                ));
            }
            let id = match map.get("_id") {
                Some(v) => id_text(v)?,
                None => new_sortable_id(),
            };
            let mut out = Map::with_capacity(map.len() + 2);
            out.insert("_id".into(), Value::String(id.clone()));
            map.shift_remove("_id");
            if let Some(openid) = owner {
                map.insert("_openid".into(), Value::String(openid.to_owned()));
            }
            out.extend(map);
            let doc = Value::Object(out);
            self.check_size(&doc)?;
            prepared.push((id, doc));
        }
        Ok(prepared)
    }

    pub async fn insert(
        &self,
        env: &EnvId,
        collection: &str,
        docs: Vec<Value>,
        owner: Option<&str>,
        guard: Option<WriteGuard>,
    ) -> Result<Vec<String>, YunError> {
        let prepared = self.prepare_inserts(docs, owner)?;
        let collection = collection.to_owned();
        let access = if prepared.len() <= SHORT_INSERT {
            Access::PointWrite
        } else {
            Access::Write
        };
        run(&*self.store, env, access, move |txn| {
            require_collection(txn, &collection)?;
            let mut writer = IndexedWriter::new(txn, &collection)?;
            for (id, doc) in &prepared {
                check_guard(&guard, None, Some(doc))?;
                writer.insert(id, doc)?;
            }
            Ok(prepared.into_iter().map(|(id, _)| id).collect())
        })
        .await
    }

    /// The platform's limits, which an env's settings may override.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Finds documents; `limits` are the env's (default and maximum per call).
    pub async fn find(
        &self,
        env: &EnvId,
        collection: &str,
        q: Find,
        limits: &Limits,
    ) -> Result<Vec<Value>, YunError> {
        let limit = match q.limit {
            None => limits.default_limit,
            Some(n) if n > limits.max_limit => {
                return Err(YunError::invalid_param(format!(
                    "limit {n} is over this env's maximum of {} per call; page with skip",
                    limits.max_limit
                )))
            }
            Some(n) => n,
        };
        let (docs, report) = self
            .find_reported(env, collection, q, limit, *limits)
            .await?;
        if let Some(report) = report {
            self.slow.record(env.as_str(), report);
        }
        Ok(docs)
    }

    async fn find_reported(
        &self,
        env: &EnvId,
        collection: &str,
        q: Find,
        limit: usize,
        limits: Limits,
    ) -> Result<(Vec<Value>, Option<QueryReport>), YunError> {
        let collection = collection.to_owned();
        let access = read_access(&q.filter);
        let (sizes, env_name) = (self.sizes.clone(), env.to_string());
        read_bounded(&*self.store, env, access, move |txn, budget| {
            find_in(
                txn,
                (&sizes, &env_name),
                &collection,
                &q,
                limit,
                budget,
                &limits,
            )
        })
        .await
    }

    /// Runs a find and answers how: the plan, index entries and documents examined,
    /// documents returned, and the time it took (`yun db explain`).
    pub async fn explain(
        &self,
        env: &EnvId,
        collection: &str,
        q: Find,
        limits: &Limits,
    ) -> Result<QueryReport, YunError> {
        let limit = q
            .limit
            .unwrap_or(limits.default_limit)
            .min(limits.max_limit);
        let (_, report) = self
            .find_reported(
                env,
                collection,
                q,
                limit,
                Limits {
                    slow_query: Duration::ZERO,
                    ..*limits
                },
            )
            .await?;
        report.ok_or_else(|| YunError::internal("an explained query made no report"))
    }

    /// The env's queries slower than its threshold, newest first.
    pub fn slow_queries(&self, env: &EnvId) -> Vec<QueryReport> {
        self.slow.list(env.as_str())
    }

    pub async fn count(
        &self,
        env: &EnvId,
        collection: &str,
        filter: Filter,
        limits: &Limits,
    ) -> Result<u64, YunError> {
        let collection = collection.to_owned();
        let (sizes, env_name) = (self.sizes.clone(), env.to_string());
        let report_after = limits.slow_query;
        let (n, report) = read_bounded(
            &*self.store,
            env,
            read_access(&filter),
            move |txn, budget| {
                count_in(
                    txn,
                    (&sizes, &env_name),
                    &collection,
                    &filter,
                    budget,
                    report_after,
                )
            },
        )
        .await?;
        if let Some(report) = report {
            self.slow.record(env.as_str(), report);
        }
        Ok(n)
    }

    /// Updates the first (or, with `multi`, every) matching document; with `upsert`,
    /// inserts one when nothing matches. Returns the updated documents too.
    pub async fn update(
        &self,
        env: &EnvId,
        collection: &str,
        filter: Filter,
        change: Change,
        mode: UpdateMode,
    ) -> Result<(Updated, Vec<Value>), YunError> {
        let UpdateMode {
            multi,
            upsert,
            guard,
        } = mode;
        // Refused even when nothing matches, so a typo never passes silently.
        if let Change::Operators(ops) = &change {
            update::check(ops)?;
        }
        let limits = self.limits;
        let collection = collection.to_owned();
        let (sizes, env_name) = (self.sizes.clone(), env.to_string());
        let access = write_access(&filter);
        run(&*self.store, env, access, move |txn| {
            require_collection(txn, &collection)?;
            for attempt in 1.. {
                let mut outcome = Updated::default();
                let mut written = Vec::new();
                let ids = matching_ids(txn, (&sizes, &env_name), &collection, &filter, !multi)?;
                let mut writer = IndexedWriter::new(txn, &collection)?;
                let (docs, changed_meanwhile) = writer.still_matching(&ids, &filter)?;
                for (id, doc) in &docs {
                    let new = match &change {
                        Change::Operators(ops) => update::apply(doc, ops)?,
                        Change::Replace(data) => update::replace(doc, data)?,
                    };
                    check_guard(&guard, Some(doc), Some(&new))?;
                    outcome.matched += 1;
                    if new != *doc {
                        let bytes = new.to_string().len();
                        if bytes > limits.max_document_bytes {
                            return Err(YunError::invalid_param(format!(
                                "document would be {bytes} bytes, over the limit"
                            )));
                        }
                        writer.replace(id, &new)?;
                        outcome.updated += 1;
                    }
                    written.push(new);
                }
                let retry = attempt < CONCURRENT_WRITE_RETRIES;
                if outcome.matched == 0 && !multi && changed_meanwhile && retry {
                    continue;
                }
                if outcome.matched == 0 {
                    if let Some(seed) = &upsert {
                        let base = update::replace(seed, &Value::Object(Map::new()))?;
                        let mut new = match &change {
                            Change::Operators(ops) => update::apply(seed, ops)?,
                            Change::Replace(data) => update::replace(&base, data)?,
                        };
                        let id = match new.get("_id") {
                            Some(v) => id_text(v)?,
                            None => new_sortable_id(),
                        };
                        if let Value::Object(m) = &mut new {
                            m.shift_remove("_id");
                            let mut with_id = Map::new();
                            with_id.insert("_id".into(), Value::String(id.clone()));
                            with_id.extend(std::mem::take(m));
                            *m = with_id;
                        }
                        // Another writer's upsert of this `_id` committed meanwhile: update
                        // that document instead.
                        if retry && writer.get(&id)?.is_some() {
                            continue;
                        }
                        check_guard(&guard, None, Some(&new))?;
                        writer.insert(&id, &new)?;
                        outcome.upserted_id = Some(id);
                        written.push(new);
                    }
                }
                return Ok((outcome, written));
            }
            unreachable!("the last attempt returns")
        })
        .await
    }

    /// Imports documents all or nothing: `upsert` replaces documents whose `_id` exists,
    /// otherwise a duplicate `_id` fails the whole import. Returns (inserted, replaced).
    pub async fn import(
        &self,
        env: &EnvId,
        collection: &str,
        docs: Vec<Value>,
        upsert: bool,
    ) -> Result<(u64, u64), YunError> {
        let prepared = self.prepare_inserts(docs, None)?;
        let collection = collection.to_owned();
        run(&*self.store, env, Access::Write, move |txn| {
            require_collection(txn, &collection)?;
            let existing: Vec<bool> = prepared
                .iter()
                .map(|(id, _)| txn.get(&collection, id).map(|d| d.is_some()))
                .collect::<Result<_, _>>()?;
            let mut writer = IndexedWriter::new(txn, &collection)?;
            let (mut inserted, mut replaced) = (0, 0);
            for ((id, doc), exists) in prepared.iter().zip(existing) {
                if exists && upsert {
                    writer.replace(id, doc)?;
                    replaced += 1;
                } else {
                    writer.insert(id, doc)?;
                    inserted += 1;
                }
            }
            Ok((inserted, replaced))
        })
        .await
    }

    /// Creates an index and fills it from the existing documents, in one transaction; a
    /// unique index over duplicate values is refused and leaves nothing behind.
    pub async fn create_index(
        &self,
        env: &EnvId,
        collection: &str,
        mut spec: IndexSpec,
    ) -> Result<(), YunError> {
        spec.check()?;
        let collection = collection.to_owned();
        run(&*self.store, env, Access::Write, move |txn| {
            // Before anything else reads the collection: a backend with several writers
            // holds it exclusively from here (see `DocTxn::create_index`), and taking that
            // after a shared hold would deadlock two index builds.
            if !txn.create_index(&collection, &spec)? {
                require_collection(txn, &collection)?;
                return Err(YunError::new(
                    ErrorCode::AlreadyExists,
                    format!("index {} already exists", spec.name),
                ));
            }
            require_collection(txn, &collection)?;
            let mut seen = std::collections::HashSet::new();
            // In batches: the entries are written between reads of the collection.
            let mut after: Option<String> = None;
            loop {
                let mut batch: Vec<(String, Value)> = Vec::new();
                txn.scan_each(&collection, after.as_deref(), &mut |id, text| {
                    let doc = serde_json::from_str(text).map_err(|e| {
                        YunError::internal(format!("a stored document does not decode: {e}"))
                    })?;
                    batch.push((id.to_owned(), doc));
                    Ok(batch.len() < INDEX_BUILD_BATCH)
                })?;
                for (id, doc) in &batch {
                    let keys = index::keys(&spec, doc)?;
                    if !spec.multikey && index::has_array(&spec, doc)? {
                        txn.mark_multikey(&collection, &spec)?;
                        spec.multikey = true;
                    }
                    if spec.unique && keys.iter().any(|k| !seen.insert(k.clone())) {
                        return Err(index::duplicate(&spec));
                    }
                    txn.put_index_keys(&collection, &spec.name, id, &keys)?;
                }
                if batch.len() < INDEX_BUILD_BATCH {
                    return Ok(());
                }
                after = batch.pop().map(|(id, _)| id);
            }
        })
        .await
    }

    pub async fn list_indexes(
        &self,
        env: &EnvId,
        collection: &str,
    ) -> Result<Vec<IndexSpec>, YunError> {
        let collection = collection.to_owned();
        run(&*self.store, env, Access::Point, move |txn| {
            require_collection(txn, &collection)?;
            txn.list_indexes(&collection)
        })
        .await
    }

    pub async fn drop_index(
        &self,
        env: &EnvId,
        collection: &str,
        name: &str,
    ) -> Result<(), YunError> {
        let (collection, owned) = (collection.to_owned(), name.to_owned());
        if !run(&*self.store, env, Access::Write, move |txn| {
            txn.drop_index(&collection, &owned)
        })
        .await?
        {
            return Err(YunError::new(
                ErrorCode::NotFound,
                format!("no index {name}"),
            ));
        }
        Ok(())
    }

    /// Runs an aggregation pipeline over the collection in one snapshot.
    pub async fn aggregate(
        &self,
        env: &EnvId,
        collection: &str,
        stages: Vec<crate::aggregate::Stage>,
    ) -> Result<Vec<Value>, YunError> {
        let collection = collection.to_owned();
        let (sizes, env_name) = (self.sizes.clone(), env.to_string());
        run(&*self.store, env, Access::Read, move |txn| {
            require_collection(txn, &collection)?;
            let (docs, rest) = leading_stages(txn, (&sizes, &env_name), &collection, &stages)?;
            let mut load = |name: &str| {
                if txn.collection_exists(name)? {
                    all_documents(txn, name)
                } else {
                    Ok(Vec::new())
                }
            };
            crate::aggregate::run(rest, docs, &mut load)
        })
        .await
    }

    pub async fn remove(
        &self,
        env: &EnvId,
        collection: &str,
        filter: Filter,
        multi: bool,
        guard: Option<WriteGuard>,
    ) -> Result<u64, YunError> {
        let collection = collection.to_owned();
        let (sizes, env_name) = (self.sizes.clone(), env.to_string());
        let access = write_access(&filter);
        run(&*self.store, env, access, move |txn| {
            require_collection(txn, &collection)?;
            for attempt in 1.. {
                let mut deleted = 0;
                let ids = matching_ids(txn, (&sizes, &env_name), &collection, &filter, !multi)?;
                let mut writer = IndexedWriter::new(txn, &collection)?;
                let (docs, changed_meanwhile) = writer.still_matching(&ids, &filter)?;
                for (id, doc) in &docs {
                    check_guard(&guard, Some(doc), None)?;
                    if writer.delete(id)? {
                        deleted += 1;
                    }
                }
                if deleted == 0 && !multi && changed_meanwhile && attempt < CONCURRENT_WRITE_RETRIES
                {
                    continue;
                }
                return Ok(deleted);
            }
            unreachable!("the last attempt returns")
        })
        .await
    }
}
