//! The signed-in customer's passkeys: list, rename, delete (never the last
//! one while no unused backup code remains).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use queue_domain::credential::CredentialCommand;
use queue_domain::session::FactorChange;
use queue_domain::types::{CredentialId, CredentialName, CustomerId, Reason};
use queue_domain::Credential;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::consistency::{await_projection, ConsistencyHeader};
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, Json};
use crate::state::AppState;
use queue_eventstore::{Batch, Loaded};
use queue_projections::Projection;

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    pub credential_id: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RenameRequest {
    pub name: String,
}

fn view(loaded: &Loaded<Credential>) -> Option<CredentialView> {
    let s = loaded.aggregate.state()?;
    Some(CredentialView {
        credential_id: loaded.id.clone(),
        name: s.name.as_ref().map(ToString::to_string),
        created_at: s.created_at,
        last_used_at: s.last_used_at,
        backup_eligible: s.backup_eligible,
        backup_state: s.backup_state,
    })
}

/// The customer's passkeys, from the `queue_webauthn_credentials` read
/// table, once it has caught up with what was committed before the request
/// (bounded: `X-Queue-Consistency` says whether it had).
#[utoipa::path(get, path = "/api/v1/auth/credentials", tag = "credentials",
    responses((status = 200, body = CredentialList), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<(ConsistencyHeader, Json<CredentialList>), ApiError> {
    // Read-your-writes: a passkey just added is listed.
    let freshness = await_projection(&state, Projection::Credentials).await?;
    let mut tx = auth.read_tx(&state).await?;
    let rows =
        queue_projections::read::credentials_of(&mut *tx, Uuid::from(auth.customer_id)).await?;
    tx.commit().await?;
    let credentials = rows
        .into_iter()
        .map(|row| CredentialView {
            credential_id: row.credential_id.to_string(),
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            backup_eligible: row.backup_eligible,
            backup_state: row.backup_state,
        })
        .collect();
    Ok((freshness.header(), Json(CredentialList { credentials })))
}

/// The customer's own, usable passkey; anything else is 404.
async fn own(
    state: &AppState,
    customer: CustomerId,
    raw: &str,
) -> Result<Loaded<Credential>, ApiError> {
    let id: CredentialId = raw.parse().map_err(|_| ApiError::NotFound)?;
    let credential = state.store().credential(id).await?;
    match credential.aggregate.state() {
        Some(s) if s.customer_id == customer && !s.is_revoked() => Ok(credential),
        _ => Err(ApiError::NotFound),
    }
}

#[utoipa::path(patch, path = "/api/v1/auth/credentials/{credential_id}", tag = "credentials",
    params(("credential_id" = uuid::Uuid, Path)), request_body = RenameRequest,
    responses((status = 200, body = CredentialView), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn rename(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(credential_id): Path<String>,
    Json(request): Json<RenameRequest>,
) -> Result<Json<CredentialView>, ApiError> {
    let name = CredentialName::parse(&request.name)?;
    let mut credential = own(&state, auth.customer_id, &credential_id).await?;
    let events = credential
        .execute(CredentialCommand::Rename {
            name,
            at: state.now(),
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut credential, &events)?;
    state.store().append(batch).await?;
    view(&credential).map(Json).ok_or(ApiError::NotFound)
}

#[utoipa::path(delete, path = "/api/v1/auth/credentials/{credential_id}", tag = "credentials",
    params(("credential_id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::http::error::ErrorEnvelope, description = "unauthorized, reauth_required"), (status = 403, body = crate::http::error::ErrorEnvelope, description = "a backup-code session"), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope, description = "last_credential"), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(credential_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store();
    let mut credential = own(&state, auth.customer_id, &credential_id).await?;
    crate::routes::reauth::require(&auth, FactorChange::DeletePasskey, state.now())?;
    // Serialise deletions per customer so two concurrent deletes cannot both
    // pass the last-passkey check.
    let mut tx = store.pool().begin().await?;
    crate::db::lock(
        &mut tx,
        crate::db::Lock::Credentials,
        &auth.customer_id.to_string(),
    )
    .await?;
    let usable = store
        .usable_credentials_of(&mut tx, auth.customer_id)
        .await?;
    let others = usable.iter().filter(|c| c.id != credential.id).count();
    if usable.iter().all(|c| c.id != credential.id) {
        return Err(ApiError::NotFound);
    }
    if others == 0 {
        let customer = store.customer(auth.customer_id).await?;
        if !customer.aggregate.has_unused_backup_codes() {
            return Err(ApiError::LastCredential);
        }
    }
    // Reload under the lock so the append continues the current stream.
    credential = store
        .load_many_in::<Credential>(&mut tx, &[credential.id.clone()])
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    let events = credential
        .execute(CredentialCommand::Revoke {
            reason: Reason::parse("deleted by the customer")?,
            at: state.now(),
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut credential, &events)?;
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
