//! `yun-bench cluster`: one `yun serve` node on the local PostgreSQL against `yun dev`
//! (embedded SQLite) and against Parse Server on the same PostgreSQL, in one run, all on
//! 127.0.0.1. Rows, each `wrk -t2 -c32 --latency` in `ROUNDS` interleaved rounds after one
//! unmeasured second per target (the machinery of `bench/run peers`, `peers.rs`):
//! - create: a JSON post of about 350 bytes; Yun: `POST /{env}/posts` to an HTTP function
//!   doing `db.collection('posts').add()` with `wx-server-sdk`; Parse: `POST
//!   /parse/classes/Post` (its REST API, as a client app sends it);
//! - get by id: a random one of 1000 seeded posts; Yun: `GET /{env}/posts/ID` to the same
//!   function (`doc(id).get()`); Parse: `GET /parse/classes/Post/ID`;
//! - feed: `where({n: _.gt(500)}).orderBy('n', 'desc').limit(20)` over 10,000 documents
//!   with an index on `n` (the peers row);
//! - like: `likes + 1` on a random one of 100 photos, then read back (the peers row).
//!
//! Then the CPU per request of each target's processes (the `yun` node, its instances and,
//! for `yun serve`, its PostgreSQL backends; Parse's node and its backends), and the
//! latency HAProxy (Debian's) adds in front of the `yun serve` node: one connection, a get
//! by id and `/healthz` alternating direct and through it.
//!
//! The node is a cluster's (`YUN_DATABASE_URL` with a schema of its own, NATS JetStream
//! events under a prefix of its own, the platform key and public URL a cluster gives); its
//! files stay on local disk (one node). Its schema and streams go at the end.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::peers::{
    self, feed_lua, like_lua, measure, parse_headers, per_request, pg_sql, Cpu, Parse, Sample,
    FEED_FN, FEED_ITEMS, LIKE_FN, MASTER_KEY, PHOTOS, ROUNDS,
};
use crate::{
    has_wrk, ms, percentile, repo, spawn_yun, spawn_yun_as, stop, wrk, wrk_script, yun_bin, Yun,
    LATENCY_REQUESTS, LOAD_SECONDS, WARMUP_SECONDS,
};

/// Posts seeded for the get-by-id row.
const POSTS: usize = 1000;
/// The target: each row of `yun serve` at this many times Parse's req/s.
const TARGET: f64 = 3.0;

/// Creates (POST) and gets by id (GET …/posts/ID) as one REST-like function.
const POSTS_FN: &str = "const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const posts = cloud.database().collection('posts');
exports.main = async (event) => {
  if (event.httpMethod === 'GET') {
    const r = await posts.doc(event.path.slice(event.path.lastIndexOf('/') + 1)).get();
    return r.data;
  }
  const r = await posts.add({ data: JSON.parse(event.body) });
  return { _id: r._id };
};
";

/// A post as an app would write one.
fn post(n: usize) -> Value {
    json!({
        "title": format!("Sunset over the harbour #{n}"),
        "text": "Walked down to the pier after work: the light on the water was unreal, \
                 and the three of us stayed until the lamps came on along the promenade.",
        "author": format!("u{:05}", n * 7919 % 100_000),
        "album": format!("a{}", n % 100),
        "tags": ["travel", "sunset", "harbour"],
        "location": { "lat": 22.2855, "lng": 114.1577 },
        "n": n,
        "public": true,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Create,
    Get,
    Feed,
    Like,
}

const ROWS: [Row; 4] = [Row::Create, Row::Get, Row::Feed, Row::Like];

impl Row {
    fn title(self) -> &'static str {
        match self {
            Row::Create => "create: a JSON post (≈350 bytes) added",
            Row::Get => "get by id: a random one of 1000 posts",
            Row::Feed => {
                "feed: `where({n: _.gt(500)}).orderBy('n', 'desc').limit(20)` over 10,000 \
                 documents, index on n"
            }
            Row::Like => "like: a random one of 100 photos, `likes + 1` then read back",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Row::Create => "create",
            Row::Get => "get by id",
            Row::Feed => "feed",
            Row::Like => "like",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Dev,
    Serve,
    Parse,
}

const SIDES: [Side; 3] = [Side::Dev, Side::Serve, Side::Parse];

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Dev => "yun dev (SQLite)",
            Side::Serve => "yun serve (PostgreSQL)",
            Side::Parse => "Parse Server (PostgreSQL)",
        }
    }
}

