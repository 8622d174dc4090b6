//! The embedded document store: documents as JSON text in one SQLite file (WAL), keyed by
//! (env, collection, `_id`). One writer connection (SQLite has one writer) and a pool
//! of read-only connections.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use serde_json::Value;
use yun_types::{EnvId, ErrorCode, YunError};

use yun_docdb::index::{IndexSpec, KeyRange};
use yun_docdb::store::{ChangeLog, DocStore, DocTxn, NewChange, Visit, Work};
use yun_docdb::txn::{InProcessTransactions, OpenTransactions};

use crate::{db_err, Sqlite};

/// A key range scan of one index: a search on the entries' primary key, in its order.
const INDEX_RANGE_SQL: &str =
    "SELECT key, id FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key >= ?4 AND key < ?5 ORDER BY key, id";
const INDEX_RANGE_BACKWARD_SQL: &str =
    "SELECT key, id FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key >= ?4 AND key < ?5 ORDER BY key DESC, id DESC";
/// The same walks resumed past an entry (row values compare (key, id) as the order).
const INDEX_RANGE_AFTER_SQL: &str =
    "SELECT key, id FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key >= ?4 AND key < ?5 AND (key, id) > (?6, ?7) ORDER BY key, id";
const INDEX_RANGE_BACKWARD_AFTER_SQL: &str =
    "SELECT key, id FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key >= ?4 AND key < ?5 AND (key, id) < (?6, ?7) ORDER BY key DESC, id DESC";
const INDEX_COUNT_SQL: &str =
    "SELECT count(*) FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key >= ?4 AND key < ?5";

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE collections (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (env, name)
) WITHOUT ROWID;
CREATE TABLE documents (
    env TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (env, collection, id)
) WITHOUT ROWID;
"#,
    r#"
-- Document versions for optimistic transactions: every write stamps the documents it
-- changes with the next value of one sequence, so a version never repeats.
ALTER TABLE documents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE sequence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO sequence (id, value) VALUES (1, 0);
"#,
    r#"
-- Secondary indexes: definitions, and one row per (key, document).
CREATE TABLE indexes (
    env TEXT NOT NULL,
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (env, collection, name)
) WITHOUT ROWID;
CREATE TABLE index_entries (
    env TEXT NOT NULL,
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    key BLOB NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (env, collection, name, key, id)
) WITHOUT ROWID;
CREATE INDEX index_entries_by_document ON index_entries (env, collection, name, id);
"#,
    r#"
-- Versions are random now (see `SqliteTxn::write_version`): the sequence row was one
-- more page written by every commit.
DROP TABLE sequence;
"#,
    crate::changelog::MIGRATION,
    crate::changelog::MIGRATION_CAUSE,
];

/// The document store on one SQLite file (see `pool` for the connection model).
#[derive(Clone)]
pub struct SqliteDocStore {
    db: Sqlite,
    /// One process owns the file: its transactions stay in its memory.
    transactions: Arc<InProcessTransactions>,
}

impl SqliteDocStore {
    pub fn open(path: &Path) -> Result<Self, YunError> {
        Ok(Self {
            db: Sqlite::open(path, MIGRATIONS)?,
            transactions: Arc::default(),
        })
    }
}

struct SqliteTxn<'a> {
    /// Inside a read transaction, or inside the writer's savepoint for this job.
    tx: &'a rusqlite::Connection,
    env: String,
    /// The version this transaction stamps on what it writes; taken at the first write.
    version: Option<i64>,
}

impl SqliteTxn<'_> {
    /// Statements go through the connection's statement cache: parsing the SQL again on
    /// every call cost more than running it for point reads.
    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.tx.prepare_cached(sql)?.query_row(params, f)
    }

    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.tx.prepare_cached(sql)?.execute(params)
    }

    /// A version only has to differ from the one a transaction saw, so it is random
    /// (63 bits: two writes of one document agree once in 9·10^18) rather than the next
    /// value of a sequence row, which every commit had to write as one more page.
    fn write_version(&mut self) -> i64 {
        *self
            .version
            .get_or_insert_with(|| rand::random::<i64>() & i64::MAX)
    }
}

