//! The audit writer and reader (api-contract.md "Service endpoints"):
//! `POST /api/v1/audit/events` (audit:write) appends one Audit event to the
//! ledger, idempotent per service by `idempotency_key`; `GET
//! /api/v1/audit/events` (audit:read) pages the audit log (external events
//! and Queue's own security events) from the read table.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use queue_domain::audit::{AuditCommand, AuditError, AuditRecord};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CustomerId, IdempotencyKey, TenantId, TicketId,
};
use queue_domain::Audit;
use queue_eventstore::StoreError;
use queue_projections::read::{AuditEventRow, AuditFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::service::{Scope, ServiceCaller};
use crate::http::consistency::{await_projection, ConsistencyHeader};
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::state::AppState;
use queue_eventstore::{Batch, Loaded};
use queue_projections::Projection;

/// Serialised `metadata` over this many bytes answers 413 payload_too_large.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
pub struct AuditEventRequest {
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub ticket_id: Option<String>,
    /// RFC 3339; defaults to the time Queue receives the event.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// A JSON object of at most 16 KiB (integers below 2^53, no floats).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
    pub idempotency_key: String,
    /// The slug of the tenant an entry without `customer_id` belongs to (a
    /// customer's entry is its customer's tenant's; naming both is 400).
    /// A token limited to one tenant may leave it out: the entry is that
    /// tenant's. One limited to several must name it, and only one of
    /// its own (404 otherwise, as for an unknown tenant). Without it an
    /// unlimited token's entry has no tenant: only unlimited tokens read it.
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventCreated {
    pub event_id: Uuid,
    /// `appended` (hash-chained and MACed; sealed into the ledger shortly)
    /// or `sealed` (already in the ledger).
    pub ledger_status: &'static str,
    /// The event's stream hash, 64 hex digits.
    pub hash: String,
    /// Present on a replayed key: the original event as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub event: Option<AuditRecord>,
}

fn parse_uuid(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw.trim()).map_err(|_| ApiError::invalid(format!("{field} must be a UUID")))
}

fn parse_time(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid(format!("{field} must be an RFC 3339 timestamp")))
}

/// The stream hash of an Audit event and whether it is sealed.
async fn ledger_position(
    state: &AppState,
    event_id: AuditEventId,
) -> Result<(String, bool), ApiError> {
    let row = queue_eventstore::lookup::event_hash_and_seal(
        &state.pool,
        "Audit",
        &event_id.to_string(),
        1,
    )
    .await?;
    let (hash, seq) = row.ok_or_else(|| ApiError::internal("recorded audit event not found"))?;
    Ok((hash, seq.is_some()))
}

