//! Projection `audit`: one append-only row per audited event
//! (`customer_audit_events`), from every stream. Rows and columns here;
//! `fold` (the audit entry of an event), `apply`, `read` (pages of the
//! log, served from the events themselves) beside.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checksum::{stored_sum, StoredSum};
use crate::row::{json_maps_are_sorted, sorted_json, Row};

pub mod apply;
pub mod fold;
pub mod read;

pub use fold::AuditFold;

/// Namespace of audit event ids of domain events: UUIDv5(URL, "urn:queue:ns:audit-row").
pub const AUDIT_ROW_NAMESPACE: Uuid = Uuid::from_u128(0xb6493213_fe98_54da_bd18_258c82399d19);

/// The audit event id of a domain event.
pub fn audit_event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    let name = format!("{aggregate_type}/{aggregate_id}/{sequence}");
    Uuid::new_v5(&AUDIT_ROW_NAMESPACE, name.as_bytes())
}

/// The tables of this projection.
pub const TABLES: &[&str] = &[AuditRow::TABLE];

crate::table_row! {
    /// One row of `customer_audit_events` as written (positions and raw hash;
    /// the read side is [`crate::read::AuditEventRow`]).
    pub struct AuditRow {
        pub aggregate_type: String,
        pub aggregate_id: String,
        pub sequence: i64,
        pub commit_xid: i64,
        pub insert_id: i64,
        pub event_id: Uuid,
        pub customer_id: Option<Uuid>,
        pub service: Option<String>,
        pub actor: Option<String>,
        pub action: String,
        pub target: String,
        pub ticket_id: Option<String>,
        /// A `json` column (migration 0301).
        pub metadata: serde_json::Value => json_text,
        pub occurred_at: DateTime<Utc>,
        /// The tenant of the event's customer (issue 22, ADR 0219); `None`
        /// for an event that names no customer (seen only by tokens not
        /// limited to tenants).
        pub tenant_id: Option<Uuid>,
    }
}

impl Row for AuditRow {
    type Key = (i64, i64);
    const TABLE: &'static str = "customer_audit_events";
    /// The ledger position (migration 0300).
    const KEY: &'static [&'static str] = &["commit_xid", "insert_id"];
    fn key(&self) -> (i64, i64) {
        (self.commit_xid, self.insert_id)
    }
    /// Positions are assigned by the database that stores the events
    /// (an extracted copy has its own), so they are left out when portable.
    fn for_checksum(&self, portable: bool) -> Cow<'_, Self> {
        if json_maps_are_sorted() && !portable {
            return Cow::Borrowed(self);
        }
        let mut row = self.clone();
        row.metadata = sorted_json(&self.metadata);
        if portable {
            row.commit_xid = 0;
            row.insert_id = 0;
        }
        Cow::Owned(row)
    }
}

/// How each table is checksummed as stored (`checksum::database_sums`).
pub(crate) const STORED_SUMS: &[StoredSum] = &[stored_sum::<AuditRow>];
