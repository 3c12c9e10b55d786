//! Projection `credentials`: one row per passkey
//! (`queue_webauthn_credentials`), from the Credential streams. Rows and
//! columns here; `fold`, `apply`, `read` beside.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checksum::{stored_sum, table_sum, Mode, StoredSum, Sums};
use crate::row::{json_maps_are_sorted, sorted_json, Row};

pub mod apply;
pub mod fold;
pub mod read;

pub use fold::CredentialsFold;

/// The tables of this projection.
pub const TABLES: &[&str] = &[CredentialRow::TABLE];

crate::table_row! {
    /// A row of `queue_webauthn_credentials` (one passkey).
    pub struct CredentialRow {
        /// The Credential stream id (`CredentialId::for_raw_id`).
        pub credential_id: Uuid,
        /// base64url without padding.
        pub raw_credential_id: String,
        pub customer_id: Uuid,
        pub name: Option<String>,
        pub aaguid: Option<Uuid>,
        pub backup_eligible: bool,
        pub backup_state: bool,
        pub sign_count: i64,
        pub transports: Vec<String>,
        /// The webauthn-rs `Passkey` JSON as registered. Its embedded counter is
        /// stale: `sign_count` and `backup_state` are current.
        pub passkey: serde_json::Value,
        pub legacy_id: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub last_used_at: Option<DateTime<Utc>>,
        pub revoked_at: Option<DateTime<Utc>>,
        pub revoke_reason: Option<String>,
        pub updated_at: DateTime<Utc>,
        pub last_sequence: i64,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl Row for CredentialRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_webauthn_credentials";
    const KEY: &'static [&'static str] = &["credential_id"];
    fn key(&self) -> Uuid {
        self.credential_id
    }
    fn for_checksum(&self, _portable: bool) -> Cow<'_, Self> {
        if json_maps_are_sorted() {
            return Cow::Borrowed(self);
        }
        let mut row = self.clone();
        row.passkey = sorted_json(&self.passkey);
        Cow::Owned(row)
    }
}

/// Checksums of the folded tables.
pub fn sums(fold: &CredentialsFold, mode: Mode, out: &mut Sums) {
    out.insert(CredentialRow::TABLE, table_sum(&fold.credentials, mode));
}

/// How each table is checksummed as stored (`checksum::database_sums`).
pub(crate) const STORED_SUMS: &[StoredSum] = &[stored_sum::<CredentialRow>];
