//! Proving that a query stays within a read rule, without reading any document.
//!
//! The rule is partially evaluated (everything but `doc` is known) into a disjunction of
//! conjunctions of atoms `doc.path OP constant`; the query, in MongoDB syntax, into a
//! disjunction of conjunctions of constraints on paths. The query is within the rule when
//! every one of its conjunctions implies every atom of some conjunction of the rule.
//! Constraints the prover does not understand are dropped, which only weakens the query:
//! a proof can fail where a cleverer one would succeed, never succeed where it should fail.
//!
//! One approximation, shared with CloudBase: a query's `{field: value}` matches arrays
//! that contain `value` (MongoDB semantics), while the rule `doc.field == value` does not.
//! Yun stamps `_openid` itself and never lets an end user write it, so owner rules are exact.

use serde_json::Value;

use crate::eval::{compare, equal, eval, order, truthy, truthy_or_false, Context};
use crate::expr::{CmpOp, Expr, Root};
use crate::Rule;

/// Past this many conjunctions on either side, the proof gives up (deny).
const MAX_TERMS: usize = 64;

#[derive(Debug, Clone)]
enum Atom {
    Cmp(String, CmpOp, Value),
    In(String, Vec<Value>),
    Truthy(String),
    /// Something about the document the prover cannot reason about.
    Opaque,
}

type Dnf<T> = Vec<Vec<T>>;

fn and<T: Clone>(a: Dnf<T>, b: Dnf<T>) -> Option<Dnf<T>> {
    if a.len().saturating_mul(b.len()) > MAX_TERMS {
        return None;
    }
    Some(
        a.iter()
            .flat_map(|x| b.iter().map(move |y| x.iter().chain(y).cloned().collect()))
            .collect(),
    )
}

fn or<T>(mut a: Dnf<T>, b: Dnf<T>) -> Option<Dnf<T>> {
    a.extend(b);
    (a.len() <= MAX_TERMS).then_some(a)
}

fn always<T>() -> Dnf<T> {
    vec![Vec::new()]
}

fn mentions_doc(e: &Expr) -> bool {
    match e {
        Expr::Path(Root::Doc, _) => true,
        Expr::Lit(_) | Expr::Path(..) => false,
        Expr::List(items) => items.iter().any(mentions_doc),
        Expr::Not(x) => mentions_doc(x),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) | Expr::In(a, b) => {
            mentions_doc(a) || mentions_doc(b)
        }
    }
}

fn doc_path(e: &Expr) -> Option<String> {
    match e {
        Expr::Path(Root::Doc, path) if !path.is_empty() => Some(path.join(".")),
        _ => None,
    }
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        same => same,
    }
}

fn opaque() -> Dnf<Atom> {
    vec![vec![Atom::Opaque]]
}

/// The rule as DNF over document atoms; `negate` pushes a `!` inwards.
fn rule_dnf(e: &Expr, ctx: &Context<'_>, negate: bool) -> Option<Dnf<Atom>> {
    if !mentions_doc(e) {
        // Exactly what the evaluator decides for this part.
        let holds = truthy_or_false(&eval(e, ctx)) != negate;
        return Some(if holds { always() } else { Vec::new() });
    }
    match (e, negate) {
        (Expr::And(a, b), false) | (Expr::Or(a, b), true) => {
            and(rule_dnf(a, ctx, negate)?, rule_dnf(b, ctx, negate)?)
        }
        (Expr::Or(a, b), false) | (Expr::And(a, b), true) => {
            or(rule_dnf(a, ctx, negate)?, rule_dnf(b, ctx, negate)?)
        }
        (Expr::Not(x), _) => rule_dnf(x, ctx, !negate),
        (Expr::Cmp(op, a, b), _) => {
            let (path, op, other) = match (doc_path(a), doc_path(b)) {
                (Some(p), None) if !mentions_doc(b) => (p, *op, b),
                (None, Some(p)) if !mentions_doc(a) => (p, flip(*op), a),
                _ => return Some(opaque()),
            };
            let op = match (op, negate) {
                (op, false) => op,
                (CmpOp::Eq, true) => CmpOp::Ne,
                (CmpOp::Ne, true) => CmpOp::Eq,
                // `!(a < b)` is not `a >= b` when the types differ.
                _ => return Some(opaque()),
            };
            match eval(other, ctx) {
                Some(value) => Some(vec![vec![Atom::Cmp(path, op, value)]]),
                // Compared with undefined: never provable (the evaluator may say true
                // for a negation; denying is the safe side).
                None => Some(Vec::new()),
            }
        }
        (Expr::In(a, b), false) => match (doc_path(a), mentions_doc(b)) {
            (Some(path), false) => match eval(b, ctx) {
                Some(Value::Array(items)) => Some(vec![vec![Atom::In(path, items)]]),
                _ => Some(Vec::new()),
            },
            _ => Some(opaque()),
        },
        (Expr::Path(Root::Doc, path), false) if !path.is_empty() => {
            Some(vec![vec![Atom::Truthy(path.join("."))]])
        }
        _ => Some(opaque()),
    }
}

