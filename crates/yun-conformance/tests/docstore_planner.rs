//! The planner and executor against the reference evaluator: random documents (arrays,
//! nulls, missing fields, nested paths, mixed types), random indexes and random queries
//! (filter, order, skip, limit) must give identical results in identical order, and
//! identical counts. The reference is the evaluator over every document in `_id` order:
//! matches sorted stably, then skip and limit.

use proptest::prelude::*;
use serde_json::{json, Value};
use yun_conformance::Backend;
use yun_docdb::filter::Filter;
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::index::{IndexField, IndexSpec};
use yun_docdb::{DocDb, Find, Limits};
use yun_types::EnvId;

const FIELDS: [&str; 4] = ["n", "s", "tags", "a.b"];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-4i64..4).prop_map(Value::from),
        (-4.0f64..4.0).prop_map(|f| json!((f * 2.0).round() / 2.0)),
        "[a-c]{0,2}".prop_map(Value::String),
        (-2i64..3).prop_map(|ms| json!({ "$date": ms })),
    ]
}

fn value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        5 => scalar().prop_map(Some),
        2 => prop::collection::vec(scalar(), 0..3).prop_map(|a| Some(Value::Array(a))),
        1 => scalar().prop_map(|v| Some(json!({ "x": v }))),
        2 => Just(None),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    (value(), value(), value(), value(), any::<bool>()).prop_map(|(n, s, tags, b, b_in_array)| {
        let mut doc = serde_json::Map::new();
        for (k, v) in [("n", n), ("s", s), ("tags", tags)] {
            if let Some(v) = v {
                doc.insert(k.into(), v);
            }
        }
        if let Some(b) = b {
            // `a.b` sometimes goes through an array of documents.
            let a = if b_in_array {
                json!([{ "b": b }, { "c": 1 }])
            } else {
                json!({ "b": b })
            };
            doc.insert("a".into(), a);
        }
        Value::Object(doc)
    })
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
        3 => scalar(),
        3 => (op.clone(), scalar()).prop_map(|(o, v)| json!({ o: v })),
        2 => (op, scalar(), prop_oneof![Just("$lt"), Just("$lte")], scalar())
            .prop_map(|(a, x, b, y)| json!({ a: x, b: y })),
        1 => prop::collection::vec(scalar(), 1..4).prop_map(|l| json!({ "$in": l })),
        1 => any::<bool>().prop_map(|e| json!({ "$exists": e })),
    ]
}

fn field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(FIELDS.to_vec())
}

fn clause() -> impl Strategy<Value = Value> {
    (field(), condition()).prop_map(|(f, c)| json!({ f: c }))
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::vec(clause(), 0..3).prop_map(|cs| {
            let mut m = serde_json::Map::new();
            for c in cs {
                m.extend(c.as_object().cloned().unwrap_or_default());
            }
            Value::Object(m)
        }),
        1 => prop::collection::vec(clause(), 1..3).prop_map(|cs| json!({ "$or": cs })),
    ]
}

fn index() -> impl Strategy<Value = Vec<(&'static str, i8)>> {
    prop::collection::vec((field(), prop_oneof![Just(1i8), Just(-1i8)]), 1..3)
}

fn order() -> impl Strategy<Value = Vec<(&'static str, i8)>> {
    prop::collection::vec((field(), prop_oneof![Just(1i8), Just(-1i8)]), 0..3)
}

