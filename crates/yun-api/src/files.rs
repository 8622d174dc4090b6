//! `/files/{env}/{path}`: the byte streams of storage. `GET`/`HEAD` serve temporary URLs
//! (`?sign=…&t=…`) with ranges, `ETag`/`If-None-Match` and CDN-fit cache headers; `PUT`
//! and the `POST` form take the upload step that `storage.getUploadMetadata` authorized.
//! Upload errors come back as COS's XML error body, which the SDKs parse.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use yun_storage::path::encode_segment;
use yun_storage::thumbnail::OutputFormat;
use yun_storage::{FileRecord, ImageOps};
use yun_types::{new_id, EnvId, ErrorCode, YunError};

use crate::AppState;

fn json_error(e: &YunError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(serde_json::json!({ "code": e.code.cloudbase(), "message": e.message })),
    )
        .into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// COS's error body: the SDK turns `SignatureDoesNotMatch` into `SYS_ERR` and anything
/// else into `STORAGE_REQUEST_FAIL`, keeping the message.
fn xml_error(e: &YunError) -> Response {
    let code = match e.code {
        ErrorCode::StorageSignInvalid => "SignatureDoesNotMatch",
        ErrorCode::PayloadTooLarge => "EntityTooLarge",
        ErrorCode::StorageQuotaExceeded => "QuotaExceeded",
        ErrorCode::InvalidParam => "InvalidArgument",
        ErrorCode::StorageForbidden => "AccessDenied",
        ErrorCode::Unavailable => "ServiceUnavailable",
        _ => "InternalError",
    };
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let id = new_id("");
    let body = format!(
        "<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>{code}</Code><Message>{}</Message><RequestId>{id}</RequestId><TraceId>{id}</TraceId></Error>",
        xml_escape(&e.message)
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn env_of(env: &str) -> Result<EnvId, YunError> {
    EnvId::parse(env).map_err(|e| YunError::new(ErrorCode::InvalidEnv, e.to_string()))
}

/// The query's `key=value` pairs, decoded; bare keys (a thumbnail spec) have no value.
fn query_pairs(query: Option<&str>) -> Vec<(String, Option<String>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let decode = |s: &str| yun_storage::path::decode_url_path(s).unwrap_or_default();
            match pair.split_once('=') {
                Some((k, v)) => (decode(k), Some(decode(v))),
                None => (decode(pair), None),
            }
        })
        .collect()
}

/// A single `bytes=` range against `size`: `Ok(None)` means the whole file,
/// `Err(())` an unsatisfiable range. Several ranges are answered with the whole file.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            size.saturating_sub(n)..size
        }
        (start, "") => start.parse().map_err(|_| ())?..size,
        (start, end) => {
            let (a, b): (u64, u64) = (start.parse().map_err(|_| ())?, end.parse().map_err(|_| ())?);
            if b < a {
                return Err(());
            }
            a..(b + 1).min(size)
        }
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

fn disposition(file: &FileRecord, attachment: bool) -> String {
    let name = file.path.rsplit('/').next().unwrap_or(&file.path);
    format!(
        "{}; filename*=UTF-8''{}",
        if attachment { "attachment" } else { "inline" },
        encode_segment(name)
    )
}

pub async fn download(
    State(app): State<AppState>,
    Path((env, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let pairs = query_pairs(uri.query());
    let param = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.clone())
    };
    let file = async {
        let env = env_of(&env)?;
        let sign = param("sign").ok_or_else(|| {
            YunError::new(
                ErrorCode::StorageSignInvalid,
                "the URL is not signed (sign, t)",
            )
        })?;
        let expires: i64 = param("t")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| YunError::new(ErrorCode::StorageSignInvalid, "t must be a Unix time"))?;
        let file = app.open_signed(&env, &path, &sign, expires).await?;
        Ok::<_, YunError>((env, file, expires))
    }
    .await;
    let (env, file, expires) = match file {
        Ok(found) => found,
        Err(e) => return json_error(&e),
    };
    let image = match image_request(&pairs, &file.content_type) {
        Ok(image) => image,
        Err(e) => return json_error(&e),
    };
    let (etag, content_type) = match &image {
        Some((format, ops)) => (
            format!("\"{}-{}\"", file.etag, ops.key()),
            format.mime_type().to_owned(),
        ),
        None => (format!("\"{}\"", file.etag), file.content_type.clone()),
    };
    let remaining = (expires - yun_types::unix_now()).clamp(0, 86_400);
    let mut out = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert(name, v);
        }
    };
    set(header::ETAG, etag.clone());
    set(
        header::CACHE_CONTROL,
        format!("public, max-age={remaining}"),
    );
    set(
        header::ACCEPT_RANGES,
        if image.is_some() { "none" } else { "bytes" }.into(),
    );
    set(header::CONTENT_TYPE, content_type);
    set(
        header::CONTENT_DISPOSITION,
        disposition(&file, pairs.iter().any(|(k, _)| k == "download")),
    );
    set(header::LAST_MODIFIED, httpdate(file.created_at / 1000));
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    if let Some((_, ops)) = image {
        return match app.render_image(&env, &file, &ops).await {
            Ok(rendered) => {
                set(header::CONTENT_LENGTH, rendered.bytes.len().to_string());
                let body = if method == Method::HEAD {
                    Body::empty()
                } else {
                    Body::from(rendered.bytes)
                };
                (StatusCode::OK, out, body).into_response()
            }
            Err(e) => json_error(&e),
        };
    }
    let range = match byte_range(&headers, file.size) {
        Ok(r) => r,
        Err(()) => {
            set(header::CONTENT_RANGE, format!("bytes */{}", file.size));
            return (StatusCode::RANGE_NOT_SATISFIABLE, out).into_response();
        }
    };
    let (status, length) = match &range {
        Some(r) => {
            set(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, file.size),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, file.size),
    };
    set(header::CONTENT_LENGTH, length.to_string());
    if method == Method::HEAD {
        return (status, out).into_response();
    }
    match app.read_file(&env, &file, range).await {
        Ok(stream) => (status, out, Body::from_stream(stream)).into_response(),
        Err(e) => json_error(&e),
    }
}