struct Target {
    row: Row,
    side: Side,
    url: String,
    script: tempfile::NamedTempFile,
    cpu: Cpu,
}

/// The names this run gives what it makes in shared servers (dropped at the end).
struct Names {
    /// PostgreSQL schema and `application_name` of the `yun serve` node.
    schema: String,
    /// NATS JetStream prefix.
    nats: String,
}

impl Names {
    fn new() -> Names {
        let pid = std::process::id();
        Names {
            schema: format!("yb_{pid}"),
            nats: format!("yb{pid}"),
        }
    }
}

pub async fn run() {
    println!("# Cluster mode: one `yun serve` node against `yun dev` and Parse Server, one run, 127.0.0.1 only\n");
    if !has_wrk().await {
        return;
    }
    let started = Instant::now();
    let http = reqwest::Client::new();
    let tck = peers::clock_ticks().await;
    let mut loads = vec![("start", load_average())];
    let bin = yun_bin();
    let names = Names::new();

    // yun dev, then the node: instances of each run as uids of their own.
    let mut dev = spawn_yun(&bin, &["--instance-uids", "6300000-6319999"]).await;
    let haproxy_port = free_port();
    let serve = start_serve(&names, haproxy_port).await;
    let Some(mut serve) = serve else {
        stop(&mut dev.child, "INT").await;
        return;
    };
    let mut ids: Vec<(Side, Vec<String>)> = Vec::new();
    for (side, yun) in [(Side::Dev, &dev), (Side::Serve, &serve)] {
        match seed_yun(yun, &http).await {
            Ok(()) => ids.push((side, (0..POSTS).map(|i| format!("q{i}")).collect())),
            Err(why) => println!("**{} rows skipped**: seeding: {why}\n", side.name()),
        }
    }
    let parse = match Parse::start(&http).await {
        Ok(p) => match seed_parse(&p, &http).await {
            Ok(posts) => {
                ids.push((Side::Parse, posts));
                Some(p)
            }
            Err(why) => {
                println!("**Parse Server rows skipped**: seeding: {why}\n");
                p.stop().await;
                None
            }
        },
        Err(why) => {
            println!("**Parse Server rows skipped**: {why}\n");
            None
        }
    };
    let seeded = started.elapsed();

    // Each target answers correctly once before any load.
    let mut targets = Vec::new();
    println!("| target | row | check: one request's answer |\n|---|---|---|");
    for row in ROWS {
        for (side, post_ids) in &ids {
            let (base, headers, cpu) = match side {
                Side::Dev => (
                    format!("{}/{}", dev.url, dev.env),
                    String::new(),
                    Cpu::Yun(dev.child.id().unwrap_or(0)),
                ),
                Side::Serve => (
                    format!("{}/{}", serve.url, serve.env),
                    String::new(),
                    Cpu::YunPostgres(serve.child.id().unwrap_or(0), names.schema.clone()),
                ),
                Side::Parse => {
                    let Some(p) = &parse else { continue };
                    (p.url.clone(), parse_headers(), Cpu::Parse(p.pid))
                }
            };
            let yun = *side != Side::Parse;
            // The wrk URL, the one request checked, the wrk script.
            let (url, check_url, lua) = match row {
                Row::Create => {
                    let url = if yun {
                        format!("{base}/posts")
                    } else {
                        format!("{base}/classes/Post")
                    };
                    let lua = format!(
                        "wrk.method = \"POST\"\nwrk.body = [[{}]]\n\
                         wrk.headers[\"Content-Type\"] = \"application/json\"\n{headers}",
                        post(POSTS)
                    );
                    (url.clone(), url, lua)
                }
                Row::Get => {
                    let url = if yun {
                        format!("{base}/posts/")
                    } else {
                        format!("{base}/classes/Post/")
                    };
                    let path = url_path(&url);
                    let quoted: Vec<String> = post_ids.iter().map(|i| format!("\"{i}\"")).collect();
                    let lua = format!(
                        "{headers}local ids = {{{}}}\nrequest = function()\n  \
                         return wrk.format(\"GET\", \"{path}\" .. ids[math.random(#ids)])\nend\n",
                        quoted.join(",")
                    );
                    let check = format!("{url}{}", post_ids[0]);
                    (url, check, lua)
                }
                Row::Feed => {
                    let (url, cls) = if yun {
                        (format!("{base}/feed"), "items_ix")
                    } else {
                        (format!("{base}/functions/feed"), "ItemIx")
                    };
                    (url.clone(), url, feed_lua(&headers, cls))
                }
                Row::Like => {
                    let (url, photos) = match &parse {
                        Some(p) if !yun => {
                            (format!("{base}/functions/likePhoto"), p.photo_ids.clone())
                        }
                        _ => (
                            format!("{base}/like"),
                            (0..PHOTOS).map(|i| format!("p{i}")).collect(),
                        ),
                    };
                    (url.clone(), url, like_lua(&headers, &photos))
                }
            };
            let req = match row {
                Row::Get => http.get(&check_url),
                Row::Create => http.post(&check_url).json(&post(POSTS)),
                Row::Feed => http.post(&check_url).json(&json!({
                    "cls": if yun { "items_ix" } else { "ItemIx" }
                })),
                Row::Like => {
                    let id = match &parse {
                        Some(p) if !yun => p.photo_ids[0].clone(),
                        _ => "p0".into(),
                    };
                    http.post(&check_url).json(&json!({ "id": id }))
                }
            };
            let req = if yun {
                req
            } else {
                req.header("X-Parse-Application-Id", peers::APP_ID)
            };
            let (status, answer) = match req.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, format!("error: {e}")),
            };
            let v: Value = serde_json::from_str(&answer).unwrap_or_default();
            let cloud_code = !yun && matches!(row, Row::Feed | Row::Like);
            let v = if cloud_code { &v["result"] } else { &v };
            let ok = (200..300).contains(&status)
                && match row {
                    Row::Create if yun => v["_id"].is_string(),
                    Row::Create => v["objectId"].is_string(),
                    Row::Get => v["n"] == 0,
                    Row::Feed => v["count"] == 20 && v["first"] == FEED_ITEMS - 1,
                    Row::Like => v["likes"].as_u64().is_some_and(|n| n >= 1),
                };
            let shown: String = answer.chars().take(160).collect();
            println!(
                "| {} | {} | {status} {} {} |",
                side.name(),
                row.name(),
                shown.replace('|', "\\|"),
                if ok { "(ok)" } else { "**(wrong: dropped)**" }
            );
            let Some(script) = wrk_script(&lua) else {
                println!("(cannot write a wrk script for {})", side.name());
                continue;
            };
            if ok {
                targets.push(Target {
                    row,
                    side: *side,
                    url,
                    script,
                    cpu,
                });
            }
        }
    }

    // One unmeasured second each: JIT warm, instances started.
    for t in &targets {
        wrk(t.script.path(), &t.url, WARMUP_SECONDS).await;
    }
    loads.push(("rows start", load_average()));
    let rows_started = Instant::now();
    let mut samples: Vec<Vec<Option<Sample>>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (t, out) in targets.iter().zip(&mut samples) {
            out.push(measure(t.script.path(), &t.url, &t.cpu, LOAD_SECONDS).await);
        }
    }
    let rows_took = rows_started.elapsed();
    loads.push(("rows end", load_average()));

    let latency = balancer_latency(&serve, haproxy_port, &ids, &http).await;
    loads.push(("end", load_average()));

    // ---- report ----
    let node_version = peers::command_line("node", &["--version"]).await;
    println!(
        "\nwrk -t2 -c32 --latency, {LOAD_SECONDS} s per target, {ROUNDS} interleaved rounds, \
         after {WARMUP_SECONDS} s unmeasured per target; node {node_version}; yun {}.",
        bin.display()
    );
    println!(
        "yun serve: PostgreSQL schema {} on 127.0.0.1:5432, NATS JetStream prefix {} on \
         127.0.0.1:4222, files on local disk; yun dev: SQLite and local disk.",
        names.schema, names.nats
    );
    if let Some(p) = &parse {
        println!(
            "Parse Server {} in one Node process (express + ParseServer, no cluster), \
             directAccess, PostgreSQL {} on 127.0.0.1; creates and gets through its REST API, \
             feed and like in Cloud Code.",
            p.version, p.pg_version
        );
    }
    let find = |row: Row, side: Side| {
        targets
            .iter()
            .position(|t| t.row == row && t.side == side)
            .map(|i| &samples[i][..])
    };
    let rates = |s: &[Option<Sample>]| -> Vec<f64> {
        s.iter()
            .map(|x| x.as_ref().map_or(f64::NAN, |x| x.wrk.rate))
            .collect()
    };
    let ratios = |a: &[Option<Sample>], b: &[Option<Sample>]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .filter_map(|(a, b)| Some(a.as_ref()?.wrk.rate / b.as_ref()?.wrk.rate))
            .collect()
    };
    let mut summary = Vec::new();
    for row in ROWS {
        println!("\n## {}\n", row.title());
        println!(
            "| target | req/s per round | p50 per round | p99 per round | errors |\n|---|---|---|---|---|"
        );
        for side in SIDES {
            let Some(s) = find(row, side) else { continue };
            let per_round = |f: &dyn Fn(&Sample) -> String| {
                s.iter()
                    .map(|x| x.as_ref().map_or("failed".into(), f))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let errors: u64 = s.iter().flatten().map(|x| x.wrk.errors).sum();
            println!(
                "| {} | {} | {} | {} | {errors} |",
                side.name(),
                per_round(&|x| format!("{:.0}", x.wrk.rate)),
                per_round(&|x| ms(x.wrk.p50)),
                per_round(&|x| ms(x.wrk.p99)),
            );
        }
        println!("\n| req/s ratio | per round | median |\n|---|---|---|");
        let mut medians = [None, None];
        for (i, (label, den)) in [
            ("yun serve / Parse Server", Side::Parse),
            ("yun serve / yun dev", Side::Dev),
        ]
        .into_iter()
        .enumerate()
        {
            let (Some(a), Some(b)) = (find(row, Side::Serve), find(row, den)) else {
                println!("| {label} | (not measured) | |");
                continue;
            };
            let mut per = ratios(a, b);
            let shown: Vec<String> = per.iter().map(|r| format!("{r:.2}×")).collect();
            if !per.is_empty() {
                medians[i] = Some(crate::median(&mut per.clone()));
            }
            println!(
                "| {label} | {} | {} |",
                shown.join(" / "),
                peers::median_text(&mut per)
            );
        }
        let median_rate = |side| {
            find(row, side).map_or("-".to_owned(), |s| {
                let mut r: Vec<f64> = rates(s).into_iter().filter(|r| !r.is_nan()).collect();
                if r.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}", crate::median(&mut r))
                }
            })
        };
        summary.push((
            row,
            median_rate(Side::Dev),
            median_rate(Side::Serve),
            median_rate(Side::Parse),
            medians,
        ));
    }

    println!(
        "\n## Summary (medians of the {ROUNDS} rounds; target: yun serve ≥ {TARGET:.0}× Parse)\n"
    );
    println!(
        "| row | yun dev req/s | yun serve req/s | Parse req/s | yun serve / Parse | met | yun serve / yun dev |\n|---|---|---|---|---|---|---|"
    );
    for (row, d, s, p, [vs_parse, vs_dev]) in &summary {
        let r = |m: &Option<f64>| m.map_or("-".to_owned(), |m| format!("{m:.2}×"));
        let met = vs_parse.map_or("-", |m| if m >= TARGET { "yes" } else { "**no**" });
        println!(
            "| {} | {d} | {s} | {p} | {} | {met} | {} |",
            row.name(),
            r(vs_parse),
            r(vs_dev)
        );
    }

    println!(
        "\n## CPU per request (µs of utime+stime from /proc/PID/stat, CLK_TCK {tck}, around \
         each measured run; sums over the {ROUNDS} runs of a row)\n"
    );
    println!(
        "| row | target | requests | yun / Parse's node | instances | PostgreSQL backends | sum | rest of the machine |\n|---|---|---|---|---|---|---|---|"
    );
    let mut backends_seen = Vec::new();
    for row in ROWS {
        for side in SIDES {
            let Some(r) = find(row, side).and_then(|s| per_request(s, tck)) else {
                continue;
            };
            let dash = |v: f64, shown: bool| {
                if shown {
                    format!("{v:.1}")
                } else {
                    "–".into()
                }
            };
            println!(
                "| {} | {} | {} | {:.1} | {} | {} | **{:.1}** | {:.1} |",
                row.name(),
                side.name(),
                r.requests,
                r.main,
                dash(r.helpers, side != Side::Parse),
                dash(r.db, side != Side::Dev),
                r.main + r.helpers + r.db,
                r.rest
            );
            if side != Side::Dev {
                let seen: Vec<String> = r
                    .db_seen
                    .iter()
                    .map(|[a, b, new, gone]| format!("{a}→{b} (+{new} −{gone})"))
                    .collect();
                backends_seen.push(format!(
                    "{} {}: {}",
                    side.name(),
                    row.name(),
                    seen.join(", ")
                ));
            }
        }
    }
    println!(
        "\n- PostgreSQL backends at start→end of each run (started, ended in between; one that \
         ends during a run is not counted): {}",
        backends_seen.join("; ")
    );
    println!(
        "- yun serve's backends are those with its `application_name` ({}), Parse's those of \
         its database; instances are every process descended from `yun`. The rest of the \
         machine is every busy tick of /proc/stat minus the target's: wrk, the kernel's \
         softirq work, the other targets' idle processes, PostgreSQL's own background \
         processes (WAL writer, checkpointer), anything else running.",
        names.schema
    );

    if let Some(rows) = latency {
        println!(
            "\n## Load balancer: one connection, {LATENCY_REQUESTS} requests each way (after 200 \
             each unmeasured), direct to the yun serve node and through HAProxy, alternating\n"
        );
        println!(
            "| request | direct p50 | direct p99 | via HAProxy p50 | via HAProxy p99 | added p50 | added p99 |\n|---|---|---|---|---|---|---|"
        );
        for (label, direct, proxied) in rows {
            let d = |p| percentile(&direct, p);
            let h = |p| percentile(&proxied, p);
            let added = |p| {
                let (h, d) = (h(p).as_secs_f64(), d(p).as_secs_f64());
                format!("{:+.3} ms", (h - d) * 1000.0)
            };
            println!(
                "| {label} | {} | {} | {} | {} | {} | {} |",
                ms(d(0.5)),
                ms(d(0.99)),
                ms(h(0.5)),
                ms(h(0.99)),
                added(0.5),
                added(0.99)
            );
        }
    }

    println!("\n## Machine load (/proc/loadavg: 1, 5, 15 minutes)\n");
    for (when, l) in &loads {
        println!("- {when}: {l}");
    }
    println!(
        "- seeding took {:.1} s, the measured rows {:.1} s, the whole run {:.1} s",
        seeded.as_secs_f64(),
        rows_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // ---- clean up ----
    if let Some(p) = parse {
        p.stop().await;
    }
    stop(&mut dev.child, "INT").await;
    stop(&mut serve.child, "INT").await;
    let schema = pg_sql(&[&format!("DROP SCHEMA IF EXISTS {} CASCADE", names.schema)]).await;
    let streams = delete_streams(&names.nats).await;
    println!(
        "- cleaned up: schema {} {}, JetStream streams of {}: {}",
        names.schema,
        match schema {
            Ok(_) => "dropped".to_owned(),
            Err(e) => format!("NOT dropped ({e})"),
        },
        names.nats,
        match streams {
            Ok(n) => format!("{n} deleted"),
            Err(e) => format!("NOT deleted ({e})"),
        }
    );
}

