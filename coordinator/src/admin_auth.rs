//! Who may call `/v1/admin/*` (docs/security.md §Admin API): holders of an admin key
//! (`--admin-keys`), never a tenant's key. A coordinator in open loopback mode (no `--api-keys`)
//! without admin keys leaves the admin API open like the rest; one with tenant keys but no admin
//! keys has it switched off.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// How admin requests are authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// Open loopback mode: anyone who reaches the listener.
    Open,
    /// SHA-256 of each admin key.
    Keys(HashSet<[u8; 32]>),
    /// Tenant keys are configured and admin keys are not: every admin request is refused.
    Disabled,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open => f.write_str("Open"),
            // Never the keys, not even their digests.
            Self::Keys(keys) => write!(f, "Keys({})", keys.len()),
            Self::Disabled => f.write_str("Disabled"),
        }
    }
}

/// A malformed `--admin-keys`.
#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    #[error("reading admin keys file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--admin-keys: no keys found (one key per line in a file, or key1,key2)")]
    Empty,
    #[error("--admin-keys, entry {entry}: a key needs at least {MIN_KEY_CHARS} characters")]
    Short { entry: usize },
}

/// Shortest admin key accepted: admin keys guard every tenant's data.
pub const MIN_KEY_CHARS: usize = 16;

/// What an admin request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDecision {
    Allowed,
    /// No key or an unknown one (401).
    Unauthorized,
    /// The admin API is off (403).
    Disabled,
}

impl AdminAuth {
    /// From `--admin-keys` (a file path when one exists there, otherwise `key1,key2`) and
    /// whether tenant access is open.
    pub fn from_arg(value: Option<&str>, tenants_open: bool) -> Result<Self, AdminAuthError> {
        let Some(value) = value else {
            return Ok(if tenants_open {
                Self::Open
            } else {
                Self::Disabled
            });
        };
        let text = if Path::new(value).is_file() {
            std::fs::read_to_string(value).map_err(|source| AdminAuthError::Read {
                path: value.to_owned(),
                source,
            })?
        } else {
            value.replace(',', "\n")
        };
        let mut keys = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.split('#').next().unwrap_or("").trim();
            if key.is_empty() {
                continue;
            }
            if key.chars().count() < MIN_KEY_CHARS {
                return Err(AdminAuthError::Short { entry: i + 1 });
            }
            keys.insert(digest(key));
        }
        if keys.is_empty() {
            return Err(AdminAuthError::Empty);
        }
        Ok(Self::Keys(keys))
    }

    pub fn decide(&self, key: Option<&str>) -> AdminDecision {
        match self {
            Self::Open => AdminDecision::Allowed,
            Self::Disabled => AdminDecision::Disabled,
            Self::Keys(keys) => match key {
                Some(k) if keys.contains(&digest(k)) => AdminDecision::Allowed,
                _ => AdminDecision::Unauthorized,
            },
        }
    }
}

impl AdminAuth {
    /// The console session's key id for `key` when it is an admin key (the SHA-256 digest in
    /// hex; never the key itself).
    pub fn key_id(&self, key: &str) -> Option<String> {
        match self {
            Self::Keys(keys) if keys.contains(&digest(key)) => Some(hex::encode(digest(key))),
            _ => None,
        }
    }

    /// What a console session bound to `key_id` gets: allowed while that key is still
    /// configured, so removing a key ends its sessions.
    pub fn decide_session(&self, key_id: Option<&str>) -> AdminDecision {
        match self {
            Self::Open => AdminDecision::Allowed,
            Self::Disabled => AdminDecision::Disabled,
            Self::Keys(keys) => match key_id.and_then(|id| hex::decode(id).ok()) {
                Some(d) if keys.iter().any(|k| k.as_slice() == d.as_slice()) => {
                    AdminDecision::Allowed
                }
                _ => AdminDecision::Unauthorized,
            },
        }
    }
}

/// The audit log's name for callers in open loopback mode.
pub const OPEN_ACTOR: &str = "open";

impl AdminAuth {
    /// How the audit log names a caller this auth allowed with `key`
    /// (`kontext_proto::workers::AuditEntry::actor`).
    pub fn actor(&self, key: Option<&str>) -> String {
        match (self, key) {
            (Self::Keys(_), Some(k)) => key_actor(&hex::encode(digest(k))),
            _ => OPEN_ACTOR.to_owned(),
        }
    }

    /// How the audit log names a console session bound to `key_id` (`key_id`'s value).
    pub fn session_actor(&self, key_id: Option<&str>) -> String {
        match (self, key_id) {
            (Self::Keys(_), Some(id)) => key_actor(id),
            _ => OPEN_ACTOR.to_owned(),
        }
    }
}

/// `key:` and the first 12 hex digits of the key's SHA-256: enough to tell an operator's keys
/// apart (`printf %s "$KEY" | sha256sum | cut -c1-12`), too little to guess the key from.
fn key_actor(key_id: &str) -> String {
    format!("key:{}", key_id.get(..12).unwrap_or(key_id))
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_open_and_disabled() {
        let open = AdminAuth::from_arg(None, true).expect("open");
        assert_eq!(open.decide(None), AdminDecision::Allowed);
        let off = AdminAuth::from_arg(None, false).expect("disabled");
        assert_eq!(
            off.decide(Some("anything-at-all-here")),
            AdminDecision::Disabled
        );
        let keys = AdminAuth::from_arg(Some("admin-key-0123456789,second-admin-key-xyz"), false)
            .expect("keys");
        assert_eq!(
            keys.decide(Some("admin-key-0123456789")),
            AdminDecision::Allowed
        );
        assert_eq!(
            keys.decide(Some("second-admin-key-xyz")),
            AdminDecision::Allowed
        );
        assert_eq!(keys.decide(Some("tenant-key")), AdminDecision::Unauthorized);
        assert_eq!(keys.decide(None), AdminDecision::Unauthorized);
        assert!(!format!("{keys:?}").contains("admin-key"));
    }

    #[test]
    fn actors_name_a_key_by_its_digest_never_the_key() {
        let keys = AdminAuth::from_arg(Some("admin-key-0123456789"), false).expect("keys");
        let actor = keys.actor(Some("admin-key-0123456789"));
        let id = keys.key_id("admin-key-0123456789").expect("an admin key");
        assert_eq!(actor, format!("key:{}", &id[..12]));
        assert_eq!(keys.session_actor(Some(&id)), actor, "a session is its key");
        assert_ne!(actor, keys.actor(Some("second-admin-key-xyz")));
        assert!(!actor.contains("admin-key"));
        let open = AdminAuth::from_arg(None, true).expect("open");
        assert_eq!(open.actor(None), "open");
        assert_eq!(open.session_actor(None), "open");
    }

    #[test]
    fn bad_key_lists_are_refused() {
        assert!(matches!(
            AdminAuth::from_arg(Some("short"), false),
            Err(AdminAuthError::Short { entry: 1 })
        ));
        assert!(matches!(
            AdminAuth::from_arg(Some(" , "), false),
            Err(AdminAuthError::Empty)
        ));
    }
}
