//! Multi-document transactions, optimistic: a transaction buffers its writes and
//! remembers every document it looked at with that document's version (and value, so
//! reading it again gives the same answer). Commit re-checks those versions inside one
//! storage write transaction and applies the writes; if any document changed, the
//! commit fails with `DATABASE_TRANSACTION_CONFLICT` and nothing is written (the SDK's
//! `runTransaction` then retries). Operations inside a transaction address documents
//! by `_id`, as CloudBase's transactions do. Abandoned transactions expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use yun_types::{new_id, EnvId, ErrorCode, YunError};

use crate::db::{require_collection, Change, DocDb, IndexedWriter, Updated};
use crate::filter::Filter;
use crate::find::Projection;
use crate::store::{run, Access};
use crate::update;

/// A transaction untouched this long is discarded.
pub const TRANSACTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Key = (String, String);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    doc: Option<Value>,
    version: Option<u64>,
}

/// What a transaction has seen and will write, kept between its requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "StoredState", into = "StoredState")]
pub struct TxnState {
    seen: HashMap<Key, Seen>,
    /// `None` deletes.
    writes: BTreeMap<Key, Option<Value>>,
}

/// [`TxnState`] as JSON has it: maps keyed by (collection, id) become lists of pairs.
#[derive(Serialize, Deserialize)]
struct StoredState {
    seen: Vec<(Key, Seen)>,
    writes: Vec<(Key, Option<Value>)>,
}

impl From<StoredState> for TxnState {
    fn from(s: StoredState) -> Self {
        Self {
            seen: s.seen.into_iter().collect(),
            writes: s.writes.into_iter().collect(),
        }
    }
}

impl From<TxnState> for StoredState {
    fn from(s: TxnState) -> Self {
        Self {
            seen: s.seen.into_iter().collect(),
            writes: s.writes.into_iter().collect(),
        }
    }
}

/// Where open transactions live between their requests. Each request of a transaction
/// may reach another node of a cluster, so a shared backend keeps them in the database;
/// one process keeps them in memory ([`InProcessTransactions`]). A transaction belongs to
/// one env: another env's requests find nothing. One idle past
/// [`TRANSACTION_IDLE_TIMEOUT`] is gone.
#[async_trait]
pub trait OpenTransactions: Send + Sync {
    /// Opens transaction `id` with nothing seen or written.
    async fn begin(&self, env: &EnvId, id: &str) -> Result<(), YunError>;
    /// Its state and revision, when it is open.
    async fn load(&self, env: &EnvId, id: &str) -> Result<Option<(TxnState, u64)>, YunError>;
    /// Stores `state` if the transaction is still at `revision`; false when another
    /// request changed or ended it first (load again and redo).
    async fn save(
        &self,
        env: &EnvId,
        id: &str,
        state: &TxnState,
        revision: u64,
    ) -> Result<bool, YunError>;
    /// Ends it, returning its last state when it was open.
    async fn end(&self, env: &EnvId, id: &str) -> Result<Option<TxnState>, YunError>;
}

struct OpenInProcess {
    env: EnvId,
    touched: Instant,
    state: TxnState,
    revision: u64,
}

/// Open transactions in this process's memory: the embedded store's, one process.
#[derive(Default)]
pub struct InProcessTransactions {
    open: Mutex<HashMap<String, OpenInProcess>>,
}

impl InProcessTransactions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenInProcess>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live<'a>(
        open: &'a mut HashMap<String, OpenInProcess>,
        env: &EnvId,
        id: &str,
    ) -> Option<&'a mut OpenInProcess> {
        open.get_mut(id)
            .filter(|t| &t.env == env && t.touched.elapsed() < TRANSACTION_IDLE_TIMEOUT)
    }
}

#[async_trait]
impl OpenTransactions for InProcessTransactions {
    async fn begin(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        let mut open = self.lock();
        open.retain(|_, t| t.touched.elapsed() < TRANSACTION_IDLE_TIMEOUT);
        open.insert(
            id.to_owned(),
            OpenInProcess {
                env: env.clone(),
                touched: Instant::now(),
                state: TxnState::default(),
                revision: 0,
            },
        );
        Ok(())
    }

    async fn load(&self, env: &EnvId, id: &str) -> Result<Option<(TxnState, u64)>, YunError> {
        Ok(Self::live(&mut self.lock(), env, id).map(|t| (t.state.clone(), t.revision)))
    }

    async fn save(
        &self,
        env: &EnvId,
        id: &str,
        state: &TxnState,
        revision: u64,
    ) -> Result<bool, YunError> {
        let mut open = self.lock();
        let Some(t) = Self::live(&mut open, env, id).filter(|t| t.revision == revision) else {
            return Ok(false);
        };
        t.state = state.clone();
        t.revision += 1;
        t.touched = Instant::now();
        Ok(true)
    }

