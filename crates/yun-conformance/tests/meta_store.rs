//! The metadata seam (`MetaStore`) on every backend: rows stay in their env and survive a
//! restart, logs filter and follow, retention works in batches, and what nodes do at
//! once (deploys, first keys, usage counters) comes out as one node doing it in turn.

use std::sync::Arc;

use yun_conformance::{on_every_backend, Backend};
use yun_meta::*;
use yun_types::{EnvId, ErrorCode, FunctionName};

on_every_backend!(
    dead_letters_stay_in_their_env_and_function,
    rows_stay_in_their_env_and_survive_reopen,
    logs_filter_by_request_and_follow_by_id,
    a_request_finds_the_invocations_it_caused_and_levels_and_patterns_filter,
    retention_removes_what_is_too_old_or_over_the_size_in_batches,
    a_nul_in_a_log_line_or_error_loses_nothing,
    concurrent_deploys_make_one_version_each,
    a_settings_change_from_a_stale_read_writes_nothing,
    concurrent_first_uses_agree_and_counters_add_up,
    names_are_unique_where_they_must_be,
);

fn env(s: &str) -> EnvId {
    EnvId::parse(s).unwrap()
}

fn function(e: &str, name: &str, http: Option<&str>) -> NewFunction {
    NewFunction {
        env: env(e),
        name: FunctionName::parse(name).unwrap(),
        handler: "index.main".into(),
        timeout_ms: 3000,
        memory_mb: 128,
        max_instances: 4,
        env_vars: Default::default(),
        http_path: http.map(str::to_owned),
        code_sha256: "x".into(),
        code_size: 1,
        code_id: "c1".into(),
        async_retry: Default::default(),
        reserved_concurrency: None,
    }
}

