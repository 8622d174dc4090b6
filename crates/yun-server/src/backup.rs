//! Backups of an embedded data folder, taken online: every SQLite store copied as of one
//! moment (`yun_store_sqlite::backup_all`), the objects its file index points at hard-linked
//! (objects are never changed in place, and those retired during the backup are kept
//! until it ends), function code hard-linked, and a manifest. A backup is a folder
//! `{data}/backups/{id}` that `restore` turns into a new data folder; restoring never
//! touches a live one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use yun_app::ops::{BackupInfo, Backups};
use yun_storage::Storage;
use yun_types::{ErrorCode, YunError};

use crate::{io_err, make_dir, ServerError};

const MANIFEST: &str = "manifest.json";

pub struct LocalBackups {
    data_dir: PathBuf,
    storage: Arc<Storage>,
}

impl LocalBackups {
    pub fn new(data_dir: &Path, storage: Arc<Storage>) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            storage,
        }
    }
}

fn internal(what: &str, path: &Path, e: impl std::fmt::Display) -> YunError {
    YunError::internal(format!("{what} {}: {e}", path.display()))
}

/// Hard-links (or, across file systems, copies) every file of `from` into `to`, keeping
/// symlinks as they are; `(files, bytes)`.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<(u64, u64)> {
    let mut totals = (0, 0);
    if !from.exists() {
        return Ok(totals);
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let (files, bytes) = link_tree(&source, &target)?;
            totals = (totals.0 + files, totals.1 + bytes);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else {
            link_file(&source, &target)?;
            totals = (totals.0 + 1, totals.1 + entry.metadata()?.len());
        }
    }
    // A copied folder keeps the mode of the original (the data folder's are not 0755).
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(totals)
}

fn link_file(source: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::hard_link(source, target).or_else(|_| std::fs::copy(source, target).map(drop))
}

/// The objects a backup's file index points at, linked from `root` into `to`.
fn link_objects(index: &Path, root: &Path, to: &Path) -> Result<(u64, u64), YunError> {
    let mut totals = (0, 0);
    for object in yun_store_sqlite::objects_in_copy(index)? {
        let source = root.join(&object);
        let size = std::fs::metadata(&source)
            .map_err(|e| internal("a file's object is missing:", &source, e))?
            .len();
        link_file(&source, &to.join(&object)).map_err(|e| internal("cannot link", &source, e))?;
        totals = (totals.0 + 1, totals.1 + size);
    }
    Ok(totals)
}

