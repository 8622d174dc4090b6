//! End users of an env: anonymous and username/password accounts, sessions and tokens.
//!
//! - Passwords are argon2id hashes (the crate's defaults, OWASP's recommendation).
//! - Access tokens are HS256 JWTs signed with the env's current key (`kid` in the header),
//!   valid [`ACCESS_SECS`]; rotating the key ends every token it signed.
//! - Refresh tokens are random, stored hashed, single use: each refresh spends the token
//!   and issues the next of its family. Presenting a spent token again is a replay: the
//!   whole family (that sign-in's session) is revoked.

pub mod store;

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use yun_types::{new_id, unix_now, EnvId, ErrorCode, YunError};

pub use store::{RefreshRecord, RefreshUse, SigningKey, SqliteUserStore, UserRecord, UserStore};

pub const ACCESS_SECS: i64 = 2 * 3600;
pub const REFRESH_SECS: i64 = 30 * 86_400;
const ISSUER: &str = "yun";

/// What an access token says. `scope` is `anonymous` or `user`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub env: String,
    /// The session (refresh family) the token came from.
    pub sid: String,
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
}

/// A signed-in session, as the `/auth/v1` endpoints answer it.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub user: UserRecord,
}

fn unauthenticated(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::Unauthenticated, message)
}

