//! The event seam: Yun's durable, ordered record of what happened and its work queue
//! (async invocations, triggers, the broadcasts that keep nodes' caches current, later
//! the realtime watch).
//! Retry policy, dead letters and triggers live above [`EventBus`], once; a backend only
//! stores and delivers. Two backends pass one conformance suite
//! (`yun-conformance/tests/event_bus.rs`): `yun_store_sqlite::SqliteBus` for one process
//! (`yun dev`, its own file) and `yun_store_nats::JetStreamBus` for a cluster. No
//! `rusqlite` or `async-nats` type crosses the seam.
//!
//! The contract:
//! - **At least once.** A message is delivered to each consumer group until the group
//!   acks it; a delivery not acked within its visibility is delivered again with
//!   `attempt + 1`, also after a crash or restart. Handlers must be idempotent.
//! - **Groups.** Every group sees every retained message, starting at the topic's first
//!   retained one when the group is first used; the fetchers of one group share the work.
//! - **Per-key order** on [`Order::PerKey`] topics: a group gets the messages of one key
//!   in publish order, one at a time; the next only after the previous is acked (a
//!   [`EventBus::nack`] keeps it the head: it is delivered again first). On JetStream
//!   keys are hashed into [`PARTITIONS`] partitions and the unit of that rule is the
//!   partition: at most [`PARTITIONS`] messages of a group are in flight at once, and an
//!   unacked head also holds back the other keys of its partition. On SQLite the unit
//!   is the key.
//! - **Dedupe.** A message whose `dedupe_id` was published on the topic within
//!   [`DEDUPE_WINDOW`] (or `max_age`, if shorter) is not appended again; `publish`
//!   succeeds and says `duplicate`, with the first one's sequence. SQLite dedupes for as
//!   long as the first message is retained, which is at least that long unless
//!   `max_bytes` dropped it.
//! - **Retention**: by default by limits only: a message is dropped when older than
//!   `max_age` (default 7 days) or when the topic passes `max_bytes` (default 1 GiB;
//!   oldest first), whether or not groups have acked it, never because they have: a
//!   group created later still sees the retained history, on both backends alike. A
//!   [`Retention::WorkQueue`] topic is for one group: a message goes when acked, and a
//!   full topic refuses publishes ([`EventsError::Full`]) instead of dropping.
//! - **Claims** ([`EventBus::claim`]): the first claimant of a key among all processes on
//!   the bus gets it, for [`CLAIM_TTL`].
//! - **Sequences** increase in publish order within a topic; they may have gaps.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use yun_types::YunError;

/// How long a `dedupe_id` is remembered at least (JetStream's `duplicate_window`).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// How long a [`EventBus::claim`] holds (JetStream: its key-value bucket's `max_age`).
pub const CLAIM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Partitions of an [`Order::PerKey`] topic on JetStream. Part of the stored layout: a
/// key's partition must not change while its messages are retained.
pub const PARTITIONS: u32 = 16;

/// Longest topic or group name (they name JetStream streams and consumers).
const MAX_NAME: usize = 64;
/// Longest message key or dedupe id (carried in NATS headers on JetStream).
const MAX_KEY: usize = 256;

