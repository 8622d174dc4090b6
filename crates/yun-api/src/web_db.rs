//! `database.*` over `/web`: the js-sdk's legacy (v1) encoding, for end users under the
//! collection's security rules (`yun-app/src/user_db.rs`).
//!
//! v1 values are plain JSON plus `{$date: ms}`, `{$date: {offset}}` (server date) and
//! `{$regex, $options}`; `order` is `[{field, direction}]`; `{openid}` in a query stands
//! for the caller's own id, as in CloudBase. Documents go back as plain JSON with
//! `{$date: ms}` dates.

use serde_json::{json, Map, Value};
use yun_app::{App, Identity, UserQuery};
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::value::from_ejson;
use yun_docdb::Change;
use yun_types::{ErrorCode, YunError};

use crate::cloudbase_db::{collection, count, flag, stage_texts};

const OPENID_PLACEHOLDER: &str = "{openid}";

/// v1 → the EJSON forms `from_ejson` resolves; `uid` replaces `{openid}` (queries only).
fn to_ejson_forms(value: Value, uid: Option<&str>) -> Value {
    match value {
        Value::String(s) if uid.is_some() && s == OPENID_PLACEHOLDER => {
            Value::String(uid.unwrap_or_default().to_owned())
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| to_ejson_forms(v, uid)).collect())
        }
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some(Value::Object(spec)) = map.get("$date") {
                    return json!({ "$tcb_server_date": { "offset": spec.get("offset").cloned().unwrap_or(json!(0)) } });
                }
            }
            if let Some(Value::String(pattern)) = map.get("$regex") {
                let options = map.get("$options").and_then(Value::as_str).unwrap_or("");
                if map.keys().all(|k| k == "$regex" || k == "$options") {
                    return json!({ "$regularExpression": { "pattern": pattern, "options": options } });
                }
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, to_ejson_forms(v, uid)))
                    .collect(),
            )
        }
        scalar => scalar,
    }
}

fn decode(value: Value, uid: Option<&str>) -> Result<Value, YunError> {
    from_ejson(to_ejson_forms(value, uid), yun_types::unix_ms())
}

fn query(body: &Map<String, Value>, uid: &str) -> Result<Value, YunError> {
    match body.get("query") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(q @ Value::Object(_)) => decode(q.clone(), Some(uid)),
        Some(_) => Err(YunError::invalid_param("query must be an object")),
    }
}

/// `[{field, direction: "asc"|"desc"}]` → sort keys.
fn order(body: &Map<String, Value>) -> Result<SortKeys, YunError> {
    let Some(items) = body.get("order").and_then(Value::as_array) else {
        return Ok(SortKeys::default());
    };
    let mut keys = Map::new();
    for item in items {
        let field = item
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| YunError::invalid_param("order items are {field, direction}"))?;
        let direction = match item.get("direction").and_then(Value::as_str) {
            Some("desc") => -1,
            Some("asc") | None => 1,
            Some(other) => {
                return Err(YunError::invalid_param(format!(
                    "order direction {other:?} is asc or desc"
                )))
            }
        };
        keys.insert(field.to_owned(), json!(direction));
    }
    SortKeys::parse(&Value::Object(keys))
}

fn projection(body: &Map<String, Value>) -> Result<Projection, YunError> {
    match body.get("projection") {
        Some(p @ Value::Object(m)) if !m.is_empty() => Projection::parse(p),
        _ => Ok(Projection::All),
    }
}

fn uid(who: &Identity) -> &str {
    match &who.caller {
        yun_app::Caller::User(user) => &user.uid,
        _ => "",
    }
}

pub async fn handle(
    app: &App,
    who: &Identity,
    action: &str,
    body: &Map<String, Value>,
) -> Result<Value, YunError> {
    let me = uid(who);
    Ok(match action {
        "database.queryDocument" => {
            let offset = count(body, "offset")?.unwrap_or(0);
            let limit = count(body, "limit")?;
            let docs = app
                .user_find(
                    who,
                    collection(body)?,
                    UserQuery {
                        query: query(body, me)?,
                        order: order(body)?,
                        skip: offset,
                        limit,
                        projection: projection(body)?,
                    },
                )
                .await?;
            json!({ "list": docs, "offset": offset, "limit": limit })
        }
        "database.countDocument" => {
            json!({ "total": app.user_count(who, collection(body)?, query(body, me)?).await? })
        }
        "database.addDocument" => {
            let (docs, batch) = match body.get("data") {
                Some(Value::Array(items)) => (items.clone(), true),
                Some(doc @ Value::Object(_)) => (vec![doc.clone()], false),
                _ => {
                    return Err(YunError::invalid_param(
                        "data must be an object or an array of objects",
                    ))
                }
            };
            let docs = docs
                .into_iter()
                .map(|d| decode(d, None))
                .collect::<Result<Vec<_>, _>>()?;
            let ids = app.user_insert(who, collection(body)?, docs).await?;
            if batch {
                json!({ "insertedIds": ids })
            } else {
                json!({ "_id": ids.first() })
            }
        }
        "database.updateDocument" => {
            let data = decode(
                body.get("data")
                    .cloned()
                    .ok_or_else(|| YunError::invalid_param("data is required"))?,
                None,
            )?;
            let change = if !flag(body, "merge", true) {
                Change::Replace(data)
            } else if yun_docdb::update::is_operator_update(&data) {
                Change::Operators(data)
            } else {
                Change::Operators(json!({ "$set": data }))
            };
            let outcome = app
                .user_update(
                    who,
                    collection(body)?,
                    query(body, me)?,
                    change,
                    flag(body, "multi", false),
                    flag(body, "upsert", false),
                )
                .await?;
            json!({
                "updated": outcome.updated,
                "upsert_id": outcome.upserted_id,
                "upserted_id": outcome.upserted_id,
            })
        }
        "database.aggregate" => {
            let stages = stage_texts(body)?
                .into_iter()
                .map(|(key, text)| {
                    let value: Value = serde_json::from_str(text)
                        .map_err(|e| YunError::invalid_param(format!("stage {key}: {e}")))?;
                    Ok((key.to_owned(), decode(value, Some(me))?))
                })
                .collect::<Result<Vec<_>, YunError>>()?;
            let docs = app.user_aggregate(who, collection(body)?, stages).await?;
            // The js-sdk reads `JSON.parse(list).map(EJSON.parse)`: JSON text of an array
            // of EJSON texts.
            let texts: Vec<String> = docs.iter().map(yun_docdb::value::to_ejson_text).collect();
            json!({ "list": serde_json::to_string(&texts).map_err(|e| YunError::internal(e.to_string()))? })
        }
        "database.deleteDocument" => {
            json!({ "deleted": app.user_remove(who, collection(body)?, query(body, me)?, flag(body, "multi", false)).await? })
        }
        other => {
            return Err(YunError::new(
                ErrorCode::InvalidAction,
                format!("{other} is not available to end users; call a cloud function for it"),
            ))
        }
    })
}
