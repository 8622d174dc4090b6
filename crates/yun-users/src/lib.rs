//! End users of an env: anonymous and username/password accounts, sessions and tokens.
//!
//! - Passwords are argon2id hashes (the crate's defaults, OWASP's recommendation).
//! - Access tokens are HS256 JWTs signed with the env's current key (`kid` in the header),
//!   valid [`ACCESS_SECS`]; rotating the key ends every token it signed.
//! - Refresh tokens are random, stored hashed, single use: each refresh spends the token
//!   and issues the next of its family. Presenting a spent token again is a replay: the
//!   whole family (that sign-in's session) is revoked.

pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use yun_types::{new_id, unix_now, EnvId, ErrorCode, YunError};

pub use store::{RefreshRecord, RefreshUse, SigningKey, TicketKeyRecord, UserRecord, UserStore};

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

/// A key file for minting custom-login tickets, in the shape CloudBase's console hands
/// out and `@cloudbase/node-sdk` reads as `credentials`. Yun keeps only the public half.
#[derive(Debug, Clone, Serialize)]
pub struct TicketKey {
    pub private_key_id: String,
    pub private_key: String,
    pub env_id: String,
}

/// What `auth().createTicket(uid)` signs (RS256). `iat`/`exp` are Unix milliseconds.
#[derive(Debug, Deserialize)]
struct TicketClaims {
    env: String,
    uid: String,
    exp: i64,
}

/// Proof of a fresh password check, for changing the password (`/auth/v1/user/sudo`).
#[derive(Debug, Serialize, Deserialize)]
struct SudoClaims {
    iss: String,
    sub: String,
    env: String,
    scope: String,
    exp: i64,
}

const SUDO_SCOPE: &str = "sudo";
pub const SUDO_SECS: i64 = 300;
const TICKET_KEY_BITS: usize = 2048;

/// A signed-in session, as the `/auth/v1` endpoints answer it.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub user: UserRecord,
}

/// The `kid` in a token's header.
fn token_kid(token: &str) -> Result<String, YunError> {
    jsonwebtoken::decode_header(token)
        .map_err(|_| unauthenticated("the token is malformed"))?
        .kid
        .ok_or_else(|| unauthenticated("the token has no key id"))
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

/// node-sdk's own rule for `createTicket(uid)`: 4–32 ASCII letters, digits and
/// `_-#@~=*(){}[]:.,<>+`.
fn check_custom_id(uid: &str) -> Result<(), YunError> {
    let ok = (4..=32).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-#@~=*(){}[]:.,<>+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(YunError::invalid_param(format!(
            "invalid custom user id {uid:?}"
        )))
    }
}

pub struct Users {
    store: Arc<dyn UserStore>,
    /// Every request of an end user verifies a token: keys and users are kept in memory.
    /// Writes through `Users` invalidate what they change on this node; the app tells
    /// the other nodes (`forget_*`).
    cache: Cache,
}

/// Users kept in memory at most; past that the cache starts over.
const MAX_CACHED_USERS: usize = 100_000;

/// A signing key's env and secret.
type KeyEntry = (EnvId, Arc<Vec<u8>>);

#[derive(Default)]
struct Cache {
    /// By key id: kids are random ids, unique across envs.
    keys: RwLock<HashMap<String, KeyEntry>>,
    users: RwLock<HashMap<(EnvId, String), UserRecord>>,
    /// Each env's current signing key.
    active: RwLock<HashMap<EnvId, SigningKey>>,
    /// Bumped by every forget: a store read that began before one is not kept (it may
    /// have found what the forgetting write replaced, on this node or another).
    generation: std::sync::atomic::AtomicU64,
}

impl Cache {
    fn key(&self, kid: &str) -> Option<KeyEntry> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    fn user(&self, env: &EnvId, uid: &str) -> Option<UserRecord> {
        self.users
            .read()
            .ok()?
            .get(&(env.clone(), uid.to_owned()))
            .cloned()
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn forget_keys(&self, env: &EnvId) {
        self.bump();
        if let Ok(mut keys) = self.keys.write() {
            keys.retain(|_, (e, _)| e != env);
        }
        if let Ok(mut active) = self.active.write() {
            active.remove(env);
        }
    }

    fn forget_user(&self, env: &EnvId, uid: &str) {
        self.bump();
        if let Ok(mut users) = self.users.write() {
            users.remove(&(env.clone(), uid.to_owned()));
        }
    }

    fn forget_env(&self, env: &EnvId) {
        self.forget_keys(env);
        if let Ok(mut users) = self.users.write() {
            users.retain(|(e, _), _| e != env);
        }
    }
}

impl Users {
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        Self {
            store,
            cache: Cache::default(),
        }
    }

