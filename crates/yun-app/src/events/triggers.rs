//! Triggers as CloudBase users write them (`config.json`'s `triggers`, `yun fn trigger
//! create`): `{name, type, config}`. Types:
//! - `timer`: `config` is SCF's 7-field cron (`0 0 2 1 * * *`), in the env's time zone
//!   (UTC+8 by default, as CloudBase).
//! - `database`: `config` is `{collection, events?: ["create","update","delete"],
//!   filter?: {query}}` (an object, or JSON text of one); the event carries the document
//!   before and after.
//! - `storage`: `config` is SCF's COS trigger description, `{event:
//!   "cos:ObjectCreated:*" | "cos:ObjectRemove:*", filter?: {Prefix, Suffix}}`; the event
//!   is COS's `Records` shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use yun_auth::Identity;
use yun_docdb::filter::Filter;
use yun_docdb::store::ChangeOp;
use yun_meta::TriggerRecord;
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};

use super::cron::{self, Schedule};
use crate::authz::Operation;
use crate::cache::Forget;
use crate::App;

/// SCF's limit: triggers of one type per function.
const MAX_OF_A_TYPE: usize = 10;

/// A trigger as a deploy or `yun fn trigger create` gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTrigger {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// A cron string for a timer; an object (or its JSON text) for a database trigger.
    pub config: Value,
}

/// A trigger's configuration, checked.
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    Timer(Schedule),
    Database {
        collection: String,
        ops: Vec<ChangeOp>,
        filter: Option<Filter>,
    },
    Storage {
        /// The file index's op: `created` or `removed`.
        op: &'static str,
        prefix: String,
        suffix: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageConfig {
    event: String,
    #[serde(default)]
    filter: StorageFilter,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StorageFilter {
    #[serde(default, rename = "Prefix")]
    prefix: String,
    #[serde(default, rename = "Suffix")]
    suffix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseConfig {
    collection: String,
    events: Option<Vec<String>>,
    filter: Option<Value>,
}

/// A stored trigger with its configuration parsed.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    pub record: TriggerRecord,
    pub spec: Spec,
}

fn invalid(name: &str, why: impl std::fmt::Display) -> YunError {
    YunError::invalid_param(format!("trigger {name:?}: {why}"))
}

/// Checks a name as SCF does: a letter, then letters, digits, `-` or `_`; at most 60.
fn check_name(name: &str) -> Result<(), YunError> {
    let ok = (1..=60).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            "a name is a letter, then letters, digits, - or _ (at most 60)",
        ))
    }
}

