use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;

use super::*;
use crate::test_support::{reason, t};
use crate::types::{CredentialId, CredentialName, CustomerId, LegacyId, RawCredentialId};

type CredentialTest = TestFramework<Credential>;

fn customer_id() -> CustomerId {
    "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01".parse().unwrap()
}

fn raw_id() -> RawCredentialId {
    RawCredentialId::from_bytes(vec![1, 2, 3, 4]).unwrap()
}

/// Shaped like a serialised webauthn-rs `Passkey`.
fn passkey() -> serde_json::Value {
    json!({"cred": {
        "cred_id": "AQIDBA",
        "cred": {"type_": "ES256", "key": {"EC_EC2": {"curve": "SECP256R1", "x": "eA", "y": "eQ"}}},
        "counter": 0,
        "transports": null,
        "user_verified": true,
        "backup_eligible": true,
        "backup_state": true,
        "registration_policy": "required",
        "extensions": {},
        "attestation": {"data": "None", "metadata": "None"},
        "attestation_format": "none"
    }})
}

fn name(text: &str) -> CredentialName {
    CredentialName::parse(text).unwrap()
}

fn aaguid() -> uuid::Uuid {
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4".parse().unwrap()
}

fn register_command(sign_count: u32) -> CredentialCommand {
    CredentialCommand::Register {
        customer_id: customer_id(),
        raw_credential_id: raw_id(),
        passkey: passkey(),
        name: Some(name("Phone")),
        aaguid: Some(aaguid()),
        backup_eligible: true,
        backup_state: true,
        sign_count,
        transports: vec!["internal".into(), "hybrid".into()],
        at: t(0),
    }
}

fn registered(sign_count: u32) -> CredentialEvent {
    CredentialEvent::Registered {
        customer_id: customer_id(),
        raw_credential_id: raw_id(),
        passkey: passkey(),
        name: Some(name("Phone")),
        aaguid: Some(aaguid()),
        backup_eligible: true,
        backup_state: true,
        sign_count,
        transports: vec!["internal".into(), "hybrid".into()],
        at: t(0),
    }
}

fn import_command() -> CredentialCommand {
    CredentialCommand::Import {
        legacy_id: LegacyId::try_from(7).unwrap(),
        customer_id: customer_id(),
        raw_credential_id: raw_id(),
        passkey: passkey(),
        name: None,
        aaguid: None,
        backup_eligible: false,
        backup_state: false,
        sign_count: 12,
        transports: vec!["usb".into()],
        created_at: t(-500),
        last_used_at: Some(t(-20)),
    }
}

fn imported() -> CredentialEvent {
    CredentialEvent::Imported {
        legacy_id: LegacyId::try_from(7).unwrap(),
        customer_id: customer_id(),
        raw_credential_id: raw_id(),
        passkey: passkey(),
        name: None,
        aaguid: None,
        backup_eligible: false,
        backup_state: false,
        sign_count: 12,
        transports: vec!["usb".into()],
        created_at: t(-500),
        last_used_at: Some(t(-20)),
    }
}

fn revoked() -> CredentialEvent {
    CredentialEvent::Revoked {
        reason: reason("lost phone"),
        at: t(50),
    }
}

fn replay(events: Vec<CredentialEvent>) -> Credential {
    let mut credential = Credential::default();
    for event in events {
        credential.apply(event);
    }
    credential
}

#[test]
fn register_a_passkey() {
    CredentialTest::with(())
        .given_no_previous_events()
        .when(register_command(0))
        .then_expect_events(vec![registered(0)]);

    let credential = replay(vec![registered(0)]);
    let state = credential.state().unwrap();
    assert_eq!(state.customer_id, customer_id());
    assert_eq!(
        state.credential_id(),
        CredentialId::for_raw_id(&[1, 2, 3, 4])
    );
    assert_eq!(state.created_at, t(0));
    assert_eq!(state.last_used_at, None);
    assert!(credential.is_usable());
}

#[test]
fn register_twice_is_refused() {
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(register_command(0))
        .then_expect_error(CredentialError::AlreadyRegistered);
    CredentialTest::with(())
        .given(vec![imported()])
        .when(register_command(0))
        .then_expect_error(CredentialError::AlreadyRegistered);
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(import_command())
        .then_expect_error(CredentialError::AlreadyRegistered);
}

#[test]
fn register_refuses_passkey_json_the_ledger_cannot_hold() {
    let mut with_float = register_command(0);
    if let CredentialCommand::Register { passkey, .. } = &mut with_float {
        *passkey = json!({"cred": {"counter": 1.5}});
    }
    CredentialTest::with(())
        .given_no_previous_events()
        .when(with_float)
        .then_expect_error(CredentialError::InvalidPasskey(
            "numbers must be integers, not floats",
        ));
    let mut not_object = register_command(0);
    if let CredentialCommand::Register { passkey, .. } = &mut not_object {
        *passkey = json!("AQID");
    }
    CredentialTest::with(())
        .given_no_previous_events()
        .when(not_object)
        .then_expect_error(CredentialError::InvalidPasskey("must be a JSON object"));
}