    async fn end(&self, env: &EnvId, id: &str) -> Result<Option<TxnState>, YunError> {
        let mut open = self.lock();
        if Self::live(&mut open, env, id).is_none() {
            return Ok(None);
        }
        Ok(open.remove(id).map(|t| t.state))
    }
}

fn gone(id: &str) -> YunError {
    YunError::invalid_param(format!(
        "transaction {id} does not exist, has ended or has expired"
    ))
}

fn conflict() -> YunError {
    YunError::new(
        ErrorCode::TransactionConflict,
        "a document of this transaction was changed by another write; retry",
    )
}

fn pinned(filter: &Filter) -> Result<Vec<String>, YunError> {
    filter.id_candidates().ok_or_else(|| {
        YunError::invalid_param("inside a transaction, documents are addressed by _id")
    })
}

impl DocDb {
    pub async fn start_transaction(&self, env: &EnvId) -> Result<String, YunError> {
        let id = new_id("txn");
        self.store().open_transactions().begin(env, &id).await?;
        Ok(id)
    }

    pub async fn abort_transaction(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        match self.store().open_transactions().end(env, id).await? {
            Some(_) => Ok(()),
            None => Err(gone(id)),
        }
    }

    /// Applies `change` to the transaction's state, again on a fresh copy when another
    /// request of the same transaction saved first.
    async fn change_state<T>(
        &self,
        env: &EnvId,
        txn: &str,
        mut change: impl FnMut(&mut TxnState) -> T,
    ) -> Result<T, YunError> {
        let open = self.store().open_transactions();
        loop {
            let (mut state, revision) = open.load(env, txn).await?.ok_or_else(|| gone(txn))?;
            let out = change(&mut state);
            if open.save(env, txn, &state, revision).await? {
                return Ok(out);
            }
        }
    }

    /// Takes the current view of `keys`, reading from storage what the transaction has
    /// not seen yet; every document looked at is remembered with its version.
    async fn view(
        &self,
        env: &EnvId,
        txn: &str,
        keys: Vec<Key>,
    ) -> Result<Vec<Option<Value>>, YunError> {
        let (state, _) = self
            .store()
            .open_transactions()
            .load(env, txn)
            .await?
            .ok_or_else(|| gone(txn))?;
        let unseen: Vec<Key> = keys
            .iter()
            .filter(|k| !state.writes.contains_key(*k) && !state.seen.contains_key(*k))
            .cloned()
            .collect();
        let fetched = run(&**self.store(), env, Access::Point, move |t| {
            unseen
                .into_iter()
                .map(|k| Ok((t.get_versioned(&k.0, &k.1)?, k)))
                .collect::<Result<Vec<_>, YunError>>()
        })
        .await?;
        self.change_state(env, txn, |state| {
            for (found, key) in &fetched {
                let (doc, version) = found
                    .clone()
                    .map_or((None, None), |(d, v)| (Some(d), Some(v)));
                state
                    .seen
                    .entry(key.clone())
                    .or_insert(Seen { doc, version });
            }
            keys.iter()
                .map(|k| match state.writes.get(k) {
                    Some(w) => w.clone(),
                    None => state.seen.get(k).and_then(|s| s.doc.clone()),
                })
                .collect()
        })
        .await
    }

    async fn buffer(
        &self,
        env: &EnvId,
        txn: &str,
        writes: Vec<(Key, Option<Value>)>,
    ) -> Result<(), YunError> {
        self.change_state(env, txn, |state| {
            state.writes.extend(writes.iter().cloned())
        })
        .await
    }

    async fn ensure_collection(&self, env: &EnvId, collection: &str) -> Result<(), YunError> {
        let name = collection.to_owned();
        run(&**self.store(), env, Access::Point, move |t| {
            require_collection(t, &name)
        })
        .await
    }

    pub async fn txn_find(
        &self,
        env: &EnvId,
        txn: &str,
        collection: &str,
        filter: &Filter,
        projection: &Projection,
    ) -> Result<Vec<Value>, YunError> {
        self.ensure_collection(env, collection).await?;
        let keys = pinned(filter)?
            .into_iter()
            .map(|id| (collection.to_owned(), id))
            .collect();
        let docs = self.view(env, txn, keys).await?;
        Ok(docs
            .into_iter()
            .flatten()
            .filter(|d| filter.matches(d))
            .map(|d| projection.apply(&d))
            .collect())
    }