/// The `yun serve` node, set up as a cluster's (`tests/compat/lib/yun.js` `startCluster`),
/// with the functions of the rows deployed; None (and why, printed) when it cannot start.
async fn start_serve(names: &Names, haproxy_port: u16) -> Option<Yun> {
    let fresh = pg_sql(&[&format!("DROP SCHEMA IF EXISTS {} CASCADE", names.schema)]).await;
    if let Err(e) = fresh {
        println!("**yun serve skipped**: PostgreSQL on 127.0.0.1:5432 (user postgres): {e}");
        return None;
    }
    if tokio::net::TcpStream::connect("127.0.0.1:4222")
        .await
        .is_err()
    {
        println!("**yun serve skipped**: no NATS on 127.0.0.1:4222");
        return None;
    }
    let (secret_id, secret_key) = (
        format!("AKIDyb{}", std::process::id()),
        format!("yb-secret-{}-{:x}", std::process::id(), rand_u64()),
    );
    let vars = [
        (
            "YUN_DATABASE_URL",
            format!(
                "postgres://postgres@127.0.0.1:5432/postgres?application_name={}",
                names.schema
            ),
        ),
        ("YUN_POSTGRES_SCHEMA", names.schema.clone()),
        (
            "YUN_EVENTS",
            format!("nats://127.0.0.1:4222/{}", names.nats),
        ),
        ("YUN_PLATFORM_SECRET_ID", secret_id.clone()),
        ("YUN_PLATFORM_SECRET_KEY", secret_key.clone()),
        ("YUN_NODE_NAME", "a".to_owned()),
        ("YUN_PUBLIC_URL", format!("http://127.0.0.1:{haproxy_port}")),
    ];
    let layer = repo().join("tests/compat");
    let mut serve = spawn_yun_as(
        &yun_bin(),
        "serve",
        &[
            "--node-layer",
            layer.to_str().expect("UTF-8 path"),
            "--instance-uids",
            "6320000-6339999",
        ],
        &vars,
    )
    .await;
    // A node that did not create the key (the schema had one) does not write it down.
    if serve.id.is_empty() {
        (serve.id, serve.key) = (secret_id, secret_key);
    }
    Some(serve)
}

