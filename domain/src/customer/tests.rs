use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;

use super::*;
use crate::test_support::{actor, h, reason, t};
use crate::types::{CustomerId, DisplayName, Email, GrantId, LegacyId, Role, SecretHash, TicketId};

type CustomerTest = TestFramework<Customer>;

fn customer_id() -> CustomerId {
    "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01".parse().unwrap()
}

fn grant_id(n: u128) -> GrantId {
    GrantId::from_uuid(uuid::Uuid::from_u128(n))
}

fn email() -> Email {
    Email::parse("Ada@Example.com").unwrap()
}

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

fn registered() -> CustomerEvent {
    CustomerEvent::Registered {
        tenant_id: crate::types::TenantId::DEFAULT,
        customer_id: customer_id(),
        email: email(),
        display_name: DisplayName::parse("Ada").unwrap(),
        default_role: Role::default_role(),
        at: t(0),
    }
}

fn suspended() -> CustomerEvent {
    CustomerEvent::Suspended {
        reason: reason("fraud review"),
        actor: actor("ops"),
        at: t(10),
    }
}

fn verification_requested(token: &str, at: i64) -> CustomerEvent {
    CustomerEvent::EmailVerificationRequested {
        token_hash: h(token),
        expires_at: t(at + EMAIL_VERIFICATION_TTL_SECS),
        at: t(at),
    }
}

fn granted(id: u128, name: &str, expires_at: Option<i64>) -> CustomerEvent {
    CustomerEvent::RoleGranted {
        grant_id: grant_id(id),
        role: role(name),
        ticket_id: None,
        reason: reason("on call"),
        actor: actor("ops"),
        expires_at: expires_at.map(t),
        at: t(1),
    }
}

fn code_hashes(prefix: &str) -> Vec<SecretHash> {
    (0..BACKUP_CODE_COUNT)
        .map(|i| h(&format!("{prefix}-{i}")))
        .collect()
}

fn codes_generated(prefix: &str, generation: u32) -> CustomerEvent {
    CustomerEvent::BackupCodesGenerated {
        generation,
        code_hashes: code_hashes(prefix),
        key_id: None,
        at: t(2),
    }
}

fn replay(events: Vec<CustomerEvent>) -> Customer {
    let mut customer = Customer::default();
    for event in events {
        customer.apply(event);
    }
    customer
}

// --- registration and import ---

#[test]
fn register_creates_a_customer_with_the_default_role() {
    CustomerTest::with(())
        .given_no_previous_events()
        .when(CustomerCommand::Register {
            tenant_id: crate::types::TenantId::DEFAULT,
            customer_id: customer_id(),
            email: email(),
            display_name: DisplayName::parse("Ada").unwrap(),
            at: t(0),
        })
        .then_expect_events(vec![registered()]);

    let customer = replay(vec![registered()]);
    let state = customer.state().unwrap();
    assert_eq!(state.email.as_str(), "ada@example.com");
    assert_eq!(state.status, CustomerStatus::Active);
    assert!(!state.email_verified());
    assert_eq!(customer.active_roles(t(0)), vec![Role::default_role()]);
}

#[test]
fn register_twice_is_refused() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::Register {
            tenant_id: crate::types::TenantId::DEFAULT,
            customer_id: customer_id(),
            email: email(),
            display_name: DisplayName::parse("Ada").unwrap(),
            at: t(5),
        })
        .then_expect_error(CustomerError::AlreadyRegistered);
}

fn import_command(suspended: bool) -> CustomerCommand {
    CustomerCommand::Import {
        customer_id: customer_id(),
        legacy_id: LegacyId::try_from(42).unwrap(),
        email: email(),
        display_name: None,
        email_verified_at: Some(t(-100)),
        suspended,
        created_at: t(-1000),
    }
}

fn imported(suspended: bool) -> CustomerEvent {
    CustomerEvent::Imported {
        tenant_id: crate::types::TenantId::DEFAULT,
        customer_id: customer_id(),
        legacy_id: LegacyId::try_from(42).unwrap(),
        email: email(),
        display_name: None,
        default_role: Role::default_role(),
        email_verified_at: Some(t(-100)),
        suspended,
        created_at: t(-1000),
    }
}

