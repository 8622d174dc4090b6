//! Reading: sort order and projection, with MongoDB's rules.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use yun_types::{ErrorCode, YunError};

use crate::filter::{lookup, lookup_plain, parse_path};
use crate::order::compare;
use crate::value::as_i64;

fn invalid_op(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

/// An ordered `{field: 1 | -1}` map (its key order is the sort priority).
#[derive(Debug, Clone, Default)]
pub struct SortKeys(Vec<(Vec<String>, bool)>);

impl SortKeys {
    pub fn parse(order: &Value) -> Result<Self, YunError> {
        let map = order
            .as_object()
            .ok_or_else(|| YunError::invalid_param("order must be an object"))?;
        let keys = map
            .iter()
            .map(|(path, dir)| match as_i64(dir) {
                Some(1) => Ok((parse_path(path)?, false)),
                Some(-1) => Ok((parse_path(path)?, true)),
                _ => Err(YunError::invalid_param(format!(
                    "sort direction of {path:?} must be 1 or -1"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The order as a query names it: `{field: 1 | -1, …}`.
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(p, desc)| (p.join("."), Value::from(if *desc { -1 } else { 1 })))
                .collect(),
        )
    }

    /// The sort fields in priority order, each with whether it is descending.
    pub fn keys(&self) -> &[(Vec<String>, bool)] {
        &self.0
    }

    /// The value `doc` sorts by on one of the keys.
    pub fn key_of<'d>(&self, doc: &'d Value, key: usize) -> Option<&'d Value> {
        let (path, descending) = &self.0[key];
        sort_key(doc, path, *descending)
    }

    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (path, descending) in &self.0 {
            let (ka, kb) = (
                sort_key(a, path, *descending),
                sort_key(b, path, *descending),
            );
            let o = compare(ka, kb);
            if o != Ordering::Equal {
                return if *descending { o.reverse() } else { o };
            }
        }
        Ordering::Equal
    }
}

/// The value a document sorts by: arrays sort by their smallest element ascending and
/// their largest descending.
fn sort_key<'a>(doc: &'a Value, path: &[String], descending: bool) -> Option<&'a Value> {
    match lookup_plain(doc, path) {
        Some(Some(v)) if !v.is_array() => return Some(v),
        Some(None) => return None,
        _ => {}
    }
    let mut found = Vec::new();
    lookup(doc, path, &mut found);
    let mut flat: Vec<Option<&Value>> = Vec::new();
    for v in found {
        match v {
            Some(Value::Array(items)) if !items.is_empty() => flat.extend(items.iter().map(Some)),
            other => flat.push(other),
        }
    }
    let pick = if descending {
        Iterator::max_by
    } else {
        Iterator::min_by
    };
    pick(
        flat.into_iter(),
        |x: &Option<&Value>, y: &Option<&Value>| compare(*x, *y),
    )
    .flatten()
}

