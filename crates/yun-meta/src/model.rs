use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvRecord {
    pub id: EnvId,
    /// Unix seconds.
    pub created_at: i64,
}

/// Per-env settings. Unset fields mean the platform default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvSettings {
    /// Documents a query returns when it names no limit (CloudBase: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_default_limit: Option<u32>,
    /// The largest limit a query may ask for (CloudBase: 1000); more is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_max_limit: Option<u32>,
    /// Finds and counts that run at least this long (ms; default 100) go to the env's
    /// slow-query log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_slow_query_ms: Option<u32>,
    /// What the env's functions may reach (default: the internet, where the host can
    /// give it; see [`NetworkPolicy`]). Applies to instances started after a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// The UTC offset timer triggers are read in, `+08:00` by default (CloudBase's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_utc_offset: Option<String>,
    /// Function logs and invocation records older than this many seconds go (default
    /// 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention_secs: Option<u64>,
    /// The env's function logs are kept under this many MiB, oldest going first
    /// (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_mb: Option<u32>,
}

/// Logs and records are kept 30 days by default (SCF's log service keeps 7 to 30 days).
pub const DEFAULT_LOG_RETENTION_SECS: u64 = 30 * 86_400;
pub const DEFAULT_LOG_MAX_MB: u32 = 1024;

impl EnvSettings {
    pub fn retention(&self) -> Retention {
        Retention {
            max_age_ms: i64::try_from(
                self.log_retention_secs
                    .unwrap_or(DEFAULT_LOG_RETENTION_SECS)
                    .saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
            max_bytes: u64::from(self.log_max_mb.unwrap_or(DEFAULT_LOG_MAX_MB)) << 20,
        }
    }
}

/// What a sandboxed function's instances may reach over the network. Never the host's
/// loopback services or Yun's management API, whatever the policy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkPolicy {
    /// Nothing, not even Yun (a function that only computes).
    None,
    /// Yun's SDK surface only.
    YunOnly,
    /// Yun, and the outside world through a user-mode network stack (slirp4netns).
    #[default]
    Internet,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Everything in its own env, plus creating and deleting envs and acting in any env.
    Platform,
    /// Everything in its own env and nothing else.
    Env,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Env => "env",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    pub secret_id: String,
    /// Kept in the clear: HMAC verification needs it (as Tencent Cloud's own API keys).
    pub secret_key: String,
    pub env: EnvId,
    pub role: KeyRole,
    pub description: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Function settings a deploy supplies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewFunction {
    pub env: EnvId,
    pub name: FunctionName,
    /// `file.export`, e.g. `index.main`.
    pub handler: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_instances: u32,
    pub env_vars: BTreeMap<String, String>,
    /// Exposes the function at `/{env}{http_path}` when set.
    pub http_path: Option<String>,
    pub code_sha256: String,
    pub code_size: u64,
    /// Folder name of this version's unpacked code under the function's code folder.
    pub code_id: String,
    /// What happens to its async events when an attempt fails.
    #[serde(default)]
    pub async_retry: AsyncRetry,
    /// SCF's reserved concurrency: its instances at most (instead of `max_instances`),
    /// and `0` disables it. Yun has no pool shared by functions, so what a reservation
    /// guarantees, any function already has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
}

/// SCF's async retry policy, per function: runtime errors (the function threw, timed out,
/// crashed) are retried `retries` times `interval_s` apart; throttles and system errors
/// are retried until the event is `max_age_s` old; then the event goes to the function's
/// dead-letter queue.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AsyncRetry {
    pub retries: u32,
    pub interval_s: u64,
    pub max_age_s: u64,
}

impl Default for AsyncRetry {
    /// SCF's defaults: 2 retries a minute apart, events kept 6 hours.
    fn default() -> Self {
        Self {
            retries: 2,
            interval_s: 60,
            max_age_s: 6 * 3600,
        }
    }
}

