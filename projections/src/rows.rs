//! The write side of the read tables: one Rust type per table row, with its
//! table name, columns and key, and two encodings used to write it: JSON
//! (for `jsonb_populate_recordset` upserts by the runner, and for content
//! checksums) and PostgreSQL COPY text (bulk loads by rebuild).

use std::borrow::Cow;
use std::hash::Hash;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::FromRow;
use uuid::Uuid;

pub use crate::read::{
    BackupCodeRow, CredentialRow, CustomerRow, EmailVerificationRow, RoleRow, SessionRow,
};

/// A row of one read table.
pub trait Row:
    Serialize + for<'r> FromRow<'r, PgRow> + Clone + Send + Sync + Unpin + 'static
{
    type Key: Eq + Hash + Clone + Send + Sync + std::fmt::Debug;
    const TABLE: &'static str;
    /// Every column, in the order `copy_text` writes them.
    const COLUMNS: &'static [&'static str];
    /// The primary key columns (the upsert conflict target).
    const KEY: &'static [&'static str];
    fn key(&self) -> Self::Key;
    /// Appends the row's fields, in `COLUMNS` order, to a binary COPY tuple.
    fn copy_binary(&self, row: &mut CopyRow<'_>);
    /// The row as checksummed: JSON values with their object keys sorted
    /// (so the encoding does not depend on key order) and, when `portable`,
    /// without what differs between two databases holding the same log
    /// (storage positions).
    fn for_checksum(&self, _portable: bool) -> Cow<'_, Self> {
        Cow::Borrowed(self)
    }
}

/// Whether `serde_json::Map` keeps its keys sorted in this build (it does
/// unless some crate enables serde_json's `preserve_order`).
pub fn json_maps_are_sorted() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut map = serde_json::Map::new();
        map.insert("b".into(), serde_json::Value::Null);
        map.insert("a".into(), serde_json::Value::Null);
        map.keys().next().map(String::as_str) == Some("a")
    })
}

/// A JSON value with every object's keys in sorted order.
pub fn sorted_json(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_json(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted_json).collect())
        }
        other => other.clone(),
    }
}

/// One row of `queue_session_refresh_tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
pub struct RefreshTokenRow {
    pub refresh_hash: String,
    pub session_id: Uuid,
    pub customer_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// One row of `customer_audit_events` as written (positions and raw hash;
/// the read side is [`crate::read::AuditEventRow`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
    pub metadata: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

/// Times as PostgreSQL stores them: whole microseconds, truncated the way
/// sqlx encodes them, so a row folded in memory equals the row read back.
pub fn db_time(at: DateTime<Utc>) -> DateTime<Utc> {
    let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
    match epoch {
        Some(epoch) => match (at - epoch).num_microseconds() {
            Some(us) => epoch + TimeDelta::microseconds(us),
            None => at,
        },
        None => at,
    }
}

/// The binary COPY stream's header: signature, flags, no extension.
pub const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY stream's trailer (a field count of -1).
pub const COPY_BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// The OID of `text`, the element type of the `text[]` columns.
const TEXT_OID: u32 = 25;

/// Builds one tuple of PostgreSQL's binary COPY format. Binary rather than
/// text because the server then parses nothing (no timestamps, UUIDs or
/// escapes to read): about a third less server time per audit row,
/// measured (docs/decisions/0102). The server checks every field against
/// its column type (lengths, ranges, UTF-8), so a wrong encoding fails the
/// COPY; it cannot load a different value.
pub struct CopyRow<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> CopyRow<'a> {
    /// Starts a tuple of `columns` fields.
    pub fn new(out: &'a mut Vec<u8>, columns: usize) -> Self {
        out.extend_from_slice(&(columns as i16).to_be_bytes());
        Self { out }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.out
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.out.extend_from_slice(bytes);
    }

