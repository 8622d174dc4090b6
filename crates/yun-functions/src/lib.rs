//! The functions runtime. A function version runs in instances: OS processes running a
//! bootstrap shipped in this crate (`js/bootstrap.js`), one invocation at a time, talking
//! the framed protocol of [`protocol`]. [`pool`] decides (pure, clock passed in);
//! [`runtime`] carries the decisions out; a loaded instance is a [`lane`] that runs the
//! events queued to it in order; [`package`] unpacks and installs code.
//!
//! Knows nothing of HTTP, signatures or where metadata is stored.

pub mod api;
pub mod instance;
pub mod isolation;
pub mod lane;
pub mod package;
pub mod pool;
pub mod protocol;
pub mod runtime;
pub mod sandbox;

pub use api::{ApiFuture, ApiRequest, ApiResponse, InstanceApi};
pub use instance::{trial as sandbox_trial, Failure, SpawnConfig};
pub use isolation::{Gateway, GatewaySocket, InstanceBinding, Isolation, UidPool};
pub use runtime::{
    install_bootstrap, layer_ready, FunctionSpec, InvocationEnv, InvokeError, InvokeReport,
    InvokeRequest, LayerState, PoolStats, Runtime, RuntimeConfig,
};
pub use sandbox::Sandbox;

/// Packages the platform layer provides to every Node function.
pub const LAYER_PACKAGES: &[&str] = &["wx-server-sdk", "@cloudbase/node-sdk"];
