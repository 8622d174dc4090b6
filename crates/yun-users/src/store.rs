//! Where users, refresh tokens and token-signing keys live: the seam the backends
//! implement (`yun-store-sqlite`, `yun-store-postgres`). Refresh tokens are stored as
//! SHA-256 hashes only.

use async_trait::async_trait;
use serde::Serialize;
use yun_types::{EnvId, YunError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRecord {
    pub uid: String,
    /// None for anonymous users.
    pub username: Option<String>,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub anonymous: bool,
    /// The developer's own user id, for users who signed in with a custom ticket.
    pub custom_id: Option<String>,
    pub disabled: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A refresh token row, looked up by the token's hash.
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    pub env: String,
    pub uid: String,
    /// Every token issued from one sign-in shares a family; a replayed token ends it.
    pub family: String,
    pub expires_at: i64,
}

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum RefreshUse {
    /// First use: it is spent now.
    Fresh(RefreshRecord),
    /// Already spent: somebody replayed it, so its whole family was revoked.
    Replayed,
    Unknown,
}

/// The public half of a key the developer's backend signs custom-login tickets with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketKeyRecord {
    #[serde(rename = "privateKeyId")]
    pub kid: String,
    #[serde(skip)]
    pub public_pem: String,
    /// Unix milliseconds.
    #[serde(rename = "createdAt")]
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn insert_user(&self, env: &EnvId, user: UserRecord) -> Result<(), YunError>;
    async fn user(&self, env: &EnvId, uid: &str) -> Result<Option<UserRecord>, YunError>;
    async fn user_by_name(&self, env: &EnvId, name: &str) -> Result<Option<UserRecord>, YunError>;
    async fn user_by_custom_id(
        &self,
        env: &EnvId,
        id: &str,
    ) -> Result<Option<UserRecord>, YunError>;
    async fn set_password(&self, env: &EnvId, uid: &str, hash: &str) -> Result<(), YunError>;
    async fn set_disabled(&self, env: &EnvId, uid: &str, disabled: bool) -> Result<bool, YunError>;
    /// Deletes the user and its refresh tokens; false when there was no such user.
    async fn delete_user(&self, env: &EnvId, uid: &str) -> Result<bool, YunError>;
    async fn list_users(
        &self,
        env: &EnvId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, YunError>;
    async fn insert_refresh(&self, hash: &str, token: RefreshRecord) -> Result<(), YunError>;
    async fn use_refresh(&self, hash: &str) -> Result<RefreshUse, YunError>;
    /// The env's refresh tokens not yet spent nor expired at `now_s`, as (hash, record):
    /// what an export carries so that sessions survive a move.
    async fn live_refresh(
        &self,
        env: &EnvId,
        now_s: i64,
    ) -> Result<Vec<(String, RefreshRecord)>, YunError>;
    async fn revoke_family(&self, family: &str) -> Result<(), YunError>;
    /// The env's signing key, created on first use.
    async fn active_key(&self, env: &EnvId, fresh: SigningKey) -> Result<SigningKey, YunError>;
    async fn key(&self, env: &EnvId, kid: &str) -> Result<Option<SigningKey>, YunError>;
    /// Makes `fresh` the env's signing key; earlier keys are dropped, so every token they
    /// signed stops working.
    async fn rotate_key(&self, env: &EnvId, fresh: SigningKey) -> Result<(), YunError>;
    async fn insert_ticket_key(&self, env: &EnvId, key: TicketKeyRecord) -> Result<(), YunError>;
    async fn ticket_key(&self, env: &EnvId, kid: &str)
        -> Result<Option<TicketKeyRecord>, YunError>;
    async fn list_ticket_keys(&self, env: &EnvId) -> Result<Vec<TicketKeyRecord>, YunError>;
    async fn delete_ticket_key(&self, env: &EnvId, kid: &str) -> Result<bool, YunError>;
    async fn drop_env(&self, env: &EnvId) -> Result<(), YunError>;
}
