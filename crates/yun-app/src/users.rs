//! End users: sign-in for the js-sdk (`/auth/v1`), resolving their access tokens to an
//! [`Identity`], and their management by the env's admins.

use yun_auth::{Caller, EndUser, Identity};
use yun_types::{EnvId, ErrorCode, YunError};
use yun_users::{Session, TicketKey, TicketKeyRecord, UserRecord};

use crate::cache::Forget;
use crate::{App, Operation};

/// Most users a management listing returns per page.
pub const MAX_USER_PAGE: usize = 1000;

/// An end user's session after a token check.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub identity: Identity,
    /// The session (refresh family) the access token belongs to.
    pub session_id: String,
    pub user: UserRecord,
}

pub(crate) fn end_user_of(user: &UserRecord) -> EndUser {
    EndUser {
        uid: user.uid.clone(),
        anonymous: user.anonymous,
        custom_id: user.custom_id.clone(),
    }
}

impl App {
    async fn existing_env(&self, env: &EnvId) -> Result<(), YunError> {
        if self.env_exists(env).await? {
            Ok(())
        } else {
            Err(YunError::new(
                ErrorCode::InvalidEnv,
                format!("env {env} does not exist"),
            ))
        }
    }

    pub async fn sign_in_anonymously(&self, env: &EnvId) -> Result<Session, YunError> {
        self.existing_env(env).await?;
        let result = self.users.sign_in_anonymously(env).await;
        crate::ops::metrics::sign_in(env, "anonymous", &result);
        result
    }

    pub async fn sign_up(
        &self,
        env: &EnvId,
        username: &str,
        password: &str,
    ) -> Result<Session, YunError> {
        self.existing_env(env).await?;
        let result = self.users.sign_up(env, username, password).await;
        crate::ops::metrics::sign_in(env, "sign_up", &result);
        result
    }

    pub async fn sign_in(
        &self,
        env: &EnvId,
        username: &str,
        password: &str,
    ) -> Result<Session, YunError> {
        self.existing_env(env).await?;
        let result = self.users.sign_in(env, username, password).await;
        crate::ops::metrics::sign_in(env, "password", &result);
        result
    }

    pub async fn sign_in_with_ticket(
        &self,
        env: &EnvId,
        ticket: &str,
    ) -> Result<Session, YunError> {
        self.existing_env(env).await?;
        let result = self.users.sign_in_with_ticket(env, ticket).await;
        crate::ops::metrics::sign_in(env, "ticket", &result);
        result
    }

    pub async fn refresh_session(
        &self,
        env: &EnvId,
        refresh_token: &str,
    ) -> Result<Session, YunError> {
        self.existing_env(env).await?;
        let result = self.users.refresh(env, refresh_token).await;
        crate::ops::metrics::sign_in(env, "refresh", &result);
        result
    }

    /// Resolves an end user's access token. With `env`, the token must belong to it.
    pub async fn authenticate_token(
        &self,
        token: &str,
        env: Option<&EnvId>,
    ) -> Result<UserSession, YunError> {
        let (claims, user) = self.users.verify(token).await?;
        let token_env = EnvId::parse(&claims.env)
            .map_err(|_| YunError::new(ErrorCode::Unauthenticated, "the token names no env"))?;
        if env.is_some_and(|env| *env != token_env) {
            return Err(YunError::new(
                ErrorCode::Unauthenticated,
                "the access token belongs to another env",
            ));
        }
        self.existing_env(&token_env).await?;
        Ok(UserSession {
            identity: Identity {
                env: token_env,
                caller: Caller::User(end_user_of(&user)),
            },
            session_id: claims.sid,
            user,
        })
    }

    /// Ends the session: its refresh tokens stop working. The access token itself stays
    /// valid until it expires (JWTs are not looked up per request).
    pub async fn sign_out(&self, session: &UserSession) -> Result<(), YunError> {
        Self::authorize(&session.identity, Operation::SignOut)?;
        self.users.end_session(&session.session_id).await
    }

