//! The client commands: `env`, `key`, `fn`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::Client;
use crate::output::{self, text};
use crate::Connection;

#[derive(Subcommand)]
pub enum EnvCommand {
    /// List the envs (a platform key sees them all; an env key its own)
    List,
    /// Create an env; prints its first key.
    Create { id: String },
    /// Delete an env and everything in it.
    Delete { id: String },
    /// Show the env's settings (YUN_ENV / --env).
    Settings,
    /// Change the env's settings; unnamed ones keep their value.
    Configure {
        /// Documents a query returns when it names no limit (platform default 100).
        #[arg(long)]
        db_default_limit: Option<u32>,
        /// Largest limit a query may ask for (platform default 1000).
        #[arg(long)]
        db_max_limit: Option<u32>,
        /// Finds and counts that take this long (ms) go to the slow-query log
        /// (platform default 100).
        #[arg(long)]
        db_slow_query_ms: Option<u32>,
        /// What the env's functions may reach: internet (default), yun-only, none.
        /// Running instances are replaced.
        #[arg(long, value_parser = ["internet", "yun-only", "none"])]
        network: Option<String>,
        /// The UTC offset timer triggers are read in, e.g. +08:00 (the default, as
        /// CloudBase) or +00:00.
        #[arg(long, allow_hyphen_values = true)]
        timer_utc_offset: Option<String>,
        /// How long function logs and invocation records are kept, e.g. 7d, 12h
        /// (default 30d).
        #[arg(long, value_parser = parse_duration)]
        log_retention: Option<Duration>,
        /// The most the env's function logs may take, in MiB, oldest going first
        /// (default 1024).
        #[arg(long)]
        log_max_mb: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the env's keys (SecretIds, role, state; never the SecretKeys)
    List,
    /// Create a key for the env; the SecretKey is shown only now.
    Create {
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show the platform key in use; its SecretKey masked unless --reveal.
    Show {
        #[arg(long)]
        reveal: bool,
    },
    /// Revoke a key: requests signed with it stop working at once
    Revoke {
        /// The SecretId to revoke (named apart from the global --secret-id).
        #[arg(value_name = "SECRET_ID")]
        key_id: String,
    },
}

#[derive(Subcommand)]
pub enum FnCommand {
    /// Pack a function folder and deploy it as a new version.
    Deploy {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// file.export to call (default index.main).
        #[arg(long)]
        handler: Option<String>,
        /// Time limit per invocation, e.g. 3s, 500ms, 10 (seconds).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Memory limit in MB.
        #[arg(long)]
        memory: Option<u32>,
        #[arg(long)]
        max_instances: Option<u32>,
        /// K=V, repeatable. Replaces the previous version's variables when given.
        #[arg(long = "env-var")]
        env_vars: Vec<String>,
        /// Expose the function over HTTP at /{env}{path}; "" removes it.
        #[arg(long)]
        http_path: Option<String>,
        /// Async events: retries of a runtime error (0–10; SCF's default 2). Any of the
        /// three --async-* options sets all three; the ones left out take SCF's defaults.
        #[arg(long)]
        async_retries: Option<u32>,
        /// Async events: time between retries (default 1m).
        #[arg(long, value_parser = parse_duration)]
        async_retry_interval: Option<Duration>,
        /// Async events: how long an event may wait, retries included (default 6h).
        #[arg(long, value_parser = parse_duration)]
        async_max_age: Option<Duration>,
    },
    /// Invoke and print the result; with --async, queue the event and print its request id.
    Invoke {
        name: String,
        /// The event, as JSON: `yun fn invoke hello '{"n":1}'` (default `{}`).
        #[arg(conflicts_with = "data")]
        event: Option<String>,
        /// The event, as JSON (the same as EVENT).
        #[arg(long)]
        data: Option<String>,
        /// Queue the event (SCF's async invocation: retries, then the dead-letter queue).
        #[arg(long = "async")]
        queued: bool,
    },
    /// SCF's reserved concurrency: `--reserved N` caps the function at N instances (0
    /// disables it: every call is throttled); `--clear` goes back to --max-instances.
    Concurrency {
        name: String,
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        reserved: Option<u32>,
        #[arg(long)]
        clear: bool,
    },
    /// The dead-letter queue: async events that failed for good.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Triggers: timers (SCF's 7-field cron) and database changes. A deploy replaces
    /// a function's triggers with the `triggers` of its folder's config.json, if any.
    Trigger {
        #[command(subcommand)]
        command: TriggerCommand,
    },
    /// Show logs; -f follows.
    Logs {
        name: String,
        /// The lines of one invocation, and of every invocation it caused (functions it
        /// called, async events it queued); --only for its own lines alone.
        #[arg(long)]
        request_id: Option<String>,
        /// With --request-id: only that invocation's own lines.
        #[arg(long, requires = "request_id")]
        only: bool,
        /// Only lines newer than this, e.g. 10m, 2h.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Only lines older than this, e.g. 10m (ago).
        #[arg(long, value_parser = parse_duration)]
        until: Option<Duration>,
        /// Only lines matching this regular expression.
        #[arg(long)]
        grep: Option<String>,
        /// Only lines at this level or above.
        #[arg(long, value_parser = ["debug", "info", "warn", "error"])]
        level: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// List the env's functions
    List,
    /// Delete a function with all its versions
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum TriggerCommand {
    /// Add a trigger: `yun fn trigger create nightly --name t --type timer --config '0 0 2 * * * *'`
    Create {
        function: String,
        #[arg(long)]
        name: String,
        /// timer or database
        #[arg(long = "type")]
        kind: String,
        /// A timer's cron, or a database trigger's JSON `{"collection", "events", "filter"}`.
        #[arg(long, allow_hyphen_values = true)]
        config: String,
    },
    /// List the env's triggers, or one function's
    List { function: Option<String> },
    /// Delete a trigger
    Delete { function: String, name: String },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List a function's dead letters
    List { name: String },
    /// Show one dead letter in full: error, event, retries, times
    Show { name: String, request_id: String },
    /// Queue dead letters again as new async events (all, or one) and remove them
    Replay {
        name: String,
        request_id: Option<String>,
    },
    /// Delete dead letters (all, or one)
    Purge {
        name: String,
        request_id: Option<String>,
    },
}

/// `500ms`, `3s`, `10m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 3s, 10m, 2h, 7d"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    })
}

pub async fn env(command: EnvCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        EnvCommand::List => {
            print_list(
                &client,
                conn.json,
                "/api/v1/envs",
                "envs",
                &["ENV", "CREATED (UTC)"],
                |e| vec![text(e.get("id")), output::unix_time(&e["created_at"])],
            )
            .await?;
        }
        EnvCommand::Create { id } => {
            let v = client
                .request(Method::POST, "/api/v1/envs", Some(json!({ "id": id })))
                .await?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "Created env {id}.\n  SecretId   {}\n  SecretKey  {}",
                    text(v.pointer("/key/secret_id")),
                    text(v.pointer("/key/secret_key"))
                );
            });
        }
        EnvCommand::Delete { id } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &format!("/api/v1/envs/{id}"),
                None,
                &format!("Deleted env {id}."),
            )
            .await?;
        }
        EnvCommand::Settings => {
            let v = client
                .request(Method::GET, &client.env_path("/settings"), None)
                .await?;
            output::emit(conn.json, &v, |v| {
                let s = &v["settings"];
                println!(
                    "db_default_limit  {}",
                    s.get("db_default_limit")
                        .map_or("100 (default)".into(), |n| n.to_string())
                );
                println!(
                    "db_max_limit      {}",
                    s.get("db_max_limit")
                        .map_or("1000 (default)".into(), |n| n.to_string())
                );
                println!(
                    "db_slow_query_ms  {}",
                    s.get("db_slow_query_ms")
                        .map_or("100 (default)".into(), |n| n.to_string())
                );
                println!(
                    "timer_utc_offset  {}",
                    s.get("timer_utc_offset")
                        .and_then(Value::as_str)
                        .unwrap_or("+08:00 (default)")
                );
                println!(
                    "log_retention     {}",
                    s.get("log_retention_secs")
                        .and_then(Value::as_u64)
                        .map_or("30d (default)".into(), |n| format!("{n}s"))
                );
                println!(
                    "log_max_mb        {}",
                    s.get("log_max_mb")
                        .map_or("1024 (default)".into(), |n| n.to_string())
                );
            });
        }
        EnvCommand::Configure {
            db_default_limit,
            db_max_limit,
            db_slow_query_ms,
            network,
            timer_utc_offset,
            log_retention,
            log_max_mb,
        } => {
            let current = client
                .request(Method::GET, &client.env_path("/settings"), None)
                .await?;
            let mut settings = current["settings"].as_object().cloned().unwrap_or_default();
            if let Some(n) = db_default_limit {
                settings.insert("db_default_limit".into(), json!(n));
            }
            if let Some(n) = db_max_limit {
                settings.insert("db_max_limit".into(), json!(n));
            }
            if let Some(n) = db_slow_query_ms {
                settings.insert("db_slow_query_ms".into(), json!(n));
            }
            if let Some(policy) = network {
                settings.insert("network".into(), json!(policy));
            }
            if let Some(offset) = timer_utc_offset {
                settings.insert("timer_utc_offset".into(), json!(offset));
            }
            if let Some(age) = log_retention {
                settings.insert("log_retention_secs".into(), json!(age.as_secs().max(1)));
            }
            if let Some(mb) = log_max_mb {
                settings.insert("log_max_mb".into(), json!(mb));
            }
            let v = client
                .request(
                    Method::PUT,
                    &client.env_path("/settings"),
                    Some(Value::Object(settings)),
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                println!("Settings of env {}: {}", client.env, v["settings"])
            });
        }
    }
    Ok(())
}

