//! Platform metadata on PostgreSQL: envs, keys, rules, functions, triggers, alerts, dead
//! letters, and the write-heavy streams (invocation records, logs, spans, usage).
//!
//! Single-row changes are one statement each (autocommit), written so that nodes racing
//! on one row both get a well-defined answer: a deploy bumps the version in the upsert
//! itself, a first `master_key` inserts-or-keeps. The streams arrive in batches and go in
//! with one `unnest` statement per table; counters (usage roll-ups, log bytes) are upserts
//! whose rows every writer locks in one order, so concurrent batches never deadlock.
//! Log ids come from a sequence: they grow with time on one node, but lines of several
//! nodes may commit out of id order, so a follower (`after_id`) can miss a line that
//! commits late by at most the length of a batch's transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Row;
use yun_meta::*;
use yun_types::{unix_now, EnvId, ErrorCode, FunctionName, YunError};

use crate::{Postgres, Txn};

fn migrations() -> Vec<String> {
    vec![r#"
CREATE TABLE meta_settings (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE envs (id text COLLATE "C" PRIMARY KEY, created_at bigint NOT NULL);
CREATE TABLE keys (
    secret_id text PRIMARY KEY,
    secret_key text NOT NULL,
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    role text NOT NULL,
    description text NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
);
CREATE INDEX keys_env ON keys(env);
CREATE TABLE env_settings (
    env text COLLATE "C" PRIMARY KEY REFERENCES envs(id) ON DELETE CASCADE,
    settings text NOT NULL
);
CREATE TABLE rules (
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    target text COLLATE "C" NOT NULL,
    spec text NOT NULL,
    PRIMARY KEY (env, target)
);
CREATE TABLE functions (
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    name text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    spec text NOT NULL,
    http_path text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (env, name)
);
CREATE UNIQUE INDEX functions_http_path ON functions(env, http_path) WHERE http_path IS NOT NULL;
CREATE TABLE invocations (
    request_id text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,
    env text COLLATE "C" NOT NULL,
    function text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    started_at_ms bigint NOT NULL,
    duration_ms bigint NOT NULL,
    billed_ms bigint NOT NULL,
    memory_peak_kb bigint NOT NULL,
    status text NOT NULL,
    cold_start boolean NOT NULL,
    error text,
    trigger text,
    memory_mb integer NOT NULL,
    response_bytes bigint NOT NULL,
    parent_request_id text COLLATE "C",
    trace_id text NOT NULL,
    span_id text NOT NULL,
    parent_span_id text,
    waited_ms bigint NOT NULL,
    PRIMARY KEY (request_id, attempt)
);
CREATE INDEX invocations_by_function ON invocations(env, function, started_at_ms);
CREATE INDEX invocations_by_age ON invocations(env, started_at_ms);
CREATE INDEX invocations_by_parent ON invocations(parent_request_id)
    WHERE parent_request_id IS NOT NULL;
CREATE TABLE logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env text COLLATE "C" NOT NULL,
    function text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    stream text NOT NULL,
    level text NOT NULL,
    message text NOT NULL
);
CREATE INDEX logs_by_function ON logs(env, function, id);
CREATE INDEX logs_by_request ON logs(request_id);
CREATE INDEX logs_by_env ON logs(env, id);
CREATE TABLE log_bytes (env text COLLATE "C" PRIMARY KEY, bytes bigint NOT NULL);
CREATE TABLE usage (
    env text COLLATE "C" NOT NULL,
    function text COLLATE "C" NOT NULL,
    period text NOT NULL,
    start_ms bigint NOT NULL,
    invocations bigint NOT NULL,
    errors bigint NOT NULL,
    mb_ms bigint NOT NULL,
    billed_ms bigint NOT NULL,
    egress_bytes bigint NOT NULL,
    db_reads bigint NOT NULL,
    db_writes bigint NOT NULL,
    PRIMARY KEY (env, period, start_ms, function)
);
CREATE TABLE spans (
    env text COLLATE "C" NOT NULL,
    trace_id text COLLATE "C" NOT NULL,
    span_id text COLLATE "C" NOT NULL,
    parent_span_id text,
    name text NOT NULL,
    start_us bigint NOT NULL,
    duration_us bigint NOT NULL,
    status text NOT NULL,
    function text,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_by_age ON spans(env, start_us);
CREATE TABLE alerts (
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    name text COLLATE "C" NOT NULL,
    spec text NOT NULL,
    PRIMARY KEY (env, name)
);
CREATE TABLE dead_letters (
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    function text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    error_code text NOT NULL,
    error_message text NOT NULL,
    event text NOT NULL,
    source text NOT NULL,
    trigger text,
    retry_num integer NOT NULL,
    enqueued_at_ms bigint NOT NULL,
    failed_at_ms bigint NOT NULL,
    PRIMARY KEY (env, function, request_id)
);
CREATE TABLE triggers (
    env text COLLATE "C" NOT NULL REFERENCES envs(id) ON DELETE CASCADE,
    function text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    kind text NOT NULL,
    config text NOT NULL,
    created_at_ms bigint NOT NULL,
    last_fired_ms bigint,
    PRIMARY KEY (env, function, name)
);
"#
    .to_owned()]
}

/// The columns `invocation` reads, in its order (macros so the statements stay literals).
macro_rules! invocation_columns {
    () => {
        "request_id, env, function, version, started_at_ms, duration_ms, billed_ms, memory_peak_kb, status, cold_start, error, attempt, trigger, memory_mb, response_bytes, parent_request_id, trace_id, span_id, parent_span_id, waited_ms"
    };
}
macro_rules! key_columns {
    () => {
        "secret_id, secret_key, env, role, description, created_at, revoked_at"
    };
}
macro_rules! function_columns {
    () => {
        "spec, version, created_at, updated_at"
    };
}
macro_rules! trigger_columns {
    () => {
        "env, function, name, kind, config, created_at_ms, last_fired_ms"
    };
}
/// A trigger's values in `trigger_columns!` order (a macro: the borrowed `&str`s must live
/// in the caller's statement).
macro_rules! trigger_params {
    ($t:expr) => {
        &[
            &$t.env.as_str(),
            &$t.function.as_str(),
            &$t.name,
            &$t.kind,
            &$t.config,
            &$t.created_at_ms,
            &$t.last_fired_ms,
        ]
    };
}
macro_rules! dead_letter_columns {
    () => {
        "env, function, request_id, error_code, error_message, event, source, trigger, retry_num, enqueued_at_ms, failed_at_ms"
    };
}

fn stored<T>(what: &str) -> impl FnOnce(T) -> YunError + '_
where
    T: std::fmt::Display,
{
    move |e| YunError::internal(format!("a stored {what} is unreadable: {e}"))
}

fn env_at(row: &Row, i: usize) -> Result<EnvId> {
    EnvId::parse(row.get::<_, &str>(i)).map_err(stored("env id"))
}

fn function_at(row: &Row, i: usize) -> Result<FunctionName> {
    FunctionName::parse(row.get::<_, &str>(i)).map_err(stored("function name"))
}

/// A count or size PostgreSQL keeps as `bigint`.
fn unsigned(row: &Row, i: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(i)).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn key(row: &Row) -> Result<KeyRecord> {
    Ok(KeyRecord {
        secret_id: row.get(0),
        secret_key: row.get(1),
        env: env_at(row, 2)?,
        role: if row.get::<_, &str>(3) == "platform" {
            KeyRole::Platform
        } else {
            KeyRole::Env
        },
        description: row.get(4),
        created_at: row.get(5),
        revoked_at: row.get(6),
    })
}

fn function(row: &Row) -> Result<FunctionRecord> {
    Ok(FunctionRecord {
        spec: serde_json::from_str(row.get(0)).map_err(stored("function"))?,
        version: row.get(1),
        created_at: row.get(2),
        updated_at: row.get(3),
    })
}

fn invocation(row: &Row) -> Result<InvocationRecord> {
    Ok(InvocationRecord {
        request_id: row.get(0),
        env: env_at(row, 1)?,
        function: function_at(row, 2)?,
        version: row.get(3),
        started_at_ms: row.get(4),
        duration_ms: unsigned(row, 5),
        billed_ms: unsigned(row, 6),
        memory_peak_kb: unsigned(row, 7),
        status: InvocationStatus::parse(row.get(8)).unwrap_or(InvocationStatus::Error),
        cold_start: row.get(9),
        error: row.get(10),
        attempt: row.get::<_, i32>(11) as u32,
        trigger: row.get(12),
        memory_mb: row.get::<_, i32>(13) as u32,
        response_bytes: unsigned(row, 14),
        parent_request_id: row.get(15),
        trace_id: row.get(16),
        span_id: row.get(17),
        parent_span_id: row.get(18),
        waited_ms: unsigned(row, 19),
    })
}

fn trigger(row: &Row) -> Result<TriggerRecord> {
    Ok(TriggerRecord {
        env: env_at(row, 0)?,
        function: function_at(row, 1)?,
        name: row.get(2),
        kind: row.get(3),
        config: row.get(4),
        created_at_ms: row.get(5),
        last_fired_ms: row.get(6),
    })
}

fn dead_letter(row: &Row) -> Result<DeadLetter> {
    Ok(DeadLetter {
        env: env_at(row, 0)?,
        function: function_at(row, 1)?,
        request_id: row.get(2),
        error_code: row.get(3),
        error_message: row.get(4),
        event: row.get(5),
        source: row.get(6),
        trigger: row.get(7),
        retry_num: row.get::<_, i32>(8) as u32,
        enqueued_at_ms: row.get(9),
        failed_at_ms: row.get(10),
    })
}

fn log_line(row: &Row) -> Result<LogLine> {
    Ok(LogLine {
        id: row.get(0),
        line: NewLogLine {
            env: env_at(row, 1)?,
            function: function_at(row, 2)?,
            request_id: row.get(3),
            at_ms: row.get(4),
            stream: row.get(5),
            level: row.get(6),
            message: row.get(7),
        },
    })
}

/// Text PostgreSQL can store: a NUL (which SQLite keeps) becomes U+FFFD, so one function
/// printing one does not lose the whole batch its lines or records are written in.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}").into()
    } else {
        text.into()
    }
}

