//! What must hold when writers run at once, which SQLite gives by having one writer and
//! PostgreSQL must give with several: no lost update, a unique key taken once, optimistic
//! transactions that conflict, an index built during writes that misses none, and a
//! change log whose reader misses no committed change and sees each document's changes
//! in order.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use yun_conformance::{on_every_backend, Backend};
use yun_docdb::filter::Filter;
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::index::{IndexField, IndexSpec};
use yun_docdb::Updated;
use yun_docdb::{Change, DocDb, Find, Limits, UpdateMode};
use yun_types::{EnvId, ErrorCode};

on_every_backend!(
    concurrent_increments_are_never_lost,
    a_unique_key_is_taken_once_by_concurrent_inserts,
    optimistic_transactions_writing_one_document_conflict,
    an_index_built_during_writes_misses_none,
    the_change_log_reader_misses_no_commit_and_keeps_each_documents_order,
    single_document_updates_claim_every_match_once,
    concurrent_upserts_of_one_id_all_apply,
    transactions_that_saw_a_document_absent_conflict_with_its_creation,
    concurrent_index_builds_on_one_collection_both_succeed,
    concurrent_requests_of_one_transaction_all_land,
);

const WRITERS: usize = 8;

fn filter(v: Value) -> Filter {
    Filter::parse(&v).unwrap()
}

fn inc() -> Change {
    Change::Operators(json!({"$inc": {"n": 1}}))
}

fn mode(multi: bool) -> UpdateMode {
    UpdateMode {
        multi,
        upsert: None,
        guard: None,
    }
}

async fn setup(backend: &Backend) -> (Arc<DocDb>, EnvId) {
    let db = Arc::new(DocDb::new(backend.doc_store().await, Limits::default()));
    let env = EnvId::parse("dev").unwrap();
    db.create_collection(&env, "c").await.unwrap();
    (db, env)
}

async fn get(db: &DocDb, env: &EnvId, id: &str) -> Value {
    let q = Find {
        filter: filter(json!({"_id": id})),
        order: SortKeys::parse(&json!({})).unwrap(),
        skip: 0,
        limit: Some(1),
        projection: Projection::All,
    };
    db.find(env, "c", q, &Limits::default()).await.unwrap()[0].clone()
}