/// The `imageMogr2/…` processing a download URL asks for, if any, and what it yields.
fn image_request(
    pairs: &[(String, Option<String>)],
    content_type: &str,
) -> Result<Option<(OutputFormat, ImageOps)>, YunError> {
    let spec = pairs.iter().find_map(|(key, _)| {
        let spec = key.strip_prefix("imageMogr2")?;
        (spec.is_empty() || spec.starts_with('/')).then_some(spec)
    });
    let Some(spec) = spec else {
        return Ok(None);
    };
    let ops = ImageOps::parse(spec)?;
    Ok(Some((ops.output_format(content_type)?, ops)))
}

fn httpdate(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// `PUT`: the node-sdk's upload step (raw body, chunked, no content length).
pub async fn upload_put(
    State(app): State<AppState>,
    Path((env, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let result = async {
        let env = env_of(&env)?;
        let authorization = header("authorization")
            .or_else(|| header("signature"))
            .ok_or_else(|| YunError::new(ErrorCode::StorageSignInvalid, "no authorization"))?;
        let token = header("x-cos-security-token").ok_or_else(|| {
            YunError::new(ErrorCode::StorageSignInvalid, "no x-cos-security-token")
        })?;
        app.upload_signed(
            &env,
            &path,
            token,
            authorization,
            header("content-type"),
            body.into_data_stream(),
        )
        .await
    }
    .await;
    match result {
        Ok(file) => (
            StatusCode::OK,
            [(header::ETAG, format!("\"{}\"", file.etag))],
        )
            .into_response(),
        Err(e) => xml_error(&e),
    }
}

/// `POST` form upload (tcb-admin-node, the js-sdk): fields, then `file` last.
pub async fn upload_form(
    State(app): State<AppState>,
    Path((env, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let mut form = match Multipart::from_request(request, &()).await {
        Ok(form) => form,
        Err(e) => return xml_error(&YunError::invalid_param(e.body_text())),
    };
    let mut fields = std::collections::HashMap::new();
    let mut stored = None;
    let result = async {
        let env = env_of(&env)?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| YunError::invalid_param(e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_ascii_lowercase();
            if name == "file" {
                if let Some(key) = fields.get("key") {
                    if key != &path {
                        return Err(YunError::invalid_param(
                            "the form's key is not the URL's path",
                        ));
                    }
                }
                let field_type = field.content_type().map(str::to_owned);
                let authorization = fields
                    .get("signature")
                    .or_else(|| fields.get("authorization"))
                    .cloned()
                    .unwrap_or_default();
                let token = fields
                    .get("x-cos-security-token")
                    .cloned()
                    .unwrap_or_default();
                let content_type = fields.get("content-type").cloned().or(field_type);
                stored = Some(
                    app.upload_signed(
                        &env,
                        &path,
                        &token,
                        &authorization,
                        content_type.as_deref(),
                        field.map_err(|e| e.body_text()),
                    )
                    .await?,
                );
            } else {
                let value = field
                    .text()
                    .await
                    .map_err(|e| YunError::invalid_param(e.body_text()))?;
                fields.insert(name, value);
            }
        }
        stored
            .take()
            .ok_or_else(|| YunError::invalid_param("the form has no file field"))
    }
    .await;
    match result {
        Ok(file) => {
            let status = match fields.get("success_action_status").map(String::as_str) {
                Some("201") => StatusCode::CREATED,
                Some("200") => StatusCode::OK,
                _ => StatusCode::NO_CONTENT,
            };
            (status, [(header::ETAG, format!("\"{}\"", file.etag))]).into_response()
        }
        Err(e) => xml_error(&e),
    }
}
