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
/// installing (a first start) or if it could not be.
async fn readyz(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let not_ready = |reason: &str| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response()
    };
    match app.runtime().layer_state() {
        yun_functions::LayerState::Ready => "ready".into_response(),
        yun_functions::LayerState::Installing => not_ready("the Node SDK layer is installing"),
        yun_functions::LayerState::Failed(why) => not_ready(&why),
    }
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
        .route("/admin", post(cloudbase::admin))
        .merge(management::router())
        .merge(browser)
        .route("/{env}", any(http_functions::serve_root))
        .route("/{env}/", any(http_functions::serve_root))
        .route("/{env}/{*path}", any(http_functions::serve))
        // Each surface reads its body with its own limit and answers in its own protocol.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}
