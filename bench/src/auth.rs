//! End-user benchmark (issue 5) against a release `yun`, each figure with a same-run
//! baseline:
//! - password sign-ins per second over HTTP vs argon2id verifications per second
//!   in-process with the same parameters, one thread per core;
//! - token verification per request: a `/web` request that carries a valid token minus
//!   the same request refused before any token is read;
//! - rule overhead on a 20-document query: a query that must be proven against a custom
//!   rule minus the same query under `read: true`.

use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde_json::{json, Value};

use crate::{drive, Yun};

const SIGN_IN_CLIENTS: usize = 8;
const SECONDS: u64 = 5;
/// Sequential requests per measured variant (interleaved, so drift hits both alike).
const PAIRS: usize = 3000;

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Option<Value> {
    http.post(url)
        .body(body.to_string())
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn cli(yun: &Yun, args: &[&str]) {
    let status = tokio::process::Command::new(crate::yun_bin())
        .args(args)
        .env("YUN_URL", &yun.url)
        .env("YUN_ENV", &yun.env)
        .env("YUN_SECRET_ID", &yun.id)
        .env("YUN_SECRET_KEY", &yun.key)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("run yun");
    assert!(status.success(), "yun {args:?} failed");
}

/// argon2id verifications per second on every core, the server's parameters.
fn argon2_baseline() -> f64 {
    let salt = SaltString::encode_b64(b"bench-salt-16byt").expect("salt");
    let hash = Argon2::default()
        .hash_password(b"bench-password", &salt)
        .expect("hash")
        .to_string();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let hash = hash.clone();
                s.spawn(move || {
                    let parsed = PasswordHash::new(&hash).expect("parse");
                    let mut n = 0;
                    while Instant::now() < deadline {
                        Argon2::default()
                            .verify_password(b"bench-password", &parsed)
                            .expect("verify");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    counts.iter().sum::<u64>() as f64 / SECONDS as f64
}

/// Mean of `a - b` per request, measured as interleaved sequential pairs.
async fn paired_mean_us<A, B, FA, FB>(a: A, b: B) -> (f64, f64)
where
    A: Fn() -> FA,
    B: Fn() -> FB,
    FA: std::future::Future<Output = bool>,
    FB: std::future::Future<Output = bool>,
{
    let (mut ta, mut tb) = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
    for _ in 0..PAIRS {
        let start = Instant::now();
        assert!(a().await, "request failed");
        ta.push(start.elapsed());
        let start = Instant::now();
        assert!(b().await, "request failed");
        tb.push(start.elapsed());
    }
    // Trimmed means: the slowest 5% are scheduler noise on a 2-core machine.
    let trimmed = |mut v: Vec<Duration>| {
        v.sort();
        let keep = &v[..v.len() * 95 / 100];
        keep.iter().map(Duration::as_secs_f64).sum::<f64>() / keep.len() as f64 * 1e6
    };
    (trimmed(ta), trimmed(tb))
}

pub async fn run(yun: &Yun) {
    let http = reqwest::Client::new();
    let auth = |route: &str| format!("{}/auth/v1{route}?client_id={}", yun.url, yun.env);
    let web = format!("{}/web?env={}", yun.url, yun.env);

    // 1. Password sign-in rate.
    let session = post(
        &http,
        &auth("/signup"),
        &json!({"username": "bench", "password": "bench-password"}),
    )
    .await
    .expect("sign up");
    let token = session["access_token"].as_str().expect("token").to_owned();
    let url = auth("/signin");
    let client = http.clone();
    let signins = drive(SIGN_IN_CLIENTS, SECONDS, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            post(
                &client,
                &url,
                &json!({"username": "bench", "password": "bench-password"}),
            )
            .await
            .is_some_and(|v| v.get("access_token").is_some())
        }
    })
    .await;
    let baseline = tokio::task::spawn_blocking(argon2_baseline)
        .await
        .expect("baseline");
    println!("\n== end users (issue 5)");
    println!("argon2id parameters: m = 19456 KiB, t = 2, p = 1 (the argon2 crate's defaults, OWASP's recommendation)");
    println!(
        "password sign-in    {:>8.1}/s over HTTP ({SIGN_IN_CLIENTS} clients, p50 {:.1} ms, {} errors)  vs  argon2id verify in-process {:>8.1}/s   ratio {:.2}x",
        signins.ops_per_sec,
        signins.p50.as_secs_f64() * 1e3,
        signins.errors,
        baseline,
        signins.ops_per_sec / baseline
    );

    // 2. Token verification per request.
    let with_token = json!({"action": "nosuch.action", "access_token": token});
    let without = json!({"action": "nosuch.action"});
    let (verified, refused) = paired_mean_us(
        || async {
            post(&http, &web, &with_token)
                .await
                .is_some_and(|v| v["code"] == "INVALID_ACTION")
        },
        || async {
            post(&http, &web, &without)
                .await
                .is_some_and(|v| v["code"] == "UNAUTHENTICATED")
        },
    )
    .await;
    println!(
        "token verification  {:>8.1} µs/request  (valid token {verified:.1} µs − refused before reading a token {refused:.1} µs, {PAIRS} interleaved pairs, trimmed means)   target ≤ 20 µs",
        verified - refused
    );

    // 3. Rule overhead on a 20-document query.
    for (name, rules) in [
        (
            "open",
            json!({"read": true, "write": "doc._openid == auth.openid"}),
        ),
        (
            "ruled",
            json!({"read": "doc.public == true || doc._openid == auth.openid", "write": "doc._openid == auth.openid"}),
        ),
    ] {
        cli(yun, &["db", "create", name]).await;
        cli(yun, &["db", "rules", name, "set", &rules.to_string()]).await;
        let docs: Vec<Value> = (0..20)
            .map(|i| json!({"n": i, "public": true, "text": "x".repeat(200)}))
            .collect();
        let added = post(&http, &web, &json!({"action": "database.addDocument", "collectionName": name, "data": docs, "access_token": token})).await;
        assert!(added.is_some_and(|v| v["code"].is_null()), "seed {name}");
    }
    let query = |collection: &str| {
        json!({"action": "database.queryDocument", "collectionName": collection, "queryType": "WHERE",
               "query": {"public": true}, "limit": 20, "access_token": token})
    };
    let (ruled_q, open_q) = (query("ruled"), query("open"));
    let twenty = |v: Option<Value>| {
        v.is_some_and(|v| v["data"]["list"].as_array().is_some_and(|l| l.len() == 20))
    };
    let (ruled, open) = paired_mean_us(
        || async { twenty(post(&http, &web, &ruled_q).await) },
        || async { twenty(post(&http, &web, &open_q).await) },
    )
    .await;
    println!(
        "rules on a 20-doc query  {:>6.1} µs  ({ruled:.1} µs with a proven custom rule vs {open:.1} µs under read: true)   overhead {:.1}%   target ≤ 10%",
        ruled - open,
        (ruled - open) / open * 100.0
    );
}
