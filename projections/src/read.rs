//! Typed reads of the read tables, for the API.
//!
//! The tables are projections: they trail the event log by the runner's lag
//! (usually well under 100 ms). Anything that must be exact at the moment of
//! a decision (a sign counter, a refresh token, a suspension) is decided by
//! the aggregate, loaded from the event store; these reads are for listing,
//! lookup and display. Times that depend on "now" (expiry, active roles) are
//! parameters: the tables themselves never depend on a clock.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool, QueryBuilder, Row as _};
use uuid::Uuid;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{raw_from_row, Decoder, EVENT_COLUMNS};
use crate::fold::AuditFold;
use crate::rows::AuditRow;
use std::collections::HashMap;

/// Most audit events returned in one page.
pub const MAX_AUDIT_PAGE: i64 = 1000;
/// Audit events per page when the caller does not say.
pub const DEFAULT_AUDIT_PAGE: i64 = 100;

/// A row of `queue_customers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
}

impl CustomerRow {
    pub fn is_suspended(&self) -> bool {
        self.status == "suspended"
    }
}

/// A row of `queue_webauthn_credentials` (one passkey).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
}

/// A row of `queue_sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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

/// A row of `queue_customer_roles`: a grant, or the default role
/// (`is_default`, `grant_id` = `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
}

impl RoleRow {
    /// Not revoked and not expired at `at` (a grant ends at its `expires_at`).
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|end| at < end)
    }
}

/// A row of `queue_backup_codes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
}

/// A row of `queue_email_verifications` (one request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
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
}

impl EmailVerificationRow {
    /// Pending and not expired at `at`.
    pub fn is_usable(&self, at: DateTime<Utc>) -> bool {
        self.status == "pending" && at < self.expires_at
    }
}

/// One audit log entry, with its ledger place once sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
pub struct AuditEventRow {
    /// The Audit stream id for external events; a UUIDv5 of stream and
    /// sequence for domain events.
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub customer_id: Option<Uuid>,
    /// The calling service, for external events.
    pub service: Option<String>,
    pub actor: Option<String>,
    /// `customer.registered`, `session.revoked`, … or the external action.
    pub action: String,
    pub target: String,
    pub ticket_id: Option<String>,
    pub metadata: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// The event's stream hash, 64 hex digits.
    pub hash: String,
    /// `None` until the sealer has put the event in the ledger.
    pub ledger_seq: Option<i64>,
    /// The event's MAC (hex) and key id, shown once sealed.
    pub mac: Option<String>,
    pub mac_key_id: Option<String>,
}

/// What `audit_events` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    /// Oldest first ("newest last"), in ledger order.
    pub events: Vec<AuditEventRow>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `audit_events`; all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub customer_id: Option<Uuid>,
    pub action: Option<String>,
    /// `occurred_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// 1 to [`MAX_AUDIT_PAGE`]; default [`DEFAULT_AUDIT_PAGE`].
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const CUSTOMER_COLUMNS: &str = "customer_id, email, display_name, email_verified, \
    email_verified_at, status, status_reason, status_changed_at, status_changed_by, \
    default_role, legacy_id, backup_codes_generation, pending_verification_sequence, \
    created_at, updated_at, last_sequence";
const CREDENTIAL_COLUMNS: &str = "credential_id, raw_credential_id, customer_id, name, aaguid, \
    backup_eligible, backup_state, sign_count, transports, passkey, legacy_id, created_at, \
    last_used_at, revoked_at, revoke_reason, updated_at, last_sequence";
const SESSION_COLUMNS: &str = "s.session_id, s.customer_id, s.amr, s.credential_id, s.family_id, \
    s.legacy_id, s.created_at, s.last_seen_at, s.idle_timeout_secs, s.idle_expires_at, \
    s.expires_at, s.refresh_count, s.refresh_hash, s.revoked_at, s.revoke_reason, s.updated_at, s.last_sequence";
