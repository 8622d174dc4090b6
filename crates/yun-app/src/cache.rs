//! Read-through caches of the metadata every request reads: keys, envs, function
//! records and each env's HTTP routes. Every write path in this crate invalidates what
//! it changed ([`App::forget`]), on this node at once and on the others of a cluster
//! through the event bus's broadcasts: a revoked key, a deleted env, a disabled user or a
//! new deploy takes effect everywhere. A node that may have missed broadcasts (its
//! connection dropped) drops every cache.
//!
//! Only positive answers are cached: unknown ids and paths are caller-controlled, and
//! caching them would let callers grow memory without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use yun_auth::TempCredential;
use yun_functions::FunctionSpec;
use yun_meta::{EnvSettings, FunctionRecord, KeyRecord, NetworkPolicy};
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};

use crate::App;

/// What a write makes every node drop from its caches.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "forget", rename_all = "snake_case")]
pub(crate) enum Forget {
    Key {
        secret_id: String,
    },
    Env {
        env: EnvId,
    },
    EnvSettings {
        env: EnvId,
    },
    Function {
        env: EnvId,
        name: FunctionName,
    },
    Rules {
        env: EnvId,
    },
    /// Triggers (or what they depend on) changed: the trigger loops read them again.
    Triggers,
    User {
        env: EnvId,
        uid: String,
    },
    /// The env's end-user token-signing keys.
    UserKeys {
        env: EnvId,
    },
}

/// A function's record and the runtime spec derived from it (built once per version).
pub(crate) struct LoadedFunction {
    pub record: FunctionRecord,
    pub spec: FunctionSpec,
    /// Its metric handles, taken once rather than looked up by label per invocation.
    pub metrics: crate::ops::metrics::FunctionMetrics,
}

/// A function's temporary credential as the text its invocations carry. Every event
/// shares the same `Arc`s until it rotates: the runtime tells them unchanged by pointer.
#[derive(Clone)]
pub(crate) struct FunctionCredential {
    pub secret_id: Arc<str>,
    pub secret_key: Arc<str>,
    pub session_token: Arc<str>,
    expires_at: i64,
}

impl From<TempCredential> for FunctionCredential {
    fn from(c: TempCredential) -> Self {
        Self {
            secret_id: c.secret_id.into(),
            secret_key: c.secret_key.into(),
            session_token: c.session_token.into(),
            expires_at: c.expires_at,
        }
    }
}

/// An env's HTTP routes: (path, function), longest path first.
pub(crate) type Routes = Arc<Vec<(String, FunctionName)>>;

#[derive(Default)]
pub(crate) struct MetaCache {
    keys: RwLock<HashMap<String, KeyRecord>>,
    envs: RwLock<HashSet<EnvId>>,
    functions: RwLock<HashMap<(EnvId, FunctionName), Arc<LoadedFunction>>>,
    routes: RwLock<HashMap<EnvId, Routes>>,
    credentials: RwLock<HashMap<(EnvId, FunctionName), FunctionCredential>>,
    env_settings: RwLock<HashMap<EnvId, EnvSettings>>,
    /// Each env's stored rules, parsed, by target (`collection:{name}`, `storage`).
    pub(crate) rules: RwLock<HashMap<EnvId, EnvRules>>,
    /// Bumped by every forget: a read that began before one does not keep its result.
    generation: AtomicU64,
}

impl MetaCache {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

pub(crate) type EnvRules = Arc<HashMap<String, Arc<yun_rules::RuleSet>>>;

/// A function credential is issued for this long past the invocation's time limit ...
const CREDENTIAL_LIFETIME_SECS: i64 = 60;
/// ... and reused while it still outlives the invocation by this much: a copy that
/// leaves its instance is good for a minute past the function's timeout at most.
const CREDENTIAL_MARGIN_SECS: i64 = 30;

fn read<K: std::hash::Hash + Eq, V: Clone>(map: &RwLock<HashMap<K, V>>, key: &K) -> Option<V> {
    map.read().ok().and_then(|m| m.get(key).cloned())
}

/// Keeps what a read found, unless something was forgotten since the read began
/// (`seen`): the read may have found what the forgetting write replaced.
fn write<K: std::hash::Hash + Eq, V>(
    generation: &AtomicU64,
    seen: u64,
    map: &RwLock<HashMap<K, V>>,
    key: K,
    value: V,
) {
    if let Ok(mut m) = map.write() {
        // Checked under the map's lock: a forget bumps the generation before it takes
        // the lock to remove, so either it removes this entry or this sees its bump.
        if generation.load(Ordering::SeqCst) == seen {
            m.insert(key, value);
        }
    }
}

impl App {
    /// A live (not revoked) permanent key.
    pub(crate) async fn live_key(&self, secret_id: &str) -> Result<Option<KeyRecord>, YunError> {
        if let Some(key) = read(&self.cache.keys, &secret_id.to_owned()) {
            return Ok(Some(key));
        }
        let seen = self.cache.generation();
        let key = self
            .meta
            .get_key(secret_id)
            .await?
            .filter(|k| k.revoked_at.is_none());
        if let Some(key) = &key {
            write(
                &self.cache.generation,
                seen,
                &self.cache.keys,
                secret_id.to_owned(),
                key.clone(),
            );
        }
        Ok(key)
    }

