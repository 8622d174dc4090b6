use axum::body::Body;
use bytes::Bytes;
use yun_types::{ErrorCode, YunError};

/// Reads a request body of at most `limit` bytes.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, YunError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))
}

pub fn too_large(limit: usize) -> YunError {
    YunError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes or unreadable"),
    )
}
