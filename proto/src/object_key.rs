//! `ObjectKey`: the name of an object in the blob store, validated once, wherever it comes from.
//!
//! Jobs, results and chains carry keys (context images, carried latents, outputs), so the type
//! lives here with them; `kontext-storage` owns the layout (which prefixes mean what, tenant
//! scoping) and builds keys through [`ObjectKey::parse`]. A key deserialises through the same
//! validation and serialises as its plain string, so stored records keep their JSON.
//!
//! Rules: ASCII segments of `[A-Za-z0-9._=-]`, no empty, `.` or `..` segment, no segment starting
//! with `.` (the local store keeps its temporary files and metadata under dot-names), no leading
//! or trailing `/`, at most `MAX_KEY_BYTES`. So a key maps to a path under a store's root and
//! can never climb out of it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes (S3's own limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a string is not an object key. Each message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectKeyError {
    #[error("object key is empty")]
    Empty,
    #[error("object key is {len} bytes; the limit is {MAX_KEY_BYTES}")]
    TooLong { len: usize },
    #[error("object key {key:?} has an invalid segment {segment:?}: {reason}")]
    BadSegment {
        key: String,
        segment: String,
        reason: &'static str,
    },
}

/// A validated object key (see the module docs for the rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `raw` as a key.
    pub fn parse(raw: &str) -> Result<Self, ObjectKeyError> {
        check(raw)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The key's `/`-separated segments; none is empty, `.`, `..` or a dot-name.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn check(raw: &str) -> Result<(), ObjectKeyError> {
    if raw.is_empty() {
        return Err(ObjectKeyError::Empty);
    }
    if raw.len() > MAX_KEY_BYTES {
        return Err(ObjectKeyError::TooLong { len: raw.len() });
    }
    for segment in raw.split('/') {
        if let Err(reason) = check_segment(segment) {
            return Err(ObjectKeyError::BadSegment {
                key: raw.to_owned(),
                segment: segment.to_owned(),
                reason,
            });
        }
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("empty segment (leading, trailing or doubled '/')");
    }
    if segment.starts_with('.') {
        return Err("segments may not start with '.' (no '.', '..' or hidden names)");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'='))
    {
        return Err("only the characters [A-Za-z0-9._=-] are allowed");
    }
    Ok(())
}

impl TryFrom<String> for ObjectKey {
    type Error = ObjectKeyError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        check(&raw)?;
        Ok(Self(raw))
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> Self {
        key.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ObjectKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ObjectKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ObjectKey {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_odd_keys_are_refused() {
        for raw in [
            "",
            "/in/a/x.png",
            "in/a/x.png/",
            "in//x.png",
            "in/../b/x.png",
            "in/./x.png",
            "in/a/..",
            "in/a/.hidden",
            "in/a/x y.png",
            "in\\a\\x.png",
            "in/a/ü.png",
            "in/a/x.png\0",
        ] {
            assert!(ObjectKey::parse(raw).is_err(), "{raw:?} should be refused");
        }
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            ObjectKey::parse(&long),
            Err(ObjectKeyError::TooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
        assert!(ObjectKey::parse("out/t/j/1.latent.safetensors").is_ok());
    }

    #[test]
    fn error_names_the_segment() {
        let err = ObjectKey::parse("in/../x").expect_err("traversal");
        let text = err.to_string();
        assert!(text.contains("\"..\""), "{text}");
    }

    #[test]
    fn keys_are_plain_strings_in_json_and_validated_when_read() {
        let key = ObjectKey::parse("out/acme/j/1.png").expect("valid");
        let json = serde_json::to_string(&key).expect("serialises");
        assert_eq!(json, "\"out/acme/j/1.png\"");
        let back: ObjectKey = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, key);
        assert!(serde_json::from_str::<ObjectKey>("\"in/../x\"").is_err());
        assert!(serde_json::from_str::<ObjectKey>("\"\"").is_err());
    }
}
