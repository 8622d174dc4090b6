//! The cluster event bus on NATS JetStream (the seam is `yun_events::EventBus`). One stream per topic, `{prefix}_{topic}`, file
//! storage, limits retention (`max_age`, `max_bytes`, discard old), dedupe through the
//! `Nats-Msg-Id` header within `duplicate_window`. A group is a durable pull consumer
//! with explicit acks whose `ack_wait` is the visibility; a nack is a `-NAK` with delay.
//! The key travels in the `Yun-Key` header.
//!
//! Unordered topics publish on `{prefix}.ev.{topic}` and a group is one consumer named
//! after it. Ordered topics publish on `{prefix}.ev.{topic}.{partition}` (the key's
//! hash) and a group is one consumer per partition, `{group}_p{n}`, filtered to it, with
//! `max_ack_pending = 1`: the server itself keeps a partition's messages one at a time
//! and in order, across every process. Hence at most [`PARTITIONS`] in flight per group.
//!
//! Fetches pull with their own inbox and never leave a pull request behind them (a
//! request left waiting would take a message for a fetcher that has gone, until the
//! visibility ran out). An unordered fetch that finds nothing waits in one server-side
//! pull of one message, then takes what else is ready. An ordered fetch cannot wait on
//! sixteen consumers that way, so it listens on the topic's bell,
//! `{prefix}.bell.{topic}` (core NATS, not stored): a publish or an ack rings it with the
//! partition that may have a message ready, and the fetch pulls that partition; it also
//! looks at every partition once a second, for redeliveries and delayed nacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::{HeaderMap, StatusCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};

use yun_events::{
    check_claim, check_message, check_name, check_spec, check_visibility, partition, Delivery,
    EventBus, EventsError, Message, Order, Published, Receipt, Retention, TopicSpec, CLAIM_TTL,
    DEDUPE_WINDOW, PARTITIONS,
};

/// The header carrying a message's key.
const KEY_HEADER: &str = "Yun-Key";

/// A waiting ordered fetch looks at every partition at least this often.
const POLL: Duration = Duration::from_secs(1);

/// How long past its own expiry a pull may go unanswered before it is given up. Rarely a
/// pull gets no answer at all (seen with two fetchers sweeping busy `max_ack_pending = 1`
/// consumers, nats-server 2.9.10); once our inbox is gone the server drops the request
/// unanswered, so giving up loses nothing.
const PULL_GRACE: Duration = Duration::from_millis(250);

/// Unacked messages an unordered group may have out at once (the server's default is
/// 1,000; a queue drained by many workers wants more).
const UNORDERED_MAX_ACK_PENDING: i64 = 20_000;

pub struct JetStreamBus {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    /// Where the next ordered sweep starts, so that fetches asking for fewer messages
    /// than there are partitions do not always favour the first ones.
    sweep_from: AtomicU32,
    /// The key-value bucket of claims, `{prefix}_claims`, made on first use.
    claims: tokio::sync::OnceCell<jetstream::kv::Store>,
    /// This bus's name as a claimant (the value of its claims).
    claimant: String,
    /// A message each time the connection is back after a loss, or the client dropped
    /// messages (broadcasts may have been missed).
    reconnects: tokio::sync::broadcast::Sender<()>,
}

struct Topic {
    name: String,
    stream: String,
    order: Order,
    /// Groups whose consumers this process has made sure of, with their `ack_wait`.
    groups: Mutex<HashMap<String, Duration>>,
    /// Held while making sure of a group's consumers.
    ensuring: tokio::sync::Mutex<()>,
}

/// One pull request. Every one has an expiry: a `no_wait` pull without one, to a
/// consumer at its `max_ack_pending`, stays on the server (nats-server 2.9) and would
/// take the next message for a fetch that has gone.
struct Pull {
    consumer: String,
    batch: usize,
    /// `Some`: waits on the server up to this long for its batch. `None`: takes what is
    /// ready and ends ([`GLANCE`] at most).
    wait: Option<Duration>,
}

