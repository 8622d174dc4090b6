//! The embedded metadata store: one SQLite file in the data dir, WAL mode,
//! `synchronous=NORMAL` (a committed transaction survives a process crash; an OS crash
//! may lose the last moments, which is the trade-off ARCHITECTURE.md states).

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use yun_types::{unix_now, EnvId, ErrorCode, FunctionName, YunError};

use yun_meta::*;

use crate::{db_err, Sqlite};

/// Numbered migrations; `PRAGMA user_version` records how many ran. Never edit one that
/// has shipped: append.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE envs (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
CREATE TABLE keys (
    secret_id TEXT PRIMARY KEY,
    secret_key TEXT NOT NULL,
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX keys_env ON keys(env);
CREATE TABLE functions (
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    http_path TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (env, name)
);
CREATE UNIQUE INDEX functions_http_path ON functions(env, http_path) WHERE http_path IS NOT NULL;
CREATE TABLE invocations (
    request_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_peak_kb INTEGER NOT NULL,
    status TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX invocations_by_function ON invocations(env, function, started_at_ms);
CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    stream TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_function ON logs(env, function, id);
CREATE INDEX logs_by_request ON logs(request_id);
"#,
    r#"
-- Per-env settings (database limits, …) as one JSON object per env.
CREATE TABLE env_settings (
    env TEXT PRIMARY KEY REFERENCES envs(id) ON DELETE CASCADE,
    settings TEXT NOT NULL
);
"#,
    r#"
-- Security rules: `target` is `collection:{name}` or `storage`; `spec` is the JSON set.
CREATE TABLE rules (
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (env, target)
) WITHOUT ROWID;
"#,
    r#"
-- Invocation records keyed by their request id alone, without a rowid: one B-tree fewer
-- to write per invocation.
CREATE TABLE invocations_by_id (
    request_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_peak_kb INTEGER NOT NULL,
    status TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    error TEXT
) WITHOUT ROWID;
INSERT INTO invocations_by_id SELECT request_id, env, function, version, started_at_ms,
    duration_ms, billed_ms, memory_peak_kb, status, cold_start, error FROM invocations;
DROP TABLE invocations;
ALTER TABLE invocations_by_id RENAME TO invocations;
CREATE INDEX invocations_by_function ON invocations(env, function, started_at_ms);
"#,
    r#"
-- Async deliveries: every attempt of a request is a record of its own, with the trigger
-- that caused it.
CREATE TABLE invocations_by_attempt (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    env TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_peak_kb INTEGER NOT NULL,
    status TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    error TEXT,
    trigger TEXT,
    PRIMARY KEY (request_id, attempt)
) WITHOUT ROWID;
INSERT INTO invocations_by_attempt SELECT request_id, 1, env, function, version,
    started_at_ms, duration_ms, billed_ms, memory_peak_kb, status, cold_start, error, NULL
    FROM invocations;
DROP TABLE invocations;
ALTER TABLE invocations_by_attempt RENAME TO invocations;
CREATE INDEX invocations_by_function ON invocations(env, function, started_at_ms);
-- Async events that failed for good, per function, with why.
CREATE TABLE dead_letters (
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    error_code TEXT NOT NULL,
    error_message TEXT NOT NULL,
    event TEXT NOT NULL,
    source TEXT NOT NULL,
    trigger TEXT,
    retry_num INTEGER NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    failed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env, function, request_id)
) WITHOUT ROWID;
-- Triggers per function; they go with their function (see delete_function) and env.
CREATE TABLE triggers (
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    function TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_fired_ms INTEGER,
    PRIMARY KEY (env, function, name)
) WITHOUT ROWID;
"#,
    r#"
-- Operations: what an invocation cost and what caused it, log levels, per-env log bytes
-- (retention by size), usage roll-ups.
ALTER TABLE invocations ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN response_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN parent_request_id TEXT;
CREATE INDEX invocations_by_parent ON invocations(parent_request_id)
    WHERE parent_request_id IS NOT NULL;
CREATE INDEX invocations_by_age ON invocations(env, started_at_ms);
ALTER TABLE invocations ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN span_id TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN parent_span_id TEXT;
ALTER TABLE invocations ADD COLUMN waited_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE spans (
    env TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    function TEXT,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE INDEX spans_by_age ON spans(env, start_us);
CREATE TABLE alerts (
    env TEXT NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (env, name)
) WITHOUT ROWID;
ALTER TABLE logs ADD COLUMN level TEXT NOT NULL DEFAULT 'info';
CREATE INDEX logs_by_env ON logs(env, id);
CREATE TABLE log_bytes (env TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO log_bytes SELECT env, SUM(length(CAST(message AS BLOB)) + 64) FROM logs GROUP BY env;
CREATE TABLE usage (
    env TEXT NOT NULL,
    function TEXT NOT NULL,
    period TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    invocations INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    mb_ms INTEGER NOT NULL DEFAULT 0,
    billed_ms INTEGER NOT NULL DEFAULT 0,
    egress_bytes INTEGER NOT NULL DEFAULT 0,
    db_reads INTEGER NOT NULL DEFAULT 0,
    db_writes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env, period, start_ms, function)
) WITHOUT ROWID;
"#,
];

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The metadata store on one SQLite file (see `pool` for the connection model).
#[derive(Clone)]
pub struct SqliteMetaStore {
    db: Sqlite,
}

impl SqliteMetaStore {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            db: Sqlite::open(path, MIGRATIONS)?,
        })
    }
}

