//! Background writer for the append-only streams (function logs, invocation records):
//! the invocation path only queues; batches are written in one transaction each. After
//! the first item of a batch arrives the writer lingers a moment, so a busy function
//! costs a transaction per linger, not one per wake-up (a commit costs more than the
//! rows in it). Reads flush first, so they never miss what was queued before them.
//! Usage counted off the invocation path (database operations, file downloads) is
//! summed in memory and written with the next batch, or every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use yun_meta::{InvocationRecord, MetaStore, NewLogLine, SpanRecord, UsageCounts, UsageIncrement};
use yun_types::EnvId;

use crate::ops::trace::invocation_spans;
use crate::ops::OtlpConfig;

/// Queued log lines beyond this make function output wait (back-pressure), never drop.
const QUEUE: usize = 64 * 1024;
const BATCH: usize = 2048;
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);
/// Counted usage is written at least this often.
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Per env, per function: looked up by reference, so counting allocates only the first
/// time an env and function are seen between writes.
type UsageTally = Arc<Mutex<HashMap<EnvId, HashMap<String, UsageCounts>>>>;

#[derive(Clone)]
pub struct Recorder {
    logs: mpsc::Sender<NewLogLine>,
    invocations: mpsc::Sender<InvocationRecord>,
    spans: mpsc::Sender<SpanRecord>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    usage: UsageTally,
}

/// Where the written spans go besides the store.
type Export = Option<mpsc::Sender<SpanRecord>>;

impl Recorder {
    /// Starts the writer; with `otlp`, traced invocations and spans are exported too.
    pub fn start(meta: Arc<dyn MetaStore>, otlp: Option<OtlpConfig>) -> Self {
        let (logs, mut log_rx) = mpsc::channel::<NewLogLine>(QUEUE);
        let (invocations, mut inv_rx) = mpsc::channel::<InvocationRecord>(QUEUE);
        let (spans, mut span_rx) = mpsc::channel::<SpanRecord>(QUEUE);
        let export: Export = otlp.map(OtlpConfig::start);
        let (flush, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(16);
        let usage = UsageTally::default();
        let tally = usage.clone();
        tokio::spawn(async move {
            let (mut lines, mut records) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            let mut traced = Vec::with_capacity(BATCH);
            let mut usage_tick = tokio::time::interval(USAGE_EVERY);
            loop {
                let flushing = tokio::select! {
                    n = log_rx.recv_many(&mut lines, BATCH) => { if n == 0 { break } None }
                    n = inv_rx.recv_many(&mut records, BATCH) => { if n == 0 { break } None }
                    n = span_rx.recv_many(&mut traced, BATCH) => { if n == 0 { break } None }
                    Some(ack) = flush_rx.recv() => Some(ack),
                    _ = usage_tick.tick() => {
                        write_usage(&*meta, &tally).await;
                        continue;
                    }
                };
                let flushing = match flushing {
                    Some(ack) => Some(ack),
                    None => tokio::select! {
                        _ = tokio::time::sleep(LINGER) => None,
                        Some(ack) = flush_rx.recv() => Some(ack),
                    },
                };
                while let Ok(line) = log_rx.try_recv() {
                    lines.push(line)
                }
                while let Ok(record) = inv_rx.try_recv() {
                    records.push(record)
                }
                while let Ok(span) = span_rx.try_recv() {
                    traced.push(span)
                }
                write(&*meta, &mut lines, &mut records, &mut traced, &export).await;
                write_usage(&*meta, &tally).await;
                if let Some(ack) = flushing {
                    let _ = ack.send(());
                }
            }
            write(&*meta, &mut lines, &mut records, &mut traced, &export).await;
            write_usage(&*meta, &tally).await;
        });
        Self {
            logs,
            invocations,
            spans,
            flush,
            usage,
        }
    }

    /// Counts usage of `env` by `function` (empty: no function) now; never waits.
    pub fn count_usage(&self, env: &EnvId, function: &str, counts: UsageCounts) {
        let mut tally = self
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let functions = match tally.get_mut(env) {
            Some(functions) => functions,
            None => tally.entry(env.clone()).or_default(),
        };
        match functions.get_mut(function) {
            Some(counted) => counted.add(&counts),
            None => {
                functions.insert(function.to_owned(), counts);
            }
        }
    }

    /// The sender the functions runtime writes instance output to.
    pub fn log_sender(&self) -> mpsc::Sender<NewLogLine> {
        self.logs.clone()
    }

    pub async fn log(&self, line: NewLogLine) {
        let _ = self.logs.send(line).await;
    }

    pub async fn invocation(&self, record: InvocationRecord) {
        let _ = self.invocations.send(record).await;
    }

    /// Queues an operation's span; dropped rather than waited for when the queue is full
    /// (spans are diagnostics: the operation must not slow down for them).
    pub fn span(&self, span: SpanRecord) {
        let _ = self.spans.try_send(span);
    }

    /// Returns once everything queued before the call is written.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.flush.send(ack).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write_usage(meta: &dyn MetaStore, tally: &UsageTally) {
    let counted = std::mem::take(
        &mut *tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if counted.is_empty() {
        return;
    }
    let at_ms = yun_types::unix_ms();
    let increments = counted
        .into_iter()
        .flat_map(|(env, functions)| {
            functions
                .into_iter()
                .map(move |(function, counts)| UsageIncrement {
                    env: env.clone(),
                    function,
                    at_ms,
                    counts,
                })
        })
        .collect();
    if let Err(e) = meta.add_usage(increments).await {
        tracing::error!(error = %e, "could not store usage");
    }
}

async fn write(
    meta: &dyn MetaStore,
    lines: &mut Vec<NewLogLine>,
    records: &mut Vec<InvocationRecord>,
    spans: &mut Vec<SpanRecord>,
    export: &Export,
) {
    if let Some(export) = export {
        let invocations = records.iter().flat_map(invocation_spans);
        for span in invocations.chain(spans.iter().cloned()) {
            if export.try_send(span).is_err() {
                tracing::warn!("OTLP export is behind: spans dropped");
                break;
            }
        }
    }
    let (spans, lines, records) = (
        std::mem::take(spans),
        std::mem::take(lines),
        std::mem::take(records),
    );
    let store_spans = async {
        if !spans.is_empty() {
            if let Err(e) = meta.append_spans(spans).await {
                tracing::error!(error = %e, "could not store trace spans");
            }
        }
    };
    let store_lines = async {
        if !lines.is_empty() {
            if let Err(e) = meta.append_logs(lines).await {
                tracing::error!(error = %e, "could not store function logs");
            }
        }
    };
    let store_records = async {
        if !records.is_empty() {
            if let Err(e) = meta.append_invocations(records).await {
                tracing::error!(error = %e, "could not store invocation records");
            }
        }
    };
    // Issued together, they share one commit of the store's writer (group commit).
    tokio::join!(store_spans, store_lines, store_records);
}
