use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct NameError {
    kind: &'static str,
    value: String,
    rule: &'static str,
}

/// Path segments the HTTP surfaces own; an env id may not shadow them (`/{env}/…` routes).
const RESERVED_ENV_IDS: &[&str] = &[
    "admin", "api", "web", "auth", "files", "healthz", "readyz", "metrics",
];

// The names are shared (`Arc<str>`), not owned strings: every request, record and log
// line carries its env and function, and each copy would be an allocation.

/// An environment id. CloudBase's own rule (`^[a-z0-9_-]{1,40}$`, the SDKs prefix hosts
/// with it), plus the reserved route names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct EnvId(Arc<str>);

impl EnvId {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let ok = !value.is_empty()
            && value.len() <= 40
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(NameError {
                kind: "env id",
                value: value.into(),
                rule: "1-40 characters of a-z, 0-9, '_' and '-'",
            });
        }
        if RESERVED_ENV_IDS.contains(&value) {
            return Err(NameError {
                kind: "env id",
                value: value.into(),
                rule: "reserved route name",
            });
        }
        Ok(Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A function name, SCF's rule: starts with a letter, letters, digits, '-' and '_',
/// at most 60 characters, not ending in '-' or '_'. It is also a directory name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(Arc<str>);

impl FunctionName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bytes = value.as_bytes();
        let ok = (1..=60).contains(&bytes.len())
            && bytes[0].is_ascii_alphabetic()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            && !value.ends_with(['-', '_']);
        if !ok {
            return Err(NameError {
                kind: "function name",
                value: value.into(),
                rule: "1-60 characters of letters, digits, '-' and '_', starting with a letter",
            });
        }
        Ok(Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::parse(&value)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0.to_string()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_impls!(EnvId);
string_newtype_impls!(FunctionName);

/// A random id: `prefix` then 32 lowercase hex digits (128 bits from the OS RNG).
pub fn new_id(prefix: &str) -> String {
    hex_id(prefix, rand::rng().random())
}

/// An id that sorts by creation time: 32 lowercase hex digits, the first 12 the Unix time
/// in milliseconds, the rest 80 random bits (MongoDB's ObjectId leads with its time too).
/// For request and document ids, which are keys of B-tree indexes: a random key dirties a
/// different page on every insert, a time-ordered one appends. Never for secrets.
pub fn new_sortable_id() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[..6].copy_from_slice(&(crate::unix_ms() as u64).to_be_bytes()[2..]);
    hex_id("", bytes)
}

/// A W3C trace-context span id: 16 lowercase hex digits, never all zero.
pub fn new_span_id() -> String {
    let id: u64 = rand::rng().random::<u64>().max(1);
    format!("{id:016x}")
}

fn hex_id(prefix: &str, bytes: [u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_ids_follow_cloudbase_rule() {
        assert!(EnvId::parse("dev").is_ok());
        assert!(EnvId::parse("prod-1_a").is_ok());
        assert!(EnvId::parse("").is_err());
        assert!(EnvId::parse("Dev").is_err());
        assert!(EnvId::parse("a/b").is_err());
        assert!(EnvId::parse(&"a".repeat(41)).is_err());
        assert!(EnvId::parse("admin").is_err());
    }

    #[test]
    fn function_names_are_safe_directory_names() {
        assert!(FunctionName::parse("hello").is_ok());
        assert!(FunctionName::parse("a-b_c1").is_ok());
        for bad in ["", "1abc", "../x", "a/b", "a.b", "abc-", &"a".repeat(61)] {
            assert!(FunctionName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_prefixed_hex() {
        let id = new_id("AKID");
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("AKID"));
        assert_ne!(new_id(""), new_id(""));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn sortable_ids_lead_with_their_time() {
        let before = crate::unix_ms();
        let id = new_sortable_id();
        let after = crate::unix_ms();
        assert_eq!(id.len(), 32);
        let at = i64::from_str_radix(&id[..12], 16).unwrap();
        assert!((before..=after).contains(&at), "{id}");
        assert_ne!(
            new_sortable_id(),
            new_sortable_id(),
            "80 random bits follow"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_sortable_id() > id, "a later id sorts after");
    }
}
