//! Offline parity: legacy rows marked `migrated_to_queue` against the queue_*
//! read tables, counts and field by field. Each legacy value is compared in
//! the form the backfill imports it (emails lower case, labels trimmed, blank
//! labels as none). Rows not marked migrated (rejected, or not yet run) are
//! expected to be missing from Queue and are only counted; a Queue row that
//! claims a legacy id whose legacy row is not marked migrated is a difference.
//! Queue's own later use is not a difference: sign counters may only have
//! grown, and an imported session may have rotated its refresh token.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use queue_domain::types::{CustomerId, GrantId, LegacyId};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::cose;
use crate::error::{BackfillError, BackfillResult};
use crate::legacy::Table;
use crate::run::normalise_transports;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub table: &'static str,
    pub legacy_id: i64,
    pub field: &'static str,
    pub legacy: String,
    pub queue: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableParity {
    pub table: &'static str,
    /// Legacy rows marked migrated.
    pub legacy_migrated: u64,
    /// Legacy rows not marked (rejected or not yet backfilled).
    pub legacy_not_migrated: u64,
    /// Queue rows that carry a legacy id.
    pub queue_rows: u64,
    /// Rows compared field by field and found equal.
    pub matched: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ParityReport {
    pub tables: Vec<TableParity>,
    pub differences: Vec<Difference>,
}

impl ParityReport {
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }

    fn diff(
        &mut self,
        table: Table,
        legacy_id: i64,
        field: &'static str,
        legacy: impl ToString,
        queue: impl ToString,
    ) {
        self.differences.push(Difference {
            table: table.name(),
            legacy_id,
            field,
            legacy: legacy.to_string(),
            queue: queue.to_string(),
        });
    }
}

/// Compares; `Ok` whether or not they agree (see [`ParityReport::agrees`]).
pub async fn parity(queue: &PgPool, legacy: &PgPool) -> BackfillResult<ParityReport> {
    let mut report = ParityReport::default();
    compare(queue, legacy, &mut report, &CUSTOMERS, customer_fields).await?;
    compare(queue, legacy, &mut report, &CREDENTIALS, credential_fields).await?;
    compare(queue, legacy, &mut report, &SESSIONS, session_fields).await?;
    compare(queue, legacy, &mut report, &GRANTS, grant_fields).await?;
    Ok(report)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(none)".into(), ToString::to_string)
}

fn ts(v: &Option<DateTime<Utc>>) -> String {
    v.map_or_else(|| "(none)".into(), |t| t.to_rfc3339())
}

fn blank_is_none(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn customer_uuid(legacy_customer: i64) -> Option<Uuid> {
    LegacyId::try_from(legacy_customer)
        .ok()
        .map(|id| *CustomerId::for_legacy_id(id).as_uuid())
}

async fn legacy_rows(legacy: &PgPool, sql: &str) -> BackfillResult<Vec<PgRow>> {
    sqlx::query(sql)
        .fetch_all(legacy)
        .await
        .map_err(BackfillError::legacy)
}

async fn queue_rows(queue: &PgPool, sql: &str) -> BackfillResult<Vec<PgRow>> {
    sqlx::query(sql)
        .fetch_all(queue)
        .await
        .map_err(BackfillError::queue)
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> BackfillResult<T> {
    row.try_get(col)
        .map_err(|e| BackfillError::Queue(format!("column {col}: {e}")))
}

/// Counts, and the Queue rows whose legacy id is not a migrated legacy row.
fn tally(
    report: &mut ParityReport,
    table: Table,
    migrated: &HashMap<i64, bool>,
    queue_ids: impl Iterator<Item = i64>,
    matched: u64,
) {
    let mut queue_rows = 0;
    let mut strays = Vec::new();
    for id in queue_ids {
        queue_rows += 1;
        if migrated.get(&id) != Some(&true) {
            strays.push(id);
        }
    }
    for id in strays {
        let legacy = match migrated.get(&id) {
            Some(_) => "row not marked migrated_to_queue",
            None => "no such legacy row",
        };
        report.diff(table, id, "row", legacy, "present in Queue");
    }
    report.tables.push(TableParity {
        table: table.name(),
        legacy_migrated: migrated.values().filter(|m| **m).count() as u64,
        legacy_not_migrated: migrated.values().filter(|m| !**m).count() as u64,
        queue_rows,
        matched,
    });
}

/// How a Queue row names the legacy row it was imported from.
#[derive(Clone, Copy)]
enum QueueKey {
    /// A `legacy_id` column.
    LegacyId,
    /// Grants carry no legacy id in Queue; the grant id is UUIDv5 of it.
    GrantId,
}

/// One table's comparison: where its rows are, and how Queue names them.
struct Compare {
    table: Table,
    /// Selects `id`, `migrated_to_queue` and the compared legacy columns.
    legacy_sql: &'static str,
    /// The read table, for the "missing" difference.
    queue_table: &'static str,
    queue_sql: &'static str,
    key: QueueKey,
}

/// The Queue rows by the legacy id they claim.
fn by_legacy_id<'q>(
    key: QueueKey,
    legacy_rows: &[PgRow],
    q_rows: &'q [PgRow],
) -> BackfillResult<HashMap<i64, &'q PgRow>> {
    let mut by_id = HashMap::new();
    match key {
        QueueKey::LegacyId => {
            for row in q_rows {
                by_id.insert(get::<i64>(row, "legacy_id")?, row);
            }
        }
        QueueKey::GrantId => {
            let mut legacy_of: HashMap<Uuid, i64> = HashMap::new();
            for row in legacy_rows {
                let id: i64 = get(row, "id")?;
                if let Ok(l) = LegacyId::try_from(id) {
                    legacy_of.insert(*GrantId::for_legacy_id(l).as_uuid(), id);
                }
            }
            for row in q_rows {
                let grant: Uuid = get(row, "grant_id")?;
                // Grants made in Queue (no legacy id) are not part of the comparison.
                if let Some(id) = legacy_of.get(&grant) {
                    by_id.insert(*id, row);
                }
            }
        }
    }
    Ok(by_id)
}

