//! Timer triggers: each tick of a schedule becomes an async event
//! `{Type: "Timer", TriggerName, Time, Message}` (`Time` in UTC, the schedule in the
//! env's offset). A tick's request id derives from (env, function, trigger, tick), so
//! several processes on one bus publish it once: the bus drops the repeats, and a claim
//! on the bus keeps a late process from firing it again.
//!
//! Missed ticks while Yun was stopped: the latest one fires once at start, then the
//! schedule goes on (SCF documents none; this is the common choice of schedulers). Only
//! ticks younger than a claim lasts (a week) are caught up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use yun_types::{EnvId, YunError};

use yun_events::{CLAIM_TTL, DEDUPE_WINDOW};

use super::async_invoke::QueuedEvent;
use super::triggers::{derived_request_id, Spec, Trigger};
use super::utc_offset;
use crate::App;

/// Looked at least this often, so new triggers and settings are seen soon.
const LONGEST_SLEEP: Duration = Duration::from_secs(1);
/// Ticks walked through at most to find the latest due one.
const CATCH_UP_STEPS: usize = 10_000;

fn to_local(ms: i64, offset: UtcOffset) -> Option<PrimitiveDateTime> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let local = at.to_offset(offset);
    Some(PrimitiveDateTime::new(local.date(), local.time()))
}

