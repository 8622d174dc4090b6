//! `POST /web`: the js-sdk's CLOUD_API actions (`../shared/cloudbase-protocol.md` §5.2).
//! No signature: the end user's `access_token` in the body is the credential, and every
//! action runs as that user. Always HTTP 200 with the `{requestId, data}` or
//! `{requestId, code, message}` envelope the SDK reads.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use yun_app::CallerContext;
use yun_types::{new_sortable_id, EnvId, ErrorCode, YunError};

use crate::cloudbase::{envelope_error, invoke_function, str_param, unsupported_action};
use crate::AppState;

/// Same room as `/admin`: `request_data` may be up to 6 MB.
const WEB_BODY_LIMIT: usize = 8 << 20;

#[derive(Deserialize)]
pub struct WebQuery {
    env: Option<String>,
    /// `callFunction({parse: true})`: the result as JSON rather than JSON text.
    parse: Option<String>,
}

pub async fn web(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WebQuery>,
    body: Body,
) -> Response {
    let request_id = new_sortable_id();
    match handle(&app, &request_id, peer, query, body).await {
        Ok(data) => Json(json!({ "requestId": request_id, "data": data })).into_response(),
        Err(e) => {
            tracing::debug!(code = %e.code, message = %e.message, "web request failed");
            envelope_error(&request_id, &e)
        }
    }
}

async fn handle(
    app: &AppState,
    request_id: &str,
    peer: SocketAddr,
    query: WebQuery,
    body: Body,
) -> Result<Value, YunError> {
    let bytes = crate::body::read(body, WEB_BODY_LIMIT).await?;
    let body: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| YunError::invalid_param(format!("the body must be a JSON object: {e}")))?;
    let env_name = query
        .env
        .as_deref()
        .or_else(|| body.get("env").and_then(Value::as_str))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| YunError::invalid_param("no env: pass ?env= or env"))?;
    let env =
        EnvId::parse(env_name).map_err(|e| YunError::new(ErrorCode::InvalidEnv, e.to_string()))?;
    let action = str_param(&body, "action")?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            YunError::new(
                ErrorCode::Unauthenticated,
                format!("{action} needs a signed-in user (access_token)"),
            )
        })?;
    let session = app.authenticate_token(token, Some(&env)).await?;
    let identity = &session.identity;
    match action {
        "functions.invokeFunction" => {
            let caller = CallerContext {
                request_id: request_id.to_owned(),
                source: "web".into(),
                client_ip: Some(peer.ip().to_string()),
                seq_id: body.get("seqId").and_then(Value::as_str).map(str::to_owned),
                parent_request_id: None,
            };
            let text = invoke_function(app, identity, &body, &caller).await?;
            let response_data = if query.parse.as_deref() == Some("true") {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            } else {
                Value::String(text)
            };
            Ok(json!({ "response_data": response_data }))
        }
        database if database.starts_with("database.") => {
            crate::web_db::handle(app, identity, database, &body).await
        }
        // The same actions as `/admin`; `yun-app` decides what an end user may do.
        storage if storage.starts_with("storage.") => Ok(crate::cloudbase_storage::handle(
            app, identity, storage, &body,
        )
        .await?
        .0),
        other => Err(unsupported_action(other)),
    }
}
