//! Retention of function logs and invocation records: each env's limits by age and by
//! size (`EnvSettings::retention`), enforced by a background loop in small batches, one
//! short write transaction each, so the writes of running functions are never held up
//! behind a large delete.

use std::sync::Arc;
use std::time::Duration;

use crate::App;

/// Rows a batch removes at most: a transaction of a few milliseconds.
const BATCH: u32 = 2000;

impl App {
    /// Enforces retention every `every` until the process ends.
    pub async fn run_retention(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.enforce_retention().await {
                tracing::warn!(error = %e.message, "log retention: will try again");
            }
        }
    }

    /// One pass over every env.
    async fn enforce_retention(&self) -> Result<(), yun_types::YunError> {
        // What is queued counts against the limits too.
        self.recorder.flush().await;
        // Retired file objects are kept as long as the change log that could need them.
        self.storage
            .sweep_retired(yun_types::changes::ChangeRetention::default().max_age)
            .await;
        for env in self.meta.list_envs().await? {
            // One env's failure leaves the others' retention running.
            if let Err(e) = self.prune_env(&env.id).await {
                tracing::warn!(env = %env.id, error = %e.message, "log retention: will try again");
            }
        }
        Ok(())
    }

    async fn prune_env(&self, env: &yun_types::EnvId) -> Result<(), yun_types::YunError> {
        let retention = self.env_settings(env).await?.retention();
        loop {
            let pruned = self
                .meta
                .prune(env, retention, yun_types::unix_ms(), BATCH)
                .await?;
            if pruned.logs + pruned.records > 0 {
                tracing::debug!(%env, logs = pruned.logs, records = pruned.records, "retention");
            }
            if !pruned.more {
                return Ok(());
            }
            // Let queued writes in between batches.
            tokio::task::yield_now().await;
        }
    }
}
