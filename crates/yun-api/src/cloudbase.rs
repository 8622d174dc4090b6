//! `POST /admin`: the CloudBase server protocol (`../shared/cloudbase-protocol.md` §1–2).
//! Always HTTP 200 with a JSON body; errors are `{requestId, code, message}`.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use yun_app::{CallerContext, Identity, InstanceBinding, SignedRequest};
use yun_types::{new_sortable_id, EnvId, FunctionName, YunError};

use crate::AppState;

/// Where an instance's calls come from, as its SDK sees Yun (`127.0.0.1:{port}`).
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// `request_data` may be up to 6 MB (SCF's synchronous payload limit); leave room.
const ADMIN_BODY_LIMIT: usize = 8 << 20;

#[derive(Deserialize)]
pub struct AdminQuery {
    env: Option<String>,
    #[serde(rename = "seqId")]
    seq_id: Option<String>,
}

fn error_body(request_id: &str, e: &YunError) -> Value {
    json!({ "requestId": request_id, "code": e.code.cloudbase(), "message": e.message })
}

pub(crate) fn envelope_error(request_id: &str, e: &YunError) -> Response {
    Json(error_body(request_id, e)).into_response()
}

/// `INVALID_ACTION` for an action Yun does not serve.
pub(crate) fn unsupported_action(action: &str) -> YunError {
    YunError::new(
        yun_types::ErrorCode::InvalidAction,
        format!("action {action:?} is not supported by this Yun server"),
    )
}

pub(crate) fn str_param<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, YunError> {
    match body.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(YunError::invalid_param(format!("{key} must be a string"))),
        None => Err(YunError::invalid_param(format!("{key} is required"))),
    }
}

/// `functions.invokeFunction`: `request_data` is the event as JSON text; the result is
/// the function's return value as JSON text. Yun's extension, SCF's field: with
/// `InvocationType: "Event"` the event is queued and the result is at once
/// `{"RequestId": …, "InvocationType": "Event"}` (no official SDK sends it).
pub(crate) async fn invoke_function(
    app: &AppState,
    identity: &Identity,
    body: &Map<String, Value>,
    caller: &CallerContext,
) -> Result<String, YunError> {
    let name = FunctionName::parse(str_param(body, "function_name")?)
        .map_err(|e| YunError::invalid_param(e.to_string()))?;
    let event = match body.get("request_data") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(YunError::invalid_param(
                "request_data must be a JSON string",
            ))
        }
    };
    match body.get("InvocationType").and_then(Value::as_str) {
        None | Some("RequestResponse") => app.invoke(identity, &name, event, caller).await?.result,
        Some("Event") => {
            let request_id = app.invoke_async(identity, &name, event, caller).await?;
            Ok(json!({ "RequestId": request_id, "InvocationType": "Event" }).to_string())
        }
        Some(other) => Err(YunError::invalid_param(format!(
            "InvocationType must be RequestResponse or Event, not {other:?}"
        ))),
    }
}

pub async fn admin(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<AdminQuery>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(&app, peer.ip(), None, query, &uri, &headers, body).await
}

/// `/admin` as a sandboxed instance reaches it, through its own gateway socket.
pub async fn admin_from_instance(
    State(app): State<AppState>,
    Extension(instance): Extension<InstanceBinding>,
    Query(query): Query<AdminQuery>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(&app, LOOPBACK, Some(&instance), query, &uri, &headers, body).await
}

async fn respond(
    app: &AppState,
    peer: IpAddr,
    instance: Option<&InstanceBinding>,
    query: AdminQuery,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_sortable_id();
    let from = Origin { peer, instance };
    let outcome = handle(app, &request_id, from, query, uri, headers, body).await;
    Json(envelope(&request_id, outcome)).into_response()
}

