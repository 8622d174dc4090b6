//! A small client of the management API.

use anyhow::{anyhow, bail, Context as _};
use reqwest::Method;
use serde_json::Value;

use crate::Connection;

pub struct Client {
    http: reqwest::Client,
    pub url: String,
    pub env: String,
    secret_id: String,
    secret_key: String,
}

impl Client {
    /// Resolves the connection: flags and env vars (clap applied both), then
    /// `./.yun/credentials.json` for whatever is still missing.
    pub fn connect(conn: &Connection) -> anyhow::Result<Self> {
        let file: Value = std::fs::read(".yun/credentials.json")
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let pick = |flag: &Option<String>, key: &str| {
            flag.clone()
                .or_else(|| file.get(key).and_then(Value::as_str).map(str::to_owned))
                .filter(|s| !s.is_empty())
        };
        let missing = |what: &str, flag: &str, var: &str| {
            anyhow!("no {what}: pass --{flag}, set {var}, or run from the folder where `yun dev` keeps .yun/credentials.json")
        };
        Ok(Self {
            http: reqwest::Client::new(),
            url: pick(&conn.url, "url")
                .ok_or_else(|| missing("URL", "url", "YUN_URL"))?
                .trim_end_matches('/')
                .to_owned(),
            env: pick(&conn.env, "envId").ok_or_else(|| missing("env", "env", "YUN_ENV"))?,
            secret_id: pick(&conn.secret_id, "secretId")
                .ok_or_else(|| missing("SecretId", "secret-id", "YUN_SECRET_ID"))?,
            secret_key: pick(&conn.secret_key, "secretKey")
                .ok_or_else(|| missing("SecretKey", "secret-key", "YUN_SECRET_KEY"))?,
        })
    }

    /// Why the server is not ready yet (`/readyz` answers 503), or `None`.
    pub async fn readiness(&self) -> Option<String> {
        let res = self
            .http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .ok()?;
        if res.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let body: Value = res.json().await.ok()?;
        body["reason"].as_str().map(str::to_owned)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.send(method, path, &[], body).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.raw(method, path).query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = self.execute(req).await?;
        let text = response.text().await.context("reading the response")?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A request carrying the key, for bodies and answers that are not JSON.
    pub fn raw(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .basic_auth(&self.secret_id, Some(&self.secret_key))
    }

    /// Sends `req`; a non-success status becomes the API's error message.
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = req
            .send()
            .await
            .with_context(|| format!("cannot reach Yun at {}", self.url))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let text = response.text().await.context("reading the response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let code = value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("HTTP_ERROR");
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        match value.get("request_id").and_then(Value::as_str) {
            Some(id) => bail!("{code}: {message} (request id {id})"),
            None => bail!("{code}: {message}"),
        }
    }

    pub fn env_path(&self, rest: &str) -> String {
        format!("/api/v1/envs/{}{rest}", self.env)
    }
}
