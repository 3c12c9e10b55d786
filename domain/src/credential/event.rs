use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{CredentialName, CustomerId, LegacyId, RawCredentialId, Reason};

/// The current version of `CredentialRegistered`. Version 1.0 lacked
/// `backup_state` and `transports`; [`crate::upcast::upcasters`] fills them in.
pub const CREDENTIAL_REGISTERED_VERSION: &str = "2.0";

/// What happened to a passkey, externally tagged under the event type name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialEvent {
    #[serde(rename = "CredentialRegistered")]
    Registered {
        customer_id: CustomerId,
        raw_credential_id: RawCredentialId,
        passkey: serde_json::Value,
        name: Option<CredentialName>,
        aaguid: Option<Uuid>,
        backup_eligible: bool,
        /// Since 2.0.
        backup_state: bool,
        sign_count: u32,
        /// Since 2.0.
        transports: Vec<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "CredentialImported")]
    Imported {
        legacy_id: LegacyId,
        customer_id: CustomerId,
        raw_credential_id: RawCredentialId,
        passkey: serde_json::Value,
        name: Option<CredentialName>,
        aaguid: Option<Uuid>,
        backup_eligible: bool,
        backup_state: bool,
        sign_count: u32,
        transports: Vec<String>,
        created_at: DateTime<Utc>,
        last_used_at: Option<DateTime<Utc>>,
    },
    #[serde(rename = "CredentialUsed")]
    Used {
        sign_count: u32,
        backup_state: bool,
        at: DateTime<Utc>,
    },
    #[serde(rename = "CredentialRenamed")]
    Renamed {
        name: CredentialName,
        at: DateTime<Utc>,
    },
    #[serde(rename = "CredentialRevoked")]
    Revoked { reason: Reason, at: DateTime<Utc> },
}

impl DomainEvent for CredentialEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Registered { .. } => "CredentialRegistered",
            Self::Imported { .. } => "CredentialImported",
            Self::Used { .. } => "CredentialUsed",
            Self::Renamed { .. } => "CredentialRenamed",
            Self::Revoked { .. } => "CredentialRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::Registered { .. } => CREDENTIAL_REGISTERED_VERSION,
            _ => "1.0",
        }
        .to_owned()
    }
}
