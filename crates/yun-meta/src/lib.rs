//! Platform metadata: envs, keys, function versions, invocation records and function logs.
//!
//! [`MetaStore`] is the seam; the backends are in `yun-store-sqlite` (embedded) and
//! `yun-store-postgres` (cluster). Nothing above this crate sees SQL. Must not
//! depend on HTTP, process or function-runtime crates.

mod model;

pub use model::*;

use async_trait::async_trait;
use yun_types::{EnvId, FunctionName, YunError};

pub type Result<T> = std::result::Result<T, YunError>;

/// Metadata persistence. Calls are short (one statement or one transaction); the
/// write-heavy streams (invocations, logs) arrive in batches from a background writer.
/// Every method that reads or writes env-owned rows takes the env: nothing crosses envs.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// The platform master key (signs temporary credentials); created on first call.
    async fn master_key(&self) -> Result<Vec<u8>>;

    async fn create_env(&self, env: &EnvId) -> Result<EnvRecord>;
    async fn get_env(&self, env: &EnvId) -> Result<Option<EnvRecord>>;
    async fn list_envs(&self) -> Result<Vec<EnvRecord>>;
    /// Deletes the env and every row it owns. Returns false when it did not exist.
    async fn delete_env(&self, env: &EnvId) -> Result<bool>;
    /// The env's settings; defaults when none were ever stored.
    async fn env_settings(&self, env: &EnvId) -> Result<EnvSettings>;
    async fn put_env_settings(&self, env: &EnvId, settings: &EnvSettings) -> Result<()>;

    /// The env's security rules, as (target, spec): `collection:{name}` or `storage`.
    async fn list_rules(&self, env: &EnvId) -> Result<Vec<(String, serde_json::Value)>>;
    /// Sets a target's rules; `None` removes them (the default applies again).
    async fn put_rules(
        &self,
        env: &EnvId,
        target: &str,
        spec: Option<&serde_json::Value>,
    ) -> Result<()>;

    async fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    async fn get_key(&self, secret_id: &str) -> Result<Option<KeyRecord>>;
    async fn list_keys(&self, env: &EnvId) -> Result<Vec<KeyRecord>>;
    /// Marks the key revoked at `now`; false when the env has no such live key.
    async fn revoke_key(&self, env: &EnvId, secret_id: &str, now: i64) -> Result<bool>;

    /// Stores a new version of the function (version = previous + 1, or 1).
    async fn put_function(&self, function: &NewFunction, now: i64) -> Result<FunctionRecord>;
    /// Stores `function` as the next version only while the current one is `version`
    /// (a change of settings made from what was read); `None` when another write came
    /// first, so a settings change never puts back code a deploy replaced.
    async fn update_function(
        &self,
        function: &NewFunction,
        version: i64,
        now: i64,
    ) -> Result<Option<FunctionRecord>>;
    async fn get_function(
        &self,
        env: &EnvId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>>;
    async fn list_functions(&self, env: &EnvId) -> Result<Vec<FunctionRecord>>;
    async fn delete_function(&self, env: &EnvId, name: &FunctionName) -> Result<bool>;

    async fn append_invocations(&self, records: Vec<InvocationRecord>) -> Result<()>;
    async fn append_logs(&self, lines: Vec<NewLogLine>) -> Result<()>;
    async fn get_invocation(
        &self,
        env: &EnvId,
        request_id: &str,
    ) -> Result<Option<InvocationRecord>>;
    async fn list_invocations(
        &self,
        env: &EnvId,
        function: Option<&FunctionName>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>>;
    /// Lines matching the query, oldest first; a `grep` that is not a regular
    /// expression, or an unknown level, is an `InvalidParam`.
    async fn query_logs(&self, query: &LogQuery) -> Result<Vec<LogLine>>;
    /// Stores spans of traced operations (batches from the background writer).
    async fn append_spans(&self, spans: Vec<SpanRecord>) -> Result<()>;
    /// The trace of invocation `request_id` (of trace `trace_id`): it and the invocations
    /// it caused (spans themselves), and the trace's operation spans.
    async fn trace(
        &self,
        env: &EnvId,
        request_id: &str,
        trace_id: &str,
    ) -> Result<(Vec<InvocationRecord>, Vec<SpanRecord>)>;
    /// Bytes the env's log lines count for against its size limit.
    async fn log_bytes(&self, env: &EnvId) -> Result<u64>;
    /// One batch of retention for the env: at most `batch` of its oldest log lines (past
    /// the age limit, or over the size limit) and `batch` of its records past the age
    /// limit, in one short transaction; `more` says a further batch would find some.
    /// Usage roll-ups past their periods go too.
    async fn prune(
        &self,
        env: &EnvId,
        retention: Retention,
        now_ms: i64,
        batch: u32,
    ) -> Result<Pruned>;

    /// Adds to the usage roll-ups (what the invocation records do not carry: database
    /// operations, file downloads). Invocation records add their own, in `append_invocations`.
    async fn add_usage(&self, increments: Vec<UsageIncrement>) -> Result<()>;
    /// The env's roll-up rows of `period` (`hour` or `day`) starting at `since_ms` or later.
    async fn usage(&self, env: &EnvId, period: &str, since_ms: i64) -> Result<Vec<UsageRow>>;

    /// Replaces the function's triggers with `triggers` (all of one function).
    async fn replace_triggers(
        &self,
        env: &EnvId,
        function: &FunctionName,
        triggers: &[TriggerRecord],
    ) -> Result<()>;
    /// Adds one trigger; `AlreadyExists` when the function has one of that name.
    async fn insert_trigger(&self, trigger: &TriggerRecord) -> Result<()>;
    /// Triggers of an env (of one function), or of every env with `env` unset.
    async fn list_triggers(
        &self,
        env: Option<&EnvId>,
        function: Option<&FunctionName>,
    ) -> Result<Vec<TriggerRecord>>;
    async fn delete_trigger(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
    ) -> Result<bool>;
    /// Records a timer's tick as fired.
    async fn trigger_fired(
        &self,
        env: &EnvId,
        function: &FunctionName,
        name: &str,
        at_ms: i64,
    ) -> Result<()>;

    /// Keeps an async event that failed for good (replaces one with the same request id).
    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<()>;
    /// A function's dead letters, oldest failure first; one when `request_id` is given.
    async fn list_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<Vec<DeadLetter>>;
    /// Adds an alert rule; `AlreadyExists` when the env has one of that name.
    async fn insert_alert(&self, rule: &AlertRule) -> Result<()>;
    /// Alert rules of an env, or of every env with `env` unset.
    async fn list_alerts(&self, env: Option<&EnvId>) -> Result<Vec<AlertRule>>;
    async fn delete_alert(&self, env: &EnvId, name: &str) -> Result<bool>;
    /// Records an evaluation: the value, and whether the rule now fires. True when this
    /// call changed whether it fires (of nodes evaluating a rule at once, one sees the
    /// change and notifies); false when it did not, or the rule is gone.
    async fn set_alert_state(
        &self,
        env: &EnvId,
        name: &str,
        value: f64,
        firing: bool,
        at_ms: i64,
    ) -> Result<bool>;
    /// The env's (or one function's) invocations that started at `since_ms` or later;
    /// `p95_ms` only `with_p95` (it sorts the window's durations).
    async fn invocation_stats(
        &self,
        env: &EnvId,
        function: Option<&FunctionName>,
        since_ms: i64,
        with_p95: bool,
    ) -> Result<InvocationStats>;
    /// How many dead letters each function of the env has (those with any).
    async fn count_dead_letters(&self, env: &EnvId) -> Result<Vec<(FunctionName, u64)>>;
    /// Deletes a function's dead letters (one when `request_id` is given); how many went.
    async fn delete_dead_letters(
        &self,
        env: &EnvId,
        function: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<u64>;
}
