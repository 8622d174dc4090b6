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

#[derive(Debug)]
struct Seen {
    doc: Option<Value>,
    version: Option<u64>,
}

#[derive(Debug)]
struct TxnState {
    env: EnvId,
    touched: Instant,
    seen: HashMap<Key, Seen>,
    /// `None` deletes.
    writes: BTreeMap<Key, Option<Value>>,
}

#[derive(Default)]
pub struct Transactions {
    open: Mutex<HashMap<String, TxnState>>,
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

impl Transactions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TxnState>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DocDb {
    pub fn start_transaction(&self, env: &EnvId) -> String {
        let mut open = self.transactions.lock();
        open.retain(|_, t| t.touched.elapsed() < TRANSACTION_IDLE_TIMEOUT);
        let id = new_id("txn");
        open.insert(
            id.clone(),
            TxnState {
                env: env.clone(),
                touched: Instant::now(),
                seen: HashMap::new(),
                writes: BTreeMap::new(),
            },
        );
        id
    }

    pub fn abort_transaction(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        let mut open = self.transactions.lock();
        match open.get(id) {
            Some(t) if &t.env == env => {
                open.remove(id);
                Ok(())
            }
            _ => Err(gone(id)),
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
        let unseen: Vec<Key> = {
            let mut open = self.transactions.lock();
            let state = open
                .get_mut(txn)
                .filter(|t| &t.env == env && t.touched.elapsed() < TRANSACTION_IDLE_TIMEOUT)
                .ok_or_else(|| gone(txn))?;
            state.touched = Instant::now();
            keys.iter()
                .filter(|k| !state.writes.contains_key(*k) && !state.seen.contains_key(*k))
                .cloned()
                .collect()
        };
        let fetched = run(&**self.store(), env, Access::Point, move |t| {
            unseen
                .into_iter()
                .map(|k| Ok((t.get_versioned(&k.0, &k.1)?, k)))
                .collect::<Result<Vec<_>, YunError>>()
        })
        .await?;
        let mut open = self.transactions.lock();
        let state = open.get_mut(txn).ok_or_else(|| gone(txn))?;
        for (found, key) in fetched {
            let (doc, version) = found.map_or((None, None), |(d, v)| (Some(d), Some(v)));
            state.seen.entry(key).or_insert(Seen { doc, version });
        }
        Ok(keys
            .iter()
            .map(|k| match state.writes.get(k) {
                Some(w) => w.clone(),
                None => state.seen.get(k).and_then(|s| s.doc.clone()),
            })
            .collect())
    }

    fn buffer(&self, txn: &str, writes: Vec<(Key, Option<Value>)>) -> Result<(), YunError> {
        let mut open = self.transactions.lock();
        let state = open.get_mut(txn).ok_or_else(|| gone(txn))?;
        state.writes.extend(writes);
        Ok(())
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
            txn,
            prepared
                .into_iter()
                .map(|(id, doc)| ((collection.to_owned(), id), Some(doc)))
                .collect(),
        )?;
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
        self.buffer(txn, writes)?;
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
        self.buffer(txn, removed)?;
        Ok(n)
    }

    /// Checks that nothing the transaction saw has changed, then writes its changes,
    /// all in one storage transaction. The transaction ends either way.
    pub async fn commit_transaction(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        let state = {
            let mut open = self.transactions.lock();
            match open.get(id) {
                Some(t) if &t.env == env && t.touched.elapsed() < TRANSACTION_IDLE_TIMEOUT => {
                    open.remove(id).ok_or_else(|| gone(id))?
                }
                _ => return Err(gone(id)),
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Limits;
    use crate::sqlite::SqliteDocStore;
    use serde_json::json;
    use std::sync::Arc;

    fn by_id(id: &str) -> Filter {
        Filter::parse(&json!({ "_id": id })).unwrap()
    }

    #[tokio::test]
    async fn transactions_are_isolated_per_env_and_detect_concurrent_inserts_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let db = DocDb::new(
            Arc::new(SqliteDocStore::open(&dir.path().join("d.db")).unwrap()),
            Limits::default(),
        );
        let (a, b) = (EnvId::parse("a").unwrap(), EnvId::parse("b").unwrap());
        db.create_collection(&a, "c").await.unwrap();
        db.insert(&a, "c", vec![json!({"_id": "keep", "n": 1})], None, None)
            .await
            .unwrap();

        let t = db.start_transaction(&a);
        assert!(
            db.txn_find(&b, &t, "c", &by_id("keep"), &Projection::All)
                .await
                .is_err(),
            "another env does not see the transaction"
        );
        assert!(db.commit_transaction(&b, &t).await.is_err());

        // A concurrent insert of the _id this transaction inserts is a conflict.
        db.txn_insert(&a, &t, "c", vec![json!({"_id": "new"})])
            .await
            .unwrap();
        db.insert(
            &a,
            "c",
            vec![json!({"_id": "new", "by": "other"})],
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            db.commit_transaction(&a, &t).await.unwrap_err().code,
            ErrorCode::TransactionConflict
        );
        assert!(
            db.commit_transaction(&a, &t).await.is_err(),
            "a failed commit ends the transaction"
        );

        // A delete commits; the document is gone afterwards, and nothing else changed.
        let t = db.start_transaction(&a);
        assert_eq!(db.txn_remove(&a, &t, "c", &by_id("keep")).await.unwrap(), 1);
        assert_eq!(
            db.txn_find(&a, &t, "c", &by_id("keep"), &Projection::All)
                .await
                .unwrap(),
            Vec::<Value>::new()
        );
        db.commit_transaction(&a, &t).await.unwrap();
        assert_eq!(
            db.count(&a, "c", Filter::all(), &Limits::default())
                .await
                .unwrap(),
            1
        );
    }
}
