//! Values as stored and as sent. The SDKs send canonical Extended JSON v2 strings
//! (`{"$numberInt":"3"}`, `{"$date":{"$numberLong":"…"}}`, CloudBase's own
//! `{"$tcb_server_date":{"offset":…}}`); Yun stores plain JSON where it can, so SQLite's
//! JSON functions see real numbers:
//!
//! | EJSON | stored |
//! |---|---|
//! | `$numberInt`, `$numberLong`, finite `$numberDouble` | JSON number |
//! | `$date` (any form), `$tcb_server_date` | `{"$date": <ms since epoch>}` |
//! | `$oid`, `$regularExpression`, `$numberDecimal`, non-finite `$numberDouble` | kept as is |
//!
//! Responses are relaxed EJSON, which the SDKs' `EJSON.parse` reads.

use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};
use yun_types::YunError;

/// How deep a document may nest (the stack guard for every recursive walk).
pub const MAX_DEPTH: usize = 100;

fn bad(message: impl Into<String>) -> YunError {
    YunError::invalid_param(message)
}

fn int_from(text: &str, what: &str) -> Result<i64, YunError> {
    text.parse::<i64>()
        .map_err(|_| bad(format!("{what} {text:?} is not an integer")))
}

/// Decodes one EJSON value into its stored form. `now_ms` resolves server dates.
pub fn from_ejson(value: Value, now_ms: i64) -> Result<Value, YunError> {
    decode(value, now_ms, 0)
}

fn decode(value: Value, now_ms: i64, depth: usize) -> Result<Value, YunError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("value nests deeper than {MAX_DEPTH} levels")));
    }
    match value {
        Value::Array(items) => Ok(Value::Array(
            items
                .into_iter()
                .map(|v| decode(v, now_ms, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(map) => decode_object(map, now_ms, depth),
        scalar => Ok(scalar),
    }
}

fn decode_object(map: Map<String, Value>, now_ms: i64, depth: usize) -> Result<Value, YunError> {
    if map.len() == 1 {
        let (key, inner) = map.iter().next().expect("one entry");
        match (key.as_str(), inner) {
            ("$numberInt" | "$numberLong", Value::String(s)) => {
                return Ok(Value::from(int_from(s, key)?))
            }
            ("$numberDouble", Value::String(s)) => {
                let f: f64 = s
                    .parse()
                    .map_err(|_| bad(format!("$numberDouble {s:?} is not a number")))?;
                return Ok(
                    Number::from_f64(f).map_or_else(|| Value::Object(map.clone()), Value::Number)
                );
            }
            ("$date", inner) => return Ok(date(date_ms(inner)?)),
            ("$tcb_server_date", Value::Object(spec)) => {
                let offset = match spec.get("offset") {
                    None => 0,
                    Some(v) => as_i64(&decode(v.clone(), now_ms, depth + 1)?)
                        .ok_or_else(|| bad("$tcb_server_date offset must be an integer"))?,
                };
                return Ok(date(now_ms + offset));
            }
            ("$oid" | "$regularExpression" | "$numberDecimal", _) => return Ok(Value::Object(map)),
            _ => {}
        }
    }
    let mut out = Map::with_capacity(map.len());
    for (k, v) in map {
        out.insert(k, decode(v, now_ms, depth + 1)?);
    }
    Ok(Value::Object(out))
}

fn date_ms(inner: &Value) -> Result<i64, YunError> {
    match inner {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| bad("$date must be whole milliseconds")),
        Value::Object(o) => match o.get("$numberLong") {
            Some(Value::String(s)) => int_from(s, "$date"),
            _ => Err(bad(
                "$date must be {\"$numberLong\": \"…\"}, a number or an ISO string",
            )),
        },
        Value::String(iso) => {
            time::OffsetDateTime::parse(iso, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| bad(format!("$date {iso:?} is not an ISO-8601 date")))
        }
        _ => Err(bad("malformed $date")),
    }
}

/// The stored form of a date.
pub fn date(ms: i64) -> Value {
    let mut m = Map::new();
    m.insert("$date".into(), Value::from(ms));
    Value::Object(m)
}

/// Milliseconds of a stored date, if `v` is one.
pub fn as_date(v: &Value) -> Option<i64> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("$date").and_then(Value::as_i64),
        _ => None,
    }
}

