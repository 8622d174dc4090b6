//! `yun-bench peers`: Yun against its peers in one run, all on 127.0.0.1. Every row is
//! `wrk -t2 -c32 --latency` for `LOAD_SECONDS`, after one unmeasured second per target,
//! in `ROUNDS` interleaved rounds (the machine's speed drifts between minutes; the ratios
//! within a round are the figures):
//! - hello, a JSON POST answered `{msg, n: n + 1}`: bare Node `http` (1 process), bare
//!   Node `cluster` (2 workers), Parse Server Cloud Code, a Yun HTTP function;
//! - like: a random one of 100 photos gets `likes + 1` and is read back, in a Yun function
//!   through `wx-server-sdk` and in Parse Cloud Code;
//! - the CPU each side spends per request in those rows (`/proc/PID/stat`), hence the CPU
//!   of one SDK call inside a Yun function.
//!
//! Parse Server (`bench/peers`, the version pinned by its lock) is installed with `npm ci`
//! outside the repo and runs on the local PostgreSQL; if it cannot be installed or
//! started, its rows say why and the others run.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    has_wrk, ms, repo, spawn_bare_node, spawn_yun, stop, wrk, wrk_script, yun_bin, Wrk,
    LOAD_SECONDS, WARMUP_SECONDS, WRK_JSON_POST,
};

pub(crate) const ROUNDS: usize = 3;
pub(crate) const PHOTOS: usize = 100;
pub(crate) const APP_ID: &str = "yun-bench";
pub(crate) const MASTER_KEY: &str = "yun-bench-master-key";
const PARSE_DB: &str = "yun_bench_parse";

pub(crate) const LIKE_FN: &str = "const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();
const _ = db.command;
exports.main = async (event) => {
  const { id } = JSON.parse(event.body);
  await db.collection('photos').doc(id).update({ data: { likes: _.inc(1) } });
  const r = await db.collection('photos').doc(id).get();
  return { likes: r.data.likes };
};
";

/// The feed query of issue 16 over this many documents `{n, album, s}`.
pub(crate) const FEED_ITEMS: u64 = 10_000;

pub(crate) const FEED_FN: &str = "const cloud = require('wx-server-sdk');
cloud.init({ env: cloud.DYNAMIC_CURRENT_ENV });
const db = cloud.database();
const _ = db.command;
exports.main = async (event) => {
  const { cls } = JSON.parse(event.body);
  const r = await db.collection(cls).where({ n: _.gt(500) }).orderBy('n', 'desc').limit(20).get();
  return { count: r.data.length, first: r.data.length ? r.data[0].n : null };
};
";

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Hello,
    Like,
    Feed,
}

/// Whose CPU is sampled around a target's measured runs.
#[derive(Clone)]
pub(crate) enum Cpu {
    None,
    /// The `yun` process; its descendants are the function instances (and their sandbox
    /// inits, stem cells).
    Yun(u32),
    /// Parse's Node process (and any descendants); PostgreSQL's backends serving its
    /// database are looked up per run.
    Parse(u32),
    /// A `yun` on PostgreSQL (`yun serve`): the process and its instances as for `Yun`,
    /// and the PostgreSQL backends whose `application_name` is this (set in its database
    /// URL), looked up per run.
    YunPostgres(u32, String),
}

impl Cpu {
    /// Which `pg_stat_activity` rows are this target's PostgreSQL backends.
    fn backends(&self) -> Option<String> {
        match self {
            Cpu::None | Cpu::Yun(_) => None,
            Cpu::Parse(_) => Some(format!("datname = '{PARSE_DB}'")),
            Cpu::YunPostgres(_, app) => Some(format!("application_name = '{app}'")),
        }
    }
}

struct Target {
    row: Row,
    name: &'static str,
    url: String,
    script: tempfile::NamedTempFile,
    cpu: Cpu,
}

/// What one measured run gave.
pub(crate) struct Sample {
    pub(crate) wrk: Wrk,
    cpu: Option<CpuUse>,
}