/// The durable event stream and work queue. Every method is safe to call from many tasks
/// and processes at once; none blocks a runtime thread for long.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Declares a topic, idempotently; a second declaration updates `max_age` and
    /// `max_bytes`, and fails if it asks for another [`Order`] than the first.
    async fn declare(&self, topic: &str, spec: TopicSpec) -> Result<(), EventsError>;

    /// Appends a message to a declared topic and returns its sequence, once it is
    /// durable. A repeated `dedupe_id` (see the crate doc) appends nothing and answers
    /// the first message's sequence with `duplicate: true`.
    async fn publish(&self, topic: &str, msg: Message) -> Result<Published, EventsError>;

    /// Up to `max` messages for `group` (created on first use), each invisible to the
    /// group's other fetchers for `visibility`, after which one not acked is delivered
    /// again with `attempt + 1`. Messages due again come first. When none is ready, waits
    /// up to `wait` for one (long poll) and returns empty at the end.
    ///
    /// A group should use one `visibility`: on JetStream it is the group's `ack_wait`,
    /// so a fetch asking for another updates the group, and the new value applies to the
    /// group's outstanding deliveries too. SQLite keeps it per delivery.
    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, EventsError>;

    /// Done: the message is never delivered to this group again. An ack that comes after
    /// the visibility ran out (the message may be with another fetcher) still counts,
    /// except on a [`Retention::WorkQueue`] topic on SQLite, where only the current
    /// delivery's ack takes the message away.
    async fn ack(&self, delivery: &Delivery) -> Result<(), EventsError>;

    /// Not done: deliver the message again, with `attempt + 1`, after `delay` (retries
    /// with backoff are built on this). It stays its key's head meanwhile.
    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), EventsError>;

    /// How many retained messages of the topic the group has not acked (delivered or
    /// not): for dead-letter depth, metrics and tests. Does not create the group.
    async fn pending(&self, topic: &str, group: &str) -> Result<u64, EventsError>;

    /// Still working: keeps the delivery from others for `visibility` again, from now
    /// (JetStream: for the group's `ack_wait`). Long work extends now and then, so a
    /// short visibility redelivers soon after a crash without cutting long work short.
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), EventsError>;

    /// Claims `key` (1 to 256 of `A-Z a-z 0-9 - _ = .`): true for the first claimant
    /// among every process on this bus (and for it again: a retry after a failure),
    /// false for the others for [`CLAIM_TTL`] after it. A timer's tick is fired by whoever
    /// claims it, so by one process only, however late the others catch up.
    async fn claim(&self, key: &str) -> Result<bool, EventsError>;

    /// Tells every other process on this bus `payload`, at most once and not kept: a
    /// process that is away misses it, and [`EventBus::listen`] tells it so.
    async fn broadcast(&self, payload: Bytes) -> Result<(), EventsError>;

    /// The other processes' broadcasts, from now on; [`Heard::Gap`] when some may have
    /// been missed (the connection was lost and is back). One process alone (SQLite)
    /// never hears anything.
    async fn listen(&self) -> Result<futures_util::stream::BoxStream<'static, Heard>, EventsError>;
}

/// What [`EventBus::listen`] hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Broadcast(Bytes),
    /// Broadcasts may have been missed: whatever they keep up to date must start over.
    Gap,
}

/// Whether a group gets a key's messages one at a time, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Any order, any concurrency.
    Any,
    /// Per key: in publish order, the next only after the previous is acked.
    PerKey,
}

/// What keeps a topic's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Age and size only: every group sees the retained history; past `max_bytes` the
    /// oldest go, acked or not.
    Limits,
    /// A work queue for one group: a message goes when acked; past `max_bytes` a publish
    /// is refused ([`EventsError::Full`]) rather than a waiting message dropped. A
    /// `dedupe_id` is remembered for [`DEDUPE_WINDOW`] after its message went.
    WorkQueue,
}

/// A topic's delivery order and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub order: Order,
    pub retention: Retention,
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// Past this many bytes (payloads, keys and ids; JetStream counts its own framing
    /// too) the oldest messages are dropped.
    pub max_bytes: u64,
}

impl TopicSpec {
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

    /// Default retention (limits), the given order.
    pub fn new(order: Order) -> Self {
        Self {
            order,
            retention: Retention::Limits,
            max_age: Self::DEFAULT_MAX_AGE,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Orders messages on [`Order::PerKey`] topics; may be empty elsewhere. At most 256
    /// bytes, no control characters.
    pub key: String,
    /// Makes publishing idempotent (see [`EventBus::publish`]). Same rules as `key`.
    pub dedupe_id: Option<String>,
    pub payload: Bytes,
}

impl Message {
    pub fn new(key: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            dedupe_id: None,
            payload: payload.into(),
        }
    }

    pub fn with_dedupe_id(mut self, id: impl Into<String>) -> Self {
        self.dedupe_id = Some(id.into());
        self
    }
}

/// What [`EventBus::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's sequence in its topic (the first one's, for a duplicate).
    pub seq: u64,
    /// The `dedupe_id` was seen within the window: nothing was appended.
    pub duplicate: bool,
}

/// A message handed to one fetcher of a group, until acked, nacked or its visibility
/// runs out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub group: String,
    pub seq: u64,
    pub key: String,
    pub payload: Bytes,
    /// 1 on the first delivery to this group, then one more each time.
    pub attempt: u32,
    pub published_at: SystemTime,
    /// What the backend needs to ack it (set and read by backends only).
    pub receipt: Receipt,
}

