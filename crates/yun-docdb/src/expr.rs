//! Aggregation expressions (`"$field"`, `{$add: […]}`, `{$cond: …}` …) evaluated against
//! one document, with MongoDB's semantics for the operators CloudBase documents.

use serde_json::{Map, Number, Value};
use yun_types::{ErrorCode, YunError};

use crate::filter::parse_path;
use crate::order::{compare, equal};
use crate::value::{as_date, as_i64, date};

fn invalid_op(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

fn num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// The value of `$a.b` in `doc`: through arrays of documents it is the array of values.
pub fn field(doc: &Value, path: &str) -> Result<Value, YunError> {
    let segments = parse_path(path)?;
    Ok(field_of(doc, &segments))
}

fn field_of(v: &Value, path: &[String]) -> Value {
    let Some((head, rest)) = path.split_first() else {
        return v.clone();
    };
    match v {
        Value::Object(m) => m.get(head).map_or(Value::Null, |c| field_of(c, rest)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| i.is_object())
                .map(|i| field_of(i, path))
                .filter(|v| !v.is_null())
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Whether a value counts as true (`$cond`, `$and`, `$filter`): not false, null, 0 or missing.
pub fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false)) && v.as_f64() != Some(0.0)
}

fn args(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    }
}

pub fn eval(expr: &Value, doc: &Value) -> Result<Value, YunError> {
    match expr {
        Value::String(s) if s == "$$ROOT" || s == "$$CURRENT" => Ok(doc.clone()),
        Value::String(s) if s.starts_with("$$") => {
            Err(invalid_op(format!("variable {s} is not supported")))
        }
        Value::String(s) if s.starts_with('$') => field(doc, &s[1..]),
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|e| eval(e, doc))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(m)
            if m.len() == 1
                && m.keys().next().is_some_and(|k| k.starts_with('$'))
                && as_date(expr).is_none() =>
        {
            let (op, arg) = m.iter().next().expect("one entry");
            operator(op, arg, doc)
        }
        Value::Object(m) if as_date(expr).is_none() => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(k.clone(), eval(v, doc)?);
            }
            Ok(Value::Object(out))
        }
        literal => Ok(literal.clone()),
    }
}

fn evals(arg: &Value, doc: &Value) -> Result<Vec<Value>, YunError> {
    args(arg).iter().map(|a| eval(a, doc)).collect()
}

fn two(op: &str, arg: &Value, doc: &Value) -> Result<(Value, Value), YunError> {
    match evals(arg, doc)?.as_slice() {
        [a, b] => Ok((a.clone(), b.clone())),
        _ => Err(invalid_op(format!("{op} takes two arguments"))),
    }
}

fn numbers(op: &str, values: &[Value]) -> Result<Option<Vec<f64>>, YunError> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            Value::Null => return Ok(None),
            Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN)),
            other => return Err(invalid_op(format!("{op} only takes numbers, got {other}"))),
        }
    }
    Ok(Some(out))
}

fn date_part(op: &str, v: &Value) -> Result<Value, YunError> {
    let Some(ms) = as_date(v) else {
        return if v.is_null() {
            Ok(Value::Null)
        } else {
            Err(invalid_op(format!("{op} takes a date")))
        };
    };
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| invalid_op("date out of range"))?;
    Ok(Value::from(match op {
        "$year" => i64::from(t.year()),
        "$month" => i64::from(u8::from(t.month())),
        "$dayOfMonth" => i64::from(t.day()),
        "$hour" => i64::from(t.hour()),
        "$minute" => i64::from(t.minute()),
        "$second" => i64::from(t.second()),
        "$millisecond" => i64::from(t.millisecond()),
        "$dayOfYear" => i64::from(t.ordinal()),
        // MongoDB: 1 = Sunday.
        _ => i64::from(t.weekday().number_from_sunday()),
    }))
}

fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn operator(op: &str, arg: &Value, doc: &Value) -> Result<Value, YunError> {
    Ok(match op {
        "$literal" => arg.clone(),
        "$add" => {
            let values = evals(arg, doc)?;
            let base = values.iter().find_map(as_date);
            let rest: Vec<Value> = values
                .into_iter()
                .filter(|v| as_date(v).is_none())
                .collect();
            let Some(ns) = numbers(op, &rest)? else {
                return Ok(Value::Null);
            };
            let sum: f64 = ns.iter().sum();
            match base {
                Some(ms) => date(ms + sum as i64),
                None => num(sum),
            }
        }
        "$multiply" => match numbers(op, &evals(arg, doc)?)? {
            Some(ns) => num(ns.iter().product()),
            None => Value::Null,
        },
        "$subtract" => {
            let (a, b) = two(op, arg, doc)?;
            match (as_date(&a), as_date(&b)) {
                (Some(x), Some(y)) => Value::from(x - y),
                (Some(x), None) => date(
                    x - as_i64(&b)
                        .ok_or_else(|| invalid_op("$subtract from a date takes milliseconds"))?,
                ),
                _ => match numbers(op, &[a, b])? {
                    Some(n) => num(n[0] - n[1]),
                    None => Value::Null,
                },
            }
        }
        "$divide" | "$mod" | "$pow" => {
            let (a, b) = two(op, arg, doc)?;
            match numbers(op, &[a, b])? {
                Some(n) if n[1] == 0.0 && op != "$pow" => {
                    return Err(invalid_op(format!("{op} by zero")))
                }
                Some(n) => num(match op {
                    "$divide" => n[0] / n[1],
                    "$mod" => n[0] % n[1],
                    _ => n[0].powf(n[1]),
                }),
                None => Value::Null,
            }
        }
        "$abs" | "$ceil" | "$floor" | "$sqrt" | "$exp" | "$ln" | "$log10" | "$trunc" | "$round" => {
            let v = eval(arg.as_array().and_then(|a| a.first()).unwrap_or(arg), doc)?;
            match numbers(op, &[v])? {
                Some(n) => num(match op {
                    "$abs" => n[0].abs(),
                    "$ceil" => n[0].ceil(),
                    "$floor" => n[0].floor(),
                    "$sqrt" => n[0].sqrt(),
                    "$exp" => n[0].exp(),
                    "$ln" => n[0].ln(),
                    "$log10" => n[0].log10(),
                    "$trunc" => n[0].trunc(),
                    _ => n[0].round(),
                }),
                None => Value::Null,
            }
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let (a, b) = two(op, arg, doc)?;
            let o = compare(Some(&a), Some(&b));
            match op {
                "$eq" => Value::Bool(equal(Some(&a), Some(&b))),
                "$ne" => Value::Bool(!equal(Some(&a), Some(&b))),
                "$gt" => Value::Bool(o.is_gt()),
                "$gte" => Value::Bool(o.is_ge()),
                "$lt" => Value::Bool(o.is_lt()),
                "$lte" => Value::Bool(o.is_le()),
                _ => Value::from(o as i64),
            }
        }
        "$and" => Value::Bool(evals(arg, doc)?.iter().all(truthy)),
        "$or" => Value::Bool(evals(arg, doc)?.iter().any(truthy)),
        "$not" => Value::Bool(!evals(arg, doc)?.first().is_some_and(truthy)),
        "$cond" => {
            let (test, then, otherwise) = match arg {
                Value::Array(a) if a.len() == 3 => (&a[0], &a[1], &a[2]),
                Value::Object(m) => match (m.get("if"), m.get("then"), m.get("else")) {
                    (Some(i), Some(t), Some(e)) => (i, t, e),
                    _ => return Err(invalid_op("$cond takes {if, then, else}")),
                },
                _ => {
                    return Err(invalid_op(
                        "$cond takes [if, then, else] or {if, then, else}",
                    ))
                }
            };
            if truthy(&eval(test, doc)?) {
                eval(then, doc)?
            } else {
                eval(otherwise, doc)?
            }
        }
        "$ifNull" => {
            let values = evals(arg, doc)?;
            values
                .iter()
                .find(|v| !v.is_null())
                .cloned()
                .unwrap_or(Value::Null)
        }
        "$switch" => {
            let branches = arg
                .get("branches")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid_op("$switch takes branches"))?;
            for b in branches {
                if truthy(&eval(b.get("case").unwrap_or(&Value::Null), doc)?) {
                    return eval(b.get("then").unwrap_or(&Value::Null), doc);
                }
            }
            match arg.get("default") {
                Some(d) => eval(d, doc)?,
                None => return Err(invalid_op("$switch matched no branch and has no default")),
            }
        }
        "$concat" => {
            let values = evals(arg, doc)?;
            if values.iter().any(Value::is_null) {
                Value::Null
            } else {
                Value::String(values.iter().map(string).collect())
            }
        }
        "$toLower" | "$toUpper" | "$strLenCP" | "$trim" | "$toString" => {
            let v = eval(arg.as_array().and_then(|a| a.first()).unwrap_or(arg), doc)?;
            let s = string(&v);
            match op {
                "$toLower" => Value::String(s.to_lowercase()),
                "$toUpper" => Value::String(s.to_uppercase()),
                "$strLenCP" => Value::from(s.chars().count()),
                "$trim" => Value::String(s.trim().to_owned()),
                _ => Value::String(s),
            }
        }
        "$substr" | "$substrCP" => match evals(arg, doc)?.as_slice() {
            [s, start, len] => {
                let (start, len) = (
                    as_i64(start).unwrap_or(0).max(0) as usize,
                    as_i64(len).unwrap_or(-1),
                );
                let text = string(s);
                let chars = text.chars().skip(start);
                Value::String(if len < 0 {
                    chars.collect()
                } else {
                    chars.take(len as usize).collect()
                })
            }
            _ => return Err(invalid_op(format!("{op} takes [string, start, length]"))),
        },
        "$split" => {
            let (s, sep) = two(op, arg, doc)?;
            Value::Array(
                string(&s)
                    .split(&string(&sep))
                    .map(|p| Value::String(p.to_owned()))
                    .collect(),
            )
        }
        "$size" => match eval(arg.as_array().and_then(|a| a.first()).unwrap_or(arg), doc)? {
            Value::Array(a) => Value::from(a.len()),
            _ => return Err(invalid_op("$size takes an array")),
        },
        "$isArray" => Value::Bool(
            eval(arg.as_array().and_then(|a| a.first()).unwrap_or(arg), doc)?.is_array(),
        ),
        "$arrayElemAt" => {
            let (a, i) = two(op, arg, doc)?;
            let (Value::Array(items), Some(i)) = (a, as_i64(&i)) else {
                return Ok(Value::Null);
            };
            let idx = if i < 0 { items.len() as i64 + i } else { i };
            usize::try_from(idx)
                .ok()
                .and_then(|i| items.get(i).cloned())
                .unwrap_or(Value::Null)
        }
        "$concatArrays" => {
            let mut out = Vec::new();
            for v in evals(arg, doc)? {
                match v {
                    Value::Array(items) => out.extend(items),
                    Value::Null => return Ok(Value::Null),
                    _ => return Err(invalid_op("$concatArrays takes arrays")),
                }
            }
            Value::Array(out)
        }
        "$in" => {
            let (v, list) = two(op, arg, doc)?;
            let Value::Array(items) = list else {
                return Err(invalid_op("$in takes [value, array]"));
            };
            Value::Bool(items.iter().any(|i| equal(Some(i), Some(&v))))
        }
        "$slice" => match evals(arg, doc)?.as_slice() {
            [Value::Array(items), n] => {
                let n = as_i64(n).unwrap_or(0);
                Value::Array(if n >= 0 {
                    items.iter().take(n as usize).cloned().collect()
                } else {
                    items[items.len().saturating_sub(n.unsigned_abs() as usize)..].to_vec()
                })
            }
            [Value::Array(items), skip, n] => {
                let skip = as_i64(skip).unwrap_or(0).max(0) as usize;
                Value::Array(
                    items
                        .iter()
                        .skip(skip)
                        .take(as_i64(n).unwrap_or(0).max(0) as usize)
                        .cloned()
                        .collect(),
                )
            }
            _ => Value::Null,
        },
        "$reverseArray" => match eval(arg, doc)? {
            Value::Array(mut items) => {
                items.reverse();
                Value::Array(items)
            }
            _ => Value::Null,
        },
        "$filter" | "$map" => {
            let input = eval(arg.get("input").unwrap_or(&Value::Null), doc)?;
            let name = arg.get("as").and_then(Value::as_str).unwrap_or("this");
            let body = if op == "$filter" {
                arg.get("cond")
            } else {
                arg.get("in")
            }
            .ok_or_else(|| invalid_op(format!("{op} needs its expression")))?;
            let Value::Array(items) = input else {
                return Ok(Value::Null);
            };
            let mut out = Vec::new();
            for item in items {
                // `$$name` refers to the element: evaluate against a document holding it.
                let bound = bind_variable(body, name);
                let mut scope = doc.as_object().cloned().unwrap_or_default();
                scope.insert(format!("__{name}"), item.clone());
                let v = eval(&bound, &Value::Object(scope))?;
                if op == "$map" {
                    out.push(v);
                } else if truthy(&v) {
                    out.push(item);
                }
            }
            Value::Array(out)
        }
        "$year" | "$month" | "$dayOfMonth" | "$hour" | "$minute" | "$second" | "$millisecond"
        | "$dayOfYear" | "$dayOfWeek" => date_part(
            op,
            &eval(arg.as_array().and_then(|a| a.first()).unwrap_or(arg), doc)?,
        )?,
        other => {
            return Err(invalid_op(format!(
                "expression operator {other} is not supported"
            )))
        }
    })
}

