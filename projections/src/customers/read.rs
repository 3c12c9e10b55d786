//! Typed reads of this projection's tables, for the API (see
//! [`crate::read`] for what the tables promise: they trail the log).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{BackupCodeRow, CustomerRow, EmailVerificationRow, RoleRow};
use crate::error::ProjectionResult;
use crate::row::select;

/// One customer by id.
pub async fn customer(pool: &PgPool, customer_id: Uuid) -> ProjectionResult<Option<CustomerRow>> {
    let sql = select::<CustomerRow>("WHERE customer_id = $1");
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
    let sql = select::<CustomerRow>("WHERE email = lower($1)");
    Ok(sqlx::query_as(&sql)
        .bind(email)
        .fetch_optional(pool)
        .await?)
}

/// How many customers exist (registered or imported, suspended included);
/// with `tenants`, only theirs (filtered, and bound by row-level security).
pub async fn customer_count(pool: &PgPool, tenants: Option<&[Uuid]>) -> ProjectionResult<i64> {
    let Some(tenants) = tenants else {
        return Ok(sqlx::query_scalar("SELECT count(*) FROM queue_customers")
            .fetch_one(pool)
            .await?);
    };
    let mut tx = pool.begin().await?;
    crate::tenants::bind_to_tenants(&mut tx, tenants).await?;
    let count =
        sqlx::query_scalar("SELECT count(*) FROM queue_customers WHERE tenant_id = ANY($1)")
            .bind(tenants)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(count)
}

/// The customer's roles in force at `at`: the default role row plus every
/// grant neither revoked nor expired, ordered default first then by grant time.
/// Empty for an unknown customer.
pub async fn roles_of(
    pool: &PgPool,
    customer_id: Uuid,
    at: DateTime<Utc>,
) -> ProjectionResult<Vec<RoleRow>> {
    let sql = select::<RoleRow>(
        "WHERE customer_id = $1 \
         AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
         ORDER BY is_default DESC, granted_at, row_id",
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
    let sql = select::<RoleRow>(
        "WHERE customer_id = $1 \
         ORDER BY is_default DESC, granted_at, row_id",
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One grant by id (to find its customer on `DELETE /rbac/grants/{id}`).
pub async fn grant(pool: &PgPool, grant_id: Uuid) -> ProjectionResult<Option<RoleRow>> {
    let sql = select::<RoleRow>("WHERE grant_id = $1");
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
    let sql = select::<BackupCodeRow>(
        "WHERE customer_id = $1 AND NOT voided \
         ORDER BY generation, code_index",
    );
    Ok(sqlx::query_as(&sql)
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
    let sql = select::<EmailVerificationRow>(
        "WHERE token_hash = $1 \
         ORDER BY requested_at DESC, request_sequence DESC LIMIT 1",
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
    let sql = select::<EmailVerificationRow>(
        "WHERE customer_id = $1 \
         ORDER BY request_sequence DESC",
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}
