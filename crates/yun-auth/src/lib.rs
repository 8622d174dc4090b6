//! Who is calling: TC3-HMAC-SHA256 signatures as the CloudBase server SDKs make them,
//! short-lived credentials for function instances, and the resolved [`Identity`].
//!
//! Pure computation: no storage, no HTTP types. Callers look keys up and pass them in.

mod identity;
pub mod tc3;
mod temp_credential;

pub use identity::{Caller, EndUser, Identity};
pub use temp_credential::{TempCredential, TempCredentialIssuer};