fn bad_credentials() -> YunError {
    // One message for an unknown name and a wrong password: no account probing.
    YunError::new(ErrorCode::InvalidCredentials, "wrong username or password")
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

fn fresh_key() -> SigningKey {
    let mut secret = vec![0u8; 32];
    rand::rng().fill(&mut secret[..]);
    SigningKey {
        kid: new_id(""),
        secret,
    }
}

/// Usernames: 1–64 characters of letters, digits and `_ . @ -`, starting with a letter
/// or digit (CloudBase's own rule is similar); passwords: 8–128 characters.
fn check_credentials(username: &str, password: &str) -> Result<(), YunError> {
    let ok = (1..=64).contains(&username.chars().count())
        && username.chars().next().is_some_and(char::is_alphanumeric)
        && username
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
    if !ok {
        return Err(YunError::invalid_param(
            "a username is 1 to 64 letters, digits, _ . @ or -, starting with a letter or digit",
        ));
    }
    if !(8..=128).contains(&password.chars().count()) {
        return Err(YunError::invalid_param("a password is 8 to 128 characters"));
    }
    Ok(())
}

pub struct Users {
    store: Arc<dyn UserStore>,
}

impl Users {
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.store
    }

    async fn issue(
        &self,
        env: &EnvId,
        user: UserRecord,
        family: &str,
    ) -> Result<Session, YunError> {
        let key = self.store.active_key(env, fresh_key()).await?;
        let now = unix_now();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            sub: user.uid.clone(),
            env: env.to_string(),
            sid: family.to_owned(),
            scope: if user.anonymous { "anonymous" } else { "user" }.into(),
            iat: now,
            exp: now + ACCESS_SECS,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid);
        let access_token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key.secret))
                .map_err(|e| YunError::internal(format!("signing a token: {e}")))?;
        let refresh_token = random_hex(32);
        self.store
            .insert_refresh(
                &token_hash(&refresh_token),
                RefreshRecord {
                    env: env.to_string(),
                    uid: user.uid.clone(),
                    family: family.to_owned(),
                    expires_at: now + REFRESH_SECS,
                },
            )
            .await?;
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: ACCESS_SECS,
            user,
        })
    }

    fn new_user(username: Option<String>, password_hash: Option<String>) -> UserRecord {
        UserRecord {
            uid: new_id(""),
            anonymous: username.is_none(),
            username,
            password_hash,
            disabled: false,
            created_at: yun_types::unix_ms(),
        }
    }

    pub async fn sign_in_anonymously(&self, env: &EnvId) -> Result<Session, YunError> {
        let user = Self::new_user(None, None);
        self.store.insert_user(env, user.clone()).await?;
        self.issue(env, user, &new_id("")).await
    }

    pub async fn sign_up(
        &self,
        env: &EnvId,
        username: &str,
        password: &str,
    ) -> Result<Session, YunError> {
        check_credentials(username, password)?;
        let hash = hash_password(password).await?;
        let user = Self::new_user(Some(username.to_owned()), Some(hash));
        self.store.insert_user(env, user.clone()).await?;
        self.issue(env, user, &new_id("")).await
    }

    pub async fn sign_in(
        &self,
        env: &EnvId,
        username: &str,
        password: &str,
    ) -> Result<Session, YunError> {
        let user = self.store.user_by_name(env, username).await?;
        let Some(user) = user else {
            // Spend the same time as a real check, so timing does not reveal names.
            let _ = verify_password(password, DUMMY_HASH).await;
            return Err(bad_credentials());
        };
        let hash = user.password_hash.clone().unwrap_or_default();
        if !verify_password(password, &hash).await? {
            return Err(bad_credentials());
        }
        if user.disabled {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                "the user is disabled",
            ));
        }
        self.issue(env, user, &new_id("")).await
    }

    /// Spends `refresh_token` and issues the next session of its family.
    pub async fn refresh(&self, env: &EnvId, refresh_token: &str) -> Result<Session, YunError> {
        let invalid = || {
            YunError::new(
                ErrorCode::InvalidCredentials,
                "the refresh token is not valid",
            )
        };
        let token = match self.store.use_refresh(&token_hash(refresh_token)).await? {
            RefreshUse::Fresh(token) => token,
            RefreshUse::Replayed => {
                tracing::warn!(%env, "a spent refresh token was presented again; its session is revoked");
                return Err(invalid());
            }
            RefreshUse::Unknown => return Err(invalid()),
        };
        if token.env != env.as_str() || token.expires_at < unix_now() {
            return Err(invalid());
        }
        let user = self
            .store
            .user(env, &token.uid)
            .await?
            .ok_or_else(invalid)?;
        if user.disabled {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                "the user is disabled",
            ));
        }
        self.issue(env, user, &token.family).await
    }

    /// Checks an access token: signature with the env's key, expiry, and that the user
    /// still exists and is enabled.
    pub async fn verify(&self, token: &str) -> Result<(AccessClaims, UserRecord), YunError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthenticated("the access token is malformed"))?;
        // The env comes from the unverified payload only to pick the key; the signature
        // check below is what makes it true.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<AccessClaims>(token)
            .map_err(|_| unauthenticated("the access token is malformed"))?
            .claims;
        let env = EnvId::parse(&unverified.env)
            .map_err(|_| unauthenticated("the access token names no env"))?;
        let kid = header
            .kid
            .ok_or_else(|| unauthenticated("the access token has no key id"))?;
        let key = self
            .store
            .key(&env, &kid)
            .await?
            .ok_or_else(|| unauthenticated("the access token's signing key was rotated"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(
            token,
            &DecodingKey::from_secret(&key.secret),
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => YunError::new(
                ErrorCode::AccessTokenExpired,
                "the access token has expired",
            ),
            _ => unauthenticated("the access token is not valid"),
        })?
        .claims;
        let user = self
            .store
            .user(&env, &claims.sub)
            .await?
            .ok_or_else(|| unauthenticated("the user no longer exists"))?;
        if user.disabled {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                "the user is disabled",
            ));
        }
        Ok((claims, user))
    }

    /// Ends the session the token belongs to: its refresh tokens stop working.
    pub async fn sign_out(&self, claims: &AccessClaims) -> Result<(), YunError> {
        self.store.revoke_family(&claims.sid).await
    }

    pub async fn change_password(
        &self,
        env: &EnvId,
        uid: &str,
        old: &str,
        new: &str,
    ) -> Result<(), YunError> {
        let user = self
            .store
            .user(env, uid)
            .await?
            .ok_or_else(bad_credentials)?;
        let username = user
            .username
            .clone()
            .ok_or_else(|| YunError::invalid_param("an anonymous user has no password"))?;
        check_credentials(&username, new)?;
        if !verify_password(old, user.password_hash.as_deref().unwrap_or_default()).await? {
            return Err(bad_credentials());
        }
        self.store
            .set_password(env, uid, &hash_password(new).await?)
            .await
    }

    /// A new signing key for the env: every access token issued before stops working.
    pub async fn rotate_key(&self, env: &EnvId) -> Result<(), YunError> {
        self.store.rotate_key(env, fresh_key()).await
    }
}

/// A valid argon2 hash of a random password, checked against when the username is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0IqZ2O7Pda1ZfUJmgeb3ih/5a44hDkKhDgkxUszn1gk";

/// Argon2 takes tens of milliseconds of CPU by design: off the async workers.
async fn hash_password(password: &str) -> Result<String, YunError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
            .map_err(|e| YunError::internal(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| YunError::internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| YunError::internal(format!("hashing a password: {e}")))?
}

