//! The composition root: the one place that names concrete backends. Opens the stores,
//! builds the [`App`], starts the functions runtime and serves every HTTP surface on one
//! port; shuts down in reverse order (stop accepting, stop instances, flush records).

pub mod backup;
pub mod doctor;
mod gateway;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::sync::watch;
pub use yun_app::PlatformKey;
use yun_app::{App, AppSettings, ChangeSource, Credentials, Recorder, Stores};
use yun_docdb::store::DocStore;
use yun_docdb::{DocDb, Limits};
use yun_events::EventBus;
use yun_functions::{
    install_bootstrap, layer_ready, sandbox_trial, Isolation, LayerState, Runtime, RuntimeConfig,
    Sandbox, SpawnConfig, UidPool,
};
use yun_meta::MetaStore;
pub use yun_storage::StorageLimits;
use yun_storage::{FileIndex, ObjectBackend, Storage};
use yun_store_nats::JetStreamBus;
use yun_store_postgres::{PgDocStore, PgFileIndex, PgMetaStore, PgUserStore, Postgres};
use yun_store_sqlite::{
    SqliteBus, SqliteDocStore, SqliteFileIndex, SqliteMetaStore, SqliteUserStore,
};
use yun_types::{EnvId, YunError};
use yun_users::{UserStore, Users};

use crate::gateway::{ChannelApi, UnixGateway};

/// The stores one process runs on: every one in the data folder, or in PostgreSQL.
struct Backends {
    meta: Arc<dyn MetaStore>,
    docs: Arc<dyn DocStore>,
    file_index: Arc<dyn FileIndex>,
    users: Arc<dyn UserStore>,
    described: String,
}

/// Settings of an embedded (`yun dev`) node.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The URL clients reach Yun at (a load balancer's); `None`: this node's address.
    pub public_url: Option<String>,
    /// The env created on first start.
    pub default_env: EnvId,
    pub node: PathBuf,
    pub npm: PathBuf,
    /// A folder whose `node_modules` holds `wx-server-sdk` and `@cloudbase/node-sdk`;
    /// defaults to `{data_dir}/layers/node`, installed with npm on first start.
    pub node_layer: Option<PathBuf>,
    pub stem_cells: usize,
    pub idle_timeout: Duration,
    pub queue_timeout: Duration,
    /// Where file bytes go: `s3://bucket` (endpoint and keys from `AWS_*`) or a folder;
    /// defaults to `{data_dir}/files`.
    pub storage: Option<String>,
    /// Where async events wait: `None` for SQLite in the data dir, or a `nats://` URL
    /// (NATS JetStream; processes on one server share the queue and fire a timer's tick
    /// once).
    pub events: Option<String>,
    /// Where the stores live (metadata, documents, the file index, users): `None` for
    /// SQLite in the data dir, or a `postgres://` URL (processes may share it).
    pub database: Option<String>,
    /// The PostgreSQL schema Yun's tables live in.
    pub postgres_schema: String,
    pub storage_limits: StorageLimits,
    pub sandbox: SandboxMode,
    /// Uids sandboxed instances run as, one per live instance.
    pub instance_uids: std::ops::RangeInclusive<u32>,
    /// Size of each instance's private `/tmp`, in MiB.
    pub tmp_mb: u32,
    /// The `yun` binary, which runs the sandbox's init (`yun sandbox-init`); `None` in
    /// harnesses that run the server inside another program (no sandbox there).
    pub init_exe: Option<PathBuf>,
    /// Prometheus metrics at `/metrics` (the recorder is per process: once on, on).
    pub metrics: bool,
    /// Traces of invocations and their operations, exported as OTLP when the
    /// `OTEL_EXPORTER_OTLP_*` variables name an endpoint.
    pub tracing: bool,
    /// The share of root traces whose database and storage spans are recorded.
    pub trace_sample_ratio: f64,
    /// How often log and record retention runs.
    pub retention_every: Duration,
    /// How often alert rules are evaluated.
    pub alerts_every: Duration,
    /// The platform key to create on first start instead of a random one.
    pub platform_key: Option<yun_app::PlatformKey>,
}

/// How a server stops: at once (Ctrl-C on a laptop), or after draining (SIGTERM from an
/// orchestrator): `/readyz` answers 503 for `drain` while requests still arrive and are
/// served, then the server stops taking new connections and finishes those under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Now,
    Drain(Duration),
}

