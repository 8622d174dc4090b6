//! `/auth/v1/*`: end-user sign-in as `@cloudbase/js-sdk` 3.x speaks it
//! (`../shared/cloudbase-protocol.md` §5.4). OAuth2-style JSON: credentials on success,
//! `{error, error_description}` on failure (the SDK reads the body, not the status).
//!
//! The env comes from the Bearer token when there is one, else from `client_id` (query
//! or body) or HTTP Basic (`client_id:secret`); the js-sdk's client id is the env id.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use yun_app::{Session, UserSession};
use yun_types::{EnvId, ErrorCode, YunError};

use crate::AppState;

const AUTH_BODY_LIMIT: usize = 64 << 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/v1/signin/anonymously", post(sign_in_anonymously))
        .route("/auth/v1/signup", post(sign_up))
        .route("/auth/v1/signin", post(sign_in))
        .route("/auth/v1/signin/custom", post(sign_in_custom))
        .route("/auth/v1/token", post(token))
        .route("/auth/v1/revoke", post(revoke))
        .route("/auth/v1/user/me", get(me))
        .route("/auth/v1/user/signout", post(sign_out))
        .route("/auth/v1/user/sudo", post(sudo))
        .route("/auth/v1/user/password", patch(set_password))
        .route("/auth/{*rest}", axum::routing::any(unsupported))
}

/// An OAuth-style error. `invalid_credentials` names the error a wrong secret gets on
/// this endpoint (`invalid_password` on sign-in, `invalid_grant` for refresh tokens).
struct AuthError {
    error: YunError,
    invalid_credentials: &'static str,
}

impl From<YunError> for AuthError {
    fn from(error: YunError) -> Self {
        Self {
            error,
            invalid_credentials: "invalid_password",
        }
    }
}

fn grant_error(error: YunError) -> AuthError {
    AuthError {
        error,
        invalid_credentials: "invalid_grant",
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, error) = match self.error.code {
            ErrorCode::Unauthenticated | ErrorCode::AccessTokenExpired => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            ErrorCode::InvalidCredentials => (StatusCode::BAD_REQUEST, self.invalid_credentials),
            ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            ErrorCode::NotFound | ErrorCode::InvalidEnv => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::InvalidAction => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            _ => (StatusCode::BAD_REQUEST, "invalid_argument"),
        };
        (
            status,
            Json(json!({
                "error": error,
                "error_code": self.error.code.cloudbase(),
                "error_description": self.error.message,
            })),
        )
            .into_response()
    }
}

type AuthResult = Result<Response, AuthError>;

#[derive(Deserialize)]
struct ClientQuery {
    client_id: Option<String>,
}

/// The js-sdk sends JSON as `text/plain`: the body is parsed whatever its content type.
async fn json_body(body: Body) -> Result<Map<String, Value>, YunError> {
    let bytes = crate::body::read(body, AUTH_BODY_LIMIT).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| YunError::invalid_param(format!("the body must be a JSON object: {e}")))
}

fn text<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, YunError> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| YunError::invalid_param(format!("{key} is required")))
}

