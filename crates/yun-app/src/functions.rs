//! Deploying, listing, invoking and deleting functions; their logs and records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::Serialize;
use yun_auth::{Caller, Identity};
use yun_functions::package::{self, PackageLimits};
use yun_functions::{
    FunctionSpec, InvocationEnv, InvokeError, InvokeReport, InvokeRequest, LayerState,
    LAYER_PACKAGES,
};

/// How long a deploy waits for the SDK layer being installed on a first start.
const LAYER_WAIT: Duration = Duration::from_secs(600);
use yun_meta::{
    AsyncRetry, FunctionRecord, InvocationRecord, InvocationStatus, LogFilter, LogLine, LogQuery,
    NetworkPolicy, NewFunction, NewLogLine,
};
use yun_types::{new_id, EnvId, ErrorCode, FunctionName, YunError};

use crate::cache::Forget;
use crate::ops::TraceContext;
use crate::{App, Operation};
use yun_types::unix_now;

// Invocation variable values that never change, shared so that the runtime tells them
// unchanged from one event to the next by pointer.
static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| "".into());
static WX_CONTEXT_KEYS: LazyLock<Arc<str>> =
    LazyLock::new(|| "WX_OPENID,WX_APPID,WX_UNIONID,WX_CLIENTIP,WX_CLIENTIPV6".into());
static TCB_CONTEXT_KEYS: LazyLock<Arc<str>> = LazyLock::new(|| {
    "TCB_ENV,TCB_SEQID,TCB_SOURCE,TCB_UUID,TCB_ISANONYMOUS_USER,TCB_CUSTOM_USER_ID,TCB_SOURCE_IP,LOGINTYPE"
        .into()
});

const DEFAULT_HANDLER: &str = "index.main";
/// SCF's defaults and bounds.
const DEFAULT_TIMEOUT_MS: u64 = 3_000;
const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=900_000;
const DEFAULT_MEMORY_MB: u32 = 256;
const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 64..=3_072;
const DEFAULT_MAX_INSTANCES: u32 = 10;
const MAX_INSTANCES_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Variables the platform sets; a deploy may not override them.
const RESERVED_ENV_PREFIXES: &[&str] = &["TENCENTCLOUD_", "SCF_", "TCB_", "WX_", "YUN_"];

#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    pub archive: Vec<u8>,
    /// Unset fields keep the previous version's value, or the default.
    pub handler: Option<String>,
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u32>,
    pub max_instances: Option<u32>,
    pub env_vars: Option<BTreeMap<String, String>>,
    /// `Some("")` removes the HTTP path.
    pub http_path: Option<String>,
    pub async_retry: Option<AsyncRetry>,
    /// Replaces the function's triggers when given (`config.json`'s `triggers`).
    pub triggers: Option<Vec<crate::NewTrigger>>,
}

/// Who is calling, beyond the identity: what a function sees in its context.
#[derive(Debug, Clone, Default)]
pub struct CallerContext {
    /// The id of the request being served; the invocation, its logs and its record
    /// carry it, so the id a caller sees is the one to search logs by.
    pub request_id: String,
    /// `TCB_SOURCE`, e.g. `admin_sdk`, `http`, `cli`.
    pub source: String,
    pub client_ip: Option<String>,
    /// The caller's `seqId`, continued into the callee's `TCB_SEQID`.
    pub seq_id: Option<String>,
    /// The invocation whose code made this call (over its instance's channel).
    pub parent_request_id: Option<String>,
}

/// Which delivery of an event an invocation is, and what sent it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    /// 1 for the first.
    pub number: u32,
    pub trigger: Option<&'a str>,
    /// A timer trigger's delivery (`TRIGGER_SRC=timer`).
    pub timer: bool,
}

impl Attempt<'_> {
    pub const FIRST: Attempt<'static> = Attempt {
        number: 1,
        trigger: None,
        timer: false,
    };
}

#[derive(Debug, Serialize)]
pub struct Invocation {
    pub request_id: String,
    /// The function's return value as JSON text.
    #[serde(skip)]
    pub result: Result<String, YunError>,
    pub cold_start: bool,
    pub duration_ms: u64,
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    what: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<T, YunError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(YunError::invalid_param(format!(
            "{what} must be between {} and {}, got {value}",
            range.start(),
            range.end()
        )))
    }
}

/// An event from a caller must be JSON text.
pub(crate) fn check_event(event: &str) -> Result<(), YunError> {
    serde_json::from_str::<serde::de::IgnoredAny>(event)
        .map(drop)
        .map_err(|e| YunError::invalid_param(format!("the event is not valid JSON: {e}")))
}

