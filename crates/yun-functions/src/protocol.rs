//! Host <-> instance messages, protocol v2. Each frame is a u32 big-endian length, then a
//! JSON header with a `type`, then, for frames that carry one, `\n` and a payload: the
//! event's JSON text in `invoke`, the result's JSON text in `result`. Carrying those as
//! raw text rather than as JSON strings spares escaping them on one side and parsing
//! them twice on the other. The bootstrap (`js/bootstrap.js`) is the other side.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame either side may send: a 6 MiB result, JSON-escaped, with room to spare.
pub const MAX_FRAME_BYTES: u32 = 32 * 1024 * 1024;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage<'a> {
    /// Specialise a stem cell: set the function's env, chdir, require the handler.
    /// `context` holds the SCF context fields fixed for the life of the instance.
    Load {
        code_dir: &'a str,
        handler: &'a str,
        env: &'a BTreeMap<String, String>,
        context: &'a Value,
        /// The uid to become before loading the code (sandboxed instances).
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        /// Whether the layer's SDKs may call Yun over this channel (`api` frames).
        sdk_channel: bool,
        /// Links to Yun's files under this URL are followed to the node instead.
        #[serde(skip_serializing_if = "Option::is_none")]
        public_url: Option<&'a str>,
    },
    /// Run one event (the payload). `env` and `unset` change the per-invocation
    /// variables from the previous event's (the SDKs read identity from there): the
    /// instance runs events in frame order, so only what changed is sent.
    Invoke {
        request_id: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty", serialize_with = "as_map")]
        env: &'a [(&'a str, &'a str)],
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        unset: &'a [&'a str],
    },
    /// The answer to the instance's `api` call `id` (the payload: the response body).
    /// `status` and `headers` come with answers to file transfers; `fallback` asks the
    /// instance to make the call over HTTP instead (a body too large for a frame).
    ApiResult {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(skip_serializing_if = "<[_]>::is_empty", serialize_with = "as_map")]
        headers: &'a [(&'a str, &'a str)],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        fallback: bool,
    },
}

fn as_map<S: serde::Serializer>(pairs: &&[(&str, &str)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().copied())
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
        /// The `console` method's level, when one wrote it.
        #[serde(default)]
        level: Option<String>,
    },
    Result {
        request_id: String,
        ok: bool,
        /// The payload, when `ok`.
        #[serde(skip)]
        value: Option<String>,
        error: Option<JsError>,
        rss_kb: u64,
    },
    Fatal {
        request_id: Option<String>,
        kind: String,
        error: JsError,
    },
    /// An SDK call to Yun (`crate::api`): the payload is the request body, bytes.
    /// `method` and `headers` come with file transfers (`/files/…`).
    Api {
        id: u64,
        target: String,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(skip)]
        body: Vec<u8>,
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