    pub(crate) async fn env_exists(&self, env: &EnvId) -> Result<bool, YunError> {
        if self.cache.envs.read().is_ok_and(|s| s.contains(env)) {
            return Ok(true);
        }
        let seen = self.cache.generation();
        let exists = self.meta.get_env(env).await?.is_some();
        if exists {
            if let Ok(mut s) = self.cache.envs.write() {
                if self.cache.generation() == seen {
                    s.insert(env.clone());
                }
            }
        }
        Ok(exists)
    }

    pub(crate) async fn function(
        &self,
        env: &EnvId,
        name: &FunctionName,
    ) -> Result<Arc<LoadedFunction>, YunError> {
        let key = (env.clone(), name.clone());
        if let Some(hit) = read(&self.cache.functions, &key) {
            return Ok(hit);
        }
        let seen = self.cache.generation();
        let record = self.meta.get_function(env, name).await?.ok_or_else(|| {
            YunError::new(
                ErrorCode::FunctionNotFound,
                format!("function {name} does not exist in env {env}"),
            )
        })?;
        self.ensure_code(&record.spec).await?;
        let network = self.network_policy(env).await?;
        let loaded = Arc::new(LoadedFunction {
            spec: self.runtime_spec(&record, network),
            metrics: crate::ops::metrics::FunctionMetrics::new(env, name),
            record,
        });
        write(
            &self.cache.generation,
            seen,
            &self.cache.functions,
            key,
            loaded.clone(),
        );
        Ok(loaded)
    }

    pub(crate) async fn routes(&self, env: &EnvId) -> Result<Routes, YunError> {
        if let Some(routes) = read(&self.cache.routes, env) {
            return Ok(routes);
        }
        let seen = self.cache.generation();
        let mut routes: Vec<(String, FunctionName)> = self
            .meta
            .list_functions(env)
            .await?
            .into_iter()
            .filter_map(|f| Some((f.spec.http_path?, f.spec.name)))
            .collect();
        routes.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let routes = Arc::new(routes);
        write(
            &self.cache.generation,
            seen,
            &self.cache.routes,
            env.clone(),
            routes.clone(),
        );
        Ok(routes)
    }

    /// The credential injected into a function's invocations: reused while it outlives
    /// this invocation by a margin, so it rotates about every ten minutes instead of
    /// costing a new one (and new `process.env` values) per call.
    pub(crate) fn function_credential(
        &self,
        env: &EnvId,
        name: &FunctionName,
        timeout_secs: i64,
    ) -> FunctionCredential {
        let now = yun_types::unix_now();
        let key = (env.clone(), name.clone());
        if let Some(cred) = read(&self.cache.credentials, &key) {
            if cred.expires_at - now >= timeout_secs + CREDENTIAL_MARGIN_SECS {
                return cred;
            }
        }
        let seen = self.cache.generation();
        let cred = FunctionCredential::from(self.issuer.issue(
            env,
            name,
            now + timeout_secs + CREDENTIAL_LIFETIME_SECS,
        ));
        write(
            &self.cache.generation,
            seen,
            &self.cache.credentials,
            key,
            cred.clone(),
        );
        cred
    }

    pub(crate) async fn env_settings(&self, env: &EnvId) -> Result<EnvSettings, YunError> {
        if let Some(s) = read(&self.cache.env_settings, env) {
            return Ok(s);
        }
        let seen = self.cache.generation();
        let settings = self.meta.env_settings(env).await?;
        write(
            &self.cache.generation,
            seen,
            &self.cache.env_settings,
            env.clone(),
            settings.clone(),
        );
        Ok(settings)
    }

    /// What the env's functions may reach.
    pub(crate) async fn network_policy(&self, env: &EnvId) -> Result<NetworkPolicy, YunError> {
        Ok(self.env_settings(env).await?.network.unwrap_or_default())
    }

    /// Drops `what` from this node's caches and tells the other nodes to do the same.
    pub(crate) fn forget(&self, what: Forget) {
        self.apply_forget(&what);
        let events = self.events.clone();
        tokio::spawn(async move {
            let payload = match serde_json::to_vec(&what) {
                Ok(p) => p,
                Err(e) => return tracing::error!(error = %e, "cannot encode an invalidation"),
            };
            if let Err(e) = events.broadcast(payload.into()).await {
                // The other nodes keep a stale entry until they next drop their caches.
                tracing::warn!(error = %e, ?what, "could not tell the other nodes of a change");
            }
        });
    }

