//! Async invocations, SCF's `InvocationType: Event`: the caller gets a request id at
//! once; the event waits on the event bus (`yun-events`, topic [`TOPIC`]) and is
//! delivered at least once. A failed attempt is retried by SCF's policy (the function's
//! [`AsyncRetry`]): runtime errors (threw, timed out, crashed) `retries` times,
//! `interval_s` apart; throttles and system errors until the event is `max_age_s` old
//! (throttles at the retry interval, at most a minute; system errors with a doubling
//! backoff up to 5 minutes); caller errors (the function is gone, the event is refused)
//! never. Then the event goes to the function's dead-letter queue with why, from where
//! `replay` sends it again. Triggers deliver through the same path.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use yun_auth::{Caller, Identity};
use yun_events::{Delivery, Message, Order, Retention, TopicSpec};
use yun_meta::{AsyncRetry, DeadLetter};
use yun_types::{new_sortable_id, EnvId, ErrorCode, FunctionName, YunError};

use super::triggers::derived_request_id;
use crate::authz::Operation;
use crate::functions::{check_event, Attempt, CallerContext};
use crate::App;

/// The bus topic of every env's async events (a work queue).
pub const TOPIC: &str = "async-events";
const GROUP: &str = "invoker";
/// How long a delivery is kept from others; a running attempt extends it every
/// [`EXTEND_EVERY`], so after a crash its event is delivered again within this.
const VISIBILITY: Duration = Duration::from_secs(60);
const EXTEND_EVERY: Duration = Duration::from_secs(20);
/// SCF's limit on an async event.
pub const MAX_EVENT_BYTES: usize = 128 << 10;
/// Deliveries running at once in this process.
const CONCURRENT_DELIVERIES: usize = 64;
/// The longest wait between retries of a system error.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// An event waiting for its function, as the bus carries it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QueuedEvent {
    pub env: String,
    pub function: String,
    pub request_id: String,
    /// JSON text.
    pub event: String,
    /// `async`, `replay`, or the trigger type.
    pub source: String,
    pub trigger: Option<String>,
    pub enqueued_at_ms: i64,
    /// The invocation that queued it, when a function did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_request_id: Option<String>,
    /// The trace context it was queued in: its delivery continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What to do with a delivery after its attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Done,
    RetryIn(Duration),
    DeadLetter,
}

/// SCF's policy: what follows a failed attempt `attempt` (1 = the first) of an event
/// `age` old.
fn after_failure(policy: &AsyncRetry, code: ErrorCode, attempt: u32, age: Duration) -> Next {
    let interval = Duration::from_secs(policy.interval_s);
    let within_age = |delay: Duration| {
        if age + delay < Duration::from_secs(policy.max_age_s) {
            Next::RetryIn(delay)
        } else {
            Next::DeadLetter
        }
    };
    match code {
        ErrorCode::FunctionExecuteFail if attempt <= policy.retries => within_age(interval),
        ErrorCode::FunctionExecuteFail => Next::DeadLetter,
        ErrorCode::ConcurrencyLimit => within_age(interval.min(Duration::from_secs(60))),
        ErrorCode::Internal | ErrorCode::Unavailable => {
            let doubling = Duration::from_secs(1u64 << attempt.min(16));
            within_age(doubling.min(MAX_BACKOFF))
        }
        _ => Next::DeadLetter,
    }
}

