//! Yun's use-cases. Every entry point takes the caller's resolved [`Identity`], acts in
//! `identity.env` only, and first checks that the caller may run it ([`App::authorize`],
//! `authz.rs`). Owns the ordering of side effects (files, metadata, instances)
//! so that a failed deploy leaves nothing behind. No HTTP types here: the `yun-api`
//! handlers stay thin and call these methods.

mod access;
mod authz;
mod cache;
mod database;
mod envs;
mod events;
mod functions;
pub mod ops;
mod recorder;
mod rules;
mod storage;
mod transfer;
mod user_db;
mod users;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use yun_auth::TempCredentialIssuer;
use yun_functions::Runtime;
use yun_meta::MetaStore;

pub use access::SignedRequest;
pub use authz::{Capability, Operation};
pub use envs::{Credentials, NewKey, PlatformKey};
pub use events::{ChangeSource, NewTrigger};
pub use functions::{CallerContext, DeployRequest, Invocation};
pub use ops::{UsageQuery, UsageReport};
pub use recorder::Recorder;
pub use rules::RulesTarget;
pub use storage::{FileOutcome, UploadTarget, MAX_LIST_PAGE};
pub use transfer::{ExportArchive, TransferCounts};
pub use user_db::UserQuery;
pub use users::{UserSession, MAX_USER_PAGE};
pub use yun_auth::{Caller, Identity};
pub use yun_functions::InstanceBinding;
pub use yun_meta::{EnvSettings, LogFilter};
pub use yun_users::{Session, TicketKey, TicketKeyRecord, UserRecord, SUDO_SECS};

/// Settings fixed at start-up.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The URL clients reach Yun at, in the links it makes (files, uploads): a load
    /// balancer's in a cluster.
    pub public_url: String,
    /// This node's own URL, which its functions use (`TCB_CONTEXT_CNFG`): they call the
    /// node they run on, not back through the load balancer.
    pub node_url: String,
    /// Root of deployed function code: `{functions_dir}/{env}/{name}/{code_id}`.
    pub functions_dir: PathBuf,
    pub npm: PathBuf,
    pub npm_cache: PathBuf,
    /// Reported to functions as `TENCENTCLOUD_REGION`.
    pub region: String,
    /// Invocations and the operations they make are traced (`yun trace`).
    pub tracing: bool,
    /// The share of traces an invocation starts (no `traceparent`) whose operation spans
    /// are recorded, 0 to 1.
    pub trace_sample_ratio: f64,
    /// Each deployed version is also kept as a package in the object store, and a node
    /// that lacks a version's folder loads it from there: the nodes of a cluster share
    /// their functions. Off on one machine (the folder is all there is).
    pub shared_packages: bool,
}

impl AppSettings {
    fn sample_root_trace(&self) -> bool {
        self.trace_sample_ratio >= 1.0 || rand::random::<f64>() < self.trace_sample_ratio
    }
}

pub struct App {
    meta: Arc<dyn MetaStore>,
    runtime: Arc<Runtime>,
    issuer: TempCredentialIssuer,
    settings: AppSettings,
    recorder: Recorder,
    cache: cache::MetaCache,
    docdb: Arc<yun_docdb::DocDb>,
    storage: Arc<yun_storage::Storage>,
    url_signer: yun_storage::UrlSigner,
    users: Arc<yun_users::Users>,
    events: Arc<dyn yun_events::EventBus>,
    /// Bumped when triggers (or what they depend on) change: the loops read them again.
    trigger_signal: tokio::sync::watch::Sender<u64>,
    /// Set on SIGTERM: `/readyz` answers 503 while requests under way finish.
    draining: AtomicBool,
    backups: Option<Arc<dyn ops::Backups>>,
}

/// The stores the use-cases run on, as the composition root picked them.
pub struct Stores {
    pub meta: Arc<dyn MetaStore>,
    pub docdb: Arc<yun_docdb::DocDb>,
    pub storage: Arc<yun_storage::Storage>,
    pub users: Arc<yun_users::Users>,
    pub events: Arc<dyn yun_events::EventBus>,
    /// Backups of the data, where the backends support them.
    pub backups: Option<Arc<dyn ops::Backups>>,
}

impl App {
    pub async fn new(
        stores: Stores,
        runtime: Arc<Runtime>,
        recorder: Recorder,
        settings: AppSettings,
    ) -> yun_meta::Result<Self> {
        let Stores {
            meta,
            docdb,
            storage,
            users,
            events,
            backups,
        } = stores;
        let master = meta.master_key().await?;
        Ok(Self {
            meta,
            runtime,
            issuer: TempCredentialIssuer::new(&master),
            url_signer: yun_storage::UrlSigner::new(&master),
            storage,
            users,
            settings,
            recorder,
            cache: cache::MetaCache::default(),
            docdb,
            events,
            trigger_signal: tokio::sync::watch::Sender::new(0),
            draining: AtomicBool::new(false),
            backups,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }
}
