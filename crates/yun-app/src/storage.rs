//! Storage use-cases. A caller names files by id (`cloud://env.bucket/path`) or by path in
//! its own env; a file id of another env is refused without saying whether it exists.
//! Uploads and downloads themselves go through signed URLs, so the byte streams never
//! need the caller's key.

use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::Stream;
use serde_json::json;
use yun_auth::{Caller, Identity};
use yun_rules::Context;
use yun_storage::{file_id, parse_file_id, CloudPath, FileRecord, ImageOps, Rendered};
use yun_types::{EnvId, ErrorCode, YunError};

use crate::ops::trace::{outcome, OpSpan};
use crate::rules::{rule_auth, RulesTarget};
use crate::{App, Operation};
use yun_types::unix_now;

/// How long `getUploadMetadata`'s authorization stays valid.
const UPLOAD_GRANT_SECS: i64 = 3600;
/// `getTempFileURL`'s default and largest `max_age` (CloudBase: default 1 day).
const DEFAULT_URL_SECS: i64 = 86_400;
const MAX_URL_SECS: i64 = 7 * 86_400;
/// The largest page of a file listing.
pub const MAX_LIST_PAGE: usize = 1000;

/// What an end user asks to do with a file, as storage rules see it.
#[derive(Debug, Clone, Copy)]
enum FileAction {
    Read,
    /// Create a new file or replace one (`create` or `update` rule).
    Write,
    Delete,
}

impl FileAction {
    fn verb(self) -> &'static str {
        match self {
            FileAction::Read => "read",
            FileAction::Write => "write",
            FileAction::Delete => "delete",
        }
    }
}

/// What `storage.getUploadMetadata` answers.
pub struct UploadTarget {
    pub url: String,
    pub token: String,
    pub authorization: String,
    pub file_id: String,
    pub download_url: String,
}

/// One item of a batch answer: the file id and a CloudBase code (`SUCCESS` or an error).
pub struct FileOutcome<T> {
    pub file_id: String,
    pub result: Result<T, YunError>,
}

impl App {
    /// Who a stored file belongs to: an end user's id (what `resource.openid` reads), a
    /// function, or nobody for admin keys.
    fn file_owner(identity: &Identity) -> String {
        match &identity.caller {
            Caller::Function { name } => format!("function:{name}"),
            Caller::User(user) => user.uid.clone(),
            _ => String::new(),
        }
    }

    /// Whether the caller may do `action` on `path` under the env's storage rules
    /// (`existing`: the file there now). Admins and functions may do anything.
    async fn check_file(
        &self,
        identity: &Identity,
        path: &CloudPath,
        existing: Option<&FileRecord>,
        action: FileAction,
    ) -> Result<(), YunError> {
        let Caller::User(user) = &identity.caller else {
            return Ok(());
        };
        let rules = self.rules_for(identity, &RulesTarget::Storage).await?;
        let rule = match (action, existing) {
            (FileAction::Read, _) => &rules.read,
            (FileAction::Write, None) => &rules.create,
            (FileAction::Write, Some(_)) => &rules.update,
            (FileAction::Delete, _) => &rules.delete,
        };
        let resource = json!({
            "openid": existing.map_or(user.uid.as_str(), |f| f.owner.as_str()),
            "path": path.as_str(),
        });
        let auth = rule_auth(user);
        let ctx = Context {
            auth: Some(&auth),
            resource: Some(&resource),
            now_ms: yun_types::unix_ms(),
            ..Context::default()
        };
        if rule.allows(&ctx) {
            Ok(())
        } else {
            Err(YunError::new(
                ErrorCode::StorageForbidden,
                format!(
                    "the storage rules do not allow this user to {} {path}",
                    action.verb()
                ),
            ))
        }
    }

    /// [`App::check_file`] on the file stored at `path` (which must exist); for end users
    /// only, so admins pay no extra read.
    async fn check_stored_file(
        &self,
        identity: &Identity,
        path: &CloudPath,
        action: FileAction,
    ) -> Result<(), YunError> {
        if !matches!(identity.caller, Caller::User(_)) {
            return Ok(());
        }
        let file = self.storage.stat(&identity.env, path).await?;
        self.check_file(identity, path, Some(&file), action).await
    }

