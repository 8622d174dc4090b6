//! The embedded event bus: one SQLite file of its own (`data/events.db`), written through
//! this crate's group-commit writer, so concurrent publishes share commits.
//!
//! Per group, a cursor (every message below it has been delivered at least once) and a
//! row per delivered message not yet past the cursor or not yet acked (`deliveries`:
//! attempt, `visible_at`, acked). Messages from the cursor on without a row were never
//! delivered. On an ordered topic a message whose key has an unacked row is skipped, and
//! the cursor stops at it, so deliveries past the cursor (of other keys) keep their rows
//! until the cursor passes them, acked or not.
//!
//! A waiting fetch wakes on its topic's publishes, acks and nacks in this process, at
//! the next `visible_at` of its group, and at least every second (for other processes).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;
use yun_types::YunError;

use yun_events::{
    check_claim, check_message, check_name, check_spec, check_visibility, Delivery, EventBus,
    EventsError, Message, Order, Published, Receipt, Retention, TopicSpec, CLAIM_TTL,
    DEDUPE_WINDOW,
};

use crate::{db_err, Sqlite};

/// Append-only: never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE topics (
    topic TEXT PRIMARY KEY,
    ordered INTEGER NOT NULL,
    max_age_ms INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL,
    -- Sum of `size` over the topic's messages.
    bytes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- One sequence for all topics (AUTOINCREMENT: never reused, cursors point at them).
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    dedupe_id TEXT,
    payload BLOB NOT NULL,
    -- Milliseconds since the Unix epoch.
    published_at INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX messages_topic ON messages (topic, seq);
CREATE UNIQUE INDEX messages_dedupe ON messages (topic, dedupe_id) WHERE dedupe_id IS NOT NULL;
CREATE TABLE groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE deliveries (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, grp, seq)
) WITHOUT ROWID;
CREATE INDEX deliveries_due ON deliveries (topic, grp, visible_at) WHERE acked = 0;
"#,
    r#"
-- Claims (`EventBus::claim`): the first claimant of a key holds it until `until_ms`.
CREATE TABLE claims (key TEXT PRIMARY KEY, until_ms INTEGER NOT NULL) WITHOUT ROWID;
-- Work queues (`Retention::WorkQueue`): a message goes when acked; its dedupe id is
-- remembered here for the dedupe window.
ALTER TABLE topics ADD COLUMN work_queue INTEGER NOT NULL DEFAULT 0;
CREATE TABLE gone_dedupes (
    topic TEXT NOT NULL,
    dedupe_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    gone_at INTEGER NOT NULL,
    PRIMARY KEY (topic, dedupe_id)
) WITHOUT ROWID;
"#,
    r#"
-- Who holds a claim: its holder may claim it again (a retry after a failure).
ALTER TABLE claims ADD COLUMN owner TEXT NOT NULL DEFAULT '';
"#,
];

/// How far a fetch looks past the cursor for a message whose key is free: a long run of
/// one blocked key is skipped up to here, and keys behind it wait for the cursor.
const SCAN_LIMIT: i64 = 4096;

/// A waiting fetch looks again at least this often (for writes by other processes).
const POLL: Duration = Duration::from_secs(1);

/// How often messages past `max_age` are deleted (fetches skip them before that).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct SqliteBus {
    inner: Arc<Inner>,
    pruner: tokio::task::JoinHandle<()>,
    /// This bus's name as a claimant.
    claimant: String,
}

