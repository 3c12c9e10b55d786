//! Backup recovery codes: generate a set of ten (shown once, stored hashed),
//! redeem one for a session with `amr ["backup_code"]`.

use axum::extract::State;
use axum::http::StatusCode;
use queue_domain::customer::{CustomerCommand, CustomerError};
use queue_domain::session::AuthMethod;
use queue_domain::types::Email;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{Authenticated, ClientAddress, Json};
use crate::state::AppState;
use crate::tokens::{self, TokenResponse};
use queue_eventstore::Batch;

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupCodes {
    /// Ten codes; shown once.
    pub codes: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RedeemRequest {
    pub email: String,
    pub code: String,
}

#[utoipa::path(post, path = "/api/v1/auth/backup-codes", tag = "backup codes",
    responses((status = 201, body = BackupCodes), (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope), (status = 503, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn generate(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<(StatusCode, Json<BackupCodes>), ApiError> {
    let codes = tokens::new_backup_codes();
    let mut customer = state.store().customer(auth.customer_id).await?;
    let events = customer
        .execute(CustomerCommand::GenerateBackupCodes {
            code_hashes: codes
                .iter()
                .map(|c| tokens::hash(&tokens::normalize_backup_code(c)))
                .collect(),
            at: state.now(),
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    state.store().append(batch).await?;
    Ok((StatusCode::CREATED, Json(BackupCodes { codes })))
}

#[utoipa::path(post, path = "/api/v1/auth/backup-codes/redeem", tag = "backup codes",
    request_body = RedeemRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope),
        (status = 429, body = crate::error::ErrorEnvelope), (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn redeem(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(request): Json<RedeemRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("redeem:{address}"))
        .await?;
    let email = Email::parse(&request.email)?;
    // Codes can be guessed, so a used-up bucket refuses before the check,
    // the ceiling included; only a wrong code charges them (issue 17).
    let account = email.to_string();
    state
        .inner
        .account_limits
        .refuse_if_exhausted("redeem", &account, &address, true)
        .await?;
    match redeem_code(&state, &email, &request.code).await {
        Err(ApiError::InvalidCode) => {
            Err(crate::passkeys::failed_verification(&state, "redeem", &account, &address).await)
        }
        other => other.map(Json),
    }
}

async fn redeem_code(
    state: &AppState,
    email: &Email,
    code: &str,
) -> Result<TokenResponse, ApiError> {
    let now = state.now();
    let store = state.store();
    let Some(customer_id) = store.customer_by_email(email).await? else {
        return Err(ApiError::InvalidCode);
    };
    let mut customer = store.customer(customer_id).await?;
    let code_hash = tokens::hash(&tokens::normalize_backup_code(code));
    let Some(customer_state) = customer.aggregate.state() else {
        return Err(ApiError::InvalidCode);
    };
    // Suspension is only revealed to someone holding a valid code.
    let code_is_valid = customer_state.backup_codes.as_ref().is_some_and(|set| {
        set.codes
            .iter()
            .any(|c| c.hash == code_hash && c.redeemed_at.is_none())
    });
    if !code_is_valid {
        return Err(ApiError::InvalidCode);
    }
    let events = customer
        .execute(CustomerCommand::RedeemBackupCode { code_hash, at: now })
        .await
        .map_err(|e| match e {
            CustomerError::Suspended => ApiError::CustomerSuspended,
            _ => ApiError::InvalidCode,
        })?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    let session =
        tokens::create_session(state, &mut batch, customer_id, AuthMethod::BackupCode, now).await?;
    store.append(batch).await?;
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("customer without state"))?;
    tokens::token_response(
        state,
        customer_state,
        session.session_id,
        Some(&session.method),
        session.refresh_token,
        now,
    )
}