    /// The env's current signing key (created on first use), from memory when known.
    /// The key the env's access tokens are signed with now (made on first use).
    pub async fn active_key(&self, env: &EnvId) -> Result<SigningKey, YunError> {
        if let Some(key) = self
            .cache
            .active
            .read()
            .ok()
            .and_then(|m| m.get(env).cloned())
        {
            return Ok(key);
        }
        let seen = self.cache.generation();
        let key = self.store.active_key(env, fresh_key()).await?;
        if let Ok(mut active) = self.cache.active.write() {
            if self.cache.generation() == seen {
                active.insert(env.clone(), key.clone());
            }
        }
        Ok(key)
    }

    /// The signing secret of `kid` and the env it belongs to.
    async fn signing_secret(&self, kid: &str, env: &EnvId) -> Result<KeyEntry, YunError> {
        if let Some(found) = self.cache.key(kid) {
            return Ok(found);
        }
        let seen = self.cache.generation();
        let key = self
            .store
            .key(env, kid)
            .await?
            .ok_or_else(|| unauthenticated("the token's signing key was rotated"))?;
        let found = (env.clone(), Arc::new(key.secret));
        if let Ok(mut keys) = self.cache.keys.write() {
            if self.cache.generation() == seen {
                keys.insert(kid.to_owned(), found.clone());
            }
        }
        Ok(found)
    }

    async fn user_for_token(&self, env: &EnvId, uid: &str) -> Result<UserRecord, YunError> {
        if let Some(user) = self.cache.user(env, uid) {
            return Ok(user);
        }
        let seen = self.cache.generation();
        let user = self
            .store
            .user(env, uid)
            .await?
            .ok_or_else(|| unauthenticated("the user no longer exists"))?;
        if let Ok(mut users) = self.cache.users.write() {
            if users.len() >= MAX_CACHED_USERS {
                users.clear();
            }
            if self.cache.generation() == seen {
                users.insert((env.clone(), uid.to_owned()), user.clone());
            }
        }
        Ok(user)
    }

    /// Disabling ends the user's sessions and refuses their tokens at once.
    pub async fn set_disabled(
        &self,
        env: &EnvId,
        uid: &str,
        disabled: bool,
    ) -> Result<bool, YunError> {
        let found = self.store.set_disabled(env, uid, disabled).await?;
        self.cache.forget_user(env, uid);
        Ok(found)
    }

    pub async fn delete_user(&self, env: &EnvId, uid: &str) -> Result<bool, YunError> {
        let found = self.store.delete_user(env, uid).await?;
        self.cache.forget_user(env, uid);
        Ok(found)
    }

    pub async fn drop_env(&self, env: &EnvId) -> Result<(), YunError> {
        self.store.drop_env(env).await?;
        self.cache.forget_env(env);
        Ok(())
    }

    /// Drops a user another node changed from this node's memory.
    pub fn forget_user(&self, env: &EnvId, uid: &str) {
        self.cache.forget_user(env, uid);
    }

    /// Drops an env's signing keys another node rotated.
    pub fn forget_keys(&self, env: &EnvId) {
        self.cache.forget_keys(env);
    }

    /// Drops everything of an env another node deleted.
    pub fn forget_env(&self, env: &EnvId) {
        self.cache.forget_env(env);
    }

