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

/// One call as the instance made it.
pub struct ApiRequest {
    /// Path and query: `/admin?env=…&seqId=…`, or `/files/{env}/{path}?…` for a transfer.
    pub target: String,
    /// Set for file transfers (`PUT` uploads, `GET` downloads); `/admin` is always a POST.
    pub method: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request id of the event the instance was running when it made the call: what
    /// the call causes (an invocation, a write firing a trigger) links back to it.
    pub caused_by: String,
    /// That event's W3C trace context, if it is traced.
    pub traceparent: Option<String>,
}

/// Its answer.
#[derive(Debug, Default)]
pub struct ApiResponse {
    /// Set for file transfers; `/admin` answers are always 200 (errors are in the body).
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The answer does not fit a frame: the instance makes the call over HTTP instead.
    pub fallback: bool,
}

impl ApiResponse {
    pub fn admin(body: String) -> Self {
        Self {
            body: body.into_bytes(),
            ..Self::default()
        }
    }
}

pub type ApiFuture = Pin<Box<dyn Future<Output = ApiResponse> + Send>>;

/// Serves the SDK surface to instances over their channels; given by the composition root.
pub trait InstanceApi: Send + Sync {
    /// Answers one call made by function `name` of `env`: what the HTTP route would
    /// answer the same request, minus the signature check (the caller is known).
    fn call(&self, env: &EnvId, name: &FunctionName, request: ApiRequest) -> ApiFuture;
}

/// Where an instance's answers are written (its lane's outbox, in order with its events).
pub(crate) trait ApiReplies: Send + Sync {
    fn reply(&self, id: u64, response: &ApiResponse);
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
fn refused() -> ApiResponse {
    ApiResponse::admin(
        r#"{"requestId":"","code":"PERMISSION_DENIED","message":"this instance may not call Yun over its channel"}"#.into(),
    )
}

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
        request: ApiRequest,
        replies: &Arc<dyn ApiReplies>,
    ) {
        let Some(port) = port else {
            replies.reply(id, &refused());
            return;
        };
        let Ok(slot) = port.slots.clone().acquire_owned().await else {
            return;
        };
        let answer = port.api.call(&port.env, &port.name, request);
        let replies = replies.clone();
        tokio::spawn(async move {
            let response = answer.await;
            drop(slot);
            replies.reply(id, &response);
        });
    }
}