    pub async fn txn_insert(
        &self,
        env: &EnvId,
        txn: &str,
        collection: &str,
        docs: Vec<Value>,
    ) -> Result<Vec<String>, YunError> {
        self.ensure_collection(env, collection).await?;
        let prepared = self.prepare_inserts(docs, None)?;
        let keys = prepared
            .iter()
            .map(|(id, _)| (collection.to_owned(), id.clone()))
            .collect();
        if self.view(env, txn, keys).await?.iter().any(Option::is_some) {
            return Err(YunError::new(
                ErrorCode::DuplicateKey,
                "E11000 duplicate key error: a document with this _id already exists",
            ));
        }
        let ids = prepared.iter().map(|(id, _)| id.clone()).collect();
        self.buffer(
            env,
            txn,
            prepared
                .into_iter()
                .map(|(id, doc)| ((collection.to_owned(), id), Some(doc)))
                .collect(),
        )
        .await?;
        Ok(ids)
    }

    pub async fn txn_update(
        &self,
        env: &EnvId,
        txn: &str,
        collection: &str,
        filter: &Filter,
        change: &Change,
        upsert: Option<Value>,
    ) -> Result<Updated, YunError> {
        self.ensure_collection(env, collection).await?;
        let ids = pinned(filter)?;
        let keys: Vec<Key> = ids
            .iter()
            .map(|id| (collection.to_owned(), id.clone()))
            .collect();
        let current = self.view(env, txn, keys.clone()).await?;
        let mut outcome = Updated::default();
        let mut writes = Vec::new();
        for (key, doc) in keys.into_iter().zip(current) {
            let Some(doc) = doc.filter(|d| filter.matches(d)) else {
                continue;
            };
            let new = match change {
                Change::Operators(ops) => update::apply(&doc, ops)?,
                Change::Replace(data) => update::replace(&doc, data)?,
            };
            outcome.matched += 1;
            if new != doc {
                outcome.updated += 1;
                writes.push((key, Some(new)));
            }
        }
        if outcome.matched == 0 {
            if let (Some(seed), Some(id)) = (upsert, ids.first()) {
                let mut base = Map::new();
                base.insert("_id".into(), Value::String(id.clone()));
                let new = match change {
                    Change::Operators(ops) => update::apply(&seed, ops)?,
                    Change::Replace(data) => update::replace(&Value::Object(base), data)?,
                };
                writes.push(((collection.to_owned(), id.clone()), Some(new)));
                outcome.upserted_id = Some(id.clone());
            }
        }
        self.buffer(env, txn, writes).await?;
        Ok(outcome)
    }

    pub async fn txn_remove(
        &self,
        env: &EnvId,
        txn: &str,
        collection: &str,
        filter: &Filter,
    ) -> Result<u64, YunError> {
        self.ensure_collection(env, collection).await?;
        let keys: Vec<Key> = pinned(filter)?
            .into_iter()
            .map(|id| (collection.to_owned(), id))
            .collect();
        let current = self.view(env, txn, keys.clone()).await?;
        let removed: Vec<(Key, Option<Value>)> = keys
            .into_iter()
            .zip(current)
            .filter(|(_, d)| d.as_ref().is_some_and(|d| filter.matches(d)))
            .map(|(k, _)| (k, None))
            .collect();
        let n = removed.len() as u64;
        self.buffer(env, txn, removed).await?;
        Ok(n)
    }

    /// Checks that nothing the transaction saw has changed, then writes its changes,
    /// all in one storage transaction. The transaction ends either way.
    pub async fn commit_transaction(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        let state = self
            .store()
            .open_transactions()
            .end(env, id)
            .await?
            .ok_or_else(|| gone(id))?;
        run(&**self.store(), env, Access::Write, move |t| {
            // In key order, as the writes below: transactions of a backend with several
            // writers lock what they check in one order, so two commits wait rather than
            // deadlock.
            let mut seen: Vec<_> = state.seen.iter().collect();
            seen.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for ((collection, doc_id), seen) in seen {
                let now = t.get_versioned(collection, doc_id)?.map(|(_, v)| v);
                if now != seen.version {
                    return Err(conflict());
                }
            }
            for ((collection, doc_id), write) in state.writes {
                let exists = t.get_versioned(&collection, &doc_id)?.is_some();
                if write.is_some() && !exists {
                    require_collection(t, &collection)?;
                }
                let mut writer = IndexedWriter::new(t, &collection)?;
                match write {
                    None => {
                        writer.delete(&doc_id)?;
                    }
                    Some(doc) if exists => writer.replace(&doc_id, &doc)?,
                    Some(doc) => writer.insert(&doc_id, &doc)?,
                }
            }
            Ok(())
        })
        .await
    }
}