    pub fn null(&mut self) {
        self.out.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn text(&mut self, text: &str) {
        self.field(text.as_bytes());
    }

    pub fn opt_text(&mut self, text: Option<&str>) {
        match text {
            Some(t) => self.text(t),
            None => self.null(),
        }
    }

    pub fn uuid(&mut self, id: &Uuid) {
        self.field(id.as_bytes());
    }

    pub fn opt_uuid(&mut self, id: Option<&Uuid>) {
        match id {
            Some(id) => self.uuid(id),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, value: bool) {
        self.field(&[u8::from(value)]);
    }

    /// A `bigint`.
    pub fn int8(&mut self, value: i64) {
        self.field(&value.to_be_bytes());
    }

    pub fn opt_int8(&mut self, value: Option<i64>) {
        match value {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    /// An `integer`.
    pub fn int4(&mut self, value: i32) {
        self.field(&value.to_be_bytes());
    }

    pub fn opt_int4(&mut self, value: Option<i32>) {
        match value {
            Some(v) => self.int4(v),
            None => self.null(),
        }
    }

    /// A `timestamptz`: microseconds since 2000-01-01 UTC, truncated like
    /// [`db_time`] (and sqlx).
    pub fn time(&mut self, at: &DateTime<Utc>) {
        let micros = at.timestamp() * 1_000_000 + i64::from(at.timestamp_subsec_micros());
        // Truncate towards the PostgreSQL epoch, as `db_time` does: for
        // times before 2000 with a sub-microsecond part that is one
        // microsecond later than flooring.
        let before_epoch_with_nanos =
            micros < PG_EPOCH_MICROS && !at.timestamp_subsec_nanos().is_multiple_of(1_000);
        let pg = micros - PG_EPOCH_MICROS + i64::from(before_epoch_with_nanos);
        self.field(&pg.to_be_bytes());
    }

    pub fn opt_time(&mut self, at: Option<&DateTime<Utc>>) {
        match at {
            Some(at) => self.time(at),
            None => self.null(),
        }
    }

    /// A `json`: the JSON text as it is.
    pub fn json_text(&mut self, value: &serde_json::Value) {
        self.json_after(&[], value);
    }

    /// A `jsonb`: format version 1, then the JSON text.
    pub fn json(&mut self, value: &serde_json::Value) {
        self.json_after(&[1], value);
    }

    /// A length-prefixed field of `prefix` then the JSON text.
    fn json_after(&mut self, prefix: &[u8], value: &serde_json::Value) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0, 0, 0, 0]);
        self.out.extend_from_slice(prefix);
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
        let len = (self.out.len() - start - 4) as i32;
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// A one-dimensional `text[]` without NULLs.
    pub fn text_array(&mut self, items: &[String]) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0, 0, 0, 0]);
        let dimensions: i32 = if items.is_empty() { 0 } else { 1 };
        self.out.extend_from_slice(&dimensions.to_be_bytes());
        self.out.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
        self.out.extend_from_slice(&TEXT_OID.to_be_bytes());
        if !items.is_empty() {
            self.out
                .extend_from_slice(&(items.len() as i32).to_be_bytes());
            self.out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for item in items {
                self.field(item.as_bytes());
            }
        }
        let len = (self.out.len() - start - 4) as i32;
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn bytea(&mut self, bytes: &[u8]) {
        self.field(bytes);
    }
}

impl Row for CustomerRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_customers";
    const COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "email",
        "display_name",
        "email_verified",
        "email_verified_at",
        "status",
        "status_reason",
        "status_changed_at",
        "status_changed_by",
        "default_role",
        "legacy_id",
        "backup_codes_generation",
        "pending_verification_sequence",
        "created_at",
        "updated_at",
        "last_sequence",
    ];
    const KEY: &'static [&'static str] = &["customer_id"];
    fn key(&self) -> Uuid {
        self.customer_id
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.customer_id);
        l.text(&self.email);
        l.opt_text(self.display_name.as_deref());
        l.bool(self.email_verified);
        l.opt_time(self.email_verified_at.as_ref());
        l.text(&self.status);
        l.opt_text(self.status_reason.as_deref());
        l.opt_time(self.status_changed_at.as_ref());
        l.opt_text(self.status_changed_by.as_deref());
        l.text(&self.default_role);
        l.opt_int8(self.legacy_id);
        l.opt_int4(self.backup_codes_generation);
        l.opt_int8(self.pending_verification_sequence);
        l.time(&self.created_at);
        l.time(&self.updated_at);
        l.int8(self.last_sequence);
    }
}

