//! Security rules for end users, CloudBase style.
//!
//! A collection (or the storage of an env) has a rule set: one of four presets or custom
//! JSON whose `read`/`write` (or `create`/`update`/`delete`) are `true`, `false` or an
//! expression over `auth`, `doc`, `request.data`, `now` (files: `resource`). Admin
//! callers never reach this crate; end users always do.
//!
//! - Single documents and new documents are checked by evaluating the rule on them.
//! - A query is allowed only if it provably stays within the read rule ([`prove`]):
//!   Yun refuses rather than silently filtering, as CloudBase does.

mod eval;
mod expr;
mod prove;

use serde_json::{json, Map, Value};

pub use eval::{Auth, Context};
pub use expr::{parse, CmpOp, Expr, Root};
pub use prove::within;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule syntax: {0}")]
    Syntax(String),
    #[error("rules: {0}")]
    Shape(String),
}

/// One rule: a constant or an expression (kept with its source for display).
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Const(bool),
    Expr { source: String, expr: Expr },
}

impl Rule {
    fn from_json(key: &str, value: &Value) -> Result<Self, RuleError> {
        match value {
            Value::Bool(b) => Ok(Rule::Const(*b)),
            Value::String(source) => Ok(Rule::Expr {
                source: source.clone(),
                expr: parse(source)?,
            }),
            _ => Err(RuleError::Shape(format!(
                "{key} must be true, false or an expression string"
            ))),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Rule::Const(b) => Value::Bool(*b),
            Rule::Expr { source, .. } => Value::String(source.clone()),
        }
    }

    /// Whether the rule allows the action in `ctx`. Anything the rule cannot read (a
    /// missing field, a type mismatch) reads as null and compares false: deny.
    pub fn allows(&self, ctx: &Context<'_>) -> bool {
        match self {
            Rule::Const(b) => *b,
            Rule::Expr { expr, .. } => eval::truthy_or_false(&eval::eval(expr, ctx)),
        }
    }
}

/// The presets of CloudBase's console, by their API names.
pub const PRESETS: &[(&str, &str)] = &[
    ("READONLY", "everyone reads; the creator writes"),
    ("PRIVATE", "only the creator reads and writes"),
    (
        "ADMINWRITE",
        "everyone reads; only admins (server SDKs) write",
    ),
    ("ADMINONLY", "only admins (server SDKs) read and write"),
];

const OWNER_DOC: &str = "doc._openid == auth.openid";
const OWNER_FILE: &str = "resource.openid == auth.openid";

/// What a rule set applies to: the owner field differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Collection,
    Storage,
}

/// The rules of one collection or of an env's storage.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    /// The preset name, when the set is one.
    pub preset: Option<String>,
    pub read: Rule,
    pub create: Rule,
    pub update: Rule,
    pub delete: Rule,
}

impl RuleSet {
    /// A preset name (`"PRIVATE"`), or custom JSON: `{read, write}` and/or
    /// `{create, update, delete}` (the specific ones win over `write`).
    pub fn parse(spec: &Value, target: Target) -> Result<Self, RuleError> {
        let owner = match target {
            Target::Collection => OWNER_DOC,
            Target::Storage => OWNER_FILE,
        };
        if let Value::String(name) = spec {
            let (read, write) = match name.as_str() {
                "READONLY" => (json!(true), json!(owner)),
                "PRIVATE" => (json!(owner), json!(owner)),
                "ADMINWRITE" => (json!(true), json!(false)),
                "ADMINONLY" => (json!(false), json!(false)),
                other => {
                    return Err(RuleError::Shape(format!(
                        "unknown preset {other:?}; presets are READONLY, PRIVATE, ADMINWRITE, ADMINONLY, or give {{\"read\": …, \"write\": …}}"
                    )))
                }
            };
            let mut set = Self::parse(&json!({ "read": read, "write": write }), target)?;
            set.preset = Some(name.clone());
            return Ok(set);
        }
        let map = spec
            .as_object()
            .ok_or_else(|| RuleError::Shape("rules are a preset name or a JSON object".into()))?;
        if let Some(unknown) = map
            .keys()
            .find(|k| !["read", "write", "create", "update", "delete"].contains(&k.as_str()))
        {
            return Err(RuleError::Shape(format!(
                "unknown rule {unknown:?}; rules are read, write, create, update, delete"
            )));
        }
        let get = |key: &str| -> Result<Option<Rule>, RuleError> {
            map.get(key).map(|v| Rule::from_json(key, v)).transpose()
        };
        let read = get("read")?.ok_or_else(|| RuleError::Shape("read is required".into()))?;
        let write = get("write")?;
        let specific = |key: &str| -> Result<Rule, RuleError> {
            get(key)?
                .or_else(|| write.clone())
                .ok_or_else(|| RuleError::Shape(format!("{key} (or write) is required")))
        };
        Ok(Self {
            preset: None,
            read,
            create: specific("create")?,
            update: specific("update")?,
            delete: specific("delete")?,
        })
    }

    /// The form to store and show: the preset name, or the rules object.
    pub fn to_json(&self) -> Value {
        if let Some(name) = &self.preset {
            return Value::String(name.clone());
        }
        let mut map = Map::new();
        map.insert("read".into(), self.read.to_json());
        if self.create == self.update && self.update == self.delete {
            map.insert("write".into(), self.create.to_json());
        } else {
            map.insert("create".into(), self.create.to_json());
            map.insert("update".into(), self.update.to_json());
            map.insert("delete".into(), self.delete.to_json());
        }
        Value::Object(map)
    }

    /// What applies when none was set: CloudBase's default for a new collection, and
    /// its default for storage.
    pub fn default_for(target: Target) -> Self {
        let name = match target {
            Target::Collection => "PRIVATE",
            Target::Storage => "READONLY",
        };
        Self::parse(&json!(name), target).expect("presets parse")
    }
}

#[cfg(test)]
mod tests;
