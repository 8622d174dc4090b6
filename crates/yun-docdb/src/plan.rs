//! The query planner: which documents a query reads and in which order. Written by
//! hand because it is ours: MongoDB's semantics (type brackets, multikey arrays, missing
//! fields as null) decide what an index may answer. A plan may read more than the
//! matches, never less: the evaluator still decides every match, except for a count
//! that the index answers exactly ([`IndexScan::covered`]).
//!
//! Every index is considered: equality on a prefix of its fields (`$in` as several
//! ranges), then a range on the next field; an index whose next fields are the query's
//! order serves that order (forward or backward). `$or` whose every branch has a plan
//! reads the union of their ranges. The choice prefers, in turn: more equality fields,
//! serving the order, a bounded range.

use serde_json::Value;

use crate::filter::{parse_path, Cond, Filter};
use crate::find::SortKeys;
use crate::index::{component, IndexSpec, KeyRange};
use crate::order::bracket;
use crate::value::as_date;

/// Key ranges one plan may read (a product of `$in` lists); past this the index
/// answers fewer fields.
const MAX_RANGES: usize = 10_000;

#[derive(Debug, Clone)]
pub enum Plan {
    /// The filter pins `_id` to these.
    Ids(Vec<String>),
    Index(IndexScan),
    /// `$or`: the union of each branch's plan.
    Union(Vec<Plan>),
    /// Every document, in `_id` order.
    Scan,
}

#[derive(Debug, Clone)]
pub struct IndexScan {
    pub spec: IndexSpec,
    pub ranges: Vec<KeyRange>,
    pub backward: bool,
    /// Leading fields bound by equality.
    pub equal_fields: usize,
    /// Whether the field after them is bounded by a range.
    pub range: bool,
    /// When reading the ranges in key order gives the query's order: how many leading
    /// key components (equality prefix and sort fields) decide that order.
    pub order_components: Option<usize>,
    /// The entries in the ranges are exactly the matches, one per document: a count
    /// needs no document.
    pub covered: bool,
    /// A document may have several entries (arrays, or a dotted path through arrays).
    pub several_keys: bool,
}

impl Plan {
    /// The plan as `yun db explain` shows it.
    pub fn describe(&self) -> Value {
        match self {
            Plan::Ids(ids) => serde_json::json!({ "stage": "IDS", "ids": ids.len() }),
            Plan::Scan => serde_json::json!({ "stage": "COLLECTION_SCAN" }),
            Plan::Union(branches) => serde_json::json!({
                "stage": "OR",
                "branches": branches.iter().map(Plan::describe).collect::<Vec<_>>(),
            }),
            Plan::Index(scan) => serde_json::json!({
                "stage": "INDEX_SCAN",
                "index": scan.spec.name,
                "fields": scan.spec.fields.iter().map(|f| serde_json::json!({ f.field.clone(): f.direction })).collect::<Vec<_>>(),
                "ranges": scan.ranges.len(),
                "direction": if scan.backward { "backward" } else { "forward" },
                "equalityFields": scan.equal_fields,
                "rangeField": scan.range,
                "servesOrder": scan.order_components.is_some(),
                "covered": scan.covered,
                "multikey": scan.several_keys,
            }),
        }
    }
}

/// Plans `filter` (and `order`, when the caller will sort) over the collection's indexes.
pub fn plan(filter: &Filter, order: &SortKeys, indexes: &[IndexSpec]) -> Plan {
    if let Some(ids) = filter.id_candidates() {
        return Plan::Ids(ids);
    }
    let clauses = top_clauses(filter);
    let best = indexes
        .iter()
        .filter_map(|spec| index_scan(spec, &clauses, order))
        .max_by_key(|s| {
            (
                s.equal_fields,
                s.order_components.is_some(),
                s.range,
                std::cmp::Reverse(s.ranges.len()),
            )
        });
    let best = match best {
        Some(scan) if scan.equal_fields > 0 || scan.range => return Plan::Index(scan),
        other => other,
    };
    // A bare `$or` (or one beside unindexed clauses) reads the union of its branches.
    for clause in &clauses {
        if let Filter::Or(branches) = clause {
            let plans: Vec<Plan> = branches
                .iter()
                .map(|b| plan(b, &SortKeys::default(), indexes))
                .collect();
            if plans.iter().all(|p| !matches!(p, Plan::Scan)) {
                return Plan::Union(plans);
            }
        }
    }
    match best {
        // No bound, but the index gives the order: read it in order.
        Some(scan) if scan.order_components.is_some() => Plan::Index(scan),
        _ => Plan::Scan,
    }
}