#[derive(Debug)]
struct Case {
    docs: Vec<Value>,
    indexes: Vec<Vec<(&'static str, i8)>>,
    indexes_first: bool,
    filter: Value,
    order: Vec<(&'static str, i8)>,
    skip: usize,
    limit: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(document(), 0..30),
        prop::collection::vec(index(), 0..3),
        any::<bool>(),
        filter(),
        order(),
        0usize..6,
        1usize..12,
        any::<bool>(),
    )
        .prop_map(
            |(docs, mut indexes, indexes_first, filter, mut order, skip, limit, focus)| {
                // Half the cases order by (and index) the field they filter on: the plans
                // that read an index in order are the ones with the most to get wrong.
                let filtered = filter
                    .as_object()
                    .and_then(|m| m.keys().find(|k| !k.starts_with('$')).cloned());
                if let (true, Some(f)) = (focus, filtered) {
                    let f: &'static str = FIELDS.iter().find(|x| **x == f).copied().unwrap_or("n");
                    let dir = if order.len() % 2 == 0 { 1 } else { -1 };
                    order.insert(0, (f, dir));
                    indexes.push(vec![(f, if skip % 2 == 0 { 1 } else { -1 })]);
                }
                Case {
                    docs,
                    indexes,
                    indexes_first,
                    filter,
                    order,
                    skip,
                    limit,
                }
            },
        )
}

fn order_value(order: &[(&str, i8)]) -> Value {
    let mut m = serde_json::Map::new();
    for (f, d) in order {
        m.entry(f.to_string()).or_insert(json!(d));
    }
    Value::Object(m)
}

#[test]
fn plans_and_the_evaluator_agree_on_sqlite() {
    plans_and_the_evaluator_agree(Backend::sqlite());
}

#[test]
fn plans_and_the_evaluator_agree_on_postgres() {
    plans_and_the_evaluator_agree(Backend::postgres());
}

fn plans_and_the_evaluator_agree(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = DocDb::new(rt.block_on(backend.doc_store()), Limits::default());
    let env = EnvId::parse("dev").unwrap();
    let round = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(c in case())| {
        let collection = format!("c{}", round.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let docs: Vec<Value> = c
            .docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut d = d.clone();
                d["_id"] = json!(format!("d{i:02}"));
                d
            })
            .collect();
        let order = SortKeys::parse(&order_value(&c.order)).unwrap();
        let filter = Filter::parse(&c.filter).unwrap();
        let (found, counted) = rt.block_on(async {
            db.create_collection(&env, &collection).await.unwrap();
            let create_indexes = || async {
                for (i, fields) in c.indexes.iter().enumerate() {
                    let mut seen = Vec::new();
                    let fields: Vec<IndexField> = fields
                        .iter()
                        .filter(|(f, _)| {
                            let new = !seen.contains(f);
                            seen.push(*f);
                            new
                        })
                        .map(|(f, d)| IndexField { field: f.to_string(), direction: *d })
                        .collect();
                    let spec = IndexSpec { name: format!("i{i}"), fields, unique: false, multikey: false };
                    db.create_index(&env, &collection, spec).await.unwrap();
                }
            };
            if c.indexes_first {
                create_indexes().await;
            }
            if !docs.is_empty() {
                db.insert(&env, &collection, docs.clone(), None, None).await.unwrap();
            }
            if !c.indexes_first {
                create_indexes().await;
            }
            let q = Find {
                filter: filter.clone(),
                order: order.clone(),
                skip: c.skip,
                limit: Some(c.limit),
                projection: Projection::All,
            };
            let found = db.find(&env, &collection, q, &Limits::default()).await;
            let counted = db.count(&env, &collection, filter.clone(), &Limits::default()).await;
            (found, counted)
        });
        let mut expected: Vec<Value> = docs.iter().filter(|d| filter.matches(d)).cloned().collect();
        let matches = expected.len() as u64;
        expected.sort_by(|a, b| order.compare(a, b));
        let expected: Vec<Value> = expected.into_iter().skip(c.skip).take(c.limit).collect();
        let found = found.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            &found, &expected,
            "filter {} order {} skip {} limit {} indexes {:?} (first: {})",
            c.filter, order_value(&c.order), c.skip, c.limit, c.indexes, c.indexes_first
        );
        prop_assert_eq!(counted.map_err(|e| TestCaseError::fail(e.to_string()))?, matches, "count of {}", c.filter);
    });
}
