//! Users, refresh tokens (as SHA-256 hashes) and token-signing keys on SQLite
//! (`{data}/meta/users.db`); the seam is `yun_users::UserStore`.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use yun_types::{EnvId, ErrorCode, YunError};
use yun_users::{RefreshRecord, RefreshUse, SigningKey, TicketKeyRecord, UserRecord, UserStore};

use crate::{db_err, Sqlite};

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    env TEXT NOT NULL,
    uid TEXT NOT NULL,
    username TEXT,
    password_hash TEXT,
    anonymous INTEGER NOT NULL,
    custom_id TEXT,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (env, uid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX users_by_name ON users(env, username) WHERE username IS NOT NULL;
CREATE UNIQUE INDEX users_by_custom_id ON users(env, custom_id) WHERE custom_id IS NOT NULL;
CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    uid TEXT NOT NULL,
    family TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX refresh_by_family ON refresh_tokens(family);
CREATE INDEX refresh_by_user ON refresh_tokens(env, uid);
CREATE TABLE signing_keys (
    env TEXT NOT NULL,
    kid TEXT NOT NULL,
    secret BLOB NOT NULL,
    PRIMARY KEY (env, kid)
) WITHOUT ROWID;
CREATE TABLE ticket_keys (
    env TEXT NOT NULL,
    kid TEXT NOT NULL,
    public_pem TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (env, kid)
) WITHOUT ROWID;
"#];

const USER_COLUMNS: &str =
    "uid, username, password_hash, anonymous, custom_id, disabled, created_at";

fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        uid: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        anonymous: row.get(3)?,
        custom_id: row.get(4)?,
        disabled: row.get(5)?,
        created_at: row.get(6)?,
    })
}

fn ticket_key_row(row: &Row<'_>) -> rusqlite::Result<TicketKeyRecord> {
    Ok(TicketKeyRecord {
        kid: row.get(0)?,
        public_pem: row.get(1)?,
        created_at: row.get(2)?,
    })
}

pub struct SqliteUserStore {
    db: Sqlite,
}

impl SqliteUserStore {
    pub fn open(path: &Path) -> Result<Self, YunError> {
        Ok(Self {
            db: Sqlite::open(path, MIGRATIONS)?,
        })
    }

    async fn one_user(
        &self,
        sql: &'static str,
        env: &EnvId,
        key: &str,
    ) -> Result<Option<UserRecord>, YunError> {
        self.db.read_now(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE env = ?1 AND {sql} = ?2"
            ))
            .and_then(|mut s| s.query_row(params![env.as_str(), key], user_row).optional())
            .map_err(db_err)
        })
    }
}