fn all<T>(rows: Vec<Row>, each: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(each).collect()
}

const INSERT_INVOCATIONS: &str = concat!(
    "INSERT INTO invocations (",
    invocation_columns!(),
    ") SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::boolean[], $11::text[], $12::integer[], $13::text[], $14::integer[], $15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[], $20::bigint[])
     ON CONFLICT (request_id, attempt) DO UPDATE SET env = excluded.env, function = excluded.function,
       version = excluded.version, started_at_ms = excluded.started_at_ms, duration_ms = excluded.duration_ms,
       billed_ms = excluded.billed_ms, memory_peak_kb = excluded.memory_peak_kb, status = excluded.status,
       cold_start = excluded.cold_start, error = excluded.error, trigger = excluded.trigger,
       memory_mb = excluded.memory_mb, response_bytes = excluded.response_bytes,
       parent_request_id = excluded.parent_request_id, trace_id = excluded.trace_id,
       span_id = excluded.span_id, parent_span_id = excluded.parent_span_id, waited_ms = excluded.waited_ms"
);

/// Adds to the usage roll-ups, in the caller's transaction.
fn add_usage(txn: &Txn<'_>, increments: &[UsageIncrement]) -> Result<()> {
    let rows = usage_rows(increments);
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&UsageCounts) -> u64| -> Vec<i64> {
        rows.iter().map(|(_, c)| signed(f(c))).collect()
    };
    let envs: Vec<&str> = rows.iter().map(|((e, ..), _)| *e).collect();
    let functions: Vec<&str> = rows.iter().map(|((_, f, ..), _)| *f).collect();
    let periods: Vec<&str> = rows.iter().map(|((_, _, p, _), _)| *p).collect();
    let starts: Vec<i64> = rows.iter().map(|((.., s), _)| *s).collect();
    txn.execute(
        "INSERT INTO usage (env, function, period, start_ms, invocations, errors, mb_ms, billed_ms, egress_bytes, db_reads, db_writes)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
         ON CONFLICT (env, period, start_ms, function) DO UPDATE SET
            invocations = usage.invocations + excluded.invocations, errors = usage.errors + excluded.errors,
            mb_ms = usage.mb_ms + excluded.mb_ms, billed_ms = usage.billed_ms + excluded.billed_ms,
            egress_bytes = usage.egress_bytes + excluded.egress_bytes,
            db_reads = usage.db_reads + excluded.db_reads, db_writes = usage.db_writes + excluded.db_writes",
        &[
            &envs,
            &functions,
            &periods,
            &starts,
            &column(|c| c.invocations),
            &column(|c| c.errors),
            &column(|c| c.mb_ms),
            &column(|c| c.billed_ms),
            &column(|c| c.egress_bytes),
            &column(|c| c.db_reads),
            &column(|c| c.db_writes),
        ],
    )?;
    Ok(())
}

