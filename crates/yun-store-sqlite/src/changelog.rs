//! A change log (outbox) in a store's own SQLite file: the store appends with [`append`]
//! inside the write's transaction, so an entry exists exactly when its write committed.
//! Readers (the trigger dispatchers) page through it by sequence and keep a cursor here.

use rusqlite::{params, Connection, OptionalExtension};
use yun_types::changes::{ChangeEntry, ChangeLog, ChangeRetention, NewChange};
use yun_types::YunError;

use crate::{db_err, Sqlite};

/// The tables, for a store's migration list. `seq` is the rowid: the next is one past the
/// largest, and retention always keeps the largest, so a sequence is never handed out
/// twice.
pub const MIGRATION: &str = r#"
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    origin TEXT,
    target TEXT NOT NULL,
    op TEXT NOT NULL,
    key TEXT NOT NULL,
    before TEXT,
    after TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX changes_by_env ON changes (env, seq);
CREATE TABLE change_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"#;

/// The invocation that wrote: appended to the stores' migrations after [`MIGRATION`].
pub const MIGRATION_CAUSE: &str = "ALTER TABLE changes ADD COLUMN cause TEXT;";

/// The change log of a database file another process may be writing (a point-in-time
/// restore reads the live one): the entries after `after` committed by `until_ms`, and the
/// oldest `seq` it still holds (retention drops old entries).
pub fn read_file(
    path: &std::path::Path,
    after: u64,
    until_ms: i64,
) -> Result<(Vec<ChangeEntry>, Option<u64>), YunError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db_err)?;
    conn.execute_batch("PRAGMA busy_timeout=5000; BEGIN;")
        .map_err(db_err)?;
    let oldest: Option<i64> = conn
        .query_row("SELECT min(seq) FROM changes", [], |r| r.get(0))
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, env, origin, target, op, key, before, after, at, cause FROM changes WHERE seq > ?1 AND at <= ?2 ORDER BY seq",
        )
        .map_err(db_err)?;
    let entries = stmt
        .query_map(params![after as i64, until_ms], entry)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok((entries, oldest.map(|s| s as u64)))
}

/// The newest `seq` of a database file's change log (0 when empty).
pub fn last_seq_of_file(path: &std::path::Path) -> Result<u64, YunError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db_err)?;
    conn.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s as u64)
    .map_err(db_err)
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeEntry> {
    Ok(ChangeEntry {
        seq: r.get::<_, i64>(0)? as u64,
        env: r.get(1)?,
        origin: r.get(2)?,
        target: r.get(3)?,
        op: r.get(4)?,
        key: r.get(5)?,
        before: r.get(6)?,
        after: r.get(7)?,
        at_ms: r.get(8)?,
        cause: r.get(9)?,
    })
}

/// Appends `change` for `env` in the transaction open on `conn`; the writer is the one
/// running on this thread ([`yun_types::changes::writing`]).
pub fn append(conn: &Connection, env: &str, change: &NewChange<'_>) -> Result<(), YunError> {
    let origin = yun_types::changes::writing();
    conn.prepare_cached(
        "INSERT INTO changes (env, origin, target, op, key, before, after, at, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            env,
            origin.function.as_deref(),
            change.target,
            change.op,
            change.key,
            change.before,
            change.after,
            yun_types::unix_ms(),
            origin.cause.as_deref()
        ])
    })
    .map(drop)
    .map_err(db_err)
}

#[async_trait::async_trait]
impl ChangeLog for Sqlite {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeEntry>, YunError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, env, origin, target, op, key, before, after, at, cause FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], entry)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn last_change(&self) -> Result<u64, YunError> {
        self.read(|conn| {
            conn.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    /// What goes is decided on a reader; the writer only deletes, in slices, so writes
    /// queued behind it wait for one slice at most.
    async fn prune_changes(&self, retention: ChangeRetention, below: u64) -> Result<u64, YunError> {
        let oldest_kept_ms =
            yun_types::unix_ms() - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cuts: Vec<(String, i64)> = self
            .read(move |conn| {
                let newest: i64 = conn
                    .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| r.get(0))
                    .map_err(db_err)?;
                // Entries at or past `limit` stay whatever their age or size.
                let limit = newest.min(i64::try_from(below).unwrap_or(i64::MAX));
                let envs: Vec<String> = {
                    let mut stmt = conn.prepare("SELECT DISTINCT env FROM changes").map_err(db_err)?;
                    let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
                    rows.collect::<Result<_, _>>().map_err(db_err)?
                };
                let mut cuts = Vec::new();
                for env in envs {
                    // Newest first: the first entry past the byte budget or the age is the
                    // newest that goes.
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT seq, at, coalesce(length(before), 0) + coalesce(length(after), 0) FROM changes WHERE env = ?1 ORDER BY seq DESC",
                        )
                        .map_err(db_err)?;
                    let mut rows = stmt.query(params![env]).map_err(db_err)?;
                    let mut total = 0u64;
                    while let Some(row) = rows.next().map_err(db_err)? {
                        let (seq, at, bytes): (i64, i64, i64) = (
                            row.get(0).map_err(db_err)?,
                            row.get(1).map_err(db_err)?,
                            row.get(2).map_err(db_err)?,
                        );
                        total += bytes as u64;
                        if total > retention.max_bytes || at < oldest_kept_ms {
                            let cut = seq.min(limit - 1);
                            if cut > 0 {
                                cuts.push((env.clone(), cut));
                            }
                            break;
                        }
                    }
                }
                Ok(cuts)
            })
            .await?;
        const SLICE: i64 = 5000;
        let mut pruned = 0;
        for (env, cut) in cuts {
            loop {
                let env = env.clone();
                let n = self
                    .write(move |conn| {
                        conn.execute(
                            "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE env = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3)",
                            params![env, cut, SLICE],
                        )
                        .map_err(db_err)
                    })
                    .await?;
                pruned += n as u64;
                if (n as i64) < SLICE {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    async fn change_cursor(&self, name: &str) -> Result<Option<u64>, YunError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT seq FROM change_cursors WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|s| s.map(|s| s as u64))
            .map_err(db_err)
        })
        .await
    }

    async fn save_change_cursor(&self, name: &str, seq: u64) -> Result<(), YunError> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO change_cursors (name, seq) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                params![name, seq as i64],
            )
            .map(drop)
            .map_err(db_err)
        })
        .await
    }
}
