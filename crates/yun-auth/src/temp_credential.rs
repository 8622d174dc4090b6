//! Short-lived credentials for function instances. Stateless: the SecretId names the env,
//! the function and the expiry, and the SecretKey and session token are HMACs of it under
//! a platform master key. Any node holding the master key can check them, nothing is
//! stored, and they die on their own.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};

use crate::{Caller, Identity};

const PREFIX: &str = "tmp";

#[derive(Debug, Clone)]
pub struct TempCredential {
    pub secret_id: String,
    pub secret_key: String,
    pub session_token: String,
    /// Unix seconds after which the credential is refused.
    pub expires_at: i64,
}

pub struct TempCredentialIssuer {
    master_key: Vec<u8>,
}

impl TempCredentialIssuer {
    pub fn new(master_key: &[u8]) -> Self {
        Self {
            master_key: master_key.to_vec(),
        }
    }

    fn derive(&self, purpose: &str, secret_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.master_key).expect("any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(secret_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A credential valid until `expires_at` (Unix seconds) for one function of one env.
    pub fn issue(&self, env: &EnvId, function: &FunctionName, expires_at: i64) -> TempCredential {
        let nonce = yun_types::new_id("");
        let secret_id = format!("{PREFIX}:{env}:{function}:{expires_at}:{}", &nonce[..16]);
        TempCredential {
            secret_key: self.derive("secret-key", &secret_id),
            session_token: self.derive("session-token", &secret_id),
            secret_id,
            expires_at,
        }
    }

    pub fn is_temp(secret_id: &str) -> bool {
        secret_id.starts_with("tmp:")
    }

    /// Resolves a temp SecretId to its identity and SecretKey, checking expiry and the
    /// session token the SDK sends in the signed body.
    pub fn resolve(
        &self,
        secret_id: &str,
        session_token: Option<&str>,
        now: i64,
    ) -> Result<(Identity, String), YunError> {
        let unknown = || YunError::new(ErrorCode::InvalidSecretId, "unknown or expired SecretId");
        let mut parts = secret_id.split(':');
        let (env, function, expires) = match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(PREFIX), Some(env), Some(function), Some(expires), Some(_nonce), None) => {
                (env, function, expires)
            }
            _ => return Err(unknown()),
        };
        let expires: i64 = expires.parse().map_err(|_| unknown())?;
        if now > expires {
            return Err(unknown());
        }
        let expected_token = self.derive("session-token", secret_id);
        if session_token != Some(expected_token.as_str()) {
            return Err(unknown());
        }
        let identity = Identity {
            env: EnvId::parse(env).map_err(|_| unknown())?,
            caller: Caller::Function {
                name: FunctionName::parse(function).map_err(|_| unknown())?,
            },
        };
        Ok((identity, self.derive("secret-key", secret_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_resolve_until_expiry() {
        let issuer = TempCredentialIssuer::new(b"master");
        let env = EnvId::parse("dev").unwrap();
        let f = FunctionName::parse("hello").unwrap();
        let cred = issuer.issue(&env, &f, 1000);
        let (identity, key) = issuer
            .resolve(&cred.secret_id, Some(&cred.session_token), 999)
            .unwrap();
        assert_eq!(identity.env, env);
        assert_eq!(identity.caller, Caller::Function { name: f });
        assert_eq!(key, cred.secret_key);
        assert!(issuer
            .resolve(&cred.secret_id, Some(&cred.session_token), 1001)
            .is_err());
        assert!(issuer.resolve(&cred.secret_id, None, 999).is_err());
        assert!(issuer
            .resolve(&cred.secret_id, Some("forged"), 999)
            .is_err());
        let other = TempCredentialIssuer::new(b"other master");
        assert!(other
            .resolve(&cred.secret_id, Some(&cred.session_token), 999)
            .is_err());
        // Changing the env inside the id breaks the session token.
        let moved = cred.secret_id.replace(":dev:", ":prod:");
        assert!(issuer
            .resolve(&moved, Some(&cred.session_token), 999)
            .is_err());
    }
}
