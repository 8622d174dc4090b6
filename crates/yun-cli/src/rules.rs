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

/// `yun db rules` arguments, verb first as every other noun's (`get COLL`, `set COLL
/// RULES`, `reset COLL`) or in the older order (`COLL get`, …): the collection and what
/// to do with its rules.
pub fn collection_command(args: Vec<String>) -> anyhow::Result<(String, RulesCommand)> {
    let verb = |action: &str, rules: Option<&String>| match (action, rules) {
        ("get", None) => Some(RulesCommand::Get),
        ("reset", None) => Some(RulesCommand::Reset),
        ("set", Some(rules)) => Some(RulesCommand::Set {
            rules: rules.clone(),
        }),
        _ => None,
    };
    let (first, second, rest) = match args.as_slice() {
        [a, b] => (a, b, None),
        [a, b, c] => (a, b, Some(c)),
        _ => anyhow::bail!("usage: yun db rules get|set|reset COLLECTION [RULES]"),
    };
    if let Some(command) = verb(first, rest) {
        return Ok((second.clone(), command));
    }
    if let Some(command) = verb(second, rest) {
        return Ok((first.clone(), command));
    }
    anyhow::bail!("usage: yun db rules get COLLECTION | set COLLECTION RULES | reset COLLECTION")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<(String, String)> {
        collection_command(args.iter().map(|s| s.to_string()).collect())
            .ok()
            .map(|(c, cmd)| {
                let what = match cmd {
                    RulesCommand::Get => "get".to_string(),
                    RulesCommand::Reset => "reset".to_string(),
                    RulesCommand::Set { rules } => format!("set {rules}"),
                };
                (c, what)
            })
    }

    #[test]
    fn verb_first_and_the_older_order_both_read() {
        let pair = |c: &str, w: &str| Some((c.to_string(), w.to_string()));
        assert_eq!(parse(&["get", "photos"]), pair("photos", "get"));
        assert_eq!(
            parse(&["set", "photos", "READONLY"]),
            pair("photos", "set READONLY")
        );
        assert_eq!(parse(&["reset", "photos"]), pair("photos", "reset"));
        assert_eq!(parse(&["photos", "get"]), pair("photos", "get"));
        assert_eq!(
            parse(&["photos", "set", "PRIVATE"]),
            pair("photos", "set PRIVATE")
        );
        // A collection named like a verb: the verb-first reading wins.
        assert_eq!(parse(&["get", "reset"]), pair("reset", "get"));
        assert_eq!(parse(&["photos", "drop"]), None);
        assert_eq!(parse(&["set", "photos"]), None);
    }
}
