//! Alert rules, per env or function: error rate, p95 duration, throttles, dead-letter
//! depth over a window, evaluated in the background; a webhook gets JSON when a rule
//! starts firing and when it is resolved, retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use yun_auth::Identity;
use yun_meta::{AlertRule, ALERT_METRICS};
use yun_types::{ErrorCode, FunctionName, YunError};

use crate::{App, Operation};

/// Deliveries a webhook gets for one alert: the first and up to this many retries.
const WEBHOOK_RETRIES: u32 = 4;
/// Rules an env may have: each is evaluated every interval against the shared store.
const MAX_RULES_PER_ENV: usize = 50;
const WINDOW_S: std::ops::RangeInclusive<u64> = 1..=7 * 86_400;

/// A rule as a caller asks for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAlert {
    pub name: String,
    #[serde(default)]
    pub function: Option<String>,
    pub metric: String,
    pub threshold: f64,
    pub window_s: u64,
    pub webhook: String,
}

/// What a webhook delivery came to.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The receiver's last HTTP status, if it answered.
    pub status: Option<u16>,
    pub attempts: u32,
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn check(new: &NewAlert) -> Result<Option<FunctionName>, YunError> {
    let name_ok = (1..=60).contains(&new.name.len())
        && new
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(YunError::invalid_param(
            "an alert name is 1 to 60 letters, digits, - or _",
        ));
    }
    if !ALERT_METRICS.contains(&new.metric.as_str()) {
        return Err(YunError::invalid_param(format!(
            "metric must be one of {}, not {:?}",
            ALERT_METRICS.join(", "),
            new.metric
        )));
    }
    if !new.threshold.is_finite() || new.threshold < 0.0 {
        return Err(YunError::invalid_param("threshold must be a number ≥ 0"));
    }
    if !WINDOW_S.contains(&new.window_s) {
        return Err(YunError::invalid_param(format!(
            "window must be between {} s and {} s",
            WINDOW_S.start(),
            WINDOW_S.end()
        )));
    }
    let url = reqwest::Url::parse(&new.webhook)
        .map_err(|e| YunError::invalid_param(format!("webhook is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(YunError::invalid_param(
            "webhook must be an http or https URL",
        ));
    }
    new.function
        .as_deref()
        .map(|f| FunctionName::parse(f).map_err(|e| YunError::invalid_param(e.to_string())))
        .transpose()
}

impl App {
    pub async fn create_alert(
        &self,
        identity: &Identity,
        new: NewAlert,
    ) -> Result<AlertRule, YunError> {
        Self::authorize(identity, Operation::ManageAlerts)?;
        let function = check(&new)?;
        if let Some(function) = &function {
            self.function(&identity.env, function).await?;
        }
        if self.meta.list_alerts(Some(&identity.env)).await?.len() >= MAX_RULES_PER_ENV {
            return Err(YunError::invalid_param(format!(
                "an env has at most {MAX_RULES_PER_ENV} alert rules"
            )));
        }
        let rule = AlertRule {
            env: identity.env.clone(),
            name: new.name,
            function,
            metric: new.metric,
            threshold: new.threshold,
            window_s: new.window_s,
            webhook: new.webhook,
            created_at_ms: yun_types::unix_ms(),
            firing: false,
            last_value: None,
            changed_at_ms: None,
        };
        self.meta.insert_alert(&rule).await?;
        Ok(rule)
    }

    pub async fn list_alerts(&self, identity: &Identity) -> Result<Vec<AlertRule>, YunError> {
        Self::authorize(identity, Operation::ListAlerts)?;
        self.meta.list_alerts(Some(&identity.env)).await
    }

    pub async fn delete_alert(&self, identity: &Identity, name: &str) -> Result<(), YunError> {
        Self::authorize(identity, Operation::ManageAlerts)?;
        if self.meta.delete_alert(&identity.env, name).await? {
            Ok(())
        } else {
            Err(no_alert(identity, name))
        }
    }