fn read_manifest(dir: &Path) -> Option<BackupInfo> {
    let text = std::fs::read(dir.join(MANIFEST)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[async_trait]
impl Backups for LocalBackups {
    async fn create(&self) -> Result<BackupInfo, YunError> {
        let Some(root) = self.storage.local_root().map(Path::to_owned) else {
            return Err(YunError::new(
                ErrorCode::InvalidParam,
                "backups cover files on the local disk; an S3 bucket is backed up by its own versioning",
            ));
        };
        let began = Instant::now();
        let created_at_ms = yun_types::unix_ms();
        let id = format!("{created_at_ms}-{}", &yun_types::new_id("")[..8]);
        let backups = self.data_dir.join("backups");
        let partial = backups.join(format!(".{id}.partial"));
        make_dir(&partial.join("meta"), 0o700).map_err(|e| YunError::internal(e.to_string()))?;
        std::fs::set_permissions(&backups, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| internal("cannot protect", &backups, e))?;
        // Objects retired from now on stay until the links are made.
        self.storage.hold_objects();
        let (data_dir, work) = (self.data_dir.clone(), partial.clone());
        let taken = tokio::task::spawn_blocking(move || {
            let stores = yun_store_sqlite::backup_all(&data_dir.join("meta"), &work.join("meta"))?;
            let (files, file_bytes) =
                link_objects(&work.join("meta/files.db"), &root, &work.join("files"))?;
            link_tree(&data_dir.join("functions"), &work.join("functions"))
                .map_err(|e| internal("cannot link function code into", &work, e))?;
            let credentials = data_dir.join("credentials.json");
            if credentials.exists() {
                std::fs::copy(&credentials, work.join("credentials.json"))
                    .map_err(|e| internal("cannot copy", &credentials, e))?;
            }
            Ok::<_, YunError>((stores, files, file_bytes))
        })
        .await
        .map_err(YunError::internal);
        self.storage.release_objects().await;
        let (stores, files, file_bytes) = match taken.and_then(|t| t) {
            Ok(taken) => taken,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        let info = BackupInfo {
            id: id.clone(),
            created_at_ms,
            duration_ms: began.elapsed().as_millis() as u64,
            stores,
            files,
            file_bytes,
        };
        let manifest = serde_json::to_vec_pretty(&info).map_err(YunError::internal)?;
        std::fs::write(partial.join(MANIFEST), manifest)
            .map_err(|e| internal("cannot write", &partial, e))?;
        // Complete or absent: the folder gets its name only now.
        std::fs::rename(&partial, backups.join(&id))
            .map_err(|e| internal("cannot name", &partial, e))?;
        tracing::info!(id = %info.id, ms = info.duration_ms, files, "backup taken");
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<BackupInfo>, YunError> {
        Ok(list_in(&self.data_dir))
    }
}

/// The backups of a data folder, oldest first.
pub fn list_in(data_dir: &Path) -> Vec<BackupInfo> {
    let mut found: Vec<BackupInfo> = match std::fs::read_dir(data_dir.join("backups")) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| read_manifest(&e.path()))
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort_by_key(|b| b.created_at_ms);
    found
}

/// Makes `to` a data folder holding backup `id` of `data_dir`, and with `at`, as of that
/// moment: what followed the backup up to `at` is replayed from the live folder's change
/// logs (documents and files; retired file objects are kept as long as the logs). Start
/// `yun dev --data-dir TO` on it. `to` must not exist, or be empty; the live folder is
/// only read.
pub async fn restore(
    data_dir: &Path,
    id: &str,
    to: &Path,
    at: Option<i64>,
) -> Result<BackupInfo, ServerError> {
    let backup = data_dir.join("backups").join(id);
    let info = read_manifest(&backup).ok_or_else(|| {
        YunError::new(
            ErrorCode::NotFound,
            format!("no backup {id} in {}", data_dir.join("backups").display()),
        )
    })?;
    if at.is_some_and(|at| at < info.created_at_ms) {
        return Err(YunError::invalid_param(format!(
            "backup {id} was taken after that time: restore an earlier one"
        ))
        .into());
    }
    if std::fs::read_dir(to).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(YunError::invalid_param(format!(
            "{} is not empty: a backup is restored into a new data folder (start yun dev --data-dir on it)",
            to.display()
        ))
        .into());
    }
    make_dir(to, 0o711)?;
    make_dir(&to.join("meta"), 0o700)?;
    for store in &info.stores {
        let (source, target) = (backup.join("meta").join(store), to.join("meta").join(store));
        std::fs::copy(&source, &target).map_err(io_err("cannot copy", &source))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot protect", &target))?;
    }
    make_dir(&to.join("files"), 0o700)?;
    link_tree(&backup.join("files"), &to.join("files"))
        .map_err(io_err("cannot restore the files of", &backup))?;
    std::fs::set_permissions(to.join("files"), std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot protect", &to.join("files")))?;
    link_tree(&backup.join("functions"), &to.join("functions"))
        .map_err(io_err("cannot restore the function code of", &backup))?;
    // The keys, without the URL of the server the backup came from: the restored one
    // writes its own when it starts.
    let credentials = backup.join("credentials.json");
    if let Ok(text) = std::fs::read(&credentials) {
        let mut keys: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        if let Some(keys) = keys.as_object_mut() {
            keys.insert("url".into(), serde_json::Value::String(String::new()));
        }
        let keys = serde_json::to_vec_pretty(&keys).map_err(YunError::internal)?;
        let target = to.join("credentials.json");
        std::fs::write(&target, keys).map_err(io_err("cannot write", &target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot protect", &target))?;
    }
    if let Some(at) = at {
        replay_until(data_dir, to, at).await?;
    }
    Ok(info)
}

/// The live change entries of `store` that follow the restored copy's, up to `at`;
/// an error when the live log no longer reaches back to the copy.
fn changes_since_copy(
    live: &Path,
    copy: &Path,
    at: i64,
) -> Result<Vec<yun_types::changes::ChangeEntry>, YunError> {
    let from = yun_store_sqlite::changelog::last_seq_of_file(copy)?;
    let (changes, oldest) = yun_store_sqlite::changelog::read_file(live, from, at)?;
    if oldest.is_some_and(|oldest| oldest > from + 1) {
        return Err(YunError::invalid_param(format!(
            "the change log of {} no longer reaches back to the backup (it keeps a week): restore a later backup",
            live.display()
        )));
    }
    Ok(changes)
}

/// Replays documents and files from the live folder's change logs onto the restored one.
async fn replay_until(data_dir: &Path, to: &Path, at: i64) -> Result<(), ServerError> {
    let (live, restored) = (data_dir.join("meta"), to.join("meta"));
    let documents = changes_since_copy(
        &live.join("documents.db"),
        &restored.join("documents.db"),
        at,
    )?;
    let files = changes_since_copy(&live.join("files.db"), &restored.join("files.db"), at)?;
    {
        let docdb = yun_docdb::DocDb::new(
            Arc::new(yun_store_sqlite::SqliteDocStore::open(
                &restored.join("documents.db"),
            )?),
            yun_docdb::Limits::default(),
        );
        let mut by_env: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for change in documents {
            by_env.entry(change.env.clone()).or_default().push(change);
        }
        for (env, changes) in by_env {
            let env =
                yun_types::EnvId::parse(&env).map_err(|e| YunError::internal(e.to_string()))?;
            docdb.replay(&env, changes).await?;
        }
    }
    let index = yun_store_sqlite::SqliteFileIndex::open(&restored.join("files.db"))?;
    yun_storage::replay_index(&index, &files).await?;
    drop(index);
    // The bytes of the files the restored index now names, from the live folder (kept
    // there when retired since).
    let root = data_dir.join("files");
    for object in yun_store_sqlite::objects_in_copy(&restored.join("files.db"))? {
        let target = to.join("files").join(&object);
        if target.exists() {
            continue;
        }
        let source = yun_storage::find_object(&root, &object).ok_or_else(|| {
            YunError::internal(format!(
                "the bytes of object {object} are gone from {} (kept a week after a file is replaced or deleted)",
                root.display()
            ))
        })?;
        link_file(&source, &target).map_err(io_err("cannot link", &source))?;
    }
    Ok(())
}