/// Time-seeded bits for a secret that only has to differ between runs.
fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// A Yun target's functions and documents: `posts` (`_id` `q0`…`q999`), the peers rows'
/// `photos` and `items_ix`.
async fn seed_yun(yun: &Yun, http: &reqwest::Client) -> Result<(), String> {
    yun.deploy(
        http,
        "posts",
        &[("index.js", POSTS_FN)],
        json!({ "http_path": "/posts", "max_instances": 10 }),
    )
    .await;
    for (name, code) in [("like", LIKE_FN), ("feed", FEED_FN)] {
        yun.deploy(
            http,
            name,
            &[("index.js", code)],
            json!({ "http_path": format!("/{name}"), "max_instances": 10 }),
        )
        .await;
    }
    let docs: Vec<Value> = (0..POSTS)
        .map(|i| {
            let mut p = post(i);
            p["_id"] = json!(format!("q{i}"));
            p
        })
        .collect();
    peers::import(yun, http, "posts", docs).await?;
    if !peers::seed_yun(yun, http).await {
        return Err("photos".into());
    }
    if !peers::seed_yun_feed(yun, http, &["items_ix"]).await {
        return Err("items_ix".into());
    }
    Ok(())
}

/// Parse's posts (1000, through its batch API with the master key, which also makes the
/// class) and the feed's `ItemIx`; the posts' object ids.
async fn seed_parse(p: &Parse, http: &reqwest::Client) -> Result<Vec<String>, String> {
    p.seed_feed(http, &["ItemIx"]).await?;
    let mut ids = Vec::with_capacity(POSTS);
    for chunk in (0..POSTS).collect::<Vec<_>>().chunks(50) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({ "method": "POST", "path": "/parse/classes/Post", "body": post(i) }))
            .collect();
        let r: Value = http
            .post(format!("{}/batch", p.url))
            .header("X-Parse-Application-Id", peers::APP_ID)
            .header("X-Parse-Master-Key", MASTER_KEY)
            .json(&json!({ "requests": requests }))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        for answer in r.as_array().into_iter().flatten() {
            match answer["success"]["objectId"].as_str() {
                Some(id) => ids.push(id.to_owned()),
                None => return Err(format!("a Post: {answer}")),
            }
        }
    }
    if ids.len() != POSTS {
        return Err(format!("{} posts made of {POSTS}", ids.len()));
    }
    Ok(ids)
}

