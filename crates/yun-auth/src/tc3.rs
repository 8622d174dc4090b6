//! TC3-HMAC-SHA256 as `@cloudbase/signature-nodejs` computes it for `/admin` requests
//! (`../shared/cloudbase-protocol.md` §1.4): method string `post`, lowercased header
//! values, body params hashed as `&key=value\r\n` with falsy values skipped.
//!
//! Verification follows the order the client put in `SignedHeaders`/`SignedParams`
//! instead of re-sorting: JS `localeCompare` is not byte order.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use yun_types::{ErrorCode, YunError};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "TC3-HMAC-SHA256";
const SERVICE: &str = "tcb";
/// The validity window the SDK asks for (`X-Signature-Expires: 600`); a client may ask
/// for less, never for more.
pub const MAX_SIGNATURE_AGE_SECS: i64 = 600;

/// The parts of an `Authorization: TC3-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub date: String,
    pub signed_params: Option<Vec<String>>,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// What a signature covers, as the server received it.
pub struct RequestParts<'a> {
    /// `Host` header value.
    pub host: &'a str,
    /// URL path, e.g. `/admin`.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: &'a str,
    /// Looks up a header value by lowercase name.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// The JSON body object.
    pub body: &'a Map<String, Value>,
}

fn sign_err(code: ErrorCode, message: impl Into<String>) -> YunError {
    YunError::new(code, message)
}

impl Authorization {
    pub fn parse(header: &str) -> Result<Self, YunError> {
        let bad = |why: &str| {
            sign_err(
                ErrorCode::SignParamInvalid,
                format!("authorization header: {why}"),
            )
        };
        let rest = header
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| bad("expected TC3-HMAC-SHA256"))?
            .trim_start();
        let (mut credential, mut params, mut headers, mut signature) = (None, None, None, None);
        for part in rest.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad("malformed part"))?;
            match key {
                "Credential" => credential = Some(value),
                "SignedParams" => params = Some(value),
                "SignedHeaders" => headers = Some(value),
                "Signature" => signature = Some(value),
                _ => return Err(bad("unknown part")),
            }
        }
        let credential = credential.ok_or_else(|| bad("missing Credential"))?;
        let mut scope = credential.split('/');
        let (secret_id, date) = match (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) {
            (Some(id), Some(date), Some(SERVICE), Some("tc3_request"), None) if !id.is_empty() => {
                (id, date)
            }
            _ => return Err(bad("Credential must be {SecretId}/{date}/tcb/tc3_request")),
        };
        let split = |v: &str| {
            v.split(';')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let signed_headers = split(headers.ok_or_else(|| bad("missing SignedHeaders"))?);
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(bad("SignedHeaders must include host"));
        }
        Ok(Self {
            secret_id: secret_id.into(),
            date: date.into(),
            signed_params: params.map(split),
            signed_headers,
            signature: signature
                .ok_or_else(|| bad("missing Signature"))?
                .to_ascii_lowercase(),
        })
    }

    pub fn to_header(&self) -> String {
        let mut out = format!(
            "{ALGORITHM} Credential={}/{}/{SERVICE}/tc3_request",
            self.secret_id, self.date
        );
        if let Some(params) = &self.signed_params {
            out.push_str(&format!(", SignedParams={}", params.join(";")));
        }
        out.push_str(&format!(
            ", SignedHeaders={}, Signature={}",
            self.signed_headers.join(";"),
            self.signature
        ));
        out
    }
}

/// `encodeURIComponent(key.trim().toLowerCase())`.
fn canonical_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.trim().to_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JS truthiness of a JSON value, as the signer skips falsy params.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn param_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.trim().to_owned(),
        other => other.to_string().trim().to_owned(),
    }
}

/// The body params the signer would hash, in its own (sorted) order.
pub fn signable_params(body: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = body
        .iter()
        .filter(|(_, v)| is_truthy(v))
        .map(|(k, _)| canonical_key(k))
        .collect();
    keys.sort();
    keys
}

fn payload_hash(params: &[String], body: &Map<String, Value>) -> Result<String, YunError> {
    let by_key: std::collections::HashMap<String, &Value> =
        body.iter().map(|(k, v)| (canonical_key(k), v)).collect();
    let mut hasher = Sha256::new();
    for key in params {
        let value = by_key.get(key).ok_or_else(|| {
            sign_err(
                ErrorCode::SignInvalid,
                format!("signed param {key:?} is not in the body"),
            )
        })?;
        hasher.update(format!("&{key}={}\r\n", param_text(value)));
    }
    Ok(hex::encode(hasher.finalize()))
}

