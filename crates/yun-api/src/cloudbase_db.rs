//! `database.*` actions of the CloudBase v2 protocol (`../shared/cloudbase-protocol.md`
//! §2.2, §3): `query`, `order`, `projection` and `data` arrive as EJSON strings;
//! documents go back as EJSON strings in `data.list`.

use serde_json::{json, Map, Value};
use yun_app::{App, Identity};
use yun_docdb::filter::{upsert_seed, Filter};
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::value::{parse_ejson, to_ejson_text};
use yun_docdb::{Change, Find};
use yun_types::{ErrorCode, YunError};

pub(crate) fn collection(body: &Map<String, Value>) -> Result<&str, YunError> {
    body.get("collectionName")
        .and_then(Value::as_str)
        .ok_or_else(|| YunError::invalid_param("collectionName is required"))
}

/// An EJSON string parameter, parsed; `None` when absent or empty.
fn ejson(body: &Map<String, Value>, key: &str) -> Result<Option<Value>, YunError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_ejson(s, yun_types::unix_ms()).map(Some),
        Some(_) => Err(YunError::invalid_param(format!(
            "{key} must be an EJSON string"
        ))),
    }
}

pub(crate) fn flag(body: &Map<String, Value>, key: &str, default: bool) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(default)
}

pub(crate) fn count(body: &Map<String, Value>, key: &str) -> Result<Option<usize>, YunError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                YunError::invalid_param(format!("{key} must be a non-negative integer"))
            }),
    }
}

fn to_wire(doc: &Value) -> Value {
    Value::String(to_ejson_text(doc))
}

fn parse_docs(body: &Map<String, Value>) -> Result<Vec<Value>, YunError> {
    let wrong = || YunError::invalid_param("data must be an array of EJSON strings");
    let items = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(wrong)?;
    items
        .iter()
        .map(|d| {
            d.as_str()
                .ok_or_else(wrong)
                .and_then(|s| parse_ejson(s, yun_types::unix_ms()))
        })
        .collect()
}

/// An aggregation's `stages`: `[{stageKey, stageValue}]`, each value JSON text.
pub(crate) fn stage_texts(body: &Map<String, Value>) -> Result<Vec<(&str, &str)>, YunError> {
    let wrong =
        || YunError::invalid_param("stages must be [{stageKey, stageValue}] with JSON text values");
    body.get("stages")
        .and_then(Value::as_array)
        .ok_or_else(wrong)?
        .iter()
        .map(|stage| {
            let key = stage
                .get("stageKey")
                .and_then(Value::as_str)
                .ok_or_else(wrong)?;
            let value = stage
                .get("stageValue")
                .and_then(Value::as_str)
                .ok_or_else(wrong)?;
            Ok((key, value))
        })
        .collect()
}

/// `modifyDocument`'s `data`: a replacement (`merge: false`, from `doc.set`) or
/// operators (plain fields are `$set`).
fn parse_change(body: &Map<String, Value>) -> Result<Change, YunError> {
    let data = ejson(body, "data")?.ok_or_else(|| YunError::invalid_param("data is required"))?;
    Ok(if !flag(body, "merge", true) {
        Change::Replace(data)
    } else if yun_docdb::update::is_operator_update(&data) {
        Change::Operators(data)
    } else {
        Change::Operators(json!({ "$set": data }))
    })
}

fn projection(body: &Map<String, Value>) -> Result<Projection, YunError> {
    Ok(ejson(body, "projection")?
        .map(|p| Projection::parse(&p))
        .transpose()?
        .unwrap_or(Projection::All))
}

