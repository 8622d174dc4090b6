//! Moving an env between Yun servers, whatever their backends: `export` writes what the
//! env is made of into one archive (a gzip'd tar), `import` makes the env of one on
//! another server. Both go through the stores' seams, so a `yun dev` folder moves into a
//! cluster (and back).
//!
//! What moves: settings, security rules, the env's keys (platform keys stay), alert
//! rules, users with their password hashes, custom-ticket keys, the token-signing key and
//! the refresh tokens still live (sessions carry on), collections with their indexes and
//! documents, files (their bytes, type and owner; the upload time is the import's), and
//! functions (the code as prepared, settings, triggers, reserved concurrency). What does
//! not: logs, invocation records, usage, traces, dead letters, backups — the history of
//! the old server.
//!
//! An import never overwrites: the env must be new, or exist with nothing in it (no
//! functions, collections, files, users or rules; a new cluster's empty `dev`). The env
//! keeps its name, since file ids (`cloud://{env}.…`) in documents carry it.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use yun_auth::Identity;
use yun_docdb::filter::Filter;
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::index::IndexSpec;
use yun_docdb::{Find, Limits};
use yun_functions::package::{self, PackageLimits};
use yun_meta::{AlertRule, EnvSettings, FunctionRecord, KeyRecord, KeyRole, TriggerRecord};
use yun_storage::{CloudPath, FileRecord};
use yun_types::{unix_ms, unix_now, EnvId, ErrorCode, YunError};
use yun_users::{RefreshRecord, SigningKey, TicketKeyRecord, UserRecord};

use crate::cache::Forget;
use crate::functions::DeployRequest;
use crate::{App, NewTrigger, Operation};

/// The archive layout's version; an import refuses others.
const FORMAT: u32 = 1;
const MANIFEST: &str = "yun-export.json";
/// Documents, users and files read or written per store call.
const PAGE: usize = 500;

/// What an export holds, or what an import made.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TransferCounts {
    pub collections: u64,
    pub documents: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub functions: u64,
    pub users: u64,
    pub keys: u64,
    pub rules: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    env: String,
    exported_at_ms: i64,
    /// What the export held, for people reading it (an import counts for itself).
    counts: TransferCounts,
}

/// The model types' own serde forms leave out secrets (they are API answers): the
/// archive keeps them, so these are its own.
#[derive(Serialize, Deserialize)]
struct User {
    uid: String,
    username: Option<String>,
    password_hash: Option<String>,
    anonymous: bool,
    custom_id: Option<String>,
    disabled: bool,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct TicketKey {
    kid: String,
    public_pem: String,
    created_at: i64,
}

/// A field-for-field mirror each way: the archive's forms keep what the API's skip.
macro_rules! mirror {
    ($archived:ident <-> $record:ident { $($field:ident),* }) => {
        impl From<$record> for $archived {
            fn from(r: $record) -> Self {
                Self { $($field: r.$field),* }
            }
        }
        impl From<$archived> for $record {
            fn from(a: $archived) -> Self {
                Self { $($field: a.$field),* }
            }
        }
    };
}
mirror!(User <-> UserRecord { uid, username, password_hash, anonymous, custom_id, disabled, created_at });
mirror!(TicketKey <-> TicketKeyRecord { kid, public_pem, created_at });

#[derive(Serialize, Deserialize)]
struct Signing {
    kid: String,
    secret_hex: String,
}

#[derive(Serialize, Deserialize)]
struct Refresh {
    hash: String,
    uid: String,
    family: String,
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Collection {
    name: String,
    indexes: Vec<IndexSpec>,
}

#[derive(Serialize, Deserialize)]
struct Function {
    record: FunctionRecord,
    triggers: Vec<TriggerRecord>,
}

/// How an import came by its env.
enum Claim {
    Created,
    /// An empty env that was there, with its settings as they were.
    Existing {
        settings: EnvSettings,
    },
}

/// An export on disk, removed when dropped.
pub struct ExportArchive {
    pub path: PathBuf,
    pub counts: TransferCounts,
    _work: tempfile::TempDir,
}

fn io(what: &str, e: impl std::fmt::Display) -> YunError {
    YunError::internal(format!("{what}: {e}"))
}

fn not_an_export(e: impl std::fmt::Display) -> YunError {
    YunError::invalid_param(format!("not a Yun export: {e}"))
}

async fn write_json(path: &Path, value: &impl Serialize) -> Result<(), YunError> {
    let text = serde_json::to_vec_pretty(value).map_err(YunError::internal)?;
    tokio::fs::write(path, text)
        .await
        .map_err(|e| io("writing the export", e))
}

async fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, YunError> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| not_an_export(format!("{}: {e}", file_name(path))))?;
    serde_json::from_slice(&text).map_err(|e| not_an_export(format!("{}: {e}", file_name(path))))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One JSON value per line.
struct Lines(tokio::io::BufWriter<tokio::fs::File>);

impl Lines {
    async fn create(path: &Path) -> Result<Self, YunError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| io("writing the export", e))?;
        Ok(Self(tokio::io::BufWriter::new(file)))
    }

    async fn push(&mut self, value: &impl Serialize) -> Result<(), YunError> {
        let mut line = serde_json::to_vec(value).map_err(YunError::internal)?;
        line.push(b'\n');
        self.0
            .write_all(&line)
            .await
            .map_err(|e| io("writing the export", e))
    }

    async fn finish(mut self) -> Result<(), YunError> {
        self.0
            .flush()
            .await
            .map_err(|e| io("writing the export", e))
    }
}

