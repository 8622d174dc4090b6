//! The change log is an outbox: every document write, whatever the path (insert,
//! update by where, replace, remove, import, a transaction's commit, a dropped
//! collection), appends its entry in the write's own transaction, and a write that
//! fails appends nothing.

use std::time::Duration;

use serde_json::{json, Value};
use yun_conformance::{on_every_backend, Backend};
use yun_docdb::filter::Filter;
use yun_docdb::store::{ChangeEntry, ChangeRetention, DocStore};
use yun_docdb::{Change, DocDb, Limits, UpdateMode};
use yun_types::{EnvId, ErrorCode};

on_every_backend!(
    every_write_path_appends_its_change_and_failed_writes_append_none,
    retention_drops_old_entries_below_the_readers_and_never_reuses_a_sequence,
);

/// An entry as the test compares it: env, `_id`, op, before, after.
type Seen<'a> = (&'a str, &'a str, &'a str, Option<Value>, Option<Value>);

fn doc(text: &Option<String>) -> Option<Value> {
    text.as_deref().map(|t| serde_json::from_str(t).unwrap())
}

async fn all_changes(store: &dyn DocStore) -> Vec<ChangeEntry> {
    store.change_log().changes_after(0, 1000).await.unwrap()
}

fn filter(v: Value) -> Filter {
    Filter::parse(&v).unwrap()
}

async fn every_write_path_appends_its_change_and_failed_writes_append_none(backend: Backend) {
    let store = backend.doc_store().await;
    let db = DocDb::new(store.clone(), Limits::default());
    let env = EnvId::parse("dev").unwrap();
    let other = EnvId::parse("other").unwrap();
    db.create_collection(&env, "c").await.unwrap();
    db.create_collection(&other, "c").await.unwrap();

    db.insert(&env, "c", vec![json!({"_id": "a", "n": 1})], None, None)
        .await
        .unwrap();
    db.insert(&other, "c", vec![json!({"_id": "a", "n": 100})], None, None)
        .await
        .unwrap();
    // A batch with a duplicate fails whole: neither its documents nor entries stay.
    let err = db
        .insert(
            &env,
            "c",
            vec![json!({"_id": "b", "n": 2}), json!({"_id": "a", "n": 3})],
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DuplicateKey);
    db.update(
        &env,
        "c",
        filter(json!({"n": {"$gte": 1}})),
        Change::Operators(json!({"$inc": {"n": 10}})),
        UpdateMode {
            multi: true,
            upsert: None,
            guard: None,
        },
    )
    .await
    .unwrap();
    // An update that changes nothing writes nothing.
    db.update(
        &env,
        "c",
        filter(json!({"_id": "a"})),
        Change::Operators(json!({"$set": {"n": 11}})),
        UpdateMode {
            multi: false,
            upsert: None,
            guard: None,
        },
    )
    .await
    .unwrap();
    let txn = db.start_transaction(&env).await.unwrap();
    db.txn_insert(&env, &txn, "c", vec![json!({"_id": "t", "n": 5})])
        .await
        .unwrap();
    db.commit_transaction(&env, &txn).await.unwrap();
    // A function's write is recorded as its.
    yun_docdb::written_by(
        Some("cleaner"),
        db.remove(&env, "c", filter(json!({"_id": "a"})), false, None),
    )
    .await
    .unwrap();
    db.import(&env, "c", vec![json!({"_id": "t", "n": 6})], true)
        .await
        .unwrap();
    db.drop_collection(&env, "c").await.unwrap();

    let log = all_changes(&*store).await;
    let seen: Vec<Seen> = log
        .iter()
        .map(|e| {
            (
                e.env.as_str(),
                e.key.as_str(),
                e.op.as_str(),
                doc(&e.before),
                doc(&e.after),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "dev",
                "a",
                "create",
                None,
                Some(json!({"_id": "a", "n": 1}))
            ),
            (
                "other",
                "a",
                "create",
                None,
                Some(json!({"_id": "a", "n": 100}))
            ),
            (
                "dev",
                "a",
                "update",
                Some(json!({"_id": "a", "n": 1})),
                Some(json!({"_id": "a", "n": 11}))
            ),
            (
                "dev",
                "t",
                "create",
                None,
                Some(json!({"_id": "t", "n": 5}))
            ),
            (
                "dev",
                "a",
                "delete",
                Some(json!({"_id": "a", "n": 11})),
                None
            ),
            (
                "dev",
                "t",
                "update",
                Some(json!({"_id": "t", "n": 5})),
                Some(json!({"_id": "t", "n": 6}))
            ),
            ("dev", "", "drop", None, None),
        ]
    );
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    let origins: Vec<Option<&str>> = log.iter().map(|e| e.origin.as_deref()).collect();
    assert_eq!(
        origins,
        [None, None, None, None, Some("cleaner"), None, None]
    );
    assert!(log.iter().all(|e| e.target == "c" && e.at_ms > 0));
    assert_eq!(
        store.change_log().last_change().await.unwrap(),
        log.last().unwrap().seq
    );
    // Paging from a position.
    let tail = store
        .change_log()
        .changes_after(log[4].seq, 2)
        .await
        .unwrap();
    assert_eq!(tail, log[5..7].to_vec());
}

