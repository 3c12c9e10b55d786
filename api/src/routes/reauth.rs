//! Step-up (ADR 0211): adding or deleting a passkey, regenerating backup
//! codes and revoking another session need a session whose last
//! authentication (`auth_time`, folded from the session's checked event
//! stream, never taken from the client) is at most 5 minutes old, else 401
//! `reauth_required`. The reauth ceremony refreshes it with a user-verified
//! assertion of one of the customer's passkeys (`SessionReauthenticated`).

use axum::extract::State;
use chrono::{DateTime, Utc};
use queue_domain::session::FactorChange;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use webauthn_rs_core::proto::{AllowCredentials, UserVerificationPolicy};

use crate::auth::challenges::Kind;
use crate::flows;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::routes::passkeys::{begin_assertion, BeginResponse, LoginCompleteRequest};
use crate::state::AppState;

/// Refuses `change` unless the session of `auth` may make it at `now`:
/// 401 `reauth_required` when its `auth_time` is too old, 403 `forbidden`
/// for what a backup-code session may never do.
pub fn require(
    auth: &Authenticated,
    change: FactorChange,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let session = auth
        .session
        .aggregate
        .state()
        .ok_or(ApiError::Unauthorized)?;
    session.step_up(change, now).map_err(ApiError::from)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Reauthenticated {
    /// The session's new `auth_time`.
    pub reauthenticated_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/reauth/begin", tag = "passkeys",
    responses((status = 200, body = BeginResponse), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn begin(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<BeginResponse>, ApiError> {
    let store = state.store();
    let customer = store.customer(auth.customer_id).await?;
    let customer_state = customer.aggregate.state().ok_or(ApiError::Unauthorized)?;
    if customer_state.is_suspended() {
        return Err(ApiError::CustomerSuspended);
    }
    let mut conn = store.pool().acquire().await?;
    let ids: Vec<Vec<u8>> = store
        .usable_credentials_of(&mut conn, auth.customer_id)
        .await?
        .into_iter()
        .filter_map(|c| {
            c.aggregate
                .state()
                .map(|s| s.raw_credential_id.as_bytes().to_vec())
        })
        .collect();
    drop(conn);
    if ids.is_empty() {
        // Nothing to reauthenticate with (a backup-code session of a
        // customer without passkeys): it adds one without reauth instead.
        return Err(ApiError::WebauthnFailed);
    }
    let webauthn = &state.inner.webauthn;
    let builder = webauthn
        .new_challenge_authenticate_builder(Vec::new(), Some(UserVerificationPolicy::Required))
        .map_err(|e| ApiError::internal(format!("reauth builder: {e}")))?;
    let (mut options, authentication) = webauthn
        .generate_challenge_authenticate(builder)
        .map_err(|e| ApiError::internal(format!("reauth challenge: {e}")))?;
    options.public_key.allow_credentials = ids
        .into_iter()
        .map(|id| AllowCredentials {
            type_: "public-key".to_owned(),
            id,
            transports: None,
        })
        .collect();
    begin_assertion(
        &state,
        Kind::Reauth,
        Some(auth.customer_id),
        json!({"mode": "reauth", "session_id": auth.session_id.to_string()}),
        &authentication,
        &options,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/reauth/complete", tag = "passkeys",
    request_body = LoginCompleteRequest,
    responses((status = 200, body = Reauthenticated), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 410, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    mut auth: Authenticated,
    Json(request): Json<LoginCompleteRequest>,
) -> Result<Json<Reauthenticated>, ApiError> {
    let reauthenticated_at = flows::login::reauthenticate(
        &state,
        &address,
        &mut auth,
        &request.challenge_id,
        request.credential,
    )
    .await?;
    Ok(Json(Reauthenticated { reauthenticated_at }))
}