pub async fn key(command: KeyCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        KeyCommand::List => {
            print_list(
                &client,
                conn.json,
                &client.env_path("/keys"),
                "keys",
                &["SECRET_ID", "ROLE", "STATE", "DESCRIPTION"],
                |k| {
                    let state = if k["revoked_at"].is_null() {
                        "active"
                    } else {
                        "revoked"
                    };
                    vec![
                        text(k.get("secret_id")),
                        text(k.get("role")),
                        state.into(),
                        text(k.get("description")),
                    ]
                },
            )
            .await?;
        }
        KeyCommand::Create { description } => {
            let v = client
                .request(
                    Method::POST,
                    &client.env_path("/keys"),
                    Some(json!({ "description": description })),
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "SecretId   {}\nSecretKey  {}",
                    text(v.pointer("/key/secret_id")),
                    text(v.pointer("/key/secret_key"))
                );
            });
        }
        KeyCommand::Show { reveal } => {
            let v = client
                .send(
                    Method::GET,
                    "/api/v1/key",
                    &[("reveal", reveal.to_string())],
                    None,
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "SecretId   {}\nEnv        {}\nRole       {}\nSecretKey  {}",
                    text(v.pointer("/key/secret_id")),
                    text(v.pointer("/key/env")),
                    text(v.pointer("/key/role")),
                    text(v.pointer("/key/secret_key"))
                );
            });
        }
        KeyCommand::Revoke { key_id } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &client.env_path(&format!("/keys/{key_id}")),
                None,
                &format!("Revoked {key_id}."),
            )
            .await?;
        }
    }
    Ok(())
}