/// Whether instances run in the namespaces sandbox (`yun-sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Where the host allows it (root, namespaces): the trial at start decides.
    Auto,
    /// Always; Yun does not start where it cannot build the sandbox.
    On,
    Off,
}

/// Uids of sandboxed instances unless configured: far above any distribution's users.
pub const DEFAULT_INSTANCE_UIDS: std::ops::RangeInclusive<u32> = 6_000_000..=6_065_535;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the instance sandbox cannot be built on this host: {0} (run `yun doctor`)")]
    Sandbox(String),
    #[error(transparent)]
    Yun(#[from] YunError),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), ServerError> {
    std::fs::create_dir_all(path).map_err(io_err("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set permissions of", path))
}

/// The versions the platform layer installs: the ones the conformance suite pins.
const LAYER_PACKAGES: &[&str] = &["wx-server-sdk@4.0.2", "@cloudbase/node-sdk@3.18.3"];

/// `program` as the kernel will find it: a bare name is looked up on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    let found = if program.components().count() > 1 {
        Some(program.to_owned())
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(program))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .find(|candidate| candidate.is_file())
    };
    found.and_then(|p| std::fs::canonicalize(p).ok())
}

/// What every sandboxed instance sees of the host, read-only: the system's programs and
/// libraries, the few `/etc` files name lookups and TLS need, node, the bootstrap and
/// the SDK layer. Nothing else of `/etc`, no home folder, nothing of the data folder.
fn sandbox_view(node: &Path, bootstrap: &Path, layer: &Path) -> Vec<PathBuf> {
    let system = [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/etc/alternatives",
        "/etc/ssl",
        "/etc/ca-certificates",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/etc/localtime",
        "/etc/passwd",
        "/etc/group",
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
    ];
    let mut view: Vec<PathBuf> = system.iter().map(PathBuf::from).collect();
    view.extend([node.to_owned(), bootstrap.to_owned(), layer.to_owned()]);
    view
}

/// The sandbox instances run in, after a trial run; `None` where it is off or, in
/// `auto` mode, where this host cannot build it.
async fn isolation(
    cfg: &DevConfig,
    runtime_dir: &Path,
    functions_dir: &Path,
    bootstrap: &Path,
    layer: &Path,
    gateway: UnixGateway,
) -> Result<Option<Arc<Isolation>>, ServerError> {
    let unavailable = |why: String| match cfg.sandbox {
        SandboxMode::On => Err(ServerError::Sandbox(why)),
        _ => {
            tracing::warn!(why = %why, "instances run without the sandbox (see `yun doctor`)");
            Ok(None)
        }
    };
    if cfg.sandbox == SandboxMode::Off {
        return Ok(None);
    }
    let Some(init_exe) = cfg.init_exe.clone() else {
        return unavailable("no yun binary to run the sandbox's init".into());
    };
    if !nix::unistd::geteuid().is_root() {
        return unavailable("Yun is not running as root, which building namespaces needs".into());
    }
    let Some(node) = find_program(&cfg.node) else {
        return unavailable(format!("cannot find {}", cfg.node.display()));
    };
    let slirp = find_program(Path::new("slirp4netns"));
    if slirp.is_none() {
        tracing::warn!("no slirp4netns on this host: functions reach Yun only, not the internet");
    }
    let root = runtime_dir.join("sandbox-root");
    make_dir(&root, 0o755)?;
    let gateways = runtime_dir.join("gateways");
    let _ = std::fs::remove_dir_all(&gateways); // sockets of an earlier run
    make_dir(&gateways, 0o700)?;
    let build = |gateway: Option<Arc<dyn yun_functions::Gateway>>| {
        Arc::new(Isolation {
            init_exe: init_exe.clone(),
            node: node.clone(),
            root: root.clone(),
            functions_dir: functions_dir.to_owned(),
            ro_binds: sandbox_view(&node, bootstrap, layer),
            tmp_mb: cfg.tmp_mb,
            shm_mb: 16,
            uids: UidPool::new(cfg.instance_uids.clone()),
            gateway,
            slirp: slirp.clone(),
        })
    };
    if let Err(why) = sandbox_trial(&build(None), &node).await {
        return unavailable(why);
    }
    Ok(Some(build(Some(Arc::new(gateway)))))
}

