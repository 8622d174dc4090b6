//! Document database benchmark (issue 3): signed `/admin` requests from 32 clients
//! against a release `yun`, and the same operations directly on SQLite from Rust as the
//! same-run baseline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{drive, ms, Yun};

const CLIENTS: usize = 32;
const SECONDS: u64 = 5;

pub(crate) fn docs_wanted() -> u64 {
    std::env::var("YUN_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A signed `/admin` call's answer, when it succeeded.
pub(crate) async fn admin(http: &reqwest::Client, yun: &Yun, body: Value) -> Option<Value> {
    admin_raw(http, yun, body)
        .await
        .filter(|v| v.get("code").is_none())
}

/// A signed `/admin` call's answer, error or not.
pub(crate) async fn admin_raw(http: &reqwest::Client, yun: &Yun, body: Value) -> Option<Value> {
    Ctx::of(yun).admin_raw(http, body).await
}

/// What a load task needs to sign `/admin` calls (a `Yun` stays with its owner).
#[derive(Clone)]
pub(crate) struct Ctx(Arc<(String, String, String, String)>);

impl Ctx {
    pub(crate) fn of(yun: &Yun) -> Self {
        Self(Arc::new((
            yun.url.clone(),
            yun.env.clone(),
            yun.id.clone(),
            yun.key.clone(),
        )))
    }

    pub(crate) async fn admin_raw(&self, http: &reqwest::Client, body: Value) -> Option<Value> {
        let (url, env, id, key) = &*self.0;
        let res = yun_testkit::signed_admin_request(http, url, env, id, key, body)
            .send()
            .await
            .ok()?;
        res.json().await.ok()
    }
}

/// Creates an index through the management API.
pub(crate) async fn create_index(
    yun: &Yun,
    http: &reqwest::Client,
    collection: &str,
    name: &str,
    fields: Value,
) {
    let res = http
        .post(format!(
            "{}/api/v1/envs/{}/collections/{collection}/indexes",
            yun.url, yun.env
        ))
        .basic_auth(&yun.id, Some(&yun.key))
        .json(&json!({ "name": name, "fields": fields }))
        .send()
        .await
        .expect("index");
    assert!(
        res.status().is_success(),
        "index: {}",
        res.text().await.unwrap_or_default()
    );
}

/// Loads `n` documents made by `doc(i)` in batches of 1000 with 4 loaders.
pub(crate) async fn load(
    yun: &Yun,
    http: &reqwest::Client,
    collection: &str,
    n: u64,
    doc: fn(u64) -> Value,
) {
    let mut loaders = Vec::new();
    for w in 0..4u64 {
        let (http, ctx, collection) = (http.clone(), Ctx::of(yun), collection.to_owned());
        loaders.push(tokio::spawn(async move {
            let mut batch = w;
            while batch * 1000 < n {
                let docs: Vec<Value> = (batch * 1000..((batch + 1) * 1000).min(n))
                    .map(|i| Value::String(doc(i).to_string()))
                    .collect();
                let body = json!({ "action": "database.insertDocument", "collectionName": collection, "data": docs });
                let res = ctx.admin_raw(&http, body).await.expect("load");
                assert!(res.get("code").is_none(), "load failed: {res}");
                batch += 4;
            }
        }));
    }
    for l in loaders {
        l.await.expect("loader");
    }
}

/// The same operations straight on SQLite, one connection per client thread.
fn baseline(dir: &std::path::Path, n: u64) -> Vec<(&'static str, f64)> {
    use rusqlite::{params, Connection};
    let path = dir.join("baseline.db");
    let open = || {
        let c = Connection::open(&path).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .expect("pragmas");
        c
    };
    let conn = open();
    conn.execute_batch("CREATE TABLE d (id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID; CREATE INDEX d_n ON d (json_extract(doc, '$.n'));").expect("schema");
    {
        let mut conn = open();
        let tx = conn.transaction().expect("tx");
        for i in 0..n {
            tx.execute(
                "INSERT INTO d VALUES (?1, ?2)",
                params![
                    format!("id{i}"),
                    json!({"n": i, "text": "hello"}).to_string()
                ],
            )
            .expect("load");
        }
        tx.commit().expect("commit");
    }
    let threads = 2;
    let timed = |name: &'static str, op: &(dyn Fn(&Connection, u64) + Sync)| {
        let counter = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let c = open();
                    while Instant::now() < deadline {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        op(&c, i);
                    }
                });
            }
        });
        (
            name,
            counter.load(Ordering::Relaxed) as f64 / SECONDS as f64,
        )
    };
    vec![
        timed("create", &|c, i| {
            c.execute(
                "INSERT INTO d VALUES (?1, ?2)",
                params![
                    format!("new{i}"),
                    json!({"n": n + i, "text": "hello"}).to_string()
                ],
            )
            .expect("insert");
        }),
        timed("get by id", &|c, i| {
            let _: String = c
                .query_row(
                    "SELECT doc FROM d WHERE id = ?1",
                    params![format!("id{}", (i * 7919) % n)],
                    |r| r.get(0),
                )
                .expect("get");
        }),
        timed("indexed range (20 docs)", &|c, i| {
            let lo = (i * 7919) % (n - 20);
            let mut st = c.prepare_cached("SELECT doc FROM d WHERE json_extract(doc, '$.n') >= ?1 AND json_extract(doc, '$.n') < ?2").expect("prep");
            let rows: Vec<String> = st
                .query_map(params![lo, lo + 20], |r| r.get(0))
                .expect("q")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert_eq!(rows.len(), 20);
        }),
        timed("update by id", &|c, i| {
            c.execute(
                "UPDATE d SET doc = json_set(doc, '$.v', ?2) WHERE id = ?1",
                params![format!("id{}", (i * 7919) % n), i],
            )
            .expect("update");
        }),
        timed("count with index (20 docs)", &|c, i| {
            let lo = (i * 7919) % (n - 20);
            let _: i64 = c.query_row("SELECT count(*) FROM d WHERE json_extract(doc, '$.n') >= ?1 AND json_extract(doc, '$.n') < ?2", params![lo, lo + 20], |r| r.get(0)).expect("count");
        }),
    ]
}