async fn dead_letters_stay_in_their_env_and_function(backend: Backend) {
    let store = backend.meta_store().await;
    let f = FunctionName::parse("f").unwrap();
    let letter = |e: &str, function: &FunctionName, id: &str, at: i64| DeadLetter {
        env: env(e),
        function: function.clone(),
        request_id: id.into(),
        error_code: "FUNCTIONS_EXECUTE_FAIL".into(),
        error_message: "boom".into(),
        event: "{}".into(),
        source: "async".into(),
        trigger: None,
        retry_num: 2,
        enqueued_at_ms: 1,
        failed_at_ms: at,
    };
    for e in ["a", "b"] {
        store.create_env(&env(e)).await.unwrap();
    }
    let g = FunctionName::parse("g").unwrap();
    for l in [
        letter("a", &f, "r2", 20),
        letter("a", &f, "r1", 10),
        letter("a", &g, "r3", 5),
        letter("b", &f, "r4", 5),
    ] {
        store.put_dead_letter(&l).await.unwrap();
    }
    let ids = |v: Vec<DeadLetter>| v.into_iter().map(|l| l.request_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_dead_letters(&env("a"), &f, None).await.unwrap()),
        ["r1", "r2"]
    );
    assert_eq!(
        ids(store
            .list_dead_letters(&env("a"), &f, Some("r4"))
            .await
            .unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        store
            .delete_dead_letters(&env("a"), &f, Some("r4"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_dead_letters(&env("a"), &f, None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ids(store.list_dead_letters(&env("a"), &g, None).await.unwrap()),
        ["r3"]
    );
    assert_eq!(
        ids(store.list_dead_letters(&env("b"), &f, None).await.unwrap()),
        ["r4"]
    );
    // They go with their env.
    store.delete_env(&env("b")).await.unwrap();
    assert!(store
        .list_dead_letters(&env("b"), &f, None)
        .await
        .unwrap()
        .is_empty());
}

async fn rows_stay_in_their_env_and_survive_reopen(backend: Backend) {
    let store = backend.meta_store().await;
    let master = store.master_key().await.unwrap();
    store.create_env(&env("a")).await.unwrap();
    store.create_env(&env("b")).await.unwrap();
    assert_eq!(
        store.create_env(&env("a")).await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );

    let v1 = store
        .put_function(&function("a", "hello", Some("/hi")), 1)
        .await
        .unwrap();
    let v2 = store
        .put_function(&function("a", "hello", Some("/hi")), 2)
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version, v2.created_at), (1, 2, 1));
    let clash = store
        .put_function(&function("a", "other", Some("/hi")), 3)
        .await
        .unwrap_err();
    assert_eq!(clash.code, ErrorCode::AlreadyExists);
    // The same path in another env is another route.
    store
        .put_function(&function("b", "other", Some("/hi")), 3)
        .await
        .unwrap();

    assert!(store
        .get_function(&env("b"), &FunctionName::parse("hello").unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.list_functions(&env("a")).await.unwrap().len(), 1);
    drop(store);

    let store = backend.meta_store().await;
    assert_eq!(store.master_key().await.unwrap(), master);
    let found = store
        .get_function(&env("a"), &FunctionName::parse("hello").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.version, 2);
    assert!(store.delete_env(&env("a")).await.unwrap());
    assert!(store.list_functions(&env("a")).await.unwrap().is_empty());
    assert_eq!(store.list_functions(&env("b")).await.unwrap().len(), 1);
}

async fn logs_filter_by_request_and_follow_by_id(backend: Backend) {
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let line = |rid: &str, msg: &str| NewLogLine {
        env: env("a"),
        function: FunctionName::parse("f").unwrap(),
        request_id: rid.into(),
        at_ms: 10,
        stream: "stdout".into(),
        level: "info".into(),
        message: msg.into(),
    };
    store
        .append_logs(vec![
            line("r1", "one"),
            line("r2", "two"),
            line("r1", "three"),
        ])
        .await
        .unwrap();
    let q = LogQuery {
        env: env("a"),
        function: None,
        filter: LogFilter {
            request_id: Some("r1".into()),
            ..LogFilter::default()
        },
    };
    let got: Vec<String> = store
        .query_logs(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line.message)
        .collect();
    assert_eq!(got, ["one", "three"]);
    let first = store.query_logs(&q).await.unwrap()[0].id;
    let later = store
        .query_logs(&LogQuery {
            filter: LogFilter {
                after_id: Some(first),
                ..q.filter.clone()
            },
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    let other_env = store
        .query_logs(&LogQuery {
            env: env("b"),
            function: None,
            filter: LogFilter::default(),
        })
        .await
        .unwrap();
    assert!(other_env.is_empty());
}

fn record(rid: &str, parent: Option<&str>, started_at_ms: i64) -> InvocationRecord {
    InvocationRecord {
        request_id: rid.into(),
        env: env("a"),
        function: FunctionName::parse("f").unwrap(),
        version: 1,
        started_at_ms,
        duration_ms: 7,
        billed_ms: 7,
        memory_peak_kb: 0,
        status: InvocationStatus::Success,
        cold_start: false,
        error: None,
        attempt: 1,
        trigger: None,
        memory_mb: 256,
        response_bytes: 10,
        parent_request_id: parent.map(str::to_owned),
        trace_id: String::new(),
        span_id: String::new(),
        parent_span_id: None,
        waited_ms: 0,
    }
}

fn log(rid: &str, at_ms: i64, level: &str, message: &str) -> NewLogLine {
    NewLogLine {
        env: env("a"),
        function: FunctionName::parse("f").unwrap(),
        request_id: rid.into(),
        at_ms,
        stream: "stdout".into(),
        level: level.into(),
        message: message.into(),
    }
}

async fn messages(store: &Arc<dyn MetaStore>, filter: LogFilter) -> Vec<String> {
    store
        .query_logs(&LogQuery {
            env: env("a"),
            function: None,
            filter,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line.message)
        .collect()
}

async fn a_request_finds_the_invocations_it_caused_and_levels_and_patterns_filter(
    backend: Backend,
) {
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    store
        .append_invocations(vec![
            record("root", None, 1),
            record("child", Some("root"), 2),
            record("grandchild", Some("child"), 3),
            record("other", None, 4),
        ])
        .await
        .unwrap();
    store
        .append_logs(vec![
            log("root", 1, "info", "r"),
            log("child", 2, "warn", "c"),
            log("grandchild", 3, "error", "g"),
            log("other", 4, "info", "o"),
        ])
        .await
        .unwrap();
    let by = |caused| LogFilter {
        request_id: Some("root".into()),
        caused,
        ..LogFilter::default()
    };
    assert_eq!(messages(&store, by(true)).await, ["r", "c", "g"]);
    assert_eq!(messages(&store, by(false)).await, ["r"]);
    let (tree, _) = store.trace(&env("a"), "root", "t").await.unwrap();
    let ids: Vec<String> = tree.into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["root", "child", "grandchild"]);
    let level = LogFilter {
        level: Some("warn".into()),
        ..LogFilter::default()
    };
    assert_eq!(messages(&store, level).await, ["c", "g"]);
    let grep = LogFilter {
        grep: Some("^[cg]$".into()),
        limit: Some(1),
        ..LogFilter::default()
    };
    assert_eq!(
        messages(&store, grep).await,
        ["c"],
        "the limit counts matches"
    );
    let bad = store
        .query_logs(&LogQuery {
            env: env("a"),
            function: None,
            filter: LogFilter {
                grep: Some("(".into()),
                ..LogFilter::default()
            },
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::InvalidParam);
    let usage = store.usage(&env("a"), "hour", 0).await.unwrap();
    assert_eq!(usage.len(), 1, "four records in the first hour of 1970");
    assert_eq!(
        (
            usage[0].counts.invocations,
            usage[0].counts.mb_ms,
            usage[0].counts.egress_bytes
        ),
        (4, 4 * 256 * 7, 40)
    );
}

async fn retention_removes_what_is_too_old_or_over_the_size_in_batches(backend: Backend) {
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let lines: Vec<NewLogLine> = (0..10)
        .map(|i| log(&format!("r{i}"), 1000 * i, "info", &"x".repeat(36)))
        .collect();
    store.append_logs(lines).await.unwrap();
    store
        .append_invocations(
            (0..10)
                .map(|i| record(&format!("r{i}"), None, 1000 * i))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.log_bytes(&env("a")).await.unwrap(),
        1000,
        "100 bytes a line"
    );
    // Over the size: the oldest go until 450 bytes are left (four lines).
    let by_size = Retention {
        max_age_ms: i64::MAX,
        max_bytes: 450,
    };
    let pruned = store.prune(&env("a"), by_size, 10_000, 2000).await.unwrap();
    assert_eq!((pruned.logs, pruned.records, pruned.more), (6, 0, false));
    assert_eq!(store.log_bytes(&env("a")).await.unwrap(), 400);
    assert_eq!(messages(&store, LogFilter::default()).await.len(), 4);
    // By age, two rows a batch: lines and records older than 8 s go.
    let by_age = Retention {
        max_age_ms: 2000,
        max_bytes: u64::MAX,
    };
    let first = store.prune(&env("a"), by_age, 10_000, 2).await.unwrap();
    assert_eq!((first.logs, first.records, first.more), (2, 2, true));
    while store
        .prune(&env("a"), by_age, 10_000, 2)
        .await
        .unwrap()
        .more
    {}
    let kept: Vec<String> = store
        .list_invocations(&env("a"), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(kept, ["r9", "r8"]);
    assert_eq!(messages(&store, LogFilter::default()).await.len(), 2);
    assert_eq!(store.log_bytes(&env("a")).await.unwrap(), 200);
}

async fn a_nul_in_a_log_line_or_error_loses_nothing(backend: Backend) {
    // A function may print anything; PostgreSQL cannot store a NUL in text. The batch
    // (other functions' lines and records too) must still be stored.
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let mut failed = record("nul", None, 5);
    failed.error = Some("bad\0byte".into());
    store
        .append_invocations(vec![failed, record("fine", None, 6)])
        .await
        .unwrap();
    store
        .append_logs(vec![
            log("nul", 5, "info", "a\0b"),
            log("fine", 6, "info", "ok"),
        ])
        .await
        .unwrap();
    let lines = messages(&store, LogFilter::default()).await;
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with('a') && lines[0].ends_with('b'),
        "{lines:?}"
    );
    let stored = store
        .get_invocation(&env("a"), "nul")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.error.unwrap().starts_with("bad"));
    assert!(store
        .get_invocation(&env("a"), "fine")
        .await
        .unwrap()
        .is_some());
}

async fn concurrent_deploys_make_one_version_each(backend: Backend) {
    // Two nodes deploying one function at once: each deploy is a version of its own.
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let deploys = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.put_function(&function("a", "f", None), i).await })
    });
    let mut versions: Vec<i64> = Vec::new();
    for deploy in deploys {
        versions.push(deploy.await.unwrap().unwrap().version);
    }
    versions.sort();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    let f = FunctionName::parse("f").unwrap();
    assert_eq!(
        store
            .get_function(&env("a"), &f)
            .await
            .unwrap()
            .unwrap()
            .version,
        16
    );
}