    /// Drops every user and key kept in memory.
    pub fn forget_everything(&self) {
        self.cache.bump();
        if let Ok(mut keys) = self.cache.keys.write() {
            keys.clear();
        }
        if let Ok(mut users) = self.cache.users.write() {
            users.clear();
        }
        if let Ok(mut active) = self.cache.active.write() {
            active.clear();
        }
    }

    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.store
    }

    /// Signs `claims` with the env's current key (created on first use).
    async fn sign(&self, env: &EnvId, claims: &impl Serialize) -> Result<String, YunError> {
        let key = self.active_key(env).await?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&key.secret))
            .map_err(|e| YunError::internal(format!("signing a token: {e}")))
    }

    /// Checks a token this env's key signed; the caller names the claims it expects.
    async fn check<T: serde::de::DeserializeOwned>(
        &self,
        env: &EnvId,
        token: &str,
    ) -> Result<T, YunError> {
        self.check_with_kid(env, &token_kid(token)?, token).await
    }

    /// [`Users::check`] for a caller that already read the token's key id.
    async fn check_with_kid<T: serde::de::DeserializeOwned>(
        &self,
        env: &EnvId,
        kid: &str,
        token: &str,
    ) -> Result<T, YunError> {
        let (key_env, secret) = self.signing_secret(kid, env).await?;
        if key_env != *env {
            return Err(unauthenticated("the token was signed for another env"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(&secret), &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => YunError::new(
                    ErrorCode::AccessTokenExpired,
                    "the access token has expired",
                ),
                _ => unauthenticated("the token is not valid"),
            })
    }

    async fn issue(
        &self,
        env: &EnvId,
        user: UserRecord,
        family: &str,
    ) -> Result<Session, YunError> {
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
        let access_token = self.sign(env, &claims).await?;
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

    fn new_user(
        username: Option<String>,
        password_hash: Option<String>,
        custom_id: Option<String>,
    ) -> UserRecord {
        UserRecord {
            uid: new_id(""),
            anonymous: username.is_none() && custom_id.is_none(),
            username,
            password_hash,
            custom_id,
            disabled: false,
            created_at: yun_types::unix_ms(),
        }
    }

    pub async fn sign_in_anonymously(&self, env: &EnvId) -> Result<Session, YunError> {
        let user = Self::new_user(None, None, None);
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
        let user = Self::new_user(Some(username.to_owned()), Some(hash), None);
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
        // The env picks the key: from the cache by key id, else from the unverified
        // payload. The signature check in `check` is what makes it true.
        let kid = token_kid(token)?;
        let env = match self.cache.key(&kid) {
            Some((env, _)) => env,
            None => {
                let unverified = jsonwebtoken::dangerous::insecure_decode::<AccessClaims>(token)
                    .map_err(|_| unauthenticated("the access token is malformed"))?
                    .claims;
                EnvId::parse(&unverified.env)
                    .map_err(|_| unauthenticated("the access token names no env"))?
            }
        };
        let claims: AccessClaims = self.check_with_kid(&env, &kid, token).await?;
        if claims.scope == SUDO_SCOPE || claims.env != env.as_str() {
            return Err(unauthenticated(
                "this token is not an access token of its env",
            ));
        }
        let user = self.user_for_token(&env, &claims.sub).await?;
        if user.disabled {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                "the user is disabled",
            ));
        }
        Ok((claims, user))
    }

    /// Ends a session (the `sid` of its access tokens): its refresh tokens stop working.
    pub async fn end_session(&self, session_id: &str) -> Result<(), YunError> {
        self.store.revoke_family(session_id).await
    }

    /// Checks the current password and returns a short-lived token that allows
    /// [`Users::set_password`] (js-sdk `updatePassword` = `sudo` + `setPassword`).
    pub async fn sudo(&self, env: &EnvId, uid: &str, password: &str) -> Result<String, YunError> {
        let user = self
            .store
            .user(env, uid)
            .await?
            .ok_or_else(bad_credentials)?;
        if user.username.is_none() {
            return Err(YunError::invalid_param("this user has no password"));
        }
        if !verify_password(password, user.password_hash.as_deref().unwrap_or_default()).await? {
            return Err(bad_credentials());
        }
        let claims = SudoClaims {
            iss: ISSUER.into(),
            sub: uid.to_owned(),
            env: env.to_string(),
            scope: SUDO_SCOPE.into(),
            exp: unix_now() + SUDO_SECS,
        };
        self.sign(env, &claims).await
    }

    /// Sets a new password with a token from [`Users::sudo`]; every session of the user
    /// ends, including the one that asked.
    pub async fn set_password(
        &self,
        env: &EnvId,
        uid: &str,
        sudo_token: &str,
        new: &str,
    ) -> Result<(), YunError> {
        let claims: SudoClaims = self.check(env, sudo_token).await?;
        if claims.scope != SUDO_SCOPE || claims.sub != uid || claims.env != env.as_str() {
            return Err(unauthenticated("the sudo token is not for this user"));
        }
        let user = self
            .store
            .user(env, uid)
            .await?
            .ok_or_else(bad_credentials)?;
        let username = user
            .username
            .ok_or_else(|| YunError::invalid_param("this user has no password"))?;
        check_credentials(&username, new)?;
        self.store
            .set_password(env, uid, &hash_password(new).await?)
            .await
    }

    /// A new RSA key pair for custom-login tickets. The private half is returned once
    /// and never stored.
    pub async fn create_ticket_key(&self, env: &EnvId) -> Result<TicketKey, YunError> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let (private_pem, public_pem) = tokio::task::spawn_blocking(|| {
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, TICKET_KEY_BITS)
                .map_err(|e| YunError::internal(format!("generating an RSA key: {e}")))?;
            let public = private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| YunError::internal(format!("encoding an RSA key: {e}")))?;
            let private = private
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| YunError::internal(format!("encoding an RSA key: {e}")))?;
            Ok::<_, YunError>((private.to_string(), public))
        })
        .await
        .map_err(|e| YunError::internal(format!("generating an RSA key: {e}")))??;
        let kid = new_id("");
        self.store
            .insert_ticket_key(
                env,
                TicketKeyRecord {
                    kid: kid.clone(),
                    public_pem,
                    created_at: yun_types::unix_ms(),
                },
            )
            .await?;
        Ok(TicketKey {
            private_key_id: kid,
            private_key: private_pem,
            env_id: env.to_string(),
        })
    }

    /// Redeems a ticket from node-sdk `auth().createTicket(uid)`: `{key id}/@@/{RS256 JWT}`.
    /// The first sign-in of a custom user id creates its account.
    pub async fn sign_in_with_ticket(
        &self,
        env: &EnvId,
        ticket: &str,
    ) -> Result<Session, YunError> {
        let invalid = |why: &str| YunError::new(ErrorCode::InvalidCredentials, why.to_owned());
        let (kid, jwt) = ticket
            .split_once("/@@/")
            .ok_or_else(|| invalid("the ticket is not of the form {key id}/@@/{token}"))?;
        let key = self
            .store
            .ticket_key(env, kid)
            .await?
            .ok_or_else(|| invalid("the ticket's key is unknown or revoked"))?;
        let decoding = {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let public = rsa::RsaPublicKey::from_public_key_pem(&key.public_pem)
                .map_err(|e| YunError::internal(format!("a stored ticket key: {e}")))?;
            DecodingKey::from_rsa_raw_components(
                &public.n().to_bytes_be(),
                &public.e().to_bytes_be(),
            )
        };
        // `exp` is in milliseconds (node-sdk's choice), so the library's own check in
        // seconds would never fire; it is checked below instead.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<TicketClaims>(jwt, &decoding, &validation)
            .map_err(|_| invalid("the ticket's signature is not valid"))?
            .claims;
        if claims.env != env.as_str() {
            return Err(invalid("the ticket is for another env"));
        }
        if claims.exp < yun_types::unix_ms() {
            return Err(invalid("the ticket has expired"));
        }
        check_custom_id(&claims.uid)?;
        let user = match self.store.user_by_custom_id(env, &claims.uid).await? {
            Some(user) => user,
            None => {
                let user = Self::new_user(None, None, Some(claims.uid.clone()));
                match self.store.insert_user(env, user.clone()).await {
                    Ok(()) => user,
                    // Two first sign-ins raced: the other one created the account.
                    Err(e) if e.code == ErrorCode::AlreadyExists => self
                        .store
                        .user_by_custom_id(env, &claims.uid)
                        .await?
                        .ok_or(e)?,
                    Err(e) => return Err(e),
                }
            }
        };
        if user.disabled {
            return Err(YunError::new(
                ErrorCode::PermissionDenied,
                "the user is disabled",
            ));
        }
        self.issue(env, user, &new_id("")).await
    }

    /// A new signing key for the env: every access token issued before stops working.
    pub async fn rotate_key(&self, env: &EnvId) -> Result<(), YunError> {
        self.store.rotate_key(env, fresh_key()).await?;
        self.cache.forget_keys(env);
        Ok(())
    }
}

/// A valid argon2 hash of a random password, checked against when the username is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0IqZ2O7Pda1ZfUJmgeb3ih/5a44hDkKhDgkxUszn1gk";

/// Argon2 takes tens of milliseconds of CPU by design: off the async workers.
/// Hashes run at most one per core: each takes 19 MiB and a core for tens of
/// milliseconds, and more at once only thrash the caches (measured: 0.52× of the
/// in-process rate with 8 concurrent sign-ins, before this bound).
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

async fn hash_password(password: &str) -> Result<String, YunError> {
    let password = password.to_owned();
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|e| YunError::internal(format!("hashing queue: {e}")))?;
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
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|e| YunError::internal(format!("hashing queue: {e}")))?;
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

    #[test]
    fn the_dummy_hash_is_a_real_argon2_hash() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