async fn retention_drops_old_entries_below_the_readers_and_never_reuses_a_sequence(
    backend: Backend,
) {
    let store = backend.doc_store().await;
    let db = DocDb::new(store.clone(), Limits::default());
    let env = EnvId::parse("dev").unwrap();
    db.create_collection(&env, "c").await.unwrap();
    for i in 0..10 {
        db.insert(
            &env,
            "c",
            vec![json!({"n": i, "pad": "x".repeat(100)})],
            None,
            None,
        )
        .await
        .unwrap();
    }
    let log = all_changes(&*store).await;
    assert_eq!(log.len(), 10);
    let size = |e: &ChangeEntry| e.after.as_ref().map_or(0, |t| t.len()) as u64;

    // Within the budget: nothing goes.
    let roomy = ChangeRetention {
        max_age: Duration::from_secs(3600),
        max_bytes: 1 << 20,
    };
    assert_eq!(
        store
            .change_log()
            .prune_changes(roomy, u64::MAX)
            .await
            .unwrap(),
        0
    );

    // A budget of four entries' bytes keeps the newest four, but nothing a reader has
    // not passed: with readers at the sixth entry, only the first five may go.
    let tight = ChangeRetention {
        max_age: Duration::from_secs(3600),
        max_bytes: 4 * size(&log[0]) + 1,
    };
    assert_eq!(
        store
            .change_log()
            .prune_changes(tight, log[5].seq)
            .await
            .unwrap(),
        5
    );
    assert_eq!(all_changes(&*store).await, log[5..].to_vec());
    assert_eq!(
        store
            .change_log()
            .prune_changes(tight, u64::MAX)
            .await
            .unwrap(),
        1
    );
    assert_eq!(all_changes(&*store).await, log[6..].to_vec());

    // Past its age everything goes but the newest entry, so that the next write, even
    // after a restart, takes a sequence never handed out.
    let expired = ChangeRetention {
        max_age: Duration::ZERO,
        max_bytes: 1 << 20,
    };
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        store
            .change_log()
            .prune_changes(expired, u64::MAX)
            .await
            .unwrap(),
        3
    );
    assert_eq!(all_changes(&*store).await, log[9..].to_vec());
    drop(db);
    drop(store);
    let store = backend.doc_store().await;
    let db = DocDb::new(store.clone(), Limits::default());
    db.insert(&env, "c", vec![json!({"n": 10})], None, None)
        .await
        .unwrap();
    assert_eq!(
        store.change_log().last_change().await.unwrap(),
        log[9].seq + 1
    );

    // Readers' positions survive a restart.
    assert_eq!(
        store.change_log().change_cursor("triggers").await.unwrap(),
        None
    );
    store
        .change_log()
        .save_change_cursor("triggers", 7)
        .await
        .unwrap();
    store
        .change_log()
        .save_change_cursor("triggers", 9)
        .await
        .unwrap();
    assert_eq!(
        store.change_log().change_cursor("triggers").await.unwrap(),
        Some(9)
    );
}