async fn concurrent_first_uses_agree_and_counters_add_up(backend: Backend) {
    // Nodes starting together agree on one master key.
    let mut nodes = Vec::new();
    for _ in 0..8 {
        nodes.push(backend.meta_store().await);
    }
    let firsts: Vec<_> = nodes
        .into_iter()
        .map(|node| tokio::spawn(async move { node.master_key().await.unwrap() }))
        .collect();
    let mut keys = Vec::new();
    for first in firsts {
        keys.push(first.await.unwrap());
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "one master key");

    // Batches of invocation records from many writers at once: the usage roll-ups count
    // every one (no lost update, no deadlock between batches touching the same rows).
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let writers = (0..8).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for b in 0..5 {
                let batch = (0..10)
                    .map(|i| record(&format!("w{w}b{b}i{i}"), None, (i % 3) * 3_600_000))
                    .collect();
                store.append_invocations(batch).await.unwrap();
                let lines = (0..4)
                    .map(|i| log(&format!("w{w}"), i, "info", "x"))
                    .collect();
                store.append_logs(lines).await.unwrap();
            }
        })
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let hours = store.usage(&env("a"), "hour", 0).await.unwrap();
    let total: u64 = hours.iter().map(|r| r.counts.invocations).sum();
    assert_eq!((hours.len(), total), (3, 400));
    let days = store.usage(&env("a"), "day", 0).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].counts.invocations, 400);
    assert_eq!(days[0].counts.billed_ms, 400 * 7);
    assert_eq!(store.log_bytes(&env("a")).await.unwrap(), 160 * 65);
    let stats = store
        .invocation_stats(&env("a"), None, 0, true)
        .await
        .unwrap();
    assert_eq!((stats.invocations, stats.errors, stats.p95_ms), (400, 0, 7));
}

