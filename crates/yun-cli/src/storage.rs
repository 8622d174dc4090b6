//! `yun storage`: the env's files through the management API. Uploads and downloads
//! stream with a progress bar on a terminal; folders and prefixes go recursively; a
//! download lands under a temporary name and is renamed when complete.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;
use futures_util::TryStreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use yun_storage::CloudPath;

use crate::client::Client;
use crate::commands::{collect_files, parse_duration};
use crate::output::{self, text};
use crate::Connection;

#[derive(Subcommand)]
pub enum StorageCommand {
    /// Upload a file to REMOTE (default: its name), or every file of a folder under REMOTE/.
    Upload {
        local: PathBuf,
        remote: Option<String>,
        /// The Content-Type to store (default: sniffed from the bytes, else from the name).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download a file to LOCAL (default: its name, here); with -r every file under the
    /// prefix REMOTE into the folder LOCAL.
    Download {
        remote: String,
        local: Option<PathBuf>,
        #[arg(short, long)]
        recursive: bool,
    },
    /// List files, all or under a prefix.
    Ls { prefix: Option<String> },
    /// Delete files; with -r every file under each prefix.
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Copy a file inside the env; with -r every file under the prefix FROM to under TO.
    Cp {
        from: String,
        to: String,
        #[arg(short, long)]
        recursive: bool,
        /// Delete the original: a move.
        #[arg(long = "move")]
        move_original: bool,
        /// Fail instead of replacing a file that exists.
        #[arg(long)]
        no_clobber: bool,
    },
    /// Print temporary download URLs.
    Url {
        #[arg(required = true)]
        paths: Vec<String>,
        /// How long the URLs work (e.g. 10m, 1h, 7d; at most 7d).
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Security rules of the env's files for end users (admin keys bypass them).
    Rules {
        #[command(subcommand)]
        command: crate::rules::RulesCommand,
    },
}

/// A cloud path, or the path of a `cloud://` file id of this env.
fn cloud_path<'a>(client: &Client, name: &'a str) -> anyhow::Result<&'a str> {
    let Some(id) = name.strip_prefix("cloud://") else {
        return Ok(name.trim_start_matches('/'));
    };
    let (host, path) = id
        .split_once('/')
        .ok_or_else(|| anyhow!("{name:?} is not a file id (cloud://env.bucket/path)"))?;
    let env = host.split('.').next().unwrap_or_default();
    if env != client.env {
        bail!("{name:?} is a file of env {env:?}, not of {:?}", client.env);
    }
    Ok(path)
}

/// The management route of a file. The path is checked here first: a URL would resolve
/// `..` segments (even percent-encoded ones) before the server could refuse them.
fn file_route(client: &Client, path: &str) -> anyhow::Result<String> {
    let path = CloudPath::parse(path)?;
    Ok(client.env_path(&format!("/storage/files/{}", path.url_encoded())))
}

/// A prefix that names a folder: `a/b` and `a/b/` both mean `a/b/`; empty means everything.
fn folder_prefix(name: &str) -> String {
    let trimmed = name.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// Every file under `prefix`, following the listing's pages.
async fn list_all(client: &Client, prefix: &str) -> anyhow::Result<Vec<Value>> {
    let mut files = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .send(
                Method::GET,
                &client.env_path("/storage/files"),
                &[("prefix", prefix.to_owned()), ("after", after.clone())],
                None,
            )
            .await?;
        files.extend(page["files"].as_array().into_iter().flatten().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return Ok(files),
        }
    }
}

pub(crate) fn progress(total: u64, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{msg:24!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

async fn upload_one(
    client: &Client,
    local: &Path,
    remote: &str,
    content_type: Option<&str>,
    bar: &ProgressBar,
) -> anyhow::Result<Value> {
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot read {}", local.display()))?;
    bar.set_message(remote.to_owned());
    let counted = bar.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10)
        .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
    let mut req = client
        .raw(Method::PUT, &file_route(client, remote)?)
        .body(reqwest::Body::wrap_stream(body));
    if let Some(t) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, t);
    }
    let answer: Value = client.execute(req).await?.json().await?;
    Ok(answer["file"].clone())
}

