//! End users, refresh tokens and token-signing keys on PostgreSQL. What must hold across
//! nodes is one statement each: a refresh token is spent by the one `UPDATE … WHERE NOT
//! used` that finds it unspent (any other use is a replay), an env has one signing key
//! (its primary key), usernames and custom ids are unique indexes.

use async_trait::async_trait;
use tokio_postgres::Row;
use yun_types::{EnvId, ErrorCode, YunError};
use yun_users::{RefreshRecord, RefreshUse, SigningKey, TicketKeyRecord, UserRecord, UserStore};

use crate::Postgres;

fn migrations() -> Vec<String> {
    vec![r#"
CREATE TABLE users (
    env text COLLATE "C" NOT NULL,
    uid text COLLATE "C" NOT NULL,
    username text COLLATE "C",
    password_hash text,
    anonymous boolean NOT NULL,
    custom_id text COLLATE "C",
    disabled boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    PRIMARY KEY (env, uid)
);
CREATE UNIQUE INDEX users_by_name ON users(env, username) WHERE username IS NOT NULL;
CREATE UNIQUE INDEX users_by_custom_id ON users(env, custom_id) WHERE custom_id IS NOT NULL;
CREATE TABLE refresh_tokens (
    hash text PRIMARY KEY,
    env text COLLATE "C" NOT NULL,
    uid text COLLATE "C" NOT NULL,
    family text NOT NULL,
    used boolean NOT NULL DEFAULT false,
    expires_at bigint NOT NULL
);
CREATE INDEX refresh_by_family ON refresh_tokens(family);
CREATE INDEX refresh_by_user ON refresh_tokens(env, uid);
CREATE TABLE signing_keys (
    env text COLLATE "C" PRIMARY KEY,
    kid text NOT NULL,
    secret bytea NOT NULL
);
CREATE TABLE ticket_keys (
    env text COLLATE "C" NOT NULL,
    kid text COLLATE "C" NOT NULL,
    public_pem text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (env, kid)
);
"#
    .to_owned()]
}

macro_rules! user_columns {
    () => {
        "uid, username, password_hash, anonymous, custom_id, disabled, created_at"
    };
}

fn user(row: &Row) -> UserRecord {
    UserRecord {
        uid: row.get(0),
        username: row.get(1),
        password_hash: row.get(2),
        anonymous: row.get(3),
        custom_id: row.get(4),
        disabled: row.get(5),
        created_at: row.get(6),
    }
}

fn ticket_key(row: &Row) -> TicketKeyRecord {
    TicketKeyRecord {
        kid: row.get(0),
        public_pem: row.get(1),
        created_at: row.get(2),
    }
}

fn signing_key(row: &Row) -> SigningKey {
    SigningKey {
        kid: row.get(0),
        secret: row.get(1),
    }
}

pub struct PgUserStore {
    pg: Postgres,
}

impl PgUserStore {
    pub async fn open(pg: Postgres) -> Result<Self, YunError> {
        pg.migrate("users", &migrations()).await?;
        Ok(Self { pg })
    }
}