#[async_trait]
impl UserStore for SqliteUserStore {
    async fn insert_user(&self, env: &EnvId, u: UserRecord) -> Result<(), YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                let inserted = conn
                    .prepare_cached(&format!(
                        "INSERT INTO users (env, {USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                    ))
                    .and_then(|mut s| {
                        s.execute(params![env, u.uid, u.username, u.password_hash, u.anonymous, u.custom_id, u.disabled, u.created_at])
                    });
                match inserted {
                    Ok(_) => Ok(()),
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Err(YunError::new(ErrorCode::AlreadyExists, "the username or custom user id is taken"))
                    }
                    Err(e) => Err(db_err(e)),
                }
            })
            .await
    }

    async fn user(&self, env: &EnvId, uid: &str) -> Result<Option<UserRecord>, YunError> {
        self.one_user("uid", env, uid).await
    }

    async fn user_by_name(&self, env: &EnvId, name: &str) -> Result<Option<UserRecord>, YunError> {
        self.one_user("username", env, name).await
    }

    async fn user_by_custom_id(
        &self,
        env: &EnvId,
        id: &str,
    ) -> Result<Option<UserRecord>, YunError> {
        self.one_user("custom_id", env, id).await
    }

    async fn set_password(&self, env: &EnvId, uid: &str, hash: &str) -> Result<(), YunError> {
        let (env, uid, hash) = (env.to_string(), uid.to_owned(), hash.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE users SET password_hash = ?3 WHERE env = ?1 AND uid = ?2",
                    params![env, uid, hash],
                )
                .map_err(db_err)?;
                // A new password ends every other session.
                conn.execute(
                    "DELETE FROM refresh_tokens WHERE env = ?1 AND uid = ?2",
                    params![env, uid],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn set_disabled(&self, env: &EnvId, uid: &str, disabled: bool) -> Result<bool, YunError> {
        let (env, uid) = (env.to_string(), uid.to_owned());
        self.db
            .write(move |conn| {
                let n = conn
                    .execute(
                        "UPDATE users SET disabled = ?3 WHERE env = ?1 AND uid = ?2",
                        params![env, uid, disabled],
                    )
                    .map_err(db_err)?;
                if disabled {
                    conn.execute(
                        "DELETE FROM refresh_tokens WHERE env = ?1 AND uid = ?2",
                        params![env, uid],
                    )
                    .map_err(db_err)?;
                }
                Ok(n > 0)
            })
            .await
    }

    async fn delete_user(&self, env: &EnvId, uid: &str) -> Result<bool, YunError> {
        let (env, uid) = (env.to_string(), uid.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM refresh_tokens WHERE env = ?1 AND uid = ?2",
                    params![env, uid],
                )
                .map_err(db_err)?;
                let n = conn
                    .execute(
                        "DELETE FROM users WHERE env = ?1 AND uid = ?2",
                        params![env, uid],
                    )
                    .map_err(db_err)?;
                Ok(n > 0)
            })
            .await
    }

    async fn list_users(
        &self,
        env: &EnvId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, YunError> {
        let (env, after) = (env.to_string(), after.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE env = ?1 AND uid > ?2 ORDER BY uid LIMIT ?3"
                ))
                .and_then(|mut s| s.query_map(params![env, after, limit], user_row)?.collect())
                .map_err(db_err)
            })
            .await
    }

    async fn insert_refresh(&self, hash: &str, t: RefreshRecord) -> Result<(), YunError> {
        let hash = hash.to_owned();
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO refresh_tokens (hash, env, uid, family, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![hash, t.env, t.uid, t.family, t.expires_at]))
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn live_refresh(
        &self,
        env: &EnvId,
        now_s: i64,
    ) -> Result<Vec<(String, RefreshRecord)>, YunError> {
        let env = env.to_string();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT hash, uid, family, expires_at FROM refresh_tokens
                     WHERE env = ?1 AND used = 0 AND expires_at > ?2 ORDER BY hash",
                )
                .and_then(|mut s| {
                    s.query_map(params![env, now_s], |row| {
                        Ok((
                            row.get(0)?,
                            RefreshRecord {
                                env: env.clone(),
                                uid: row.get(1)?,
                                family: row.get(2)?,
                                expires_at: row.get(3)?,
                            },
                        ))
                    })?
                    .collect()
                })
                .map_err(db_err)
            })
            .await
    }

    async fn use_refresh(&self, hash: &str) -> Result<RefreshUse, YunError> {
        let hash = hash.to_owned();
        self.db
            .write(move |conn| {
                let row = conn
                    .prepare_cached(
                        "SELECT env, uid, family, expires_at, used FROM refresh_tokens WHERE hash = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![hash], |r| {
                            Ok((
                                RefreshRecord {
                                    env: r.get(0)?,
                                    uid: r.get(1)?,
                                    family: r.get(2)?,
                                    expires_at: r.get(3)?,
                                },
                                r.get::<_, bool>(4)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(db_err)?;
                match row {
                    None => Ok(RefreshUse::Unknown),
                    Some((token, true)) => {
                        conn.execute("DELETE FROM refresh_tokens WHERE family = ?1", params![token.family])
                            .map_err(db_err)?;
                        Ok(RefreshUse::Replayed)
                    }
                    Some((token, false)) => {
                        conn.execute("UPDATE refresh_tokens SET used = 1 WHERE hash = ?1", params![hash])
                            .map_err(db_err)?;
                        Ok(RefreshUse::Fresh(token))
                    }
                }
            })
            .await
    }

    async fn revoke_family(&self, family: &str) -> Result<(), YunError> {
        let family = family.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM refresh_tokens WHERE family = ?1",
                    params![family],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn active_key(&self, env: &EnvId, fresh: SigningKey) -> Result<SigningKey, YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO signing_keys (env, kid, secret) SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE env = ?1)",
                    params![env, fresh.kid, fresh.secret],
                )
                .map_err(db_err)?;
                conn.query_row(
                    "SELECT kid, secret FROM signing_keys WHERE env = ?1",
                    params![env],
                    |r| Ok(SigningKey { kid: r.get(0)?, secret: r.get(1)? }),
                )
                .map_err(db_err)
            })
            .await
    }

    async fn key(&self, env: &EnvId, kid: &str) -> Result<Option<SigningKey>, YunError> {
        self.db.read_now(|conn| {
            conn.prepare_cached("SELECT kid, secret FROM signing_keys WHERE env = ?1 AND kid = ?2")
                .and_then(|mut s| {
                    s.query_row(params![env.as_str(), kid], |r| {
                        Ok(SigningKey {
                            kid: r.get(0)?,
                            secret: r.get(1)?,
                        })
                    })
                    .optional()
                })
                .map_err(db_err)
        })
    }

    async fn rotate_key(&self, env: &EnvId, fresh: SigningKey) -> Result<(), YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM signing_keys WHERE env = ?1", params![env])
                    .map_err(db_err)?;
                conn.execute(
                    "INSERT INTO signing_keys (env, kid, secret) VALUES (?1, ?2, ?3)",
                    params![env, fresh.kid, fresh.secret],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn insert_ticket_key(&self, env: &EnvId, key: TicketKeyRecord) -> Result<(), YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO ticket_keys (env, kid, public_pem, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![env, key.kid, key.public_pem, key.created_at],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn ticket_key(
        &self,
        env: &EnvId,
        kid: &str,
    ) -> Result<Option<TicketKeyRecord>, YunError> {
        self.db.read_now(|conn| {
            conn.prepare_cached(
                "SELECT kid, public_pem, created_at FROM ticket_keys WHERE env = ?1 AND kid = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![env.as_str(), kid], ticket_key_row)
                    .optional()
            })
            .map_err(db_err)
        })
    }

    async fn list_ticket_keys(&self, env: &EnvId) -> Result<Vec<TicketKeyRecord>, YunError> {
        let env = env.to_string();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT kid, public_pem, created_at FROM ticket_keys WHERE env = ?1 ORDER BY created_at, kid",
                )
                .and_then(|mut s| s.query_map(params![env], ticket_key_row)?.collect())
                .map_err(db_err)
            })
            .await
    }

    async fn delete_ticket_key(&self, env: &EnvId, kid: &str) -> Result<bool, YunError> {
        let (env, kid) = (env.to_string(), kid.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM ticket_keys WHERE env = ?1 AND kid = ?2",
                    params![env, kid],
                )
                .map(|n| n > 0)
                .map_err(db_err)
            })
            .await
    }

    async fn drop_env(&self, env: &EnvId) -> Result<(), YunError> {
        let env = env.to_string();
        self.db
            .write(move |conn| {
                for table in ["users", "refresh_tokens", "signing_keys", "ticket_keys"] {
                    conn.execute(&format!("DELETE FROM {table} WHERE env = ?1"), params![env])
                        .map_err(db_err)?;
                }
                Ok(())
            })
            .await
    }
}
