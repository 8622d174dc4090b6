//! The management API: REST + JSON under `/api/v1`, authenticated with an env's key as
//! HTTP Basic (`SecretId:SecretKey`). The CLI uses only this. Errors are
//! `{"error": {"code", "message"}}` with the status from the error table.
//!
//! Routes are listed once in [`management_routes`]; the router is built from that list
//! and a test checks it against `openapi.json`, so the document cannot drift.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, RawPathParams, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use yun_app::{CallerContext, DeployRequest, Identity, LogFilter, NewTrigger};
use yun_types::{new_sortable_id, EnvId, ErrorCode, FunctionName, YunError};

use crate::AppState;

pub const OPENAPI: &str = include_str!("../openapi.json");

/// A deploy carries the code base64-encoded: 64 MiB of archive.
const DEPLOY_BODY_LIMIT: usize = 90 << 20;
const JSON_BODY_LIMIT: usize = 8 << 20;

pub struct ApiError {
    error: YunError,
    request_id: Option<String>,
}

impl From<YunError> for ApiError {
    fn from(error: YunError) -> Self {
        Self {
            error,
            request_id: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "error": { "code": self.error.code.cloudbase(), "message": self.error.message } });
        if let Some(id) = self.request_id {
            body["request_id"] = Value::String(id);
        }
        (status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), YunError> {
    let missing = || {
        YunError::new(
            ErrorCode::SignParamInvalid,
            "send the key as HTTP Basic auth: SecretId:SecretKey",
        )
    };
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let encoded = value.strip_prefix("Basic ").ok_or_else(missing)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| missing())?;
    let text = String::from_utf8(decoded).map_err(|_| missing())?;
    let (id, key) = text.split_once(':').ok_or_else(missing)?;
    Ok((id.to_owned(), key.to_owned()))
}

/// The caller, authenticated with its key and admitted to the `{env}` of the path. A
/// handler taking this can only act in that env.
pub struct InEnv(Identity);

/// The caller in its own key's env: the env-level routes (`/api/v1/envs`).
pub struct KeyHolder(Identity);

async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    env: Option<&str>,
) -> Result<Identity, ApiError> {
    let (id, key) = basic_credentials(headers)?;
    let env = env
        .map(|e| EnvId::parse(e).map_err(|e| YunError::new(ErrorCode::InvalidEnv, e.to_string())))
        .transpose()?;
    Ok(app.authenticate_key(&id, &key, env.as_ref()).await?)
}

impl FromRequestParts<AppState> for InEnv {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(|e| YunError::invalid_param(e.to_string()))?;
        let env = params
            .iter()
            .find(|(name, _)| *name == "env")
            .map(|(_, value)| value.to_owned());
        let env = env.ok_or_else(|| YunError::internal("InEnv used on a route without {env}"))?;
        Ok(Self(authenticate(app, &parts.headers, Some(&env)).await?))
    }
}

impl FromRequestParts<AppState> for KeyHolder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(Self(authenticate(app, &parts.headers, None).await?))
    }
}

fn function_name(name: &str) -> Result<FunctionName, YunError> {
    FunctionName::parse(name).map_err(|e| YunError::invalid_param(e.to_string()))
}

async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, YunError> {
    let bytes = crate::body::read(body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| YunError::invalid_param(format!("invalid JSON body: {e}")))
}

// ---- envs ----

async fn list_envs(State(app): State<AppState>, KeyHolder(who): KeyHolder) -> ApiResult {
    ok(json!({ "envs": app.list_envs(&who).await? }))
}

#[derive(Deserialize)]
struct CreateEnv {
    id: String,
}

async fn create_env(
    State(app): State<AppState>,
    KeyHolder(who): KeyHolder,
    body: Body,
) -> ApiResult {
    let req: CreateEnv = json_body(body, JSON_BODY_LIMIT).await?;
    let env = EnvId::parse(&req.id).map_err(|e| YunError::invalid_param(e.to_string()))?;
    let (record, key) = app.create_env(&who, &env).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "env": record, "key": key })),
    )
        .into_response())
}

async fn delete_env(
    State(app): State<AppState>,
    KeyHolder(who): KeyHolder,
    Path(env): Path<String>,
) -> ApiResult {
    let env =
        EnvId::parse(&env).map_err(|e| YunError::new(ErrorCode::InvalidEnv, e.to_string()))?;
    app.delete_env(&who, &env).await?;
    ok(json!({ "deleted": env }))
}

