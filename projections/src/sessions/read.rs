//! Typed reads of this projection's tables, for the API (see
//! [`crate::read`] for what the tables promise: they trail the log).

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::SessionRow;
use crate::error::ProjectionResult;
use crate::row::{select_as, select_list};

/// The customer's sessions that are active at `at` (not revoked, before
/// both expiries), newest first.
pub async fn sessions_of<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    at: DateTime<Utc>,
) -> ProjectionResult<Vec<SessionRow>> {
    let sql = select_as::<SessionRow>(
        "s",
        "WHERE s.customer_id = $1 \
         AND s.revoked_at IS NULL AND s.idle_expires_at > $2 AND s.expires_at > $2 \
         ORDER BY s.created_at DESC, s.session_id",
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .bind(at)
        .fetch_all(db)
        .await?)
}

/// Every session of the customer, ended ones included, newest first.
pub async fn all_sessions_of(
    pool: &PgPool,
    customer_id: Uuid,
) -> ProjectionResult<Vec<SessionRow>> {
    let sql = select_as::<SessionRow>(
        "s",
        "WHERE s.customer_id = $1 \
         ORDER BY s.created_at DESC, s.session_id",
    );
    Ok(sqlx::query_as(&sql)
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}

/// One session by id.
pub async fn session(pool: &PgPool, session_id: Uuid) -> ProjectionResult<Option<SessionRow>> {
    let sql = select_as::<SessionRow>("s", "WHERE s.session_id = $1");
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
    let columns = select_list::<SessionRow>(Some("s"));
    let sql = format!(
        "SELECT {columns} FROM queue_session_refresh_tokens t \
         JOIN queue_sessions s ON s.session_id = t.session_id WHERE t.refresh_hash = $1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(refresh_hash)
        .fetch_optional(pool)
        .await?)
}