impl NewFunction {
    /// The error a store answers when another function of the env has this one's HTTP path.
    pub fn http_path_taken(&self) -> YunError {
        YunError::new(
            ErrorCode::AlreadyExists,
            format!(
                "another function already serves HTTP path {:?}",
                self.http_path.as_deref().unwrap_or_default()
            ),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunctionRecord {
    #[serde(flatten)]
    pub spec: NewFunction,
    /// Increments on every deploy; instances of an older version are drained.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    Success,
    Error,
    Timeout,
    Crashed,
    OutOfMemory,
    Throttled,
}

impl InvocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Crashed => "crashed",
            Self::OutOfMemory => "out_of_memory",
            Self::Throttled => "throttled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Success,
            Self::Error,
            Self::Timeout,
            Self::Crashed,
            Self::OutOfMemory,
            Self::Throttled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvocationRecord {
    pub request_id: String,
    pub env: EnvId,
    pub function: FunctionName,
    pub version: i64,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub duration_ms: u64,
    /// The run time billed: the duration without the wait for an instance, at least
    /// 1 ms (SCF bills in 1 ms blocks); 0 for a throttled call, which never ran.
    pub billed_ms: u64,
    /// Peak resident memory of the instance in KiB, as last reported.
    pub memory_peak_kb: u64,
    pub status: InvocationStatus,
    pub cold_start: bool,
    pub error: Option<String>,
    /// 1, or the retry of an async event this delivery is.
    pub attempt: u32,
    /// The trigger that caused the invocation (`async` for an async invoke).
    pub trigger: Option<String>,
    /// The function's memory limit when it ran: GB-seconds are this × `billed_ms`.
    #[serde(default)]
    pub memory_mb: u32,
    /// Bytes of the result returned to the caller (egress).
    #[serde(default)]
    pub response_bytes: u64,
    /// The invocation whose code made this one happen (a `callFunction`, an async invoke,
    /// a write that fired a trigger, over its instance's channel), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_request_id: Option<String>,
    /// The W3C trace it belongs to (32 hex digits), its span (16) and the span that
    /// caused it (a caller's `traceparent`, the calling invocation's span). Empty for
    /// the root of a trace Yun started: see [`InvocationRecord::trace_ids`].
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// How long it waited for a free instance.
    #[serde(default)]
    pub waited_ms: u64,
}

impl InvocationRecord {
    /// Its trace and span ids. The root of a trace Yun started stores none: the trace is
    /// named by the request id and its span by the id's last 16 digits.
    pub fn trace_ids(&self) -> (&str, &str) {
        if self.trace_id.is_empty() {
            (
                &self.request_id,
                self.request_id.get(16..).unwrap_or_default(),
            )
        } else {
            (&self.trace_id, &self.span_id)
        }
    }
}

/// A span of a trace: an operation inside it (a database or storage call), stored as a
/// row; or an invocation (or its wait for an instance), derived from its record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpanRecord {
    pub env: EnvId,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    /// `invoke {function}`, `instance wait`, `db.find`, `storage.upload`, …
    pub name: String,
    /// Unix microseconds.
    pub start_us: i64,
    pub duration_us: u64,
    /// `ok`, `error` or `unset`; an invocation's outcome (`success`, `timeout`, …).
    pub status: String,
    /// The function invoked, or the calling function, if a function made the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The invocation, for invocation spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Usage counted per env, function and period (an hour or a day starting at
/// `start_ms`, UTC). `function` is empty for what no function did (a key's or an end
/// user's database calls, file downloads through signed URLs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageRow {
    pub env: EnvId,
    pub function: String,
    /// `hour` or `day`.
    pub period: String,
    pub start_ms: i64,
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// What a period's usage adds up; also an increment to it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageCounts {
    pub invocations: u64,
    pub errors: u64,
    /// Memory limit (MB) × billed duration (ms), summed: SCF's GB-seconds × 1024 × 1000.
    pub mb_ms: u64,
    pub billed_ms: u64,
    pub egress_bytes: u64,
    pub db_reads: u64,
    pub db_writes: u64,
}

impl UsageCounts {
    pub fn add(&mut self, other: &UsageCounts) {
        self.invocations += other.invocations;
        self.errors += other.errors;
        self.mb_ms += other.mb_ms;
        self.billed_ms += other.billed_ms;
        self.egress_bytes += other.egress_bytes;
        self.db_reads += other.db_reads;
        self.db_writes += other.db_writes;
    }

    /// What one invocation adds.
    pub fn of_invocation(record: &InvocationRecord) -> Self {
        Self {
            invocations: 1,
            errors: u64::from(record.status != InvocationStatus::Success),
            mb_ms: u64::from(record.memory_mb) * record.billed_ms,
            billed_ms: record.billed_ms,
            egress_bytes: record.response_bytes,
            ..Self::default()
        }
    }
}

/// What a log line counts for against its env's size limit: its text and about what
/// its row and index entries take besides.
pub const LOG_LINE_OVERHEAD: i64 = 64;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Usage is kept longer than logs: hour rows for 35 days, day rows for 400.
pub const USAGE_HOURS_KEPT_MS: i64 = 35 * DAY_MS;
pub const USAGE_DAYS_KEPT_MS: i64 = 400 * DAY_MS;

impl UsageIncrement {
    /// What invocation records add to the usage roll-ups (stored with them, in the same
    /// transaction: they always reconcile).
    pub fn of_invocations(records: &[InvocationRecord]) -> Vec<Self> {
        records
            .iter()
            .map(|r| Self {
                env: r.env.clone(),
                function: r.function.to_string(),
                at_ms: r.started_at_ms,
                counts: UsageCounts::of_invocation(r),
            })
            .collect()
    }
}

/// One roll-up row's key: env, function, period (`hour` or `day`), period start.
pub type UsageKey<'a> = (&'a str, &'a str, &'static str, i64);

/// Increments summed per roll-up row (each adds to its hour's and its day's), in key
/// order: writers that lock rows in this order never deadlock each other.
pub fn usage_rows(increments: &[UsageIncrement]) -> Vec<(UsageKey<'_>, UsageCounts)> {
    let mut merged: std::collections::BTreeMap<UsageKey<'_>, UsageCounts> = Default::default();
    for inc in increments {
        for (period, len) in [("hour", HOUR_MS), ("day", DAY_MS)] {
            let start = inc.at_ms.div_euclid(len) * len;
            merged
                .entry((inc.env.as_str(), inc.function.as_str(), period, start))
                .or_default()
                .add(&inc.counts);
        }
    }
    merged.into_iter().collect()
}

/// An increment to the usage of one env and function, at `at_ms`.
#[derive(Debug, Clone)]
pub struct UsageIncrement {
    pub env: EnvId,
    pub function: String,
    pub at_ms: i64,
    pub counts: UsageCounts,
}

/// An alert rule: when `metric` of the env (or one function) over the last `window_s`
/// seconds is above `threshold`, the webhook gets the alert; again when it is resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertRule {
    pub env: EnvId,
    /// Unique per env.
    pub name: String,
    /// Only this function's invocations (or dead letters); all of the env's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionName>,
    /// `error_rate` (percent of invocations that failed), `p95_ms`, `throttles` (count),
    /// `dlq_depth` (dead letters now).
    pub metric: String,
    pub threshold: f64,
    pub window_s: u64,
    pub webhook: String,
    pub created_at_ms: i64,
    /// Firing since its last evaluation crossed the threshold.
    #[serde(default)]
    pub firing: bool,
    /// The last evaluation's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_ms: Option<i64>,
}

