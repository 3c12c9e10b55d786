//! The write side of the read tables: one Rust type per table row, with its
//! table name, columns and key, and two encodings used to write it: JSON
//! (for `jsonb_populate_recordset` upserts by the runner, and for content
//! checksums) and PostgreSQL COPY text (bulk loads by rebuild).

use std::borrow::Cow;
use std::hash::Hash;

use chrono::{DateTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use serde::{Serialize, Serializer};
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
    /// Appends the row as one line of COPY text format.
    fn copy_text(&self, line: &mut CopyLine<'_>);
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
    pub event_type: String,
    pub event_version: String,
    pub event_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub service: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub target: String,
    pub ticket_id: Option<String>,
    pub metadata: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    #[serde(serialize_with = "bytea_json")]
    pub hash: Vec<u8>,
}

/// bytea as PostgreSQL's text input form (`\x…`), which
/// `jsonb_populate_recordset` accepts.
fn bytea_json<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("\\x{}", hex::encode(bytes)))
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

/// Builds one COPY text line.
pub struct CopyLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CopyLine<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, first: true }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    pub fn null(&mut self) {
        self.sep();
        self.out.extend_from_slice(b"\\N");
    }

    fn escaped(&mut self, text: &str) {
        for byte in text.bytes() {
            match byte {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                other => self.out.push(other),
            }
        }
    }

    pub fn text(&mut self, text: &str) {
        self.sep();
        self.escaped(text);
    }

    pub fn opt_text(&mut self, text: Option<&str>) {
        match text {
            Some(t) => self.text(t),
            None => self.null(),
        }
    }

    pub fn uuid(&mut self, id: &Uuid) {
        self.sep();
        let mut buf = Uuid::encode_buffer();
        let s = id.hyphenated().encode_lower(&mut buf);
        self.out.extend_from_slice(s.as_bytes());
    }

    pub fn opt_uuid(&mut self, id: Option<&Uuid>) {
        match id {
            Some(id) => self.uuid(id),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, value: bool) {
        self.sep();
        self.out.push(if value { b't' } else { b'f' });
    }

    pub fn int(&mut self, value: i64) {
        use std::io::Write as _;
        self.sep();
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{value}");
    }

    pub fn opt_int(&mut self, value: Option<i64>) {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    pub fn time(&mut self, at: &DateTime<Utc>) {
        use chrono::{Datelike, Timelike};
        use std::io::Write as _;
        self.sep();
        let year = at.year();
        if (1..=9999).contains(&year) {
            let _ = write!(
                self.out,
                "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                at.month(),
                at.day(),
                at.hour(),
                at.minute(),
                at.second(),
                at.timestamp_subsec_micros().min(999_999)
            );
        } else {
            self.out
                .extend_from_slice(at.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
        }
    }

    pub fn opt_time(&mut self, at: Option<&DateTime<Utc>>) {
        match at {
            Some(at) => self.time(at),
            None => self.null(),
        }
    }

    pub fn json(&mut self, value: &serde_json::Value) {
        self.sep();
        let start = self.out.len();
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
        // JSON text has no raw tab or newline, only backslashes to escape.
        if self.out[start..].contains(&b'\\') {
            let text: Vec<u8> = self.out.split_off(start);
            for byte in text {
                if byte == b'\\' {
                    self.out.extend_from_slice(b"\\\\");
                } else {
                    self.out.push(byte);
                }
            }
        }
    }

    pub fn text_array(&mut self, items: &[String]) {
        self.sep();
        let mut literal = String::from("{");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                literal.push(',');
            }
            literal.push('"');
            for c in item.chars() {
                if c == '"' || c == '\\' {
                    literal.push('\\');
                }
                literal.push(c);
            }
            literal.push('"');
        }
        literal.push('}');
        self.escaped(&literal);
    }

    pub fn bytea(&mut self, bytes: &[u8]) {
        self.sep();
        self.out.extend_from_slice(b"\\\\x");
        self.out.extend_from_slice(hex::encode(bytes).as_bytes());
    }

    pub fn end(self) {
        self.out.push(b'\n');
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
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
        l.opt_int(self.legacy_id);
        l.opt_int(self.backup_codes_generation.map(i64::from));
        l.opt_int(self.pending_verification_sequence);
        l.time(&self.created_at);
        l.time(&self.updated_at);
        l.int(self.last_sequence);
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.uuid(&self.customer_id);
        l.int(i64::from(self.generation));
        l.int(i64::from(self.code_index));
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.uuid(&self.customer_id);
        l.int(self.request_sequence);
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.uuid(&self.credential_id);
        l.text(&self.raw_credential_id);
        l.uuid(&self.customer_id);
        l.opt_text(self.name.as_deref());
        l.opt_uuid(self.aaguid.as_ref());
        l.bool(self.backup_eligible);
        l.bool(self.backup_state);
        l.int(self.sign_count);
        l.text_array(&self.transports);
        l.json(&self.passkey);
        l.opt_int(self.legacy_id);
        l.time(&self.created_at);
        l.opt_time(self.last_used_at.as_ref());
        l.opt_time(self.revoked_at.as_ref());
        l.opt_text(self.revoke_reason.as_deref());
        l.time(&self.updated_at);
        l.int(self.last_sequence);
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.uuid(&self.session_id);
        l.uuid(&self.customer_id);
        l.opt_text(self.amr.as_deref());
        l.opt_uuid(self.credential_id.as_ref());
        l.opt_uuid(self.family_id.as_ref());
        l.opt_int(self.legacy_id);
        l.time(&self.created_at);
        l.time(&self.last_seen_at);
        l.int(self.idle_timeout_secs);
        l.time(&self.idle_expires_at);
        l.time(&self.expires_at);
        l.int(self.refresh_count);
        l.text(&self.refresh_hash);
        l.opt_time(self.revoked_at.as_ref());
        l.opt_text(self.revoke_reason.as_deref());
        l.time(&self.updated_at);
        l.int(self.last_sequence);
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
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.text(&self.refresh_hash);
        l.uuid(&self.session_id);
        l.uuid(&self.customer_id);
        l.time(&self.issued_at);
        l.opt_time(self.retired_at.as_ref());
    }
}

