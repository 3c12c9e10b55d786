//! Every query that finds streams by a field inside event payloads. Each
//! rides an expression index on `events` (the migration named beside it),
//! so the expression here must stay identical to the index's: a renamed
//! event field would otherwise make the lookup scan the whole log. The
//! EXPLAIN tests (eventstore tests `lookup`) fail when a query stops using
//! its index.
//!
//! These return stream ids only. Nothing is decided on them: the streams
//! are then loaded and checked through the unit of work.
//!
//! The other queries on `events` that services outside this crate need
//! (the founders counter's seed counts, one event's hash and seal) are here
//! too, so the API spells no query on `events` of its own.

use sqlx::PgExecutor;

use crate::error::StoreResult;

/// Lookup queries and the index each must use, for the EXPLAIN tests.
pub const INDEXED: &[(&str, &str)] = &[
    ("customer_by_email", "events_customer_email"),
    ("customers_by_emails", "events_customer_email"),
    ("credential_ids_of", "events_credential_customer"),
    ("session_ids_of", "events_session_customer"),
    ("customer_of_grant", "events_role_grant"),
];

/// migrations/0333 `events_customer_email` (unique per tenant): the
/// normalised email of any creation event, then the tenant (absent = the
/// default tenant, ADR 0217).
pub const CUSTOMER_BY_EMAIL: &str = "SELECT aggregate_id FROM events \
     WHERE aggregate_type = 'Customer' \
     AND event_type IN ('CustomerRegistered', 'CustomerProvisioned', 'CustomerImported') \
     AND lower(coalesce(payload->'CustomerRegistered'->>'email', \
                        payload->'CustomerProvisioned'->>'email', \
                        payload->'CustomerImported'->>'email')) = $1 \
     AND coalesce(payload->'CustomerRegistered'->>'tenant_id', \
                  payload->'CustomerProvisioned'->>'tenant_id', \
                  payload->'CustomerImported'->>'tenant_id', \
                  'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99') = $2";

/// migrations/0333 `events_customer_email`, for many emails at once, in the
/// default tenant (the backfill's).
pub const CUSTOMERS_BY_EMAILS: &str =
    "SELECT lower(coalesce(payload->'CustomerRegistered'->>'email', \
                        payload->'CustomerProvisioned'->>'email', \
                        payload->'CustomerImported'->>'email')), aggregate_id FROM events \
     WHERE aggregate_type = 'Customer' \
     AND event_type IN ('CustomerRegistered', 'CustomerProvisioned', 'CustomerImported') \
     AND lower(coalesce(payload->'CustomerRegistered'->>'email', \
                        payload->'CustomerProvisioned'->>'email', \
                        payload->'CustomerImported'->>'email')) = ANY($1) \
     AND coalesce(payload->'CustomerRegistered'->>'tenant_id', \
                  payload->'CustomerProvisioned'->>'tenant_id', \
                  payload->'CustomerImported'->>'tenant_id', \
                  'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99') = 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99'";

/// migrations/0200 `events_credential_customer`.
pub const CREDENTIAL_IDS_OF: &str = "SELECT aggregate_id FROM events \
     WHERE aggregate_type = 'Credential' AND event_type IN ('CredentialRegistered', 'CredentialImported') \
     AND coalesce(payload->'CredentialRegistered'->>'customer_id', \
                  payload->'CredentialImported'->>'customer_id') = $1 \
     ORDER BY recorded_at, aggregate_id";

/// migrations/0200 `events_session_customer`.
pub const SESSION_IDS_OF: &str = "SELECT aggregate_id FROM events \
     WHERE aggregate_type = 'Session' AND event_type IN ('SessionCreated', 'SessionImported') \
     AND coalesce(payload->'SessionCreated'->>'customer_id', \
                  payload->'SessionImported'->>'customer_id') = $1 \
     ORDER BY recorded_at, aggregate_id";