/// The driver every table shares: each legacy row marked migrated must have
/// its Queue row, and `fields` compares the two (reporting each difference
/// through `report.diff`); then the counts and the Queue rows without a
/// migrated legacy row.
async fn compare<F>(
    queue: &PgPool,
    legacy: &PgPool,
    report: &mut ParityReport,
    spec: &Compare,
    mut fields: F,
) -> BackfillResult<()>
where
    F: FnMut(&mut ParityReport, Table, i64, &PgRow, &PgRow) -> BackfillResult<()>,
{
    let t = spec.table;
    let legacy_rows = legacy_rows(legacy, spec.legacy_sql).await?;
    let q_rows = queue_rows(queue, spec.queue_sql).await?;
    let by_id = by_legacy_id(spec.key, &legacy_rows, &q_rows)?;
    let mut migrated = HashMap::new();
    let mut matched = 0;
    for row in &legacy_rows {
        let id: i64 = get(row, "id")?;
        let flag: bool = get(row, "migrated_to_queue")?;
        migrated.insert(id, flag);
        if !flag {
            continue;
        }
        let Some(q) = by_id.get(&id) else {
            let missing = format!("missing from {}", spec.queue_table);
            report.diff(t, id, "row", "migrated", missing);
            continue;
        };
        let before = report.differences.len();
        fields(report, t, id, row, q)?;
        if report.differences.len() == before {
            matched += 1;
        }
    }
    tally(report, t, &migrated, by_id.keys().copied(), matched);
    Ok(())
}

const CUSTOMERS: Compare = Compare {
    table: Table::Customers,
    legacy_sql: "SELECT id, email, display_name, email_verified_at, status, created_at, migrated_to_queue FROM customers",
    queue_table: "queue_customers",
    queue_sql: "SELECT legacy_id, customer_id, email, display_name, email_verified_at, status, created_at FROM queue_customers WHERE legacy_id IS NOT NULL",
    key: QueueKey::LegacyId,
};

fn customer_fields(
    report: &mut ParityReport,
    t: Table,
    id: i64,
    row: &PgRow,
    q: &PgRow,
) -> BackfillResult<()> {
    let email = get::<String>(row, "email")?.trim().to_lowercase();
    let q_email: String = get(q, "email")?;
    if email != q_email {
        report.diff(t, id, "email", &email, &q_email);
    }
    let q_id: Uuid = get(q, "customer_id")?;
    if customer_uuid(id) != Some(q_id) {
        report.diff(t, id, "customer_id", opt(&customer_uuid(id)), q_id);
    }
    let name = blank_is_none(get(row, "display_name")?);
    let q_name: Option<String> = get(q, "display_name")?;
    if name != q_name {
        report.diff(t, id, "display_name", opt(&name), opt(&q_name));
    }
    let verified: Option<DateTime<Utc>> = get(row, "email_verified_at")?;
    let q_verified: Option<DateTime<Utc>> = get(q, "email_verified_at")?;
    if verified != q_verified {
        report.diff(t, id, "email_verified_at", ts(&verified), ts(&q_verified));
    }
    let status: String = get(row, "status")?;
    let q_status: String = get(q, "status")?;
    if status != q_status {
        report.diff(t, id, "status", status, q_status);
    }
    let created: DateTime<Utc> = get(row, "created_at")?;
    let q_created: DateTime<Utc> = get(q, "created_at")?;
    if created != q_created {
        report.diff(
            t,
            id,
            "created_at",
            created.to_rfc3339(),
            q_created.to_rfc3339(),
        );
    }
    Ok(())
}