/// The expiry of a pull that should not wait (`no_wait`): the server answers at once
/// with what is ready, and on an empty or blocked consumer when this runs out
/// (measured: 1 ms is answered in about 2).
const GLANCE: Duration = Duration::from_millis(2);

fn nats(e: impl std::fmt::Display) -> EventsError {
    EventsError::Nats(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JetStreamBus {
    /// Connects to NATS at `url`. `prefix` (1 to 32 of `A-Z a-z 0-9 -`) starts every
    /// stream and subject name, so that deployments (and tests) sharing a server do not
    /// meet.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, EventsError> {
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(EventsError::Invalid(format!(
                "prefix {prefix:?}: use 1 to 32 of A-Z a-z 0-9 -"
            )));
        }
        let (reconnects, _) = tokio::sync::broadcast::channel(4);
        let on_event = reconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let on_event = on_event.clone();
                async move {
                    // Back after a loss, or messages dropped for a slow subscriber.
                    if matches!(
                        event,
                        async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                    ) {
                        let _ = on_event.send(());
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| EventsError::Nats(format!("cannot connect to {url}: {e}")))?;
        Ok(Self {
            js: jetstream::new(client.clone()),
            client,
            prefix: prefix.to_owned(),
            topics: Mutex::new(HashMap::new()),
            sweep_from: AtomicU32::new(0),
            claims: tokio::sync::OnceCell::new(),
            claimant: yun_types::new_id("c"),
            reconnects,
        })
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.ev.{topic}", self.prefix)
    }

    fn bell(&self, topic: &str) -> String {
        format!("{}.bell.{topic}", self.prefix)
    }

    fn subjects(&self, topic: &str, order: Order) -> Vec<String> {
        match order {
            Order::Any => vec![self.subject(topic)],
            Order::PerKey => vec![format!("{}.*", self.subject(topic))],
        }
    }

    fn stream_config(&self, topic: &str, spec: &TopicSpec) -> stream::Config {
        stream::Config {
            name: format!("{}_{topic}", self.prefix),
            description: Some(format!("yun-events topic {topic}")),
            subjects: self.subjects(topic, spec.order),
            retention: match spec.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            },
            // A work queue refuses when full; it never drops a waiting message.
            discard: match spec.retention {
                Retention::Limits => stream::DiscardPolicy::Old,
                Retention::WorkQueue => stream::DiscardPolicy::New,
            },
            storage: stream::StorageType::File,
            max_age: spec.max_age,
            max_bytes: i64::try_from(spec.max_bytes).unwrap_or(i64::MAX),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            // The server refuses a window longer than the messages live.
            duplicate_window: DEDUPE_WINDOW.min(spec.max_age),
            num_replicas: 1,
            ..Default::default()
        }
    }

    /// The topic's order as its stream's subjects say (only this crate makes them).
    fn order_of(&self, topic: &str, config: &stream::Config) -> Result<Order, EventsError> {
        [Order::Any, Order::PerKey]
            .into_iter()
            .find(|&order| config.subjects == self.subjects(topic, order))
            .ok_or_else(|| {
                EventsError::Nats(format!(
                    "stream {} has subjects {:?}: not a yun-events topic",
                    config.name, config.subjects
                ))
            })
    }

    fn remember(&self, topic: &str, stream: String, order: Order) -> Arc<Topic> {
        lock(&self.topics)
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: topic.to_owned(),
                    stream,
                    order,
                    groups: Mutex::new(HashMap::new()),
                    ensuring: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    async fn topic(&self, topic: &str) -> Result<Arc<Topic>, EventsError> {
        check_name("topic", topic)?;
        if let Some(t) = lock(&self.topics).get(topic) {
            return Ok(t.clone());
        }
        let name = format!("{}_{topic}", self.prefix);
        let stream = match self.js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e) if stream_missing(&e) => return Err(EventsError::UnknownTopic(topic.into())),
            Err(e) => return Err(nats(e)),
        };
        let order = self.order_of(topic, &stream.cached_info().config)?;
        Ok(self.remember(topic, name, order))
    }

    fn consumers(&self, t: &Topic, group: &str) -> Vec<(String, String)> {
        match t.order {
            Order::Any => vec![(group.to_owned(), self.subject(&t.name))],
            Order::PerKey => (0..PARTITIONS)
                .map(|p| {
                    let subject = format!("{}.{p}", self.subject(&t.name));
                    (partition_consumer(group, p), subject)
                })
                .collect(),
        }
    }

    /// Creates the group's consumers, or updates their `ack_wait`, unless this process
    /// already did with this visibility. One at a time per topic, and only where a
    /// consumer is missing or differs: a create that repeats an existing consumer's
    /// config is an update on the server, and pulls waiting on that consumer were seen
    /// to go unanswered across one.
    async fn ensure_group(
        &self,
        t: &Topic,
        group: &str,
        visibility: Duration,
    ) -> Result<(), EventsError> {
        if lock(&t.groups).get(group) == Some(&visibility) {
            return Ok(());
        }
        let _one_at_a_time = t.ensuring.lock().await;
        if lock(&t.groups).get(group) == Some(&visibility) {
            return Ok(());
        }
        let max_ack_pending = match t.order {
            Order::Any => UNORDERED_MAX_ACK_PENDING,
            Order::PerKey => 1,
        };
        let stream = self.js.get_stream_no_info(&t.stream).await.map_err(nats)?;
        let ensures = self.consumers(t, group).into_iter().map(|(name, subject)| {
            let stream = &stream;
            async move {
                match stream.consumer_info(&name).await {
                    Ok(info)
                        if info.config.ack_wait == visibility
                            && info.config.max_ack_pending == max_ack_pending =>
                    {
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
                    Err(e) => return Err(nats(e)),
                }
                let config = consumer::pull::Config {
                    durable_name: Some(name),
                    description: Some(format!("yun-events group {group}")),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: visibility,
                    filter_subject: subject,
                    max_ack_pending,
                    ..Default::default()
                };
                stream.create_consumer(config).await.map(drop).map_err(nats)
            }
        });
        futures_util::future::try_join_all(ensures).await?;
        lock(&t.groups).insert(group.to_owned(), visibility);
        Ok(())
    }

    /// Sends the pulls on one inbox and gathers what they bring, until each has its
    /// batch or the server ends it (no messages, expired, `max_ack_pending` reached).
    async fn pull(
        &self,
        t: &Topic,
        group: &str,
        pulls: &[Pull],
    ) -> Result<Vec<Delivery>, EventsError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(nats)?;
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for (i, pull) in pulls.iter().enumerate() {
            let request = match pull.wait {
                None => serde_json::json!({
                    "batch": pull.batch,
                    "no_wait": true,
                    "expires": nanos(GLANCE),
                }),
                Some(wait) => serde_json::json!({ "batch": pull.batch, "expires": nanos(wait) }),
            };
            self.client
                .publish_with_reply(
                    format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", t.stream, pull.consumer),
                    format!("{inbox}.{i}"),
                    request.to_string().into(),
                )
                .await
                .map_err(nats)?;
        }
        let mut left: Vec<usize> = pulls.iter().map(|p| p.batch).collect();
        let mut open = left.iter().filter(|&&n| n > 0).count();
        let longest = pulls.iter().filter_map(|p| p.wait).max();
        let give_up = Instant::now() + longest.unwrap_or(GLANCE) + PULL_GRACE;
        let mut out = Vec::new();
        while open > 0 {
            let reply = match tokio::time::timeout_at(give_up.into(), replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(EventsError::Nats("the NATS connection closed".into())),
                Err(_) => {
                    tracing::warn!(stream = %t.stream, "events: JetStream did not answer a pull");
                    break;
                }
            };
            // Messages keep their own subject and name their consumer in the ack
            // subject; the server's statuses come on the request's own inbox.
            let (i, delivery) = match reply.status {
                None | Some(StatusCode::OK) => {
                    let (delivery, consumer) = self.delivery(t, group, reply)?;
                    (
                        pulls.iter().position(|p| p.consumer == consumer),
                        Some(delivery),
                    )
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err(EventsError::Nats(format!(
                        "no JetStream consumer answers for stream {}",
                        t.stream
                    )))
                }
                Some(status) => {
                    if !matches!(
                        status,
                        StatusCode::NOT_FOUND
                            | StatusCode::TIMEOUT
                            | StatusCode::REQUEST_TERMINATED
                    ) {
                        tracing::warn!(%status, description = ?reply.description, "events: unexpected pull status");
                    }
                    let i = reply
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|i| i.parse().ok());
                    (i, None)
                }
            };
            let counted = i.filter(|&i: &usize| i < left.len() && left[i] > 0);
            match (counted, delivery) {
                (Some(i), Some(delivery)) => {
                    out.push(delivery);
                    left[i] -= 1;
                    if left[i] == 0 {
                        open -= 1;
                    }
                }
                // No messages, expired, or `max_ack_pending` reached: the request is over.
                (Some(i), None) => {
                    left[i] = 0;
                    open -= 1;
                }
                // A message for a pull already counted out (not seen to happen): it is
                // ours now, so it is returned rather than left to its visibility.
                (None, Some(delivery)) => out.push(delivery),
                (None, None) => {}
            }
        }
        Ok(out)
    }

    /// The delivery a pulled message makes, and the consumer it came from.
    fn delivery(
        &self,
        t: &Topic,
        group: &str,
        message: async_nats::Message,
    ) -> Result<(Delivery, String), EventsError> {
        let key = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KEY_HEADER))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let message = jetstream::Message {
            message,
            context: self.js.clone(),
        };
        let (seq, delivered, published_at, consumer) = {
            let info = message.info().map_err(|e| {
                EventsError::Nats(format!("a pulled message without ack info: {e}"))
            })?;
            (
                info.stream_sequence,
                info.delivered,
                SystemTime::from(info.published),
                info.consumer.to_owned(),
            )
        };
        let reply = message
            .message
            .reply
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let delivery = Delivery {
            topic: t.name.clone(),
            group: group.to_owned(),
            seq,
            key,
            payload: message.message.payload,
            attempt: u32::try_from(delivered.max(1)).unwrap_or(u32::MAX),
            published_at,
            receipt: Receipt::JetStream { reply },
        };
        Ok((delivery, consumer))
    }

    async fn fetch_any(
        &self,
        t: &Topic,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, EventsError> {
        let pull = |batch, wait| Pull {
            consumer: group.to_owned(),
            batch,
            wait,
        };
        let mut out = self.pull(t, group, &[pull(max, None)]).await?;
        if out.is_empty() && wait > GLANCE {
            // One message at most: a pull for more would keep waiting for the rest.
            out = self.pull(t, group, &[pull(1, Some(wait))]).await?;
            if !out.is_empty() && max > 1 {
                out.extend(self.pull(t, group, &[pull(max - 1, None)]).await?);
            }
        }
        Ok(out)
    }

    async fn fetch_per_key(
        &self,
        t: &Topic,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, EventsError> {
        let deadline = Instant::now() + wait;
        // Subscribed before the first look, so a ring after it is not missed.
        let mut bells = if wait.is_zero() {
            None
        } else {
            Some(
                self.client
                    .subscribe(self.bell(&t.name))
                    .await
                    .map_err(nats)?,
            )
        };
        let from = self.sweep_from.fetch_add(1, AtomicOrdering::Relaxed);
        let all: Vec<u32> = (0..PARTITIONS).map(|p| (from + p) % PARTITIONS).collect();
        let mut parts = all.clone();
        loop {
            let out = self.sweep(t, group, &parts, max).await?;
            let now = Instant::now();
            let Some(bells) = bells.as_mut().filter(|_| out.is_empty() && now < deadline) else {
                return Ok(out);
            };
            let next = deadline.min(now + POLL);
            parts = match tokio::time::timeout_at(next.into(), bells.next()).await {
                Ok(Some(first)) => {
                    let mut rung = vec![first];
                    while let Some(Some(more)) = bells.next().now_or_never() {
                        rung.push(more);
                    }
                    let mut parts: Vec<u32> = rung
                        .iter()
                        .filter_map(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok())
                        .filter(|&p| p < PARTITIONS)
                        .collect();
                    parts.sort_unstable();
                    parts.dedup();
                    parts
                }
                Ok(None) => return Err(EventsError::Nats("the NATS connection closed".into())),
                Err(_) => all.clone(),
            };
        }
    }

    /// One no-wait pull of one message from each of `parts`, never more than `max` in
    /// all (a partition has at most one ready).
    async fn sweep(
        &self,
        t: &Topic,
        group: &str,
        parts: &[u32],
        max: usize,
    ) -> Result<Vec<Delivery>, EventsError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < parts.len() && out.len() < max {
            let n = (max - out.len()).min(parts.len() - i);
            let pulls: Vec<Pull> = parts[i..i + n]
                .iter()
                .map(|&p| Pull {
                    consumer: partition_consumer(group, p),
                    batch: 1,
                    wait: None,
                })
                .collect();
            out.extend(self.pull(t, group, &pulls).await?);
            i += n;
        }
        Ok(out)
    }

    /// Tells waiting ordered fetches that a partition may have a message ready.
    async fn ring(&self, topic: &str, key: &str) {
        let bell = Bytes::from(partition(key).to_string());
        if let Err(e) = self.client.publish(self.bell(topic), bell).await {
            // Only a wake-up: waiting fetches look again within a second anyway.
            tracing::warn!(error = %e, "events: could not ring the topic's bell");
        }
    }

    async fn reply(&self, d: &Delivery, kind: AckKind) -> Result<Arc<Topic>, EventsError> {
        let Receipt::JetStream { reply } = &d.receipt else {
            return Err(EventsError::ForeignDelivery);
        };
        let t = self.topic(&d.topic).await?;
        // A request, not a bare publish: the server answers once it has recorded it, so a
        // fetch right after an ack sees the key's next message.
        self.client
            .request(reply.clone(), kind.into())
            .await
            .map_err(nats)?;
        Ok(t)
    }
}

