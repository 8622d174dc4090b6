//! Ids, validated names and the one error-code table shared by every Yun crate.
//!
//! Depends on nothing of Yun's. Every error a caller can see is an [`ErrorCode`]; each
//! protocol (CloudBase envelope, management API JSON, CLI) reads its code from here.

pub mod changes;
mod error;
mod names;

pub use error::{ErrorCode, YunError};
pub use names::{new_id, new_sortable_id, new_span_id, EnvId, FunctionName, NameError};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    unix_ms() / 1000
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
