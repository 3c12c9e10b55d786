use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use queue_domain::session::{AuthMethod, RevokeReason};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CustomerId, DisplayName, Email, GrantId,
    IdempotencyKey, RawCredentialId, Reason, Role, SecretHash, ServiceName, SessionFamilyId,
    SessionId, TicketId,
};
use queue_domain::{
    Audit, AuditCommand, Credential, CredentialCommand, Customer, CustomerCommand, Session,
    SessionCommand,
};
use queue_eventstore::{CheckpointSigner, Sealer, SealerConfig};
use queue_projections::read::{self, AuditFilter};
use queue_projections::{catch_up, ProjectionError};
use queue_replay_tests::{repository, Frameworks};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The read API the HTTP layer uses, on a small history written through
/// the command path.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn read_functions_answer_what_the_api_asks(pool: PgPool) {
    let fw = Frameworks::new(&repository(&pool).unwrap());
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let customer = CustomerId::from_uuid(Uuid::from_u128(1));
    let cid = customer.to_string();
    let actor = Actor::parse("ops@queue").unwrap();
    fw.execute::<Customer>(
        &cid,
        CustomerCommand::Register {
            tenant_id: queue_domain::types::TenantId::DEFAULT,
            customer_id: customer,
            email: Email::parse("Ada@Example.com").unwrap(),
            display_name: DisplayName::parse("Ada").unwrap(),
            at: t0,
        },
    )
    .await
    .unwrap();
    let grant = |n: u128, role: &str, expires: Option<i64>| CustomerCommand::GrantRole {
        grant_id: GrantId::from_uuid(Uuid::from_u128(n)),
        role: Role::parse(role).unwrap(),
        ticket_id: Some(TicketId::parse("T-1").unwrap()),
        reason: Reason::parse("because").unwrap(),
        actor: actor.clone(),
        expires_at: expires.map(|h| t0 + Duration::hours(h)),
        at: t0 + Duration::minutes(1),
    };
    fw.execute::<Customer>(&cid, grant(10, "auditor", Some(2)))
        .await
        .unwrap();
    fw.execute::<Customer>(&cid, grant(11, "admin", None))
        .await
        .unwrap();
    fw.execute::<Customer>(&cid, grant(12, "support-agent", None))
        .await
        .unwrap();
    fw.execute::<Customer>(
        &cid,
        CustomerCommand::RevokeRole {
            grant_id: GrantId::from_uuid(Uuid::from_u128(12)),
            reason: Reason::parse("done").unwrap(),
            actor: actor.clone(),
            at: t0 + Duration::minutes(2),
        },
    )
    .await
    .unwrap();
    let codes: Vec<SecretHash> = (0..10).map(|i| SecretHash::of(&[i])).collect();
    fw.execute::<Customer>(
        &cid,
        CustomerCommand::GenerateBackupCodes {
            code_hashes: codes.clone(),
            key_id: None,
            at: t0,
        },
    )
    .await
    .unwrap();
    fw.execute::<Customer>(
        &cid,
        CustomerCommand::RedeemBackupCode {
            code_hash: codes[4],
            at: t0,
        },
    )
    .await
    .unwrap();
    let token = SecretHash::of(b"email-token");
    fw.execute::<Customer>(
        &cid,
        CustomerCommand::RequestEmailVerification {
            token_hash: token,
            expires_at: t0 + Duration::hours(24),
            at: t0,
        },
    )
    .await
    .unwrap();
    let raw = RawCredentialId::from_bytes(vec![7; 16]).unwrap();
    fw.execute::<Credential>(
        &raw.credential_id().to_string(),
        CredentialCommand::Register {
            customer_id: customer,
            raw_credential_id: raw.clone(),
            passkey: json!({"cred": {"counter": 0}}),
            name: None,
            aaguid: None,
            backup_eligible: true,
            backup_state: true,
            sign_count: 0,
            transports: vec!["internal".into()],
            at: t0,
        },
    )
    .await
    .unwrap();
    let session = SessionId::from_uuid(Uuid::from_u128(77));
    let r0 = SecretHash::of(b"r0");
    let r1 = SecretHash::of(b"r1");
    fw.execute::<Session>(
        &session.to_string(),
        SessionCommand::Create {
            customer_id: customer,
            method: AuthMethod::Webauthn {
                credential_id: raw.credential_id(),
            },
            refresh_hash: r0,
            family_id: SessionFamilyId::from_uuid(Uuid::from_u128(5)),
            idle_timeout_secs: 1800,
            absolute_timeout_secs: 43_200,
            at: t0,
            authn_instant: None,
        },
    )
    .await
    .unwrap();
    fw.execute::<Session>(
        &session.to_string(),
        SessionCommand::Refresh {
            presented: r0,
            new: r1,
            grace_secs: 0,
            at: t0 + Duration::minutes(10),
        },
    )
    .await
    .unwrap();
    let other = SessionId::from_uuid(Uuid::from_u128(78));
    fw.execute::<Session>(
        &other.to_string(),
        SessionCommand::Create {
            customer_id: customer,
            method: AuthMethod::BackupCode,
            refresh_hash: SecretHash::of(b"x0"),
            family_id: SessionFamilyId::from_uuid(Uuid::from_u128(6)),
            idle_timeout_secs: 1800,
            absolute_timeout_secs: 43_200,
            at: t0,
            authn_instant: None,
        },
    )
    .await
    .unwrap();
    fw.execute::<Session>(
        &other.to_string(),
        SessionCommand::Revoke {
            reason: RevokeReason::Logout,
            at: t0,
        },
    )
    .await
    .unwrap();
    let service = ServiceName::parse("billing").unwrap();
    for n in 0..3 {
        let key = format!("k{n}");
        let id = AuditEventId::for_idempotency_key("billing", &key);
        fw.execute::<Audit>(
            &id.to_string(),
            AuditCommand::Record {
                service: service.clone(),
                actor: Actor::parse("svc").unwrap(),
                action: AuditAction::parse("founders.gate.rejected").unwrap(),
                target: AuditTarget::parse("seat").unwrap(),
                customer_id: Some(customer),
                ticket_id: None,
                occurred_at: t0 + Duration::hours(n),
                metadata: json!({"n": n}),
                idempotency_key: IdempotencyKey::parse(&key).unwrap(),
                at: t0,
                tenant_id: None,
            },
        )
        .await
        .unwrap();
    }
    catch_up(&pool).await.unwrap();
    let at = t0 + Duration::minutes(30);
    let uid = *customer.as_uuid();

    let row = read::customer(&pool, uid).await.unwrap().unwrap();
    assert_eq!(row.email, "ada@example.com");
    assert_eq!(row.status, "active");
    assert!(!row.email_verified);
    assert_eq!(
        read::customer_by_email(&pool, "ADA@example.com")
            .await
            .unwrap()
            .unwrap()
            .customer_id,
        uid
    );
    assert_eq!(read::customer_count(&pool, None).await.unwrap(), 1);

    assert_eq!(
        read::role_names_of(&pool, uid, at).await.unwrap(),
        ["admin", "antlers-user", "auditor"]
    );
    assert_eq!(
        read::role_names_of(&pool, uid, t0 + Duration::hours(3))
            .await
            .unwrap(),
        ["admin", "antlers-user"]
    );
    let roles = read::roles_of(&pool, uid, at).await.unwrap();
    assert!(roles[0].is_default && roles[0].grant_id.is_none());
    assert_eq!(read::grants_of(&pool, uid).await.unwrap().len(), 4);
    let g = read::grant(&pool, Uuid::from_u128(12))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (g.customer_id, g.revoke_reason.as_deref()),
        (uid, Some("done"))
    );

    assert_eq!(read::unused_backup_codes(&pool, uid).await.unwrap(), 9);
    assert_eq!(read::backup_codes_of(&pool, uid).await.unwrap().len(), 10);
    let v = read::email_verification_by_token(&pool, &token.to_hex())
        .await
        .unwrap()
        .unwrap();
    assert!(v.is_usable(at) && !v.is_usable(t0 + Duration::hours(25)));

    let creds = read::credentials_of(&pool, uid).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].raw_credential_id, raw.to_string());
    assert_eq!(creds[0].transports, ["internal"]);
    assert!(read::credential_by_raw_id(&pool, &raw.to_string())
        .await
        .unwrap()
        .is_some());

    let sessions = read::sessions_of(&pool, uid, at).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].session_id, *session.as_uuid());
    assert_eq!(sessions[0].amr.as_deref(), Some("webauthn"));
    assert_eq!(sessions[0].ends_at(), t0 + Duration::minutes(40));
    assert!(read::sessions_of(&pool, uid, t0 + Duration::hours(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(read::all_sessions_of(&pool, uid).await.unwrap().len(), 2);
    // Old and current refresh tokens both lead to the session.
    for hash in [r0, r1] {
        let s = read::session_by_refresh_hash(&pool, &hash.to_hex())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.session_id, *session.as_uuid());
    }

    // The audit log: every event, in ledger order, paged by cursor; ledger
    // seq and MAC appear once sealed.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = read::audit_events(
            &pool,
            &AuditFilter {
                customer_id: Some(uid),
                limit: Some(4),
                cursor: cursor.clone(),
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
        assert!(page
            .events
            .iter()
            .all(|e| e.ledger_seq.is_none() && e.mac.is_none()));
        seen.extend(page.events);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, total);
    assert_eq!(seen[0].action, "customer.registered");
    assert!(seen.iter().any(|e| e.action == "session.refreshed"));
    let external = read::audit_events(
        &pool,
        &AuditFilter {
            action: Some("founders.gate.rejected".into()),
            since: Some(t0 + Duration::minutes(30)),
            until: Some(t0 + Duration::hours(2)),
            ..AuditFilter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(external.events.len(), 1);
    assert_eq!(external.events[0].service.as_deref(), Some("billing"));
    assert_eq!(external.events[0].metadata, json!({"n": 1}));
    assert_eq!(
        external.events[0].event_id,
        *AuditEventId::for_idempotency_key("billing", "k1").as_uuid()
    );

    Sealer::new(
        Arc::new(CheckpointSigner::from_seed("queue.test/read", [3; 32]).unwrap()),
        SealerConfig::default(),
        queue_eventstore::SharedMacKeys::new(queue_replay_tests::mac_keys().unwrap()),
    )
    .seal_pending(&pool)
    .await
    .unwrap();
    let page = read::audit_events(
        &pool,
        &AuditFilter {
            limit: Some(1000),
            ..AuditFilter::default()
        },
    )
    .await
    .unwrap();
    let seqs: Vec<i64> = page.events.iter().map(|e| e.ledger_seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "pages are in ledger order"
    );
    assert!(page
        .events
        .iter()
        .all(|e| e.mac.as_ref().is_some_and(|m| m.len() == 64)));
    let one = read::audit_event(&pool, page.events[0].event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.ledger_seq, Some(1));

    let bad = read::audit_events(
        &pool,
        &AuditFilter {
            cursor: Some("garbage".into()),
            ..AuditFilter::default()
        },
    )
    .await;
    assert!(matches!(bad, Err(ProjectionError::InvalidCursor)));
}