const CREDENTIALS: Compare = Compare {
    table: Table::Credentials,
    legacy_sql: "SELECT id, customer_id, credential_id, public_key, sign_count, transports, aaguid, backup_eligible, backup_state, name, created_at, last_used_at, migrated_to_queue FROM webauthn_credentials",
    queue_table: "queue_webauthn_credentials",
    queue_sql: "SELECT legacy_id, customer_id, raw_credential_id, name, aaguid, backup_eligible, backup_state, sign_count, transports, passkey, created_at, last_used_at, revoked_at FROM queue_webauthn_credentials WHERE legacy_id IS NOT NULL",
    key: QueueKey::LegacyId,
};

fn credential_fields(
    report: &mut ParityReport,
    t: Table,
    id: i64,
    row: &PgRow,
    q: &PgRow,
) -> BackfillResult<()> {
    customer_field(report, t, id, row, q)?;
    let raw: Vec<u8> = get(row, "credential_id")?;
    let raw_b64 = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &raw);
    let q_raw: String = get(q, "raw_credential_id")?;
    if raw_b64 != q_raw {
        report.diff(t, id, "credential_id", &raw_b64, &q_raw);
    }
    let public_key: Vec<u8> = get(row, "public_key")?;
    let q_passkey: serde_json::Value = get(q, "passkey")?;
    let legacy_key = cose::parse_cose_key(&public_key)
        .ok()
        .and_then(|k| serde_json::to_value(k).ok());
    let q_key = q_passkey.get("cred").and_then(|c| c.get("cred")).cloned();
    if legacy_key.is_none() || legacy_key != q_key {
        report.diff(t, id, "public_key", opt(&legacy_key), opt(&q_key));
    }
    let q_cred_id = q_passkey
        .get("cred")
        .and_then(|c| c.get("cred_id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if q_cred_id.as_deref() != Some(raw_b64.as_str()) {
        report.diff(t, id, "passkey.cred_id", &raw_b64, opt(&q_cred_id));
    }
    let count: i64 = get(row, "sign_count")?;
    let q_count: i64 = get(q, "sign_count")?;
    // Queue use after the import only moves the counter forward.
    let unused = q_count == count;
    if q_count < count {
        report.diff(t, id, "sign_count", count, q_count);
    }
    let transports =
        normalise_transports(get::<Option<Vec<String>>>(row, "transports")?.as_deref());
    let q_transports: Vec<String> = get(q, "transports")?;
    if transports != q_transports {
        report.diff(
            t,
            id,
            "transports",
            transports.join(","),
            q_transports.join(","),
        );
    }
    let aaguid: Option<Uuid> = get(row, "aaguid")?;
    let q_aaguid: Option<Uuid> = get(q, "aaguid")?;
    if aaguid != q_aaguid {
        report.diff(t, id, "aaguid", opt(&aaguid), opt(&q_aaguid));
    }
    let eligible: bool = get(row, "backup_eligible")?;
    let q_eligible: bool = get(q, "backup_eligible")?;
    if eligible != q_eligible {
        report.diff(t, id, "backup_eligible", eligible, q_eligible);
    }
    let name = blank_is_none(get(row, "name")?);
    let q_name: Option<String> = get(q, "name")?;
    if name != q_name {
        report.diff(t, id, "name", opt(&name), opt(&q_name));
    }
    let created: DateTime<Utc> = get(row, "created_at")?;
    let q_created: DateTime<Utc> = get(q, "created_at")?;
    if created != q_created {
        report.diff(
            t,
            id,
            "created_at",
            created.to_rfc3339(),
            q_created.to_rfc3339(),
        );
    }
    if unused {
        // Not used in Queue yet: the use-dependent fields are still legacy's.
        let state: bool = get(row, "backup_state")?;
        let q_state: bool = get(q, "backup_state")?;
        if state != q_state {
            report.diff(t, id, "backup_state", state, q_state);
        }
        let used: Option<DateTime<Utc>> = get(row, "last_used_at")?;
        let q_used: Option<DateTime<Utc>> = get(q, "last_used_at")?;
        if used != q_used {
            report.diff(t, id, "last_used_at", ts(&used), ts(&q_used));
        }
    }
    Ok(())
}