pub async fn run(yun: &Yun) {
    let n = docs_wanted();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    println!(
        "\n## Document database: {n} documents, {CLIENTS} clients, {SECONDS} s per operation\n"
    );
    admin(
        &http,
        yun,
        json!({ "action": "database.addCollection", "collectionName": "bench" }),
    )
    .await
    .expect("collection");

    // Load in batches of 1000 with 4 loaders, then build the index from them.
    let started = Instant::now();
    load(
        yun,
        &http,
        "bench",
        n,
        |i| json!({"_id": format!("id{i}"), "n": i, "text": "hello"}),
    )
    .await;
    let load_time = started.elapsed();
    let started = Instant::now();
    create_index(
        yun,
        &http,
        "bench",
        "by_n",
        json!([{ "field": "n", "direction": 1 }]),
    )
    .await;
    println!("loaded {n} documents in {:.1} s ({:.0} docs/s in batches of 1000); built the index in {:.1} s\n", load_time.as_secs_f64(), n as f64 / load_time.as_secs_f64(), started.elapsed().as_secs_f64());

    let yun_arc = Arc::new((
        http.clone(),
        yun.url.clone(),
        yun.env.clone(),
        yun.id.clone(),
        yun.key.clone(),
    ));
    macro_rules! op {
        ($body:expr) => {{
            let ctx = yun_arc.clone();
            move |i: u64| {
                let ctx = ctx.clone();
                async move {
                    let (http, url, env, id, key) = &*ctx;
                    let body: Value = $body(i);
                    match yun_testkit::signed_admin_request(http, url, env, id, key, body)
                        .send()
                        .await
                    {
                        Ok(r) => r
                            .json::<Value>()
                            .await
                            .map(|v| v.get("code").is_none())
                            .unwrap_or(false),
                        Err(_) => false,
                    }
                }
            }
        }};
    }
    let range = move |i: u64| {
        let lo = (i * 7919) % (n - 20);
        json!({ "$gte": lo, "$lt": lo + 20 })
    };
    let runs = [
        ("create", drive(CLIENTS, SECONDS, op!(move |i: u64| json!({ "action": "database.insertDocument", "collectionName": "bench", "data": [json!({"n": n + i, "text": "hello"}).to_string()] }))).await),
        ("get by id", drive(CLIENTS, SECONDS, op!(move |i: u64| json!({ "action": "database.getDocument", "collectionName": "bench", "queryType": "DOC", "query": json!({"_id": format!("id{}", (i * 7919) % n)}).to_string() }))).await),
        ("indexed range (20 docs)", drive(CLIENTS, SECONDS, op!(move |i: u64| json!({ "action": "database.getDocument", "collectionName": "bench", "queryType": "WHERE", "query": json!({"n": range(i)}).to_string(), "limit": 20 }))).await),
        ("update by id", drive(CLIENTS, SECONDS, op!(move |i: u64| json!({ "action": "database.modifyDocument", "collectionName": "bench", "queryType": "DOC", "query": json!({"_id": format!("id{}", (i * 7919) % n)}).to_string(), "data": json!({"$inc": {"v": 1}}).to_string(), "multi": false, "merge": true }))).await),
        ("count with index (20 docs)", drive(CLIENTS, SECONDS, op!(move |i: u64| json!({ "action": "database.calculateDocument", "collectionName": "bench", "queryType": "WHERE", "query": json!({"n": range(i)}).to_string() }))).await),
    ];

    let dir = tempfile::tempdir().expect("temp dir");
    let base = tokio::task::spawn_blocking({
        let path = dir.path().to_owned();
        move || baseline(&path, n)
    })
    .await
    .expect("baseline");
    println!("| operation | Yun ops/s | p50 | p99 | errors | SQLite from Rust ops/s (baseline) | Yun / baseline |");
    println!("|---|---|---|---|---|---|---|");
    for ((name, r), (_, b)) in runs.iter().zip(&base) {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {:.0} | {:.2}× |",
            r.ops_per_sec,
            ms(r.p50),
            ms(r.p99),
            r.errors,
            b,
            r.ops_per_sec / b
        );
    }
}
