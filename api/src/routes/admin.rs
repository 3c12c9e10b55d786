//! Admin actions (scope admin): suspend (`flows::suspend`: the customer
//! and every live session in one transaction) and reinstate a customer, and
//! the customer's history at an instant (forensics).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use queue_domain::customer::CustomerCommand;
use queue_domain::types::{Actor, CustomerId, Reason};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::service::{Scope, ServiceCaller};
use crate::flows;
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::routes::rbac::{existing_customer, parse_uuid};
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
    let revoked =
        flows::suspend::suspend(&state, customer_id, reason, actor, &caller.tenants).await?;
    tracing::info!(customer = %customer_id, service = caller.name.as_str(), sessions = revoked, "customer suspended");
    Ok(StatusCode::NO_CONTENT)
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
    let mut customer = existing_customer(&state, &caller, customer_id).await?;
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
    existing_customer(&state, &caller, customer_id).await?;
    let history =
        queue_eventstore::history::customer_history(state.store(), &customer_id.to_string(), at)
            .await?;
    Ok(axum::Json(history).into_response())
}
