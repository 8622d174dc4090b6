//! Update documents (`$set`, `$inc`, `$push` …) and replacements, applied to a stored
//! document in place. Either the whole update applies or, on error, the caller keeps
//! the original: functions here work on a copy.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use yun_types::{ErrorCode, YunError};

use crate::filter::{parse_path, Filter};
use crate::order::{compare, equal};
use crate::value::as_i64;

fn invalid_op(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

/// Whether `data` is an operator update (`{$set: …}`) rather than a replacement.
pub fn is_operator_update(data: &Value) -> bool {
    data.as_object()
        .is_some_and(|m| m.keys().any(|k| k.starts_with('$')))
}

const OPERATORS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$pullAll",
];

/// Checks an operator update's shape (operators, field paths) without a document.
pub fn check(update: &Value) -> Result<(), YunError> {
    let ops = update
        .as_object()
        .ok_or_else(|| YunError::invalid_param("an update must be an object"))?;
    for (op, fields) in ops {
        if !OPERATORS.contains(&op.as_str()) {
            return Err(invalid_op(format!("update operator {op} is not supported")));
        }
        let fields = fields
            .as_object()
            .ok_or_else(|| invalid_op(format!("{op} takes an object")))?;
        for path in fields.keys() {
            if parse_path(path)?[0] == "_id" {
                return Err(invalid_op("_id cannot be updated"));
            }
        }
    }
    Ok(())
}

/// Applies an operator update to a copy of `doc` and returns it.
pub fn apply(doc: &Value, update: &Value) -> Result<Value, YunError> {
    check(update)?;
    let mut out = doc.clone();
    for (op, fields) in update.as_object().into_iter().flatten() {
        for (path, arg) in fields.as_object().into_iter().flatten() {
            apply_one(&mut out, op, &parse_path(path)?, arg)?;
        }
    }
    Ok(out)
}

/// A replacement keeps the `_id` and takes everything else from `data`.
pub fn replace(doc: &Value, data: &Value) -> Result<Value, YunError> {
    let mut new = data
        .as_object()
        .cloned()
        .ok_or_else(|| YunError::invalid_param("a replacement must be an object"))?;
    if let Some(bad) = new.keys().find(|k| k.starts_with('$')) {
        return Err(YunError::new(
            ErrorCode::DatabaseInvalidOperator,
            format!("operator {bad} is not allowed in a replacement document"),
        ));
    }
    new.shift_remove("_id");
    let mut out = Map::new();
    if let Some(id) = doc.get("_id") {
        out.insert("_id".into(), id.clone());
    }
    out.extend(new);
    Ok(Value::Object(out))
}

fn number(v: &Value, what: &str) -> Result<f64, YunError> {
    v.as_f64()
        .ok_or_else(|| invalid_op(format!("{what} needs a number")))
}

fn arith(a: &Value, b: &Value, op: &str) -> Result<Value, YunError> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        let exact = if op == "$inc" {
            x.checked_add(y)
        } else {
            x.checked_mul(y)
        };
        if let Some(n) = exact {
            return Ok(Value::from(n));
        }
    }
    let (x, y) = (number(a, op)?, number(b, op)?);
    let r = if op == "$inc" { x + y } else { x * y };
    serde_json::Number::from_f64(r)
        .map(Value::Number)
        .ok_or_else(|| invalid_op(format!("{op} result is not finite")))
}

/// The parent container of the last segment, created as objects where missing.
fn parent<'a>(
    doc: &'a mut Value,
    segments: &[String],
    create: bool,
) -> Result<Option<&'a mut Value>, YunError> {
    let mut cur = doc;
    for seg in &segments[..segments.len() - 1] {
        cur = match cur {
            Value::Object(m) => {
                if !m.contains_key(seg) {
                    if !create {
                        return Ok(None);
                    }
                    m.insert(seg.clone(), Value::Object(Map::new()));
                }
                m.get_mut(seg).expect("present")
            }
            Value::Array(items) => {
                let i: usize = seg
                    .parse()
                    .map_err(|_| invalid_op(format!("cannot use field {seg:?} of an array")))?;
                if i >= items.len() {
                    if !create {
                        return Ok(None);
                    }
                    items.resize(i + 1, Value::Null);
                }
                if items[i].is_null() && create {
                    items[i] = Value::Object(Map::new());
                }
                &mut items[i]
            }
            _ if !create => return Ok(None),
            _ => {
                return Err(invalid_op(format!(
                    "cannot create field {seg:?} inside a non-object"
                )))
            }
        };
    }
    Ok(Some(cur))
}