struct Inner {
    db: Sqlite,
    /// Declared topics seen by this process, with the waiters of each.
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

struct Topic {
    spec: Mutex<TopicSpec>,
    /// Wakes this process's waiting fetches of the topic.
    changed: Notify,
}

impl Topic {
    fn spec(&self) -> TopicSpec {
        *self
            .spec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for SqliteBus {
    fn drop(&mut self) {
        self.pruner.abort();
    }
}

impl SqliteBus {
    /// Opens (or creates) the event store at `path` and starts its pruning task. Must be
    /// called inside a Tokio runtime.
    pub fn open(path: &Path) -> Result<Self, EventsError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| YunError::internal(format!("events: no Tokio runtime: {e}")))?;
        let inner = Arc::new(Inner {
            db: Sqlite::open(path, MIGRATIONS)?,
            topics: Mutex::new(HashMap::new()),
        });
        let pruner = runtime.spawn(prune_every(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            pruner,
            claimant: yun_types::new_id("c"),
        })
    }
}

impl SqliteBus {
    /// Makes the delivery `d` visible again `after` from now (a nack, or an extension).
    async fn visible_in(&self, d: &Delivery, after: Duration) -> Result<(), EventsError> {
        let Receipt::Sqlite = d.receipt else {
            return Err(EventsError::ForeignDelivery);
        };
        let (topic, group, seq, attempt) =
            (d.topic.clone(), d.group.clone(), d.seq as i64, d.attempt);
        let visible_at = now_ms().saturating_add(ms(after));
        self.inner
            .db
            .write_now(move |c| {
                // Only the current delivery: a stale nack must not hide a newer one.
                c.prepare_cached(
                    "UPDATE deliveries SET visible_at = ?4
                     WHERE topic = ?1 AND grp = ?2 AND seq = ?3 AND attempt = ?5 AND acked = 0",
                )
                .and_then(|mut s| s.execute(params![topic, group, seq, visible_at, attempt]))
                .map_err(db_err)
            })
            .await?;
        Ok(())
    }
}

/// Deletes expired messages now and then; ends with the bus.
async fn prune_every(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.db.write(|c| prune_expired(c, now_ms())).await {
            tracing::warn!(error = %e, "events: pruning expired messages failed");
        }
    }
}

impl Inner {
    fn cached(&self, topic: &str) -> Option<Arc<Topic>> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    fn remember(&self, topic: &str, spec: TopicSpec) -> Arc<Topic> {
        let mut topics = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = topics.entry(topic.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                spec: Mutex::new(spec),
                changed: Notify::new(),
            })
        });
        *entry
            .spec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = spec;
        entry.clone()
    }

    /// The topic as declared, from this process's memory or the file (declared by
    /// another process, or before a restart).
    async fn topic(&self, topic: &str) -> Result<Arc<Topic>, EventsError> {
        check_name("topic", topic)?;
        if let Some(t) = self.cached(topic) {
            return Ok(t);
        }
        let name = topic.to_owned();
        let spec = self
            .db
            .read(move |c| read_spec(c, &name))
            .await?
            .ok_or_else(|| EventsError::UnknownTopic(topic.to_owned()))?;
        Ok(self.remember(topic, spec))
    }
}