/// Moves an env's log byte count by `bytes`, never below zero.
fn count_log_bytes(txn: &Txn<'_>, env: &str, bytes: i64) -> Result<()> {
    txn.execute(
        "INSERT INTO log_bytes (env, bytes) VALUES ($1, greatest($2::bigint, 0))
         ON CONFLICT (env) DO UPDATE SET bytes = greatest(log_bytes.bytes + $2::bigint, 0)",
        &[&env, &bytes],
    )?;
    Ok(())
}

/// The log query's SQL and parameters: only the conditions asked for, so the planner
/// picks the index that fits (by request, by function, by env).
fn log_query_sql(
    q: &LogQuery,
) -> (
    String,
    Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) {
    type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;
    let mut params: Vec<Param> = vec![Box::new(q.env.to_string())];
    let mut sql = String::new();
    let mut conds = vec!["env = $1".to_owned()];
    let mut param = |v: Param| {
        params.push(v);
        format!("${}", params.len())
    };
    if let Some(id) = &q.filter.request_id {
        let p = param(Box::new(id.clone()));
        if q.filter.caused {
            sql.push_str(&format!(
                "WITH RECURSIVE tree(id) AS (SELECT {p}::text COLLATE \"C\" UNION SELECT i.request_id FROM invocations i JOIN tree ON i.parent_request_id = tree.id WHERE i.env = $1) "
            ));
            conds.push("request_id IN (SELECT id FROM tree)".into());
        } else {
            conds.push(format!("request_id = {p}"));
        }
    }
    if let Some(f) = &q.function {
        conds.push(format!("function = {}", param(Box::new(f.to_string()))));
    }
    if let Some(ms) = q.filter.since_ms {
        conds.push(format!("at_ms >= {}", param(Box::new(ms))));
    }
    if let Some(ms) = q.filter.until_ms {
        conds.push(format!("at_ms <= {}", param(Box::new(ms))));
    }
    if let Some(stream) = &q.filter.stream {
        conds.push(format!("stream = {}", param(Box::new(stream.clone()))));
    }
    if let Some(text) = &q.filter.contains {
        conds.push(format!(
            "strpos(message, {}) > 0",
            param(Box::new(text.clone()))
        ));
    }
    if let Some(levels) = q.filter.levels() {
        let levels: Vec<String> = levels.iter().map(|l| (*l).to_owned()).collect();
        conds.push(format!("level = ANY({})", param(Box::new(levels))));
    }
    if let Some(id) = q.filter.after_id {
        conds.push(format!("id > {}", param(Box::new(id))));
    }
    sql.push_str(&format!(
        "SELECT id, env, function, request_id, at_ms, stream, level, message FROM logs WHERE {} ORDER BY id",
        conds.join(" AND ")
    ));
    (sql, params)
}

pub struct PgMetaStore {
    pg: Postgres,
}

impl PgMetaStore {
    pub async fn open(pg: Postgres) -> Result<Self> {
        pg.migrate("meta", &migrations()).await?;
        Ok(Self { pg })
    }
}

#[async_trait]
impl MetaStore for PgMetaStore {
    async fn master_key(&self) -> Result<Vec<u8>> {
        // Nodes starting together: the first insert wins, every node reads the winner.
        let fresh = yun_types::new_id("").into_bytes();
        self.pg
            .execute(
                "INSERT INTO meta_settings (key, value) VALUES ('master_key', $1) ON CONFLICT DO NOTHING",
                &[&fresh],
            )
            .await?;
        let row = self
            .pg
            .query_opt(
                "SELECT value FROM meta_settings WHERE key = 'master_key'",
                &[],
            )
            .await?
            .ok_or_else(|| YunError::internal("the master key vanished"))?;
        Ok(row.get(0))
    }

    async fn create_env(&self, env: &EnvId) -> Result<EnvRecord> {
        let now = unix_now();
        let inserted = self
            .pg
            .execute(
                "INSERT INTO envs (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&env.as_str(), &now],
            )
            .await?;
        if inserted == 0 {
            return Err(YunError::new(
                ErrorCode::AlreadyExists,
                format!("env {env} already exists"),
            ));
        }
        Ok(EnvRecord {
            id: env.clone(),
            created_at: now,
        })
    }