async fn replay(
    state: &AppState,
    event_id: AuditEventId,
    record: AuditRecord,
) -> Result<Response, ApiError> {
    let (hash, sealed) = ledger_position(state, event_id).await?;
    let body = AuditEventCreated {
        event_id: *event_id.as_uuid(),
        ledger_status: if sealed { "sealed" } else { "appended" },
        hash,
        event: Some(record),
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[utoipa::path(post, path = "/api/v1/audit/events", tag = "service",
    security(("bearer" = [])),
    request_body = AuditEventRequest,
    responses((status = 201, body = AuditEventCreated), (status = 200, description = "the idempotency key was used before: the original event", body = AuditEventCreated),
        (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 413, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn record(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Json(request): Json<AuditEventRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::AuditWrite)?;
    state
        .inner
        .service_limiter
        .check(&format!("audit:{}", caller.name.as_str()))
        .await?;
    let now = state.now();
    let actor = Actor::parse(&request.actor)?;
    let action = AuditAction::parse(&request.action)?;
    let target = AuditTarget::parse(&request.target)?;
    let customer_id = match request.customer_id.as_deref() {
        Some(raw) => Some(CustomerId::from(parse_uuid("customer_id", raw)?)),
        None => None,
    };
    let ticket_id = match request.ticket_id.as_deref() {
        Some(raw) => Some(TicketId::parse(raw)?),
        None => None,
    };
    let occurred_at = match request.occurred_at.as_deref() {
        Some(raw) => parse_time("occurred_at", raw)?,
        None => now,
    };
    let metadata = request
        .metadata
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !metadata.is_object() {
        return Err(ApiError::invalid("metadata must be a JSON object"));
    }
    let size = serde_json::to_vec(&metadata)
        .map_err(|e| ApiError::internal(format!("metadata: {e}")))?
        .len();
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge);
    }
    let idempotency_key = IdempotencyKey::parse(&request.idempotency_key)?;
    let tenant_id = entry_tenant(&state, &caller, customer_id, request.tenant.as_deref()).await?;
    if let Some(customer_id) = customer_id {
        visible_customer(&state, &caller, customer_id).await?;
    }

    let event_id =
        AuditEventId::for_idempotency_key(caller.name.as_str(), idempotency_key.as_str());
    let mut audit: Loaded<Audit> = state.store().load(&event_id.to_string()).await?;
    if let Some(record) = audit.aggregate.record() {
        return replay(&state, event_id, record.clone()).await;
    }
    let events = audit
        .execute(AuditCommand::Record {
            service: caller.name.clone(),
            actor,
            action,
            target,
            customer_id,
            ticket_id,
            occurred_at,
            metadata,
            idempotency_key,
            at: now,
            tenant_id,
        })
        .await
        .map_err(|e| match e {
            AuditError::InvalidMetadata(why) => ApiError::invalid(format!("metadata: {why}")),
            AuditError::AlreadyRecorded => ApiError::Conflict,
            AuditError::CustomerAndTenant => ApiError::invalid(CUSTOMER_AND_TENANT),
        })?;
    let mut batch = Batch::new();
    batch.add(&mut audit, &events)?;
    match state.store().append(batch).await {
        Ok(()) => {}
        // The same key raced in from another request: answer with its event.
        Err(StoreError::OptimisticLock) => {
            let again: Loaded<Audit> = state.store().load(&event_id.to_string()).await?;
            let record = again
                .aggregate
                .record()
                .cloned()
                .ok_or(ApiError::Conflict)?;
            return replay(&state, event_id, record).await;
        }
        Err(e) => return Err(e.into()),
    }
    let (hash, _) = ledger_position(&state, event_id).await?;
    let body = AuditEventCreated {
        event_id: *event_id.as_uuid(),
        ledger_status: "appended",
        hash,
        event: None,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

const CUSTOMER_AND_TENANT: &str =
    "name customer_id or tenant, not both: a customer's entry is its tenant's";

/// The tenant an entry without a customer is recorded in (see
/// [`AuditEventRequest::tenant`]); `None` for a customer's entry, and for
/// an unlimited token's entry that names no tenant.
async fn entry_tenant(
    state: &AppState,
    caller: &ServiceCaller,
    customer_id: Option<CustomerId>,
    tenant: Option<&str>,
) -> Result<Option<TenantId>, ApiError> {
    let named = match tenant {
        Some(raw) => Some(crate::routes::tenants::tenant_by_slug(Some(raw))?),
        None => None,
    };
    if customer_id.is_some() {
        return match named {
            Some(_) => Err(ApiError::invalid(CUSTOMER_AND_TENANT)),
            None => Ok(None),
        };
    }
    let tenant_id = match (named, caller.tenants.only_one()) {
        (Some(tenant_id), _) => tenant_id,
        (None, Some(tenant_id)) => tenant_id,
        (None, None) if caller.tenants.ids().is_none() => return Ok(None),
        (None, None) => {
            return Err(ApiError::invalid(
                "a token limited to several tenants names the entry's tenant (or customer_id)",
            ))
        }
    };
    caller.require_tenant(tenant_id)?;
    crate::routes::tenants::existing_tenant(state, tenant_id).await?;
    Ok(Some(tenant_id))
}

/// To a tenant-limited token, a customer outside its tenants does not
/// exist (404). Unlimited tokens may name any customer id, as before
/// tenants: the audit log records what a service says.
async fn visible_customer(
    state: &AppState,
    caller: &ServiceCaller,
    customer_id: CustomerId,
) -> Result<(), ApiError> {
    if caller.tenants.ids().is_none() {
        return Ok(());
    }
    crate::routes::rbac::existing_customer(state, caller, customer_id).await?;
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub customer_id: Option<String>,
    pub action: Option<String>,
    /// RFC 3339, inclusive (`occurred_at >= since`).
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageResponse {
    /// Oldest first ("newest last"), in ledger order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<AuditEventRow>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit/events", tag = "service",
    security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPageResponse), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: ServiceCaller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(ConsistencyHeader, Json<AuditPageResponse>), ApiError> {
    caller.require(Scope::AuditRead)?;
    let Query(query) =
        query.map_err(|e| ApiError::invalid(crate::http::error::redact_values(&e.body_text())))?;
    let filter = AuditFilter {
        customer_id: match query.customer_id.as_deref() {
            Some(raw) => Some(parse_uuid("customer_id", raw)?),
            None => None,
        },
        action: match query.action.as_deref() {
            Some(raw) => Some(AuditAction::parse(raw)?.as_str().to_owned()),
            None => None,
        },
        since: match query.since.as_deref() {
            Some(raw) => Some(parse_time("since", raw)?),
            None => None,
        },
        until: match query.until.as_deref() {
            Some(raw) => Some(parse_time("until", raw)?),
            None => None,
        },
        limit: match query.limit {
            Some(n) if !(1..=queue_projections::read::MAX_AUDIT_PAGE).contains(&n) => {
                return Err(ApiError::invalid(format!(
                    "limit must be between 1 and {}",
                    queue_projections::read::MAX_AUDIT_PAGE
                )))
            }
            other => other,
        },
        cursor: query.cursor,
        tenant_ids: caller.tenants.ids(),
    };
    if let Some(customer_id) = filter.customer_id {
        visible_customer(&state, &caller, CustomerId::from(customer_id)).await?;
    }
    // Read-your-writes: an audit event this service just wrote is found.
    let freshness = await_projection(&state, Projection::Audit).await?;
    let page = queue_projections::read::audit_events(&state.pool, &filter).await?;
    Ok((
        freshness.header(),
        Json(AuditPageResponse {
            events: page.events,
            next_cursor: page.next_cursor,
        }),
    ))
}
