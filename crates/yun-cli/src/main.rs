//! The `yun` command. `yun dev` runs an embedded node; every other command is a client of
//! the management API. Errors print as one line and exit non-zero.

mod client;
mod commands;
mod output;
mod project;
mod rules;
mod rules_test;
mod serve;
mod storage;
mod transfer;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "yun",
    version,
    about = "Yun: a self-hosted serverless backend (functions, database, storage, auth)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the management API is and which key to use. Flags win over env vars, which win
/// over `./.yun/credentials.json`.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// Yun's URL, e.g. http://127.0.0.1:8787
    #[arg(long, env = "YUN_URL", global = true)]
    pub url: Option<String>,
    /// The env to act in.
    #[arg(long, env = "YUN_ENV", global = true)]
    pub env: Option<String>,
    #[arg(long, env = "YUN_SECRET_ID", global = true)]
    pub secret_id: Option<String>,
    #[arg(long, env = "YUN_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run Yun on this machine with the embedded backends (SQLite, local files).
    Dev(DevArgs),
    /// Run a node of a cluster: `yun dev`'s settings from flags, YUN_* variables and
    /// yun.toml, with the stores in PostgreSQL.
    Serve(serve::ServeArgs),
    /// Environments: create, list, delete.
    Env {
        #[command(subcommand)]
        command: commands::EnvCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Keys of the env: create, list, revoke; show the platform key in use.
    Key {
        #[command(subcommand)]
        command: commands::KeyCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// The document database: collections, indexes, quick queries.
    Db {
        #[command(subcommand)]
        command: commands::DbCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Files: upload, download, ls, rm, cp, url.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// End users of the env: list, get, disable, enable, delete.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// End-user sign-in settings: custom-login ticket keys, the token signing key.
    Auth {
        #[command(subcommand)]
        command: users::AuthCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Security rules: `yun rules test CASES.json` runs allow/deny cases against the rules
    /// engine, offline. (Set rules with `yun db rules` and `yun storage rules`.)
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Which protections of function instances this host gives, and why not.
    Doctor {
        /// The node binary instances would run.
        #[arg(long, default_value = "node")]
        node: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cloud functions: deploy, invoke, logs, list, delete.
    Fn {
        #[command(subcommand)]
        command: commands::FnCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Write the env (--env) into an archive for `yun import` on another server: settings,
    /// rules, keys, alerts, users and their sessions, collections, documents and indexes,
    /// files, functions (a platform key). Logs and invocation records stay.
    Export {
        /// The archive to write (default: {env}.yun.tar.gz).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Make the env of an archive of `yun export` on this server (a cluster through its
    /// load balancer, or a `yun dev`): a new env, or one that holds nothing yet. Never
    /// overwrites (a platform key).
    Import {
        /// The archive `yun export` wrote.
        file: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Usage of the env: invocations, GB-seconds, egress, database reads and writes, per
    /// function, hour or day; stored bytes and documents now.
    Usage {
        /// From this long ago, e.g. 24h, 7d (default 7d).
        #[arg(long, default_value = "7d", value_parser = commands::parse_duration)]
        since: std::time::Duration,
        /// A row per function, hour or day.
        #[arg(long, default_value = "function", value_parser = ["function", "hour", "day"])]
        by: String,
        /// Only this function.
        #[arg(long)]
        function: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Backups of the whole data folder: create and list (a platform key, through the
    /// server), restore into a new data folder (here, from the data folder's backups).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Alert rules: error rate, p95 duration, throttles or dead letters over a window,
    /// sent to a webhook when they fire and when they are resolved.
    Alert {
        #[command(subcommand)]
        command: commands::AlertCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// The trace of an invocation: every invocation and operation of its request, as a
    /// tree with durations.
    Trace {
        request_id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deploy the functions of a CloudBase project (`cloudbaserc.json`, or package.json's
    /// `cloudbase`) as `tcb fn deploy` does: all, or the ones named.
    Deploy {
        names: Vec<String>,
        /// The project folder (default: this one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Also reads `.env.MODE` for `{{env.X}}`.
        #[arg(long)]
        mode: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a backup now, online: every store as of one moment, files and function code.
    Create {
        #[command(flatten)]
        conn: Connection,
    },
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Make a new data folder of backup ID (of the data folder --data-dir), as it was
    /// then, or with --at as it was at that time (replayed from the change logs, which
    /// keep a week); then run `yun dev --data-dir TO` on it. The live folder is only read.
    Restore {
        /// The backup (default with --at: the newest taken before that time).
        id: Option<String>,
        #[arg(long)]
        to: PathBuf,
        /// RFC 3339 (2026-12-05T08:00:00Z) or Unix milliseconds.
        #[arg(long, value_parser = parse_time)]
        at: Option<i64>,
        #[arg(long, default_value = ".yun")]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run a table of cases: {"rules": {TARGET: RULES}, "cases": [{target, op, auth, doc, data, query, expect}]}.
    Test {
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// An `http://` or `https://` URL with a host, as links are made from it.
fn http_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("a URL starting with http:// or https://")?;
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err("a URL with a host, like https://yun.example.com".into());
    }
    Ok(text.to_owned())
}

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Where Yun keeps its data.
    #[arg(long, default_value = ".yun")]
    data_dir: PathBuf,
    /// Address to listen on (loopback by default: nothing is exposed to the network).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// The URL clients reach Yun at, in the links it makes (temporary file URLs, upload
    /// URLs): a load balancer's in a cluster (default: this node's own address)
    #[arg(long, value_parser = http_url)]
    public_url: Option<String>,
    /// Folder whose node_modules holds wx-server-sdk and @cloudbase/node-sdk (default: installed into the data dir).
    #[arg(long)]
    node_layer: Option<PathBuf>,
    /// Pre-started Node processes kept per memory size.
    #[arg(long, default_value_t = 2)]
    stem_cells: usize,
    /// Stop an instance after it has been idle this long (e.g. 60s, 5m).
    #[arg(long, default_value = "5m", value_parser = commands::parse_duration)]
    idle_timeout: std::time::Duration,
    /// How long an invocation waits for a free instance before it is throttled.
    #[arg(long, default_value = "3s", value_parser = commands::parse_duration)]
    queue_timeout: std::time::Duration,
    #[arg(long, default_value = "node")]
    node: PathBuf,
    #[arg(long, default_value = "npm")]
    npm: PathBuf,
    /// Where file bytes go: a folder, or `s3://BUCKET` with the endpoint and keys in the
    /// standard AWS_* variables (default: DATA_DIR/files)
    #[arg(long)]
    storage: Option<String>,
    /// Where async events and trigger deliveries wait: the data folder (SQLite, the
    /// default) or `nats://HOST:PORT[/PREFIX]` (NATS JetStream, shared by the processes
    /// using it; PREFIX names the streams, default yun)
    #[arg(long)]
    events: Option<String>,
    /// Where documents and the file index live: the data folder (SQLite, the default) or
    /// `postgres://USER@HOST:PORT/DATABASE` (PostgreSQL; processes may share it)
    #[arg(long, env = "YUN_DATABASE_URL")]
    database: Option<String>,
    /// The PostgreSQL schema Yun's tables live in (created when missing)
    #[arg(long, default_value = "yun", env = "YUN_POSTGRES_SCHEMA")]
    postgres_schema: String,
    /// Largest file an upload may store, in bytes
    #[arg(long, default_value_t = 5 << 30)]
    max_file_size: u64,
    /// Bytes of files each env may store
    #[arg(long, default_value_t = 50 << 30)]
    storage_quota: u64,
    /// Run instances in the sandbox (namespaces, seccomp, a uid each): auto (where the
    /// host allows), on (refuse to start without it), off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    sandbox: String,
    /// Uids sandboxed instances run as, FIRST-LAST.
    #[arg(long, default_value = "6000000-6065535", value_parser = parse_uid_range)]
    instance_uids: std::ops::RangeInclusive<u32>,
    /// Size of each instance's private /tmp, in MiB.
    #[arg(long, default_value_t = 64)]
    tmp_size_mb: u32,
    /// Serve no Prometheus metrics at /metrics (and record none).
    #[arg(long)]
    no_metrics: bool,
    /// Record no traces (`yun trace`; OTLP export with OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    no_traces: bool,
    /// The share of traces begun here (requests without a sampled `traceparent`) whose
    /// database and storage calls are recorded as spans, 0 to 1.
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    trace_sample: f64,
    /// How often old function logs and records are deleted (per env limits:
    /// `yun env configure --log-retention … --log-max-mb …`).
    #[arg(long, default_value = "1m", value_parser = commands::parse_duration)]
    retention_interval: std::time::Duration,
    /// How often alert rules (`yun alert`) are evaluated.
    #[arg(long, default_value = "15s", value_parser = commands::parse_duration)]
    alert_interval: std::time::Duration,
    /// On SIGTERM, answer /readyz with 503 for this long while still serving, so a
    /// load balancer stops sending requests; then stop. Ctrl-C stops at once.
    #[arg(long, default_value = "0s", value_parser = commands::parse_duration)]
    drain: std::time::Duration,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a number from 0 to 1, not {text:?}")),
    }
}

fn parse_uid_range(text: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| "expected FIRST-LAST".to_string())?;
    let first: u32 = first.trim().parse().map_err(|e| format!("{first}: {e}"))?;
    let last: u32 = last.trim().parse().map_err(|e| format!("{last}: {e}"))?;
    if first == 0 || last < first {
        return Err("the range must be non-empty and above 0".into());
    }
    Ok(first..=last)
}

// Why mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps freed pages for a second (`purge_delay`, 1000 ms): an upload's freed
/// 8 MiB parts then pile up (RSS +70 MiB during a 1 GiB upload); 100 ms keeps the growth
/// near glibc's (~35 MiB) at the same speed. 15 is `mi_option_purge_delay` in mimalloc.h,
/// which libmimalloc-sys does not name: it is set only while it reads the documented
/// default, so a renumbered option or a user's `MIMALLOC_PURGE_DELAY` is left alone.
#[allow(unsafe_code)]
fn tune_allocator() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: integer option reads and writes, which mimalloc allows at any time.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) == 1000 {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
        }
    }
    trim_c_heap_rarely();
}

/// SQLite allocates with the C allocator, not Rust's. glibc gives a thread arena's free
/// top back to the kernel (`madvise`) once it exceeds 128 KiB, which SQLite's statement
/// buffers reach on every write: each trim is a TLB shoot-down on every core, about a
/// tenth of the CPU of a point write under load. A fixed 8 MiB threshold keeps that
/// memory in the arena (fixing it also stops glibc's dynamic threshold) and bounds what
/// each arena keeps.
#[allow(unsafe_code)]
fn trim_c_heap_rarely() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an integer tunable; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

fn main() {
    // The sandbox's init is this binary too; it runs before anything else starts.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "sandbox-init")
    {
        yun_sandbox::init::run();
    }
    tune_allocator();
    // The matches too: `yun serve` tells a flag from a default.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => run_node(args, None, None).await,
            Command::Serve(args) => {
                let serve_matches = matches
                    .subcommand_matches("serve")
                    .expect("the serve subcommand matched");
                let resolved = serve::resolve(&args, serve_matches)?;
                if args.print_config() {
                    print!("{}", resolved.print());
                    return Ok(());
                }
                run_node(
                    resolved.node,
                    resolved.platform_key,
                    Some(resolved.node_name),
                )
                .await
            }
            Command::Env { command, conn } => commands::env(command, conn).await,
            Command::Key { command, conn } => commands::key(command, conn).await,
            Command::Fn { command, conn } => commands::function(command, conn).await,
            Command::Deploy {
                names,
                dir,
                mode,
                conn,
            } => commands::deploy_project(&dir, &names, mode.as_deref(), conn).await,
            Command::Db {
                command:
                    commands::DbCommand::Restore {
                        to,
                        into,
                        data_dir,
                        json,
                    },
                ..
            } => restore(&data_dir, None, &into, Some(to), json).await,
            Command::Db { command, conn } => commands::db(command, conn).await,
            Command::Trace { request_id, conn } => commands::trace(&request_id, conn).await,
            Command::Alert { command, conn } => commands::alert(command, conn).await,
            Command::Backup { command } => backup(command).await,
            Command::Export { out, conn } => transfer::export(out, conn).await,
            Command::Import { file, conn } => transfer::import(file, conn).await,
            Command::Usage {
                since,
                by,
                function,
                conn,
            } => commands::usage(since, &by, function, conn).await,
            Command::Storage { command, conn } => storage::storage(command, conn).await,
            Command::User { command, conn } => users::user(command, conn).await,
            Command::Rules {
                command: RulesCommand::Test { file, json },
            } => rules_test::run(&file, json),
            Command::Auth { command, conn } => users::auth(command, conn).await,
            Command::Doctor { node, json } => doctor(&node, json).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs a node until it is stopped: `yun dev`, or `yun serve` with its node's name and
/// the platform key the cluster's configuration gives.
async fn run_node(
    args: DevArgs,
    platform_key: Option<yun_server::PlatformKey>,
    node_name: Option<String>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YUN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = yun_server::Server::start_dev(yun_server::DevConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        public_url: args.public_url,
        default_env: yun_types::EnvId::parse("dev").expect("valid"),
        node: args.node,
        npm: args.npm,
        node_layer: args.node_layer,
        stem_cells: args.stem_cells,
        idle_timeout: args.idle_timeout,
        queue_timeout: args.queue_timeout,
        storage: args.storage,
        events: args.events,
        database: args.database,
        postgres_schema: args.postgres_schema,
        storage_limits: yun_server::StorageLimits {
            max_file_bytes: args.max_file_size,
            env_quota_bytes: args.storage_quota,
        },
        sandbox: match args.sandbox.as_str() {
            "on" => yun_server::SandboxMode::On,
            "off" => yun_server::SandboxMode::Off,
            _ => yun_server::SandboxMode::Auto,
        },
        instance_uids: args.instance_uids,
        tmp_mb: args.tmp_size_mb,
        init_exe: std::env::current_exe().ok(),
        metrics: !args.no_metrics,
        tracing: !args.no_traces,
        trace_sample_ratio: args.trace_sample,
        retention_every: args.retention_interval,
        alerts_every: args.alert_interval,
        platform_key: platform_key.clone(),
    })
    .await?;
    output::dev_banner(&server, node_name.as_deref(), platform_key.is_some());
    server.serve(shutdown_signal(args.drain)).await?;
    Ok(())
}

async fn backup(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create { conn } => commands::backup_create(conn).await,
        BackupCommand::List { conn } => commands::backup_list(conn).await,
        BackupCommand::Restore {
            id,
            to,
            at,
            data_dir,
            json,
        } => restore(&data_dir, id, &to, at, json).await,
    }
}

/// A backup restored into a new data folder, at the time `at` when given.
async fn restore(
    data_dir: &std::path::Path,
    id: Option<String>,
    to: &std::path::Path,
    at: Option<i64>,
    json: bool,
) -> anyhow::Result<()> {
    let id = match (id, at) {
        (Some(id), _) => id,
        (None, Some(at)) => yun_server::backup::list_in(data_dir)
            .into_iter()
            .rev()
            .find(|b| b.created_at_ms <= at)
            .map(|b| b.id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no backup of {} was taken before that time",
                    data_dir.display()
                )
            })?,
        (None, None) => anyhow::bail!("name a backup, or a time with --at"),
    };
    let info = yun_server::backup::restore(data_dir, &id, to, at).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!(
            "Restored backup {}{} into {}: yun dev --data-dir {}",
            info.id,
            if at.is_some() {
                " and the changes that followed it"
            } else {
                ""
            },
            to.display(),
            to.display()
        );
    }
    Ok(())
}

/// RFC 3339, or Unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| format!("expected RFC 3339 or Unix milliseconds: {e}"))
}

async fn doctor(node: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let report = yun_server::doctor::run(node, &exe).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mark = |on: bool| if on { "yes" } else { "NO" };
    for (name, on) in [
        (
            "namespaces (mount, PID, IPC, UTS, network, cgroup)",
            report.namespaces,
        ),
        ("seccomp filter", report.seccomp),
        ("a uid per instance", report.uid_per_instance),
        ("private /tmp and /dev/shm", report.private_tmp),
        ("network: Yun only, or none, per env", report.network_policy),
        (
            "network: the internet, per env (slirp4netns)",
            report.internet,
        ),
        ("memory limit", report.memory_limit),
        ("pids limit", report.pids_limit),
    ] {
        println!("  {:<52} {}", name, mark(on));
    }
    for why in &report.missing {
        println!("\nmissing: {why}");
    }
    Ok(())
}

/// Ctrl-C stops at once; SIGTERM drains for `drain` first.
async fn shutdown_signal(drain: std::time::Duration) -> yun_server::Stop {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return yun_server::Stop::Now;
        }
    };
    tokio::select! {
        _ = ctrl_c => yun_server::Stop::Now,
        _ = term.recv() => if drain.is_zero() {
            yun_server::Stop::Now
        } else {
            yun_server::Stop::Drain(drain)
        },
    }
}