fn transaction_id(body: &Map<String, Value>) -> Option<&str> {
    body.get("transactionId")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// The actions inside a transaction: `startTransaction`'s id rides on each of them.
async fn in_transaction(
    app: &App,
    who: &Identity,
    txn: &str,
    action: &str,
    body: &Map<String, Value>,
    query: &Value,
) -> Result<Value, YunError> {
    let filter = Filter::parse(query)?;
    Ok(match action {
        "database.commitTransaction" => {
            app.db_commit_transaction(who, txn).await?;
            json!({})
        }
        "database.abortTransaction" => {
            app.db_abort_transaction(who, txn).await?;
            json!({})
        }
        "database.insertDocument" => {
            json!({ "insertedIds": app.db_txn_insert(who, txn, collection(body)?, parse_docs(body)?).await? })
        }
        "database.getDocument" => {
            let docs = app
                .db_txn_find(who, txn, collection(body)?, &filter, &projection(body)?)
                .await?;
            json!({ "list": docs.iter().map(to_wire).collect::<Vec<_>>() })
        }
        "database.modifyDocument" => {
            let upsert = flag(body, "upsert", false).then(|| upsert_seed(query));
            let outcome = app
                .db_txn_update(
                    who,
                    txn,
                    collection(body)?,
                    &filter,
                    &parse_change(body)?,
                    upsert,
                )
                .await?;
            json!({ "updated": outcome.updated, "upsert_id": outcome.upserted_id })
        }
        "database.removeDocument" => {
            json!({ "deleted": app.db_txn_remove(who, txn, collection(body)?, &filter).await? })
        }
        other => {
            return Err(YunError::new(
                ErrorCode::InvalidAction,
                format!("action {other:?} cannot run inside a transaction"),
            ))
        }
    })
}

/// Runs one `database.*` action; returns `data` and the top-level extras of the envelope.
pub async fn handle(
    app: &App,
    who: &Identity,
    action: &str,
    body: &Map<String, Value>,
) -> Result<(Value, Map<String, Value>), YunError> {
    let query = ejson(body, "query")?.unwrap_or_else(|| json!({}));
    let mut extras = Map::new();
    if let Some(txn) = transaction_id(body) {
        return Ok((
            in_transaction(app, who, txn, action, body, &query).await?,
            extras,
        ));
    }
    let data = match action {
        "database.startTransaction" => {
            // The SDK reads the id from the top level of the envelope.
            extras.insert(
                "transactionId".into(),
                Value::String(app.db_start_transaction(who).await?),
            );
            json!({})
        }
        "database.addCollection" => {
            app.db_create_collection(who, collection(body)?).await?;
            json!({})
        }
        "database.insertDocument" => {
            json!({ "insertedIds": app.db_insert(who, collection(body)?, parse_docs(body)?).await? })
        }
        "database.getDocument" => {
            let offset = count(body, "offset")?.unwrap_or(0);
            let limit = count(body, "limit")?;
            let find = Find {
                filter: Filter::parse(&query)?,
                order: ejson(body, "order")?
                    .map(|o| SortKeys::parse(&o))
                    .transpose()?
                    .unwrap_or_default(),
                skip: offset,
                limit,
                projection: projection(body)?,
            };
            let docs = app.db_find(who, collection(body)?, find).await?;
            // node-sdk copies these from the top level of the envelope, not from `data`.
            if offset > 0 {
                extras.insert("offset".into(), json!(offset));
            }
            if let Some(limit) = limit {
                extras.insert("limit".into(), json!(limit));
            }
            json!({ "list": docs.iter().map(to_wire).collect::<Vec<_>>() })
        }
        "database.calculateDocument" => {
            json!({ "total": app.db_count(who, collection(body)?, Filter::parse(&query)?).await? })
        }
        "database.modifyDocument" | "database.modifyAndReturnDoc" => {
            let returns_doc = action == "database.modifyAndReturnDoc";
            let multi = !returns_doc && flag(body, "multi", false);
            let upsert = flag(body, "upsert", false).then(|| upsert_seed(&query));
            let (outcome, docs) = app
                .db_update(
                    who,
                    collection(body)?,
                    Filter::parse(&query)?,
                    parse_change(body)?,
                    multi,
                    upsert,
                )
                .await?;
            let mut data = json!({ "updated": outcome.updated, "upsert_id": outcome.upserted_id });
            if returns_doc {
                data["doc"] = docs.first().map_or(Value::Null, to_wire);
            }
            data
        }
        "database.aggregateDocuments" => {
            // Objects arrive as EJSON strings, scalars as plain JSON text ("10", "\"$u\"").
            let stages = stage_texts(body)?
                .into_iter()
                .map(|(key, value)| {
                    yun_docdb::aggregate::Stage::parse(
                        key,
                        &parse_ejson(value, yun_types::unix_ms())?,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let docs = app.db_aggregate(who, collection(body)?, stages).await?;
            json!({ "list": docs.iter().map(to_wire).collect::<Vec<_>>() })
        }
        "database.removeDocument" => {
            let multi = flag(body, "multi", false);
            json!({ "deleted": app.db_remove(who, collection(body)?, Filter::parse(&query)?, multi).await? })
        }
        other => return Err(crate::cloudbase::unsupported_action(other)),
    };
    Ok((data, extras))
}