/// `/admin` as an instance calls it over its own channel (the in-function data path,
/// `yun_functions::api`). The caller is the instance's function: there is no signature
/// to check. Everything else is the HTTP route's, down to the envelope's bytes.
pub(crate) async fn admin_from_channel(
    app: &AppState,
    home: &EnvId,
    function: &FunctionName,
    target: &str,
    body: &[u8],
    caused_by: String,
) -> String {
    let request_id = new_sortable_id();
    let outcome = async {
        let uri: Uri = target
            .parse()
            .map_err(|_| YunError::invalid_param("malformed request target"))?;
        if uri.path() != "/admin" {
            return Err(YunError::invalid_param("only /admin is served here"));
        }
        let Query(query) = Query::<AdminQuery>::try_from_uri(&uri)
            .map_err(|e| YunError::invalid_param(e.to_string()))?;
        if body.len() > ADMIN_BODY_LIMIT {
            return Err(crate::body::too_large(ADMIN_BODY_LIMIT));
        }
        let body = parse_body(body)?;
        let env = requested_env(query.env.clone(), &body)?;
        let identity = app.authenticate_instance(home, function, &env).await?;
        let caller = CallerContext {
            request_id: request_id.clone(),
            source: String::new(),
            client_ip: Some(LOOPBACK.to_string()),
            seq_id: query.seq_id,
            parent_request_id: Some(caused_by),
        };
        dispatch(app, &identity, &body, caller).await
    }
    .await;
    envelope(&request_id, outcome).to_string()
}

/// The body every `/admin` answer has: `{requestId, data, …}` or `{requestId, code, message}`.
fn envelope(request_id: &str, outcome: Result<(Value, Map<String, Value>), YunError>) -> Value {
    match outcome {
        Ok((data, extras)) => {
            let mut envelope = extras;
            envelope.insert("requestId".into(), Value::String(request_id.to_owned()));
            envelope.insert("data".into(), data);
            Value::Object(envelope)
        }
        Err(e) => {
            tracing::debug!(code = %e.code, message = %e.message, "admin request failed");
            error_body(request_id, &e)
        }
    }
}

/// Where an `/admin` request came from.
struct Origin<'a> {
    peer: IpAddr,
    instance: Option<&'a InstanceBinding>,
}

async fn handle(
    app: &AppState,
    request_id: &str,
    from: Origin<'_>,
    query: AdminQuery,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Value, Map<String, Value>), YunError> {
    let bytes = crate::body::read(body, ADMIN_BODY_LIMIT).await?;
    let body = parse_body(&bytes)?;
    let env = requested_env(query.env, &body)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let host = header("host").unwrap_or_default();
    let signed = SignedRequest {
        authorization: headers.get("authorization").and_then(|v| v.to_str().ok()),
        timestamp: headers.get("x-timestamp").and_then(|v| v.to_str().ok()),
        expires: headers
            .get("x-signature-expires")
            .and_then(|v| v.to_str().ok()),
        host: &host,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        header: &header,
        body: &body,
        instance: from.instance,
    };
    let identity = app.authenticate_signed(&signed, &env).await?;
    let caller = CallerContext {
        request_id: request_id.to_owned(),
        source: header("x-tcb-source").unwrap_or_default(),
        client_ip: Some(from.peer.to_string()),
        seq_id: query.seq_id,
        parent_request_id: None,
    };
    dispatch(app, &identity, &body, caller).await
}

fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, YunError> {
    serde_json::from_slice(bytes)
        .map_err(|e| YunError::invalid_param(format!("the body must be a JSON object: {e}")))
}

/// The env a call names: `?env=`, else the body's `envName`.
fn requested_env(query_env: Option<String>, body: &Map<String, Value>) -> Result<EnvId, YunError> {
    let env_name = query_env
        .filter(|e| !e.is_empty())
        .or_else(|| {
            body.get("envName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| YunError::invalid_param("no env: pass ?env= or envName"))?;
    EnvId::parse(&env_name)
        .map_err(|e| YunError::new(yun_types::ErrorCode::InvalidEnv, e.to_string()))
}

/// Runs an authenticated call's `action`.
async fn dispatch(
    app: &AppState,
    identity: &Identity,
    body: &Map<String, Value>,
    caller: CallerContext,
) -> Result<(Value, Map<String, Value>), YunError> {
    let action = str_param(body, "action")?;
    match action {
        "functions.invokeFunction" => {
            let value = invoke_function(app, identity, body, &caller).await?;
            Ok((json!({ "response_data": value }), Map::new()))
        }
        database if database.starts_with("database.") => {
            crate::cloudbase_db::handle(app, identity, database, body).await
        }
        storage if storage.starts_with("storage.") => {
            crate::cloudbase_storage::handle(app, identity, storage, body).await
        }
        other => Err(unsupported_action(other)),
    }
}
