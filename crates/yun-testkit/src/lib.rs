//! A real Yun node for tests and benchmarks: embedded backends in a temp dir, a free
//! loopback port, the real functions runtime. Clients sign `/admin` requests the way
//! the CloudBase SDKs do (`yun_auth::tc3::sign`) and call the management API with the
//! node's key.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

/// The conformance suite's `node_modules` (pinned SDKs), used as the Node layer when
/// present; otherwise an empty layer (tests then must not need the SDKs).
fn node_layer() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/compat"))
}

pub struct Options {
    pub idle_timeout: Duration,
    pub queue_timeout: Duration,
    pub stem_cells: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(3),
            stem_cells: 1,
        }
    }
}

pub struct TestYun {
    pub url: String,
    pub env: String,
    pub secret_id: String,
    pub secret_key: String,
    pub data_dir: tempfile::TempDir,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A `.tar.gz` of `(path, contents)` files, as `yun fn deploy` sends.
pub fn archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, body.as_bytes())
            .expect("in-memory tar");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("in-memory gzip")
}

/// Whether any process of the instance that returned `{pid, uid}` is still running. A
/// sandboxed instance has a uid of its own (and a pid of its own namespace); an
/// unsandboxed one is found by its pid.
pub fn instance_alive(reported: &serde_json::Value) -> bool {
    let uid = reported["uid"].as_u64().unwrap_or(0);
    if uid < u64::from(*yun_server::DEFAULT_INSTANCE_UIDS.start()) {
        let pid = reported["pid"].as_u64().unwrap_or(0);
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().next()?.parse::<u64>().ok())
            })
            == Some(uid)
    })
}

/// The `yun` binary built beside this test (`target/debug/yun`), which runs the
/// sandbox's init; without it the server runs instances unsandboxed.
fn yun_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.join("yun")).filter(|p| p.is_file())
}

impl TestYun {
    pub async fn start(options: Options) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let layer = node_layer();
        let empty_layer = data_dir.path().join("empty-layer");
        std::fs::create_dir_all(&empty_layer).expect("layer dir");
        let server = yun_server::Server::start_dev(yun_server::DevConfig {
            data_dir: data_dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            public_url: None,
            default_env: yun_types::EnvId::parse("dev").expect("env"),
            node: "node".into(),
            npm: "npm".into(),
            node_layer: Some(if layer.join("node_modules").is_dir() {
                layer
            } else {
                empty_layer
            }),
            stem_cells: options.stem_cells,
            idle_timeout: options.idle_timeout,
            queue_timeout: options.queue_timeout,
            storage: None,
            events: None,
            database: None,
            postgres_schema: "yun".into(),
            storage_limits: Default::default(),
            sandbox: yun_server::SandboxMode::Auto,
            instance_uids: yun_server::DEFAULT_INSTANCE_UIDS,
            tmp_mb: 64,
            init_exe: yun_binary(),
            metrics: true,
            tracing: true,
            trace_sample_ratio: 1.0,
            retention_every: Duration::from_secs(60),
            alerts_every: Duration::from_secs(15),
            platform_key: None,
        })
        .await
        .expect("yun starts");
        let c = server.credentials.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                    yun_server::Stop::Now
                })
                .await
                .expect("serve");
        });
        Self {
            url: c.url,
            env: c.env_id,
            secret_id: c.secret_id,
            secret_key: c.secret_key,
            data_dir,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    /// Stops the node the way Ctrl-C does and waits for a clean shutdown.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// A management API call; returns the status and the JSON body.
    pub async fn management(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth(&self.secret_id, Some(&self.secret_key));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("management request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Deploys `files` as function `name` with extra settings (`timeout_ms`, …).
    pub async fn deploy(&self, name: &str, files: &[(&str, &str)], settings: Value) -> Value {
        let mut body = settings.as_object().cloned().unwrap_or_default();
        body.insert(
            "code_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(archive(files))),
        );
        let (status, value) = self
            .management(
                reqwest::Method::PUT,
                &format!("/api/v1/envs/{}/functions/{name}", self.env),
                Some(Value::Object(body)),
            )
            .await;
        assert_eq!(status, 200, "deploy {name}: {value}");
        value
    }

    /// A signed `/admin` request, as `@cloudbase/node-sdk` sends it.
    pub async fn admin(&self, body: Value) -> Value {
        let request = signed_admin_request(
            &self.http,
            &self.url,
            &self.env,
            &self.secret_id,
            &self.secret_key,
            body,
        );
        request
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    /// `functions.invokeFunction`; returns the whole envelope.
    pub async fn invoke(&self, name: &str, data: Value) -> Value {
        self.admin(json!({ "action": "functions.invokeFunction", "function_name": name, "request_data": data.to_string() })).await
    }

    /// The invocation record of `request_id`, waiting for the background writer.
    pub async fn invocation_record(&self, request_id: &str) -> Value {
        for _ in 0..200 {
            let (status, value) = self
                .management(
                    reqwest::Method::GET,
                    &format!("/api/v1/envs/{}/invocations/{request_id}", self.env),
                    None,
                )
                .await;
            if status == 200 {
                return value["invocation"].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no invocation record for {request_id}");
    }
}

/// Builds a signed `/admin` request (TC3-HMAC-SHA256 with signed params, as the SDK).
pub fn signed_admin_request(
    http: &reqwest::Client,
    url: &str,
    env: &str,
    secret_id: &str,
    secret_key: &str,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut params: Map<String, Value> = body.as_object().cloned().unwrap_or_default();
    params.insert("envName".into(), json!(env));
    let host = url.trim_start_matches("http://").to_owned();
    let query = format!("env={env}&seqId=testkit");
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        - 1;
    let headers = [
        ("content-type", "application/json"),
        ("host", host.as_str()),
        ("user-agent", "yun-testkit"),
    ];
    let authorization = yun_auth::tc3::sign(
        secret_id, secret_key, timestamp, "/admin", &query, &headers, &params,
    )
    .expect("sign");
    http.post(format!("{url}/admin?{query}"))
        .header("content-type", "application/json")
        .header("user-agent", "yun-testkit")
        .header("authorization", authorization)
        .header("x-timestamp", timestamp.to_string())
        .header("x-signature-expires", "600")
        .body(Value::Object(params).to_string())
}
