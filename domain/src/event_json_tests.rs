//! Every event variant, serialised as the event store will: no secret in
//! clear, nothing the ledger cannot canonicalise, and the outer tag is the
//! event type.

use std::collections::BTreeSet;

use cqrs_es::DomainEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::audit::AuditEvent;
use crate::credential::CredentialEvent;
use crate::customer::CustomerEvent;
use crate::session::{AuthMethod, RevokeReason, SessionEvent};
use crate::tenant::{SamlConnection, TenantEvent};
use crate::test_support::{actor, reason, t};
use crate::types::{
    check_ledger_json, AuditAction, AuditTarget, CredentialId, CredentialName, CustomerId,
    DisplayName, Email, GrantId, IdempotencyKey, LegacyId, RawCredentialId, Role, SecretHash,
    ServiceName, SessionFamilyId, TicketId,
};
use crate::types::{
    IdpMetadataXml, SamlAttributeName, SamlGroup, TenantId, TenantName, TenantSlug,
};

/// Secrets as the API would hand them out; only their hashes may be stored.
const EMAIL_TOKEN: &str = "email-token-Zq3xV9kP2mN8";
const REFRESH_TOKEN: &str = "refresh-token-Hj7Rt2Lw5Qa1";
const NEXT_REFRESH_TOKEN: &str = "refresh-token-Bc4Yn6Ue0Ws3";
const BACKUP_CODES: [&str; 10] = [
    "code-0a1b-2c3d",
    "code-4e5f-6a7b",
    "code-8c9d-0e1f",
    "code-2a3b-4c5d",
    "code-6e7f-8a9b",
    "code-0c1d-2e3f",
    "code-4a5b-6c7d",
    "code-8e9f-0a1b",
    "code-2c3d-4e5f",
    "code-6a7b-8c9d",
];

fn hash(secret: &str) -> SecretHash {
    SecretHash::of(secret.as_bytes())
}

fn secrets() -> Vec<&'static str> {
    let mut all = vec![EMAIL_TOKEN, REFRESH_TOKEN, NEXT_REFRESH_TOKEN];
    all.extend(BACKUP_CODES);
    all
}

fn customer_id() -> CustomerId {
    "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01".parse().unwrap()
}

fn legacy_id() -> LegacyId {
    LegacyId::try_from(1234).unwrap()
}

fn customer_events() -> Vec<CustomerEvent> {
    let email = Email::parse("ada@example.com").unwrap();
    let grant_id = GrantId::for_legacy_id(legacy_id());
    vec![
        CustomerEvent::Registered {
            tenant_id: crate::types::TenantId::DEFAULT,
            customer_id: customer_id(),
            email: email.clone(),
            display_name: DisplayName::parse("Ada").unwrap(),
            default_role: Role::default_role(),
            at: t(0),
        },
        CustomerEvent::Imported {
            tenant_id: crate::types::TenantId::DEFAULT,
            customer_id: customer_id(),
            legacy_id: legacy_id(),
            email,
            display_name: None,
            default_role: Role::default_role(),
            email_verified_at: Some(t(1)),
            suspended: true,
            created_at: t(-10),
        },
        CustomerEvent::EmailVerificationRequested {
            token_hash: hash(EMAIL_TOKEN),
            expires_at: t(86_400),
            at: t(0),
        },
        CustomerEvent::EmailVerified { at: t(5) },
        CustomerEvent::RoleGranted {
            grant_id,
            role: Role::parse("support").unwrap(),
            ticket_id: Some(TicketId::parse("SUP-1").unwrap()),
            reason: reason("escalation"),
            actor: actor("ops"),
            expires_at: Some(t(3600)),
            at: t(0),
        },
        CustomerEvent::RoleRevoked {
            grant_id,
            reason: reason("done"),
            actor: actor("ops"),
            at: t(60),
        },
        CustomerEvent::BackupCodesGenerated {
            generation: 1,
            code_hashes: BACKUP_CODES.iter().map(|code| hash(code)).collect(),
            key_id: None,
            at: t(0),
        },
        CustomerEvent::BackupCodeRedeemed {
            generation: 1,
            index: 9,
            at: t(1),
        },
        CustomerEvent::Suspended {
            reason: reason("fraud"),
            actor: actor("ops"),
            at: t(2),
        },
        CustomerEvent::Reinstated {
            reason: reason("cleared"),
            actor: actor("ops"),
            at: t(3),
        },
    ]
}