/// Every regular file, folder and symlink under `dir` (symlinks stored as links; the
/// server refuses ones that point outside). `.git` is left out.
pub(crate) fn collect_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)
            .with_context(|| format!("cannot read {}", current.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name() == ".git" {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let files = collect_files(dir)?;
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("packing   {bar:30} {pos}/{len} files")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    builder.follow_symlinks(false);
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        if path.is_symlink() || path.is_file() {
            builder
                .append_path_with_name(&path, rel)
                .with_context(|| format!("cannot pack {}", path.display()))?;
        } else {
            builder.append_dir(rel, &path)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(builder.into_inner()?.finish()?)
}

/// `yun deploy`: the project's functions (or the ones named), one after the other.
pub async fn deploy_project(
    dir: &Path,
    names: &[String],
    mode: Option<&str>,
    conn: Connection,
) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let functions = crate::project::load(dir, &client.env, mode)?;
    for name in names {
        if !functions.iter().any(|f| &f.name == name) {
            bail!("{name} is not among the project's functions");
        }
    }
    for f in functions {
        if names.is_empty() || names.contains(&f.name) {
            deploy_folder(&client, conn.json, &f.dir, &f.name, f.fields).await?;
        }
    }
    Ok(())
}

pub async fn function(command: FnCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        FnCommand::Deploy {
            dir,
            name,
            handler,
            timeout,
            memory,
            max_instances,
            env_vars,
            http_path,
            async_retries,
            async_retry_interval,
            async_max_age,
        } => {
            let async_retry = (async_retries.is_some()
                || async_retry_interval.is_some()
                || async_max_age.is_some())
            .then(|| {
                json!({
                    "retries": async_retries.unwrap_or(2),
                    "interval_s": async_retry_interval.map_or(60, |d| d.as_secs()),
                    "max_age_s": async_max_age.map_or(6 * 3600, |d| d.as_secs()),
                })
            });
            let vars: Option<BTreeMap<String, String>> = if env_vars.is_empty() {
                None
            } else {
                Some(
                    env_vars
                        .iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .with_context(|| format!("--env-var {kv:?} must be K=V"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                )
            };
            let mut fields = Map::new();
            for (k, v) in [
                ("handler", json!(handler)),
                ("timeout_ms", json!(timeout.map(|t| t.as_millis() as u64))),
                ("memory_mb", json!(memory)),
                ("max_instances", json!(max_instances)),
                ("env_vars", json!(vars)),
                ("http_path", json!(http_path)),
                ("async_retry", json!(async_retry)),
                ("triggers", config_triggers(&dir)?.unwrap_or(Value::Null)),
            ] {
                fields.insert(k.into(), v);
            }
            deploy_folder(&client, conn.json, &dir, &name, fields).await?;
        }
        FnCommand::Invoke {
            name,
            event,
            data,
            queued: true,
        } => {
            let given = event.or(data).unwrap_or_else(|| "{}".to_owned());
            let event: Value = serde_json::from_str(&given).context("the event must be JSON")?;
            let v = client
                .send(
                    Method::POST,
                    &client.env_path(&format!("/functions/{name}/invoke")),
                    &[("async", "true".to_owned())],
                    Some(event),
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                println!("Queued: request id {}", text(v.get("request_id")));
            });
        }
        FnCommand::Dlq { command } => dead_letters(&client, conn.json, command).await?,
        FnCommand::Concurrency { name, reserved, .. } => {
            let v = client
                .request(
                    Method::PUT,
                    &client.env_path(&format!("/functions/{name}/concurrency")),
                    Some(json!({ "reserved": reserved })),
                )
                .await?;
            output::emit(conn.json, &v, |_| match reserved {
                Some(0) => println!("{name} is disabled (reserved concurrency 0)."),
                Some(n) => println!("{name} runs at most {n} instances (reserved concurrency)."),
                None => println!("{name} has no reserved concurrency."),
            });
        }
        FnCommand::Trigger { command } => triggers(&client, conn.json, command).await?,
        FnCommand::Invoke {
            name, event, data, ..
        } => {
            let given = event.or(data).unwrap_or_else(|| "{}".to_owned());
            let event: Value = serde_json::from_str(&given).context("the event must be JSON")?;
            let v = client
                .request(
                    Method::POST,
                    &client.env_path(&format!("/functions/{name}/invoke")),
                    Some(event),
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["result"]).unwrap_or_default()
                );
                eprintln!(
                    "request id {}  {} ms{}",
                    text(v.get("request_id")),
                    text(v.get("duration_ms")),
                    if v["cold_start"] == true {
                        "  cold start"
                    } else {
                        ""
                    }
                );
            });
        }
        FnCommand::Logs {
            name,
            request_id,
            only,
            since,
            until,
            grep,
            level,
            follow,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(id) = request_id {
                query.push(("request_id", id));
                if !only {
                    query.push(("caused", "true".into()));
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            if let Some(since) = since {
                query.push(("since_ms", (now - since.as_millis() as i64).to_string()));
            }
            if let Some(until) = until {
                query.push(("until_ms", (now - until.as_millis() as i64).to_string()));
            }
            if let Some(pattern) = grep {
                query.push(("grep", pattern));
            }
            if let Some(level) = level {
                query.push(("level", level));
            }
            let path = client.env_path(&format!("/functions/{name}/logs"));
            let mut after: Option<i64> = None;
            loop {
                let mut q = query.clone();
                if let Some(id) = after {
                    q.push(("after_id", id.to_string()));
                }
                let v = client.send(Method::GET, &path, &q, None).await?;
                let lines = v["logs"].as_array().cloned().unwrap_or_default();
                for line in &lines {
                    if conn.json {
                        println!("{line}");
                    } else {
                        println!(
                            "{} {} {:<5} {}",
                            text(line.get("at_ms")),
                            text(line.get("request_id")),
                            text(line.get("level")),
                            text(line.get("message"))
                        );
                    }
                }
                if let Some(last) = lines.last().and_then(|l| l["id"].as_i64()) {
                    after = Some(last);
                }
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        FnCommand::List => {
            print_list(
                &client,
                conn.json,
                &client.env_path("/functions"),
                "functions",
                &[
                    "NAME",
                    "VERSION",
                    "TIMEOUT",
                    "MEMORY",
                    "MAX",
                    "BUSY/IDLE",
                    "HTTP_PATH",
                ],
                |f| {
                    vec![
                        text(f.get("name")),
                        text(f.get("version")),
                        format!("{}ms", text(f.get("timeout_ms"))),
                        format!("{}MB", text(f.get("memory_mb"))),
                        text(f.get("max_instances")),
                        format!(
                            "{}/{}",
                            text(f.pointer("/instances/busy")),
                            text(f.pointer("/instances/idle"))
                        ),
                        text(f.get("http_path")),
                    ]
                },
            )
            .await?;
        }
        FnCommand::Delete { name } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &client.env_path(&format!("/functions/{name}")),
                None,
                &format!("Deleted {name}."),
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("ms").is_err());
    }
}

/// A query as `yun db query` and `yun db explain` take it.
#[derive(clap::Args)]
pub struct QueryArgs {
    collection: String,
    #[arg(long = "where")]
    filter: Option<String>,
    #[arg(long)]
    order: Option<String>,
    #[arg(long, default_value_t = 0)]
    skip: usize,
    #[arg(long)]
    limit: Option<usize>,
}

impl QueryArgs {
    /// The management API's query body and the collection's path.
    fn request(&self, client: &Client, route: &str) -> anyhow::Result<(String, Value)> {
        Ok((
            client.env_path(&format!("/collections/{}/{route}", self.collection)),
            json!({
                "where": json_arg("where", self.filter.clone())?,
                "order": json_arg("order", self.order.clone())?,
                "skip": self.skip,
                "limit": self.limit,
            }),
        ))
    }
}

/// One line per query report: where it read, what it examined, how long it took.
fn report_line(r: &Value) -> Vec<String> {
    let plan = &r["plan"];
    let how = match plan["stage"].as_str() {
        Some("INDEX_SCAN") => format!(
            "index {} ({} range{}, {}{})",
            output::text(plan.get("index")),
            plan["ranges"],
            if plan["ranges"] == json!(1) { "" } else { "s" },
            output::text(plan.get("direction")),
            if plan["servesOrder"] == json!(true) {
                ", in order"
            } else {
                ""
            }
        ),
        Some(other) => other.to_lowercase().replace('_', " "),
        None => "?".into(),
    };
    vec![
        format!("{:.1}", r["millis"].as_f64().unwrap_or(0.0)),
        how,
        r["keysExamined"].to_string(),
        r["docsExamined"].to_string(),
        r["returned"].to_string(),
    ]
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// List the env's collections.
    Collections,
    /// Point-in-time restore: a new data folder (INTO) as the data folder was at TIME —
    /// the newest backup before it, and the changes that followed up to it. Runs here,
    /// on the data folder's backups; the live folder is only read.
    Restore {
        /// RFC 3339 (2026-12-05T08:00:00Z) or Unix milliseconds.
        #[arg(long, value_parser = crate::parse_time)]
        to: i64,
        #[arg(long)]
        into: std::path::PathBuf,
        #[arg(long, default_value = ".yun")]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Create a collection.
    Create { name: String },
    /// Drop a collection with its documents and indexes.
    Drop { name: String },
    /// Read documents: `yun db query todos --where '{"done":false}' --order '{"n":-1}' --limit 5`.
    Query {
        #[command(flatten)]
        query: QueryArgs,
        /// Projection, e.g. '{"title":1}'.
        #[arg(long)]
        fields: Option<String>,
    },
    /// Run a query and show how it ran: the index and ranges used, index entries and
    /// documents examined, documents returned, time.
    Explain {
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Finds and counts slower than the env's threshold (`yun env configure
    /// --db-slow-query-ms`, default 100), newest first, with values stripped.
    SlowQueries,
    /// Import JSON Lines or CSV (by extension, or --format), all or nothing.
    Import {
        collection: String,
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// insert: a duplicate _id fails the whole import; upsert: replace by _id.
        #[arg(long, value_enum, default_value = "insert")]
        mode: ImportMode,
    },
    /// Export every document as JSON Lines or CSV (by extension, or --format).
    Export {
        collection: String,
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
    },
    /// Indexes of a collection.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Security rules of a collection for end users (admin keys bypass them):
    /// `get COLLECTION`, `set COLLECTION RULES` (a preset, JSON or @FILE), `reset
    /// COLLECTION`. The older order `COLLECTION get|set|reset` still works.
    Rules {
        #[arg(num_args = 2..=3, value_names = ["ACTION", "COLLECTION", "RULES"])]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Create an index: `yun db index create todos by_owner --field owner --field n:desc --unique`.
    Create {
        collection: String,
        name: String,
        /// FIELD or FIELD:desc, repeatable, in key order.
        #[arg(long = "field", required = true)]
        fields: Vec<String>,
        #[arg(long)]
        unique: bool,
    },
    /// List a collection's indexes
    List { collection: String },
    /// Drop an index
    Drop { collection: String, name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FileFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportMode {
    Insert,
    Upsert,
}

fn file_format(file: &Path, flag: Option<FileFormat>) -> FileFormat {
    flag.unwrap_or(
        if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            FileFormat::Csv
        } else {
            FileFormat::Jsonl
        },
    )
}

/// A CSV cell: JSON when it parses as a number, boolean, null, object or array; text otherwise.
fn csv_cell(cell: &str) -> Value {
    let looks_json = cell.starts_with(['{', '[', '-'])
        || cell.starts_with(|c: char| c.is_ascii_digit())
        || matches!(cell, "true" | "false" | "null");
    looks_json
        .then(|| serde_json::from_str(cell).ok())
        .flatten()
        .unwrap_or_else(|| Value::String(cell.to_owned()))
}

fn read_documents(file: &Path, format: FileFormat) -> anyhow::Result<Vec<Value>> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("reading   {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let reader = bar.wrap_read(std::fs::File::open(file)?);
    let docs = match format {
        FileFormat::Jsonl => {
            use std::io::BufRead as _;
            let mut docs = Vec::new();
            for (n, line) in std::io::BufReader::new(reader).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let doc: Value = serde_json::from_str(&line)
                    .with_context(|| format!("line {} is not a JSON document", n + 1))?;
                if !doc.is_object() {
                    bail!("line {} is not a JSON object", n + 1);
                }
                docs.push(doc);
            }
            docs
        }
        FileFormat::Csv => {
            let mut csv = csv::Reader::from_reader(reader);
            let headers = csv.headers()?.clone();
            let mut docs = Vec::new();
            for (n, record) in csv.records().enumerate() {
                let record = record.with_context(|| format!("CSV row {} is malformed", n + 2))?;
                let doc: serde_json::Map<String, Value> = headers
                    .iter()
                    .zip(record.iter())
                    .filter(|(_, cell)| !cell.is_empty())
                    .map(|(h, cell)| {
                        (
                            h.to_owned(),
                            if h == "_id" {
                                Value::String(cell.to_owned())
                            } else {
                                csv_cell(cell)
                            },
                        )
                    })
                    .collect();
                docs.push(Value::Object(doc));
            }
            docs
        }
    };
    bar.finish_and_clear();
    Ok(docs)
}

fn write_documents(file: &Path, format: FileFormat, docs: &[Value]) -> anyhow::Result<()> {
    let out =
        std::fs::File::create(file).with_context(|| format!("cannot write {}", file.display()))?;
    let mut out = std::io::BufWriter::new(out);
    match format {
        FileFormat::Jsonl => {
            use std::io::Write as _;
            for doc in docs {
                writeln!(out, "{doc}")?;
            }
        }
        FileFormat::Csv => {
            let mut columns: Vec<String> = Vec::new();
            for doc in docs {
                for key in doc.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(&columns)?;
            for doc in docs {
                csv.write_record(columns.iter().map(|c| match doc.get(c) {
                    None => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }))?;
            }
            csv.flush()?;
        }
    }
    Ok(())
}

/// Sends one request and prints `done` (the response with --json).
pub(crate) async fn act(
    client: &Client,
    json: bool,
    method: Method,
    path: &str,
    body: Option<Value>,
    done: &str,
) -> anyhow::Result<()> {
    let v = client.request(method, path, body).await?;
    output::emit(json, &v, |_| println!("{done}"));
    Ok(())
}

/// GETs `path` and prints its `key` array as a table (the whole response with --json).
/// Packs `dir` and deploys it as `name` with the deploy request's other `fields`.
pub(crate) async fn deploy_folder(
    client: &Client,
    json_out: bool,
    dir: &Path,
    name: &str,
    mut fields: Map<String, Value>,
) -> anyhow::Result<()> {
    let archive = pack(dir)?;
    // A first start installs the SDK layer; the deploy waits for it on the server.
    let layer_note = match client.readiness().await {
        Some(reason) => format!(" (waiting first: {reason})"),
        None => String::new(),
    };
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "{name}: uploading {} KiB, installing, checking the handler{layer_note}",
        archive.len() / 1024
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    fields.insert(
        "code_base64".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&archive)),
    );
    let result = client
        .request(
            Method::PUT,
            &client.env_path(&format!("/functions/{name}")),
            Some(Value::Object(fields)),
        )
        .await;
    spinner.finish_and_clear();
    let v = result?;
    output::emit(json_out, &v, |v| {
        let f = &v["function"];
        let sha = text(f.get("code_sha256"));
        println!(
            "Deployed {name} version {} ({} bytes, sha256 {}).",
            text(f.get("version")),
            text(f.get("code_size")),
            &sha[..12.min(sha.len())]
        );
        if let Some(path) = f.get("http_path").and_then(Value::as_str) {
            println!("HTTP: {}/{}{}", client.url, client.env, path);
        }
    });
    Ok(())
}

/// The `triggers` of a function folder's `config.json` (WeChat DevTools' file), if any.
fn config_triggers(dir: &Path) -> anyhow::Result<Option<Value>> {
    let path = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let config: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(config.get("triggers").cloned())
}

async fn triggers(client: &Client, json: bool, command: TriggerCommand) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Create {
            function,
            name,
            kind,
            config,
        } => {
            // A database trigger's config is JSON; a timer's is its cron string.
            let config = match kind.as_str() {
                "timer" => Value::String(config),
                _ => serde_json::from_str(&config).context("--config must be JSON")?,
            };
            let v = client
                .request(
                    Method::POST,
                    &client.env_path(&format!("/functions/{function}/triggers")),
                    Some(json!({ "name": name, "type": kind, "config": config })),
                )
                .await?;
            output::emit(json, &v, |_| {
                println!("Created trigger {name} of {function}.")
            });
        }
        TriggerCommand::List { function } => {
            let path = match &function {
                Some(f) => client.env_path(&format!("/functions/{f}/triggers")),
                None => client.env_path("/triggers"),
            };
            print_list(
                client,
                json,
                &path,
                "triggers",
                &["FUNCTION", "NAME", "TYPE", "CONFIG", "LAST_FIRED"],
                |t| {
                    vec![
                        text(t.get("function")),
                        text(t.get("name")),
                        text(t.get("type")),
                        text(t.get("config")),
                        text(t.get("last_fired_ms")),
                    ]
                },
            )
            .await?;
        }
        TriggerCommand::Delete { function, name } => {
            let v = client
                .request(
                    Method::DELETE,
                    &client.env_path(&format!("/functions/{function}/triggers/{name}")),
                    None,
                )
                .await?;
            output::emit(json, &v, |_| {
                println!("Deleted trigger {name} of {function}.")
            });
        }
    }
    Ok(())
}

async fn dead_letters(client: &Client, json: bool, command: DlqCommand) -> anyhow::Result<()> {
    let path =
        |name: &str, tail: &str| client.env_path(&format!("/functions/{name}/dead-letters{tail}"));
    let one = |id: Option<String>| -> Vec<(&'static str, String)> {
        id.map(|id| ("request_id", id)).into_iter().collect()
    };
    match command {
        DlqCommand::List { name } => {
            print_list(
                client,
                json,
                &path(&name, ""),
                "dead_letters",
                &["REQUEST_ID", "FAILED_AT", "RETRIES", "SOURCE", "ERROR"],
                |l| {
                    vec![
                        text(l.get("request_id")),
                        text(l.get("failed_at_ms")),
                        text(l.get("retry_num")),
                        text(
                            l.get("trigger")
                                .filter(|t| !t.is_null())
                                .or(l.get("source")),
                        ),
                        format!(
                            "{}: {}",
                            text(l.get("error_code")),
                            text(l.get("error_message"))
                        ),
                    ]
                },
            )
            .await?;
        }
        DlqCommand::Show { name, request_id } => {
            let v = client
                .send(Method::GET, &path(&name, ""), &one(Some(request_id)), None)
                .await?;
            let letter = v["dead_letters"][0].clone();
            output::emit(json, &letter, |l| {
                println!("{}", serde_json::to_string_pretty(l).unwrap_or_default());
            });
        }
        DlqCommand::Replay { name, request_id } => {
            let v = client
                .send(
                    Method::POST,
                    &path(&name, "/replay"),
                    &one(request_id),
                    None,
                )
                .await?;
            output::emit(json, &v, |v| {
                let ids = v["replayed"].as_array().cloned().unwrap_or_default();
                println!("Replayed {} event(s) as new async invocations:", ids.len());
                for id in ids {
                    println!("  {}", text(Some(&id)));
                }
            });
        }
        DlqCommand::Purge { name, request_id } => {
            let v = client
                .send(Method::DELETE, &path(&name, ""), &one(request_id), None)
                .await?;
            output::emit(json, &v, |v| {
                println!("Purged {} dead letter(s).", text(v.get("purged")));
            });
        }
    }
    Ok(())
}

pub(crate) async fn print_list(
    client: &Client,
    json: bool,
    path: &str,
    key: &str,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    let v = client.request(Method::GET, path, None).await?;
    output::emit(json, &v, |v| {
        output::table(
            headers,
            v[key].as_array().into_iter().flatten().map(&row).collect(),
        )
    });
    Ok(())
}

fn json_arg(flag: &str, text: Option<String>) -> anyhow::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).with_context(|| format!("--{flag} must be JSON")))
        .transpose()
}

