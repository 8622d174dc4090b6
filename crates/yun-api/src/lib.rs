//! Yun's HTTP surfaces, all on one port: the CloudBase `/admin` protocol, the management
//! API under `/api/v1` (described by `openapi.json`), end-user sign-in under `/auth/v1`
//! (js-sdk), HTTP functions under `/{env}/…`,
//! and `/healthz` + `/readyz`. Handlers parse, call one `App` method, and render: no
//! SQL, no processes here.

mod auth;
mod body;
pub mod channel;
mod cloudbase;
mod cloudbase_db;
mod cloudbase_storage;
mod files;
mod http_functions;
mod management;
mod web;
mod web_db;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use yun_app::App;

pub use management::{management_routes, OPENAPI};

pub type AppState = Arc<App>;

/// 200 once Yun can run every function; 503 with the reason while the SDK layer is
/// installing (a first start) or if it could not be, while the first stem cells start,
/// and while draining on SIGTERM.
async fn readyz(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match app.not_ready() {
        None => "ready".into_response(),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// The surfaces, as bounded metrics labels.
const SURFACES: [&str; 7] = [
    "admin",
    "web",
    "auth",
    "management",
    "files",
    "operations",
    "http_functions",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The surface a request is for: an index into [`SURFACES`].
fn surface(path: &str) -> usize {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "admin" => 0,
        "web" => 1,
        "auth" => 2,
        "api" => 3,
        "files" => 4,
        "healthz" | "readyz" | "metrics" => 5,
        _ => 6,
    }
}

/// The HTTP metric handles, taken once: a request costs two atomic updates, not two
/// registry lookups.
struct HttpMetrics {
    requests: Vec<[metrics::Counter; 5]>,
    durations: Vec<metrics::Histogram>,
}

fn http_metric_handles() -> &'static HttpMetrics {
    static HANDLES: std::sync::OnceLock<HttpMetrics> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| HttpMetrics {
        requests: SURFACES
            .iter()
            .map(|surface| {
                STATUS_CLASSES.map(|status| {
                    metrics::counter!("yun_http_requests_total", "surface" => *surface, "status" => status)
                })
            })
            .collect(),
        durations: SURFACES
            .iter()
            .map(|surface| metrics::histogram!("yun_http_request_duration_seconds", "surface" => *surface))
            .collect(),
    })
}

/// The edge of every request: a W3C `traceparent` it carries becomes the context its
/// work is traced in; it is counted by surface and status class and timed to its
/// response head.
async fn edge(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let context = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(yun_app::ops::TraceContext::parse);
    yun_app::ops::traced(context, http_metrics(request, next)).await
}

async fn http_metrics(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !yun_app::ops::metrics_on() {
        return next.run(request).await;
    }
    let surface = surface(request.uri().path());
    let began = std::time::Instant::now();
    let response = next.run(request).await;
    let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
    let handles = http_metric_handles();
    handles.requests[surface][class].increment(1);
    handles.durations[surface].record(began.elapsed());
    response
}

/// What a sandboxed instance reaches through its gateway: the SDK surface and the
/// signed file URLs it hands out, knowing which instance is calling; no management API,
/// no end-user surfaces.
pub fn instance_router(app: Arc<App>) -> Router<()> {
    Router::new()
        .route("/admin", post(cloudbase::admin_from_instance))
        .route(
            "/files/{env}/{*path}",
            get(files::download)
                .put(files::upload_put)
                .post(files::upload_form),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// The whole HTTP surface. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(app: Arc<App>) -> Router {
    // What a web app's pages call from their own origin: the js-sdk's actions, sign-in,
    // and uploads/downloads of files. Any origin may call them; the credential is a
    // token in the request, never a cookie, so no origin gains ambient authority.
    let browser = Router::new()
        .route("/web", post(web::web))
        .merge(auth::router())
        .route(
            "/files/{env}/{*path}",
            get(files::download)
                .put(files::upload_put)
                .post(files::upload_form),
        )
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(Any)
                .max_age(std::time::Duration::from_secs(600)),
        );
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(management::metrics))
        .route("/admin", post(cloudbase::admin))
        .merge(management::router())
        .merge(browser)
        .route("/{env}", any(http_functions::serve_root))
        .route("/{env}/", any(http_functions::serve_root))
        .route("/{env}/{*path}", any(http_functions::serve))
        // Each surface reads its body with its own limit and answers in its own protocol.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(edge))
        .with_state(app)
}
