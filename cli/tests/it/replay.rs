//! `queue replay`: who granted and revoked a role, and why, from the log.

use std::sync::Arc;

use cqrs_es::Aggregate;
use queue_domain::types::{Actor, CustomerId, GrantId, TenantId, TenantSlug};
use queue_domain::{Customer, CustomerCommand};
use queue_eventstore::{Batch, ChainedEventRepository, EventStore, MacKeys, SharedMacKeys};
use sqlx::PgPool;

use crate::*;

async fn run(store: &EventStore, id: &str, command: <Customer as Aggregate>::Command) {
    let mut customer = store.load::<Customer>(id).await.unwrap();
    let events = customer.execute(command).await.unwrap();
    let mut batch = Batch::new();
    batch.add(&mut customer, &events).unwrap();
    store.append(batch).await.unwrap();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn replay_shows_who_granted_and_revoked_a_role_and_why(pool: PgPool) {
    let store = EventStore::new(ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(MacKeys::parse(MAC).unwrap()),
        Arc::new(queue_eventstore::SystemClock),
    ));
    let customer = CustomerId::from_uuid(uuid::Uuid::from_u128(0xacde));
    let id = customer.to_string();
    let at = chrono::Utc::now();
    let saml = Actor::parse("saml:acme").unwrap();
    let grant = GrantId::from_uuid(uuid::Uuid::from_u128(0x96));
    run(
        &store,
        &id,
        CustomerCommand::Register {
            customer_id: customer,
            tenant_id: TenantId::for_slug(&TenantSlug::parse("acme").unwrap()),
            email: "ada@acme.example".parse().unwrap(),
            display_name: "Ada".parse().unwrap(),
            at,
        },
    )
    .await;
    run(
        &store,
        &id,
        CustomerCommand::GrantRole {
            grant_id: grant,
            role: "admin".parse().unwrap(),
            ticket_id: None,
            reason: "SAML group admins".parse().unwrap(),
            actor: saml.clone(),
            expires_at: None,
            at,
        },
    )
    .await;
    run(
        &store,
        &id,
        CustomerCommand::RevokeRole {
            grant_id: grant,
            reason: "no SAML group of the customer gives admin any more"
                .parse()
                .unwrap(),
            actor: saml,
            at,
        },
    )
    .await;

    let url = url_of(&pool);
    let (text, json) = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        let text = queue(&["replay", "--customer", &id], &env);
        let json = queue(&["--json", "replay", "--customer", &id], &env);
        (text, json)
    })
    .await
    .unwrap();

    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8(text.stdout).unwrap();
    let role = format!("  role admin inactive grant {grant} ticket -");
    let lines: Vec<&str> = text.lines().collect();
    let at_role = lines
        .iter()
        .position(|l| *l == role)
        .unwrap_or_else(|| panic!("no line {role:?} in:\n{text}"));
    assert!(
        lines[at_role + 1].starts_with("    granted ")
            && lines[at_role + 1].ends_with(" by saml:acme, reason \"SAML group admins\""),
        "{text}"
    );
    assert!(
        lines[at_role + 2].starts_with("    revoked ")
            && lines[at_role + 2].ends_with(
                " by saml:acme, reason \"no SAML group of the customer gives admin any more\""
            ),
        "{text}"
    );
    // Both events are listed with the rest of the history.
    for event in ["CustomerRegistered", "RoleGranted", "RoleRevoked"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!(" {event} "))),
            "{event} missing from:\n{text}"
        );
    }

    assert!(json.status.success(), "{}", stderr(&json));
    let history: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let admin = history["state"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "admin")
        .unwrap();
    assert_eq!(admin["active"], false);
    assert_eq!(admin["granted_by"], "saml:acme");
    assert_eq!(admin["grant_reason"], "SAML group admins");
    assert_eq!(admin["revoked_by"], "saml:acme");
    assert_eq!(
        admin["revoke_reason"],
        "no SAML group of the customer gives admin any more"
    );
    assert!(admin["revoked_at"].is_string());
}
