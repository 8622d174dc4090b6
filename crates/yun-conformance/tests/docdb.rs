//! The document database's operations (`DocDb`) over the store seam on every backend:
//! env isolation, indexes and uniqueness, sort bounds and explain, limits, transactions.

use serde_json::{json, Value};
use yun_conformance::{on_every_backend, Backend};
use yun_docdb::filter::{upsert_seed, Filter};
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::index::IndexSpec;
use yun_docdb::{Change, DocDb, Find, Limits, UpdateMode};
use yun_types::{EnvId, ErrorCode};

on_every_backend!(
    crud_is_atomic_and_stays_in_its_env,
    indexes_narrow_candidates_stay_in_step_and_enforce_uniqueness,
    a_sort_over_its_memory_bound_asks_for_an_index_and_explain_says_how_a_query_ran,
    limits_are_errors_not_silent_cuts,
    transactions_are_isolated_per_env_and_detect_concurrent_inserts_and_deletes,
);

async fn setup(backend: &Backend) -> (DocDb, EnvId) {
    (
        DocDb::new(backend.doc_store().await, Limits::default()),
        EnvId::parse("dev").unwrap(),
    )
}

fn all(filter: Value) -> Find {
    Find {
        filter: Filter::parse(&filter).unwrap(),
        order: SortKeys::default(),
        skip: 0,
        limit: None,
        projection: Projection::All,
    }
}

