//! Prometheus metrics: one recorder per process (the `metrics` facade records from every
//! crate; `metrics-exporter-prometheus` renders), rendered at `GET /metrics`. Labels are
//! bounded: env, function, outcome, surface, status class, operation kind, store; never
//! a request id or a user id. Gauges of what exists (instances, stem cells, stored
//! bytes, queued events, dead letters, store pools) are read when scraped.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use yun_meta::InvocationStatus;
use yun_types::{EnvId, FunctionName, YunError};

use crate::App;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// What the composition root publishes at each scrape about the backends it picked
/// (the stores' pool health): the app does not know which backends those are.
static SCRAPE_HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Adds a backend's scrape-time publisher.
pub fn on_scrape(publish: fn()) {
    SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(publish);
}

/// Latency buckets (seconds): from a warm call's sub-millisecond to a slow function's
/// minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Installs the process's recorder (once; later calls are no-ops). Call it before the
/// stores open: handles taken before it record nothing. Without it, metrics are off and
/// every recording site costs a no-op call.
pub fn install_metrics() {
    HANDLE.get_or_init(|| {
        // Gauges are set when scraped: one not set at a scrape is of something gone (a
        // deleted function, purged dead letters) and leaves the output.
        let built = PrometheusBuilder::new()
            .idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(Duration::from_secs(1)),
            )
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(PrometheusBuilder::install_recorder);
        match built {
            Ok(handle) => {
                describe();
                let upkeep = handle.clone();
                // Histograms gather samples until rendered; upkeep folds them in so an
                // unscraped server does not grow.
                std::thread::Builder::new()
                    .name("yun-metrics-upkeep".into())
                    .spawn(move || loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    })
                    .ok()?;
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics are off: could not install the recorder");
                None
            }
        }
    });
}

fn describe() {
    describe_counter!(
        "yun_invocations_total",
        "Function invocations by env, function and outcome"
    );
    describe_histogram!(
        "yun_invocation_duration_seconds",
        Unit::Seconds,
        "Invocation duration, from arrival to result"
    );
    describe_counter!(
        "yun_cold_starts_total",
        "Invocations that loaded an instance"
    );
    describe_counter!(
        "yun_throttles_total",
        "Invocations refused at the function's concurrency limit"
    );
    describe_histogram!(
        "yun_instance_wait_seconds",
        Unit::Seconds,
        "How long invocations that had to wait for a free instance waited"
    );
    describe_gauge!(
        "yun_instances",
        "Loaded function instances by state (idle, busy)"
    );
    describe_gauge!("yun_stem_cells", "Started instances waiting for a function");
    describe_counter!(
        "yun_http_requests_total",
        "HTTP requests by surface and status"
    );
    describe_histogram!(
        "yun_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration by surface, until the response head"
    );
    describe_counter!(
        "yun_db_operations_total",
        "Database operations by env and kind"
    );
    describe_histogram!(
        "yun_db_operation_duration_seconds",
        Unit::Seconds,
        "Database operation duration by kind"
    );
    describe_counter!(
        "yun_storage_bytes_total",
        Unit::Bytes,
        "File bytes uploaded (in) and downloaded (out)"
    );
    describe_gauge!(
        "yun_storage_stored_bytes",
        Unit::Bytes,
        "Bytes stored per env"
    );
    describe_counter!(
        "yun_sign_ins_total",
        "End-user sign-ins by method and outcome"
    );
    describe_gauge!(
        "yun_store_queued_writes",
        "Write jobs waiting for a store's writer"
    );
    describe_gauge!("yun_store_long_reads", "Long reads running on a store");
    describe_gauge!(
        "yun_store_idle_readers",
        "Idle pooled read connections of a store"
    );
    describe_counter!(
        "yun_store_commits_total",
        "Write transactions committed per store"
    );
    describe_histogram!(
        "yun_store_commit_seconds",
        Unit::Seconds,
        "Write transaction duration per store"
    );
    describe_gauge!(
        "yun_dead_letters",
        "Async events that failed for good, per env and function"
    );
    describe_gauge!("yun_ready", "1 when /readyz answers ready");
}

/// Whether the recorder is installed.
pub fn metrics_on() -> bool {
    HANDLE.get().is_some_and(Option::is_some)
}

/// A function's invocation metrics: handles taken when it is loaded (no-ops when
/// metrics are off), so an invocation costs a few atomic adds, not label lookups.
pub(crate) struct FunctionMetrics {
    /// One per [`InvocationStatus`], in `OUTCOMES` order.
    invocations: Vec<metrics::Counter>,
    duration: metrics::Histogram,
    wait: metrics::Histogram,
    cold_starts: metrics::Counter,
    throttles: metrics::Counter,
}

