//! File storage for one node: paths and file ids ([`path`]), signed URLs ([`signing`]),
//! file metadata ([`index`], the truth about what exists) and the bytes in an
//! `object_store` backend (local disk for `yun dev`, S3 for a cluster). Bytes stream
//! through in bounded memory; every upload goes to a fresh object and becomes visible in
//! one index write, so an interrupted upload leaves nothing a reader can see.

pub mod index;
pub mod path;
pub mod signing;
pub mod thumbnail;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::path::Path as ObjectKey;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use yun_types::{new_id, EnvId, ErrorCode, YunError};

pub use index::{replay_index, FileIndex, FileRecord};
pub use path::{file_id, parse_file_id, CloudPath};
pub use signing::{UploadGrant, UrlSigner};
pub use thumbnail::ImageOps;

/// Upload parts: S3 wants at least 5 MiB per part; two in flight bound an upload's memory.
const PART_BYTES: usize = 8 << 20;
/// How long S3 may take to start answering a request (see [`Storage::answered`]).
const S3_ANSWER_WITHIN: Duration = Duration::from_secs(10);
const PARTS_IN_FLIGHT: usize = 2;
const READ_CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    pub max_file_bytes: u64,
    /// Bytes each env may store.
    pub env_quota_bytes: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 5 << 30,
            env_quota_bytes: 50 << 30,
        }
    }
}

/// Where the bytes live.
#[derive(Debug, Clone)]
pub enum ObjectBackend {
    Local(std::path::PathBuf),
    /// An S3 bucket; endpoint and keys come from the standard `AWS_*` variables.
    S3 {
        bucket: String,
    },
}

impl ObjectBackend {
    /// `s3://bucket` or a local folder.
    pub fn parse(spec: &str) -> Self {
        match spec.strip_prefix("s3://") {
            Some(bucket) => Self::S3 {
                bucket: bucket.trim_end_matches('/').to_owned(),
            },
            None => Self::Local(spec.into()),
        }
    }

    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, YunError> {
        match self {
            Self::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    YunError::internal(format!("cannot create {}: {e}", dir.display()))
                })?;
                Ok(Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(store_err)?,
                ))
            }
            // object_store's defaults retry for up to three minutes, so a store that is
            // down held each request that long: a few quick retries, then the error.
            Self::S3 { bucket } => Ok(Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(1),
                            base: 2.0,
                        },
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(10),
                    })
                    // Through the config keys: client options would replace those
                    // from the AWS_* variables (AWS_ALLOW_HTTP among them).
                    .with_config(
                        object_store::aws::AmazonS3ConfigKey::Client(
                            object_store::ClientConfigKey::ConnectTimeout,
                        ),
                        "3s",
                    )
                    .build()
                    .map_err(store_err)?,
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Local(dir) => format!("local disk ({})", dir.display()),
            Self::S3 { bucket } => format!("S3 bucket {bucket}"),
        }
    }
}

fn store_err(e: object_store::Error) -> YunError {
    YunError::internal(format!("object store: {e}"))
}

fn not_found(path: &str) -> YunError {
    YunError::new(
        ErrorCode::StorageFileNotFound,
        format!("no file at {path:?}"),
    )
}

/// The content type: what the uploader declared, else sniffed from the first bytes, else
/// guessed from the name. `application/octet-stream` declares nothing: clients send it
/// when they do not know.
fn content_type(declared: Option<&str>, head: &[u8], path: &CloudPath) -> String {
    if let Some(t) = declared.filter(|t| !t.is_empty() && *t != "application/octet-stream") {
        return t.to_owned();
    }
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_owned();
    }
    mime_guess::from_path(path.as_str())
        .first_or_octet_stream()
        .to_string()
}

pub struct Storage {
    objects: Arc<dyn ObjectStore>,
    /// How long an object request may wait for the start of an answer (S3 only; the
    /// body that follows is not bounded).
    answer_within: Option<Duration>,
    /// The folder of the local backend: its objects are synced to disk before the index
    /// points at them (`object_store` does not), so an acknowledged upload survives a
    /// power cut. S3 acknowledges durable writes itself.
    local_root: Option<std::path::PathBuf>,
    index: Arc<dyn FileIndex>,
    limits: StorageLimits,
    /// Image renders are CPU-bound: at most one per core at a time.
    renders: tokio::sync::Semaphore,
    /// While a backup links objects, replaced and deleted files' objects are kept
    /// (holds open, the files retired meanwhile).
    held: std::sync::Mutex<(usize, Vec<FileRecord>)>,
}