async fn get_settings(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "settings": app.env_settings_of(&who).await? }))
}

async fn put_settings(State(app): State<AppState>, InEnv(who): InEnv, body: Body) -> ApiResult {
    let settings: yun_app::EnvSettings = json_body(body, JSON_BODY_LIMIT).await?;
    ok(json!({ "settings": app.put_env_settings(&who, settings).await? }))
}

// ---- keys ----

async fn list_keys(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "keys": app.list_keys(&who).await? }))
}

#[derive(Deserialize, Default)]
struct CreateKey {
    #[serde(default)]
    description: String,
}

async fn create_key(State(app): State<AppState>, InEnv(who): InEnv, body: Body) -> ApiResult {
    let req: CreateKey = json_body(body, JSON_BODY_LIMIT).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": app.create_key(&who, &req.description).await? })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ShowKey {
    #[serde(default)]
    reveal: bool,
}

async fn own_key(
    State(app): State<AppState>,
    KeyHolder(who): KeyHolder,
    Query(q): Query<ShowKey>,
) -> ApiResult {
    ok(json!({ "key": app.own_key(&who, q.reveal).await? }))
}

async fn revoke_key(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, secret_id)): Path<(String, String)>,
) -> ApiResult {
    app.revoke_key(&who, &secret_id).await?;
    ok(json!({ "revoked": secret_id }))
}

// ---- functions ----

