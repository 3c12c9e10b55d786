//! The SQL of the API's own tables and locks, in one place: WebAuthn
//! challenges (`webauthn_challenges`), the founders counter
//! (`founders_gate`), the per-customer advisory locks and the readiness
//! ping. The API spells no query on `events`: stream lookups and the counts
//! it seeds from go through `queue_eventstore::lookup`, log positions
//! through `queue_eventstore::feed`, streams through the unit of work.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use queue_eventstore::lookup;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

// --- WebAuthn challenges (migrations/0200) -------------------------------

/// A challenge row as taken out of the table.
#[derive(Debug)]
pub struct ChallengeRow {
    pub customer_id: Option<Uuid>,
    pub context: Value,
    pub state: Value,
    pub expires_at: DateTime<Utc>,
}

/// A new challenge row.
#[derive(Debug)]
pub struct NewChallenge<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub customer_id: Option<Uuid>,
    pub context: Value,
    pub state: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert_challenge(pool: &PgPool, new: NewChallenge<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webauthn_challenges \
         (challenge_id, kind, customer_id, context, state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.customer_id)
    .bind(new.context)
    .bind(new.state)
    .bind(new.created_at)
    .bind(new.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the challenge of this id and kind and returns it (single use:
/// gone whatever the caller decides next).
pub async fn take_challenge(
    pool: &PgPool,
    id: Uuid,
    kind: &str,
) -> Result<Option<ChallengeRow>, sqlx::Error> {
    let row = sqlx::query(
        "DELETE FROM webauthn_challenges WHERE challenge_id = $1 AND kind = $2 \
         RETURNING customer_id, context, state, expires_at",
    )
    .bind(id)
    .bind(kind)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(ChallengeRow {
            customer_id: row.try_get("customer_id")?,
            context: row.try_get("context")?,
            state: row.try_get("state")?,
            expires_at: row.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// Deletes expired challenges and expired SAML requests and used
/// assertions; returns how many rows.
pub async fn delete_expired_challenges(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webauthn_challenges WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    // The SAML working state (migrations/0331) expires the same way: an
    // outstanding request past its TTL, a used assertion past its lifetime
    // (which the replay check no longer needs: validation refuses it as
    // expired anyway).
    let requests = sqlx::query("DELETE FROM saml_requests WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    let assertions = sqlx::query("DELETE FROM saml_assertions WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() + requests.rows_affected() + assertions.rows_affected())
}

// --- The founders counter (migrations/0204, 0304) -------------------------

/// The founders counters (rows of `founders_gate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Row 1: customers registered or imported.
    Customers,
    /// Row 2: customers with a verified email.
    Verified,
}

/// Each counter's seed statement, counting from the log when its row does
/// not exist yet. The count is a scalar subquery behind `NOT EXISTS`, so it
/// only runs while there is no counter row (as `INSERT … SELECT count(*) …
/// ON CONFLICT DO NOTHING` it counted every customer on every registration,
/// 20–126 ms at 41.7k customers, to insert nothing); concurrent first
/// registrations meet at the primary key (`ON CONFLICT`).
static SEEDS: LazyLock<[String; 2]> = LazyLock::new(|| {
    [
        (1, lookup::CUSTOMER_COUNT),
        (2, lookup::VERIFIED_CUSTOMER_COUNT),
    ]
    .map(|(id, count)| {
        format!(
            "INSERT INTO founders_gate (id, used) SELECT {id}, ({count}) \
             WHERE NOT EXISTS (SELECT 1 FROM founders_gate WHERE id = {id}) \
             ON CONFLICT (id) DO NOTHING"
        )
    })
});

/// Seeds `counter` from the log if it has no row yet.
pub async fn seed_counter(conn: &mut PgConnection, counter: Counter) -> Result<(), sqlx::Error> {
    let sql = match counter {
        Counter::Customers => &SEEDS[0],
        Counter::Verified => &SEEDS[1],
    };
    sqlx::query(sql.as_str()).execute(conn).await?;
    Ok(())
}

/// Counts one more verified customer.
pub async fn count_verified(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE founders_gate SET used = used + 1 WHERE id = 2")
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether fewer than `threshold` customers are verified (None: no counter).
pub async fn verified_below(
    conn: &mut PgConnection,
    threshold: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT used < $1 FROM founders_gate WHERE id = 2")
        .bind(threshold)
        .fetch_optional(conn)
        .await
}

/// Takes a seat among the first `threshold` customers: the new count, or
/// None when the cohort is full.
pub async fn take_founders_seat(
    conn: &mut PgConnection,
    threshold: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE founders_gate SET used = used + 1 WHERE id = 1 AND used < $1 RETURNING used",
    )
    .bind(threshold)
    .fetch_optional(conn)
    .await
}

// --- Advisory locks ------------------------------------------------------

/// The per-customer transaction locks (held to the end of the transaction).
/// The customer lock serialises suspension against passkey logins of the
/// same customer: the suspension takes it exclusively, a login's session
/// append shares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// A suspension's lock on the customer.
    Customer,
    /// A login's lock on the customer: shared with other logins, excluded
    /// by a suspension.
    CustomerShared,
    /// Serialises passkey deletions of one customer.
    Credentials,
}

pub async fn lock(
    conn: &mut PgConnection,
    lock: Lock,
    customer_id: &str,
) -> Result<(), sqlx::Error> {
    let sql = match lock {
        Lock::Customer => {
            "SELECT pg_advisory_xact_lock(hashtextextended('queue.customer:' || $1, 0))"
        }
        Lock::CustomerShared => {
            "SELECT pg_advisory_xact_lock_shared(hashtextextended('queue.customer:' || $1, 0))"
        }
        Lock::Credentials => {
            "SELECT pg_advisory_xact_lock(hashtextextended('queue.credentials:' || $1, 0))"
        }
    };
    sqlx::query(sql).bind(customer_id).execute(conn).await?;
    Ok(())
}

// --- Readiness -----------------------------------------------------------

/// One round trip to the database.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await?;
    Ok(())
}

// --- SAML working state (migrations/0331) ---------------------------------

/// Stores an outstanding AuthnRequest (single use, until `expires_at`).
pub async fn insert_saml_request(
    pool: &PgPool,
    request: &SamlRequestRow,
    tenant_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saml_requests (request_id, tenant_id, return_to, created_at, expires_at, \
         session_id, customer_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&request.request_id)
    .bind(tenant_id)
    .bind(&request.return_to)
    .bind(request.created_at)
    .bind(expires_at)
    .bind(request.session_id)
    .bind(request.customer_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// An outstanding AuthnRequest (migrations 0331, 0334).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SamlRequestRow {
    pub request_id: String,
    pub return_to: Option<String>,
    pub created_at: DateTime<Utc>,
    /// A step-up's request: the session (of `customer_id`) its answer
    /// reauthenticates. `None` for a login's.
    pub session_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
}

/// The tenant's outstanding request ids that have not expired at `now`.
pub async fn outstanding_saml_requests(
    pool: &PgPool,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT request_id FROM saml_requests WHERE tenant_id = $1 AND expires_at > $2 \
         ORDER BY created_at DESC LIMIT 256",
    )
    .bind(tenant_id)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// Takes the outstanding request (single use); `None` when it was already
/// used, never existed or has expired (its TTL holds even before the
/// sweeper deletes it).
pub async fn take_saml_request(
    conn: &mut PgConnection,
    request_id: &str,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SamlRequestRow>, sqlx::Error> {
    sqlx::query_as(
        "DELETE FROM saml_requests WHERE request_id = $1 AND tenant_id = $2 AND expires_at > $3 \
         RETURNING request_id, return_to, created_at, session_id, customer_id",
    )
    .bind(request_id)
    .bind(tenant_id)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// Records a used assertion; `false` when it was already recorded (replay).
pub async fn record_saml_assertion(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    assertion_id: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO saml_assertions (tenant_id, assertion_id, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(assertion_id)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
