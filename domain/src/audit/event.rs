use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::types::{
    Actor, AuditAction, AuditTarget, CustomerId, IdempotencyKey, ServiceName, TenantId, TicketId,
};

/// What happened in an audit stream, externally tagged under the event type name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    #[serde(rename = "AuditRecorded")]
    Recorded {
        service: ServiceName,
        actor: Actor,
        action: AuditAction,
        target: AuditTarget,
        customer_id: Option<CustomerId>,
        ticket_id: Option<TicketId>,
        occurred_at: DateTime<Utc>,
        metadata: serde_json::Value,
        idempotency_key: IdempotencyKey,
        at: DateTime<Utc>,
        /// The tenant of an entry that names no customer (a customer's
        /// entry is its customer's tenant's); absent when it has none, and
        /// in every event stored before tenants (bytes unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_id: Option<TenantId>,
    },
}

impl DomainEvent for AuditEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Recorded { .. } => "AuditRecorded".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
