//! File metadata: which object holds each path, with size, type, etag, owner and time.
//! The index is the truth: an object no row points at is invisible (an upload that never
//! finished, or one whose row was never written), and a path moves to a new object in one
//! row write, so readers see the old file or the new one, never a mix.

use async_trait::async_trait;
use yun_types::changes::ChangeLog;
use yun_types::{EnvId, YunError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    pub path: String,
    /// The object-store key holding the bytes; unique per upload. Internal.
    #[serde(skip)]
    pub object: String,
    pub size: u64,
    pub content_type: String,
    pub etag: String,
    /// Who uploaded it; empty for admin callers.
    pub owner: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[async_trait]
pub trait FileIndex: Send + Sync + 'static {
    async fn get(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError>;
    /// Points `record.path` at `record.object`; returns the record it replaced.
    async fn put(&self, env: &EnvId, record: FileRecord) -> Result<Option<FileRecord>, YunError>;
    async fn delete(&self, env: &EnvId, path: &str) -> Result<Option<FileRecord>, YunError>;
    /// Files whose path starts with `prefix`, after `after` in path order.
    async fn list(
        &self,
        env: &EnvId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>, YunError>;
    async fn used_bytes(&self, env: &EnvId) -> Result<u64, YunError>;
    /// Forgets every file of the env; returns their objects for deletion.
    async fn drop_env(&self, env: &EnvId) -> Result<Vec<String>, YunError>;
    /// The log every `put` (op `created`) and `delete` (`removed`) appends to in its own
    /// transaction, the records as JSON before and after.
    fn change_log(&self) -> &dyn ChangeLog;
}

/// A record as the change log keeps it: with its object (a point-in-time restore needs
/// the bytes; trigger events take only the public fields).
pub fn logged(record: &FileRecord) -> Result<String, YunError> {
    let mut value = serde_json::to_value(record).map_err(log_err)?;
    value["object"] = serde_json::Value::String(record.object.clone());
    serde_json::to_string(&value).map_err(log_err)
}

/// A record from the change log (see [`logged`]).
pub fn record_from_log(text: &str) -> Result<FileRecord, YunError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(log_err)?;
    let object = value["object"].as_str().unwrap_or_default().to_owned();
    let mut record: FileRecord = serde_json::from_value(value).map_err(log_err)?;
    record.object = object;
    Ok(record)
}

/// Applies file change-log entries (`created`, `removed`) to `index` in order: a
/// point-in-time restore replays what followed a backup.
pub async fn replay_index(
    index: &dyn FileIndex,
    changes: &[yun_types::changes::ChangeEntry],
) -> Result<(), YunError> {
    for change in changes {
        let env = EnvId::parse(&change.env).map_err(|e| YunError::internal(e.to_string()))?;
        match &change.after {
            Some(text) => {
                index.put(&env, record_from_log(text)?).await?;
            }
            None => {
                index.delete(&env, &change.key).await?;
            }
        }
    }
    Ok(())
}

/// The path range `[start, end)` of a listing by `prefix` past `after`. Paths compare as
/// UTF-8 bytes; U+10FFFF sorts after every real continuation of the prefix, so the range
/// is an index seek, not a scan of the env.
pub fn listing_range(prefix: &str, after: &str) -> (String, String) {
    (prefix.max(after).to_owned(), format!("{prefix}\u{10FFFF}"))
}

fn log_err(e: serde_json::Error) -> YunError {
    YunError::internal(format!("a file change-log entry: {e}"))
}
