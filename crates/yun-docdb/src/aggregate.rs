//! The aggregation pipeline: stages parsed once, then run over the collection's
//! documents in one storage snapshot (`$lookup` reads its other collection from the
//! same snapshot).

use std::collections::HashMap;

use rand::seq::SliceRandom;
use serde_json::{Map, Value};
use yun_types::{ErrorCode, YunError};

use crate::expr::{eval, field};
use crate::filter::{lookup, parse_path, Filter};
use crate::find::SortKeys;
use crate::order::{compare, equal};
use crate::update;
use crate::value::as_i64;

fn invalid_op(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

#[derive(Debug, Clone)]
pub enum Accumulator {
    Sum(Value),
    Avg(Value),
    Min(Value),
    Max(Value),
    First(Value),
    Last(Value),
    Push(Value),
    AddToSet(Value),
}

#[derive(Debug, Clone)]
pub enum Stage {
    Match(Filter),
    Project(Map<String, Value>),
    AddFields(Map<String, Value>),
    Group {
        id: Value,
        fields: Vec<(String, Accumulator)>,
    },
    Sort(SortKeys),
    Skip(usize),
    Limit(usize),
    Unwind {
        path: Vec<String>,
        index_field: Option<String>,
        keep_empty: bool,
    },
    Lookup {
        from: String,
        local: Vec<String>,
        foreign: Vec<String>,
        into: String,
    },
    Count(String),
    SortByCount(Value),
    Sample(usize),
    Bucket {
        group_by: Value,
        boundaries: Vec<Value>,
        default: Option<Value>,
        output: Vec<(String, Accumulator)>,
    },
    BucketAuto {
        group_by: Value,
        buckets: usize,
        output: Vec<(String, Accumulator)>,
    },
    ReplaceRoot(Value),
    GeoNear {
        near: crate::geo::Near,
        distance_field: Vec<String>,
        key: Option<Vec<String>>,
        query: Option<Filter>,
        multiplier: f64,
        include_locs: Option<String>,
    },
}

fn accumulators(spec: &Map<String, Value>) -> Result<Vec<(String, Accumulator)>, YunError> {
    spec.iter()
        .map(|(name, acc)| {
            let (op, arg) = acc
                .as_object()
                .filter(|m| m.len() == 1)
                .and_then(|m| m.iter().next())
                .ok_or_else(|| {
                    invalid_op(format!("{name} must be an accumulator like {{$sum: …}}"))
                })?;
            let arg = arg.clone();
            let acc = match op.as_str() {
                "$sum" => Accumulator::Sum(arg),
                "$avg" => Accumulator::Avg(arg),
                "$min" => Accumulator::Min(arg),
                "$max" => Accumulator::Max(arg),
                "$first" => Accumulator::First(arg),
                "$last" => Accumulator::Last(arg),
                "$push" => Accumulator::Push(arg),
                "$addToSet" => Accumulator::AddToSet(arg),
                other => return Err(invalid_op(format!("accumulator {other} is not supported"))),
            };
            Ok((name.clone(), acc))
        })
        .collect()
}

/// A bucket stage's `output`; MongoDB's default is `{count: {$sum: 1}}`.
fn bucket_output(stage: &Map<String, Value>) -> Result<Vec<(String, Accumulator)>, YunError> {
    match stage.get("output").and_then(Value::as_object) {
        Some(spec) => accumulators(spec),
        None => Ok(vec![("count".into(), Accumulator::Sum(Value::from(1)))]),
    }
}

fn count_arg(v: &Value, what: &str) -> Result<usize, YunError> {
    as_i64(v)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid_op(format!("{what} takes a non-negative integer")))
}

fn object(v: &Value, stage: &str) -> Result<Map<String, Value>, YunError> {
    v.as_object()
        .cloned()
        .ok_or_else(|| invalid_op(format!("{stage} takes an object")))
}

fn field_name(v: &Value, stage: &str) -> Result<String, YunError> {
    v.as_str()
        .filter(|s| !s.is_empty() && !s.starts_with('$') && !s.contains('.'))
        .map(str::to_owned)
        .ok_or_else(|| invalid_op(format!("{stage} takes a field name")))
}

