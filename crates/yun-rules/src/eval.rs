//! Evaluating an expression against what is known of one request.

use serde_json::{json, Value};

use crate::expr::{CmpOp, Expr, Root};

/// The signed-in end user, as rules see it.
#[derive(Debug, Clone)]
pub struct Auth {
    pub uid: String,
    pub login_type: String,
    pub anonymous: bool,
    pub custom_user_id: Option<String>,
}

impl Auth {
    /// `auth` in a rule: `openid` is the uid (the `_openid` Yun stamps on documents).
    fn to_value(&self) -> Value {
        json!({
            "uid": self.uid,
            "openid": self.uid,
            "loginType": self.login_type,
            "isAnonymous": self.anonymous,
            "customUserId": self.custom_user_id,
        })
    }
}

/// What a rule can read. Absent parts read as null.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub auth: Option<&'a Auth>,
    pub doc: Option<&'a Value>,
    pub request_data: Option<&'a Value>,
    pub resource: Option<&'a Value>,
    pub now_ms: i64,
}

/// `None` is "undefined": a field of `auth` when nobody is signed in. Every comparison
/// with it is false, `!=` included, so `doc._openid == auth.openid` cannot hold for an
/// unowned document and a signed-out caller (null would equal null).
pub(crate) fn read_path(root: Root, path: &[String], ctx: &Context<'_>) -> Option<Value> {
    Some(match root {
        Root::Auth => match ctx.auth {
            Some(a) => walk_ref(&a.to_value(), path),
            None if path.is_empty() => Value::Null,
            None => return None,
        },
        Root::Doc => ctx.doc.map_or(Value::Null, |d| walk_ref(d, path)),
        // `request.data.x`: the path starts with "data".
        Root::Request => ctx
            .request_data
            .map_or(Value::Null, |d| walk_ref(d, &path[1..])),
        Root::Now => {
            if path.is_empty() {
                Value::from(ctx.now_ms)
            } else {
                Value::Null
            }
        }
        Root::Resource => ctx.resource.map_or(Value::Null, |r| walk_ref(r, path)),
    })
}

/// The value at `path` inside `value`, or null.
fn walk_ref(value: &Value, path: &[String]) -> Value {
    let mut at = value;
    for seg in path {
        at = match at {
            Value::Object(map) => match map.get(seg) {
                Some(v) => v,
                None => return Value::Null,
            },
            Value::Array(items) => match seg.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(v) => v,
                None => return Value::Null,
            },
            _ => return Value::Null,
        };
    }
    at.clone()
}

pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Equality as rules mean it: numbers by value (`1 == 1.0`), the rest structurally.
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Order between two values of one kind (numbers, strings, stored dates); none between
/// kinds, so `<` on mismatched types is false.
pub(crate) fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let date = |v: &Value| {
        v.as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get("$date"))
            .and_then(Value::as_f64)
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => date(a)?.partial_cmp(&date(b)?),
    }
}

pub(crate) fn compare(op: CmpOp, a: &Value, b: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        CmpOp::Eq => equal(a, b),
        CmpOp::Ne => !equal(a, b),
        CmpOp::Lt => order(a, b) == Some(Less),
        CmpOp::Le => matches!(order(a, b), Some(Less | Equal)),
        CmpOp::Gt => order(a, b) == Some(Greater),
        CmpOp::Ge => matches!(order(a, b), Some(Greater | Equal)),
    }
}

pub(crate) fn member(item: &Value, list: &Value) -> bool {
    match list {
        Value::Array(items) => items.iter().any(|i| equal(i, item)),
        Value::Object(map) => item.as_str().is_some_and(|k| map.contains_key(k)),
        _ => false,
    }
}

pub(crate) fn truthy_or_false(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(truthy)
}

/// The value of `expr`; `None` when it reads something undefined (see [`read_path`]).
pub fn eval(expr: &Expr, ctx: &Context<'_>) -> Option<Value> {
    Some(match expr {
        Expr::Lit(v) => v.clone(),
        Expr::Path(root, path) => return read_path(*root, path, ctx),
        Expr::List(items) => {
            Value::Array(items.iter().map(|e| eval(e, ctx)).collect::<Option<_>>()?)
        }
        Expr::Not(e) => Value::Bool(!truthy_or_false(&eval(e, ctx))),
        Expr::And(a, b) => {
            Value::Bool(truthy_or_false(&eval(a, ctx)) && truthy_or_false(&eval(b, ctx)))
        }
        Expr::Or(a, b) => {
            Value::Bool(truthy_or_false(&eval(a, ctx)) || truthy_or_false(&eval(b, ctx)))
        }
        Expr::Cmp(op, a, b) => Value::Bool(match (eval(a, ctx), eval(b, ctx)) {
            (Some(x), Some(y)) => compare(*op, &x, &y),
            _ => false,
        }),
        Expr::In(a, b) => Value::Bool(match (eval(a, ctx), eval(b, ctx)) {
            (Some(x), Some(y)) => member(&x, &y),
            _ => false,
        }),
    })
}
