//! Environments and their keys.

use serde::Serialize;
use yun_auth::{Caller, Identity};
use yun_meta::{EnvRecord, EnvSettings, KeyRecord, KeyRole};
use yun_types::{new_id, EnvId, ErrorCode, YunError};

use crate::cache::Forget;
use crate::{App, Operation};
use yun_types::unix_now;

/// What `yun dev` prints on first start and writes to `credentials.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub url: String,
    pub env_id: String,
    pub secret_id: String,
    pub secret_key: String,
}

/// A freshly created key: the only time its SecretKey is shown.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    pub env: EnvId,
    pub secret_id: String,
    pub secret_key: String,
    pub role: KeyRole,
    pub description: String,
}

/// A platform key an operator chose (`yun serve`: every node of a cluster knows it from
/// its configuration, rather than from the first node's output).
#[derive(Debug, Clone)]
pub struct PlatformKey {
    pub secret_id: String,
    pub secret_key: String,
}

fn mint_key(env: &EnvId, role: KeyRole, description: &str) -> KeyRecord {
    KeyRecord {
        // Tencent Cloud's SecretIds start with AKID; the SDKs treat them as opaque.
        secret_id: new_id("AKID"),
        secret_key: new_id(""),
        env: env.clone(),
        role,
        description: description.to_owned(),
        created_at: unix_now(),
        revoked_at: None,
    }
}

/// Shows only the first characters of a SecretKey.
fn mask(key: &mut KeyRecord) {
    key.secret_key = format!("{}…", &key.secret_key[..4.min(key.secret_key.len())]);
}

impl From<KeyRecord> for NewKey {
    fn from(k: KeyRecord) -> Self {
        NewKey {
            env: k.env,
            secret_id: k.secret_id,
            secret_key: k.secret_key,
            role: k.role,
            description: k.description,
        }
    }
}

impl App {
    /// First start: when no env exists, creates `env` and a platform key for it.
    pub async fn initialize(
        &self,
        env: &EnvId,
        platform_key: Option<&PlatformKey>,
    ) -> Result<Option<NewKey>, YunError> {
        let created = self.meta.list_envs().await?.is_empty()
            && match self.meta.create_env(env).await {
                Ok(_) => true,
                // Nodes of a cluster starting together: another one initialized it.
                Err(e) if e.code == ErrorCode::AlreadyExists => false,
                Err(e) => return Err(e),
            };
        let key = match platform_key {
            Some(given) => KeyRecord {
                secret_id: given.secret_id.clone(),
                secret_key: given.secret_key.clone(),
                ..mint_key(env, KeyRole::Platform, "given in the configuration")
            },
            None if created => mint_key(env, KeyRole::Platform, "created on first start"),
            None => return Ok(None),
        };
        // A configured key is stored whenever the database lacks it: also when another node
        // made the env and has yet to store its key, or stopped before it did.
        if !created
            && (self.meta.get_key(&key.secret_id).await?.is_some()
                || self.meta.get_env(env).await?.is_none())
        {
            return Ok(None);
        }
        if let Err(e) = self.meta.insert_key(&key).await {
            // Unless a node starting beside this one stored the same key first.
            if self.meta.get_key(&key.secret_id).await?.is_none() {
                return Err(e);
            }
        }
        if !created {
            return Ok(None);
        }
        tracing::info!(env = %env, secret_id = %key.secret_id, "initialized the first env and platform key");
        Ok(Some(key.into()))
    }

    /// Creates an env and its first env-scoped key.
    pub async fn create_env(
        &self,
        identity: &Identity,
        env: &EnvId,
    ) -> Result<(EnvRecord, NewKey), YunError> {
        Self::authorize(identity, Operation::CreateEnv)?;
        let record = self.meta.create_env(env).await?;
        let key = mint_key(env, KeyRole::Env, "first key of the env");
        self.meta.insert_key(&key).await?;
        Ok((record, key.into()))
    }

    pub async fn list_envs(&self, identity: &Identity) -> Result<Vec<EnvRecord>, YunError> {
        Self::authorize(identity, Operation::ListEnvs)?;
        let all = self.meta.list_envs().await?;
        Ok(match identity.caller {
            Caller::PlatformKey { .. } => all,
            Caller::EnvKey { .. }
            | Caller::Function { .. }
            | Caller::User(_)
            | Caller::Anonymous => all.into_iter().filter(|e| e.id == identity.env).collect(),
        })
    }

    /// Deletes an env with everything it owns: keys, functions, code, logs.
    pub async fn delete_env(&self, identity: &Identity, env: &EnvId) -> Result<(), YunError> {
        Self::authorize(identity, Operation::DeleteEnv)?;
        if let Caller::PlatformKey { secret_id } = &identity.caller {
            if self
                .meta
                .get_key(secret_id)
                .await?
                .is_some_and(|k| &k.env == env)
            {
                return Err(YunError::invalid_param(
                    "refusing to delete the env that holds the key making the request",
                ));
            }
        }
        if !self.remove_env(env).await? {
            return Err(YunError::new(
                ErrorCode::InvalidEnv,
                format!("env {env} does not exist"),
            ));
        }
        Ok(())
    }