const ROLE_COLUMNS: &str = "row_id, grant_id, customer_id, role, is_default, ticket_id, reason, \
    granted_by, granted_at, expires_at, revoked_at, revoked_by, revoke_reason";
const VERIFICATION_COLUMNS: &str = "customer_id, request_sequence, token_hash, requested_at, \
    expires_at, status, verified_at, superseded_at";
/// The audit columns and their event's, for the audit rows `a` the query
/// chose: `{AUDIT_COLUMNS} FROM (<chosen rows>) a {AUDIT_JOINS}`. The rows
/// are chosen (filtered, ordered, limited) on the audit table alone and only
/// then joined: with the joins inside, the planner misjudged the
/// three-column join as nearly empty and hash-joined the whole audit table
/// with the whole event log for a page of 100 (3.2 s at 1 M events).
const AUDIT_COLUMNS: &str = "SELECT a.event_id, a.aggregate_type, a.aggregate_id, a.sequence, \
    e.event_type, a.customer_id, a.service, a.actor, a.action, a.target, a.ticket_id, \
    a.metadata, a.occurred_at, e.recorded_at, encode(e.hash, 'hex') AS hash, \
    l.seq AS ledger_seq, \
    CASE WHEN l.seq IS NULL THEN NULL ELSE encode(e.mac, 'hex') END AS mac, \
    CASE WHEN l.seq IS NULL THEN NULL ELSE e.mac_key_id END AS mac_key_id, \
    a.commit_xid, a.insert_id";

const AUDIT_JOINS: &str = "LEFT JOIN ledger l ON l.aggregate_type = a.aggregate_type \
        AND l.aggregate_id = a.aggregate_id AND l.sequence = a.sequence \
    JOIN events e ON e.aggregate_type = a.aggregate_type \
        AND e.aggregate_id = a.aggregate_id AND e.sequence = a.sequence";

/// One customer by id.
pub async fn customer(pool: &PgPool, customer_id: Uuid) -> ProjectionResult<Option<CustomerRow>> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM queue_customers WHERE customer_id = $1");
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_optional(pool)
        .await?)
}

/// One customer by email (compared lowercased, as the domain stores it).
pub async fn customer_by_email(
    pool: &PgPool,
    email: &str,
) -> ProjectionResult<Option<CustomerRow>> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM queue_customers WHERE email = lower($1)");
    Ok(sqlx::query_as(&sql)
        .bind(email)
        .fetch_optional(pool)
        .await?)
}

/// How many customers exist (registered or imported, suspended included).
pub async fn customer_count(pool: &PgPool) -> ProjectionResult<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM queue_customers")
        .fetch_one(pool)
        .await?)
}

/// The customer's passkeys that are not revoked, oldest first.
pub async fn credentials_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<CredentialRow>> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM queue_webauthn_credentials \
         WHERE customer_id = $1 AND revoked_at IS NULL ORDER BY created_at, credential_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// Every passkey the customer ever registered, revoked ones included, oldest first.
pub async fn all_credentials_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<CredentialRow>> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM queue_webauthn_credentials \
         WHERE customer_id = $1 ORDER BY created_at, credential_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One passkey by its stream id (revoked or not).
pub async fn credential(
    pool: &PgPool,
    credential_id: Uuid,
) -> ProjectionResult<Option<CredentialRow>> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM queue_webauthn_credentials WHERE credential_id = $1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(credential_id)
        .fetch_optional(pool)
        .await?)
}

/// One passkey by its WebAuthn raw id (base64url without padding).
pub async fn credential_by_raw_id(
    pool: &PgPool,
    raw_credential_id: &str,
) -> ProjectionResult<Option<CredentialRow>> {
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM queue_webauthn_credentials WHERE raw_credential_id = $1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(raw_credential_id)
        .fetch_optional(pool)
        .await?)
}