fn env_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<EnvId> {
    let s: String = row.get(idx)?;
    EnvId::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn fn_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<FunctionName> {
    let s: String = row.get(idx)?;
    FunctionName::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let role: String = row.get(3)?;
    Ok(KeyRecord {
        secret_id: row.get(0)?,
        secret_key: row.get(1)?,
        env: env_col(row, 2)?,
        role: if role == "platform" {
            KeyRole::Platform
        } else {
            KeyRole::Env
        },
        description: row.get(4)?,
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

const KEY_COLS: &str = "secret_id, secret_key, env, role, description, created_at, revoked_at";

fn function_row(row: &Row<'_>) -> rusqlite::Result<FunctionRecord> {
    let spec: String = row.get(0)?;
    let spec: NewFunction = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(FunctionRecord {
        spec,
        version: row.get(1)?,
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
    })
}

const FUNCTION_COLS: &str = "spec, version, created_at, updated_at";

fn invocation_row(row: &Row<'_>) -> rusqlite::Result<InvocationRecord> {
    let status: String = row.get(8)?;
    Ok(InvocationRecord {
        request_id: row.get(0)?,
        env: env_col(row, 1)?,
        function: fn_col(row, 2)?,
        version: row.get(3)?,
        started_at_ms: row.get(4)?,
        duration_ms: row.get(5)?,
        billed_ms: row.get(6)?,
        memory_peak_kb: row.get(7)?,
        status: InvocationStatus::parse(&status).unwrap_or(InvocationStatus::Error),
        cold_start: row.get(9)?,
        error: row.get(10)?,
        attempt: row.get(11)?,
        trigger: row.get(12)?,
        memory_mb: row.get(13)?,
        response_bytes: row.get(14)?,
        parent_request_id: row.get(15)?,
        trace_id: row.get(16)?,
        span_id: row.get(17)?,
        parent_span_id: row.get(18)?,
        waited_ms: row.get(19)?,
    })
}

fn count_log_bytes(conn: &rusqlite::Connection, env: &str, bytes: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO log_bytes (env, bytes) VALUES (?1, max(?2, 0))
         ON CONFLICT (env) DO UPDATE SET bytes = max(bytes + ?2, 0)",
    )
    .and_then(|mut stmt| stmt.execute(params![env, bytes]))
    .map(drop)
    .map_err(db_err)
}

/// Adds increments to their hour's and their day's roll-up rows.
fn add_usage(conn: &rusqlite::Connection, increments: &[UsageIncrement]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO usage (env, function, period, start_ms, invocations, errors, mb_ms, billed_ms, egress_bytes, db_reads, db_writes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (env, period, start_ms, function) DO UPDATE SET
                invocations = invocations + ?5, errors = errors + ?6, mb_ms = mb_ms + ?7,
                billed_ms = billed_ms + ?8, egress_bytes = egress_bytes + ?9,
                db_reads = db_reads + ?10, db_writes = db_writes + ?11",
        )
        .map_err(db_err)?;
    for ((env, function, period, start), c) in usage_rows(increments) {
        stmt.execute(params![
            env,
            function,
            period,
            start,
            c.invocations,
            c.errors,
            c.mb_ms,
            c.billed_ms,
            c.egress_bytes,
            c.db_reads,
            c.db_writes
        ])
        .map_err(db_err)?;
    }
    Ok(())
}

fn log_line_row(r: &Row<'_>) -> rusqlite::Result<LogLine> {
    Ok(LogLine {
        id: r.get(0)?,
        line: NewLogLine {
            env: env_col(r, 1)?,
            function: fn_col(r, 2)?,
            request_id: r.get(3)?,
            at_ms: r.get(4)?,
            stream: r.get(5)?,
            level: r.get(6)?,
            message: r.get(7)?,
        },
    })
}

/// The log query's SQL and its parameters: only the conditions asked for, so the
/// planner picks the index that fits (by request, by function, by env).
fn log_query_sql(q: &LogQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut params: Vec<V> = vec![V::Text(q.env.to_string())];
    let mut sql = String::new();
    let mut conds = vec!["env = ?1".to_owned()];
    let param = |v: V, params: &mut Vec<V>| {
        params.push(v);
        format!("?{}", params.len())
    };
    if let Some(id) = &q.filter.request_id {
        let p = param(V::Text(id.clone()), &mut params);
        if q.filter.caused {
            // The invocation and every one it caused, transitively (bounded: a chain
            // is at most what the records hold).
            sql.push_str(&format!(
                "WITH RECURSIVE tree(id) AS (SELECT {p} UNION SELECT i.request_id FROM invocations i JOIN tree ON i.parent_request_id = tree.id WHERE i.env = ?1) "
            ));
            conds.push("request_id IN tree".into());
        } else {
            conds.push(format!("request_id = {p}"));
        }
    }
    if let Some(f) = &q.function {
        conds.push(format!(
            "function = {}",
            param(V::Text(f.to_string()), &mut params)
        ));
    }
    if let Some(ms) = q.filter.since_ms {
        conds.push(format!("at_ms >= {}", param(V::Integer(ms), &mut params)));
    }
    if let Some(ms) = q.filter.until_ms {
        conds.push(format!("at_ms <= {}", param(V::Integer(ms), &mut params)));
    }
    if let Some(stream) = &q.filter.stream {
        conds.push(format!(
            "stream = {}",
            param(V::Text(stream.clone()), &mut params)
        ));
    }
    if let Some(text) = &q.filter.contains {
        conds.push(format!(
            "instr(message, {}) > 0",
            param(V::Text(text.clone()), &mut params)
        ));
    }
    if let Some(levels) = q.filter.levels() {
        let at_least: Vec<String> = levels.iter().map(|l| format!("'{l}'")).collect();
        conds.push(format!("level IN ({})", at_least.join(", ")));
    }
    if let Some(id) = q.filter.after_id {
        conds.push(format!("id > {}", param(V::Integer(id), &mut params)));
    }
    sql.push_str(&format!(
        "SELECT id, env, function, request_id, at_ms, stream, level, message FROM logs WHERE {} ORDER BY id",
        conds.join(" AND ")
    ));
    (sql, params)
}

const INVOCATION_COLS: &str =
    "request_id, env, function, version, started_at_ms, duration_ms, billed_ms, memory_peak_kb, status, cold_start, error, attempt, trigger, memory_mb, response_bytes, parent_request_id, trace_id, span_id, parent_span_id, waited_ms";

fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        env: env_col(row, 0)?,
        function: fn_col(row, 1)?,
        request_id: row.get(2)?,
        error_code: row.get(3)?,
        error_message: row.get(4)?,
        event: row.get(5)?,
        source: row.get(6)?,
        trigger: row.get(7)?,
        retry_num: row.get(8)?,
        enqueued_at_ms: row.get(9)?,
        failed_at_ms: row.get(10)?,
    })
}