/// Alert metrics, as rules name them.
pub const ALERT_METRICS: &[&str] = &["error_rate", "p95_ms", "throttles", "dlq_depth"];

/// Invocation figures of a window, for alert rules.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InvocationStats {
    pub invocations: u64,
    pub errors: u64,
    pub throttles: u64,
    /// The 95th percentile of durations (nearest rank); 0 without invocations.
    pub p95_ms: u64,
}

/// What one retention batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub logs: u64,
    pub records: u64,
    pub more: bool,
}

/// How long logs and records of an env are kept, and how much of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: i64,
    pub max_bytes: u64,
}

/// A trigger: what makes a function run without a caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TriggerRecord {
    pub env: EnvId,
    pub function: FunctionName,
    /// Unique per function.
    pub name: String,
    /// `timer`, `database` or `storage`.
    #[serde(rename = "type")]
    pub kind: String,
    /// As given: a cron expression for a timer, JSON text for the others.
    pub config: String,
    pub created_at_ms: i64,
    /// A timer's last tick fired (its missed ticks are caught up from here).
    pub last_fired_ms: Option<i64>,
}

/// An async event that failed for good, with SCF's dead-letter fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub env: EnvId,
    pub function: FunctionName,
    pub request_id: String,
    /// The CloudBase error code of the last attempt (`FUNCTIONS_EXECUTE_FAIL`, …).
    pub error_code: String,
    pub error_message: String,
    /// The event, JSON text.
    pub event: String,
    /// What sent it: `async`, `timer`, `database`, `storage`, `replay`.
    pub source: String,
    pub trigger: Option<String>,
    /// Retries made after the first attempt.
    pub retry_num: u32,
    pub enqueued_at_ms: i64,
    pub failed_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewLogLine {
    pub env: EnvId,
    pub function: FunctionName,
    pub request_id: String,
    pub at_ms: i64,
    /// `stdout`, `stderr` or `platform` (Yun's own note about the invocation).
    pub stream: String,
    /// `debug`, `info`, `warn` or `error`: the `console` method that wrote it (stdout
    /// is `info`, stderr `error` when a process wrote it directly; platform lines `error`).
    #[serde(default = "default_level")]
    pub level: String,
    pub message: String,
}