const OUTCOMES: [InvocationStatus; 6] = [
    InvocationStatus::Success,
    InvocationStatus::Error,
    InvocationStatus::Timeout,
    InvocationStatus::Crashed,
    InvocationStatus::OutOfMemory,
    InvocationStatus::Throttled,
];

impl FunctionMetrics {
    pub fn new(env: &EnvId, function: &FunctionName) -> Self {
        let (env, function) = (env.to_string(), function.to_string());
        let labels = || [("env", env.clone()), ("function", function.clone())];
        Self {
            invocations: OUTCOMES
                .iter()
                .map(|o| {
                    counter!("yun_invocations_total", "env" => env.clone(), "function" => function.clone(), "outcome" => o.as_str())
                })
                .collect(),
            duration: metrics::histogram!("yun_invocation_duration_seconds", &labels()),
            wait: metrics::histogram!("yun_instance_wait_seconds", &labels()),
            cold_starts: counter!("yun_cold_starts_total", &labels()),
            throttles: counter!("yun_throttles_total", &labels()),
        }
    }

    /// One invocation's figures.
    pub fn record(
        &self,
        status: InvocationStatus,
        cold_start: bool,
        duration: Duration,
        waited: Duration,
    ) {
        if let Some(at) = OUTCOMES.iter().position(|o| *o == status) {
            self.invocations[at].increment(1);
        }
        self.duration.record(duration);
        if !waited.is_zero() {
            self.wait.record(waited);
        }
        if cold_start {
            self.cold_starts.increment(1);
        }
        if status == InvocationStatus::Throttled {
            self.throttles.increment(1);
        }
    }
}

/// One database operation of kind `op` (`find`, `insert`, …) that took `took`.
pub(crate) fn db_operation(env: &EnvId, op: &'static str, took: Duration) {
    if !metrics_on() {
        return;
    }
    counter!("yun_db_operations_total", "env" => env.to_string(), "op" => op).increment(1);
    metrics::histogram!("yun_db_operation_duration_seconds", "op" => op).record(took);
}

/// File bytes moved: `direction` is `in` or `out`.
pub(crate) fn storage_bytes(env: &EnvId, direction: &'static str, bytes: u64) {
    if metrics_on() {
        counter!("yun_storage_bytes_total", "env" => env.to_string(), "direction" => direction)
            .increment(bytes);
    }
}

/// A sign-in attempt: `method` is `anonymous`, `password`, `ticket`, `refresh` or `sign_up`.
pub(crate) fn sign_in<T>(env: &EnvId, method: &'static str, result: &Result<T, YunError>) {
    if metrics_on() {
        let outcome = if result.is_ok() { "success" } else { "failure" };
        counter!("yun_sign_ins_total", "env" => env.to_string(), "method" => method, "outcome" => outcome)
            .increment(1);
    }
}

impl App {
    /// The metrics text (Prometheus exposition format), with the scrape-time gauges
    /// read now. `None` when metrics are off.
    pub async fn metrics_text(
        &self,
        identity: &yun_auth::Identity,
    ) -> Result<Option<String>, YunError> {
        Self::authorize(identity, crate::Operation::ReadMetrics)?;
        let Some(Some(handle)) = HANDLE.get() else {
            return Ok(None);
        };
        for pool in self.runtime.instance_stats() {
            let (env, function) = (pool.env.to_string(), pool.function.to_string());
            gauge!("yun_instances", "env" => env.clone(), "function" => function.clone(), "state" => "idle")
                .set(pool.idle as f64);
            gauge!("yun_instances", "env" => env, "function" => function, "state" => "busy")
                .set(pool.busy as f64);
        }
        gauge!("yun_stem_cells").set(self.runtime.stem_cell_count() as f64);
        let hooks = SCRAPE_HOOKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for publish in hooks {
            publish();
        }
        for env in self.meta.list_envs().await? {
            let used = self.storage.used_bytes(&env.id).await?;
            gauge!("yun_storage_stored_bytes", "env" => env.id.to_string()).set(used as f64);
            for (function, letters) in self.meta.count_dead_letters(&env.id).await? {
                gauge!("yun_dead_letters", "env" => env.id.to_string(), "function" => function.to_string())
                    .set(letters as f64);
            }
        }
        gauge!("yun_ready").set(if self.not_ready().is_none() { 1.0 } else { 0.0 });
        Ok(Some(handle.render()))
    }
}
