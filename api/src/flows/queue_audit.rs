//! Queue's own audit events (service and actor `queue`): security facts the
//! service records about itself (a refused founders registration, a passkey
//! whose sign counter went back). One place builds them; callers add the
//! events to their batch, or [`record`] appends them alone.

use chrono::{DateTime, Utc};
use queue_domain::audit::{AuditCommand, AuditEvent};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CustomerId, IdempotencyKey, ServiceName,
    TenantId,
};
use queue_domain::Audit;
use queue_eventstore::{Batch, Loaded};
use serde_json::Value;

use crate::http::error::ApiError;
use crate::state::AppState;

/// What Queue records about itself.
pub struct QueueAudit<'a> {
    /// Idempotency key: the same fact recorded twice is one event.
    pub key: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub customer_id: Option<CustomerId>,
    /// The tenant of a fact about no customer (a SAML login refused at a
    /// tenant's ACS), so that tenant's limited tokens read it.
    pub tenant_id: Option<TenantId>,
    pub metadata: Value,
}

/// The audit event, ready to add to a batch.
pub async fn event(
    state: &AppState,
    audit: QueueAudit<'_>,
    now: DateTime<Utc>,
) -> Result<(Loaded<Audit>, Vec<AuditEvent>), ApiError> {
    let key = IdempotencyKey::parse(audit.key)?;
    let service = ServiceName::parse("queue")?;
    let id = AuditEventId::for_idempotency_key(service.as_str(), key.as_str());
    let mut loaded: Loaded<Audit> = state.store().load(&id.to_string()).await?;
    let events = loaded
        .execute(AuditCommand::Record {
            service,
            actor: Actor::parse("queue")?,
            action: AuditAction::parse(audit.action)?,
            target: AuditTarget::parse(audit.target)?,
            customer_id: audit.customer_id,
            ticket_id: None,
            occurred_at: now,
            metadata: audit.metadata,
            idempotency_key: key,
            at: now,
            tenant_id: audit.tenant_id,
        })
        .await
        .map_err(|e| ApiError::internal(format!("audit: {e}")))?;
    Ok((loaded, events))
}

/// Appends the audit event on its own.
pub async fn record(
    state: &AppState,
    audit: QueueAudit<'_>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let (mut loaded, events) = event(state, audit, now).await?;
    let mut batch = Batch::new();
    batch.add(&mut loaded, &events)?;
    state.store().append(batch).await?;
    Ok(())
}