/// migrations/0302 `events_role_grant`.
pub const CUSTOMER_OF_GRANT: &str = "SELECT aggregate_id FROM events \
     WHERE aggregate_type = 'Customer' AND event_type = 'RoleGranted' \
     AND payload->'RoleGranted'->>'grant_id' = $1 LIMIT 1";

/// The query text of a lookup named in [`INDEXED`].
pub fn query_text(name: &str) -> Option<&'static str> {
    match name {
        "customer_by_email" => Some(CUSTOMER_BY_EMAIL),
        "customers_by_emails" => Some(CUSTOMERS_BY_EMAILS),
        "credential_ids_of" => Some(CREDENTIAL_IDS_OF),
        "session_ids_of" => Some(SESSION_IDS_OF),
        "customer_of_grant" => Some(CUSTOMER_OF_GRANT),
        _ => None,
    }
}

/// The Customer stream registered or imported with this (normalised) email
/// in this tenant (emails are unique per tenant).
pub async fn customer_by_email<'e>(
    db: impl PgExecutor<'e>,
    email_lower: &str,
    tenant_id: &str,
) -> StoreResult<Option<String>> {
    Ok(sqlx::query_scalar(CUSTOMER_BY_EMAIL)
        .bind(email_lower)
        .bind(tenant_id)
        .fetch_optional(db)
        .await?)
}

/// (normalised email, Customer stream) for each of these emails that is taken.
pub async fn customers_by_emails<'e>(
    db: impl PgExecutor<'e>,
    emails_lower: &[String],
) -> StoreResult<Vec<(String, String)>> {
    Ok(sqlx::query_as(CUSTOMERS_BY_EMAILS)
        // Planned with the real values every time: a plan cached while the
        // events table was small would scan it whole.
        .persistent(false)
        .bind(emails_lower)
        .fetch_all(db)
        .await?)
}

/// Every passkey stream ever registered to the customer (revoked included).
pub async fn credential_ids_of<'e>(
    db: impl PgExecutor<'e>,
    customer_id: &str,
) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(CREDENTIAL_IDS_OF)
        .bind(customer_id)
        .fetch_all(db)
        .await?)
}

/// Every session stream of the customer (ended ones included).
pub async fn session_ids_of<'e>(
    db: impl PgExecutor<'e>,
    customer_id: &str,
) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(SESSION_IDS_OF)
        .bind(customer_id)
        .fetch_all(db)
        .await?)
}

/// The Customer stream that holds this grant.
pub async fn customer_of_grant<'e>(
    db: impl PgExecutor<'e>,
    grant_id: &str,
) -> StoreResult<Option<String>> {
    Ok(sqlx::query_scalar(CUSTOMER_OF_GRANT)
        .bind(grant_id)
        .fetch_optional(db)
        .await?)
}

/// How many Customer streams exist (registered or imported): the founders
/// counter's seed (a scalar subquery the API embeds in its own statement).
pub const CUSTOMER_COUNT: &str =
    "SELECT count(*) FROM events WHERE aggregate_type = 'Customer' AND sequence = 1";

/// How many customers are verified: `EmailVerified` events and customers
/// imported verified (the verified founders counter's seed).
pub const VERIFIED_CUSTOMER_COUNT: &str = "SELECT count(*) FROM events \
     WHERE aggregate_type = 'Customer' \
       AND (event_type = 'EmailVerified' \
            OR (event_type = 'CustomerImported' \
                AND payload #>> '{CustomerImported,email_verified_at}' IS NOT NULL))";

/// The hash (hex) of one event and its ledger position, if sealed yet.
pub async fn event_hash_and_seal<'e>(
    db: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> StoreResult<Option<(String, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT encode(e.hash, 'hex'), l.seq FROM events e \
         LEFT JOIN ledger l ON l.aggregate_type = e.aggregate_type \
              AND l.aggregate_id = e.aggregate_id AND l.sequence = e.sequence \
         WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(db)
    .await?)
}
