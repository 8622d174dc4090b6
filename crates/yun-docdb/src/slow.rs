//! Queries slower than their env's threshold (`Limits::slow_query`), with their shape
//! (values stripped), plan, what they examined and how long they ran. Kept in memory,
//! the newest [`KEPT_PER_ENV`] per env: a restart starts an empty log.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::exec::Stats;

pub const KEPT_PER_ENV: usize = 200;

/// What `explain` answers, and what the log keeps of a slow query.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryReport {
    /// Unix milliseconds when it finished.
    pub at: i64,
    pub collection: String,
    /// `find` or `count`.
    pub operation: &'static str,
    /// The filter's shape (`{n: {$gt: "?"}}`).
    pub filter: Value,
    pub order: Value,
    pub skip: usize,
    pub limit: Option<usize>,
    pub plan: Value,
    #[serde(flatten)]
    pub stats: Stats,
    pub millis: f64,
}

impl QueryReport {
    pub fn took(&self) -> Duration {
        Duration::from_secs_f64(self.millis / 1000.0)
    }
}

#[derive(Default)]
pub struct SlowLog(Mutex<HashMap<String, VecDeque<QueryReport>>>);

impl SlowLog {
    pub fn record(&self, env: &str, report: QueryReport) {
        tracing::info!(env, collection = %report.collection, millis = report.millis, plan = %report.plan, "slow query");
        if let Ok(mut log) = self.0.lock() {
            let kept = log.entry(env.to_owned()).or_default();
            if kept.len() == KEPT_PER_ENV {
                kept.pop_front();
            }
            kept.push_back(report);
        }
    }

    /// The env's slow queries, newest first.
    pub fn list(&self, env: &str) -> Vec<QueryReport> {
        self.0
            .lock()
            .ok()
            .and_then(|log| log.get(env).map(|k| k.iter().rev().cloned().collect()))
            .unwrap_or_default()
    }
}
