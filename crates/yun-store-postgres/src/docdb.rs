//! The document store on PostgreSQL: documents as JSON text keyed by (env, collection,
//! `_id`), index entries as byte-string keys, the same layout as the SQLite backend, so
//! the planner and executor above the seam are the same.
//!
//! Isolation, stated once for the trait's two kinds of transaction:
//! - reads run in one `REPEATABLE READ` snapshot;
//! - writes run `READ COMMITTED`, and every document a write reads it reads `FOR UPDATE`:
//!   a read-modify-write (an update, an optimistic transaction's commit re-checking
//!   versions) holds the row until it commits, so concurrent writers of one document
//!   take turns and none is lost;
//! - a unique index is a unique constraint of the database (a partial unique index over
//!   its entries), so two nodes inserting one key cannot both commit;
//! - writers hold their collection in share mode (an advisory lock) and dropping it or
//!   changing its indexes holds it exclusively, so no write misses an index built
//!   meanwhile;
//! - deadlocks and serialization failures answer `DATABASE_TRANSACTION_CONFLICT`.

use async_trait::async_trait;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use yun_docdb::index::{IndexSpec, KeyRange};
use yun_docdb::store::{ChangeLog, DocStore, DocTxn, NewChange, Visit, Work};
use yun_docdb::txn::{OpenTransactions, TxnState, TRANSACTION_IDLE_TIMEOUT};
use yun_types::{EnvId, ErrorCode, YunError};

use crate::changelog::PgChangeLog;
use crate::{describe, pg_err, unique_violation, Postgres, Txn};

fn migrations() -> Vec<String> {
    vec![
        r#"
CREATE TABLE doc_collections (
    env text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (env, name)
);
CREATE TABLE doc_documents (
    env text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    doc text NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (env, collection, id)
);
CREATE TABLE doc_indexes (
    env text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    spec text NOT NULL,
    PRIMARY KEY (env, collection, name)
);
CREATE TABLE doc_index_entries (
    env text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    id text COLLATE "C" NOT NULL,
    uniq boolean NOT NULL,
    PRIMARY KEY (env, collection, name, key, id)
);
CREATE INDEX doc_index_entries_by_document ON doc_index_entries (env, collection, name, id);
CREATE UNIQUE INDEX doc_index_entries_unique ON doc_index_entries (env, collection, name, key) WHERE uniq;
"#
        .to_owned(),
        PgChangeLog::migration("doc"),
        // Open transactions: any node may serve a transaction's next request.
        r#"
CREATE TABLE doc_transactions (
    id text COLLATE "C" PRIMARY KEY,
    env text COLLATE "C" NOT NULL,
    state text NOT NULL,
    revision bigint NOT NULL,
    touched_at timestamptz NOT NULL
);
CREATE INDEX doc_transactions_by_touch ON doc_transactions (touched_at);
"#
        .to_owned(),
    ]
}

/// Holds a document's `_id` (`$1` env, `$2` collection, `$3` id) until commit, present
/// or not (a macro so the statements using it stay literals).
macro_rules! id_lock {
    () => {
        "pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || $3, 0))"
    };
}
const HOLD_ID: &str = concat!("SELECT ", id_lock!());
/// Holds the `_id` in the same statement, as a transaction that saw it absent does.
const INSERT_HOLDING_ID: &str = concat!(
    "INSERT INTO doc_documents (env, collection, id, doc, version) SELECT $1, $2, $3, $4, $5 FROM (SELECT ",
    id_lock!(),
    ") held ON CONFLICT DO NOTHING"
);

const CATALOG_SQL: &str = "SELECT EXISTS (SELECT 1 FROM doc_collections WHERE env = $1 AND name = $2), \
     coalesce((SELECT json_agg(spec::json ORDER BY name)::text FROM doc_indexes WHERE env = $1 AND collection = $2), '[]')";
const INDEX_RANGE_SQL: &str =
    "SELECT key, id FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key >= $4 AND key < $5 ORDER BY key, id";