    async fn get_env(&self, env: &EnvId) -> Result<Option<EnvRecord>> {
        let row = self
            .pg
            .query_opt(
                "SELECT created_at FROM envs WHERE id = $1",
                &[&env.as_str()],
            )
            .await?;
        Ok(row.map(|r| EnvRecord {
            id: env.clone(),
            created_at: r.get(0),
        }))
    }

    async fn list_envs(&self) -> Result<Vec<EnvRecord>> {
        let rows = self
            .pg
            .query("SELECT id, created_at FROM envs ORDER BY id", &[])
            .await?;
        all(rows, |r| {
            Ok(EnvRecord {
                id: env_at(r, 0)?,
                created_at: r.get(1),
            })
        })
    }

    async fn delete_env(&self, env: &EnvId) -> Result<bool> {
        let env = env.to_string();
        self.pg
            .transaction(false, move |txn| {
                // Keys, functions, rules, triggers, … cascade; the streams go explicitly.
                for sql in [
                    "DELETE FROM invocations WHERE env = $1",
                    "DELETE FROM logs WHERE env = $1",
                    "DELETE FROM log_bytes WHERE env = $1",
                    "DELETE FROM usage WHERE env = $1",
                    "DELETE FROM spans WHERE env = $1",
                ] {
                    txn.execute(sql, &[&env])?;
                }
                Ok(txn.execute("DELETE FROM envs WHERE id = $1", &[&env])? > 0)
            })
            .await
    }

    async fn env_settings(&self, env: &EnvId) -> Result<EnvSettings> {
        let row = self
            .pg
            .query_opt(
                "SELECT settings FROM env_settings WHERE env = $1",
                &[&env.as_str()],
            )
            .await?;
        match row {
            Some(r) => serde_json::from_str(r.get(0)).map_err(stored("env settings")),
            None => Ok(EnvSettings::default()),
        }
    }

    async fn put_env_settings(&self, env: &EnvId, settings: &EnvSettings) -> Result<()> {
        let text = serde_json::to_string(settings).map_err(YunError::internal)?;
        self.pg
            .execute(
                "INSERT INTO env_settings (env, settings) VALUES ($1, $2) ON CONFLICT (env) DO UPDATE SET settings = excluded.settings",
                &[&env.as_str(), &text],
            )
            .await?;
        Ok(())
    }

    async fn list_rules(&self, env: &EnvId) -> Result<Vec<(String, serde_json::Value)>> {
        let rows = self
            .pg
            .query(
                "SELECT target, spec FROM rules WHERE env = $1 ORDER BY target",
                &[&env.as_str()],
            )
            .await?;
        all(rows, |r| {
            Ok((
                r.get(0),
                serde_json::from_str(r.get(1)).map_err(stored("rule"))?,
            ))
        })
    }

    async fn put_rules(
        &self,
        env: &EnvId,
        target: &str,
        spec: Option<&serde_json::Value>,
    ) -> Result<()> {
        match spec {
            Some(spec) => self.pg.execute(
                "INSERT INTO rules (env, target, spec) VALUES ($1, $2, $3) ON CONFLICT (env, target) DO UPDATE SET spec = excluded.spec",
                &[&env.as_str(), &target, &spec.to_string()],
            ).await,
            None => self.pg.execute(
                "DELETE FROM rules WHERE env = $1 AND target = $2",
                &[&env.as_str(), &target],
            ).await,
        }?;
        Ok(())
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        self.pg
            .execute(
                concat!(
                    "INSERT INTO keys (",
                    key_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ),
                &[
                    &key.secret_id,
                    &key.secret_key,
                    &key.env.as_str(),
                    &key.role.as_str(),
                    &key.description,
                    &key.created_at,
                    &key.revoked_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn get_key(&self, secret_id: &str) -> Result<Option<KeyRecord>> {
        self.pg
            .query_opt(
                concat!("SELECT ", key_columns!(), " FROM keys WHERE secret_id = $1"),
                &[&secret_id],
            )
            .await?
            .as_ref()
            .map(key)
            .transpose()
    }

    async fn list_keys(&self, env: &EnvId) -> Result<Vec<KeyRecord>> {
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM keys WHERE env = $1 ORDER BY created_at, secret_id"
                ),
                &[&env.as_str()],
            )
            .await?;
        all(rows, key)
    }

    async fn revoke_key(&self, env: &EnvId, secret_id: &str, now: i64) -> Result<bool> {
        Ok(self
            .pg
            .execute(
                "UPDATE keys SET revoked_at = $3 WHERE env = $1 AND secret_id = $2 AND revoked_at IS NULL",
                &[&env.as_str(), &secret_id, &now],
            )
            .await?
            > 0)
    }

    async fn put_function(&self, spec: &NewFunction, now: i64) -> Result<FunctionRecord> {
        let json = serde_json::to_string(spec).map_err(YunError::internal)?;
        // The version moves in the upsert itself: two nodes deploying one function at
        // once make two versions, in the order their statements took the row.
        let rows = self
            .pg
            .query_unique(
                "INSERT INTO functions (env, name, version, spec, http_path, created_at, updated_at)
                 VALUES ($1, $2, 1, $3, $4, $5, $5)
                 ON CONFLICT (env, name) DO UPDATE SET version = functions.version + 1, spec = excluded.spec,
                   http_path = excluded.http_path, updated_at = excluded.updated_at
                 RETURNING version, created_at",
                &[&spec.env.as_str(), &spec.name.as_str(), &json, &spec.http_path, &now],
            )
            .await?
            .ok_or_else(|| spec.http_path_taken())?;
        let row = rows
            .first()
            .ok_or_else(|| YunError::internal("a deploy returned no version"))?;
        Ok(FunctionRecord {
            spec: spec.clone(),
            version: row.get(0),
            created_at: row.get(1),
            updated_at: now,
        })
    }

    async fn update_function(
        &self,
        spec: &NewFunction,
        version: i64,
        now: i64,
    ) -> Result<Option<FunctionRecord>> {
        let json = serde_json::to_string(spec).map_err(YunError::internal)?;
        // The version check and the write are one statement: the row is locked between.
        let rows = self
            .pg
            .query_unique(
                "UPDATE functions SET version = version + 1, spec = $4, http_path = $5, updated_at = $6
                 WHERE env = $1 AND name = $2 AND version = $3 RETURNING version, created_at",
                &[&spec.env.as_str(), &spec.name.as_str(), &version, &json, &spec.http_path, &now],
            )
            .await?
            .ok_or_else(|| spec.http_path_taken())?;
        Ok(rows.first().map(|row| FunctionRecord {
            spec: spec.clone(),
            version: row.get(0),
            created_at: row.get(1),
            updated_at: now,
        }))
    }

    async fn get_function(
        &self,
        env: &EnvId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>> {
        self.pg
            .query_opt(
                concat!(
                    "SELECT ",
                    function_columns!(),
                    " FROM functions WHERE env = $1 AND name = $2"
                ),
                &[&env.as_str(), &name.as_str()],
            )
            .await?
            .as_ref()
            .map(function)
            .transpose()
    }

    async fn list_functions(&self, env: &EnvId) -> Result<Vec<FunctionRecord>> {
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    function_columns!(),
                    " FROM functions WHERE env = $1 ORDER BY name"
                ),
                &[&env.as_str()],
            )
            .await?;
        all(rows, function)
    }

