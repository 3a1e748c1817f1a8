//! Object-key layout: one builder per kind of object, and the validation that keeps a tenant
//! inside its own prefix.
//!
//! Layout (docs/queue-protocol.md §Commit):
//! - inputs and uploads, content-addressed: `in/<tenant>/<sha256>.<ext>`;
//! - initial latents, content-addressed:    `in/<tenant>/<sha256>.safetensors`;
//! - outputs, attempt-scoped:               `out/<tenant>/<job_id>/<epoch>.<ext>`;
//! - output latents, attempt-scoped:        `out/<tenant>/<job_id>/<epoch>.latent.safetensors`.
//!
//! Attempt scoping (the claim's epoch in the key) means a worker never overwrites another
//! attempt's output; the job record points at one attempt only when that attempt commits.
//!
//! Every key is a [`kontext_proto::ObjectKey`] (validated there: no traversal, no dot-names), so a
//! key maps to a path under the store's root; the builders here also check the tenant id, so a
//! tenant can never reach another tenant's prefix.

use std::fmt;

pub use kontext_proto::object_key::{MAX_KEY_BYTES, ObjectKey, ObjectKeyError};
use kontext_proto::{JobId, OutputFormat};
use sha2::{Digest, Sha256};

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;
/// Longest file extension accepted, in bytes.
pub const MAX_EXTENSION_BYTES: usize = 16;

/// Prefix of content-addressed inputs.
pub const INPUT_PREFIX: &str = "in";
/// Prefix of attempt-scoped outputs.
pub const OUTPUT_PREFIX: &str = "out";

/// Why a key, tenant id, digest or extension was refused. Each message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Key(#[from] ObjectKeyError),
    #[error(
        "tenant id {tenant:?} is invalid: use 1 to {MAX_TENANT_BYTES} characters of [A-Za-z0-9_-]"
    )]
    BadTenant { tenant: String },
    #[error(
        "file extension {ext:?} is invalid: use 1 to {MAX_EXTENSION_BYTES} characters of [a-z0-9]"
    )]
    BadExtension { ext: String },
    #[error("{value:?} is not a SHA-256 digest (64 lowercase hex characters)")]
    BadDigest { value: String },
    #[error("upload id {value:?} is invalid: expected \"<sha256>.<ext>\"")]
    BadUploadId { value: String },
    #[error("object key {key:?} does not belong to tenant {tenant:?}")]
    ForeignTenant { key: String, tenant: String },
}

/// Whether `key` lies under `in/<tenant>/` or `out/<tenant>/`.
fn belongs_to(key: &ObjectKey, tenant: &str) -> bool {
    let mut segments = key.segments();
    let area = segments.next();
    let owner = segments.next();
    matches!(area, Some(INPUT_PREFIX | OUTPUT_PREFIX))
        && owner == Some(tenant)
        && segments.next().is_some()
}

/// Parses a key a client supplied (e.g. `input_image` given as an object key) and checks it
/// belongs to `tenant`, so one tenant can't read another's objects through us.
pub fn parse_tenant_key(raw: &str, tenant: &str) -> Result<ObjectKey, KeyError> {
    check_tenant(tenant)?;
    let key = ObjectKey::parse(raw)?;
    if !belongs_to(&key, tenant) {
        return Err(KeyError::ForeignTenant {
            key: raw.to_owned(),
            tenant: tenant.to_owned(),
        });
    }
    Ok(key)
}

/// Whether `key` is one of `tenant`'s objects.
pub fn key_belongs_to_tenant(key: &ObjectKey, tenant: &str) -> bool {
    check_tenant(tenant).is_ok() && belongs_to(key, tenant)
}

/// Checks that a tenant id can be used as one key segment.
pub fn check_tenant(tenant: &str) -> Result<(), KeyError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_BYTES
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadTenant {
            tenant: tenant.to_owned(),
        })
    }
}

fn check_extension(ext: &str) -> Result<(), KeyError> {
    let ok = !ext.is_empty()
        && ext.len() <= MAX_EXTENSION_BYTES
        && ext
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadExtension {
            ext: ext.to_owned(),
        })
    }
}

/// A SHA-256 digest, the address of content-addressed objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse_hex(value: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadDigest {
            value: value.to_owned(),
        };
        // Lowercase only, so one digest has exactly one key.
        if value.len() != 64 || value.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(value, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The id a client gets back for an uploaded image: `<sha256>.<ext>`. It is derived from the
/// content, so uploading the same bytes twice yields the same id and one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId {
    digest: Sha256Digest,
    ext: String,
}

impl UploadId {
    pub fn for_content(bytes: &[u8], ext: &str) -> Result<Self, KeyError> {
        check_extension(ext)?;
        Ok(Self {
            digest: Sha256Digest::of(bytes),
            ext: ext.to_owned(),
        })
    }

    pub fn parse(value: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadUploadId {
            value: value.to_owned(),
        };
        let (digest, ext) = value.split_once('.').ok_or_else(bad)?;
        let digest = Sha256Digest::parse_hex(digest).map_err(|_| bad())?;
        check_extension(ext).map_err(|_| bad())?;
        Ok(Self {
            digest,
            ext: ext.to_owned(),
        })
    }

    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }

    pub fn extension(&self) -> &str {
        &self.ext
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.digest, self.ext)
    }
}