#[test]
fn import_records_the_legacy_customer() {
    CustomerTest::with(())
        .given_no_previous_events()
        .when(import_command(true))
        .then_expect_events(vec![imported(true)]);

    let customer = replay(vec![imported(true)]);
    let state = customer.state().unwrap();
    assert_eq!(state.legacy_id, Some(LegacyId::try_from(42).unwrap()));
    assert_eq!(state.email_verified_at, Some(t(-100)));
    assert_eq!(state.status, CustomerStatus::Suspended);
    assert_eq!(state.registered_at, t(-1000));
    assert_eq!(state.display_name, None);
}

#[test]
fn import_of_an_existing_customer_is_refused() {
    CustomerTest::with(())
        .given(vec![imported(false)])
        .when(import_command(false))
        .then_expect_error(CustomerError::AlreadyRegistered);
    CustomerTest::with(())
        .given(vec![registered()])
        .when(import_command(false))
        .then_expect_error(CustomerError::AlreadyRegistered);
}

#[test]
fn every_other_command_on_an_unknown_customer_is_not_found() {
    let commands = vec![
        CustomerCommand::RequestEmailVerification {
            token_hash: h("tok"),
            expires_at: t(100),
            at: t(1),
        },
        CustomerCommand::VerifyEmail {
            token_hash: h("tok"),
            at: t(1),
        },
        CustomerCommand::GrantRole {
            grant_id: grant_id(1),
            role: role("admin"),
            ticket_id: None,
            reason: reason("r"),
            actor: actor("a"),
            expires_at: None,
            at: t(1),
        },
        CustomerCommand::RevokeRole {
            grant_id: grant_id(1),
            reason: reason("r"),
            actor: actor("a"),
            at: t(1),
        },
        CustomerCommand::GenerateBackupCodes {
            code_hashes: code_hashes("c"),
            key_id: None,
            at: t(1),
        },
        CustomerCommand::RedeemBackupCode {
            code_hash: h("c-0"),
            at: t(1),
        },
        CustomerCommand::Suspend {
            reason: reason("r"),
            actor: actor("a"),
            at: t(1),
        },
        CustomerCommand::Reinstate {
            reason: reason("r"),
            actor: actor("a"),
            at: t(1),
        },
    ];
    for command in commands {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(CustomerError::NotFound);
    }
}

// --- email verification ---

#[test]
fn request_email_verification_records_the_token_hash() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::RequestEmailVerification {
            token_hash: h("tok-1"),
            expires_at: t(3 + EMAIL_VERIFICATION_TTL_SECS),
            at: t(3),
        })
        .then_expect_events(vec![verification_requested("tok-1", 3)]);
}

#[test]
fn request_email_verification_when_verified_is_refused() {
    CustomerTest::with(())
        .given(vec![
            registered(),
            verification_requested("tok-1", 3),
            CustomerEvent::EmailVerified { at: t(4) },
        ])
        .when(CustomerCommand::RequestEmailVerification {
            token_hash: h("tok-2"),
            expires_at: t(9999),
            at: t(5),
        })
        .then_expect_error(CustomerError::AlreadyVerified);
}

#[test]
fn request_email_verification_with_a_past_expiry_is_refused() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::RequestEmailVerification {
            token_hash: h("tok-1"),
            expires_at: t(3),
            at: t(3),
        })
        .then_expect_error(CustomerError::ExpiryInPast);
}

#[test]
fn verify_email_with_the_pending_token() {
    CustomerTest::with(())
        .given(vec![registered(), verification_requested("tok-1", 3)])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(60),
        })
        .then_expect_events(vec![CustomerEvent::EmailVerified { at: t(60) }]);

    let customer = replay(vec![
        registered(),
        verification_requested("tok-1", 3),
        CustomerEvent::EmailVerified { at: t(60) },
    ]);
    let state = customer.state().unwrap();
    assert_eq!(state.email_verified_at, Some(t(60)));
    assert_eq!(state.pending_email_verification, None);
}