    pub async fn sudo(&self, session: &UserSession, password: &str) -> Result<String, YunError> {
        Self::authorize(&session.identity, Operation::Sudo)?;
        self.users
            .sudo(&session.identity.env, &session.user.uid, password)
            .await
    }

    pub async fn set_password(
        &self,
        session: &UserSession,
        sudo_token: &str,
        new_password: &str,
    ) -> Result<(), YunError> {
        Self::authorize(&session.identity, Operation::SetPassword)?;
        self.users
            .set_password(
                &session.identity.env,
                &session.user.uid,
                sudo_token,
                new_password,
            )
            .await
    }

    pub async fn list_users(
        &self,
        identity: &Identity,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, YunError> {
        Self::authorize(identity, Operation::ListUsers)?;
        self.users
            .store()
            .list_users(&identity.env, after, limit.clamp(1, MAX_USER_PAGE))
            .await
    }

    pub async fn get_user(&self, identity: &Identity, uid: &str) -> Result<UserRecord, YunError> {
        Self::authorize(identity, Operation::GetUser)?;
        self.users
            .store()
            .user(&identity.env, uid)
            .await?
            .ok_or_else(|| user_not_found(uid))
    }

    /// Disabling ends the user's sessions; their access tokens stop working at once.
    pub async fn set_user_disabled(
        &self,
        identity: &Identity,
        uid: &str,
        disabled: bool,
    ) -> Result<(), YunError> {
        Self::authorize(identity, Operation::SetUserDisabled)?;
        if self
            .users
            .set_disabled(&identity.env, uid, disabled)
            .await?
        {
            self.forget(Forget::User {
                env: identity.env.clone(),
                uid: uid.to_owned(),
            });
            Ok(())
        } else {
            Err(user_not_found(uid))
        }
    }

    pub async fn delete_user(&self, identity: &Identity, uid: &str) -> Result<(), YunError> {
        Self::authorize(identity, Operation::DeleteUser)?;
        if self.users.delete_user(&identity.env, uid).await? {
            self.forget(Forget::User {
                env: identity.env.clone(),
                uid: uid.to_owned(),
            });
            Ok(())
        } else {
            Err(user_not_found(uid))
        }
    }

    /// A new key pair for custom-login tickets; the private key is shown only now.
    pub async fn create_ticket_key(&self, identity: &Identity) -> Result<TicketKey, YunError> {
        Self::authorize(identity, Operation::CreateTicketKey)?;
        self.users.create_ticket_key(&identity.env).await
    }

    pub async fn list_ticket_keys(
        &self,
        identity: &Identity,
    ) -> Result<Vec<TicketKeyRecord>, YunError> {
        Self::authorize(identity, Operation::ListTicketKeys)?;
        self.users.store().list_ticket_keys(&identity.env).await
    }

    pub async fn delete_ticket_key(&self, identity: &Identity, kid: &str) -> Result<(), YunError> {
        Self::authorize(identity, Operation::DeleteTicketKey)?;
        if self
            .users
            .store()
            .delete_ticket_key(&identity.env, kid)
            .await?
        {
            Ok(())
        } else {
            Err(YunError::new(
                ErrorCode::NotFound,
                format!("no ticket key {kid:?} in env {}", identity.env),
            ))
        }
    }

    /// A new token-signing key: every end user's access token stops working (their
    /// refresh tokens still get new ones).
    pub async fn rotate_user_key(&self, identity: &Identity) -> Result<(), YunError> {
        Self::authorize(identity, Operation::RotateUserKey)?;
        self.users.rotate_key(&identity.env).await?;
        self.forget(Forget::UserKeys {
            env: identity.env.clone(),
        });
        Ok(())
    }
}

fn user_not_found(uid: &str) -> YunError {
    YunError::new(ErrorCode::NotFound, format!("no user {uid:?}"))
}