async fn verify_password(password: &str, hash: &str) -> Result<bool, YunError> {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .map_err(|e| YunError::internal(format!("checking a password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (Users, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteUserStore::open(&dir.path().join("users.db")).unwrap();
        (Users::new(Arc::new(store)), dir)
    }

    fn env(id: &str) -> EnvId {
        EnvId::parse(id).unwrap()
    }

    #[test]
    fn the_dummy_hash_is_a_real_argon2_hash() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[tokio::test]
    async fn sign_up_sign_in_and_bad_credentials() {
        let (users, _dir) = users();
        let dev = env("dev");
        let session = users.sign_up(&dev, "alice", "correct horse").await.unwrap();
        let (claims, user) = users.verify(&session.access_token).await.unwrap();
        assert_eq!(
            (claims.scope.as_str(), user.username.as_deref()),
            ("user", Some("alice"))
        );
        let again = users
            .sign_up(&dev, "alice", "another one")
            .await
            .unwrap_err();
        assert_eq!(again.code, ErrorCode::AlreadyExists);
        assert!(users.sign_in(&dev, "alice", "correct horse").await.is_ok());
        for (name, password) in [("alice", "wrong horse"), ("bob", "correct horse")] {
            let e = users.sign_in(&dev, name, password).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidCredentials);
        }
        // Users are per env.
        let e = users
            .sign_in(&env("other"), "alice", "correct horse")
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCredentials);
        assert_eq!(
            users
                .sign_up(&dev, "../x", "correct horse")
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidParam
        );
        assert_eq!(
            users
                .sign_up(&dev, "carol", "short")
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidParam
        );
    }

    #[tokio::test]
    async fn refresh_rotates_and_a_replay_revokes_the_session() {
        let (users, _dir) = users();
        let dev = env("dev");
        let first = users.sign_in_anonymously(&dev).await.unwrap();
        let second = users.refresh(&dev, &first.refresh_token).await.unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_eq!(second.user.uid, first.user.uid);
        // Replaying the spent token fails and ends the family: the newest token too.
        assert_eq!(
            users
                .refresh(&dev, &first.refresh_token)
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidCredentials
        );
        assert_eq!(
            users
                .refresh(&dev, &second.refresh_token)
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidCredentials
        );
        // Another env cannot use this env's refresh token.
        let third = users.sign_in_anonymously(&dev).await.unwrap();
        assert!(users
            .refresh(&env("other"), &third.refresh_token)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn sign_out_rotation_disable_and_tampering() {
        let (users, _dir) = users();
        let dev = env("dev");
        let s = users.sign_up(&dev, "dave", "password one").await.unwrap();
        let (claims, _) = users.verify(&s.access_token).await.unwrap();
        users.sign_out(&claims).await.unwrap();
        assert!(
            users.refresh(&dev, &s.refresh_token).await.is_err(),
            "signed out"
        );

        let mut tampered = s.access_token.clone();
        tampered.insert(tampered.len() - 2, 'x');
        assert_eq!(
            users.verify(&tampered).await.unwrap_err().code,
            ErrorCode::Unauthenticated
        );

        let s = users.sign_in(&dev, "dave", "password one").await.unwrap();
        users.rotate_key(&dev).await.unwrap();
        assert_eq!(
            users.verify(&s.access_token).await.unwrap_err().code,
            ErrorCode::Unauthenticated
        );

        let s = users.sign_in(&dev, "dave", "password one").await.unwrap();
        users
            .store()
            .set_disabled(&dev, &s.user.uid, true)
            .await
            .unwrap();
        assert_eq!(
            users.verify(&s.access_token).await.unwrap_err().code,
            ErrorCode::PermissionDenied
        );
        assert!(users.sign_in(&dev, "dave", "password one").await.is_err());
        assert!(users.refresh(&dev, &s.refresh_token).await.is_err());
    }

    #[tokio::test]
    async fn changing_the_password_ends_other_sessions() {
        let (users, _dir) = users();
        let dev = env("dev");
        let s = users.sign_up(&dev, "erin", "first password").await.unwrap();
        assert_eq!(
            users
                .change_password(&dev, &s.user.uid, "wrong one!", "second password")
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidCredentials
        );
        users
            .change_password(&dev, &s.user.uid, "first password", "second password")
            .await
            .unwrap();
        assert!(users.refresh(&dev, &s.refresh_token).await.is_err());
        assert!(users.sign_in(&dev, "erin", "first password").await.is_err());
        assert!(users.sign_in(&dev, "erin", "second password").await.is_ok());
    }
}
