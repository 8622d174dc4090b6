//! The functions runtime: one pool per deployed function version, a stem-cell pool per
//! memory class, and a reaper. Decisions come from [`crate::pool::PoolState`]; this file
//! only carries them out (processes, waiting, clocks).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};
use yun_meta::{NetworkPolicy, NewLogLine};
use yun_types::{EnvId, FunctionName};

use crate::api::InstanceApi;
use crate::instance::{
    Failure, Instance, InvokeInput, LoadFailure, LoadSpec, LogTarget, SpawnConfig,
};
use crate::lane::{DeathHook, Lane, TurnHook};
use crate::pool::{queue_depth, throttled, Admission, PoolPolicy, PoolState};
use crate::protocol::JsError;

const BOOTSTRAP_JS: &str = include_str!("../js/bootstrap.js");

/// Writes the bootstrap shipped in this binary into `dir` and returns its path.
pub fn install_bootstrap(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "bootstrap-v{}.js",
        crate::protocol::PROTOCOL_VERSION
    ));
    std::fs::write(&path, BOOTSTRAP_JS)?;
    Ok(path)
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub spawn: SpawnConfig,
    /// Pre-started processes kept per memory class in use.
    pub stem_cells: usize,
    /// The memory class whose stem cells are started at boot.
    pub default_memory_mb: u32,
    pub idle_timeout: Duration,
    pub queue_timeout: Duration,
    /// Largest function result, in bytes of JSON (SCF: 6 MB).
    pub output_limit: usize,
    /// Log bytes kept per invocation.
    pub log_limit: usize,
    /// Whether the platform SDK layer is in place (see [`LayerState`]).
    pub layer: watch::Receiver<LayerState>,
    /// The URL clients reach Yun at, when it is not this node's own (a load balancer's):
    /// a link made for clients that a function's SDK follows (a temporary file URL) is
    /// sent to the node the function runs on, which its sandbox can reach.
    pub public_url: Option<String>,
}

/// The platform SDK layer (`wx-server-sdk`, `@cloudbase/node-sdk`) as instances find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerState {
    Ready,
    /// Being installed (a first start): instances started now would not see it.
    Installing,
    /// It could not be installed; says why and what to do.
    Failed(String),
}

/// A layer that is there from the start (given with `--node-layer`, or installed).
pub fn layer_ready() -> watch::Receiver<LayerState> {
    watch::channel(LayerState::Ready).1
}

/// One deployed version of a function, as the runtime needs it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub env: EnvId,
    pub name: FunctionName,
    pub version: i64,
    pub code_dir: String,
    pub handler: String,
    pub timeout: Duration,
    pub memory_mb: u32,
    pub max_instances: usize,
    /// Set once when an instance loads the function (user vars and platform vars).
    pub static_env: BTreeMap<String, String>,
    /// What its instances may reach (sandboxed instances only).
    pub network: NetworkPolicy,
}