fn trigger_row(row: &Row<'_>) -> rusqlite::Result<TriggerRecord> {
    Ok(TriggerRecord {
        env: env_col(row, 0)?,
        function: fn_col(row, 1)?,
        name: row.get(2)?,
        kind: row.get(3)?,
        config: row.get(4)?,
        created_at_ms: row.get(5)?,
        last_fired_ms: row.get(6)?,
    })
}

const TRIGGER_COLS: &str = "env, function, name, kind, config, created_at_ms, last_fired_ms";

fn insert_trigger_row(conn: &rusqlite::Connection, t: &TriggerRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(&format!(
        "INSERT INTO triggers ({TRIGGER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        t.env.as_str(),
        t.function.as_str(),
        t.name,
        t.kind,
        t.config,
        t.created_at_ms,
        t.last_fired_ms
    ])
}

const DEAD_LETTER_COLS: &str = "env, function, request_id, error_code, error_message, event, source, trigger, retry_num, enqueued_at_ms, failed_at_ms";

#[async_trait]
impl MetaStore for SqliteMetaStore {
    async fn master_key(&self) -> Result<Vec<u8>> {
        self.db
            .write(|conn| {
                let existing: Option<Vec<u8>> = conn
                    .query_row(
                        "SELECT value FROM settings WHERE key = 'master_key'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                if let Some(key) = existing {
                    return Ok(key);
                }
                let key = yun_types::new_id("").into_bytes();
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES ('master_key', ?1)",
                    params![key],
                )
                .map_err(db_err)?;
                Ok(key)
            })
            .await
    }

    async fn create_env(&self, env: &EnvId) -> Result<EnvRecord> {
        let env = env.clone();
        self.db
            .write(move |conn| {
                let now = unix_now();
                let inserted = conn
                    .execute(
                        "INSERT OR IGNORE INTO envs (id, created_at) VALUES (?1, ?2)",
                        params![env.as_str(), now],
                    )
                    .map_err(db_err)?;
                if inserted == 0 {
                    return Err(YunError::new(
                        ErrorCode::AlreadyExists,
                        format!("env {env} already exists"),
                    ));
                }
                Ok(EnvRecord {
                    id: env,
                    created_at: now,
                })
            })
            .await
    }

    async fn get_env(&self, env: &EnvId) -> Result<Option<EnvRecord>> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                conn.query_row(
                    "SELECT id, created_at FROM envs WHERE id = ?1",
                    params![env.as_str()],
                    |r| {
                        Ok(EnvRecord {
                            id: env_col(r, 0)?,
                            created_at: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn list_envs(&self) -> Result<Vec<EnvRecord>> {
        self.db
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT id, created_at FROM envs ORDER BY id")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(EnvRecord {
                            id: env_col(r, 0)?,
                            created_at: r.get(1)?,
                        })
                    })
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn delete_env(&self, env: &EnvId) -> Result<bool> {
        let env = env.clone();
        self.db
            .write(move |conn| {
                // Atomic: the writer runs each job in its own savepoint.
                let tx: &rusqlite::Connection = conn;
                // keys and functions cascade; the append-only streams are deleted explicitly.
                tx.execute(
                    "DELETE FROM invocations WHERE env = ?1",
                    params![env.as_str()],
                )
                .map_err(db_err)?;
                for table in ["logs", "log_bytes", "usage", "spans"] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE env = ?1"),
                        params![env.as_str()],
                    )
                    .map_err(db_err)?;
                }
                let n = tx
                    .execute("DELETE FROM envs WHERE id = ?1", params![env.as_str()])
                    .map_err(db_err)?;
                Ok(n > 0)
            })
            .await
    }

    async fn env_settings(&self, env: &EnvId) -> Result<EnvSettings> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                let text: Option<String> = conn
                    .query_row(
                        "SELECT settings FROM env_settings WHERE env = ?1",
                        params![env.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                text.map_or(Ok(EnvSettings::default()), |t| {
                    serde_json::from_str(&t).map_err(db_err)
                })
            })
            .await
    }

    async fn put_env_settings(&self, env: &EnvId, settings: &EnvSettings) -> Result<()> {
        let (env, text) = (
            env.clone(),
            serde_json::to_string(settings).map_err(db_err)?,
        );
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO env_settings (env, settings) VALUES (?1, ?2) ON CONFLICT (env) DO UPDATE SET settings = excluded.settings",
                    params![env.as_str(), text],
                )
                .map(|_| ())
                .map_err(db_err)
            })
            .await
    }

    async fn list_rules(&self, env: &EnvId) -> Result<Vec<(String, serde_json::Value)>> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT target, spec FROM rules WHERE env = ?1 ORDER BY target")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str()], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(db_err)?;
                rows.map(|row| {
                    let (target, spec) = row.map_err(db_err)?;
                    Ok((target, serde_json::from_str(&spec).map_err(db_err)?))
                })
                .collect()
            })
            .await
    }

    async fn put_rules(
        &self,
        env: &EnvId,
        target: &str,
        spec: Option<&serde_json::Value>,
    ) -> Result<()> {
        let (env, target, spec) = (env.clone(), target.to_owned(), spec.map(|s| s.to_string()));
        self.db
            .write(move |conn| {
                match spec {
                    Some(spec) => conn.execute(
                        "INSERT INTO rules (env, target, spec) VALUES (?1, ?2, ?3) ON CONFLICT (env, target) DO UPDATE SET spec = excluded.spec",
                        params![env.as_str(), target, spec],
                    ),
                    None => conn.execute(
                        "DELETE FROM rules WHERE env = ?1 AND target = ?2",
                        params![env.as_str(), target],
                    ),
                }
                .map(|_| ())
                .map_err(db_err)
            })
            .await
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        let key = key.clone();
        self.db
            .write(move |conn| {
                conn.execute(
                    &format!("INSERT INTO keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                    params![
                        key.secret_id,
                        key.secret_key,
                        key.env.as_str(),
                        key.role.as_str(),
                        key.description,
                        key.created_at,
                        key.revoked_at
                    ],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn get_key(&self, secret_id: &str) -> Result<Option<KeyRecord>> {
        let secret_id = secret_id.to_owned();
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!("SELECT {KEY_COLS} FROM keys WHERE secret_id = ?1"),
                    params![secret_id],
                    key_row,
                )
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn list_keys(&self, env: &EnvId) -> Result<Vec<KeyRecord>> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {KEY_COLS} FROM keys WHERE env = ?1 ORDER BY created_at, secret_id"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str()], key_row)
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn revoke_key(&self, env: &EnvId, secret_id: &str, now: i64) -> Result<bool> {
        let (env, secret_id) = (env.clone(), secret_id.to_owned());
        self.db.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE keys SET revoked_at = ?3 WHERE env = ?1 AND secret_id = ?2 AND revoked_at IS NULL",
                    params![env.as_str(), secret_id, now],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_function(&self, function: &NewFunction, now: i64) -> Result<FunctionRecord> {
        let spec = function.clone();
        self.db.write(move |conn| {
            // Atomic: the writer runs each job in its own savepoint.
            let tx: &rusqlite::Connection = conn;
            let previous: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT version, created_at FROM functions WHERE env = ?1 AND name = ?2",
                    params![spec.env.as_str(), spec.name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            let (version, created_at) = previous.map_or((1, now), |(v, c)| (v + 1, c));
            let json = serde_json::to_string(&spec).map_err(db_err)?;
            let result = tx.execute(
                "INSERT INTO functions (env, name, version, spec, http_path, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (env, name) DO UPDATE SET version = excluded.version, spec = excluded.spec,
                   http_path = excluded.http_path, updated_at = excluded.updated_at",
                params![spec.env.as_str(), spec.name.as_str(), version, json, spec.http_path, created_at, now],
            );
            match result {
                Err(e) if is_constraint(&e) => return Err(spec.http_path_taken()),
                other => other.map_err(db_err)?,
            };
            Ok(FunctionRecord { spec, version, created_at, updated_at: now })
        })
        .await
    }

    async fn update_function(
        &self,
        function: &NewFunction,
        version: i64,
        now: i64,
    ) -> Result<Option<FunctionRecord>> {
        let spec = function.clone();
        self.db
            .write(move |conn| {
                let json = serde_json::to_string(&spec).map_err(db_err)?;
                conn.query_row(
                    "UPDATE functions SET version = version + 1, spec = ?4, http_path = ?5, updated_at = ?6
                     WHERE env = ?1 AND name = ?2 AND version = ?3 RETURNING version, created_at",
                    params![spec.env.as_str(), spec.name.as_str(), version, json, spec.http_path, now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| if is_constraint(&e) { spec.http_path_taken() } else { db_err(e) })
                .map(|row| {
                    row.map(|(version, created_at)| FunctionRecord {
                        spec,
                        version,
                        created_at,
                        updated_at: now,
                    })
                })
            })
            .await
    }

    async fn get_function(
        &self,
        env: &EnvId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>> {
        let (env, name) = (env.clone(), name.clone());
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!("SELECT {FUNCTION_COLS} FROM functions WHERE env = ?1 AND name = ?2"),
                    params![env.as_str(), name.as_str()],
                    function_row,
                )
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn list_functions(&self, env: &EnvId) -> Result<Vec<FunctionRecord>> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {FUNCTION_COLS} FROM functions WHERE env = ?1 ORDER BY name"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str()], function_row)
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn delete_function(&self, env: &EnvId, name: &FunctionName) -> Result<bool> {
        let (env, name) = (env.clone(), name.clone());
        self.db
            .write(move |conn| {
                let n = conn
                    .execute(
                        "DELETE FROM functions WHERE env = ?1 AND name = ?2",
                        params![env.as_str(), name.as_str()],
                    )
                    .map_err(db_err)?;
                // Its triggers go with it (its dead letters stay to be read or purged).
                conn.execute(
                    "DELETE FROM triggers WHERE env = ?1 AND function = ?2",
                    params![env.as_str(), name.as_str()],
                )
                .map_err(db_err)?;
                Ok(n > 0)
            })
            .await
    }

    async fn append_invocations(&self, records: Vec<InvocationRecord>) -> Result<()> {
        self.db.write(move |conn| {
            // Atomic: the writer runs each job in its own savepoint.
            let tx: &rusqlite::Connection = conn;
            {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "INSERT OR REPLACE INTO invocations ({INVOCATION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
                    ))
                    .map_err(db_err)?;
                for r in &records {
                    stmt.execute(params![
                        r.request_id, r.env.as_str(), r.function.as_str(), r.version, r.started_at_ms,
                        r.duration_ms, r.billed_ms, r.memory_peak_kb, r.status.as_str(), r.cold_start, r.error,
                        r.attempt, r.trigger, r.memory_mb, r.response_bytes, r.parent_request_id,
                        r.trace_id, r.span_id, r.parent_span_id, r.waited_ms
                    ])
                    .map_err(db_err)?;
                }
            }
            add_usage(tx, &UsageIncrement::of_invocations(&records))
        })
        .await
    }

    async fn append_logs(&self, lines: Vec<NewLogLine>) -> Result<()> {
        self.db.write(move |conn| {
            // Atomic: the writer runs each job in its own savepoint.
            let tx: &rusqlite::Connection = conn;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO logs (env, function, request_id, at_ms, stream, level, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(db_err)?;
                let mut bytes: HashMap<&str, i64> = HashMap::new();
                for l in &lines {
                    stmt.execute(params![l.env.as_str(), l.function.as_str(), l.request_id, l.at_ms, l.stream, l.level, l.message])
                        .map_err(db_err)?;
                    *bytes.entry(l.env.as_str()).or_default() += l.message.len() as i64 + LOG_LINE_OVERHEAD;
                }
                for (env, bytes) in bytes {
                    count_log_bytes(tx, env, bytes)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn get_invocation(
        &self,
        env: &EnvId,
        request_id: &str,
    ) -> Result<Option<InvocationRecord>> {
        let (env, request_id) = (env.clone(), request_id.to_owned());
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!(
                    "SELECT {INVOCATION_COLS} FROM invocations WHERE env = ?1 AND request_id = ?2 ORDER BY attempt DESC LIMIT 1"
                ),
                    params![env.as_str(), request_id],
                    invocation_row,
                )
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn list_invocations(
        &self,
        env: &EnvId,
        function: Option<&FunctionName>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let (env, function) = (env.clone(), function.cloned());
        self.db.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {INVOCATION_COLS} FROM invocations WHERE env = ?1 AND (?2 IS NULL OR function = ?2)
                     ORDER BY started_at_ms DESC LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![env.as_str(), function.as_ref().map(|f| f.as_str()), limit], invocation_row)
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn replace_triggers(
        &self,
        env: &EnvId,
        function: &FunctionName,
        triggers: &[TriggerRecord],
    ) -> Result<()> {
        let (env, function, triggers) = (env.clone(), function.clone(), triggers.to_vec());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM triggers WHERE env = ?1 AND function = ?2",
                    params![env.as_str(), function.as_str()],
                )
                .map_err(db_err)?;
                for t in &triggers {
                    insert_trigger_row(conn, t).map_err(db_err)?;
                }
                Ok(())
            })
            .await
    }

    async fn insert_trigger(&self, trigger: &TriggerRecord) -> Result<()> {
        let t = trigger.clone();
        self.db
            .write(move |conn| match insert_trigger_row(conn, &t) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(YunError::new(
                        ErrorCode::AlreadyExists,
                        format!("function {} already has a trigger {:?}", t.function, t.name),
                    ))
                }
                other => other.map(|_| ()).map_err(db_err),
            })
            .await
    }

    async fn list_triggers(
        &self,
        env: Option<&EnvId>,
        function: Option<&FunctionName>,
    ) -> Result<Vec<TriggerRecord>> {
        let (env, function) = (env.cloned(), function.cloned());
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {TRIGGER_COLS} FROM triggers WHERE (?1 IS NULL OR env = ?1) AND (?2 IS NULL OR function = ?2) ORDER BY env, function, name"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(
                        params![env.as_ref().map(|e| e.as_str()), function.as_ref().map(|f| f.as_str())],
                        trigger_row,
                    )
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn delete_trigger(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
    ) -> Result<bool> {
        let (env, function, name) = (env.clone(), function.clone(), name.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM triggers WHERE env = ?1 AND function = ?2 AND name = ?3",
                    params![env.as_str(), function.as_str(), name],
                )
                .map(|n| n > 0)
                .map_err(db_err)
            })
            .await
    }

    async fn trigger_fired(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
        at_ms: i64,
    ) -> Result<()> {
        let (env, function, name) = (env.clone(), function.clone(), name.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE triggers SET last_fired_ms = ?4 WHERE env = ?1 AND function = ?2 AND name = ?3",
                    params![env.as_str(), function.as_str(), name, at_ms],
                )
                .map(|_| ())
                .map_err(db_err)
            })
            .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let l = letter.clone();
        self.db
            .write(move |conn| {
                conn.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO dead_letters ({DEAD_LETTER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        l.env.as_str(), l.function.as_str(), l.request_id, l.error_code, l.error_message,
                        l.event, l.source, l.trigger, l.retry_num, l.enqueued_at_ms, l.failed_at_ms
                    ])
                })
                .map(|_| ())
                .map_err(db_err)
            })
            .await
    }

    async fn list_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        let (env, function, request_id) =
            (env.clone(), function.clone(), request_id.map(str::to_owned));
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {DEAD_LETTER_COLS} FROM dead_letters WHERE env = ?1 AND function = ?2 AND (?3 IS NULL OR request_id = ?3) ORDER BY failed_at_ms, request_id"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str(), function.as_str(), request_id], dead_letter_row)
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn delete_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<u64> {
        let (env, function, request_id) =
            (env.clone(), function.clone(), request_id.map(str::to_owned));
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM dead_letters WHERE env = ?1 AND function = ?2 AND (?3 IS NULL OR request_id = ?3)",
                    params![env.as_str(), function.as_str(), request_id],
                )
                .map(|n| n as u64)
                .map_err(db_err)
            })
            .await
    }

    async fn query_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>> {
        let q = q.clone();
        let (grep, limit) = q.filter.checked()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.db
            .read(move |conn| {
                let (sql, params) = log_query_sql(&q);
                let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), log_line_row)
                    .map_err(db_err)?;
                // The regular expression filters as rows stream: the limit counts matches.
                let mut lines = Vec::new();
                for row in rows {
                    let line = row.map_err(db_err)?;
                    if grep
                        .as_ref()
                        .is_none_or(|re| re.is_match(&line.line.message))
                    {
                        lines.push(line);
                        if lines.len() >= limit {
                            break;
                        }
                    }
                }
                Ok(lines)
            })
            .await
    }

    async fn count_dead_letters(&self, env: &EnvId) -> Result<Vec<(FunctionName, u64)>> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT function, COUNT(*) FROM dead_letters WHERE env = ?1 GROUP BY function",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str()], |r| Ok((fn_col(r, 0)?, r.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn add_usage(&self, increments: Vec<UsageIncrement>) -> Result<()> {
        self.db
            .write(move |conn| add_usage(conn, &increments))
            .await
    }

    async fn usage(&self, env: &EnvId, period: &str, since_ms: i64) -> Result<Vec<UsageRow>> {
        let (env, period) = (env.clone(), period.to_owned());
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT function, start_ms, invocations, errors, mb_ms, billed_ms, egress_bytes, db_reads, db_writes
                         FROM usage WHERE env = ?1 AND period = ?2 AND start_ms >= ?3 ORDER BY start_ms, function",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_str(), period, since_ms], |r| {
                        Ok(UsageRow {
                            env: env.clone(),
                            function: r.get(0)?,
                            period: period.clone(),
                            start_ms: r.get(1)?,
                            counts: UsageCounts {
                                invocations: r.get(2)?,
                                errors: r.get(3)?,
                                mb_ms: r.get(4)?,
                                billed_ms: r.get(5)?,
                                egress_bytes: r.get(6)?,
                                db_reads: r.get(7)?,
                                db_writes: r.get(8)?,
                            },
                        })
                    })
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn prune(
        &self,
        env: &EnvId,
        retention: Retention,
        now_ms: i64,
        batch: u32,
    ) -> Result<Pruned> {
        let env = env.clone();
        self.db
            .write(move |conn| {
                let tx: &rusqlite::Connection = conn;
                let cutoff = now_ms.saturating_sub(retention.max_age_ms);
                let bytes: i64 = tx
                    .query_row("SELECT bytes FROM log_bytes WHERE env = ?1", params![env.as_str()], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?
                    .unwrap_or(0);
                let excess = bytes.saturating_sub(i64::try_from(retention.max_bytes).unwrap_or(i64::MAX));
                // The oldest lines of the env (ids grow with time): those past the age
                // limit, and as many more as bring the env under its size limit.
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM logs WHERE id IN (
                            SELECT id FROM (
                                SELECT id, at_ms, SUM(length(CAST(message AS BLOB)) + ?5) OVER (ORDER BY id) - (length(CAST(message AS BLOB)) + ?5) AS before
                                FROM (SELECT id, at_ms, message FROM logs WHERE env = ?1 ORDER BY id LIMIT ?2))
                            WHERE before < ?3 OR at_ms < ?4)
                         RETURNING length(CAST(message AS BLOB))",
                    )
                    .map_err(db_err)?;
                let freed: Vec<i64> = stmt
                    .query_map(params![env.as_str(), batch, excess, cutoff, LOG_LINE_OVERHEAD], |r| r.get(0))
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(db_err)?;
                let logs = freed.len() as u64;
                let freed_bytes: i64 = freed.iter().map(|n| n + LOG_LINE_OVERHEAD).sum();
                if freed_bytes > 0 {
                    count_log_bytes(tx, env.as_str(), -freed_bytes)?;
                }
                let records = tx
                    .prepare_cached(
                        "DELETE FROM invocations WHERE env = ?1 AND started_at_ms < ?2 AND (request_id, attempt) IN
                           (SELECT request_id, attempt FROM invocations WHERE env = ?1 AND started_at_ms < ?2 LIMIT ?3)",
                    )
                    .and_then(|mut s| s.execute(params![env.as_str(), cutoff, batch]))
                    .map_err(db_err)? as u64;
                let spans = tx
                    .prepare_cached(
                        "DELETE FROM spans WHERE env = ?1 AND start_us < ?2 AND (trace_id, span_id) IN
                           (SELECT trace_id, span_id FROM spans WHERE env = ?1 AND start_us < ?2 LIMIT ?3)",
                    )
                    .and_then(|mut s| s.execute(params![env.as_str(), cutoff.saturating_mul(1000), batch]))
                    .map_err(db_err)? as u64;
                tx.prepare_cached(
                    "DELETE FROM usage WHERE env = ?1 AND ((period = 'hour' AND start_ms < ?2) OR (period = 'day' AND start_ms < ?3))",
                )
                .and_then(|mut s| s.execute(params![env.as_str(), now_ms - USAGE_HOURS_KEPT_MS, now_ms - USAGE_DAYS_KEPT_MS]))
                .map_err(db_err)?;
                Ok(Pruned {
                    logs,
                    records,
                    more: [logs, records, spans].contains(&u64::from(batch)),
                })
            })
            .await
    }

    async fn append_spans(&self, spans: Vec<SpanRecord>) -> Result<()> {
        self.db
            .write(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO spans (env, trace_id, span_id, parent_span_id, name, start_us, duration_us, status, function)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(db_err)?;
                for s in &spans {
                    stmt.execute(params![
                        s.env.as_str(), s.trace_id, s.span_id, s.parent_span_id, s.name, s.start_us,
                        s.duration_us, s.status, s.function
                    ])
                    .map_err(db_err)?;
                }
                Ok(())
            })
            .await
    }

    async fn trace(
        &self,
        env: &EnvId,
        request_id: &str,
        trace_id: &str,
    ) -> Result<(Vec<InvocationRecord>, Vec<SpanRecord>)> {
        let (env, request_id, trace_id) = (env.clone(), request_id.to_owned(), trace_id.to_owned());
        self.db
            .read(move |conn| {
                // The request and what it caused, by the parent links (an index only
                // caused invocations have), rather than an index of every record's trace.
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "WITH RECURSIVE tree(id) AS (
                            SELECT ?2 UNION SELECT i.request_id FROM invocations i JOIN tree ON i.parent_request_id = tree.id WHERE i.env = ?1)
                         SELECT {INVOCATION_COLS} FROM invocations WHERE request_id IN tree AND env = ?1
                         ORDER BY started_at_ms LIMIT 10000"
                    ))
                    .map_err(db_err)?;
                let invocations = stmt
                    .query_map(params![env.as_str(), request_id], invocation_row)
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db_err)?;
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT env, trace_id, span_id, parent_span_id, name, start_us, duration_us, status, function
                         FROM spans WHERE trace_id = ?1 AND env = ?2 ORDER BY start_us LIMIT 10000",
                    )
                    .map_err(db_err)?;
                let spans = stmt
                    .query_map(params![trace_id, env.as_str()], |r| {
                        Ok(SpanRecord {
                            env: env_col(r, 0)?,
                            trace_id: r.get(1)?,
                            span_id: r.get(2)?,
                            parent_span_id: r.get(3)?,
                            name: r.get(4)?,
                            start_us: r.get(5)?,
                            duration_us: r.get(6)?,
                            status: r.get(7)?,
                            function: r.get(8)?,
                            request_id: None,
                        })
                    })
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db_err)?;
                Ok((invocations, spans))
            })
            .await
    }

    async fn insert_alert(&self, rule: &AlertRule) -> Result<()> {
        let rule = rule.clone();
        let spec = serde_json::to_string(&rule).map_err(YunError::internal)?;
        self.db
            .write(move |conn| {
                let n = conn
                    .execute(
                        "INSERT INTO alerts (env, name, spec) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                        params![rule.env.as_str(), rule.name, spec],
                    )
                    .map_err(db_err)?;
                if n == 0 {
                    return Err(YunError::new(
                        ErrorCode::AlreadyExists,
                        format!("env {} already has an alert named {}", rule.env, rule.name),
                    ));
                }
                Ok(())
            })
            .await
    }

    async fn list_alerts(&self, env: Option<&EnvId>) -> Result<Vec<AlertRule>> {
        let env = env.cloned();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT spec FROM alerts WHERE ?1 IS NULL OR env = ?1 ORDER BY env, name",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![env.as_ref().map(EnvId::as_str)], |r| {
                        r.get::<_, String>(0)
                    })
                    .map_err(db_err)?;
                rows.map(|spec| {
                    let spec = spec.map_err(db_err)?;
                    serde_json::from_str(&spec).map_err(YunError::internal)
                })
                .collect()
            })
            .await
    }

    async fn delete_alert(&self, env: &EnvId, name: &str) -> Result<bool> {
        let (env, name) = (env.clone(), name.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM alerts WHERE env = ?1 AND name = ?2",
                    params![env.as_str(), name],
                )
                .map(|n| n > 0)
                .map_err(db_err)
            })
            .await
    }

    async fn set_alert_state(
        &self,
        env: &EnvId,
        name: &str,
        value: f64,
        firing: bool,
        at_ms: i64,
    ) -> Result<bool> {
        let (env, name) = (env.clone(), name.to_owned());
        self.db
            .write(move |conn| {
                let spec: Option<String> = conn
                    .query_row(
                        "SELECT spec FROM alerts WHERE env = ?1 AND name = ?2",
                        params![env.as_str(), name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                // Deleted meanwhile: nothing to record.
                let Some(spec) = spec else { return Ok(false) };
                let mut rule: AlertRule =
                    serde_json::from_str(&spec).map_err(YunError::internal)?;
                let changed = rule.firing != firing;
                if changed {
                    rule.changed_at_ms = Some(at_ms);
                }
                rule.firing = firing;
                rule.last_value = Some(value);
                let spec = serde_json::to_string(&rule).map_err(YunError::internal)?;
                conn.execute(
                    "UPDATE alerts SET spec = ?3 WHERE env = ?1 AND name = ?2",
                    params![env.as_str(), name, spec],
                )
                .map(|_| changed)
                .map_err(db_err)
            })
            .await
    }

    async fn invocation_stats(
        &self,
        env: &EnvId,
        function: Option<&FunctionName>,
        since_ms: i64,
        with_p95: bool,
    ) -> Result<InvocationStats> {
        let (env, function) = (env.clone(), function.cloned());
        self.db
            .read(move |conn| {
                let f = function.as_ref().map(FunctionName::as_str);
                let (invocations, errors, throttles): (u64, u64, u64) = conn
                    .prepare_cached(
                        "SELECT COUNT(*), COALESCE(SUM(status != 'success'), 0), COALESCE(SUM(status = 'throttled'), 0)
                         FROM invocations WHERE env = ?1 AND (?2 IS NULL OR function = ?2) AND started_at_ms >= ?3",
                    )
                    .and_then(|mut s| s.query_row(params![env.as_str(), f, since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
                    .map_err(db_err)?;
                // Nearest rank: the ceil(0.95 n)-th smallest.
                let p95_ms = if invocations == 0 || !with_p95 {
                    0
                } else {
                    let rank = (invocations * 95).div_ceil(100).max(1) - 1;
                    conn.prepare_cached(
                        "SELECT duration_ms FROM invocations WHERE env = ?1 AND (?2 IS NULL OR function = ?2) AND started_at_ms >= ?3
                         ORDER BY duration_ms LIMIT 1 OFFSET ?4",
                    )
                    .and_then(|mut s| s.query_row(params![env.as_str(), f, since_ms, rank], |r| r.get(0)).optional())
                    .map_err(db_err)?
                    // Pruned between the two reads: no figure this time.
                    .unwrap_or(0)
                };
                Ok(InvocationStats {
                    invocations,
                    errors,
                    throttles,
                    p95_ms,
                })
            })
            .await
    }

    async fn log_bytes(&self, env: &EnvId) -> Result<u64> {
        let env = env.clone();
        self.db
            .read(move |conn| {
                conn.query_row(
                    "SELECT bytes FROM log_bytes WHERE env = ?1",
                    params![env.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::unwrap_or_default)
                .map_err(db_err)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(s: &str) -> EnvId {
        EnvId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn invocation_records_survive_the_moves_of_their_table() {
        // From before the table keyed by request id, and from before the one keyed by
        // (request id, attempt): both had these eleven columns.
        for before in [MIGRATIONS.len() - 3, MIGRATIONS.len() - 2] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("meta.db");
            {
                let db = Sqlite::open(&path, &MIGRATIONS[..before]).unwrap();
                db.write(|conn| {
                    conn.execute_batch(
                        "INSERT INTO invocations VALUES ('r1', 'a', 'f', 1, 10, 5, 5, 100, 'success', 1, NULL);",
                    )
                    .map_err(db_err)
                })
                .await
                .unwrap();
            }
            let store = SqliteMetaStore::open(&path).unwrap();
            let record = store
                .get_invocation(&env("a"), "r1")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (
                    record.duration_ms,
                    record.cold_start,
                    record.attempt,
                    record.trigger
                ),
                (5, true, 1, None)
            );
            assert!(store
                .get_invocation(&env("b"), "r1")
                .await
                .unwrap()
                .is_none());
        }
    }
}