    fn apply_forget(&self, what: &Forget) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        match what {
            Forget::Key { secret_id } => self.forget_key(secret_id),
            Forget::Env { env } => {
                self.forget_env(env);
                self.users.forget_env(env);
            }
            Forget::EnvSettings { env } => self.forget_env_settings(env),
            Forget::Function { env, name } => self.forget_function(env, name),
            Forget::Rules { env } => self.forget_rules(env),
            Forget::Triggers => self.triggers_changed(),
            Forget::User { env, uid } => self.users.forget_user(env, uid),
            Forget::UserKeys { env } => self.users.forget_keys(env),
        }
    }

    /// Broadcasts may have been missed: every cache starts over, every function's
    /// instances are replaced (a version may have been deployed meanwhile).
    fn forget_everything(&self) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        let functions: Vec<(EnvId, FunctionName)> = self
            .cache
            .functions
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (env, name) in &functions {
            self.forget_function(env, name);
        }
        let c = &self.cache;
        if let Ok(mut s) = c.envs.write() {
            s.clear();
        }
        if let Ok(mut m) = c.keys.write() {
            m.clear();
        }
        if let Ok(mut m) = c.routes.write() {
            m.clear();
        }
        if let Ok(mut m) = c.credentials.write() {
            m.clear();
        }
        if let Ok(mut m) = c.env_settings.write() {
            m.clear();
        }
        if let Ok(mut m) = c.rules.write() {
            m.clear();
        }
        self.users.forget_everything();
        self.triggers_changed();
    }

    /// Applies the other nodes' invalidations, for as long as the node runs.
    pub async fn run_cache_invalidations(self: Arc<Self>) {
        use futures_util::StreamExt;
        loop {
            let mut heard = match self.events.listen().await {
                Ok(heard) => heard,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hear the other nodes' changes yet");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(message) = heard.next().await {
                match message {
                    yun_events::Heard::Broadcast(payload) => {
                        match serde_json::from_slice::<Forget>(&payload) {
                            Ok(what) => self.apply_forget(&what),
                            Err(e) => {
                                tracing::warn!(error = %e, "an invalidation this node cannot read")
                            }
                        }
                    }
                    yun_events::Heard::Gap => self.forget_everything(),
                }
            }
            // The subscription ended: what came meanwhile is lost; listen again.
            tracing::warn!("stopped hearing the other nodes' changes; listening again");
            self.forget_everything();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    fn forget_env_settings(&self, env: &EnvId) {
        if let Ok(mut m) = self.cache.env_settings.write() {
            m.remove(env);
        }
    }

    fn forget_key(&self, secret_id: &str) {
        if let Ok(mut m) = self.cache.keys.write() {
            m.remove(secret_id);
        }
    }

    /// A function was deployed or deleted: drop its record and its env's routes, and
    /// retire its instances.
    fn forget_function(&self, env: &EnvId, name: &FunctionName) {
        if let Ok(mut m) = self.cache.functions.write() {
            m.remove(&(env.clone(), name.clone()));
        }
        if let Ok(mut m) = self.cache.routes.write() {
            m.remove(env);
        }
        if let Ok(mut m) = self.cache.credentials.write() {
            m.remove(&(env.clone(), name.clone()));
        }
        self.runtime.retire(env, name);
    }

    fn forget_env(&self, env: &EnvId) {
        if let Ok(mut s) = self.cache.envs.write() {
            s.remove(env);
        }
        if let Ok(mut m) = self.cache.keys.write() {
            m.retain(|_, k| &k.env != env);
        }
        if let Ok(mut m) = self.cache.functions.write() {
            m.retain(|(e, _), _| e != env);
        }
        if let Ok(mut m) = self.cache.routes.write() {
            m.remove(env);
        }
        if let Ok(mut m) = self.cache.credentials.write() {
            m.retain(|(e, _), _| e != env);
        }
        self.forget_env_settings(env);
        self.forget_rules(env);
    }

    fn forget_rules(&self, env: &EnvId) {
        if let Ok(mut m) = self.cache.rules.write() {
            m.remove(env);
        }
    }

    /// The env's stored rules (targets without stored rules use the defaults).
    pub(crate) async fn env_rules(&self, env: &EnvId) -> Result<EnvRules, YunError> {
        if let Some(rules) = read(&self.cache.rules, env) {
            return Ok(rules);
        }
        let seen = self.cache.generation();
        let mut parsed = HashMap::new();
        for (target, spec) in self.meta.list_rules(env).await? {
            let kind = if target == crate::rules::STORAGE_TARGET {
                yun_rules::Target::Storage
            } else {
                yun_rules::Target::Collection
            };
            // Stored rules were checked when they were set; a rule that no longer parses
            // (a newer server's syntax) denies everything rather than failing open.
            let set = yun_rules::RuleSet::parse(&spec, kind).unwrap_or_else(|_| {
                yun_rules::RuleSet::parse(&serde_json::json!("ADMINONLY"), kind).expect("preset")
            });
            parsed.insert(target, Arc::new(set));
        }
        let rules: EnvRules = Arc::new(parsed);
        write(
            &self.cache.generation,
            seen,
            &self.cache.rules,
            env.clone(),
            rules.clone(),
        );
        Ok(rules)
    }
}
