//! Queries at scale (issue 16): feed-shaped reads over `YUN_BENCH_DOCS` documents
//! (1,000,000 by default) `{n, album, createdAt, title, likes}`, signed `/admin`
//! requests from 32 clients, against PostgreSQL on this machine with the same documents
//! in one `jsonb` column and the equivalent expression indexes, in the same run: what a
//! user of Parse or Supabase gets.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{drive, ms, Run, Yun};

const CLIENTS: usize = 32;
const SECONDS: u64 = 5;
const DATABASE: &str = "yun_bench_queries";
const ALBUMS: u64 = 1000;

fn photo(i: u64) -> Value {
    json!({
        "_id": format!("p{i:07}"),
        "n": i,
        "album": format!("a{}", i % ALBUMS),
        "createdAt": 1_700_000_000_000u64 + i * 1000,
        "title": format!("photo {i}"),
        "likes": (i * 7919) % 1000,
    })
}

/// One query as Yun gets it (a `database.getDocument` or `calculateDocument` body) and
/// as PostgreSQL gets it (SQL and its text parameters).
struct Row {
    name: &'static str,
    yun: Box<dyn Fn(u64) -> Value + Send + Sync>,
    sql: &'static str,
    params: Box<dyn Fn(u64) -> Vec<String> + Send + Sync>,
    /// Rows (or the count) every answer must have.
    expect: u64,
}

fn find(query: Value, order: Value, offset: u64) -> Value {
    json!({
        "action": "database.getDocument", "collectionName": "photos", "queryType": "WHERE",
        "query": query.to_string(), "order": order.to_string(), "offset": offset, "limit": 20,
    })
}

fn rows(n: u64) -> Vec<Row> {
    let album = move |i: u64| format!("a{}", (i * 7919) % ALBUMS);
    let quarter = n / 4;
    vec![
        Row {
            name: "`limit(20)`",
            yun: Box::new(|_| find(json!({}), json!({}), 0)),
            sql: "SELECT doc FROM docs LIMIT 20",
            params: Box::new(|_| vec![]),
            expect: 20,
        },
        Row {
            name: "`orderBy(n desc).limit(20)`, index (n)",
            yun: Box::new(|_| find(json!({}), json!({"n": -1}), 0)),
            sql: "SELECT doc FROM docs ORDER BY doc->'n' DESC LIMIT 20",
            params: Box::new(|_| vec![]),
            expect: 20,
        },
        Row {
            name: "`where({album}).orderBy(createdAt desc).limit(20)`, index (album, createdAt desc)",
            yun: Box::new(move |i| find(json!({"album": album(i)}), json!({"createdAt": -1}), 0)),
            sql: "SELECT doc FROM docs WHERE doc->'album' = to_jsonb($1::text) ORDER BY doc->'createdAt' DESC LIMIT 20",
            params: Box::new(move |i| vec![album(i)]),
            expect: 20,
        },
        Row {
            name: "`orderBy(n).skip(10000).limit(20)`, index (n)",
            yun: Box::new(|_| find(json!({}), json!({"n": 1}), 10_000)),
            sql: "SELECT doc FROM docs ORDER BY doc->'n' OFFSET 10000 LIMIT 20",
            params: Box::new(|_| vec![]),
            expect: 20,
        },
        Row {
            name: "`where({n: _.gt(500)}).orderBy(likes desc).limit(20)`, no index on likes (top-k)",
            yun: Box::new(|_| find(json!({"n": {"$gt": 500}}), json!({"likes": -1}), 0)),
            sql: "SELECT doc FROM docs WHERE doc->'n' > '500'::jsonb ORDER BY doc->'likes' DESC LIMIT 20",
            params: Box::new(|_| vec![]),
            expect: 20,
        },
        Row {
            name: "`where({n: _.gte(N/4).and(_.lt(3N/4))}).count()`, index (n)",
            yun: Box::new(move |_| json!({
                "action": "database.calculateDocument", "collectionName": "photos", "queryType": "WHERE",
                "query": json!({"n": {"$gte": quarter, "$lt": 3 * quarter}}).to_string(),
            })),
            sql: "SELECT count(*) FROM docs WHERE doc->'n' >= to_jsonb($1::text::bigint) AND doc->'n' < to_jsonb($2::text::bigint)",
            params: Box::new(move |_| vec![quarter.to_string(), (3 * quarter).to_string()]),
            expect: 2 * quarter,
        },
    ]
}

async fn load_yun(yun: &Yun, http: &reqwest::Client, n: u64) {
    crate::db::admin(
        http,
        yun,
        json!({ "action": "database.addCollection", "collectionName": "photos" }),
    )
    .await
    .expect("collection");
    crate::db::load(yun, http, "photos", n, photo).await;
    for (name, fields) in [
        ("by_n", json!([{ "field": "n", "direction": 1 }])),
        (
            "album_created",
            json!([{ "field": "album", "direction": 1 }, { "field": "createdAt", "direction": -1 }]),
        ),
    ] {
        crate::db::create_index(yun, http, "photos", name, fields).await;
    }
}

