//! The query model: a MongoDB-style filter parsed into [`Filter`], and its evaluation
//! over stored documents with MongoDB's semantics:
//! - a path reaches into arrays (`tags.name` looks at every element's `name`; `a.0` is an index);
//! - a condition matches if any value the path reaches matches it, and an array value
//!   is also tried element by element (except `$size`, `$all`, `$elemMatch`);
//! - range operators only compare within a type bracket (`$gt: 5` never matches a string);
//! - a missing field equals `null`; `$ne` and `$nin` are negations over all values.
//!
//! This evaluator is the reference semantics; the SQL compiler must agree with it.

use regex::Regex;
use serde_json::{Map, Value};
use yun_types::{ErrorCode, YunError};

use crate::order::{bracket, compare, equal};
use crate::value::{as_i64, MAX_DEPTH};

#[derive(Debug, Clone)]
pub enum Filter {
    /// Every clause holds (also an empty filter: matches everything).
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Field {
        path: Vec<String>,
        cond: Cond,
    },
}

#[derive(Debug, Clone)]
pub enum Cond {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(InList),
    Nin(InList),
    Exists(bool),
    Size(usize),
    All(Vec<Value>),
    ElemMatch(ElemMatch),
    Mod {
        divisor: i64,
        remainder: i64,
    },
    Regex(Box<Regex>),
    Not(Box<Cond>),
    Near(crate::geo::Near),
    Within(crate::geo::Area),
    Intersects(crate::geo::Geometry),
    /// Several operators on one field: `{n: {$gt: 1, $lt: 5}}`.
    Every(Vec<Cond>),
}

/// An `$in`/`$nin` list: its members, and the scalar ones indexed by a key that equal
/// values share, so a long list costs one lookup per value rather than a pass over it
/// (`$in` with 100,000 ids over a scan was 10^5 comparisons a document). A key only
/// finds candidates; the member's own test decides.
#[derive(Debug, Clone)]
pub struct InList {
    members: Vec<Cond>,
    by_key: std::collections::HashMap<String, Vec<usize>>,
    /// Members no key covers (regexes, documents, arrays): always tried.
    others: Vec<usize>,
}

/// Lists this short are tried member by member.
const IN_LIST_SCAN: usize = 8;

impl InList {
    pub fn new(members: Vec<Cond>) -> Self {
        let mut by_key: std::collections::HashMap<String, Vec<usize>> = Default::default();
        let mut others = Vec::new();
        for (i, m) in members.iter().enumerate() {
            match m {
                Cond::Eq(v) => match Self::key(Some(v)) {
                    Some(k) => by_key.entry(k).or_default().push(i),
                    None => others.push(i),
                },
                _ => others.push(i),
            }
        }
        Self {
            members,
            by_key,
            others,
        }
    }

    /// A key equal values share (missing and null alike, 1 and 1.0 alike).
    fn key(v: Option<&Value>) -> Option<String> {
        Some(match v {
            None | Some(Value::Null) => "n".to_owned(),
            Some(Value::Bool(b)) => format!("b{b}"),
            Some(Value::String(s)) => format!("s{s}"),
            Some(Value::Number(n)) => {
                let f = n.as_f64()?;
                format!("f{}", if f == 0.0 { 0 } else { f.to_bits() })
            }
            Some(d @ Value::Object(_)) => format!("d{}", crate::value::as_date(d)?),
            Some(Value::Array(_)) => return None,
        })
    }

    fn test(&self, v: Option<&Value>) -> bool {
        if self.members.len() <= IN_LIST_SCAN {
            return self.members.iter().any(|c| c.test(v));
        }
        let keyed = Self::key(v)
            .and_then(|k| self.by_key.get(&k))
            .is_some_and(|found| found.iter().any(|&i| self.members[i].test(v)));
        keyed || self.others.iter().any(|&i| self.members[i].test(v))
    }
}

