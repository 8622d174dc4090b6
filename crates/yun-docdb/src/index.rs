//! Secondary indexes. An index entry is (key, `_id`); keys are byte strings whose order
//! is MongoDB's value order (type bracket first), so equality and ranges on the leading
//! field are range scans. Arrays are multikey: one entry per element, plus one for the
//! array as a whole. Missing fields index as null. Indexes only narrow candidates: the
//! evaluator still decides every match, so a plan can be conservative but never wrong.

use serde_json::Value;
use yun_types::{ErrorCode, YunError};

use crate::filter::{lookup, parse_path};
use crate::order::bracket;
use crate::value::as_date;

/// Combinations one document may add to one compound index (multikey × multikey).
const MAX_ENTRIES_PER_DOCUMENT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexField {
    pub field: String,
    /// 1 ascending, -1 descending.
    pub direction: i8,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexSpec {
    pub name: String,
    pub fields: Vec<IndexField>,
    #[serde(default)]
    pub unique: bool,
    /// Set (for good) once a document reaches an array at an indexed field. Until then,
    /// bounds on one field may be intersected.
    #[serde(default)]
    pub multikey: bool,
}

impl IndexSpec {
    pub fn check(&self) -> Result<(), YunError> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok || self.name == "_id_" {
            return Err(YunError::invalid_param(format!(
                "invalid index name {:?}",
                self.name
            )));
        }
        if self.fields.is_empty() || self.fields.len() > 8 {
            return Err(YunError::invalid_param("an index has 1 to 8 fields"));
        }
        for f in &self.fields {
            parse_path(&f.field)?;
            if f.direction != 1 && f.direction != -1 {
                return Err(YunError::invalid_param("index directions are 1 or -1"));
            }
        }
        Ok(())
    }
}

/// Appends the order-preserving encoding of one value.
fn encode(v: Option<&Value>, out: &mut Vec<u8>) {
    out.push(bracket(v));
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            // -0.0 equals 0 and must encode the same.
            let f = n.as_f64().filter(|f| *f != 0.0).unwrap_or(0.0);
            let bits = f.to_bits();
            let ordered = if f.is_sign_negative() {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Some(Value::Bool(b)) => out.push(u8::from(*b)),
        Some(v @ Value::Object(m)) => match as_date(v) {
            Some(ms) => out.extend_from_slice(&((ms as u64) ^ (1 << 63)).to_be_bytes()),
            None => match m.get("$oid").and_then(Value::as_str) {
                Some(oid) => encode_text(oid, out),
                None => encode_text(&v.to_string(), out),
            },
        },
        Some(Value::String(s)) => encode_text(s, out),
        Some(other) => encode_text(&other.to_string(), out),
    }
}

/// Text with `0x00` escaped, ended by `0x00 0x00`: no key is a prefix of a greater one.
fn encode_text(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// One component as stored: descending fields invert their bytes.
pub fn component(v: Option<&Value>, direction: i8) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(v, &mut bytes);
    if direction < 0 {
        bytes.iter_mut().for_each(|b| *b = !*b);
    }
    bytes
}