    /// Deletes `env` with everything it owns; false when there was no such env.
    pub(crate) async fn remove_env(&self, env: &EnvId) -> Result<bool, YunError> {
        for function in self.meta.list_functions(env).await? {
            self.forget(Forget::Function {
                env: env.clone(),
                name: function.spec.name.clone(),
            });
        }
        let deleted = self.meta.delete_env(env).await?;
        if deleted {
            self.docdb.store().drop_env(env).await?;
            self.storage.drop_env(env).await?;
            self.users.drop_env(env).await?;
        }
        self.forget(Forget::Env { env: env.clone() });
        self.forget(Forget::Triggers);
        if !deleted {
            return Ok(false);
        }
        if self.settings.shared_packages {
            self.storage
                .delete_packages(&format!("{env}/"), &[], std::time::Duration::ZERO)
                .await;
        }
        let dir = self.settings.functions_dir.join(env.as_str());
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove env code");
            }
        }
        Ok(true)
    }

    pub async fn env_settings_of(&self, identity: &Identity) -> Result<EnvSettings, YunError> {
        Self::authorize(identity, Operation::GetEnvSettings)?;
        self.env_settings(&identity.env).await
    }

    /// Replaces the env's settings. Limits must satisfy 1 <= default <= max <= 100000.
    pub async fn put_env_settings(
        &self,
        identity: &Identity,
        settings: EnvSettings,
    ) -> Result<EnvSettings, YunError> {
        Self::authorize(identity, Operation::PutEnvSettings)?;
        let default = settings.db_default_limit.unwrap_or(100);
        let max = settings.db_max_limit.unwrap_or(1000);
        if default == 0 || default > max || max > 100_000 {
            return Err(YunError::invalid_param(
                "database limits must satisfy 1 <= db_default_limit <= db_max_limit <= 100000",
            ));
        }
        if let Some(offset) = &settings.timer_utc_offset {
            crate::events::utc_offset(offset)?;
        }
        let before = self.network_policy(&identity.env).await?;
        self.meta.put_env_settings(&identity.env, &settings).await?;
        self.forget(Forget::Triggers);
        self.forget(Forget::EnvSettings {
            env: identity.env.clone(),
        });
        if settings.network.unwrap_or_default() != before {
            // Running instances keep the network they started with: replace them.
            for function in self.meta.list_functions(&identity.env).await? {
                self.forget(Forget::Function {
                    env: identity.env.clone(),
                    name: function.spec.name.clone(),
                });
            }
        }
        Ok(settings)
    }

    pub async fn create_key(
        &self,
        identity: &Identity,
        description: &str,
    ) -> Result<NewKey, YunError> {
        Self::authorize(identity, Operation::CreateKey)?;
        let key = mint_key(&identity.env, KeyRole::Env, description);
        self.meta.insert_key(&key).await?;
        Ok(key.into())
    }

    /// The env's keys, SecretKeys masked.
    pub async fn list_keys(&self, identity: &Identity) -> Result<Vec<KeyRecord>, YunError> {
        Self::authorize(identity, Operation::ListKeys)?;
        let mut keys = self.meta.list_keys(&identity.env).await?;
        keys.iter_mut().for_each(mask);
        Ok(keys)
    }

    /// The platform key making the request (`yun key show`), its SecretKey masked
    /// unless `reveal`: start-up no longer prints it, so this is where its holder finds it.
    pub async fn own_key(&self, identity: &Identity, reveal: bool) -> Result<KeyRecord, YunError> {
        Self::authorize(identity, Operation::ShowOwnKey)?;
        let Caller::PlatformKey { secret_id } = &identity.caller else {
            return Err(YunError::internal(
                "ShowOwnKey admitted a caller without a platform key",
            ));
        };
        let mut key = self.meta.get_key(secret_id).await?.ok_or_else(|| {
            YunError::new(ErrorCode::NotFound, "the key making the request is gone")
        })?;
        if !reveal {
            mask(&mut key);
        }
        Ok(key)
    }

    pub async fn revoke_key(&self, identity: &Identity, secret_id: &str) -> Result<(), YunError> {
        Self::authorize(identity, Operation::RevokeKey)?;
        let revoked = self
            .meta
            .revoke_key(&identity.env, secret_id, unix_now())
            .await?;
        self.forget(Forget::Key {
            secret_id: secret_id.to_owned(),
        });
        if !revoked {
            return Err(YunError::new(
                ErrorCode::NotFound,
                format!("env {} has no live key {secret_id}", identity.env),
            ));
        }
        Ok(())
    }
}
