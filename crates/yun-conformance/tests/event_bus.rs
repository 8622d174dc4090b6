//! One suite for the event seam, run against both backends: `sqlite::*` on a temporary
//! file, `jetstream::*` on the NATS server at `YUN_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`, started with `nats-server -js`). When that server cannot be
//! reached the JetStream tests fail; they never skip. Each test gets its own file or
//! stream prefix, and a test's streams are deleted when it ends, passed or not.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use yun_events::{Delivery, EventBus, EventsError, Message, Order, Retention, TopicSpec};
use yun_store_nats::JetStreamBus;
use yun_store_sqlite::SqliteBus;

const GROUP: &str = "workers";
const NO_WAIT: Duration = Duration::ZERO;
/// Long enough that nothing is redelivered during a test that does not want it.
const LONG: Duration = Duration::from_secs(30);

/// A backend that can be opened again on the same data ("restarted").
enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    JetStream {
        url: String,
        prefix: String,
    },
}

impl Backend {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        Self::Sqlite { _dir: dir, path }
    }

    fn jetstream() -> Self {
        Self::JetStream {
            url: std::env::var("YUN_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            prefix: format!("yt{:08x}", rand::random::<u32>()),
        }
    }

    /// A new bus on this backend's data: the first open, or a restart after a crash.
    async fn open(&self) -> Arc<dyn EventBus> {
        match self {
            Self::Sqlite { path, .. } => Arc::new(SqliteBus::open(path).unwrap()),
            Self::JetStream { url, prefix } => match JetStreamBus::connect(url, prefix).await {
                Ok(bus) => Arc::new(bus),
                Err(e) => panic!(
                    "NATS with JetStream is not reachable at {url} ({e}): start `nats-server -js` \
                     there or point YUN_TEST_NATS_URL at one; these tests do not skip"
                ),
            },
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let Self::JetStream { url, prefix } = self else {
            return;
        };
        // Topics' streams, and the claims' key-value bucket (`KV_{prefix}_claims`).
        let (url, streams, buckets) = (url.clone(), format!("{prefix}_"), format!("KV_{prefix}_"));
        // Drop cannot await, and may run inside the test's runtime: clean up from a
        // thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(client) = async_nats::connect(&url).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                let names: Vec<String> = js
                    .stream_names()
                    .filter_map(|n| async move { n.ok() })
                    .filter(|n| {
                        futures_util::future::ready(
                            n.starts_with(&streams) || n.starts_with(&buckets),
                        )
                    })
                    .collect()
                    .await;
                for name in names {
                    let _ = js.delete_stream(&name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn spec(order: Order) -> TopicSpec {
    TopicSpec::new(order)
}

fn msg(key: &str, payload: &str) -> Message {
    Message::new(key, payload.as_bytes().to_vec())
}

fn text(d: &Delivery) -> &str {
    std::str::from_utf8(&d.payload).unwrap()
}

async fn publish_all(bus: &dyn EventBus, topic: &str, messages: &[(&str, &str)]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for (key, payload) in messages {
        seqs.push(bus.publish(topic, msg(key, payload)).await.unwrap().seq);
    }
    seqs
}

/// Fetches until `n` messages came or `within` ran out.
async fn fetch_n(
    bus: &dyn EventBus,
    topic: &str,
    group: &str,
    n: usize,
    visibility: Duration,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = left.min(Duration::from_millis(500));
        got.extend(
            bus.fetch(topic, group, n - got.len(), visibility, wait)
                .await
                .unwrap(),
        );
    }
    got
}

async fn round_trip(b: Backend) {
    let bus = b.open().await;
    bus.declare("orders", spec(Order::Any)).await.unwrap();
    bus.declare("orders", spec(Order::Any)).await.unwrap();
    let binary: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let first = bus
        .publish("orders", Message::new("k1", binary.clone()))
        .await
        .unwrap();
    let second = bus.publish("orders", msg("", "two")).await.unwrap();
    assert!(!first.duplicate && !second.duplicate);
    assert!(second.seq > first.seq, "{first:?} {second:?}");

    let got = fetch_n(&*bus, "orders", GROUP, 2, LONG, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, Bytes::from(binary));
    assert_eq!(
        (got[0].seq, got[0].key.as_str(), got[0].attempt),
        (first.seq, "k1", 1)
    );
    assert_eq!(
        (got[1].seq, got[1].key.as_str(), got[1].attempt),
        (second.seq, "", 1)
    );
    assert_eq!(
        (got[0].topic.as_str(), got[0].group.as_str()),
        ("orders", GROUP)
    );
    let age = got[0].published_at.elapsed().unwrap_or_default();
    assert!(
        age < Duration::from_secs(10),
        "published_at is now-ish: {age:?}"
    );
    for d in &got {
        bus.ack(d).await.unwrap();
    }
    assert!(bus
        .fetch("orders", GROUP, 10, LONG, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(bus.pending("orders", GROUP).await.unwrap(), 0);
}

async fn misuse_is_refused(b: Backend) {
    let bus = b.open().await;
    let err = bus.publish("nowhere", msg("k", "x")).await.unwrap_err();
    assert!(matches!(err, EventsError::UnknownTopic(_)), "{err}");
    for bad in ["", "a.b", "a b", "a*"] {
        assert!(matches!(
            bus.declare(bad, spec(Order::Any)).await,
            Err(EventsError::Invalid(_))
        ));
    }
    bus.declare("t", spec(Order::Any)).await.unwrap();
    let err = bus.declare("t", spec(Order::PerKey)).await.unwrap_err();
    assert!(matches!(err, EventsError::OrderConflict { .. }), "{err}");
    assert!(matches!(
        bus.publish("t", msg("a\nb", "x")).await,
        Err(EventsError::Invalid(_))
    ));
    assert!(matches!(
        bus.fetch("t", "g.x", 1, LONG, NO_WAIT).await,
        Err(EventsError::Invalid(_))
    ));
    // The error callers see through `?`.
    let yun: yun_types::YunError = EventsError::Invalid("x".into()).into();
    assert_eq!(yun.code, yun_types::ErrorCode::InvalidParam);
}

async fn dedupe(b: Backend) {
    let bus = b.open().await;
    bus.declare("jobs", spec(Order::Any)).await.unwrap();
    let first = bus
        .publish("jobs", msg("k", "once").with_dedupe_id("req-1"))
        .await
        .unwrap();
    let again = bus
        .publish("jobs", msg("k", "twice").with_dedupe_id("req-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        again.seq, first.seq,
        "a duplicate answers the first's sequence"
    );
    bus.publish("jobs", msg("k", "other").with_dedupe_id("req-2"))
        .await
        .unwrap();
    let got = bus
        .fetch("jobs", GROUP, 10, LONG, Duration::from_millis(300))
        .await
        .unwrap();
    let texts: Vec<&str> = got.iter().map(text).collect();
    assert_eq!(texts, ["once", "other"]);
}

async fn redelivery_after_visibility(b: Backend) {
    let bus = b.open().await;
    bus.declare("jobs", spec(Order::Any)).await.unwrap();
    bus.publish("jobs", msg("k", "job")).await.unwrap();
    let vis = Duration::from_secs(1);
    // A look with no wait may come back empty on JetStream: the messages ready are
    // fetched with a wait, as the consumers do.
    let first = fetch_n(&*bus, "jobs", GROUP, 1, vis, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    let fetched = Instant::now();
    assert!(
        bus.fetch("jobs", GROUP, 1, vis, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "invisible while its visibility lasts"
    );
    let again = fetch_n(&*bus, "jobs", GROUP, 1, vis, Duration::from_secs(5)).await;
    assert_eq!(
        again.len(),
        1,
        "delivered again once the visibility ran out"
    );
    assert!(fetched.elapsed() >= Duration::from_millis(900));
    assert_eq!((again[0].seq, again[0].attempt), (first[0].seq, 2));
    bus.ack(&again[0]).await.unwrap();
    assert_eq!(bus.pending("jobs", GROUP).await.unwrap(), 0);
}

async fn nack_with_delay(b: Backend) {
    let bus = b.open().await;
    bus.declare("jobs", spec(Order::Any)).await.unwrap();
    bus.publish("jobs", msg("k", "retry me")).await.unwrap();
    let got = fetch_n(&*bus, "jobs", GROUP, 1, LONG, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let delay = Duration::from_millis(1500);
    bus.nack(&got[0], delay).await.unwrap();
    let nacked = Instant::now();
    assert!(
        bus.fetch("jobs", GROUP, 1, LONG, Duration::from_millis(700))
            .await
            .unwrap()
            .is_empty(),
        "not before the delay"
    );
    let again = fetch_n(&*bus, "jobs", GROUP, 1, LONG, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1, "delivered again after the delay");
    assert!(nacked.elapsed() >= Duration::from_millis(1400));
    assert_eq!((again[0].seq, again[0].attempt), (got[0].seq, 2));
    assert_eq!(text(&again[0]), "retry me");
    // A nack without delay is delivered again at once.
    bus.nack(&again[0], Duration::ZERO).await.unwrap();
    let third = fetch_n(&*bus, "jobs", GROUP, 1, LONG, Duration::from_secs(2)).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempt, 3);
    bus.ack(&third[0]).await.unwrap();
}

/// Keys A and B interleaved on an ordered topic, two concurrent consumers of one group:
/// each key's messages are handled strictly in order and never two of a key at once.
async fn per_key_order_with_two_consumers(b: Backend) {
    let bus = b.open().await;
    bus.declare("ordered", spec(Order::PerKey)).await.unwrap();
    const EACH: usize = 12;
    for i in 0..EACH {
        for key in ["A", "B"] {
            bus.publish("ordered", msg(key, &i.to_string()))
                .await
                .unwrap();
        }
    }
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let overlap = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut consumers = Vec::new();
    for worker in 0..2u64 {
        let (bus, in_flight, handled, overlap) = (
            bus.clone(),
            in_flight.clone(),
            handled.clone(),
            overlap.clone(),
        );
        consumers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let done: usize = handled.lock().unwrap().values().map(Vec::len).sum();
                if done == 2 * EACH {
                    break;
                }
                let got = bus
                    .fetch("ordered", GROUP, 4, LONG, Duration::from_millis(200))
                    .await
                    .unwrap();
                for d in &got {
                    if !in_flight.lock().unwrap().insert(d.key.clone()) {
                        overlap.lock().unwrap().push(d.key.clone());
                    }
                }
                // Work takes a while, and differs per worker, so they interleave.
                tokio::time::sleep(Duration::from_millis(5 + 10 * worker)).await;
                for d in &got {
                    handled
                        .lock()
                        .unwrap()
                        .entry(d.key.clone())
                        .or_default()
                        .push(text(d).parse().unwrap());
                    // Out of flight before the ack: the next of the key may only come
                    // after the ack.
                    in_flight.lock().unwrap().remove(&d.key);
                    bus.ack(d).await.unwrap();
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    assert!(
        overlap.lock().unwrap().is_empty(),
        "two of one key in flight"
    );
    let handled = handled.lock().unwrap();
    let expected: Vec<usize> = (0..EACH).collect();
    assert_eq!(handled.get("A"), Some(&expected));
    assert_eq!(handled.get("B"), Some(&expected));
}

/// An unacked head holds back its key, not other keys.
async fn unacked_head_blocks_only_its_key(b: Backend) {
    let bus = b.open().await;
    bus.declare("ordered", spec(Order::PerKey)).await.unwrap();
    publish_all(&*bus, "ordered", &[("A", "a1"), ("A", "a2"), ("B", "b1")]).await;
    let got = fetch_n(&*bus, "ordered", GROUP, 2, LONG, Duration::from_secs(3)).await;
    let texts: HashSet<&str> = got.iter().map(text).collect();
    assert_eq!(texts, HashSet::from(["a1", "b1"]), "a2 waits behind a1");
    let (a1, b1) = if text(&got[0]) == "a1" {
        (&got[0], &got[1])
    } else {
        (&got[1], &got[0])
    };
    bus.ack(b1).await.unwrap();
    bus.publish("ordered", msg("B", "b2")).await.unwrap();
    let next = fetch_n(&*bus, "ordered", GROUP, 2, LONG, Duration::from_secs(1)).await;
    let texts: Vec<&str> = next.iter().map(text).collect();
    assert_eq!(texts, ["b2"], "B goes on while A's head is out");
    // A nack keeps a1 the head: it comes again before a2.
    bus.nack(a1, Duration::ZERO).await.unwrap();
    let again = fetch_n(&*bus, "ordered", GROUP, 1, LONG, Duration::from_secs(2)).await;
    assert_eq!(again.len(), 1);
    assert_eq!((text(&again[0]), again[0].attempt), ("a1", 2));
    bus.ack(&again[0]).await.unwrap();
    bus.ack(&next[0]).await.unwrap();
    let last = fetch_n(&*bus, "ordered", GROUP, 1, LONG, Duration::from_secs(2)).await;
    assert_eq!(last.iter().map(text).collect::<Vec<_>>(), ["a2"]);
}

async fn groups_each_get_everything_and_fetchers_split(b: Backend) {
    let bus = b.open().await;
    bus.declare("events", spec(Order::Any)).await.unwrap();
    let all: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for m in &all {
        bus.publish("events", msg("", m)).await.unwrap();
    }
    for group in ["audit", "mailer"] {
        let got = fetch_n(&*bus, "events", group, 10, LONG, Duration::from_secs(3)).await;
        let texts: Vec<&str> = got.iter().map(text).collect();
        assert_eq!(texts, all, "group {group} gets every message in order");
    }
    // Two fetchers of one group share the messages without overlap (a fetch may bring
    // fewer than `max`, even with more ready: JetStream's no-wait pulls can stop early).
    let one = bus
        .fetch("events", GROUP, 5, LONG, Duration::from_secs(2))
        .await
        .unwrap();
    assert!((1..=5).contains(&one.len()), "{}", one.len());
    let two = fetch_n(
        &*bus,
        "events",
        GROUP,
        10 - one.len(),
        LONG,
        Duration::from_secs(2),
    )
    .await;
    let mut seen: Vec<&str> = one.iter().chain(&two).map(text).collect();
    seen.sort_unstable();
    let mut expected: Vec<&str> = all.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(seen, expected);
    // Concurrent fetchers, too.
    bus.declare("events2", spec(Order::Any)).await.unwrap();
    for m in &all {
        bus.publish("events2", msg("", m)).await.unwrap();
    }
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let (bus, taken) = (bus.clone(), taken.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut got = Vec::new();
                while taken.load(std::sync::atomic::Ordering::SeqCst) < 10
                    && Instant::now() < deadline
                {
                    let some = bus
                        .fetch("events2", GROUP, 2, LONG, Duration::from_millis(100))
                        .await
                        .unwrap();
                    taken.fetch_add(some.len(), std::sync::atomic::Ordering::SeqCst);
                    got.extend(some);
                }
                got
            })
        })
        .collect();
    let mut seen = Vec::new();
    for f in fetchers {
        seen.extend(f.await.unwrap().iter().map(|d| text(d).to_owned()));
    }
    seen.sort_unstable();
    assert_eq!(seen, expected, "each message to one fetcher");
}

async fn crash_and_restart(b: Backend) {
    let bus = b.open().await;
    bus.declare("jobs", spec(Order::Any)).await.unwrap();
    publish_all(&*bus, "jobs", &[("", "m1"), ("", "m2"), ("", "m3")]).await;
    let vis = Duration::from_secs(1);
    let got = fetch_n(&*bus, "jobs", GROUP, 3, vis, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    bus.ack(&got[0]).await.unwrap();
    let fetched = Instant::now();
    drop(got);
    drop(bus); // the crash: m2 and m3 were never acked

    let bus = b.open().await;
    let again = fetch_n(&*bus, "jobs", GROUP, 2, vis, Duration::from_secs(5)).await;
    assert!(fetched.elapsed() >= Duration::from_millis(900));
    let texts: Vec<&str> = again.iter().map(text).collect();
    assert_eq!(
        texts,
        ["m2", "m3"],
        "the unacked come again, the acked do not"
    );
    assert!(again.iter().all(|d| d.attempt == 2));
    for d in &again {
        bus.ack(d).await.unwrap();
    }
    assert!(bus
        .fetch("jobs", GROUP, 10, vis, Duration::from_millis(1500))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(bus.pending("jobs", GROUP).await.unwrap(), 0);
    // The topic survives the restart: publishing needs no new declaration.
    drop(bus);
    let bus = b.open().await;
    bus.publish("jobs", msg("", "m4")).await.unwrap();
    assert_eq!(bus.pending("jobs", GROUP).await.unwrap(), 1);
}

async fn long_poll_wakes_on_publish(b: Backend) {
    let bus = b.open().await;
    for (topic, order) in [("plain", Order::Any), ("keyed", Order::PerKey)] {
        bus.declare(topic, spec(order)).await.unwrap();
        // The group exists before the wait, as a worker's would.
        assert!(bus
            .fetch(topic, GROUP, 1, LONG, NO_WAIT)
            .await
            .unwrap()
            .is_empty());
        let waiter = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let got = bus
                    .fetch(topic, GROUP, 5, LONG, Duration::from_secs(2))
                    .await
                    .unwrap();
                (got, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        bus.publish(topic, msg("k", "wake")).await.unwrap();
        // From the publish's return: the message is durable, and waiters may be told.
        let published = Instant::now();
        let (got, returned) = waiter.await.unwrap();
        assert_eq!(got.len(), 1, "{topic}");
        let latency = returned.saturating_duration_since(published);
        assert!(latency < Duration::from_millis(500), "{topic}: {latency:?}");
    }
}

async fn retention_drops_old_messages(b: Backend) {
    let bus = b.open().await;
    let short = TopicSpec {
        max_age: Duration::from_secs(1),
        ..spec(Order::Any)
    };
    bus.declare("brief", short).await.unwrap();
    publish_all(&*bus, "brief", &[("", "old1"), ("", "old2")]).await;
    assert_eq!(bus.pending("brief", GROUP).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    bus.publish("brief", msg("", "new")).await.unwrap();
    let got = bus
        .fetch("brief", GROUP, 10, LONG, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["new"]);
    assert_eq!(bus.pending("brief", GROUP).await.unwrap(), 1);

    // max_bytes drops the oldest first.
    let small = TopicSpec {
        max_bytes: 4096,
        ..spec(Order::Any)
    };
    bus.declare("small", small).await.unwrap();
    for i in 0..8u8 {
        bus.publish("small", Message::new("", vec![i; 1000]))
            .await
            .unwrap();
    }
    // Everything retained (one look may bring fewer than are ready, on JetStream).
    let mut got = Vec::new();
    loop {
        let more = bus
            .fetch("small", GROUP, 10, LONG, Duration::from_millis(300))
            .await
            .unwrap();
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    assert!(
        (2..=4).contains(&got.len()),
        "about 4 KiB kept: {}",
        got.len()
    );
    assert_eq!(got.last().unwrap().payload[0], 7, "the newest is kept");
}

async fn pending_counts(b: Backend) {
    let bus = b.open().await;
    bus.declare("jobs", spec(Order::Any)).await.unwrap();
    bus.declare("keyed", spec(Order::PerKey)).await.unwrap();
    for topic in ["jobs", "keyed"] {
        assert_eq!(bus.pending(topic, GROUP).await.unwrap(), 0);
        for i in 0..5 {
            bus.publish(topic, msg(&format!("k{i}"), "x"))
                .await
                .unwrap();
        }
        assert_eq!(
            bus.pending(topic, GROUP).await.unwrap(),
            5,
            "{topic}: unused group"
        );
        let got = fetch_n(&*bus, topic, GROUP, 2, LONG, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 2);
        assert_eq!(
            bus.pending(topic, GROUP).await.unwrap(),
            5,
            "{topic}: in flight"
        );
        for d in &got {
            bus.ack(d).await.unwrap();
        }
        assert_eq!(
            bus.pending(topic, GROUP).await.unwrap(),
            3,
            "{topic}: acked"
        );
        assert_eq!(
            bus.pending(topic, "other").await.unwrap(),
            5,
            "{topic}: per group"
        );
    }
}

async fn work_queues_forget_acked_messages_and_refuse_when_full(b: Backend) {
    let bus = b.open().await;
    // Room for two of these messages (JetStream counts its framing too: ~100 bytes).
    let payload = "x".repeat(400);
    let spec = TopicSpec {
        retention: Retention::WorkQueue,
        max_bytes: 1100,
        ..TopicSpec::new(Order::Any)
    };
    bus.declare("work", spec).await.unwrap();
    let with_id = |id: &str| Message::new("", payload.clone()).with_dedupe_id(id);
    bus.publish("work", with_id("a")).await.unwrap();
    bus.publish("work", with_id("b")).await.unwrap();
    match bus.publish("work", with_id("c")).await {
        Err(EventsError::Full(topic)) => assert_eq!(topic, "work"),
        other => panic!("a full work queue refuses: {other:?}"),
    }
    let got = fetch_n(&*bus, "work", GROUP, 2, LONG, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    bus.ack(&got[0]).await.unwrap();
    // The acked message went: there is room again, and its id is still known.
    let again = bus.publish("work", with_id("a")).await.unwrap();
    assert!(again.duplicate, "an acked message's id is remembered");
    assert!(!bus.publish("work", with_id("c")).await.unwrap().duplicate);
    assert_eq!(bus.pending("work", GROUP).await.unwrap(), 2);
    // Another retention for the same topic is refused.
    assert!(bus
        .declare("work", TopicSpec::new(Order::Any))
        .await
        .is_err());
}

async fn extending_keeps_a_delivery_from_others(b: Backend) {
    let bus = b.open().await;
    bus.declare("long", spec(Order::Any)).await.unwrap();
    publish_all(&*bus, "long", &[("", "job")]).await;
    let vis = Duration::from_secs(1);
    let got = fetch_n(&*bus, "long", GROUP, 1, vis, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    // Extended every half visibility for three visibilities: never delivered again.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus.extend(&got[0], vis).await.unwrap();
        assert!(bus
            .fetch("long", GROUP, 1, vis, NO_WAIT)
            .await
            .unwrap()
            .is_empty());
    }
    // Left alone, it comes back.
    let again = fetch_n(&*bus, "long", GROUP, 1, vis, Duration::from_secs(5)).await;
    assert_eq!(again[0].attempt, 2);
}

async fn claims_are_held_once(b: Backend) {
    let bus = b.open().await;
    let other = b.open().await; // another process on the same bus
    assert!(bus.claim("timer-dev-f-t-1000").await.unwrap());
    assert!(
        bus.claim("timer-dev-f-t-1000").await.unwrap(),
        "its holder again"
    );
    assert!(!other.claim("timer-dev-f-t-1000").await.unwrap());
    assert!(other.claim("timer-dev-f-t-2000").await.unwrap());
    assert!(bus.claim("").await.is_err());
    assert!(bus.claim("a\nb").await.is_err());
    assert!(!bus.claim("timer-dev-f-t-2000").await.unwrap());
    drop((bus, other));
    // Held across a restart (a restarted process is another claimant).
    let bus = b.open().await;
    assert!(!bus.claim("timer-dev-f-t-2000").await.unwrap());
}

/// A process's broadcasts reach the others on the bus, not itself; on SQLite (one
/// process) there is nobody to hear them and sending still succeeds.
async fn broadcasts_reach_the_other_processes(b: Backend) {
    use futures_util::StreamExt;
    let bus = b.open().await;
    let other = b.open().await;
    let mut mine = bus.listen().await.unwrap();
    let mut theirs = other.listen().await.unwrap();
    bus.broadcast(bytes::Bytes::from_static(b"forget f"))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(2), theirs.next()).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), mine.next()).await;
    assert!(quiet.is_err(), "a process does not hear itself");
    match b {
        Backend::Sqlite { .. } => assert!(heard.is_err(), "nobody else on SQLite"),
        Backend::JetStream { .. } => assert_eq!(
            heard.unwrap().unwrap(),
            yun_events::Heard::Broadcast(bytes::Bytes::from_static(b"forget f"))
        ),
    }
}

/// Instantiates every case for each backend: `sqlite::case` and `jetstream::case`.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::sqlite()).await;
                }
            )+
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::jetstream()).await;
                }
            )+
        }
    };
}

conformance!(
    round_trip,
    misuse_is_refused,
    dedupe,
    redelivery_after_visibility,
    nack_with_delay,
    per_key_order_with_two_consumers,
    unacked_head_blocks_only_its_key,
    groups_each_get_everything_and_fetchers_split,
    crash_and_restart,
    long_poll_wakes_on_publish,
    retention_drops_old_messages,
    pending_counts,
    work_queues_forget_acked_messages_and_refuse_when_full,
    extending_keeps_a_delivery_from_others,
    claims_are_held_once,
    broadcasts_reach_the_other_processes,
);

/// SQLite's work queues take a message away on the current delivery's ack only (the
/// trait lets a late ack count elsewhere).
#[tokio::test]
async fn sqlite_work_queues_ignore_a_stale_ack() {
    let b = Backend::sqlite();
    let bus = b.open().await;
    let spec = TopicSpec {
        retention: Retention::WorkQueue,
        ..TopicSpec::new(Order::Any)
    };
    bus.declare("wq", spec).await.unwrap();
    publish_all(&*bus, "wq", &[("", "job")]).await;
    let vis = Duration::from_secs(1);
    let first = bus.fetch("wq", GROUP, 1, vis, NO_WAIT).await.unwrap();
    let second = fetch_n(&*bus, "wq", GROUP, 1, vis, Duration::from_secs(5)).await;
    assert_eq!(second[0].attempt, 2);
    bus.ack(&first[0]).await.unwrap();
    assert_eq!(
        bus.pending("wq", GROUP).await.unwrap(),
        1,
        "the stale ack took nothing"
    );
    bus.ack(&second[0]).await.unwrap();
    assert_eq!(bus.pending("wq", GROUP).await.unwrap(), 0);
}