pub fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// Parses an EJSON text from the wire into its stored form.
pub fn parse_ejson(text: &str, now_ms: i64) -> Result<Value, YunError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("malformed EJSON: {e}")))?;
    from_ejson(value, now_ms)
}

/// Relaxed EJSON for responses: dates become `{"$date":{"$numberLong":"…"}}`, which
/// `EJSON.parse` turns back into a `Date`.
/// A stored value as relaxed Extended JSON (dates as `{"$date":{"$numberLong":…}}`), written
/// straight from the stored tree: responses serialize every document, and building a
/// converted copy first was a measurable share of a query's CPU.
pub struct Ejson<'a>(pub &'a Value);

impl Serialize for Ejson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array(items) => s.collect_seq(items.iter().map(Ejson)),
            Value::Object(map) => match as_date(self.0) {
                Some(ms) => s.collect_map(std::iter::once(("$date", NumberLong(ms)))),
                None => s.collect_map(map.iter().map(|(k, v)| (k, Ejson(v)))),
            },
            scalar => scalar.serialize(s),
        }
    }
}

struct NumberLong(i64);

impl Serialize for NumberLong {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(std::iter::once(("$numberLong", self.0.to_string())))
    }
}

/// [`Ejson`] as text.
pub fn to_ejson_text(value: &Value) -> String {
    serde_json::to_string(&Ejson(value)).expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_captured_add_payload() {
        // From the protocol page, §3.1.
        let wire = r#"{"title":"buy milk","done":false,"n":{"$numberInt":"3"},"price":{"$numberDouble":"9.5"},"big":{"$numberLong":"12345678901234"},"due":{"$date":{"$numberLong":"1717228800000"}},"createdAt":{"$tcb_server_date":{"offset":{"$numberInt":"0"}}},"loc":{"type":"Point","coordinates":[{"$numberDouble":"113.32"},{"$numberDouble":"23.12"}]},"tags":["x","y"],"meta":{"a":{"b":null}},"re":{"$regularExpression":{"pattern":"ab+c","options":"i"}},"oid":{"$oid":"65a1b2c3d4e5f60718293a4b"}}"#;
        let v = parse_ejson(wire, 1_000).unwrap();
        assert_eq!(v["n"], json!(3));
        assert_eq!(v["price"], json!(9.5));
        assert_eq!(v["big"], json!(12345678901234i64));
        assert_eq!(v["due"], json!({"$date": 1717228800000i64}));
        assert_eq!(v["createdAt"], json!({"$date": 1000}));
        assert_eq!(v["loc"]["coordinates"], json!([113.32, 23.12]));
        assert_eq!(v["re"]["$regularExpression"]["pattern"], "ab+c");
        assert_eq!(v["oid"]["$oid"], "65a1b2c3d4e5f60718293a4b");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "title", "key order is kept");
        let text = to_ejson_text(&v);
        assert!(
            text.starts_with(r#"{"title":"buy milk","#),
            "key order is kept: {text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back["due"],
            json!({"$date": {"$numberLong": "1717228800000"}})
        );
        assert_eq!(back["meta"], json!({"a": {"b": null}}));
        assert_eq!(
            parse_ejson(&text, 0).unwrap(),
            v,
            "the text reads back as the same value"
        );
    }

    #[test]
    fn server_dates_take_their_offset_and_bad_values_are_errors() {
        assert_eq!(
            parse_ejson(
                r#"{"$tcb_server_date":{"offset":{"$numberInt":"3600000"}}}"#,
                5
            )
            .unwrap(),
            json!({"$date": 3600005})
        );
        assert_eq!(
            parse_ejson(r#"{"$date":"2024-06-01T08:00:00Z"}"#, 0).unwrap(),
            json!({"$date": 1717228800000i64})
        );
        for bad in [
            r#"{"$numberInt":"x"}"#,
            r#"{"$date":true}"#,
            "{",
            r#"{"$numberDouble":"abc"}"#,
        ] {
            assert!(parse_ejson(bad, 0).is_err(), "{bad}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_ejson(&deep, 0).is_err());
    }
}