async fn list_functions(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    let functions = app.list_functions(&who).await?;
    let listed: Vec<Value> = functions
        .into_iter()
        .map(|f| {
            let (idle, busy) = app.runtime().instance_counts(&f.spec.env, &f.spec.name);
            let mut v = serde_json::to_value(&f).unwrap_or_default();
            v["instances"] = json!({ "idle": idle, "busy": busy });
            v
        })
        .collect();
    ok(json!({ "functions": listed }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    code_base64: String,
    handler: Option<String>,
    timeout_ms: Option<u64>,
    memory_mb: Option<u32>,
    max_instances: Option<u32>,
    env_vars: Option<BTreeMap<String, String>>,
    http_path: Option<String>,
    async_retry: Option<yun_meta::AsyncRetry>,
    triggers: Option<Vec<NewTrigger>>,
}

async fn deploy_function(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let name = function_name(&name)?;
    let req: Deploy = json_body(body, DEPLOY_BODY_LIMIT).await?;
    let archive = base64::engine::general_purpose::STANDARD
        .decode(req.code_base64.as_bytes())
        .map_err(|e| YunError::invalid_param(format!("code_base64 is not base64: {e}")))?;
    let request = DeployRequest {
        archive,
        handler: req.handler,
        timeout_ms: req.timeout_ms,
        memory_mb: req.memory_mb,
        max_instances: req.max_instances,
        env_vars: req.env_vars,
        http_path: req.http_path,
        async_retry: req.async_retry,
        triggers: req.triggers,
    };
    ok(json!({ "function": app.deploy(&who, &name, request).await? }))
}

async fn get_function(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({ "function": app.get_function(&who, &function_name(&name)?).await? }))
}

async fn delete_function(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    app.delete_function(&who, &function_name(&name)?).await?;
    ok(json!({ "deleted": name }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeParams {
    /// Queue the event and answer its request id at once (SCF's `InvocationType: Event`).
    #[serde(default, rename = "async")]
    queued: bool,
}

async fn invoke_function(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(params): Query<InvokeParams>,
    body: Body,
) -> ApiResult {
    let name = function_name(&name)?;
    let bytes = crate::body::read(body, JSON_BODY_LIMIT).await?;
    let event = String::from_utf8(bytes.to_vec())
        .map_err(|_| YunError::invalid_param("the event must be UTF-8 JSON"))?;
    if params.queued {
        let caller = CallerContext {
            source: "async".into(),
            ..CallerContext::default()
        };
        let request_id = app.invoke_async(&who, &name, event, &caller).await?;
        return ok(json!({ "request_id": request_id, "queued": true }));
    }
    let caller = CallerContext {
        request_id: new_sortable_id(),
        source: "management_api".into(),
        client_ip: Some(peer.ip().to_string()),
        seq_id: None,
        parent_request_id: None,
    };
    let invocation = app.invoke(&who, &name, event, &caller).await?;
    match invocation.result {
        Ok(value) => {
            let result: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            ok(json!({
                "request_id": invocation.request_id,
                "result": result,
                "cold_start": invocation.cold_start,
                "duration_ms": invocation.duration_ms,
            }))
        }
        Err(error) => Err(ApiError {
            error,
            request_id: Some(invocation.request_id),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterParams {
    request_id: Option<String>,
}

async fn list_dead_letters(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult {
    let name = function_name(&name)?;
    let letters = app
        .dead_letters(&who, &name, params.request_id.as_deref())
        .await?;
    ok(json!({ "dead_letters": letters }))
}

async fn replay_dead_letters(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult {
    let name = function_name(&name)?;
    let replayed = app
        .replay_dead_letters(&who, &name, params.request_id.as_deref())
        .await?;
    ok(json!({ "replayed": replayed }))
}

async fn purge_dead_letters(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult {
    let name = function_name(&name)?;
    let purged = app
        .purge_dead_letters(&who, &name, params.request_id.as_deref())
        .await?;
    ok(json!({ "purged": purged }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Concurrency {
    /// Instances at most; 0 disables the function; null clears the reservation.
    reserved: Option<u32>,
}

async fn set_concurrency(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let name = function_name(&name)?;
    let req: Concurrency = json_body(body, JSON_BODY_LIMIT).await?;
    ok(json!({ "function": app.set_reserved_concurrency(&who, &name, req.reserved).await? }))
}

async fn list_function_triggers(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    let name = function_name(&name)?;
    ok(json!({ "triggers": app.list_triggers(&who, Some(&name)).await? }))
}

async fn list_env_triggers(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "triggers": app.list_triggers(&who, None).await? }))
}

async fn create_trigger(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let name = function_name(&name)?;
    let trigger: NewTrigger = json_body(body, JSON_BODY_LIMIT).await?;
    ok(json!({ "trigger": app.create_trigger(&who, &name, trigger).await? }))
}

async fn delete_trigger(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name, trigger)): Path<(String, String, String)>,
) -> ApiResult {
    let name = function_name(&name)?;
    app.delete_trigger(&who, &name, &trigger).await?;
    ok(json!({ "deleted": trigger }))
}

async fn function_logs(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(filter): Query<LogFilter>,
) -> ApiResult {
    ok(json!({ "logs": app.logs(&who, Some(&function_name(&name)?), filter).await? }))
}

async fn env_logs(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Query(filter): Query<LogFilter>,
) -> ApiResult {
    ok(json!({ "logs": app.logs(&who, None, filter).await? }))
}

async fn create_backup(State(app): State<AppState>, KeyHolder(who): KeyHolder) -> ApiResult {
    Ok((
        StatusCode::CREATED,
        Json(json!({ "backup": app.create_backup(&who).await? })),
    )
        .into_response())
}

async fn list_backups(State(app): State<AppState>, KeyHolder(who): KeyHolder) -> ApiResult {
    ok(json!({ "backups": app.list_backups(&who).await? }))
}

async fn export_env(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    use axum::http::header;
    use futures_util::StreamExt as _;
    let archive = app.export_env(&who, &who.env).await?;
    let file = tokio::fs::File::open(&archive.path)
        .await
        .map_err(YunError::internal)?;
    let size = file.metadata().await.map_err(YunError::internal)?.len();
    let counts = serde_json::to_string(&archive.counts).map_err(YunError::internal)?;
    let disposition = format!("attachment; filename=\"{}.yun.tar.gz\"", who.env);
    // The archive's folder goes when the stream that reads it is done.
    let body = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        let _held = &archive;
        chunk
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::HeaderName::from_static("yun-export-counts"), counts),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn import_env(
    State(app): State<AppState>,
    KeyHolder(who): KeyHolder,
    body: Body,
) -> ApiResult {
    let (env, counts) = app.import_env(&who, body.into_data_stream()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "env": env, "imported": counts })),
    )
        .into_response())
}

async fn list_alerts(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "alerts": app.list_alerts(&who).await? }))
}

async fn create_alert(State(app): State<AppState>, InEnv(who): InEnv, body: Body) -> ApiResult {
    let new: yun_app::ops::NewAlert = json_body(body, JSON_BODY_LIMIT).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "alert": app.create_alert(&who, new).await? })),
    )
        .into_response())
}