    async fn delete_function(&self, env: &EnvId, name: &FunctionName) -> Result<bool> {
        let (env, name) = (env.to_string(), name.to_string());
        self.pg
            .transaction(false, move |txn| {
                let n = txn.execute(
                    "DELETE FROM functions WHERE env = $1 AND name = $2",
                    &[&env, &name],
                )?;
                // Its triggers go with it (its dead letters stay to be read or purged).
                txn.execute(
                    "DELETE FROM triggers WHERE env = $1 AND function = $2",
                    &[&env, &name],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn append_invocations(&self, records: Vec<InvocationRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.pg
            .transaction(false, move |txn| {
                // One row per (request, attempt), the last written winning (an upsert may
                // not touch a row twice in one statement).
                let mut latest: BTreeMap<(&str, u32), &InvocationRecord> = BTreeMap::new();
                for r in &records {
                    latest.insert((r.request_id.as_str(), r.attempt), r);
                }
                let rows: Vec<&InvocationRecord> = latest.into_values().collect();
                let text = |f: fn(&InvocationRecord) -> &str| -> Vec<&str> {
                    rows.iter().map(|r| f(r)).collect()
                };
                let optional = |f: fn(&InvocationRecord) -> Option<&str>| -> Vec<Option<&str>> {
                    rows.iter().map(|r| f(r)).collect()
                };
                let big = |f: fn(&InvocationRecord) -> i64| -> Vec<i64> {
                    rows.iter().map(|r| f(r)).collect()
                };
                let small = |f: fn(&InvocationRecord) -> u32| -> Vec<i32> {
                    rows.iter().map(|r| f(r) as i32).collect()
                };
                txn.execute(
                    INSERT_INVOCATIONS,
                    &[
                        &text(|r| &r.request_id),
                        &text(|r| r.env.as_str()),
                        &text(|r| r.function.as_str()),
                        &big(|r| r.version),
                        &big(|r| r.started_at_ms),
                        &big(|r| signed(r.duration_ms)),
                        &big(|r| signed(r.billed_ms)),
                        &big(|r| signed(r.memory_peak_kb)),
                        &text(|r| r.status.as_str()),
                        &rows.iter().map(|r| r.cold_start).collect::<Vec<bool>>(),
                        &rows
                            .iter()
                            .map(|r| r.error.as_deref().map(storable))
                            .collect::<Vec<_>>(),
                        &small(|r| r.attempt),
                        &optional(|r| r.trigger.as_deref()),
                        &small(|r| r.memory_mb),
                        &big(|r| signed(r.response_bytes)),
                        &optional(|r| r.parent_request_id.as_deref()),
                        &text(|r| &r.trace_id),
                        &text(|r| &r.span_id),
                        &optional(|r| r.parent_span_id.as_deref()),
                        &big(|r| signed(r.waited_ms)),
                    ],
                )?;
                add_usage(txn, &UsageIncrement::of_invocations(&records))
            })
            .await
    }

    async fn append_logs(&self, lines: Vec<NewLogLine>) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.pg
            .transaction(false, move |txn| {
                let text = |f: fn(&NewLogLine) -> &str| -> Vec<&str> {
                    lines.iter().map(f).collect()
                };
                txn.execute(
                    "INSERT INTO logs (env, function, request_id, at_ms, stream, level, message)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])",
                    &[
                        &text(|l| l.env.as_str()),
                        &text(|l| l.function.as_str()),
                        &text(|l| &l.request_id),
                        &lines.iter().map(|l| l.at_ms).collect::<Vec<i64>>(),
                        &text(|l| &l.stream),
                        &text(|l| &l.level),
                        &lines.iter().map(|l| storable(&l.message)).collect::<Vec<_>>(),
                    ],
                )?;
                // In env order: batches of several nodes lock the counters alike.
                let mut bytes: BTreeMap<&str, i64> = BTreeMap::new();
                for l in &lines {
                    *bytes.entry(l.env.as_str()).or_default() +=
                        l.message.len() as i64 + LOG_LINE_OVERHEAD;
                }
                for (env, bytes) in bytes {
                    count_log_bytes(txn, env, bytes)?;
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
        self.pg
            .query_opt(
                concat!(
                    "SELECT ",
                    invocation_columns!(),
                    " FROM invocations WHERE env = $1 AND request_id = $2 ORDER BY attempt DESC LIMIT 1"
                ),
                &[&env.as_str(), &request_id],
            )
            .await?
            .as_ref()
            .map(invocation)
            .transpose()
    }

    async fn list_invocations(
        &self,
        env: &EnvId,
        function: Option<&FunctionName>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    invocation_columns!(),
                    " FROM invocations WHERE env = $1 AND ($2::text IS NULL OR function = $2)
                     ORDER BY started_at_ms DESC LIMIT $3"
                ),
                &[
                    &env.as_str(),
                    &function.map(FunctionName::as_str),
                    &i64::from(limit),
                ],
            )
            .await?;
        all(rows, invocation)
    }

    async fn query_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>> {
        let (grep, limit) = q.filter.checked()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, params) = log_query_sql(q);
        self.pg
            .transaction(true, move |txn| {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                // The regular expression filters as rows stream: the limit counts matches.
                let mut lines = Vec::new();
                txn.each(&sql, &params, |row| {
                    let line = log_line(row)?;
                    if grep
                        .as_ref()
                        .is_none_or(|re| re.is_match(&line.line.message))
                    {
                        lines.push(line);
                    }
                    Ok(lines.len() < limit)
                })?;
                Ok(lines)
            })
            .await
    }

    async fn append_spans(&self, spans: Vec<SpanRecord>) -> Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let mut latest: BTreeMap<(&str, &str), &SpanRecord> = BTreeMap::new();
        for s in &spans {
            latest.insert((s.trace_id.as_str(), s.span_id.as_str()), s);
        }
        let rows: Vec<&SpanRecord> = latest.into_values().collect();
        let text =
            |f: fn(&SpanRecord) -> &str| -> Vec<&str> { rows.iter().map(|s| f(s)).collect() };
        let optional = |f: fn(&SpanRecord) -> Option<&str>| -> Vec<Option<&str>> {
            rows.iter().map(|s| f(s)).collect()
        };
        self.pg
            .execute(
                "INSERT INTO spans (env, trace_id, span_id, parent_span_id, name, start_us, duration_us, status, function)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::text[])
                 ON CONFLICT (trace_id, span_id) DO UPDATE SET env = excluded.env, parent_span_id = excluded.parent_span_id,
                   name = excluded.name, start_us = excluded.start_us, duration_us = excluded.duration_us,
                   status = excluded.status, function = excluded.function",
                &[
                    &text(|s| s.env.as_str()),
                    &text(|s| &s.trace_id),
                    &text(|s| &s.span_id),
                    &optional(|s| s.parent_span_id.as_deref()),
                    &text(|s| &s.name),
                    &rows.iter().map(|s| s.start_us).collect::<Vec<i64>>(),
                    &rows.iter().map(|s| signed(s.duration_us)).collect::<Vec<i64>>(),
                    &text(|s| &s.status),
                    &optional(|s| s.function.as_deref()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn trace(
        &self,
        env: &EnvId,
        request_id: &str,
        trace_id: &str,
    ) -> Result<(Vec<InvocationRecord>, Vec<SpanRecord>)> {
        // The request and what it caused, by the parent links.
        let invocations = self
            .pg
            .query(
                concat!(
                    "WITH RECURSIVE tree(id) AS (
                        SELECT $2::text COLLATE \"C\" UNION SELECT i.request_id FROM invocations i JOIN tree ON i.parent_request_id = tree.id WHERE i.env = $1)
                     SELECT ",
                    invocation_columns!(),
                    " FROM invocations WHERE request_id IN (SELECT id FROM tree) AND env = $1
                     ORDER BY started_at_ms LIMIT 10000"
                ),
                &[&env.as_str(), &request_id],
            )
            .await?;
        let spans = self
            .pg
            .query(
                "SELECT env, trace_id, span_id, parent_span_id, name, start_us, duration_us, status, function
                 FROM spans WHERE trace_id = $1 AND env = $2 ORDER BY start_us LIMIT 10000",
                &[&trace_id, &env.as_str()],
            )
            .await?;
        let spans = all(spans, |r| {
            Ok(SpanRecord {
                env: env_at(r, 0)?,
                trace_id: r.get(1),
                span_id: r.get(2),
                parent_span_id: r.get(3),
                name: r.get(4),
                start_us: r.get(5),
                duration_us: unsigned(r, 6),
                status: r.get(7),
                function: r.get(8),
                request_id: None,
            })
        })?;
        Ok((all(invocations, invocation)?, spans))
    }

    async fn log_bytes(&self, env: &EnvId) -> Result<u64> {
        Ok(self
            .pg
            .query_opt(
                "SELECT bytes FROM log_bytes WHERE env = $1",
                &[&env.as_str()],
            )
            .await?
            .map_or(0, |r| unsigned(&r, 0)))
    }

    async fn prune(
        &self,
        env: &EnvId,
        retention: Retention,
        now_ms: i64,
        batch: u32,
    ) -> Result<Pruned> {
        let env = env.to_string();
        self.pg
            .transaction(false, move |txn| {
                let cutoff = now_ms.saturating_sub(retention.max_age_ms);
                let batch = i64::from(batch);
                let bytes = txn
                    // Locked: nodes pruning at once each see the others' deletions.
                    .query_opt("SELECT bytes FROM log_bytes WHERE env = $1 FOR UPDATE", &[&env])?
                    .map_or(0, |r| r.get::<_, i64>(0));
                let excess = bytes.saturating_sub(signed(retention.max_bytes));
                // The env's oldest lines: those past the age limit, and as many more as
                // bring it under its size limit. Nodes pruning at once delete each line
                // once: RETURNING counts only the rows this statement removed.
                let freed = txn.query(
                    "WITH oldest AS (
                        SELECT id, at_ms, SUM(octet_length(message) + $5::bigint) OVER (ORDER BY id)
                               - (octet_length(message) + $5::bigint) AS before
                        FROM (SELECT id, at_ms, message FROM logs WHERE env = $1 ORDER BY id LIMIT $2) o)
                     DELETE FROM logs WHERE id IN (SELECT id FROM oldest WHERE before < $3::bigint OR at_ms < $4::bigint)
                     RETURNING octet_length(message)",
                    &[&env, &batch, &excess, &cutoff, &LOG_LINE_OVERHEAD],
                )?;
                let logs = freed.len() as u64;
                let freed_bytes: i64 = freed
                    .iter()
                    .map(|r| i64::from(r.get::<_, i32>(0)) + LOG_LINE_OVERHEAD)
                    .sum();
                if freed_bytes > 0 {
                    count_log_bytes(txn, &env, -freed_bytes)?;
                }
                let records = txn.execute(
                    "DELETE FROM invocations WHERE (request_id, attempt) IN
                       (SELECT request_id, attempt FROM invocations WHERE env = $1 AND started_at_ms < $2 LIMIT $3)",
                    &[&env, &cutoff, &batch],
                )?;
                let spans = txn.execute(
                    "DELETE FROM spans WHERE (trace_id, span_id) IN
                       (SELECT trace_id, span_id FROM spans WHERE env = $1 AND start_us < $2 LIMIT $3)",
                    &[&env, &cutoff.saturating_mul(1000), &batch],
                )?;
                txn.execute(
                    "DELETE FROM usage WHERE env = $1 AND ((period = 'hour' AND start_ms < $2) OR (period = 'day' AND start_ms < $3))",
                    &[&env, &(now_ms - USAGE_HOURS_KEPT_MS), &(now_ms - USAGE_DAYS_KEPT_MS)],
                )?;
                let batch = batch as u64;
                Ok(Pruned {
                    logs,
                    records,
                    more: [logs, records, spans].contains(&batch),
                })
            })
            .await
    }

    async fn add_usage(&self, increments: Vec<UsageIncrement>) -> Result<()> {
        self.pg
            .transaction(false, move |txn| add_usage(txn, &increments))
            .await
    }

    async fn usage(&self, env: &EnvId, period: &str, since_ms: i64) -> Result<Vec<UsageRow>> {
        let rows = self
            .pg
            .query(
                "SELECT function, start_ms, invocations, errors, mb_ms, billed_ms, egress_bytes, db_reads, db_writes
                 FROM usage WHERE env = $1 AND period = $2 AND start_ms >= $3 ORDER BY start_ms, function",
                &[&env.as_str(), &period, &since_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                env: env.clone(),
                function: r.get(0),
                period: period.to_owned(),
                start_ms: r.get(1),
                counts: UsageCounts {
                    invocations: unsigned(r, 2),
                    errors: unsigned(r, 3),
                    mb_ms: unsigned(r, 4),
                    billed_ms: unsigned(r, 5),
                    egress_bytes: unsigned(r, 6),
                    db_reads: unsigned(r, 7),
                    db_writes: unsigned(r, 8),
                },
            })
            .collect())
    }

    async fn replace_triggers(
        &self,
        env: &EnvId,
        function: &FunctionName,
        triggers: &[TriggerRecord],
    ) -> Result<()> {
        let (env, function, triggers) = (env.to_string(), function.to_string(), triggers.to_vec());
        self.pg
            .transaction(false, move |txn| {
                // One replacement of a function's triggers at a time (two at once would
                // both insert after both deleted).
                txn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('triggers/' || $1 || '/' || $2, 0))",
                    &[&env, &function],
                )?;
                txn.execute(
                    "DELETE FROM triggers WHERE env = $1 AND function = $2",
                    &[&env, &function],
                )?;
                for t in &triggers {
                    txn.execute(INSERT_TRIGGER, trigger_params!(t))?;
                }
                Ok(())
            })
            .await
    }

    async fn insert_trigger(&self, t: &TriggerRecord) -> Result<()> {
        let sql = concat!(
            "INSERT INTO triggers (",
            trigger_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
        );
        if self.pg.execute(sql, trigger_params!(t)).await? == 0 {
            return Err(YunError::new(
                ErrorCode::AlreadyExists,
                format!("function {} already has a trigger {:?}", t.function, t.name),
            ));
        }
        Ok(())
    }

    async fn list_triggers(
        &self,
        env: Option<&EnvId>,
        function: Option<&FunctionName>,
    ) -> Result<Vec<TriggerRecord>> {
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    trigger_columns!(),
                    " FROM triggers WHERE ($1::text IS NULL OR env = $1) AND ($2::text IS NULL OR function = $2) ORDER BY env, function, name"
                ),
                &[&env.map(EnvId::as_str), &function.map(FunctionName::as_str)],
            )
            .await?;
        all(rows, trigger)
    }

