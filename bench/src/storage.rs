//! File storage benchmark (issue 4): streaming uploads and downloads through a release
//! `yun` (management PUT in, signed temporary URL out, both to and from files on the same
//! disk) against plain file copies in the same run, with Yun's RSS sampled throughout;
//! many concurrent 1 MiB files against the same writes and reads done directly; and the
//! first render of a 12-megapixel JPEG thumbnail against the same decode and scale done
//! in this process.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::{json, Value};

use crate::{drive, ms, Yun};

const BIG_BYTES: u64 = 1 << 30;
const BIG_ROUNDS: usize = 3;
const SMALL_BYTES: usize = 1 << 20;
const CLIENTS: usize = 32;
const SECONDS: u64 = 5;
const RENDERS: usize = 5;

fn mib_per_sec(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// Samples Yun's RSS every 10 ms until dropped; reports the peak above the starting value.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    base_kb: u64,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let base_kb = crate::rss_kb(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(base_kb));
        let (s, p) = (stop.clone(), peak_kb.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(crate::rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            peak_kb,
            base_kb,
        }
    }

    fn growth_mib(&self) -> f64 {
        (self.peak_kb.load(Ordering::Relaxed) - self.base_kb) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn file_route(yun: &Yun, path: &str) -> String {
    format!("{}/api/v1/envs/{}/storage/files/{path}", yun.url, yun.env)
}

/// The client side does its file I/O on a plain thread with 1 MiB reads, one copy per
/// byte (as curl does), so the figures measure Yun rather than the load generator.
fn file_chunks(source: &Path) -> reqwest::Body {
    use std::io::Read as _;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let mut file = std::fs::File::open(source).expect("open source");
    std::thread::spawn(move || loop {
        let mut chunk = vec![0u8; 1 << 20];
        let read = file.read(&mut chunk).map(|n| {
            chunk.truncate(n);
            chunk
        });
        let done = read.as_ref().map_or(true, Vec::is_empty);
        if tx.blocking_send(read).is_err() || done {
            return;
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Ok(chunk)) if chunk.is_empty() => None,
            Some(item) => Some((item, rx)),
            None => None,
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

pub(crate) async fn put_file(http: &reqwest::Client, yun: &Yun, path: &str, source: &Path) {
    let body = file_chunks(source);
    let res = http
        .put(file_route(yun, path))
        .basic_auth(&yun.id, Some(&yun.key))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert!(res.status().is_success(), "upload {path}: {}", res.status());
}

async fn temp_url(http: &reqwest::Client, yun: &Yun, path: &str) -> String {
    let v: Value = http
        .post(format!("{}/api/v1/envs/{}/storage/urls", yun.url, yun.env))
        .basic_auth(&yun.id, Some(&yun.key))
        .json(&json!({ "files": [path] }))
        .send()
        .await
        .expect("urls")
        .json()
        .await
        .expect("json");
    v["urls"][0]["url"].as_str().expect("a URL").to_owned()
}

/// Streams a download into `target` from a plain writer thread, synced at the end.
async fn get_to_file(http: &reqwest::Client, url: &str, target: &Path) -> u64 {
    let res = http.get(url).send().await.expect("download");
    assert!(res.status().is_success(), "download: {}", res.status());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let mut file = std::fs::File::create(target).expect("create");
    let writer = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk).expect("write");
            n += chunk.len() as u64;
        }
        file.sync_all().expect("sync");
        n
    });
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.try_next().await.expect("body") {
        tx.send(chunk).await.expect("writer");
    }
    drop(tx);
    writer.join().expect("writer thread")
}

fn fill(path: &Path, bytes: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    for i in 0..bytes / block.len() as u64 {
        block[0] = i as u8;
        f.write_all(&block).expect("write");
    }
    f.into_inner().expect("flush").sync_all().expect("sync");
}

/// A plain copy to a new file on the same disk, synced like Yun's writes.
fn disk_copy(from: &Path, to: &Path) -> Duration {
    let started = Instant::now();
    std::fs::copy(from, to).expect("copy");
    std::fs::File::open(to)
        .expect("open")
        .sync_all()
        .expect("sync");
    started.elapsed()
}

/// Rounds of copy, upload and download, interleaved so drift hits all three alike;
/// the medians are reported.
async fn big_files(http: &reqwest::Client, yun: &Yun, dir: &Path) {
    let source = dir.join("big.src");
    fill(&source, BIG_BYTES);
    let pid = yun.child.id().expect("yun pid");
    let (mut copies, mut ups, mut downs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up_rss, mut down_rss) = (0f64, 0f64);
    for round in 0..BIG_ROUNDS {
        copies.push(disk_copy(&source, &dir.join("big.copy")));
        std::fs::remove_file(dir.join("big.copy")).ok();

        let path = format!("bench/big-{round}.bin");
        let watch = RssWatch::start(pid);
        let started = Instant::now();
        put_file(http, yun, &path, &source).await;
        ups.push(started.elapsed());
        up_rss = up_rss.max(watch.growth_mib());
        drop(watch);

        let url = temp_url(http, yun, &path).await;
        let watch = RssWatch::start(pid);
        let started = Instant::now();
        let got = get_to_file(http, &url, &dir.join("big.down")).await;
        downs.push(started.elapsed());
        down_rss = down_rss.max(watch.growth_mib());
        drop(watch);
        assert_eq!(got, BIG_BYTES);
        std::fs::remove_file(dir.join("big.down")).ok();
        delete_file(http, yun, &path).await;
    }
    std::fs::remove_file(&source).ok();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let copy = median(&mut copies);
    let copy_speed = mib_per_sec(BIG_BYTES, copy);

    println!("| 1 GiB, median of {BIG_ROUNDS} interleaved rounds | Yun | plain copy on the same disk (`std::fs::copy` + fsync) | ratio | peak RSS growth of yun |");
    println!("|---|---|---|---|---|");
    for (what, took, rss) in [
        (
            "upload (PUT, streamed from a file)",
            median(&mut ups),
            up_rss,
        ),
        (
            "download (temporary URL, streamed to a file)",
            median(&mut downs),
            down_rss,
        ),
    ] {
        let speed = mib_per_sec(BIG_BYTES, took);
        println!(
            "| {what} | {speed:.0} MiB/s ({:.2} s) | {copy_speed:.0} MiB/s ({:.2} s) | {:.2}× | {rss:.1} MiB |",
            took.as_secs_f64(),
            copy.as_secs_f64(),
            speed / copy_speed
        );
    }
}

async fn delete_file(http: &reqwest::Client, yun: &Yun, path: &str) {
    let res = http
        .delete(file_route(yun, path))
        .basic_auth(&yun.id, Some(&yun.key))
        .send()
        .await
        .expect("delete");
    assert!(res.status().is_success(), "delete {path}: {}", res.status());
}

async fn small_files(http: &reqwest::Client, yun: &Yun, dir: &Path) {
    let source = dir.join("small.src");
    fill(&source, SMALL_BYTES as u64);
    let baseline_dir = dir.join("baseline");
    std::fs::create_dir_all(&baseline_dir).expect("baseline dir");

    // Baseline: the same 1 MiB files written and read back directly, from as many threads.
    let payload = Arc::new(std::fs::read(&source).expect("read"));
    let direct_write = {
        let (payload, d) = (payload.clone(), baseline_dir.clone());
        drive(CLIENTS, SECONDS, move |i| {
            let (payload, d) = (payload.clone(), d.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let path = d.join(format!("{}", i % 2000));
                    let mut f = std::fs::File::create(path)?;
                    f.write_all(&payload)?;
                    f.sync_all()
                })
                .await
                .is_ok_and(|r| r.is_ok())
            }
        })
        .await
    };
    let direct_read = {
        let d = baseline_dir.clone();
        drive(CLIENTS, SECONDS, move |i| {
            let d = d.clone();
            async move {
                tokio::task::spawn_blocking(move || std::fs::read(d.join(format!("{}", i % 200))))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|b| b.len() == SMALL_BYTES))
            }
        })
        .await
    };
    std::fs::remove_dir_all(&baseline_dir).ok();

    let yun_ctx = Arc::new((
        http.clone(),
        yun.url.clone(),
        yun.env.clone(),
        yun.id.clone(),
        yun.key.clone(),
        payload.clone(),
    ));
    let uploads = {
        let ctx = yun_ctx.clone();
        drive(CLIENTS, SECONDS, move |i| {
            let ctx = ctx.clone();
            async move {
                let (http, url, env, id, key, payload) = &*ctx;
                let body = payload.as_ref().clone();
                http.put(format!(
                    "{url}/api/v1/envs/{env}/storage/files/bench/small/{}",
                    i % 2000
                ))
                .basic_auth(id, Some(key))
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };
    let mut urls = Vec::new();
    for i in 0..200 {
        urls.push(temp_url(http, yun, &format!("bench/small/{i}")).await);
    }
    let urls = Arc::new(urls);
    let downloads = {
        let (http, urls) = (http.clone(), urls.clone());
        drive(CLIENTS, SECONDS, move |i| {
            let (http, urls) = (http.clone(), urls.clone());
            async move {
                match http.get(&urls[i as usize % urls.len()]).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.is_ok_and(|b| b.len() == SMALL_BYTES)
                    }
                    _ => false,
                }
            }
        })
        .await
    };
    std::fs::remove_file(&source).ok();

    println!(
        "\n| 1 MiB files, {CLIENTS} clients, {SECONDS} s | Yun files/s | p50 | p99 | errors | direct files/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (what, yun_run, direct) in [
        (
            "upload (direct: create + write + fsync)",
            &uploads,
            &direct_write,
        ),
        ("download (direct: read)", &downloads, &direct_read),
    ] {
        println!(
            "| {what} | {:.0} ({:.0} MiB/s) | {} | {} | {} | {:.0} | {:.2}× |",
            yun_run.ops_per_sec,
            yun_run.ops_per_sec,
            ms(yun_run.p50),
            ms(yun_run.p99),
            yun_run.errors,
            direct.ops_per_sec,
            yun_run.ops_per_sec / direct.ops_per_sec
        );
    }
}

fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    // A smooth gradient with noise: compresses like a photo, not like a flat colour.
    let mut seed = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed & 0x1f) as u8;
        image::Rgb([
            ((x * 255 / width) as u8).wrapping_add(n),
            ((y * 255 / height) as u8).wrapping_add(n),
            (((x + y) * 127 / (width + height)) as u8).wrapping_add(n),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out.into_inner()
}

async fn thumbnails(http: &reqwest::Client, yun: &Yun, dir: &Path) {
    let jpeg = photo_jpeg(4000, 3000);
    let source = dir.join("photo.jpg");
    std::fs::write(&source, &jpeg).expect("write");
    put_file(http, yun, "bench/photo.jpg", &source).await;
    let url = temp_url(http, yun, "bench/photo.jpg").await;

    let mut baseline = Vec::new();
    for _ in 0..RENDERS {
        let started = Instant::now();
        let img = image::load_from_memory(&jpeg).expect("decode");
        let thumb = img.thumbnail(400, 400);
        let mut out = std::io::Cursor::new(Vec::new());
        thumb
            .to_rgb8()
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encode");
        baseline.push(started.elapsed());
    }
    let (mut first, mut cached) = (Vec::new(), Vec::new());
    for i in 0..RENDERS {
        // A new size each time: every first request renders.
        let spec = format!("{url}&imageMogr2/thumbnail/{}x{}", 400 + i, 400 + i);
        for times in [&mut first, &mut cached] {
            let started = Instant::now();
            let res = http.get(&spec).send().await.expect("thumbnail");
            assert!(res.status().is_success(), "thumbnail: {}", res.status());
            res.bytes().await.expect("body");
            times.push(started.elapsed());
        }
    }
    std::fs::remove_file(&source).ok();
    for v in [&mut baseline, &mut first, &mut cached] {
        v.sort();
    }
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "\n| 12-megapixel JPEG ({} KiB) → 400 px thumbnail, median of {RENDERS} | time |",
        jpeg.len() >> 10
    );
    println!("|---|---|");
    println!(
        "| Yun, first request (fetch, decode, scale, encode, cache) | {} |",
        ms(median(&first))
    );
    println!("| Yun, cached | {} |", ms(median(&cached)));
    println!(
        "| baseline: decode + scale + encode with the `image` crate in this process | {} |",
        ms(median(&baseline))
    );
}

pub async fn run(yun: &Yun) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    println!("\n## File storage (local disk; baselines on the same disk in the same run)\n");
    big_files(&http, yun, dir.path()).await;
    small_files(&http, yun, dir.path()).await;
    thumbnails(&http, yun, dir.path()).await;
}