async fn connect(db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The same documents in PostgreSQL: a fresh database, `docs (id text, doc jsonb)`, the
/// expression indexes the queries use, and statistics.
async fn load_postgres(n: u64) -> Result<Vec<tokio_postgres::Client>, tokio_postgres::Error> {
    let admin = connect("postgres").await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    let db = connect(DATABASE).await?;
    db.batch_execute("CREATE TABLE docs (id text PRIMARY KEY, doc jsonb NOT NULL)")
        .await?;
    let insert = db
        .prepare("INSERT INTO docs SELECT * FROM unnest($1::text[], $2::jsonb[])")
        .await?;
    let mut start = 0;
    while start < n {
        let end = (start + 5000).min(n);
        let docs: Vec<Value> = (start..end).map(photo).collect();
        let ids: Vec<String> = docs
            .iter()
            .map(|d| d["_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        db.execute(&insert, &[&ids, &docs]).await?;
        start = end;
    }
    db.batch_execute(
        "CREATE INDEX docs_n ON docs ((doc->'n'));
         CREATE INDEX docs_album_created ON docs ((doc->'album'), (doc->'createdAt') DESC);",
    )
    .await?;
    // Alone: several statements in one call run as one transaction, which VACUUM refuses.
    db.batch_execute("VACUUM ANALYZE docs").await?;
    let mut clients = vec![db];
    for _ in 1..CLIENTS {
        clients.push(connect(DATABASE).await?);
    }
    Ok(clients)
}

/// Rows (or the count) a PostgreSQL query returned.
async fn postgres_answer(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[String],
) -> Option<u64> {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client.query(sql, &params).await.ok()?;
    if sql.starts_with("SELECT count") {
        rows.first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|c| c as u64)
    } else {
        Some(rows.len() as u64)
    }
}

/// Rows (or the count) a Yun answer holds.
fn yun_answer(v: &Value) -> Option<u64> {
    if v.get("code").is_some() {
        return None;
    }
    let data = &v["data"];
    data.get("total")
        .and_then(Value::as_u64)
        .or_else(|| data["list"].as_array().map(|l| l.len() as u64))
}

/// (anonymous, file-backed) resident KiB: the file's pages that readers map count in
/// RSS too, but they are the kernel's page cache, shared and dropped under pressure.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

pub async fn run(yun: &Yun) {
    let n = crate::db::docs_wanted();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    println!("\n## Queries at scale: {n} documents, {CLIENTS} clients, {SECONDS} s per query, against PostgreSQL (jsonb) in the same run\n");
    let started = std::time::Instant::now();
    load_yun(yun, &http, n).await;
    println!(
        "Yun: loaded and indexed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let postgres = match load_postgres(n).await {
        Ok(c) => {
            println!(
                "PostgreSQL: loaded and indexed in {:.1} s\n",
                started.elapsed().as_secs_f64()
            );
            Some(Arc::new(c))
        }
        Err(e) => {
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            println!("**PostgreSQL rows skipped**: {why} (it must answer on 127.0.0.1:5432, user postgres, trust auth)\n");
            None
        }
    };
    let pid = yun.child.id().unwrap_or(0);
    let rss_before = rss_kib(pid);
    println!("| query | Yun req/s | p50 | p99 | errors | PostgreSQL req/s | p50 | p99 | Yun / PostgreSQL | Yun RSS growth: anonymous, file pages |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows(n) {
        let row = Arc::new(row);
        // One checked answer from each before any load.
        let first = crate::db::admin_raw(&http, yun, (row.yun)(0)).await;
        let yun_ok = first.as_ref().and_then(yun_answer) == Some(row.expect);
        let yun_run = if yun_ok {
            let (http, ctx, r) = (http.clone(), crate::db::Ctx::of(yun), row.clone());
            Some(
                drive(CLIENTS, SECONDS, move |i| {
                    let (http, ctx, r) = (http.clone(), ctx.clone(), r.clone());
                    async move {
                        ctx.admin_raw(&http, (r.yun)(i))
                            .await
                            .as_ref()
                            .and_then(yun_answer)
                            == Some(r.expect)
                    }
                })
                .await,
            )
        } else {
            println!("<!-- {}: Yun answered {first:?} -->", row.name);
            None
        };
        let rss = rss_kib(pid);
        let rss_growth = format!(
            "{} MiB, {} MiB",
            rss.0.saturating_sub(rss_before.0) / 1024,
            rss.1.saturating_sub(rss_before.1) / 1024
        );
        let pg_run = match &postgres {
            Some(clients)
                if postgres_answer(&clients[0], row.sql, &(row.params)(0)).await
                    == Some(row.expect) =>
            {
                let (clients, r) = (clients.clone(), row.clone());
                Some(
                    drive(CLIENTS, SECONDS, move |i| {
                        let (clients, r) = (clients.clone(), r.clone());
                        async move {
                            let client = &clients[i as usize % clients.len()];
                            postgres_answer(client, r.sql, &(r.params)(i)).await == Some(r.expect)
                        }
                    })
                    .await,
                )
            }
            _ => None,
        };
        let cells = |r: &Option<Run>| match r {
            Some(r) => format!(
                "{:.0} | {} | {} | {}",
                r.ops_per_sec,
                ms(r.p50),
                ms(r.p99),
                r.errors
            ),
            None => "– | – | – | –".into(),
        };
        let pg_cells = match &pg_run {
            Some(r) => format!("{:.0} | {} | {}", r.ops_per_sec, ms(r.p50), ms(r.p99)),
            None => "– | – | –".into(),
        };
        let ratio = match (&yun_run, &pg_run) {
            (Some(y), Some(p)) if p.ops_per_sec > 0.0 => {
                format!("{:.2}×", y.ops_per_sec / p.ops_per_sec)
            }
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {pg_cells} | {ratio} | {rss_growth} |",
            row.name,
            cells(&yun_run)
        );
    }
    if postgres.is_some() {
        if let Ok(admin) = connect("postgres").await {
            // Its connections must go first.
            drop(postgres);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
                .await;
        }
    }
}
