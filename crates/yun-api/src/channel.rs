//! Calls made by functions over their instances' own channels (the in-function data path,
//! `yun_functions::api`): `/admin` without a signature (the caller is the instance's
//! function), and the bytes of uploads and downloads through the same `/files` routes an
//! instance reaches over HTTP, called in-process.

use axum::body::Body;
use tower::ServiceExt as _;
use yun_app::ops::{traced, TraceContext};
use yun_functions::{ApiRequest, ApiResponse};
use yun_types::{EnvId, FunctionName};

use crate::AppState;

/// The largest answer a transfer carries over the channel; a larger download is made over
/// HTTP instead (the instance is told to).
const CHANNEL_BODY_LIMIT: usize = 16 << 20;

pub async fn serve(
    app: &AppState,
    env: &EnvId,
    function: &FunctionName,
    request: ApiRequest,
) -> ApiResponse {
    // What the call does is part of the calling invocation's trace, and what its writes
    // trigger links back to that invocation.
    let context = request.traceparent.as_deref().and_then(TraceContext::parse);
    let cause = match &request.traceparent {
        Some(traceparent) => format!("{} {traceparent}", request.caused_by),
        None => request.caused_by.clone(),
    };
    yun_types::changes::caused_by(
        Some(cause),
        traced(context, serve_traced(app, env, function, request)),
    )
    .await
}

async fn serve_traced(
    app: &AppState,
    env: &EnvId,
    function: &FunctionName,
    mut request: ApiRequest,
) -> ApiResponse {
    match request.method.take() {
        None => ApiResponse::admin(
            crate::cloudbase::admin_from_channel(
                app,
                env,
                function,
                &request.target,
                &request.body,
                request.caused_by,
            )
            .await,
        ),
        Some(method) => transfer(app, &method, request).await,
    }
}

async fn transfer(app: &AppState, method: &str, request: ApiRequest) -> ApiResponse {
    let status = |code: u16| ApiResponse {
        status: Some(code),
        ..ApiResponse::default()
    };
    // Only the file routes: the grant in the request is what authorizes it, as over HTTP.
    if !request.target.starts_with("/files/") {
        return status(404);
    }
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(&request.target);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let Ok(http_request) = builder.body(Body::from(request.body)) else {
        return status(400);
    };
    let router = crate::instance_router(app.clone());
    let Ok(response) = router.oneshot(http_request).await;
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, CHANNEL_BODY_LIMIT).await {
        Ok(bytes) => ApiResponse {
            status: Some(parts.status.as_u16()),
            headers: parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: bytes.to_vec(),
            fallback: false,
        },
        Err(_) => ApiResponse {
            fallback: true,
            ..ApiResponse::default()
        },
    }
}
