//! Database and storage triggers, read from the change logs (the outboxes of
//! `yun-docdb` and of `yun-storage`'s file index): each change that a trigger selects
//! becomes an async event. A database trigger's (by collection, events and filter):
//!
//! ```json
//! {"Type": "Database", "TriggerName": "onPhoto", "Collection": "photos",
//!  "Event": "update", "DocId": "…", "Before": {…}, "After": {…},
//!  "Time": "2026-12-02T11:49:00.123Z", "Seq": 42}
//! ```
//!
//! `Before` is null for a create, `After` for a delete. A filter selects an update when
//! the document matches it before or after (so leaving the filter is seen too), a create
//! by the new document, a delete by the old. Events are at most 256 KiB (CloudBase's
//! cap): past it `Before`, then `After`, are left out and `Truncated` is true.
//!
//! A storage trigger's (by event, prefix and suffix) is COS's shape, one record:
//! `{"Records": [{"cos": {"cosObject": {"key": "/yun/<env>/<path>", "size", "meta":
//! {"Content-Type"}, "fileID": "cloud://…", "url": ""}, "cosBucket": {"name": "<env>",
//! "appid": "yun", "region": "yun"}, …}, "event": {"eventName":
//! "cos:ObjectCreated:Put" | "cos:ObjectRemove:Delete", "eventTime": <seconds>, …}}]}`
//! (a copy is reported as a Put).
//!
//! The loop guard: a change written by a function's own code never fires that function's
//! triggers, so a trigger that writes to its collection does not call itself forever.
//! Files are uploaded through signed URLs that carry no function: as on SCF, a storage
//! trigger whose function writes files must not match its own outputs (prefix, suffix).
//! The reader's position is saved in the change log after each batch is on the bus:
//! a crash repeats at most a batch, and its request ids (derived from the change's
//! sequence) make the bus drop the repeats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::OffsetDateTime;
use yun_docdb::store::{ChangeEntry, ChangeLog, ChangeOp, ChangeRetention};
use yun_types::YunError;

use super::async_invoke::QueuedEvent;
use super::triggers::{derived_request_id, Spec, Trigger};
use crate::App;

/// The change log reader's name (its cursor).
const READER: &str = "triggers";
const BATCH: usize = 256;
/// How often the log is looked at when it had nothing new.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// CloudBase's cap on a database trigger's event.
const MAX_DB_EVENT_BYTES: usize = 256 << 10;

/// Where changes come from.
#[derive(Debug, Clone, Copy)]
pub enum ChangeSource {
    Documents,
    Files,
}

impl ChangeSource {
    /// The trigger type that reads this log.
    fn kind(self) -> &'static str {
        match self {
            ChangeSource::Documents => "database",
            ChangeSource::Files => "storage",
        }
    }
}

/// Whether `trigger` selects `change`.
fn selects(trigger: &Trigger, change: &ChangeEntry) -> bool {
    let r = &trigger.record;
    if r.env.as_str() != change.env || change.origin.as_deref() == Some(r.function.as_str()) {
        return false;
    }
    match &trigger.spec {
        Spec::Database {
            collection,
            ops,
            filter,
        } => selects_document(collection, ops, filter.as_ref(), change),
        Spec::Storage { op, prefix, suffix } => {
            change.op == *op
                && change.key.starts_with(prefix.as_str())
                && change.key.ends_with(suffix.as_str())
        }
        Spec::Timer(_) => false,
    }
}

fn selects_document(
    collection: &str,
    ops: &[ChangeOp],
    filter: Option<&yun_docdb::filter::Filter>,
    change: &ChangeEntry,
) -> bool {
    let Some(op) = ChangeOp::parse(&change.op) else {
        return false;
    };
    if collection != change.target || !ops.contains(&op) {
        return false;
    }
    let Some(filter) = filter else { return true };
    let matches = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .is_some_and(|doc| filter.matches(&doc))
    };
    match op {
        ChangeOp::Create => matches(&change.after),
        ChangeOp::Update => matches(&change.before) || matches(&change.after),
        ChangeOp::Delete => matches(&change.before),
        ChangeOp::Drop => false,
    }
}

/// The event a trigger's function gets.
fn event(trigger: &Trigger, change: &ChangeEntry) -> String {
    match trigger.spec {
        Spec::Storage { .. } => file_event(change),
        _ => document_event(&trigger.record.name, change),
    }
}