fn check_env_vars(vars: &BTreeMap<String, String>) -> Result<(), YunError> {
    for key in vars.keys() {
        let valid = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(YunError::invalid_param(format!(
                "environment variable name {key:?} is not valid"
            )));
        }
        if RESERVED_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(YunError::invalid_param(format!(
                "environment variable {key} uses a prefix the platform reserves"
            )));
        }
    }
    Ok(())
}

/// `/a/b-c` style: absolute, safe characters, no empty, `.` or `..` segments.
fn check_http_path(path: &str) -> Result<(), YunError> {
    let bad = || {
        YunError::invalid_param(format!(
            "HTTP path {path:?} must look like /name or /a/b (letters, digits, - _ .)"
        ))
    };
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if path.len() > 200 {
        return Err(bad());
    }
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// A package younger than this is never deleted as replaced: it may belong to a deploy
/// still under way on another node.
const PACKAGE_GRACE: Duration = Duration::from_secs(3600);

impl App {
    pub(crate) fn code_dir(&self, env: &EnvId, name: &FunctionName) -> PathBuf {
        self.settings
            .functions_dir
            .join(env.as_str())
            .join(name.as_str())
    }

    fn static_env(&self, spec: &NewFunction) -> BTreeMap<String, String> {
        let mut env = spec.env_vars.clone();
        let platform = [
            ("TENCENTCLOUD_RUNENV", "SCF".to_owned()),
            ("TENCENTCLOUD_REGION", self.settings.region.clone()),
            ("SCF_NAMESPACE", spec.env.to_string()),
            ("TCB_ENV", spec.env.to_string()),
            ("SCF_FUNCTIONNAME", spec.name.to_string()),
            ("SCF_FUNCTIONVERSION", "$LATEST".to_owned()),
            ("SCF_RUNTIME", "Nodejs".to_owned()),
            (
                "TCB_CONTEXT_CNFG",
                serde_json::json!({ "URL": format!("{}/admin", self.settings.node_url) })
                    .to_string(),
            ),
        ];
        env.extend(platform.into_iter().map(|(k, v)| (k.to_owned(), v)));
        env
    }

    pub(crate) fn runtime_spec(
        &self,
        record: &FunctionRecord,
        network: NetworkPolicy,
    ) -> FunctionSpec {
        let spec = &record.spec;
        FunctionSpec {
            env: spec.env.clone(),
            name: spec.name.clone(),
            version: record.version,
            code_dir: self
                .code_dir(&spec.env, &spec.name)
                .join(&spec.code_id)
                .to_string_lossy()
                .into_owned(),
            handler: spec.handler.clone(),
            timeout: Duration::from_millis(spec.timeout_ms),
            memory_mb: spec.memory_mb,
            // A reservation is the function's cap (SCF); 0 never reaches the runtime.
            max_instances: spec.reserved_concurrency.unwrap_or(spec.max_instances) as usize,
            static_env: self.static_env(spec),
            network,
        }
    }

    /// Deploys a new version. The code is unpacked, its dependencies installed and its
    /// handler loaded in a throwaway instance before the version is recorded; on any
    /// failure nothing of the attempt remains and the previous version keeps serving.
    pub async fn deploy(
        &self,
        identity: &Identity,
        name: &FunctionName,
        req: DeployRequest,
    ) -> Result<FunctionRecord, YunError> {
        Self::authorize(identity, Operation::DeployFunction)?;
        let env = &identity.env;
        let read = self.meta.get_function(env, name).await?;
        let read_version = read.as_ref().map(|r| r.version);
        let previous = read.map(|r| r.spec);
        let handler = req
            .handler
            .or_else(|| previous.as_ref().map(|p| p.handler.clone()))
            .unwrap_or_else(|| DEFAULT_HANDLER.into());
        let timeout_ms = check_range(
            "timeout_ms",
            req.timeout_ms
                .or(previous.as_ref().map(|p| p.timeout_ms))
                .unwrap_or(DEFAULT_TIMEOUT_MS),
            &TIMEOUT_MS_RANGE,
        )?;
        let memory_mb = check_range(
            "memory_mb",
            req.memory_mb
                .or(previous.as_ref().map(|p| p.memory_mb))
                .unwrap_or(DEFAULT_MEMORY_MB),
            &MEMORY_MB_RANGE,
        )?;
        let max_instances = check_range(
            "max_instances",
            req.max_instances
                .or(previous.as_ref().map(|p| p.max_instances))
                .unwrap_or(DEFAULT_MAX_INSTANCES),
            &MAX_INSTANCES_RANGE,
        )?;
        let env_vars = req
            .env_vars
            .or(previous.as_ref().map(|p| p.env_vars.clone()))
            .unwrap_or_default();
        check_env_vars(&env_vars)?;
        let http_path = match req.http_path {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p),
            None => previous.as_ref().and_then(|p| p.http_path.clone()),
        };
        if let Some(p) = &http_path {
            check_http_path(p)?;
        }
        let async_retry = req
            .async_retry
            .or(previous.as_ref().map(|p| p.async_retry))
            .unwrap_or_default();
        check_range("async retries", async_retry.retries, &(0..=10))?;
        check_range(
            "async retry interval (s)",
            async_retry.interval_s,
            &(1..=3600),
        )?;
        check_range(
            "async max event age (s)",
            async_retry.max_age_s,
            &(60..=86_400),
        )?;
        if req.archive.is_empty() {
            return Err(YunError::invalid_param("the code archive is empty"));
        }
        // Checked before the code is staged; stored once the version is.
        let triggers = match &req.triggers {
            Some(t) => Some(self.check_triggers(env, name, t).await?),
            None => None,
        };

        let code_id = new_id("v");
        let dir = self.code_dir(env, name).join(&code_id);
        let spec = NewFunction {
            env: env.clone(),
            name: name.clone(),
            handler,
            timeout_ms,
            memory_mb,
            max_instances,
            env_vars,
            http_path,
            code_sha256: package::sha256_hex(&req.archive),
            code_size: req.archive.len() as u64,
            code_id: code_id.clone(),
            async_retry,
            // A setting of its own (`yun fn concurrency`), kept across deploys.
            reserved_concurrency: previous.as_ref().and_then(|p| p.reserved_concurrency),
        };
        let mut staged = self.stage(&spec, req.archive, dir.clone()).await;
        if staged.is_ok() && self.settings.shared_packages {
            staged = self.share_package(&spec, &dir).await;
        }
        let stored = match staged {
            Ok(()) => self.store_version(&spec, read_version).await,
            Err(e) => Err(e),
        };
        let record = match stored {
            Ok(record) => record,
            Err(e) => {
                if self.settings.shared_packages {
                    let own = Self::package_key(env, name, Some(&code_id));
                    self.storage.delete_package(&own).await;
                }
                let _ = tokio::fs::remove_dir_all(&dir).await;
                // The function's folder too, when this attempt was all it held.
                let _ = tokio::fs::remove_dir(self.code_dir(env, name)).await;
                return Err(e);
            }
        };
        self.forget(Forget::Function {
            env: env.clone(),
            name: name.clone(),
        });
        if let Some(triggers) = &triggers {
            self.meta.replace_triggers(env, name, triggers).await?;
            self.forget(Forget::Triggers);
        }
        self.remove_old_code(env, name, &code_id, previous.map(|p| p.code_id))
            .await;
        tracing::info!(env = %env, function = %name, version = record.version, by = %identity.label(), "deployed");
        Ok(record)
    }

    /// Stores `spec` as the function's next version. Over a version read before, only
    /// while it is still the current one; when another write came first (a deploy or a
    /// concurrency change on another node), over that one, keeping its reserved
    /// concurrency (a setting of its own that a deploy does not change).
    async fn store_version(
        &self,
        spec: &NewFunction,
        mut read_version: Option<i64>,
    ) -> Result<FunctionRecord, YunError> {
        let mut spec = spec.clone();
        loop {
            let Some(version) = read_version else {
                return self.meta.put_function(&spec, unix_now()).await;
            };
            if let Some(record) = self
                .meta
                .update_function(&spec, version, unix_now())
                .await?
            {
                return Ok(record);
            }
            let current = self.meta.get_function(&spec.env, &spec.name).await?;
            read_version = current.as_ref().map(|r| r.version);
            spec.reserved_concurrency = current.and_then(|r| r.spec.reserved_concurrency);
        }
    }

    async fn stage(
        &self,
        spec: &NewFunction,
        archive: Vec<u8>,
        dir: PathBuf,
    ) -> Result<(), YunError> {
        // Unpacked and installed aside; the version's folder appears only complete.
        let staging = package::staging_dir(&dir);
        let prepared = self.prepare(spec, archive, &staging).await;
        let placed = match prepared {
            Ok(()) => tokio::fs::rename(&staging, &dir)
                .await
                .map_err(YunError::internal),
            Err(e) => Err(e),
        };
        if let Err(e) = placed {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
        let record = FunctionRecord {
            spec: spec.clone(),
            version: 0,
            created_at: 0,
            updated_at: 0,
        };
        // On a first start the SDK layer may still be installing: the load check below
        // would fail to find wx-server-sdk, so wait for it.
        let layer = self.runtime.wait_for_layer(LAYER_WAIT).await;
        self.runtime
            .check_loads(&self.runtime_spec(&record, self.network_policy(&spec.env).await?))
            .await
            .map_err(|e| match e {
                InvokeError::Load(js) => {
                    let missing_layer = LAYER_PACKAGES
                        .iter()
                        .any(|p| js.message.contains(&format!("Cannot find module '{p}'")));
                    let why = match (&layer, missing_layer) {
                        (LayerState::Failed(why), true) => format!(": {why}"),
                        (LayerState::Installing, true) => {
                            ": the Node SDK layer is still installing; deploy again shortly".into()
                        }
                        _ => String::new(),
                    };
                    YunError::new(
                        ErrorCode::FunctionCodeInvalid,
                        format!("the function does not load: {}{why}", js.summary()),
                    )
                }
                other => YunError::internal(other.message()),
            })
    }

    /// Unpacks the archive into `staging`, checks the handler and installs what the
    /// package lacks.
    async fn prepare(
        &self,
        spec: &NewFunction,
        archive: Vec<u8>,
        staging: &Path,
    ) -> Result<(), YunError> {
        let unpack_dir = staging.to_owned();
        tokio::task::spawn_blocking(move || {
            package::unpack(&archive, &unpack_dir, PackageLimits::default())
        })
        .await
        .map_err(YunError::internal)??;
        package::check_handler_file(staging, &spec.handler)?;
        if !package::missing_dependencies(staging, LAYER_PACKAGES)?.is_empty() {
            package::npm_install(
                staging,
                &self.settings.npm,
                &self.settings.npm_cache,
                NPM_INSTALL_TIMEOUT,
            )
            .await?;
        }
        Ok(())
    }

    /// Where a version's package lies in the object store (under a prefix of its function's).
    fn package_key(env: &EnvId, name: &FunctionName, code_id: Option<&str>) -> String {
        match code_id {
            Some(code_id) => format!("{env}/{name}/{code_id}.tar.gz"),
            None => format!("{env}/{name}/"),
        }
    }

    /// Keeps the prepared folder of a new version in the object store, for other nodes.
    async fn share_package(&self, spec: &NewFunction, dir: &Path) -> Result<(), YunError> {
        let folder = dir.to_owned();
        let packed = tokio::task::spawn_blocking(move || package::pack(&folder))
            .await
            .map_err(YunError::internal)??;
        let key = Self::package_key(&spec.env, &spec.name, Some(&spec.code_id));
        self.storage.put_package(&key, packed).await
    }

    /// Makes sure this node has the folder of `spec`'s version: one deployed through
    /// another node is loaded from its package in the object store.
    pub(crate) async fn ensure_code(&self, spec: &NewFunction) -> Result<(), YunError> {
        let dir = self.code_dir(&spec.env, &spec.name).join(&spec.code_id);
        if !self.settings.shared_packages || tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(());
        }
        let key = Self::package_key(&spec.env, &spec.name, Some(&spec.code_id));
        let packed = self.storage.get_package(&key).await?.ok_or_else(|| {
            YunError::internal(format!(
                "version {} of function {} has no package in the object store",
                spec.code_id, spec.name
            ))
        })?;
        // Unpacked aside and renamed: an instance never sees half a folder. Two loads at
        // once on one node: the second rename finds the folder there, which is as good.
        let staging = package::staging_dir(&dir).with_extension(new_id("load"));
        let unpack_into = staging.clone();
        tokio::task::spawn_blocking(move || {
            package::unpack(&packed, &unpack_into, PackageLimits::installed())
        })
        .await
        .map_err(YunError::internal)??;
        if let Err(e) = tokio::fs::rename(&staging, &dir).await {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                return Err(YunError::internal(e));
            }
        }
        tracing::info!(env = %spec.env, function = %spec.name, code = %spec.code_id, "loaded a version deployed through another node");
        // As the deploying node does: this version and the one before it stay.
        let previous = self
            .newest_other_code(&spec.env, &spec.name, &spec.code_id)
            .await;
        self.remove_code_except(&spec.env, &spec.name, &spec.code_id, previous.as_deref())
            .await;
        Ok(())
    }

    /// Keeps the new code and the one before it (its instances may still be finishing).
    async fn remove_old_code(
        &self,
        env: &EnvId,
        name: &FunctionName,
        current: &str,
        previous: Option<String>,
    ) {
        if self.settings.shared_packages {
            // Packages of replaced versions go, but not the ones of deploys under way
            // on other nodes (stored recently) nor the one the database now names.
            if let Ok(record) = self.meta.get_function(env, name).await {
                let live = record.map(|r| r.spec.code_id);
                let keep: Vec<String> = [Some(current.to_owned()), previous.clone(), live]
                    .into_iter()
                    .flatten()
                    .map(|code_id| Self::package_key(env, name, Some(&code_id)))
                    .collect();
                self.storage
                    .delete_packages(&Self::package_key(env, name, None), &keep, PACKAGE_GRACE)
                    .await;
            }
        }
        self.remove_code_except(env, name, current, previous.as_deref())
            .await;
    }

    /// Removes the function's version folders on this node but `current` and `previous`.
    /// Hidden folders are loads and deploys under way (`package::staging_dir`): they stay.
    async fn remove_code_except(
        &self,
        env: &EnvId,
        name: &FunctionName,
        current: &str,
        previous: Option<&str>,
    ) {
        let Ok(mut entries) = tokio::fs::read_dir(self.code_dir(env, name)).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let kept = file_name == current || previous == Some(file_name.as_str());
            if !file_name.starts_with('.') && !kept {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }

    /// The newest version folder on this node other than `code_id`: the version a node
    /// ran before it loaded `code_id` (its instances may still be finishing).
    async fn newest_other_code(
        &self,
        env: &EnvId,
        name: &FunctionName,
        code_id: &str,
    ) -> Option<String> {
        let mut entries = tokio::fs::read_dir(self.code_dir(env, name)).await.ok()?;
        let mut newest: Option<(std::time::SystemTime, String)> = None;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || file_name == code_id {
                continue;
            }
            let Ok(modified) = entry.metadata().await.and_then(|m| m.modified()) else {
                continue;
            };
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, file_name));
            }
        }
        newest.map(|(_, file_name)| file_name)
    }

    pub async fn list_functions(
        &self,
        identity: &Identity,
    ) -> Result<Vec<FunctionRecord>, YunError> {
        Self::authorize(identity, Operation::ListFunctions)?;
        self.meta.list_functions(&identity.env).await
    }

    pub async fn get_function(
        &self,
        identity: &Identity,
        name: &FunctionName,
    ) -> Result<FunctionRecord, YunError> {
        Self::authorize(identity, Operation::GetFunction)?;
        Ok(self.function(&identity.env, name).await?.record.clone())
    }

    /// Sets (or with `None` clears) SCF's reserved concurrency: the function's instances at
    /// most, and `0` disables it. Its instances are replaced.
    pub async fn set_reserved_concurrency(
        &self,
        identity: &Identity,
        name: &FunctionName,
        reserved: Option<u32>,
    ) -> Result<FunctionRecord, YunError> {
        Self::authorize(identity, Operation::DeployFunction)?;
        if let Some(n) = reserved {
            check_range("reserved concurrency", n, &(0..=*MAX_INSTANCES_RANGE.end()))?;
        }
        // Read, change, write only if nothing else wrote between: a deploy on another node
        // meanwhile is kept, and the setting applied to it on the next round.
        for _ in 0..10 {
            let current = self
                .meta
                .get_function(&identity.env, name)
                .await?
                .ok_or_else(|| {
                    YunError::new(
                        ErrorCode::FunctionNotFound,
                        format!("function {name} does not exist in env {}", identity.env),
                    )
                })?;
            let mut spec = current.spec;
            spec.reserved_concurrency = reserved;
            let stored = self
                .meta
                .update_function(&spec, current.version, unix_now())
                .await?;
            if let Some(record) = stored {
                self.forget(Forget::Function {
                    env: identity.env.clone(),
                    name: name.clone(),
                });
                return Ok(record);
            }
        }
        Err(YunError::new(
            ErrorCode::TransactionConflict,
            format!("function {name} kept changing while its concurrency was set: try again"),
        ))
    }

    pub async fn delete_function(
        &self,
        identity: &Identity,
        name: &FunctionName,
    ) -> Result<(), YunError> {
        Self::authorize(identity, Operation::DeleteFunction)?;
        if !self.meta.delete_function(&identity.env, name).await? {
            return Err(YunError::new(
                ErrorCode::FunctionNotFound,
                format!("function {name} does not exist in env {}", identity.env),
            ));
        }
        self.forget(Forget::Function {
            env: identity.env.clone(),
            name: name.clone(),
        });
        // Its triggers went with it: the loops must stop firing them now.
        self.forget(Forget::Triggers);
        let _ = tokio::fs::remove_dir_all(self.code_dir(&identity.env, name)).await;
        if self.settings.shared_packages {
            self.storage
                .delete_packages(
                    &Self::package_key(&identity.env, name, None),
                    &[],
                    Duration::ZERO,
                )
                .await;
        }
        Ok(())
    }

    fn invocation_env(
        &self,
        identity: &Identity,
        spec: &FunctionSpec,
        caller: &CallerContext,
        request_id: &str,
        timer: bool,
        traceparent: &str,
    ) -> InvocationEnv {
        let credential =
            self.function_credential(&spec.env, &spec.name, spec.timeout.as_secs() as i64);
        let source = match identity.caller {
            Caller::Function { .. } => "function",
            _ => caller.source.as_str(),
        };
        let text = |s: &str| -> Arc<str> {
            if s.is_empty() {
                EMPTY.clone()
            } else {
                s.into()
            }
        };
        let client_ip = text(caller.client_ip.as_deref().unwrap_or_default());
        let seq_id = text(caller.seq_id.as_deref().unwrap_or(request_id));
        // An end user's identity, as CloudBase hands it to functions; the user id doubles
        // as the OPENID (`getWXContext()`), the `_openid` their documents carry.
        let (uid, anonymous, custom_id, login_type) = match &identity.caller {
            Caller::User(user) => (
                text(&user.uid),
                text(if user.anonymous { "true" } else { "false" }),
                text(user.custom_id.as_deref().unwrap_or_default()),
                text(user.login_type()),
            ),
            _ => (text(""), text(""), text(""), text("")),
        };
        vec![
            ("TENCENTCLOUD_SECRETID", credential.secret_id),
            ("TENCENTCLOUD_SECRETKEY", credential.secret_key),
            ("TENCENTCLOUD_SESSIONTOKEN", credential.session_token),
            ("WX_CONTEXT_KEYS", WX_CONTEXT_KEYS.clone()),
            ("TCB_CONTEXT_KEYS", TCB_CONTEXT_KEYS.clone()),
            ("WX_OPENID", uid.clone()),
            ("WX_APPID", text("")),
            ("WX_UNIONID", text("")),
            ("WX_CLIENTIP", client_ip.clone()),
            ("WX_CLIENTIPV6", text("")),
            ("TCB_UUID", uid),
            ("TCB_ISANONYMOUS_USER", anonymous),
            ("TCB_CUSTOM_USER_ID", custom_id),
            ("LOGINTYPE", login_type),
            ("TCB_SOURCE_IP", client_ip),
            ("TCB_SEQID", seq_id),
            ("TCB_SOURCE", text(source)),
            ("TCB_ENV", text(spec.env.as_str())),
            // SCF sets it for timer deliveries; the SDKs read it (which API token).
            ("TRIGGER_SRC", text(if timer { "timer" } else { "" })),
            // W3C trace context, by OpenTelemetry's environment-variable carrier.
            ("TRACEPARENT", text(traceparent)),
        ]
    }

    /// Runs the function once. `event` is JSON text (empty means `{}`).
    pub async fn invoke(
        &self,
        identity: &Identity,
        name: &FunctionName,
        event: String,
        caller: &CallerContext,
    ) -> Result<Invocation, YunError> {
        Self::authorize(identity, Operation::InvokeFunction)?;
        if !event.is_empty() {
            check_event(&event)?;
        }
        self.invoke_checked(identity, name, event, caller, Attempt::FIRST)
            .await
    }

    /// [`Self::invoke`] for an event known to be valid JSON (Yun serialized it).
    pub(crate) async fn invoke_checked(
        &self,
        identity: &Identity,
        name: &FunctionName,
        event: String,
        caller: &CallerContext,
        attempt: Attempt<'_>,
    ) -> Result<Invocation, YunError> {
        let loaded = self.function(&identity.env, name).await?;
        let spec = &loaded.spec;
        let request_id = caller.request_id.clone();
        let started_at_ms = yun_types::unix_ms();
        // The invocation's span: under the caller's context, or the root of a trace
        // named by its request id.
        let parent = TraceContext::current();
        let trace = self.settings.tracing.then(|| match &parent {
            Some(parent) => TraceContext {
                trace_id: parent.trace_id.clone(),
                span_id: yun_types::new_span_id(),
                sampled: parent.sampled,
            },
            None => TraceContext::rooted_at(&request_id, self.settings.sample_root_trace()),
        });
        let traceparent = trace.as_ref().map(TraceContext::header);
        // The instance derives a sampled root's own context from the request id (see
        // `TraceContext::rooted_at`); only others are sent.
        let sent = match (&parent, &trace) {
            (None, Some(t)) if t.sampled && t.trace_id == request_id => "",
            _ => traceparent.as_deref().unwrap_or_default(),
        };
        let env = self.invocation_env(identity, spec, caller, &request_id, attempt.timer, sent);
        let report = if loaded.record.spec.reserved_concurrency == Some(0) {
            // SCF: a reserved concurrency of 0 disables the function; every call is over
            // the limit (async events are retried as throttles, then dead-lettered).
            InvokeReport {
                result: Err(InvokeError::Disabled),
                cold_start: false,
                duration: Duration::ZERO,
                waited: Duration::ZERO,
                memory_peak_kb: 0,
            }
        } else {
            self.runtime
                .invoke(
                    spec,
                    InvokeRequest {
                        request_id: request_id.clone(),
                        event,
                        env,
                        from_function: matches!(identity.caller, Caller::Function { .. }),
                        traceparent,
                    },
                )
                .await
        };
        let duration_ms = report.duration.as_millis() as u64;
        let response_bytes = report.result.as_ref().map_or(0, |v| v.len() as u64);
        let (status, result) = match report.result {
            Ok(value) => (InvocationStatus::Success, Ok(value)),
            Err(e) => {
                let status = match &e {
                    InvokeError::Throttled { .. } | InvokeError::Disabled => {
                        InvocationStatus::Throttled
                    }
                    InvokeError::Failed(f) => f.status(),
                    InvokeError::Load(_) | InvokeError::Unavailable(_) => InvocationStatus::Error,
                };
                let error = match &e {
                    InvokeError::Throttled { .. } | InvokeError::Disabled => {
                        YunError::new(ErrorCode::ConcurrencyLimit, e.message())
                    }
                    InvokeError::Unavailable(_) => YunError::internal(e.message()),
                    InvokeError::Load(_) | InvokeError::Failed(_) => {
                        YunError::new(ErrorCode::FunctionExecuteFail, e.message())
                    }
                };
                (status, Err(error))
            }
        };
        let platform_line = |message: String| NewLogLine {
            env: identity.env.clone(),
            function: name.clone(),
            request_id: request_id.clone(),
            at_ms: yun_types::unix_ms(),
            stream: "platform".into(),
            level: "error".into(),
            message,
        };
        if let Err(e) = &result {
            self.recorder
                .log(platform_line(format!("invocation failed: {}", e.message)))
                .await;
        }
        self.recorder
            .invocation(InvocationRecord {
                request_id: request_id.clone(),
                env: identity.env.clone(),
                function: name.clone(),
                version: loaded.record.version,
                started_at_ms,
                duration_ms,
                // What ran: not the wait for an instance, nothing for a call refused.
                billed_ms: match status {
                    InvocationStatus::Throttled => 0,
                    _ => (report.duration.saturating_sub(report.waited).as_millis() as u64).max(1),
                },
                memory_peak_kb: report.memory_peak_kb,
                status,
                cold_start: report.cold_start,
                error: result.as_ref().err().map(|e| e.message.clone()),
                attempt: attempt.number,
                trigger: attempt.trigger.map(str::to_owned),
                memory_mb: spec.memory_mb,
                response_bytes,
                parent_request_id: caller.parent_request_id.clone(),
                // A root named by its request id stores no ids (`trace_ids` derives them).
                trace_id: trace
                    .as_ref()
                    .filter(|t| t.trace_id != request_id)
                    .map(|t| t.trace_id.clone())
                    .unwrap_or_default(),
                span_id: trace
                    .filter(|t| t.trace_id != request_id)
                    .map(|t| t.span_id)
                    .unwrap_or_default(),
                parent_span_id: parent.filter(|_| self.settings.tracing).map(|p| p.span_id),
                waited_ms: report.waited.as_millis() as u64,
            })
            .await;
        loaded
            .metrics
            .record(status, report.cold_start, report.duration, report.waited);
        Ok(Invocation {
            request_id,
            result,
            cold_start: report.cold_start,
            duration_ms,
        })
    }

    pub async fn logs(
        &self,
        identity: &Identity,
        function: Option<&FunctionName>,
        filter: LogFilter,
    ) -> Result<Vec<LogLine>, YunError> {
        Self::authorize(identity, Operation::ReadLogs)?;
        let limit = filter.limit.unwrap_or(1000).min(10_000);
        let filter = LogFilter {
            limit: Some(limit),
            ..filter
        };
        // The invocations a request caused may be other functions': a caused query
        // follows the request wherever it went in the env.
        let caused = filter.caused && filter.request_id.is_some();
        let query = LogQuery {
            env: identity.env.clone(),
            function: if caused { None } else { function.cloned() },
            filter,
        };
        self.recorder.flush().await;
        self.meta.query_logs(&query).await
    }

    pub async fn invocations(
        &self,
        identity: &Identity,
        function: Option<&FunctionName>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>, YunError> {
        Self::authorize(identity, Operation::ListInvocations)?;
        self.recorder.flush().await;
        self.meta
            .list_invocations(&identity.env, function, limit.min(1000))
            .await
    }

    pub async fn invocation(
        &self,
        identity: &Identity,
        request_id: &str,
    ) -> Result<InvocationRecord, YunError> {
        Self::authorize(identity, Operation::GetInvocation)?;
        self.recorder.flush().await;
        self.meta
            .get_invocation(&identity.env, request_id)
            .await?
            .ok_or_else(|| {
                YunError::new(
                    ErrorCode::NotFound,
                    format!("no invocation {request_id} in env {}", identity.env),
                )
            })
    }

    /// Invokes the function serving `path` in `env` for unauthenticated HTTP traffic.
    /// `None` when no function serves the path. No operation check: an HTTP path is what
    /// makes a function public, and this is the only way an anonymous caller runs one.
    /// `event` must be valid JSON (the HTTP request as Yun serialized it).
    pub async fn invoke_public_http(
        &self,
        env: &EnvId,
        path: &str,
        event: String,
        caller: &CallerContext,
    ) -> Result<Option<Invocation>, YunError> {
        if !self.env_exists(env).await? {
            return Ok(None);
        }
        let Some(name) = match_route(&self.routes(env).await?, path) else {
            return Ok(None);
        };
        let identity = Identity {
            env: env.clone(),
            caller: Caller::Anonymous,
        };
        self.invoke_checked(&identity, &name, event, caller, Attempt::FIRST)
            .await
            .map(Some)
    }

    /// Waits until queued logs and records are stored (tests, shutdown).
    pub async fn flush_records(&self) {
        self.recorder.flush().await;
    }
}