/// Streams `remote` into `local`, through a temporary file renamed at the end.
async fn download_one(
    client: &Client,
    remote: &str,
    local: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    bar.set_message(remote.to_owned());
    fetch_into(client, &file_route(client, remote)?, local, None, bar).await
}

/// Streams the answer to `GET route` into `local`, through a temporary file renamed at
/// the end; created with `mode` when given (else the umask's default).
pub(crate) async fn fetch_into(
    client: &Client,
    route: &str,
    local: &Path,
    mode: Option<u32>,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let response = client.execute(client.raw(Method::GET, route)).await?;
    if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let partial = local.with_file_name(format!(
        ".{}.yun-partial",
        local
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    let result = async {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut out = options.open(&partial).await?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        out.flush().await?;
        tokio::fs::rename(&partial, local).await?;
        Ok::<_, anyhow::Error>(written)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result.with_context(|| format!("cannot write {}", local.display()))
}

/// `rel`, a validated cloud path, under `root`; refuses anything that would leave it.
fn local_target(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!(
            "refusing to write {} outside {}",
            rel.display(),
            root.display()
        );
    }
    Ok(root.join(rel))
}

fn human_files(files: &[Value], verb: &str) {
    for f in files {
        println!(
            "{verb} {} ({})",
            text(f.get("path")),
            HumanBytes(f["size"].as_u64().unwrap_or(0))
        );
    }
}

pub async fn storage(command: StorageCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let json = conn.json;
    match command {
        StorageCommand::Upload {
            local,
            remote,
            content_type,
        } => {
            let jobs: Vec<(PathBuf, String)> = if local.is_dir() {
                let prefix = folder_prefix(remote.as_deref().unwrap_or(""));
                let mut jobs = Vec::new();
                for path in collect_files(&local)? {
                    if !path.is_file() {
                        continue;
                    }
                    let rel = path.strip_prefix(&local).unwrap_or(&path);
                    let rel = rel
                        .to_str()
                        .ok_or_else(|| anyhow!("{} is not a UTF-8 name", rel.display()))?;
                    jobs.push((path.clone(), format!("{prefix}{rel}")));
                }
                jobs
            } else {
                let name = local
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("{} is not a file", local.display()))?;
                let target = match remote.as_deref() {
                    None => name.to_owned(),
                    Some(r) if r.ends_with('/') => format!("{}{name}", folder_prefix(r)),
                    Some(r) => cloud_path(&client, r)?.to_owned(),
                };
                vec![(local.clone(), target)]
            };
            let mut total = 0;
            for (path, _) in &jobs {
                total += std::fs::metadata(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .len();
            }
            let bar = progress(total, json);
            let mut stored = Vec::with_capacity(jobs.len());
            for (path, remote) in &jobs {
                stored
                    .push(upload_one(&client, path, remote, content_type.as_deref(), &bar).await?);
            }
            bar.finish_and_clear();
            output::emit(json, &json!({ "files": stored }), |_| {
                human_files(&stored, "uploaded")
            });
        }
        StorageCommand::Download {
            remote,
            local,
            recursive,
        } => {
            let jobs: Vec<(String, PathBuf, u64)> = if recursive {
                let prefix = folder_prefix(cloud_path(&client, &remote)?);
                let root = local.unwrap_or_else(|| PathBuf::from("."));
                let mut jobs = Vec::new();
                for f in list_all(&client, &prefix).await? {
                    let path = text(f.get("path"));
                    let rel = path.strip_prefix(&prefix).unwrap_or(&path);
                    let target = local_target(&root, rel)?;
                    jobs.push((path, target, f["size"].as_u64().unwrap_or(0)));
                }
                jobs
            } else {
                let path = cloud_path(&client, &remote)?.to_owned();
                let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
                let target = match local {
                    Some(l) if l.is_dir() => l.join(name),
                    Some(l) => l,
                    None => PathBuf::from(name),
                };
                vec![(path, target, 0)]
            };
            let bar = progress(jobs.iter().map(|j| j.2).sum(), json);
            let mut done = Vec::with_capacity(jobs.len());
            for (remote, local, _) in &jobs {
                let size = download_one(&client, remote, local, &bar).await?;
                done.push(json!({ "path": remote, "local": local, "size": size }));
            }
            bar.finish_and_clear();
            output::emit(json, &json!({ "files": done }), |_| {
                for f in &done {
                    println!(
                        "downloaded {} -> {} ({})",
                        text(f.get("path")),
                        text(f.get("local")),
                        HumanBytes(f["size"].as_u64().unwrap_or(0))
                    );
                }
            });
        }
        StorageCommand::Ls { prefix } => {
            let prefix = prefix.unwrap_or_default();
            let files = list_all(&client, cloud_path(&client, &prefix)?).await?;
            output::emit(json, &json!({ "files": files }), |_| {
                output::table(
                    &["PATH", "SIZE", "TYPE", "UPLOADED"],
                    files
                        .iter()
                        .map(|f| {
                            vec![
                                text(f.get("path")),
                                HumanBytes(f["size"].as_u64().unwrap_or(0)).to_string(),
                                text(f.get("contentType")),
                                output::unix_ms_time(&f["createdAt"]),
                            ]
                        })
                        .collect(),
                )
            });
        }
        StorageCommand::Rm { paths, recursive } => {
            let mut targets = Vec::new();
            for name in &paths {
                let path = cloud_path(&client, name)?;
                if recursive {
                    let under = list_all(&client, &folder_prefix(path)).await?;
                    targets.extend(under.iter().map(|f| text(f.get("path"))));
                } else {
                    targets.push(path.to_owned());
                }
            }
            for path in &targets {
                client
                    .request(Method::DELETE, &file_route(&client, path)?, None)
                    .await?;
            }
            output::emit(json, &json!({ "deleted": targets }), |_| {
                for path in &targets {
                    println!("deleted {path}");
                }
                if targets.is_empty() {
                    println!("(nothing to delete)");
                }
            });
        }
        StorageCommand::Cp {
            from,
            to,
            recursive,
            move_original,
            no_clobber,
        } => {
            let (from, to) = (cloud_path(&client, &from)?, cloud_path(&client, &to)?);
            let pairs: Vec<(String, String)> = if recursive {
                let (from, to) = (folder_prefix(from), folder_prefix(to));
                list_all(&client, &from)
                    .await?
                    .iter()
                    .map(|f| {
                        let path = text(f.get("path"));
                        let target = format!("{to}{}", path.strip_prefix(&from).unwrap_or(&path));
                        (path, target)
                    })
                    .collect()
            } else {
                vec![(from.to_owned(), to.to_owned())]
            };
            let mut copied = Vec::with_capacity(pairs.len());
            for (from, to) in pairs {
                let answer = client
                    .request(
                        Method::POST,
                        &client.env_path("/storage/copy"),
                        Some(json!({
                            "from": from,
                            "to": to,
                            "overwrite": !no_clobber,
                            "move": move_original,
                        })),
                    )
                    .await?;
                copied.push(answer["file"].clone());
            }
            output::emit(json, &json!({ "files": copied }), |_| {
                human_files(
                    &copied,
                    if move_original {
                        "moved to"
                    } else {
                        "copied to"
                    },
                )
            });
        }
        StorageCommand::Rules { command } => {
            let path = client.env_path("/storage/rules");
            crate::rules::run(&client, conn.json, &path, "storage", command).await?;
        }
        StorageCommand::Url { paths, expires } => {
            let files = paths
                .iter()
                .map(|p| cloud_path(&client, p).map(str::to_owned))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let answer = client
                .request(
                    Method::POST,
                    &client.env_path("/storage/urls"),
                    Some(json!({ "files": files, "maxAge": expires.as_secs() })),
                )
                .await?;
            output::emit(json, &answer, |v| {
                for u in v["urls"].as_array().into_iter().flatten() {
                    println!("{}", text(u.get("url")));
                }
            });
        }
    }
    Ok(())
}