/// An ordered group's consumer for one partition. No two groups' names collide: a name
/// splits into group and partition at its last `_p`, after which come only digits.
fn partition_consumer(group: &str, p: u32) -> String {
    format!("{group}_p{p}")
}

fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[async_trait]
impl EventBus for JetStreamBus {
    async fn declare(&self, topic: &str, spec: TopicSpec) -> Result<(), EventsError> {
        check_name("topic", topic)?;
        check_spec(&spec)?;
        let config = self.stream_config(topic, &spec);
        let mut create_failed = None;
        // Twice at most: another process may create the stream between our look and our
        // create, which then fails; the second look finds it.
        for _ in 0..2 {
            match self.js.get_stream(&config.name).await {
                Ok(stream) => {
                    let old = &stream.cached_info().config;
                    let declared = self.order_of(topic, old)?;
                    if declared != spec.order {
                        return Err(EventsError::OrderConflict {
                            topic: topic.to_owned(),
                            declared,
                            asked: spec.order,
                        });
                    }
                    if old.retention != config.retention {
                        return Err(EventsError::Invalid(format!(
                            "topic {topic:?} is declared with {:?} retention",
                            old.retention
                        )));
                    }
                    if (old.max_age, old.max_bytes, old.duplicate_window)
                        != (config.max_age, config.max_bytes, config.duplicate_window)
                    {
                        self.js.update_stream(&config).await.map_err(nats)?;
                    }
                    self.remember(topic, config.name.clone(), spec.order);
                    return Ok(());
                }
                Err(e) if stream_missing(&e) => match self.js.create_stream(config.clone()).await {
                    Ok(_) => {
                        self.remember(topic, config.name.clone(), spec.order);
                        return Ok(());
                    }
                    Err(e) => create_failed = Some(nats(e)),
                },
                Err(e) => return Err(nats(e)),
            }
        }
        Err(create_failed.unwrap_or_else(|| nats("the stream could not be created")))
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<Published, EventsError> {
        check_message(&msg)?;
        // async-nats queues a publish while disconnected and sends it on reconnect: a
        // caller told "failed" would see it run later anyway (and twice if it retried).
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(EventsError::Unavailable(
                "the event queue (NATS) cannot be reached: nothing was queued, try again later"
                    .into(),
            ));
        }
        let t = self.topic(topic).await?;
        let subject = match t.order {
            Order::Any => self.subject(topic),
            Order::PerKey => format!("{}.{}", self.subject(topic), partition(&msg.key)),
        };
        let mut headers = HeaderMap::new();
        if !msg.key.is_empty() {
            headers.insert(KEY_HEADER, msg.key.as_str());
        }
        if let Some(id) = &msg.dedupe_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let unknown = |e: jetstream::context::PublishError| {
            match e.kind() {
            jetstream::context::PublishErrorKind::StreamNotFound => {
                lock(&self.topics).remove(topic);
                EventsError::UnknownTopic(topic.to_owned())
            }
            // Sent, but unconfirmed: it may be stored and delivered after all.
            jetstream::context::PublishErrorKind::TimedOut => EventsError::Unavailable(
                "the event queue (NATS) did not confirm in time: the event may still run once it answers"
                    .into(),
            ),
            // A work queue at its limit (discard new): the server's words, no kind.
            _ if e.to_string().contains("maximum bytes exceeded") => {
                EventsError::Full(topic.to_owned())
            }
            _ => nats(e),
        }
        };
        // Publishes from many tasks share the connection and wait for their acks
        // together: the server's answers are not awaited one by one.
        let ack = self
            .js
            .publish_with_headers(subject, headers, msg.payload)
            .await
            .map_err(unknown)?
            .await
            .map_err(unknown)?;
        if t.order == Order::PerKey && !ack.duplicate {
            self.ring(topic, &msg.key).await;
        }
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, EventsError> {
        check_name("group", group)?;
        check_visibility(visibility)?;
        let t = self.topic(topic).await?;
        self.ensure_group(&t, group, visibility).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        match t.order {
            Order::Any => self.fetch_any(&t, group, max, wait).await,
            Order::PerKey => self.fetch_per_key(&t, group, max, wait).await,
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), EventsError> {
        let t = self.reply(d, AckKind::Ack).await?;
        if t.order == Order::PerKey {
            // The partition's next message is free now.
            self.ring(&d.topic, &d.key).await;
        }
        Ok(())
    }

    async fn nack(&self, d: &Delivery, delay: Duration) -> Result<(), EventsError> {
        let kind = AckKind::Nak((!delay.is_zero()).then_some(delay));
        let t = self.reply(d, kind).await?;
        if t.order == Order::PerKey && delay.is_zero() {
            self.ring(&d.topic, &d.key).await;
        }
        Ok(())
    }

    async fn extend(&self, d: &Delivery, visibility: Duration) -> Result<(), EventsError> {
        check_visibility(visibility)?;
        self.reply(d, AckKind::Progress).await.map(drop)
    }

    async fn claim(&self, key: &str) -> Result<bool, EventsError> {
        check_claim(key)?;
        let store = self
            .claims
            .get_or_try_init(|| async {
                // The bucket's stream made here, as async-nats's `create_key_value` would
                // (it first asks for account details nats-server 2.9 answers differently).
                // Creating a stream that exists with this config is a no-op, so every
                // process may race to do it.
                let bucket = format!("{}_claims", self.prefix);
                self.js
                    .get_or_create_stream(stream::Config {
                        name: format!("KV_{bucket}"),
                        subjects: vec![format!("$KV.{bucket}.>")],
                        max_messages_per_subject: 1,
                        max_age: CLAIM_TTL,
                        storage: stream::StorageType::File,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: stream::DiscardPolicy::New,
                        num_replicas: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)?;
                self.js.get_key_value(bucket).await.map_err(nats)
            })
            .await?;
        let me = Bytes::from(self.claimant.clone());
        match store.create(key, me.clone()).await {
            Ok(_) => Ok(true),
            // Ours already (a retry), or another process's.
            Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                Ok(store.get(key).await.map_err(nats)? == Some(me))
            }
            Err(e) => Err(nats(e)),
        }
    }

    async fn broadcast(&self, payload: Bytes) -> Result<(), EventsError> {
        // Sent with this process's name, so that its own listener skips it.
        let mut message = Vec::with_capacity(self.claimant.len() + 1 + payload.len());
        message.extend_from_slice(self.claimant.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(&payload);
        self.client
            .publish(format!("{}.broadcast", self.prefix), message.into())
            .await
            .map_err(nats)
    }

    async fn listen(
        &self,
    ) -> Result<futures_util::stream::BoxStream<'static, yun_events::Heard>, EventsError> {
        use futures_util::StreamExt;
        let subscription = self
            .client
            .subscribe(format!("{}.broadcast", self.prefix))
            .await
            .map_err(nats)?;
        // The server has the subscription once it answers a ping after it: what is
        // broadcast from now on is heard.
        self.client.flush().await.map_err(nats)?;
        let me = format!("{}\n", self.claimant).into_bytes();
        let heard = subscription.filter_map(move |m| {
            let payload = m.payload;
            let theirs = (!payload.starts_with(&me)).then(|| {
                let start = payload
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                yun_events::Heard::Broadcast(payload.slice(start..))
            });
            std::future::ready(theirs)
        });
        let gaps = futures_util::stream::unfold(self.reconnects.subscribe(), |mut rx| async move {
            match rx.recv().await {
                // Lagged: reconnects were missed, which is a gap too.
                Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    Some((yun_events::Heard::Gap, rx))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Box::pin(futures_util::stream::select(heard, gaps)))
    }

    async fn pending(&self, topic: &str, group: &str) -> Result<u64, EventsError> {
        check_name("group", group)?;
        let t = self.topic(topic).await?;
        let stream = self.js.get_stream_no_info(&t.stream).await.map_err(nats)?;
        let consumers = self.consumers(&t, group);
        let infos = futures_util::future::join_all(
            consumers.iter().map(|(name, _)| stream.consumer_info(name)),
        )
        .await;
        let mut total = 0;
        let mut missing = Vec::new();
        for ((_, subject), info) in consumers.iter().zip(infos) {
            match info {
                Ok(info) => total += info.num_pending + info.num_ack_pending as u64,
                Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                    missing.push(subject.as_str());
                }
                Err(e) => return Err(nats(e)),
            }
        }
        if !missing.is_empty() {
            // A group not made yet has every retained message of its subjects pending.
            let filter = &self.subjects(topic, t.order)[0];
            let mut counts = stream.info_with_subjects(filter).await.map_err(nats)?;
            while let Some(count) = counts.next().await {
                let (subject, n) = count.map_err(nats)?;
                if missing.contains(&subject.as_str()) {
                    total += n as u64;
                }
            }
        }
        Ok(total)
    }
}
