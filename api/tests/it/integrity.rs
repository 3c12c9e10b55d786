//! Fail closed on damaged history (issue 16): rows written straight into
//! `events` by someone who can INSERT there but has no MAC key are never
//! folded into a decision, never sealed, and are reported.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::Utc;
use queue_eventstore::chain::{self, EventRecord, Hash};
use queue_eventstore::{CheckpointSigner, Sealer, SealerConfig, StoreError};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::helpers::{mac_keys, metrics_show, Passkey, TestApp};
use crate::operations::claims_via_jwks;

/// The MAC key the test app's store uses (helpers::mac_keys).
const REAL_KEY: [u8; 32] = [7u8; 32];

/// How the forger signs the row.
#[derive(Clone, Copy)]
enum Forgery {
    /// A key id the service does not know.
    UnknownKey,
    /// The service's key (an insider with the key): the control case.
    RealKey,
    /// The real key, but `prev_hash` does not name the previous event.
    BrokenLink,
}

/// Inserts a well-formed event after the stream's current head with a
/// correct `prev_hash` and `hash` (they are unkeyed), as anyone with INSERT
/// on `events` can. Returns its sequence.
async fn forge(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: Value,
    how: Forgery,
) -> i64 {
    let head = sqlx::query(
        "SELECT sequence, hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await
    .unwrap();
    let (sequence, mut prev): (i64, Hash) = match head {
        Some(row) => (
            row.get::<i64, _>(0) + 1,
            chain::to_hash(&row.get::<Vec<u8>, _>(1)).unwrap(),
        ),
        None => (1, chain::ZERO_HASH),
    };
    if matches!(how, Forgery::BrokenLink) {
        prev = [0xab; 32];
    }
    let recorded_at = chain::truncate_time(Utc::now());
    let canonical = chain::canonical_record(&EventRecord {
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version: "1.0",
        recorded_at,
        payload: &payload,
    })
    .unwrap();
    let hash = chain::event_hash(&prev, &canonical);
    let (key, key_id): (&[u8], &str) = match how {
        Forgery::UnknownKey => (b"attacker-made-this-key-up-000000", "attacker"),
        Forgery::RealKey | Forgery::BrokenLink => (&REAL_KEY, "test"),
    };
    let mac = chain::event_mac(key, &hash);
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, recorded_at, prev_hash, hash, mac, mac_key_id) \
         VALUES ($1, $2, $3, $4, '1.0', $5, $6, $7, $8, $9, $10)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(event_type)
    .bind(&payload)
    .bind(recorded_at)
    .bind(prev.to_vec())
    .bind(hash.to_vec())
    .bind(mac.to_vec())
    .bind(key_id)
    .execute(pool)
    .await
    .unwrap();
    sequence
}

fn role_granted(role: &str) -> Value {
    json!({"RoleGranted": {
        "grant_id": Uuid::new_v4(),
        "role": role,
        "ticket_id": null,
        "reason": "forged",
        "actor": "attacker",
        "expires_at": null,
        "at": Utc::now(),
    }})
}

async fn stream_len(pool: &PgPool, aggregate_type: &str, aggregate_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn refresh(app: &TestApp, token: &Value) -> crate::helpers::Response {
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": token}),
    )
    .await
}

fn sealer(app: &TestApp) -> Sealer {
    Sealer::new(
        Arc::new(CheckpointSigner::from_seed("queue.test/integrity", [4; 32]).unwrap()),
        SealerConfig::default(),
        mac_keys(),
    )
    .with_integrity(app.state.store().integrity().clone())
}

async fn sealed(pool: &PgPool, aggregate_type: &str, aggregate_id: &str, sequence: i64) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM ledger WHERE aggregate_type = $1 AND aggregate_id = $2 \
         AND sequence = $3)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A registered customer (Ada) with a forged `RoleGranted` of
/// `support-admin` appended to her stream: the app, her passkey, her tokens,
/// her customer id and the forged row's sequence.
async fn forged_grant(pool: &PgPool, how: Forgery) -> (TestApp, Passkey, Value, String, i64) {
    let app = TestApp::new(pool.clone()).await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let customer = tokens["customer_id"].as_str().unwrap().to_owned();
    let forged = forge(
        pool,
        "Customer",
        &customer,
        "RoleGranted",
        role_granted("support-admin"),
        how,
    )
    .await;
    (app, passkey, tokens, customer, forged)
}