fn canonical_header_value(name: &str, value: &str) -> String {
    let value = value.trim().to_lowercase();
    if name == "content-type" && value.starts_with("multipart/form-data") {
        "multipart/form-data".into()
    } else {
        value
    }
}

fn canonical_request(auth: &Authorization, req: &RequestParts<'_>) -> Result<String, YunError> {
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let value = (req.header)(name).ok_or_else(|| {
            sign_err(
                ErrorCode::SignInvalid,
                format!("signed header {name:?} is missing"),
            )
        })?;
        headers.push_str(&format!(
            "{name}:{}\n",
            canonical_header_value(name, &value)
        ));
    }
    let payload = payload_hash(auth.signed_params.as_deref().unwrap_or(&[]), req.body)?;
    Ok(format!(
        "post\n//{}{}\n{}\n{headers}\n{}\n{payload}",
        req.host,
        req.path,
        req.query,
        auth.signed_headers.join(";")
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signature(secret_key: &str, date: &str, timestamp: i64, canonical: &str) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{date}/{SERVICE}/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, SERVICE.as_bytes());
    let k_signing = hmac(&k_service, b"tc3_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

/// `YYYY-MM-DD` of a Unix timestamp, in UTC.
pub fn utc_date(timestamp: i64) -> Result<String, YunError> {
    let at = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .map_err(|_| sign_err(ErrorCode::SignParamInvalid, "timestamp out of range"))?;
    Ok(format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    ))
}

/// Checks a request's signature against `secret_key`. `timestamp` and `expires` are the
/// `X-Timestamp` and `X-Signature-Expires` headers; `now` is Unix seconds.
pub fn verify(
    auth: &Authorization,
    secret_key: &str,
    timestamp: i64,
    expires: i64,
    now: i64,
    req: &RequestParts<'_>,
) -> Result<(), YunError> {
    let window = expires.clamp(1, MAX_SIGNATURE_AGE_SECS);
    if (now - timestamp).abs() > window {
        return Err(sign_err(
            ErrorCode::SignExpired,
            "signature timestamp is outside its validity window",
        ));
    }
    if auth.date != utc_date(timestamp)? {
        return Err(sign_err(
            ErrorCode::SignInvalid,
            "credential date does not match X-Timestamp",
        ));
    }
    // Every meaningful body field must be covered: the SDK signs all truthy params, so an
    // unsigned truthy field can only have been added after signing.
    let signed: std::collections::HashSet<&str> = auth
        .signed_params
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if let Some(unsigned) = signable_params(req.body)
        .into_iter()
        .find(|k| !signed.contains(k.as_str()))
    {
        return Err(sign_err(
            ErrorCode::SignInvalid,
            format!("body param {unsigned:?} is not signed"),
        ));
    }
    let expected = signature(
        secret_key,
        &auth.date,
        timestamp,
        &canonical_request(auth, req)?,
    );
    // Constant-time comparison through the MAC type's verifier is not available for a
    // hex string; compare the bytes without early exit instead.
    let same = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(sign_err(ErrorCode::SignInvalid, "signature does not match"));
    }
    Ok(())
}