fn dollar_path(v: &Value, stage: &str) -> Result<Vec<String>, YunError> {
    let s = v
        .as_str()
        .and_then(|s| s.strip_prefix('$'))
        .ok_or_else(|| invalid_op(format!("{stage} takes a \"$field\" path")))?;
    parse_path(s)
}

impl Stage {
    pub fn parse(key: &str, value: &Value) -> Result<Self, YunError> {
        Ok(match key {
            "$match" => Stage::Match(Filter::parse(value)?),
            "$project" => Stage::Project(object(value, key)?),
            "$addFields" => Stage::AddFields(object(value, key)?),
            "$group" => {
                let mut spec = object(value, key)?;
                let id = spec
                    .shift_remove("_id")
                    .ok_or_else(|| invalid_op("$group needs an _id"))?;
                Stage::Group {
                    id,
                    fields: accumulators(&spec)?,
                }
            }
            "$sort" => Stage::Sort(SortKeys::parse(value)?),
            "$skip" => Stage::Skip(count_arg(value, key)?),
            "$limit" => Stage::Limit(count_arg(value, key)?),
            "$unwind" => match value {
                Value::String(_) => Stage::Unwind {
                    path: dollar_path(value, key)?,
                    index_field: None,
                    keep_empty: false,
                },
                Value::Object(m) => Stage::Unwind {
                    path: dollar_path(m.get("path").unwrap_or(&Value::Null), key)?,
                    index_field: m
                        .get("includeArrayIndex")
                        .map(|v| field_name(v, key))
                        .transpose()?,
                    keep_empty: m
                        .get("preserveNullAndEmptyArrays")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
                _ => return Err(invalid_op("$unwind takes \"$path\" or {path, …}")),
            },
            "$lookup" => {
                let m = object(value, key)?;
                let text = |k: &str| {
                    m.get(k)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| invalid_op(format!("$lookup needs {k}")))
                };
                Stage::Lookup {
                    from: text("from")?,
                    local: parse_path(&text("localField")?)?,
                    foreign: parse_path(&text("foreignField")?)?,
                    into: text("as")?,
                }
            }
            "$count" => Stage::Count(field_name(value, key)?),
            "$sortByCount" => Stage::SortByCount(value.clone()),
            "$sample" => Stage::Sample(count_arg(
                value.get("size").unwrap_or(&Value::Null),
                "$sample size",
            )?),
            "$bucket" => {
                let m = object(value, key)?;
                let boundaries = m
                    .get("boundaries")
                    .and_then(Value::as_array)
                    .cloned()
                    .filter(|b| b.len() >= 2)
                    .ok_or_else(|| invalid_op("$bucket needs at least two boundaries"))?;
                if boundaries
                    .windows(2)
                    .any(|w| !compare(Some(&w[0]), Some(&w[1])).is_lt())
                {
                    return Err(invalid_op("$bucket boundaries must ascend"));
                }
                Stage::Bucket {
                    group_by: m
                        .get("groupBy")
                        .cloned()
                        .ok_or_else(|| invalid_op("$bucket needs groupBy"))?,
                    boundaries,
                    default: m.get("default").cloned(),
                    output: bucket_output(&m)?,
                }
            }
            "$bucketAuto" => {
                let m = object(value, key)?;
                Stage::BucketAuto {
                    group_by: m
                        .get("groupBy")
                        .cloned()
                        .ok_or_else(|| invalid_op("$bucketAuto needs groupBy"))?,
                    buckets: count_arg(
                        m.get("buckets").unwrap_or(&Value::Null),
                        "$bucketAuto buckets",
                    )
                    .and_then(|n| {
                        if n == 0 {
                            Err(invalid_op("$bucketAuto needs at least one bucket"))
                        } else {
                            Ok(n)
                        }
                    })?,
                    output: bucket_output(&m)?,
                }
            }
            "$replaceRoot" => Stage::ReplaceRoot(
                value
                    .get("newRoot")
                    .cloned()
                    .ok_or_else(|| invalid_op("$replaceRoot needs newRoot"))?,
            ),
            "$geoNear" => {
                let m = object(value, key)?;
                let mut near = crate::geo::Near::parse(
                    &serde_json::json!({ "$geometry": m.get("near").cloned().unwrap_or(Value::Null) }),
                )?;
                let meters = |k: &str| {
                    m.get(k).map(|v| {
                        v.as_f64()
                            .filter(|d| *d >= 0.0)
                            .ok_or_else(|| invalid_op(format!("$geoNear {k} must be meters")))
                    })
                };
                if let Some(max) = meters("maxDistance") {
                    near.max = max?;
                }
                if let Some(min) = meters("minDistance") {
                    near.min = min?;
                }
                let distance_field = m
                    .get("distanceField")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_op("$geoNear needs distanceField"))?;
                Stage::GeoNear {
                    near,
                    distance_field: parse_path(distance_field)?,
                    key: m
                        .get("key")
                        .and_then(Value::as_str)
                        .map(parse_path)
                        .transpose()?,
                    query: m.get("query").map(Filter::parse).transpose()?,
                    multiplier: m
                        .get("distanceMultiplier")
                        .and_then(Value::as_f64)
                        .unwrap_or(1.0),
                    include_locs: m
                        .get("includeLocs")
                        .map(|v| field_name(v, key))
                        .transpose()?,
                }
            }
            other => {
                return Err(invalid_op(format!(
                    "aggregation stage {other} is not supported"
                )))
            }
        })
    }
}

