//! RBAC v2 (api-contract.md "Service endpoints"): grant and revoke roles by
//! grant id, and read a customer's roles. Each change is one Customer event
//! (`RoleGranted` / `RoleRevoked`) carrying the calling service as actor and
//! the reason, so the ledger entry and the change are the same append: the
//! entry exists before (and exactly when) the change takes effect. Roles are
//! read from the Customer stream, so JWTs minted after the change carry it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use queue_domain::customer::CustomerCommand;
use queue_domain::types::{Actor, CustomerId, GrantId, Reason, Role, TicketId};
use queue_domain::Customer;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::service::{Scope, ServiceCaller};
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::state::AppState;
use queue_eventstore::{Batch, Loaded};

/// The role catalogue when QUEUE_ROLE_CATALOGUE is unset.
pub const DEFAULT_ROLE_CATALOGUE: &[&str] = &[
    "antlers-user",
    "support-agent",
    "support-admin",
    "billing-admin",
    "auditor",
];

#[derive(Debug, Deserialize, ToSchema)]
pub struct GrantRequest {
    pub customer_id: String,
    pub role: String,
    #[serde(default)]
    pub ticket_id: Option<String>,
    pub reason: String,
    /// RFC 3339; must be in the future.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantCreated {
    pub grant_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RevokeRequest {
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub grant_id: Uuid,
    pub role: String,
    pub ticket_id: Option<String>,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolesResponse {
    /// Active grants (not revoked, not expired).
    pub roles: Vec<GrantView>,
    /// The role every customer holds without a grant.
    pub default_role: String,
}

pub(crate) fn parse_uuid(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw.trim()).map_err(|_| ApiError::invalid(format!("{field} must be a UUID")))
}

/// A customer that exists, or 404.
pub(crate) async fn existing_customer(
    state: &AppState,
    caller: &ServiceCaller,
    customer_id: CustomerId,
) -> Result<Loaded<Customer>, ApiError> {
    let customer = state.store().customer(customer_id).await?;
    let tenant = customer
        .aggregate
        .state()
        .map(|c| c.tenant_id)
        .ok_or(ApiError::NotFound)?;
    // Another tenant's customer does not exist to a limited token.
    caller.require_tenant(tenant)?;
    Ok(customer)
}

#[utoipa::path(post, path = "/api/v1/rbac/grants", tag = "service",
    security(("bearer" = [])),
    request_body = GrantRequest,
    responses((status = 201, body = GrantCreated), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope),
        (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn grant(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Json(request): Json<GrantRequest>,
) -> Result<(StatusCode, Json<GrantCreated>), ApiError> {
    caller.require(Scope::RbacWrite)?;
    let now = state.now();
    let customer_id = CustomerId::from(parse_uuid("customer_id", &request.customer_id)?);
    let role = Role::parse(&request.role)?;
    if !state.config().role_catalogue.contains(&role) {
        return Err(ApiError::invalid("role is not in the role catalogue"));
    }
    let ticket_id = match request.ticket_id.as_deref() {
        Some(raw) => Some(TicketId::parse(raw)?),
        None => None,
    };
    let reason = Reason::parse(&request.reason)?;
    let expires_at = match request.expires_at.as_deref() {
        Some(raw) => Some(
            DateTime::parse_from_rfc3339(raw.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 timestamp"))?,
        ),
        None => None,
    };
    let actor = Actor::parse(caller.name.as_str())?;
    let mut customer = existing_customer(&state, &caller, customer_id).await?;
    let grant_id = GrantId::from(Uuid::new_v4());
    let events = customer
        .execute(CustomerCommand::GrantRole {
            grant_id,
            role,
            ticket_id,
            reason,
            actor,
            expires_at,
            at: now,
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    state.store().append(batch).await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantCreated {
            grant_id: *grant_id.as_uuid(),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/rbac/grants/{grant_id}", tag = "service",
    security(("bearer" = [])),
    params(("grant_id" = uuid::Uuid, Path)),
    request_body = RevokeRequest,
    responses((status = 204, description = "revoked"), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope),
        (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(grant_id): Path<String>,
    Json(request): Json<RevokeRequest>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::RbacWrite)?;
    let now = state.now();
    let grant_id = GrantId::from(parse_uuid("grant_id", &grant_id)?);
    let reason = Reason::parse(&request.reason)?;
    let actor = Actor::parse(caller.name.as_str())?;
    let customer_id = state
        .store()
        .customer_of_grant(grant_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut customer = existing_customer(&state, &caller, customer_id).await?;
    let events = customer
        .execute(CustomerCommand::RevokeRole {
            grant_id,
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

#[utoipa::path(get, path = "/api/v1/rbac/customers/{customer_id}/roles", tag = "service",
    security(("bearer" = [])),
    params(("customer_id" = uuid::Uuid, Path)),
    responses((status = 200, body = RolesResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope),
        (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn roles(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(customer_id): Path<String>,
) -> Result<Json<RolesResponse>, ApiError> {
    caller.require(Scope::RbacRead)?;
    let customer_id = CustomerId::from(parse_uuid("customer_id", &customer_id)?);
    let customer = existing_customer(&state, &caller, customer_id).await?;
    let customer_state = customer.aggregate.state().ok_or(ApiError::NotFound)?;
    let now = state.now();
    let roles = customer_state
        .active_grants(now)
        .into_iter()
        .map(|g| GrantView {
            grant_id: *g.grant_id.as_uuid(),
            role: g.role.as_str().to_owned(),
            ticket_id: g.ticket_id.as_ref().map(|t| t.as_str().to_owned()),
            granted_at: g.granted_at,
            expires_at: g.expires_at,
        })
        .collect();
    Ok(Json(RolesResponse {
        roles,
        default_role: customer_state.default_role.as_str().to_owned(),
    }))
}
