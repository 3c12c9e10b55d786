use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{AuditCommand, AuditError, AuditEvent};
use crate::types::{
    check_ledger_json, Actor, AuditAction, AuditEventId, AuditTarget, CustomerId, IdempotencyKey,
    ServiceName, TenantId, TicketId,
};

/// One audit event. Empty until recorded; read it through [`Audit::record`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    record: Option<AuditRecord>,
}

/// A recorded audit event (read-only for callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub service: ServiceName,
    pub actor: Actor,
    pub action: AuditAction,
    pub target: AuditTarget,
    pub customer_id: Option<CustomerId>,
    pub ticket_id: Option<TicketId>,
    pub occurred_at: DateTime<Utc>,
    pub metadata: serde_json::Value,
    pub idempotency_key: IdempotencyKey,
    pub recorded_at: DateTime<Utc>,
    /// The tenant of an entry without a customer, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
}

impl AuditRecord {
    /// The id of the stream this record lives in.
    pub fn event_id(&self) -> AuditEventId {
        AuditEventId::for_idempotency_key(self.service.as_str(), self.idempotency_key.as_str())
    }
}

impl Audit {
    /// `None` until recorded.
    pub fn record(&self) -> Option<&AuditRecord> {
        self.record.as_ref()
    }

    pub(crate) fn decide(&self, command: AuditCommand) -> Result<Vec<AuditEvent>, AuditError> {
        if self.record.is_some() {
            return Err(AuditError::AlreadyRecorded);
        }
        let AuditCommand::Record {
            service,
            actor,
            action,
            target,
            customer_id,
            ticket_id,
            occurred_at,
            metadata,
            idempotency_key,
            at,
            tenant_id,
        } = command;
        if customer_id.is_some() && tenant_id.is_some() {
            return Err(AuditError::CustomerAndTenant);
        }
        if !metadata.is_object() {
            return Err(AuditError::InvalidMetadata("must be a JSON object"));
        }
        check_ledger_json(&metadata).map_err(AuditError::InvalidMetadata)?;
        Ok(vec![AuditEvent::Recorded {
            service,
            actor,
            action,
            target,
            customer_id,
            ticket_id,
            occurred_at,
            metadata,
            idempotency_key,
            at,
            tenant_id,
        }])
    }
}

impl Aggregate for Audit {
    const TYPE: &'static str = "Audit";
    type Command = AuditCommand;
    type Event = AuditEvent;
    type Error = AuditError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let AuditEvent::Recorded {
            service,
            actor,
            action,
            target,
            customer_id,
            ticket_id,
            occurred_at,
            metadata,
            idempotency_key,
            at,
            tenant_id,
        } = event;
        // One event per stream: a second one cannot be decided, keep the first.
        if self.record.is_none() {
            self.record = Some(AuditRecord {
                service,
                actor,
                action,
                target,
                customer_id,
                ticket_id,
                occurred_at,
                metadata,
                idempotency_key,
                recorded_at: at,
                tenant_id,
            });
        }
    }
}
