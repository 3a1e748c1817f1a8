//! API keys → tenants. Keys come from a file (`key tenant [max_in_flight [priorities]]` per line,
//! `#` comments) or inline (`key:tenant[:max_in_flight[:priorities]],key2:tenant2`), where
//! `priorities` lists the classes the key may ask for, joined by `+` (`standard+bulk`; all three
//! when absent). Without keys the coordinator runs open,
//! as tenant `default`, and only on a loopback listener (checked in `run`).
//!
//! Keys are kept as SHA-256 digests: a lookup hashes the presented key, so neither the map nor a
//! timing difference in string comparison reveals a valid key's prefix.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use kontext_proto::Priority;
use kontext_storage::keys::check_tenant;
use sha2::{Digest, Sha256};

/// Tenant of open access (no keys configured).
pub const OPEN_TENANT: &str = "default";

/// Who is calling: the tenant and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    /// Non-terminal jobs this tenant may have at once (0 = no limit).
    pub max_in_flight: u32,
    /// Priority classes this key may ask for.
    pub priorities: Vec<Priority>,
}

impl Tenant {
    pub fn may_use(&self, priority: Priority) -> bool {
        self.priorities.contains(&priority)
    }
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Standard => "standard",
        Priority::Bulk => "bulk",
    }
}

/// The classes a key may use, as the API names them ("standard, bulk").
pub fn priority_list(priorities: &[Priority]) -> String {
    priorities
        .iter()
        .map(|&p| priority_name(p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `standard+bulk` → [Standard, Bulk].
fn parse_priorities(text: &str) -> Result<Vec<Priority>, String> {
    let mut out = Vec::new();
    for name in text.split('+') {
        let p = Priority::ORDER
            .into_iter()
            .find(|&p| priority_name(p) == name)
            .ok_or_else(|| {
                format!(
                    "priority {name:?} is not one of high, standard, bulk (join several with +)"
                )
            })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// How requests are authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No keys: everyone is tenant `default` (loopback only).
    Open { max_in_flight: u32 },
    /// SHA-256 of each key → its tenant.
    Keys(HashMap<[u8; 32], Tenant>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { max_in_flight } => f
                .debug_struct("Open")
                .field("max_in_flight", max_in_flight)
                .finish(),
            // Never the keys, not even their digests: only which tenants exist.
            Self::Keys(map) => {
                let mut tenants: Vec<&str> = map.values().map(|t| t.id.as_str()).collect();
                tenants.sort_unstable();
                tenants.dedup();
                f.debug_struct("Keys")
                    .field("keys", &map.len())
                    .field("tenants", &tenants)
                    .finish()
            }
        }
    }
}

/// A malformed key list; names the line (or entry) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("reading API keys file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API keys {origin}, entry {entry}: {reason}")]
    Entry {
        origin: String,
        entry: usize,
        reason: String,
    },
    #[error("API keys {origin}: no keys found")]
    Empty { origin: String },
}

impl Auth {
    /// Parse `--api-keys`: a path to a file when one exists there, otherwise an inline list.
    /// `default_max_in_flight` applies to keys that give no limit of their own.
    pub fn from_arg(value: &str, default_max_in_flight: u32) -> Result<Self, AuthConfigError> {
        let path = Path::new(value);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
                path: value.to_owned(),
                source,
            })?;
            let origin = format!("file {value}");
            let entries = text.lines().map(|l| split_line(l, char::is_whitespace));
            return Self::from_entries(&origin, entries, default_max_in_flight);
        }
        if !value.contains(':') {
            return Err(AuthConfigError::Read {
                path: value.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (an inline list looks like \"key:tenant,key2:tenant2\")",
                ),
            });
        }
        let entries = value.split(',').map(|e| split_line(e, |c| c == ':'));
        Self::from_entries("list", entries, default_max_in_flight)
    }

    fn from_entries<'a>(
        origin: &str,
        entries: impl Iterator<Item = Option<Vec<&'a str>>>,
        default_max_in_flight: u32,
    ) -> Result<Self, AuthConfigError> {
        let mut map = HashMap::new();
        for (i, fields) in entries.enumerate() {
            let Some(fields) = fields else { continue };
            let bad = |reason: String| AuthConfigError::Entry {
                origin: origin.to_owned(),
                entry: i + 1,
                reason,
            };
            let (key, tenant, max, priorities) = match fields.as_slice() {
                [key, tenant] => (*key, *tenant, None, None),
                [key, tenant, max] => (*key, *tenant, Some(*max), None),
                [key, tenant, max, prio] => (*key, *tenant, Some(*max), Some(*prio)),
                _ => {
                    return Err(bad(
                        "expected \"key tenant [max_in_flight [priorities]]\" (file) or \
                         \"key:tenant[:max[:priorities]]\""
                            .into(),
                    ));
                }
            };
            let priorities = match priorities {
                None => Priority::ORDER.to_vec(),
                Some(text) => parse_priorities(text).map_err(bad)?,
            };
            if key.len() < 16 {
                return Err(bad(format!(
                    "key is {} characters; use at least 16 random characters",
                    key.len()
                )));
            }
            check_tenant(tenant).map_err(|e| bad(e.to_string()))?;
            let max_in_flight = match max {
                None => default_max_in_flight,
                Some(m) => m.parse().map_err(|_| {
                    bad(format!(
                        "max_in_flight {m:?} is not a whole number (0 = no limit)"
                    ))
                })?,
            };
            let tenant = Tenant {
                id: tenant.to_owned(),
                max_in_flight,
                priorities,
            };
            if map.insert(digest(key), tenant).is_some() {
                return Err(bad("the same key appears twice".into()));
            }
        }
        if map.is_empty() {
            return Err(AuthConfigError::Empty {
                origin: origin.to_owned(),
            });
        }
        Ok(Self::Keys(map))
    }

    /// The tenant a presented key belongs to; open access ignores the key.
    pub fn tenant(&self, key: Option<&str>) -> Option<Tenant> {
        match self {
            Self::Open { max_in_flight } => Some(Tenant {
                id: OPEN_TENANT.to_owned(),
                max_in_flight: *max_in_flight,
                priorities: Priority::ORDER.to_vec(),
            }),
            Self::Keys(map) => key.and_then(|k| map.get(&digest(k)).cloned()),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }
}