/// The control: with the MAC key, the same forged row is a real grant, so
/// the refusal below is the MAC check's doing and nothing else's.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_role_grant_made_with_the_key_reaches_the_jwt(pool: PgPool) {
    let (app, _, tokens, _, _) = forged_grant(&pool, Forgery::RealKey).await;
    let refreshed = refresh(&app, &tokens["refresh_token"]).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    let claims = claims_via_jwks(&app, refreshed.json["access_token"].as_str().unwrap()).await;
    assert!(claims["roles"]
        .as_array()
        .unwrap()
        .contains(&json!("support-admin")));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_forged_role_grant_is_never_folded_sealed_or_minted(pool: PgPool) {
    let (app, mut passkey, tokens, customer, forged) =
        forged_grant(&pool, Forgery::UnknownKey).await;
    let before = stream_len(&pool, "Customer", &customer).await;

    refresh(&app, &tokens["refresh_token"])
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    let begin = app.login_begin(Some("ada@example.com")).await;
    let credential = passkey.get(&begin["options"]);
    app.login_complete(&begin["challenge_id"], credential)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    // No JWT was minted with the role, and nothing was appended after it.
    assert_eq!(stream_len(&pool, "Customer", &customer).await, before);

    // The sealer seals everything before the row and stops there.
    let err = sealer(&app).seal_pending(&app.sealer).await.unwrap_err();
    let StoreError::Integrity(found) = err else {
        panic!("expected an integrity error, got {err}")
    };
    assert_eq!(
        (found.aggregate_id.as_str(), found.sequence),
        (customer.as_str(), forged)
    );
    assert_eq!(found.kind, queue_eventstore::DamageKind::UnknownMacKey);
    assert!(!sealed(&pool, "Customer", &customer, forged).await);
    assert!(sealed(&pool, "Customer", &customer, forged - 1).await);
    // Later events of other streams are not sealed past it either.
    app.register(&mut Passkey::new(), "bob@example.com").await;
    assert!(sealer(&app).seal_pending(&app.sealer).await.is_err());
    let sealed_total: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    let before_forged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (commit_xid, insert_id) < \
         (SELECT commit_xid, insert_id FROM events WHERE aggregate_id = $1 AND sequence = $2)",
    )
    .bind(&customer)
    .bind(forged)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sealed_total, before_forged);

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json["status"], "integrity_error");
    assert_eq!(
        ready.json["integrity"]["sealer_halted_at"]["aggregate_id"],
        customer.as_str()
    );
    assert_eq!(
        ready.json["integrity"]["last_refused"]["kind"],
        "unknown_mac_key"
    );
    // The log and the metric never carry the payload.
    assert!(!ready.text.contains("support-admin"));
    metrics_show(
        &app,
        "queue_integrity_failures_total{kind=\"unknown_mac_key\"",
    )
    .await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_forged_session_with_a_known_refresh_token_never_works(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let session = tokens["session_id"].as_str().unwrap();
    // The victim's own SessionCreated, re-aimed at a refresh token the
    // attacker chose, in a new session stream.
    let template: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Session' AND aggregate_id = $1 \
         AND sequence = 1",
    )
    .bind(session)
    .fetch_one(&pool)
    .await
    .unwrap();
    let forged_session = queue_domain::types::SessionId::from(Uuid::now_v7());
    let attacker_token = queue_api::auth::tokens::new_refresh_token(forged_session);
    let mut payload = template.clone();
    payload["SessionCreated"]["refresh_hash"] =
        serde_json::to_value(queue_api::auth::tokens::hash(&attacker_token)).unwrap();
    forge(
        &pool,
        "Session",
        &forged_session.to_string(),
        "SessionCreated",
        payload,
        Forgery::UnknownKey,
    )
    .await;
    refresh(&app, &json!(attacker_token))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    assert_eq!(
        stream_len(&pool, "Session", &forged_session.to_string()).await,
        1
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_row_whose_prev_hash_breaks_the_link_is_refused(pool: PgPool) {
    let (app, _, tokens, _, _) = forged_grant(&pool, Forgery::BrokenLink).await;
    refresh(&app, &tokens["refresh_token"])
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.json["integrity"]["last_refused"]["kind"],
        "prev_hash_mismatch"
    );
    let err = sealer(&app).seal_pending(&app.sealer).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::Integrity(ref e) if e.kind == queue_eventstore::DamageKind::PrevHashMismatch
    ));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_deleted_middle_row_makes_the_stream_unusable(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    // Two more logins: the passkey's stream is Registered, Used, Used.
    app.login(&mut passkey, "ada@example.com").await;
    app.login(&mut passkey, "ada@example.com").await;
    let credential: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'Credential' AND sequence = 3",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A superuser removes the middle event (the trigger stops everyone else).
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE aggregate_type = 'Credential' AND aggregate_id = $1 AND sequence = 2")
        .bind(&credential)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    // Login by email loads the customer's passkeys to offer them: refused.
    app.post(
        "/api/v1/auth/webauthn/login/begin",
        json!({"email": "ada@example.com"}),
    )
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    // A discoverable login with that passkey folds its stream: refused.
    let begin = app.login_begin(None).await;
    let assertion = passkey.get(&begin["options"]);
    app.login_complete(&begin["challenge_id"], assertion)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "integrity_error");
    assert_eq!(stream_len(&pool, "Credential", &credential).await, 2);
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.json["integrity"]["last_refused"]["kind"],
        "sequence_gap"
    );
    // The refresh token of the untouched session still works.
    let ok = refresh(&app, &tokens["refresh_token"]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

/// The audit projection row is writable by the service role; the API serves
/// every field of an entry from its event, so an edited row is never shown
/// beside the event's valid MAC (issue 17, item 7).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_edited_audit_projection_row_is_not_shown(pool: PgPool) {
    use crate::service::{audit_body, AUDITOR, SERVICES};
    let app = TestApp::with(pool.clone(), SERVICES).await;
    let written = app
        .post_auth("/api/v1/audit/events", audit_body("k-edit"), AUDITOR)
        .await;
    assert_eq!(written.status, StatusCode::CREATED, "{}", written.text);
    app.register(&mut Passkey::new(), "ada@example.com").await;
    app.catch_up().await;
    let honest = app.get_auth("/api/v1/audit/events", AUDITOR).await;
    assert_eq!(honest.status, StatusCode::OK, "{}", honest.text);

    sqlx::query(
        "UPDATE customer_audit_events SET actor = 'mallory', target = 'nothing', \
         metadata = '{\"attempt\": 99}', ticket_id = NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    let served = app.get_auth("/api/v1/audit/events", AUDITOR).await;
    assert_eq!(served.status, StatusCode::OK, "{}", served.text);
    assert_eq!(served.json, honest.json);
    assert!(!served.text.contains("mallory"));
}
