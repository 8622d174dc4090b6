//! Each sandboxed instance reaches Yun through a Unix socket of its own (its init relays
//! `127.0.0.1:PORT` inside the instance's network namespace to it). The socket serves
//! the SDK surface only, and every request on it carries the instance's binding, so a
//! function's credential is accepted only from that function's instances.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use std::sync::{Arc, Weak};

use axum::{Extension, Router};
use tokio::sync::watch;
use yun_app::App;
use yun_functions::{
    ApiFuture, ApiRequest, ApiResponse, Gateway, GatewaySocket, InstanceApi, InstanceBinding,
};
use yun_types::{EnvId, FunctionName};

pub struct UnixGateway {
    dir: PathBuf,
    port: u16,
    /// Set once the app exists (stem cells start before it does).
    router: watch::Receiver<Option<Router>>,
}

impl UnixGateway {
    pub fn new(dir: PathBuf, port: u16) -> (Self, watch::Sender<Option<Router>>) {
        let (tx, router) = watch::channel(None);
        (Self { dir, port, router }, tx)
    }
}

struct Open {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Gateway for UnixGateway {
    fn open(&self, id: u64, binding: InstanceBinding) -> std::io::Result<GatewaySocket> {
        let path = self.dir.join(format!("{id}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        // Only the instance's init (root) may connect; the function's own uid may not.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut router = self.router.clone();
        let task = tokio::spawn(async move {
            let app = match router.wait_for(Option::is_some).await {
                Ok(ready) => ready.clone(),
                Err(_) => return,
            };
            let Some(app) = app else { return };
            if let Err(e) = axum::serve(listener, app.layer(Extension(binding))).await {
                tracing::debug!(error = %e, "instance gateway stopped");
            }
        });
        Ok(GatewaySocket {
            path: path.clone(),
            guard: Box::new(Open { task, path }),
        })
    }

    fn port(&self) -> u16 {
        self.port
    }
}

/// The in-function data path's server side: calls arriving on instances' own channels go
/// to the same `/admin` handling as HTTP. Holds the app weakly: the app owns the runtime
/// that holds this.
pub struct ChannelApi(pub Weak<App>);

impl InstanceApi for ChannelApi {
    fn call(&self, env: &EnvId, name: &FunctionName, request: ApiRequest) -> ApiFuture {
        let app = self.0.upgrade();
        let (env, name) = (env.clone(), name.clone());
        Box::pin(async move {
            match app {
                Some(app) => yun_api::channel::serve(&app, &env, &name, request).await,
                None => ApiResponse::admin(
                    r#"{"requestId":"","code":"SYS_ERR","message":"Yun is stopping"}"#.into(),
                ),
            }
        })
    }
}

impl ChannelApi {
    pub fn serve(app: &Arc<App>) {
        app.runtime()
            .serve_instance_api(Arc::new(ChannelApi(Arc::downgrade(app))));
    }
}
