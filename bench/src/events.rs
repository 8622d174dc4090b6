//! Events (issue 17), in one run: async invocations of a trivial function through the
//! queue (enqueued by 32 clients with signed `/admin` calls, `InvocationType: "Event"`,
//! while the same node delivers them) against direct synchronous invocations of the same
//! function, on the embedded queue (SQLite) and on NATS JetStream (127.0.0.1:4222); and
//! document creates with no trigger against creates on a collection with a database
//! trigger (the change log is written either way).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::db::Ctx;
use crate::{drive, spawn_yun, yun_bin, Yun, CONNECTIONS, LOAD_SECONDS};

const NOOP: [(&str, &str); 1] = [("index.js", "exports.main = async () => 1;")];

/// Invocation records of `noop` with the given trigger, read from the data folder.
fn delivered(yun: &Yun) -> u64 {
    let db = yun.dir.path().join("meta/yun.db");
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM invocations WHERE function = 'noop' AND trigger = 'async'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_or(0, |n| n as u64)
}

async fn invoke_row(yun: &Yun, label: &str) {
    let http = reqwest::Client::new();
    yun.deploy(&http, "noop", &NOOP, json!({ "max_instances": 10 }))
        .await;
    let ctx = Ctx::of(yun);
    let call = |event: bool| {
        let (ctx, http) = (ctx.clone(), http.clone());
        move |_| {
            let (ctx, http) = (ctx.clone(), http.clone());
            async move {
                let mut body = json!({ "action": "functions.invokeFunction", "function_name": "noop", "request_data": "{}" });
                if event {
                    body["InvocationType"] = json!("Event");
                }
                ctx.admin_raw(&http, body)
                    .await
                    .is_some_and(|v| v.get("code").is_none())
            }
        }
    };
    drive(CONNECTIONS, 1, call(false)).await;
    let direct = drive(CONNECTIONS, LOAD_SECONDS, call(false)).await;
    let started = Instant::now();
    let queued = drive(CONNECTIONS, LOAD_SECONDS, call(true)).await;
    let sent = (queued.ops_per_sec * LOAD_SECONDS as f64).round() as u64;
    // Every queued event must be delivered; give up after a minute (and say so).
    let mut done = delivered(yun);
    while done < sent && started.elapsed() < Duration::from_secs(60 + LOAD_SECONDS) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        done = delivered(yun);
    }
    let delivery = done as f64 / started.elapsed().as_secs_f64();
    println!(
        "| {label} | {:.0} | {:.0} (p99 {}) | {:.0} | {done} of {sent} | {:.2}× |",
        direct.ops_per_sec,
        queued.ops_per_sec,
        crate::ms(queued.p99),
        delivery,
        delivery / direct.ops_per_sec
    );
}

async fn creates_row(yun: &Yun) {
    let http = reqwest::Client::new();
    let ctx = Ctx::of(yun);
    for c in ["plain", "watched"] {
        ctx.admin_raw(
            &http,
            json!({ "action": "database.addCollection", "collectionName": c }),
        )
        .await;
    }
    yun.deploy(&http, "noop", &NOOP, json!({})).await;
    let res = http
        .post(format!("{}/api/v1/envs/{}/functions/noop/triggers", yun.url, yun.env))
        .basic_auth(&yun.id, Some(&yun.key))
        .json(&json!({ "name": "onCreate", "type": "database", "config": { "collection": "watched", "events": ["create"] } }))
        .send()
        .await
        .expect("trigger");
    assert!(res.status().is_success(), "create the trigger");
    let insert = |collection: &'static str| {
        let (ctx, http) = (ctx.clone(), http.clone());
        move |i: u64| {
            let (ctx, http) = (ctx.clone(), http.clone());
            async move {
                let body = json!({
                    "action": "database.insertDocument", "collectionName": collection,
                    "data": [json!({ "n": i, "title": format!("photo {i}"), "likes": 0 }).to_string()],
                });
                ctx.admin_raw(&http, body)
                    .await
                    .is_some_and(|v| v.get("code").is_none())
            }
        }
    };
    // Interleaved rounds: the machine's drift falls on both alike.
    let (mut plain, mut watched) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(drive(CONNECTIONS, 3, insert("plain")).await.ops_per_sec);
        watched.push(drive(CONNECTIONS, 3, insert("watched")).await.ops_per_sec);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, w) = (median(&mut plain), median(&mut watched));
    println!(
        "\nDocument creates (`database.insertDocument`, 32 clients, 3 × 3 s interleaved, median): no trigger {p:.0}/s, \
         with a database trigger on the collection {w:.0}/s ({:.2}×; each create's trigger runs `noop` through the queue meanwhile)",
        w / p
    );
}

pub async fn run() {
    println!(
        "\n## Events: async invocations through the queue, against direct invocations (same run)\n"
    );
    println!("`noop` (`exports.main = async () => 1`, at most 10 instances), 32 clients, {LOAD_SECONDS} s each; delivery runs while the events are queued.\n");
    println!("| queue | direct invocations/s | events queued/s | delivered/s | delivered | delivered / direct |");
    println!("|---|---|---|---|---|---|");
    let sqlite = spawn_yun(&yun_bin(), &[]).await;
    invoke_row(&sqlite, "SQLite (embedded)").await;
    let nats = format!("nats://127.0.0.1:4222/yunbench{}", std::process::id());
    let jetstream = spawn_yun(&yun_bin(), &["--events", &nats]).await;
    invoke_row(&jetstream, "NATS JetStream").await;
    drop(jetstream);
    creates_row(&sqlite).await;
}