async fn delete_alert(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    app.delete_alert(&who, &name).await?;
    ok(json!({ "deleted": name }))
}

async fn test_alert(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({ "delivery": app.test_alert(&who, &name).await? }))
}

async fn get_trace(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, request_id)): Path<(String, String)>,
) -> ApiResult {
    ok(app.trace(&who, &request_id).await?)
}

async fn env_usage(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Query(query): Query<yun_app::UsageQuery>,
) -> ApiResult {
    ok(app.usage(&who, query).await?)
}

/// `GET /metrics`: Prometheus text, for a platform key (HTTP Basic, as a scrape config's
/// `basic_auth` sends it).
pub(crate) async fn metrics(State(app): State<AppState>, KeyHolder(who): KeyHolder) -> ApiResult {
    match app.metrics_text(&who).await? {
        Some(text) => Ok((
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response()),
        None => Err(YunError::new(
            ErrorCode::NotFound,
            "metrics are off (yun dev --no-metrics)",
        )
        .into()),
    }
}

#[derive(Deserialize)]
struct LimitParams {
    limit: Option<u32>,
}

async fn function_invocations(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
    Query(params): Query<LimitParams>,
) -> ApiResult {
    let name = function_name(&name)?;
    ok(
        json!({ "invocations": app.invocations(&who, Some(&name), params.limit.unwrap_or(100)).await? }),
    )
}

async fn get_invocation(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, request_id)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({ "invocation": app.invocation(&who, &request_id).await? }))
}

// ---- database ----

async fn list_collections(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "collections": app.db_list_collections(&who).await? }))
}

#[derive(Deserialize)]
struct CreateCollection {
    name: String,
}

async fn create_collection(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    body: Body,
) -> ApiResult {
    let req: CreateCollection = json_body(body, JSON_BODY_LIMIT).await?;
    app.db_create_collection(&who, &req.name).await?;
    Ok((StatusCode::CREATED, Json(json!({ "created": req.name }))).into_response())
}

async fn drop_collection(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult {
    app.db_drop_collection(&who, &name).await?;
    ok(json!({ "dropped": name }))
}

async fn list_indexes(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({ "indexes": app.db_list_indexes(&who, &collection).await? }))
}

async fn create_index(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let spec: yun_docdb::index::IndexSpec = json_body(body, JSON_BODY_LIMIT).await?;
    app.db_create_index(&who, &collection, spec.clone()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "index": spec }))).into_response())
}

async fn drop_index(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection, name)): Path<(String, String, String)>,
) -> ApiResult {
    app.db_drop_index(&who, &collection, &name).await?;
    ok(json!({ "dropped": name }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    #[serde(default)]
    r#where: Option<Value>,
    #[serde(default)]
    order: Option<Value>,
    #[serde(default)]
    skip: usize,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    projection: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ImportMode {
    Insert,
    Upsert,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    mode: ImportMode,
    /// Relaxed or canonical EJSON documents.
    documents: Vec<Value>,
}

/// All or nothing: one write, so a bad document or a duplicate leaves the collection as it was.
async fn import_documents(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let req: ImportRequest = json_body(body, DEPLOY_BODY_LIMIT).await?;
    let now = yun_types::unix_ms();
    let docs = req
        .documents
        .into_iter()
        .map(|d| yun_docdb::value::from_ejson(d, now))
        .collect::<Result<Vec<_>, _>>()?;
    let (inserted, replaced) = app
        .db_import(
            &who,
            &collection,
            docs,
            matches!(req.mode, ImportMode::Upsert),
        )
        .await?;
    ok(json!({ "inserted": inserted, "replaced": replaced }))
}

/// A quick read for people and scripts: relaxed EJSON in, relaxed EJSON out.
impl QueryRequest {
    /// The query as the database takes it (`where` in EJSON).
    fn into_find(self) -> Result<yun_docdb::Find, YunError> {
        use yun_docdb::{
            filter::Filter,
            find::{Projection, SortKeys},
            value,
        };
        let filter = value::from_ejson(
            self.r#where.unwrap_or_else(|| json!({})),
            yun_types::unix_ms(),
        )?;
        Ok(yun_docdb::Find {
            filter: Filter::parse(&filter)?,
            order: self
                .order
                .map(|o| SortKeys::parse(&o))
                .transpose()?
                .unwrap_or_default(),
            skip: self.skip,
            limit: self.limit,
            projection: self
                .projection
                .map(|p| Projection::parse(&p))
                .transpose()?
                .unwrap_or(Projection::All),
        })
    }
}

async fn query_collection(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    use yun_docdb::value;
    let req: QueryRequest = json_body(body, JSON_BODY_LIMIT).await?;
    let docs = app.db_find(&who, &collection, req.into_find()?).await?;
    ok(json!({ "documents": docs.iter().map(value::Ejson).collect::<Vec<_>>() }))
}

/// Runs a query and answers its plan and cost instead of its documents.
async fn explain_query(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let req: QueryRequest = json_body(body, JSON_BODY_LIMIT).await?;
    let report = app.db_explain(&who, &collection, req.into_find()?).await?;
    ok(json!(report))
}

async fn slow_queries(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "queries": app.db_slow_queries(&who)? }))
}