impl Row for RoleRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_customer_roles";
    const COLUMNS: &'static [&'static str] = &[
        "row_id",
        "grant_id",
        "customer_id",
        "role",
        "is_default",
        "ticket_id",
        "reason",
        "granted_by",
        "granted_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
        "revoke_reason",
    ];
    const KEY: &'static [&'static str] = &["row_id"];
    fn key(&self) -> Uuid {
        self.row_id
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.row_id);
        l.opt_uuid(self.grant_id.as_ref());
        l.uuid(&self.customer_id);
        l.text(&self.role);
        l.bool(self.is_default);
        l.opt_text(self.ticket_id.as_deref());
        l.opt_text(self.reason.as_deref());
        l.opt_text(self.granted_by.as_deref());
        l.time(&self.granted_at);
        l.opt_time(self.expires_at.as_ref());
        l.opt_time(self.revoked_at.as_ref());
        l.opt_text(self.revoked_by.as_deref());
        l.opt_text(self.revoke_reason.as_deref());
    }
}

impl Row for BackupCodeRow {
    type Key = (Uuid, i32, i32);
    const TABLE: &'static str = "queue_backup_codes";
    const COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "generation",
        "code_index",
        "code_hash",
        "created_at",
        "redeemed_at",
        "voided",
        "voided_at",
    ];
    const KEY: &'static [&'static str] = &["customer_id", "generation", "code_index"];
    fn key(&self) -> (Uuid, i32, i32) {
        (self.customer_id, self.generation, self.code_index)
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.customer_id);
        l.int4(self.generation);
        l.int4(self.code_index);
        l.text(&self.code_hash);
        l.time(&self.created_at);
        l.opt_time(self.redeemed_at.as_ref());
        l.bool(self.voided);
        l.opt_time(self.voided_at.as_ref());
    }
}

impl Row for EmailVerificationRow {
    type Key = (Uuid, i64);
    const TABLE: &'static str = "queue_email_verifications";
    const COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "request_sequence",
        "token_hash",
        "requested_at",
        "expires_at",
        "status",
        "verified_at",
        "superseded_at",
    ];
    const KEY: &'static [&'static str] = &["customer_id", "request_sequence"];
    fn key(&self) -> (Uuid, i64) {
        (self.customer_id, self.request_sequence)
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.customer_id);
        l.int8(self.request_sequence);
        l.text(&self.token_hash);
        l.time(&self.requested_at);
        l.time(&self.expires_at);
        l.text(&self.status);
        l.opt_time(self.verified_at.as_ref());
        l.opt_time(self.superseded_at.as_ref());
    }
}

impl Row for CredentialRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_webauthn_credentials";
    const COLUMNS: &'static [&'static str] = &[
        "credential_id",
        "raw_credential_id",
        "customer_id",
        "name",
        "aaguid",
        "backup_eligible",
        "backup_state",
        "sign_count",
        "transports",
        "passkey",
        "legacy_id",
        "created_at",
        "last_used_at",
        "revoked_at",
        "revoke_reason",
        "updated_at",
        "last_sequence",
    ];
    const KEY: &'static [&'static str] = &["credential_id"];
    fn key(&self) -> Uuid {
        self.credential_id
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.credential_id);
        l.text(&self.raw_credential_id);
        l.uuid(&self.customer_id);
        l.opt_text(self.name.as_deref());
        l.opt_uuid(self.aaguid.as_ref());
        l.bool(self.backup_eligible);
        l.bool(self.backup_state);
        l.int8(self.sign_count);
        l.text_array(&self.transports);
        l.json(&self.passkey);
        l.opt_int8(self.legacy_id);
        l.time(&self.created_at);
        l.opt_time(self.last_used_at.as_ref());
        l.opt_time(self.revoked_at.as_ref());
        l.opt_text(self.revoke_reason.as_deref());
        l.time(&self.updated_at);
        l.int8(self.last_sequence);
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

impl Row for SessionRow {
    type Key = Uuid;
    const TABLE: &'static str = "queue_sessions";
    const COLUMNS: &'static [&'static str] = &[
        "session_id",
        "customer_id",
        "amr",
        "credential_id",
        "family_id",
        "legacy_id",
        "created_at",
        "last_seen_at",
        "idle_timeout_secs",
        "idle_expires_at",
        "expires_at",
        "refresh_count",
        "refresh_hash",
        "revoked_at",
        "revoke_reason",
        "updated_at",
        "last_sequence",
    ];
    const KEY: &'static [&'static str] = &["session_id"];
    fn key(&self) -> Uuid {
        self.session_id
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.uuid(&self.session_id);
        l.uuid(&self.customer_id);
        l.opt_text(self.amr.as_deref());
        l.opt_uuid(self.credential_id.as_ref());
        l.opt_uuid(self.family_id.as_ref());
        l.opt_int8(self.legacy_id);
        l.time(&self.created_at);
        l.time(&self.last_seen_at);
        l.int8(self.idle_timeout_secs);
        l.time(&self.idle_expires_at);
        l.time(&self.expires_at);
        l.int8(self.refresh_count);
        l.text(&self.refresh_hash);
        l.opt_time(self.revoked_at.as_ref());
        l.opt_text(self.revoke_reason.as_deref());
        l.time(&self.updated_at);
        l.int8(self.last_sequence);
    }
}

