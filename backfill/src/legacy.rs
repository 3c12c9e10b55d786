//! The legacy tables: rows as the Python service wrote them, keyset-paged
//! reads, the `migrated_to_queue` flag.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::{BackfillError, BackfillResult};

/// The four legacy tables, in the order the backfill reads them (a
/// credential, session or grant needs its customer imported first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Customers,
    Credentials,
    Sessions,
    Grants,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Customers,
        Table::Credentials,
        Table::Sessions,
        Table::Grants,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Credentials => "webauthn_credentials",
            Self::Sessions => "customer_sessions",
            Self::Grants => "rbac_grants",
        }
    }

    /// Which rows the backfill reads: revoked sessions and grants are history
    /// the legacy service already ended; they are not migrated.
    fn filter(self) -> &'static str {
        match self {
            Self::Customers | Self::Credentials => "TRUE",
            Self::Sessions | Self::Grants => "revoked_at IS NULL",
        }
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LegacyCustomer {
    pub id: i64,
    pub email: String,
    pub display_name: Option<String>,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LegacyCredential {
    pub id: i64,
    pub customer_id: i64,
    pub credential_id: Vec<u8>,
    pub public_key: Vec<u8>,
    pub sign_count: i64,
    pub transports: Option<Vec<String>>,
    pub aaguid: Option<Uuid>,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LegacySession {
    pub id: i64,
    pub customer_id: i64,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LegacyGrant {
    pub id: i64,
    pub customer_id: i64,
    pub role: String,
    pub ticket_id: Option<String>,
    pub granted_by: String,
    pub reason: String,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

const CUSTOMER_COLUMNS: &str = "id, email, display_name, email_verified_at, status, created_at";
const CREDENTIAL_COLUMNS: &str = "id, customer_id, credential_id, public_key, sign_count, \
     transports, aaguid, backup_eligible, backup_state, name, created_at, last_used_at";
const SESSION_COLUMNS: &str = "id, customer_id, token_hash, created_at, last_seen_at, expires_at";
const GRANT_COLUMNS: &str =
    "id, customer_id, role, ticket_id, granted_by, reason, granted_at, expires_at";

/// The next page of a table after `after` (keyset pagination by legacy id).
async fn page<T>(
    pool: &PgPool,
    table: Table,
    columns: &str,
    after: i64,
    limit: i64,
) -> BackfillResult<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let sql = format!(
        "SELECT {columns} FROM {} WHERE id > $1 AND {} ORDER BY id LIMIT $2",
        table.name(),
        table.filter()
    );
    // Unnamed statements, planned with each page's values: a generic plan
    // cached on a small or unanalysed table can scan it whole per page.
    sqlx::query_as(&sql)
        .persistent(false)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(BackfillError::legacy)
}

pub async fn customers(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> BackfillResult<Vec<LegacyCustomer>> {
    page(pool, Table::Customers, CUSTOMER_COLUMNS, after, limit).await
}

pub async fn credentials(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> BackfillResult<Vec<LegacyCredential>> {
    page(pool, Table::Credentials, CREDENTIAL_COLUMNS, after, limit).await
}

pub async fn sessions(pool: &PgPool, after: i64, limit: i64) -> BackfillResult<Vec<LegacySession>> {
    page(pool, Table::Sessions, SESSION_COLUMNS, after, limit).await
}

pub async fn grants(pool: &PgPool, after: i64, limit: i64) -> BackfillResult<Vec<LegacyGrant>> {
    page(pool, Table::Grants, GRANT_COLUMNS, after, limit).await
}

/// How many rows the backfill will read from a table (for the progress bar).
pub async fn count(pool: &PgPool, table: Table) -> BackfillResult<u64> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        table.name(),
        table.filter()
    );
    let n: i64 = sqlx::query_scalar(&sql)
        .fetch_one(pool)
        .await
        .map_err(BackfillError::legacy)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Adds `migrated_to_queue` to every legacy table that lacks it. Additive
/// and idempotent; the legacy service ignores the column.
pub async fn add_migrated_column(pool: &PgPool) -> BackfillResult<()> {
    for table in Table::ALL {
        let sql = format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS migrated_to_queue boolean NOT NULL DEFAULT false",
            table.name()
        );
        sqlx::query(&sql)
            .execute(pool)
            .await
            .map_err(BackfillError::legacy)?;
    }
    Ok(())
}

/// Sets `migrated_to_queue` on rows that have a Queue counterpart.
pub async fn mark_migrated(
    conn: &mut PgConnection,
    table: Table,
    ids: &[i64],
) -> BackfillResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE {} SET migrated_to_queue = true WHERE id = ANY($1) AND NOT migrated_to_queue",
        table.name()
    );
    sqlx::query(&sql)
        .persistent(false)
        .bind(ids)
        .execute(conn)
        .await
        .map_err(BackfillError::legacy)?;
    Ok(())
}

/// Which of these legacy customer ids exist in the legacy table.
pub async fn existing_customers(pool: &PgPool, ids: &[i64]) -> BackfillResult<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM customers WHERE id = ANY($1)")
        .persistent(false)
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(BackfillError::legacy)
}

/// Whether two pools reach the same database: a session advisory lock taken
/// through one is visible in `pg_locks` of the other only then. In Phase 2
/// the legacy tables live in Queue's database, and the flag then commits in
/// the same transaction as the events.
pub async fn same_database(queue: &PgPool, legacy: &PgPool) -> BackfillResult<bool> {
    let key: i32 = (Uuid::new_v4().as_u128() & 0x3fff_ffff) as i32;
    let mut held = legacy.acquire().await.map_err(BackfillError::legacy)?;
    sqlx::query("SELECT pg_advisory_lock(7801, $1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .map_err(BackfillError::legacy)?;
    let seen: Result<bool, sqlx::Error> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
         AND classid = 7801 AND objid = $1::int::oid AND objsubid = 2 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .bind(key)
    .fetch_one(queue)
    .await;
    sqlx::query("SELECT pg_advisory_unlock(7801, $1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .map_err(BackfillError::legacy)?;
    seen.map_err(BackfillError::queue)
}
