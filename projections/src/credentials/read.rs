//! Typed reads of this projection's tables, for the API (see
//! [`crate::read`] for what the tables promise: they trail the log).

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::CredentialRow;
use crate::error::ProjectionResult;
use crate::row::select;

/// The customer's passkeys that are not revoked, oldest first.
pub async fn credentials_of<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
) -> ProjectionResult<Vec<CredentialRow>> {
    let sql = select::<CredentialRow>(
        "\
         WHERE customer_id = $1 AND revoked_at IS NULL ORDER BY created_at, credential_id",
    );
    Ok(sqlx::query_as(&sql).bind(customer_id).fetch_all(db).await?)
}

/// Every passkey the customer ever registered, revoked ones included, oldest first.
pub async fn all_credentials_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<CredentialRow>> {
    let sql = select::<CredentialRow>(
        "\
         WHERE customer_id = $1 ORDER BY created_at, credential_id",
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
    let sql = select::<CredentialRow>("WHERE credential_id = $1");
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
    let sql = select::<CredentialRow>("WHERE raw_credential_id = $1");
    Ok(sqlx::query_as(&sql)
        .bind(raw_credential_id)
        .fetch_optional(pool)
        .await?)
}