impl Row for RefreshTokenRow {
    type Key = String;
    const TABLE: &'static str = "queue_session_refresh_tokens";
    const COLUMNS: &'static [&'static str] = &[
        "refresh_hash",
        "session_id",
        "customer_id",
        "issued_at",
        "retired_at",
    ];
    const KEY: &'static [&'static str] = &["refresh_hash"];
    fn key(&self) -> String {
        self.refresh_hash.clone()
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.text(&self.refresh_hash);
        l.uuid(&self.session_id);
        l.uuid(&self.customer_id);
        l.time(&self.issued_at);
        l.opt_time(self.retired_at.as_ref());
    }
}

impl Row for AuditRow {
    type Key = (i64, i64);
    const TABLE: &'static str = "customer_audit_events";
    const COLUMNS: &'static [&'static str] = &[
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "commit_xid",
        "insert_id",
        "event_id",
        "customer_id",
        "service",
        "actor",
        "action",
        "target",
        "ticket_id",
        "metadata",
        "occurred_at",
    ];
    /// The ledger position (migration 0300).
    const KEY: &'static [&'static str] = &["commit_xid", "insert_id"];
    fn key(&self) -> (i64, i64) {
        (self.commit_xid, self.insert_id)
    }
    fn copy_binary(&self, l: &mut CopyRow<'_>) {
        l.text(&self.aggregate_type);
        l.text(&self.aggregate_id);
        l.int8(self.sequence);
        l.int8(self.commit_xid);
        l.int8(self.insert_id);
        l.uuid(&self.event_id);
        l.opt_uuid(self.customer_id.as_ref());
        l.opt_text(self.service.as_deref());
        l.opt_text(self.actor.as_deref());
        l.text(&self.action);
        l.text(&self.target);
        l.opt_text(self.ticket_id.as_deref());
        l.json_text(&self.metadata);
        l.time(&self.occurred_at);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_binary_fields() {
        let mut out = Vec::new();
        let mut row = CopyRow::new(&mut out, 9);
        row.text("a\tb");
        row.null();
        row.int4(-2);
        row.int8(7);
        row.bool(true);
        row.text_array(&["x".into(), "yz".into()]);
        row.text_array(&[]);
        row.json(&serde_json::json!({"k": 1}));
        row.time(&Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap());
        let mut expected: Vec<u8> = vec![0, 9];
        expected.extend([0, 0, 0, 3, b'a', b'\t', b'b']);
        expected.extend([0xff, 0xff, 0xff, 0xff]);
        expected.extend([0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend([0, 0, 0, 1, 1]);
        expected.extend([0, 0, 0, 31, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25]);
        expected.extend([
            0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, b'x', 0, 0, 0, 2, b'y', b'z',
        ]);
        expected.extend([0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
        expected.extend([0, 0, 0, 8, 1]);
        expected.extend(b"{\"k\":1}");
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40]);
        assert_eq!(out, expected);
    }

    #[test]
    fn copy_binary_time_truncates_like_db_time() {
        for t in [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + TimeDelta::nanoseconds(1_234_567),
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
                + TimeDelta::nanoseconds(999_999_999),
            Utc.with_ymd_and_hms(1969, 7, 20, 20, 17, 0).unwrap() + TimeDelta::nanoseconds(1),
        ] {
            let mut out = Vec::new();
            CopyRow::new(&mut out, 1).time(&t);
            let micros = i64::from_be_bytes(out[6..14].try_into().unwrap());
            let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
            assert_eq!(epoch + TimeDelta::microseconds(micros), db_time(t), "{t}");
        }
    }

    #[test]
    fn db_time_truncates_to_microseconds() {
        let t =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + TimeDelta::nanoseconds(1_234_567);
        assert_eq!(db_time(t).timestamp_subsec_nanos(), 1_234_000);
    }
}