fn to_ms(local: PrimitiveDateTime, offset: UtcOffset) -> i64 {
    (local.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as i64
}

/// The latest tick in `(after, now]`, if there is one. Walks from ten minutes back,
/// then a day, then `after`, so a frequent schedule is not walked through a long stop.
fn latest_due(
    schedule: &super::cron::Schedule,
    after: i64,
    now: i64,
    offset: UtcOffset,
) -> Option<i64> {
    for back in [600_000, 86_400_000, i64::MAX] {
        let mut at = to_local(after.max(now.saturating_sub(back)), offset)?;
        let mut due = None;
        for _ in 0..CATCH_UP_STEPS {
            match schedule.next_after(at) {
                Some(next) if to_ms(next, offset) <= now => {
                    due = Some(to_ms(next, offset));
                    at = next;
                }
                _ => break,
            }
        }
        if due.is_some() || now.saturating_sub(back) <= after {
            return due;
        }
    }
    None
}

impl App {
    /// Fires timer triggers until the process ends.
    pub async fn run_timers(self: Arc<Self>) {
        let mut changed = self.trigger_signal();
        loop {
            let wait = match self.fire_due_timers().await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e.message, "timer triggers: cannot read them; retrying in 1 s");
                    LONGEST_SLEEP
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.changed() => {}
            }
        }
    }

    /// Publishes every due tick; answers how long until the next one (at most a second).
    /// A trigger that fails (its env's settings, the bus) is tried again next round
    /// without holding up the others.
    async fn fire_due_timers(&self) -> Result<Duration, YunError> {
        let now = yun_types::unix_ms();
        let mut offsets: HashMap<EnvId, UtcOffset> = HashMap::new();
        let mut wait = LONGEST_SLEEP;
        for trigger in self.triggers_of_kind("timer").await? {
            match self.fire_timer(&trigger, now, &mut offsets).await {
                Ok(Some(next)) => wait = wait.min(next),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    trigger = %trigger.record.name, function = %trigger.record.function,
                    error = %e.message, "timer trigger: retrying next round"
                ),
            }
        }
        Ok(wait)
    }

    /// Fires `trigger`'s latest due tick, if any; answers the time to its next one.
    async fn fire_timer(
        &self,
        Trigger { record, spec }: &Trigger,
        now: i64,
        offsets: &mut HashMap<EnvId, UtcOffset>,
    ) -> Result<Option<Duration>, YunError> {
        let Spec::Timer(schedule) = spec else {
            return Ok(None);
        };
        let offset = match offsets.get(&record.env) {
            Some(o) => *o,
            None => {
                let settings = self.env_settings(&record.env).await?;
                let o = utc_offset(settings.timer_utc_offset.as_deref().unwrap_or("+08:00"))?;
                offsets.insert(record.env.clone(), o);
                o
            }
        };
        // Catch-up reaches back as far as claims last: an older tick may have been fired
        // by another process whose claim has expired.
        let since = record
            .last_fired_ms
            .unwrap_or(record.created_at_ms)
            .max(now - CLAIM_TTL.as_millis() as i64);
        if let Some(tick) = latest_due(schedule, since, now, offset) {
            let request_id = derived_request_id(&[
                "timer",
                record.env.as_str(),
                record.function.as_str(),
                &record.name,
                &tick.to_string(),
            ]);
            // A fresh tick is published by every process that sees it due: the bus keeps
            // one (the request id dedupes for DEDUPE_WINDOW). The tick is claimed after
            // that, so that a process catching up on it later, past the window, finds it
            // taken; a catch-up claims first. A failed publish is retried next round
            // (the claim's holder may claim again).
            let fresh = now - tick < DEDUPE_WINDOW.as_millis() as i64 / 2;
            if fresh || self.events.claim(&request_id).await? {
                let time = OffsetDateTime::from_unix_timestamp(tick / 1000)
                    .map_err(YunError::internal)?
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(YunError::internal)?;
                let queued = QueuedEvent {
                    env: record.env.to_string(),
                    function: record.function.to_string(),
                    request_id: request_id.clone(),
                    event: json!({
                        "Type": "Timer",
                        "TriggerName": record.name,
                        "Time": time,
                        "Message": "",
                    })
                    .to_string(),
                    source: "timer".into(),
                    trigger: Some(record.name.clone()),
                    enqueued_at_ms: now,
                    parent_request_id: None,
                    traceparent: None,
                };
                self.enqueue(&queued).await?;
                if fresh {
                    self.events.claim(&request_id).await?;
                }
            }
            self.meta
                .trigger_fired(&record.env, &record.function, &record.name, tick)
                .await?;
        }
        Ok(to_local(now, offset)
            .and_then(|local| schedule.next_after(local))
            .map(|next| Duration::from_millis((to_ms(next, offset) - now).max(0) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_missed_tick_fires_once_in_the_envs_offset() {
        let every_minute = super::super::cron::parse("0 * * * * * *").unwrap();
        let utc8 = UtcOffset::from_hms(8, 0, 0).unwrap();
        let minute = 60_000;
        let start = 1_764_000_000_000 - 1_764_000_000_000 % minute;
        assert_eq!(latest_due(&every_minute, start, start + 30_000, utc8), None);
        assert_eq!(
            latest_due(&every_minute, start, start + minute, utc8),
            Some(start + minute)
        );
        // Stopped for an hour, or a week: one event, the latest tick.
        assert_eq!(
            latest_due(&every_minute, start, start + 60 * minute + 5, utc8),
            Some(start + 60 * minute)
        );
        let week = 7 * 24 * 60 * minute;
        assert_eq!(
            latest_due(&every_minute, start, start + week + 5, utc8),
            Some(start + week)
        );
        let every_second = super::super::cron::parse("* * * * * * *").unwrap();
        assert_eq!(
            latest_due(&every_second, start, start + week + 1500, utc8),
            Some(start + week + 1000)
        );
        // A monthly schedule missed days ago is found past the day's window.
        let monthly = super::super::cron::parse("0 0 0 1 * * *").unwrap();
        let due = latest_due(&monthly, start - 40 * 24 * 60 * minute, start, utc8).unwrap();
        assert!(due < start - 24 * 60 * minute && due > start - 32 * 24 * 60 * minute);
        // 02:00 every day is 18:00 UTC the day before at UTC+8.
        let daily = super::super::cron::parse("0 0 2 * * * *").unwrap();
        let midnight_utc = 1_764_028_800_000; // 2025-11-25T00:00:00Z
        let due = latest_due(&daily, midnight_utc, midnight_utc + 86_400_000, utc8).unwrap();
        assert_eq!(due, midnight_utc + 18 * 3_600_000);
        let due_utc = latest_due(
            &daily,
            midnight_utc,
            midnight_utc + 86_400_000,
            UtcOffset::UTC,
        )
        .unwrap();
        assert_eq!(due_utc, midnight_utc + 2 * 3_600_000);
    }
}
