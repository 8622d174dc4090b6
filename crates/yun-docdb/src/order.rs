//! Equality and the total order of values, as MongoDB defines them for stored BSON:
//! types are compared by bracket first (null < numbers < strings < objects < arrays <
//! object ids < booleans < dates < regexes), then by value within the bracket.

use std::cmp::Ordering;

use serde_json::Value;

use crate::value::as_date;

/// The type bracket of a value; `None` is a missing field, which sorts with null.
pub fn bracket(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(Value::Array(_)) => 5,
        Some(Value::Bool(_)) => 8,
        Some(v @ Value::Object(m)) => {
            if as_date(v).is_some() {
                9
            } else if m.len() == 1 && m.contains_key("$oid") {
                7
            } else if m.len() == 1 && m.contains_key("$regularExpression") {
                11
            } else {
                4
            }
        }
    }
}

fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let (x, y) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

/// Total order over stored values (missing = null).
pub fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ba, bb) = (bracket(a), bracket(b));
    if ba != bb {
        return ba.cmp(&bb);
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for (p, q) in x.iter().zip(y) {
                let o = compare(Some(p), Some(q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Some(x @ Value::Object(mx)), Some(y @ Value::Object(my))) => {
            if let (Some(dx), Some(dy)) = (as_date(x), as_date(y)) {
                return dx.cmp(&dy);
            }
            for ((kx, vx), (ky, vy)) in mx.iter().zip(my) {
                let o = compare(Some(vx), Some(vy)).then_with(|| kx.cmp(ky));
                if o != Ordering::Equal {
                    return o;
                }
            }
            mx.len().cmp(&my.len())
        }
        _ => Ordering::Equal,
    }
}

/// MongoDB equality: numeric across int/double, objects equal in key order.
pub fn equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && equal(Some(vx), Some(vy)))
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(Some(p), Some(q)))
        }
        _ => bracket(a) == bracket(b) && compare(a, b) == Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_then_values() {
        let ordered = [
            json!(null),
            json!(-1),
            json!(2.5),
            json!(3),
            json!("a"),
            json!("b"),
            json!({"a": 1}),
            json!([1]),
            json!({"$oid": "00"}),
            json!(false),
            json!(true),
            json!({"$date": 5}),
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                compare(Some(&w[0]), Some(&w[1])),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(compare(None, Some(&json!(null))), Ordering::Equal);
        assert!(equal(Some(&json!(1)), Some(&json!(1.0))));
        assert!(!equal(
            Some(&json!({"a": 1, "b": 2})),
            Some(&json!({"b": 2, "a": 1}))
        ));
        assert!(!equal(Some(&json!("1")), Some(&json!(1))));
    }
}