#[test]
fn verify_email_with_an_unknown_token_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), verification_requested("tok-1", 3)])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("other"),
            at: t(60),
        })
        .then_expect_error(CustomerError::InvalidToken);
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(60),
        })
        .then_expect_error(CustomerError::InvalidToken);
}

#[test]
fn verify_email_twice_with_the_same_token_is_refused() {
    CustomerTest::with(())
        .given(vec![
            registered(),
            verification_requested("tok-1", 3),
            CustomerEvent::EmailVerified { at: t(60) },
        ])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(61),
        })
        .then_expect_error(CustomerError::InvalidToken);
}

#[test]
fn verify_email_with_a_superseded_token_is_refused() {
    CustomerTest::with(())
        .given(vec![
            registered(),
            verification_requested("tok-1", 3),
            verification_requested("tok-2", 4),
        ])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(60),
        })
        .then_expect_error(CustomerError::InvalidToken);
}

#[test]
fn verify_email_at_or_after_expiry_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), verification_requested("tok-1", 3)])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(3 + EMAIL_VERIFICATION_TTL_SECS),
        })
        .then_expect_error(CustomerError::TokenExpired);
    CustomerTest::with(())
        .given(vec![registered(), verification_requested("tok-1", 3)])
        .when(CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(2 + EMAIL_VERIFICATION_TTL_SECS),
        })
        .then_expect_events(vec![CustomerEvent::EmailVerified {
            at: t(2 + EMAIL_VERIFICATION_TTL_SECS),
        }]);
}

// --- roles ---

#[test]
fn grant_role_with_ticket_and_expiry() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::GrantRole {
            grant_id: grant_id(1),
            role: role("support"),
            ticket_id: Some(TicketId::parse("SUP-9").unwrap()),
            reason: reason("escalation"),
            actor: actor("lead"),
            expires_at: Some(t(3600)),
            at: t(5),
        })
        .then_expect_events(vec![CustomerEvent::RoleGranted {
            grant_id: grant_id(1),
            role: role("support"),
            ticket_id: Some(TicketId::parse("SUP-9").unwrap()),
            reason: reason("escalation"),
            actor: actor("lead"),
            expires_at: Some(t(3600)),
            at: t(5),
        }]);
}

#[test]
fn grant_role_is_allowed_on_a_suspended_customer() {
    CustomerTest::with(())
        .given(vec![registered(), suspended()])
        .when(CustomerCommand::GrantRole {
            grant_id: grant_id(1),
            role: role("admin"),
            ticket_id: None,
            reason: reason("on call"),
            actor: actor("ops"),
            expires_at: None,
            at: t(1),
        })
        .then_expect_events(vec![granted(1, "admin", None)]);
}

#[test]
fn grant_role_with_a_used_grant_id_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), granted(1, "admin", None)])
        .when(CustomerCommand::GrantRole {
            grant_id: grant_id(1),
            role: role("support"),
            ticket_id: None,
            reason: reason("again"),
            actor: actor("ops"),
            expires_at: None,
            at: t(2),
        })
        .then_expect_error(CustomerError::DuplicateGrant(grant_id(1)));
}

#[test]
fn grant_role_expiring_in_the_past_is_refused() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::GrantRole {
            grant_id: grant_id(1),
            role: role("admin"),
            ticket_id: None,
            reason: reason("late"),
            actor: actor("ops"),
            expires_at: Some(t(10)),
            at: t(10),
        })
        .then_expect_error(CustomerError::ExpiryInPast);
}

#[test]
fn revoke_role() {
    CustomerTest::with(())
        .given(vec![registered(), granted(1, "admin", None), suspended()])
        .when(CustomerCommand::RevokeRole {
            grant_id: grant_id(1),
            reason: reason("done"),
            actor: actor("ops"),
            at: t(20),
        })
        .then_expect_events(vec![CustomerEvent::RoleRevoked {
            grant_id: grant_id(1),
            reason: reason("done"),
            actor: actor("ops"),
            at: t(20),
        }]);
}

#[test]
fn revoke_of_an_unknown_grant_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), granted(1, "admin", None)])
        .when(CustomerCommand::RevokeRole {
            grant_id: grant_id(2),
            reason: reason("done"),
            actor: actor("ops"),
            at: t(20),
        })
        .then_expect_error(CustomerError::UnknownGrant(grant_id(2)));
}