/// The function serving `path`: the route equal to it or the longest one that is a
/// whole-segment prefix of it (`/api` serves `/api` and `/api/x`, not `/apix`).
/// `routes` is sorted longest first.
fn match_route(routes: &[(String, FunctionName)], path: &str) -> Option<FunctionName> {
    routes.iter().find_map(|(route, name)| {
        let matches = route == "/"
            || path == route
            || path
                .strip_prefix(route.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        matches.then(|| name.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_whole_segments_longest_first() {
        let f = |s: &str| FunctionName::parse(s).unwrap();
        let routes = vec![
            ("/api/v2".to_owned(), f("v2")),
            ("/api".to_owned(), f("api")),
            ("/".to_owned(), f("root")),
        ];
        assert_eq!(match_route(&routes, "/api/v2/users"), Some(f("v2")));
        assert_eq!(match_route(&routes, "/api/v2"), Some(f("v2")));
        assert_eq!(match_route(&routes, "/api/v20"), Some(f("api")));
        assert_eq!(match_route(&routes, "/api"), Some(f("api")));
        assert_eq!(match_route(&routes, "/apix"), Some(f("root")));
        assert_eq!(match_route(&routes[..2], "/apix"), None);
        assert_eq!(match_route(&[], "/"), None);
    }

    #[test]
    fn http_paths_are_checked() {
        for ok in ["/", "/hello", "/a/b-c/d_e.json"] {
            assert!(check_http_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "hello", "/a//b", "/a/../b", "/a/./b", "/a b", "/a?x"] {
            assert!(check_http_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_names_are_checked() {
        let vars = |k: &str| BTreeMap::from([(k.to_owned(), "v".to_owned())]);
        assert!(check_env_vars(&vars("DB_URL")).is_ok());
        for bad in [
            "1X",
            "A-B",
            "",
            "TENCENTCLOUD_SECRETKEY",
            "TCB_ENV",
            "YUN_X",
        ] {
            assert!(check_env_vars(&vars(bad)).is_err(), "{bad}");
        }
    }
}
