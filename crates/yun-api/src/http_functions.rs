//! HTTP functions: `ANY /{env}/{path}` runs the function whose HTTP path is the longest
//! prefix of `path`. The event follows SCF's API-gateway shape; the function returns a
//! plain value (JSON 200) or `{statusCode, headers, body, isBase64Encoded}`.
//! Public: no key needed, as an SCF HTTP trigger without auth.

use std::borrow::Cow;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};
use yun_app::CallerContext;
use yun_types::{new_sortable_id, EnvId, ErrorCode, YunError};

use crate::AppState;

/// SCF's synchronous request payload limit.
const HTTP_BODY_LIMIT: usize = 6 << 20;
const REQUEST_ID_HEADER: &str = "x-yun-request-id";

fn error_response(e: &YunError, request_id: &str) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        Json(json!({ "error": { "code": e.code.cloudbase(), "message": e.message }, "request_id": request_id })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

pub async fn serve_root(
    state: State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(env): Path<String>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(state, peer, env, "/".into(), method, query, headers, body).await
}

pub async fn serve(
    state: State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((env, path)): Path<(String, String)>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(
        state,
        peer,
        env,
        format!("/{path}"),
        method,
        query,
        headers,
        body,
    )
    .await
}

/// The event SCF's API gateway hands a function, serialized straight from the request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpEvent<'a> {
    http_method: &'a str,
    path: &'a str,
    headers: Headers<'a>,
    query_string_parameters: Query,
    body: &'a str,
    is_base64_encoded: bool,
    request_context: RequestContext<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    request_id: &'a str,
    env_id: &'a str,
    http_method: &'a str,
    path: &'a str,
    source_ip: &'a str,
}

/// Header names to values (text values only). A repeated name appears twice, and the
/// function's JSON.parse keeps the last, as for repeated query keys.
struct Headers<'a>(&'a HeaderMap);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
        )
    }
}

struct Query(Vec<(String, String)>);

impl Serialize for Query {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn parse_query(raw: Option<&str>) -> Query {
    Query(
        raw.unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::too_many_arguments)]
async fn run(
    State(app): State<AppState>,
    peer: SocketAddr,
    env: String,
    path: String,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_sortable_id();
    let not_found = || {
        error_response(
            &YunError::new(ErrorCode::NotFound, "no function serves this path"),
            &request_id,
        )
    };
    let Ok(env) = EnvId::parse(&env) else {
        return not_found();
    };
    let bytes = match crate::body::read(body, HTTP_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, &request_id),
    };
    let (body, is_base64_encoded) = match std::str::from_utf8(&bytes) {
        Ok(text) => (Cow::Borrowed(text), false),
        Err(_) => (
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            true,
        ),
    };
    let client_ip = peer.ip().to_string();
    let event = HttpEvent {
        http_method: method.as_str(),
        path: &path,
        headers: Headers(&headers),
        query_string_parameters: parse_query(query.as_deref()),
        body: &body,
        is_base64_encoded,
        request_context: RequestContext {
            request_id: &request_id,
            env_id: env.as_str(),
            http_method: method.as_str(),
            path: &path,
            source_ip: &client_ip,
        },
    };
    let event = match serde_json::to_string(&event) {
        Ok(text) => text,
        Err(e) => return error_response(&YunError::internal(e.to_string()), &request_id),
    };
    let caller = CallerContext {
        request_id: request_id.clone(),
        source: "http".into(),
        client_ip: Some(client_ip),
        seq_id: None,
        parent_request_id: None,
    };
    let invocation = match app.invoke_public_http(&env, &path, event, &caller).await {
        Ok(Some(invocation)) => invocation,
        Ok(None) => return not_found(),
        Err(e) => return error_response(&e, &request_id),
    };
    let mut response = match invocation.result {
        Ok(value) => render(value).unwrap_or_else(|e| error_response(&e, &request_id)),
        Err(e) => return error_response(&e, &request_id),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Turns a function's return value (JSON text) into an HTTP response.
fn render(value: String) -> Result<Response, YunError> {
    let plain = |value| Ok(([("content-type", "application/json")], value).into_response());
    // Most results are plain values: spare parsing those that cannot be a response.
    if !value.contains("\"statusCode\"") {
        return plain(value);
    }
    let parsed: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
    let Some(status) = parsed.get("statusCode").and_then(Value::as_u64) else {
        return plain(value);
    };
    let bad = |why: &str| {
        YunError::new(
            ErrorCode::FunctionExecuteFail,
            format!("invalid HTTP response from the function: {why}"),
        )
    };
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad("statusCode out of range"))?;
    let body = match parsed.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s))
            if parsed.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) =>
        {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad("body is not base64"))?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut response = (status, body).into_response();
    if let Some(headers) = parsed.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = HeaderName::try_from(k.as_str()).map_err(|_| bad("invalid header name"))?;
            let value = HeaderValue::from_str(&text).map_err(|_| bad("invalid header value"))?;
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q =
            serde_json::to_value(parse_query(Some("a=1&b=x%20y&c=&d&e=%zz&f=a+b&a=2"))).unwrap();
        assert_eq!(q["a"], "2", "a repeated key keeps the last value");
        assert_eq!(q["b"], "x y");
        assert_eq!(q["c"], "");
        assert_eq!(q["d"], "");
        assert_eq!(q["e"], "%zz");
        assert_eq!(q["f"], "a b");
    }

    #[test]
    fn plain_values_are_json_and_objects_with_status_are_responses() {
        let r = render(r#"{"a":1}"#.into()).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = render(r#"{"statusCode":201,"headers":{"x-a":"b"},"body":"hi"}"#.into()).unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["x-a"], "b");
        let r =
            render(r#"{"statusCode":200,"body":"aGk=","isBase64Encoded":true}"#.into()).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            render(r#"{"statusCode":99999}"#.into()).unwrap_err().code,
            ErrorCode::FunctionExecuteFail
        );
        assert_eq!(
            render(r#"{"statusCode":200,"headers":{"bad header":"x"}}"#.into())
                .unwrap_err()
                .code,
            ErrorCode::FunctionExecuteFail
        );
    }
}
