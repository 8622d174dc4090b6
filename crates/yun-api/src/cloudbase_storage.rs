//! `storage.*` actions of the CloudBase protocol (`../shared/cloudbase-protocol.md` §2.3).
//! Batch actions answer per file: `code: "SUCCESS"` or the file's own error code.

use serde_json::{json, Map, Value};
use yun_app::{App, FileOutcome, Identity};
use yun_types::YunError;

fn list<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, YunError> {
    body.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| YunError::invalid_param(format!("{key} must be an array")))
}

fn text<'a>(item: &'a Value, key: &str) -> Result<&'a str, YunError> {
    item.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| YunError::invalid_param(format!("{key} must be a non-empty string")))
}

/// One batch item as the SDKs read it; `extra` holds the success fields.
fn item<T>(outcome: FileOutcome<T>, id_key: &str, extra: impl FnOnce(T) -> Value) -> Value {
    let mut out = Map::new();
    out.insert(id_key.into(), Value::String(outcome.file_id));
    match outcome.result {
        Ok(value) => {
            out.insert("code".into(), "SUCCESS".into());
            if let Value::Object(fields) = extra(value) {
                out.extend(fields);
            }
        }
        Err(e) => {
            out.insert("code".into(), e.code.cloudbase().into());
            out.insert("message".into(), e.message.into());
        }
    }
    Value::Object(out)
}

pub async fn handle(
    app: &App,
    identity: &Identity,
    action: &str,
    body: &Map<String, Value>,
) -> Result<(Value, Map<String, Value>), YunError> {
    let data = match action {
        "storage.getUploadMetadata" => {
            let path = body
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| YunError::invalid_param("path is required"))?;
            let target = app.upload_target(identity, path).await?;
            json!({
                "url": target.url,
                "token": target.token,
                "authorization": target.authorization,
                "fileId": target.file_id,
                "cosFileId": target.token,
                "download_url": target.download_url,
            })
        }
        "storage.batchGetDownloadUrl" => {
            let mut files = Vec::new();
            for entry in list(body, "file_list")? {
                let max_age = match entry.get("max_age") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_i64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .ok_or_else(|| YunError::invalid_param("max_age must be a number"))?,
                    ),
                };
                files.push((text(entry, "fileid")?.to_owned(), max_age));
            }
            let outcomes = app.temp_urls(identity, files).await?;
            let download_list: Vec<Value> = outcomes
                .into_iter()
                .map(|o| {
                    let failed = o.result.is_err();
                    let mut v = item(o, "fileID", |url| json!({ "tempFileURL": url }));
                    if failed {
                        v["tempFileURL"] = "".into();
                    }
                    v
                })
                .collect();
            json!({ "download_list": download_list })
        }
        "storage.batchDeleteFile" => {
            let ids = list(body, "fileid_list")?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| YunError::invalid_param("fileid_list holds strings"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let outcomes = app.delete_files(identity, ids).await?;
            json!({ "delete_list": outcomes.into_iter().map(|o| item(o, "fileID", |()| json!({}))).collect::<Vec<_>>() })
        }
        "storage.batchCopyFile" => {
            let mut copies = Vec::new();
            for entry in list(body, "file_list")? {
                copies.push((
                    text(entry, "src_path")?.to_owned(),
                    text(entry, "dst_path")?.to_owned(),
                    entry
                        .get("overwrite")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                    entry
                        .get("remove_original")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ));
            }
            let outcomes = app.copy_files(identity, copies).await?;
            json!({ "copy_list": outcomes.into_iter().map(|o| item(o, "fileId", |file| json!({ "fileID": yun_storage::file_id(&identity.env, &file.path) }))).collect::<Vec<_>>() })
        }
        "storage.getFileAuthority" => {
            // What the env's storage rules let the caller do (admins: everything).
            let mut files = Vec::new();
            for entry in list(body, "fileList")? {
                let path = text(entry, "path")?;
                let kind = text(entry, "type")?;
                if !["READ", "WRITE", "READWRITE"].contains(&kind) {
                    return Err(YunError::invalid_param(
                        "type must be READ, WRITE or READWRITE",
                    ));
                }
                let (read, write) = app.file_authority(identity, path).await?;
                files.push(json!({ "path": path, "type": kind, "read": read, "write": write }));
            }
            json!({ "file_list": files })
        }
        other => return Err(crate::cloudbase::unsupported_action(other)),
    };
    Ok((data, Map::new()))
}
