//! Secrets at rest: the metadata folder and its database files are the owner's alone,
//! and the platform SecretKey is shown through the management API only on request.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::{json, Value};
use yun_testkit::{Options, TestYun};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_folder_keeps_metadata_and_credentials_private() {
    let yun = TestYun::start(Options::default()).await;
    // A write, so every database has its -wal and -shm.
    let (status, _) = yun
        .management(
            reqwest::Method::POST,
            "/api/v1/envs",
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(status, 201);
    let meta = yun.data_dir.path().join("meta");
    assert_eq!(mode(&meta), 0o700);
    let mut seen = 0;
    for entry in std::fs::read_dir(&meta).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        seen += 1;
    }
    assert!(meta.join("yun.db-wal").exists() && meta.join("yun.db-shm").exists());
    assert!(seen >= 4, "only {seen} files in meta");
    assert_eq!(mode(&yun.data_dir.path().join("credentials.json")), 0o600);
    yun.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_show_masks_unless_revealed_and_needs_the_platform_key() {
    let yun = TestYun::start(Options::default()).await;
    let (status, masked) = yun
        .management(reqwest::Method::GET, "/api/v1/key", None)
        .await;
    assert_eq!(status, 200, "{masked}");
    assert_eq!(masked["key"]["secret_id"], yun.secret_id.as_str());
    assert_eq!(masked["key"]["role"], "platform");
    let shown = masked["key"]["secret_key"].as_str().unwrap();
    assert!(
        shown.ends_with('…') && !shown.contains(&yun.secret_key[4..]),
        "{shown}"
    );

    let (status, revealed) = yun
        .management(reqwest::Method::GET, "/api/v1/key?reveal=true", None)
        .await;
    assert_eq!(status, 200, "{revealed}");
    assert_eq!(revealed["key"]["secret_key"], yun.secret_key.as_str());

    // An env's own key may not ask.
    let (_, created) = yun
        .management(
            reqwest::Method::POST,
            "/api/v1/envs",
            Some(json!({"id": "other"})),
        )
        .await;
    let (id, key) = (
        created["key"]["secret_id"].as_str().unwrap(),
        created["key"]["secret_key"].as_str().unwrap(),
    );
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/key?reveal=true", yun.url))
        .basic_auth(id, Some(key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(!body.to_string().contains(key), "{body}");
    yun.stop().await;
}