/// The customer's sessions that are active at `at` (not revoked, before
/// both expiries), newest first.
pub async fn sessions_of(
    pool: &PgPool,
    customer_id: Uuid,
    at: DateTime<Utc>,
) -> ProjectionResult<Vec<SessionRow>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM queue_sessions s WHERE s.customer_id = $1 \
         AND s.revoked_at IS NULL AND s.idle_expires_at > $2 AND s.expires_at > $2 \
         ORDER BY s.created_at DESC, s.session_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .bind(at)
        .fetch_all(pool)
        .await?)
}

/// Every session of the customer, ended ones included, newest first.
pub async fn all_sessions_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<SessionRow>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM queue_sessions s WHERE s.customer_id = $1 \
         ORDER BY s.created_at DESC, s.session_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One session by id.
pub async fn session(pool: &PgPool, session_id: Uuid) -> ProjectionResult<Option<SessionRow>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM queue_sessions s WHERE s.session_id = $1");
    Ok(sqlx::query_as(&sql)
        .bind(session_id)
        .fetch_optional(pool)
        .await?)
}

/// The session a refresh token hash (64 hex digits) belongs or belonged to:
/// the current token, a rotated one (reuse) or an imported legacy one.
/// Whether the token is still current is the Session aggregate's decision.
pub async fn session_by_refresh_hash(
    pool: &PgPool,
    refresh_hash: &str,
) -> ProjectionResult<Option<SessionRow>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM queue_session_refresh_tokens t \
         JOIN queue_sessions s ON s.session_id = t.session_id WHERE t.refresh_hash = $1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(refresh_hash)
        .fetch_optional(pool)
        .await?)
}

/// The customer's roles in force at `at`: the default role row plus every
/// grant neither revoked nor expired, ordered default first then by grant time.
/// Empty for an unknown customer.
pub async fn roles_of(
    pool: &PgPool,
    customer_id: Uuid,
    at: DateTime<Utc>,
) -> ProjectionResult<Vec<RoleRow>> {
    let sql = format!(
        "SELECT {ROLE_COLUMNS} FROM queue_customer_roles WHERE customer_id = $1 \
         AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
         ORDER BY is_default DESC, granted_at, row_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .bind(at)
        .fetch_all(pool)
        .await?)
}

/// The distinct role names in force at `at`, sorted (for a JWT `roles` claim).
pub async fn role_names_of(
    pool: &PgPool,
    customer_id: Uuid,
    at: DateTime<Utc>,
) -> ProjectionResult<Vec<String>> {
    let mut names: Vec<String> = roles_of(pool, customer_id, at)
        .await?
        .into_iter()
        .map(|row| row.role)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Every role row of the customer (revoked and expired grants included).
pub async fn grants_of(pool: &PgPool, customer_id: Uuid) -> ProjectionResult<Vec<RoleRow>> {
    let sql = format!(
        "SELECT {ROLE_COLUMNS} FROM queue_customer_roles WHERE customer_id = $1 \
         ORDER BY is_default DESC, granted_at, row_id"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One grant by id (to find its customer on `DELETE /rbac/grants/{id}`).
pub async fn grant(pool: &PgPool, grant_id: Uuid) -> ProjectionResult<Option<RoleRow>> {
    let sql = format!("SELECT {ROLE_COLUMNS} FROM queue_customer_roles WHERE grant_id = $1");
    Ok(sqlx::query_as(&sql)
        .bind(grant_id)
        .fetch_optional(pool)
        .await?)
}

/// How many codes of the customer's current set are still unredeemed.
pub async fn unused_backup_codes(pool: &PgPool, customer_id: Uuid) -> ProjectionResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM queue_backup_codes WHERE customer_id = $1 \
         AND NOT voided AND redeemed_at IS NULL",
    )
    .bind(customer_id)
    .fetch_one(pool)
    .await?)
}