/// An image rendering of a file.
pub struct Rendered {
    pub bytes: Bytes,
    pub content_type: &'static str,
}

/// Where retired objects wait (a `.` cannot start an env id).
const RETIRED: &str = ".retired";
const HOUR_MS: i64 = 3_600_000;

fn retired_path(root: &std::path::Path, at_ms: i64, object: &str) -> std::path::PathBuf {
    root.join(RETIRED)
        .join((at_ms.div_euclid(HOUR_MS) * HOUR_MS).to_string())
        .join(object)
}

/// The bytes of `object` under the local root `root`: live, or retired and still kept.
pub fn find_object(root: &std::path::Path, object: &str) -> Option<std::path::PathBuf> {
    let live = root.join(object);
    if live.exists() {
        return Some(live);
    }
    std::fs::read_dir(root.join(RETIRED))
        .ok()?
        .filter_map(Result::ok)
        .map(|hour| hour.path().join(object))
        .find(|p| p.exists())
}

fn package_path(key: &str) -> ObjectKey {
    ObjectKey::from(format!(".packages/{key}"))
}

/// Where renderings of an object are cached. A `.` cannot start an env id, so this never
/// meets an env's objects; keyed by object, a replaced file's renderings are never served.
fn renderings_of(object: &str) -> String {
    format!(".thumbs/{object}")
}

impl Storage {
    pub fn new(
        backend: &ObjectBackend,
        index: Arc<dyn FileIndex>,
        limits: StorageLimits,
    ) -> Result<Self, YunError> {
        Ok(Self {
            objects: backend.open()?,
            local_root: match backend {
                ObjectBackend::Local(dir) => Some(dir.clone()),
                ObjectBackend::S3 { .. } => None,
            },
            answer_within: match backend {
                ObjectBackend::Local(_) => None,
                ObjectBackend::S3 { .. } => Some(S3_ANSWER_WITHIN),
            },
            index,
            limits,
            renders: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            held: std::sync::Mutex::new((0, Vec::new())),
        })
    }

    /// `op`'s result, unless the object store (S3) took longer than it may to answer: one
    /// that accepts connections and says nothing would hold the request until its
    /// timeout (30 s a try) instead of failing it clearly.
    async fn answered<T>(&self, what: &str, op: impl Future<Output = T>) -> Result<T, YunError> {
        let Some(limit) = self.answer_within else {
            return Ok(op.await);
        };
        tokio::time::timeout(limit, op).await.map_err(|_| {
            YunError::new(
                ErrorCode::Unavailable,
                format!(
                    "file storage (S3) did not answer {what} within {} s",
                    limit.as_secs()
                ),
            )
        })
    }

