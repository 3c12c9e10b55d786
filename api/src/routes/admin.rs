//! Admin actions (scope admin): suspend and reinstate a customer, and the
//! customer's history at an instant (forensics).
//!
//! Suspension appends `CustomerSuspended` and a `SessionRevoked { Suspended }`
//! for every live session of the customer in one transaction (one
//! [`Batch`]): either the customer is suspended with every session ended, or
//! nothing changed.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use queue_domain::customer::CustomerCommand;
use queue_domain::session::{RevokeReason, SessionCommand, SessionStatus};
use queue_domain::types::{Actor, CustomerId, Reason};
use queue_domain::Customer;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::routes::rbac::{existing_customer, parse_uuid};
use crate::auth::service::{Scope, ServiceCaller};
use crate::state::AppState;
use queue_eventstore::Batch;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReasonRequest {
    pub reason: String,
}

#[utoipa::path(post, path = "/api/v1/admin/customers/{customer_id}/suspend", tag = "service",
    security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path)),
    request_body = ReasonRequest,
    responses((status = 204, description = "suspended; every live session revoked"), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope),
        (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn suspend(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(customer_id): Path<String>,
    Json(request): Json<ReasonRequest>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let customer_id = CustomerId::from(parse_uuid("customer_id", &customer_id)?);
    let reason = Reason::parse(&request.reason)?;
    let actor = Actor::parse(caller.name.as_str())?;
    // A session refreshed between our read and our append makes the append
    // fail on its version: read again and retry a few times.
    let mut attempt = 0;
    let revoked = loop {
        attempt += 1;
        match suspend_once(&state, customer_id, reason.clone(), actor.clone()).await {
            Err(ApiError::Conflict) if attempt < 3 => continue,
            other => break other?,
        }
    };
    tracing::info!(customer = %customer_id, service = caller.name.as_str(), sessions = revoked, "customer suspended");
    Ok(StatusCode::NO_CONTENT)
}

/// One suspension attempt in one transaction: the customer and its
/// sessions are read under the customer's exclusive lock, so no login can
/// add a session that this suspension does not revoke.
async fn suspend_once(
    state: &AppState,
    customer_id: CustomerId,
    reason: Reason,
    actor: Actor,
) -> Result<usize, ApiError> {
    let now = state.now();
    let store = state.store();
    let mut tx = state.pool.begin().await?;
    crate::db::lock(&mut tx, crate::db::Lock::Customer, &customer_id.to_string()).await?;
    let mut customer = store
        .load_many_in::<Customer>(&mut tx, &[customer_id.to_string()])
        .await?
        .pop()
        .filter(|c| c.aggregate.state().is_some())
        .ok_or(ApiError::NotFound)?;
    let events = customer
        .execute(CustomerCommand::Suspend {
            reason,
            actor,
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    let mut revoked = 0usize;
    for mut session in store.sessions_of_in(&mut tx, customer_id).await? {
        let live = session
            .aggregate
            .state()
            .is_some_and(|s| matches!(s.status(now), SessionStatus::Active));
        if !live {
            continue;
        }
        let events = session
            .execute(SessionCommand::Revoke {
                reason: RevokeReason::Suspended,
                at: now,
            })
            .await?;
        batch.add(&mut session, &events)?;
        revoked += 1;
    }
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(revoked)
}

/// Appends a passkey login's batch (credential use and new session) unless
/// the customer is suspended, re-checked under the customer's shared lock
/// in the same transaction: a login racing a suspension either commits
/// first (and its session is revoked by it) or sees the suspension (403).
pub async fn append_login(
    state: &AppState,
    customer_id: CustomerId,
    batch: Batch,
) -> Result<(), ApiError> {
    let store = state.store();
    let mut tx = state.pool.begin().await?;
    crate::db::lock(
        &mut tx,
        crate::db::Lock::CustomerShared,
        &customer_id.to_string(),
    )
    .await?;
    let suspended = store
        .load_many_in::<Customer>(&mut tx, &[customer_id.to_string()])
        .await?
        .pop()
        .and_then(|c| c.aggregate.state().map(|s| s.is_suspended()))
        .unwrap_or(false);
    if suspended {
        return Err(ApiError::CustomerSuspended);
    }
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/admin/customers/{customer_id}/reinstate", tag = "service",
    security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path)),
    request_body(content = Option<ReasonRequest>, description = "optional; the reason defaults to `reinstated`"),
    responses((status = 204, description = "reinstated"), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope),
        (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn reinstate(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(customer_id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let customer_id = CustomerId::from(parse_uuid("customer_id", &customer_id)?);
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        Reason::parse("reinstated")?
    } else {
        let request: ReasonRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(crate::http::error::redact_values(&e.to_string())))?;
        Reason::parse(&request.reason)?
    };
    let actor = Actor::parse(caller.name.as_str())?;
    let now = state.now();
    let mut customer = existing_customer(&state, customer_id).await?;
    let events = customer
        .execute(CustomerCommand::Reinstate {
            reason,
            actor,
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    state.store().append(batch).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// RFC 3339; defaults to now.
    pub at: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/customers/{customer_id}/history", tag = "service",
    security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path), HistoryQuery),
    responses((status = 200, description = "the customer's state at `at`, the events that led there, and whether a signed checkpoint covers them", body = Object),
        (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn history(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(customer_id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let customer_id = CustomerId::from(parse_uuid("customer_id", &customer_id)?);
    let Query(query) =
        query.map_err(|e| ApiError::invalid(crate::http::error::redact_values(&e.body_text())))?;
    let at: DateTime<Utc> = match query.at.as_deref() {
        Some(raw) => DateTime::parse_from_rfc3339(raw.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::invalid("at must be an RFC 3339 timestamp"))?,
        None => state.now(),
    };
    existing_customer(&state, customer_id).await?;
    let history =
        queue_eventstore::history::customer_history(state.store(), &customer_id.to_string(), at)
            .await?;
    Ok(axum::Json(history).into_response())
}