#[derive(Debug, Clone)]
pub enum Receipt {
    /// SQLite finds a delivery by (topic, group, seq, attempt).
    Sqlite,
    /// JetStream's ack subject for this delivery.
    JetStream { reply: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A topic, group, key or id breaks the naming rules (the message says which).
    #[error("{0}")]
    Invalid(String),
    #[error("topic {0:?} is not declared")]
    UnknownTopic(String),
    #[error("topic {topic:?} is declared with order {declared:?}, not {asked:?}")]
    OrderConflict {
        topic: String,
        declared: Order,
        asked: Order,
    },
    /// A work queue at its `max_bytes`: nothing more until messages are acked.
    #[error("topic {0:?} is full: its messages wait for their consumers")]
    Full(String),
    /// A delivery from another kind of bus was handed to this one.
    #[error("this delivery did not come from this event bus")]
    ForeignDelivery,
    /// The SQLite store failed (already logged, as an internal error, where it happened).
    #[error(transparent)]
    Store(#[from] YunError),
    #[error("nats: {0}")]
    Nats(String),
    /// The bus's server cannot be reached, or did not confirm in time; the message says
    /// whether the message may still be delivered.
    #[error("{0}")]
    Unavailable(String),
}

impl From<EventsError> for YunError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Invalid(message) => YunError::invalid_param(message),
            EventsError::Store(e) => e,
            EventsError::Unavailable(message) => {
                YunError::new(yun_types::ErrorCode::Unavailable, message)
            }
            e @ EventsError::Full(_) => YunError::new(
                yun_types::ErrorCode::ConcurrencyLimit,
                format!("events: {e}"),
            ),
            e @ (EventsError::UnknownTopic(_)
            | EventsError::OrderConflict { .. }
            | EventsError::ForeignDelivery
            | EventsError::Nats(_)) => YunError::internal(format!("events: {e}")),
        }
    }
}

// The checks every backend makes before it stores anything, so both refuse the same input.

/// Topic and group names: 1 to 64 of `A-Z a-z 0-9 _ -`. They become JetStream stream
/// and consumer names as they are, so no two names can map to one.
pub fn check_name(what: &str, name: &str) -> Result<(), EventsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(EventsError::Invalid(format!(
            "{what} {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ -"
        )))
    }
}

/// Keys and dedupe ids travel in NATS headers: no control characters (CR, LF), bounded.
pub fn check_key(what: &str, key: &str) -> Result<(), EventsError> {
    if key.len() <= MAX_KEY && !key.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(EventsError::Invalid(format!(
            "{what} {key:?}: at most {MAX_KEY} bytes, no control characters"
        )))
    }
}

/// A `max_age` under a second is refused: zero means "forever" to JetStream, and
/// anything that short is a unit mistake. A `max_bytes` of zero would keep nothing.
pub fn check_spec(spec: &TopicSpec) -> Result<(), EventsError> {
    if spec.max_age < Duration::from_secs(1) || spec.max_bytes == 0 {
        return Err(EventsError::Invalid(format!(
            "topic spec {spec:?}: max_age must be at least 1s and max_bytes positive"
        )));
    }
    Ok(())
}

/// A zero visibility would hand every message to every fetcher.
pub fn check_visibility(visibility: Duration) -> Result<(), EventsError> {
    if visibility < Duration::from_millis(1) {
        return Err(EventsError::Invalid(
            "visibility must be at least 1ms".into(),
        ));
    }
    Ok(())
}

/// Claims are JetStream key-value keys: 1 to 256 of `A-Z a-z 0-9 - _ = .`.
pub fn check_claim(key: &str) -> Result<(), EventsError> {
    let ok = (1..=MAX_KEY).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(EventsError::Invalid(format!(
            "claim {key:?}: use 1 to {MAX_KEY} of A-Z a-z 0-9 - _ = ."
        )))
    }
}

pub fn check_message(msg: &Message) -> Result<(), EventsError> {
    check_key("key", &msg.key)?;
    if let Some(id) = &msg.dedupe_id {
        check_key("dedupe id", id)?;
        if id.is_empty() {
            return Err(EventsError::Invalid("dedupe id: empty".into()));
        }
    }
    Ok(())
}

/// A key's partition on JetStream: FNV-1a, stable across builds and processes (std's
/// hasher is not), so every node puts a key in the same partition.
pub fn partition(key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("topic", "fn-invoke_dev1").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            assert!(check_name("topic", bad).is_err(), "{bad:?}");
        }
        assert!(check_key("key", "").is_ok());
        assert!(check_key("key", "user/42 é").is_ok());
        assert!(check_key("key", "a\r\nb").is_err());
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned: a changed hash would move retained keys to other partitions.
        assert_eq!(partition(""), 0x811c_9dc5 % PARTITIONS);
        assert_eq!(partition("a"), 0xe40c_292c % PARTITIONS);
        // The conformance suite's two ordered keys must not share a partition.
        assert_ne!(partition("A"), partition("B"));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| partition(&format!("user-{i}"))).collect();
        assert_eq!(used.len(), PARTITIONS as usize);
    }
}