async fn concurrent_increments_are_never_lost(backend: Backend) {
    let (db, env) = setup(&backend).await;
    db.insert(
        &env,
        "c",
        vec![json!({"_id": "a", "n": 0}), json!({"_id": "b", "n": 0})],
        None,
        None,
    )
    .await
    .unwrap();
    let rounds = 25;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, env) = (db.clone(), env.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    // By `_id`, and by a filter that matches both documents.
                    db.update(&env, "c", filter(json!({"_id": "a"})), inc(), mode(false))
                        .await
                        .unwrap();
                    if w % 2 == 0 {
                        db.update(
                            &env,
                            "c",
                            filter(json!({"n": {"$gte": 0}})),
                            inc(),
                            mode(true),
                        )
                        .await
                        .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let by_filter = (WRITERS / 2 * rounds) as i64;
    assert_eq!(
        get(&db, &env, "a").await["n"],
        json!((WRITERS * rounds) as i64 + by_filter)
    );
    assert_eq!(get(&db, &env, "b").await["n"], json!(by_filter));
}

async fn a_unique_key_is_taken_once_by_concurrent_inserts(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let spec = IndexSpec {
        name: "email".into(),
        fields: vec![IndexField {
            field: "email".into(),
            direction: 1,
        }],
        unique: true,
        multikey: false,
    };
    db.create_index(&env, "c", spec).await.unwrap();
    for round in 0..5 {
        let email = format!("u{round}@example.com");
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (db, env, email) = (db.clone(), env.clone(), email.clone());
                tokio::spawn(async move {
                    db.insert(
                        &env,
                        "c",
                        vec![json!({"_id": format!("{round}-{w}"), "email": email})],
                        None,
                        None,
                    )
                    .await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => won += 1,
                Err(e) => assert_eq!(e.code, ErrorCode::DuplicateKey, "{e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one insert takes the key");
        let n = db
            .count(
                &env,
                "c",
                filter(json!({"email": email})),
                &Limits::default(),
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}

async fn optimistic_transactions_writing_one_document_conflict(backend: Backend) {
    let (db, env) = setup(&backend).await;
    db.insert(&env, "c", vec![json!({"_id": "a", "n": 0})], None, None)
        .await
        .unwrap();
    for _ in 0..5 {
        // Both read the document, both write it: one commit wins, the other conflicts.
        let (t1, t2) = (
            db.start_transaction(&env).await.unwrap(),
            db.start_transaction(&env).await.unwrap(),
        );
        for t in [&t1, &t2] {
            db.txn_update(&env, t, "c", &filter(json!({"_id": "a"})), &inc(), None)
                .await
                .unwrap();
        }
        let (r1, r2) = tokio::join!(
            db.commit_transaction(&env, &t1),
            db.commit_transaction(&env, &t2)
        );
        let outcomes = [r1, r2];
        assert_eq!(
            outcomes.iter().filter(|r| r.is_ok()).count(),
            1,
            "{outcomes:?}"
        );
        let lost = outcomes.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert_eq!(lost.code, ErrorCode::TransactionConflict);
    }
    assert_eq!(get(&db, &env, "a").await["n"], json!(5));
}

async fn an_index_built_during_writes_misses_none(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let per_writer = 60;
    let writers: Vec<_> = (0..WRITERS / 2)
        .map(|w| {
            let (db, env) = (db.clone(), env.clone());
            tokio::spawn(async move {
                for i in 0..per_writer {
                    db.insert(&env, "c", vec![json!({"k": w * 1000 + i})], None, None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let spec = IndexSpec {
        name: "k".into(),
        fields: vec![IndexField {
            field: "k".into(),
            direction: 1,
        }],
        unique: false,
        multikey: false,
    };
    db.create_index(&env, "c", spec).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    // Every document is found through the index by its own key.
    let by_key = |k: usize| Find {
        filter: filter(json!({ "k": k })),
        order: SortKeys::parse(&json!({})).unwrap(),
        skip: 0,
        limit: Some(10),
        projection: Projection::All,
    };
    let report = db
        .explain(&env, "c", by_key(0), &Limits::default())
        .await
        .unwrap();
    assert_eq!(report.plan["stage"], "INDEX_SCAN", "{:?}", report.plan);
    for w in 0..WRITERS / 2 {
        for i in 0..per_writer {
            let found = db
                .find(&env, "c", by_key(w * 1000 + i), &Limits::default())
                .await
                .unwrap();
            assert_eq!(
                found.len(),
                1,
                "document k={} through the index",
                w * 1000 + i
            );
        }
    }
}

async fn the_change_log_reader_misses_no_commit_and_keeps_each_documents_order(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let store = db.store().clone();
    let per_writer = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, env) = (db.clone(), env.clone());
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let id = format!("{w}-{i}");
                    db.insert(&env, "c", vec![json!({"_id": id, "n": 0})], None, None)
                        .await
                        .unwrap();
                    db.update(&env, "c", filter(json!({"_id": id})), inc(), mode(false))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // A reader paging from its cursor while the writers run, as the trigger readers do.
    let mut seen: Vec<(u64, String, String)> = Vec::new();
    let mut cursor = 0;
    let expected = WRITERS * per_writer * 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.len() < expected && std::time::Instant::now() < deadline {
        let page = store.change_log().changes_after(cursor, 50).await.unwrap();
        if page.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for e in page {
            assert!(e.seq > cursor, "sequences grow");
            cursor = e.seq;
            seen.push((e.seq, e.key, e.op));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Nothing more arrives once the writers are done, and nothing came twice.
    assert!(store
        .change_log()
        .changes_after(cursor, 50)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(seen.len(), expected, "every committed change, once");
    let mut ops: HashMap<String, Vec<String>> = HashMap::new();
    for (_, key, op) in seen {
        ops.entry(key).or_default().push(op);
    }
    assert_eq!(ops.len(), WRITERS * per_writer);
    for (key, ops) in ops {
        assert_eq!(ops, ["create", "update"], "{key}");
    }
}

/// A job queue's claim: `update({status: "pending"}, {$set: …})` on one document. A
/// worker whose first match is taken by another meanwhile must claim the next one, not
/// report nothing while jobs are pending.
async fn single_document_updates_claim_every_match_once(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let per_worker = 15;
    let jobs: Vec<Value> = (0..WRITERS * per_worker)
        .map(|i| json!({"_id": format!("job{i:03}"), "status": "pending"}))
        .collect();
    db.insert(&env, "c", jobs, None, None).await.unwrap();
    let workers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, env) = (db.clone(), env.clone());
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    let (outcome, _) = db
                        .update(
                            &env,
                            "c",
                            filter(json!({"status": "pending"})),
                            Change::Operators(json!({"$set": {"status": "taken", "by": w}})),
                            mode(false),
                        )
                        .await
                        .unwrap();
                    assert_eq!(outcome.matched, 1, "jobs are pending: one is claimed");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let pending = db
        .count(
            &env,
            "c",
            filter(json!({"status": "pending"})),
            &Limits::default(),
        )
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

/// `doc(id).set(…)`-style upserts of one new `_id` from several writers: one inserts, the
/// others update what it inserted; none fails.
async fn concurrent_upserts_of_one_id_all_apply(backend: Backend) {
    let (db, env) = setup(&backend).await;
    for round in 0..5 {
        let id = format!("counter{round}");
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (db, env, id) = (db.clone(), env.clone(), id.clone());
                tokio::spawn(async move {
                    let query = json!({"_id": id});
                    let upsert = Some(yun_docdb::filter::upsert_seed(&query));
                    db.update(
                        &env,
                        "c",
                        filter(query),
                        inc(),
                        UpdateMode {
                            multi: false,
                            upsert,
                            guard: None,
                        },
                    )
                    .await
                    .map(|(outcome, _): (Updated, _)| outcome.upserted_id.is_some())
                })
            })
            .collect();
        let mut inserted = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                inserted += 1;
            }
        }
        assert_eq!(inserted, 1, "one upsert inserts");
        assert_eq!(get(&db, &env, &id).await["n"], json!(WRITERS as i64));
    }
}

/// Write skew over absent documents: one transaction reads `x` (absent) and creates `y`,
/// the other reads `y` (absent) and creates `x`. Serially, the second would have seen the
/// first's document: both cannot commit.
async fn transactions_that_saw_a_document_absent_conflict_with_its_creation(backend: Backend) {
    let (db, env) = setup(&backend).await;
    for round in 0..5 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let (t1, t2) = (
            db.start_transaction(&env).await.unwrap(),
            db.start_transaction(&env).await.unwrap(),
        );
        for (t, read, write) in [(&t1, &x, &y), (&t2, &y, &x)] {
            let seen = db
                .txn_find(
                    &env,
                    t,
                    "c",
                    &filter(json!({"_id": read})),
                    &Projection::All,
                )
                .await
                .unwrap();
            assert!(seen.is_empty());
            db.txn_insert(&env, t, "c", vec![json!({"_id": write})])
                .await
                .unwrap();
        }
        let (r1, r2) = tokio::join!(
            db.commit_transaction(&env, &t1),
            db.commit_transaction(&env, &t2)
        );
        let committed = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(committed, 1, "{r1:?} {r2:?}");
        let lost = [r1, r2].into_iter().find_map(Result::err).unwrap();
        assert_eq!(lost.code, ErrorCode::TransactionConflict, "{lost}");
    }
}

async fn concurrent_index_builds_on_one_collection_both_succeed(backend: Backend) {
    let (db, env) = setup(&backend).await;
    db.insert(
        &env,
        "c",
        (0..50).map(|i| json!({"a": i, "b": -i})).collect(),
        None,
        None,
    )
    .await
    .unwrap();
    for round in 0..3 {
        let build = |field: &'static str| {
            let (db, env) = (db.clone(), env.clone());
            async move {
                let spec = IndexSpec {
                    name: format!("{field}{round}"),
                    fields: vec![IndexField {
                        field: field.into(),
                        direction: 1,
                    }],
                    unique: false,
                    multikey: false,
                };
                db.create_index(&env, "c", spec).await
            }
        };
        let (a, b) = tokio::join!(build("a"), build("b"));
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(db.list_indexes(&env, "c").await.unwrap().len(), 6);
}

async fn concurrent_requests_of_one_transaction_all_land(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let t = db.start_transaction(&env).await.unwrap();
    // A client may send a transaction's requests at once: each saves the state, none
    // overwrites another's writes.
    let inserts = (0..WRITERS).map(|i| {
        let (db, env, t) = (db.clone(), env.clone(), t.clone());
        tokio::spawn(async move {
            db.txn_insert(&env, &t, "c", vec![json!({"_id": format!("d{i}")})])
                .await
        })
    });
    for insert in inserts {
        insert.await.unwrap().unwrap();
    }
    db.commit_transaction(&env, &t).await.unwrap();
    let count = db
        .count(&env, "c", Filter::all(), &Limits::default())
        .await
        .unwrap();
    assert_eq!(count, WRITERS as u64);
}