impl std::ops::Deref for InList {
    type Target = [Cond];
    fn deref(&self) -> &[Cond] {
        &self.members
    }
}

#[derive(Debug, Clone)]
pub enum ElemMatch {
    /// `{$elemMatch: {qty: {$gt: 3}}}`: elements are documents matching a filter.
    Document(Box<Filter>),
    /// `{$elemMatch: {$gt: 3, $lt: 9}}`: elements are values matching conditions.
    Value(Box<Cond>),
}

fn invalid_op(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

/// Regexes are compiled with a size limit; Rust's engine runs in linear time, so a
/// pattern cannot blow up at match time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn regex(spec: &Value) -> Result<Regex, YunError> {
    let pattern = spec
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_op("regex needs a pattern"))?;
    let options = spec.get("options").and_then(Value::as_str).unwrap_or("");
    let mut builder = regex::RegexBuilder::new(pattern);
    for o in options.chars() {
        match o {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            'u' => &mut builder,
            other => return Err(invalid_op(format!("unknown regex option {other:?}"))),
        };
    }
    builder
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| invalid_op(format!("invalid regex {pattern:?}: {e}")))
}

fn as_regex(v: &Value) -> Option<&Value> {
    v.as_object()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.get("$regularExpression"))
}

/// Stored values that look like operators but are values: dates, object ids, decimals
/// and non-finite doubles (`where({due: date})` is an equality, not an operator).
pub fn is_literal(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        m.len() == 1
            && m.keys().all(|k| {
                matches!(
                    k.as_str(),
                    "$date" | "$oid" | "$numberDecimal" | "$numberDouble"
                )
            })
    })
}

/// `a.b.0` → `["a", "b", "0"]`; empty segments and `$` are refused.
pub fn parse_path(path: &str) -> Result<Vec<String>, YunError> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(|s| s.is_empty() || s.starts_with('$')) {
        return Err(invalid_op(format!("invalid field path {path:?}")));
    }
    Ok(segments)
}

impl Filter {
    pub fn all() -> Self {
        Filter::And(Vec::new())
    }

    pub fn parse(query: &Value) -> Result<Self, YunError> {
        Self::parse_at(query, 0)
    }