    /// Sends the rule's webhook a test alert now, with the retries a real one gets.
    pub async fn test_alert(&self, identity: &Identity, name: &str) -> Result<Delivery, YunError> {
        Self::authorize(identity, Operation::ManageAlerts)?;
        let rule = self
            .meta
            .list_alerts(Some(&identity.env))
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| no_alert(identity, name))?;
        Ok(deliver(&rule, "test", rule.last_value.unwrap_or_default()).await)
    }

    /// Evaluates every rule every `every` until the process ends.
    pub async fn run_alerts(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rules = match self.meta.list_alerts(None).await {
                Ok(rules) => rules,
                Err(e) => {
                    tracing::warn!(error = %e.message, "alerts: cannot read the rules");
                    continue;
                }
            };
            if !rules.is_empty() {
                // The window includes what is queued for the store.
                self.recorder.flush().await;
            }
            for rule in rules {
                if let Err(e) = self.evaluate(&rule).await {
                    tracing::warn!(env = %rule.env, alert = %rule.name, error = %e.message, "alert evaluation failed");
                }
            }
        }
    }

    async fn evaluate(&self, rule: &AlertRule) -> Result<(), YunError> {
        let now = yun_types::unix_ms();
        let since = now - rule.window_s as i64 * 1000;
        let value = if rule.metric == "dlq_depth" {
            self.meta
                .count_dead_letters(&rule.env)
                .await?
                .into_iter()
                .filter(|(f, _)| rule.function.as_ref().is_none_or(|r| r == f))
                .map(|(_, n)| n)
                .sum::<u64>() as f64
        } else {
            let stats = self
                .meta
                .invocation_stats(
                    &rule.env,
                    rule.function.as_ref(),
                    since,
                    rule.metric == "p95_ms",
                )
                .await?;
            match rule.metric.as_str() {
                "error_rate" if stats.invocations == 0 => 0.0,
                "error_rate" => 100.0 * stats.errors as f64 / stats.invocations as f64,
                "p95_ms" => stats.p95_ms as f64,
                _ => stats.throttles as f64,
            }
        };
        let firing = value > rule.threshold;
        // The store says whether this evaluation changed the state: with several nodes
        // evaluating, only the one that changed it notifies.
        let changed = self
            .meta
            .set_alert_state(&rule.env, &rule.name, value, firing, now)
            .await?;
        if changed {
            let rule = rule.clone();
            // Delivery retries for a while: it must not hold up the other rules.
            tokio::spawn(async move {
                let state = if firing { "firing" } else { "resolved" };
                let delivery = deliver(&rule, state, value).await;
                if !delivery.delivered {
                    tracing::warn!(env = %rule.env, alert = %rule.name, attempts = delivery.attempts, error = ?delivery.error, "alert webhook not delivered");
                }
            });
        }
        Ok(())
    }
}

fn no_alert(identity: &Identity, name: &str) -> YunError {
    YunError::new(
        ErrorCode::NotFound,
        format!("env {} has no alert named {name}", identity.env),
    )
}

/// POSTs the alert to the rule's webhook: a 2xx is delivered; anything else is tried
/// again after 1, 2, 4, 8 s.
async fn deliver(rule: &AlertRule, state: &str, value: f64) -> Delivery {
    let body = json!({
        "alert": rule.name,
        "state": state,
        "env": rule.env,
        "function": rule.function,
        "metric": rule.metric,
        "value": value,
        "threshold": rule.threshold,
        "window_s": rule.window_s,
        "at_ms": yun_types::unix_ms(),
    });
    // Redirects are not followed: the rule names where alerts go.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut delivery = Delivery {
        status: None,
        attempts: 0,
        delivered: false,
        error: None,
    };
    for attempt in 0..=WEBHOOK_RETRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        delivery.attempts += 1;
        match client.post(&rule.webhook).json(&body).send().await {
            Ok(r) => {
                delivery.status = Some(r.status().as_u16());
                if r.status().is_success() {
                    delivery.delivered = true;
                    delivery.error = None;
                    return delivery;
                }
                delivery.error = Some(format!("the webhook answered {}", r.status()));
            }
            Err(e) => delivery.error = Some(e.to_string()),
        }
    }
    delivery
}
