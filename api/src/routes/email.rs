//! Email verification: a single-use link token valid 24 h; the message goes
//! out through the mail outbox (`crate::mail::outbox`, ADR 0208); verifying the
//! token marks the email verified.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Duration;
use queue_domain::customer::{CustomerCommand, CustomerError, EMAIL_VERIFICATION_TTL_SECS};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::tokens;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::state::AppState;
use queue_eventstore::Batch;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyRequest {
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    pub email_verified: bool,
}

#[utoipa::path(post, path = "/api/v1/auth/email/verification", tag = "email",
    responses((status = 202), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn request_verification(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<StatusCode, ApiError> {
    let now = state.now();
    let mut customer = state.store().customer(auth.customer_id).await?;
    if customer.aggregate.state().is_none() {
        return Err(ApiError::Unauthorized);
    }
    // The request's event is the next in the stream; the token is derived
    // from it, so the outbox sender can derive it again (ADR 0208).
    let sequence = customer.version as u64 + 1;
    let token = tokens::email_token(
        state.store().repo().keys().current().current_key(),
        auth.customer_id,
        sequence,
    );
    let events = customer
        .execute(CustomerCommand::RequestEmailVerification {
            token_hash: tokens::hash(&token),
            expires_at: now + Duration::seconds(EMAIL_VERIFICATION_TTL_SECS),
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    // The message is a projection of this event (the mail outbox): an SMTP
    // outage never fails this request.
    state.store().append(batch).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/api/v1/auth/email/verify", tag = "email",
    request_body = VerifyRequest,
    responses((status = 200, body = Verified), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn verify(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(request): Json<VerifyRequest>,
) -> Result<Json<Verified>, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("verify:{address}"))
        .await?;
    let customer_id = tokens::email_token_customer(&request.token).ok_or(ApiError::InvalidCode)?;
    // Only a wrong token charges the account's buckets (issue 17).
    let account = customer_id.to_string();
    crate::flows::login::check_guessable(
        &state,
        "verify",
        &account,
        &address,
        verify_token(&state, customer_id, &request.token),
    )
    .await
    .map(Json)
}

async fn verify_token(
    state: &AppState,
    customer_id: queue_domain::types::CustomerId,
    token: &str,
) -> Result<Verified, ApiError> {
    let now = state.now();
    let token_hash = tokens::hash(token);
    let mut customer = state.store().customer(customer_id).await?;
    let Some(customer_state) = customer.aggregate.state() else {
        return Err(ApiError::InvalidCode);
    };
    // Suspension is only revealed to the holder of the current token.
    let token_is_current = customer_state
        .pending_email_verification
        .as_ref()
        .is_some_and(|p| p.token_hash == token_hash);
    if !token_is_current {
        return Err(ApiError::InvalidCode);
    }
    let events = customer
        .execute(CustomerCommand::VerifyEmail {
            token_hash,
            at: now,
        })
        .await
        .map_err(|e| match e {
            CustomerError::Suspended => ApiError::CustomerSuspended,
            _ => ApiError::InvalidCode,
        })?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    if state.config().flag_founders_gate && state.config().founders_count_verified_only {
        crate::flows::founders::append_verification(state, batch).await?;
    } else {
        state.store().append(batch).await?;
    }
    Ok(Verified {
        email_verified: true,
    })
}
