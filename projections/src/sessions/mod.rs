//! Projection `sessions`: one row per session (`queue_sessions`) and per
//! refresh token ever issued (`queue_session_refresh_tokens`), from the
//! Session streams. Rows and columns here; `fold`, `apply`, `read` beside.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checksum::{stored_sum, table_sum, Mode, StoredSum, Sums};
use crate::row::Row;

pub mod apply;
pub mod fold;
pub mod read;

pub use fold::SessionsFold;

/// The tables of this projection.
pub const TABLES: &[&str] = &[SessionRow::TABLE, RefreshTokenRow::TABLE];

crate::table_row! {
    /// A row of `queue_sessions`.
    pub struct SessionRow {
        pub session_id: Uuid,
        pub customer_id: Uuid,
        /// `webauthn` or `backup_code`; `None` for sessions imported from legacy.
        pub amr: Option<String>,
        pub credential_id: Option<Uuid>,
        pub family_id: Option<Uuid>,
        pub legacy_id: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub last_seen_at: DateTime<Utc>,
        pub idle_timeout_secs: i64,
        /// `last_seen_at` + idle timeout.
        pub idle_expires_at: DateTime<Utc>,
        /// The absolute expiry.
        pub expires_at: DateTime<Utc>,
        pub refresh_count: i64,
        /// SHA-256 (hex) of the current refresh token.
        pub refresh_hash: String,
        pub revoked_at: Option<DateTime<Utc>>,
        pub revoke_reason: Option<String>,
        pub updated_at: DateTime<Utc>,
        pub last_sequence: i64,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl SessionRow {
    /// When the session ends unless refreshed: the earlier of the idle and
    /// the absolute expiry.
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.idle_expires_at.min(self.expires_at)
    }

    /// Neither revoked nor past a timeout at `at`.
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && at < self.ends_at()
    }
}

impl Row for SessionRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_sessions";
    const KEY: &'static [&'static str] = &["session_id"];
    fn key(&self) -> Uuid {
        self.session_id
    }
}

crate::table_row! {
    /// One row of `queue_session_refresh_tokens`.
    pub struct RefreshTokenRow {
        pub refresh_hash: String,
        pub session_id: Uuid,
        pub customer_id: Uuid,
        pub issued_at: DateTime<Utc>,
        pub retired_at: Option<DateTime<Utc>>,
        /// The customer's tenant (issue 22, ADR 0219): row-level security
        /// keys on it.
        pub tenant_id: Uuid,
    }
}

impl Row for RefreshTokenRow {
    type Key = String;
    const TABLE: &'static str = "queue_session_refresh_tokens";
    const KEY: &'static [&'static str] = &["refresh_hash"];
    fn key(&self) -> String {
        self.refresh_hash.clone()
    }
}

/// Checksums of the folded tables.
pub fn sums(fold: &SessionsFold, mode: Mode, out: &mut Sums) {
    out.insert(SessionRow::TABLE, table_sum(&fold.sessions, mode));
    out.insert(RefreshTokenRow::TABLE, table_sum(&fold.tokens, mode));
}

/// How each table is checksummed as stored (`checksum::database_sums`).
pub(crate) const STORED_SUMS: &[StoredSum] =
    &[stored_sum::<SessionRow>, stored_sum::<RefreshTokenRow>];
