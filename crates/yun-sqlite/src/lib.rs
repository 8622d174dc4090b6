//! SQLite plumbing shared by Yun's embedded stores (metadata, documents): a database
//! file in WAL mode with `synchronous=NORMAL`, numbered migrations recorded in
//! `PRAGMA user_version`, one writer connection (SQLite has one writer) and a pool of
//! read-only connections, all used from blocking threads. Knows no schema.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use yun_types::YunError;

pub use rusqlite;

/// Wraps a SQLite error as an internal error (logged, generic to callers).
pub fn db_err(e: impl std::fmt::Display) -> YunError {
    YunError::internal(format!("sqlite: {e}"))
}

#[derive(Clone)]
pub struct Sqlite {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl Sqlite {
    /// Opens (or creates) the database and applies the migrations it has not seen.
    /// `migrations` is append-only: never edit one that has shipped.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, YunError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;")
            .map_err(db_err)?;
        let applied: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if applied > migrations.len() {
            return Err(YunError::internal(format!(
                "{} was written by a newer Yun (schema {applied}, this build knows {})",
                path.display(),
                migrations.len()
            )));
        }
        for (i, sql) in migrations.iter().enumerate().skip(applied) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(db_err)?;
            tracing::info!(db = %path.display(), migration = i + 1, "applied migration");
        }
        Ok(Self {
            path: path.to_owned(),
            writer: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Runs `f` on the writer connection, off the async threads.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer
                .lock()
                .map_err(|_| YunError::internal("sqlite writer poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(db_err)?
    }

    /// Runs `f` on a read-only connection from the pool; in WAL mode it never waits
    /// for the writer.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let (readers, path) = (self.readers.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().ok().and_then(|mut r| r.pop());
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(db_err)?;
                    conn.execute_batch("PRAGMA busy_timeout=5000;")
                        .map_err(db_err)?;
                    conn
                }
            };
            let result = f(&mut conn);
            if let Ok(mut r) = readers.lock() {
                r.push(conn);
            }
            result
        })
        .await
        .map_err(db_err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrations_run_once_and_readers_see_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let migrations = ["CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (1)"];
        let db = Sqlite::open(&path, &migrations).unwrap();
        db.write(|c| c.execute("INSERT INTO t VALUES (2)", []).map_err(db_err))
            .await
            .unwrap();
        drop(db);
        let db = Sqlite::open(&path, &migrations).unwrap();
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(db_err)
            })
            .await
            .unwrap();
        assert_eq!(n, 2, "the second open applied nothing again");
        assert!(
            db.read(|c| c.execute("INSERT INTO t VALUES (3)", []).map_err(db_err))
                .await
                .is_err(),
            "readers are read-only"
        );
        assert!(
            Sqlite::open(&path, &migrations[..1]).is_err(),
            "a newer schema is refused"
        );
    }
}