/// `/a/b` of `http://host:port/a/b`.
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/".into(), |i| rest[i..].to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Sequential latencies direct to the node and through HAProxy (Debian's, started here
/// on `port` with the test cluster's settings), alternating request by request: a get by
/// id through the `posts` function, and `/healthz`. None (and why, printed) without it.
#[allow(clippy::type_complexity)]
async fn balancer_latency(
    serve: &Yun,
    port: u16,
    ids: &[(Side, Vec<String>)],
    http: &reqwest::Client,
) -> Option<Vec<(&'static str, Vec<Duration>, Vec<Duration>)>> {
    let version = peers::command_line("haproxy", &["-v"]).await;
    if version == "?" {
        println!("\n(load balancer row skipped: no `haproxy` on PATH; apt-get install haproxy)");
        return None;
    }
    let node = serve.url.trim_start_matches("http://");
    let config = format!(
        "global\n  maxconn 2048\ndefaults\n  mode http\n  timeout connect 2s\n  \
         timeout client 5m\n  timeout server 5m\nfrontend yun\n  bind 127.0.0.1:{port}\n  \
         default_backend nodes\nbackend nodes\n  balance roundrobin\n  \
         option httpchk GET /readyz\n  http-check expect status 200\n  \
         server a {node} check inter 300ms fall 2 rise 2\n"
    );
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).ok()?;
    let mut haproxy = match tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("\n(load balancer row skipped: haproxy: {e})");
            return None;
        }
    };
    let proxy = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if http
            .get(format!("{proxy}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        println!("\n(load balancer row skipped: HAProxy did not pass requests in 10 s)");
        stop(&mut haproxy, "TERM").await;
        return None;
    }
    println!("\n{version}");
    let post_ids = ids
        .iter()
        .find(|(s, _)| *s == Side::Serve)
        .map(|(_, ids)| ids.clone())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let paths: [(&str, Box<dyn Fn(usize) -> String>); 2] = [
        (
            "get by id (posts function)",
            Box::new(|i: usize| {
                format!(
                    "/{}/posts/{}",
                    serve.env,
                    post_ids[i % post_ids.len().max(1)]
                )
            }),
        ),
        ("/healthz", Box::new(|_| "/healthz".to_owned())),
    ];
    for (label, path) in paths {
        if post_ids.is_empty() && label.starts_with("get") {
            continue;
        }
        // A keep-alive connection each way, as a client and HAProxy keep them.
        let (direct_client, proxy_client) = (reqwest::Client::new(), reqwest::Client::new());
        let (mut direct, mut proxied) = (Vec::new(), Vec::new());
        for i in 0..LATENCY_REQUESTS + 200 {
            for (client, base, out) in [
                (&direct_client, &serve.url, &mut direct),
                (&proxy_client, &proxy, &mut proxied),
            ] {
                let start = Instant::now();
                let ok = match client.get(format!("{base}{}", path(i))).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if i >= 200 && ok {
                    out.push(start.elapsed());
                }
            }
        }
        direct.sort();
        proxied.sort();
        rows.push((label, direct, proxied));
    }
    stop(&mut haproxy, "TERM").await;
    Some(rows)
}

