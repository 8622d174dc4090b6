//! What the nodes of a cluster share through PostgreSQL's document store: each request of
//! a transaction may reach another node, so a transaction begun on one continues and
//! commits on another, and one node's commit ends it for every node. (SQLite has one
//! process: its transactions live in that process, and the other suites cover them.)

use std::sync::Arc;

use serde_json::json;
use yun_conformance::Backend;
use yun_docdb::filter::Filter;
use yun_docdb::find::Projection;
use yun_docdb::{Change, DocDb, Limits};
use yun_types::{EnvId, ErrorCode};

async fn node(backend: &Backend) -> Arc<DocDb> {
    Arc::new(DocDb::new(backend.doc_store().await, Limits::default()))
}

fn by_id(id: &str) -> Filter {
    Filter::parse(&json!({ "_id": id })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_continues_on_another_node() {
    let backend = Backend::postgres();
    let (a, b, c) = (
        node(&backend).await,
        node(&backend).await,
        node(&backend).await,
    );
    let env = EnvId::parse("dev").unwrap();
    a.create_collection(&env, "accounts").await.unwrap();
    a.insert(
        &env,
        "accounts",
        vec![json!({"_id": "alice", "balance": 100})],
        None,
        None,
    )
    .await
    .unwrap();

    let t = a.start_transaction(&env).await.unwrap();
    let seen = b
        .txn_find(&env, &t, "accounts", &by_id("alice"), &Projection::All)
        .await
        .unwrap();
    assert_eq!(seen[0]["balance"], json!(100));
    let pay = Change::Operators(json!({"$inc": {"balance": -30}}));
    c.txn_update(&env, &t, "accounts", &by_id("alice"), &pay, None)
        .await
        .unwrap();
    a.txn_insert(&env, &t, "accounts", vec![json!({"_id": "log-1"})])
        .await
        .unwrap();
    // Another node sees the transaction's own writes, and others do not see them yet.
    let inside = b
        .txn_find(&env, &t, "accounts", &by_id("alice"), &Projection::All)
        .await
        .unwrap();
    assert_eq!(inside[0]["balance"], json!(70));
    let other = EnvId::parse("other").unwrap();
    assert!(
        b.txn_find(&other, &t, "accounts", &by_id("alice"), &Projection::All)
            .await
            .is_err(),
        "another env does not see the transaction"
    );
    b.commit_transaction(&env, &t).await.unwrap();
    let count = c
        .count(&env, "accounts", Filter::all(), &Limits::default())
        .await
        .unwrap();
    assert_eq!(count, 2);
    for node in [&a, &c] {
        let err = node.commit_transaction(&env, &t).await.unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidParam,
            "the commit ended it everywhere"
        );
    }

    // What one node's transaction saw, another node's write changes: a conflict.
    let t = c.start_transaction(&env).await.unwrap();
    c.txn_update(&env, &t, "accounts", &by_id("alice"), &pay, None)
        .await
        .unwrap();
    a.update(
        &env,
        "accounts",
        by_id("alice"),
        Change::Operators(json!({"$inc": {"balance": 1}})),
        yun_docdb::UpdateMode {
            multi: false,
            upsert: None,
            guard: None,
        },
    )
    .await
    .unwrap();
    let err = b.commit_transaction(&env, &t).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TransactionConflict);

    // Aborted on one node, gone on the others.
    let t = a.start_transaction(&env).await.unwrap();
    b.abort_transaction(&env, &t).await.unwrap();
    assert!(c
        .txn_find(&env, &t, "accounts", &by_id("alice"), &Projection::All)
        .await
        .is_err());
}
