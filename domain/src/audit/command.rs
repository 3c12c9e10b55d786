use chrono::{DateTime, Utc};

use crate::types::{
    Actor, AuditAction, AuditTarget, CustomerId, IdempotencyKey, ServiceName, TenantId, TicketId,
};

/// The stream id must be
/// [`AuditEventId::for_idempotency_key`](crate::types::AuditEventId::for_idempotency_key)`(service, idempotency_key)`,
/// so a retried POST finds the stream it already wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditCommand {
    Record {
        /// The authenticated calling service.
        service: ServiceName,
        actor: Actor,
        action: AuditAction,
        target: AuditTarget,
        customer_id: Option<CustomerId>,
        ticket_id: Option<TicketId>,
        /// When it happened, as the calling service says (defaults to `at`).
        occurred_at: DateTime<Utc>,
        /// A JSON object (`{}` when none was sent) without floats or
        /// integers of 2^53 or more.
        metadata: serde_json::Value,
        idempotency_key: IdempotencyKey,
        /// When Queue accepted it.
        at: DateTime<Utc>,
        /// The tenant of an entry that names no customer; with a
        /// `customer_id` the entry is that customer's tenant's, and naming
        /// both is refused.
        tenant_id: Option<TenantId>,
    },
}
