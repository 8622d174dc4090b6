//! Host <-> instance messages, protocol v1: each frame is a u32 big-endian length and a
//! JSON object with a `type`. The bootstrap (`js/bootstrap.js`) is the other side.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side may send: a 6 MiB result, JSON-escaped, with room to spare.
pub const MAX_FRAME_BYTES: u32 = 32 * 1024 * 1024;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage<'a> {
    /// Specialise a stem cell: set the function's env, chdir, require the handler.
    Load {
        code_dir: &'a str,
        handler: &'a str,
        env: &'a BTreeMap<String, String>,
    },
    /// Run one event. `event` is the caller's JSON text; `env` is set in `process.env`
    /// for this invocation only (the SDKs read identity from there).
    Invoke {
        request_id: &'a str,
        event: &'a str,
        context: &'a Value,
        env: &'a BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct JsError {
    pub name: String,
    pub message: String,
    #[serde(default)]
    pub stack: String,
}

impl JsError {
    /// `Name: message`, the way Node prints it, without the stack.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.name, self.message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceMessage {
    Ready {
        v: u32,
        pid: u32,
        node: String,
        preloaded: Vec<String>,
    },
    Loaded,
    LoadError {
        error: JsError,
    },
    Log {
        stream: String,
        data: String,
    },
    Result {
        request_id: String,
        ok: bool,
        value: Option<String>,
        error: Option<JsError>,
        rss_kb: u64,
    },
    Fatal {
        request_id: Option<String>,
        kind: String,
        error: JsError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("instance closed the channel")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    message: &HostMessage<'_>,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<InstanceMessage, FrameError> {
    let len = match r.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => e.into(),
    })?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let msg = br#"{"type":"log","stream":"stdout","data":"hi\n"}"#;
        a.write_all(&(msg.len() as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(msg).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            InstanceMessage::Log { stream, data } => {
                assert_eq!((stream.as_str(), data.as_str()), ("stdout", "hi\n"))
            }
            other => panic!("{other:?}"),
        }
        a.write_all(&(MAX_FRAME_BYTES + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));
        drop(a);
        let (_, mut c) = tokio::io::duplex(8);
        assert!(matches!(read_frame(&mut c).await, Err(FrameError::Closed)));
    }
}
