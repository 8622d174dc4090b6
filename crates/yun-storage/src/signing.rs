//! Signed URLs. Download URLs carry `sign` and `t` (expiry, Unix seconds) like CloudBase's
//! temporary URLs; uploads carry a token naming the expiry and the owner, and an
//! authorization over env, path and token. Stateless: any node with the key checks them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use yun_types::{EnvId, ErrorCode, YunError};

use crate::path::CloudPath;

pub struct UrlSigner {
    key: Vec<u8>,
}

/// What a valid upload authorization grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadGrant {
    /// Who uploads (stamped on the file); empty for admin callers.
    pub owner: String,
}

fn sign_error(message: &str) -> YunError {
    YunError::new(ErrorCode::StorageSignInvalid, message)
}

impl UrlSigner {
    /// `master` is the platform master key; the storage key is derived from it.
    pub fn new(master: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("any key length");
        mac.update(b"yun storage url key");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn hex(&self, parts: &[&str]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    fn check(&self, parts: &[&str], given: &str) -> bool {
        hex::decode(given).is_ok_and(|bytes| self.mac(parts).verify_slice(&bytes).is_ok())
    }

    pub fn download_sign(&self, env: &EnvId, path: &CloudPath, expires: i64) -> String {
        self.hex(&[
            "download",
            env.as_str(),
            path.as_str(),
            &expires.to_string(),
        ])
    }

    pub fn verify_download(
        &self,
        env: &EnvId,
        path: &CloudPath,
        expires: i64,
        sign: &str,
        now: i64,
    ) -> Result<(), YunError> {
        if !self.check(
            &[
                "download",
                env.as_str(),
                path.as_str(),
                &expires.to_string(),
            ],
            sign,
        ) {
            return Err(sign_error("the URL signature does not match"));
        }
        if now > expires {
            return Err(sign_error("the URL has expired"));
        }
        Ok(())
    }

    /// `(token, authorization)` for one upload of `path` before `expires`.
    pub fn upload_grant(
        &self,
        env: &EnvId,
        path: &CloudPath,
        owner: &str,
        expires: i64,
    ) -> (String, String) {
        let token = format!("{expires}.{}", hex::encode(owner));
        let authorization = self.hex(&["upload", env.as_str(), path.as_str(), &token]);
        (token, authorization)
    }

    pub fn verify_upload(
        &self,
        env: &EnvId,
        path: &CloudPath,
        token: &str,
        authorization: &str,
        now: i64,
    ) -> Result<UploadGrant, YunError> {
        if !self.check(
            &["upload", env.as_str(), path.as_str(), token],
            authorization,
        ) {
            return Err(sign_error("the upload signature does not match this path"));
        }
        let (expires, owner) = token
            .split_once('.')
            .ok_or_else(|| sign_error("malformed upload token"))?;
        let expires: i64 = expires
            .parse()
            .map_err(|_| sign_error("malformed upload token"))?;
        if now > expires {
            return Err(sign_error("the upload authorization has expired"));
        }
        let owner = hex::decode(owner)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| sign_error("malformed upload token"))?;
        Ok(UploadGrant { owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_env_path_and_expiry() {
        let signer = UrlSigner::new(b"master");
        let env = EnvId::parse("a").unwrap();
        let other = EnvId::parse("b").unwrap();
        let path = CloudPath::parse("x/y.txt").unwrap();
        let sign = signer.download_sign(&env, &path, 100);
        assert!(signer.verify_download(&env, &path, 100, &sign, 99).is_ok());
        assert!(signer
            .verify_download(&env, &path, 100, &sign, 101)
            .is_err());
        assert!(signer.verify_download(&env, &path, 200, &sign, 99).is_err());
        assert!(signer
            .verify_download(&other, &path, 100, &sign, 99)
            .is_err());
        let elsewhere = CloudPath::parse("x/z.txt").unwrap();
        assert!(signer
            .verify_download(&env, &elsewhere, 100, &sign, 99)
            .is_err());
        assert!(UrlSigner::new(b"other")
            .verify_download(&env, &path, 100, &sign, 99)
            .is_err());

        let (token, auth) = signer.upload_grant(&env, &path, "user-1", 100);
        let grant = signer
            .verify_upload(&env, &path, &token, &auth, 50)
            .unwrap();
        assert_eq!(grant.owner, "user-1");
        assert!(signer
            .verify_upload(&env, &path, &token, &auth, 101)
            .is_err());
        assert!(signer
            .verify_upload(&env, &elsewhere, &token, &auth, 50)
            .is_err());
        let forged = format!("100.{}", hex::encode("admin"));
        assert!(signer
            .verify_upload(&env, &path, &forged, &auth, 50)
            .is_err());
    }
}