    fn parse_at(query: &Value, depth: usize) -> Result<Self, YunError> {
        if depth > MAX_DEPTH {
            return Err(YunError::invalid_param("query nests too deeply"));
        }
        let map = query
            .as_object()
            .ok_or_else(|| YunError::invalid_param("a query must be an object"))?;
        let mut clauses = Vec::with_capacity(map.len());
        for (key, value) in map {
            let list = |v: &Value| -> Result<Vec<Filter>, YunError> {
                let items = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| invalid_op(format!("{key} takes a non-empty array")))?;
                items.iter().map(|q| Self::parse_at(q, depth + 1)).collect()
            };
            clauses.push(match key.as_str() {
                "$and" => Filter::And(list(value)?),
                "$or" => Filter::Or(list(value)?),
                "$nor" => Filter::Nor(list(value)?),
                other if other.starts_with('$') => {
                    return Err(invalid_op(format!(
                        "query operator {other} is not supported"
                    )));
                }
                path => Filter::Field {
                    path: parse_path(path)?,
                    cond: Cond::parse(value, depth + 1)?,
                },
            });
        }
        Ok(if clauses.len() == 1 {
            clauses.pop().expect("one")
        } else {
            Filter::And(clauses)
        })
    }

    /// The `_id`s this filter allows, when it pins `_id` to a finite set (`{_id: x}`,
    /// `{_id: {$in: […]}}`, either inside `$and`); `None` when any document may match.
    /// Stored ids are strings, so only string ids can match.
    pub fn id_candidates(&self) -> Option<Vec<String>> {
        match self {
            Filter::And(clauses) => clauses.iter().find_map(Filter::id_candidates),
            Filter::Field { path, cond } if path.len() == 1 && path[0] == "_id" => {
                let mut ids: Vec<String> = match cond {
                    Cond::Eq(v) => vec![v.as_str()?.to_owned()],
                    Cond::In(list) => list
                        .iter()
                        .map(|c| match c {
                            Cond::Eq(Value::String(s)) => Some(Some(s.clone())),
                            Cond::Eq(_) => Some(None),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()?
                        .into_iter()
                        .flatten()
                        .collect(),
                    _ => return None,
                };
                ids.sort();
                ids.dedup();
                Some(ids)
            }
            _ => None,
        }
    }

    /// The `$nearSphere` of this filter, if any: its results go nearest first.
    pub fn near(&self) -> Option<(&[String], &crate::geo::Near)> {
        match self {
            Filter::And(clauses) => clauses.iter().find_map(Filter::near),
            Filter::Field {
                path,
                cond: Cond::Near(n),
            } => Some((path, n)),
            Filter::Field {
                path,
                cond: Cond::Every(conds),
            } => conds.iter().find_map(|c| match c {
                Cond::Near(n) => Some((path.as_slice(), n)),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The top-level fields the filter reads: a document with only these fields matches
    /// exactly when the whole document does.
    pub fn top_fields(&self, out: &mut Vec<String>) {
        match self {
            Filter::And(fs) | Filter::Or(fs) | Filter::Nor(fs) => {
                fs.iter().for_each(|f| f.top_fields(out))
            }
            Filter::Field { path, .. } => {
                if !out.contains(&path[0]) {
                    out.push(path[0].clone());
                }
            }
        }
    }

    /// The filter with its values stripped (`{n: {$gt: "?"}}`): what the slow-query log
    /// keeps, so it groups queries by shape and holds no user data.
    pub fn shape(&self) -> Value {
        let list = |fs: &[Filter]| Value::Array(fs.iter().map(Filter::shape).collect());
        match self {
            Filter::And(fs) if fs.is_empty() => Value::Object(Map::new()),
            Filter::And(fs) => serde_json::json!({ "$and": list(fs) }),
            Filter::Or(fs) => serde_json::json!({ "$or": list(fs) }),
            Filter::Nor(fs) => serde_json::json!({ "$nor": list(fs) }),
            Filter::Field { path, cond } => serde_json::json!({ path.join("."): cond.shape() }),
        }
    }

    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(doc)),
            Filter::Nor(fs) => !fs.iter().any(|f| f.matches(doc)),
            Filter::Field { path, cond } => match lookup_plain(doc, path) {
                Some(reached) => cond.holds(&[reached]),
                None => {
                    let mut found = Vec::new();
                    lookup(doc, path, &mut found);
                    cond.holds(&found)
                }
            },
        }
    }
}

/// The document an upsert starts from: the query's top-level equality fields
/// (`{_id: "a", owner: "b", n: {$gt: 1}}` seeds `{_id: "a", owner: "b"}`).
pub fn upsert_seed(query: &Value) -> Value {
    let mut seed = Map::new();
    for (k, v) in query.as_object().into_iter().flatten() {
        let is_operator = v
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with('$')));
        if !k.starts_with('$') && !k.contains('.') && !is_operator {
            seed.insert(k.clone(), v.clone());
        }
    }
    Value::Object(seed)
}

/// What [`lookup`] finds when no array stands on the way to the path's last field: at
/// most one value, found without allocating (this runs per document on scans). `None`
/// when an array is on the way: only [`lookup`] knows how to descend it.
pub(crate) fn lookup_plain<'a>(mut v: &'a Value, path: &[String]) -> Option<Option<&'a Value>> {
    for field in path {
        match v {
            Value::Object(m) => match m.get(field) {
                Some(child) => v = child,
                None => return Some(None),
            },
            Value::Array(_) => return None,
            _ => return Some(None),
        }
    }
    Some(Some(v))
}