/// Appends one frame to `out`: `header`, then `payload` if there is one.
pub fn encode_frame(
    out: &mut Vec<u8>,
    header: &HostMessage<'_>,
    payload: Option<&[u8]>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let encoded = serde_json::to_writer(&mut *out, header)
        .map_err(|e| FrameError::Malformed(e.to_string()))
        .map(|()| {
            if let Some(payload) = payload {
                out.push(b'\n');
                out.extend_from_slice(payload);
            }
            out.len() - start - 4
        })
        .and_then(|len| match u32::try_from(len) {
            Ok(len) if len <= MAX_FRAME_BYTES => Ok(len),
            _ => Err(FrameError::TooLarge(u32::try_from(len).unwrap_or(u32::MAX))),
        });
    match encoded {
        Ok(len) => {
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    message: &HostMessage<'_>,
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, message, None)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// A result's header, the frame of every event. The bootstrap writes its `type` first.
#[derive(Deserialize)]
struct ResultHeader {
    request_id: String,
    ok: bool,
    error: Option<JsError>,
    rss_kb: u64,
}

fn parse_header(header: &[u8]) -> serde_json::Result<InstanceMessage> {
    // serde reads an internally tagged enum by buffering the whole object first; the
    // frame every event answers with is parsed straight into its fields instead.
    if header.starts_with(br#"{"type":"result","#) {
        let r: ResultHeader = serde_json::from_slice(header)?;
        return Ok(InstanceMessage::Result {
            request_id: r.request_id,
            ok: r.ok,
            value: None,
            error: r.error,
            rss_kb: r.rss_kb,
        });
    }
    serde_json::from_slice(header)
}

/// Reads one frame. Read through a buffer: frames often arrive several to a read.
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
    let malformed = |e: &dyn std::fmt::Display| FrameError::Malformed(e.to_string());
    let newline = body.iter().position(|&b| b == b'\n');
    let header = &body[..newline.unwrap_or(body.len())];
    let mut message = parse_header(header).map_err(|e| malformed(&e))?;
    let Some(newline) = newline else {
        return Ok(message);
    };
    match &mut message {
        InstanceMessage::Result { value, .. } => {
            body.drain(..=newline);
            *value = Some(String::from_utf8(body).map_err(|e| malformed(&e))?);
        }
        InstanceMessage::Api { body: payload, .. } => {
            body.drain(..=newline);
            *payload = body;
        }
        _ => {}
    }
    Ok(message)
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
            InstanceMessage::Log { stream, data, .. } => {
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

    #[tokio::test]
    async fn api_frames_carry_bytes_and_answers_carry_status_and_headers() {
        let mut frame = br#"{"type":"api","id":7,"target":"/files/dev/a.bin","method":"PUT","headers":{"authorization":"g"}}"#.to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(&[0xff, b'\n', 0x00, 0xfe]);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&(frame.len() as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(&frame).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            InstanceMessage::Api {
                id,
                target,
                method,
                headers,
                body,
            } => {
                assert_eq!((id, target.as_str()), (7, "/files/dev/a.bin"));
                assert_eq!(method.as_deref(), Some("PUT"));
                assert_eq!(headers.get("authorization").map(String::as_str), Some("g"));
                assert_eq!(body, [0xff, b'\n', 0x00, 0xfe]);
            }
            other => panic!("{other:?}"),
        }

        let mut out = Vec::new();
        let header = HostMessage::ApiResult {
            id: 7,
            status: Some(200),
            headers: &[("etag", "x")],
            fallback: false,
        };
        encode_frame(&mut out, &header, Some(&[1, 2])).unwrap();
        assert_eq!(
            &out[4..],
            b"{\"type\":\"api_result\",\"id\":7,\"status\":200,\"headers\":{\"etag\":\"x\"}}\n\x01\x02"
        );
        out.clear();
        let admin = HostMessage::ApiResult {
            id: 8,
            status: None,
            headers: &[],
            fallback: false,
        };
        encode_frame(&mut out, &admin, Some(b"{}")).unwrap();
        assert_eq!(&out[4..], b"{\"type\":\"api_result\",\"id\":8}\n{}");
    }

    #[tokio::test]
    async fn payloads_travel_as_raw_text_after_the_header() {
        let mut out = Vec::new();
        let header = HostMessage::Invoke {
            request_id: "r1",
            env: &[("TCB_SEQID", "r1")],
            unset: &["WX_OPENID"],
        };
        encode_frame(&mut out, &header, Some(b"{\"a\":\n\"x\\ny\"}")).unwrap();
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        let text = std::str::from_utf8(&out[4..]).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"invoke\",\"request_id\":\"r1\",\"env\":{\"TCB_SEQID\":\"r1\"},\"unset\":[\"WX_OPENID\"]}\n{\"a\":\n\"x\\ny\"}"
        );

        // A result's payload may itself hold newlines: only the first one ends the header.
        let body =
            "{\"type\":\"result\",\"request_id\":\"r1\",\"ok\":true,\"rss_kb\":7}\n{\n \"v\": 1\n}";
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(body.as_bytes()).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            InstanceMessage::Result {
                value, ok, rss_kb, ..
            } => {
                assert!(ok);
                assert_eq!(rss_kb, 7);
                assert_eq!(value.as_deref(), Some("{\n \"v\": 1\n}"));
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        let (_, mut c) = tokio::io::duplex(8);
        assert!(matches!(read_frame(&mut c).await, Err(FrameError::Closed)));

        let failed = br#"{"type":"result","ok":false,"error":{"name":"E","message":"m"},"request_id":"r2","rss_kb":1}"#;
        match parse_header(failed).unwrap() {
            InstanceMessage::Result {
                ok, error, value, ..
            } => {
                assert!(!ok && value.is_none());
                assert_eq!(error.unwrap().summary(), "E: m");
            }
            other => panic!("{other:?}"),
        }
    }
}