/// The customer's current (not voided) backup code set, by index.
pub async fn backup_codes_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<BackupCodeRow>> {
    Ok(sqlx::query_as(
        "SELECT customer_id, generation, code_index, code_hash, created_at, redeemed_at, \
         voided, voided_at FROM queue_backup_codes WHERE customer_id = $1 AND NOT voided \
         ORDER BY generation, code_index",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await?)
}

/// The verification request an emailed token (its SHA-256, 64 hex digits)
/// belongs to, whatever its status; judge it with
/// [`EmailVerificationRow::is_usable`]. The newest request wins if a hash repeats.
pub async fn email_verification_by_token(
    pool: &PgPool,
    token_hash: &str,
) -> ProjectionResult<Option<EmailVerificationRow>> {
    let sql = format!(
        "SELECT {VERIFICATION_COLUMNS} FROM queue_email_verifications WHERE token_hash = $1 \
         ORDER BY requested_at DESC, request_sequence DESC LIMIT 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(token_hash)
        .fetch_optional(pool)
        .await?)
}

/// The customer's verification requests, newest first.
pub async fn email_verifications_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<EmailVerificationRow>> {
    let sql = format!(
        "SELECT {VERIFICATION_COLUMNS} FROM queue_email_verifications WHERE customer_id = $1 \
         ORDER BY request_sequence DESC"
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One audit log entry by event id (e.g. an external event's stream id).
pub async fn audit_event(pool: &PgPool, event_id: Uuid) -> ProjectionResult<Option<AuditEventRow>> {
    let sql = format!(
        "{AUDIT_COLUMNS} FROM (SELECT * FROM customer_audit_events WHERE event_id = $1) a \
         {AUDIT_JOINS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(event_id)
        .fetch_optional(pool)
        .await?)
}

/// How a page with a time filter (`since` / `until`) is read; see
/// [`audit_events`]. Public so that tests can make both steps small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditTimePlan {
    /// Rows walked in log order after the cursor before the time range is
    /// read instead.
    pub walk: i64,
    /// Most rows of the time range read (through `occurred_at`) and sorted
    /// into log order; past this the page walks the log after all.
    pub range: i64,
}

/// The plan [`audit_events`] uses.
pub const AUDIT_TIME_PLAN: AuditTimePlan = AuditTimePlan {
    walk: 2_000,
    range: 20_000,
};

/// A page of the audit log in ledger order (oldest first, "newest last").
pub async fn audit_events(pool: &PgPool, filter: &AuditFilter) -> ProjectionResult<AuditPage> {
    audit_events_with(pool, filter, AUDIT_TIME_PLAN).await
}

/// [`audit_events`] with the given plan for time-filtered pages (the same
/// rows whatever the plan).
///
/// Without a time filter the page is a walk in log order along the primary
/// key (or the customer / action index), which stops after the page.
/// `occurred_at`, though, follows log order only roughly (an external
/// event's time is the caller's), so the planner cannot know where in the
/// log a time range lies: left to itself it walked the log up to the range,
/// assuming the range spread evenly over it (one hour in the middle of 1 M
/// events: 105–110 ms, 414k rows read and dropped; without statistics the
/// last hour too: 171 ms). So a time-filtered page, in one snapshot, takes
/// the steps below (that hour: about 7 ms, ADR 0103):
/// 1. walks at most `plan.walk` rows after the cursor (a range that is
///    dense there, e.g. the next page of a range, ends here);
/// 2. otherwise reads the rest of the range past those rows through the
///    `occurred_at` index, if it has at most `plan.range` rows, and sorts
///    them into log order;
/// 3. otherwise (a large range that starts far from the cursor) walks the
///    log past those rows as before.
pub async fn audit_events_with(
    pool: &PgPool,
    filter: &AuditFilter,
    plan: AuditTimePlan,
) -> ProjectionResult<AuditPage> {
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_AUDIT_PAGE)
        .clamp(1, MAX_AUDIT_PAGE);
    let after = match &filter.cursor {
        Some(cursor) => Some(decode_cursor(cursor)?),
        None => None,
    };
    let want = limit + 1;
    let rows = if filter.since.is_none() && filter.until.is_none() {
        let mut query = QueryBuilder::new(AUDIT_COLUMNS);
        query.push(" FROM (SELECT * FROM customer_audit_events a WHERE TRUE");
        push_key_filters(&mut query, filter);
        push_after(&mut query, after, ">");
        push_page_end(&mut query, want);
        query.build_query_as().fetch_all(pool).await?
    } else {
        time_filtered_page(pool, filter, after, want, plan).await?
    };
    let more = rows.len() as i64 > limit;
    let mut events = Vec::with_capacity(rows.len());
    let mut last = None;
    let mut positions = Vec::with_capacity(rows.len());
    for row in rows.into_iter().take(limit as usize) {
        last = Some((row.commit_xid, row.insert_id));
        positions.push((row.commit_xid, row.insert_id));
        events.push(row.event);
    }
    serve_from_the_log(pool, &mut events, &positions).await?;
    let next_cursor = match (more, last) {
        (true, Some((xid, id))) => Some(encode_cursor(xid, id)),
        _ => None,
    };
    Ok(AuditPage {
        events,
        next_cursor,
    })
}

/// The steps of [`audit_events_with`] for a page with `since` / `until`.
async fn time_filtered_page(
    pool: &PgPool,
    filter: &AuditFilter,
    after: Option<(i64, i64)>,
    want: i64,
    plan: AuditTimePlan,
) -> ProjectionResult<Vec<AuditRowWithPosition>> {
    let walk = plan.walk.max(1);
    let mut tx = pool.begin().await?;
    // One snapshot: the steps split the log at a row the first step saw.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;

    // 1. The first `walk` rows after the cursor, then the time filter.
    let mut query = QueryBuilder::new(AUDIT_COLUMNS);
    query.push(" FROM (SELECT * FROM (SELECT * FROM customer_audit_events a WHERE TRUE");
    push_key_filters(&mut query, filter);
    push_after(&mut query, after, ">");
    query
        .push(" ORDER BY a.commit_xid, a.insert_id LIMIT ")
        .push_bind(walk)
        .push(") a WHERE TRUE");
    push_time_filters(&mut query, filter);
    push_page_end(&mut query, want);
    let mut rows: Vec<AuditRowWithPosition> = query.build_query_as().fetch_all(&mut *tx).await?;
    if rows.len() as i64 >= want {
        tx.commit().await?;
        return Ok(rows);
    }

    // Where the walk stopped: the first row it did not reach, if any.
    let mut query = QueryBuilder::new(
        "SELECT a.commit_xid, a.insert_id FROM customer_audit_events a WHERE TRUE",
    );
    push_key_filters(&mut query, filter);
    push_after(&mut query, after, ">");
    query
        .push(" ORDER BY a.commit_xid, a.insert_id OFFSET ")
        .push_bind(walk)
        .push(" LIMIT 1");
    let boundary: Option<(i64, i64)> = query.build_query_as().fetch_optional(&mut *tx).await?;
    let Some(boundary) = boundary else {
        tx.commit().await?;
        return Ok(rows);
    };
    let rest = want - rows.len() as i64;

    // 2. The range from the boundary on, if it is small: its positions read
    // in `occurred_at` order (index-only: the index includes the position,
    // migration 0303; stopping after `range + 1` rows),
    // sorted into log order, and only the page's rows read whole;
    // `range_rows` says whether the range was read to its end. The boundary
    // test is `commit_xid + 0` so that it stays a filter: as an index
    // condition the planner, without statistics, intersected the range with
    // the primary key from the boundary on (1 M entries, 76 ms).
    let range = plan.range.max(1);
    let mut query = QueryBuilder::new(AUDIT_COLUMNS);
    query.push(
        ", p.range_rows FROM (SELECT r.commit_xid, r.insert_id, \
         count(*) OVER () AS range_rows FROM (SELECT a.commit_xid, a.insert_id \
         FROM customer_audit_events a WHERE TRUE",
    );
    push_key_filters(&mut query, filter);
    push_time_filters(&mut query, filter);
    query
        .push(" AND (a.commit_xid + 0, a.insert_id) >= (")
        .push_bind(boundary.0)
        .push(", ")
        .push_bind(boundary.1)
        .push(") ORDER BY a.occurred_at LIMIT ")
        .push_bind(range + 1)
        .push(") r ORDER BY r.commit_xid, r.insert_id LIMIT ")
        .push_bind(rest)
        .push(
            ") p JOIN customer_audit_events a ON a.commit_xid = p.commit_xid \
             AND a.insert_id = p.insert_id ",
        )
        .push(AUDIT_JOINS)
        .push(" ORDER BY a.commit_xid, a.insert_id");
    let ranged: Vec<RangeRow> = query.build_query_as().fetch_all(&mut *tx).await?;
    if ranged.first().is_none_or(|r| r.range_rows <= range) {
        tx.commit().await?;
        rows.extend(ranged.into_iter().map(|r| r.row));
        return Ok(rows);
    }

    // 3. A large range: walk the log from the boundary.
    let mut query = QueryBuilder::new(AUDIT_COLUMNS);
    query.push(" FROM (SELECT * FROM customer_audit_events a WHERE TRUE");
    push_key_filters(&mut query, filter);
    push_time_filters(&mut query, filter);
    push_after(&mut query, Some(boundary), ">=");
    push_page_end(&mut query, rest);
    let walked: Vec<AuditRowWithPosition> = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    rows.extend(walked);
    Ok(rows)
}

/// `customer_id` and `action` filters on the audit rows `a`.
fn push_key_filters(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &AuditFilter) {
    if let Some(customer_id) = filter.customer_id {
        query.push(" AND a.customer_id = ").push_bind(customer_id);
    }
    if let Some(action) = &filter.action {
        query.push(" AND a.action = ").push_bind(action.clone());
    }
}

/// `since` / `until` filters on the audit rows `a`.
fn push_time_filters(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &AuditFilter) {
    if let Some(since) = filter.since {
        query.push(" AND a.occurred_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND a.occurred_at < ").push_bind(until);
    }
}

/// Rows of `a` past (`>`) or from (`>=`) a log position.
fn push_after(
    query: &mut QueryBuilder<'_, sqlx::Postgres>,
    position: Option<(i64, i64)>,
    comparison: &str,
) {
    if let Some((xid, id)) = position {
        query
            .push(" AND (a.commit_xid, a.insert_id) ")
            .push(comparison)
            .push(" (")
            .push_bind(xid)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
}

/// Orders and limits the chosen rows `a`, then joins their events.
fn push_page_end(query: &mut QueryBuilder<'_, sqlx::Postgres>, limit: i64) {
    query
        .push(" ORDER BY a.commit_xid, a.insert_id LIMIT ")
        .push_bind(limit)
        .push(") a ")
        .push(AUDIT_JOINS)
        .push(" ORDER BY a.commit_xid, a.insert_id");
}

#[derive(FromRow)]
struct RangeRow {
    #[sqlx(flatten)]
    row: AuditRowWithPosition,
    range_rows: i64,
}

/// Every field of an audit entry comes from its event, not from the
/// projection row (which the service role may UPDATE): the entries' events
/// are read by position, folded by the audit projection's own mapping, and
/// the event's values replace the row's. A row that differed is logged and
/// counted (`queue_audit_rows_mismatched_total`): an edited projection row is
/// never shown beside the event's valid MAC.
async fn serve_from_the_log(
    pool: &PgPool,
    entries: &mut [AuditEventRow],
    positions: &[(i64, i64)],
) -> ProjectionResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let xids: Vec<i64> = positions.iter().map(|p| p.0).collect();
    let ids: Vec<i64> = positions.iter().map(|p| p.1).collect();
    let columns = EVENT_COLUMNS
        .split(", ")
        .map(|c| format!("e.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    // The owner of a Credential or Session stream is named by its first
    // event; the owner of the others is the stream itself or the payload.
    let sql = format!(
        "SELECT {columns}, f.payload -> f.event_type ->> 'customer_id' AS owner \
         FROM events e JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(x, i) \
         ON e.commit_xid = k.x AND e.insert_id = k.i \
         LEFT JOIN events f ON f.aggregate_type = e.aggregate_type \
         AND f.aggregate_id = e.aggregate_id AND f.sequence = 1"
    );
    let rows = sqlx::query(&sql)
        .bind(&xids)
        .bind(&ids)
        .fetch_all(pool)
        .await?;
    let decoder = Decoder::new();
    let mut fold = AuditFold::new();
    let mut from_log: HashMap<(String, String, i64), AuditRow> = HashMap::new();
    for row in &rows {
        let raw = raw_from_row(row)?;
        let owner: Option<String> = row.try_get("owner")?;
        if let Some(owner) = owner.and_then(|o| Uuid::parse_str(&o).ok()) {
            fold.remember_owner(&raw.meta.aggregate_type, &raw.meta.aggregate_id, owner);
        }
        let event = decoder.decode(raw)?;
        if let Some(audit) = fold.apply(&event)? {
            from_log.insert(
                (
                    audit.aggregate_type.clone(),
                    audit.aggregate_id.clone(),
                    audit.sequence,
                ),
                audit,
            );
        }
    }
    for entry in entries.iter_mut() {
        let key = (
            entry.aggregate_type.clone(),
            entry.aggregate_id.clone(),
            entry.sequence,
        );
        let Some(logged) = from_log.remove(&key) else {
            return Err(ProjectionError::Rebuild(format!(
                "audit entry {}/{} #{} has no event",
                entry.aggregate_type, entry.aggregate_id, entry.sequence
            )));
        };
        let differs = entry.event_id != logged.event_id
            || entry.customer_id != logged.customer_id
            || entry.service != logged.service
            || entry.actor != logged.actor
            || entry.action != logged.action
            || entry.target != logged.target
            || entry.ticket_id != logged.ticket_id
            || entry.metadata != logged.metadata
            || entry.occurred_at != logged.occurred_at;
        if differs {
            tracing::error!(
                aggregate_type = %entry.aggregate_type,
                aggregate_id = %entry.aggregate_id,
                sequence = entry.sequence,
                "audit projection row differs from its event; serving the event"
            );
            metrics::counter!("queue_audit_rows_mismatched_total").increment(1);
        }
        entry.event_id = logged.event_id;
        entry.customer_id = logged.customer_id;
        entry.service = logged.service;
        entry.actor = logged.actor;
        entry.action = logged.action;
        entry.target = logged.target;
        entry.ticket_id = logged.ticket_id;
        entry.metadata = logged.metadata;
        entry.occurred_at = logged.occurred_at;
    }
    Ok(())
}

#[derive(FromRow)]
struct AuditRowWithPosition {
    #[sqlx(flatten)]
    event: AuditEventRow,
    commit_xid: i64,
    insert_id: i64,
}

fn encode_cursor(commit_xid: i64, insert_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{commit_xid}:{insert_id}"))
}

fn decode_cursor(cursor: &str) -> ProjectionResult<(i64, i64)> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| ProjectionError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ProjectionError::InvalidCursor)?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(xid), Some(id), None) => Ok((
            xid.parse().map_err(|_| ProjectionError::InvalidCursor)?,
            id.parse().map_err(|_| ProjectionError::InvalidCursor)?,
        )),
        _ => Err(ProjectionError::InvalidCursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = encode_cursor(1234, 99);
        assert_eq!(decode_cursor(&cursor).unwrap(), (1234, 99));
        assert!(decode_cursor("nope!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v2:1:2")).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v1:1:x")).is_err());
    }
}