/// Every value `path` reaches in `v`; `None` where it reaches nothing.
pub fn lookup<'a>(v: &'a Value, path: &[String], out: &mut Vec<Option<&'a Value>>) {
    let Some((head, rest)) = path.split_first() else {
        out.push(Some(v));
        return;
    };
    match v {
        Value::Object(m) => match m.get(head) {
            Some(child) => lookup(child, rest, out),
            None => out.push(None),
        },
        Value::Array(items) => {
            let before = out.len();
            if let Ok(i) = head.parse::<usize>() {
                if let Some(item) = items.get(i) {
                    lookup(item, rest, out);
                }
            }
            for item in items.iter().filter(|i| i.is_object()) {
                lookup(item, path, out);
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

impl Cond {
    /// See [`Filter::shape`].
    fn shape(&self) -> Value {
        use serde_json::json;
        let hidden = || Value::String("?".into());
        let list = |n: usize| Value::String(format!("[{n} values]"));
        match self {
            Cond::Eq(_) => hidden(),
            Cond::Ne(_) => json!({ "$ne": hidden() }),
            Cond::Gt(_) => json!({ "$gt": hidden() }),
            Cond::Gte(_) => json!({ "$gte": hidden() }),
            Cond::Lt(_) => json!({ "$lt": hidden() }),
            Cond::Lte(_) => json!({ "$lte": hidden() }),
            Cond::In(l) => json!({ "$in": list(l.len()) }),
            Cond::Nin(l) => json!({ "$nin": list(l.len()) }),
            Cond::Exists(b) => json!({ "$exists": b }),
            Cond::Size(_) => json!({ "$size": hidden() }),
            Cond::All(l) => json!({ "$all": list(l.len()) }),
            Cond::ElemMatch(ElemMatch::Document(f)) => json!({ "$elemMatch": f.shape() }),
            Cond::ElemMatch(ElemMatch::Value(c)) => json!({ "$elemMatch": c.shape() }),
            Cond::Mod { .. } => json!({ "$mod": hidden() }),
            Cond::Regex(_) => json!({ "$regex": hidden() }),
            Cond::Not(c) => json!({ "$not": c.shape() }),
            Cond::Near(_) => json!({ "$nearSphere": hidden() }),
            Cond::Within(_) => json!({ "$geoWithin": hidden() }),
            Cond::Intersects(_) => json!({ "$geoIntersects": hidden() }),
            Cond::Every(cs) => {
                let mut m = Map::new();
                for c in cs {
                    match c.shape() {
                        Value::Object(o) => m.extend(o),
                        other => {
                            m.insert("$eq".into(), other);
                        }
                    }
                }
                Value::Object(m)
            }
        }
    }

    fn parse(value: &Value, depth: usize) -> Result<Self, YunError> {
        if let Some(spec) = as_regex(value) {
            return Ok(Cond::Regex(Box::new(regex(spec)?)));
        }
        let Some(map) = value
            .as_object()
            .filter(|m| m.keys().next().is_some_and(|k| k.starts_with('$')))
            .filter(|_| !is_literal(value))
        else {
            return Ok(Cond::Eq(value.clone()));
        };
        let mut conds = Vec::with_capacity(map.len());
        for (op, arg) in map {
            let list = || {
                arg.as_array()
                    .ok_or_else(|| invalid_op(format!("{op} takes an array")))
            };
            conds.push(match op.as_str() {
                "$eq" => match as_regex(arg) {
                    Some(spec) => Cond::Regex(Box::new(regex(spec)?)),
                    None => Cond::Eq(arg.clone()),
                },
                "$ne" => Cond::Ne(arg.clone()),
                "$gt" => Cond::Gt(arg.clone()),
                "$gte" => Cond::Gte(arg.clone()),
                "$lt" => Cond::Lt(arg.clone()),
                "$lte" => Cond::Lte(arg.clone()),
                "$in" => Cond::In(InList::new(
                    list()?
                        .iter()
                        .map(Cond::parse_eq)
                        .collect::<Result<_, _>>()?,
                )),
                "$nin" => Cond::Nin(InList::new(
                    list()?
                        .iter()
                        .map(Cond::parse_eq)
                        .collect::<Result<_, _>>()?,
                )),
                "$exists" => Cond::Exists(
                    arg.as_bool()
                        .ok_or_else(|| invalid_op("$exists takes true or false"))?,
                ),
                "$size" => Cond::Size(
                    as_i64(arg)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| invalid_op("$size takes a non-negative integer"))?,
                ),
                "$all" => Cond::All(list()?.clone()),
                "$elemMatch" => {
                    let inner = arg
                        .as_object()
                        .ok_or_else(|| invalid_op("$elemMatch takes an object"))?;
                    if inner.keys().all(|k| {
                        k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor")
                    }) {
                        Cond::ElemMatch(ElemMatch::Value(Box::new(Cond::parse(arg, depth + 1)?)))
                    } else {
                        Cond::ElemMatch(ElemMatch::Document(Box::new(Filter::parse_at(
                            arg,
                            depth + 1,
                        )?)))
                    }
                }
                "$mod" => match list()?.as_slice() {
                    [d, r] => match (as_i64(d), as_i64(r)) {
                        (Some(0), _) => return Err(invalid_op("$mod divisor must not be 0")),
                        (Some(divisor), Some(remainder)) => Cond::Mod { divisor, remainder },
                        _ => return Err(invalid_op("$mod takes [divisor, remainder] integers")),
                    },
                    _ => return Err(invalid_op("$mod takes [divisor, remainder]")),
                },
                "$regex" => {
                    let pattern = arg
                        .as_str()
                        .ok_or_else(|| invalid_op("$regex takes a string"))?;
                    let options = map
                        .get("$options")
                        .cloned()
                        .unwrap_or(Value::String(String::new()));
                    let mut spec = Map::new();
                    spec.insert("pattern".into(), Value::String(pattern.into()));
                    spec.insert("options".into(), options);
                    Cond::Regex(Box::new(regex(&Value::Object(spec))?))
                }
                "$options" if map.contains_key("$regex") => continue,
                "$not" => Cond::Not(Box::new(Cond::parse(arg, depth + 1)?)),
                "$nearSphere" | "$near" => Cond::Near(crate::geo::Near::parse(arg)?),
                "$geoWithin" => Cond::Within(crate::geo::Area::parse(arg)?),
                "$geoIntersects" => Cond::Intersects(crate::geo::Geometry::parse(
                    arg.get("$geometry")
                        .ok_or_else(|| invalid_op("$geoIntersects takes $geometry"))?,
                )?),
                other => {
                    return Err(invalid_op(format!(
                        "query operator {other} is not supported"
                    )))
                }
            });
        }
        Ok(if conds.len() == 1 {
            conds.pop().expect("one")
        } else {
            Cond::Every(conds)
        })
    }

    /// `$in` members: values, or regexes that match.
    fn parse_eq(v: &Value) -> Result<Cond, YunError> {
        Ok(match as_regex(v) {
            Some(spec) => Cond::Regex(Box::new(regex(spec)?)),
            None => Cond::Eq(v.clone()),
        })
    }

    /// Whether the condition holds for the values a path reached.
    fn holds(&self, found: &[Option<&Value>]) -> bool {
        match self {
            Cond::Ne(v) => !found.iter().any(|x| Cond::eq_holds_one(v, *x)),
            Cond::Nin(list) => !found.iter().any(|x| Cond::in_holds_one(list, *x)),
            Cond::Not(inner) => !inner.holds(found),
            Cond::Every(conds) => conds.iter().all(|c| c.holds(found)),
            Cond::Exists(want) => found.iter().any(Option::is_some) == *want,
            _ => found.iter().any(|v| self.holds_one(*v)),
        }
    }

    /// `Cond::Eq(v).holds_one(x)`, without building the condition.
    fn eq_holds_one(v: &Value, x: Option<&Value>) -> bool {
        let test = |x: Option<&Value>| equal(x, Some(v)) || (v.is_null() && x.is_none());
        test(x) || matches!(x, Some(Value::Array(items)) if items.iter().any(|i| test(Some(i))))
    }

    /// `Cond::In(list).holds_one(x)`, without building the condition.
    fn in_holds_one(list: &InList, x: Option<&Value>) -> bool {
        let test = |x: Option<&Value>| list.test(x);
        test(x) || matches!(x, Some(Value::Array(items)) if items.iter().any(|i| test(Some(i))))
    }

    /// One reached value; arrays are also tried element by element.
    fn holds_one(&self, v: Option<&Value>) -> bool {
        if self.test(v) {
            return true;
        }
        match (self, v) {
            (Cond::Size(_) | Cond::All(_) | Cond::ElemMatch(_), _) => false,
            (_, Some(Value::Array(items))) => items.iter().any(|item| self.test(Some(item))),
            _ => false,
        }
    }

    fn test(&self, v: Option<&Value>) -> bool {
        let range = |bound: &Value, accept: fn(std::cmp::Ordering) -> bool| {
            v.is_some_and(|v| {
                bracket(Some(v)) == bracket(Some(bound)) && accept(compare(Some(v), Some(bound)))
            })
        };
        match self {
            Cond::Eq(x) => equal(v, Some(x)) || (x.is_null() && v.is_none()),
            Cond::Gt(x) => range(x, |o| o.is_gt()),
            Cond::Gte(x) => range(x, |o| o.is_ge()),
            Cond::Lt(x) => range(x, |o| o.is_lt()),
            Cond::Lte(x) => range(x, |o| o.is_le()),
            Cond::In(list) => list.test(v),
            Cond::Size(n) => matches!(v, Some(Value::Array(items)) if items.len() == *n),
            Cond::All(wanted) => match v {
                Some(Value::Array(items)) => {
                    !wanted.is_empty()
                        && wanted
                            .iter()
                            .all(|w| items.iter().any(|i| equal(Some(i), Some(w))))
                }
                _ => false,
            },
            Cond::ElemMatch(m) => match v {
                Some(Value::Array(items)) => items.iter().any(|item| match m {
                    ElemMatch::Document(f) => item.is_object() && f.matches(item),
                    ElemMatch::Value(c) => c.test(Some(item)),
                }),
                _ => false,
            },
            Cond::Mod { divisor, remainder } => v
                .and_then(as_i64)
                .is_some_and(|n| n % divisor == *remainder),
            Cond::Regex(re) => v.and_then(Value::as_str).is_some_and(|s| re.is_match(s)),
            Cond::Near(near) => v.and_then(|v| near.distance(v)).is_some(),
            Cond::Within(area) => v.is_some_and(|v| area.contains(v)),
            Cond::Intersects(shape) => v
                .and_then(crate::geo::Geometry::from_value)
                .is_some_and(|g| g.intersects(shape)),
            // Negations and conjunctions are decided over all reached values in `holds`;
            // inside `$elemMatch` and `$in` they apply to the one value.
            Cond::Ne(_) | Cond::Nin(_) | Cond::Not(_) | Cond::Every(_) | Cond::Exists(_) => {
                self.holds(&[v])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(query: Value, doc: Value) -> bool {
        Filter::parse(&query).unwrap().matches(&doc)
    }

    #[test]
    fn long_in_lists_match_exactly_as_a_pass_over_them() {
        let members = json!([
            5, "x", null, {"$regularExpression": {"pattern": "^q", "options": ""}},
            {"$date": 7}, [1, 2], {"a": 1}, true, 0, 2.5, "y", 9007199254740993u64,
            {"$oid": "abc"}
        ]);
        let values = [
            json!(5.0),
            json!(5),
            json!(6),
            json!("x"),
            json!("qq"),
            json!("z"),
            json!(null),
            json!({"$date": 7}),
            json!({"$date": 8}),
            json!([1, 2]),
            json!([2, 1]),
            json!({"a": 1}),
            json!(true),
            json!(false),
            json!(-0.0),
            json!(2.5),
            json!(9007199254740992u64),
            json!(9007199254740993u64),
            json!({"$oid": "abc"}),
            json!([5, 9]),
            json!(["q1"]),
        ];
        let list = Filter::parse(&json!({"v": {"$in": members}})).unwrap();
        let nin = Filter::parse(&json!({"v": {"$nin": members}})).unwrap();
        let Filter::Field {
            cond: Cond::In(l), ..
        } = &list
        else {
            panic!("an $in")
        };
        assert!(l.len() > IN_LIST_SCAN, "long enough to use its keys");
        for v in values.iter().map(Some).chain([None]) {
            let doc = match v {
                Some(v) => json!({ "v": v }),
                None => json!({}),
            };
            let by_pass = members.as_array().unwrap().iter().any(|m| {
                Filter::parse(&json!({"v": {"$in": [m]}}))
                    .unwrap()
                    .matches(&doc)
            });
            assert_eq!(list.matches(&doc), by_pass, "$in on {doc}");
            assert_eq!(nin.matches(&doc), !by_pass, "$nin on {doc}");
        }
    }

    #[test]
    fn equality_paths_and_arrays() {
        let doc = json!({"a": 1, "tags": ["x", "y"], "owner": {"name": "bob"}, "items": [{"qty": 2}, {"qty": 5}], "n": null});
        assert!(m(json!({"a": 1.0}), doc.clone()));
        assert!(
            m(json!({"tags": "x"}), doc.clone()),
            "an array matches one of its elements"
        );
        assert!(m(json!({"tags": ["x", "y"]}), doc.clone()), "or as a whole");
        assert!(m(json!({"owner.name": "bob"}), doc.clone()));
        assert!(
            m(json!({"items.qty": 5}), doc.clone()),
            "paths reach into arrays of documents"
        );
        assert!(
            m(json!({"items.1.qty": 5}), doc.clone()),
            "numeric segments index arrays"
        );
        assert!(!m(json!({"items.0.qty": 5}), doc.clone()));
        assert!(
            m(json!({"missing": null}), doc.clone()),
            "missing equals null"
        );
        assert!(m(json!({"n": null}), doc.clone()));
        assert!(!m(json!({"a": {"$ne": 1}}), doc.clone()));
        assert!(m(json!({"tags": {"$ne": "z"}}), doc.clone()));
        assert!(
            !m(json!({"tags": {"$ne": "x"}}), doc.clone()),
            "$ne fails if any element equals"
        );
    }

    #[test]
    fn ranges_stay_within_a_type_bracket() {
        let doc = json!({"n": 5, "s": "5", "d": {"$date": 100}, "arr": [1, 10]});
        assert!(m(json!({"n": {"$gt": 1, "$lte": 5}}), doc.clone()));
        assert!(!m(json!({"s": {"$gt": 1}}), doc.clone()));
        assert!(m(json!({"d": {"$gte": {"$date": 100}}}), doc.clone()));
        assert!(
            m(json!({"d": {"$date": 100}}), doc.clone()),
            "a date literal is an equality"
        );
        assert!(!m(json!({"d": {"$date": 101}}), doc.clone()));
        assert!(!m(json!({"d": {"$gt": 50}}), doc.clone()));
        assert!(
            m(json!({"arr": {"$gt": 5, "$lt": 5}}), doc.clone()),
            "different elements may satisfy each bound"
        );
        assert!(
            !m(
                json!({"arr": {"$elemMatch": {"$gt": 5, "$lt": 8}}}),
                doc.clone()
            ),
            "elemMatch needs one element for all"
        );
        assert!(!m(json!({"missing": {"$lt": 1}}), doc.clone()));
    }

    #[test]
    fn set_operators_logic_and_regex() {
        let doc = json!({"n": 4, "tags": ["a", "b"], "title": "Buy Milk", "items": [{"qty": 2}, {"qty": 5}]});
        assert!(m(json!({"n": {"$in": [1, 4]}}), doc.clone()));
        assert!(m(json!({"n": {"$nin": [1, 2]}}), doc.clone()));
        assert!(m(json!({"tags": {"$all": ["b", "a"]}}), doc.clone()));
        assert!(!m(json!({"tags": {"$all": ["a", "c"]}}), doc.clone()));
        assert!(m(json!({"tags": {"$size": 2}}), doc.clone()));
        assert!(m(
            json!({"items": {"$elemMatch": {"qty": {"$gt": 3}}}}),
            doc.clone()
        ));
        assert!(m(json!({"n": {"$mod": [2, 0]}}), doc.clone()));
        assert!(m(
            json!({"title": {"$regularExpression": {"pattern": "^buy", "options": "i"}}}),
            doc.clone()
        ));
        assert!(!m(
            json!({"title": {"$regularExpression": {"pattern": "^buy", "options": ""}}}),
            doc.clone()
        ));
        assert!(m(json!({"n": {"$not": {"$gt": 5}}}), doc.clone()));
        assert!(
            m(json!({"missing": {"$not": {"$gt": 5}}}), doc.clone()),
            "$not matches missing fields"
        );
        assert!(m(json!({"$or": [{"n": 1}, {"tags": "b"}]}), doc.clone()));
        assert!(!m(json!({"$nor": [{"n": 1}, {"tags": "b"}]}), doc.clone()));
        assert!(m(
            json!({"$and": [{"n": {"$gt": 1}}, {"n": {"$lte": 10}}], "title": {"$exists": true}}),
            doc.clone()
        ));
        assert!(m(json!({"missing": {"$exists": false}}), doc.clone()));
        assert!(m(json!({}), doc));
    }

    #[test]
    fn id_candidates_only_when_pinned() {
        let ids = |q: Value| Filter::parse(&q).unwrap().id_candidates();
        assert_eq!(ids(json!({"_id": "a"})), Some(vec!["a".to_owned()]));
        assert_eq!(
            ids(json!({"_id": {"$in": ["b", "a", "b", 3]}, "n": 1})),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            ids(json!({"$and": [{"n": 1}, {"_id": "x"}]})),
            Some(vec!["x".to_owned()])
        );
        assert_eq!(ids(json!({"_id": 5})), None, "a number pins nothing stored");
        assert_eq!(ids(json!({"$or": [{"_id": "a"}, {"n": 1}]})), None);
        assert_eq!(ids(json!({"_id": {"$gt": "a"}})), None);
        assert_eq!(ids(json!({"n": 1})), None);
    }

    #[test]
    fn bad_queries_are_clear_errors() {
        for (q, code) in [
            (
                json!({"$where": "this.a == 1"}),
                ErrorCode::DatabaseInvalidOperator,
            ),
            (
                json!({"a": {"$foo": 1}}),
                ErrorCode::DatabaseInvalidOperator,
            ),
            (json!({"a..b": 1}), ErrorCode::DatabaseInvalidOperator),
            (json!({"a.$b": 1}), ErrorCode::DatabaseInvalidOperator),
            (json!({"$or": []}), ErrorCode::DatabaseInvalidOperator),
            (
                json!({"a": {"$mod": [0, 1]}}),
                ErrorCode::DatabaseInvalidOperator,
            ),
            (
                json!({"a": {"$regularExpression": {"pattern": "(", "options": ""}}}),
                ErrorCode::DatabaseInvalidOperator,
            ),
            (json!([1]), ErrorCode::InvalidParam),
        ] {
            assert_eq!(Filter::parse(&q).unwrap_err().code, code, "{q}");
        }
        let huge =
            json!({"a": {"$regularExpression": {"pattern": "a{1000}{1000}", "options": ""}}});
        assert!(
            Filter::parse(&huge).is_err(),
            "oversized regexes are refused"
        );
    }
}