#[test]
fn register_refuses_malformed_transports() {
    let mut command = register_command(0);
    if let CredentialCommand::Register { transports, .. } = &mut command {
        transports.push("Bluetooth LE".into());
    }
    CredentialTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_error(CredentialError::InvalidTransport("Bluetooth LE".into()));
    let mut command = import_command();
    if let CredentialCommand::Import { transports, .. } = &mut command {
        transports.push(String::new());
    }
    CredentialTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_error(CredentialError::InvalidTransport(String::new()));
}

#[test]
fn import_a_legacy_passkey() {
    CredentialTest::with(())
        .given_no_previous_events()
        .when(import_command())
        .then_expect_events(vec![imported()]);
    let state = replay(vec![imported()]).state().cloned().unwrap();
    assert_eq!(state.legacy_id, Some(LegacyId::try_from(7).unwrap()));
    assert_eq!(state.sign_count, 12);
    assert_eq!(state.last_used_at, Some(t(-20)));
}

#[test]
fn record_use_with_a_higher_counter() {
    CredentialTest::with(())
        .given(vec![registered(5)])
        .when(CredentialCommand::RecordUse {
            sign_count: 6,
            backup_state: false,
            at: t(10),
        })
        .then_expect_events(vec![CredentialEvent::Used {
            sign_count: 6,
            backup_state: false,
            at: t(10),
        }]);
    let state = replay(vec![
        registered(5),
        CredentialEvent::Used {
            sign_count: 6,
            backup_state: false,
            at: t(10),
        },
    ])
    .state()
    .cloned()
    .unwrap();
    assert_eq!(state.sign_count, 6);
    assert!(!state.backup_state);
    assert_eq!(state.last_used_at, Some(t(10)));
}

#[test]
fn record_use_without_counters_is_allowed() {
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(CredentialCommand::RecordUse {
            sign_count: 0,
            backup_state: true,
            at: t(10),
        })
        .then_expect_events(vec![CredentialEvent::Used {
            sign_count: 0,
            backup_state: true,
            at: t(10),
        }]);
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(CredentialCommand::RecordUse {
            sign_count: 1,
            backup_state: true,
            at: t(10),
        })
        .then_expect_events(vec![CredentialEvent::Used {
            sign_count: 1,
            backup_state: true,
            at: t(10),
        }]);
}

#[test]
fn record_use_with_a_counter_regression_is_refused() {
    for (stored, presented) in [(5, 5), (5, 4), (5, 0)] {
        CredentialTest::with(())
            .given(vec![registered(stored)])
            .when(CredentialCommand::RecordUse {
                sign_count: presented,
                backup_state: true,
                at: t(10),
            })
            .then_expect_error(CredentialError::CounterRegression { stored, presented });
    }
}

#[test]
fn rename_a_passkey() {
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(CredentialCommand::Rename {
            name: name("Work laptop"),
            at: t(3),
        })
        .then_expect_events(vec![CredentialEvent::Renamed {
            name: name("Work laptop"),
            at: t(3),
        }]);
}

#[test]
fn revoke_a_passkey() {
    CredentialTest::with(())
        .given(vec![registered(0)])
        .when(CredentialCommand::Revoke {
            reason: reason("lost phone"),
            at: t(50),
        })
        .then_expect_events(vec![revoked()]);
    let credential = replay(vec![registered(0), revoked()]);
    assert!(credential.state().unwrap().is_revoked());
    assert!(!credential.is_usable());
}

#[test]
fn every_command_on_a_revoked_passkey_is_refused() {
    let commands = vec![
        CredentialCommand::RecordUse {
            sign_count: 9,
            backup_state: true,
            at: t(60),
        },
        CredentialCommand::Rename {
            name: name("x"),
            at: t(60),
        },
        CredentialCommand::Revoke {
            reason: reason("again"),
            at: t(60),
        },
    ];
    for command in commands {
        CredentialTest::with(())
            .given(vec![registered(0), revoked()])
            .when(command)
            .then_expect_error(CredentialError::Revoked);
    }
}

#[test]
fn every_command_on_an_unknown_passkey_is_not_found() {
    let commands = vec![
        CredentialCommand::RecordUse {
            sign_count: 9,
            backup_state: true,
            at: t(60),
        },
        CredentialCommand::Rename {
            name: name("x"),
            at: t(60),
        },
        CredentialCommand::Revoke {
            reason: reason("x"),
            at: t(60),
        },
    ];
    for command in commands {
        CredentialTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(CredentialError::NotFound);
    }
}