pub async fn run() {
    println!("# Yun and its peers, one run, 127.0.0.1 only\n");
    if !has_wrk().await {
        return;
    }
    let http = reqwest::Client::new();
    let tck = clock_ticks().await;
    let node_version = command_line("node", &["--version"]).await;

    let (mut bare1, bare1_url) = spawn_bare_node(1).await;
    let (mut bare2, bare2_url) = spawn_bare_node(2).await;

    let bin = yun_bin();
    let mut yun = spawn_yun(&bin, &[]).await;
    yun.deploy_json(&http).await;
    yun.deploy(
        &http,
        "like",
        &[("index.js", LIKE_FN)],
        json!({ "http_path": "/like", "max_instances": 10 }),
    )
    .await;
    yun.deploy(
        &http,
        "feed",
        &[("index.js", FEED_FN)],
        json!({ "http_path": "/feed", "max_instances": 10 }),
    )
    .await;
    let yun_seeded = seed_yun(&yun, &http).await;
    let feed_seeded = seed_yun_feed(&yun, &http, &["items", "items_ix"]).await;
    let yun_pid = yun.child.id().unwrap_or(0);

    let parse = match Parse::start(&http).await {
        Ok(p) => match p.seed_feed(&http, &["Item", "ItemIx"]).await {
            Ok(()) => Some(p),
            Err(why) => {
                println!("**Parse Server rows skipped**: seeding the feed: {why}\n");
                p.stop().await;
                None
            }
        },
        Err(why) => {
            println!("**Parse Server rows skipped**: {why}\n");
            None
        }
    };

    let hello_lua = |headers: &str| format!("{WRK_JSON_POST}{headers}");
    let parse_headers = parse_headers();
    let yun_ids: Vec<String> = (0..PHOTOS).map(|i| format!("p{i}")).collect();

    let mut specs: Vec<(Row, &'static str, String, String, Cpu)> = vec![
        (
            Row::Hello,
            "bare Node http, 1 process",
            format!("{bare1_url}/hello"),
            hello_lua(""),
            Cpu::None,
        ),
        (
            Row::Hello,
            "bare Node cluster, 2 workers",
            format!("{bare2_url}/hello"),
            hello_lua(""),
            Cpu::None,
        ),
    ];
    if let Some(p) = &parse {
        specs.push((
            Row::Hello,
            "Parse Server Cloud Code",
            format!("{}/functions/hello", p.url),
            hello_lua(&parse_headers),
            Cpu::Parse(p.pid),
        ));
    }
    specs.push((
        Row::Hello,
        "Yun HTTP function",
        format!("{}/{}/json", yun.url, yun.env),
        hello_lua(""),
        Cpu::Yun(yun_pid),
    ));
    if yun_seeded {
        specs.push((
            Row::Like,
            "Yun function, wx-server-sdk",
            format!("{}/{}/like", yun.url, yun.env),
            like_lua("", &yun_ids),
            Cpu::Yun(yun_pid),
        ));
    }
    if feed_seeded {
        for (name, cls) in [
            ("Yun function, no index", "items"),
            ("Yun function, index (n)", "items_ix"),
        ] {
            specs.push((
                Row::Feed,
                name,
                format!("{}/{}/feed", yun.url, yun.env),
                feed_lua("", cls),
                Cpu::Yun(yun_pid),
            ));
        }
    }
    if let Some(p) = &parse {
        for (name, cls) in [
            ("Parse Cloud Code, no index", "Item"),
            ("Parse Cloud Code, index (n)", "ItemIx"),
        ] {
            specs.push((
                Row::Feed,
                name,
                format!("{}/functions/feed", p.url),
                feed_lua(&parse_headers, cls),
                Cpu::Parse(p.pid),
            ));
        }
    }
    if let Some(p) = &parse {
        specs.push((
            Row::Like,
            "Parse Server Cloud Code",
            format!("{}/functions/likePhoto", p.url),
            like_lua(&parse_headers, &p.photo_ids),
            Cpu::Parse(p.pid),
        ));
    }

    // Each target answers correctly once before any load.
    let mut targets = Vec::new();
    println!("| target | row | check: one request's answer |\n|---|---|---|");
    for (row, name, url, lua, cpu) in specs {
        let is_parse = matches!(cpu, Cpu::Parse(_));
        let body = match (row, &parse) {
            (Row::Hello, _) => json!({"name": "yun", "n": 41}),
            (Row::Like, Some(p)) if is_parse => json!({ "id": p.photo_ids[0] }),
            (Row::Like, _) => json!({ "id": yun_ids[0] }),
            (Row::Feed, _) => json!({ "cls": feed_class(name) }),
        };
        let mut req = http.post(&url).json(&body);
        if is_parse {
            req = req.header("X-Parse-Application-Id", APP_ID);
        }
        let answer = match req.send().await {
            Ok(r) => format!(
                "{} {}",
                r.status().as_u16(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => format!("error: {e}"),
        };
        let v: Value = answer
            .split_once(' ')
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let v = if is_parse { &v["result"] } else { &v };
        let ok = match row {
            Row::Hello => v["n"] == 42 && v["msg"] == "hello yun",
            Row::Like => v["likes"].as_u64().is_some_and(|n| n >= 1),
            Row::Feed => v["count"] == 20 && v["first"] == FEED_ITEMS - 1,
        };
        let row_name = match row {
            Row::Hello => "hello",
            Row::Like => "like",
            Row::Feed => "feed",
        };
        println!(
            "| {name} | {row_name} | {} {} |",
            answer.replace('|', "\\|"),
            if ok { "(ok)" } else { "**(wrong: dropped)**" }
        );
        let Some(script) = wrk_script(&lua) else {
            println!("(cannot write a wrk script for {name})");
            continue;
        };
        if ok {
            targets.push(Target {
                row,
                name,
                url,
                script,
                cpu,
            });
        }
    }

    // One unmeasured second each: JIT warm, Yun's instances started.
    for t in &targets {
        wrk(t.script.path(), &t.url, WARMUP_SECONDS).await;
    }
    let mut samples: Vec<Vec<Option<Sample>>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (t, out) in targets.iter().zip(&mut samples) {
            out.push(measure(t.script.path(), &t.url, &t.cpu, LOAD_SECONDS).await);
        }
    }

    let parse_mode = parse.as_ref().map_or(String::new(), |p| {
        format!(
            "Parse Server {} in one Node process (express + ParseServer, no cluster), \
             directAccess (Cloud Code's queries in-process), PostgreSQL {} on 127.0.0.1",
            p.version, p.pg_version
        )
    });
    println!(
        "\nwrk -t2 -c32 --latency, {LOAD_SECONDS} s per target, {ROUNDS} interleaved rounds, \
         after {WARMUP_SECONDS} s unmeasured per target; node {node_version}; yun {}.",
        bin.display()
    );
    if !parse_mode.is_empty() {
        println!("{parse_mode}.");
    }
    for (row, title) in [
        (
            Row::Hello,
            "hello: JSON POST `{\"name\":\"yun\",\"n\":41}` answered `{msg, n: n + 1}`",
        ),
        (
            Row::Like,
            "like: a random one of 100 photos, `likes + 1` then read back",
        ),
        (
            Row::Feed,
            "feed: `where({n: _.gt(500)}).orderBy('n', 'desc').limit(20)` over 10,000 documents",
        ),
    ] {
        println!("\n## {title}\n");
        println!("| target | req/s per round | p50 per round | p99 per round | errors |\n|---|---|---|---|---|");
        for (t, s) in targets.iter().zip(&samples) {
            if t.row != row {
                continue;
            }
            let per_round = |f: &dyn Fn(&Sample) -> String| {
                s.iter()
                    .map(|x| x.as_ref().map_or("failed".into(), f))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let errors: u64 = s.iter().flatten().map(|x| x.wrk.errors).sum();
            println!(
                "| {} | {} | {} | {} | {errors} |",
                t.name,
                per_round(&|x| format!("{:.0}", x.wrk.rate)),
                per_round(&|x| ms(x.wrk.p50)),
                per_round(&|x| ms(x.wrk.p99)),
            );
        }
        let ratios: &[(&str, &str, &str)] = match row {
            Row::Hello => &[
                (
                    "Yun / bare Node http, 1 process",
                    "Yun HTTP function",
                    "bare Node http, 1 process",
                ),
                (
                    "Yun / bare Node cluster, 2 workers",
                    "Yun HTTP function",
                    "bare Node cluster, 2 workers",
                ),
                (
                    "Yun / Parse Server",
                    "Yun HTTP function",
                    "Parse Server Cloud Code",
                ),
            ],
            Row::Like => &[(
                "Yun / Parse Server",
                "Yun function, wx-server-sdk",
                "Parse Server Cloud Code",
            )],
            Row::Feed => &[
                (
                    "Yun / Parse Server, no index",
                    "Yun function, no index",
                    "Parse Cloud Code, no index",
                ),
                (
                    "Yun / Parse Server, index (n)",
                    "Yun function, index (n)",
                    "Parse Cloud Code, index (n)",
                ),
            ],
        };
        println!("\n| req/s ratio | per round | median |\n|---|---|---|");
        for (label, num, den) in ratios {
            let find = |name: &str| {
                targets
                    .iter()
                    .position(|t| t.row == row && t.name == name)
                    .map(|i| &samples[i])
            };
            let (Some(a), Some(b)) = (find(num), find(den)) else {
                println!("| {label} | (not measured) | |");
                continue;
            };
            let mut per: Vec<f64> = a
                .iter()
                .zip(b)
                .filter_map(|(a, b)| Some(a.as_ref()?.wrk.rate / b.as_ref()?.wrk.rate))
                .collect();
            let shown: Vec<String> = per.iter().map(|r| format!("{r:.2}×")).collect();
            println!(
                "| {label} | {} | {} |",
                shown.join(" / "),
                median_text(&mut per)
            );
        }
    }

    print_cpu(&targets, &samples, tck);

    stop(&mut bare1, "TERM").await;
    stop(&mut bare2, "TERM").await;
    if let Some(p) = parse {
        p.stop().await;
    }
    // Ctrl-C: yun stops its instances before it exits.
    stop(&mut yun.child, "INT").await;
}

/// A wrk script's lines that send Parse's application id.
pub(crate) fn parse_headers() -> String {
    format!("wrk.headers[\"X-Parse-Application-Id\"] = \"{APP_ID}\"\n")
}

/// The like row's wrk script: a JSON POST `{"id": …}` of a random one of `ids`.
pub(crate) fn like_lua(headers: &str, ids: &[String]) -> String {
    let ids: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{headers}\
         local ids = {{{}}}\n\
         request = function()\n  \
         local body = '{{\"id\":\"' .. ids[math.random(#ids)] .. '\"}}'\n  \
         return wrk.format(\"POST\", nil, nil, body)\nend\n",
        ids.join(",")
    )
}

/// The feed row's wrk script: a JSON POST `{"cls": CLS}`.
pub(crate) fn feed_lua(headers: &str, cls: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"cls\":\"{cls}\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{headers}"
    )
}

pub(crate) fn median_text(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("{:.2}×", crate::median(v))
}

/// One measured wrk run of `seconds`, with the CPU of the target's processes around it.
pub(crate) async fn measure(script: &Path, url: &str, cpu: &Cpu, seconds: u64) -> Option<Sample> {
    let filter = cpu.backends();
    let backends_before = match &filter {
        Some(f) => pg_backends(f).await,
        None => Vec::new(),
    };
    let before = Snapshot::take();
    let wrk = wrk(script, url, seconds).await;
    let after = Snapshot::take();
    let mut cpu = match *cpu {
        Cpu::None => None,
        Cpu::Yun(pid) | Cpu::YunPostgres(pid, _) => Some(CpuUse::tree(&before, &after, pid, false)),
        Cpu::Parse(pid) => Some(CpuUse::tree(&before, &after, pid, true)),
    };
    if let (Some(u), Some(f)) = (&mut cpu, &filter) {
        u.add_backends(&before, &after, &backends_before, &pg_backends(f).await);
    }
    Some(Sample { wrk: wrk?, cpu })
}

// ---- CPU from /proc ----

/// One process as `/proc/PID/stat` shows it.
struct Proc {
    ppid: u32,
    /// utime + stime, clock ticks (all its threads).
    own: u64,
    /// cutime + cstime: what its reaped children used.
    reaped: u64,
}

struct Snapshot {
    procs: HashMap<u32, Proc>,
    /// The machine's busy ticks (all CPUs: user, nice, system, irq, softirq).
    busy: u64,
}

impl Snapshot {
    fn take() -> Snapshot {
        let mut procs = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(p) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                procs.insert(pid, p);
            }
        }
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<u64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq (steal is not ours)
                Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
            })
            .unwrap_or(0);
        Snapshot { procs, busy }
    }

    /// `root` and every process descended from it (ppid chains).
    fn tree(&self, root: u32) -> HashSet<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, p) in &self.procs {
            children.entry(p.ppid).or_default().push(pid);
        }
        let mut seen = HashSet::new();
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            if self.procs.contains_key(&pid) && seen.insert(pid) {
                todo.extend(children.get(&pid).into_iter().flatten());
            }
        }
        seen
    }

    fn own(&self, pid: u32) -> u64 {
        self.procs.get(&pid).map_or(0, |p| p.own)
    }
}

