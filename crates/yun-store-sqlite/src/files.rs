//! The file index on SQLite (`files.db`): one row per path, its changes logged in the
//! same transaction (see `yun_storage::index` for the seam).

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use yun_storage::index::{listing_range, logged, FileIndex, FileRecord};
use yun_types::changes::{ChangeLog, NewChange};
use yun_types::{EnvId, YunError};

use crate::{db_err, Sqlite};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE files (
    env TEXT NOT NULL,
    path TEXT NOT NULL,
    object TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (env, path)
) WITHOUT ROWID;
"#,
    crate::changelog::MIGRATION,
    crate::changelog::MIGRATION_CAUSE,
];

const COLUMNS: &str = "path, object, size, content_type, etag, owner, created_at";

fn record(row: &Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        path: row.get(0)?,
        object: row.get(1)?,
        size: row.get::<_, i64>(2)? as u64,
        content_type: row.get(3)?,
        etag: row.get(4)?,
        owner: row.get(5)?,
        created_at: row.get(6)?,
    })
}

fn select_one(
    conn: &rusqlite::Connection,
    env: &str,
    path: &str,
) -> Result<Option<FileRecord>, YunError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM files WHERE env = ?1 AND path = ?2"
    ))
    .and_then(|mut s| s.query_row(params![env, path], record).optional())
    .map_err(db_err)
}

fn log_change(
    conn: &rusqlite::Connection,
    env: &str,
    op: &str,
    path: &str,
    before: Option<&FileRecord>,
    after: Option<&FileRecord>,
) -> Result<(), YunError> {
    let text = |r: Option<&FileRecord>| r.map(logged).transpose();
    let (before, after) = (text(before)?, text(after)?);
    crate::changelog::append(
        conn,
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

pub struct SqliteFileIndex {
    db: Sqlite,
}

/// The objects the files of an index copy (a backup's `files.db`) point at.
pub fn objects_in_copy(path: &Path) -> Result<Vec<String>, YunError> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(db_err)?;
    let mut stmt = conn.prepare("SELECT object FROM files").map_err(db_err)?;
    let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<String>>>()
        .map_err(db_err)
}

impl SqliteFileIndex {
    pub fn open(path: &Path) -> Result<Self, YunError> {
        Ok(Self {
            db: Sqlite::open(path, MIGRATIONS)?,
        })
    }
}

#[async_trait]
impl FileIndex for SqliteFileIndex {
    async fn get(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError> {
        self.db
            .read_now(|conn| select_one(conn, env.as_str(), path))
    }

    async fn put(&self, env: &EnvId, r: FileRecord) -> Result<Option<FileRecord>, YunError> {
        let env = env.to_string();
        // Who wrote goes with the write to the writer's thread (the change log keeps it).
        let origin = yun_types::changes::origin();
        self.db
            .write(move |conn| {
                let old = select_one(conn, &env, &r.path)?;
                yun_types::changes::during(origin, || {
                    log_change(conn, &env, "created", &r.path, old.as_ref(), Some(&r))
                })?;
                conn.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO files (env, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        env,
                        r.path,
                        r.object,
                        r.size as i64,
                        r.content_type,
                        r.etag,
                        r.owner,
                        r.created_at
                    ])
                })
                .map_err(db_err)?;
                Ok(old)
            })
            .await
    }

    async fn delete(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError> {
        let (env, path) = (env.to_string(), path.to_owned());
        let origin = yun_types::changes::origin();
        self.db
            .write(move |conn| {
                let old = select_one(conn, &env, &path)?;
                if old.is_some() {
                    yun_types::changes::during(origin, || {
                        log_change(conn, &env, "removed", &path, old.as_ref(), None)
                    })?;
                }
                conn.prepare_cached("DELETE FROM files WHERE env = ?1 AND path = ?2")
                    .and_then(|mut s| s.execute(params![env, path]))
                    .map_err(db_err)?;
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
        let (start, end) = listing_range(prefix, after);
        let after = after.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM files WHERE env = ?1 AND path >= ?2 AND path < ?3 AND path != ?4 ORDER BY path LIMIT ?5"
                ))
                .and_then(|mut s| {
                    s.query_map(params![env, start, end, after, limit], record)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)
            })
            .await
    }

    async fn used_bytes(&self, env: &EnvId) -> Result<u64, YunError> {
        let env = env.to_string();
        self.db
            .read(move |conn| {
                conn.prepare_cached("SELECT COALESCE(SUM(size), 0) FROM files WHERE env = ?1")
                    .and_then(|mut s| s.query_row(params![env], |r| r.get::<_, i64>(0)))
                    .map(|n| n as u64)
                    .map_err(db_err)
            })
            .await
    }

    fn change_log(&self) -> &dyn ChangeLog {
        &self.db
    }

    async fn drop_env(&self, env: &EnvId) -> Result<Vec<String>, YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                let objects = conn
                    .prepare_cached("DELETE FROM files WHERE env = ?1 RETURNING object")
                    .and_then(|mut s| {
                        s.query_map(params![env], |r| r.get(0))?
                            .collect::<Result<Vec<String>, _>>()
                    })
                    .map_err(db_err)?;
                Ok(objects)
            })
            .await
    }
}