    /// The file at `path`, if there is one.
    async fn existing(
        &self,
        env: &EnvId,
        path: &CloudPath,
    ) -> Result<Option<FileRecord>, YunError> {
        match self.storage.stat(env, path).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.code == ErrorCode::StorageFileNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `storage.getFileAuthority`: what the caller may do with each path.
    pub async fn file_authority(
        &self,
        identity: &Identity,
        path: &str,
    ) -> Result<(bool, bool), YunError> {
        Self::authorize(identity, Operation::FileAuthority)?;
        let path = CloudPath::parse(path)?;
        let existing = self.existing(&identity.env, &path).await?;
        let read = self
            .check_file(identity, &path, existing.as_ref(), FileAction::Read)
            .await
            .is_ok();
        let write = self
            .check_file(identity, &path, existing.as_ref(), FileAction::Write)
            .await
            .is_ok();
        Ok((read, write))
    }

    /// The path a file id names, if it is in the caller's env.
    fn own_path(identity: &Identity, id: &str) -> Result<CloudPath, YunError> {
        let (env, path) = parse_file_id(id)?;
        if env != identity.env {
            return Err(YunError::new(
                ErrorCode::StorageForbidden,
                "the file belongs to another env",
            ));
        }
        Ok(path)
    }

    /// A file id or a plain path (as `copyFile` may pass) in the caller's env.
    fn own_path_or_id(identity: &Identity, name: &str) -> Result<CloudPath, YunError> {
        if name.starts_with("cloud://") {
            Self::own_path(identity, name)
        } else {
            CloudPath::parse(name)
        }
    }

    fn files_base(&self, env: &EnvId) -> String {
        format!("{}/files/{env}/", self.settings.public_url)
    }

    /// Where `identity` sends an upload: a function's SDK uploads at once, to the node
    /// the function runs on (all it can reach from its sandbox); anyone else through
    /// the public URL.
    fn upload_base(&self, identity: &Identity) -> String {
        let origin = match identity.caller {
            Caller::Function { .. } => &self.settings.node_url,
            _ => &self.settings.public_url,
        };
        format!("{origin}/files/{}/", identity.env)
    }

    /// A temporary download URL, raw (not percent-encoded): the SDK encodes it itself.
    fn download_url(&self, env: &EnvId, path: &CloudPath, max_age: i64) -> String {
        let expires = unix_now() + max_age;
        let sign = self.url_signer.download_sign(env, path, expires);
        format!("{}{path}?sign={sign}&t={expires}", self.files_base(env))
    }

    pub async fn upload_target(
        &self,
        identity: &Identity,
        path: &str,
    ) -> Result<UploadTarget, YunError> {
        Self::authorize(identity, Operation::UploadTarget)?;
        let path = CloudPath::parse(path)?;
        let env = &identity.env;
        let existing = self.existing(env, &path).await?;
        self.check_file(identity, &path, existing.as_ref(), FileAction::Write)
            .await?;
        let (token, authorization) = self.url_signer.upload_grant(
            env,
            &path,
            &Self::file_owner(identity),
            unix_now() + UPLOAD_GRANT_SECS,
        );
        Ok(UploadTarget {
            url: format!("{}{}", self.upload_base(identity), path.url_encoded()),
            token,
            authorization,
            file_id: file_id(env, &path),
            download_url: self.download_url(env, &path, DEFAULT_URL_SECS),
        })
    }

    /// The upload step: `token` and `authorization` from [`App::upload_target`] are the
    /// caller's identity here.
    pub async fn upload_signed<S, E>(
        &self,
        env: &EnvId,
        path: &str,
        token: &str,
        authorization: &str,
        content_type: Option<&str>,
        body: S,
    ) -> Result<FileRecord, YunError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let path = CloudPath::parse(path)?;
        let grant = self
            .url_signer
            .verify_upload(env, &path, token, authorization, unix_now())?;
        self.recheck_user_upload(env, &path, &grant.owner).await?;
        let span = OpSpan::start("storage.upload");
        let result = self
            .storage
            .upload(env, &path, content_type, &grant.owner, body)
            .await
            .inspect(|file| crate::ops::metrics::storage_bytes(env, "in", file.size));
        let function = grant.owner.strip_prefix("function:");
        span.end_in(self, env, function, outcome(&result));
        result
    }