/// The fields after `(comm)`: state ppid … utime stime cutime cstime.
fn parse_stat(s: &str) -> Option<Proc> {
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Proc {
        ppid: f.get(1)?.parse().ok()?,
        own: n(11)? + n(12)?,
        reaped: n(13)? + n(14)?,
    })
}

/// CPU ticks spent during one measured run.
#[derive(Default, Clone)]
struct CpuUse {
    /// `yun` itself, or Parse's Node process and its descendants.
    main: u64,
    /// Yun: the descendants of `yun` (instances, their sandbox inits, stem cells).
    helpers: u64,
    /// PostgreSQL backends serving the target (Parse, a `yun serve`).
    db: u64,
    /// Everything the machine did, including the above (and wrk).
    machine: u64,
    /// Helper processes seen at the start and the end, started and gone in between.
    seen: [usize; 4],
    /// The same for the PostgreSQL backends.
    db_seen: [usize; 4],
}

impl CpuUse {
    /// The CPU of `root` and its tree. A process that exits is reaped by its parent, whose
    /// cutime/cstime then hold all it used: counting own + reaped over the tree at both
    /// ends counts the CPU of processes that started or ended in between too (those
    /// reaped by a process of the tree). With `whole`, the tree is all `main`.
    fn tree(a: &Snapshot, b: &Snapshot, root: u32, whole: bool) -> CpuUse {
        let (ta, tb) = (a.tree(root), b.tree(root));
        let sum = |s: &Snapshot, t: &HashSet<u32>| -> u64 {
            t.iter()
                .filter_map(|p| s.procs.get(p))
                .map(|p| p.own + p.reaped)
                .sum()
        };
        let total = sum(b, &tb).saturating_sub(sum(a, &ta));
        let own = b.own(root).saturating_sub(a.own(root));
        let (main, helpers) = if whole {
            (total, 0)
        } else {
            (own, total.saturating_sub(own))
        };
        CpuUse {
            main,
            helpers,
            machine: b.busy.saturating_sub(a.busy),
            seen: [
                ta.len().saturating_sub(1),
                tb.len().saturating_sub(1),
                tb.difference(&ta).count(),
                ta.difference(&tb).count(),
            ],
            ..CpuUse::default()
        }
    }