const SESSIONS: Compare = Compare {
    table: Table::Sessions,
    // Revoked legacy sessions are never migrated; they are not compared.
    legacy_sql: "SELECT id, customer_id, token_hash, created_at, last_seen_at, expires_at, migrated_to_queue FROM customer_sessions WHERE revoked_at IS NULL",
    queue_table: "queue_sessions",
    queue_sql: "SELECT s.legacy_id, s.customer_id, s.created_at, s.expires_at, \
     (SELECT array_agg(t.refresh_hash) FROM queue_session_refresh_tokens t WHERE t.session_id = s.session_id) AS hashes \
     FROM queue_sessions s WHERE s.legacy_id IS NOT NULL",
    key: QueueKey::LegacyId,
};

fn session_fields(
    report: &mut ParityReport,
    t: Table,
    id: i64,
    row: &PgRow,
    q: &PgRow,
) -> BackfillResult<()> {
    customer_field(report, t, id, row, q)?;
    let hash = get::<String>(row, "token_hash")?
        .trim()
        .to_ascii_lowercase();
    let hashes: Vec<String> = get::<Option<Vec<String>>>(q, "hashes")?.unwrap_or_default();
    if !hashes.contains(&hash) {
        report.diff(
            t,
            id,
            "token_hash",
            &hash,
            "not among the session's refresh tokens",
        );
    }
    for (field, legacy_col) in [("created_at", "created_at"), ("expires_at", "expires_at")] {
        let a: DateTime<Utc> = get(row, legacy_col)?;
        let b: DateTime<Utc> = get(q, legacy_col)?;
        if a != b {
            report.diff(t, id, field, a.to_rfc3339(), b.to_rfc3339());
        }
    }
    Ok(())
}

const GRANTS: Compare = Compare {
    table: Table::Grants,
    legacy_sql: "SELECT id, customer_id, role, ticket_id, granted_by, reason, granted_at, expires_at, migrated_to_queue FROM rbac_grants WHERE revoked_at IS NULL",
    queue_table: "queue_customer_roles",
    queue_sql: "SELECT grant_id, customer_id, role, ticket_id, reason, granted_by, granted_at, expires_at FROM queue_customer_roles WHERE grant_id IS NOT NULL",
    key: QueueKey::GrantId,
};

fn grant_fields(
    report: &mut ParityReport,
    t: Table,
    id: i64,
    row: &PgRow,
    q: &PgRow,
) -> BackfillResult<()> {
    customer_field(report, t, id, row, q)?;
    for (field, trim) in [("role", true), ("reason", true), ("ticket_id", false)] {
        let a = blank_is_none(get(row, field)?);
        let b: Option<String> = get(q, field)?;
        let a = if trim { a } else { get(row, field)? };
        if a != b {
            report.diff(t, id, field, opt(&a), opt(&b));
        }
    }
    let by = blank_is_none(get(row, "granted_by")?);
    let q_by: Option<String> = get(q, "granted_by")?;
    if by != q_by {
        report.diff(t, id, "granted_by", opt(&by), opt(&q_by));
    }
    let at: DateTime<Utc> = get(row, "granted_at")?;
    let q_at: DateTime<Utc> = get(q, "granted_at")?;
    if at != q_at {
        report.diff(t, id, "granted_at", at.to_rfc3339(), q_at.to_rfc3339());
    }
    let exp: Option<DateTime<Utc>> = get(row, "expires_at")?;
    let q_exp: Option<DateTime<Utc>> = get(q, "expires_at")?;
    if exp != q_exp {
        report.diff(t, id, "expires_at", ts(&exp), ts(&q_exp));
    }
    Ok(())
}

/// The customer a credential, session or grant belongs to.
fn customer_field(
    report: &mut ParityReport,
    t: Table,
    id: i64,
    row: &PgRow,
    q: &PgRow,
) -> BackfillResult<()> {
    let customer = customer_uuid(get(row, "customer_id")?);
    let q_customer: Uuid = get(q, "customer_id")?;
    if customer != Some(q_customer) {
        report.diff(t, id, "customer_id", opt(&customer), q_customer);
    }
    Ok(())
}
