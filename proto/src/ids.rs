//! Ids of jobs and chains: UUID v4, printed hyphenated. In a module of their own so that the
//! error types (which name them) and the job and chain types (which carry those errors) don't
//! import each other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

/// A chain's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub Uuid);

/// `new`, `Default`, `Display` and `FromStr` for an id type.
macro_rules! uuid_id {
    ($id:ident) => {
        impl $id {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $id {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $id {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(JobId);
uuid_id!(ChainId);
