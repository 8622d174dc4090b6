//! `yun export` and `yun import`: an env moved between two Yun servers (a `yun dev` and
//! a cluster, either way) through their management APIs, with a platform key.

use std::path::PathBuf;

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::output::{self, text};
use crate::storage::{fetch_into, progress};
use crate::Connection;

/// Writes the env of `conn` into `out` (default `{env}.yun.tar.gz`).
pub async fn export(out: Option<PathBuf>, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.yun.tar.gz", client.env)));
    let bar = progress(0, conn.json);
    bar.set_message("export");
    // It holds the env's keys and password hashes: for its owner's eyes only.
    let bytes = fetch_into(
        &client,
        &client.env_path("/export"),
        &out,
        Some(0o600),
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let v =
        serde_json::json!({ "env": client.env, "file": out.display().to_string(), "bytes": bytes });
    output::emit(conn.json, &v, |v| {
        println!(
            "Exported env {} into {} ({} bytes)",
            text(v.get("env")),
            text(v.get("file")),
            text(v.get("bytes"))
        );
    });
    Ok(())
}

/// Makes the env of archive `file` on the server of `conn`.
pub async fn import(file: PathBuf, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let archive = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let size = archive.metadata().await?.len();
    let bar = progress(size, conn.json);
    bar.set_message("import");
    let counted = bar.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(archive, 256 << 10)
        .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
    let req = client
        .raw(Method::POST, "/api/v1/import")
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(reqwest::Body::wrap_stream(body));
    let v: Value = client.execute(req).await?.json().await?;
    bar.finish_and_clear();
    output::emit(conn.json, &v, |v| {
        let n = &v["imported"];
        println!(
            "Imported env {}: {} collections, {} documents, {} files ({} bytes), {} functions, {} users, {} keys, {} rules",
            text(v.get("env")),
            text(n.get("collections")),
            text(n.get("documents")),
            text(n.get("files")),
            text(n.get("file_bytes")),
            text(n.get("functions")),
            text(n.get("users")),
            text(n.get("keys")),
            text(n.get("rules"))
        );
    });
    Ok(())
}
