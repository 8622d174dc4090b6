use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use yun_types::{ErrorCode, YunError};

/// How much of a refused body is still read, and for how long, before the answer.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads a request body of at most `limit` bytes. A larger one is refused after the rest
/// is read (up to [`DRAIN_BYTES`]): a connection closed while the client still sends
/// would lose the answer, and behind a proxy the client would see only a reset.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, YunError> {
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| too_large(limit))?;
        if bytes.len() + chunk.len() > limit {
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                let mut drained = 0;
                while let Some(Ok(chunk)) = stream.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            })
            .await;
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

pub fn too_large(limit: usize) -> YunError {
    YunError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes or unreadable"),
    )
}