/// A started node, ready to serve.
pub struct Server {
    pub url: String,
    pub credentials: Credentials,
    /// Whether this start created the env and key.
    pub first_start: bool,
    pub isolation: String,
    /// Where file bytes live, for the banner.
    pub storage: String,
    /// Where the stores live, for the start-up banner.
    pub database: String,
    pub data_dir: PathBuf,
    listener: tokio::net::TcpListener,
    app: Arc<App>,
}

/// The first folder on the way to `path` that other users cannot traverse.
fn blocked_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|dir| {
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 == 0)
            .unwrap_or(true)
    })
}

/// Instances run as `nobody` when Yun runs as root, provided they can reach their code.
fn instance_user(functions_dir: &Path) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("nobody").ok().flatten()?;
    if let Some(dir) = blocked_ancestor(functions_dir) {
        tracing::warn!(dir = %dir.display(), "instances run as root: this folder is not traversable by other users");
        return None;
    }
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// A layer folder the instance user cannot reach (say, inside a private home or a 0700
/// temp dir) is mirrored into the data dir with hard links (copies across file systems),
/// so instances can read it and still run unprivileged.
fn reachable_layer(source: &Path, data_dir: &Path) -> Result<PathBuf, ServerError> {
    let Some(blocked) = blocked_ancestor(source) else {
        return Ok(source.to_owned());
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(source.to_owned());
    }
    let mirror = data_dir.join("layers/mirror");
    tracing::info!(source = %source.display(), blocked = %blocked.display(), mirror = %mirror.display(), "mirroring the Node layer where instances can read it");
    if mirror.exists() {
        std::fs::remove_dir_all(&mirror).map_err(io_err("cannot replace", &mirror))?;
    }
    mirror_tree(source, &mirror)?;
    Ok(mirror)
}

fn mirror_tree(from: &Path, to: &Path) -> Result<(), ServerError> {
    make_dir(to, 0o755)?;
    for entry in std::fs::read_dir(from).map_err(io_err("cannot read", from))? {
        let entry = entry.map_err(io_err("cannot read", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io_err("cannot read", &src))?;
        if kind.is_dir() {
            mirror_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io_err("cannot read", &src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io_err("cannot link", &dst))?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io_err("cannot copy to", &dst))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err("cannot set permissions of", &dst))?;
        }
    }
    Ok(())
}

/// The file in a complete layer naming what it holds. Written only after npm succeeded
/// and node loaded both SDKs, just before the folder is renamed into place.
const LAYER_STAMP: &str = ".yun-layer";

fn layer_stamp() -> String {
    LAYER_PACKAGES.join("\n") + "\n"
}

/// Where an install of `layer` builds before it is renamed into place.
fn layer_staging(layer: &Path) -> PathBuf {
    let name = layer.file_name().unwrap_or_default().to_string_lossy();
    layer.with_file_name(format!("{name}.tmp-{}", std::process::id()))
}

/// Whether `layer` is a complete install of [`LAYER_PACKAGES`]. Anything short of that
/// is cleared for a new install: an earlier install's leftover staging folders (a start
/// killed mid-install), and a layer folder without the stamp or with other versions
/// (half-installed, or older pins).
fn layer_complete(layer: &Path) -> bool {
    let name = layer.file_name().unwrap_or_default().to_string_lossy();
    let leftover = format!("{name}.tmp-");
    let siblings = layer.parent().and_then(|p| std::fs::read_dir(p).ok());
    for entry in siblings.into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&leftover) {
            tracing::info!(dir = %entry.path().display(), "removing an interrupted layer install");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove an interrupted layer install");
            }
        }
    }
    if std::fs::read_to_string(layer.join(LAYER_STAMP)).is_ok_and(|s| s == layer_stamp()) {
        return true;
    }
    if layer.exists() {
        tracing::info!(dir = %layer.display(), "the Node SDK layer is incomplete or of other versions; reinstalling");
        if let Err(e) = std::fs::remove_dir_all(layer) {
            tracing::warn!(dir = %layer.display(), error = %e, "cannot remove the incomplete layer");
        }
    }
    false
}