fn read_spec(c: &Connection, topic: &str) -> Result<Option<TopicSpec>, YunError> {
    c.prepare_cached(
        "SELECT ordered, max_age_ms, max_bytes, work_queue FROM topics WHERE topic = ?1",
    )
    .and_then(|mut s| {
        s.query_row([topic], |r| {
            Ok(TopicSpec {
                order: if r.get::<_, bool>(0)? {
                    Order::PerKey
                } else {
                    Order::Any
                },
                retention: if r.get::<_, bool>(3)? {
                    Retention::WorkQueue
                } else {
                    Retention::Limits
                },
                max_age: Duration::from_millis(non_negative(r.get(1)?)),
                max_bytes: non_negative(r.get(2)?),
            })
        })
        .optional()
    })
    .map_err(db_err)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn non_negative(n: i64) -> u64 {
    n.max(0) as u64
}

#[async_trait]
impl EventBus for SqliteBus {
    async fn declare(&self, topic: &str, spec: TopicSpec) -> Result<(), EventsError> {
        check_name("topic", topic)?;
        check_spec(&spec)?;
        let name = topic.to_owned();
        let declared = self
            .inner
            .db
            .write(move |c| {
                if let Some(old) = read_spec(c, &name)? {
                    if old.order != spec.order {
                        return Ok(Some(old.order));
                    }
                    if old.retention != spec.retention {
                        return Err(YunError::invalid_param(format!(
                            "topic {name:?} is declared with {:?} retention",
                            old.retention
                        )));
                    }
                }
                c.prepare_cached(
                    "INSERT INTO topics (topic, ordered, max_age_ms, max_bytes, work_queue) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (topic) DO UPDATE SET max_age_ms = excluded.max_age_ms, max_bytes = excluded.max_bytes",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        name,
                        spec.order == Order::PerKey,
                        ms(spec.max_age),
                        i64::try_from(spec.max_bytes).unwrap_or(i64::MAX),
                        spec.retention == Retention::WorkQueue
                    ])
                })
                .map_err(db_err)?;
                Ok(None)
            })
            .await?;
        if let Some(declared) = declared {
            return Err(EventsError::OrderConflict {
                topic: topic.to_owned(),
                declared,
                asked: spec.order,
            });
        }
        self.inner.remember(topic, spec);
        Ok(())
    }

    async fn publish(&self, topic: &str, msg: Message) -> Result<Published, EventsError> {
        check_message(&msg)?;
        let t = self.inner.topic(topic).await?;
        let spec = t.spec();
        let name = topic.to_owned();
        let published = self
            .inner
            .db
            .write(move |c| append(c, &name, &spec, &msg, now_ms()))
            .await?
            .ok_or_else(|| EventsError::Full(topic.to_owned()))?;
        if !published.duplicate {
            t.changed.notify_waiters();
        }
        Ok(published)
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
        let t = self.inner.topic(topic).await?;
        let deadline = Instant::now() + wait;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        loop {
            // Registered before looking, so a publish between the look and the sleep
            // still wakes this fetch.
            let changed = t.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let job = FetchJob {
                topic: topic.to_owned(),
                group: group.to_owned(),
                spec: t.spec(),
                max,
                visibility: ms(visibility),
                now: now_ms(),
            };
            let now = job.now;
            let (found, next_visible) = self.inner.db.write(move |c| job.run(c)).await?;
            if !found.is_empty() || max == 0 {
                return Ok(found);
            }
            let looked = Instant::now();
            if looked >= deadline {
                return Ok(found);
            }
            let mut until = deadline.min(looked + POLL);
            if let Some(at) = next_visible {
                until = until.min(looked + Duration::from_millis(non_negative(at - now)));
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), EventsError> {
        let Receipt::Sqlite = d.receipt else {
            return Err(EventsError::ForeignDelivery);
        };
        let t = self.inner.topic(&d.topic).await?;
        let (topic, group, seq, attempt) =
            (d.topic.clone(), d.group.clone(), d.seq as i64, d.attempt);
        let work_queue = t.spec().retention == Retention::WorkQueue;
        self.inner
            .db
            .write_now(move |c| {
                if work_queue {
                    // Only the current delivery's ack: a stale one must not take the
                    // message from the fetcher that has it now.
                    let current = c
                        .prepare_cached(
                            "SELECT 1 FROM deliveries WHERE topic = ?1 AND grp = ?2 AND seq = ?3 AND attempt = ?4",
                        )
                        .and_then(|mut s| s.exists(params![topic, group, seq, attempt]))
                        .map_err(db_err)?;
                    return if current {
                        forget_message(c, &topic, seq, now_ms())
                    } else {
                        Ok(())
                    };
                }
                // Below the cursor the row goes; at or past it, it stays (marked) so the
                // cursor knows the message was delivered when it gets there.
                let deleted = c
                    .prepare_cached(
                        "DELETE FROM deliveries WHERE topic = ?1 AND grp = ?2 AND seq = ?3
                         AND seq < (SELECT cursor FROM groups WHERE topic = ?1 AND grp = ?2)",
                    )
                    .and_then(|mut s| s.execute(params![topic, group, seq]))
                    .map_err(db_err)?;
                if deleted == 0 {
                    c.prepare_cached(
                        "UPDATE deliveries SET acked = 1 WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                    )
                    .and_then(|mut s| s.execute(params![topic, group, seq]))
                    .map_err(db_err)?;
                }
                Ok(())
            })
            .await?;
        // The key's next message (ordered topics) is free now.
        t.changed.notify_waiters();
        Ok(())
    }

    async fn nack(&self, d: &Delivery, delay: Duration) -> Result<(), EventsError> {
        let t = self.inner.topic(&d.topic).await?;
        self.visible_in(d, delay).await?;
        // Waiters recompute when the group's next delivery is due.
        t.changed.notify_waiters();
        Ok(())
    }

    async fn extend(&self, d: &Delivery, visibility: Duration) -> Result<(), EventsError> {
        check_visibility(visibility)?;
        self.visible_in(d, visibility).await
    }

    async fn claim(&self, key: &str) -> Result<bool, EventsError> {
        check_claim(key)?;
        let (key, now, me) = (key.to_owned(), now_ms(), self.claimant.clone());
        let until = now.saturating_add(CLAIM_TTL.as_millis() as i64);
        Ok(self
            .inner
            .db
            .write(move |c| {
                c.prepare_cached("DELETE FROM claims WHERE key = ?1 AND until_ms < ?2")
                    .and_then(|mut s| s.execute(params![key, now]))
                    .and_then(|_| {
                        c.prepare_cached(
                            "INSERT OR IGNORE INTO claims (key, until_ms, owner) VALUES (?1, ?2, ?3)",
                        )
                    })
                    .and_then(|mut s| s.execute(params![key, until, me]))
                    .and_then(|_| c.prepare_cached("SELECT owner FROM claims WHERE key = ?1"))
                    .and_then(|mut s| s.query_row([&key], |r| r.get::<_, String>(0)))
                    .map(|owner| owner == me)
                    .map_err(db_err)
            })
            .await?)
    }

    /// One process per data folder: nobody to tell.
    async fn broadcast(&self, _payload: Bytes) -> Result<(), EventsError> {
        Ok(())
    }

    async fn listen(
        &self,
    ) -> Result<futures_util::stream::BoxStream<'static, yun_events::Heard>, EventsError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }

    async fn pending(&self, topic: &str, group: &str) -> Result<u64, EventsError> {
        check_name("group", group)?;
        let t = self.inner.topic(topic).await?;
        let oldest = now_ms().saturating_sub(ms(t.spec().max_age));
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let n = self
            .inner
            .db
            .read(move |c| {
                let cursor: i64 = c
                    .prepare_cached("SELECT cursor FROM groups WHERE topic = ?1 AND grp = ?2")
                    .and_then(|mut s| s.query_row(params![topic, group], |r| r.get(0)).optional())
                    .map_err(db_err)?
                    .unwrap_or(0);
                // Not acked at or past the cursor, plus unacked rows below it.
                c.prepare_cached(
                    "SELECT
                       (SELECT count(*) FROM messages m
                         WHERE m.topic = ?1 AND m.seq >= ?3 AND m.published_at >= ?4
                           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.topic = ?1
                               AND d.grp = ?2 AND d.seq = m.seq AND d.acked = 1))
                     + (SELECT count(*) FROM deliveries d JOIN messages m ON m.seq = d.seq
                         WHERE d.topic = ?1 AND d.grp = ?2 AND d.acked = 0 AND d.seq < ?3
                           AND m.published_at >= ?4)",
                )
                .and_then(|mut s| {
                    s.query_row(params![topic, group, cursor, oldest], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .map_err(db_err)
            })
            .await?;
        Ok(non_negative(n))
    }
}

/// Appends one message (or finds its duplicate) and enforces `max_bytes`; `None` when a
/// work queue is full (nothing written).
fn append(
    c: &mut Connection,
    topic: &str,
    spec: &TopicSpec,
    msg: &Message,
    now: i64,
) -> Result<Option<Published>, YunError> {
    let oldest = now.saturating_sub(ms(spec.max_age));
    if let Some(id) = &msg.dedupe_id {
        let first: Option<(i64, i64)> = c
            .prepare_cached(
                "SELECT seq, published_at FROM messages WHERE topic = ?1 AND dedupe_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![topic, id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db_err)?;
        match first {
            Some((seq, at)) if at >= oldest => {
                return Ok(Some(Published {
                    seq: non_negative(seq),
                    duplicate: true,
                }));
            }
            // Expired but not pruned yet: it no longer counts, and its id is reused.
            Some((seq, _)) => delete_message(c, topic, seq)?,
            None => {}
        }
        // A work queue's acked message is gone; its id is remembered a while.
        let gone: Option<i64> = c
            .prepare_cached(
                "SELECT seq FROM gone_dedupes WHERE topic = ?1 AND dedupe_id = ?2 AND gone_at >= ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![topic, id, now.saturating_sub(ms(DEDUPE_WINDOW))], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        if let Some(seq) = gone {
            return Ok(Some(Published {
                seq: non_negative(seq),
                duplicate: true,
            }));
        }
    }
    let size = msg.payload.len() + msg.key.len() + msg.dedupe_id.as_ref().map_or(0, String::len);
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    if spec.retention == Retention::WorkQueue {
        let bytes: i64 = c
            .prepare_cached("SELECT bytes FROM topics WHERE topic = ?1")
            .and_then(|mut s| s.query_row([topic], |r| r.get(0)))
            .map_err(db_err)?;
        if bytes.saturating_add(size) > i64::try_from(spec.max_bytes).unwrap_or(i64::MAX) {
            return Ok(None);
        }
    }
    let seq: i64 = c
        .prepare_cached(
            "INSERT INTO messages (topic, key, dedupe_id, payload, published_at, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING seq",
        )
        .and_then(|mut s| {
            s.query_row(
                params![topic, msg.key, msg.dedupe_id, &msg.payload[..], now, size],
                |r| r.get(0),
            )
        })
        .map_err(db_err)?;
    let bytes: i64 = c
        .prepare_cached("UPDATE topics SET bytes = bytes + ?2 WHERE topic = ?1 RETURNING bytes")
        .and_then(|mut s| s.query_row(params![topic, size], |r| r.get(0)))
        .map_err(db_err)?;
    let max_bytes = i64::try_from(spec.max_bytes).unwrap_or(i64::MAX);
    if bytes > max_bytes {
        drop_oldest(c, topic, bytes - max_bytes)?;
    }
    Ok(Some(Published {
        seq: non_negative(seq),
        duplicate: false,
    }))
}

/// Drops the topic's oldest messages until `excess` bytes are gone (limits retention).
fn drop_oldest(c: &mut Connection, topic: &str, mut excess: i64) -> Result<(), YunError> {
    let oldest: Vec<(i64, i64)> = {
        let mut s = c
            .prepare_cached("SELECT seq, size FROM messages WHERE topic = ?1 ORDER BY seq")
            .map_err(db_err)?;
        let mut rows = s.query([topic]).map_err(db_err)?;
        let mut out = Vec::new();
        while excess > 0 {
            let Some(r) = rows.next().map_err(db_err)? else {
                break;
            };
            let (seq, size): (i64, i64) = (r.get(0).map_err(db_err)?, r.get(1).map_err(db_err)?);
            excess -= size;
            out.push((seq, size));
        }
        out
    };
    for (seq, _) in oldest {
        delete_message(c, topic, seq)?;
    }
    Ok(())
}

/// Deletes one message, its groups' rows for it, and its bytes from the topic's count.
/// Deletes an acked work-queue message, remembering its dedupe id for the window.
fn forget_message(c: &mut Connection, topic: &str, seq: i64, now: i64) -> Result<(), YunError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO gone_dedupes (topic, dedupe_id, seq, gone_at)
         SELECT topic, dedupe_id, seq, ?3 FROM messages
         WHERE topic = ?1 AND seq = ?2 AND dedupe_id IS NOT NULL",
    )
    .and_then(|mut s| s.execute(params![topic, seq, now]))
    .map_err(db_err)?;
    delete_message(c, topic, seq)
}

fn delete_message(c: &mut Connection, topic: &str, seq: i64) -> Result<(), YunError> {
    let size: Option<i64> = c
        .prepare_cached("DELETE FROM messages WHERE seq = ?1 RETURNING size")
        .and_then(|mut s| s.query_row([seq], |r| r.get(0)).optional())
        .map_err(db_err)?;
    c.prepare_cached("DELETE FROM deliveries WHERE topic = ?1 AND seq = ?2")
        .and_then(|mut s| s.execute(params![topic, seq]))
        .map_err(db_err)?;
    c.prepare_cached("UPDATE topics SET bytes = bytes - ?2 WHERE topic = ?1")
        .and_then(|mut s| s.execute(params![topic, size.unwrap_or(0)]))
        .map_err(db_err)?;
    Ok(())
}

/// Deletes every topic's messages past its `max_age`, with their groups' rows.
fn prune_expired(c: &mut Connection, now: i64) -> Result<(), YunError> {
    c.prepare_cached("DELETE FROM claims WHERE until_ms < ?1")
        .and_then(|mut s| s.execute([now]))
        .map_err(db_err)?;
    c.prepare_cached("DELETE FROM gone_dedupes WHERE gone_at < ?1")
        .and_then(|mut s| s.execute([now.saturating_sub(ms(DEDUPE_WINDOW))]))
        .map_err(db_err)?;
    let topics: Vec<(String, i64)> = {
        let mut s = c
            .prepare_cached("SELECT topic, max_age_ms FROM topics")
            .map_err(db_err)?;
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for (topic, max_age) in topics {
        let oldest = now.saturating_sub(max_age);
        let removed: i64 = c
            .prepare_cached(
                "DELETE FROM messages WHERE topic = ?1 AND published_at < ?2 RETURNING size",
            )
            .and_then(|mut s| {
                s.query_map(params![topic, oldest], |r| r.get::<_, i64>(0))?
                    .sum::<Result<i64, _>>()
            })
            .map_err(db_err)?;
        if removed > 0 {
            c.prepare_cached("UPDATE topics SET bytes = bytes - ?2 WHERE topic = ?1")
                .and_then(|mut s| s.execute(params![topic, removed]))
                .map_err(db_err)?;
            c.prepare_cached(
                "DELETE FROM deliveries WHERE topic = ?1
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.seq = deliveries.seq)",
            )
            .and_then(|mut s| s.execute([&topic]))
            .map_err(db_err)?;
        }
    }
    Ok(())
}

/// One look for deliverable messages, inside one write transaction.
struct FetchJob {
    topic: String,
    group: String,
    spec: TopicSpec,
    max: i64,
    /// Milliseconds.
    visibility: i64,
    /// Milliseconds since the epoch.
    now: i64,
}

impl FetchJob {
    /// The deliveries, and when the group's earliest unacked delivery is due again.
    fn run(self, c: &mut Connection) -> Result<(Vec<Delivery>, Option<i64>), YunError> {
        let (topic, group) = (&self.topic, &self.group);
        let ordered = self.spec.order == Order::PerKey;
        let oldest = self.now.saturating_sub(ms(self.spec.max_age));
        let visible_at = self.now.saturating_add(self.visibility);
        c.prepare_cached("INSERT OR IGNORE INTO groups (topic, grp, cursor) VALUES (?1, ?2, 0)")
            .and_then(|mut s| s.execute(params![topic, group]))
            .map_err(db_err)?;
        let cursor: i64 = c
            .prepare_cached("SELECT cursor FROM groups WHERE topic = ?1 AND grp = ?2")
            .and_then(|mut s| s.query_row(params![topic, group], |r| r.get(0)))
            .map_err(db_err)?;
        // Keys with a message in flight or waiting for its retry: on an ordered topic
        // that message is the key's head, and the rest of the key waits for it.
        let mut blocked: HashSet<String> = HashSet::new();
        if ordered {
            let mut s = c
                .prepare_cached(
                    "SELECT key FROM deliveries WHERE topic = ?1 AND grp = ?2 AND acked = 0",
                )
                .map_err(db_err)?;
            let keys = s
                .query_map(params![topic, group], |r| r.get(0))
                .map_err(db_err)?;
            blocked = keys.collect::<Result<_, _>>().map_err(db_err)?;
        }
        let mut out = Vec::new();

        // First the deliveries due again (visibility over, or a nack's delay).
        let due: Vec<(i64, String, u32)> = {
            let mut s = c
                .prepare_cached(
                    "SELECT seq, key, attempt FROM deliveries
                     WHERE topic = ?1 AND grp = ?2 AND acked = 0 AND visible_at <= ?3
                     ORDER BY seq LIMIT ?4",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map(params![topic, group, self.now, self.max], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        for (seq, key, attempt) in due {
            match self.message(c, seq, oldest)? {
                Some((payload, published_at)) => {
                    c.prepare_cached(
                        "UPDATE deliveries SET attempt = ?4, visible_at = ?5
                         WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                    )
                    .and_then(|mut s| {
                        s.execute(params![topic, group, seq, attempt + 1, visible_at])
                    })
                    .map_err(db_err)?;
                    out.push(self.delivery(seq, key, payload, attempt + 1, published_at));
                }
                None => {
                    // Dropped by retention: nothing to deliver, and its key is free.
                    c.prepare_cached(
                        "DELETE FROM deliveries WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                    )
                    .and_then(|mut s| s.execute(params![topic, group, seq]))
                    .map_err(db_err)?;
                    blocked.remove(&key);
                }
            }
        }

        // Then messages never delivered to the group, from the cursor on.
        if (out.len() as i64) < self.max {
            let delivered: HashMap<i64, bool> = {
                let mut s = c
                    .prepare_cached(
                        "SELECT seq, acked FROM deliveries
                         WHERE topic = ?1 AND grp = ?2 AND seq >= ?3",
                    )
                    .map_err(db_err)?;
                let rows = s
                    .query_map(params![topic, group, cursor], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            let candidates: Vec<(i64, String, i64)> = {
                let mut s = c
                    .prepare_cached(
                        "SELECT seq, key, published_at FROM messages
                         WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(db_err)?;
                let rows = s
                    .query_map(params![topic, cursor, SCAN_LIMIT], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            let mut new_cursor = cursor;
            // Whether every message so far has been delivered (or expired): only then
            // may the cursor move past the current one.
            let mut advancing = true;
            for (seq, key, published_at) in candidates {
                if (out.len() as i64) >= self.max {
                    break;
                }
                if let Some(&acked) = delivered.get(&seq) {
                    if advancing {
                        new_cursor = seq + 1;
                        if acked {
                            c.prepare_cached(
                                "DELETE FROM deliveries WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                            )
                            .and_then(|mut s| s.execute(params![topic, group, seq]))
                            .map_err(db_err)?;
                        }
                    }
                    continue;
                }
                if published_at < oldest {
                    if advancing {
                        new_cursor = seq + 1;
                    }
                    continue;
                }
                if ordered && blocked.contains(&key) {
                    advancing = false;
                    continue;
                }
                c.prepare_cached(
                    "INSERT INTO deliveries (topic, grp, seq, key, attempt, visible_at)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                )
                .and_then(|mut s| s.execute(params![topic, group, seq, key, visible_at]))
                .map_err(db_err)?;
                let payload: Vec<u8> = c
                    .prepare_cached("SELECT payload FROM messages WHERE seq = ?1")
                    .and_then(|mut s| s.query_row([seq], |r| r.get(0)))
                    .map_err(db_err)?;
                if ordered {
                    blocked.insert(key.clone());
                }
                if advancing {
                    new_cursor = seq + 1;
                }
                out.push(self.delivery(seq, key, payload.into(), 1, published_at));
            }
            if new_cursor != cursor {
                c.prepare_cached("UPDATE groups SET cursor = ?3 WHERE topic = ?1 AND grp = ?2")
                    .and_then(|mut s| s.execute(params![topic, group, new_cursor]))
                    .map_err(db_err)?;
            }
        }

        let next_visible: Option<i64> = c
            .prepare_cached(
                "SELECT min(visible_at) FROM deliveries WHERE topic = ?1 AND grp = ?2 AND acked = 0",
            )
            .and_then(|mut s| s.query_row(params![topic, group], |r| r.get(0)))
            .map_err(db_err)?;
        Ok((out, next_visible))
    }

    /// A retained message's payload and publish time.
    fn message(
        &self,
        c: &Connection,
        seq: i64,
        oldest: i64,
    ) -> Result<Option<(Bytes, i64)>, YunError> {
        c.prepare_cached(
            "SELECT payload, published_at FROM messages WHERE seq = ?1 AND published_at >= ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![seq, oldest], |r| {
                Ok((Bytes::from(r.get::<_, Vec<u8>>(0)?), r.get(1)?))
            })
            .optional()
        })
        .map_err(db_err)
    }

    fn delivery(
        &self,
        seq: i64,
        key: String,
        payload: Bytes,
        attempt: u32,
        published_at: i64,
    ) -> Delivery {
        Delivery {
            topic: self.topic.clone(),
            group: self.group.clone(),
            seq: non_negative(seq),
            key,
            payload,
            attempt,
            published_at: UNIX_EPOCH + Duration::from_millis(non_negative(published_at)),
            receipt: Receipt::Sqlite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning (which fetches do not wait for: they skip expired messages) deletes the
    /// messages, their groups' rows and their bytes from the topic's count.
    #[tokio::test]
    async fn pruning_removes_expired_messages_with_their_rows_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bus = SqliteBus::open(&dir.path().join("events.db")).unwrap();
        let spec = TopicSpec {
            max_age: Duration::from_secs(1),
            ..TopicSpec::new(Order::PerKey)
        };
        bus.declare("t", spec).await.unwrap();
        bus.publish("t", Message::new("k", vec![0u8; 100]))
            .await
            .unwrap();
        let got = bus
            .fetch("t", "g", 1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        let counts = |c: &mut Connection| {
            c.query_row(
                "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM deliveries),
                        (SELECT bytes FROM topics WHERE topic = 't')",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .map_err(db_err)
        };
        assert_eq!(bus.inner.db.read(counts).await.unwrap(), (1, 1, 101));
        // Not yet expired: kept.
        bus.inner
            .db
            .write(|c| prune_expired(c, now_ms()))
            .await
            .unwrap();
        assert_eq!(bus.inner.db.read(counts).await.unwrap(), (1, 1, 101));
        bus.inner
            .db
            .write(|c| prune_expired(c, now_ms() + 2000))
            .await
            .unwrap();
        assert_eq!(bus.inner.db.read(counts).await.unwrap(), (0, 0, 0));
    }
}
