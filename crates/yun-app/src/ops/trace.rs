//! Request traces, W3C trace context: a `traceparent` at the edge (or none: each
//! invocation then starts a trace whose id is its request id) is carried through the
//! request as a task-local; an invocation is a span (its record carries the ids), and
//! gives its instance `TRACEPARENT` and its channel calls its own context, so what the
//! function calls (functions, the database, storage) are spans under it. Operation
//! spans are written in batches with the records (`recorder.rs`) and, when configured,
//! exported as OTLP (`otlp.rs`).

use std::future::Future;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use yun_auth::{Caller, Identity};
use yun_meta::{InvocationRecord, SpanRecord};
use yun_types::{EnvId, YunError};

use crate::App;

/// Where new spans hang: a trace and the span that is their parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// W3C's sampled flag: operation spans are recorded only in sampled traces
    /// (invocations always are: their records carry the ids anyway).
    pub sampled: bool,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// `len` lowercase hex digits, not all zero (an all-zero id is invalid).
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// A `traceparent` header (`00-{trace}-{span}-{flags}`); `None` when it is not one
    /// (the W3C rule: an invalid header is ignored and a new trace starts).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        // Later versions may append fields; version 00 has exactly four; ff is invalid.
        if version.len() != 2
            || !lower_hex(version)
            || version == "ff"
            || (version == "00" && parts.next().is_some())
            || flags.len() != 2
            || !lower_hex(flags)
        {
            return None;
        }
        let sampled = u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1);
        (is_hex(trace_id, 32) && is_hex(span_id, 16)).then(|| Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            sampled,
        })
    }

    pub fn header(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }

    /// The root of a trace Yun starts for an invocation: named by its request id (32 hex
    /// digits), its span by the id's last 16 (random) digits, so the instance can tell
    /// its own context without being sent it. Other ids get a random span.
    pub fn rooted_at(request_id: &str, sampled: bool) -> Self {
        let span = request_id.get(16..).filter(|s| is_hex(s, 16));
        match span {
            Some(span) if is_hex(request_id, 32) => Self {
                trace_id: request_id.to_owned(),
                span_id: span.to_owned(),
                sampled,
            },
            _ => Self {
                trace_id: yun_types::new_id(""),
                span_id: yun_types::new_span_id(),
                sampled,
            },
        }
    }

    /// The context requests run in now, if they are traced.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

/// Runs `work` in `context` (or as it is, without one).
pub async fn traced<F: Future>(context: Option<TraceContext>, work: F) -> F::Output {
    match context {
        Some(context) => CURRENT.scope(context, work).await,
        None => work.await,
    }
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A span's status for an operation's result.
pub(crate) fn outcome<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() {
        "ok"
    } else {
        "error"
    }
}

/// An operation's span, recorded when it ends, if the operation runs inside a trace.
pub(crate) struct OpSpan {
    context: Option<TraceContext>,
    name: &'static str,
    start_us: i64,
    began: Instant,
}

impl OpSpan {
    pub fn start(name: &'static str) -> Self {
        Self {
            context: TraceContext::current(),
            name,
            start_us: unix_us(),
            began: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.began.elapsed()
    }

    /// Records it (when traced) for the caller `identity`.
    pub fn end(self, app: &App, identity: &Identity, status: &str) {
        let function = match &identity.caller {
            Caller::Function { name } => Some(name.as_str()),
            _ => None,
        };
        self.end_in(app, &identity.env, function, status);
    }

    /// Records it (when traced): `status` is `ok`, `error` or `unset`.
    pub fn end_in(self, app: &App, env: &EnvId, function: Option<&str>, status: &str) {
        let Some(context) = self.context.filter(|c| c.sampled) else {
            return;
        };
        if !app.settings.tracing {
            return;
        }
        app.recorder.span(SpanRecord {
            env: env.clone(),
            trace_id: context.trace_id,
            span_id: yun_types::new_span_id(),
            parent_span_id: Some(context.span_id),
            name: self.name.into(),
            start_us: self.start_us,
            duration_us: self.began.elapsed().as_micros() as u64,
            status: status.into(),
            function: function.map(str::to_owned),
            request_id: None,
        });
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<SpanRecord>,
}

/// The spans an invocation record stands for: the invocation, and its wait for an
/// instance when it waited.
pub(crate) fn invocation_spans(record: &InvocationRecord) -> Vec<SpanRecord> {
    let start_us = record.started_at_ms * 1000;
    let (trace_id, span_id) = record.trace_ids();
    let mut spans = vec![SpanRecord {
        env: record.env.clone(),
        trace_id: trace_id.to_owned(),
        span_id: span_id.to_owned(),
        parent_span_id: record.parent_span_id.clone(),
        name: format!("invoke {}", record.function),
        start_us,
        duration_us: record.duration_ms * 1000,
        status: record.status.as_str().into(),
        request_id: Some(record.request_id.clone()),
        function: Some(record.function.to_string()),
    }];
    if record.waited_ms > 0 {
        spans.push(SpanRecord {
            env: record.env.clone(),
            trace_id: trace_id.to_owned(),
            // Derived, so the same on every read: the invocation's span id with its
            // first four digits inverted.
            span_id: wait_span_id(span_id),
            parent_span_id: Some(span_id.to_owned()),
            name: "instance wait".into(),
            start_us,
            duration_us: record.waited_ms * 1000,
            status: "ok".into(),
            request_id: None,
            function: Some(record.function.to_string()),
        });
    }
    spans
}

fn wait_span_id(span_id: &str) -> String {
    let value = u64::from_str_radix(span_id, 16).unwrap_or(1);
    format!("{:016x}", value ^ 0xffff_0000_0000_0000)
}

impl App {
    /// The trace an invocation belongs to, every span of it (this env's).
    pub async fn trace(&self, identity: &Identity, request_id: &str) -> Result<Trace, YunError> {
        let root = self.invocation(identity, request_id).await?;
        let trace_id = root.trace_ids().0.to_owned();
        let (invocations, spans) = self
            .meta
            .trace(&identity.env, request_id, &trace_id)
            .await?;
        let mut all: Vec<SpanRecord> = invocations.iter().flat_map(invocation_spans).collect();
        all.extend(spans);
        all.sort_by_key(|s| s.start_us);
        Ok(Trace {
            trace_id,
            spans: all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_parse_as_the_w3c_spec_says() {
        let ok =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ok.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok.span_id, "00f067aa0ba902b7");
        assert_eq!(
            ok.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(ok.sampled);
        let unsampled =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.header().ends_with("-00"));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        // A later version with more fields is read for the fields it shares.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