fn accumulate(
    fields: &[(String, Accumulator)],
    docs: &[Value],
) -> Result<Map<String, Value>, YunError> {
    let mut out = Map::new();
    for (name, acc) in fields {
        let values = |e: &Value| {
            docs.iter()
                .map(|d| eval(e, d))
                .collect::<Result<Vec<_>, _>>()
        };
        let v = match acc {
            Accumulator::Sum(e) | Accumulator::Avg(e) => {
                let nums: Vec<f64> = values(e)?.iter().filter_map(Value::as_f64).collect();
                let sum: f64 = nums.iter().sum();
                match acc {
                    Accumulator::Avg(_) if nums.is_empty() => Value::Null,
                    Accumulator::Avg(_) => Value::from(sum / nums.len() as f64),
                    _ if sum.fract() == 0.0 && sum.abs() < 9.0e15 => Value::from(sum as i64),
                    _ => Value::from(sum),
                }
            }
            Accumulator::Min(e) | Accumulator::Max(e) => {
                let vs: Vec<Value> = values(e)?.into_iter().filter(|v| !v.is_null()).collect();
                let pick = if matches!(acc, Accumulator::Min(_)) {
                    Iterator::min_by
                } else {
                    Iterator::max_by
                };
                pick(vs.into_iter(), |a: &Value, b: &Value| {
                    compare(Some(a), Some(b))
                })
                .unwrap_or(Value::Null)
            }
            Accumulator::First(e) => docs
                .first()
                .map(|d| eval(e, d))
                .transpose()?
                .unwrap_or(Value::Null),
            Accumulator::Last(e) => docs
                .last()
                .map(|d| eval(e, d))
                .transpose()?
                .unwrap_or(Value::Null),
            Accumulator::Push(e) => Value::Array(values(e)?),
            Accumulator::AddToSet(e) => {
                let mut set: Vec<Value> = Vec::new();
                for v in values(e)? {
                    if !set.iter().any(|s| equal(Some(s), Some(&v))) {
                        set.push(v);
                    }
                }
                Value::Array(set)
            }
        };
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// Groups `docs` by `key`, keeping first-seen order.
/// Groups one `$group` (or `$bucket`, `$sortByCount`) may make: each costs a key, its
/// members and its accumulators, so a key per document over a big collection took
/// seconds of CPU and memory in proportion; past this it is a clear error instead.
pub const MAX_GROUPS: usize = 100_000;

fn group_by(
    docs: Vec<Value>,
    key: impl Fn(&Value) -> Result<Value, YunError>,
) -> Result<Vec<(Value, Vec<Value>)>, YunError> {
    let mut groups: Vec<(Value, Vec<Value>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for doc in docs {
        let k = key(&doc)?;
        let text = k.to_string();
        match index.get(&text) {
            Some(&i) => groups[i].1.push(doc),
            None if groups.len() == MAX_GROUPS => {
                return Err(YunError::new(
                    ErrorCode::DatabaseQueryLimit,
                    format!(
                        "the pipeline makes more than {MAX_GROUPS} groups: group by fewer distinct values, \
                         or $match fewer documents first"
                    ),
                ))
            }
            None => {
                index.insert(text, groups.len());
                groups.push((k, vec![doc]));
            }
        }
    }
    Ok(groups)
}

fn project(doc: &Value, spec: &Map<String, Value>) -> Result<Value, YunError> {
    let is_flag = |v: &Value| {
        v.is_boolean() || (v.is_number() && as_i64(v).is_some_and(|n| n == 0 || n == 1))
    };
    let on = |v: &Value| v.as_bool().unwrap_or_else(|| as_i64(v) == Some(1));
    let excluding = spec.iter().any(|(k, v)| k != "_id" && is_flag(v) && !on(v));
    if excluding {
        if spec
            .iter()
            .any(|(k, v)| k != "_id" && (!is_flag(v) || on(v)))
        {
            return Err(invalid_op(
                "$project cannot mix excluding fields with including or computing them",
            ));
        }
        let mut out = doc.clone();
        for (k, v) in spec {
            if !on(v) {
                out = update::apply(&out, &serde_json::json!({ "$unset": { k: "" } }))?;
            }
        }
        return Ok(out);
    }
    let mut out = Value::Object(Map::new());
    if spec.get("_id").is_none_or(|v| !is_flag(v) || on(v)) {
        if let Some(id) = doc.get("_id") {
            out["_id"] = id.clone();
        }
    }
    for (k, v) in spec
        .iter()
        .filter(|(k, v)| k.as_str() != "_id" || !is_flag(v))
    {
        let value = if is_flag(v) {
            let mut found = Vec::new();
            lookup(doc, &parse_path(k)?, &mut found);
            match found.first() {
                Some(Some(v)) => (*v).clone(),
                _ => continue,
            }
        } else {
            eval(v, doc)?
        };
        out = update::apply(&out, &serde_json::json!({ "$set": { k: value } }))?;
    }
    Ok(out)
}

/// Runs the pipeline. `collection` loads another collection for `$lookup`.
pub fn run(
    stages: &[Stage],
    mut docs: Vec<Value>,
    collection: &mut dyn FnMut(&str) -> Result<Vec<Value>, YunError>,
) -> Result<Vec<Value>, YunError> {
    for stage in stages {
        docs = match stage {
            Stage::Match(f) => docs.into_iter().filter(|d| f.matches(d)).collect(),
            Stage::Project(spec) => docs
                .iter()
                .map(|d| project(d, spec))
                .collect::<Result<_, _>>()?,
            Stage::AddFields(spec) => docs
                .iter()
                .map(|d| {
                    let mut out = d.clone();
                    for (k, e) in spec {
                        out = update::apply(
                            &out,
                            &serde_json::json!({ "$set": { k: eval(e, d)? } }),
                        )?;
                    }
                    Ok(out)
                })
                .collect::<Result<_, YunError>>()?,
            Stage::Group { id, fields } => group_by(docs, |d| eval(id, d))?
                .into_iter()
                .map(|(key, members)| {
                    let mut out = Map::new();
                    out.insert("_id".into(), key);
                    out.extend(accumulate(fields, &members)?);
                    Ok(Value::Object(out))
                })
                .collect::<Result<_, YunError>>()?,
            Stage::Sort(keys) => {
                docs.sort_by(|a, b| keys.compare(a, b));
                docs
            }
            Stage::Skip(n) => docs.into_iter().skip(*n).collect(),
            Stage::Limit(n) => docs.into_iter().take(*n).collect(),
            Stage::Unwind {
                path,
                index_field,
                keep_empty,
            } => {
                let mut out = Vec::new();
                let dotted = path.join(".");
                for doc in docs {
                    match field(&doc, &dotted)? {
                        Value::Array(items) if !items.is_empty() => {
                            for (i, item) in items.into_iter().enumerate() {
                                let mut set = Map::new();
                                set.insert(dotted.clone(), item);
                                if let Some(f) = index_field {
                                    set.insert(f.clone(), Value::from(i));
                                }
                                out.push(update::apply(&doc, &serde_json::json!({ "$set": set }))?);
                            }
                        }
                        Value::Array(_) | Value::Null if *keep_empty => {
                            let mut d = doc.clone();
                            if let Some(f) = index_field {
                                d = update::apply(
                                    &d,
                                    &serde_json::json!({ "$set": { f: Value::Null } }),
                                )?;
                            }
                            out.push(d);
                        }
                        Value::Array(_) | Value::Null => {}
                        _ => out.push(doc),
                    }
                }
                out
            }
            Stage::Lookup {
                from,
                local,
                foreign,
                into,
            } => {
                let others = collection(from)?;
                docs.into_iter()
                    .map(|doc| {
                        let mut locals = Vec::new();
                        lookup(&doc, local, &mut locals);
                        let wanted: Vec<&Value> = locals
                            .iter()
                            .flatten()
                            .flat_map(|v| match v {
                                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                                other => vec![*other],
                            })
                            .collect();
                        let joined: Vec<Value> = others
                            .iter()
                            .filter(|o| {
                                let mut found = Vec::new();
                                lookup(o, foreign, &mut found);
                                let null_local = wanted.is_empty();
                                found.iter().any(|f| match f {
                                    Some(fv) => wanted.iter().any(|w| equal(Some(fv), Some(w))),
                                    None => null_local,
                                })
                            })
                            .cloned()
                            .collect();
                        update::apply(
                            &doc,
                            &serde_json::json!({ "$set": { into.as_str(): joined } }),
                        )
                    })
                    .collect::<Result<_, _>>()?
            }
            Stage::Count(name) if docs.is_empty() => docs,
            Stage::Count(name) => vec![serde_json::json!({ name.as_str(): docs.len() })],
            Stage::SortByCount(key) => {
                let mut groups: Vec<Value> = group_by(docs, |d| eval(key, d))?
                    .into_iter()
                    .map(|(k, members)| serde_json::json!({ "_id": k, "count": members.len() }))
                    .collect();
                groups.sort_by(|a, b| compare(b.get("count"), a.get("count")));
                groups
            }
            Stage::Sample(n) => {
                docs.shuffle(&mut rand::rng());
                docs.truncate(*n);
                docs
            }
            Stage::Bucket {
                group_by: key,
                boundaries,
                default,
                output,
            } => {
                let mut buckets: Vec<Vec<Value>> = vec![Vec::new(); boundaries.len() - 1];
                let mut others = Vec::new();
                for doc in docs {
                    let k = eval(key, &doc)?;
                    let slot = boundaries.windows(2).position(|w| {
                        crate::order::bracket(Some(&k)) == crate::order::bracket(Some(&w[0]))
                            && compare(Some(&k), Some(&w[0])).is_ge()
                            && compare(Some(&k), Some(&w[1])).is_lt()
                    });
                    match (slot, default) {
                        (Some(i), _) => buckets[i].push(doc),
                        (None, Some(_)) => others.push(doc),
                        (None, None) => return Err(invalid_op("$bucket: a document fell outside the boundaries and there is no default")),
                    }
                }
                let mut out = Vec::new();
                for (i, members) in buckets
                    .into_iter()
                    .enumerate()
                    .filter(|(_, m)| !m.is_empty())
                {
                    let mut o = Map::new();
                    o.insert("_id".into(), boundaries[i].clone());
                    o.extend(accumulate(output, &members)?);
                    out.push(Value::Object(o));
                }
                if let (Some(d), false) = (default, others.is_empty()) {
                    let mut o = Map::new();
                    o.insert("_id".into(), d.clone());
                    o.extend(accumulate(output, &others)?);
                    out.push(Value::Object(o));
                }
                out
            }
            Stage::BucketAuto {
                group_by: key,
                buckets,
                output,
            } => {
                let mut keyed: Vec<(Value, Value)> = docs
                    .into_iter()
                    .map(|d| Ok((eval(key, &d)?, d)))
                    .collect::<Result<_, YunError>>()?;
                keyed.sort_by(|a, b| compare(Some(&a.0), Some(&b.0)));
                let per = keyed.len().div_ceil(*buckets).max(1);
                let chunks: Vec<Vec<(Value, Value)>> =
                    keyed.chunks(per).map(<[_]>::to_vec).collect();
                let mut out = Vec::new();
                for (i, chunk) in chunks.iter().enumerate() {
                    let min = chunk.first().map(|c| c.0.clone()).unwrap_or(Value::Null);
                    let max = chunks.get(i + 1).and_then(|n| n.first()).map_or_else(
                        || chunk.last().map(|c| c.0.clone()).unwrap_or(Value::Null),
                        |n| n.0.clone(),
                    );
                    let members: Vec<Value> = chunk.iter().map(|c| c.1.clone()).collect();
                    let mut o = Map::new();
                    o.insert("_id".into(), serde_json::json!({ "min": min, "max": max }));
                    o.extend(accumulate(output, &members)?);
                    out.push(Value::Object(o));
                }
                out
            }
            Stage::GeoNear {
                near,
                distance_field,
                key,
                query,
                multiplier,
                include_locs,
            } => {
                let mut found: Vec<(f64, Value, Value)> = Vec::new();
                for doc in docs {
                    if query.as_ref().is_some_and(|q| !q.matches(&doc)) {
                        continue;
                    }
                    // The location: the `key` field, else the first top-level GeoJSON value.
                    let location = match key {
                        Some(path) => {
                            let mut reached = Vec::new();
                            lookup(&doc, path, &mut reached);
                            reached
                                .into_iter()
                                .flatten()
                                .find(|v| crate::geo::Geometry::from_value(v).is_some())
                                .cloned()
                        }
                        None => doc.as_object().and_then(|m| {
                            m.values()
                                .find(|v| crate::geo::Geometry::from_value(v).is_some())
                                .cloned()
                        }),
                    };
                    let Some(location) = location else { continue };
                    if let Some(d) = near.distance(&location) {
                        found.push((d, location, doc));
                    }
                }
                found.sort_by(|a, b| a.0.total_cmp(&b.0));
                found
                    .into_iter()
                    .map(|(d, location, doc)| {
                        let mut set = Map::new();
                        set.insert(distance_field.join("."), Value::from(d * multiplier));
                        if let Some(f) = include_locs {
                            set.insert(f.clone(), location);
                        }
                        update::apply(&doc, &serde_json::json!({ "$set": set }))
                    })
                    .collect::<Result<_, _>>()?
            }
            Stage::ReplaceRoot(e) => docs
                .iter()
                .map(|d| match eval(e, d)? {
                    v @ Value::Object(_) => Ok(v),
                    _ => Err(invalid_op("$replaceRoot newRoot must be a document")),
                })
                .collect::<Result<_, _>>()?,
        };
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pipeline(stages: Value) -> Vec<Stage> {
        stages
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let (k, v) = s.as_object().unwrap().iter().next().unwrap();
                Stage::parse(k, v).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_captured_pipeline() {
        // The protocol page's §3.4 capture: match, group, sort, skip, limit, project, lookup, unwind, count.
        let orders = vec![
            json!({"_id": "o1", "user": "u1", "status": "paid", "amount": 30}),
            json!({"_id": "o2", "user": "u2", "status": "paid", "amount": 50}),
            json!({"_id": "o3", "user": "u1", "status": "paid", "amount": 25}),
            json!({"_id": "o4", "user": "u1", "status": "open", "amount": 99}),
            json!({"_id": "o5", "user": "u3", "status": "paid", "amount": 5}),
        ];
        let users = vec![
            json!({"_id": "u1", "name": "Ann"}),
            json!({"_id": "u2", "name": "Bo"}),
        ];
        let stages = pipeline(json!([
            {"$match": {"status": "paid", "amount": {"$gt": 10}}},
            {"$group": {"_id": "$user", "total": {"$sum": "$amount"}, "cnt": {"$sum": 1}, "avg": {"$avg": "$amount"}, "amounts": {"$push": "$amount"}}},
            {"$sort": {"total": -1}},
            {"$skip": 0}, {"$limit": 10},
            {"$project": {"_id": 0, "user": "$_id", "total": 1, "cnt": 1, "avg": 1}},
            {"$lookup": {"from": "users", "localField": "user", "foreignField": "_id", "as": "u"}},
            {"$unwind": "$u"},
            {"$addFields": {"name": "$u.name", "big": {"$gt": ["$total", 50]}}},
        ]));
        let mut load = |name: &str| {
            Ok(if name == "users" {
                users.clone()
            } else {
                vec![]
            })
        };
        let out = run(&stages, orders.clone(), &mut load).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["user"], "u1");
        assert_eq!(out[0]["total"], 55);
        assert_eq!(out[0]["cnt"], 2);
        assert_eq!(out[0]["avg"], 27.5);
        assert_eq!(out[0]["name"], "Ann");
        assert_eq!(out[0]["big"], true);
        assert_eq!(out[1]["name"], "Bo");
        let counted = run(
            &pipeline(json!([{"$match": {"status": "paid"}}, {"$count": "n"}])),
            orders.clone(),
            &mut load,
        )
        .unwrap();
        assert_eq!(counted, vec![json!({"n": 4})]);
        let by = run(
            &pipeline(json!([{"$sortByCount": "$user"}])),
            orders.clone(),
            &mut load,
        )
        .unwrap();
        assert_eq!(by[0], json!({"_id": "u1", "count": 3}));
        let buckets = run(&pipeline(json!([{"$bucket": {"groupBy": "$amount", "boundaries": [0, 20, 60], "default": "big"}}])), orders.clone(), &mut load).unwrap();
        assert_eq!(
            buckets,
            vec![
                json!({"_id": 0, "count": 1}),
                json!({"_id": 20, "count": 3}),
                json!({"_id": "big", "count": 1})
            ]
        );
        let auto = run(
            &pipeline(json!([{"$bucketAuto": {"groupBy": "$amount", "buckets": 2}}])),
            orders.clone(),
            &mut load,
        )
        .unwrap();
        assert_eq!(auto.len(), 2);
        assert_eq!(auto[0]["count"], 3);
        let sampled = run(
            &pipeline(json!([{"$sample": {"size": 2}}])),
            orders.clone(),
            &mut load,
        )
        .unwrap();
        assert_eq!(sampled.len(), 2);
        let roots = run(
            &pipeline(json!([{"$replaceRoot": {"newRoot": {"who": "$user"}}}, {"$limit": 1}])),
            orders,
            &mut load,
        )
        .unwrap();
        assert_eq!(roots, vec![json!({"who": "u1"})]);
    }

    #[test]
    fn a_group_per_document_past_the_bound_is_an_error_not_a_stall() {
        let docs: Vec<Value> = (0..=MAX_GROUPS).map(|i| json!({ "k": i })).collect();
        let stages = pipeline(json!([{"$group": {"_id": "$k", "n": {"$sum": 1}}}]));
        let mut none = |_: &str| Ok(Vec::new());
        let err = run(&stages, docs.clone(), &mut none).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatabaseQueryLimit, "{err}");
        assert_eq!(
            run(&stages, docs[..MAX_GROUPS].to_vec(), &mut none)
                .unwrap()
                .len(),
            MAX_GROUPS
        );
    }

    #[test]
    fn unwind_options_and_bad_stages() {
        let docs = vec![
            json!({"_id": 1, "t": ["a", "b"]}),
            json!({"_id": 2, "t": []}),
            json!({"_id": 3}),
        ];
        let mut none = |_: &str| Ok(vec![]);
        let plain = run(
            &pipeline(json!([{"$unwind": "$t"}])),
            docs.clone(),
            &mut none,
        )
        .unwrap();
        assert_eq!(
            plain,
            vec![json!({"_id": 1, "t": "a"}), json!({"_id": 1, "t": "b"})]
        );
        let kept = run(&pipeline(json!([{"$unwind": {"path": "$t", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true}}])), docs, &mut none).unwrap();
        assert_eq!(kept.len(), 4);
        assert_eq!(kept[1]["i"], 1);
        for (k, v) in [
            ("$nope", json!({})),
            ("$limit", json!(-1)),
            ("$group", json!({"n": {"$sum": 1}})),
            (
                "$geoNear",
                json!({"near": {"type": "Point", "coordinates": [0, 0]}}),
            ),
            ("$bucket", json!({"groupBy": "$a", "boundaries": [5, 1]})),
        ] {
            assert_eq!(
                Stage::parse(k, &v).unwrap_err().code,
                ErrorCode::DatabaseInvalidOperator,
                "{k}"
            );
        }
    }
}