/// Installs the platform layer in the background unless a complete one is in place,
/// and says where it stands: instances find no layer until the install is renamed into
/// place; deploys wait for it; functions that ship their SDKs work meanwhile.
fn ensure_layer(layer: &Path, npm: &Path, node: &Path) -> watch::Receiver<LayerState> {
    if layer_complete(layer) {
        return layer_ready();
    }
    let (state, receiver) = watch::channel(LayerState::Installing);
    let (layer, npm, node) = (layer.to_owned(), npm.to_owned(), node.to_owned());
    tokio::spawn(async move {
        tracing::info!(dir = %layer.display(), "installing the Node SDK layer (wx-server-sdk, @cloudbase/node-sdk) with npm; deploys wait for it");
        let staging = layer_staging(&layer);
        match install_layer(&staging, &layer, &npm, &node).await {
            Ok(()) => {
                tracing::info!("Yun is ready: the Node SDK layer is installed");
                let _ = state.send(LayerState::Ready);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                let why = format!(
                    "the Node SDK layer (wx-server-sdk, @cloudbase/node-sdk) could not be installed: {e}. \
                     Functions that require them fail until it is: check that npm reaches its \
                     registry and restart `yun dev`, or start it with `--node-layer DIR` where \
                     DIR/node_modules holds both"
                );
                tracing::error!("{why}");
                let _ = state.send(LayerState::Failed(why));
            }
        }
    });
    receiver
}

async fn install_layer(
    staging: &Path,
    layer: &Path,
    npm: &Path,
    node: &Path,
) -> Result<(), String> {
    make_dir(staging, 0o755).map_err(|e| e.to_string())?;
    std::fs::write(
        staging.join("package.json"),
        r#"{"name":"yun-node-layer","private":true}"#,
    )
    .map_err(|e| e.to_string())?;
    let mut install = tokio::process::Command::new(npm);
    install
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--ignore-scripts",
        ])
        .args(LAYER_PACKAGES);
    run_child(install, staging, "npm install").await?;
    // npm's success is not enough: the layer counts only if both SDKs load.
    let mut check = tokio::process::Command::new(node);
    check.args([
        "-e",
        "require('wx-server-sdk'); require('@cloudbase/node-sdk')",
    ]);
    run_child(check, staging, "loading the SDKs").await?;
    std::fs::write(staging.join(LAYER_STAMP), layer_stamp()).map_err(|e| e.to_string())?;
    std::fs::rename(staging, layer).map_err(|e| e.to_string())
}

