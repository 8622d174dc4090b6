//! Backups (issue 18): `POST /api/v1/backups` of a data folder holding 1M documents and
//! 1 GiB of files (`YUN_BENCH_DOCS`, `YUN_BENCH_FILE_MB` for less), against `sqlite3
//! .backup` of the same databases plus `cp -r` of the same files, in the same run; and
//! warm calls' latency before and during the backup.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{ms, percentile, Yun};

const FILE_MB: u64 = 4;
/// Clients making warm calls one after another while latency is sampled.
const CALLERS: usize = 4;

fn file_mb_wanted() -> u64 {
    std::env::var("YUN_BENCH_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Warm calls from `CALLERS` clients until `stop`; their latencies, sorted.
async fn sample_latency(url: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (url, stop) = (url.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let ok = http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                assert!(ok, "a warm call failed during the backup run");
                seen.push(began.elapsed());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.expect("caller"));
    }
    all.sort();
    all
}

pub async fn run(yun: &Yun) {
    let http = reqwest::Client::new();
    let docs = crate::db::docs_wanted();
    let file_mb = file_mb_wanted();
    crate::db::admin(
        &http,
        yun,
        json!({ "action": "database.addCollection", "collectionName": "kept" }),
    )
    .await
    .expect("collection");
    let began = Instant::now();
    crate::db::load(
        yun,
        &http,
        "kept",
        docs,
        |i| json!({ "i": i, "name": format!("document {i}"), "tags": ["a", "b"], "n": i % 1000 }),
    )
    .await;
    let source = tempfile::NamedTempFile::new().expect("temp file");
    let chunk: Vec<u8> = (0..FILE_MB << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(source.path(), &chunk).expect("write source");
    for i in 0..file_mb / FILE_MB {
        crate::storage::put_file(&http, yun, &format!("kept/{i}.bin"), source.path()).await;
    }
    println!(
        "## Backup: {docs} documents and {file_mb} MiB of files (loaded in {:.0} s)",
        began.elapsed().as_secs_f64()
    );
    yun.deploy(
        &http,
        "hello",
        &[("index.js", "exports.main = async () => ({ ok: true })")],
        json!({ "http_path": "/hello" }),
    )
    .await;
    let url = format!("{}/{}/hello", yun.url, yun.env);
    let _ = reqwest::get(&url).await;

    // Latency without a backup, for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(sample_latency(url.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = quiet.await.expect("sampler");

    // Yun's backup, with warm calls going on.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(sample_latency(url.clone(), stop.clone()));
    let began = Instant::now();
    let taken: Value = http
        .post(format!("{}/api/v1/backups", yun.url))
        .basic_auth(&yun.id, Some(&yun.key))
        .send()
        .await
        .expect("backup")
        .json()
        .await
        .expect("json");
    let yun_time = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = during.await.expect("sampler");
    assert!(taken.get("backup").is_some(), "backup failed: {taken}");

    // The baseline: sqlite3's online backup of each database, and cp of the files.
    let data = yun.dir.path();
    let out = tempfile::tempdir_in(data).expect("baseline dir");
    let began = Instant::now();
    let mut stores = Vec::new();
    for entry in std::fs::read_dir(data.join("meta")).expect("meta") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "db") {
            stores.push(path);
        }
    }
    for store in &stores {
        let target = out.path().join(store.file_name().expect("name"));
        let status = std::process::Command::new("sqlite3")
            .arg(store)
            .arg(format!(".backup '{}'", target.display()))
            .status()
            .expect("sqlite3 (apt-get install sqlite3)");
        assert!(status.success(), "sqlite3 .backup {}", store.display());
    }
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(data.join("files"))
        .arg(out.path().join("files"))
        .status()
        .expect("cp");
    assert!(status.success(), "cp -r files");
    let baseline_time = began.elapsed();

    println!("| | time | warm calls p50 | p99 | max |\n|---|---|---|---|---|");
    println!(
        "| no backup running | | {} | {} | {} |",
        ms(percentile(&quiet, 0.5)),
        ms(percentile(&quiet, 0.99)),
        ms(quiet.last().copied().unwrap_or_default())
    );
    println!(
        "| yun backup create (online) | {} | {} | {} | {} |",
        ms(yun_time),
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        ms(during.last().copied().unwrap_or_default())
    );
    println!(
        "| sqlite3 .backup ×{} + cp -r files | {} | | | |",
        stores.len(),
        ms(baseline_time)
    );
    println!(
        "\nbackup speed, baseline time / Yun's: {:.2}× ({} warm calls sampled during the backup)\n",
        baseline_time.as_secs_f64() / yun_time.as_secs_f64(),
        during.len()
    );
}
