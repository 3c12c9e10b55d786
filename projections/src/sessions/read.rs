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

/// The sessions of `tenant` that the read table shows live at `now` (not
/// revoked, before both expiries), as `(session, customer)`, with those
/// the sessions projection has not folded yet (every Session stream begun
/// in the log after its checkpoint, whoever's it is); with `saml_only`,
/// the read rows narrow to those a SAML login created. Candidates only:
/// the caller decides on each session's verified aggregate. Complete
/// whether or not the projector is running.
pub async fn session_candidates_of_tenant(
    pool: &PgPool,
    tenant: Uuid,
    saml_only: bool,
    now: DateTime<Utc>,
) -> ProjectionResult<Vec<(Uuid, Uuid)>> {
    let mut tx = pool.begin().await?;
    // The checkpoint first: the rows read after it are at least as new.
    let checkpoint =
        crate::runner::load_checkpoint(&mut tx, crate::Projection::Sessions, false).await?;
    crate::tenants::bind_to_tenants(&mut tx, &[tenant]).await?;
    let mut rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT session_id, customer_id FROM queue_sessions \
         WHERE tenant_id = $1 AND revoked_at IS NULL \
           AND idle_expires_at > $2 AND expires_at > $2 \
           AND ($3 = false OR amr = 'saml') \
         ORDER BY created_at, session_id",
    )
    .bind(tenant)
    .bind(now)
    .bind(saml_only)
    .fetch_all(&mut *tx)
    .await?;
    let tail: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT aggregate_id, coalesce(payload->'SessionCreated'->>'customer_id', \
                payload->'SessionImported'->>'customer_id') FROM events \
         WHERE (commit_xid, insert_id) > ($1, $2) \
           AND aggregate_type = 'Session' AND sequence = 1 \
         ORDER BY commit_xid, insert_id",
    )
    .bind(checkpoint.position.commit_xid)
    .bind(checkpoint.position.insert_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (session, customer) in tail {
        let parsed = (
            Uuid::parse_str(&session).ok(),
            customer.as_deref().and_then(|c| Uuid::parse_str(c).ok()),
        );
        if let (Some(session), Some(customer)) = parsed {
            if !rows.iter().any(|(s, _)| *s == session) {
                rows.push((session, customer));
            }
        }
    }
    Ok(rows)
}