/// A projection: which fields to return.
#[derive(Debug, Clone)]
pub enum Projection {
    All,
    Include {
        paths: Vec<(Vec<String>, Option<Slice>)>,
        id: bool,
    },
    Exclude {
        paths: Vec<Vec<String>>,
        slices: Vec<(Vec<String>, Slice)>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Slice {
    skip: i64,
    limit: Option<usize>,
}

impl Projection {
    pub fn parse(spec: &Value) -> Result<Self, YunError> {
        let map = spec
            .as_object()
            .ok_or_else(|| YunError::invalid_param("projection must be an object"))?;
        if map.is_empty() {
            return Ok(Projection::All);
        }
        let (mut include, mut exclude, mut slices) = (Vec::new(), Vec::new(), Vec::new());
        let mut id = true;
        for (path, v) in map {
            let segments = parse_path(path)?;
            if let Some(spec) = v.as_object() {
                let slice = spec.get("$slice").ok_or_else(|| {
                    invalid_op(format!("projection of {path:?} supports only $slice"))
                })?;
                slices.push((segments, parse_slice(slice)?));
                continue;
            }
            let on = match v {
                Value::Bool(b) => *b,
                other => {
                    as_i64(other).ok_or_else(|| {
                        YunError::invalid_param(format!(
                            "projection of {path:?} must be 0/1 or true/false"
                        ))
                    })? != 0
                }
            };
            match (path.as_str(), on) {
                ("_id", on) => id = on,
                (_, true) => include.push(segments),
                (_, false) => exclude.push(segments),
            }
        }
        if !include.is_empty() && !exclude.is_empty() {
            return Err(YunError::invalid_param(
                "a projection cannot mix including and excluding fields (except _id)",
            ));
        }
        if !include.is_empty() {
            let mut paths: Vec<(Vec<String>, Option<Slice>)> =
                include.into_iter().map(|p| (p, None)).collect();
            paths.extend(slices.into_iter().map(|(p, s)| (p, Some(s))));
            return Ok(Projection::Include { paths, id });
        }
        if !id {
            exclude.push(vec!["_id".into()]);
        }
        Ok(Projection::Exclude {
            paths: exclude,
            slices,
        })
    }

    pub fn apply(&self, doc: &Value) -> Value {
        match self {
            Projection::All => doc.clone(),
            Projection::Include { paths, id } => {
                let mut out = Value::Object(Map::new());
                if *id {
                    if let Some(v) = doc.get("_id") {
                        out["_id"] = v.clone();
                    }
                }
                for (path, slice) in paths {
                    copy_path(doc, &mut out, path, *slice);
                }
                out
            }
            Projection::Exclude { paths, slices } => {
                let mut out = doc.clone();
                for path in paths {
                    remove_path(&mut out, path);
                }
                for (path, slice) in slices {
                    slice_path(&mut out, path, *slice);
                }
                out
            }
        }
    }
}

fn parse_slice(v: &Value) -> Result<Slice, YunError> {
    let bad = || invalid_op("$slice takes n or [skip, n]");
    match v {
        Value::Array(pair) => match pair.as_slice() {
            [skip, n] => Ok(Slice {
                skip: as_i64(skip).ok_or_else(bad)?,
                limit: Some(usize::try_from(as_i64(n).ok_or_else(bad)?).map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        },
        other => {
            let n = as_i64(other).ok_or_else(bad)?;
            Ok(if n >= 0 {
                Slice {
                    skip: 0,
                    limit: Some(n as usize),
                }
            } else {
                Slice {
                    skip: n,
                    limit: None,
                }
            })
        }
    }
}

fn apply_slice(items: &[Value], s: Slice) -> Vec<Value> {
    let len = items.len() as i64;
    let start = if s.skip < 0 {
        (len + s.skip).max(0)
    } else {
        s.skip.min(len)
    } as usize;
    let rest = &items[start..];
    rest.iter()
        .take(s.limit.unwrap_or(rest.len()))
        .cloned()
        .collect()
}

fn copy_path(from: &Value, to: &mut Value, path: &[String], slice: Option<Slice>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let Some(child) = from.get(head) else { return };
    if rest.is_empty() {
        let value = match (child, slice) {
            (Value::Array(items), Some(s)) => Value::Array(apply_slice(items, s)),
            (v, _) => v.clone(),
        };
        if let Value::Object(m) = to {
            m.insert(head.clone(), value);
        }
        return;
    }
    match child {
        Value::Object(_) => {
            let Value::Object(m) = to else { return };
            let entry = m
                .entry(head.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            copy_path(child, entry, rest, slice);
        }
        Value::Array(items) => {
            // Projecting `a.b` out of an array of documents keeps `b` of each.
            let projected: Vec<Value> = items
                .iter()
                .filter(|i| i.is_object())
                .map(|i| {
                    let mut o = Value::Object(Map::new());
                    copy_path(i, &mut o, rest, slice);
                    o
                })
                .collect();
            if let Value::Object(m) = to {
                m.insert(head.clone(), Value::Array(projected));
            }
        }
        _ => {}
    }
}

fn remove_path(doc: &mut Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    match doc {
        Value::Object(m) if rest.is_empty() => {
            m.shift_remove(head);
        }
        Value::Object(m) => {
            if let Some(child) = m.get_mut(head) {
                remove_path(child, rest);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| remove_path(i, path)),
        _ => {}
    }
}

fn slice_path(doc: &mut Value, path: &[String], s: Slice) {
    let mut cur = doc;
    for seg in path {
        match cur.get_mut(seg) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Value::Array(items) = cur {
        *items = apply_slice(items, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sort_by_several_keys_with_arrays_and_missing() {
        let keys = SortKeys::parse(&json!({"n": -1, "title": 1})).unwrap();
        let mut docs = [
            json!({"n": 1, "title": "b"}),
            json!({"title": "z"}),
            json!({"n": [0, 7], "title": "c"}),
            json!({"n": 1, "title": "a"}),
        ];
        docs.sort_by(|a, b| keys.compare(a, b));
        let titles: Vec<&str> = docs.iter().map(|d| d["title"].as_str().unwrap()).collect();
        assert_eq!(
            titles,
            ["c", "a", "b", "z"],
            "arrays sort by their max descending; missing sorts lowest"
        );
    }

    #[test]
    fn include_exclude_nested_and_slices() {
        let doc = json!({"_id": "1", "title": "t", "n": 5, "tags": ["a", "b", "c"], "meta": {"a": 1, "b": 2}, "items": [{"q": 1, "r": 2}]});
        let p = |s: Value| Projection::parse(&s).unwrap().apply(&doc);
        assert_eq!(
            p(json!({"title": 1, "n": true})),
            json!({"_id": "1", "title": "t", "n": 5})
        );
        assert_eq!(p(json!({"title": 1, "_id": 0})), json!({"title": "t"}));
        assert_eq!(
            p(json!({"meta.a": 1, "items.q": 1})),
            json!({"_id": "1", "meta": {"a": 1}, "items": [{"q": 1}]})
        );
        assert_eq!(
            p(json!({"tags": 0, "meta": 0, "items": 0, "n": 0})),
            json!({"_id": "1", "title": "t"})
        );
        assert_eq!(
            p(json!({"meta.b": 0, "tags": 0, "items": 0, "n": 0, "title": 0, "_id": 0})),
            json!({"meta": {"a": 1}})
        );
        assert_eq!(
            p(json!({"title": 1, "tags": {"$slice": [1, 1]}})),
            json!({"_id": "1", "title": "t", "tags": ["b"]})
        );
        assert_eq!(
            p(json!({"tags": {"$slice": -2}}))["tags"],
            json!(["b", "c"])
        );
        assert!(Projection::parse(&json!({"a": 1, "b": 0})).is_err());
    }
}