pub async fn db(command: DbCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        // Handled before a connection is made (`main.rs`).
        DbCommand::Restore { .. } => anyhow::bail!("yun db restore runs without a server"),
        DbCommand::Collections => {
            print_list(
                &client,
                conn.json,
                &client.env_path("/collections"),
                "collections",
                &["COLLECTION"],
                |c| vec![text(Some(c))],
            )
            .await?;
        }
        DbCommand::Create { name } => {
            act(
                &client,
                conn.json,
                Method::POST,
                &client.env_path("/collections"),
                Some(json!({ "name": name })),
                &format!("Created collection {name}."),
            )
            .await?;
        }
        DbCommand::Drop { name } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &client.env_path(&format!("/collections/{name}")),
                None,
                &format!("Dropped collection {name}."),
            )
            .await?;
        }
        DbCommand::Query { query, fields } => {
            let (path, mut body) = query.request(&client, "query")?;
            body["projection"] = json!(json_arg("fields", fields)?);
            let v = client.request(Method::POST, &path, Some(body)).await?;
            output::emit(conn.json, &v, |v| {
                for doc in v["documents"].as_array().into_iter().flatten() {
                    println!("{doc}");
                }
            });
        }
        DbCommand::Explain { query } => {
            let (path, body) = query.request(&client, "explain")?;
            let v = client.request(Method::POST, &path, Some(body)).await?;
            output::emit(conn.json, &v, |v| {
                output::table(
                    &["ms", "read", "index entries", "documents", "returned"],
                    vec![report_line(v)],
                );
            });
        }
        DbCommand::SlowQueries => {
            let v = client
                .request(Method::GET, &client.env_path("/slow-queries"), None)
                .await?;
            output::emit(conn.json, &v, |v| {
                let rows = v["queries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|q| {
                        let mut row = vec![
                            output::unix_ms_time(&q["at"]),
                            format!(
                                "{} {}",
                                output::text(q.get("operation")),
                                output::text(q.get("collection"))
                            ),
                        ];
                        row.extend(report_line(q));
                        row.push(format!("{} {}", q["filter"], q["order"]));
                        row
                    })
                    .collect();
                output::table(
                    &[
                        "when",
                        "query",
                        "ms",
                        "read",
                        "index entries",
                        "documents",
                        "returned",
                        "shape",
                    ],
                    rows,
                );
            });
        }
        DbCommand::Import {
            collection,
            file,
            format,
            mode,
        } => {
            let docs = read_documents(&file, file_format(&file, format))?;
            let count = docs.len();
            let spinner = ProgressBar::new_spinner()
                .with_message(format!("importing {count} documents (all or nothing)"));
            spinner.enable_steady_tick(Duration::from_millis(100));
            let mode = match mode {
                ImportMode::Insert => "insert",
                ImportMode::Upsert => "upsert",
            };
            let body = json!({ "mode": mode, "documents": docs });
            let result = client
                .request(
                    Method::POST,
                    &client.env_path(&format!("/collections/{collection}/import")),
                    Some(body),
                )
                .await;
            spinner.finish_and_clear();
            let v = result?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "Imported {count} documents into {collection}: {} inserted, {} replaced.",
                    text(v.get("inserted")),
                    text(v.get("replaced"))
                )
            });
        }
        DbCommand::Export {
            collection,
            file,
            format,
        } => {
            let spinner = ProgressBar::new_spinner();
            spinner.enable_steady_tick(Duration::from_millis(100));
            let mut docs: Vec<Value> = Vec::new();
            loop {
                let body = json!({ "where": {}, "order": { "_id": 1 }, "skip": docs.len(), "limit": 1000 });
                let v = client
                    .request(
                        Method::POST,
                        &client.env_path(&format!("/collections/{collection}/query")),
                        Some(body),
                    )
                    .await?;
                let page = v["documents"].as_array().cloned().unwrap_or_default();
                let done = page.len() < 1000;
                docs.extend(page);
                spinner.set_message(format!("exported {} documents", docs.len()));
                if done {
                    break;
                }
            }
            spinner.finish_and_clear();
            write_documents(&file, file_format(&file, format), &docs)?;
            let v = json!({ "exported": docs.len(), "file": file.display().to_string() });
            output::emit(conn.json, &v, |_| {
                println!(
                    "Exported {} documents from {collection} to {}.",
                    docs.len(),
                    file.display()
                )
            });
        }
        DbCommand::Rules { args } => {
            let (collection, command) = crate::rules::collection_command(args)?;
            let path = client.env_path(&format!("/collections/{collection}/rules"));
            crate::rules::run(
                &client,
                conn.json,
                &path,
                &format!("collection {collection}"),
                command,
            )
            .await?;
        }
        DbCommand::Index { command } => match command {
            IndexCommand::Create {
                collection,
                name,
                fields,
                unique,
            } => {
                let fields: Vec<Value> = fields
                    .iter()
                    .map(|f| match f.rsplit_once(':') {
                        Some((field, "desc")) => Ok(json!({ "field": field, "direction": -1 })),
                        Some((field, "asc")) => Ok(json!({ "field": field, "direction": 1 })),
                        Some(_) => bail!("--field {f:?}: the order after ':' is asc or desc"),
                        None => Ok(json!({ "field": f, "direction": 1 })),
                    })
                    .collect::<anyhow::Result<_>>()?;
                let body = json!({ "name": name, "fields": fields, "unique": unique });
                act(
                    &client,
                    conn.json,
                    Method::POST,
                    &client.env_path(&format!("/collections/{collection}/indexes")),
                    Some(body),
                    &format!("Created index {name} on {collection}."),
                )
                .await?;
            }
            IndexCommand::List { collection } => {
                print_list(
                    &client,
                    conn.json,
                    &client.env_path(&format!("/collections/{collection}/indexes")),
                    "indexes",
                    &["NAME", "FIELDS", "UNIQUE"],
                    |i| {
                        let keys: Vec<String> = i["fields"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|f| {
                                format!(
                                    "{}{}",
                                    text(f.get("field")),
                                    if f["direction"] == -1 { ":desc" } else { "" }
                                )
                            })
                            .collect();
                        vec![
                            text(i.get("name")),
                            keys.join(", "),
                            (i["unique"] == true).to_string(),
                        ]
                    },
                )
                .await?;
            }
            IndexCommand::Drop { collection, name } => {
                act(
                    &client,
                    conn.json,
                    Method::DELETE,
                    &client.env_path(&format!("/collections/{collection}/indexes/{name}")),
                    None,
                    &format!("Dropped index {name}."),
                )
                .await?;
            }
        },
    }
    Ok(())
}