impl DocTxn for SqliteTxn<'_> {
    fn collection_exists(&mut self, collection: &str) -> Result<bool, YunError> {
        self.query_row_cached(
            "SELECT 1 FROM collections WHERE env = ?1 AND name = ?2",
            params![self.env, collection],
            |_| Ok(()),
        )
        .optional()
        .map(|r| r.is_some())
        .map_err(db_err)
    }

    fn create_collection(&mut self, collection: &str) -> Result<bool, YunError> {
        let now = yun_types::unix_now();
        let n = self
            .execute_cached(
                "INSERT OR IGNORE INTO collections (env, name, created_at) VALUES (?1, ?2, ?3)",
                params![self.env, collection, now],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn list_collections(&mut self) -> Result<Vec<String>, YunError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name FROM collections WHERE env = ?1 ORDER BY name")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![self.env], |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn drop_collection(&mut self, collection: &str) -> Result<bool, YunError> {
        self.execute_cached(
            "DELETE FROM index_entries WHERE env = ?1 AND collection = ?2",
            params![self.env, collection],
        )
        .map_err(db_err)?;
        self.execute_cached(
            "DELETE FROM indexes WHERE env = ?1 AND collection = ?2",
            params![self.env, collection],
        )
        .map_err(db_err)?;
        self.execute_cached(
            "DELETE FROM documents WHERE env = ?1 AND collection = ?2",
            params![self.env, collection],
        )
        .map_err(db_err)?;
        let n = self
            .execute_cached(
                "DELETE FROM collections WHERE env = ?1 AND name = ?2",
                params![self.env, collection],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn scan_each(
        &mut self,
        collection: &str,
        after: Option<&str>,
        visit: Visit<'_, str>,
    ) -> Result<(), YunError> {
        // `_id`s are never empty, so "after nothing" is after "".
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT id, doc FROM documents WHERE env = ?1 AND collection = ?2 AND id > ?3 ORDER BY id",
            )
            .map_err(db_err)?;
        let mut rows = stmt
            .query(params![self.env, collection, after.unwrap_or("")])
            .map_err(db_err)?;
        while let Some(row) = rows.next().map_err(db_err)? {
            let id = row
                .get_ref(0)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(db_err)?;
            let doc = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(db_err)?;
            if !visit(id, doc)? {
                break;
            }
        }
        Ok(())
    }

    fn count_documents(&mut self, collection: &str) -> Result<u64, YunError> {
        self.query_row_cached(
            "SELECT count(*) FROM documents WHERE env = ?1 AND collection = ?2",
            params![self.env, collection],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(db_err)
    }

    fn get_text(&mut self, collection: &str, id: &str) -> Result<Option<String>, YunError> {
        self.query_row_cached(
            "SELECT doc FROM documents WHERE env = ?1 AND collection = ?2 AND id = ?3",
            params![self.env, collection, id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)
    }

    fn get(&mut self, collection: &str, id: &str) -> Result<Option<Value>, YunError> {
        let text: Option<String> = self
            .query_row_cached(
                "SELECT doc FROM documents WHERE env = ?1 AND collection = ?2 AND id = ?3",
                params![self.env, collection, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        text.map(|t| serde_json::from_str(&t).map_err(db_err))
            .transpose()
    }

    fn get_versioned(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(Value, u64)>, YunError> {
        let row: Option<(String, i64)> = self
            .query_row_cached(
                "SELECT doc, version FROM documents WHERE env = ?1 AND collection = ?2 AND id = ?3",
                params![self.env, collection, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        row.map(|(t, v)| Ok((serde_json::from_str(&t).map_err(db_err)?, v as u64)))
            .transpose()
    }

    fn insert(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError> {
        let version = self.write_version();
        let result = self.execute_cached(
            "INSERT INTO documents (env, collection, id, doc, version) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.env, collection, id, text, version],
        );
        match result {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(YunError::new(
                    ErrorCode::DuplicateKey,
                    format!("E11000 duplicate key error: _id {id:?} already exists"),
                ))
            }
            other => other.map(|_| ()).map_err(db_err),
        }
    }

    fn replace(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError> {
        let version = self.write_version();
        self.execute_cached(
                "UPDATE documents SET doc = ?4, version = ?5 WHERE env = ?1 AND collection = ?2 AND id = ?3",
                params![self.env, collection, id, text, version],
            )
            .map(|_| ())
            .map_err(db_err)
    }

    fn delete(&mut self, collection: &str, id: &str) -> Result<bool, YunError> {
        self.execute_cached(
            "DELETE FROM documents WHERE env = ?1 AND collection = ?2 AND id = ?3",
            params![self.env, collection, id],
        )
        .map(|n| n > 0)
        .map_err(db_err)
    }

    fn append_change(&mut self, change: &NewChange<'_>) -> Result<(), YunError> {
        crate::changelog::append(self.tx, &self.env, change)
    }

    fn list_indexes(&mut self, collection: &str) -> Result<Vec<IndexSpec>, YunError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT spec FROM indexes WHERE env = ?1 AND collection = ?2 ORDER BY name",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![self.env, collection], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        rows.map(|t| serde_json::from_str(&t.map_err(db_err)?).map_err(db_err))
            .collect()
    }

    fn create_index(&mut self, collection: &str, spec: &IndexSpec) -> Result<bool, YunError> {
        let text = serde_json::to_string(spec).map_err(db_err)?;
        self.execute_cached(
            "INSERT OR IGNORE INTO indexes (env, collection, name, spec) VALUES (?1, ?2, ?3, ?4)",
            params![self.env, collection, spec.name, text],
        )
        .map(|n| n > 0)
        .map_err(db_err)
    }

    fn drop_index(&mut self, collection: &str, name: &str) -> Result<bool, YunError> {
        self.execute_cached(
            "DELETE FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3",
            params![self.env, collection, name],
        )
        .map_err(db_err)?;
        self.execute_cached(
            "DELETE FROM indexes WHERE env = ?1 AND collection = ?2 AND name = ?3",
            params![self.env, collection, name],
        )
        .map(|n| n > 0)
        .map_err(db_err)
    }

    fn mark_multikey(&mut self, collection: &str, spec: &IndexSpec) -> Result<(), YunError> {
        let text = serde_json::to_string(&IndexSpec {
            multikey: true,
            ..spec.clone()
        })
        .map_err(db_err)?;
        self.execute_cached(
            "UPDATE indexes SET spec = ?4 WHERE env = ?1 AND collection = ?2 AND name = ?3",
            params![self.env, collection, spec.name, text],
        )
        .map(|_| ())
        .map_err(db_err)
    }

    fn put_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), YunError> {
        let mut stmt = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO index_entries (env, collection, name, key, id) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(db_err)?;
        for key in keys {
            stmt.execute(params![self.env, collection, index, key, id])
                .map_err(db_err)?;
        }
        Ok(())
    }

    fn delete_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
    ) -> Result<(), YunError> {
        self.execute_cached("DELETE FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND id = ?4", params![self.env, collection, index, id])
            .map(|_| ())
            .map_err(db_err)
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
        let sql = match (backward, after.is_some()) {
            (false, false) => INDEX_RANGE_SQL,
            (false, true) => INDEX_RANGE_AFTER_SQL,
            (true, false) => INDEX_RANGE_BACKWARD_SQL,
            (true, true) => INDEX_RANGE_BACKWARD_AFTER_SQL,
        };
        let mut stmt = self.tx.prepare_cached(sql).map_err(db_err)?;
        let mut rows = match after {
            None => stmt.query(params![self.env, collection, index, range.low, range.high]),
            // The row value alone does not narrow SQLite's search: the range starts (or,
            // backward, ends) at the last key read, so a resumed walk never reads again
            // what it has read.
            Some((key, id)) if backward => {
                let high = [key, &[0]].concat().min(range.high.clone());
                stmt.query(params![
                    self.env, collection, index, range.low, high, key, id
                ])
            }
            Some((key, id)) => {
                let low = key.max(range.low.as_slice());
                stmt.query(params![
                    self.env, collection, index, low, range.high, key, id
                ])
            }
        }
        .map_err(db_err)?;
        while let Some(row) = rows.next().map_err(db_err)? {
            let key = row
                .get_ref(0)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(db_err)?;
            let id = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(db_err)?;
            if !visit(key, id)? {
                break;
            }
        }
        Ok(())
    }

    fn index_count(
        &mut self,
        collection: &str,
        index: &str,
        range: &KeyRange,
    ) -> Result<u64, YunError> {
        self.query_row_cached(
            INDEX_COUNT_SQL,
            params![self.env, collection, index, range.low, range.high],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(db_err)
    }

    fn index_key_taken(
        &mut self,
        collection: &str,
        index: &str,
        key: &[u8],
        except_id: &str,
    ) -> Result<bool, YunError> {
        self.query_row_cached(
                "SELECT 1 FROM index_entries WHERE env = ?1 AND collection = ?2 AND name = ?3 AND key = ?4 AND id <> ?5 LIMIT 1",
                params![self.env, collection, index, key, except_id],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db_err)
    }
}

#[async_trait]
impl DocStore for SqliteDocStore {
    async fn read(&self, env: &EnvId, point: bool, work: Work) -> Result<(), YunError> {
        let env = env.to_string();
        let snapshot = move |conn: &mut rusqlite::Connection| {
            // One snapshot for the whole unit of work.
            crate::snapshot(conn, |tx| {
                work(&mut SqliteTxn {
                    tx,
                    env,
                    version: None,
                })
            })
        };
        if point {
            self.db.read_now(snapshot)
        } else {
            self.db.read(snapshot).await
        }
    }

    async fn write(&self, env: &EnvId, point: bool, work: Work) -> Result<(), YunError> {
        let env = env.to_string();
        // The writer runs this in its own savepoint and commits it with its group, or,
        // for a short write while it is idle, the caller commits it alone.
        let job = move |conn: &mut rusqlite::Connection| {
            work(&mut SqliteTxn {
                tx: conn,
                env,
                version: None,
            })
        };
        if point {
            self.db.write_now(job).await
        } else {
            self.db.write(job).await
        }
    }

    fn change_log(&self) -> &dyn ChangeLog {
        &self.db
    }

    fn open_transactions(&self) -> &dyn OpenTransactions {
        &*self.transactions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn index_range_scans_search_the_entries_primary_key_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteDocStore::open(&dir.path().join("d.db")).unwrap();
        for sql in [
            INDEX_RANGE_SQL,
            INDEX_RANGE_BACKWARD_SQL,
            INDEX_RANGE_AFTER_SQL,
            INDEX_RANGE_BACKWARD_AFTER_SQL,
            INDEX_COUNT_SQL,
        ] {
            let plan: Vec<String> = store
                .db
                .read(move |conn| {
                    let mut stmt = conn
                        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                        .map_err(db_err)?;
                    let n = stmt.parameter_count();
                    let args: Vec<Box<dyn rusqlite::ToSql>> = vec![
                        Box::new("e"),
                        Box::new("c"),
                        Box::new("i"),
                        Box::new(vec![1u8]),
                        Box::new(vec![2u8]),
                        Box::new(vec![1u8, 5]),
                        Box::new("x"),
                    ];
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(args.iter().take(n)), |r| {
                            r.get::<_, String>(3)
                        })
                        .map_err(db_err)?;
                    rows.collect::<Result<_, _>>().map_err(db_err)
                })
                .await
                .unwrap();
            let plan = plan.join(" | ");
            assert!(plan.contains("SEARCH index_entries USING PRIMARY KEY (env=? AND collection=? AND name=? AND key>? AND key<?)"), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts: {plan}");
        }
    }
}