fn get_mut<'a>(container: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match container {
        Value::Object(m) => m.get_mut(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    }
}

fn set(container: &mut Value, key: &str, value: Value) -> Result<(), YunError> {
    match container {
        Value::Object(m) => {
            m.insert(key.to_owned(), value);
            Ok(())
        }
        Value::Array(items) => {
            let i: usize = key
                .parse()
                .map_err(|_| invalid_op(format!("cannot use field {key:?} of an array")))?;
            if i >= items.len() {
                items.resize(i + 1, Value::Null);
            }
            items[i] = value;
            Ok(())
        }
        _ => Err(invalid_op(format!(
            "cannot set field {key:?} inside a non-object"
        ))),
    }
}

fn remove(container: &mut Value, key: &str) -> Option<Value> {
    match container {
        Value::Object(m) => m.shift_remove(key),
        // MongoDB's $unset leaves a null in arrays rather than shifting elements.
        Value::Array(items) => key
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .map(|v| std::mem::replace(v, Value::Null)),
        _ => None,
    }
}

fn array_arg<'a>(arg: &'a Value, op: &str) -> Result<&'a Vec<Value>, YunError> {
    arg.as_array()
        .ok_or_else(|| invalid_op(format!("{op} takes an array")))
}

/// `$push` and `$addToSet` target: the array at the path, created when missing.
fn target_array<'a>(
    container: &'a mut Value,
    key: &str,
    op: &str,
) -> Result<&'a mut Vec<Value>, YunError> {
    if get_mut(container, key).is_none() {
        set(container, key, Value::Array(Vec::new()))?;
    }
    match get_mut(container, key) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(invalid_op(format!("{op} needs an array at {key:?}"))),
    }
}