/// `yun usage`: the env's usage report as a table (or its JSON).
pub async fn usage(
    since: Duration,
    by: &str,
    function: Option<String>,
    conn: Connection,
) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut query = vec![
        ("since_ms", (now - since.as_millis() as i64).to_string()),
        ("by", by.to_owned()),
    ];
    if let Some(f) = function {
        query.push(("function", f));
    }
    let v = client
        .send(Method::GET, &client.env_path("/usage"), &query, None)
        .await?;
    output::emit(conn.json, &v, |v| {
        println!(
            "{:<24} {:>11} {:>7} {:>12} {:>12} {:>10} {:>10}",
            by.to_uppercase(),
            "INVOCATIONS",
            "ERRORS",
            "GB-SECONDS",
            "EGRESS",
            "DB_READS",
            "DB_WRITES"
        );
        let empty = Vec::new();
        let rows = v["rows"].as_array().unwrap_or(&empty);
        for row in rows.iter().chain(std::iter::once(&v["total"])) {
            let key = match (by, row["key"].as_str()) {
                (_, Some("total")) => "total".to_owned(),
                ("function", Some("")) => "(no function)".to_owned(),
                ("function", Some(name)) => name.to_owned(),
                (_, Some(ms)) => ms
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| ms.to_owned()),
                _ => String::new(),
            };
            println!(
                "{:<24} {:>11} {:>7} {:>12.3} {:>12} {:>10} {:>10}",
                key,
                text(row.get("invocations")),
                text(row.get("errors")),
                row["gb_seconds"].as_f64().unwrap_or_default(),
                text(row.get("egress_bytes")),
                text(row.get("db_reads")),
                text(row.get("db_writes"))
            );
        }
        println!(
            "\nstored: {} bytes in files, {} documents",
            text(v.get("stored_bytes")),
            text(v.get("documents"))
        );
    });
    Ok(())
}