/// One thing a query conjunction says about a field.
#[derive(Debug, Clone)]
enum Constraint {
    Eq(Value),
    In(Vec<Value>),
    Ne(Value),
    Nin(Vec<Value>),
    Range(CmpOp, Value),
}

fn field_constraints(spec: &Value) -> Vec<Constraint> {
    let Some(ops) = spec
        .as_object()
        .filter(|m| m.keys().all(|k| k.starts_with('$')))
    else {
        // A plain value, or an object to match whole.
        return vec![Constraint::Eq(spec.clone())];
    };
    if ops.is_empty() {
        return vec![Constraint::Eq(spec.clone())];
    }
    ops.iter()
        .filter_map(|(op, v)| match (op.as_str(), v) {
            ("$eq", v) => Some(Constraint::Eq(v.clone())),
            ("$ne", v) => Some(Constraint::Ne(v.clone())),
            ("$in", Value::Array(items)) => Some(Constraint::In(items.clone())),
            ("$nin", Value::Array(items)) => Some(Constraint::Nin(items.clone())),
            ("$gt", v) => Some(Constraint::Range(CmpOp::Gt, v.clone())),
            ("$gte", v) => Some(Constraint::Range(CmpOp::Ge, v.clone())),
            ("$lt", v) => Some(Constraint::Range(CmpOp::Lt, v.clone())),
            ("$lte", v) => Some(Constraint::Range(CmpOp::Le, v.clone())),
            // Anything else only narrows further: dropping it is safe.
            _ => None,
        })
        .collect()
}

fn query_dnf(query: &Value) -> Option<Dnf<(String, Constraint)>> {
    let Some(map) = query.as_object() else {
        return Some(always());
    };
    let mut acc = always();
    for (key, spec) in map {
        let part = match key.as_str() {
            "$and" => {
                let mut all = always();
                for sub in spec.as_array().into_iter().flatten() {
                    all = and(all, query_dnf(sub)?)?;
                }
                all
            }
            "$or" => {
                let mut any = Vec::new();
                for sub in spec.as_array().into_iter().flatten() {
                    any = or(any, query_dnf(sub)?)?;
                }
                if any.is_empty() {
                    always()
                } else {
                    any
                }
            }
            op if op.starts_with('$') => always(),
            field => vec![field_constraints(spec)
                .into_iter()
                .map(|c| (field.to_owned(), c))
                .collect()],
        };
        acc = and(acc, part)?;
    }
    Some(acc)
}

fn implies(constraint: &Constraint, atom: &Atom) -> bool {
    match (constraint, atom) {
        (Constraint::Eq(v), Atom::Cmp(_, op, c)) => compare(*op, v, c),
        (Constraint::Eq(v), Atom::In(_, list)) => list.iter().any(|i| equal(i, v)),
        (Constraint::Eq(v), Atom::Truthy(_)) => truthy(v),
        (Constraint::In(items), atom) => {
            !items.is_empty()
                && items
                    .iter()
                    .all(|v| implies(&Constraint::Eq(v.clone()), atom))
        }
        (Constraint::Ne(v), Atom::Cmp(_, CmpOp::Ne, c)) => equal(v, c),
        (Constraint::Nin(items), Atom::Cmp(_, CmpOp::Ne, c)) => items.iter().any(|i| equal(i, c)),
        (Constraint::Range(qop, v), Atom::Cmp(_, aop, c)) => {
            use std::cmp::Ordering::{Equal, Greater, Less};
            let Some(ord) = order(v, c) else { return false };
            match (qop, aop) {
                (CmpOp::Gt, CmpOp::Gt | CmpOp::Ge) => matches!(ord, Greater | Equal),
                (CmpOp::Ge, CmpOp::Gt) => ord == Greater,
                (CmpOp::Ge, CmpOp::Ge) => matches!(ord, Greater | Equal),
                (CmpOp::Lt, CmpOp::Lt | CmpOp::Le) => matches!(ord, Less | Equal),
                (CmpOp::Le, CmpOp::Lt) => ord == Less,
                (CmpOp::Le, CmpOp::Le) => matches!(ord, Less | Equal),
                _ => false,
            }
        }
        _ => false,
    }
}

fn atom_path(atom: &Atom) -> Option<&str> {
    match atom {
        Atom::Cmp(p, ..) | Atom::In(p, _) | Atom::Truthy(p) => Some(p),
        Atom::Opaque => None,
    }
}

/// Whether every document `query` can match satisfies `rule` in `ctx` (whose `doc` is
/// ignored). `query` is the stored form of a MongoDB-style filter.
pub fn within(rule: &Rule, query: &Value, ctx: &Context<'_>) -> bool {
    let expr = match rule {
        Rule::Const(b) => return *b,
        Rule::Expr { expr, .. } => expr,
    };
    let ctx = Context {
        doc: None,
        ..ctx.clone()
    };
    let (Some(rule), Some(query)) = (rule_dnf(expr, &ctx, false), query_dnf(query)) else {
        return false;
    };
    query.iter().all(|conjunction| {
        rule.iter().any(|needed| {
            needed.iter().all(|atom| {
                atom_path(atom).is_some_and(|path| {
                    conjunction
                        .iter()
                        .any(|(field, c)| field == path && implies(c, atom))
                })
            })
        })
    })
}