/// COS's event for a file change.
fn file_event(change: &ChangeEntry) -> String {
    let record: Value = change
        .after
        .as_deref()
        .or(change.before.as_deref())
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let name = if change.op == "created" {
        "cos:ObjectCreated:Put"
    } else {
        "cos:ObjectRemove:Delete"
    };
    json!({ "Records": [{
        "cos": {
            "cosSchemaVersion": "1.0",
            "cosObject": {
                "url": "",
                "fileID": format!("cloud://{env}.{env}-yun/{path}", env = change.env, path = change.key),
                "meta": {
                    "x-cos-request-id": "",
                    "Content-Type": record["contentType"],
                },
                "vid": "",
                "key": format!("/yun/{}/{}", change.env, change.key),
                "size": record["size"],
            },
            "cosBucket": { "region": "yun", "name": change.env, "appid": "yun" },
            "cosNotificationId": "unkown",
        },
        "event": {
            "eventName": name,
            "eventVersion": "1.0",
            "eventTime": change.at_ms / 1000,
            "eventSource": "qcs::cos",
            "requestParameters": { "requestSourceIP": "", "requestHeaders": {} },
            "eventQueue": "",
            "reservedInfo": "",
            "reqid": change.seq,
        },
    }]})
    .to_string()
}

/// A database trigger's event, within the size cap.
fn document_event(trigger: &str, change: &ChangeEntry) -> String {
    let doc = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .unwrap_or(Value::Null)
    };
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(change.at_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut event = json!({
        "Type": "Database",
        "TriggerName": trigger,
        "Collection": change.target,
        "Event": change.op,
        "DocId": change.key,
        "Before": doc(&change.before),
        "After": doc(&change.after),
        "Time": time,
        "Seq": change.seq,
    });
    for dropped in ["Before", "After"] {
        if event.to_string().len() <= MAX_DB_EVENT_BYTES {
            break;
        }
        event[dropped] = Value::Null;
        event["Truncated"] = Value::Bool(true);
    }
    event.to_string()
}

impl App {
    fn change_log(&self, source: ChangeSource) -> &dyn ChangeLog {
        match source {
            ChangeSource::Documents => self.docdb.store().change_log(),
            ChangeSource::Files => self.storage.change_log(),
        }
    }

