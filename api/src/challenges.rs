//! WebAuthn challenges: a TTL table, single use (deleted when presented,
//! whatever the outcome), expired after `QUEUE_CHALLENGE_TTL` (5 minutes)
//! and swept.

use chrono::{DateTime, Duration, Utc};
use queue_domain::types::CustomerId;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Register,
    Login,
    /// Step-up in a signed-in session (ADR 0211); never usable to log in.
    Reauth,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
            Self::Reauth => "reauth",
        }
    }
}

/// A challenge taken out of the table.
#[derive(Debug)]
pub struct Challenge {
    pub customer_id: Option<CustomerId>,
    pub context: Value,
    pub state: Value,
}

pub async fn store(
    pool: &PgPool,
    kind: Kind,
    customer_id: Option<CustomerId>,
    context: Value,
    state: Value,
    now: DateTime<Utc>,
    ttl_secs: u32,
) -> Result<Uuid, ApiError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webauthn_challenges \
         (challenge_id, kind, customer_id, context, state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(kind.as_str())
    .bind(customer_id.map(Uuid::from))
    .bind(context)
    .bind(state)
    .bind(now)
    .bind(now + Duration::seconds(i64::from(ttl_secs)))
    .execute(pool)
    .await?;
    Ok(id)
}

/// Takes the challenge out (single use). Unknown, already used, expired or
/// of the other kind: 410 challenge_expired.
pub async fn take(
    pool: &PgPool,
    kind: Kind,
    challenge_id: &str,
    now: DateTime<Utc>,
) -> Result<Challenge, ApiError> {
    let Ok(id) = Uuid::try_parse(challenge_id) else {
        return Err(ApiError::ChallengeExpired);
    };
    let row = sqlx::query(
        "DELETE FROM webauthn_challenges WHERE challenge_id = $1 AND kind = $2 \
         RETURNING customer_id, context, state, expires_at",
    )
    .bind(id)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::ChallengeExpired);
    };
    let expires_at: DateTime<Utc> = row.try_get("expires_at")?;
    if now >= expires_at {
        return Err(ApiError::ChallengeExpired);
    }
    let customer_id: Option<Uuid> = row.try_get("customer_id")?;
    Ok(Challenge {
        customer_id: customer_id.map(CustomerId::from),
        context: row.try_get("context")?,
        state: row.try_get("state")?,
    })
}

/// Deletes expired challenges; returns how many.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webauthn_challenges WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