    /// An end user's upload is checked again when the bytes arrive: the path may have
    /// gained a file (someone else's) since the grant, or the user may be disabled.
    async fn recheck_user_upload(
        &self,
        env: &EnvId,
        path: &CloudPath,
        owner: &str,
    ) -> Result<(), YunError> {
        if owner.is_empty() || owner.starts_with("function:") {
            return Ok(());
        }
        let user = self
            .users
            .store()
            .user(env, owner)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| {
                YunError::new(
                    ErrorCode::StorageForbidden,
                    "the uploading user no longer exists or is disabled",
                )
            })?;
        let identity = Identity {
            env: env.clone(),
            caller: Caller::User(crate::users::end_user_of(&user)),
        };
        let existing = self.existing(env, path).await?;
        self.check_file(&identity, path, existing.as_ref(), FileAction::Write)
            .await
    }

    /// Checks a temporary URL's signature; returns the file.
    pub async fn open_signed(
        &self,
        env: &EnvId,
        path: &str,
        sign: &str,
        expires: i64,
    ) -> Result<FileRecord, YunError> {
        let path = CloudPath::parse(path)?;
        self.url_signer
            .verify_download(env, &path, expires, sign, unix_now())?;
        self.storage.stat(env, &path).await
    }

    /// The bytes of a file that a checked call found ([`App::stat_file`] for admins,
    /// [`App::open_signed`] for a signed URL): storage is read only through those.
    /// The bytes served count as the env's egress.
    pub async fn read_file(
        &self,
        env: &EnvId,
        file: &FileRecord,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, YunError>>, YunError> {
        let length = range.as_ref().map_or(file.size, |r| r.end - r.start);
        let span = OpSpan::start("storage.download");
        let stream = self.storage.read(file, range).await;
        span.end_in(self, env, None, outcome(&stream));
        let stream = stream?;
        self.count_download(env, length);
        Ok(stream)
    }

    /// [`App::read_file`], as an image rendering (`imageMogr2`).
    pub async fn render_image(
        &self,
        env: &EnvId,
        file: &FileRecord,
        ops: &ImageOps,
    ) -> Result<Rendered, YunError> {
        let rendered = self.storage.render_image(file, ops).await?;
        self.count_download(env, rendered.bytes.len() as u64);
        Ok(rendered)
    }

    /// A temporary URL for an existing file, valid `max_age` seconds (default one day).
    async fn temp_url(
        &self,
        identity: &Identity,
        path: &CloudPath,
        max_age: Option<i64>,
    ) -> Result<String, YunError> {
        let max_age = match max_age {
            None => DEFAULT_URL_SECS,
            Some(n) if (1..=MAX_URL_SECS).contains(&n) => n,
            Some(n) => {
                return Err(YunError::invalid_param(format!(
                    "max_age {n} is outside 1..={MAX_URL_SECS} seconds"
                )))
            }
        };
        self.storage.stat(&identity.env, path).await?;
        Ok(self.download_url(&identity.env, path, max_age))
    }

    /// Management: a temporary URL for a file named by path or id.
    pub async fn file_url(
        &self,
        identity: &Identity,
        name: &str,
        max_age: Option<i64>,
    ) -> Result<String, YunError> {
        Self::authorize(identity, Operation::FileUrl)?;
        let path = Self::own_path_or_id(identity, name)?;
        self.temp_url(identity, &path, max_age).await
    }

    /// Management: a page of the env's files under `prefix`, after the path `after`.
    pub async fn list_files(
        &self,
        identity: &Identity,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>, YunError> {
        Self::authorize(identity, Operation::ListFiles)?;
        if !(1..=MAX_LIST_PAGE).contains(&limit) {
            return Err(YunError::invalid_param(format!(
                "limit must be 1 to {MAX_LIST_PAGE}"
            )));
        }
        self.storage.list(&identity.env, prefix, after, limit).await
    }

    /// Management: stores `body` at `path` (admin callers skip the upload grant).
    pub async fn put_file<S, E>(
        &self,
        identity: &Identity,
        path: &str,
        content_type: Option<&str>,
        body: S,
    ) -> Result<FileRecord, YunError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        Self::authorize(identity, Operation::PutFile)?;
        let path = CloudPath::parse(path)?;
        self.storage
            .upload(
                &identity.env,
                &path,
                content_type,
                &Self::file_owner(identity),
                body,
            )
            .await
            .inspect(|file| crate::ops::metrics::storage_bytes(&identity.env, "in", file.size))
    }

    /// Management: the record of a file named by path or id, to stream it.
    pub async fn stat_file(&self, identity: &Identity, name: &str) -> Result<FileRecord, YunError> {
        Self::authorize(identity, Operation::StatFile)?;
        let path = Self::own_path_or_id(identity, name)?;
        self.storage.stat(&identity.env, &path).await
    }

    /// Management: deletes a file named by path or id.
    pub async fn delete_file(&self, identity: &Identity, name: &str) -> Result<(), YunError> {
        Self::authorize(identity, Operation::DeleteFile)?;
        let path = Self::own_path_or_id(identity, name)?;
        self.storage.delete(&identity.env, &path).await
    }

    /// `storage.batchGetDownloadUrl`: a URL for each file that exists.
    pub async fn temp_urls(
        &self,
        identity: &Identity,
        files: Vec<(String, Option<i64>)>,
    ) -> Result<Vec<FileOutcome<String>>, YunError> {
        Self::authorize(identity, Operation::TempUrls)?;
        let mut out = Vec::with_capacity(files.len());
        for (id, max_age) in files {
            let span = OpSpan::start("storage.url");
            let result = async {
                let path = Self::own_path(identity, &id)?;
                self.check_stored_file(identity, &path, FileAction::Read)
                    .await?;
                self.temp_url(identity, &path, max_age).await
            }
            .await;
            span.end(self, identity, outcome(&result));
            out.push(FileOutcome {
                file_id: id,
                result,
            });
        }
        Ok(out)
    }

    pub async fn delete_files(
        &self,
        identity: &Identity,
        ids: Vec<String>,
    ) -> Result<Vec<FileOutcome<()>>, YunError> {
        Self::authorize(identity, Operation::DeleteFiles)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let span = OpSpan::start("storage.delete");
            let result = async {
                let path = Self::own_path(identity, &id)?;
                self.check_stored_file(identity, &path, FileAction::Delete)
                    .await?;
                self.storage.delete(&identity.env, &path).await
            }
            .await;
            span.end(self, identity, outcome(&result));
            out.push(FileOutcome {
                file_id: id,
                result,
            });
        }
        Ok(out)
    }

    /// `storage.batchCopyFile` and the management copy; answers with the new files.
    pub async fn copy_files(
        &self,
        identity: &Identity,
        copies: Vec<(String, String, bool, bool)>,
    ) -> Result<Vec<FileOutcome<FileRecord>>, YunError> {
        Self::authorize(identity, Operation::CopyFiles)?;
        let mut out = Vec::with_capacity(copies.len());
        for (src, dst, overwrite, remove_original) in copies {
            let span = OpSpan::start("storage.copy");
            let result = async {
                let from = Self::own_path_or_id(identity, &src)?;
                let to = Self::own_path_or_id(identity, &dst)?;
                if matches!(identity.caller, Caller::User(_)) {
                    self.check_stored_file(identity, &from, FileAction::Read)
                        .await?;
                    if remove_original {
                        self.check_stored_file(identity, &from, FileAction::Delete)
                            .await?;
                    }
                    let target = self.existing(&identity.env, &to).await?;
                    self.check_file(identity, &to, target.as_ref(), FileAction::Write)
                        .await?;
                }
                self.storage
                    .copy(&identity.env, &from, &to, overwrite, remove_original)
                    .await
            }
            .await;
            span.end(self, identity, outcome(&result));
            out.push(FileOutcome {
                file_id: src,
                result,
            });
        }
        Ok(out)
    }
}