async fn names_are_unique_where_they_must_be(backend: Backend) {
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let f = FunctionName::parse("f").unwrap();
    let trigger = TriggerRecord {
        env: env("a"),
        function: f.clone(),
        name: "nightly".into(),
        kind: "timer".into(),
        config: "0 0 2 * * * *".into(),
        created_at_ms: 1,
        last_fired_ms: None,
    };
    store.insert_trigger(&trigger).await.unwrap();
    assert_eq!(
        store.insert_trigger(&trigger).await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    store
        .trigger_fired(&env("a"), &f, "nightly", 42)
        .await
        .unwrap();
    let listed = store.list_triggers(None, Some(&f)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_fired_ms, Some(42));
    // Replacing keeps exactly the new set.
    let other = TriggerRecord {
        name: "hourly".into(),
        ..trigger.clone()
    };
    store
        .replace_triggers(&env("a"), &f, &[other])
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_triggers(Some(&env("a")), None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["hourly"]);

    let alert = AlertRule {
        env: env("a"),
        name: "errors".into(),
        function: None,
        metric: "error_rate".into(),
        threshold: 0.5,
        window_s: 60,
        webhook: "http://127.0.0.1:1/".into(),
        created_at_ms: 1,
        firing: false,
        last_value: None,
        changed_at_ms: None,
    };
    store.insert_alert(&alert).await.unwrap();
    assert_eq!(
        store.insert_alert(&alert).await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    // Nodes evaluating at once: exactly one changes the state.
    let evaluations = (0..6).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .set_alert_state(&env("a"), "errors", 0.75, true, 99)
                .await
                .unwrap()
        })
    });
    let mut changed = 0;
    for evaluation in evaluations {
        changed += usize::from(evaluation.await.unwrap());
    }
    assert_eq!(changed, 1, "one evaluation sees the rule start firing");
    let alerts = store.list_alerts(Some(&env("a"))).await.unwrap();
    assert_eq!(
        (
            alerts[0].firing,
            alerts[0].last_value,
            alerts[0].changed_at_ms
        ),
        (true, Some(0.75), Some(99))
    );

    let key = KeyRecord {
        secret_id: "AKID1".into(),
        secret_key: "s".into(),
        env: env("a"),
        role: KeyRole::Env,
        description: String::new(),
        created_at: 1,
        revoked_at: None,
    };
    store.insert_key(&key).await.unwrap();
    assert!(
        store.insert_key(&key).await.is_err(),
        "a secret id is unique"
    );
    assert!(store.revoke_key(&env("a"), "AKID1", 5).await.unwrap());
    assert!(!store.revoke_key(&env("a"), "AKID1", 6).await.unwrap());
    assert_eq!(
        store.get_key("AKID1").await.unwrap().unwrap().revoked_at,
        Some(5)
    );

    let mut settings = store.env_settings(&env("a")).await.unwrap();
    settings.db_max_limit = Some(50);
    store.put_env_settings(&env("a"), &settings).await.unwrap();
    assert_eq!(
        store.env_settings(&env("a")).await.unwrap().db_max_limit,
        Some(50)
    );
    let spec = serde_json::json!({"read": true, "write": "doc._openid == auth.openid"});
    store
        .put_rules(&env("a"), "collection:posts", Some(&spec))
        .await
        .unwrap();
    assert_eq!(
        store.list_rules(&env("a")).await.unwrap(),
        [("collection:posts".to_owned(), spec)]
    );
    store
        .put_rules(&env("a"), "collection:posts", None)
        .await
        .unwrap();
    assert!(store.list_rules(&env("a")).await.unwrap().is_empty());
    // Deleting the env takes all of it.
    assert!(store.delete_env(&env("a")).await.unwrap());
    assert!(store.list_keys(&env("a")).await.unwrap().is_empty());
    assert!(store.list_alerts(Some(&env("a"))).await.unwrap().is_empty());
    assert!(store
        .list_triggers(Some(&env("a")), None)
        .await
        .unwrap()
        .is_empty());
}