    async fn delete_trigger(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
    ) -> Result<bool> {
        Ok(self
            .pg
            .execute(
                "DELETE FROM triggers WHERE env = $1 AND function = $2 AND name = $3",
                &[&env.as_str(), &function.as_str(), &name],
            )
            .await?
            > 0)
    }

    async fn trigger_fired(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
        at_ms: i64,
    ) -> Result<()> {
        self.pg
            .execute(
                "UPDATE triggers SET last_fired_ms = $4 WHERE env = $1 AND function = $2 AND name = $3",
                &[&env.as_str(), &function.as_str(), &name, &at_ms],
            )
            .await?;
        Ok(())
    }

    async fn put_dead_letter(&self, l: &DeadLetter) -> Result<()> {
        self.pg
            .execute(
                concat!(
                    "INSERT INTO dead_letters (",
                    dead_letter_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (env, function, request_id) DO UPDATE SET error_code = excluded.error_code,
                       error_message = excluded.error_message, event = excluded.event, source = excluded.source,
                       trigger = excluded.trigger, retry_num = excluded.retry_num,
                       enqueued_at_ms = excluded.enqueued_at_ms, failed_at_ms = excluded.failed_at_ms"
                ),
                &[
                    &l.env.as_str(),
                    &l.function.as_str(),
                    &l.request_id,
                    &l.error_code,
                    &l.error_message,
                    &l.event,
                    &l.source,
                    &l.trigger,
                    &(l.retry_num as i32),
                    &l.enqueued_at_ms,
                    &l.failed_at_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    dead_letter_columns!(),
                    " FROM dead_letters WHERE env = $1 AND function = $2 AND ($3::text IS NULL OR request_id = $3) ORDER BY failed_at_ms, request_id"
                ),
                &[&env.as_str(), &function.as_str(), &request_id],
            )
            .await?;
        all(rows, dead_letter)
    }