/// Reads a JSON-lines file in batches of at most [`PAGE`] values.
struct LineReader {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    name: String,
}

impl LineReader {
    async fn open(path: &Path) -> Result<Self, YunError> {
        let name = file_name(path);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| not_an_export(format!("{name}: {e}")))?;
        Ok(Self {
            lines: tokio::io::BufReader::new(file).lines(),
            name,
        })
    }

    /// The next values; empty at the end.
    async fn batch<T: DeserializeOwned>(&mut self) -> Result<Vec<T>, YunError> {
        let mut batch = Vec::new();
        while batch.len() < PAGE {
            let Some(line) = self.lines.next_line().await.map_err(not_an_export)? else {
                break;
            };
            let value = serde_json::from_str(&line)
                .map_err(|e| not_an_export(format!("{}: {e}", self.name)))?;
            batch.push(value);
        }
        Ok(batch)
    }
}

impl App {
    /// A folder for an export or import under way, in the data folder (next to the
    /// functions' code): archives can be as big as the env.
    fn transfer_dir(&self) -> Result<tempfile::TempDir, YunError> {
        let parent = self
            .settings
            .functions_dir
            .parent()
            .unwrap_or(&self.settings.functions_dir)
            .join("transfers");
        std::fs::create_dir_all(&parent).map_err(|e| io("a transfer folder", e))?;
        tempfile::Builder::new()
            .prefix("transfer-")
            .tempdir_in(&parent)
            .map_err(|e| io("a transfer folder", e))
    }

    /// The caller, acting in `env` (a platform key may act in any).
    fn acting_in(identity: &Identity, env: &EnvId) -> Identity {
        Identity {
            env: env.clone(),
            caller: identity.caller.clone(),
        }
    }