fn apply_one(doc: &mut Value, op: &str, segments: &[String], arg: &Value) -> Result<(), YunError> {
    let key = segments.last().expect("paths have a segment").as_str();
    let creates = !matches!(op, "$unset" | "$pop" | "$pull" | "$pullAll" | "$rename");
    let Some(container) = parent(doc, segments, creates)? else {
        return Ok(());
    };
    match op {
        "$set" => set(container, key, arg.clone())?,
        "$unset" => {
            remove(container, key);
        }
        "$inc" | "$mul" => {
            let current = get_mut(container, key).cloned().unwrap_or(Value::from(0));
            set(container, key, arith(&current, arg, op)?)?;
        }
        "$min" | "$max" => {
            let want = if op == "$min" {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let replace =
                get_mut(container, key).is_none_or(|cur| compare(Some(arg), Some(cur)) == want);
            if replace {
                set(container, key, arg.clone())?;
            }
        }
        "$rename" => {
            let to = arg
                .as_str()
                .ok_or_else(|| invalid_op("$rename takes a field name"))?;
            let to_path = parse_path(to)?;
            if let Some(value) = remove(container, key) {
                apply_one(doc, "$set", &to_path, &value)?;
            }
        }
        "$push" => {
            let (each, modifiers) = match arg.as_object() {
                Some(m) if m.contains_key("$each") => {
                    (array_arg(&m["$each"], "$each")?.clone(), Some(m))
                }
                _ => (vec![arg.clone()], None),
            };
            let items = target_array(container, key, op)?;
            let position = modifiers.and_then(|m| m.get("$position")).and_then(as_i64);
            let at = match position {
                Some(p) if p < 0 => items.len().saturating_sub(p.unsigned_abs() as usize),
                Some(p) => (p as usize).min(items.len()),
                None => items.len(),
            };
            items.splice(at..at, each);
            if let Some(order) = modifiers.and_then(|m| m.get("$sort")) {
                sort_values(items, order)?;
            }
            if let Some(slice) = modifiers
                .and_then(|m| m.get("$slice"))
                .map(|s| as_i64(s).ok_or_else(|| invalid_op("$slice takes an integer")))
            {
                let n = slice?;
                if n >= 0 {
                    items.truncate(n as usize);
                } else {
                    let keep = n.unsigned_abs() as usize;
                    let drop = items.len().saturating_sub(keep);
                    items.drain(..drop);
                }
            }
        }
        "$addToSet" => {
            let each = match arg.as_object().and_then(|m| m.get("$each")) {
                Some(list) => array_arg(list, "$each")?.clone(),
                None => vec![arg.clone()],
            };
            let items = target_array(container, key, op)?;
            for v in each {
                if !items.iter().any(|i| equal(Some(i), Some(&v))) {
                    items.push(v);
                }
            }
        }
        "$pop" => {
            if let Some(Value::Array(items)) = get_mut(container, key) {
                match as_i64(arg) {
                    Some(1) => {
                        items.pop();
                    }
                    Some(-1) if !items.is_empty() => {
                        items.remove(0);
                    }
                    Some(-1) => {}
                    _ => return Err(invalid_op("$pop takes 1 or -1")),
                }
            }
        }
        "$pull" => {
            let test = pull_test(arg)?;
            if let Some(Value::Array(items)) = get_mut(container, key) {
                items.retain(|i| !test(i));
            }
        }
        "$pullAll" => {
            let list = array_arg(arg, op)?.clone();
            if let Some(Value::Array(items)) = get_mut(container, key) {
                items.retain(|i| !list.iter().any(|v| equal(Some(i), Some(v))));
            }
        }
        other => {
            return Err(invalid_op(format!(
                "update operator {other} is not supported"
            )))
        }
    }
    Ok(())
}

/// What `$pull` removes: elements equal to a value, matching a condition
/// (`{$gt: 3}`), or documents matching a query (`{qty: {$lt: 1}}`).
/// Decides whether `$pull` removes an array element.
type PullTest = Box<dyn Fn(&Value) -> bool>;

fn pull_test(arg: &Value) -> Result<PullTest, YunError> {
    match arg.as_object() {
        Some(m) if m.keys().all(|k| k.starts_with('$')) => {
            let mut wrapper = Map::new();
            wrapper.insert("v".into(), arg.clone());
            let filter = Filter::parse(&Value::Object(wrapper))?;
            Ok(Box::new(move |item| {
                let mut doc = Map::new();
                doc.insert("v".into(), item.clone());
                filter.matches(&Value::Object(doc))
            }))
        }
        Some(_) => {
            let filter = Filter::parse(arg)?;
            Ok(Box::new(move |item| {
                item.is_object() && filter.matches(item)
            }))
        }
        None => {
            let value = arg.clone();
            Ok(Box::new(move |item| equal(Some(item), Some(&value))))
        }
    }
}

/// `$push` with `$sort`: `1`/`-1` sorts values, `{field: ±1}` sorts documents.
fn sort_values(items: &mut [Value], order: &Value) -> Result<(), YunError> {
    match as_i64(order) {
        Some(dir @ (1 | -1)) => {
            items.sort_by(|a, b| {
                let o = compare(Some(a), Some(b));
                if dir < 0 {
                    o.reverse()
                } else {
                    o
                }
            });
            Ok(())
        }
        _ => {
            let keys = crate::find::SortKeys::parse(order)?;
            items.sort_by(|a, b| keys.compare(a, b));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up(doc: Value, update: Value) -> Value {
        apply(&doc, &update).unwrap()
    }

    #[test]
    fn every_operator_of_the_captured_update() {
        // The operators of the protocol page's §3.3 capture.
        let doc = json!({"_id": "x", "n": 1, "price": 2.5, "gone": 1, "tags": ["a"], "arr2": [5, 3], "s1": [1, 2], "s2": [1, 2], "s3": ["v"],
                          "set1": ["t"], "set2": ["a"], "p1": ["x", "y"], "p2": [1, 5, 2], "p3": [1, 2, 3], "old": "o", "lo": 5, "hi": 5});
        let out = up(
            doc,
            json!({
                "$inc": {"n": 1}, "$mul": {"price": 2},
                "$set": {"title": "renamed", "a.b.c": 5, "obj.x": 1},
                "$unset": {"gone": ""},
                "$push": {"tags": {"$each": ["p", "q"]}, "arr2": {"$each": [1, 2], "$position": 0, "$sort": 1, "$slice": 3}, "s3": {"$each": ["u"], "$position": 0}},
                "$pop": {"s1": 1, "s2": -1},
                "$addToSet": {"set1": "t", "set2": {"$each": ["a", "b"]}},
                "$pull": {"p1": "x", "p2": {"$gt": 3}},
                "$pullAll": {"p3": [1, 2]},
                "$rename": {"old": "newName"},
                "$min": {"lo": 0}, "$max": {"hi": 100}
            }),
        );
        assert_eq!(out["n"], 2);
        assert_eq!(out["price"], 5.0);
        assert_eq!(out["title"], "renamed");
        assert_eq!(out["a"], json!({"b": {"c": 5}}));
        assert_eq!(out["obj"], json!({"x": 1}));
        assert!(out.get("gone").is_none());
        assert_eq!(out["tags"], json!(["a", "p", "q"]));
        assert_eq!(out["arr2"], json!([1, 2, 3]));
        assert_eq!(out["s3"], json!(["u", "v"]));
        assert_eq!(
            (out["s1"].clone(), out["s2"].clone()),
            (json!([1]), json!([2]))
        );
        assert_eq!(
            (out["set1"].clone(), out["set2"].clone()),
            (json!(["t"]), json!(["a", "b"]))
        );
        assert_eq!(
            (out["p1"].clone(), out["p2"].clone(), out["p3"].clone()),
            (json!(["y"]), json!([1, 2]), json!([3]))
        );
        assert_eq!(out["newName"], "o");
        assert!(out.get("old").is_none());
        assert_eq!(
            (out["lo"].clone(), out["hi"].clone()),
            (json!(0), json!(100))
        );
    }

    #[test]
    fn array_indices_missing_fields_and_documents_in_pull() {
        let doc = json!({"items": [{"qty": 1}, {"qty": 9}], "list": [1, 2]});
        let out = up(
            doc,
            json!({"$set": {"items.1.qty": 10, "list.3": 4}, "$inc": {"fresh": 2}, "$mul": {"zero": 3}}),
        );
        assert_eq!(out["items"], json!([{"qty": 1}, {"qty": 10}]));
        assert_eq!(out["list"], json!([1, 2, null, 4]));
        assert_eq!(
            (out["fresh"].clone(), out["zero"].clone()),
            (json!(2), json!(0))
        );
        let out = up(out, json!({"$pull": {"items": {"qty": {"$lt": 5}}}}));
        assert_eq!(out["items"], json!([{"qty": 10}]));
        let out = up(json!({"n": 9007199254740000i64}), json!({"$inc": {"n": 1}}));
        assert_eq!(out["n"], json!(9007199254740001i64), "integers stay exact");
    }

    #[test]
    fn invalid_updates_are_refused_and_replacements_keep_the_id() {
        for bad in [
            json!({"$set": {"_id": "new"}}),
            json!({"$inc": {"s": 1}}),
            json!({"$push": {"s": 1}}),
            json!({"$set": {"s.x": 1}}),
            json!({"$foo": {"a": 1}}),
            json!({"$set": {"a..b": 1}}),
            json!({"$pop": {"arr": 2}}),
        ] {
            assert!(
                apply(&json!({"_id": 1, "s": "str", "arr": [1]}), &bad).is_err(),
                "{bad}"
            );
        }
        let out = replace(
            &json!({"_id": "k", "a": 1}),
            &json!({"b": 2, "_id": "ignored"}),
        )
        .unwrap();
        assert_eq!(out, json!({"_id": "k", "b": 2}));
        assert_eq!(
            replace(&json!({}), &json!({"$set": {"a": 1}}))
                .unwrap_err()
                .code,
            ErrorCode::DatabaseInvalidOperator
        );
    }
}
