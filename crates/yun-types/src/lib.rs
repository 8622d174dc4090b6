//! Ids, validated names and the one error-code table shared by every Yun crate.
//!
//! Depends on nothing of Yun's. Every error a caller can see is an [`ErrorCode`]; each
//! protocol (CloudBase envelope, management API JSON, CLI) reads its code from here.

mod error;
mod names;

pub use error::{ErrorCode, YunError};
pub use names::{new_id, EnvId, FunctionName, NameError};
