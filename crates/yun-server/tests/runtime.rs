//! A real node in-process: scale to zero, invocation records, provisioning of instances
//! per function. The SDK-facing behaviour is covered by `tests/compat`.

use std::time::Duration;

use serde_json::json;
use yun_testkit::{Options, TestYun};

/// Each instance names itself with a token of its own: pids inside the sandbox are those
/// of the instance's own PID namespace (the same in every instance).
const ECHO: &[(&str, &str)] = &[(
    "index.js",
    "const instance = require('crypto').randomUUID();
exports.main = async (e) => ({ e, instance, pid: process.pid, uid: process.getuid() })",
)];

fn result(envelope: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(
        envelope["data"]["response_data"]
            .as_str()
            .expect("response_data"),
    )
    .expect("JSON")
}

fn instance(envelope: &serde_json::Value) -> String {
    result(envelope)["instance"]
        .as_str()
        .expect("instance")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_reaped_to_zero_and_the_next_call_is_cold() {
    let yun = TestYun::start(Options {
        idle_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    yun.deploy("echo", ECHO, json!({})).await;

    let first = yun.invoke("echo", json!({ "n": 1 })).await;
    let second = yun.invoke("echo", json!({ "n": 2 })).await;
    assert_eq!(instance(&first), instance(&second), "warm reuse");
    assert_eq!(
        yun.invocation_record(first["requestId"].as_str().unwrap())
            .await["cold_start"],
        true
    );
    assert_eq!(
        yun.invocation_record(second["requestId"].as_str().unwrap())
            .await["cold_start"],
        false
    );

    let mut idle = u64::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, list) = yun
            .management(reqwest::Method::GET, "/api/v1/envs/dev/functions", None)
            .await;
        idle = list["functions"][0]["instances"]["idle"].as_u64().unwrap();
        if idle == 0 {
            break;
        }
    }
    assert_eq!(idle, 0, "the idle instance was reaped");
    // The reaper stops the process on its own task: give it a bounded moment.
    let first_result = result(&first);
    let mut alive = true;
    for _ in 0..40 {
        alive = yun_testkit::instance_alive(&first_result);
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "the reaped instance's process is gone");

    let third = yun.invoke("echo", json!({ "n": 3 })).await;
    assert_ne!(instance(&third), instance(&first));
    assert_eq!(
        yun.invocation_record(third["requestId"].as_str().unwrap())
            .await["cold_start"],
        true
    );
    yun.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_records_carry_status_duration_and_memory() {
    let yun = TestYun::start(Options::default()).await;
    yun.deploy(
        "mixed",
        &[("index.js", "exports.main = async (e) => { if (e.fail) throw new Error('nope'); await new Promise(r => setTimeout(r, 50)); return 1 }")],
        json!({ "timeout_ms": 2000 }),
    )
    .await;
    let ok = yun.invoke("mixed", json!({})).await;
    let failed = yun.invoke("mixed", json!({ "fail": true })).await;
    assert_eq!(failed["code"], "FUNCTIONS_EXECUTE_FAIL");

    let ok = yun
        .invocation_record(ok["requestId"].as_str().unwrap())
        .await;
    assert_eq!(ok["status"], "success");
    assert!(ok["duration_ms"].as_u64().unwrap() >= 50);
    assert!(ok["billed_ms"].as_u64().unwrap() >= ok["duration_ms"].as_u64().unwrap());
    assert!(ok["memory_peak_kb"].as_u64().unwrap() > 1000, "{ok}");
    assert_eq!(ok["version"], 1);

    let failed = yun
        .invocation_record(failed["requestId"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"], "Error: nope");
    yun.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_scale_out_up_to_the_cap() {
    let yun = TestYun::start(Options::default()).await;
    yun.deploy(
        "sleepy",
        &[(
            "index.js",
            "const instance = require('crypto').randomUUID();
exports.main = async () => { await new Promise(r => setTimeout(r, 400)); return instance }",
        )],
        json!({ "max_instances": 3 }),
    )
    .await;
    let (a, b, c) = tokio::join!(
        yun.invoke("sleepy", json!({})),
        yun.invoke("sleepy", json!({})),
        yun.invoke("sleepy", json!({}))
    );
    let results = [a, b, c];
    let mut pids: Vec<String> = results
        .iter()
        .map(|r| r["data"]["response_data"].as_str().unwrap().to_owned())
        .collect();
    pids.sort();
    pids.dedup();
    assert_eq!(
        pids.len(),
        3,
        "three concurrent calls ran in three instances: {results:?}"
    );
    let (_, list) = yun
        .management(reqwest::Method::GET, "/api/v1/envs/dev/functions", None)
        .await;
    assert_eq!(list["functions"][0]["instances"]["idle"], 3);
    yun.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_events_queue_on_a_busy_instance_and_a_crash_hands_the_queue_back_unrun() {
    let yun = TestYun::start(Options::default()).await;
    let handler = "let ran = 0;
const instance = require('crypto').randomUUID();
exports.main = async (e) => {
  ran += 1;
  if (e.crash) { await new Promise(r => setTimeout(r, 50)); process.exit(3); }
  return { instance, ran };
}";
    yun.deploy(
        "queued",
        &[("index.js", handler)],
        json!({ "max_instances": 1 }),
    )
    .await;
    // Sequential calls teach the pool that this function's events are short.
    for n in 0..3 {
        assert!(yun.invoke("queued", json!({ "n": n })).await["code"].is_null());
    }
    let calls = (0..8).map(|n| yun.invoke("queued", json!({ "n": n })));
    let results = futures_util::future::join_all(calls).await;
    let first_instance = instance(&results[0]);
    for r in &results {
        assert!(r["code"].is_null(), "{r}");
        assert_eq!(
            instance(r),
            first_instance,
            "one instance ran them all, one at a time"
        );
    }

    // A crash fails its own event only: the events queued behind it never ran and are
    // admitted again, on a new instance.
    let yun_ref = &yun;
    let crash = yun.invoke("queued", json!({ "crash": true }));
    let others = futures_util::future::join_all((0..4).map(|n| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        yun_ref.invoke("queued", json!({ "n": n })).await
    }));
    let (crash, others) = tokio::join!(crash, others);
    assert_eq!(crash["code"], "FUNCTIONS_EXECUTE_FAIL", "{crash}");
    assert!(
        crash["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{crash}"
    );
    for r in &others {
        assert!(r["code"].is_null(), "{r}");
        assert_ne!(instance(r), first_instance, "served by a new instance");
        let record = yun
            .invocation_record(r["requestId"].as_str().unwrap())
            .await;
        assert_eq!(record["status"], "success");
    }
    yun.stop().await;
}