impl Row for AuditRow {
    type Key = (String, String, i64);
    const TABLE: &'static str = "customer_audit_events";
    const COLUMNS: &'static [&'static str] = &[
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "commit_xid",
        "insert_id",
        "event_type",
        "event_version",
        "event_id",
        "customer_id",
        "service",
        "actor",
        "action",
        "target",
        "ticket_id",
        "metadata",
        "occurred_at",
        "recorded_at",
        "hash",
    ];
    const KEY: &'static [&'static str] = &["aggregate_type", "aggregate_id", "sequence"];
    fn key(&self) -> (String, String, i64) {
        (
            self.aggregate_type.clone(),
            self.aggregate_id.clone(),
            self.sequence,
        )
    }
    fn copy_text(&self, l: &mut CopyLine<'_>) {
        l.text(&self.aggregate_type);
        l.text(&self.aggregate_id);
        l.int(self.sequence);
        l.int(self.commit_xid);
        l.int(self.insert_id);
        l.text(&self.event_type);
        l.text(&self.event_version);
        l.uuid(&self.event_id);
        l.opt_uuid(self.customer_id.as_ref());
        l.opt_text(self.service.as_deref());
        l.opt_text(self.actor.as_deref());
        l.text(&self.action);
        l.text(&self.target);
        l.opt_text(self.ticket_id.as_deref());
        l.json(&self.metadata);
        l.time(&self.occurred_at);
        l.time(&self.recorded_at);
        l.bytea(&self.hash);
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
    fn copy_text_escapes_and_nulls() {
        let mut out = Vec::new();
        let mut line = CopyLine::new(&mut out);
        line.text("a\tb\\c\nd");
        line.null();
        line.text_array(&["x\"y".into(), "z".into()]);
        line.bytea(&[1, 255]);
        line.json(&serde_json::json!({"k": "v\\"}));
        line.end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\\\c\\nd\t\\N\t{\"x\\\\\"y\",\"z\"}\t\\\\x01ff\t{\"k\":\"v\\\\\\\\\"}\n"
        );
    }

    #[test]
    fn db_time_truncates_to_microseconds() {
        let t =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + TimeDelta::nanoseconds(1_234_567);
        assert_eq!(db_time(t).timestamp_subsec_nanos(), 1_234_000);
    }
}