    async fn count_dead_letters(&self, env: &EnvId) -> Result<Vec<(FunctionName, u64)>> {
        let rows = self
            .pg
            .query(
                "SELECT function, COUNT(*) FROM dead_letters WHERE env = $1 GROUP BY function",
                &[&env.as_str()],
            )
            .await?;
        all(rows, |r| Ok((function_at(r, 0)?, unsigned(r, 1))))
    }

    async fn delete_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<u64> {
        self.pg
            .execute(
                "DELETE FROM dead_letters WHERE env = $1 AND function = $2 AND ($3::text IS NULL OR request_id = $3)",
                &[&env.as_str(), &function.as_str(), &request_id],
            )
            .await
    }

    async fn insert_alert(&self, rule: &AlertRule) -> Result<()> {
        let spec = serde_json::to_string(rule).map_err(YunError::internal)?;
        let n = self
            .pg
            .execute(
                "INSERT INTO alerts (env, name, spec) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&rule.env.as_str(), &rule.name, &spec],
            )
            .await?;
        if n == 0 {
            return Err(YunError::new(
                ErrorCode::AlreadyExists,
                format!("env {} already has an alert named {}", rule.env, rule.name),
            ));
        }
        Ok(())
    }

    async fn list_alerts(&self, env: Option<&EnvId>) -> Result<Vec<AlertRule>> {
        let rows = self
            .pg
            .query(
                "SELECT spec FROM alerts WHERE $1::text IS NULL OR env = $1 ORDER BY env, name",
                &[&env.map(EnvId::as_str)],
            )
            .await?;
        all(rows, |r| {
            serde_json::from_str(r.get(0)).map_err(stored("alert"))
        })
    }

