//! The in-function data path. The SDK calls a function makes to Yun (`/admin`: database,
//! storage, `callFunction`) travel over the instance's own channel as `api` frames rather
//! than as signed HTTP requests on a new TCP connection each (which is what the SDKs do
//! inside SCF): no connection, no TC3 signature made and checked, no HTTP stack. The
//! caller is the function the instance loaded, known from the channel itself, so a frame
//! can claim nothing: not another env, not a user, not another function.
//!
//! The bootstrap sends `api` frames only while an event runs, and Yun reads them while it
//! reads that event's output; a call still pending when its event ends is read with the
//! next event, as SCF freezes an instance between events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Semaphore;
use yun_types::{EnvId, FunctionName};

/// Calls one instance may have in flight; more wait (the instance's further frames wait
/// unread meanwhile, which is the back-pressure an HTTP server's accept queue would give).
const CALLS_IN_FLIGHT: usize = 64;

pub type ApiFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// Serves the SDK surface to instances over their channels; given by the composition root.
pub trait InstanceApi: Send + Sync {
    /// Answers one call made by function `name` of `env`. `target` is the path and query
    /// the SDK built (`/admin?env=…&seqId=…`), `body` its JSON text. The answer is the
    /// response body the HTTP route would give, as JSON text.
    fn call(&self, env: &EnvId, name: &FunctionName, target: String, body: String) -> ApiFuture;
}

/// Where an instance's answers are written (its lane's outbox, in order with its events).
pub(crate) trait ApiReplies: Send + Sync {
    fn reply(&self, id: u64, body: &str);
}

/// A loaded instance's end of the data path.
pub(crate) struct ApiPort {
    api: Arc<dyn InstanceApi>,
    env: EnvId,
    name: FunctionName,
    slots: Arc<Semaphore>,
}

/// What an `api` frame from an instance without the data path gets (the bootstrap sends
/// none there; a function writing frames itself does).
const REFUSED: &str = r#"{"requestId":"","code":"PERMISSION_DENIED","message":"this instance may not call Yun over its channel"}"#;

impl ApiPort {
    pub(crate) fn new(api: Arc<dyn InstanceApi>, env: EnvId, name: FunctionName) -> Self {
        Self {
            api,
            env,
            name,
            slots: Arc::new(Semaphore::new(CALLS_IN_FLIGHT)),
        }
    }

    /// Starts answering one call; waits only when the instance has too many in flight.
    pub(crate) async fn serve(
        port: Option<&ApiPort>,
        id: u64,
        target: String,
        body: String,
        replies: &Arc<dyn ApiReplies>,
    ) {
        let Some(port) = port else {
            replies.reply(id, REFUSED);
            return;
        };
        let Ok(slot) = port.slots.clone().acquire_owned().await else {
            return;
        };
        let answer = port.api.call(&port.env, &port.name, target, body);
        let replies = replies.clone();
        tokio::spawn(async move {
            let body = answer.await;
            drop(slot);
            replies.reply(id, &body);
        });
    }
}