    /// PostgreSQL backends (children of the postmaster, not of the target): those listed
    /// at both ends count their difference, those only at the end all they used; those
    /// gone by the end are not seen (counted in `db_seen`).
    fn add_backends(&mut self, a: &Snapshot, b: &Snapshot, before: &[u32], after: &[u32]) {
        for &pid in after {
            let start = if before.contains(&pid) { a.own(pid) } else { 0 };
            self.db += b.own(pid).saturating_sub(start);
        }
        self.db_seen = [
            before.len(),
            after.len(),
            after.iter().filter(|p| !before.contains(p)).count(),
            before.iter().filter(|p| !after.contains(p)).count(),
        ];
    }

    fn add(&mut self, o: &CpuUse) {
        self.main += o.main;
        self.helpers += o.helpers;
        self.db += o.db;
        self.machine += o.machine;
    }
}

pub(crate) async fn clock_ticks() -> u64 {
    command_line("getconf", &["CLK_TCK"])
        .await
        .parse()
        .unwrap_or(100)
}

/// A command's first output line, or "?".
pub(crate) async fn command_line(cmd: &str, args: &[&str]) -> String {
    tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

/// µs of CPU per request in each part, summed over a target's rounds.
pub(crate) struct PerRequest {
    pub(crate) main: f64,
    pub(crate) helpers: f64,
    pub(crate) db: f64,
    pub(crate) rest: f64,
    pub(crate) requests: u64,
    pub(crate) seen: Vec<[usize; 4]>,
    pub(crate) db_seen: Vec<[usize; 4]>,
}

pub(crate) fn per_request(samples: &[Option<Sample>], tck: u64) -> Option<PerRequest> {
    let (mut sum, mut requests, mut seen, mut db_seen) =
        (CpuUse::default(), 0, Vec::new(), Vec::new());
    for s in samples.iter().flatten() {
        let c = s.cpu.as_ref()?;
        sum.add(c);
        requests += s.wrk.requests;
        seen.push(c.seen);
        db_seen.push(c.db_seen);
    }
    if requests == 0 {
        return None;
    }
    let us = |ticks: u64| ticks as f64 * 1e6 / tck as f64 / requests as f64;
    Some(PerRequest {
        main: us(sum.main),
        helpers: us(sum.helpers),
        db: us(sum.db),
        rest: us(sum.machine.saturating_sub(sum.main + sum.helpers + sum.db)),
        requests,
        seen,
        db_seen,
    })
}

fn print_cpu(targets: &[Target], samples: &[Vec<Option<Sample>>], tck: u64) {
    let runs = |row: Row, parse: bool| {
        targets
            .iter()
            .position(|t| {
                t.row == row
                    && match t.cpu {
                        Cpu::None => false,
                        Cpu::Yun(_) | Cpu::YunPostgres(..) => !parse,
                        Cpu::Parse(_) => parse,
                    }
            })
            .map(|i| &samples[i][..])
    };
    println!(
        "\n## CPU per request (µs of utime+stime from /proc/PID/stat, CLK_TCK {tck}, around \
         each measured run; sums over the {ROUNDS} runs of a row)\n"
    );
    let mut notes = Vec::new();
    for (parse, side, main, helpers, step) in [
        (
            false,
            "Yun",
            "yun",
            "instances",
            "**per SDK call = (like − hello) / 2**",
        ),
        (
            true,
            "Parse Server",
            "node",
            "PostgreSQL backends",
            "**(like − hello) / 2** (like: one get, one save)",
        ),
    ] {
        let (Some(hello), Some(like)) = (runs(Row::Hello, parse), runs(Row::Like, parse)) else {
            continue;
        };
        // Parse's helpers are its PostgreSQL backends.
        let per_request = |s: &[Option<Sample>]| {
            per_request(s, tck).map(|mut r| {
                r.helpers += r.db;
                if parse {
                    r.seen = std::mem::take(&mut r.db_seen);
                }
                r
            })
        };
        let (Some(h), Some(l)) = (per_request(hello), per_request(like)) else {
            continue;
        };
        println!(
            "| {side} | requests | {main} | {helpers} | {main} + {helpers} | rest of the machine |\n|---|---|---|---|---|---|"
        );
        for (label, r) in [("hello", &h), ("like", &l)] {
            println!(
                "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.requests,
                r.main,
                r.helpers,
                r.main + r.helpers,
                r.rest
            );
        }
        let d = |a: f64, b: f64| (a - b) / 2.0;
        println!(
            "| {step} | | {:.1} | {:.1} | **{:.1}** | {:.1} |\n",
            d(l.main, h.main),
            d(l.helpers, h.helpers),
            d(l.main + l.helpers, h.main + h.helpers),
            d(l.rest, h.rest)
        );
        let rounds: Vec<String> = hello
            .iter()
            .zip(like)
            .map(|(h, l)| {
                let one = |s: &Option<Sample>| per_request(std::slice::from_ref(s));
                match (one(h), one(l)) {
                    (Some(h), Some(l)) => {
                        format!("{:.0}", d(l.main + l.helpers, h.main + h.helpers))
                    }
                    _ => "-".into(),
                }
            })
            .collect();
        notes.push(format!(
            "{side}, {main} + {helpers}, (like − hello) / 2 per round: {} µs",
            rounds.join(" / ")
        ));
        for (label, r) in [("hello", &h), ("like", &l)] {
            let seen: Vec<String> = r
                .seen
                .iter()
                .map(|[a, b, new, gone]| format!("{a}→{b} (+{new} −{gone})"))
                .collect();
            notes.push(format!(
                "{side} {label}: {helpers} at start→end of each run (started, ended in between): {}",
                seen.join(", ")
            ));
        }
    }
    notes.push(
        "Yun's instances are every process descended from `yun` (ppid chains): the function \
         instances, their sandbox inits and slirp4netns, the idle stem cells. One that ends \
         during a run counts through its parent's cutime/cstime once reaped. Parse's backends \
         are those pg_stat_activity lists for its database before and after a run; one that \
         ends during a run is not seen. The rest of the machine is every busy tick of \
         /proc/stat minus both: wrk, the kernel's softirq work, anything else running."
            .into(),
    );
    for n in notes {
        println!("- {n}");
    }
}

// ---- Parse Server ----

pub(crate) struct Parse {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    /// `http://127.0.0.1:PORT/parse`
    pub(crate) url: String,
    pub(crate) photo_ids: Vec<String>,
    pub(crate) version: String,
    pub(crate) pg_version: String,
    _log: tempfile::TempDir,
}

impl Parse {
    pub(crate) async fn start(http: &reqwest::Client) -> Result<Parse, String> {
        let modules = install_peers().await?;
        pg_sql(&[
            &format!("DROP DATABASE IF EXISTS {PARSE_DB} WITH (FORCE)"),
            &format!("CREATE DATABASE {PARSE_DB}"),
        ])
        .await
        .map_err(|e| format!("PostgreSQL on 127.0.0.1:5432 (user postgres): {e}"))?;
        let pg_version = pg_sql(&["SHOW server_version"])
            .await
            .unwrap_or_default()
            .trim()
            .to_owned();
        let version = std::fs::read(modules.join("parse-server/package.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let log_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log_path = log_dir.path().join("parse.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new("node")
            .arg(repo().join("bench/peers/parse.js"))
            .arg(port.to_string())
            .env("NODE_PATH", &modules)
            .current_dir(log_dir.path())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("node: {e}"))?;
        let url = format!("http://127.0.0.1:{port}/parse");
        let log_tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("DeprecationWarning"))
                .collect();
            lines[lines.len().saturating_sub(8)..].join(" / ")
        };
        let mut up = false;
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("parse.js exited ({status}): {}", log_tail()));
            }
            if http
                .get(format!("{url}/health"))
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
            return Err(format!(
                "Parse Server did not answer in 30 s: {}",
                log_tail()
            ));
        }
        let pid = child.id().unwrap_or(0);
        let mut photo_ids = Vec::with_capacity(PHOTOS);
        for i in 0..PHOTOS {
            let r: Value = http
                .post(format!("{url}/classes/Photo"))
                .header("X-Parse-Application-Id", APP_ID)
                .header("X-Parse-Master-Key", MASTER_KEY)
                .json(&json!({ "name": format!("p{i}"), "likes": 0 }))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match r["objectId"].as_str() {
                Some(id) => photo_ids.push(id.to_owned()),
                None => return Err(format!("creating a Photo: {r}")),
            }
        }
        Ok(Parse {
            child,
            pid,
            url,
            photo_ids,
            version,
            pg_version,
            _log: log_dir,
        })
    }

    /// The feed's documents in `classes`: `Item` without an index, `ItemIx` with one on
    /// `n` (Parse's schema API creates it in PostgreSQL).
    pub(crate) async fn seed_feed(
        &self,
        http: &reqwest::Client,
        classes: &[&str],
    ) -> Result<(), String> {
        for cls in classes {
            let r = http
                .post(format!("{}/functions/seedItems", self.url))
                .header("X-Parse-Application-Id", APP_ID)
                .header("X-Parse-Master-Key", MASTER_KEY)
                .json(&json!({ "cls": cls, "count": FEED_ITEMS }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(r.text().await.unwrap_or_default());
            }
        }
        let r = http
            .put(format!("{}/schemas/ItemIx", self.url))
            .header("X-Parse-Application-Id", APP_ID)
            .header("X-Parse-Master-Key", MASTER_KEY)
            .json(&json!({ "className": "ItemIx", "indexes": { "n_1": { "n": 1 } } }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("the index: {}", r.text().await.unwrap_or_default()));
        }
        Ok(())
    }

    pub(crate) async fn stop(mut self) {
        stop(&mut self.child, "TERM").await;
        let _ = pg_sql(&[&format!("DROP DATABASE IF EXISTS {PARSE_DB} WITH (FORCE)")]).await;
    }
}