#[async_trait]
impl UserStore for PgUserStore {
    async fn insert_user(&self, env: &EnvId, u: UserRecord) -> Result<(), YunError> {
        let inserted = self
            .pg
            .execute(
                concat!(
                    "INSERT INTO users (env, ",
                    user_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
                ),
                &[
                    &env.as_str(),
                    &u.uid,
                    &u.username,
                    &u.password_hash,
                    &u.anonymous,
                    &u.custom_id,
                    &u.disabled,
                    &u.created_at,
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(YunError::new(
                ErrorCode::AlreadyExists,
                "the username or custom user id is taken",
            ));
        }
        Ok(())
    }

    async fn user(&self, env: &EnvId, uid: &str) -> Result<Option<UserRecord>, YunError> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE env = $1 AND uid = $2"
        );
        Ok(self
            .pg
            .query_opt(sql, &[&env.as_str(), &uid])
            .await?
            .as_ref()
            .map(user))
    }

    async fn user_by_name(&self, env: &EnvId, name: &str) -> Result<Option<UserRecord>, YunError> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE env = $1 AND username = $2"
        );
        Ok(self
            .pg
            .query_opt(sql, &[&env.as_str(), &name])
            .await?
            .as_ref()
            .map(user))
    }

    async fn user_by_custom_id(
        &self,
        env: &EnvId,
        id: &str,
    ) -> Result<Option<UserRecord>, YunError> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE env = $1 AND custom_id = $2"
        );
        Ok(self
            .pg
            .query_opt(sql, &[&env.as_str(), &id])
            .await?
            .as_ref()
            .map(user))
    }

    async fn set_password(&self, env: &EnvId, uid: &str, hash: &str) -> Result<(), YunError> {
        let (env, uid, hash) = (env.to_string(), uid.to_owned(), hash.to_owned());
        self.pg
            .transaction(false, move |txn| {
                txn.execute(
                    "UPDATE users SET password_hash = $3 WHERE env = $1 AND uid = $2",
                    &[&env, &uid, &hash],
                )?;
                // A new password ends every other session.
                txn.execute(
                    "DELETE FROM refresh_tokens WHERE env = $1 AND uid = $2",
                    &[&env, &uid],
                )?;
                Ok(())
            })
            .await
    }

    async fn set_disabled(&self, env: &EnvId, uid: &str, disabled: bool) -> Result<bool, YunError> {
        let (env, uid) = (env.to_string(), uid.to_owned());
        self.pg
            .transaction(false, move |txn| {
                let n = txn.execute(
                    "UPDATE users SET disabled = $3 WHERE env = $1 AND uid = $2",
                    &[&env, &uid, &disabled],
                )?;
                if disabled {
                    txn.execute(
                        "DELETE FROM refresh_tokens WHERE env = $1 AND uid = $2",
                        &[&env, &uid],
                    )?;
                }
                Ok(n > 0)
            })
            .await
    }

    async fn delete_user(&self, env: &EnvId, uid: &str) -> Result<bool, YunError> {
        let (env, uid) = (env.to_string(), uid.to_owned());
        self.pg
            .transaction(false, move |txn| {
                txn.execute(
                    "DELETE FROM refresh_tokens WHERE env = $1 AND uid = $2",
                    &[&env, &uid],
                )?;
                Ok(txn.execute(
                    "DELETE FROM users WHERE env = $1 AND uid = $2",
                    &[&env, &uid],
                )? > 0)
            })
            .await
    }

    async fn list_users(
        &self,
        env: &EnvId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, YunError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pg
            .query(
                concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE env = $1 AND uid > $2 ORDER BY uid LIMIT $3"
                ),
                &[&env.as_str(), &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(user).collect())
    }

    async fn insert_refresh(&self, hash: &str, t: RefreshRecord) -> Result<(), YunError> {
        self.pg
            .execute(
                "INSERT INTO refresh_tokens (hash, env, uid, family, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &t.env, &t.uid, &t.family, &t.expires_at],
            )
            .await?;
        Ok(())
    }

    async fn live_refresh(
        &self,
        env: &EnvId,
        now_s: i64,
    ) -> Result<Vec<(String, RefreshRecord)>, YunError> {
        let rows = self
            .pg
            .query(
                "SELECT hash, uid, family, expires_at FROM refresh_tokens
                 WHERE env = $1 AND NOT used AND expires_at > $2 ORDER BY hash",
                &[&env.as_str(), &now_s],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    RefreshRecord {
                        env: env.to_string(),
                        uid: row.get(1),
                        family: row.get(2),
                        expires_at: row.get(3),
                    },
                )
            })
            .collect())
    }

    async fn use_refresh(&self, hash: &str) -> Result<RefreshUse, YunError> {
        // Of two nodes presenting one token at once, exactly one spends it; the other
        // sees it spent, which is a replay.
        let spent = self
            .pg
            .query_opt(
                "UPDATE refresh_tokens SET used = true WHERE hash = $1 AND NOT used
                 RETURNING env, uid, family, expires_at",
                &[&hash],
            )
            .await?;
        if let Some(r) = spent {
            return Ok(RefreshUse::Fresh(RefreshRecord {
                env: r.get(0),
                uid: r.get(1),
                family: r.get(2),
                expires_at: r.get(3),
            }));
        }
        let ended = self
            .pg
            .execute(
                "DELETE FROM refresh_tokens WHERE family = (SELECT family FROM refresh_tokens WHERE hash = $1)",
                &[&hash],
            )
            .await?;
        Ok(if ended > 0 {
            RefreshUse::Replayed
        } else {
            RefreshUse::Unknown
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<(), YunError> {
        self.pg
            .execute("DELETE FROM refresh_tokens WHERE family = $1", &[&family])
            .await?;
        Ok(())
    }

    async fn active_key(&self, env: &EnvId, fresh: SigningKey) -> Result<SigningKey, YunError> {
        // Nodes creating the env's first key at once: one insert wins, all read it.
        self.pg
            .execute(
                "INSERT INTO signing_keys (env, kid, secret) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&env.as_str(), &fresh.kid, &fresh.secret],
            )
            .await?;
        self.pg
            .query_opt(
                "SELECT kid, secret FROM signing_keys WHERE env = $1",
                &[&env.as_str()],
            )
            .await?
            .as_ref()
            .map(signing_key)
            .ok_or_else(|| YunError::internal("the env's signing key vanished"))
    }

    async fn key(&self, env: &EnvId, kid: &str) -> Result<Option<SigningKey>, YunError> {
        Ok(self
            .pg
            .query_opt(
                "SELECT kid, secret FROM signing_keys WHERE env = $1 AND kid = $2",
                &[&env.as_str(), &kid],
            )
            .await?
            .as_ref()
            .map(signing_key))
    }

    async fn rotate_key(&self, env: &EnvId, fresh: SigningKey) -> Result<(), YunError> {
        self.pg
            .execute(
                "INSERT INTO signing_keys (env, kid, secret) VALUES ($1, $2, $3)
                 ON CONFLICT (env) DO UPDATE SET kid = excluded.kid, secret = excluded.secret",
                &[&env.as_str(), &fresh.kid, &fresh.secret],
            )
            .await?;
        Ok(())
    }

    async fn insert_ticket_key(&self, env: &EnvId, key: TicketKeyRecord) -> Result<(), YunError> {
        self.pg
            .execute(
                "INSERT INTO ticket_keys (env, kid, public_pem, created_at) VALUES ($1, $2, $3, $4)",
                &[&env.as_str(), &key.kid, &key.public_pem, &key.created_at],
            )
            .await?;
        Ok(())
    }

    async fn ticket_key(
        &self,
        env: &EnvId,
        kid: &str,
    ) -> Result<Option<TicketKeyRecord>, YunError> {
        Ok(self
            .pg
            .query_opt(
                "SELECT kid, public_pem, created_at FROM ticket_keys WHERE env = $1 AND kid = $2",
                &[&env.as_str(), &kid],
            )
            .await?
            .as_ref()
            .map(ticket_key))
    }

    async fn list_ticket_keys(&self, env: &EnvId) -> Result<Vec<TicketKeyRecord>, YunError> {
        let rows = self
            .pg
            .query(
                "SELECT kid, public_pem, created_at FROM ticket_keys WHERE env = $1 ORDER BY created_at, kid",
                &[&env.as_str()],
            )
            .await?;
        Ok(rows.iter().map(ticket_key).collect())
    }

    async fn delete_ticket_key(&self, env: &EnvId, kid: &str) -> Result<bool, YunError> {
        Ok(self
            .pg
            .execute(
                "DELETE FROM ticket_keys WHERE env = $1 AND kid = $2",
                &[&env.as_str(), &kid],
            )
            .await?
            > 0)
    }

    async fn drop_env(&self, env: &EnvId) -> Result<(), YunError> {
        let env = env.to_string();
        self.pg
            .transaction(false, move |txn| {
                for sql in [
                    "DELETE FROM users WHERE env = $1",
                    "DELETE FROM refresh_tokens WHERE env = $1",
                    "DELETE FROM signing_keys WHERE env = $1",
                    "DELETE FROM ticket_keys WHERE env = $1",
                ] {
                    txn.execute(sql, &[&env])?;
                }
                Ok(())
            })
            .await
    }
}