const INDEX_RANGE_BACKWARD_SQL: &str =
    "SELECT key, id FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key >= $4 AND key < $5 ORDER BY key DESC, id DESC";
const INDEX_RANGE_AFTER_SQL: &str =
    "SELECT key, id FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key >= $4 AND key < $5 AND (key, id) > ($6, $7) ORDER BY key, id";
const INDEX_RANGE_BACKWARD_AFTER_SQL: &str =
    "SELECT key, id FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key >= $4 AND key < $5 AND (key, id) < ($6, $7) ORDER BY key DESC, id DESC";

/// The document store on PostgreSQL (see the module's comment for its isolation).
#[derive(Clone)]
pub struct PgDocStore {
    pg: Postgres,
    log: PgChangeLog,
    transactions: PgOpenTransactions,
}

impl PgDocStore {
    pub async fn open(pg: Postgres) -> Result<Self, YunError> {
        pg.migrate("documents", &migrations()).await?;
        Ok(Self {
            log: PgChangeLog::new(pg.clone(), "doc"),
            transactions: PgOpenTransactions { pg: pg.clone() },
            pg,
        })
    }

    async fn run(&self, env: &EnvId, writing: bool, work: Work) -> Result<(), YunError> {
        let (env, log) = (env.to_string(), self.log.clone());
        self.pg
            .transaction(!writing, move |txn| {
                work(&mut PgTxn {
                    txn,
                    env,
                    writing,
                    log: &log,
                    version: None,
                    held: HashSet::new(),
                    unique: HashMap::new(),
                    catalog: HashMap::new(),
                })
            })
            .await
    }
}

struct PgTxn<'a> {
    txn: &'a Txn<'a>,
    env: String,
    writing: bool,
    log: &'a PgChangeLog,
    /// The version this transaction stamps on what it writes; taken at its first write.
    version: Option<i64>,
    /// Collections this write holds in share mode.
    held: HashSet<String>,
    /// Whether each index written to is unique, read once per transaction.
    unique: HashMap<(String, String), bool>,
    /// Whether each collection exists and its indexes, read once per transaction (every
    /// operation asks both: one round trip, not two).
    catalog: HashMap<String, (bool, Vec<IndexSpec>)>,
}