#[test]
fn revoke_of_a_revoked_grant_is_refused() {
    CustomerTest::with(())
        .given(vec![
            registered(),
            granted(1, "admin", None),
            CustomerEvent::RoleRevoked {
                grant_id: grant_id(1),
                reason: reason("done"),
                actor: actor("ops"),
                at: t(20),
            },
        ])
        .when(CustomerCommand::RevokeRole {
            grant_id: grant_id(1),
            reason: reason("again"),
            actor: actor("ops"),
            at: t(21),
        })
        .then_expect_error(CustomerError::GrantAlreadyRevoked(grant_id(1)));
}

#[test]
fn active_roles_are_default_plus_unrevoked_unexpired_grants() {
    let customer = replay(vec![
        registered(),
        granted(1, "admin", None),
        granted(2, "support", Some(100)),
        granted(3, "auditor", None),
        granted(4, "admin", Some(50)),
        CustomerEvent::RoleRevoked {
            grant_id: grant_id(3),
            reason: reason("done"),
            actor: actor("ops"),
            at: t(20),
        },
    ]);
    assert_eq!(
        customer.active_roles(t(99)),
        vec![role("admin"), Role::default_role(), role("support")]
    );
    assert_eq!(
        customer.active_roles(t(100)),
        vec![role("admin"), Role::default_role()]
    );
    let state = customer.state().unwrap();
    let active: Vec<_> = state
        .active_grants(t(49))
        .iter()
        .map(|g| g.grant_id)
        .collect();
    assert_eq!(active, vec![grant_id(1), grant_id(2), grant_id(4)]);
    assert!(state.grant(grant_id(3)).unwrap().revocation.is_some());
}

// --- backup codes ---

#[test]
fn generate_backup_codes_starts_at_generation_one() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::GenerateBackupCodes {
            code_hashes: code_hashes("a"),
            key_id: None,
            at: t(2),
        })
        .then_expect_events(vec![codes_generated("a", 1)]);
    assert!(replay(vec![registered(), codes_generated("a", 1)]).has_unused_backup_codes());
    assert!(!replay(vec![registered()]).has_unused_backup_codes());
}

#[test]
fn generating_again_starts_a_new_generation() {
    CustomerTest::with(())
        .given(vec![registered(), codes_generated("a", 1)])
        .when(CustomerCommand::GenerateBackupCodes {
            code_hashes: code_hashes("b"),
            key_id: None,
            at: t(2),
        })
        .then_expect_events(vec![codes_generated("b", 2)]);
}

#[test]
fn generate_backup_codes_needs_ten_distinct_hashes() {
    let mut nine = code_hashes("a");
    nine.pop();
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::GenerateBackupCodes {
            code_hashes: nine,
            key_id: None,
            at: t(2),
        })
        .then_expect_error(CustomerError::InvalidBackupCodeSet(
            "exactly 10 codes are required",
        ));
    let mut repeated = code_hashes("a");
    repeated[9] = repeated[0];
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::GenerateBackupCodes {
            code_hashes: repeated,
            key_id: None,
            at: t(2),
        })
        .then_expect_error(CustomerError::InvalidBackupCodeSet(
            "codes must be distinct",
        ));
}

#[test]
fn redeem_a_backup_code() {
    CustomerTest::with(())
        .given(vec![registered(), codes_generated("a", 1)])
        .when(CustomerCommand::RedeemBackupCode {
            code_hash: h("a-3"),
            at: t(30),
        })
        .then_expect_events(vec![CustomerEvent::BackupCodeRedeemed {
            generation: 1,
            index: 3,
            at: t(30),
        }]);
}

#[test]
fn redeem_of_a_used_code_is_refused() {
    CustomerTest::with(())
        .given(vec![
            registered(),
            codes_generated("a", 1),
            CustomerEvent::BackupCodeRedeemed {
                generation: 1,
                index: 3,
                at: t(30),
            },
        ])
        .when(CustomerCommand::RedeemBackupCode {
            code_hash: h("a-3"),
            at: t(31),
        })
        .then_expect_error(CustomerError::InvalidCode);
}

