//! Sessions: refresh with rotation and reuse detection, logout, the
//! customer's sessions, and `/auth/me`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use queue_domain::session::{FactorChange, RefreshOutcome, RevokeReason, SessionCommand};
use queue_domain::types::SessionId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::tokens::{self, TokenResponse};
use crate::http::consistency::{await_projection, ConsistencyHeader};
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, Json};
use crate::state::AppState;
use queue_eventstore::Batch;
use queue_projections::Projection;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/session/refresh", tag = "sessions",
    request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let now = state.now();
    let store = state.store();
    let session_id = match tokens::refresh_token_session(&request.refresh_token) {
        Some(session_id) => session_id,
        None => legacy_session(&state, &request.refresh_token).await?,
    };
    let mut session = store.session(session_id).await?;
    let presented = tokens::hash(&request.refresh_token);
    // A token this session never issued gets the same answer as a token of
    // a session that does not exist, whatever the session's state: the
    // session id in a token is no oracle (issue 17).
    let Some(session_state) = session
        .aggregate
        .state()
        .filter(|session| session.knows(&presented))
    else {
        return Err(ApiError::InvalidRefreshToken);
    };
    let customer = store.customer(session_state.customer_id).await?;
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("session of an unknown customer"))?;
    if customer_state.is_suspended() {
        return Err(ApiError::CustomerSuspended);
    }
    let method = session_state.method;
    let auth_time = session_state.auth_time;
    let new_token = tokens::new_refresh_token(session_id);
    let events = session
        .execute(SessionCommand::Refresh {
            presented,
            new: tokens::hash(&new_token),
            grace_secs: state.config().refresh_grace_secs,
            at: now,
        })
        .await?;
    let outcome = RefreshOutcome::from_events(&events);
    let mut batch = Batch::new();
    batch.add(&mut session, &events)?;
    store.append(batch).await?;
    match outcome {
        Some(RefreshOutcome::Refreshed { .. }) => Ok(Json(tokens::token_response(
            &state,
            customer_state,
            session_id,
            method.as_ref(),
            auth_time,
            new_token,
            now,
        )?)),
        Some(RefreshOutcome::Expired) => Err(ApiError::SessionExpired),
        Some(RefreshOutcome::ReuseDetected) => {
            tracing::warn!(%session_id, "refresh token reuse: session revoked");
            Err(ApiError::RefreshReuseDetected)
        }
        None => Err(ApiError::internal("refresh produced no outcome")),
    }
}

/// A refresh token Queue did not issue can only be an imported legacy
/// session's (the backfill keeps its SHA-256): found by hash in the read
/// table, and only for sessions that came from the legacy service.
async fn legacy_session(state: &AppState, token: &str) -> Result<SessionId, ApiError> {
    if token.is_empty() || token.len() > 512 {
        return Err(ApiError::InvalidRefreshToken);
    }
    let hash = tokens::hash(token).to_hex();
    match queue_projections::read::session_by_refresh_hash(&state.pool, &hash).await? {
        Some(row) if row.legacy_id.is_some() => Ok(SessionId::from(row.session_id)),
        _ => Err(ApiError::InvalidRefreshToken),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "sessions",
    responses((status = 204), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<StatusCode, ApiError> {
    let mut session = auth.session;
    let events = session
        .execute(SessionCommand::Revoke {
            reason: RevokeReason::Logout,
            at: state.now(),
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut session, &events)?;
    state.store().append(batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub amr: Vec<String>,
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// The customer's active sessions, newest first, from the `queue_sessions`
/// read table, once it has caught up with what was committed before the
/// request (bounded: `X-Queue-Consistency` says whether it had).
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "sessions",
    responses((status = 200, body = SessionList), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<(ConsistencyHeader, Json<SessionList>), ApiError> {
    // Read-your-writes: the session this login just created is listed.
    let freshness = await_projection(&state, Projection::Sessions).await?;
    let now = state.now();
    let mut tx = auth.read_tx(&state).await?;
    let rows =
        queue_projections::read::sessions_of(&mut *tx, Uuid::from(auth.customer_id), now).await?;
    tx.commit().await?;
    let current = Uuid::from(auth.session_id);
    let sessions = rows
        .into_iter()
        .map(|row| SessionView {
            session_id: row.session_id.to_string(),
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            expires_at: row.ends_at(),
            amr: vec![row.amr.clone().unwrap_or_else(|| "webauthn".to_owned())],
            current: row.session_id == current,
        })
        .collect();
    Ok((freshness.header(), Json(SessionList { sessions })))
}

#[utoipa::path(delete, path = "/api/v1/auth/sessions/{session_id}", tag = "sessions",
    params(("session_id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::http::error::ErrorEnvelope, description = "unauthorized, reauth_required (another session)"), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session_id: SessionId = session_id.parse().map_err(|_| ApiError::NotFound)?;
    let mut session = state.store().session(session_id).await?;
    let Some(session_state) = session.aggregate.state() else {
        return Err(ApiError::NotFound);
    };
    if session_state.customer_id != auth.customer_id {
        return Err(ApiError::NotFound);
    }
    if session_state.is_revoked() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let now = state.now();
    // Ending the current session is a logout; ending another is a factor
    // change: step-up, and the customer is told (ADR 0211).
    let reason = if session_id == auth.session_id {
        RevokeReason::Logout
    } else {
        crate::routes::reauth::require(&auth, FactorChange::RevokeOtherSession, now)?;
        RevokeReason::RevokedByCustomer
    };
    let events = session
        .execute(SessionCommand::Revoke { reason, at: now })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut session, &events)?;
    state.store().append(batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub customer_id: String,
    pub email: String,
    pub email_verified: bool,
    pub display_name: Option<String>,
    pub roles: Vec<String>,
    /// `active` or `suspended`.
    pub status: String,
    /// The customer's tenant (issue 22).
    pub tenant: MeTenant,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeTenant {
    pub tenant_id: String,
    /// `default` for the default tenant, also before its stream exists.
    pub slug: String,
    pub name: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "sessions",
    responses((status = 200, body = Me), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, auth: Authenticated) -> Result<Json<Me>, ApiError> {
    let now = state.now();
    let customer = state.store().customer(auth.customer_id).await?;
    let c = customer.aggregate.state().ok_or(ApiError::Unauthorized)?;
    let tenant: queue_eventstore::Loaded<queue_domain::Tenant> =
        state.store().load(&c.tenant_id.to_string()).await?;
    let tenant = match tenant.aggregate.state() {
        Some(t) => MeTenant {
            tenant_id: t.tenant_id.to_string(),
            slug: t.slug.to_string(),
            name: Some(t.name.to_string()),
        },
        None if c.tenant_id.is_default() => MeTenant {
            tenant_id: c.tenant_id.to_string(),
            slug: queue_domain::types::TenantSlug::DEFAULT.to_owned(),
            name: None,
        },
        None => return Err(ApiError::internal("customer of a tenant with no stream")),
    };
    Ok(Json(Me {
        tenant,
        customer_id: c.customer_id.to_string(),
        email: c.email.to_string(),
        email_verified: c.email_verified(),
        display_name: c.display_name.as_ref().map(ToString::to_string),
        roles: c.active_roles(now).into_iter().map(String::from).collect(),
        status: if c.is_suspended() {
            "suspended"
        } else {
            "active"
        }
        .to_owned(),
    }))
}
