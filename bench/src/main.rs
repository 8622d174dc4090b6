//! Yun benchmarks. Every figure is printed next to a baseline measured in the same run
//! (these machines are noisy; absolute numbers drift, ratios much less). Bounded in
//! time and count; all traffic stays on 127.0.0.1.
//!
//! `bench/run` builds `yun` in release mode and runs this.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const CONNECTIONS: usize = 32;
const LOAD_SECONDS: u64 = 5;
const WARMUP_SECONDS: u64 = 1;
const LATENCY_REQUESTS: usize = 2000;
const COLD_STARTS: usize = 20;
const DEPLOYED_FUNCTIONS: usize = 100;

struct Yun {
    child: tokio::process::Child,
    url: String,
    env: String,
    id: String,
    key: String,
    dir: tempfile::TempDir,
}

/// The `yun` under test: `YUN_BIN`, else the release build.
fn yun_bin() -> PathBuf {
    std::env::var_os("YUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/yun"))
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `yun dev` on an empty data folder, with the test suites' SDK layer (no install).
async fn spawn_yun(bin: &Path, extra: &[&str]) -> Yun {
    let layer = repo().join("tests/compat");
    let mut args = vec!["--node-layer", layer.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    spawn_yun_bare(bin, &args).await
}

/// `yun dev` on an empty data folder with only `extra` as flags: without
/// `--node-layer`, it installs its SDK layer from the npm registry as a newcomer's does.
async fn spawn_yun_bare(bin: &Path, extra: &[&str]) -> Yun {
    spawn_yun_as(bin, "dev", extra, &[]).await
}

/// `yun COMMAND` (`dev`, or `serve` with its settings in `vars`) on an empty data folder
/// and a free loopback port, once it answers `/healthz`.
async fn spawn_yun_as(bin: &Path, command: &str, extra: &[&str], vars: &[(&str, String)]) -> Yun {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(bin)
        .args([command, "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("YUN_LOG", "warn")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start yun");
    let creds_path = dir.path().join("credentials.json");
    for _ in 0..400 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("yun {command} exited at start ({status})");
        }
        if let Ok(bytes) = std::fs::read(&creds_path) {
            let c: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let url = c["url"].as_str().unwrap_or_default().to_owned();
            if reqwest::get(format!("{url}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                return Yun {
                    child,
                    url,
                    env: s("envId"),
                    id: s("secretId"),
                    key: s("secretKey"),
                    dir,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("yun did not start");
}

impl Yun {
    async fn deploy(
        &self,
        http: &reqwest::Client,
        name: &str,
        files: &[(&str, &str)],
        settings: Value,
    ) {
        let mut body = settings.as_object().cloned().unwrap_or_default();
        body.insert(
            "code_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(yun_testkit::archive(files))),
        );
        let res = http
            .put(format!(
                "{}/api/v1/envs/{}/functions/{name}",
                self.url, self.env
            ))
            .basic_auth(&self.id, Some(&self.key))
            .json(&body)
            .send()
            .await
            .expect("deploy");
        assert!(
            res.status().is_success(),
            "deploy {name}: {}",
            res.text().await.unwrap_or_default()
        );
    }

    /// The wrk rows' function: `POST /{env}/json` answers `{msg, n: n + 1}` from its body.
    async fn deploy_json(&self, http: &reqwest::Client) {
        let handler = [(
            "index.js",
            "exports.main = async (event) => { const b = JSON.parse(event.body); return { msg: `hello ${b.name}`, n: b.n + 1 }; };",
        )];
        self.deploy(http, "json", &handler, json!({ "http_path": "/json" }))
            .await;
    }

    async fn invoke(&self, http: &reqwest::Client, name: &str) -> Value {
        yun_testkit::signed_admin_request(http, &self.url, &self.env, &self.id, &self.key, json!({ "action": "functions.invokeFunction", "function_name": name, "request_data": "{}" }))
            .send()
            .await
            .expect("invoke")
            .json()
            .await
            .expect("JSON")
    }

    fn rss_kb(&self) -> u64 {
        self.child.id().map_or(0, rss_kb)
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub struct Run {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// `clients` tasks running `op(i)` back to back for `seconds`; latencies of the ops that succeeded.
pub async fn drive<F, Fut>(clients: usize, seconds: u64, op: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, counter) = (op.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                if op(i).await {
                    lat.push(start.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    gather(tasks, seconds).await
}

/// Load tasks' latencies and error counts, as one run of `seconds`.
pub async fn gather(
    tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>,
    seconds: u64,
) -> Run {
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    all.sort();
    Run {
        ops_per_sec: all.len() as f64 / seconds as f64,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors,
    }
}

/// GET `url` from `connections` clients for `LOAD_SECONDS`, after a second of the same
/// load whose figures are dropped: the servers' JIT (and Yun's instances, started by the
/// load itself) are warm when the measured seconds start, as in any steady state.
async fn load(url: &str, connections: usize) -> Run {
    load::get_load(url, connections, WARMUP_SECONDS).await;
    load::get_load(url, connections, LOAD_SECONDS).await
}

/// One `wrk -t2 -c32 --latency` run, as its output gives it.
struct Wrk {
    rate: f64,
    requests: u64,
    p50: Duration,
    p99: Duration,
    /// Non-2xx/3xx answers plus socket errors (connect, read, write, timeout).
    errors: u64,
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let latency = |prefix| field(prefix).and_then(wrk_duration).unwrap_or_default();
    let socket_errors: u64 = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|e| e.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    Some(Wrk {
        rate: field("Requests/sec:")?.parse().ok()?,
        requests: out
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))?
            .0
            .parse()
            .ok()?,
        p50: latency("50%"),
        p99: latency("99%"),
        errors: socket_errors
            + field("Non-2xx or 3xx responses:").map_or(0, |v| v.parse().unwrap_or(0)),
    })
}

/// wrk's latencies: `795.00us`, `3.21ms`, `1.02s`.
fn wrk_duration(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let n: f64 = v[..split].parse().ok()?;
    let scale = match &v[split..] {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(n * scale))
}

/// Whether Debian's `wrk` is on PATH; says so when it is not.
async fn has_wrk() -> bool {
    let found = tokio::process::Command::new("wrk")
        .arg("--version")
        .output()
        .await
        .is_ok();
    if !found {
        println!("\n(wrk rows skipped: no `wrk` on PATH; apt-get install wrk)\n");
    }
    found
}

/// A wrk Lua script in a temporary file (deleted on drop).
fn wrk_script(lua: &str) -> Option<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .prefix("yun-bench-")
        .suffix(".lua")
        .tempfile()
        .ok()?;
    f.write_all(lua.as_bytes()).ok()?;
    Some(f)
}

/// The JSON POST of the wrk rows: `{msg, n}` answered from this body.
const WRK_JSON_POST: &str = "wrk.method = \"POST\"\nwrk.body = '{\"name\":\"yun\",\"n\":41}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n";

/// `wrk -t2 -c32 --latency` for `seconds` against `url` with `script`; None if wrk failed.
async fn wrk(script: &Path, url: &str, seconds: u64) -> Option<Wrk> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t2", "-c32", "--latency", &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .await
        .ok()?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// The warm row as outsiders measure it: `wrk` (Debian's), 32 connections, a POST with
/// a JSON body that the handler parses and answers from, bare Node and Yun interleaved.
async fn wrk_rows(bare_url: &str, yun: &Yun, http: &reqwest::Client) {
    if !has_wrk().await {
        return;
    }
    yun.deploy_json(http).await;
    let Some(script) = wrk_script(WRK_JSON_POST) else {
        return;
    };
    let targets = [
        ("bare Node http (1 process)", bare_url.to_owned()),
        ("Yun HTTP function", format!("{}/{}/json", yun.url, yun.env)),
    ];
    // One unmeasured second each, so Yun's instances are started and warm, as for the
    // lean client's rows.
    for (_, url) in &targets {
        wrk(script.path(), url, WARMUP_SECONDS).await;
    }
    println!(
        "\n## wrk -t2 -c32, POST with a JSON body, {LOAD_SECONDS} s each, 2 interleaved rounds"
    );
    println!("| | req/s | ratio | p99 |\n|---|---|---|---|");
    for _ in 0..2 {
        let mut base = None;
        for (name, url) in &targets {
            match wrk(script.path(), url, LOAD_SECONDS).await {
                Some(w) => {
                    let ratio = w.rate / *base.get_or_insert(w.rate);
                    println!("| {name} | {:.0} | {ratio:.2}× | {} |", w.rate, ms(w.p99));
                }
                None => println!("| {name} | wrk failed | | |"),
            }
        }
    }
}

/// `bench/bare-node.js` on a free port with `workers` processes (`node:cluster` when more
/// than one); its base URL once it answers.
async fn spawn_bare_node(workers: usize) -> (tokio::process::Child, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let child = tokio::process::Command::new("node")
        .arg(repo().join("bench/bare-node.js"))
        .arg(port.to_string())
        .arg(workers.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/hello")).await;
    (child, url)
}

/// Stops a child with `signal` (`kill -SIGNAL PID`), so it can stop its own children, and
/// waits for it: at most 5 s, then SIGKILL.
async fn stop(child: &mut tokio::process::Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

async fn wait_http(url: &str) {
    for _ in 0..200 {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} did not come up");
}

mod auth;
mod backup;
mod cluster;
mod db;
mod events;
mod load;
mod peers;
mod queries;
mod storage;

// The same allocator as yun, so the load generator takes no more CPU than it must.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("db") => {
            let yun = spawn_yun(&yun_bin(), &[]).await;
            db::run(&yun).await;
        }
        Some("storage") => {
            let yun = spawn_yun(&yun_bin(), &[]).await;
            storage::run(&yun).await;
        }
        Some("functions") => functions().await,
        Some("sandbox") => sandbox().await,
        Some("metrics") => metrics_overhead().await,
        Some("backup") => {
            let yun = spawn_yun(&yun_bin(), &[]).await;
            backup::run(&yun).await;
        }
        Some("peers") => peers::run().await,
        Some("cluster") => cluster::run().await,
        Some("queries") => {
            let yun = spawn_yun(&yun_bin(), &[]).await;
            queries::run(&yun).await;
        }
        Some("events") => events::run().await,
        Some("first-start") => first_start(&yun_bin(), &reqwest::Client::new()).await,
        Some("auth") => {
            let yun = spawn_yun(&yun_bin(), &[]).await;
            auth::run(&yun).await;
        }
        None => {
            functions().await;
            first_start(&yun_bin(), &reqwest::Client::new()).await;
            sandbox().await;
            let yun = spawn_yun(&yun_bin(), &[]).await;
            db::run(&yun).await;
            storage::run(&yun).await;
            auth::run(&yun).await;
        }
        // For profiling: the warm load alone, against any URL.
        Some("load") => {
            let usage = "usage: yun-bench load URL [CONNECTIONS]";
            let url = std::env::args().nth(2).expect(usage);
            let connections = std::env::args()
                .nth(3)
                .map_or(CONNECTIONS, |c| c.parse().expect(usage));
            let l = load(&url, connections).await;
            println!(
                "{:.0} req/s, p50 {}, p99 {}, {} errors",
                l.ops_per_sec,
                ms(l.p50),
                ms(l.p99),
                l.errors
            );
        }
        Some(other) => {
            eprintln!("usage: yun-bench [functions|first-start|sandbox|metrics|backup|peers|cluster|queries|events|db|storage|auth|load URL [CONNECTIONS]] (got {other:?})")
        }
    }
}

/// A wx-server-sdk function started cold `COLD_STARTS` times after a deploy and as many
/// after an idle reap (Yun started with `--idle-timeout 1s`): client-side latencies,
/// sorted.
async fn cold_starts(yun: &Yun, http: &reqwest::Client) -> (Vec<Duration>, Vec<Duration>) {
    let sdk_fn = [("index.js", "const cloud = require('wx-server-sdk');\ncloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });\nexports.main = async () => 'ok';\n")];
    let mut after_deploy = Vec::new();
    for i in 0..COLD_STARTS {
        yun.deploy(
            http,
            "cold",
            &sdk_fn,
            json!({ "env_vars": { "ROUND": i.to_string() } }),
        )
        .await;
        // Let the stem-cell pool refill, as it does between real deploys.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let start = Instant::now();
        let r = yun.invoke(http, "cold").await;
        after_deploy.push(start.elapsed());
        assert_eq!(r["data"]["response_data"], "\"ok\"", "{r}");
    }
    let mut after_reap = Vec::new();
    for _ in 0..COLD_STARTS {
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let start = Instant::now();
        let r = yun.invoke(http, "cold").await;
        after_reap.push(start.elapsed());
        assert_eq!(r["data"]["response_data"], "\"ok\"", "{r}");
    }
    after_deploy.sort();
    after_reap.sort();
    (after_deploy, after_reap)
}

/// The median of same-run ratios (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    (values[(values.len() - 1) / 2] + values[values.len() / 2]) / 2.0
}

/// Rounds of warm load per mode in the sandbox comparison, interleaved.
const SANDBOX_ROUNDS: usize = 4;

/// The instance sandbox's cost: `--sandbox off` and `--sandbox on` side by side in one
/// run, warm load in interleaved rounds (the machine's speed drifts from one run to the
/// next more than the difference measured), then cold starts.
async fn sandbox() {
    let bin = yun_bin();
    let http = reqwest::Client::new();
    let handler = [("index.js", "exports.main = async () => ({ ok: true })")];
    let mut yuns = Vec::new();
    for mode in ["off", "on"] {
        let yun = spawn_yun(&bin, &["--sandbox", mode, "--idle-timeout", "1s"]).await;
        yun.deploy(
            &http,
            "hello",
            &handler,
            json!({ "http_path": "/hello", "max_instances": 10 }),
        )
        .await;
        yuns.push((mode, yun));
    }
    println!("## Instance sandbox: off vs on, same run");
    println!(
        "| round | off req/s | on req/s | on/off | off p99 | on p99 |\n|---|---|---|---|---|---|"
    );
    let mut ratios = Vec::new();
    for round in 1..=SANDBOX_ROUNDS {
        let mut runs = Vec::new();
        for (_, yun) in &yuns {
            runs.push(load(&format!("{}/{}/hello", yun.url, yun.env), CONNECTIONS).await);
        }
        let ratio = runs[1].ops_per_sec / runs[0].ops_per_sec;
        ratios.push(ratio);
        println!(
            "| {round} | {:.0} | {:.0} | {ratio:.2}× | {} | {} |",
            runs[0].ops_per_sec,
            runs[1].ops_per_sec,
            ms(runs[0].p99),
            ms(runs[1].p99)
        );
    }
    let median = median(&mut ratios);
    println!(
        "\nwarm throughput, sandbox on / off, median of {SANDBOX_ROUNDS} rounds: {median:.2}×\n"
    );
    println!("| sandbox | cold p50 after deploy | after reap | max |\n|---|---|---|---|");
    for (mode, yun) in &yuns {
        let (after_deploy, after_reap) = cold_starts(yun, &http).await;
        println!(
            "| {mode} | {} | {} | {} |",
            ms(percentile(&after_deploy, 0.5)),
            ms(percentile(&after_reap, 0.5)),
            ms(after_reap
                .last()
                .copied()
                .unwrap_or_default()
                .max(after_deploy.last().copied().unwrap_or_default()))
        );
    }
}

/// Rounds of wrk per mode in the metrics comparison, interleaved.
const METRICS_ROUNDS: usize = 6;

/// What metrics and traces cost: `yun dev --no-metrics --no-traces` and `yun dev` (both
/// on, metrics scraped once a second as Prometheus would) side by side, `wrk` with the
/// JSON POST in interleaved rounds; the median ratio is the figure.
async fn metrics_overhead() {
    if !has_wrk().await {
        return;
    }
    let Some(script) = wrk_script(WRK_JSON_POST) else {
        return;
    };
    let bin = yun_bin();
    let http = reqwest::Client::new();
    let off = spawn_yun(&bin, &["--no-metrics", "--no-traces"]).await;
    let on = spawn_yun(&bin, &[]).await;
    for yun in [&off, &on] {
        yun.deploy_json(&http).await;
    }
    let scraper = {
        let (url, id, key, http) = (
            format!("{}/metrics", on.url),
            on.id.clone(),
            on.key.clone(),
            http.clone(),
        );
        tokio::spawn(async move {
            let mut scrapes = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match http.get(&url).basic_auth(&id, Some(&key)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        scrapes += 1;
                    }
                    other => {
                        eprintln!("metrics scrape failed after {scrapes}: {other:?}");
                        return;
                    }
                }
            }
        })
    };
    let targets = [("off", &off), ("on", &on)];
    for (_, yun) in &targets {
        wrk(
            script.path(),
            &format!("{}/{}/json", yun.url, yun.env),
            WARMUP_SECONDS,
        )
        .await;
    }
    println!("## Metrics and traces: off vs on (scraped every second), wrk -t2 -c32 JSON POST, {LOAD_SECONDS} s each");
    println!(
        "| round | off req/s | on req/s | on/off | off p99 | on p99 |\n|---|---|---|---|---|---|"
    );
    let mut ratios = Vec::new();
    for round in 1..=METRICS_ROUNDS {
        // Which goes first alternates: the VM's drift within a round favours neither.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        let mut runs = [None, None];
        for i in order {
            let yun = targets[i].1;
            runs[i] = wrk(
                script.path(),
                &format!("{}/{}/json", yun.url, yun.env),
                LOAD_SECONDS,
            )
            .await;
        }
        let (Some(a), Some(b)) = (&runs[0], &runs[1]) else {
            println!("| {round} | wrk failed | | | | |");
            continue;
        };
        let ratio = b.rate / a.rate;
        ratios.push(ratio);
        println!(
            "| {round} | {:.0} | {:.0} | {ratio:.3}× | {} | {} |",
            a.rate,
            b.rate,
            ms(a.p99),
            ms(b.p99)
        );
    }
    scraper.abort();
    if !ratios.is_empty() {
        let median = median(&mut ratios);
        println!(
            "\nwarm throughput, metrics and traces on / off, median of {} rounds: {median:.3}× (overhead {:.1}%)\n",
            ratios.len(),
            (1.0 - median) * 100.0
        );
    }
}

async fn functions() {
    let bin = yun_bin();
    let http = reqwest::Client::new();
    println!("# Yun benchmarks ({})\n", bin.display());

    // ---- warm: HTTP function vs bare Node ----
    let (mut bare, bare_url) = spawn_bare_node(1).await;
    let bare_url = format!("{bare_url}/hello");

    let yun = spawn_yun(&bin, &[]).await;
    let handler = [("index.js", "exports.main = async () => ({ ok: true })")];
    yun.deploy(&http, "hello", &handler, json!({ "http_path": "/hello" }))
        .await;
    yun.deploy(
        &http,
        "hello1",
        &handler,
        json!({ "http_path": "/hello1", "max_instances": 1 }),
    )
    .await;
    let yun_url = format!("{}/{}/hello", yun.url, yun.env);
    let yun1_url = format!("{}/{}/hello1", yun.url, yun.env);

    // Sequential latency: what Yun adds to one request.
    let sequential = |url: String| async move {
        let client = reqwest::Client::new();
        let mut lat = Vec::with_capacity(LATENCY_REQUESTS);
        for i in 0..LATENCY_REQUESTS + 200 {
            let start = Instant::now();
            let r = client.get(&url).send().await.expect("request");
            let _ = r.bytes().await;
            if i >= 200 {
                lat.push(start.elapsed());
            }
        }
        lat.sort();
        lat
    };
    let bare_seq = sequential(bare_url.clone()).await;
    let yun_seq = sequential(yun_url.clone()).await;
    println!("## Warm HTTP function, 1 connection, {LATENCY_REQUESTS} requests");
    println!("| | p50 | p99 |\n|---|---|---|");
    println!(
        "| bare Node http | {} | {} |",
        ms(percentile(&bare_seq, 0.5)),
        ms(percentile(&bare_seq, 0.99))
    );
    println!(
        "| Yun | {} | {} |",
        ms(percentile(&yun_seq, 0.5)),
        ms(percentile(&yun_seq, 0.99))
    );
    println!(
        "| Yun added | {} | {} |\n",
        ms(percentile(&yun_seq, 0.5).saturating_sub(percentile(&bare_seq, 0.5))),
        ms(percentile(&yun_seq, 0.99).saturating_sub(percentile(&bare_seq, 0.99)))
    );

    let bare_load = load(&bare_url, CONNECTIONS).await;
    let yun_load = load(&yun_url, CONNECTIONS).await;
    let yun1_load = load(&yun1_url, CONNECTIONS).await;
    println!(
        "## Warm HTTP function, {CONNECTIONS} connections, {LOAD_SECONDS} s each (after {WARMUP_SECONDS} s unmeasured)"
    );
    println!("| | req/s | ratio | p50 | p99 | errors |\n|---|---|---|---|---|---|");
    for (name, l) in [
        ("bare Node http (1 process)", &bare_load),
        ("Yun, max 10 instances", &yun_load),
        ("Yun, max 1 instance", &yun1_load),
    ] {
        println!(
            "| {name} | {:.0} | {:.2}× | {} | {} | {} |",
            l.ops_per_sec,
            l.ops_per_sec / bare_load.ops_per_sec,
            ms(l.p50),
            ms(l.p99),
            l.errors
        );
    }
    wrk_rows(&bare_url, &yun, &http).await;
    let _ = bare.kill().await;

    // ---- memory ----
    // Each instance reports its own RSS: inside the sandbox its pid is its namespace's.
    let instance_rss: Vec<u64> = {
        let mut rss = Vec::new();
        let probe = [(
            "index.js",
            "exports.main = async () => Math.round(process.memoryUsage().rss / 1024)",
        )];
        for name in ["probe-a", "probe-b", "probe-c"] {
            yun.deploy(&http, name, &probe, json!({})).await;
            let env = yun.invoke(&http, name).await;
            rss.push(
                env["data"]["response_data"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            );
        }
        rss
    };
    println!("\n## Memory");
    println!("| | RSS |\n|---|---|");
    println!(
        "| warm idle instance (trivial function) | {} MiB |",
        instance_rss.iter().sum::<u64>() / instance_rss.len().max(1) as u64 / 1024
    );
    let before = yun.rss_kb();
    let started = Instant::now();
    for i in 0..DEPLOYED_FUNCTIONS {
        yun.deploy(&http, &format!("f{i:03}"), &handler, json!({}))
            .await;
    }
    let deploy_time = started.elapsed();
    println!(
        "| Yun process, before deploying {DEPLOYED_FUNCTIONS} more functions | {} MiB |",
        before / 1024
    );
    println!(
        "| Yun process, after ({} deploys in {:.1} s) | {} MiB |",
        DEPLOYED_FUNCTIONS,
        deploy_time.as_secs_f64(),
        yun.rss_kb() / 1024
    );
    drop(yun);

    // ---- cold start ----
    let node_spawn = {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let status = tokio::process::Command::new("node")
                .args(["-e", "require('wx-server-sdk')"])
                .current_dir(repo().join("tests/compat"))
                .status()
                .await
                .expect("node");
            assert!(status.success());
            samples.push(start.elapsed());
        }
        samples.sort();
        samples
    };
    let yun = spawn_yun(&bin, &["--idle-timeout", "1s"]).await;
    let (after_deploy, after_reap) = cold_starts(&yun, &http).await;
    let mut warm = Vec::new();
    for _ in 0..COLD_STARTS {
        let start = Instant::now();
        yun.invoke(&http, "cold").await;
        warm.push(start.elapsed());
    }
    warm.sort();
    println!(
        "\n## Cold start of a wx-server-sdk function (signed /admin call, client-side latency)"
    );
    println!("| | p50 | max |\n|---|---|---|");
    let rows = [
        (
            "baseline: `node -e \"require('wx-server-sdk')\"`".to_owned(),
            &node_spawn,
        ),
        (
            format!("Yun first call after deploy (n={COLD_STARTS})"),
            &after_deploy,
        ),
        (
            format!("Yun first call after idle reap (n={COLD_STARTS})"),
            &after_reap,
        ),
        ("Yun warm call, same function".to_owned(), &warm),
    ];
    for (label, samples) in rows {
        let max = samples.last().copied().unwrap_or(Duration::ZERO);
        println!(
            "| {label} | {} | {} |",
            ms(percentile(samples, 0.5)),
            ms(max)
        );
    }
    println!(
        "\ncold start p50 vs node+require baseline: {:.1}× faster",
        percentile(&node_spawn, 0.5).as_secs_f64() / percentile(&after_reap, 0.5).as_secs_f64()
    );
}

/// A newcomer's first minute: `yun dev` on an empty data folder with no layer given, so
/// it installs `wx-server-sdk` from the npm registry while a `wx-server-sdk` function is
/// deployed and called at once; then the cold starts of [`cold_starts`] on that server.
async fn first_start(bin: &Path, http: &reqwest::Client) {
    let start = Instant::now();
    let yun = spawn_yun_bare(bin, &["--idle-timeout", "1s"]).await;
    let answering = start.elapsed();
    let sdk_fn = [("index.js", "const cloud = require('wx-server-sdk');\ncloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });\nexports.main = async () => 'ok';\n")];
    // The deploy waits for the layer install.
    yun.deploy(http, "cold", &sdk_fn, json!({})).await;
    let deployed = start.elapsed();
    let first = Instant::now();
    let r = yun.invoke(http, "cold").await;
    let first_call = first.elapsed();
    assert_eq!(
        r["data"]["response_data"], "\"ok\"",
        "the first call after a first start: {r}"
    );
    let ready = loop {
        let r = http.get(format!("{}/readyz", yun.url)).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (after_deploy, after_reap) = cold_starts(&yun, http).await;
    println!(
        "\n## First start on an empty data folder (the SDK layer installs from the npm registry)"
    );
    println!("| since `yun dev` started | |\n|---|---|");
    println!("| answering `/healthz` | {} |", ms(answering));
    println!(
        "| deploy of a wx-server-sdk function sent at once, done (it waits for the layer) | {} |",
        ms(deployed)
    );
    println!("| `/readyz` 200 | {} |", ms(ready));
    println!("| its first call (succeeded) | {} |", ms(first_call));
    println!(
        "| later cold starts, p50 after deploy / after idle reap (n={COLD_STARTS}, target ≤ 25 ms) | {} / {} |",
        ms(percentile(&after_deploy, 0.5)),
        ms(percentile(&after_reap, 0.5))
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn wrk_output_gives_the_rate_latencies_and_errors() {
        let out = "Running 5s test @ http://127.0.0.1:1/x\n  2 threads and 32 connections\n  Latency Distribution\n     50%  795.00us\n     75%    1.10ms\n     99%    3.21ms\n  120000 requests in 5.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  24012.34\nTransfer/sec:      4.00MB\n";
        let w = super::parse_wrk(out).expect("parsed");
        assert_eq!(w.rate, 24012.34);
        assert_eq!(w.requests, 120000);
        assert_eq!(w.p50, Duration::from_micros(795));
        assert_eq!(w.p99, Duration::from_micros(3210));
        assert_eq!(w.errors, 7);
        assert!(super::parse_wrk("connection refused").is_none());
    }
}
