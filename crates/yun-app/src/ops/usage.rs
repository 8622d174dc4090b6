//! Usage metering, per env and function, as SCF bills it: invocations, GB-seconds
//! (memory limit × billed duration), egress (function results and file downloads),
//! database reads and writes; stored bytes and documents as they are now. Invocation
//! records add their usage in the transaction that stores them (`yun-meta`); the rest is
//! counted in memory and written every few seconds (`recorder.rs`). Hourly roll-ups are
//! kept 35 days, daily ones 400.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use yun_auth::Identity;
use yun_meta::{UsageCounts, UsageRow};
use yun_types::YunError;

use crate::{App, Operation};

const HOURLY_KEPT_MS: i64 = 35 * 86_400_000;
const DEFAULT_SINCE_MS: i64 = 7 * 86_400_000;

/// Which usage to report; also the management route's query string.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From this time on (Unix ms; default: 7 days ago), at the granularity of the rows.
    pub since_ms: Option<i64>,
    /// A row per `function` (the default), per `hour` or per `day`.
    pub by: Option<String>,
    /// Only this function's usage.
    pub function: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageLine {
    /// The function (empty: no function's), or the period's start as Unix ms.
    pub key: String,
    #[serde(flatten)]
    pub counts: UsageCounts,
    /// `mb_ms` in SCF's unit: GB × seconds.
    pub gb_seconds: f64,
}

impl UsageLine {
    fn new(key: String, counts: UsageCounts) -> Self {
        Self {
            key,
            gb_seconds: counts.mb_ms as f64 / 1024.0 / 1000.0,
            counts,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub env: String,
    pub since_ms: i64,
    pub by: String,
    pub rows: Vec<UsageLine>,
    pub total: UsageLine,
    /// Bytes the env's files take now.
    pub stored_bytes: u64,
    /// Documents in the env's collections now.
    pub documents: u64,
}

impl App {
    pub async fn usage(
        &self,
        identity: &Identity,
        query: UsageQuery,
    ) -> Result<UsageReport, YunError> {
        Self::authorize(identity, Operation::ReadUsage)?;
        let now = yun_types::unix_ms();
        let since_ms = query.since_ms.unwrap_or(now - DEFAULT_SINCE_MS);
        let by = query.by.unwrap_or_else(|| "function".into());
        let period = match by.as_str() {
            "hour" => "hour",
            "day" => "day",
            "function" if now - since_ms <= HOURLY_KEPT_MS => "hour",
            "function" => "day",
            other => {
                return Err(YunError::invalid_param(format!(
                    "by must be function, hour or day, not {other:?}"
                )))
            }
        };
        // What was counted but not written yet belongs in the report.
        self.recorder.flush().await;
        let rows: Vec<UsageRow> = self
            .meta
            .usage(&identity.env, period, since_ms)
            .await?
            .into_iter()
            .filter(|r| query.function.as_ref().is_none_or(|f| *f == r.function))
            .collect();
        let mut grouped: BTreeMap<String, UsageCounts> = BTreeMap::new();
        let mut total = UsageCounts::default();
        for row in &rows {
            let key = match by.as_str() {
                "function" => row.function.clone(),
                _ => row.start_ms.to_string(),
            };
            grouped.entry(key).or_default().add(&row.counts);
            total.add(&row.counts);
        }
        // Period keys are 13-digit Unix ms: their text order is their time order.
        let lines: Vec<UsageLine> = grouped
            .into_iter()
            .map(|(key, counts)| UsageLine::new(key, counts))
            .collect();
        Ok(UsageReport {
            env: identity.env.to_string(),
            since_ms,
            by,
            rows: lines,
            total: UsageLine::new("total".into(), total),
            stored_bytes: self.storage.used_bytes(&identity.env).await?,
            documents: self.docdb.document_count(&identity.env).await?,
        })
    }

    /// Counts a file download's bytes as the env's egress (no function's).
    pub(crate) fn count_download(&self, env: &yun_types::EnvId, bytes: u64) {
        super::metrics::storage_bytes(env, "out", bytes);
        self.recorder.count_usage(
            env,
            "",
            UsageCounts {
                egress_bytes: bytes,
                ..UsageCounts::default()
            },
        );
    }
}