/// Runs a child in `dir` that dies with Yun: killed when its future is dropped (an
/// ordered shutdown), and sent SIGKILL by the kernel if Yun's thread dies first (a
/// `kill -9`), so no orphan goes on writing into the folder.
async fn run_child(mut cmd: tokio::process::Command, dir: &Path, what: &str) -> Result<(), String> {
    cmd.current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    die_with_parent(cmd.as_std_mut());
    let output = cmd.output().await.map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    Err(format!(
        "{what}: {}: {}",
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes one syscall
    // (prctl), which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

impl Server {
    /// Opens (or creates) the data dir, binds the port, and prepares everything; call
    /// [`Server::serve`] to start answering.
    pub async fn start_dev(mut cfg: DevConfig) -> Result<Self, ServerError> {
        // The data dir is traversable but not listable; only the parts instances need
        // (code, bootstrap, layer) are readable by others.
        make_dir(&cfg.data_dir, 0o711)?;
        // Instances run with `/` as their working folder: every path they get is absolute.
        cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
            .map_err(io_err("cannot resolve", &cfg.data_dir))?;
        if let Some(layer) = &cfg.node_layer {
            cfg.node_layer = Some(
                std::fs::canonicalize(layer)
                    .map_err(io_err("cannot find the Node layer", layer))?,
            );
        }
        let meta_dir = cfg.data_dir.join("meta");
        make_dir(&meta_dir, 0o700)?;
        let functions_dir = cfg.data_dir.join("functions");
        make_dir(&functions_dir, 0o755)?;
        let runtime_dir = cfg.data_dir.join("runtime");
        make_dir(&runtime_dir, 0o755)?;
        let npm_cache = cfg.data_dir.join("npm-cache");
        make_dir(&npm_cache, 0o700)?;
        let (layer, layer_state) = match &cfg.node_layer {
            Some(dir) => (reachable_layer(dir, &cfg.data_dir)?, layer_ready()),
            None => {
                let dir = cfg.data_dir.join("layers/node");
                make_dir(&cfg.data_dir.join("layers"), 0o755)?;
                let state = ensure_layer(&dir, &cfg.npm, &cfg.node);
                (dir, state)
            }
        };

        if cfg.metrics {
            // Before the stores open: they take their metric handles when they do.
            yun_app::ops::install_metrics();
            yun_app::ops::on_scrape(yun_store_sqlite::publish_health);
            yun_app::ops::on_scrape(yun_store_postgres::publish_health);
        }
        let postgres = match &cfg.database {
            Some(url) => Some(Postgres::connect(url, &cfg.postgres_schema)?),
            None => None,
        };
        let stores = match &postgres {
            None => Backends {
                meta: Arc::new(SqliteMetaStore::open(&meta_dir.join("yun.db"))?),
                docs: Arc::new(SqliteDocStore::open(&meta_dir.join("documents.db"))?),
                file_index: Arc::new(SqliteFileIndex::open(&meta_dir.join("files.db"))?),
                users: Arc::new(SqliteUserStore::open(&meta_dir.join("users.db"))?),
                described: "SQLite in the data folder".into(),
            },
            Some(pg) => Backends {
                meta: Arc::new(PgMetaStore::open(pg.clone()).await?),
                docs: Arc::new(PgDocStore::open(pg.clone()).await?),
                file_index: Arc::new(PgFileIndex::open(pg.clone()).await?),
                users: Arc::new(PgUserStore::open(pg.clone()).await?),
                described: format!(
                    "PostgreSQL, schema {} (metadata, documents, file index, users)",
                    cfg.postgres_schema
                ),
            },
        };
        let Backends {
            meta,
            docs,
            file_index,
            users,
            described: database,
        } = stores;
        let docdb = Arc::new(DocDb::new(docs, Limits::default()));
        let backend = match &cfg.storage {
            Some(spec) => ObjectBackend::parse(spec),
            None => ObjectBackend::Local(cfg.data_dir.join("files")),
        };
        if let ObjectBackend::Local(dir) = &backend {
            // Stored files are Yun's alone (served through signed URLs), whoever else runs
            // on the host: an unsandboxed instance as `nobody` cannot open the folder.
            make_dir(dir, 0o700)?;
        }
        let storage = Arc::new(Storage::new(&backend, file_index, cfg.storage_limits)?);
        let storage_for_backups = storage.clone();
        let users = Arc::new(Users::new(users));
        let events: Arc<dyn EventBus> = match &cfg.events {
            None => Arc::new(SqliteBus::open(&meta_dir.join("events.db")).map_err(YunError::from)?),
            Some(url) => {
                let (server, prefix) = nats_url(url);
                Arc::new(
                    JetStreamBus::connect(server, prefix)
                        .await
                        .map_err(YunError::from)?,
                )
            }
        };
        let database = match &cfg.events {
            None => format!("{database}; event queue: SQLite in the data folder"),
            Some(_) => format!("{database}; event queue: NATS JetStream"),
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let url = format!("http://{local}");
        let public_url = cfg
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| *u != url);

        let sandbox = Arc::new(Sandbox::detect(&format!("yun-{}", std::process::id())));
        let bootstrap = install_bootstrap(&runtime_dir)
            .map_err(io_err("cannot write the bootstrap to", &runtime_dir))?;
        let (gateway, router_slot) = UnixGateway::new(runtime_dir.join("gateways"), local.port());
        let isolation = isolation(
            &cfg,
            &runtime_dir,
            &functions_dir,
            &bootstrap,
            &layer,
            gateway,
        )
        .await?;
        let run_as = match &isolation {
            Some(_) => None,
            None => instance_user(&functions_dir),
        };
        let isolation_text = format!(
            "{}; {}",
            sandbox.describe(),
            match (&isolation, run_as) {
                (Some(iso), _) if iso.slirp.is_some() => "instances sandboxed (namespaces, seccomp, a uid each, private /tmp; network per env: Yun and the internet, Yun only, or none)",
                (Some(_), _) => "instances sandboxed (namespaces, seccomp, a uid each, private /tmp; network: Yun only, no slirp4netns for the internet)",
                (None, Some(_)) => "no sandbox: instances run as user nobody",
                (None, None) => "no sandbox: instances run as the current user",
            }
        );
        let otlp = cfg
            .tracing
            .then(|| yun_app::ops::OtlpConfig::from_env(|k| std::env::var(k).ok()))
            .flatten();
        if let Some(otlp) = &otlp {
            tracing::info!(url = %otlp.url, "exporting traces (OTLP/HTTP JSON)");
        }
        let recorder = Recorder::start(meta.clone(), otlp);
        let runtime = Runtime::start(
            RuntimeConfig {
                spawn: SpawnConfig {
                    node: cfg.node.clone(),
                    bootstrap,
                    layer_dir: Some(layer),
                    run_as,
                    sandbox,
                    isolation,
                },
                stem_cells: cfg.stem_cells,
                default_memory_mb: 256,
                idle_timeout: cfg.idle_timeout,
                queue_timeout: cfg.queue_timeout,
                output_limit: 6 << 20,
                log_limit: 1 << 20,
                layer: layer_state,
                public_url: public_url.clone(),
            },
            recorder.log_sender(),
        );
        let settings = AppSettings {
            public_url: public_url.unwrap_or_else(|| url.clone()),
            node_url: url.clone(),
            functions_dir,
            npm: cfg.npm.clone(),
            npm_cache,
            region: "ap-shanghai".into(),
            tracing: cfg.tracing,
            trace_sample_ratio: cfg.trace_sample_ratio,
            shared_packages: cfg.database.is_some(),
        };
        let app = Arc::new(
            App::new(
                Stores {
                    meta: meta.clone(),
                    docdb,
                    storage,
                    users,
                    events,
                    // Backups copy the data folder's stores; what lives in PostgreSQL is
                    // backed up with PostgreSQL's own tools.
                    backups: postgres.is_none().then(|| {
                        Arc::new(backup::LocalBackups::new(
                            &cfg.data_dir,
                            storage_for_backups,
                        )) as Arc<dyn yun_app::ops::Backups>
                    }),
                },
                runtime,
                recorder,
                settings,
            )
            .await?,
        );
        tokio::spawn(app.clone().run_async_invoker());
        tokio::spawn(app.clone().run_timers());
        tokio::spawn(app.clone().run_change_triggers(ChangeSource::Documents));
        tokio::spawn(app.clone().run_change_triggers(ChangeSource::Files));
        tokio::spawn(app.clone().run_retention(cfg.retention_every));
        tokio::spawn(app.clone().run_alerts(cfg.alerts_every));
        tokio::spawn(app.clone().run_cache_invalidations());
        // Instances' gateways serve from now on (they wait until then).
        let _ = router_slot.send(Some(yun_api::instance_router(app.clone())));
        ChannelApi::serve(&app);

        let credentials_path = cfg.data_dir.join("credentials.json");
        let first = app
            .initialize(&cfg.default_env, cfg.platform_key.as_ref())
            .await?;
        let credentials = match (&first, std::fs::read(&credentials_path)) {
            (Some(key), _) => Credentials {
                url: url.clone(),
                env_id: key.env.to_string(),
                secret_id: key.secret_id.clone(),
                secret_key: key.secret_key.clone(),
            },
            (None, Ok(bytes)) => {
                let old: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let field = |k: &str| {
                    old.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                Credentials {
                    url: url.clone(),
                    env_id: field("envId"),
                    secret_id: field("secretId"),
                    secret_key: field("secretKey"),
                }
            }
            (None, Err(_)) => Credentials {
                url: url.clone(),
                env_id: cfg.default_env.to_string(),
                secret_id: String::new(),
                secret_key: String::new(),
            },
        };
        write_credentials(&credentials_path, &credentials)?;
        Ok(Self {
            url,
            credentials,
            first_start: first.is_some(),
            isolation: isolation_text,
            storage: backend.describe(),
            database,
            data_dir: cfg.data_dir,
            listener,
            app,
        })
    }

    /// Serves until `shutdown` resolves (draining first if it says so), then stops
    /// instances and flushes records.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = Stop> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = self.app.clone();
        let shutdown = async move {
            if let Stop::Drain(period) = shutdown.await {
                tracing::info!(
                    seconds = period.as_secs_f64(),
                    "draining: /readyz answers 503"
                );
                app.start_draining();
                // Ctrl-C still stops at once.
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        };
        let router = yun_api::router(self.app.clone());
        let local = self
            .listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })?;
        tracing::info!(url = %self.url, "serving");
        // Responses are small and latency-bound: send them without Nagle's delay.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServerError::Bind {
            addr: local,
            source,
        })?;
        tracing::info!("stopping instances");
        self.app.runtime().shutdown().await;
        self.app.flush_records().await;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

fn write_credentials(path: &Path, credentials: &Credentials) -> Result<(), ServerError> {
    let text = serde_json::to_string_pretty(credentials).map_err(YunError::internal)?;
    // Write then rename, so a crash never leaves a half-written file; 0600 before content.
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("cannot write", &tmp))?;
        file.write_all(text.as_bytes())
            .map_err(io_err("cannot write", &tmp))?;
        file.sync_all().map_err(io_err("cannot write", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err("cannot write", path))
}

/// Splits `nats://HOST:PORT/PREFIX` into the server and the prefix of Yun's streams
/// (default `yun`): deployments sharing a NATS server keep apart by prefix.
fn nats_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) if after_scheme + i + 1 < url.len() => {
            (&url[..after_scheme + i], &url[after_scheme + i + 1..])
        }
        Some(i) => (&url[..after_scheme + i], "yun"),
        None => (url, "yun"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_name_the_server_and_the_streams_prefix() {
        assert_eq!(
            nats_url("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222", "yun")
        );
        assert_eq!(
            nats_url("nats://127.0.0.1:4222/"),
            ("nats://127.0.0.1:4222", "yun")
        );
        assert_eq!(
            nats_url("nats://h:4222/staging"),
            ("nats://h:4222", "staging")
        );
        assert_eq!(nats_url("h:4222/x"), ("h:4222", "x"));
    }

    #[test]
    fn private_folders_are_found_and_layers_mirrored_with_links() {
        let root = tempfile::tempdir().expect("temp dir");
        let private = root.path().join("private");
        std::fs::create_dir_all(private.join("layer/node_modules/pkg")).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let layer = private.join("layer");
        std::fs::write(
            layer.join("node_modules/pkg/index.js"),
            "module.exports = 1",
        )
        .unwrap();
        std::os::unix::fs::symlink("pkg", layer.join("node_modules/alias")).unwrap();
        assert_eq!(blocked_ancestor(&layer), Some(private.as_path()));

        let mirror = root.path().join("mirror");
        mirror_tree(&layer, &mirror).unwrap();
        assert_eq!(
            std::fs::read_to_string(mirror.join("node_modules/alias/index.js")).unwrap(),
            "module.exports = 1"
        );
        assert_eq!(
            std::fs::metadata(&mirror).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(blocked_ancestor(&mirror.join("node_modules")), None);
    }

    #[test]
    fn interrupted_and_half_layers_are_cleared_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let layer = root.path().join("node");
        // A start killed mid-install, and a layer npm left half-written (no stamp).
        let leftover = root.path().join("node.tmp-4242");
        std::fs::create_dir_all(leftover.join("node_modules/wx-server-sdk")).unwrap();
        std::fs::create_dir_all(layer.join("node_modules/wx-server-sdk")).unwrap();
        std::fs::write(layer.join("node_modules/wx-server-sdk/package.json"), "{}").unwrap();
        let unrelated = root.path().join("mirror");
        std::fs::create_dir_all(&unrelated).unwrap();
        assert!(!layer_complete(&layer));
        assert!(!leftover.exists() && !layer.exists() && unrelated.exists());

        // A stamp of other versions is not this layer either.
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join(LAYER_STAMP), "wx-server-sdk@1.0.0\n").unwrap();
        assert!(!layer_complete(&layer));
        assert!(!layer.exists());

        // The stamp an install writes last marks it complete, and it is kept.
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join(LAYER_STAMP), layer_stamp()).unwrap();
        assert!(layer_complete(&layer));
        assert!(layer.join(LAYER_STAMP).is_file());
        assert!(layer_staging(&layer)
            .to_string_lossy()
            .ends_with(&format!("node.tmp-{}", std::process::id())));
    }
}