/// Rewrites `$$name` (and `$$name.x`) into a field of the scope document.
fn bind_variable(expr: &Value, name: &str) -> Value {
    match expr {
        Value::String(s) if s == &format!("$${name}") => Value::String(format!("$__{name}")),
        Value::String(s) if s.starts_with(&format!("$${name}.")) => {
            Value::String(format!("$__{name}{}", &s[name.len() + 2..]))
        }
        Value::Array(items) => Value::Array(items.iter().map(|e| bind_variable(e, name)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), bind_variable(v, name)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(expr: Value, doc: Value) -> Value {
        eval(&expr, &doc).unwrap()
    }

    #[test]
    fn operators_by_family() {
        let doc = json!({"a": 6, "b": 4, "s": "Hello", "tags": ["x", "y", "z"], "items": [{"q": 1}, {"q": 2}], "d": {"$date": 1717228800000i64}});
        assert_eq!(e(json!({"$add": ["$a", "$b", 1]}), doc.clone()), json!(11));
        assert_eq!(e(json!({"$subtract": ["$a", "$b"]}), doc.clone()), json!(2));
        assert_eq!(e(json!({"$multiply": ["$a", 0.5]}), doc.clone()), json!(3));
        assert_eq!(e(json!({"$divide": ["$a", "$b"]}), doc.clone()), json!(1.5));
        assert_eq!(e(json!({"$mod": ["$a", "$b"]}), doc.clone()), json!(2));
        assert_eq!(e(json!({"$gt": ["$a", "$b"]}), doc.clone()), json!(true));
        assert_eq!(
            e(
                json!({"$cond": [{"$gte": ["$a", 5]}, "big", "small"]}),
                doc.clone()
            ),
            json!("big")
        );
        assert_eq!(
            e(json!({"$ifNull": ["$missing", "dflt"]}), doc.clone()),
            json!("dflt")
        );
        assert_eq!(
            e(
                json!({"$concat": ["$s", " ", {"$toUpper": "$s"}]}),
                doc.clone()
            ),
            json!("Hello HELLO")
        );
        assert_eq!(
            e(json!({"$substr": ["$s", 1, 3]}), doc.clone()),
            json!("ell")
        );
        assert_eq!(e(json!({"$size": "$tags"}), doc.clone()), json!(3));
        assert_eq!(
            e(json!({"$arrayElemAt": ["$tags", -1]}), doc.clone()),
            json!("z")
        );
        assert_eq!(e(json!({"$in": ["y", "$tags"]}), doc.clone()), json!(true));
        assert_eq!(e(json!("$items.q"), doc.clone()), json!([1, 2]));
        assert_eq!(
            e(
                json!({"$filter": {"input": "$items", "as": "it", "cond": {"$gt": ["$$it.q", 1]}}}),
                doc.clone()
            ),
            json!([{"q": 2}])
        );
        assert_eq!(
            e(
                json!({"$map": {"input": "$tags", "as": "t", "in": {"$concat": ["$$t", "!"]}}}),
                doc.clone()
            ),
            json!(["x!", "y!", "z!"])
        );
        assert_eq!(e(json!({"$year": "$d"}), doc.clone()), json!(2024));
        assert_eq!(e(json!({"$month": "$d"}), doc.clone()), json!(6));
        assert_eq!(
            e(json!({"$dayOfWeek": "$d"}), doc.clone()),
            json!(7),
            "2024-06-01 was a Saturday"
        );
        assert_eq!(
            e(json!({"$add": ["$d", 1000]}), doc.clone()),
            json!({"$date": 1717228801000i64})
        );
        assert_eq!(
            e(json!({"nested": {"x": "$a"}}), doc.clone()),
            json!({"nested": {"x": 6}})
        );
        assert!(eval(&json!({"$divide": [1, 0]}), &doc).is_err());
        assert!(eval(&json!({"$nope": 1}), &doc).is_err());
        assert!(eval(&json!({"$add": ["$s", 1]}), &doc).is_err());
    }
}
