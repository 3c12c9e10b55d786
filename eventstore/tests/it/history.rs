//! Forensics: a scripted history, replayed at several instants, matches
//! hand-written expected states.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, CqrsFramework};
use queue_domain::session::AuthMethod;
use queue_domain::types::{
    CredentialId, CustomerId, GrantId, RawCredentialId, SecretHash, SessionFamilyId, SessionId,
};
use queue_domain::{
    Credential, CredentialCommand, Customer, CustomerCommand, Session, SessionCommand,
};
use queue_eventstore::history::{customer_history, diff};
use queue_eventstore::{ChainedEventRepository, Clock, EventStore, SharedMacKeys};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

#[derive(Clone)]
struct StepClock(Arc<Mutex<DateTime<Utc>>>);
impl Clock for StepClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap() + Duration::minutes(minutes)
}

fn cqrs<A: Aggregate<Services = ()>>(
    repo: &ChainedEventRepository,
) -> CqrsFramework<A, PersistedEventStore<ChainedEventRepository, A>> {
    CqrsFramework::new(
        PersistedEventStore::new_event_store(repo.clone())
            .with_upcasters(queue_domain::upcasters()),
        vec![],
        (),
    )
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn replay_at_several_instants_matches_the_script(pool: PgPool) {
    let clock = StepClock(Arc::new(Mutex::new(t(0))));
    let repo = ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(mac_keys()),
        Arc::new(clock.clone()),
    );
    let customers = cqrs::<Customer>(&repo);
    let credentials = cqrs::<Credential>(&repo);
    let sessions = cqrs::<Session>(&repo);
    let step = |m: i64| *clock.0.lock().unwrap() = t(m);

    let customer = CustomerId::from_uuid(uuid::Uuid::from_u128(1));
    let cid = customer.to_string();
    let raw = RawCredentialId::from_bytes(vec![7u8; 16]).unwrap();
    let credential = CredentialId::for_raw_id(&[7u8; 16]);
    let session = SessionId::from_uuid(uuid::Uuid::from_u128(2));
    let grant = GrantId::from_uuid(uuid::Uuid::from_u128(3));

    step(0);
    customers
        .execute(
            &cid,
            CustomerCommand::Register {
                tenant_id: queue_domain::types::TenantId::DEFAULT,
                customer_id: customer,
                email: "Ada@Example.com".parse().unwrap(),
                display_name: "Ada".parse().unwrap(),
                at: t(0),
            },
        )
        .await
        .unwrap();
    step(1);
    credentials
        .execute(
            &credential.to_string(),
            CredentialCommand::Register {
                customer_id: customer,
                raw_credential_id: raw,
                passkey: json!({"cred": "opaque"}),
                name: Some("laptop".parse().unwrap()),
                aaguid: None,
                backup_eligible: true,
                backup_state: false,
                sign_count: 0,
                transports: vec!["internal".into()],
                at: t(1),
            },
        )
        .await
        .unwrap();
    step(2);
    customers
        .execute(
            &cid,
            CustomerCommand::GrantRole {
                grant_id: grant,
                role: "support".parse().unwrap(),
                ticket_id: Some("T-9".parse().unwrap()),
                reason: "on call".parse().unwrap(),
                actor: "console".parse().unwrap(),
                expires_at: None,
                at: t(2),
            },
        )
        .await
        .unwrap();
    step(3);
    credentials
        .execute(
            &credential.to_string(),
            CredentialCommand::RecordUse {
                sign_count: 5,
                backup_state: false,
                at: t(3),
            },
        )
        .await
        .unwrap();
    sessions
        .execute(
            &session.to_string(),
            SessionCommand::Create {
                customer_id: customer,
                method: AuthMethod::Webauthn {
                    credential_id: credential,
                },
                refresh_hash: SecretHash::of(b"r1"),
                family_id: SessionFamilyId::from_uuid(uuid::Uuid::from_u128(4)),
                idle_timeout_secs: 1800,
                absolute_timeout_secs: 43200,
                at: t(3),
                authn_instant: None,
            },
        )
        .await
        .unwrap();
    step(4);
    sessions
        .execute(
            &session.to_string(),
            SessionCommand::Refresh {
                presented: SecretHash::of(b"r1"),
                new: SecretHash::of(b"r2"),
                grace_secs: 0,
                at: t(4),
            },
        )
        .await
        .unwrap();
    step(5);
    customers
        .execute(
            &cid,
            CustomerCommand::Suspend {
                reason: "fraud check".parse().unwrap(),
                actor: "admin".parse().unwrap(),
                at: t(5),
            },
        )
        .await
        .unwrap();
    sessions
        .execute(
            &session.to_string(),
            SessionCommand::Revoke {
                reason: queue_domain::session::RevokeReason::Suspended,
                at: t(5),
            },
        )
        .await
        .unwrap();
    step(6);
    customers
        .execute(
            &cid,
            CustomerCommand::Reinstate {
                reason: "cleared".parse().unwrap(),
                actor: "admin".parse().unwrap(),
                at: t(6),
            },
        )
        .await
        .unwrap();
    step(7);
    customers
        .execute(
            &cid,
            CustomerCommand::RevokeRole {
                grant_id: grant,
                reason: "rotation over".parse().unwrap(),
                actor: "console".parse().unwrap(),
                at: t(7),
            },
        )
        .await
        .unwrap();
    sealer().seal_pending(&pool).await.unwrap();

    // Before registration: nothing.
    let before = customer_history(
        &EventStore::new(repo.clone()),
        &cid,
        t(0) - Duration::seconds(1),
    )
    .await
    .unwrap();
    assert!(before.state.is_none());
    assert!(before.events.is_empty());

    // Just after the grant: a passkey unused, two roles, no session.
    let h = customer_history(&EventStore::new(repo.clone()), &cid, t(2))
        .await
        .unwrap();
    let s = h.state.as_ref().unwrap();
    assert_eq!(s.email, "ada@example.com");
    assert_eq!(s.status, "active");
    assert_eq!(
        s.roles
            .iter()
            .filter(|r| r.active)
            .map(|r| r.role.as_str())
            .collect::<Vec<_>>(),
        ["antlers-user", "support"]
    );
    assert_eq!(s.passkeys.len(), 1);
    assert_eq!(s.passkeys[0].sign_count, 0);
    assert_eq!(s.passkeys[0].name.as_deref(), Some("laptop"));
    assert!(s.sessions.is_empty());
    assert_eq!(h.events.len(), 3);
    assert!(h.covered_by_checkpoint);
    assert!(h
        .events
        .iter()
        .all(|e| e.ledger_seq.is_some() && e.hash.len() == 64));

    // After login and refresh: counter 5, one live session.
    let h = customer_history(&EventStore::new(repo.clone()), &cid, t(4))
        .await
        .unwrap();
    let s = h.state.as_ref().unwrap();
    assert_eq!(s.passkeys[0].sign_count, 5);
    assert_eq!(s.sessions.len(), 1);
    assert_eq!(s.sessions[0].status, "active");
    assert!(s.sessions[0].live);
    assert_eq!(s.sessions[0].amr.as_deref(), Some("webauthn"));

    // Suspended: the session was revoked with it.
    let h = customer_history(&EventStore::new(repo.clone()), &cid, t(5))
        .await
        .unwrap();
    let s = h.state.as_ref().unwrap();
    assert_eq!(s.status, "suspended");
    assert_eq!(s.sessions[0].status, "revoked:suspended");
    assert!(!s.sessions[0].live);

    // At the end: reinstated, grant revoked, session still dead.
    let end = customer_history(&EventStore::new(repo.clone()), &cid, t(8))
        .await
        .unwrap();
    let s = end.state.as_ref().unwrap();
    assert_eq!(s.status, "active");
    assert_eq!(s.roles.iter().filter(|r| r.active).count(), 1);
    assert!(s
        .roles
        .iter()
        .any(|r| r.role == "support" && r.revoked_at == Some(t(7))));
    assert_eq!(end.events.len(), 10);

    // The diff between the suspension and the end names what changed.
    let from = serde_json::to_value(
        &customer_history(&EventStore::new(repo.clone()), &cid, t(5))
            .await
            .unwrap()
            .state,
    )
    .unwrap();
    let to = serde_json::to_value(&end.state).unwrap();
    let changes = diff(&from, &to);
    assert!(changes
        .iter()
        .any(|c| c.path == "status" && c.before == "suspended" && c.after == "active"));
    assert!(changes
        .iter()
        .any(|c| c.path == "roles[1].active" && c.before == true && c.after == false));

    // Unsealed events are reported as not covered.
    step(9);
    customers
        .execute(
            &cid,
            CustomerCommand::Suspend {
                reason: "again".parse().unwrap(),
                actor: "admin".parse().unwrap(),
                at: t(9),
            },
        )
        .await
        .unwrap();
    let h = customer_history(&EventStore::new(repo.clone()), &cid, t(9))
        .await
        .unwrap();
    assert!(!h.covered_by_checkpoint);
    assert_eq!(h.events.last().unwrap().ledger_seq, None);
}
