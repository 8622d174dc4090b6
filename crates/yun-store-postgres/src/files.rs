//! The file index on PostgreSQL: which object holds each path, with its change log.
//! A `put` locks the path's row (or finds the insert of a concurrent `put` and then locks
//! that), so of two uploads to one path each replaces the other's record in turn and the
//! record each returns is the one it replaced: the storage layer deletes exactly the
//! objects nothing points at any more.

use async_trait::async_trait;
use tokio_postgres::Row;
use yun_storage::index::{listing_range, logged, FileIndex, FileRecord};
use yun_types::changes::{ChangeLog, NewChange};
use yun_types::{EnvId, YunError};

use crate::changelog::PgChangeLog;
use crate::{Postgres, Txn};

fn migrations() -> Vec<String> {
    vec![
        r#"
CREATE TABLE file_records (
    env text COLLATE "C" NOT NULL,
    path text COLLATE "C" NOT NULL,
    object text NOT NULL,
    size bigint NOT NULL,
    content_type text NOT NULL,
    etag text NOT NULL,
    owner text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (env, path)
);
"#
        .to_owned(),
        PgChangeLog::migration("file"),
    ]
}

/// The columns `record` reads, in its order (a macro so the statements stay literals:
/// built once, not per call).
macro_rules! columns {
    () => {
        "path, object, size, content_type, etag, owner, created_at"
    };
}
const SELECT_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM file_records WHERE env = $1 AND path = $2"
);
const SELECT_ONE_LOCKED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM file_records WHERE env = $1 AND path = $2 FOR UPDATE"
);
const INSERT: &str = concat!(
    "INSERT INTO file_records (env, ",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
);
const LIST: &str = concat!(
    "SELECT ", columns!(),
    " FROM file_records WHERE env = $1 AND path >= $2 AND path < $3 AND path <> $4 ORDER BY path LIMIT $5"
);

fn record(row: &Row) -> FileRecord {
    FileRecord {
        path: row.get(0),
        object: row.get(1),
        size: row.get::<_, i64>(2) as u64,
        content_type: row.get(3),
        etag: row.get(4),
        owner: row.get(5),
        created_at: row.get(6),
    }
}

pub struct PgFileIndex {
    pg: Postgres,
    log: PgChangeLog,
}

impl PgFileIndex {
    pub async fn open(pg: Postgres) -> Result<Self, YunError> {
        pg.migrate("files", &migrations()).await?;
        Ok(Self {
            log: PgChangeLog::new(pg.clone(), "file"),
            pg,
        })
    }

    /// Runs a write with the change log attributing it to the current task's writer.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Txn<'_>, &PgChangeLog) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let origin = yun_types::changes::origin();
        let log = self.log.clone();
        self.pg
            .transaction(false, move |txn| {
                yun_types::changes::during(origin, || work(txn, &log))
            })
            .await
    }
}

fn locked(txn: &Txn<'_>, env: &str, path: &str) -> Result<Option<FileRecord>, YunError> {
    Ok(txn
        .query_opt(SELECT_ONE_LOCKED, &[&env, &path])?
        .map(|r| record(&r)))
}

fn log_change(
    log: &PgChangeLog,
    txn: &Txn<'_>,
    env: &str,
    op: &str,
    path: &str,
    before: Option<&FileRecord>,
    after: Option<&FileRecord>,
) -> Result<(), YunError> {
    let text = |r: Option<&FileRecord>| r.map(logged).transpose();
    let (before, after) = (text(before)?, text(after)?);
    log.append(
        txn,
        env,
        &NewChange {
            target: "",
            op,
            key: path,
            before: before.as_deref(),
            after: after.as_deref(),
        },
    )
}

#[async_trait]
impl FileIndex for PgFileIndex {
    async fn get(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError> {
        let (env, path) = (env.to_string(), path.to_owned());
        self.pg
            .transaction(true, move |txn| {
                Ok(txn
                    .query_opt(SELECT_ONE, &[&env, &path])?
                    .map(|r| record(&r)))
            })
            .await
    }

    async fn put(&self, env: &EnvId, r: FileRecord) -> Result<Option<FileRecord>, YunError> {
        let env = env.to_string();
        self.write(move |txn, log| {
            let size = r.size as i64;
            let old = loop {
                if let Some(old) = locked(txn, &env, &r.path)? {
                    txn.execute(
                        "UPDATE file_records SET object = $3, size = $4, content_type = $5, etag = $6, owner = $7, created_at = $8 WHERE env = $1 AND path = $2",
                        &[&env, &r.path, &r.object, &size, &r.content_type, &r.etag, &r.owner, &r.created_at],
                    )?;
                    break Some(old);
                }
                // A concurrent first upload of the path makes this wait for it, then do
                // nothing: the next turn finds its row and replaces it.
                let inserted = txn.execute(
                    INSERT,
                    &[&env, &r.path, &r.object, &size, &r.content_type, &r.etag, &r.owner, &r.created_at],
                )?;
                if inserted == 1 {
                    break None;
                }
            };
            log_change(log, txn, &env, "created", &r.path, old.as_ref(), Some(&r))?;
            Ok(old)
        })
        .await
    }

    async fn delete(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError> {
        let (env, path) = (env.to_string(), path.to_owned());
        self.write(move |txn, log| {
            let old = locked(txn, &env, &path)?;
            if old.is_some() {
                txn.execute(
                    "DELETE FROM file_records WHERE env = $1 AND path = $2",
                    &[&env, &path],
                )?;
                log_change(log, txn, &env, "removed", &path, old.as_ref(), None)?;
            }
            Ok(old)
        })
        .await
    }

    async fn list(
        &self,
        env: &EnvId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>, YunError> {
        let env = env.to_string();
        // Collation "C": paths compare as UTF-8 bytes, as the range assumes.
        let (start, end) = listing_range(prefix, after);
        let after = after.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pg
            .transaction(true, move |txn| {
                Ok(txn
                    .query(LIST, &[&env, &start, &end, &after, &limit])?
                    .iter()
                    .map(record)
                    .collect())
            })
            .await
    }

    async fn used_bytes(&self, env: &EnvId) -> Result<u64, YunError> {
        let env = env.to_string();
        self.pg
            .transaction(true, move |txn| {
                Ok(txn
                    .query_opt(
                        "SELECT COALESCE(SUM(size), 0)::bigint FROM file_records WHERE env = $1",
                        &[&env],
                    )?
                    .map_or(0, |r| r.get::<_, i64>(0)) as u64)
            })
            .await
    }

    async fn drop_env(&self, env: &EnvId) -> Result<Vec<String>, YunError> {
        let env = env.to_string();
        self.pg
            .transaction(false, move |txn| {
                Ok(txn
                    .query(
                        "DELETE FROM file_records WHERE env = $1 RETURNING object",
                        &[&env],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })
            .await
    }

    fn change_log(&self) -> &dyn ChangeLog {
        &self.log
    }
}