    async fn delete_alert(&self, env: &EnvId, name: &str) -> Result<bool> {
        Ok(self
            .pg
            .execute(
                "DELETE FROM alerts WHERE env = $1 AND name = $2",
                &[&env.as_str(), &name],
            )
            .await?
            > 0)
    }

    async fn set_alert_state(
        &self,
        env: &EnvId,
        name: &str,
        value: f64,
        firing: bool,
        at_ms: i64,
    ) -> Result<bool> {
        let (env, name) = (env.to_string(), name.to_owned());
        self.pg
            .transaction(false, move |txn| {
                let Some(row) = txn.query_opt(
                    "SELECT spec FROM alerts WHERE env = $1 AND name = $2 FOR UPDATE",
                    &[&env, &name],
                )?
                else {
                    // Deleted meanwhile: nothing to record.
                    return Ok(false);
                };
                let mut rule: AlertRule =
                    serde_json::from_str(row.get(0)).map_err(stored("alert"))?;
                let changed = rule.firing != firing;
                if changed {
                    rule.changed_at_ms = Some(at_ms);
                }
                rule.firing = firing;
                rule.last_value = Some(value);
                let spec = serde_json::to_string(&rule).map_err(YunError::internal)?;
                txn.execute(
                    "UPDATE alerts SET spec = $3 WHERE env = $1 AND name = $2",
                    &[&env, &name, &spec],
                )?;
                Ok(changed)
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
        let f = function.map(FunctionName::as_str);
        let row = self
            .pg
            .query_opt(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE status <> 'success'), COUNT(*) FILTER (WHERE status = 'throttled')
                 FROM invocations WHERE env = $1 AND ($2::text IS NULL OR function = $2) AND started_at_ms >= $3",
                &[&env.as_str(), &f, &since_ms],
            )
            .await?
            .ok_or_else(|| YunError::internal("a count returned no row"))?;
        let (invocations, errors, throttles) =
            (unsigned(&row, 0), unsigned(&row, 1), unsigned(&row, 2));
        // Nearest rank: the ceil(0.95 n)-th smallest.
        let p95_ms = if invocations == 0 || !with_p95 {
            0
        } else {
            let rank = signed((invocations * 95).div_ceil(100).max(1) - 1);
            self.pg
                .query_opt(
                    "SELECT duration_ms FROM invocations WHERE env = $1 AND ($2::text IS NULL OR function = $2) AND started_at_ms >= $3
                     ORDER BY duration_ms LIMIT 1 OFFSET $4",
                    &[&env.as_str(), &f, &since_ms, &rank],
                )
                .await?
                // Pruned between the two reads: no figure this time.
                .map_or(0, |r| unsigned(&r, 0))
        };
        Ok(InvocationStats {
            invocations,
            errors,
            throttles,
            p95_ms,
        })
    }
}

const INSERT_TRIGGER: &str = concat!(
    "INSERT INTO triggers (",
    trigger_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
);