// ---- storage ----

fn file_json(env: &EnvId, file: &yun_storage::FileRecord) -> Value {
    let mut value = serde_json::to_value(file).unwrap_or_default();
    value["fileId"] = Value::String(yun_storage::file_id(env, &file.path));
    value
}

#[derive(Deserialize)]
struct ListFiles {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

async fn list_files(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Query(params): Query<ListFiles>,
) -> ApiResult {
    let limit = params.limit.unwrap_or(yun_app::MAX_LIST_PAGE);
    let files = app
        .list_files(&who, &params.prefix, &params.after, limit)
        .await?;
    let next = (files.len() == limit).then(|| files.last().map(|f| f.path.clone()));
    ok(json!({
        "files": files.iter().map(|f| file_json(&who.env, f)).collect::<Vec<_>>(),
        "next": next.flatten(),
    }))
}

async fn upload_file(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let file = app
        .put_file(&who, &path, content_type, body.into_data_stream())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "file": file_json(&who.env, &file) })),
    )
        .into_response())
}

async fn download_file(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, path)): Path<(String, String)>,
) -> ApiResult {
    use axum::http::header;
    let file = app.stat_file(&who, &path).await?;
    let stream = app.read_file(&who.env, &file, None).await?;
    Ok((
        [
            (header::CONTENT_TYPE, file.content_type.clone()),
            (header::CONTENT_LENGTH, file.size.to_string()),
            (header::ETAG, format!("\"{}\"", file.etag)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn delete_file(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, path)): Path<(String, String)>,
) -> ApiResult {
    app.delete_file(&who, &path).await?;
    ok(json!({ "deleted": path }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyFile {
    from: String,
    to: String,
    #[serde(default = "yes")]
    overwrite: bool,
    #[serde(default, rename = "move")]
    move_original: bool,
}

fn yes() -> bool {
    true
}

async fn copy_file(State(app): State<AppState>, InEnv(who): InEnv, body: Body) -> ApiResult {
    let req: CopyFile = json_body(body, JSON_BODY_LIMIT).await?;
    let copied = app
        .copy_files(
            &who,
            vec![(req.from, req.to.clone(), req.overwrite, req.move_original)],
        )
        .await?
        .pop()
        .ok_or_else(|| YunError::internal("a copy returned no outcome"))?;
    ok(json!({ "file": file_json(&who.env, &copied.result?) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileUrls {
    files: Vec<String>,
    max_age: Option<i64>,
}

/// Temporary URLs, all or nothing: the first missing file fails the request.
async fn file_urls(State(app): State<AppState>, InEnv(who): InEnv, body: Body) -> ApiResult {
    let req: FileUrls = json_body(body, JSON_BODY_LIMIT).await?;
    let mut urls = Vec::with_capacity(req.files.len());
    for name in req.files {
        let url = app.file_url(&who, &name, req.max_age).await?;
        urls.push(json!({ "file": name, "url": url }));
    }
    ok(json!({ "urls": urls }))
}

#[derive(Deserialize)]
struct UserPage {
    after: Option<String>,
    limit: Option<usize>,
}

/// End users, one page at a time in id order; `next` is the `after` of the next page.
async fn list_users(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Query(page): Query<UserPage>,
) -> ApiResult {
    let limit = page.limit.unwrap_or(100).clamp(1, yun_app::MAX_USER_PAGE);
    let users = app
        .list_users(&who, page.after.as_deref().unwrap_or(""), limit)
        .await?;
    let next = (users.len() == limit).then(|| users.last().map(|u| u.uid.clone()));
    ok(json!({ "users": users, "next": next.flatten() }))
}

async fn get_user(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, uid)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({ "user": app.get_user(&who, &uid).await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    disabled: bool,
}

async fn patch_user(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, uid)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let patch: UserPatch = json_body(body, JSON_BODY_LIMIT).await?;
    app.set_user_disabled(&who, &uid, patch.disabled).await?;
    ok(json!({ "user": app.get_user(&who, &uid).await? }))
}

async fn delete_user(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, uid)): Path<(String, String)>,
) -> ApiResult {
    app.delete_user(&who, &uid).await?;
    ok(json!({ "deleted": uid }))
}

async fn list_ticket_keys(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(json!({ "keys": app.list_ticket_keys(&who).await? }))
}

/// The key file for `@cloudbase/node-sdk` `credentials`; its private key is shown only here.
async fn create_ticket_key(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    let key = app.create_ticket_key(&who).await?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

async fn delete_ticket_key(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, kid)): Path<(String, String)>,
) -> ApiResult {
    app.delete_ticket_key(&who, &kid).await?;
    ok(json!({ "deleted": kid }))
}

async fn rotate_signing_key(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    app.rotate_user_key(&who).await?;
    ok(json!({ "rotated": true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRules {
    rules: Value,
}

async fn get_collection_rules(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
) -> ApiResult {
    ok(app
        .get_rules(&who, &yun_app::RulesTarget::Collection(collection))
        .await?)
}

async fn put_collection_rules(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let req: PutRules = json_body(body, JSON_BODY_LIMIT).await?;
    let target = yun_app::RulesTarget::Collection(collection);
    ok(app.set_rules(&who, &target, Some(&req.rules)).await?)
}

async fn delete_collection_rules(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    Path((_, collection)): Path<(String, String)>,
) -> ApiResult {
    let target = yun_app::RulesTarget::Collection(collection);
    ok(app.set_rules(&who, &target, None).await?)
}

async fn get_storage_rules(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(app.get_rules(&who, &yun_app::RulesTarget::Storage).await?)
}

async fn put_storage_rules(
    State(app): State<AppState>,
    InEnv(who): InEnv,
    body: Body,
) -> ApiResult {
    let req: PutRules = json_body(body, JSON_BODY_LIMIT).await?;
    ok(app
        .set_rules(&who, &yun_app::RulesTarget::Storage, Some(&req.rules))
        .await?)
}

async fn delete_storage_rules(State(app): State<AppState>, InEnv(who): InEnv) -> ApiResult {
    ok(app
        .set_rules(&who, &yun_app::RulesTarget::Storage, None)
        .await?)
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    handler: H,
) -> (Method, &'static str, MethodRouter<AppState>)
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter =
        MethodFilter::try_from(method.clone()).expect("management routes use standard methods");
    (method, path, on(filter, handler))
}

/// Every management route: (method, path, handler). The router and the OpenAPI drift
/// test both read this list.
pub fn management_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        route(Method::GET, "/api/v1/openapi.json", openapi),
        route(Method::GET, "/api/v1/envs", list_envs),
        route(Method::POST, "/api/v1/envs", create_env),
        route(Method::DELETE, "/api/v1/envs/{env}", delete_env),
        route(Method::GET, "/api/v1/key", own_key),
        route(Method::GET, "/api/v1/envs/{env}/keys", list_keys),
        route(Method::POST, "/api/v1/envs/{env}/keys", create_key),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/keys/{secret_id}",
            revoke_key,
        ),
        route(Method::GET, "/api/v1/envs/{env}/functions", list_functions),
        route(
            Method::GET,
            "/api/v1/envs/{env}/functions/{name}",
            get_function,
        ),
        route(
            Method::PUT,
            "/api/v1/envs/{env}/functions/{name}",
            deploy_function,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/functions/{name}",
            delete_function,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/functions/{name}/invoke",
            invoke_function,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/functions/{name}/logs",
            function_logs,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/functions/{name}/dead-letters",
            list_dead_letters,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/functions/{name}/triggers",
            list_function_triggers,
        ),
        route(
            Method::PUT,
            "/api/v1/envs/{env}/functions/{name}/concurrency",
            set_concurrency,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/functions/{name}/triggers",
            create_trigger,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/functions/{name}/triggers/{trigger}",
            delete_trigger,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/triggers",
            list_env_triggers,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/functions/{name}/dead-letters",
            purge_dead_letters,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/functions/{name}/dead-letters/replay",
            replay_dead_letters,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/functions/{name}/invocations",
            function_invocations,
        ),
        route(Method::GET, "/api/v1/envs/{env}/logs", env_logs),
        route(Method::GET, "/api/v1/envs/{env}/usage", env_usage),
        route(Method::GET, "/api/v1/envs/{env}/alerts", list_alerts),
        route(Method::GET, "/api/v1/backups", list_backups),
        route(Method::POST, "/api/v1/backups", create_backup),
        route(Method::GET, "/api/v1/envs/{env}/export", export_env),
        route(Method::POST, "/api/v1/import", import_env),
        route(Method::POST, "/api/v1/envs/{env}/alerts", create_alert),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/alerts/{name}",
            delete_alert,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/alerts/{name}/test",
            test_alert,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/traces/{request_id}",
            get_trace,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/invocations/{request_id}",
            get_invocation,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/collections",
            list_collections,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/collections",
            create_collection,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/collections/{collection}",
            drop_collection,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/collections/{collection}/query",
            query_collection,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/collections/{collection}/explain",
            explain_query,
        ),
        route(Method::GET, "/api/v1/envs/{env}/slow-queries", slow_queries),
        route(
            Method::POST,
            "/api/v1/envs/{env}/collections/{collection}/import",
            import_documents,
        ),
        route(Method::GET, "/api/v1/envs/{env}/settings", get_settings),
        route(Method::PUT, "/api/v1/envs/{env}/settings", put_settings),
        route(
            Method::GET,
            "/api/v1/envs/{env}/collections/{collection}/indexes",
            list_indexes,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/collections/{collection}/indexes",
            create_index,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/collections/{collection}/indexes/{name}",
            drop_index,
        ),
        route(Method::GET, "/api/v1/envs/{env}/storage/files", list_files),
        route(
            Method::GET,
            "/api/v1/envs/{env}/storage/files/{*path}",
            download_file,
        ),
        route(
            Method::PUT,
            "/api/v1/envs/{env}/storage/files/{*path}",
            upload_file,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/storage/files/{*path}",
            delete_file,
        ),
        route(Method::POST, "/api/v1/envs/{env}/storage/copy", copy_file),
        route(Method::POST, "/api/v1/envs/{env}/storage/urls", file_urls),
        route(
            Method::GET,
            "/api/v1/envs/{env}/collections/{collection}/rules",
            get_collection_rules,
        ),
        route(
            Method::PUT,
            "/api/v1/envs/{env}/collections/{collection}/rules",
            put_collection_rules,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/collections/{collection}/rules",
            delete_collection_rules,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/storage/rules",
            get_storage_rules,
        ),
        route(
            Method::PUT,
            "/api/v1/envs/{env}/storage/rules",
            put_storage_rules,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/storage/rules",
            delete_storage_rules,
        ),
        route(Method::GET, "/api/v1/envs/{env}/users", list_users),
        route(Method::GET, "/api/v1/envs/{env}/users/{uid}", get_user),
        route(Method::PATCH, "/api/v1/envs/{env}/users/{uid}", patch_user),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/users/{uid}",
            delete_user,
        ),
        route(
            Method::GET,
            "/api/v1/envs/{env}/auth/ticket-keys",
            list_ticket_keys,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/auth/ticket-keys",
            create_ticket_key,
        ),
        route(
            Method::DELETE,
            "/api/v1/envs/{env}/auth/ticket-keys/{kid}",
            delete_ticket_key,
        ),
        route(
            Method::POST,
            "/api/v1/envs/{env}/auth/rotate-signing-key",
            rotate_signing_key,
        ),
    ]
}

pub(crate) fn router() -> Router<AppState> {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for (_, path, handler) in management_routes() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn openapi_document_matches_the_routes() {
        let spec: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let documented: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        // OpenAPI writes axum's catch-all `{*path}` as a plain `{path}` parameter.
        let served: BTreeSet<(String, String)> = management_routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_string(), p.replace("{*", "{")))
            .collect();
        assert_eq!(
            documented, served,
            "openapi.json and management_routes() disagree"
        );
    }
}
