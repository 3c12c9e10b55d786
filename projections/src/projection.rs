//! The projections by name, and their tables.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::ProjectionError;

/// One projection: a set of read tables kept by one runner with one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    Customers,
    Credentials,
    Sessions,
    Audit,
}

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::Audit,
        Projection::Credentials,
        Projection::Customers,
        Projection::Sessions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Credentials => "credentials",
            Self::Sessions => "sessions",
            Self::Audit => "audit",
        }
    }

    /// The tables this projection owns.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Self::Customers => &[
                "queue_customers",
                "queue_customer_roles",
                "queue_backup_codes",
                "queue_email_verifications",
            ],
            Self::Credentials => &["queue_webauthn_credentials"],
            Self::Sessions => &["queue_sessions", "queue_session_refresh_tokens"],
            Self::Audit => &["customer_audit_events"],
        }
    }

    /// Whether events of this aggregate type matter to the projection.
    pub fn reads(self, aggregate_type: &str) -> bool {
        match self {
            Self::Customers => aggregate_type == "Customer",
            Self::Credentials => aggregate_type == "Credential",
            Self::Sessions => aggregate_type == "Session",
            Self::Audit => crate::events::KNOWN_TYPES.contains(&aggregate_type),
        }
    }

    /// The session advisory lock held by this projection's one active runner
    /// ("queuepr" + index; the sealer's is "queuseal").
    pub fn lock_key(self) -> i64 {
        let index = match self {
            Self::Customers => 1,
            Self::Credentials => 2,
            Self::Sessions => 3,
            Self::Audit => 4,
        };
        0x7175_6575_7072_0000 + index
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Projection {
    type Err = ProjectionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }
}
