//! Resolving a request to exactly one env and one identity.

use serde_json::{Map, Value};
use yun_auth::tc3::{self, Authorization, RequestParts};
use yun_auth::{Caller, Identity, TempCredentialIssuer};
use yun_functions::InstanceBinding;
use yun_meta::{KeyRecord, KeyRole};
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};

use crate::App;
use yun_types::unix_now;

/// A CloudBase `/admin` request as received, for signature verification.
pub struct SignedRequest<'a> {
    pub authorization: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub expires: Option<&'a str>,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    pub body: &'a Map<String, Value>,
    /// Set when the request came from a sandboxed instance through its own gateway.
    pub instance: Option<&'a InstanceBinding>,
}

fn key_caller(key: &KeyRecord) -> Caller {
    match key.role {
        KeyRole::Platform => Caller::PlatformKey {
            secret_id: key.secret_id.clone(),
        },
        KeyRole::Env => Caller::EnvKey {
            secret_id: key.secret_id.clone(),
        },
    }
}

impl App {
    /// Checks that the env exists and that a key of `home` with `caller` may act in it.
    async fn admit_to_env(
        &self,
        home: &EnvId,
        caller: Caller,
        env: &EnvId,
    ) -> Result<Identity, YunError> {
        let allowed = match &caller {
            Caller::PlatformKey { .. } => true,
            Caller::EnvKey { .. } | Caller::Function { .. } => home == env,
            Caller::User(_) | Caller::Anonymous => false,
        };
        if !allowed {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                format!("this credential may not act in env {env}"),
            ));
        }
        if !self.env_exists(env).await? {
            return Err(YunError::new(
                ErrorCode::InvalidEnv,
                format!("env {env} does not exist"),
            ));
        }
        Ok(Identity {
            env: env.clone(),
            caller,
        })
    }

    /// A permanent key presented directly (management API, HTTP Basic), acting in `env`
    /// or, when `None`, in the key's own env.
    pub async fn authenticate_key(
        &self,
        secret_id: &str,
        secret_key: &str,
        env: Option<&EnvId>,
    ) -> Result<Identity, YunError> {
        let unknown = || {
            YunError::new(
                ErrorCode::InvalidSecretId,
                "unknown or revoked SecretId, or wrong SecretKey",
            )
        };
        let key = self.live_key(secret_id).await?.ok_or_else(unknown)?;
        let same = key.secret_key.len() == secret_key.len()
            && key
                .secret_key
                .bytes()
                .zip(secret_key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(unknown());
        }
        self.admit_to_env(&key.env, key_caller(&key), env.unwrap_or(&key.env))
            .await
    }

    /// Where instances are sandboxed, a function's temporary credential is good only
    /// from an instance of that function, through that instance's own gateway: a copy
    /// taken out (read from another process, logged, sent away) is useless.
    fn check_credential_holder(
        &self,
        credential: &Identity,
        instance: Option<&InstanceBinding>,
    ) -> Result<(), YunError> {
        if !self.runtime.binds_credentials() {
            return Ok(());
        }
        let holder = instance.and_then(|binding| binding.get());
        let matches = match (&credential.caller, holder) {
            (Caller::Function { name }, Some((env, loaded))) => {
                env == &credential.env && loaded == name
            }
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(YunError::new(
                ErrorCode::PermissionDenied,
                "this temporary credential is valid only inside the function it was issued to",
            ))
        }
    }

    /// A call over an instance's own channel (the in-function data path): the caller is
    /// the function that instance loaded, as with its credential, and nothing the call
    /// says can change that.
    pub async fn authenticate_instance(
        &self,
        home: &EnvId,
        function: &FunctionName,
        env: &EnvId,
    ) -> Result<Identity, YunError> {
        let caller = Caller::Function {
            name: function.clone(),
        };
        self.admit_to_env(home, caller, env).await
    }

    /// Verifies a TC3-signed `/admin` request and resolves it in `env`.
    pub async fn authenticate_signed(
        &self,
        req: &SignedRequest<'_>,
        env: &EnvId,
    ) -> Result<Identity, YunError> {
        let missing =
            |what: &str| YunError::new(ErrorCode::SignParamInvalid, format!("missing {what}"));
        let auth = Authorization::parse(
            req.authorization
                .ok_or_else(|| missing("Authorization header"))?,
        )?;
        let timestamp: i64 = req
            .timestamp
            .ok_or_else(|| missing("X-Timestamp header"))?
            .trim()
            .parse()
            .map_err(|_| {
                YunError::new(ErrorCode::SignParamInvalid, "X-Timestamp is not a number")
            })?;
        let expires: i64 = req
            .expires
            .and_then(|e| e.trim().parse().ok())
            .unwrap_or(tc3::MAX_SIGNATURE_AGE_SECS);
        let now = unix_now();
        let (home, caller, secret_key) = if TempCredentialIssuer::is_temp(&auth.secret_id) {
            let token = req.body.get("sessionToken").and_then(Value::as_str);
            let (identity, key) = self.issuer.resolve(&auth.secret_id, token, now)?;
            self.check_credential_holder(&identity, req.instance)?;
            (identity.env, identity.caller, key)
        } else {
            let key = self.live_key(&auth.secret_id).await?.ok_or_else(|| {
                YunError::new(ErrorCode::InvalidSecretId, "unknown or revoked SecretId")
            })?;
            (key.env.clone(), key_caller(&key), key.secret_key)
        };
        let parts = RequestParts {
            host: req.host,
            path: req.path,
            query: req.query,
            header: req.header,
            body: req.body,
        };
        tc3::verify(&auth, &secret_key, timestamp, expires, now, &parts)?;
        self.admit_to_env(&home, caller, env).await
    }
}
