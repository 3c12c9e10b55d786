//! WebAuthn challenges: a TTL table, single use (deleted when presented,
//! whatever the outcome), expired after `QUEUE_CHALLENGE_TTL` (5 minutes)
//! and swept.

use chrono::{DateTime, Duration, Utc};
use queue_domain::types::CustomerId;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::http::error::ApiError;

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
    db::insert_challenge(
        pool,
        db::NewChallenge {
            id,
            kind: kind.as_str(),
            customer_id: customer_id.map(Uuid::from),
            context,
            state,
            created_at: now,
            expires_at: now + Duration::seconds(i64::from(ttl_secs)),
        },
    )
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
    let Some(row) = db::take_challenge(pool, id, kind.as_str()).await? else {
        return Err(ApiError::ChallengeExpired);
    };
    if now >= row.expires_at {
        return Err(ApiError::ChallengeExpired);
    }
    Ok(Challenge {
        customer_id: row.customer_id.map(CustomerId::from),
        context: row.context,
        state: row.state,
    })
}

/// Deletes expired challenges; returns how many.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    db::delete_expired_challenges(pool, now).await
}
