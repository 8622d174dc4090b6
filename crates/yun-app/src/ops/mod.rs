//! Operating Yun: Prometheus metrics (`metrics.rs`), usage metering (`usage.rs`), log
//! and record retention (`retention.rs`), request traces (`trace.rs`, exported by
//! `otlp.rs`), readiness and draining.

mod alerts;
mod backup;
pub(crate) mod metrics;
mod otlp;
mod retention;
pub(crate) mod trace;
mod usage;

use std::sync::atomic::Ordering;

use yun_auth::{Caller, Identity};
use yun_meta::UsageCounts;
use yun_types::YunError;

use crate::{App, Operation};

pub use alerts::{Delivery, NewAlert};
pub use backup::{BackupInfo, Backups};
pub use metrics::{install_metrics, metrics_on, on_scrape};
pub use otlp::OtlpConfig;
pub use trace::{traced, Trace, TraceContext};
pub use usage::{UsageLine, UsageQuery, UsageReport};

/// A database operation under way: counted in metrics and usage, and a span of the
/// trace it runs in, when it ends.
pub(crate) struct DbOperation<'a> {
    app: &'a App,
    identity: &'a Identity,
    kind: &'static str,
    write: bool,
    span: Option<trace::OpSpan>,
}

/// A database operation's metrics label, its span's name, and whether it writes.
fn db_kind(operation: Operation) -> (&'static str, &'static str, bool) {
    use Operation as O;
    match operation {
        O::FindDocuments | O::TransactionFind | O::UserFind => ("find", "db.find", false),
        O::CountDocuments | O::UserCount => ("count", "db.count", false),
        O::AggregateDocuments | O::UserAggregate => ("aggregate", "db.aggregate", false),
        O::InsertDocuments | O::TransactionInsert | O::UserInsert | O::ImportDocuments => {
            ("insert", "db.insert", true)
        }
        O::UpdateDocuments | O::TransactionUpdate | O::UserUpdate => ("update", "db.update", true),
        O::RemoveDocuments | O::TransactionRemove | O::UserRemove => ("remove", "db.remove", true),
        O::StartTransaction | O::CommitTransaction | O::AbortTransaction => {
            ("transaction", "db.transaction", true)
        }
        O::CreateIndex | O::DropIndex | O::CreateCollection | O::DropCollection => {
            ("schema", "db.schema", true)
        }
        _ => ("schema", "db.schema", false),
    }
}

impl Drop for DbOperation<'_> {
    fn drop(&mut self) {
        let env = &self.identity.env;
        if let Some(span) = self.span.take() {
            metrics::db_operation(env, self.kind, span.elapsed());
            // The guard does not see the operation's result: its span's status is unset.
            span.end(self.app, self.identity, "unset");
        }
        let function = match &self.identity.caller {
            Caller::Function { name } => name.as_str(),
            _ => "",
        };
        let counts = if self.write {
            UsageCounts {
                db_writes: 1,
                ..UsageCounts::default()
            }
        } else {
            UsageCounts {
                db_reads: 1,
                ..UsageCounts::default()
            }
        };
        self.app.recorder.count_usage(env, function, counts);
    }
}

impl App {
    /// [`App::authorize`] for a database operation, which is then measured until the
    /// returned guard drops.
    pub(crate) fn db_operation<'a>(
        &'a self,
        identity: &'a Identity,
        operation: Operation,
    ) -> Result<DbOperation<'a>, YunError> {
        Self::authorize(identity, operation)?;
        let (kind, span_name, write) = db_kind(operation);
        Ok(DbOperation {
            app: self,
            identity,
            kind,
            write,
            span: Some(trace::OpSpan::start(span_name)),
        })
    }

    /// Why Yun is not ready to serve, if it is not: draining after SIGTERM, the SDK
    /// layer installing (a first start) or failed, the first stem cells starting.
    pub fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Acquire) {
            return Some("draining: the server is shutting down".into());
        }
        match self.runtime.layer_state() {
            yun_functions::LayerState::Ready => {}
            yun_functions::LayerState::Installing => {
                return Some("the Node SDK layer is installing".into())
            }
            yun_functions::LayerState::Failed(why) => return Some(why),
        }
        (!self.runtime.stems_settled()).then(|| "the first stem cells are starting".into())
    }

    /// From now on `/readyz` answers 503: a load balancer stops sending new requests
    /// while those under way finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