impl PgTxn<'_> {
    /// In a write, holds `collection` in share mode before anything of it is read, so the
    /// set of indexes it then reads stays the set while it writes.
    fn hold(&mut self, collection: &str) -> Result<(), YunError> {
        if self.writing && !self.held.contains(collection) {
            self.txn.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended($1 || '/' || $2, 0))",
                &[&self.env, &collection],
            )?;
            self.held.insert(collection.to_owned());
        }
        Ok(())
    }

    /// Whether `collection` exists, and its indexes (after [`PgTxn::hold`]: a write keeps
    /// to the set it read).
    fn catalog(&mut self, collection: &str) -> Result<&(bool, Vec<IndexSpec>), YunError> {
        if !self.catalog.contains_key(collection) {
            self.hold(collection)?;
            let row = self
                .txn
                .query_opt(CATALOG_SQL, &[&self.env, &collection])?
                .ok_or_else(|| YunError::internal("the catalog query returned no row"))?;
            let indexes = decode(row.get::<_, &str>(1))?;
            self.catalog
                .insert(collection.to_owned(), (row.get(0), indexes));
        }
        Ok(&self.catalog[collection])
    }

    /// Holds `collection` exclusively: its indexes or its existence change.
    fn hold_exclusively(&mut self, collection: &str) -> Result<(), YunError> {
        self.catalog.remove(collection);
        self.txn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
            &[&self.env, &collection],
        )?;
        self.held.insert(collection.to_owned());
        Ok(())
    }

    /// A version only has to differ from the one a transaction saw (see the SQLite
    /// backend): random, 63 bits.
    fn write_version(&mut self) -> i64 {
        *self
            .version
            .get_or_insert_with(|| rand::random::<i64>() & i64::MAX)
    }

    /// The stored text (and version) of one document. With `lock` in a write, the
    /// document is locked until commit, and so is its absence: a transaction that saw no
    /// document holds its `_id` (an advisory lock every insert takes too), so no other
    /// transaction creates it before this one commits.
    fn row(
        &mut self,
        collection: &str,
        id: &str,
        lock: bool,
    ) -> Result<Option<(String, i64)>, YunError> {
        self.hold(collection)?;
        let lock = lock && self.writing;
        let sql = if lock {
            "SELECT doc, version FROM doc_documents WHERE env = $1 AND collection = $2 AND id = $3 FOR UPDATE"
        } else {
            "SELECT doc, version FROM doc_documents WHERE env = $1 AND collection = $2 AND id = $3"
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&self.env, &collection, &id];
        if let Some(row) = self.txn.query_opt(sql, &params)? {
            return Ok(Some((row.get(0), row.get(1))));
        }
        if !lock {
            return Ok(None);
        }
        self.txn.execute(HOLD_ID, &params)?;
        // An insert that held the `_id` may have committed while this waited.
        Ok(self
            .txn
            .query_opt(sql, &params)?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn is_unique(&mut self, collection: &str, index: &str) -> Result<bool, YunError> {
        let key = (collection.to_owned(), index.to_owned());
        if let Some(unique) = self.unique.get(&key) {
            return Ok(*unique);
        }
        let unique = match self.txn.query_opt(
            "SELECT spec FROM doc_indexes WHERE env = $1 AND collection = $2 AND name = $3",
            &[&self.env, &collection, &index],
        )? {
            Some(row) => decode::<IndexSpec>(row.get(0))?.unique,
            None => false,
        };
        self.unique.insert(key, unique);
        Ok(unique)
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YunError> {
    serde_json::from_str(text)
        .map_err(|e| YunError::internal(format!("a stored document does not decode: {e}")))
}

impl DocTxn for PgTxn<'_> {
    fn collection_exists(&mut self, collection: &str) -> Result<bool, YunError> {
        Ok(self.catalog(collection)?.0)
    }

    fn create_collection(&mut self, collection: &str) -> Result<bool, YunError> {
        self.hold(collection)?;
        self.catalog.remove(collection);
        let n = self.txn.execute(
            "INSERT INTO doc_collections (env, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&self.env, &collection, &yun_types::unix_now()],
        )?;
        Ok(n > 0)
    }

    fn list_collections(&mut self) -> Result<Vec<String>, YunError> {
        Ok(self
            .txn
            .query(
                "SELECT name FROM doc_collections WHERE env = $1 ORDER BY name",
                &[&self.env],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn drop_collection(&mut self, collection: &str) -> Result<bool, YunError> {
        self.hold_exclusively(collection)?;
        self.unique.retain(|(c, _), _| c != collection);
        for sql in [
            "DELETE FROM doc_index_entries WHERE env = $1 AND collection = $2",
            "DELETE FROM doc_indexes WHERE env = $1 AND collection = $2",
            "DELETE FROM doc_documents WHERE env = $1 AND collection = $2",
        ] {
            self.txn.execute(sql, &[&self.env, &collection])?;
        }
        let n = self.txn.execute(
            "DELETE FROM doc_collections WHERE env = $1 AND name = $2",
            &[&self.env, &collection],
        )?;
        Ok(n > 0)
    }

    fn scan_each(
        &mut self,
        collection: &str,
        after: Option<&str>,
        visit: Visit<'_, str>,
    ) -> Result<(), YunError> {
        self.hold(collection)?;
        // `_id`s are never empty, so "after nothing" is after "".
        self.txn.each(
            "SELECT id, doc FROM doc_documents WHERE env = $1 AND collection = $2 AND id > $3 ORDER BY id",
            &[&self.env, &collection, &after.unwrap_or("")],
            |row| visit(row.get::<_, &str>(0), row.get::<_, &str>(1)),
        )
    }

    fn get(&mut self, collection: &str, id: &str) -> Result<Option<Value>, YunError> {
        self.row(collection, id, true)?
            .map(|(text, _)| decode(&text))
            .transpose()
    }

    fn count_documents(&mut self, collection: &str) -> Result<u64, YunError> {
        Ok(self
            .txn
            .query_opt(
                "SELECT count(*) FROM doc_documents WHERE env = $1 AND collection = $2",
                &[&self.env, &collection],
            )?
            .map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    /// Never locks: the executor reads candidates this way while matching, and a write
    /// locks (with [`DocTxn::get`]) only what it then changes.
    fn get_text(&mut self, collection: &str, id: &str) -> Result<Option<String>, YunError> {
        Ok(self.row(collection, id, false)?.map(|(text, _)| text))
    }

    fn get_texts(
        &mut self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<Option<String>>, YunError> {
        if let [id] = ids {
            return Ok(vec![self.get_text(collection, id)?]);
        }
        self.hold(collection)?;
        let mut found: HashMap<String, String> = HashMap::with_capacity(ids.len());
        // One key lookup per id whatever the statistics say: `id = ANY($3)` is planned
        // as a scan of the collection with the ids as a filter when they are missing.
        self.txn.each(
            "SELECT u.id, d.doc FROM unnest($3::text[]) AS u(id) CROSS JOIN LATERAL \
             (SELECT doc FROM doc_documents WHERE env = $1 AND collection = $2 AND id = u.id COLLATE \"C\" OFFSET 0) AS d",
            &[&self.env, &collection, &ids],
            |row| {
                found.insert(row.get(0), row.get(1));
                Ok(true)
            },
        )?;
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    fn get_versioned(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(Value, u64)>, YunError> {
        self.row(collection, id, true)?
            .map(|(text, version)| Ok((decode(&text)?, version as u64)))
            .transpose()
    }

    fn insert(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError> {
        self.hold(collection)?;
        let version = self.write_version();
        // `DO NOTHING` rather than an error: an error would end the transaction, and a
        // duplicate is an answer the caller may want to go on from.
        let n = self.txn.execute(
            INSERT_HOLDING_ID,
            &[&self.env, &collection, &id, &text, &version],
        )?;
        if n == 0 {
            return Err(YunError::new(
                ErrorCode::DuplicateKey,
                format!("E11000 duplicate key error: _id {id:?} already exists"),
            ));
        }
        Ok(())
    }

    fn replace(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError> {
        self.hold(collection)?;
        let version = self.write_version();
        self.txn
            .execute(
                "UPDATE doc_documents SET doc = $4, version = $5 WHERE env = $1 AND collection = $2 AND id = $3",
                &[&self.env, &collection, &id, &text, &version],
            )
            .map(drop)
    }

    fn delete(&mut self, collection: &str, id: &str) -> Result<bool, YunError> {
        self.hold(collection)?;
        Ok(self.txn.execute(
            "DELETE FROM doc_documents WHERE env = $1 AND collection = $2 AND id = $3",
            &[&self.env, &collection, &id],
        )? > 0)
    }

    fn append_change(&mut self, change: &NewChange<'_>) -> Result<(), YunError> {
        self.log.append(self.txn, &self.env, change)
    }

    fn list_indexes(&mut self, collection: &str) -> Result<Vec<IndexSpec>, YunError> {
        Ok(self.catalog(collection)?.1.clone())
    }

    fn create_index(&mut self, collection: &str, spec: &IndexSpec) -> Result<bool, YunError> {
        self.hold_exclusively(collection)?;
        self.unique
            .remove(&(collection.to_owned(), spec.name.clone()));
        let text = serde_json::to_string(spec).map_err(YunError::internal)?;
        Ok(self.txn.execute(
            "INSERT INTO doc_indexes (env, collection, name, spec) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&self.env, &collection, &spec.name, &text],
        )? > 0)
    }

    fn drop_index(&mut self, collection: &str, name: &str) -> Result<bool, YunError> {
        self.hold_exclusively(collection)?;
        self.txn.execute(
            "DELETE FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3",
            &[&self.env, &collection, &name],
        )?;
        self.unique
            .remove(&(collection.to_owned(), name.to_owned()));
        Ok(self.txn.execute(
            "DELETE FROM doc_indexes WHERE env = $1 AND collection = $2 AND name = $3",
            &[&self.env, &collection, &name],
        )? > 0)
    }

    fn mark_multikey(&mut self, collection: &str, spec: &IndexSpec) -> Result<(), YunError> {
        self.catalog.remove(collection);
        let text = serde_json::to_string(&IndexSpec {
            multikey: true,
            ..spec.clone()
        })
        .map_err(YunError::internal)?;
        self.txn
            .execute(
                "UPDATE doc_indexes SET spec = $4 WHERE env = $1 AND collection = $2 AND name = $3",
                &[&self.env, &collection, &spec.name, &text],
            )
            .map(drop)
    }

    fn put_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), YunError> {
        let unique = self.is_unique(collection, index)?;
        for key in keys {
            // The conflict target is the entry itself (a document listing one key twice);
            // another document's entry with the key breaks the unique index and fails.
            let result = self.txn.try_execute(
                "INSERT INTO doc_index_entries (env, collection, name, key, id, uniq) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (env, collection, name, key, id) DO NOTHING",
                &[&self.env, &collection, &index, key, &id, &unique],
            );
            match result {
                Ok(_) => {}
                Err(e) if unique_violation(&e).is_some() => {
                    tracing::debug!(error = %describe(&e), "unique index entry taken");
                    return Err(YunError::new(
                        ErrorCode::DuplicateKey,
                        format!("E11000 duplicate key error: index {index} is unique"),
                    ));
                }
                Err(e) => return Err(pg_err(e)),
            }
        }
        Ok(())
    }

    fn delete_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
    ) -> Result<(), YunError> {
        self.txn
            .execute(
                "DELETE FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND id = $4",
                &[&self.env, &collection, &index, &id],
            )
            .map(drop)
    }

    fn index_each(
        &mut self,
        collection: &str,
        index: &str,
        range: &KeyRange,
        after: Option<(&[u8], &str)>,
        backward: bool,
        visit: Visit<'_, [u8]>,
    ) -> Result<(), YunError> {
        self.hold(collection)?;
        let each = |row: &tokio_postgres::Row| visit(row.get::<_, &[u8]>(0), row.get::<_, &str>(1));
        let (env, low, high) = (&self.env, &range.low, &range.high);
        match after {
            None => {
                let sql = if backward {
                    INDEX_RANGE_BACKWARD_SQL
                } else {
                    INDEX_RANGE_SQL
                };
                self.txn
                    .each(sql, &[env, &collection, &index, low, high], each)
            }
            Some((key, id)) => {
                let sql = if backward {
                    INDEX_RANGE_BACKWARD_AFTER_SQL
                } else {
                    INDEX_RANGE_AFTER_SQL
                };
                self.txn
                    .each(sql, &[env, &collection, &index, low, high, &key, &id], each)
            }
        }
    }

    fn index_count(
        &mut self,
        collection: &str,
        index: &str,
        range: &KeyRange,
    ) -> Result<u64, YunError> {
        Ok(self
            .txn
            .query_opt(
                "SELECT count(*) FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key >= $4 AND key < $5",
                &[&self.env, &collection, &index, &range.low, &range.high],
            )?
            .map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    fn index_key_taken(
        &mut self,
        collection: &str,
        index: &str,
        key: &[u8],
        except_id: &str,
    ) -> Result<bool, YunError> {
        Ok(self
            .txn
            .query_opt(
                "SELECT 1 FROM doc_index_entries WHERE env = $1 AND collection = $2 AND name = $3 AND key = $4 AND id <> $5 LIMIT 1",
                &[&self.env, &collection, &index, &key, &except_id],
            )?
            .is_some())
    }
}

#[async_trait]
impl DocStore for PgDocStore {
    async fn read(&self, env: &EnvId, _point: bool, work: Work) -> Result<(), YunError> {
        self.run(env, false, work).await
    }

    async fn write(&self, env: &EnvId, _point: bool, work: Work) -> Result<(), YunError> {
        self.run(env, true, work).await
    }

    fn change_log(&self) -> &dyn ChangeLog {
        &self.log
    }

    fn open_transactions(&self) -> &dyn OpenTransactions {
        &self.transactions
    }
}

/// Open transactions in a table, each row its state as JSON text (not `jsonb`, which
/// would reorder the keys of the documents it holds). Idleness is the database's clock,
/// not a node's.
#[derive(Clone)]
struct PgOpenTransactions {
    pg: Postgres,
}

/// `$3` in seconds: a transaction touched before `now() - $3` is gone.
const LIVE: &str = "touched_at > now() - make_interval(secs => $3)";

fn idle_seconds() -> f64 {
    TRANSACTION_IDLE_TIMEOUT.as_secs_f64()
}

fn state_text(state: &TxnState) -> Result<String, YunError> {
    serde_json::to_string(state).map_err(|e| YunError::internal(format!("transaction state: {e}")))
}

fn state_of(text: &str) -> Result<TxnState, YunError> {
    serde_json::from_str(text).map_err(|e| YunError::internal(format!("transaction state: {e}")))
}

#[async_trait]
impl OpenTransactions for PgOpenTransactions {
    async fn begin(&self, env: &EnvId, id: &str) -> Result<(), YunError> {
        self.pg
            .execute(
                "DELETE FROM doc_transactions WHERE touched_at < now() - make_interval(secs => $1)",
                &[&idle_seconds()],
            )
            .await?;
        let empty = state_text(&TxnState::default())?;
        self.pg
            .execute(
                "INSERT INTO doc_transactions (id, env, state, revision, touched_at) VALUES ($1, $2, $3, 0, now())",
                &[&id, &env.as_str(), &empty],
            )
            .await?;
        Ok(())
    }

    async fn load(&self, env: &EnvId, id: &str) -> Result<Option<(TxnState, u64)>, YunError> {
        let sql = format!(
            "SELECT state, revision FROM doc_transactions WHERE id = $1 AND env = $2 AND {LIVE}"
        );
        let Some(row) = self
            .pg
            .query_opt(&sql, &[&id, &env.as_str(), &idle_seconds()])
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((state_of(row.get(0))?, row.get::<_, i64>(1) as u64)))
    }

    async fn save(
        &self,
        env: &EnvId,
        id: &str,
        state: &TxnState,
        revision: u64,
    ) -> Result<bool, YunError> {
        let sql = format!(
            "UPDATE doc_transactions SET state = $4, revision = revision + 1, touched_at = now() \
             WHERE id = $1 AND env = $2 AND {LIVE} AND revision = $5"
        );
        let changed = self
            .pg
            .execute(
                &sql,
                &[
                    &id,
                    &env.as_str(),
                    &idle_seconds(),
                    &state_text(state)?,
                    &(revision as i64),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn end(&self, env: &EnvId, id: &str) -> Result<Option<TxnState>, YunError> {
        let sql = format!(
            "DELETE FROM doc_transactions WHERE id = $1 AND env = $2 AND {LIVE} RETURNING state"
        );
        match self
            .pg
            .query_opt(&sql, &[&id, &env.as_str(), &idle_seconds()])
            .await?
        {
            Some(row) => Ok(Some(state_of(row.get(0))?)),
            None => Ok(None),
        }
    }
}
