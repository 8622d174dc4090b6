//! `yun rules test CASES.json`: a table of allow/deny cases run against the rules engine
//! itself (`yun-rules`, the code the server runs), offline, like Firebase's rules tests.
//!
//! ```json
//! {
//!   "rules": { "albums": "@albums.json", "likes": "READONLY", "storage": {"read": true, "write": false} },
//!   "cases": [
//!     {"name": "owner reads", "target": "albums", "op": "read",
//!      "auth": {"uid": "alice"}, "doc": {"_openid": "alice"}, "expect": "allow"},
//!     {"name": "listing everything", "target": "albums", "op": "query",
//!      "auth": {"uid": "bob"}, "query": {}, "expect": "deny"}
//!   ]
//! }
//! ```
//! `op` is `read`, `query`, `create`, `update` or `delete`; `auth` null is signed out;
//! `data` is `request.data`; for the `storage` target, `resource` is `{openid, path}`.
//! Rules are a preset, an object, or `@file` relative to the cases file.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use yun_rules::{within, Auth, Context, RuleSet, Target};

use crate::output;

fn load_rules(spec: &Value, base: &Path, target: &str) -> anyhow::Result<RuleSet> {
    let spec = match spec.as_str().and_then(|s| s.strip_prefix('@')) {
        Some(file) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => spec.clone(),
    };
    let kind = if target == "storage" {
        Target::Storage
    } else {
        Target::Collection
    };
    RuleSet::parse(&spec, kind).map_err(|e| anyhow!("rules of {target}: {e}"))
}

fn auth_of(case: &Value) -> anyhow::Result<Option<Auth>> {
    match case.get("auth") {
        None | Some(Value::Null) => Ok(None),
        Some(a) => {
            let uid = a["uid"]
                .as_str()
                .ok_or_else(|| anyhow!("auth.uid must be a string"))?;
            let anonymous = a["isAnonymous"].as_bool().unwrap_or(false);
            let custom = a["customUserId"].as_str().map(str::to_owned);
            let derived = yun_auth::EndUser {
                uid: uid.to_owned(),
                anonymous,
                custom_id: custom.clone(),
            };
            let login_type = a["loginType"]
                .as_str()
                .unwrap_or(derived.login_type())
                .to_owned();
            Ok(Some(Auth {
                uid: uid.to_owned(),
                login_type,
                anonymous,
                custom_user_id: custom,
            }))
        }
    }
}

/// Whether the engine allows one case.
fn decide(rules: &RuleSet, case: &Value, auth: Option<&Auth>) -> anyhow::Result<bool> {
    let ctx = Context {
        auth,
        doc: case.get("doc"),
        request_data: case.get("data"),
        resource: case.get("resource"),
        now_ms: case["now"].as_i64().unwrap_or_else(yun_types::unix_ms),
    };
    Ok(match case["op"].as_str().unwrap_or_default() {
        "read" => rules.read.allows(&ctx),
        "query" => within(&rules.read, case.get("query").unwrap_or(&Value::Null), &ctx),
        "create" => rules.create.allows(&ctx),
        "update" => rules.update.allows(&ctx),
        "delete" => rules.delete.allows(&ctx),
        other => bail!("op {other:?} is not read, query, create, update or delete"),
    })
}

pub fn run(file: &Path, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let rules = spec["rules"]
        .as_object()
        .ok_or_else(|| anyhow!("\"rules\" must map targets to rules"))?;
    let cases = spec["cases"]
        .as_array()
        .ok_or_else(|| anyhow!("\"cases\" must be a list"))?;
    let mut results = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"]
            .as_str()
            .map_or_else(|| format!("case {}", i + 1), str::to_owned);
        let target = case["target"]
            .as_str()
            .ok_or_else(|| anyhow!("{name}: target is required"))?;
        let set = load_rules(
            rules
                .get(target)
                .ok_or_else(|| anyhow!("{name}: no rules for target {target:?}"))?,
            base,
            target,
        )?;
        let expect_allow = match case["expect"].as_str() {
            Some("allow") => true,
            Some("deny") => false,
            _ => bail!("{name}: expect is \"allow\" or \"deny\""),
        };
        let allowed = decide(
            &set,
            case,
            auth_of(case).with_context(|| name.clone())?.as_ref(),
        )
        .with_context(|| name.clone())?;
        results.push((
            name,
            target.to_owned(),
            case["op"].as_str().unwrap_or_default().to_owned(),
            expect_allow,
            allowed,
        ));
    }
    let failed = results.iter().filter(|r| r.3 != r.4).count();
    let verdict = |allowed: bool| if allowed { "allow" } else { "deny" };
    let report = serde_json::json!({
        "passed": results.len() - failed,
        "failed": failed,
        "cases": results.iter().map(|(name, target, op, want, got)| serde_json::json!({
            "name": name, "target": target, "op": op, "expect": verdict(*want), "got": verdict(*got), "ok": want == got,
        })).collect::<Vec<_>>(),
    });
    output::emit(json, &report, |_| {
        output::table(
            &["RESULT", "TARGET", "OP", "EXPECT", "CASE"],
            results
                .iter()
                .map(|(name, target, op, want, got)| {
                    vec![
                        if want == got {
                            "pass".into()
                        } else {
                            format!("FAIL (got {})", verdict(*got))
                        },
                        target.clone(),
                        op.clone(),
                        verdict(*want).into(),
                        name.clone(),
                    ]
                })
                .collect(),
        );
        println!(
            "{} of {} cases as expected",
            results.len() - failed,
            results.len()
        );
    });
    if failed > 0 {
        bail!("{failed} of {} rule cases failed", results.len());
    }
    Ok(())
}