async fn crud_is_atomic_and_stays_in_its_env(backend: Backend) {
    let (db, env) = setup(&backend).await;
    let other = EnvId::parse("other").unwrap();
    assert_eq!(
        db.insert(&env, "todos", vec![json!({"a": 1})], None, None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::CollectionNotFound
    );
    db.create_collection(&env, "todos").await.unwrap();
    assert_eq!(
        db.create_collection(&env, "todos").await.unwrap_err().code,
        ErrorCode::CollectionExists
    );
    let ids = db
        .insert(
            &env,
            "todos",
            vec![json!({"n": 1}), json!({"_id": "mine", "n": 2})],
            Some("oUSER"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ids[1], "mine");
    assert_eq!(ids[0].len(), 32);
    // A duplicate _id fails the whole batch: the first document is not written either.
    let dup = db
        .insert(
            &env,
            "todos",
            vec![json!({"_id": "fresh"}), json!({"_id": "mine"})],
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code, ErrorCode::DuplicateKey);
    assert_eq!(
        db.count(&env, "todos", Filter::all(), &Limits::default())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.count(&other, "todos", Filter::all(), &Limits::default())
            .await
            .unwrap_err()
            .code,
        ErrorCode::CollectionNotFound
    );

    let docs = db
        .find(
            &env,
            "todos",
            all(json!({"_id": "mine"})),
            &Limits::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        docs,
        vec![json!({"_id": "mine", "n": 2, "_openid": "oUSER"})]
    );

    let (u, _) = db
        .update(
            &env,
            "todos",
            Filter::all(),
            Change::Operators(json!({"$inc": {"n": 10}})),
            UpdateMode {
                multi: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((u.matched, u.updated), (2, 2));
    // An update that fails on one document leaves every document as it was.
    db.insert(
        &env,
        "todos",
        vec![json!({"_id": "text", "n": "x"})],
        None,
        None,
    )
    .await
    .unwrap();
    let failed = db
        .update(
            &env,
            "todos",
            Filter::all(),
            Change::Operators(json!({"$inc": {"n": 1}})),
            UpdateMode {
                multi: true,
                ..Default::default()
            },
        )
        .await;
    assert!(failed.is_err());
    let total: i64 = db
        .find(
            &env,
            "todos",
            all(json!({"n": {"$gt": 0}})),
            &Limits::default(),
        )
        .await
        .unwrap()
        .iter()
        .map(|d| d["n"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 11 + 12);

    let query = json!({"_id": "new", "owner": "b"});
    let (u, docs) = db
        .update(
            &env,
            "todos",
            Filter::parse(&query).unwrap(),
            Change::Replace(json!({"v": 1})),
            UpdateMode {
                upsert: Some(upsert_seed(&query)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.upserted_id.as_deref(), Some("new"));
    assert_eq!(docs[0], json!({"_id": "new", "v": 1}));
    assert_eq!(
        db.remove(&env, "todos", Filter::all(), false, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.remove(&env, "todos", Filter::all(), true, None)
            .await
            .unwrap(),
        3
    );
}

async fn indexes_narrow_candidates_stay_in_step_and_enforce_uniqueness(backend: Backend) {
    let (db, env) = setup(&backend).await;
    db.create_collection(&env, "p").await.unwrap();
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"n": i % 50, "tag": format!("t{}", i % 7), "arr": [i, i + 1000]}))
        .collect();
    db.insert(&env, "p", docs, None, None).await.unwrap();
    let queries = [
        json!({"n": 7}),
        json!({"n": {"$gte": 10, "$lt": 13}}),
        json!({"arr": 1005}),
        json!({"n": {"$in": [1, 2]}, "tag": "t1"}),
        json!({"n": {"$gt": "a"}}),
    ];
    let mut before = Vec::new();
    for q in &queries {
        before.push(
            db.count(&env, "p", Filter::parse(q).unwrap(), &Limits::default())
                .await
                .unwrap(),
        );
    }
    let field = |f: &str| yun_docdb::index::IndexField {
        field: f.into(),
        direction: 1,
    };
    db.create_index(
        &env,
        "p",
        IndexSpec {
            name: "by_n".into(),
            fields: vec![field("n")],
            unique: false,
            multikey: false,
        },
    )
    .await
    .unwrap();
    db.create_index(
        &env,
        "p",
        IndexSpec {
            name: "by_arr".into(),
            fields: vec![field("arr")],
            unique: false,
            multikey: false,
        },
    )
    .await
    .unwrap();
    for (q, expected) in queries.iter().zip(&before) {
        assert_eq!(
            db.count(&env, "p", Filter::parse(q).unwrap(), &Limits::default())
                .await
                .unwrap(),
            *expected,
            "{q} with an index"
        );
    }
    // Writes keep entries in step: updated and removed documents move and leave.
    db.update(
        &env,
        "p",
        Filter::parse(&json!({"n": 7})).unwrap(),
        Change::Operators(json!({"$set": {"n": 700}})),
        UpdateMode {
            multi: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        db.count(
            &env,
            "p",
            Filter::parse(&json!({"n": 7})).unwrap(),
            &Limits::default()
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        db.count(
            &env,
            "p",
            Filter::parse(&json!({"n": 700})).unwrap(),
            &Limits::default()
        )
        .await
        .unwrap(),
        4
    );
    db.remove(
        &env,
        "p",
        Filter::parse(&json!({"n": 700})).unwrap(),
        true,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        db.count(
            &env,
            "p",
            Filter::parse(&json!({"n": {"$gte": 700}})).unwrap(),
            &Limits::default()
        )
        .await
        .unwrap(),
        0
    );

    let unique = IndexSpec {
        name: "u".into(),
        fields: vec![field("n")],
        unique: true,
        multikey: false,
    };
    assert_eq!(
        db.create_index(&env, "p", unique.clone())
            .await
            .unwrap_err()
            .code,
        ErrorCode::DuplicateKey,
        "existing duplicates refuse the index"
    );
    assert_eq!(
        db.list_indexes(&env, "p").await.unwrap().len(),
        2,
        "the refused index left nothing"
    );
    db.create_collection(&env, "users").await.unwrap();
    db.create_index(
        &env,
        "users",
        IndexSpec {
            name: "email".into(),
            fields: vec![field("email")],
            unique: true,
            multikey: false,
        },
    )
    .await
    .unwrap();
    db.insert(&env, "users", vec![json!({"email": "a@x"})], None, None)
        .await
        .unwrap();
    let dup = db
        .insert(
            &env,
            "users",
            vec![json!({"email": "b@x"}), json!({"email": "a@x"})],
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code, ErrorCode::DuplicateKey);
    assert_eq!(
        db.count(&env, "users", Filter::all(), &Limits::default())
            .await
            .unwrap(),
        1,
        "the whole batch was refused"
    );
    db.drop_index(&env, "users", "email").await.unwrap();
    db.insert(&env, "users", vec![json!({"email": "a@x"})], None, None)
        .await
        .unwrap();
}

async fn a_sort_over_its_memory_bound_asks_for_an_index_and_explain_says_how_a_query_ran(
    backend: Backend,
) {
    let (db, env) = setup(&backend).await;
    db.create_collection(&env, "p").await.unwrap();
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({ "n": i, "pad": "x".repeat(200) }))
        .collect();
    db.insert(&env, "p", docs, None, None).await.unwrap();
    let tight = Limits {
        sort_memory: 16 << 10,
        ..Limits::default()
    };
    let by_n = |skip| Find {
        order: SortKeys::parse(&json!({"n": -1})).unwrap(),
        skip,
        limit: Some(10),
        ..all(json!({}))
    };
    // The top 10 fit; skipping 200 first does not, without an index.
    assert_eq!(
        db.find(&env, "p", by_n(0), &tight).await.unwrap()[0]["n"],
        299
    );
    let err = db.find(&env, "p", by_n(200), &tight).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::DatabaseQueryLimit, "{err}");
    assert!(err.message.contains("create an index"), "{err}");
    let spec = IndexSpec {
        name: "n".into(),
        fields: vec![yun_docdb::index::IndexField {
            field: "n".into(),
            direction: 1,
        }],
        unique: false,
        multikey: false,
    };
    db.create_index(&env, "p", spec).await.unwrap();
    let found = db.find(&env, "p", by_n(200), &tight).await.unwrap();
    assert_eq!(found[0]["n"], 99, "read backward through the index");
    let report = db.explain(&env, "p", by_n(200), &tight).await.unwrap();
    assert_eq!(report.plan["index"], "n");
    assert_eq!(report.plan["direction"], "backward");
    assert_eq!(report.stats.returned, 10);
    assert_eq!(
        report.stats.docs_examined, 10,
        "the skip is counted in the index, not fetched"
    );
    assert_eq!(report.stats.keys_examined, 211);
    assert_eq!(report.filter, json!({}));
    assert!(db.slow_queries(&env).is_empty(), "nothing took 100 ms");
}

async fn limits_are_errors_not_silent_cuts(backend: Backend) {
    let (db, env) = setup(&backend).await;
    db.create_collection(&env, "c").await.unwrap();
    let docs: Vec<Value> = (0..150).map(|i| json!({"i": i})).collect();
    db.insert(&env, "c", docs, None, None).await.unwrap();
    assert_eq!(
        db.find(&env, "c", all(json!({})), &Limits::default())
            .await
            .unwrap()
            .len(),
        100,
        "default limit"
    );
    let too_many = Find {
        limit: Some(1001),
        ..all(json!({}))
    };
    assert_eq!(
        db.find(&env, "c", too_many, &Limits::default())
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParam
    );
    let page = Find {
        order: SortKeys::parse(&json!({"i": -1})).unwrap(),
        skip: 10,
        limit: Some(3),
        projection: Projection::parse(&json!({"i": 1, "_id": 0})).unwrap(),
        ..all(json!({}))
    };
    assert_eq!(
        db.find(&env, "c", page, &Limits::default()).await.unwrap(),
        vec![json!({"i": 139}), json!({"i": 138}), json!({"i": 137})]
    );
    let big = json!({"blob": "x".repeat(17 << 20)});
    assert_eq!(
        db.insert(&env, "c", vec![big], None, None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParam
    );
    let typo = db
        .update(
            &env,
            "c",
            Filter::parse(&json!({"none": 1})).unwrap(),
            Change::Operators(json!({"$sett": {"a": 1}})),
            UpdateMode {
                multi: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(typo.unwrap_err().code, ErrorCode::DatabaseInvalidOperator);
}

fn by_id(id: &str) -> Filter {
    Filter::parse(&json!({ "_id": id })).unwrap()
}

async fn transactions_are_isolated_per_env_and_detect_concurrent_inserts_and_deletes(
    backend: Backend,
) {
    let db = DocDb::new(backend.doc_store().await, Limits::default());
    let (a, b) = (EnvId::parse("a").unwrap(), EnvId::parse("b").unwrap());
    db.create_collection(&a, "c").await.unwrap();
    db.insert(&a, "c", vec![json!({"_id": "keep", "n": 1})], None, None)
        .await
        .unwrap();

    let t = db.start_transaction(&a).await.unwrap();
    assert!(
        db.txn_find(&b, &t, "c", &by_id("keep"), &Projection::All)
            .await
            .is_err(),
        "another env does not see the transaction"
    );
    assert!(db.commit_transaction(&b, &t).await.is_err());

    // A concurrent insert of the _id this transaction inserts is a conflict.
    db.txn_insert(&a, &t, "c", vec![json!({"_id": "new"})])
        .await
        .unwrap();
    db.insert(
        &a,
        "c",
        vec![json!({"_id": "new", "by": "other"})],
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        db.commit_transaction(&a, &t).await.unwrap_err().code,
        ErrorCode::TransactionConflict
    );
    assert!(
        db.commit_transaction(&a, &t).await.is_err(),
        "a failed commit ends the transaction"
    );

    // A delete commits; the document is gone afterwards, and nothing else changed.
    let t = db.start_transaction(&a).await.unwrap();
    assert_eq!(db.txn_remove(&a, &t, "c", &by_id("keep")).await.unwrap(), 1);
    assert_eq!(
        db.txn_find(&a, &t, "c", &by_id("keep"), &Projection::All)
            .await
            .unwrap(),
        Vec::<Value>::new()
    );
    db.commit_transaction(&a, &t).await.unwrap();
    assert_eq!(
        db.count(&a, "c", Filter::all(), &Limits::default())
            .await
            .unwrap(),
        1
    );
}