    /// Deletes the retired objects older than `keep` (local disk only).
    pub async fn sweep_retired(&self, keep: std::time::Duration) {
        let Some(root) = self.local_root.clone() else {
            return;
        };
        let cutoff = yun_types::unix_ms() - keep.as_millis() as i64;
        let swept = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = root.join(RETIRED);
            let Ok(hours) = std::fs::read_dir(&dir) else {
                return Ok(());
            };
            for hour in hours {
                let hour = hour?;
                let start: i64 = hour.file_name().to_string_lossy().parse().unwrap_or(0);
                // The whole hour is past the window.
                if start + HOUR_MS < cutoff {
                    std::fs::remove_dir_all(hour.path())?;
                }
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = swept {
            tracing::warn!(error = %e, "could not sweep retired objects");
        }
    }

    /// Stores one of the platform's own objects (a function version's package) beside
    /// the files, under `.packages/` (a `.` cannot start an env id).
    pub async fn put_package(&self, key: &str, bytes: Vec<u8>) -> Result<(), YunError> {
        let path = package_path(key);
        self.answered(
            "storing a function package",
            self.objects.put(&path, bytes.into()),
        )
        .await?
        .map_err(store_err)?;
        Ok(())
    }

    /// A package [`Storage::put_package`] stored; `None` when there is none.
    pub async fn get_package(&self, key: &str) -> Result<Option<Bytes>, YunError> {
        let path = package_path(key);
        match self
            .answered("a function package", self.objects.get(&path))
            .await?
        {
            Ok(found) => Ok(Some(found.bytes().await.map_err(store_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Deletes one package (a deploy that failed after storing it).
    pub async fn delete_package(&self, key: &str) {
        match self.objects.delete(&package_path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(package = key, error = %e, "could not delete a function package")
            }
        }
    }

    /// Deletes the packages whose keys start with `prefix` (a function's, an env's), but
    /// those in `keep` and those stored less than `min_age` ago.
    pub async fn delete_packages(
        &self,
        prefix: &str,
        keep: &[String],
        min_age: std::time::Duration,
    ) {
        let keep: Vec<ObjectKey> = keep.iter().map(|k| package_path(k)).collect();
        let listed: Vec<_> = self
            .objects
            .list(Some(&package_path(prefix)))
            .collect()
            .await;
        let now_ms = yun_types::unix_ms();
        for meta in listed.into_iter().flatten() {
            let age_ms = now_ms.saturating_sub(meta.last_modified.timestamp_millis());
            if keep.contains(&meta.location) || age_ms < min_age.as_millis() as i64 {
                continue;
            }
            if let Err(e) = self.objects.delete(&meta.location).await {
                tracing::warn!(package = %meta.location, error = %e, "could not delete a function package");
            }
        }
    }

    /// The folder of the local backend's objects (`None` on S3).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, (usize, Vec<FileRecord>)> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the objects of files replaced or deleted from now on until
    /// [`Storage::release_objects`]: a backup links the objects of its snapshot of the
    /// index meanwhile.
    pub fn hold_objects(&self) {
        self.held().0 += 1;
    }

    /// Ends a [`Storage::hold_objects`]; the last one deletes what was kept.
    pub async fn release_objects(&self) {
        let retired = {
            let mut held = self.held();
            held.0 = held.0.saturating_sub(1);
            if held.0 > 0 {
                return;
            }
            std::mem::take(&mut held.1)
        };
        for file in retired {
            self.retire(&file).await;
        }
    }

    /// Makes a new object durable before it becomes visible (local disk only).
    async fn sync_object(&self, object: &str) -> Result<(), YunError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(object);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            // The rename that created the name lives in the folder.
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| YunError::internal(format!("syncing a file: {e}")))?
        .map_err(|e| YunError::internal(format!("syncing {object}: {e}")))
    }

    /// The file index's change log: every upload, copy and delete, in the index's own
    /// transaction (the storage triggers read it).
    pub fn change_log(&self) -> &dyn yun_types::changes::ChangeLog {
        self.index.change_log()
    }

    /// Streams `body` into a new object and points `path` at it. An error or a dropped
    /// body aborts the object; the previous file at `path`, if any, stays.
    pub async fn upload<S, E>(
        &self,
        env: &EnvId,
        path: &CloudPath,
        declared_type: Option<&str>,
        owner: &str,
        mut body: S,
    ) -> Result<FileRecord, YunError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let used = self.index.used_bytes(env).await?;
        let replaced = self
            .index
            .get(env, path.as_str())
            .await?
            .map_or(0, |r| r.size);
        let room = self
            .limits
            .env_quota_bytes
            .saturating_sub(used.saturating_sub(replaced));
        // The ETag names this stored version (every upload is a new object), not the
        // content: hashing every byte was a quarter to half of an upload's CPU (perf, 1 GiB
        // uploads), and a version id validates caches just as well.
        let version = new_id("");
        let object = format!("{env}/{version}");
        let key = ObjectKey::from(object.as_str());
        let upload = self
            .answered("an upload", self.objects.put_multipart(&key))
            .await?
            .map_err(store_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut size = 0u64;
        let mut head = Vec::new();
        let received: Result<(), YunError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    YunError::invalid_param(format!("the upload was interrupted: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > self.limits.max_file_bytes {
                    return Err(YunError::new(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the file is larger than the maximum of {} bytes",
                            self.limits.max_file_bytes
                        ),
                    ));
                }
                if size > room {
                    return Err(YunError::new(
                        ErrorCode::StorageQuotaExceeded,
                        format!(
                            "the env's storage quota of {} bytes is used up",
                            self.limits.env_quota_bytes
                        ),
                    ));
                }
                if head.len() < 64 {
                    head.extend_from_slice(&chunk[..chunk.len().min(64 - head.len())]);
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(store_err)?;
                // Owned chunks go in without a copy.
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = received {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%object, error = %abort, "could not abort an upload");
            }
            return Err(e);
        }
        writer.finish().await.map_err(store_err)?;
        if let Err(e) = self.sync_object(&object).await {
            self.delete_object(&object).await;
            return Err(e);
        }
        let record = FileRecord {
            path: path.to_string(),
            object,
            size,
            content_type: content_type(declared_type, &head, path),
            etag: version,
            owner: owner.to_owned(),
            created_at: yun_types::unix_ms(),
        };
        match self.index.put(env, record.clone()).await {
            Ok(old) => {
                if let Some(old) = old {
                    self.retire(&old).await;
                }
            }
            Err(e) => {
                self.delete_object(&record.object).await;
                return Err(e);
            }
        }
        Ok(record)
    }

    async fn delete_object(&self, object: &str) {
        if let Err(e) = self.objects.delete(&ObjectKey::from(object)).await {
            // Invisible garbage at worst: no index row points at it.
            tracing::warn!(%object, error = %e, "could not delete an object");
        }
    }

    /// Deletes the object of a file no index row points at any more, with its cached
    /// renderings; only images can have any, so other files cost no listing.
    async fn retire(&self, file: &FileRecord) {
        {
            let mut held = self.held();
            if held.0 > 0 {
                held.1.push(file.clone());
                return;
            }
        }
        // On disk, the bytes wait out the restore window under `.retired/{hour}/`, for a
        // point-in-time restore to find ([`find_object`]); `sweep_retired` ends them.
        match &self.local_root {
            Some(root) => {
                let (from, to) = (
                    root.join(&file.object),
                    retired_path(root, yun_types::unix_ms(), &file.object),
                );
                let moved = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(to.parent().unwrap_or(&to))?;
                    std::fs::rename(&from, &to)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                if let Err(e) = moved {
                    tracing::warn!(object = %file.object, error = %e, "could not keep a retired object");
                    self.delete_object(&file.object).await;
                }
            }
            None => self.delete_object(&file.object).await,
        }
        if thumbnail::renderable(&file.content_type) {
            self.delete_prefix(&renderings_of(&file.object)).await;
        }
    }

    async fn delete_prefix(&self, prefix: &str) {
        let prefix = ObjectKey::from(prefix);
        let keys = self
            .objects
            .list(Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let mut deleted = self.objects.delete_stream(keys);
        while let Some(result) = deleted.next().await {
            if let Err(e) = result {
                tracing::warn!(%prefix, error = %e, "could not delete a cached rendering");
            }
        }
    }

    /// `file` processed by `ops`: from the cache, or rendered and cached.
    pub async fn render_image(
        &self,
        file: &FileRecord,
        ops: &ImageOps,
    ) -> Result<Rendered, YunError> {
        let format = ops.output_format(&file.content_type)?;
        let cached = ObjectKey::from(format!("{}/{}", renderings_of(&file.object), ops.key()));
        let content_type = format.mime_type();
        if let Ok(hit) = self
            .answered("a cached rendering", self.objects.get(&cached))
            .await?
        {
            if let Ok(bytes) = hit.bytes().await {
                return Ok(Rendered {
                    bytes,
                    content_type,
                });
            }
        }
        if file.size > thumbnail::MAX_SOURCE_BYTES {
            return Err(YunError::invalid_param(format!(
                "the image is {} bytes; Yun processes images up to {} MiB",
                file.size,
                thumbnail::MAX_SOURCE_BYTES >> 20
            )));
        }
        let source_key = ObjectKey::from(file.object.as_str());
        let source = self
            .answered("a read", self.objects.get(&source_key))
            .await?
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)?;
        let permit = self
            .renders
            .acquire()
            .await
            .map_err(|_| YunError::internal("image rendering has shut down"))?;
        let ops_owned = ops.clone();
        let bytes = tokio::task::spawn_blocking(move || ops_owned.render(&source, format))
            .await
            .map_err(|e| YunError::internal(format!("image rendering failed: {e}")))??;
        drop(permit);
        let bytes = Bytes::from(bytes);
        let stored = self.answered(
            "caching a rendering",
            self.objects.put(&cached, bytes.clone().into()),
        );
        if let Err(e) = stored.await.and_then(|put| put.map_err(store_err)) {
            tracing::warn!(key = %cached, error = %e, "could not cache a rendering");
        }
        Ok(Rendered {
            bytes,
            content_type,
        })
    }

    /// Files under `prefix` in path order, `limit` at a time after `after`.
    /// Bytes the env's files take (what its quota counts).
    pub async fn used_bytes(&self, env: &EnvId) -> Result<u64, YunError> {
        self.index.used_bytes(env).await
    }

    pub async fn list(
        &self,
        env: &EnvId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>, YunError> {
        self.index.list(env, prefix, after, limit).await
    }

    pub async fn stat(&self, env: &EnvId, path: &CloudPath) -> Result<FileRecord, YunError> {
        self.index
            .get(env, path.as_str())
            .await?
            .ok_or_else(|| not_found(path.as_str()))
    }

    /// The bytes of a file (or of `range` of it), as a stream.
    pub async fn read(
        &self,
        file: &FileRecord,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, YunError>>, YunError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let key = ObjectKey::from(file.object.as_str());
        let got = self
            .answered("a read", self.objects.get_opts(&key, options))
            .await?
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => not_found(&file.path),
                other => store_err(other),
            })?;
        let range = got.range.clone();
        match got.payload {
            GetResultPayload::File(file, _) => {
                // object_store streams a local file 8 KiB per blocking task; bigger reads
                // move large files at disk speed.
                let mut file = tokio::fs::File::from_std(file);
                file.seek(std::io::SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| YunError::internal(format!("reading a file: {e}")))?;
                let reader = file.take(range.end - range.start);
                Ok(ReaderStream::with_capacity(reader, READ_CHUNK_BYTES)
                    .map(|r| r.map_err(|e| YunError::internal(format!("reading a file: {e}"))))
                    .boxed())
            }
            GetResultPayload::Stream(stream) => Ok(stream.map(|r| r.map_err(store_err)).boxed()),
        }
    }

    pub async fn delete(&self, env: &EnvId, path: &CloudPath) -> Result<(), YunError> {
        let old = self
            .index
            .delete(env, path.as_str())
            .await?
            .ok_or_else(|| not_found(path.as_str()))?;
        self.retire(&old).await;
        Ok(())
    }

    /// Copies `from` to `to` inside the env (a new object: the two live apart from then
    /// on); with `remove_original` it is a move.
    pub async fn copy(
        &self,
        env: &EnvId,
        from: &CloudPath,
        to: &CloudPath,
        overwrite: bool,
        remove_original: bool,
    ) -> Result<FileRecord, YunError> {
        let source = self.stat(env, from).await?;
        if !overwrite && self.index.get(env, to.as_str()).await?.is_some() {
            return Err(YunError::new(
                ErrorCode::AlreadyExists,
                format!("{to} exists and overwrite is false"),
            ));
        }
        let object = format!("{env}/{}", new_id(""));
        self.objects
            .copy(
                &ObjectKey::from(source.object.as_str()),
                &ObjectKey::from(object.as_str()),
            )
            .await
            .map_err(store_err)?;
        self.sync_object(&object).await?;
        let record = FileRecord {
            path: to.to_string(),
            object,
            created_at: yun_types::unix_ms(),
            ..source
        };
        if let Some(old) = self.index.put(env, record.clone()).await? {
            self.retire(&old).await;
        }
        if remove_original {
            self.delete(env, from).await?;
        }
        Ok(record)
    }

    /// Deletes every file of the env (env deletion), and all its renderings at once.
    pub async fn drop_env(&self, env: &EnvId) -> Result<(), YunError> {
        for object in self.index.drop_env(env).await? {
            self.delete_object(&object).await;
        }
        self.delete_prefix(&renderings_of(env.as_str())).await;
        Ok(())
    }
}
