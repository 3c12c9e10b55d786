use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;

use super::*;
use crate::test_support::{actor, t};
use crate::types::{
    AuditAction, AuditEventId, AuditTarget, CustomerId, IdempotencyKey, ServiceName, TenantId,
    TenantSlug, TicketId,
};

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
        tenant_id: None,
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
        tenant_id: None,
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
fn an_entry_without_a_customer_may_name_its_tenant() {
    let acme = TenantId::for_slug(&TenantSlug::parse("acme").unwrap());
    let mut command = record_command(json!({"cohort": 500, "seats": [1, 2]}));
    let AuditCommand::Record { tenant_id, .. } = &mut command;
    *tenant_id = Some(acme);
    let mut expected = recorded();
    let AuditEvent::Recorded { tenant_id, .. } = &mut expected;
    *tenant_id = Some(acme);
    AuditTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_events(vec![expected.clone()]);
    let mut audit = Audit::default();
    audit.apply(expected);
    assert_eq!(audit.record().unwrap().tenant_id, Some(acme));
}

#[test]
fn an_entry_names_its_customer_or_its_tenant_not_both() {
    let mut command = record_command(json!({}));
    let AuditCommand::Record {
        tenant_id,
        customer_id,
        ..
    } = &mut command;
    *tenant_id = Some(TenantId::DEFAULT);
    *customer_id = Some(CustomerId::from(uuid::Uuid::from_u128(7)));
    AuditTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_error(AuditError::CustomerAndTenant);
}

#[test]
fn a_stored_entry_without_tenant_id_reads_as_none_and_is_written_back_the_same() {
    let stored = serde_json::to_value(recorded()).unwrap();
    assert!(
        stored["AuditRecorded"].get("tenant_id").is_none(),
        "{stored}"
    );
    let read: AuditEvent = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(read, recorded());
    assert_eq!(serde_json::to_value(read).unwrap(), stored);
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