/// The env a credential-less request is for.
fn client_env(
    query: &ClientQuery,
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<EnvId, YunError> {
    let basic = || {
        let value = headers.get("authorization")?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        Some(
            decoded
                .split_once(':')
                .map_or(decoded.clone(), |(id, _)| id.to_owned()),
        )
    };
    let client_id = query
        .client_id
        .clone()
        .or_else(|| {
            body.get("client_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(basic)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| YunError::invalid_param("client_id (the env id) is required"))?;
    EnvId::parse(&client_id).map_err(|e| YunError::new(ErrorCode::InvalidEnv, e.to_string()))
}

/// A credential-less `/auth` request: its env (see [`client_env`]) and JSON body.
struct ClientRequest {
    env: EnvId,
    body: Map<String, Value>,
}

impl FromRequest<AppState> for ClientRequest {
    type Rejection = AuthError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AuthError> {
        let (mut parts, body) = req.into_parts();
        let Query(query) = Query::<ClientQuery>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| YunError::invalid_param(e.to_string()))?;
        let body = json_body(body).await?;
        let env = client_env(&query, &parts.headers, &body)?;
        Ok(Self { env, body })
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, YunError> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            YunError::new(
                ErrorCode::Unauthenticated,
                "a Bearer access token is required",
            )
        })
}

async fn signed_in(app: &AppState, headers: &HeaderMap) -> Result<UserSession, YunError> {
    app.authenticate_token(bearer(headers)?, None).await
}

/// Credentials as the js-sdk stores them.
fn credentials(session: Session) -> Response {
    Json(json!({
        "token_type": "Bearer",
        "access_token": session.access_token,
        "refresh_token": session.refresh_token,
        "expires_in": session.expires_in,
        "sub": session.user.uid,
        "scope": if session.user.anonymous { "anonymous" } else { "user" },
        "groups": [],
    }))
    .into_response()
}

async fn sign_in_anonymously(
    State(app): State<AppState>,
    ClientRequest { env, .. }: ClientRequest,
) -> AuthResult {
    Ok(credentials(app.sign_in_anonymously(&env).await?))
}

async fn sign_up(
    State(app): State<AppState>,
    ClientRequest { env, body }: ClientRequest,
) -> AuthResult {
    let session = app
        .sign_up(&env, text(&body, "username")?, text(&body, "password")?)
        .await?;
    Ok(credentials(session))
}

async fn sign_in(
    State(app): State<AppState>,
    ClientRequest { env, body }: ClientRequest,
) -> AuthResult {
    if body.get("verification_token").is_some() || body.get("isEncrypt").is_some() {
        return Err(YunError::new(
            ErrorCode::InvalidAction,
            "only username + password sign-in is supported (no verification codes or encrypted passwords)",
        )
        .into());
    }
    let session = app
        .sign_in(&env, text(&body, "username")?, text(&body, "password")?)
        .await?;
    Ok(credentials(session))
}

async fn sign_in_custom(
    State(app): State<AppState>,
    ClientRequest { env, body }: ClientRequest,
) -> AuthResult {
    let session = app
        .sign_in_with_ticket(&env, text(&body, "ticket")?)
        .await
        .map_err(grant_error)?;
    Ok(credentials(session))
}

async fn token(
    State(app): State<AppState>,
    ClientRequest { env, body }: ClientRequest,
) -> AuthResult {
    match body.get("grant_type").and_then(Value::as_str) {
        Some("refresh_token") => {}
        other => {
            return Err(YunError::invalid_param(format!(
                "grant_type {other:?} is not supported; use refresh_token"
            ))
            .into())
        }
    }
    let session = app
        .refresh_session(&env, text(&body, "refresh_token")?)
        .await
        .map_err(grant_error)?;
    Ok(credentials(session))
}

fn iso_time(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

async fn me(State(app): State<AppState>, headers: HeaderMap) -> AuthResult {
    let session = signed_in(&app, &headers).await?;
    let user = &session.user;
    // The js-sdk reads `name == "anonymous"` as "is anonymous".
    let name = if user.anonymous {
        "anonymous".to_owned()
    } else {
        user.username
            .clone()
            .or_else(|| user.custom_id.clone())
            .unwrap_or_default()
    };
    let login_type = match &session.identity.caller {
        yun_app::Caller::User(end_user) => end_user.login_type(),
        _ => "",
    };
    Ok(Json(json!({
        "sub": user.uid,
        "name": name,
        "username": user.username,
        "custom_user_id": user.custom_id,
        "picture": "",
        "email": "",
        "phone_number": "",
        "groups": [],
        "status": if user.disabled { "BLOCKED" } else { "ACTIVE" },
        "loginType": login_type,
        "created_at": iso_time(user.created_at),
    }))
    .into_response())
}

async fn sign_out(State(app): State<AppState>, headers: HeaderMap) -> AuthResult {
    let session = signed_in(&app, &headers).await?;
    app.sign_out(&session).await?;
    Ok(Json(json!({})).into_response())
}

/// `auth.signOut()` without arguments revokes its access token's session here.
async fn revoke(State(app): State<AppState>, body: Body) -> AuthResult {
    let body = json_body(body).await?;
    let session = app.authenticate_token(text(&body, "token")?, None).await?;
    app.sign_out(&session).await?;
    Ok(Json(json!({})).into_response())
}

async fn sudo(State(app): State<AppState>, headers: HeaderMap, body: Body) -> AuthResult {
    let session = signed_in(&app, &headers).await?;
    let body = json_body(body).await?;
    let sudo_token = app.sudo(&session, text(&body, "password")?).await?;
    Ok(Json(json!({ "sudo_token": sudo_token, "expires_in": yun_app::SUDO_SECS })).into_response())
}

async fn set_password(State(app): State<AppState>, headers: HeaderMap, body: Body) -> AuthResult {
    let session = signed_in(&app, &headers).await?;
    let body = json_body(body).await?;
    app.set_password(
        &session,
        text(&body, "sudo_token")?,
        text(&body, "new_password")?,
    )
    .await?;
    Ok(Json(json!({})).into_response())
}

async fn unsupported(uri: axum::http::Uri) -> AuthError {
    YunError::new(
        ErrorCode::InvalidAction,
        format!("{} is not supported by this Yun server", uri.path()),
    )
    .into()
}
