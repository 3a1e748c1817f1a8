//! HMAC-SHA256 signatures: Standard Webhooks signatures on webhook deliveries, and the signed
//! `/v1/blobs/...` URLs through which a local-storage coordinator hands out results (the local
//! stand-in for S3 presigned URLs: anyone holding the URL may GET the object until it expires).
//!
//! Everything here is a pure function of its inputs (including `now`), unit-tested below.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Key bytes of an HMAC. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// 32 random bytes.
    pub fn random() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    /// A Standard Webhooks secret: `whsec_<base64>` (the bytes are the decoded base64), or any
    /// other string of at least 16 characters, used as raw bytes.
    pub fn from_standard_webhooks(value: &str) -> Result<Self, String> {
        match value.strip_prefix("whsec_") {
            Some(b64) => {
                let bytes = BASE64
                    .decode(b64)
                    .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
                if bytes.len() < 16 {
                    return Err("the decoded secret must have at least 16 bytes".into());
                }
                Ok(Self(bytes))
            }
            None if value.len() >= 16 => Ok(Self(value.as_bytes().to_vec())),
            None => Err("use whsec_<base64> or at least 16 characters".into()),
        }
    }

    /// The webhook signing key of `tenant`, derived from this master secret:
    /// `HMAC-SHA256(master, "kontext-fleet webhook signing key v1\n" + tenant)`. Each tenant
    /// learns (and can verify with) only its own; one master secret serves every coordinator.
    pub fn for_tenant(&self, tenant: &str) -> Secret {
        let mut mac = self.mac();
        mac.update(b"kontext-fleet webhook signing key v1\n");
        mac.update(tenant.as_bytes());
        Self(mac.finalize().into_bytes().to_vec())
    }

    /// The Standard Webhooks form, `whsec_<base64>`, which receivers' libraries take.
    pub fn to_standard_webhooks(&self) -> String {
        format!("whsec_{}", BASE64.encode(&self.0))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length; this is a bug")
    }
}

/// `webhook-signature` header value: `v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`
/// (Standard Webhooks).
pub fn webhook_signature(secret: &Secret, id: &str, timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

fn blob_mac(secret: &Secret, key: &str, expires_s: u64) -> HmacSha256 {
    let mut mac = secret.mac();
    // The newlines keep (key, expires) pairs unambiguous: keys contain no '\n'.
    mac.update(format!("blob\n{key}\n{expires_s}").as_bytes());
    mac
}

/// Query string (`expires=..&signature=..`) of a signed blob URL valid until `expires_s`.
pub fn blob_query(secret: &Secret, key: &str, expires_s: u64) -> String {
    let signature = hex::encode(blob_mac(secret, key, expires_s).finalize().into_bytes());
    format!("expires={expires_s}&signature={signature}")
}

/// Why a signed blob URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobUrlError {
    Expired,
    BadSignature,
}

/// Checks a signed blob URL's parameters at `now_s` (constant-time signature comparison).
pub fn verify_blob(
    secret: &Secret,
    key: &str,
    expires_s: u64,
    signature_hex: &str,
    now_s: u64,
) -> Result<(), BlobUrlError> {
    let signature = hex::decode(signature_hex).map_err(|_| BlobUrlError::BadSignature)?;
    blob_mac(secret, key, expires_s)
        .verify_slice(&signature)
        .map_err(|_| BlobUrlError::BadSignature)?;
    if now_s >= expires_s {
        return Err(BlobUrlError::Expired);
    }
    Ok(())
}

fn session_mac(secret: &Secret, key_id: &str, expires_s: u64) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(format!("console\n{key_id}\n{expires_s}").as_bytes());
    mac
}

/// The operator console's session cookie value for the admin key `key_id` (its digest, from
/// `AdminAuth::key_id`), valid until `expires_s`: `<expires>.<key id>.<hmac>`.
pub fn console_session(secret: &Secret, key_id: &str, expires_s: u64) -> String {
    let mac = hex::encode(
        session_mac(secret, key_id, expires_s)
            .finalize()
            .into_bytes(),
    );
    format!("{expires_s}.{key_id}.{mac}")
}