impl App {
    /// Queues `event` for `name` and answers its request id at once. `caller` gives the
    /// source and, when a function queues it, the invocation that did.
    pub async fn invoke_async(
        &self,
        identity: &Identity,
        name: &FunctionName,
        event: String,
        caller: &CallerContext,
    ) -> Result<String, YunError> {
        Self::authorize(identity, Operation::InvokeFunctionAsync)?;
        let event = if event.is_empty() { "{}".into() } else { event };
        if event.len() > MAX_EVENT_BYTES {
            return Err(YunError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "an async event is at most {MAX_EVENT_BYTES} bytes (SCF's limit), this one is {}",
                    event.len()
                ),
            ));
        }
        check_event(&event)?;
        // Refused now rather than dead-lettered later.
        self.function(&identity.env, name).await?;
        let queued = QueuedEvent {
            env: identity.env.to_string(),
            function: name.to_string(),
            request_id: new_sortable_id(),
            event,
            source: caller.source.clone(),
            trigger: None,
            enqueued_at_ms: yun_types::unix_ms(),
            parent_request_id: caller.parent_request_id.clone(),
            traceparent: crate::ops::TraceContext::current().map(|c| c.header()),
        };
        self.enqueue(&queued).await?;
        Ok(queued.request_id)
    }

    /// Puts an event on the bus; its request id makes a repeated publish a no-op.
    pub(crate) async fn enqueue(&self, queued: &QueuedEvent) -> Result<(), YunError> {
        let payload = serde_json::to_vec(queued).map_err(YunError::internal)?;
        self.events
            .publish(
                TOPIC,
                Message::new(queued.request_id.clone(), payload)
                    .with_dedupe_id(queued.request_id.clone()),
            )
            .await?;
        Ok(())
    }

    /// Delivers async events until the process ends. An attempt cut short by the end is
    /// delivered again (by any process of the cluster) once its visibility runs out.
    pub async fn run_async_invoker(self: Arc<Self>) {
        // A work queue: an event goes once delivered, and a full queue refuses new
        // events (a throttle to the caller) rather than dropping waiting ones.
        let spec = TopicSpec {
            retention: Retention::WorkQueue,
            ..TopicSpec::new(Order::Any)
        };
        if let Err(e) = self.events.declare(TOPIC, spec).await {
            tracing::error!(error = %e, "cannot declare the async invocations topic: async events wait");
            return;
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DELIVERIES));
        loop {
            // Only as many deliveries are taken as can start: the others stay with the
            // bus for other processes.
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let free = 1 + slots.available_permits().min(31);
            let fetched = self
                .events
                .fetch(TOPIC, GROUP, free, VISIBILITY, Duration::from_secs(5))
                .await;
            let deliveries = match fetched {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching async events failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut first = Some(first);
            for delivery in deliveries {
                let slot = match first.take() {
                    Some(slot) => slot,
                    None => match slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                let app = self.clone();
                tokio::spawn(async move {
                    app.deliver(delivery).await;
                    drop(slot);
                });
            }
        }
    }

    async fn deliver(&self, delivery: Delivery) {
        let settle = match serde_json::from_slice::<QueuedEvent>(&delivery.payload) {
            Ok(queued) => {
                let attempt = self.attempt(&queued, delivery.attempt);
                tokio::pin!(attempt);
                let mut next_extend = tokio::time::Instant::now() + EXTEND_EVERY;
                loop {
                    tokio::select! {
                        next = &mut attempt => break next,
                        _ = tokio::time::sleep_until(next_extend) => {
                            next_extend = match self.events.extend(&delivery, VISIBILITY).await {
                                Ok(()) => tokio::time::Instant::now() + EXTEND_EVERY,
                                // Soon again: at VISIBILITY the event goes to another
                                // fetcher while this attempt still runs.
                                Err(e) => {
                                    tracing::warn!(seq = delivery.seq, error = %e, "could not extend a running delivery; trying again in 2 s");
                                    tokio::time::Instant::now() + Duration::from_secs(2)
                                }
                            };
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(seq = delivery.seq, error = %e, "dropping an async event that does not decode");
                Next::Done
            }
        };
        let settled = match settle {
            Next::RetryIn(delay) => self.events.nack(&delivery, delay).await,
            Next::Done | Next::DeadLetter => self.events.ack(&delivery).await,
        };
        if let Err(e) = settled {
            // The bus delivers it again after its visibility: at least once.
            tracing::warn!(seq = delivery.seq, error = %e, "could not settle an async delivery");
        }
    }

    /// Runs one attempt; a dead letter is stored before its delivery is acked.
    async fn attempt(&self, queued: &QueuedEvent, attempt: u32) -> Next {
        let age =
            Duration::from_millis((yun_types::unix_ms() - queued.enqueued_at_ms).max(0) as u64);
        let (Ok(env), Ok(name)) = (
            EnvId::parse(&queued.env),
            FunctionName::parse(&queued.function),
        ) else {
            tracing::error!(request_id = %queued.request_id, "dropping an async event with an invalid env or function name");
            return Next::Done;
        };
        let policy = match self.function(&env, &name).await {
            Ok(f) => f.record.spec.async_retry,
            Err(e) if e.code == ErrorCode::FunctionNotFound => {
                return self.dead_letter(queued, (env, name), attempt, &e).await
            }
            // The metadata store failing is not the event's fault: try again later.
            Err(e) => {
                tracing::warn!(error = %e.message, "async event: cannot read its function; retrying in a minute");
                return Next::RetryIn(Duration::from_secs(60));
            }
        };
        let identity = Identity {
            env: env.clone(),
            // The caller was authorized when the event was queued; the delivery carries
            // no one's credentials.
            caller: Caller::Anonymous,
        };
        let caller = CallerContext {
            request_id: queued.request_id.clone(),
            source: queued.source.clone(),
            client_ip: None,
            seq_id: None,
            parent_request_id: queued.parent_request_id.clone(),
        };
        let attempt_of = Attempt {
            number: attempt,
            trigger: Some(queued.trigger.as_deref().unwrap_or("async")),
            // Only a timer's own events: a caller's source is whatever it sent.
            timer: queued.trigger.is_some() && queued.source == "timer",
        };
        let context = queued
            .traceparent
            .as_deref()
            .and_then(crate::ops::TraceContext::parse);
        let outcome = crate::ops::traced(
            context,
            self.invoke_checked(&identity, &name, queued.event.clone(), &caller, attempt_of),
        )
        .await
        .and_then(|i| i.result.map(|_| ()));
        match outcome {
            Ok(()) => Next::Done,
            Err(e) => match after_failure(&policy, e.code, attempt, age) {
                Next::DeadLetter => {
                    self.dead_letter(queued, (identity.env, name), attempt, &e)
                        .await
                }
                next => next,
            },
        }
    }

    async fn dead_letter(
        &self,
        queued: &QueuedEvent,
        (env, function): (EnvId, FunctionName),
        attempt: u32,
        error: &YunError,
    ) -> Next {
        let letter = DeadLetter {
            env,
            function,
            request_id: queued.request_id.clone(),
            error_code: error.code.cloudbase().into(),
            error_message: error.message.clone(),
            event: queued.event.clone(),
            source: queued.source.clone(),
            trigger: queued.trigger.clone(),
            retry_num: attempt.saturating_sub(1),
            enqueued_at_ms: queued.enqueued_at_ms,
            failed_at_ms: yun_types::unix_ms(),
        };
        match self.meta.put_dead_letter(&letter).await {
            Ok(()) => Next::DeadLetter,
            // Its env is gone, and the dead letter with it.
            Err(_) if matches!(self.meta.get_env(&letter.env).await, Ok(None)) => {
                tracing::warn!(env = %letter.env, request_id = %letter.request_id, "dropping an async event of a deleted env");
                Next::Done
            }
            // Not acked: tried again later rather than lost.
            Err(e) => {
                tracing::warn!(error = %e.message, "could not store a dead letter; retrying in a minute");
                Next::RetryIn(Duration::from_secs(60))
            }
        }
    }

    /// A function's dead-letter queue (one entry with `request_id`).
    pub async fn dead_letters(
        &self,
        identity: &Identity,
        name: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<Vec<DeadLetter>, YunError> {
        Self::authorize(identity, Operation::ListDeadLetters)?;
        let found = self
            .meta
            .list_dead_letters(&identity.env, name, request_id)
            .await?;
        match request_id {
            Some(id) if found.is_empty() => Err(no_letter(name, id)),
            _ => Ok(found),
        }
    }

    /// Sends a function's dead letters (or one) again, each as a new async event (a new
    /// request id), and removes them; answers the new request ids.
    pub async fn replay_dead_letters(
        &self,
        identity: &Identity,
        name: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<Vec<String>, YunError> {
        Self::authorize(identity, Operation::ReplayDeadLetters)?;
        self.function(&identity.env, name).await?;
        let letters = self
            .meta
            .list_dead_letters(&identity.env, name, request_id)
            .await?;
        if let (Some(id), true) = (request_id, letters.is_empty()) {
            return Err(no_letter(name, id));
        }
        let mut replayed = Vec::new();
        for letter in letters {
            // The new id derives from the letter, so a replay retried after a crash
            // between the publish and the delete is published once.
            let queued = QueuedEvent {
                env: letter.env.to_string(),
                function: letter.function.to_string(),
                request_id: derived_request_id(&[
                    "replay",
                    &letter.request_id,
                    &letter.failed_at_ms.to_string(),
                ]),
                event: letter.event,
                source: "replay".into(),
                trigger: letter.trigger,
                enqueued_at_ms: yun_types::unix_ms(),
                parent_request_id: None,
                traceparent: None,
            };
            self.enqueue(&queued).await?;
            self.meta
                .delete_dead_letters(&identity.env, name, Some(&letter.request_id))
                .await?;
            replayed.push(queued.request_id);
        }
        Ok(replayed)
    }

    /// Deletes a function's dead letters (or one); answers how many went.
    pub async fn purge_dead_letters(
        &self,
        identity: &Identity,
        name: &FunctionName,
        request_id: Option<&str>,
    ) -> Result<u64, YunError> {
        Self::authorize(identity, Operation::PurgeDeadLetters)?;
        let purged = self
            .meta
            .delete_dead_letters(&identity.env, name, request_id)
            .await?;
        match request_id {
            Some(id) if purged == 0 => Err(no_letter(name, id)),
            _ => Ok(purged),
        }
    }
}

fn no_letter(name: &FunctionName, request_id: &str) -> YunError {
    YunError::new(
        ErrorCode::NotFound,
        format!("no dead letter {request_id} for function {name}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_follow_scf_retry_policy() {
        let policy = AsyncRetry::default();
        let min = |m: u64| Duration::from_secs(60 * m);
        let run = ErrorCode::FunctionExecuteFail;
        assert_eq!(
            after_failure(&policy, run, 1, min(0)),
            Next::RetryIn(min(1))
        );
        assert_eq!(
            after_failure(&policy, run, 2, min(1)),
            Next::RetryIn(min(1))
        );
        assert_eq!(after_failure(&policy, run, 3, min(2)), Next::DeadLetter);
        let throttled = ErrorCode::ConcurrencyLimit;
        assert_eq!(
            after_failure(&policy, throttled, 40, min(200)),
            Next::RetryIn(min(1))
        );
        assert_eq!(
            after_failure(&policy, throttled, 400, min(359)),
            Next::DeadLetter
        );
        let system = ErrorCode::Internal;
        assert_eq!(
            after_failure(&policy, system, 1, min(0)),
            Next::RetryIn(Duration::from_secs(2))
        );
        assert_eq!(
            after_failure(&policy, system, 12, min(10)),
            Next::RetryIn(min(5))
        );
        assert_eq!(
            after_failure(&policy, system, 80, min(358)),
            Next::DeadLetter
        );
        // Caller errors are never retried.
        for code in [ErrorCode::FunctionNotFound, ErrorCode::InvalidParam] {
            assert_eq!(after_failure(&policy, code, 1, min(0)), Next::DeadLetter);
        }
        let none = AsyncRetry {
            retries: 0,
            ..policy
        };
        assert_eq!(after_failure(&none, run, 1, min(0)), Next::DeadLetter);
    }
}