fn credential_events() -> Vec<CredentialEvent> {
    let raw = RawCredentialId::from_bytes(vec![9; 16]).unwrap();
    let passkey = json!({"cred": {"counter": u32::MAX, "backup_state": true}});
    vec![
        CredentialEvent::Registered {
            customer_id: customer_id(),
            raw_credential_id: raw.clone(),
            passkey: passkey.clone(),
            name: Some(CredentialName::parse("Phone").unwrap()),
            aaguid: Some(uuid::Uuid::from_u128(7)),
            backup_eligible: true,
            backup_state: true,
            sign_count: u32::MAX,
            transports: vec!["internal".into()],
            at: t(0),
        },
        CredentialEvent::Imported {
            legacy_id: legacy_id(),
            customer_id: customer_id(),
            raw_credential_id: raw,
            passkey,
            name: None,
            aaguid: None,
            backup_eligible: false,
            backup_state: false,
            sign_count: 0,
            transports: vec![],
            created_at: t(-10),
            last_used_at: None,
        },
        CredentialEvent::Used {
            sign_count: u32::MAX,
            backup_state: true,
            at: t(1),
        },
        CredentialEvent::Renamed {
            name: CredentialName::parse("Laptop").unwrap(),
            at: t(2),
        },
        CredentialEvent::Revoked {
            reason: reason("lost"),
            at: t(3),
        },
    ]
}

fn session_events() -> Vec<SessionEvent> {
    vec![
        SessionEvent::Created {
            customer_id: customer_id(),
            method: AuthMethod::Webauthn {
                credential_id: CredentialId::for_raw_id(&[9; 16]),
            },
            refresh_hash: hash(REFRESH_TOKEN),
            family_id: SessionFamilyId::from_uuid(uuid::Uuid::from_u128(3)),
            idle_timeout_secs: u32::MAX,
            absolute_timeout_secs: u32::MAX,
            at: t(0),
            authn_instant: None,
        },
        SessionEvent::Imported {
            legacy_id: LegacyId::try_from(crate::types::MAX_LEDGER_INTEGER).unwrap(),
            customer_id: customer_id(),
            refresh_hash: hash(REFRESH_TOKEN),
            idle_timeout_secs: 1800,
            created_at: t(-10),
            last_seen_at: t(-1),
            expires_at: t(100),
            at: t(0),
        },
        SessionEvent::Refreshed {
            previous: hash(REFRESH_TOKEN),
            new: hash(NEXT_REFRESH_TOKEN),
            grace_retry: true,
            at: t(1),
        },
        SessionEvent::Revoked {
            reason: RevokeReason::ReuseDetected,
            at: t(2),
        },
        SessionEvent::Reauthenticated {
            credential_id: CredentialId::for_raw_id(&[9; 16]),
            at: t(3),
        },
        SessionEvent::PasskeyAdded {
            credential_id: CredentialId::for_raw_id(&[8; 16]),
            at: t(4),
        },
        SessionEvent::SamlReauthenticated {
            authn_instant: t(4),
            at: t(5),
        },
    ]
}

fn audit_events() -> Vec<AuditEvent> {
    vec![AuditEvent::Recorded {
        service: ServiceName::parse("founders").unwrap(),
        actor: actor("gatekeeper"),
        action: AuditAction::parse("founders.gate.check_failed").unwrap(),
        target: AuditTarget::parse("registration").unwrap(),
        customer_id: Some(customer_id()),
        ticket_id: None,
        occurred_at: t(0),
        metadata: json!({"attempt": 3}),
        idempotency_key: IdempotencyKey::parse("k").unwrap(),
        at: t(1),
        tenant_id: None,
    }]
}

