use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::types::{CredentialName, CustomerId, LegacyId, RawCredentialId, Reason};

/// Everything that can be asked of a passkey. The stream id must be
/// `raw_credential_id.credential_id()` ([`crate::types::CredentialId::for_raw_id`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialCommand {
    Register {
        customer_id: CustomerId,
        raw_credential_id: RawCredentialId,
        /// The serialised webauthn-rs `Passkey`; opaque here, but it must be a
        /// JSON object without floats or integers of 2^53 or more.
        passkey: serde_json::Value,
        name: Option<CredentialName>,
        aaguid: Option<Uuid>,
        backup_eligible: bool,
        backup_state: bool,
        sign_count: u32,
        /// WebAuthn transport hints, e.g. `internal`, `hybrid`, `usb`.
        transports: Vec<String>,
        at: DateTime<Utc>,
    },
    /// A passkey backfilled from the legacy database.
    Import {
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
    /// A successful assertion with this passkey. Refused with
    /// `CounterRegression` when the sign counter did not increase (possible
    /// clone); the caller audits that.
    RecordUse {
        sign_count: u32,
        backup_state: bool,
        at: DateTime<Utc>,
    },
    Rename {
        name: CredentialName,
        at: DateTime<Utc>,
    },
    Revoke {
        reason: Reason,
        at: DateTime<Utc>,
    },
}