/// Signs a request as the SDK does; used by Yun's own clients (bench, tests).
/// `headers` are (lowercase name, value) pairs and must include `host` and `content-type`.
pub fn sign(
    secret_id: &str,
    secret_key: &str,
    timestamp: i64,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &Map<String, Value>,
) -> Result<String, YunError> {
    let host = headers
        .iter()
        .find(|(k, _)| *k == "host")
        .map(|(_, v)| *v)
        .ok_or_else(|| YunError::invalid_param("host header required"))?;
    let mut names: Vec<String> = headers.iter().map(|(k, _)| k.to_string()).collect();
    names.sort();
    let mut auth = Authorization {
        secret_id: secret_id.into(),
        date: utc_date(timestamp)?,
        signed_params: Some(signable_params(body)),
        signed_headers: names,
        signature: String::new(),
    };
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let parts = RequestParts {
        host,
        path,
        query,
        header: &lookup,
        body,
    };
    auth.signature = signature(
        secret_key,
        &auth.date,
        timestamp,
        &canonical_request(&auth, &parts)?,
    );
    Ok(auth.to_header())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from `../shared/cloudbase-protocol.md` §1.4, computed by
    /// `@cloudbase/signature-nodejs` 2.2.0.
    fn vector_body() -> Map<String, Value> {
        serde_json::from_str(
            r#"{"collectionName":"todos","queryType":"WHERE","query":"{\"done\":false}","limit":100,
              "action":"database.getDocument","envName":"test-env","wxCloudApiToken":"","tcb_sessionToken":"",
              "sessionToken":"SESSIONTOKEN123","crossAuthorizationToken":""}"#,
        )
        .unwrap()
    }

    const VECTOR_HEADER: &str = "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/tcb/tc3_request, SignedParams=action;collectionname;envname;limit;query;querytype;sessiontoken, SignedHeaders=content-type;host;user-agent;x-client-timestamp;x-sdk-version;x-tcb-source, Signature=b4f56bde7af81a8ca4158489a2ce2ef7b7be3e1d5fb26b68ad0d603c56a26da4";

    const VECTOR_HEADERS: &[(&str, &str)] = &[
        ("content-type", "application/json"),
        ("host", "127.0.0.1:18080"),
        ("user-agent", "tcb-node-sdk/3.18.3"),
        ("x-client-timestamp", "1700000000123"),
        ("x-sdk-version", "tcb-node-sdk/3.18.3"),
        ("x-tcb-source", ",unknown"),
    ];

    fn vector_header(name: &str) -> Option<String> {
        VECTOR_HEADERS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn vector_parts(body: &Map<String, Value>) -> RequestParts<'_> {
        RequestParts {
            host: "127.0.0.1:18080",
            path: "/admin",
            query: "env=test-env&seqId=18c0a1b2c3d_1",
            header: &vector_header,
            body,
        }
    }

    #[test]
    fn payload_hash_matches_vector() {
        let auth = Authorization::parse(VECTOR_HEADER).unwrap();
        assert_eq!(
            payload_hash(auth.signed_params.as_ref().unwrap(), &vector_body()).unwrap(),
            "4681d375c9679cfac77a9ae57b3c1bbf78e3c0034fb4b918ff5dcb92043ad59f"
        );
    }

    #[test]
    fn verifies_the_protocol_test_vector() {
        let body = vector_body();
        let auth = Authorization::parse(VECTOR_HEADER).unwrap();
        assert_eq!(auth.secret_id, "AKIDEXAMPLE");
        verify(
            &auth,
            "EXAMPLEKEY",
            1_700_000_000,
            600,
            1_700_000_100,
            &vector_parts(&body),
        )
        .unwrap();
    }

    #[test]
    fn our_signer_reproduces_the_vector_signature() {
        let body = vector_body();
        let header = sign(
            "AKIDEXAMPLE",
            "EXAMPLEKEY",
            1_700_000_000,
            "/admin",
            "env=test-env&seqId=18c0a1b2c3d_1",
            VECTOR_HEADERS,
            &body,
        )
        .unwrap();
        assert_eq!(header, VECTOR_HEADER);
    }

    #[test]
    fn rejects_wrong_key_tampering_and_expiry() {
        let body = vector_body();
        let auth = Authorization::parse(VECTOR_HEADER).unwrap();
        let mut tampered = body.clone();
        tampered.insert("limit".into(), Value::from(1000));
        let mut added = body.clone();
        added.insert("qualifier".into(), Value::from("v2"));
        // (case, secret key, X-Signature-Expires, now, body, expected)
        let cases = [
            (
                "wrong key",
                "WRONG",
                600,
                1_700_000_000,
                &body,
                ErrorCode::SignInvalid,
            ),
            (
                "too old",
                "EXAMPLEKEY",
                600,
                1_700_000_601,
                &body,
                ErrorCode::SignExpired,
            ),
            (
                "client widens its window",
                "EXAMPLEKEY",
                99_999,
                1_700_001_000,
                &body,
                ErrorCode::SignExpired,
            ),
            (
                "signed value changed",
                "EXAMPLEKEY",
                600,
                1_700_000_000,
                &tampered,
                ErrorCode::SignInvalid,
            ),
            (
                "unsigned value added",
                "EXAMPLEKEY",
                600,
                1_700_000_000,
                &added,
                ErrorCode::SignInvalid,
            ),
        ];
        for (case, key, expires, now, body, expected) in cases {
            let err =
                verify(&auth, key, 1_700_000_000, expires, now, &vector_parts(body)).unwrap_err();
            assert_eq!(err.code, expected, "{case}");
        }
    }

    #[test]
    fn malformed_headers_are_param_errors() {
        for bad in ["", "Bearer x", "TC3-HMAC-SHA256 Credential=AKID/2023-11-14/cos/tc3_request, SignedHeaders=host, Signature=ab", "TC3-HMAC-SHA256 Credential=AKID/2023-11-14/tcb/tc3_request, Signature=ab"] {
            assert_eq!(Authorization::parse(bad).unwrap_err().code, ErrorCode::SignParamInvalid, "{bad}");
        }
    }

    #[test]
    fn canonical_keys_are_uri_encoded_lowercase() {
        assert_eq!(canonical_key(" Tcb_SessionToken "), "tcb_sessiontoken");
        assert_eq!(canonical_key("a b/c"), "a%20b%2Fc");
    }
}
