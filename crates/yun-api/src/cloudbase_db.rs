//! `database.*` actions of the CloudBase v2 protocol (`../shared/cloudbase-protocol.md`
//! §2.2, §3): `query`, `order`, `projection` and `data` arrive as EJSON strings;
//! documents go back as EJSON strings in `data.list`.

use serde_json::{json, Map, Value};
use yun_app::{App, Identity};
use yun_docdb::filter::{upsert_seed, Filter};
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::value::{parse_ejson, to_ejson};
use yun_docdb::{Change, Find};
use yun_types::{ErrorCode, YunError};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn collection(body: &Map<String, Value>) -> Result<&str, YunError> {
    body.get("collectionName")
        .and_then(Value::as_str)
        .ok_or_else(|| YunError::invalid_param("collectionName is required"))
}

/// An EJSON string parameter, parsed; `None` when absent or empty.
fn ejson(body: &Map<String, Value>, key: &str) -> Result<Option<Value>, YunError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_ejson(s, now_ms()).map(Some),
        Some(_) => Err(YunError::invalid_param(format!(
            "{key} must be an EJSON string"
        ))),
    }
}

fn flag(body: &Map<String, Value>, key: &str, default: bool) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn count(body: &Map<String, Value>, key: &str) -> Result<Option<usize>, YunError> {
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
    Value::String(to_ejson(doc).to_string())
}

/// Runs one `database.*` action; returns `data` and the top-level extras of the envelope.
pub async fn handle(
    app: &App,
    who: &Identity,
    action: &str,
    body: &Map<String, Value>,
) -> Result<(Value, Map<String, Value>), YunError> {
    if body.get("transactionId").is_some_and(|t| !t.is_null()) {
        return Err(YunError::new(
            ErrorCode::InvalidAction,
            "transactions are not supported by this Yun server yet",
        ));
    }
    let query = ejson(body, "query")?.unwrap_or_else(|| json!({}));
    let mut extras = Map::new();
    let data = match action {
        "database.addCollection" => {
            app.db_create_collection(who, collection(body)?).await?;
            json!({})
        }
        "database.insertDocument" => {
            let items = body
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| YunError::invalid_param("data must be an array of EJSON strings"))?;
            let docs = items
                .iter()
                .map(|d| {
                    d.as_str()
                        .ok_or_else(|| {
                            YunError::invalid_param("data must be an array of EJSON strings")
                        })
                        .and_then(|s| parse_ejson(s, now_ms()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            json!({ "insertedIds": app.db_insert(who, collection(body)?, docs).await? })
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
                projection: ejson(body, "projection")?
                    .map(|p| Projection::parse(&p))
                    .transpose()?
                    .unwrap_or(Projection::All),
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
            let data =
                ejson(body, "data")?.ok_or_else(|| YunError::invalid_param("data is required"))?;
            let returns_doc = action == "database.modifyAndReturnDoc";
            let merge = flag(body, "merge", true);
            let change = if !merge {
                Change::Replace(data)
            } else if yun_docdb::update::is_operator_update(&data) {
                Change::Operators(data)
            } else {
                Change::Operators(json!({ "$set": data }))
            };
            let multi = !returns_doc && flag(body, "multi", false);
            let upsert = flag(body, "upsert", false).then(|| upsert_seed(&query));
            let (outcome, docs) = app
                .db_update(
                    who,
                    collection(body)?,
                    Filter::parse(&query)?,
                    change,
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
        "database.removeDocument" => {
            let multi = flag(body, "multi", false);
            json!({ "deleted": app.db_remove(who, collection(body)?, Filter::parse(&query)?, multi).await? })
        }
        other => {
            return Err(YunError::new(
                ErrorCode::InvalidAction,
                format!("action {other:?} is not supported by this Yun server yet"),
            ));
        }
    };
    Ok((data, extras))
}