/// Whether `doc` reaches an array at one of the index's fields.
pub fn has_array(spec: &IndexSpec, doc: &Value) -> Result<bool, YunError> {
    for f in &spec.fields {
        let mut found = Vec::new();
        lookup(doc, &parse_path(&f.field)?, &mut found);
        if found.iter().any(|v| matches!(v, Some(Value::Array(_)))) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every key `doc` has in `spec`.
pub fn keys(spec: &IndexSpec, doc: &Value) -> Result<Vec<Vec<u8>>, YunError> {
    let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
    for f in &spec.fields {
        let mut found = Vec::new();
        lookup(doc, &parse_path(&f.field)?, &mut found);
        let mut values: Vec<Option<&Value>> = Vec::new();
        for v in found {
            match v {
                Some(Value::Array(items)) => {
                    values.extend(items.iter().map(Some));
                    values.push(v);
                }
                other => values.push(other),
            }
        }
        let parts: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| component(v, f.direction))
            .collect();
        if keys.len() * parts.len() > MAX_ENTRIES_PER_DOCUMENT {
            return Err(YunError::invalid_param(format!(
                "the document has too many index keys for index {}",
                spec.name
            )));
        }
        keys = keys
            .iter()
            .flat_map(|k| {
                parts
                    .iter()
                    .map(move |p| [k.as_slice(), p.as_slice()].concat())
            })
            .collect();
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// A key range on an index: `[low, high)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub low: Vec<u8>,
    pub high: Vec<u8>,
}

pub fn duplicate(spec: &IndexSpec) -> YunError {
    YunError::new(
        ErrorCode::DuplicateKey,
        format!("E11000 duplicate key error: index {} is unique", spec.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;
    use serde_json::json;

    /// The index plan's spec and ranges, when the planner picks one.
    pub(super) fn plan(filter: &Filter, specs: &[IndexSpec]) -> Option<(IndexSpec, Vec<KeyRange>)> {
        match crate::plan::plan(filter, &crate::find::SortKeys::default(), specs) {
            crate::plan::Plan::Index(s) => Some((s.spec, s.ranges)),
            _ => None,
        }
    }

    fn spec(field: &str, direction: i8) -> IndexSpec {
        IndexSpec {
            name: "i".into(),
            fields: vec![IndexField {
                field: field.into(),
                direction,
            }],
            unique: false,
            multikey: false,
        }
    }

    #[test]
    fn encoding_follows_the_value_order() {
        let ordered = [
            json!(null),
            json!(-5.5),
            json!(-1),
            json!(0),
            json!(2),
            json!(1e10),
            json!(""),
            json!("a"),
            json!("a\u{0}b"),
            json!("ab"),
            json!({"x": 1}),
            json!(false),
            json!(true),
            json!({"$date": -1}),
            json!({"$date": 5}),
        ];
        let enc: Vec<Vec<u8>> = ordered.iter().map(|v| component(Some(v), 1)).collect();
        for w in enc.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        let desc: Vec<Vec<u8>> = ordered.iter().map(|v| component(Some(v), -1)).collect();
        for w in desc.windows(2) {
            assert!(w[0] > w[1]);
        }
    }

    #[test]
    fn multikey_and_missing() {
        let k = keys(&spec("tags", 1), &json!({"tags": ["a", "b"]})).unwrap();
        assert_eq!(k.len(), 3, "each element and the array");
        assert_eq!(
            keys(&spec("x", 1), &json!({})).unwrap(),
            vec![component(None, 1)]
        );
        let compound = IndexSpec {
            name: "c".into(),
            fields: vec![
                IndexField {
                    field: "a".into(),
                    direction: 1,
                },
                IndexField {
                    field: "b".into(),
                    direction: -1,
                },
            ],
            unique: false,
            multikey: false,
        };
        assert_eq!(
            keys(&compound, &json!({"a": [1, 2], "b": 3}))
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn plans_cover_every_match() {
        let docs: Vec<Value> = vec![
            json!({"n": 1}),
            json!({"n": 5}),
            json!({"n": 5.5}),
            json!({"n": "5"}),
            json!({"n": [3, 9]}),
            json!({}),
            json!({"n": null}),
        ];
        let specs = vec![IndexSpec {
            multikey: true,
            ..spec("n", 1)
        }];
        let scalar_docs: Vec<Value> = docs
            .iter()
            .filter(|d| !d["n"].is_array())
            .cloned()
            .collect();
        let scalar_specs = vec![spec("n", 1)];
        for (docs, specs) in [(&docs, &specs), (&scalar_docs, &scalar_specs)] {
            for q in [
                json!({"n": 5}),
                json!({"n": {"$gt": 2}}),
                json!({"n": {"$gte": 5, "$lt": 6}}),
                json!({"n": {"$in": [1, "5"]}}),
                json!({"n": null}),
                json!({"n": {"$lte": 3}}),
            ] {
                let filter = Filter::parse(&q).unwrap();
                let (index, ranges) = plan(&filter, specs).expect("indexable");
                let index = &index;
                for d in docs.iter() {
                    if filter.matches(d) {
                        let covered = keys(index, d)
                            .unwrap()
                            .iter()
                            .any(|k| ranges.iter().any(|r| *k >= r.low && *k < r.high));
                        assert!(covered, "{q} matches {d} but its keys are outside the plan");
                    }
                }
            }
        }
        let (_, narrow) = plan(
            &Filter::parse(&json!({"n": {"$gte": 5, "$lt": 6}})).unwrap(),
            &scalar_specs,
        )
        .unwrap();
        let outside = keys(&scalar_specs[0], &json!({"n": 7})).unwrap();
        assert!(
            !outside
                .iter()
                .any(|k| narrow.iter().any(|r| *k >= r.low && *k < r.high)),
            "bounds intersect without arrays"
        );
        assert!(plan(&Filter::parse(&json!({"n": {"$ne": 1}})).unwrap(), &specs).is_none());
        assert!(plan(&Filter::parse(&json!({"m": 1})).unwrap(), &specs).is_none());
    }
}

/// The index path against the reference evaluator on random documents and filters: a
/// plan may read more than the matches, never less.
#[cfg(test)]
mod properties {
    use super::tests::plan;
    use super::*;
    use crate::filter::Filter;
    use proptest::prelude::*;
    use serde_json::json;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            (-5.0f64..5.0).prop_map(|f| json!((f * 2.0).round() / 2.0)),
            "[a-c]{0,2}".prop_map(Value::String),
            (-2i64..3).prop_map(crate::value::date),
        ]
    }

    fn field_value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            3 => scalar().prop_map(Some),
            1 => prop::collection::vec(scalar(), 0..3).prop_map(|a| Some(Value::Array(a))),
            1 => Just(None),
        ]
    }

    fn condition() -> impl Strategy<Value = Value> {
        let op = prop_oneof![
            Just("$eq"),
            Just("$gt"),
            Just("$gte"),
            Just("$lt"),
            Just("$lte"),
            Just("$ne")
        ];
        prop_oneof![
            scalar(),
            (op.clone(), scalar()).prop_map(|(o, v)| json!({ o: v })),
            (op.clone(), scalar(), op, scalar()).prop_map(|(a, x, b, y)| json!({ a: x, b: y })),
            prop::collection::vec(scalar(), 1..3).prop_map(|l| json!({ "$in": l })),
        ]
    }

    fn covered(spec: &IndexSpec, ranges: &[KeyRange], doc: &Value) -> bool {
        keys(spec, doc)
            .unwrap()
            .iter()
            .any(|k| ranges.iter().any(|r| *k >= r.low && *k < r.high))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn plans_cover_every_document_the_evaluator_matches(values in prop::collection::vec(field_value(), 1..12), cond in condition(), direction in prop_oneof![Just(1i8), Just(-1i8)]) {
            let docs: Vec<Value> = values.iter().map(|v| match v { Some(v) => json!({ "n": v }), None => json!({}) }).collect();
            let filter = Filter::parse(&json!({ "n": cond })).unwrap();
            let multikey = docs.iter().any(|d| d["n"].is_array());
            let spec = IndexSpec { name: "i".into(), fields: vec![IndexField { field: "n".into(), direction }], unique: false, multikey };
            if let Some((index, ranges)) = plan(&filter, std::slice::from_ref(&spec)) {
                for d in docs.iter().filter(|d| filter.matches(d)) {
                    prop_assert!(covered(&index, &ranges, d), "{} matches {} but the plan skips it", json!({ "n": cond }), d);
                }
            }
        }
    }
}