/// Deletes the JetStream streams a `yun serve` made under `prefix` (its topics, and the
/// key-value bucket of timer claims), over NATS's text protocol; how many went.
async fn delete_streams(prefix: &str) -> Result<usize, String> {
    let mut nats = tokio::time::timeout(Duration::from_secs(5), Nats::connect())
        .await
        .map_err(|_| "NATS did not answer".to_owned())??;
    let mut names = Vec::new();
    loop {
        let r = nats
            .request(
                "$JS.API.STREAM.NAMES",
                &json!({ "offset": names.len() }).to_string(),
            )
            .await?;
        let page: Vec<String> = r["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let total = r["total"].as_u64().unwrap_or(0) as usize;
        let done = page.is_empty();
        names.extend(page);
        if done || names.len() >= total {
            break;
        }
    }
    let mut deleted = 0;
    for name in names {
        if name.starts_with(&format!("{prefix}_")) || name.starts_with(&format!("KV_{prefix}_")) {
            let r = nats
                .request(&format!("$JS.API.STREAM.DELETE.{name}"), "")
                .await?;
            if r["success"] == true {
                deleted += 1;
            } else {
                return Err(format!("deleting {name}: {r}"));
            }
        }
    }
    Ok(deleted)
}

/// Just enough of NATS's client protocol for JetStream API requests.
struct Nats {
    read: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Nats {
    const INBOX: &'static str = "_INBOX.yunbench";

    async fn connect() -> Result<Nats, String> {
        use tokio::io::AsyncWriteExt as _;
        let stream = tokio::net::TcpStream::connect("127.0.0.1:4222")
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(
                format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\n",
                    Self::INBOX
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Nats {
            read: tokio::io::BufReader::new(read),
            write,
        })
    }

    /// Publishes `payload` to `subject` and returns the JSON of the reply.
    async fn request(&mut self, subject: &str, payload: &str) -> Result<Value, String> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let e = |e: std::io::Error| e.to_string();
        self.write
            .write_all(
                format!(
                    "PUB {subject} {} {}\r\n{payload}\r\n",
                    Self::INBOX,
                    payload.len()
                )
                .as_bytes(),
            )
            .await
            .map_err(e)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline.into(), self.read.read_line(&mut line))
                .await
                .map_err(|_| format!("no reply to {subject}"))?
                .map_err(e)?;
            if n == 0 {
                return Err("NATS closed the connection".into());
            }
            if line.starts_with("PING") {
                self.write.write_all(b"PONG\r\n").await.map_err(e)?;
            } else if line.starts_with("-ERR") {
                return Err(line.trim().to_owned());
            } else if line.starts_with("MSG ") {
                let len: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|l| l.parse().ok())
                    .ok_or_else(|| format!("a MSG line: {line:?}"))?;
                let mut body = vec![0; len + 2];
                self.read.read_exact(&mut body).await.map_err(e)?;
                body.truncate(len);
                return serde_json::from_slice(&body).map_err(|e| e.to_string());
            }
            // INFO, +OK, PONG: nothing to do.
        }
    }
}