/// The clauses that must all hold, with nested `$and`s flattened.
fn top_clauses(filter: &Filter) -> Vec<&Filter> {
    match filter {
        Filter::And(cs) => cs.iter().flat_map(top_clauses).collect(),
        f => vec![f],
    }
}

/// The conditions the clauses put on exactly this path.
fn conds_on<'f>(clauses: &[&'f Filter], path: &[String]) -> Vec<&'f Cond> {
    let mut out = Vec::new();
    for clause in clauses {
        if let Filter::Field { path: p, cond } = clause {
            if p.as_slice() == path {
                match cond {
                    Cond::Every(cs) => out.extend(cs.iter()),
                    c => out.push(c),
                }
            }
        }
    }
    out
}

/// A field's bound: equality to one of some values, or a byte range of its component.
enum Bound<'c> {
    Points(Vec<&'c Value>),
    Range(KeyRange),
}

/// Whether the index's encoding of `v` is exact: equal keys ⇔ equal values, so an
/// index count needs no document. Numbers past 2^53 share keys; objects, arrays and
/// regexes encode as their JSON text.
fn exact(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.unsigned_abs() <= 1 << 53,
            (None, Some(u)) => u <= 1 << 53,
            _ => n.as_f64().is_some_and(f64::is_finite),
        },
        v @ Value::Object(_) => as_date(v).is_some(),
        Value::Array(_) => false,
    }
}

/// The byte range of one range condition on a component with `direction`.
fn range_of(cond: &Cond, direction: i8) -> Option<KeyRange> {
    let (v, lower, inclusive) = match cond {
        Cond::Gt(v) => (v, true, false),
        Cond::Gte(v) => (v, true, true),
        Cond::Lt(v) => (v, false, false),
        Cond::Lte(v) => (v, false, true),
        _ => return None,
    };
    if v.is_array() {
        return None;
    }
    // Ranges stay inside the bound's type bracket (MongoDB's type bracketing).
    let b = bracket(Some(v));
    let edge = component(Some(v), direction);
    let edge_end = after_prefix(&edge);
    let (start, end) = if direction > 0 {
        (vec![b], vec![b + 1])
    } else {
        (vec![!b], vec![!b + 1])
    };
    // Descending components invert their bytes: a lower bound on the value is an upper
    // bound on the key.
    let (low, high) = match (lower == (direction > 0), inclusive) {
        (true, true) => (edge, end),
        (true, false) => (edge_end, end),
        (false, true) => (start, edge_end),
        (false, false) => (start, edge),
    };
    Some(KeyRange { low, high })
}

/// The smallest byte string greater than every string starting with `prefix`.
pub fn after_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last != 0xff {
            p.push(last + 1);
            return p;
        }
    }
    vec![0xff]
}

/// The bound the conditions put on one field, and whether it is exactly them.
/// `several`: a document may have several keys here, so two range conditions may be met
/// by different elements and do not intersect.
fn bound<'c>(conds: &[&'c Cond], direction: i8, several: bool) -> Option<(Bound<'c>, bool)> {
    let alone = conds.len() == 1;
    for c in conds {
        match c {
            Cond::Eq(v) if !v.is_array() => {
                return Some((Bound::Points(vec![v]), alone && exact(v)))
            }
            Cond::In(list) => {
                let values: Option<Vec<&Value>> = list
                    .iter()
                    .map(|c| match c {
                        Cond::Eq(v) if !v.is_array() => Some(v),
                        _ => None,
                    })
                    .collect();
                if let Some(values) = values {
                    let all_exact = values.iter().all(|v| exact(v));
                    return Some((Bound::Points(values), alone && all_exact));
                }
            }
            _ => {}
        }
    }
    let ranges: Vec<(KeyRange, bool)> = conds
        .iter()
        .filter_map(|c| {
            let r = range_of(c, direction)?;
            // A missing field keys as null but meets no range bound, even `$gte: null`.
            let value_exact = match c {
                Cond::Gt(v) | Cond::Gte(v) | Cond::Lt(v) | Cond::Lte(v) => exact(v) && !v.is_null(),
                _ => false,
            };
            Some((r, value_exact))
        })
        .collect();
    let every_cond_used = ranges.len() == conds.len();
    match ranges.as_slice() {
        [] => None,
        [(r, e)] => Some((Bound::Range(r.clone()), *e && every_cond_used)),
        _ if several => Some((Bound::Range(ranges[0].0.clone()), false)),
        _ => {
            let low = ranges
                .iter()
                .map(|(r, _)| &r.low)
                .max()
                .cloned()
                .unwrap_or_default();
            let high = ranges
                .iter()
                .map(|(r, _)| &r.high)
                .min()
                .cloned()
                .unwrap_or_default();
            let all_exact = ranges.iter().all(|(_, e)| *e) && every_cond_used;
            Some((Bound::Range(KeyRange { low, high }), all_exact))
        }
    }
}