/// The key id of a console session cookie that this coordinator signed and that has not
/// expired at `now_s` (constant-time comparison); `None` otherwise.
pub fn verify_console_session<'a>(secret: &Secret, value: &'a str, now_s: u64) -> Option<&'a str> {
    let mut parts = value.splitn(3, '.');
    let expires_s: u64 = parts.next()?.parse().ok()?;
    let key_id = parts.next()?;
    let signature = hex::decode(parts.next()?).ok()?;
    session_mac(secret, key_id, expires_s)
        .verify_slice(&signature)
        .ok()?;
    (now_s < expires_s).then_some(key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_sessions_verify_until_they_expire_and_never_when_altered() {
        let secret = Secret::from_bytes(b"console-secret".to_vec());
        let value = console_session(&secret, "ab12", 1_000);
        assert_eq!(verify_console_session(&secret, &value, 999), Some("ab12"));
        assert_eq!(verify_console_session(&secret, &value, 1_000), None);
        let other = Secret::from_bytes(b"another".to_vec());
        assert_eq!(verify_console_session(&other, &value, 10), None);
        let longer = value.replacen("1000.", "2000.", 1);
        assert_eq!(verify_console_session(&secret, &longer, 10), None);
        let rebound = value.replacen(".ab12.", ".cd34.", 1);
        assert_eq!(verify_console_session(&secret, &rebound, 10), None);
        assert_eq!(verify_console_session(&secret, "garbage", 10), None);
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let secret = Secret::from_bytes(b"Jefe".to_vec());
        let mut mac = secret.mac();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhook_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (standard-webhooks/standard-webhooks
        // `spec/standard-webhooks.md`, "Signature scheme").
        let secret = Secret::from_standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("valid");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            webhook_signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn tenant_keys_are_derived_apart_and_round_trip() {
        let master = Secret::from_bytes(b"0123456789abcdef".to_vec());
        let acme = master.for_tenant("acme");
        assert_eq!(acme, master.for_tenant("acme"), "stable");
        assert_ne!(acme, master.for_tenant("globex"));
        assert_ne!(acme, master);
        assert_ne!(
            acme,
            Secret::from_bytes(b"fedcba9876543210".to_vec()).for_tenant("acme")
        );
        let text = acme.to_standard_webhooks();
        assert_eq!(Secret::from_standard_webhooks(&text).expect("valid"), acme);
        // A signature made with acme's key does not verify with globex's.
        let sig = webhook_signature(&acme, "m", 1, b"{}");
        assert_ne!(
            sig,
            webhook_signature(&master.for_tenant("globex"), "m", 1, b"{}")
        );
    }

    #[test]
    fn short_or_malformed_webhook_secrets_are_refused() {
        assert!(Secret::from_standard_webhooks("whsec_!!!").is_err());
        assert!(Secret::from_standard_webhooks("whsec_c2hvcnQ=").is_err());
        assert!(Secret::from_standard_webhooks("short").is_err());
        assert!(Secret::from_standard_webhooks("a-long-enough-raw-secret").is_ok());
    }

    #[test]
    fn signed_blob_urls_verify_until_they_expire() {
        let secret = Secret::from_bytes(b"0123456789abcdef".to_vec());
        let key = "out/acme/job/1.png";
        let query = blob_query(&secret, key, 1_000);
        let signature = query.split("signature=").nth(1).expect("has a signature");
        assert_eq!(verify_blob(&secret, key, 1_000, signature, 999), Ok(()));
        assert_eq!(
            verify_blob(&secret, key, 1_000, signature, 1_000),
            Err(BlobUrlError::Expired)
        );
        assert_eq!(
            verify_blob(&secret, "out/acme/job/2.png", 1_000, signature, 0),
            Err(BlobUrlError::BadSignature)
        );
        assert_eq!(
            verify_blob(&secret, key, 2_000, signature, 0),
            Err(BlobUrlError::BadSignature),
            "extending the expiry must break the signature"
        );
        let other = Secret::from_bytes(b"fedcba9876543210".to_vec());
        assert_eq!(
            verify_blob(&other, key, 1_000, signature, 0),
            Err(BlobUrlError::BadSignature)
        );
        assert_eq!(
            verify_blob(&secret, key, 1_000, "zz", 0),
            Err(BlobUrlError::BadSignature)
        );
    }
}