/// Fields of one entry; `None` for blank lines and comments.
fn split_line(line: &str, sep: impl Fn(char) -> bool) -> Option<Vec<&str>> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return None;
    }
    Some(line.split(sep).filter(|f| !f.is_empty()).collect())
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1-0123456789abcdef";
    const K2: &str = "k2-0123456789abcdef";

    #[test]
    fn inline_list_maps_keys_to_tenants() {
        let auth = Auth::from_arg(&format!("{K1}:acme,{K2}:globex:3"), 24).expect("valid");
        assert_eq!(
            auth.tenant(Some(K1)),
            Some(Tenant {
                id: "acme".into(),
                max_in_flight: 24,
                priorities: Priority::ORDER.to_vec(),
            })
        );
        assert_eq!(auth.tenant(Some(K2)).map(|t| t.max_in_flight), Some(3));
        assert_eq!(auth.tenant(Some("k3-0123456789abcdef")), None);
        assert_eq!(auth.tenant(None), None);
    }

    #[test]
    fn file_lines_allow_comments_and_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("# ops keys\n{K1} acme 5\n\n{K2}\tglobex # team b\n"),
        )
        .expect("write");
        let auth = Auth::from_arg(path.to_str().expect("utf-8 path"), 24).expect("valid");
        assert_eq!(auth.tenant(Some(K1)).map(|t| t.max_in_flight), Some(5));
        assert_eq!(auth.tenant(Some(K2)).map(|t| t.id), Some("globex".into()));
    }

    #[test]
    fn bad_entries_name_the_entry() {
        for (arg, needle) in [
            ("short:acme", "at least 16"),
            (&format!("{K1}:a/b") as &str, "tenant id"),
            (&format!("{K1}:acme:x"), "max_in_flight"),
            (&format!("{K1}:acme,{K1}:globex"), "twice"),
            ("/no/such/file", "no such file"),
        ] {
            let err = Auth::from_arg(arg, 24).expect_err(arg).to_string();
            assert!(err.contains(needle), "{arg}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let auth = Auth::from_arg(&format!("{K1}:acme"), 24).expect("valid");
        let text = format!("{auth:?}");
        assert!(!text.contains(K1) && text.contains("acme"), "{text}");
    }

    #[test]
    fn keys_may_be_limited_to_priority_classes() {
        let auth =
            Auth::from_arg(&format!("{K1}:acme:5:standard+bulk,{K2}:globex"), 24).expect("valid");
        let acme = auth.tenant(Some(K1)).expect("acme");
        assert!(!acme.may_use(Priority::High));
        assert!(acme.may_use(Priority::Bulk));
        assert_eq!(priority_list(&acme.priorities), "standard, bulk");
        assert!(
            auth.tenant(Some(K2))
                .expect("globex")
                .may_use(Priority::High)
        );
        let e = Auth::from_arg(&format!("{K1}:acme:5:urgent"), 24).expect_err("no such class");
        assert!(e.to_string().contains("\"urgent\""), "{e}");
    }
}