/// `yun trace REQUEST_ID`: the spans of the request's trace as a tree.
pub async fn trace(request_id: &str, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let v = client
        .request(
            Method::GET,
            &client.env_path(&format!("/traces/{request_id}")),
            None,
        )
        .await?;
    output::emit(conn.json, &v, |v| {
        println!("trace {}", text(v.get("trace_id")));
        let empty = Vec::new();
        let spans = v["spans"].as_array().unwrap_or(&empty);
        let ids: std::collections::HashSet<&str> =
            spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
        // Roots: spans whose parent is not in the trace (the caller's, or none).
        let roots: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                s["parent_span_id"]
                    .as_str()
                    .is_none_or(|p| !ids.contains(p))
            })
            .collect();
        for (i, root) in roots.iter().enumerate() {
            print_span(spans, root, "", i + 1 == roots.len(), true);
        }
    });
    Ok(())
}

fn print_span(spans: &[Value], span: &Value, indent: &str, last: bool, root: bool) {
    let (branch, next) = match (root, last) {
        (true, _) => ("", String::new()),
        (false, true) => ("└─ ", format!("{indent}   ")),
        (false, false) => ("├─ ", format!("{indent}│  ")),
    };
    let duration_ms = span["duration_us"].as_f64().unwrap_or_default() / 1000.0;
    let request = span["request_id"]
        .as_str()
        .map(|r| format!("  {r}"))
        .unwrap_or_default();
    println!(
        "{indent}{branch}{}  {duration_ms:.1} ms  {}{request}",
        text(span.get("name")),
        text(span.get("status"))
    );
    let id = span["span_id"].as_str();
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| id.is_some() && s["parent_span_id"].as_str() == id)
        .collect();
    for (i, child) in children.iter().enumerate() {
        print_span(spans, child, &next, i + 1 == children.len(), false);
    }
}

