//! `yun deploy`: the functions of a CloudBase project file, read as `tcb fn deploy` reads
//! it. Found in the folder (only that level): the object `cloudbase` of `package.json`
//! (which wins), else `cloudbaserc` or `cloudbaserc.json`. `{{env.X}}` comes from
//! `.env`, `.env.local` and `.env.<mode>` (the later wins), `{{tcb.envId}}` is the env
//! deployed to, `{{util.uid}}` 24 random characters. `functionDefaultConfig` is merged
//! under every `functions[]` entry (the entry wins), and an entry's older nested
//! `config: {…}` under its flat fields (as in tcb, a default is a flat field, so it wins
//! over a nested one). Code is in `dir`, else `functionRoot/name` (`./functions` by
//! default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// One function to deploy: its code folder and the deploy request's fields.
pub struct ProjectFunction {
    pub name: String,
    pub dir: PathBuf,
    pub fields: Map<String, Value>,
}

/// The project file in `dir`, its path and content.
fn find(dir: &Path) -> anyhow::Result<(PathBuf, Value)> {
    let package = dir.join("package.json");
    if let Ok(text) = std::fs::read_to_string(&package) {
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", package.display()))?;
        if let Some(config) = v.get("cloudbase").filter(|c| c.is_object()) {
            return Ok((package, config.clone()));
        }
    }
    for name in ["cloudbaserc", "cloudbaserc.json"] {
        let path = dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            return Ok((path, v));
        }
    }
    for name in [
        "cloudbaserc.yaml",
        "cloudbaserc.yml",
        "cloudbaserc.js",
        "cloudbase.config.js",
    ] {
        if dir.join(name).exists() {
            bail!("{name}: yun reads the project file as JSON; write it as cloudbaserc.json");
        }
    }
    bail!(
        "no cloudbaserc.json (or package.json \"cloudbase\") in {}",
        dir.display()
    )
}

/// `KEY=value` lines (`#` comments, `export `, quotes) of a dotenv file.
fn dotenv(path: &Path, into: &mut BTreeMap<String, String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            into.insert(k.trim().to_owned(), unquoted.to_owned());
        }
    }
}

