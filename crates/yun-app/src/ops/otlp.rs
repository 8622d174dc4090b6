//! OTLP export of traces, configured by the standard `OTEL_EXPORTER_OTLP_*` variables:
//! spans go as OTLP/HTTP JSON (`POST {endpoint}/v1/traces`), batched once a second.
//! Written by hand rather than with `opentelemetry-otlp`: Yun already has its spans as
//! rows, so what is needed is one JSON POST; the crate family would bring its own SDK,
//! batching runtime and protobuf stack for it. OTLP/HTTP receivers (the OpenTelemetry
//! Collector, Jaeger, Tempo) take JSON on the same path; gRPC is not spoken.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use yun_meta::SpanRecord;

/// Spans waiting for export beyond this are dropped (and counted in the log): a
/// receiver that is down must not hold up Yun.
const QUEUE: usize = 64 * 1024;
const BATCH: usize = 2048;

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The traces URL (`…/v1/traces`).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub timeout: Duration,
}

impl OtlpConfig {
    /// From `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`,
    /// `…_PROTOCOL` and `OTEL_SERVICE_NAME`, as the OpenTelemetry spec defines them;
    /// `None` when no endpoint is set (or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let either = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
                .filter(|v| !v.trim().is_empty())
        };
        if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none") {
            return None;
        }
        let url = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.is_empty()) {
            Some(url) => url,
            None => format!(
                "{}/v1/traces",
                var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .filter(|v| !v.is_empty())?
                    .trim_end_matches('/')
            ),
        };
        if let Some(protocol) = either("PROTOCOL") {
            if protocol == "grpc" {
                tracing::warn!("OTLP export is off: Yun speaks OTLP/HTTP (JSON), not gRPC");
                return None;
            }
        }
        let headers = either("HEADERS")
            .map(|h| {
                h.split(',')
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.trim().to_owned(), percent_decode(v.trim())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let timeout = either("TIMEOUT")
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        Some(Self {
            url,
            headers,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "yun".into()),
            timeout,
        })
    }

    /// Starts the exporter task; spans sent to the returned queue are exported.
    pub(crate) fn start(self) -> mpsc::Sender<SpanRecord> {
        let (spans, mut queue) = mpsc::channel::<SpanRecord>(QUEUE);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(self.timeout)
                .build()
                .unwrap_or_default();
            let mut batch = Vec::with_capacity(BATCH);
            while queue.recv_many(&mut batch, BATCH).await > 0 {
                // Gather for a second: one request carries what a second produced.
                tokio::time::sleep(Duration::from_secs(1)).await;
                while batch.len() < BATCH * 8 {
                    match queue.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(_) => break,
                    }
                }
                let body = export_request(&self.service_name, &batch);
                let mut request = client.post(&self.url).json(&body);
                for (k, v) in &self.headers {
                    request = request.header(k, v);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), spans = batch.len(), "OTLP export refused")
                    }
                    Err(e) => tracing::warn!(error = %e, spans = batch.len(), "OTLP export failed"),
                }
                batch.clear();
            }
        });
        spans
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn string_attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// An `ExportTraceServiceRequest` in OTLP's JSON mapping (ids as hex, times as strings).
fn export_request(service_name: &str, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start_ns = s.start_us.max(0) as u128 * 1000;
            let end_ns = start_ns + u128::from(s.duration_us) * 1000;
            let mut attributes = vec![string_attr("yun.env", s.env.as_str())];
            if let Some(function) = &s.function {
                attributes.push(string_attr("faas.name", function));
            }
            if let Some(request_id) = &s.request_id {
                attributes.push(string_attr("faas.invocation_id", request_id));
            }
            let (kind, code) = match (s.request_id.is_some(), s.status.as_str()) {
                (true, "success") => (2, 1),
                (true, _) => (2, 2),
                (false, "ok") => (3, 1),
                (false, "error") => (3, 2),
                (false, _) => (3, 0),
            };
            let mut span = json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": kind,
                "startTimeUnixNano": start_ns.to_string(),
                "endTimeUnixNano": end_ns.to_string(),
                "attributes": attributes,
                "status": { "code": code },
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [string_attr("service.name", service_name)] },
            "scopeSpans": [{ "scope": { "name": "yun" }, "spans": spans }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_follows_the_otel_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(OtlpConfig::from_env(vars(&[])).is_none());
        let c = OtlpConfig::from_env(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=a%20b, other=c"),
            ("OTEL_SERVICE_NAME", "api"),
        ]))
        .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            c.headers,
            [
                ("x-token".to_owned(), "a b".to_owned()),
                ("other".into(), "c".into())
            ]
        );
        assert_eq!(c.service_name, "api");
        let traces_only = OtlpConfig::from_env(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
        ]))
        .unwrap();
        assert_eq!(traces_only.url, "http://b:4318/custom");
        assert!(OtlpConfig::from_env(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .is_none());
        assert!(OtlpConfig::from_env(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]))
        .is_none());
    }
}