/// PostgreSQL backends that `pg_stat_activity` lists `WHERE filter`.
async fn pg_backends(filter: &str) -> Vec<u32> {
    let sql = format!("SELECT pid FROM pg_stat_activity WHERE {filter}");
    pg_sql(&[&sql])
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Statements run one by one as `postgres` on 127.0.0.1:5432 (trust auth): with `psql`,
/// or without it with `pg` from Parse Server's own dependencies. Rows as `a|b` lines.
pub(crate) async fn pg_sql(statements: &[&str]) -> Result<String, String> {
    let mut psql = tokio::process::Command::new("psql");
    psql.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
    ]);
    for s in statements {
        psql.arg("-c").arg(s);
    }
    let out = match psql.output().await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            const PG_JS: &str = "const { Client } = require('pg');
(async () => {
  const c = new Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
  await c.connect();
  for (const text of process.argv.slice(1)) {
    const r = await c.query({ text, rowMode: 'array' });
    for (const row of r.rows || []) console.log(row.join('|'));
  }
  await c.end();
})().catch((e) => { console.error(e.message); process.exit(1); });";
            tokio::process::Command::new("node")
                .arg("-e")
                .arg(PG_JS)
                .args(statements)
                .env(
                    "NODE_PATH",
                    peers_dir().await.unwrap_or_default().join("node_modules"),
                )
                .output()
                .await
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `$HOME/.cache/yun/peers-<12 hex of the lock's SHA-256>`: where `bench/peers` is installed.
async fn peers_dir() -> Option<PathBuf> {
    let lock = repo().join("bench/peers/package-lock.json");
    let out = tokio::process::Command::new("sha256sum")
        .arg(&lock)
        .output()
        .await
        .ok()?;
    let hash = String::from_utf8_lossy(&out.stdout).get(..12)?.to_owned();
    let home = std::env::var_os("HOME")?;
    (out.status.success() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Path::new(&home).join(format!(".cache/yun/peers-{hash}")))
}