async fn a_settings_change_from_a_stale_read_writes_nothing(backend: Backend) {
    let store = backend.meta_store().await;
    store.create_env(&env("a")).await.unwrap();
    let first = store
        .put_function(&function("a", "f", None), 1)
        .await
        .unwrap();
    // A deploy on another node after the read: new code.
    let deployed = NewFunction {
        code_id: "c2".into(),
        ..function("a", "f", None)
    };
    store.put_function(&deployed, 2).await.unwrap();
    let stale = NewFunction {
        reserved_concurrency: Some(3),
        ..first.spec.clone()
    };
    assert!(store
        .update_function(&stale, first.version, 3)
        .await
        .unwrap()
        .is_none());
    let f = FunctionName::parse("f").unwrap();
    let now = store.get_function(&env("a"), &f).await.unwrap().unwrap();
    assert_eq!(
        (now.version, now.spec.code_id.as_str()),
        (2, "c2"),
        "the deploy stays"
    );
    let fresh = NewFunction {
        reserved_concurrency: Some(3),
        ..now.spec.clone()
    };
    let updated = store.update_function(&fresh, 2, 4).await.unwrap().unwrap();
    assert_eq!(updated.version, 3);
    let now = store.get_function(&env("a"), &f).await.unwrap().unwrap();
    assert_eq!(
        (
            now.version,
            now.spec.code_id.as_str(),
            now.spec.reserved_concurrency
        ),
        (3, "c2", Some(3))
    );
    // An HTTP path another function serves is refused as on a deploy.
    store
        .put_function(&function("a", "g", Some("/taken")), 5)
        .await
        .unwrap();
    let taking = NewFunction {
        http_path: Some("/taken".into()),
        ..now.spec.clone()
    };
    let refused = store.update_function(&taking, 3, 6).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::AlreadyExists);
}
