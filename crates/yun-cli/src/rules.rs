//! `yun db rules …` and `yun storage rules …`: one set of subcommands for both targets.

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::output;

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Show the rules in force (and whether they are the default).
    Get,
    /// Set the rules: a preset (READONLY, PRIVATE, ADMINWRITE, ADMINONLY), a JSON object
    /// such as '{"read": true, "write": "doc._openid == auth.openid"}', or @FILE.
    Set { rules: String },
    /// Go back to the default rules.
    Reset,
}

/// A preset name as is; JSON (inline or `@file`) parsed.
fn rules_value(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => arg.to_owned(),
    };
    let trimmed = text.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('"') {
        serde_json::from_str(trimmed).context("the rules are not valid JSON")
    } else {
        Ok(Value::String(trimmed.to_owned()))
    }
}

/// Runs `command` against the rules resource at `path` (`…/collections/C/rules`, `…/storage/rules`).
pub async fn run(
    client: &Client,
    json: bool,
    path: &str,
    what: &str,
    command: RulesCommand,
) -> anyhow::Result<()> {
    let v = match command {
        RulesCommand::Get => client.request(Method::GET, path, None).await?,
        RulesCommand::Set { rules } => {
            client
                .request(
                    Method::PUT,
                    path,
                    Some(json!({ "rules": rules_value(&rules)? })),
                )
                .await?
        }
        RulesCommand::Reset => client.request(Method::DELETE, path, None).await?,
    };
    output::emit(json, &v, |v| {
        let rules = serde_json::to_string_pretty(&v["rules"]).unwrap_or_default();
        let note = if v["default"].as_bool() == Some(true) {
            " (default)"
        } else {
            ""
        };
        println!("Rules of {what}{note}:\n{rules}");
    });
    Ok(())
}