/// Parses a trigger's stored form.
pub(crate) fn parse(name: &str, kind: &str, config: &str) -> Result<Spec, YunError> {
    match kind {
        "timer" => cron::parse(config)
            .map(Spec::Timer)
            .map_err(|e| invalid(name, e)),
        "database" => {
            let c: DatabaseConfig = serde_json::from_str(config).map_err(|e| {
                invalid(
                    name,
                    format!("a database trigger's config is {{collection, events?, filter?}}: {e}"),
                )
            })?;
            yun_docdb::db::check_collection(&c.collection).map_err(|e| invalid(name, e.message))?;
            let ops = match c.events {
                None => vec![ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete],
                Some(events) if events.is_empty() => {
                    return Err(invalid(
                        name,
                        "events must name at least one of create, update, delete",
                    ))
                }
                Some(events) => events
                    .iter()
                    .map(|e| match ChangeOp::parse(e) {
                        Some(op) if op != ChangeOp::Drop => Ok(op),
                        _ => Err(invalid(
                            name,
                            format!("unknown event {e:?} (create, update or delete)"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            };
            let filter = c
                .filter
                .map(|f| {
                    Filter::parse(&f).map_err(|e| invalid(name, format!("filter: {}", e.message)))
                })
                .transpose()?;
            Ok(Spec::Database {
                collection: c.collection,
                ops,
                filter,
            })
        }
        "storage" => {
            let c: StorageConfig = serde_json::from_str(config).map_err(|e| {
                invalid(
                    name,
                    format!(
                        "a storage trigger's config is {{event, filter?: {{Prefix, Suffix}}}}: {e}"
                    ),
                )
            })?;
            let op = match c.event.as_str() {
                "cos:ObjectCreated:*" => "created",
                "cos:ObjectRemove:*" => "removed",
                other => {
                    return Err(invalid(
                        name,
                        format!("event {other:?}: cos:ObjectCreated:* or cos:ObjectRemove:*"),
                    ))
                }
            };
            Ok(Spec::Storage {
                op,
                prefix: c.filter.prefix,
                suffix: c.filter.suffix,
            })
        }
        other => Err(invalid(
            name,
            format!("unknown type {other:?} (timer, database or storage)"),
        )),
    }
}

/// The stored form of a given trigger's config: a timer's cron string, or JSON text.
fn stored_config(t: &NewTrigger) -> Result<String, YunError> {
    match &t.config {
        Value::String(s) => Ok(s.clone()),
        Value::Object(_) if t.kind != "timer" => Ok(t.config.to_string()),
        _ => Err(invalid(
            &t.name,
            "config must be a cron string (timer) or an object (database, storage)",
        )),
    }
}

/// A request id derived from what caused an event, so that the same cause (a timer's
/// tick, a change to a document) publishes once even from several processes.
pub(crate) fn derived_request_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(p.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

impl App {
    /// Checks triggers for a function and makes their records (not stored).
    pub(crate) async fn check_triggers(
        &self,
        env: &EnvId,
        function: &FunctionName,
        triggers: &[NewTrigger],
    ) -> Result<Vec<TriggerRecord>, YunError> {
        let mut records: Vec<TriggerRecord> = Vec::new();
        for t in triggers {
            check_name(&t.name)?;
            if records.iter().any(|r| r.name == t.name) {
                return Err(invalid(&t.name, "named twice"));
            }
            let config = stored_config(t)?;
            let spec = parse(&t.name, &t.kind, &config)?;
            if let Spec::Timer(schedule) = &spec {
                let now = time::OffsetDateTime::now_utc();
                if schedule
                    .next_after(time::PrimitiveDateTime::new(now.date(), now.time()))
                    .is_none()
                {
                    return Err(invalid(&t.name, format!("{config:?} never fires again")));
                }
            }
            if let Spec::Database { collection, .. } = spec {
                if !self
                    .docdb
                    .list_collections(env)
                    .await?
                    .contains(&collection)
                {
                    return Err(YunError::new(
                        ErrorCode::CollectionNotFound,
                        format!(
                            "trigger {:?}: collection {collection} does not exist",
                            t.name
                        ),
                    ));
                }
            }
            if records.iter().filter(|r| r.kind == t.kind).count() >= MAX_OF_A_TYPE {
                return Err(invalid(
                    &t.name,
                    format!("a function has at most {MAX_OF_A_TYPE} {} triggers", t.kind),
                ));
            }
            records.push(TriggerRecord {
                env: env.clone(),
                function: function.clone(),
                name: t.name.clone(),
                kind: t.kind.clone(),
                config,
                created_at_ms: yun_types::unix_ms(),
                last_fired_ms: None,
            });
        }
        Ok(records)
    }

    pub async fn create_trigger(
        &self,
        identity: &Identity,
        function: &FunctionName,
        trigger: NewTrigger,
    ) -> Result<TriggerRecord, YunError> {
        Self::authorize(identity, Operation::ManageTriggers)?;
        self.function(&identity.env, function).await?;
        let existing = self
            .meta
            .list_triggers(Some(&identity.env), Some(function))
            .await?;
        let [record] = <[TriggerRecord; 1]>::try_from(
            self.check_triggers(&identity.env, function, std::slice::from_ref(&trigger))
                .await?,
        )
        .map_err(|_| YunError::internal("one trigger checked, not one made"))?;
        if existing.iter().filter(|t| t.kind == record.kind).count() >= MAX_OF_A_TYPE {
            return Err(invalid(
                &record.name,
                format!(
                    "a function has at most {MAX_OF_A_TYPE} {} triggers",
                    record.kind
                ),
            ));
        }
        self.meta.insert_trigger(&record).await?;
        self.forget(Forget::Triggers);
        Ok(record)
    }

    pub async fn list_triggers(
        &self,
        identity: &Identity,
        function: Option<&FunctionName>,
    ) -> Result<Vec<TriggerRecord>, YunError> {
        Self::authorize(identity, Operation::ListTriggers)?;
        self.meta.list_triggers(Some(&identity.env), function).await
    }

    pub async fn delete_trigger(
        &self,
        identity: &Identity,
        function: &FunctionName,
        name: &str,
    ) -> Result<(), YunError> {
        Self::authorize(identity, Operation::ManageTriggers)?;
        if !self
            .meta
            .delete_trigger(&identity.env, function, name)
            .await?
        {
            return Err(YunError::new(
                ErrorCode::NotFound,
                format!("function {function} has no trigger {name:?}"),
            ));
        }
        self.forget(Forget::Triggers);
        Ok(())
    }

    /// Every stored trigger of `kind`, parsed; one that no longer parses is skipped
    /// with a warning (it was checked when stored).
    pub(crate) async fn triggers_of_kind(&self, kind: &str) -> Result<Vec<Trigger>, YunError> {
        Ok(self
            .meta
            .list_triggers(None, None)
            .await?
            .into_iter()
            .filter(|r| r.kind == kind)
            .filter_map(
                |record| match parse(&record.name, &record.kind, &record.config) {
                    Ok(spec) => Some(Trigger { record, spec }),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "skipping a stored trigger");
                        None
                    }
                },
            )
            .collect())
    }

    /// Wakes the timer and change loops to read the triggers again.
    pub(crate) fn triggers_changed(&self) {
        self.trigger_signal.send_modify(|n| *n += 1);
    }

    pub(crate) fn trigger_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trigger_signal.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_with_clear_errors() {
        assert!(matches!(
            parse("t", "timer", "0 0 2 1 * * *"),
            Ok(Spec::Timer(_))
        ));
        let Ok(Spec::Database {
            collection,
            ops,
            filter,
        }) = parse(
            "d",
            "database",
            r#"{"collection":"photos","events":["create","delete"],"filter":{"album":"a1"}}"#,
        )
        else {
            panic!("a database trigger parses");
        };
        assert_eq!(collection, "photos");
        assert_eq!(ops, [ChangeOp::Create, ChangeOp::Delete]);
        assert!(filter.is_some());
        for (kind, config, says) in [
            ("timer", "0 0 2 1 * *", "7 fields"),
            ("database", "{}", "missing field `collection`"),
            (
                "database",
                r#"{"collection":"a$b"}"#,
                "invalid collection name",
            ),
            (
                "database",
                r#"{"collection":"c","events":["drop"]}"#,
                "unknown event \"drop\"",
            ),
            (
                "database",
                r#"{"collection":"c","events":[]}"#,
                "at least one",
            ),
            (
                "database",
                r#"{"collection":"c","filter":{"n":{"$nope":1}}}"#,
                "filter:",
            ),
            (
                "database",
                r#"{"collection":"c","other":1}"#,
                "unknown field `other`",
            ),
            ("queue", "x", "unknown type \"queue\""),
            (
                "storage",
                r#"{"event":"cos:ObjectCreated:Put"}"#,
                "cos:ObjectCreated:* or",
            ),
            (
                "storage",
                r#"{"event":"cos:ObjectRemove:*","filter":{"prefix":"a"}}"#,
                "unknown field `prefix`",
            ),
        ] {
            let e = parse("t", kind, config).unwrap_err();
            assert!(e.message.contains(says), "{kind} {config}: {}", e.message);
        }
        for bad in ["", "1abc", "a b", &"x".repeat(61)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("every_Day-1").unwrap();
    }

    #[test]
    fn derived_request_ids_are_stable_hex_and_tell_causes_apart() {
        let a = derived_request_id(&["timer", "dev", "f", "t", "1000"]);
        assert_eq!(a, derived_request_id(&["timer", "dev", "f", "t", "1000"]));
        assert_ne!(a, derived_request_id(&["timer", "dev", "f", "t", "2000"]));
        assert_ne!(
            derived_request_id(&["ab", "c"]),
            derived_request_id(&["a", "bc"])
        );
        assert!(a.len() == 32 && a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