/// Replaces every `{{ name }}` in the strings of `v`.
fn template(v: &mut Value, vars: &dyn Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<()> {
    match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let end = rest[start..]
                    .find("}}")
                    .with_context(|| format!("unclosed {{{{ in {s:?}"))?;
                out.push_str(&rest[..start]);
                out.push_str(&vars(rest[start + 2..start + end].trim())?);
                rest = &rest[start + end + 2..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            for item in items {
                template(item, vars)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                template(item, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `over` merged onto `base`, objects key by key (as lodash's `merge`).
fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(existing) => merge(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// The functions of the project in `dir`, for `env`, with `.env.<mode>` when given.
pub fn load(dir: &Path, env: &str, mode: Option<&str>) -> anyhow::Result<Vec<ProjectFunction>> {
    let (file, mut project) = find(dir)?;
    let mut vars = BTreeMap::new();
    for name in [".env".to_owned(), ".env.local".to_owned()]
        .into_iter()
        .chain(mode.map(|m| format!(".env.{m}")))
    {
        dotenv(&dir.join(name), &mut vars);
    }
    let lookup = |name: &str| -> anyhow::Result<String> {
        if let Some(key) = name.strip_prefix("env.") {
            return vars.get(key).cloned().with_context(|| {
                format!("{{{{{name}}}}}: {key} is in none of .env, .env.local, .env.MODE")
            });
        }
        match name {
            "tcb.envId" => Ok(env.to_owned()),
            "util.uid" => Ok(yun_types::new_id("")[..24].to_owned()),
            other => bail!("{{{{{other}}}}}: known are env.NAME, tcb.envId, util.uid"),
        }
    };
    // As tcb: `{{ }}` is read in version 2 files, here in what deploys functions.
    let version = project
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or("1.0");
    if version.starts_with('2') {
        for key in ["functionRoot", "functionDefaultConfig", "functions"] {
            if let Some(v) = project.get_mut(key) {
                template(v, &lookup).with_context(|| format!("in {}", file.display()))?;
            }
        }
    }
    if let Some(id) = project.get("envId").and_then(Value::as_str) {
        if id != env && !id.contains("{{") {
            eprintln!(
                "note: {} names env {id}; deploying to env {env} (from --env or the credentials)",
                file.display()
            );
        }
    }
    let root = dir.join(
        project
            .get("functionRoot")
            .and_then(Value::as_str)
            .unwrap_or("./functions"),
    );
    let defaults = project
        .get("functionDefaultConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let entries = project
        .get("functions")
        .and_then(Value::as_array)
        .with_context(|| format!("{} has no functions array", file.display()))?;
    entries
        .iter()
        .map(|entry| {
            let merged = merge(&defaults, entry);
            // The older shape nests settings under `config`; flat fields win.
            let nested = merged.get("config").cloned().unwrap_or_else(|| json!({}));
            let f = merge(&nested, &merged);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .context("a functions[] entry has no name")?
                .to_owned();
            yun_types::FunctionName::parse(&name)
                .map_err(|e| anyhow::anyhow!("function name {name:?}: {e}"))?;
            let code = match f.get("dir").and_then(Value::as_str) {
                Some(d) => dir.join(d),
                None => root.join(&name),
            };
            inside(dir, &code).with_context(|| format!("{name}: its code folder"))?;
            Ok(ProjectFunction {
                fields: fields(&name, &f)?,
                name,
                dir: code,
            })
        })
        .collect()
}

/// Refuses a code folder outside the project (a `dir` of `../..` or `/`).
fn inside(project: &Path, code: &Path) -> anyhow::Result<()> {
    let (root, code) = (
        project
            .canonicalize()
            .with_context(|| format!("{}", project.display()))?,
        code.canonicalize()
            .with_context(|| format!("{} does not exist", code.display()))?,
    );
    if !code.starts_with(&root) {
        bail!(
            "{} is outside the project {}",
            code.display(),
            root.display()
        );
    }
    Ok(())
}

/// A functions[] entry as a deploy request's fields.
fn fields(name: &str, f: &Value) -> anyhow::Result<Map<String, Value>> {
    if let Some(runtime) = f.get("runtime").and_then(Value::as_str) {
        if !runtime.to_ascii_lowercase().starts_with("nodejs") {
            bail!("{name}: runtime {runtime}: Yun runs Node.js functions");
        }
    }
    if f.get("type").and_then(Value::as_str) == Some("HTTP") {
        bail!("{name}: type HTTP (a web function with scf_bootstrap) is not supported; use path for an HTTP-triggered function");
    }
    let mut out = Map::new();
    if let Some(h) = f.get("handler") {
        out.insert("handler".into(), h.clone());
    }
    if let Some(t) = f.get("timeout").and_then(Value::as_f64) {
        out.insert("timeout_ms".into(), json!((t * 1000.0).round() as u64));
    }
    if let Some(m) = f.get("memorySize").or_else(|| f.get("memory")) {
        out.insert("memory_mb".into(), m.clone());
    }
    if let Some(vars) = f.get("envVariables").and_then(Value::as_object) {
        let vars: Map<String, Value> = vars
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), Value::String(text))
            })
            .collect();
        out.insert("env_vars".into(), Value::Object(vars));
    }
    if let Some(path) = f.get("path") {
        out.insert("http_path".into(), path.clone());
    }
    // Listed triggers replace the function's; none listed keeps the ones it has.
    if let Some(triggers) = f.get("triggers") {
        out.insert("triggers".into(), triggers.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_file_is_read_as_tcb_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cloudbaserc.json"),
            r#"{
              "version": "2.0",
              "envId": "{{envId}}",
              "functionRoot": "./cloud",
              "functionDefaultConfig": {"timeout": 5, "envVariables": {"A": "{{env.GREETING}}", "B": "b"}},
              "functions": [
                {"name": "flat", "memorySize": 128, "envVariables": {"B": "own"},
                 "triggers": [{"name": "t", "type": "timer", "config": "0 0 2 1 * * *"}]},
                {"name": "nested", "dir": "./elsewhere", "config": {"timeout": 9, "runtime": "Nodejs18.15"}, "timeout": 7}
              ]
            }"#,
        )
        .unwrap();
        std::fs::write(dir.path().join(".env"), "GREETING=hi\n# a comment\n").unwrap();
        std::fs::write(dir.path().join(".env.test"), "export GREETING=\"test\"\n").unwrap();
        for code in ["cloud/flat", "elsewhere"] {
            std::fs::create_dir_all(dir.path().join(code)).unwrap();
        }
        let fns = load(dir.path(), "dev", Some("test")).unwrap();
        assert_eq!(fns[0].name, "flat");
        assert_eq!(fns[0].dir, dir.path().join("./cloud").join("flat"));
        assert_eq!(fns[0].fields["timeout_ms"], 5000);
        assert_eq!(fns[0].fields["memory_mb"], 128);
        assert_eq!(fns[0].fields["env_vars"], json!({"A": "test", "B": "own"}));
        assert_eq!(fns[0].fields["triggers"][0]["config"], "0 0 2 1 * * *");
        assert_eq!(fns[1].dir, dir.path().join("./elsewhere"));
        assert_eq!(
            fns[1].fields["timeout_ms"], 7000,
            "flat fields win over config"
        );
        assert!(fns[1].fields.get("triggers").is_none(), "none listed: kept");
        let without_mode = load(dir.path(), "dev", None).unwrap();
        assert_eq!(without_mode[0].fields["env_vars"]["A"], "hi");
    }

    #[test]
    fn project_files_that_cannot_be_deployed_say_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("functions/f")).unwrap();
        let write = |text: &str| std::fs::write(dir.path().join("cloudbaserc.json"), text).unwrap();
        let err = |text: &str| {
            write(text);
            format!("{:#}", load(dir.path(), "dev", None).err().unwrap())
        };
        for (file, says) in [
            (
                r#"{"functions": [{"name": "f", "runtime": "Python3.9"}]}"#,
                "Yun runs Node.js",
            ),
            (
                r#"{"version": "2.0", "functions": [{"name": "{{env.NOPE}}"}]}"#,
                "NOPE is in none of",
            ),
            (
                r#"{"version": "2.0", "functions": [{"name": "{{what}}"}]}"#,
                "known are",
            ),
            (r#"{"functions": [{"timeout": 3}]}"#, "has no name"),
            (r#"{"envId": "x"}"#, "no functions array"),
            (
                r#"{"functions": [{"name": "../../prod/functions/f"}]}"#,
                "function name",
            ),
            (
                r#"{"functions": [{"name": "f", "dir": "../"}]}"#,
                "outside the project",
            ),
        ] {
            let e = err(file);
            assert!(e.contains(says), "{file}: {e}");
        }
        // Version 1 files are read as written.
        write(r#"{"functions": [{"name": "f", "envVariables": {"T": "{{kept}}"}}]}"#);
        assert_eq!(
            load(dir.path(), "dev", None).unwrap()[0].fields["env_vars"]["T"],
            "{{kept}}"
        );
        std::fs::remove_file(dir.path().join("cloudbaserc.json")).unwrap();
        std::fs::write(dir.path().join("cloudbaserc.js"), "module.exports = {}").unwrap();
        let e = format!("{:#}", load(dir.path(), "dev", None).err().unwrap());
        assert!(e.contains("write it as cloudbaserc.json"), "{e}");
    }
}