/// Serialises each event and checks everything this module promises;
/// returns the event types seen.
fn check_events<E>(events: &[E]) -> BTreeSet<String>
where
    E: DomainEvent + Serialize + DeserializeOwned,
{
    let mut types = BTreeSet::new();
    for event in events {
        let value = serde_json::to_value(event).unwrap();
        let text = serde_json::to_string(&value).unwrap();
        check_ledger_json(&value).unwrap_or_else(|why| panic!("{text}: {why}"));
        for secret in secrets() {
            assert!(!text.contains(secret), "{text} contains {secret}");
            let secret_hex = hex::encode(secret.as_bytes());
            assert!(
                !text.contains(&secret_hex),
                "{text} contains hex of {secret}"
            );
        }
        let tag: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(tag, vec![&event.event_type()], "{text}");
        assert_eq!(serde_json::from_value::<E>(value).unwrap(), *event);
        assert!(matches!(event.event_version().as_str(), "1.0" | "2.0"));
        types.insert(event.event_type());
    }
    types
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn every_customer_event_is_ledger_safe_and_secret_free() {
    assert_eq!(
        check_events(&customer_events()),
        names(&[
            "CustomerRegistered",
            "CustomerImported",
            "EmailVerificationRequested",
            "EmailVerified",
            "RoleGranted",
            "RoleRevoked",
            "BackupCodesGenerated",
            "BackupCodeRedeemed",
            "CustomerSuspended",
            "CustomerReinstated",
        ])
    );
}

#[test]
fn every_credential_event_is_ledger_safe_and_secret_free() {
    assert_eq!(
        check_events(&credential_events()),
        names(&[
            "CredentialRegistered",
            "CredentialImported",
            "CredentialUsed",
            "CredentialRenamed",
            "CredentialRevoked",
        ])
    );
}

#[test]
fn every_session_event_is_ledger_safe_and_secret_free() {
    assert_eq!(
        check_events(&session_events()),
        names(&[
            "SessionCreated",
            "SessionImported",
            "SessionRefreshed",
            "SessionRevoked",
            "SessionReauthenticated",
            "SessionPasskeyAdded",
            "SessionSamlReauthenticated",
        ])
    );
}

#[test]
fn every_audit_event_is_ledger_safe() {
    assert_eq!(check_events(&audit_events()), names(&["AuditRecorded"]));
}

#[test]
fn hashes_are_what_is_stored() {
    let value = serde_json::to_value(&session_events()[2]).unwrap();
    assert_eq!(
        value["SessionRefreshed"]["new"],
        json!(hash(NEXT_REFRESH_TOKEN).to_hex())
    );
}

fn tenant_events() -> Vec<TenantEvent> {
    let group_roles = [(
        SamlGroup::parse("Engineering").unwrap(),
        BTreeSet::from([
            Role::parse("viewer").unwrap(),
            Role::parse("deployer").unwrap(),
        ]),
    )]
    .into_iter()
    .collect();
    vec![
        TenantEvent::TenantCreated {
            tenant_id: TenantId::for_slug(&TenantSlug::parse("acme").unwrap()),
            slug: TenantSlug::parse("acme").unwrap(),
            name: TenantName::parse("Acme Inc.").unwrap(),
            actor: actor("ops"),
            at: t(0),
        },
        TenantEvent::TenantRenamed {
            name: TenantName::parse("Acme Corporation").unwrap(),
            actor: actor("ops"),
            at: t(1),
        },
        TenantEvent::SamlConnectionConfigured {
            connection: SamlConnection {
                idp_metadata: IdpMetadataXml::parse("<md:EntityDescriptor/>").unwrap(),
                email_attribute: Some(SamlAttributeName::parse("mail").unwrap()),
                display_name_attribute: None,
                groups_attribute: Some(SamlAttributeName::parse("groups").unwrap()),
                group_roles,
                allow_idp_initiated: true,
                jit_provisioning: true,
            },
            actor: actor("ops"),
            at: t(2),
        },
        TenantEvent::SamlConnectionDisabled {
            reason: reason("IdP retired"),
            actor: actor("ops"),
            at: t(3),
        },
    ]
}

#[test]
fn every_tenant_event_is_ledger_safe() {
    assert_eq!(
        check_events(&tenant_events()),
        names(&[
            "TenantCreated",
            "TenantRenamed",
            "SamlConnectionConfigured",
            "SamlConnectionDisabled",
        ])
    );
    // The group map is an object with sorted role arrays: one canonical form.
    let value = serde_json::to_value(&tenant_events()[2]).unwrap();
    assert_eq!(
        value["SamlConnectionConfigured"]["connection"]["group_roles"],
        json!({"Engineering": ["deployer", "viewer"]})
    );
}
