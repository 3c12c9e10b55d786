//! Backup recovery codes: generate a set of ten (shown once, stored as
//! HMACs under the backup-code key, ADR 0211), redeem one for a session
//! with `amr ["backup_code"]`. Regenerating needs step-up.

use axum::extract::State;
use axum::http::StatusCode;
use queue_domain::customer::{CustomerCommand, CustomerError};
use queue_domain::session::{AuthMethod, FactorChange};
use queue_domain::types::{Email, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::backup_code_keys::{self, Unmatched};
use crate::auth::tokens::{self, TokenResponse};
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::state::AppState;
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
    /// The slug of the email's tenant (issue 22); omit for the default tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/backup-codes", tag = "backup codes",
    responses((status = 201, body = BackupCodes), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn generate(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<(StatusCode, Json<BackupCodes>), ApiError> {
    let now = state.now();
    crate::routes::reauth::require(&auth, FactorChange::RegenerateBackupCodes, now)?;
    let codes = backup_code_keys::new_codes();
    let (code_hashes, key_id) = backup_code_keys::hash_new_codes(
        &state.config().backup_code_keys,
        auth.customer_id,
        &codes,
    );
    let mut customer = state.store().customer(auth.customer_id).await?;
    let events = customer
        .execute(CustomerCommand::GenerateBackupCodes {
            code_hashes,
            key_id: Some(key_id),
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    state.store().append(batch).await?;
    Ok((StatusCode::CREATED, Json(BackupCodes { codes })))
}

#[utoipa::path(post, path = "/api/v1/auth/backup-codes/redeem", tag = "backup codes",
    request_body = RedeemRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
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
    let tenant = crate::routes::tenants::tenant_by_slug(request.tenant.as_deref())?;
    // Codes can be guessed, so a used-up bucket refuses before the check,
    // the ceiling included; only a wrong code charges them (issue 17). The
    // account is the email within its tenant (the default tenant's keep
    // their old keys).
    let account = if tenant.is_default() {
        email.to_string()
    } else {
        format!("{tenant}:{email}")
    };
    crate::flows::login::check_guessable(
        &state,
        "redeem",
        &account,
        &address,
        redeem_code(&state, tenant, &email, &request.code),
    )
    .await
    .map(Json)
}

async fn redeem_code(
    state: &AppState,
    tenant: TenantId,
    email: &Email,
    code: &str,
) -> Result<TokenResponse, ApiError> {
    let now = state.now();
    let store = state.store();
    let Some(customer_id) = store.customer_by_email_in(tenant, email).await? else {
        return Err(ApiError::InvalidCode);
    };
    let mut customer = store.customer(customer_id).await?;
    let Some(customer_state) = customer.aggregate.state() else {
        return Err(ApiError::InvalidCode);
    };
    let Some(set) = customer_state.backup_codes.as_ref() else {
        return Err(ApiError::InvalidCode);
    };
    // Keyed (HMAC under the set's key) or legacy (SHA-256), compared in
    // constant time. Suspension is only revealed to someone holding a valid code.
    let code_hash = match backup_code_keys::matching_hash(
        &state.config().backup_code_keys,
        customer_id,
        set,
        code,
    ) {
        Ok(hash) => hash,
        Err(Unmatched::Invalid) => return Err(ApiError::InvalidCode),
        Err(Unmatched::UnknownKey(key_id)) => {
            tracing::error!(%key_id, "backup codes keyed with a key that is no longer configured (QUEUE_BACKUP_CODE_KEYS)");
            return Err(ApiError::InvalidCode);
        }
    };
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
        Some(now),
        session.refresh_token,
        now,
    )
}
