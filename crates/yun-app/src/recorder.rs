//! Background writer for the append-only streams (function logs, invocation records):
//! the invocation path only queues; batches are written in one transaction each. After
//! the first item of a batch arrives the writer lingers a moment, so a busy function
//! costs a transaction per linger, not one per wake-up (a commit costs more than the
//! rows in it). Reads flush first, so they never miss what was queued before them.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use yun_meta::{InvocationRecord, MetaStore, NewLogLine};

/// Queued log lines beyond this make function output wait (back-pressure), never drop.
const QUEUE: usize = 64 * 1024;
const BATCH: usize = 2048;
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Clone)]
pub struct Recorder {
    logs: mpsc::Sender<NewLogLine>,
    invocations: mpsc::Sender<InvocationRecord>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Recorder {
    pub fn start(meta: Arc<dyn MetaStore>) -> Self {
        let (logs, mut log_rx) = mpsc::channel::<NewLogLine>(QUEUE);
        let (invocations, mut inv_rx) = mpsc::channel::<InvocationRecord>(QUEUE);
        let (flush, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(16);
        tokio::spawn(async move {
            let (mut lines, mut records) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            loop {
                let flushing = tokio::select! {
                    n = log_rx.recv_many(&mut lines, BATCH) => { if n == 0 { break } None }
                    n = inv_rx.recv_many(&mut records, BATCH) => { if n == 0 { break } None }
                    Some(ack) = flush_rx.recv() => Some(ack),
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
                write(&*meta, &mut lines, &mut records).await;
                if let Some(ack) = flushing {
                    let _ = ack.send(());
                }
            }
            write(&*meta, &mut lines, &mut records).await;
        });
        Self {
            logs,
            invocations,
            flush,
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

    /// Returns once everything queued before the call is written.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.flush.send(ack).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write(
    meta: &dyn MetaStore,
    lines: &mut Vec<NewLogLine>,
    records: &mut Vec<InvocationRecord>,
) {
    if !lines.is_empty() {
        if let Err(e) = meta.append_logs(std::mem::take(lines)).await {
            tracing::error!(error = %e, "could not store function logs");
        }
    }
    if !records.is_empty() {
        if let Err(e) = meta.append_invocations(std::mem::take(records)).await {
            tracing::error!(error = %e, "could not store invocation records");
        }
    }
}