#[test]
fn redeem_of_an_unknown_or_voided_code_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), codes_generated("a", 1)])
        .when(CustomerCommand::RedeemBackupCode {
            code_hash: h("nope"),
            at: t(30),
        })
        .then_expect_error(CustomerError::InvalidCode);
    CustomerTest::with(())
        .given(vec![
            registered(),
            codes_generated("a", 1),
            codes_generated("b", 2),
        ])
        .when(CustomerCommand::RedeemBackupCode {
            code_hash: h("a-0"),
            at: t(30),
        })
        .then_expect_error(CustomerError::InvalidCode);
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::RedeemBackupCode {
            code_hash: h("a-0"),
            at: t(30),
        })
        .then_expect_error(CustomerError::InvalidCode);
}

#[test]
fn unused_backup_codes_count_down() {
    let mut events = vec![registered(), codes_generated("a", 1)];
    for index in 0..10 {
        events.push(CustomerEvent::BackupCodeRedeemed {
            generation: 1,
            index,
            at: t(30),
        });
    }
    let customer = replay(events.clone());
    assert_eq!(customer.state().unwrap().unused_backup_codes(), 0);
    assert!(!customer.has_unused_backup_codes());
    events.truncate(5);
    assert_eq!(replay(events).state().unwrap().unused_backup_codes(), 7);
}

// --- suspension ---

#[test]
fn suspend_and_reinstate() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::Suspend {
            reason: reason("fraud review"),
            actor: actor("ops"),
            at: t(10),
        })
        .then_expect_events(vec![suspended()]);
    CustomerTest::with(())
        .given(vec![registered(), suspended()])
        .when(CustomerCommand::Reinstate {
            reason: reason("cleared"),
            actor: actor("ops"),
            at: t(11),
        })
        .then_expect_events(vec![CustomerEvent::Reinstated {
            reason: reason("cleared"),
            actor: actor("ops"),
            at: t(11),
        }]);
    let state = replay(vec![registered(), suspended()])
        .state()
        .cloned()
        .unwrap();
    assert!(state.is_suspended());
    assert_eq!(
        state.last_status_change.unwrap().reason,
        reason("fraud review")
    );
}

#[test]
fn suspend_twice_is_refused() {
    CustomerTest::with(())
        .given(vec![registered(), suspended()])
        .when(CustomerCommand::Suspend {
            reason: reason("again"),
            actor: actor("ops"),
            at: t(12),
        })
        .then_expect_error(CustomerError::AlreadySuspended);
    CustomerTest::with(())
        .given(vec![imported(true)])
        .when(CustomerCommand::Suspend {
            reason: reason("again"),
            actor: actor("ops"),
            at: t(12),
        })
        .then_expect_error(CustomerError::AlreadySuspended);
}

#[test]
fn reinstate_of_an_active_customer_is_refused() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when(CustomerCommand::Reinstate {
            reason: reason("why"),
            actor: actor("ops"),
            at: t(12),
        })
        .then_expect_error(CustomerError::NotSuspended);
}

#[test]
fn self_service_commands_on_a_suspended_customer_are_refused() {
    let history = vec![
        registered(),
        verification_requested("tok-1", 3),
        codes_generated("a", 1),
        suspended(),
    ];
    let commands = vec![
        CustomerCommand::RequestEmailVerification {
            token_hash: h("tok-2"),
            expires_at: t(9999),
            at: t(20),
        },
        CustomerCommand::VerifyEmail {
            token_hash: h("tok-1"),
            at: t(20),
        },
        CustomerCommand::GenerateBackupCodes {
            code_hashes: code_hashes("b"),
            key_id: None,
            at: t(20),
        },
        CustomerCommand::RedeemBackupCode {
            code_hash: h("a-0"),
            at: t(20),
        },
    ];
    for command in commands {
        CustomerTest::with(())
            .given(history.clone())
            .when(command)
            .then_expect_error(CustomerError::Suspended);
    }
}