fn default_level() -> String {
    "info".into()
}

/// Log levels, least severe first.
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    /// Monotonic; `after_id` pages and follows with it.
    pub id: i64,
    #[serde(flatten)]
    pub line: NewLogLine,
}

/// Which log lines to return; also the management API's query string.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    pub request_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub stream: Option<String>,
    pub contains: Option<String>,
    /// A regular expression the message must match.
    pub grep: Option<String>,
    /// Lines at this level or more severe.
    pub level: Option<String>,
    /// With `request_id`: also the lines of every invocation it caused, transitively.
    #[serde(default)]
    pub caused: bool,
    /// Only lines after this id: pages and follows.
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

impl LogFilter {
    /// Checks what a store cannot: the pattern compiles and the level is known. Returns
    /// the pattern to match messages with, and how many lines at most.
    pub fn checked(&self) -> Result<(Option<regex::Regex>, usize), YunError> {
        let grep = match &self.grep {
            Some(pattern) => Some(regex::Regex::new(pattern).map_err(|e| {
                YunError::invalid_param(format!("grep is not a valid regular expression: {e}"))
            })?),
            None => None,
        };
        if let Some(level) = &self.level {
            if !LOG_LEVELS.contains(&level.as_str()) {
                return Err(YunError::invalid_param(format!(
                    "level must be one of {}, not {level:?}",
                    LOG_LEVELS.join(", ")
                )));
            }
        }
        Ok((grep, self.limit.unwrap_or(1000) as usize))
    }

    /// The levels a `level` filter admits (that level and the more severe ones).
    pub fn levels(&self) -> Option<&'static [&'static str]> {
        let level = self.level.as_deref()?;
        LOG_LEVELS
            .iter()
            .position(|l| *l == level)
            .map(|i| &LOG_LEVELS[i..])
    }
}

/// A log query: always within one env.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub env: EnvId,
    pub function: Option<FunctionName>,
    pub filter: LogFilter,
}
