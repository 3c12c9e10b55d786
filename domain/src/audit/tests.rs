use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;

use super::*;
use crate::test_support::{actor, t};
use crate::types::{AuditAction, AuditEventId, AuditTarget, IdempotencyKey, ServiceName, TicketId};

type AuditTest = TestFramework<Audit>;

fn record_command(metadata: serde_json::Value) -> AuditCommand {
    AuditCommand::Record {
        service: ServiceName::parse("founders").unwrap(),
        actor: actor("gatekeeper"),
        action: AuditAction::parse("founders.gate.rejected").unwrap(),
        target: AuditTarget::parse("registration").unwrap(),
        customer_id: None,
        ticket_id: Some(TicketId::parse("OPS-1").unwrap()),
        occurred_at: t(-5),
        metadata,
        idempotency_key: IdempotencyKey::parse("k-1").unwrap(),
        at: t(0),
    }
}

fn recorded() -> AuditEvent {
    AuditEvent::Recorded {
        service: ServiceName::parse("founders").unwrap(),
        actor: actor("gatekeeper"),
        action: AuditAction::parse("founders.gate.rejected").unwrap(),
        target: AuditTarget::parse("registration").unwrap(),
        customer_id: None,
        ticket_id: Some(TicketId::parse("OPS-1").unwrap()),
        occurred_at: t(-5),
        metadata: json!({"cohort": 500, "seats": [1, 2]}),
        idempotency_key: IdempotencyKey::parse("k-1").unwrap(),
        at: t(0),
    }
}

#[test]
fn record_an_audit_event() {
    AuditTest::with(())
        .given_no_previous_events()
        .when(record_command(json!({"cohort": 500, "seats": [1, 2]})))
        .then_expect_events(vec![recorded()]);

    let mut audit = Audit::default();
    audit.apply(recorded());
    let record = audit.record().unwrap();
    assert_eq!(record.recorded_at, t(0));
    assert_eq!(record.occurred_at, t(-5));
    assert_eq!(
        record.event_id(),
        AuditEventId::for_idempotency_key("founders", "k-1")
    );
}

#[test]
fn a_second_record_on_the_same_stream_is_refused() {
    AuditTest::with(())
        .given(vec![recorded()])
        .when(record_command(json!({})))
        .then_expect_error(AuditError::AlreadyRecorded);
}

#[test]
fn metadata_must_be_a_ledger_safe_object() {
    for (metadata, error) in [
        (
            json!([1]),
            AuditError::InvalidMetadata("must be a JSON object"),
        ),
        (
            json!(null),
            AuditError::InvalidMetadata("must be a JSON object"),
        ),
        (
            json!({"ratio": 0.5}),
            AuditError::InvalidMetadata("numbers must be integers, not floats"),
        ),
        (
            json!({"id": 9_007_199_254_740_992_u64}),
            AuditError::InvalidMetadata("integers must be below 2^53 in absolute value"),
        ),
    ] {
        AuditTest::with(())
            .given_no_previous_events()
            .when(record_command(metadata))
            .then_expect_error(error);
    }
}