/// What `spec` can do for this query, if anything.
fn index_scan(spec: &IndexSpec, clauses: &[&Filter], order: &SortKeys) -> Option<IndexScan> {
    let paths: Vec<Vec<String>> = spec
        .fields
        .iter()
        .map(|f| parse_path(&f.field))
        .collect::<Result<_, _>>()
        .ok()?;
    let several_keys = spec.multikey || paths.iter().any(|p| p.len() > 1);
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    let mut equal_fields = 0;
    // Leading fields each bound to a single value: what an order may follow.
    let mut single_equal = 0;
    let mut range: Option<KeyRange> = None;
    let mut bound_paths: Vec<&Vec<String>> = Vec::new();
    let mut covered = !several_keys;
    for (field, path) in spec.fields.iter().zip(&paths) {
        let conds = conds_on(clauses, path);
        let Some((b, exactly)) = bound(&conds, field.direction, several_keys) else {
            break;
        };
        match b {
            Bound::Points(values) => {
                if prefixes.len() * values.len() > MAX_RANGES {
                    break;
                }
                let mut keys: Vec<Vec<u8>> = values
                    .iter()
                    .map(|v| component(Some(v), field.direction))
                    .collect();
                keys.sort();
                keys.dedup();
                if keys.len() == 1 && single_equal == equal_fields {
                    single_equal += 1;
                }
                prefixes = prefixes
                    .iter()
                    .flat_map(|p| keys.iter().map(move |k| [p.as_slice(), k].concat()))
                    .collect();
                equal_fields += 1;
                covered &= exactly;
                bound_paths.push(path);
            }
            Bound::Range(r) => {
                range = Some(r);
                covered &= exactly;
                bound_paths.push(path);
                break;
            }
        }
    }
    // Every clause must be one the bounds express exactly for the index to count alone.
    covered &= clauses.iter().all(|c| match c {
        Filter::Field { path, .. } => bound_paths.contains(&path),
        _ => false,
    });
    let ranges: Vec<KeyRange> = prefixes
        .iter()
        .filter_map(|p| {
            let r = match &range {
                Some(r) => KeyRange {
                    low: [p.as_slice(), &r.low].concat(),
                    high: [p.as_slice(), &r.high].concat(),
                },
                None => KeyRange {
                    low: p.clone(),
                    high: after_prefix(p),
                },
            };
            (r.low < r.high).then_some(r)
        })
        .collect();
    let (order_components, backward) = serves_order(
        spec,
        &paths,
        order,
        single_equal,
        equal_fields,
        range.is_some(),
        several_keys,
        prefixes.len(),
    );
    Some(IndexScan {
        spec: spec.clone(),
        ranges,
        backward,
        equal_fields,
        range: range.is_some(),
        order_components,
        covered,
        several_keys,
    })
}