#[tokio::test]
async fn handle_works_inside_a_tokio_runtime() {
    CustomerTest::with(())
        .given(vec![registered()])
        .when_async(CustomerCommand::Suspend {
            reason: reason("fraud review"),
            actor: actor("ops"),
            at: t(10),
        })
        .await
        .then_expect_events(vec![suspended()]);
}

// --- tenants (issue 22, ADR 0217/0218) ---

#[test]
fn a_default_tenant_registration_is_stored_without_tenant_id() {
    let json = serde_json::to_value(registered()).unwrap();
    assert!(json["CustomerRegistered"].get("tenant_id").is_none());
    let back: CustomerEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, registered());
}

#[test]
fn a_stored_registration_without_tenant_id_reads_as_the_default_tenant() {
    let stored = serde_json::json!({"CustomerRegistered": {
        "customer_id": customer_id(), "email": "ada@example.com", "display_name": "Ada",
        "default_role": "antlers-user", "at": t(0)
    }});
    let event: CustomerEvent = serde_json::from_value(stored).unwrap();
    let CustomerEvent::Registered { tenant_id, .. } = event else {
        panic!("not a registration: {event:?}");
    };
    assert_eq!(tenant_id, crate::types::TenantId::DEFAULT);
}

#[test]
fn another_tenants_registration_carries_its_tenant_into_the_state() {
    let acme = crate::types::TenantId::for_slug(&"acme".parse().unwrap());
    let mut customer = Customer::default();
    let events = customer
        .decide(CustomerCommand::Register {
            customer_id: customer_id(),
            tenant_id: acme,
            email: email(),
            display_name: DisplayName::parse("Ada").unwrap(),
            at: t(0),
        })
        .unwrap();
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(
        json["CustomerRegistered"]["tenant_id"],
        serde_json::json!(acme.to_string())
    );
    for event in events {
        customer.apply(event);
    }
    assert_eq!(customer.state().unwrap().tenant_id, acme);
}

fn provision_command(tenant_id: crate::types::TenantId) -> CustomerCommand {
    CustomerCommand::Provision {
        customer_id: customer_id(),
        tenant_id,
        email: email(),
        display_name: DisplayName::parse("Ann Example").unwrap(),
        source: ProvisioningSource::Saml,
        actor: crate::types::Actor::parse("saml:acme").unwrap(),
        at: t(0),
    }
}

#[test]
fn provision_creates_the_customer_in_its_tenant_with_the_provider_as_actor() {
    let acme = crate::types::TenantId::for_slug(&"acme".parse().unwrap());
    let provisioned = CustomerEvent::Provisioned {
        customer_id: customer_id(),
        email: email(),
        display_name: DisplayName::parse("Ann Example").unwrap(),
        default_role: Role::default_role(),
        source: ProvisioningSource::Saml,
        actor: crate::types::Actor::parse("saml:acme").unwrap(),
        at: t(0),
        tenant_id: acme,
    };
    CustomerTest::with(())
        .given_no_previous_events()
        .when(provision_command(acme))
        .then_expect_events(vec![provisioned.clone()]);
    // The stored form: the type name, the source and the provider, the tenant.
    let json = serde_json::to_value(&provisioned).unwrap();
    let body = &json["CustomerProvisioned"];
    assert_eq!(body["source"], "saml");
    assert_eq!(body["actor"], "saml:acme");
    assert_eq!(body["tenant_id"], serde_json::json!(acme.to_string()));
    assert_eq!(
        serde_json::from_value::<CustomerEvent>(json).unwrap(),
        provisioned
    );

    let customer = replay(vec![provisioned]);
    let state = customer.state().unwrap();
    assert_eq!(state.tenant_id, acme);
    assert_eq!(state.status, CustomerStatus::Active);
    assert!(!state.email_verified());
    assert_eq!(customer.active_roles(t(0)), vec![Role::default_role()]);
}

#[test]
fn provisioning_an_existing_customer_is_refused() {
    let acme = crate::types::TenantId::for_slug(&"acme".parse().unwrap());
    CustomerTest::with(())
        .given(vec![registered()])
        .when(provision_command(acme))
        .then_expect_error(CustomerError::AlreadyRegistered);
}