    /// Turns one log's changes into trigger events until the process ends, and prunes
    /// the log behind itself.
    pub async fn run_change_triggers(self: Arc<Self>, source: ChangeSource) {
        let store = self.change_log(source);
        let mut cursor = loop {
            match self.change_reader_start(store).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e.message, "change triggers: cannot read the log's position; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut changed = self.trigger_signal();
        let mut triggers: Option<Vec<Trigger>> = None;
        let mut pruned_at = Instant::now();
        loop {
            if changed.has_changed().unwrap_or(false) {
                changed.borrow_and_update();
                triggers = None;
            }
            let loaded = match &triggers {
                Some(t) => t,
                None => match self.triggers_of_kind(source.kind()).await {
                    Ok(t) => triggers.insert(t),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "change triggers: cannot read the triggers; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let batch = match store.changes_after(cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e.message, "change triggers: cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Pruned on a clock of its own: a log that is never idle is pruned too.
            if pruned_at.elapsed() > PRUNE_EVERY {
                pruned_at = Instant::now();
                if let Err(e) = store
                    .prune_changes(ChangeRetention::default(), cursor + 1)
                    .await
                {
                    tracing::warn!(error = %e.message, "pruning the change log failed");
                }
            }
            let Some(last) = batch.last().map(|c| c.seq) else {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    // `changed()` marks the change seen: read the triggers again here.
                    _ = changed.changed() => triggers = None,
                }
                continue;
            };
            if let Err(e) = self.publish_changes(loaded, &batch).await {
                // The batch is read again: what was published is dropped as a repeat.
                tracing::warn!(error = %e.message, "change triggers: publishing failed; retrying the batch");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            cursor = last;
            if let Err(e) = store.save_change_cursor(READER, cursor).await {
                tracing::warn!(error = %e.message, "change triggers: cannot save the log's position");
            }
        }
    }

    /// Where reading starts: the saved position, or on a first start the log's end (a
    /// trigger sees the changes after it exists, not the history).
    async fn change_reader_start(&self, store: &dyn ChangeLog) -> Result<u64, YunError> {
        if let Some(saved) = store.change_cursor(READER).await? {
            return Ok(saved);
        }
        let end = store.last_change().await?;
        store.save_change_cursor(READER, end).await?;
        Ok(end)
    }

    async fn publish_changes(
        &self,
        triggers: &[Trigger],
        batch: &[ChangeEntry],
    ) -> Result<(), YunError> {
        let now = yun_types::unix_ms();
        for change in batch {
            // The invocation whose write this was: the delivery is one it caused.
            let cause = change.cause.as_deref().map_or((None, None), |c| {
                let (request_id, traceparent) =
                    c.split_once(' ').map_or((c, None), |(r, t)| (r, Some(t)));
                (Some(request_id.to_owned()), traceparent.map(str::to_owned))
            });
            for trigger in triggers.iter().filter(|t| selects(t, change)) {
                let r = &trigger.record;
                let queued = QueuedEvent {
                    env: change.env.clone(),
                    function: r.function.to_string(),
                    request_id: derived_request_id(&[
                        &r.kind,
                        &change.seq.to_string(),
                        r.env.as_str(),
                        r.function.as_str(),
                        &r.name,
                    ]),
                    event: event(trigger, change),
                    source: trigger.record.kind.clone(),
                    trigger: Some(r.name.clone()),
                    enqueued_at_ms: now,
                    parent_request_id: cause.0.clone(),
                    traceparent: cause.1.clone(),
                };
                self.enqueue(&queued).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yun_meta::TriggerRecord;
    use yun_types::{EnvId, FunctionName};

    fn trigger(config: &str) -> Trigger {
        Trigger {
            record: TriggerRecord {
                env: EnvId::parse("dev").unwrap(),
                function: FunctionName::parse("onPhoto").unwrap(),
                name: "t".into(),
                kind: "database".into(),
                config: config.into(),
                created_at_ms: 0,
                last_fired_ms: None,
            },
            spec: super::super::triggers::parse("t", "database", config).unwrap(),
        }
    }

    fn change(op: ChangeOp, before: Option<&str>, after: Option<&str>) -> ChangeEntry {
        ChangeEntry {
            seq: 7,
            env: "dev".into(),
            origin: None,
            cause: None,
            target: "photos".into(),
            key: "p1".into(),
            op: op.as_str().into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
            at_ms: 1_764_000_000_123,
        }
    }

    #[test]
    fn triggers_select_by_collection_event_filter_and_never_their_own_writes() {
        let t = trigger(
            r#"{"collection":"photos","events":["create","update"],"filter":{"album":"a1"}}"#,
        );
        let in_a1 = r#"{"_id":"p1","album":"a1"}"#;
        let in_a2 = r#"{"_id":"p1","album":"a2"}"#;
        assert!(selects(&t, &change(ChangeOp::Create, None, Some(in_a1))));
        assert!(!selects(&t, &change(ChangeOp::Create, None, Some(in_a2))));
        // Leaving the filter is an update it sees; one outside it throughout is not.
        assert!(selects(
            &t,
            &change(ChangeOp::Update, Some(in_a1), Some(in_a2))
        ));
        assert!(!selects(
            &t,
            &change(ChangeOp::Update, Some(in_a2), Some(in_a2))
        ));
        assert!(
            !selects(&t, &change(ChangeOp::Delete, Some(in_a1), None)),
            "not its event"
        );
        let mut other = change(ChangeOp::Create, None, Some(in_a1));
        other.target = "albums".into();
        assert!(!selects(&t, &other));
        other = change(ChangeOp::Create, None, Some(in_a1));
        other.env = "prod".into();
        assert!(!selects(&t, &other));
        let mut own = change(ChangeOp::Create, None, Some(in_a1));
        own.origin = Some("onPhoto".into());
        assert!(!selects(&t, &own), "the loop guard");
        own.origin = Some("someoneElse".into());
        assert!(selects(&t, &own));
    }

    #[test]
    fn events_carry_before_and_after_within_the_cap() {
        let e: Value = serde_json::from_str(&document_event(
            "t",
            &change(
                ChangeOp::Update,
                Some(r#"{"_id":"p1","n":1}"#),
                Some(r#"{"_id":"p1","n":2}"#),
            ),
        ))
        .unwrap();
        assert_eq!(e["Type"], "Database");
        assert_eq!(e["Event"], "update");
        assert_eq!(e["Before"]["n"], 1);
        assert_eq!(e["After"]["n"], 2);
        assert_eq!(e["Time"], "2025-11-24T16:00:00.123Z");
        assert_eq!(e["Seq"], 7);
        assert!(e.get("Truncated").is_none());
        let big = format!(r#"{{"_id":"p1","s":"{}"}}"#, "x".repeat(200 << 10));
        let e: Value = serde_json::from_str(&document_event(
            "t",
            &change(ChangeOp::Update, Some(&big), Some(&big)),
        ))
        .unwrap();
        assert_eq!(e["Truncated"], true);
        assert!(e["Before"].is_null());
        assert_eq!(e["After"]["s"].as_str().unwrap().len(), 200 << 10);
    }
}