/// Whether reading the index in key order (or backward) yields `order`: the sort fields
/// must be the index's fields right after a prefix bound to single values, all in the
/// index's directions or all reversed. With several keys per document, a document is
/// placed at its first entry in the walk, which is its sort key (the smallest element
/// ascending, the largest descending) only when the walk sees all its entries: then no
/// range may bound a sort field.
#[allow(clippy::too_many_arguments)]
fn serves_order(
    spec: &IndexSpec,
    paths: &[Vec<String>],
    order: &SortKeys,
    single_equal: usize,
    equal_fields: usize,
    has_range: bool,
    several_keys: bool,
    prefixes: usize,
) -> (Option<usize>, bool) {
    let keys = order.keys();
    if keys.is_empty() || single_equal != equal_fields || prefixes != 1 {
        return (None, false);
    }
    if several_keys && has_range {
        return (None, false);
    }
    let sort_fields = &spec.fields[equal_fields..];
    let sort_paths = &paths[equal_fields..];
    if keys.len() > sort_fields.len() {
        return (None, false);
    }
    let mut forward = true;
    let mut backward = true;
    for ((path, descending), (field, index_path)) in
        keys.iter().zip(sort_fields.iter().zip(sort_paths))
    {
        if path != index_path {
            return (None, false);
        }
        let index_descending = field.direction < 0;
        forward &= index_descending == *descending;
        backward &= index_descending != *descending;
    }
    if !forward && !backward {
        return (None, false);
    }
    (Some(equal_fields + keys.len()), !forward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexField;
    use serde_json::json;

    fn spec(name: &str, fields: &[(&str, i8)]) -> IndexSpec {
        IndexSpec {
            name: name.into(),
            fields: fields
                .iter()
                .map(|(f, d)| IndexField {
                    field: (*f).into(),
                    direction: *d,
                })
                .collect(),
            unique: false,
            multikey: false,
        }
    }

    fn planned(filter: Value, order: Value, indexes: &[IndexSpec]) -> Plan {
        plan(
            &Filter::parse(&filter).unwrap(),
            &SortKeys::parse(&order).unwrap(),
            indexes,
        )
    }

    #[test]
    fn the_index_that_serves_filter_and_order_wins() {
        let indexes = [
            spec("album", &[("album", 1)]),
            spec("album_created", &[("album", 1), ("createdAt", -1)]),
            spec("n", &[("n", 1)]),
        ];
        let Plan::Index(s) = planned(json!({"album": "a"}), json!({"createdAt": -1}), &indexes)
        else {
            panic!("an index plan")
        };
        assert_eq!(s.spec.name, "album_created");
        assert_eq!((s.order_components, s.backward), (Some(2), false));
        let Plan::Index(s) = planned(json!({"n": {"$gt": 500}}), json!({"n": -1}), &indexes) else {
            panic!("an index plan")
        };
        assert_eq!(
            (s.spec.name.as_str(), s.backward, s.covered),
            ("n", true, true)
        );
        let Plan::Index(s) = planned(json!({}), json!({"n": 1}), &indexes) else {
            panic!("the order alone picks an index")
        };
        assert_eq!((s.spec.name.as_str(), s.backward), ("n", false));
        assert!(matches!(
            planned(json!({"x": 1}), json!({}), &indexes),
            Plan::Scan
        ));
        assert!(matches!(
            planned(json!({"$or": [{"n": 1}, {"album": "b"}]}), json!({}), &indexes),
            Plan::Union(b) if b.len() == 2
        ));
        assert!(matches!(
            planned(json!({"$or": [{"n": 1}, {"x": 2}]}), json!({}), &indexes),
            Plan::Scan
        ));
    }

    #[test]
    fn counts_are_covered_only_when_the_bounds_are_the_filter() {
        let indexes = [spec("n", &[("n", 1)])];
        let covered = |f: Value| match planned(f, json!({}), &indexes) {
            Plan::Index(s) => s.covered,
            _ => false,
        };
        assert!(covered(json!({"n": {"$gt": 5}})));
        assert!(covered(json!({"n": {"$gt": 5, "$lte": 9}})));
        assert!(covered(json!({"n": {"$in": [1, 2, "x"]}})));
        assert!(!covered(json!({"n": {"$gt": 5}, "m": 1})), "another field");
        assert!(
            !covered(json!({"n": {"$gte": null}})),
            "a missing field keys as null but meets no range"
        );
        assert!(
            covered(json!({"n": null})),
            "equality to null matches missing too"
        );
        assert!(
            !covered(json!({"n": {"$gt": 5, "$ne": 7}})),
            "an operator the index cannot express"
        );
        assert!(
            !covered(json!({"n": {"$gt": 9007199254740993u64}})),
            "a number past 2^53"
        );
        let multikey = [IndexSpec {
            multikey: true,
            ..spec("n", &[("n", 1)])
        }];
        assert!(
            !matches!(planned(json!({"n": 1}), json!({}), &multikey), Plan::Index(s) if s.covered)
        );
    }
}
