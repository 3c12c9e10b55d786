//! Projection `customers`: one row per customer (`queue_customers`), their
//! roles (`queue_customer_roles`), backup codes (`queue_backup_codes`) and
//! email verification requests (`queue_email_verifications`), from the
//! Customer streams. Rows and columns here; `fold` (events to rows),
//! `apply` (a batch against the tables), `read` (queries for the API).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checksum::{stored_sum, table_sum, Mode, StoredSum, Sums};
use crate::row::Row;

pub mod apply;
pub mod fold;
pub mod read;

pub use fold::CustomersFold;

/// Namespace of the default-role row ids: UUIDv5(URL, "urn:queue:ns:default-role-row").
pub const DEFAULT_ROLE_NAMESPACE: Uuid = Uuid::from_u128(0x61967722_9519_513f_a989_19f04ee4d8a4);

/// The default-role row id of a customer.
pub fn default_role_row_id(customer_id: Uuid) -> Uuid {
    Uuid::new_v5(&DEFAULT_ROLE_NAMESPACE, customer_id.as_bytes())
}

/// The tables of this projection.
pub const TABLES: &[&str] = &[
    CustomerRow::TABLE,
    RoleRow::TABLE,
    BackupCodeRow::TABLE,
    EmailVerificationRow::TABLE,
];

crate::table_row! {
    /// A row of `queue_customers`.
    pub struct CustomerRow {
        pub customer_id: Uuid,
        /// Normalised (lowercase) email.
        pub email: String,
        pub display_name: Option<String>,
        pub email_verified: bool,
        pub email_verified_at: Option<DateTime<Utc>>,
        /// `active` or `suspended`.
        pub status: String,
        pub status_reason: Option<String>,
        pub status_changed_at: Option<DateTime<Utc>>,
        pub status_changed_by: Option<String>,
        /// The role held without a grant (`antlers-user`).
        pub default_role: String,
        pub legacy_id: Option<i64>,
        /// The current backup code set's generation, if any.
        pub backup_codes_generation: Option<i32>,
        /// `request_sequence` of the pending email verification, if any.
        pub pending_verification_sequence: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
        /// Sequence of the last Customer event folded in (compare with the
        /// aggregate's version to know whether the row is current).
        pub last_sequence: i64,
        /// The customer's tenant (issue 22; `TenantId::DEFAULT` for every
        /// customer from before tenants).
        pub tenant_id: Uuid,
    }
}

impl CustomerRow {
    pub fn is_suspended(&self) -> bool {
        self.status == "suspended"
    }
}

impl Row for CustomerRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_customers";
    const KEY: &'static [&'static str] = &["customer_id"];
    fn key(&self) -> Uuid {
        self.customer_id
    }
}

crate::table_row! {
    /// A row of `queue_customer_roles`: a grant, or the default role
    /// (`is_default`, `grant_id` = `None`).
    pub struct RoleRow {
        pub row_id: Uuid,
        pub grant_id: Option<Uuid>,
        pub customer_id: Uuid,
        pub role: String,
        pub is_default: bool,
        pub ticket_id: Option<String>,
        pub reason: Option<String>,
        /// The actor who granted it (`None` for the default role).
        pub granted_by: Option<String>,
        pub granted_at: DateTime<Utc>,
        pub expires_at: Option<DateTime<Utc>>,
        pub revoked_at: Option<DateTime<Utc>>,
        pub revoked_by: Option<String>,
        pub revoke_reason: Option<String>,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl RoleRow {
    /// Not revoked and not expired at `at` (a grant ends at its `expires_at`).
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|end| at < end)
    }
}

impl Row for RoleRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_customer_roles";
    const KEY: &'static [&'static str] = &["row_id"];
    fn key(&self) -> Uuid {
        self.row_id
    }
}

crate::table_row! {
    /// A row of `queue_backup_codes`.
    pub struct BackupCodeRow {
        pub customer_id: Uuid,
        pub generation: i32,
        pub code_index: i32,
        /// SHA-256 of the code, 64 hex digits.
        pub code_hash: String,
        pub created_at: DateTime<Utc>,
        pub redeemed_at: Option<DateTime<Utc>>,
        pub voided: bool,
        pub voided_at: Option<DateTime<Utc>>,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl Row for BackupCodeRow {
    type Key = (Uuid, i32, i32);
    const TABLE: &'static str = "queue_backup_codes";
    const KEY: &'static [&'static str] = &["customer_id", "generation", "code_index"];
    fn key(&self) -> (Uuid, i32, i32) {
        (self.customer_id, self.generation, self.code_index)
    }
}

crate::table_row! {
    /// A row of `queue_email_verifications` (one request).
    pub struct EmailVerificationRow {
        pub customer_id: Uuid,
        pub request_sequence: i64,
        /// SHA-256 of the emailed token, 64 hex digits.
        pub token_hash: String,
        pub requested_at: DateTime<Utc>,
        pub expires_at: DateTime<Utc>,
        /// `pending`, `verified` or `superseded` (expiry is judged with a time).
        pub status: String,
        pub verified_at: Option<DateTime<Utc>>,
        pub superseded_at: Option<DateTime<Utc>>,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl EmailVerificationRow {
    /// Pending and not expired at `at`.
    pub fn is_usable(&self, at: DateTime<Utc>) -> bool {
        self.status == "pending" && at < self.expires_at
    }
}

impl Row for EmailVerificationRow {
    type Key = (Uuid, i64);
    const TABLE: &'static str = "queue_email_verifications";
    const KEY: &'static [&'static str] = &["customer_id", "request_sequence"];
    fn key(&self) -> (Uuid, i64) {
        (self.customer_id, self.request_sequence)
    }
}

/// Checksums of the folded tables.
pub fn sums(fold: &CustomersFold, mode: Mode, out: &mut Sums) {
    out.insert(CustomerRow::TABLE, table_sum(&fold.customers, mode));
    out.insert(RoleRow::TABLE, table_sum(&fold.roles, mode));
    out.insert(BackupCodeRow::TABLE, table_sum(&fold.codes, mode));
    out.insert(
        EmailVerificationRow::TABLE,
        table_sum(&fold.verifications, mode),
    );
}

/// How each table is checksummed as stored (`checksum::database_sums`).
pub(crate) const STORED_SUMS: &[StoredSum] = &[
    stored_sum::<CustomerRow>,
    stored_sum::<RoleRow>,
    stored_sum::<BackupCodeRow>,
    stored_sum::<EmailVerificationRow>,
];