/// Variables set in `process.env` for one invocation only (identity, credential, seq
/// id): the platform's own names, listed in the same order for every event, so that
/// consecutive events compare position by position. Values that repeat (the credential,
/// fixed lists) should be the same `Arc`: those compare by pointer.
pub type InvocationEnv = Vec<(&'static str, Arc<str>)>;

pub struct InvokeRequest {
    pub request_id: String,
    /// The event as JSON text (`request_data`); empty means `{}`.
    pub event: String,
    pub env: InvocationEnv,
    /// Made by a running function (it waits for this one's result): never queued
    /// behind busy instances' events, which may be its caller or wait on it (a function
    /// calling itself would wait for its own end).
    pub from_function: bool,
    /// The invocation's own trace context (its span), if traced.
    pub traceparent: Option<String>,
}

#[derive(Debug)]
pub enum InvokeError {
    /// Every instance stayed busy for the whole queue timeout.
    Throttled {
        max_instances: usize,
        waited: Duration,
    },
    /// The function's reserved concurrency is 0 (set by the platform, not the runtime).
    Disabled,
    /// The function's code failed to load (syntax error, missing export).
    Load(JsError),
    Failed(Failure),
    /// Yun could not start an instance.
    Unavailable(String),
}

impl From<LoadFailure> for InvokeError {
    fn from(failure: LoadFailure) -> Self {
        match failure {
            LoadFailure::Code(e) => InvokeError::Load(e),
            LoadFailure::Process(why) => InvokeError::Unavailable(why),
        }
    }
}

impl InvokeError {
    pub fn message(&self) -> String {
        match self {
            InvokeError::Throttled {
                max_instances,
                waited,
            } => format!(
                "all {max_instances} instances stayed busy for {} ms; retry later",
                waited.as_millis()
            ),
            InvokeError::Disabled => {
                "the function is disabled: its reserved concurrency is 0".into()
            }
            InvokeError::Load(e) => format!("function failed to load: {}", e.summary()),
            InvokeError::Failed(f) => f.message(),
            InvokeError::Unavailable(why) => format!("could not start an instance: {why}"),
        }
    }
}

pub struct InvokeReport {
    pub result: Result<String, InvokeError>,
    pub cold_start: bool,
    pub duration: Duration,
    /// How long the event waited for an instance to be free (not the cold start).
    pub waited: Duration,
    pub memory_peak_kb: u64,
}

/// One function's instances, for metrics.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub env: EnvId,
    pub function: FunctionName,
    pub idle: usize,
    pub busy: usize,
}

struct FunctionPool {
    version: i64,
    policy: PoolPolicy,
    state: Mutex<PoolState<Arc<Lane>>>,
    released: Notify,
    retired: AtomicBool,
    /// Moving average of how long events ran, in µs; `u64::MAX` until one has run.
    recent_run_us: AtomicU64,
}

impl FunctionPool {
    fn queue_depth(&self) -> usize {
        let us = self.recent_run_us.load(Ordering::Relaxed);
        queue_depth((us != u64::MAX).then(|| Duration::from_micros(us)))
    }

    fn note_run(&self, ran: Duration) {
        let us = ran.as_micros().min(u128::from(u64::MAX - 1)) as u64;
        let old = self.recent_run_us.load(Ordering::Relaxed);
        let new = if old == u64::MAX {
            us
        } else {
            (old.saturating_mul(7).saturating_add(us)) / 8
        };
        self.recent_run_us.store(new, Ordering::Relaxed);
    }
}

/// One invocation's inputs, kept until it has run: an event handed back unrun (its
/// instance died first) is admitted again.
struct Event {
    request: InvokeRequest,
    target: LogTarget,
    timeout: Duration,
    output_limit: usize,
    log_limit: usize,
}

impl Event {
    fn input(&self) -> InvokeInput<'_> {
        InvokeInput {
            request_id: &self.request.request_id,
            event: &self.request.event,
            env: &self.request.env,
            timeout: self.timeout,
            output_limit: self.output_limit,
            log_limit: self.log_limit,
        }
    }
}

type PoolKey = (EnvId, FunctionName);