/// `npm ci` of `bench/peers` into `peers_dir()` (never into the repo), reused when
/// complete: the install goes to a `.tmp` sibling, renamed once it succeeded.
async fn install_peers() -> Result<PathBuf, String> {
    let dir = peers_dir()
        .await
        .ok_or("no HOME, or no sha256sum of bench/peers/package-lock.json")?;
    let modules = dir.join("node_modules");
    if modules.join("parse-server/package.json").exists() {
        return Ok(modules);
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(repo().join("bench/peers").join(f), tmp.join(f))
            .map_err(|e| format!("{f}: {e}"))?;
    }
    println!("(installing Parse Server: npm ci into {})", dir.display());
    let out = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&tmp)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("npm: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!("npm ci failed: {}", err.trim()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())?;
    Ok(modules)
}

// ---- Yun ----

/// The collection a feed target reads.
fn feed_class(target: &str) -> &'static str {
    match (target.starts_with("Yun"), target.ends_with("(n)")) {
        (true, false) => "items",
        (true, true) => "items_ix",
        (false, false) => "Item",
        (false, true) => "ItemIx",
    }
}

/// The feed's documents in `collections`: `items` without an index, `items_ix` with one
/// on `n`.
pub(crate) async fn seed_yun_feed(
    yun: &crate::Yun,
    http: &reqwest::Client,
    collections: &[&str],
) -> bool {
    fn item(n: u64) -> Value {
        json!({ "n": n, "album": format!("a{}", n % 100), "s": format!("item {n}") })
    }
    for &collection in collections {
        if crate::db::admin(
            http,
            yun,
            json!({ "action": "database.addCollection", "collectionName": collection }),
        )
        .await
        .is_none()
        {
            println!("**Yun feed rows skipped**: cannot create {collection}");
            return false;
        }
        crate::db::load(yun, http, collection, FEED_ITEMS, item).await;
    }
    if collections.contains(&"items_ix") {
        crate::db::create_index(
            yun,
            http,
            "items_ix",
            "by_n",
            json!([{ "field": "n", "direction": 1 }]),
        )
        .await;
    }
    true
}

/// `photos`: `{_id: "p0".."p99", likes: 0}` through the management API.
pub(crate) async fn seed_yun(yun: &crate::Yun, http: &reqwest::Client) -> bool {
    let docs: Vec<Value> = (0..PHOTOS)
        .map(|i| json!({ "_id": format!("p{i}"), "likes": 0 }))
        .collect();
    match import(yun, http, "photos", docs).await {
        Ok(()) => true,
        Err(why) => {
            println!("**Yun like row skipped**: seeding photos: {why}");
            false
        }
    }
}

/// A new collection with `docs` in it, through the management API's create and import.
pub(crate) async fn import(
    yun: &crate::Yun,
    http: &reqwest::Client,
    collection: &str,
    docs: Vec<Value>,
) -> Result<(), String> {
    let base = format!("{}/api/v1/envs/{}/collections", yun.url, yun.env);
    for (url, body) in [
        (base.clone(), json!({ "name": collection })),
        (
            format!("{base}/{collection}/import"),
            json!({ "mode": "insert", "documents": docs }),
        ),
    ] {
        let r = http
            .post(&url)
            .basic_auth(&yun.id, Some(&yun.key))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
    }
    Ok(())
}