    /// Writes env `env` into an archive.
    pub async fn export_env(
        &self,
        identity: &Identity,
        env: &EnvId,
    ) -> Result<ExportArchive, YunError> {
        Self::authorize(identity, Operation::TransferEnv)?;
        if self.meta.get_env(env).await?.is_none() {
            return Err(YunError::new(
                ErrorCode::InvalidEnv,
                format!("env {env} does not exist"),
            ));
        }
        let work = self.transfer_dir()?;
        let dir = work.path().join("export");
        for sub in ["", "collections", "files", "functions"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(|e| io("writing the export", e))?;
        }
        let mut counts = TransferCounts::default();

        write_json(
            &dir.join("settings.json"),
            &self.meta.env_settings(env).await?,
        )
        .await?;
        let rules = self.meta.list_rules(env).await?;
        counts.rules = rules.len() as u64;
        write_json(&dir.join("rules.json"), &rules).await?;
        let keys: Vec<KeyRecord> = (self.meta.list_keys(env).await?.into_iter())
            .filter(|k| k.role != KeyRole::Platform && k.revoked_at.is_none())
            .collect();
        counts.keys = keys.len() as u64;
        write_json(&dir.join("keys.json"), &keys).await?;
        write_json(
            &dir.join("alerts.json"),
            &self.meta.list_alerts(Some(env)).await?,
        )
        .await?;

        counts.users = self.export_users(env, &dir).await?;
        self.export_documents(env, &dir, &mut counts).await?;
        self.export_files(env, &dir, &mut counts).await?;
        counts.functions = self.export_functions(env, &dir).await?;

        write_json(
            &dir.join(MANIFEST),
            &Manifest {
                format: FORMAT,
                env: env.to_string(),
                exported_at_ms: unix_ms(),
                counts: counts.clone(),
            },
        )
        .await?;
        let path = work.path().join(format!("{env}.yun.tar.gz"));
        let (folder, out) = (dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&out).map_err(|e| io("writing the export", e))?;
            package::pack_into(&folder, std::io::BufWriter::new(file))?;
            std::fs::remove_dir_all(&folder).map_err(|e| io("writing the export", e))
        })
        .await
        .map_err(YunError::internal)??;
        tracing::info!(env = %env, ?counts, by = %identity.label(), "exported");
        Ok(ExportArchive {
            path,
            counts,
            _work: work,
        })
    }

    async fn export_users(&self, env: &EnvId, dir: &Path) -> Result<u64, YunError> {
        let store = self.users.store();
        let mut lines = Lines::create(&dir.join("users.ndjson")).await?;
        let (mut after, mut count) = (String::new(), 0);
        loop {
            let page = store.list_users(env, &after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.uid.clone();
            for u in page {
                lines.push(&User::from(u)).await?;
                count += 1;
            }
        }
        lines.finish().await?;
        let ticket_keys: Vec<TicketKey> = (store.list_ticket_keys(env).await?.into_iter())
            .map(TicketKey::from)
            .collect();
        write_json(&dir.join("ticket-keys.json"), &ticket_keys).await?;
        // The key the env's access tokens are signed with now (made if there is none
        // yet): tokens issued before the move stay valid after it.
        let signing = self.users.active_key(env).await?;
        write_json(
            &dir.join("signing-key.json"),
            &Signing {
                kid: signing.kid,
                secret_hex: hex::encode(&signing.secret),
            },
        )
        .await?;
        let mut lines = Lines::create(&dir.join("refresh-tokens.ndjson")).await?;
        for (hash, t) in store.live_refresh(env, unix_now()).await? {
            lines
                .push(&Refresh {
                    hash,
                    uid: t.uid,
                    family: t.family,
                    expires_at: t.expires_at,
                })
                .await?;
        }
        lines.finish().await?;
        Ok(count)
    }

    async fn export_documents(
        &self,
        env: &EnvId,
        dir: &Path,
        counts: &mut TransferCounts,
    ) -> Result<(), YunError> {
        let by_id = SortKeys::parse(&json!({ "_id": 1 }))?;
        for (i, name) in self
            .docdb
            .list_collections(env)
            .await?
            .into_iter()
            .enumerate()
        {
            let indexes = self.docdb.list_indexes(env, &name).await?;
            write_json(
                &dir.join(format!("collections/{i}.json")),
                &Collection {
                    name: name.clone(),
                    indexes,
                },
            )
            .await?;
            let mut lines = Lines::create(&dir.join(format!("collections/{i}.ndjson"))).await?;
            let mut after: Option<String> = None;
            loop {
                let filter = match &after {
                    None => json!({}),
                    Some(id) => json!({ "_id": { "$gt": id } }),
                };
                let page = self
                    .docdb
                    .find(
                        env,
                        &name,
                        Find {
                            filter: Filter::parse(&filter)?,
                            order: by_id.clone(),
                            skip: 0,
                            limit: Some(PAGE),
                            projection: Projection::All,
                        },
                        &Limits::default(),
                    )
                    .await?;
                let Some(last) = page.last() else { break };
                after = last["_id"].as_str().map(str::to_owned);
                for doc in &page {
                    lines.push(doc).await?;
                }
                counts.documents += page.len() as u64;
                if after.is_none() || page.len() < PAGE {
                    break;
                }
            }
            lines.finish().await?;
            counts.collections += 1;
        }
        Ok(())
    }

    async fn export_files(
        &self,
        env: &EnvId,
        dir: &Path,
        counts: &mut TransferCounts,
    ) -> Result<(), YunError> {
        let mut index = Lines::create(&dir.join("files.ndjson")).await?;
        let mut after = String::new();
        loop {
            let page = self.storage.list(env, "", &after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.path.clone();
            for record in page {
                let mut bytes = match self.storage.read(&record, None).await {
                    Ok(bytes) => bytes,
                    // Deleted since it was listed: not part of the env any more.
                    Err(e) if e.code == ErrorCode::StorageFileNotFound => continue,
                    Err(e) => return Err(e),
                };
                let target = dir.join(format!("files/{}", counts.files));
                let mut out = tokio::fs::File::create(&target)
                    .await
                    .map_err(|e| io("writing the export", e))?;
                while let Some(chunk) = bytes.next().await {
                    out.write_all(&chunk?)
                        .await
                        .map_err(|e| io("writing the export", e))?;
                }
                out.flush().await.map_err(|e| io("writing the export", e))?;
                index.push(&record).await?;
                counts.files += 1;
                counts.file_bytes += record.size;
            }
        }
        index.finish().await
    }

    async fn export_functions(&self, env: &EnvId, dir: &Path) -> Result<u64, YunError> {
        let functions = self.meta.list_functions(env).await?;
        for (i, record) in functions.iter().enumerate() {
            self.ensure_code(&record.spec).await?;
            let code = self
                .code_dir(env, &record.spec.name)
                .join(&record.spec.code_id);
            let packed = tokio::task::spawn_blocking(move || package::pack(&code))
                .await
                .map_err(YunError::internal)??;
            tokio::fs::write(dir.join(format!("functions/{i}.tar.gz")), packed)
                .await
                .map_err(|e| io("writing the export", e))?;
            let triggers = self
                .meta
                .list_triggers(Some(env), Some(&record.spec.name))
                .await?;
            write_json(
                &dir.join(format!("functions/{i}.json")),
                &Function {
                    record: record.clone(),
                    triggers,
                },
            )
            .await?;
        }
        Ok(functions.len() as u64)
    }

    /// Makes the env of the archive `body` streams on this server.
    pub async fn import_env<S, E>(
        &self,
        identity: &Identity,
        mut body: S,
    ) -> Result<(EnvId, TransferCounts), YunError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        Self::authorize(identity, Operation::TransferEnv)?;
        let work = self.transfer_dir()?;
        let archive = work.path().join("archive.tar.gz");
        let mut out = tokio::fs::File::create(&archive)
            .await
            .map_err(|e| io("receiving the archive", e))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| YunError::invalid_param(format!("the archive did not arrive: {e}")))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| io("receiving the archive", e))?;
        }
        out.flush()
            .await
            .map_err(|e| io("receiving the archive", e))?;
        let dir = work.path().join("import");
        let (from, into) = (archive, dir.clone());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&from).map_err(|e| io("reading the archive", e))?;
            // An env's archive is as big as the env: the limits only keep sums in range.
            let limits = PackageLimits {
                max_unpacked_bytes: 1 << 50,
                max_files: 1 << 32,
            };
            package::unpack_from(std::io::BufReader::new(file), &into, limits).map_err(|e| match e
                .code
            {
                ErrorCode::Internal => e,
                _ => not_an_export(e.message),
            })
        })
        .await
        .map_err(YunError::internal)??;
        let manifest: Manifest = read_json(&dir.join(MANIFEST)).await?;
        if manifest.format != FORMAT {
            return Err(not_an_export(format!(
                "archive format {} (this Yun reads {FORMAT})",
                manifest.format
            )));
        }
        let env = EnvId::parse(&manifest.env).map_err(not_an_export)?;
        let acting = Self::acting_in(identity, &env);
        // What can be refused is refused before anything is made.
        let keys: Vec<KeyRecord> = read_json(&dir.join("keys.json")).await?;
        for key in &keys {
            if key.role != KeyRole::Env || key.revoked_at.is_some() {
                return Err(not_an_export(format!(
                    "key {} is not a live env key: an export carries no other",
                    key.secret_id
                )));
            }
            if self
                .meta
                .get_key(&key.secret_id)
                .await?
                .is_some_and(|k| k.env != env)
            {
                return Err(YunError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "key {} of the export belongs to another env on this server",
                        key.secret_id
                    ),
                ));
            }
        }
        let claim = self.claim_env_for_import(&env).await?;
        let mut inserted_keys = Vec::new();
        match self
            .apply_import(&acting, &dir, keys, &mut inserted_keys)
            .await
        {
            Ok(counts) => {
                self.forget(Forget::Env { env: env.clone() });
                tracing::info!(env = %env, ?counts, by = %identity.label(), "imported");
                Ok((env, counts))
            }
            Err(e) => {
                self.undo_import(&acting, claim, &inserted_keys).await;
                Err(e)
            }
        }
    }

    /// Everything of an import after the env is claimed; `inserted_keys` says which keys
    /// it stored, for [`App::undo_import`].
    async fn apply_import(
        &self,
        acting: &Identity,
        dir: &Path,
        keys: Vec<KeyRecord>,
        inserted_keys: &mut Vec<String>,
    ) -> Result<TransferCounts, YunError> {
        let env = &acting.env;
        let settings: EnvSettings = read_json(&dir.join("settings.json")).await?;
        self.put_env_settings(acting, settings).await?;
        let rules: Vec<(String, Value)> = read_json(&dir.join("rules.json")).await?;
        for (target, spec) in &rules {
            self.meta.put_rules(env, target, Some(spec)).await?;
        }
        self.forget(Forget::Rules { env: env.clone() });
        let mut counts = TransferCounts {
            rules: rules.len() as u64,
            ..TransferCounts::default()
        };
        for key in keys {
            // One already here is this env's (checked above): imported before.
            if self.meta.get_key(&key.secret_id).await?.is_none() {
                self.meta
                    .insert_key(&KeyRecord {
                        env: env.clone(),
                        ..key.clone()
                    })
                    .await?;
                self.forget(Forget::Key {
                    secret_id: key.secret_id.clone(),
                });
                inserted_keys.push(key.secret_id);
                counts.keys += 1;
            }
        }
        let alerts: Vec<AlertRule> = read_json(&dir.join("alerts.json")).await?;
        for alert in alerts {
            self.meta
                .insert_alert(&AlertRule {
                    env: env.clone(),
                    ..alert
                })
                .await?;
        }
        counts.users = self.import_users(env, dir).await?;
        self.import_documents(env, dir, &mut counts).await?;
        self.import_files(env, dir, &mut counts).await?;
        // Last: triggers made earlier would fire on the documents and files imported.
        counts.functions = self.import_functions(acting, dir).await?;
        Ok(counts)
    }

    /// Takes back what a failed import made, so that it can be run again: the env when
    /// the import made it, else what it put into the empty env it found.
    async fn undo_import(&self, acting: &Identity, claim: Claim, inserted_keys: &[String]) {
        let env = &acting.env;
        let undone: Result<(), YunError> = async {
            let Claim::Existing { settings } = claim else {
                self.remove_env(env).await?;
                return Ok(());
            };
            for function in self.meta.list_functions(env).await? {
                self.delete_function(acting, &function.spec.name).await?;
            }
            self.docdb.store().drop_env(env).await?;
            self.storage.drop_env(env).await?;
            self.users.drop_env(env).await?;
            for (target, _) in self.meta.list_rules(env).await? {
                self.meta.put_rules(env, &target, None).await?;
            }
            self.forget(Forget::Rules { env: env.clone() });
            for alert in self.meta.list_alerts(Some(env)).await? {
                self.meta.delete_alert(env, &alert.name).await?;
            }
            for secret_id in inserted_keys {
                self.meta.revoke_key(env, secret_id, unix_now()).await?;
                self.forget(Forget::Key {
                    secret_id: secret_id.clone(),
                });
            }
            self.put_env_settings(acting, settings).await?;
            Ok(())
        }
        .await;
        if let Err(e) = undone {
            tracing::warn!(env = %env, error = %e, "could not take back a failed import");
        }
    }

    /// Creates `env`, or accepts it when it holds nothing an import could overwrite.
    async fn claim_env_for_import(&self, env: &EnvId) -> Result<Claim, YunError> {
        if self.meta.get_env(env).await?.is_none() {
            self.meta.create_env(env).await?;
            return Ok(Claim::Created);
        }
        let holds = [
            (
                "functions",
                !self.meta.list_functions(env).await?.is_empty(),
            ),
            (
                "collections",
                !self.docdb.list_collections(env).await?.is_empty(),
            ),
            (
                "files",
                !self.storage.list(env, "", "", 1).await?.is_empty(),
            ),
            (
                "users",
                !self.users.store().list_users(env, "", 1).await?.is_empty(),
            ),
            (
                "security rules",
                !self.meta.list_rules(env).await?.is_empty(),
            ),
            (
                "alert rules",
                !self.meta.list_alerts(Some(env)).await?.is_empty(),
            ),
        ];
        let held: Vec<&str> = holds.iter().filter(|h| h.1).map(|h| h.0).collect();
        if held.is_empty() {
            return Ok(Claim::Existing {
                settings: self.meta.env_settings(env).await?,
            });
        }
        Err(YunError::new(
            ErrorCode::AlreadyExists,
            format!(
                "env {env} exists here and holds {}: an import never overwrites (delete the env first, or import into another server)",
                held.join(", ")
            ),
        ))
    }

    async fn import_users(&self, env: &EnvId, dir: &Path) -> Result<u64, YunError> {
        let store = self.users.store();
        let mut count = 0;
        let mut users = LineReader::open(&dir.join("users.ndjson")).await?;
        loop {
            let batch: Vec<User> = users.batch().await?;
            if batch.is_empty() {
                break;
            }
            for u in batch {
                store.insert_user(env, u.into()).await?;
                count += 1;
            }
        }
        let ticket_keys: Vec<TicketKey> = read_json(&dir.join("ticket-keys.json")).await?;
        for k in ticket_keys {
            store.insert_ticket_key(env, k.into()).await?;
        }
        let signing: Signing = read_json(&dir.join("signing-key.json")).await?;
        let key = SigningKey {
            secret: hex::decode(&signing.secret_hex).map_err(not_an_export)?,
            kid: signing.kid,
        };
        if store.active_key(env, key.clone()).await?.kid != key.kid {
            // The empty env had signed something already: the export's key takes over.
            store.rotate_key(env, key).await?;
        }
        self.users.forget_keys(env);
        self.forget(Forget::UserKeys { env: env.clone() });
        let mut tokens = LineReader::open(&dir.join("refresh-tokens.ndjson")).await?;
        loop {
            let batch: Vec<Refresh> = tokens.batch().await?;
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let record = RefreshRecord {
                    env: env.to_string(),
                    uid: t.uid,
                    family: t.family,
                    expires_at: t.expires_at,
                };
                store.insert_refresh(&t.hash, record).await?;
            }
        }
        Ok(count)
    }

    async fn import_documents(
        &self,
        env: &EnvId,
        dir: &Path,
        counts: &mut TransferCounts,
    ) -> Result<(), YunError> {
        for i in 0.. {
            let spec = dir.join(format!("collections/{i}.json"));
            if !tokio::fs::try_exists(&spec).await.unwrap_or(false) {
                break;
            }
            let collection: Collection = read_json(&spec).await?;
            let name = collection.name;
            self.docdb.create_collection(env, &name).await?;
            let mut documents =
                LineReader::open(&dir.join(format!("collections/{i}.ndjson"))).await?;
            loop {
                let batch: Vec<Value> = documents.batch().await?;
                if batch.is_empty() {
                    break;
                }
                counts.documents += batch.len() as u64;
                self.docdb.insert(env, &name, batch, None, None).await?;
            }
            // After the documents: each index is built once, over all of them.
            let existing = self.docdb.list_indexes(env, &name).await?;
            for index in collection.indexes {
                if !existing.iter().any(|e| e.name == index.name) {
                    self.docdb.create_index(env, &name, index).await?;
                }
            }
            counts.collections += 1;
        }
        Ok(())
    }

    async fn import_files(
        &self,
        env: &EnvId,
        dir: &Path,
        counts: &mut TransferCounts,
    ) -> Result<(), YunError> {
        let mut records = LineReader::open(&dir.join("files.ndjson")).await?;
        let mut n = 0u64;
        loop {
            let batch: Vec<FileRecord> = records.batch().await?;
            if batch.is_empty() {
                return Ok(());
            }
            for record in batch {
                let path = CloudPath::parse(&record.path).map_err(|e| not_an_export(e.message))?;
                let file = tokio::fs::File::open(dir.join(format!("files/{n}")))
                    .await
                    .map_err(|e| not_an_export(format!("file {}: {e}", record.path)))?;
                let body = tokio_util::io::ReaderStream::new(file);
                let stored = self
                    .storage
                    .upload(env, &path, Some(&record.content_type), &record.owner, body)
                    .await?;
                n += 1;
                counts.files += 1;
                counts.file_bytes += stored.size;
            }
        }
    }

    async fn import_functions(&self, acting: &Identity, dir: &Path) -> Result<u64, YunError> {
        let mut count = 0;
        for i in 0.. {
            let spec = dir.join(format!("functions/{i}.json"));
            if !tokio::fs::try_exists(&spec).await.unwrap_or(false) {
                break;
            }
            let Function { record, triggers } = read_json(&spec).await?;
            let archive = tokio::fs::read(dir.join(format!("functions/{i}.tar.gz")))
                .await
                .map_err(|e| not_an_export(format!("function {}: {e}", record.spec.name)))?;
            let f = record.spec;
            // Through the deploy's own checks, as `config.json` triggers are, and for
            // this function whatever the records say.
            let triggers = (triggers.into_iter())
                .map(|t| NewTrigger {
                    name: t.name,
                    kind: t.kind,
                    config: Value::String(t.config),
                })
                .collect();
            let request = DeployRequest {
                archive,
                handler: Some(f.handler),
                timeout_ms: Some(f.timeout_ms),
                memory_mb: Some(f.memory_mb),
                max_instances: Some(f.max_instances),
                env_vars: Some(f.env_vars),
                http_path: Some(f.http_path.unwrap_or_default()),
                async_retry: Some(f.async_retry),
                triggers: Some(triggers),
            };
            self.deploy(acting, &f.name, request).await?;
            if f.reserved_concurrency.is_some() {
                self.set_reserved_concurrency(acting, &f.name, f.reserved_concurrency)
                    .await?;
            }
            count += 1;
        }
        Ok(count)
    }
}
