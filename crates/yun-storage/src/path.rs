//! Cloud paths and file ids. A path is stored exactly as it will be served, so every
//! rule here is about one name meaning one thing to every client: no traversal, no
//! encoded forms, one Unicode normal form.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use yun_types::{EnvId, YunError};

/// The longest path, in bytes (COS's key limit).
const MAX_PATH_BYTES: usize = 850;

/// A validated path inside an env's storage, like `albums/2024/cat.jpg`, in NFC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloudPath(String);

fn refuse(raw: &str, why: &str) -> YunError {
    YunError::invalid_param(format!("invalid cloud path {raw:?}: {why}"))
}

impl CloudPath {
    pub fn parse(raw: &str) -> Result<Self, YunError> {
        // NFC: "é" typed on a Mac (decomposed) and on Windows (composed) is one file.
        let path: String = raw.nfc().collect();
        if path.is_empty() {
            return Err(refuse(raw, "it is empty"));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(refuse(raw, "longer than 850 bytes"));
        }
        if path.starts_with('/') {
            return Err(refuse(
                raw,
                "absolute paths are refused; paths are relative to the env's storage",
            ));
        }
        if let Some(c) = path
            .chars()
            .find(|c| c.is_control() || matches!(c, '\\' | '?' | '#'))
        {
            return Err(refuse(raw, &format!("{c:?} is not allowed in a path")));
        }
        if has_percent_escape(&path) {
            // A browser would decode `%2e%2e` to `..`; Yun would not. Refuse the ambiguity.
            return Err(refuse(raw, "percent-encoded sequences are not allowed"));
        }
        for segment in path.split('/') {
            match segment {
                "" => return Err(refuse(raw, "empty segment (a doubled or trailing '/')")),
                "." | ".." => return Err(refuse(raw, "'.' and '..' segments are not allowed")),
                _ => {}
            }
        }
        Ok(Self(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with each segment percent-encoded, for a URL path.
    pub fn url_encoded(&self) -> String {
        self.0
            .split('/')
            .map(encode_segment)
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl fmt::Display for CloudPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn has_percent_escape(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// RFC 3986 unreserved characters stay; everything else is `%XX`.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes of a URL path once; `None` when the result is not UTF-8.
pub fn decode_url_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `cloud://{env}.{bucket}/{path}`. Yun writes the bucket part as `{env}-yun` and ignores
/// it when reading, so file ids carried over from CloudBase resolve by env and path.
pub fn file_id(env: &EnvId, path: &(impl std::fmt::Display + ?Sized)) -> String {
    format!("cloud://{env}.{env}-yun/{path}")
}

/// Splits a file id into its env and path.
pub fn parse_file_id(id: &str) -> Result<(EnvId, CloudPath), YunError> {
    let bad = |why: &str| YunError::invalid_param(format!("invalid file id {id:?}: {why}"));
    let rest = id
        .strip_prefix("cloud://")
        .ok_or_else(|| bad("it must start with cloud://"))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| bad("it has no path"))?;
    let env = host.split('.').next().unwrap_or_default();
    let env = EnvId::parse(env).map_err(|e| bad(&e.to_string()))?;
    Ok((env, CloudPath::parse(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_encoded_forms_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "a\nb",
            "%2e%2e/x",
            "a/%2F",
            "q?x=1",
            "frag#x",
        ] {
            assert!(CloudPath::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unicode_names_work_and_are_normalised() {
        let composed = CloudPath::parse("相册/caf\u{e9} 1.jpg").unwrap();
        let decomposed = CloudPath::parse("相册/cafe\u{301} 1.jpg").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(
            decode_url_path(&composed.url_encoded()).as_deref(),
            Some(composed.as_str())
        );
        assert!(CloudPath::parse("100% real.txt").is_ok());
    }

    #[test]
    fn file_ids_round_trip_and_ignore_the_bucket() {
        let env = EnvId::parse("dev").unwrap();
        let path = CloudPath::parse("dir/a b.txt").unwrap();
        let id = file_id(&env, &path);
        assert_eq!(id, "cloud://dev.dev-yun/dir/a b.txt");
        assert_eq!(parse_file_id(&id).unwrap(), (env.clone(), path.clone()));
        let foreign = "cloud://dev.6465-dev-1250000000/dir/a b.txt";
        assert_eq!(parse_file_id(foreign).unwrap(), (env, path));
        assert!(parse_file_id("https://x/y").is_err());
        assert!(parse_file_id("cloud://dev.b/../x").is_err());
    }
}