/// `in/<tenant>/<sha256>.<ext>`: a content-addressed input image or upload.
pub fn input_key(tenant: &str, upload: &UploadId) -> Result<ObjectKey, KeyError> {
    check_tenant(tenant)?;
    Ok(ObjectKey::parse(&format!(
        "{INPUT_PREFIX}/{tenant}/{upload}"
    ))?)
}

/// `in/<tenant>/<sha256>.safetensors`: content-addressed initial latents (diffusers' `latents=`).
pub fn initial_latents_key(tenant: &str, digest: Sha256Digest) -> Result<ObjectKey, KeyError> {
    check_tenant(tenant)?;
    Ok(ObjectKey::parse(&format!(
        "{INPUT_PREFIX}/{tenant}/{digest}.safetensors"
    ))?)
}

/// `out/<tenant>/<job_id>/<epoch>.<ext>`: the image one attempt (claim epoch) produced.
pub fn output_key(
    tenant: &str,
    job: JobId,
    epoch: u64,
    format: OutputFormat,
) -> Result<ObjectKey, KeyError> {
    check_tenant(tenant)?;
    let ext = format.extension();
    Ok(ObjectKey::parse(&format!(
        "{OUTPUT_PREFIX}/{tenant}/{job}/{epoch}.{ext}"
    ))?)
}

/// `out/<tenant>/<job_id>/<epoch>.latent.safetensors`: the packed output latent of one attempt.
pub fn output_latent_key(tenant: &str, job: JobId, epoch: u64) -> Result<ObjectKey, KeyError> {
    check_tenant(tenant)?;
    Ok(ObjectKey::parse(&format!(
        "{OUTPUT_PREFIX}/{tenant}/{job}/{epoch}.latent.safetensors"
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d"
            .parse()
            .expect("literal uuid")
    }

    #[test]
    fn builders_follow_the_layout() {
        let upload = UploadId::for_content(b"abc", "png").expect("valid");
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(upload.to_string(), format!("{digest}.png"));
        assert_eq!(
            input_key("acme", &upload).expect("valid").as_str(),
            format!("in/acme/{digest}.png")
        );
        assert_eq!(
            initial_latents_key("acme", upload.digest())
                .expect("valid")
                .as_str(),
            format!("in/acme/{digest}.safetensors")
        );
        assert_eq!(
            output_key("acme", job(), 3, OutputFormat::Jpeg)
                .expect("valid")
                .as_str(),
            "out/acme/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/3.jpeg"
        );
        assert_eq!(
            output_latent_key("acme", job(), 3).expect("valid").as_str(),
            "out/acme/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/3.latent.safetensors"
        );
    }

    #[test]
    fn epochs_give_distinct_output_keys() {
        let a = output_key("t", job(), 1, OutputFormat::Png).expect("valid");
        let b = output_key("t", job(), 2, OutputFormat::Png).expect("valid");
        assert_ne!(a, b);
    }

    #[test]
    fn tenants_cannot_escape_their_prefix() {
        for tenant in [
            "",
            "a/b",
            "..",
            "a.b",
            "ä",
            &"t".repeat(MAX_TENANT_BYTES + 1),
        ] {
            assert!(
                check_tenant(tenant).is_err(),
                "{tenant:?} should be refused"
            );
            let upload = UploadId::for_content(b"x", "png").expect("valid");
            assert!(input_key(tenant, &upload).is_err());
        }
        let key = ObjectKey::parse("in/acme/x.png").expect("valid");
        assert!(key_belongs_to_tenant(&key, "acme"));
        assert!(!key_belongs_to_tenant(&key, "acm"));
        assert!(!key_belongs_to_tenant(&key, "acme2"));
        assert!(!key_belongs_to_tenant(
            &ObjectKey::parse("in/acme").expect("valid"),
            "acme"
        ));
        assert!(!key_belongs_to_tenant(
            &ObjectKey::parse("tmp/acme/x").expect("v"),
            "acme"
        ));
        assert!(parse_tenant_key("out/acme/j/1.png", "acme").is_ok());
        assert_eq!(
            parse_tenant_key("out/other/j/1.png", "acme"),
            Err(KeyError::ForeignTenant {
                key: "out/other/j/1.png".into(),
                tenant: "acme".into()
            })
        );
        assert!(parse_tenant_key("out/acme/../other/1.png", "acme").is_err());
    }

    #[test]
    fn upload_ids_round_trip_and_reject_garbage() {
        let id = UploadId::for_content(b"image bytes", "jpeg").expect("valid");
        assert_eq!(UploadId::parse(&id.to_string()).expect("round trip"), id);
        for bad in [
            "abc.png",
            &format!("{}.png", "A".repeat(64)),
            &format!("{}.PNG", "a".repeat(64)),
            &"a".repeat(64),
            &format!("{}./png", "a".repeat(64)),
            &format!("{}.png.exe", "a".repeat(64)),
        ] {
            assert!(UploadId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(UploadId::for_content(b"x", "../png").is_err());
    }
}