#[derive(Subcommand)]
pub enum AlertCommand {
    /// Create a rule: it fires when METRIC over the window is above THRESHOLD.
    Create {
        name: String,
        /// error_rate (percent failed), p95_ms, throttles, dlq_depth.
        #[arg(long, value_parser = ["error_rate", "p95_ms", "throttles", "dlq_depth"])]
        metric: String,
        #[arg(long)]
        threshold: f64,
        /// e.g. 5m (1s to 7d).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        window: Duration,
        /// Only this function (default: the whole env).
        #[arg(long)]
        function: Option<String>,
        /// Where alerts are POSTed as JSON.
        #[arg(long)]
        webhook: String,
    },
    /// List the env's rules and whether they fire.
    List,
    Delete {
        name: String,
    },
    /// Send the rule's webhook a test alert now.
    Test {
        name: String,
    },
}

pub async fn alert(command: AlertCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        AlertCommand::Create {
            name,
            metric,
            threshold,
            window,
            function,
            webhook,
        } => {
            let body = json!({
                "name": name, "metric": metric, "threshold": threshold,
                "window_s": window.as_secs(), "function": function, "webhook": webhook,
            });
            let v = client
                .request(Method::POST, &client.env_path("/alerts"), Some(body))
                .await?;
            output::emit(conn.json, &v, |v| {
                println!("Created alert {}", text(v["alert"].get("name")))
            });
        }
        AlertCommand::List => {
            let v = client
                .request(Method::GET, &client.env_path("/alerts"), None)
                .await?;
            output::emit(conn.json, &v, |v| {
                println!(
                    "{:<20} {:<16} {:<11} {:>10} {:>8} {:<8} WEBHOOK",
                    "NAME", "FUNCTION", "METRIC", "THRESHOLD", "WINDOW", "STATE"
                );
                for a in v["alerts"].as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<16} {:<11} {:>10} {:>7}s {:<8} {}",
                        text(a.get("name")),
                        a["function"].as_str().unwrap_or("(env)"),
                        text(a.get("metric")),
                        text(a.get("threshold")),
                        text(a.get("window_s")),
                        if a["firing"].as_bool() == Some(true) {
                            "FIRING"
                        } else {
                            "ok"
                        },
                        text(a.get("webhook"))
                    );
                }
            });
        }
        AlertCommand::Delete { name } => {
            let v = client
                .request(
                    Method::DELETE,
                    &client.env_path(&format!("/alerts/{name}")),
                    None,
                )
                .await?;
            output::emit(conn.json, &v, |_| println!("Deleted alert {name}"));
        }
        AlertCommand::Test { name } => {
            let v = client
                .request(
                    Method::POST,
                    &client.env_path(&format!("/alerts/{name}/test")),
                    None,
                )
                .await?;
            let delivered = v["delivery"]["delivered"].as_bool() == Some(true);
            output::emit(conn.json, &v, |v| {
                let d = &v["delivery"];
                if delivered {
                    println!(
                        "Delivered (HTTP {}, {} attempt(s))",
                        text(d.get("status")),
                        text(d.get("attempts"))
                    );
                } else {
                    println!(
                        "Not delivered after {} attempt(s): {}",
                        text(d.get("attempts")),
                        text(d.get("error"))
                    );
                }
            });
            if !delivered {
                anyhow::bail!("the webhook did not take the test alert");
            }
        }
    }
    Ok(())
}

pub async fn backup_create(conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let v = client
        .request(Method::POST, "/api/v1/backups", None)
        .await?;
    output::emit(conn.json, &v, |v| {
        let b = &v["backup"];
        println!(
            "Backup {} taken in {} ms: {} files, {} bytes",
            text(b.get("id")),
            text(b.get("duration_ms")),
            text(b.get("files")),
            text(b.get("file_bytes"))
        );
    });
    Ok(())
}

pub async fn backup_list(conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    let v = client.request(Method::GET, "/api/v1/backups", None).await?;
    output::emit(conn.json, &v, |v| {
        println!("{:<28} {:>10} {:>14}", "ID", "FILES", "FILE BYTES");
        for b in v["backups"].as_array().into_iter().flatten() {
            println!(
                "{:<28} {:>10} {:>14}",
                text(b.get("id")),
                text(b.get("files")),
                text(b.get("file_bytes"))
            );
        }
    });
    Ok(())
}