pub struct Runtime {
    cfg: RuntimeConfig,
    pools: Mutex<HashMap<PoolKey, Arc<FunctionPool>>>,
    stems: Mutex<HashMap<u32, VecDeque<Instance>>>,
    stem_requests: mpsc::UnboundedSender<u32>,
    /// Set at shutdown: no new stem cell is kept.
    stopping: AtomicBool,
    /// Set once the first stem cells have started (or failed to): readiness waits for it.
    stems_settled: AtomicBool,
    /// Held by the stem-cell filler while it starts one.
    starting_stem: tokio::sync::Mutex<()>,
    next_instance: AtomicU64,
    logs: mpsc::Sender<NewLogLine>,
    /// The in-function data path, once the app serving it exists.
    api: OnceLock<Arc<dyn InstanceApi>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a pool lock cannot leave the state half-updated (every
    // mutation is a single call), so recovering the guard is sound.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Runtime {
    /// Starts the runtime and its background tasks (stem-cell filler, reaper).
    pub fn start(cfg: RuntimeConfig, logs: mpsc::Sender<NewLogLine>) -> Arc<Self> {
        let (stem_requests, requests) = mpsc::unbounded_channel();
        let cfg_stem_cells = cfg.stem_cells;
        let runtime = Arc::new(Self {
            cfg,
            pools: Mutex::new(HashMap::new()),
            stems: Mutex::new(HashMap::new()),
            stem_requests,
            stopping: AtomicBool::new(false),
            stems_settled: AtomicBool::new(cfg_stem_cells == 0),
            starting_stem: tokio::sync::Mutex::new(()),
            next_instance: AtomicU64::new(1),
            logs,
            api: OnceLock::new(),
        });
        tokio::spawn(Self::fill_stems(Arc::downgrade(&runtime), requests));
        tokio::spawn(Self::follow_layer(Arc::downgrade(&runtime)));
        tokio::spawn(Self::reap_loop(Arc::downgrade(&runtime)));
        if runtime.cfg.stem_cells > 0 {
            let _ = runtime.stem_requests.send(runtime.cfg.default_memory_mb);
        }
        runtime
    }

    /// Serves the in-function data path from now on (instances loaded before it go over
    /// HTTP). Set once, by the composition root, when the app exists.
    pub fn serve_instance_api(&self, api: Arc<dyn InstanceApi>) {
        let _ = self.api.set(api);
    }

    /// Whether function credentials must come through their instance's own gateway.
    pub fn binds_credentials(&self) -> bool {
        self.cfg
            .spawn
            .isolation
            .as_ref()
            .is_some_and(|i| i.gateway.is_some())
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    fn instance_id(&self) -> u64 {
        self.next_instance.fetch_add(1, Ordering::Relaxed)
    }

    async fn fill_stems(
        runtime: std::sync::Weak<Self>,
        mut requests: mpsc::UnboundedReceiver<u32>,
    ) {
        while let Some(class) = requests.recv().await {
            loop {
                let Some(rt) = runtime.upgrade() else { return };
                // `shutdown` takes this once it has set `stopping`: a stem cell still
                // starting then is stopped here, not left to die with the process.
                let _starting = rt.starting_stem.lock().await;
                if rt.stopping.load(Ordering::Acquire) {
                    return;
                }
                if lock(&rt.stems).get(&class).map_or(0, VecDeque::len) >= rt.cfg.stem_cells {
                    rt.stems_settled.store(true, Ordering::Release);
                    break;
                }
                match Instance::spawn(&rt.cfg.spawn, rt.instance_id(), class, true).await {
                    Ok(stem) if rt.stopping.load(Ordering::Acquire) => {
                        stem.shutdown().await;
                        return;
                    }
                    Ok(stem) => lock(&rt.stems).entry(class).or_default().push_back(stem),
                    Err(e) => {
                        tracing::warn!(error = %e, memory_mb = class, "stem cell failed to start");
                        rt.stems_settled.store(true, Ordering::Release);
                        break;
                    }
                }
            }
        }
    }

    /// When the layer arrives, stem cells started without it are replaced: they
    /// preloaded nothing, and in the sandbox they do not even see its folder.
    async fn follow_layer(runtime: std::sync::Weak<Self>) {
        let Some(mut layer) = runtime.upgrade().map(|rt| rt.cfg.layer.clone()) else {
            return;
        };
        while layer.changed().await.is_ok() {
            if *layer.borrow_and_update() != LayerState::Ready {
                continue;
            }
            let Some(rt) = runtime.upgrade() else { return };
            let stale: Vec<(u32, Instance)> = {
                let _starting = rt.starting_stem.lock().await;
                lock(&rt.stems)
                    .drain()
                    .flat_map(|(class, cells)| cells.into_iter().map(move |c| (class, c)))
                    .collect()
            };
            tracing::info!(
                stem_cells = stale.len(),
                "the SDK layer is ready: replacing stem cells"
            );
            let mut classes: Vec<u32> = stale.iter().map(|(class, _)| *class).collect();
            classes.push(rt.cfg.default_memory_mb);
            classes.sort_unstable();
            classes.dedup();
            for (_, stem) in stale {
                stem.shutdown().await;
            }
            for class in classes {
                let _ = rt.stem_requests.send(class);
            }
        }
    }

    /// The layer's state now.
    /// Whether the stem cells asked for at start have started (or failed to).
    pub fn stems_settled(&self) -> bool {
        self.stems_settled.load(Ordering::Acquire)
    }

    pub fn layer_state(&self) -> LayerState {
        self.cfg.layer.borrow().clone()
    }

    /// Waits (at most `limit`) while the layer is being installed; its state then.
    pub async fn wait_for_layer(&self, limit: Duration) -> LayerState {
        let mut layer = self.cfg.layer.clone();
        let settled = tokio::time::timeout(
            limit,
            layer.wait_for(|state| *state != LayerState::Installing),
        )
        .await;
        match settled {
            Ok(Ok(state)) => state.clone(),
            _ => self.layer_state(),
        }
    }

    async fn reap_loop(runtime: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for round in 0u64.. {
            tick.tick().await;
            let Some(rt) = runtime.upgrade() else { return };
            if round % 10 == 0 {
                rt.cfg.spawn.sandbox.sweep();
            }
            let pools: Vec<Arc<FunctionPool>> = lock(&rt.pools).values().cloned().collect();
            let now = Instant::now();
            for pool in pools {
                let expired = lock(&pool.state).reap(&pool.policy, now);
                for lane in expired {
                    tracing::debug!(instance = lane.id, "reaping idle instance");
                    tokio::spawn(async move { lane.shutdown().await });
                }
            }
        }
    }

    fn pool_for(&self, spec: &FunctionSpec) -> Arc<FunctionPool> {
        let key = (spec.env.clone(), spec.name.clone());
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(&key) {
            if pool.version == spec.version {
                return pool.clone();
            }
            retire_pool(pool);
        }
        let pool = Arc::new(FunctionPool {
            version: spec.version,
            policy: PoolPolicy {
                max_instances: spec.max_instances,
                idle_timeout: self.cfg.idle_timeout,
                keep_warm: 0,
                queue_timeout: self.cfg.queue_timeout,
            },
            state: Mutex::new(PoolState::default()),
            released: Notify::new(),
            retired: AtomicBool::new(false),
            recent_run_us: AtomicU64::new(u64::MAX),
        });
        pools.insert(key, pool.clone());
        pool
    }

    /// Stops the function's instances (after their current invocation): a new version
    /// was deployed or the function was deleted.
    pub fn retire(&self, env: &EnvId, name: &FunctionName) {
        if let Some(pool) = lock(&self.pools).remove(&(env.clone(), name.clone())) {
            retire_pool(&pool);
        }
    }

    /// Instances (idle, busy) of a function; for tests, metrics and `fn list`.
    pub fn instance_counts(&self, env: &EnvId, name: &FunctionName) -> (usize, usize) {
        lock(&self.pools)
            .get(&(env.clone(), name.clone()))
            .map_or((0, 0), |p| {
                let s = lock(&p.state);
                (s.idle_count(), s.busy_count())
            })
    }

    /// Every function's instances.
    pub fn instance_stats(&self) -> Vec<PoolStats> {
        lock(&self.pools)
            .iter()
            .map(|((env, function), p)| {
                let s = lock(&p.state);
                PoolStats {
                    env: env.clone(),
                    function: function.clone(),
                    idle: s.idle_count(),
                    busy: s.busy_count(),
                }
            })
            .collect()
    }

    /// Stem cells started and waiting for a function.
    pub fn stem_cell_count(&self) -> usize {
        lock(&self.stems).values().map(VecDeque::len).sum()
    }

    /// A loaded instance of the function, from a stem cell or a fresh process.
    async fn cold_instance(
        &self,
        spec: &FunctionSpec,
        pool: &Arc<FunctionPool>,
    ) -> Result<Arc<Lane>, InvokeError> {
        let stem = {
            let mut stems = lock(&self.stems);
            let cells = stems.entry(spec.memory_mb).or_default();
            // A stem cell can die while it waits (killed, out of memory): skip those.
            cells.retain_mut(|stem| !stem.has_exited());
            cells.pop_front()
        };
        if self.cfg.stem_cells > 0 {
            let _ = self.stem_requests.send(spec.memory_mb);
        }
        let mut instance = match stem {
            Some(stem) => stem,
            None => Instance::spawn(&self.cfg.spawn, self.instance_id(), spec.memory_mb, false)
                .await
                .map_err(InvokeError::Unavailable)?,
        };
        match instance
            .load(&load_spec(
                spec,
                &static_context(spec),
                self.api.get(),
                self.cfg.public_url.as_deref(),
            ))
            .await
        {
            Ok(()) => {
                let instance_id = instance.id;
                let hook = turn_hook(pool, instance_id);
                Lane::new(instance, hook, idle_death_hook(pool, instance_id))
                    .ok_or_else(|| InvokeError::Unavailable("the instance has no channel".into()))
            }
            Err(failure) => {
                tokio::spawn(instance.shutdown());
                Err(failure.into())
            }
        }
    }

    /// Loads the function in a fresh instance and throws it away: a deploy-time check
    /// that the code loads and exports its handler.
    pub async fn check_loads(&self, spec: &FunctionSpec) -> Result<(), InvokeError> {
        let mut instance =
            Instance::spawn(&self.cfg.spawn, self.instance_id(), spec.memory_mb, false)
                .await
                .map_err(InvokeError::Unavailable)?;
        let result = instance
            .load(&load_spec(
                spec,
                &static_context(spec),
                self.api.get(),
                self.cfg.public_url.as_deref(),
            ))
            .await;
        instance.shutdown().await;
        result.map_err(InvokeError::from)
    }

    async fn admit(
        &self,
        pool: &FunctionPool,
        arrived: Instant,
        may_queue: bool,
    ) -> Result<Option<Arc<Lane>>, InvokeError> {
        loop {
            let released = pool.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let depth = if may_queue { pool.queue_depth() } else { 1 };
            match lock(&pool.state).admit(&pool.policy, depth) {
                Admission::Warm(lane) | Admission::Queued(lane) => return Ok(Some(lane)),
                Admission::Cold => return Ok(None),
                Admission::Wait => {}
            }
            let now = Instant::now();
            if throttled(&pool.policy, arrived, now) {
                return Err(InvokeError::Throttled {
                    max_instances: pool.policy.max_instances,
                    waited: now - arrived,
                });
            }
            let deadline = arrived + pool.policy.queue_timeout;
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    pub async fn invoke(&self, spec: &FunctionSpec, request: InvokeRequest) -> InvokeReport {
        let arrived = Instant::now();
        let pool = self.pool_for(spec);
        let from_function = request.from_function;
        let mut waited = Duration::ZERO;
        let report = |result, cold_start, waited, memory_peak_kb| InvokeReport {
            result,
            cold_start,
            duration: arrived.elapsed(),
            waited,
            memory_peak_kb,
        };
        let target = LogTarget {
            env: spec.env.clone(),
            function: spec.name.clone(),
            request_id: request.request_id.clone(),
            traceparent: request.traceparent.clone(),
            sink: self.logs.clone(),
        };
        let event = Event {
            request,
            target,
            timeout: spec.timeout,
            output_limit: self.cfg.output_limit,
            log_limit: self.cfg.log_limit,
        };
        let mut cold_start = false;
        loop {
            let admitting = Instant::now();
            let admitted = self.admit(&pool, arrived, !from_function).await;
            // An admission at once is no wait (its microseconds are the pool's own).
            let took = admitting.elapsed();
            if took >= Duration::from_millis(1) {
                waited += took;
            }
            let lane = match admitted {
                Ok(Some(lane)) => lane,
                Ok(None) => match self.cold_instance(spec, &pool).await {
                    Ok(lane) => {
                        cold_start = true;
                        lock(&pool.state).started(lane.id, lane.clone(), Instant::now());
                        lane
                    }
                    Err(e) => {
                        lock(&pool.state).start_failed();
                        pool.released.notify_one();
                        return report(Err(e), true, waited, 0);
                    }
                },
                Err(e) => return report(Err(e), cold_start, waited, 0),
            };
            // The lane's reader runs the event and accounts for it (the pool's turn
            // hook), whether or not this caller is still waiting.
            // Unrun: the instance died before this event's turn; admit it again.
            if let Ok(outcome) = lane.invoke(&event.input(), event.target.clone()).await {
                let result = outcome.result.map_err(InvokeError::Failed);
                return report(result, cold_start, waited, outcome.peak_rss_kb);
            }
        }
    }

    /// Stops every instance and stem cell; called once at shutdown.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.starting_stem.lock().await);
        let pools: Vec<Arc<FunctionPool>> = lock(&self.pools).drain().map(|(_, p)| p).collect();
        let lanes: Vec<Arc<Lane>> = pools.iter().flat_map(|p| lock(&p.state).drain()).collect();
        let stems: Vec<Instance> = lock(&self.stems).drain().flat_map(|(_, v)| v).collect();
        for pool in &pools {
            pool.retired.store(true, Ordering::Release);
        }
        for lane in lanes {
            lane.shutdown().await;
        }
        for stem in stems {
            stem.shutdown().await;
        }
        self.cfg.spawn.sandbox.cleanup();
    }
}

/// The pool's accounting for the events lane `lane` runs.
fn turn_hook(pool: &Arc<FunctionPool>, lane: u64) -> TurnHook {
    let pool = Arc::downgrade(pool);
    Box::new(move |ran, survived| {
        if let Some(pool) = pool.upgrade() {
            if let Some(ran) = ran {
                pool.note_run(ran);
            }
            settle(&pool, lane, survived);
        }
    })
}

/// Drops lane `lane` from the pool: its instance died while idle.
fn idle_death_hook(pool: &Arc<FunctionPool>, lane: u64) -> DeathHook {
    let pool = Arc::downgrade(pool);
    Box::new(move || {
        if let Some(pool) = pool.upgrade() {
            let gone = lock(&pool.state).remove(lane);
            drop(gone);
            pool.released.notify_one();
        }
    })
}

/// Accounts for one finished event on lane `lane`: a failed instance leaves the pool,
/// and so does an idle one of a retired pool.
fn settle(pool: &FunctionPool, lane: u64, survived: bool) {
    let gone = {
        let mut state = lock(&pool.state);
        if !survived
            || (state.finished(lane, Instant::now()) && pool.retired.load(Ordering::Acquire))
        {
            state.remove(lane)
        } else {
            None
        }
    };
    if let Some(lane) = gone {
        tokio::spawn(async move { lane.shutdown().await });
    }
    pool.released.notify_one();
}

fn load_spec<'a>(
    spec: &'a FunctionSpec,
    context: &'a serde_json::Value,
    api: Option<&'a Arc<dyn InstanceApi>>,
    public_url: Option<&'a str>,
) -> LoadSpec<'a> {
    LoadSpec {
        api,
        public_url,
        env: &spec.env,
        name: &spec.name,
        code_dir: &spec.code_dir,
        handler: &spec.handler,
        env_vars: &spec.static_env,
        context,
        network: spec.network,
    }
}

/// The SCF context fields an instance keeps for every event; the bootstrap adds each
/// event's `request_id` and `environment` (its variables minus the credential).
fn static_context(spec: &FunctionSpec) -> serde_json::Value {
    json!({
        "function_name": spec.name.as_str(),
        "function_version": "$LATEST",
        "namespace": spec.env.as_str(),
        "memory_limit_in_mb": spec.memory_mb,
        "time_limit_in_ms": spec.timeout.as_millis() as u64,
        "callbackWaitsForEmptyEventLoop": false,
    })
}

fn retire_pool(pool: &FunctionPool) {
    pool.retired.store(true, Ordering::Release);
    for lane in lock(&pool.state).drain() {
        tokio::spawn(async move { lane.shutdown().await });
    }
    // Waiters on a retired pool retry on the new one after their deadline at worst;
    // wake them now so they see the retirement.
    pool.released.notify_waiters();
}
