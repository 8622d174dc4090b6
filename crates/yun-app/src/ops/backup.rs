//! Backups of the whole data folder (platform keys only): the seam here, the embedded
//! implementation in `yun-server` (`backup.rs`), which knows where each store keeps its
//! data. A backup is taken online and is consistent across the stores.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use yun_auth::Identity;
use yun_types::{ErrorCode, YunError};

use crate::{App, Operation};

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: String,
    /// When its snapshot was taken (Unix ms).
    pub created_at_ms: i64,
    pub duration_ms: u64,
    /// The database files it holds.
    pub stores: Vec<String>,
    pub files: u64,
    pub file_bytes: u64,
}

/// Taking and listing backups: the composition root's.
#[async_trait]
pub trait Backups: Send + Sync {
    async fn create(&self) -> Result<BackupInfo, YunError>;
    async fn list(&self) -> Result<Vec<BackupInfo>, YunError>;
}

impl App {
    fn backups(&self) -> Result<&dyn Backups, YunError> {
        self.backups.as_deref().ok_or_else(|| {
            YunError::new(
                ErrorCode::InvalidParam,
                "this server takes no backups (its stores have no backup support here)",
            )
        })
    }

    pub async fn create_backup(&self, identity: &Identity) -> Result<BackupInfo, YunError> {
        Self::authorize(identity, Operation::ManageBackups)?;
        // What is queued for the metadata store belongs in it.
        self.recorder.flush().await;
        self.backups()?.create().await
    }

    pub async fn list_backups(&self, identity: &Identity) -> Result<Vec<BackupInfo>, YunError> {
        Self::authorize(identity, Operation::ManageBackups)?;
        self.backups()?.list().await
    }
}
