//! Step-up for factor changes and keyed backup codes (issue 17 items 5
//! and 6, ADR 0211): real router, real Postgres, soft passkeys.

use axum::http::{Method, StatusCode};
use hmac::{Hmac, Mac};
use queue_domain::customer::CustomerCommand;
use queue_domain::types::{CustomerId, SecretHash};
use queue_eventstore::Batch;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, Response, TestApp};

const BEGIN_ADD: &str = "/api/v1/auth/webauthn/register/begin";
const COMPLETE_ADD: &str = "/api/v1/auth/webauthn/register/complete";
const CODES: &str = "/api/v1/auth/backup-codes";

/// The key of `QUEUE_BACKUP_CODE_KEYS` in the test config (id `b1`).
const PEPPER: [u8; 32] = [0x22; 32];

async fn delete(app: &TestApp, path: &str, token: &str) -> Response {
    app.request(Method::DELETE, path, None, Some(token)).await
}

/// Adds a passkey in the session of `token`: begin, then complete.
async fn add_passkey(app: &TestApp, token: &str, passkey: &mut Passkey) -> Response {
    let begin = app.post_auth(BEGIN_ADD, json!({}), token).await;
    if begin.status != StatusCode::OK {
        return begin;
    }
    let credential = passkey.create(&begin.json["options"]);
    app.post_auth(
        COMPLETE_ADD,
        json!({"challenge_id": begin.json["challenge_id"], "credential": credential, "name": "phone"}),
        token,
    )
    .await
}

/// The reauth ceremony in the session of `token` with `passkey`.
async fn reauth(app: &TestApp, token: &str, passkey: &mut Passkey) -> Response {
    let begin = app
        .post_auth("/api/v1/auth/webauthn/reauth/begin", json!({}), token)
        .await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let credential = passkey.get(&begin.json["options"]);
    app.post_auth(
        "/api/v1/auth/webauthn/reauth/complete",
        json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
        token,
    )
    .await
}

async fn credential_ids(app: &TestApp, token: &str) -> Vec<String> {
    app.catch_up().await;
    let list = app.get_auth("/api/v1/auth/credentials", token).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    list.json["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["credential_id"].as_str().unwrap().to_owned())
        .collect()
}

fn codes_of(response: &Response) -> Vec<String> {
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    response.json["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn each_factor_change_needs_a_recent_passkey_and_works_after_reauth(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut laptop = Passkey::new();
    let tokens = app.register(&mut laptop, "ada@example.com").await;
    let token = bearer(&tokens);
    // Fresh from the login: a second passkey is added without reauth.
    let mut phone = Passkey::new();
    let added = add_passkey(&app, &token, &mut phone).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let phone_id = added.json["credential_id"].as_str().unwrap().to_owned();
    // Another session of Ada's, to revoke from the first.
    let other = app.login(&mut laptop, "ada@example.com").await;
    let other_id = other["session_id"].as_str().unwrap().to_owned();

    // Five minutes and a second later, every factor change is refused.
    app.clock().advance(301);
    let before = app.event_count().await;
    app.post_auth(BEGIN_ADD, json!({}), &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "reauth_required");
    delete(
        &app,
        &format!("/api/v1/auth/credentials/{phone_id}"),
        &token,
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "reauth_required");
    app.post_auth(CODES, json!({}), &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "reauth_required");
    delete(&app, &format!("/api/v1/auth/sessions/{other_id}"), &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "reauth_required");
    assert_eq!(app.event_count().await, before, "a refusal writes nothing");
    // Renaming is no factor change.
    let renamed = app
        .request(
            Method::PATCH,
            &format!("/api/v1/auth/credentials/{phone_id}"),
            Some(json!({"name": "old phone"})),
            Some(&token),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);

    // A reauth challenge is no login challenge.
    let begin = app
        .post_auth("/api/v1/auth/webauthn/reauth/begin", json!({}), &token)
        .await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let assertion = laptop.get(&begin.json["options"]);
    app.login_complete(&begin.json["challenge_id"], assertion)
        .await
        .assert_error(StatusCode::GONE, "challenge_expired");
    // Without a token there is no reauth.
    app.post("/api/v1/auth/webauthn/reauth/begin", json!({}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    let started = app.clock().now();
    let done = reauth(&app, &token, &mut laptop).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(done.json["reauthenticated_at"].clone()).unwrap();
    assert!(started <= at && at <= app.clock().now(), "{at}");

    // Now each is allowed.
    let mut key = Passkey::new();
    let added = add_passkey(&app, &token, &mut key).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(
        codes_of(&app.post_auth(CODES, json!({}), &token).await).len(),
        10
    );
    let deleted = delete(
        &app,
        &format!("/api/v1/auth/credentials/{phone_id}"),
        &token,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let revoked = delete(&app, &format!("/api/v1/auth/sessions/{other_id}"), &token).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let refused = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": other["refresh_token"]}),
        )
        .await;
    refused.assert_error(StatusCode::UNAUTHORIZED, "session_revoked");

    // The access token says when (OIDC auth_time), from the session's events.
    let refreshed = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    let claims =
        crate::operations::claims_via_jwks(&app, refreshed.json["access_token"].as_str().unwrap())
            .await;
    assert_eq!(claims["auth_time"], json!(at.timestamp()));

    // And five minutes later it is needed again.
    app.clock().advance(301);
    app.post_auth(CODES, json!({}), &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "reauth_required");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_backup_code_session_adds_one_passkey_and_nothing_else(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut laptop = Passkey::new();
    let tokens = app.register(&mut laptop, "ada@example.com").await;
    let codes = codes_of(&app.post_auth(CODES, json!({}), &bearer(&tokens)).await);
    let laptop_id = tokens["credential_id"].as_str().unwrap().to_owned();

    let redeemed = app
        .post(
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ada@example.com", "code": codes[0]}),
        )
        .await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.text);
    let recovery = bearer(&redeemed.json);

    delete(
        &app,
        &format!("/api/v1/auth/credentials/{laptop_id}"),
        &recovery,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post_auth(CODES, json!({}), &recovery)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    let mut phone = Passkey::new();
    let added = add_passkey(&app, &recovery, &mut phone).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let mut another = Passkey::new();
    add_passkey(&app, &recovery, &mut another)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    // A reauth with the new passkey gives the session no more powers.
    let done = reauth(&app, &recovery, &mut phone).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    add_passkey(&app, &recovery, &mut another)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    delete(
        &app,
        &format!("/api/v1/auth/credentials/{laptop_id}"),
        &recovery,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post_auth(CODES, json!({}), &recovery)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(credential_ids(&app, &recovery).await.len(), 2);

    // It may sign the other sessions out (that is what recovery is for).
    let revoked = delete(
        &app,
        &format!(
            "/api/v1/auth/sessions/{}",
            tokens["session_id"].as_str().unwrap()
        ),
        &recovery,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);

    // A passkey login with the new passkey is a full session.
    let full = app.login(&mut phone, "ada@example.com").await;
    let deleted = delete(
        &app,
        &format!("/api/v1/auth/credentials/{laptop_id}"),
        &bearer(&full),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
}

fn hmac_hex(customer: &str, normalized: &str) -> String {
    let customer: uuid::Uuid = customer.parse().unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&PEPPER).unwrap();
    mac.update(b"queue backup code v1\0");
    mac.update(customer.as_bytes());
    mac.update(normalized.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn normalized(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn stored_backup_code_hashes_are_keyed_not_sha256(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer = tokens["customer_id"].as_str().unwrap();
    let codes = codes_of(&app.post_auth(CODES, json!({}), &bearer(&tokens)).await);
    for code in &codes {
        // 4 groups of 4 Crockford base32 characters: 80 bits.
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.len(), 4, "{code}");
        assert!(groups.iter().all(|g| g.len() == 4
            && g.bytes()
                .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))));
    }
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Customer' AND aggregate_id = $1 \
         AND event_type = 'BackupCodesGenerated'",
    )
    .bind(customer)
    .fetch_one(&pool)
    .await
    .unwrap();
    let stored = &payload["BackupCodesGenerated"];
    assert_eq!(stored["key_id"], "b1", "{payload}");
    let hashes: Vec<&str> = stored["code_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 10);
    for (code, stored) in codes.iter().zip(&hashes) {
        let plain = hex::encode(Sha256::digest(normalized(code).as_bytes()));
        assert_ne!(*stored, plain, "an unkeyed SHA-256 is stored");
        assert_eq!(*stored, hmac_hex(customer, &normalized(code)));
    }
    // And the code still redeems (lower case, spaces: normalised).
    let redeemed = app
        .post(
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ada@example.com", "code": codes[2].to_lowercase().replace('-', " ")}),
        )
        .await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn legacy_unkeyed_codes_redeem_until_used_or_regenerated(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id: CustomerId = tokens["customer_id"].as_str().unwrap().parse().unwrap();
    // A set written before ADR 0211: 50-bit codes, SHA-256, no key id.
    let legacy: Vec<String> = (0..10).map(|i| format!("ABCDE-FGH{i:02}")).collect();
    let store = app.state.store();
    let mut customer = store.customer(customer_id).await.unwrap();
    let events = customer
        .execute(CustomerCommand::GenerateBackupCodes {
            code_hashes: legacy
                .iter()
                .map(|c| SecretHash::of(normalized(c).as_bytes()))
                .collect(),
            key_id: None,
            at: app.clock().now(),
        })
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch.add(&mut customer, &events).unwrap();
    store.append(batch).await.unwrap();
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_id = $1 AND event_type = 'BackupCodesGenerated'",
    )
    .bind(customer_id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        payload["BackupCodesGenerated"].get("key_id").is_none(),
        "{payload}"
    );

    let redeem = |code: String| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/backup-codes/redeem",
                json!({"email": "ada@example.com", "code": code}),
            )
            .await
        }
    };
    let first = redeem(legacy[1].clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    redeem(legacy[1].clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    // Regenerated (keyed): the legacy set is void.
    let fresh = codes_of(&app.post_auth(CODES, json!({}), &bearer(&tokens)).await);
    redeem(legacy[2].clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    let keyed = redeem(fresh[0].clone()).await;
    assert_eq!(keyed.status, StatusCode::OK, "{}", keyed.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_factor_change_is_mailed_and_audited(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut laptop = Passkey::new();
    let tokens = app.register(&mut laptop, "ada@example.com").await;
    let token = bearer(&tokens);
    let customer = tokens["customer_id"].as_str().unwrap().to_owned();
    let other = app.login(&mut laptop, "ada@example.com").await;
    app.clock().advance(301);
    assert_eq!(
        reauth(&app, &token, &mut laptop).await.status,
        StatusCode::OK
    );

    let mut phone = Passkey::new();
    let added = add_passkey(&app, &token, &mut phone).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let phone_id = added.json["credential_id"].as_str().unwrap().to_owned();
    codes_of(&app.post_auth(CODES, json!({}), &token).await);
    let deleted = delete(
        &app,
        &format!("/api/v1/auth/credentials/{phone_id}"),
        &token,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let revoked = delete(
        &app,
        &format!(
            "/api/v1/auth/sessions/{}",
            other["session_id"].as_str().unwrap()
        ),
        &token,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    // Signing out of the current session is a logout: no notice.
    let own = delete(
        &app,
        &format!(
            "/api/v1/auth/sessions/{}",
            tokens["session_id"].as_str().unwrap()
        ),
        &token,
    )
    .await;
    assert_eq!(own.status, StatusCode::NO_CONTENT, "{}", own.text);

    // One notice per factor change, through the outbox (the sender claims
    // one row a round).
    let mut rounds = 0;
    while app.deliver_mail().await > 0 {
        rounds += 1;
        assert!(rounds <= 10, "the outbox keeps finding work");
    }
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM mail_outbox WHERE customer_id = $1::uuid ORDER BY kind",
    )
    .bind(&customer)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            "backup_codes_regenerated",
            "passkey_added",
            "passkey_removed",
            "session_revoked"
        ]
    );
    let mails: Vec<String> = std::fs::read_dir(&app.mail_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(mails.len(), 4, "{mails:?}");
    let notice = mails
        .iter()
        .find(|m| m.contains("Subject: A session of your account was signed out"))
        .expect("the session notice was delivered");
    assert!(notice.contains("To: ada@example.com"), "{notice}");
    assert!(
        notice.contains("was signed out from another session"),
        "{notice}"
    );

    // And an audit event for each, and for the reauth.
    app.catch_up().await;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT action, metadata FROM customer_audit_events WHERE customer_id = $1::uuid \
         ORDER BY commit_xid, insert_id",
    )
    .bind(&customer)
    .fetch_all(&pool)
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
    for expected in [
        "session.reauthenticated",
        "session.passkey_added",
        "customer.backup_codes_generated",
        "credential.revoked",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "credential.registered")
            .count(),
        2
    );
    assert!(
        rows.iter()
            .any(|(action, metadata)| action == "session.revoked"
                && metadata["reason"] == "revoked_by_customer"),
        "{rows:?}"
    );
}

/// Reauthentications racing on one session and one passkey (each appends
/// to both streams) are decided again after a lost append, as logins are:
/// each answers 200 or 401 (its counter overtaken), never 409.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn racing_reauthentications_never_answer_conflict(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let token = bearer(&tokens);
    let mut assertions = Vec::new();
    for _ in 0..8 {
        let begin = app
            .post_auth("/api/v1/auth/webauthn/reauth/begin", json!({}), &token)
            .await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        let credential = passkey.get(&begin.json["options"]);
        assertions
            .push(json!({"challenge_id": begin.json["challenge_id"], "credential": credential}));
    }
    let done = futures::future::join_all(
        assertions
            .into_iter()
            .map(|body| app.post_auth("/api/v1/auth/webauthn/reauth/complete", body, &token)),
    )
    .await;
    for reauth in &done {
        assert!(
            [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&reauth.status),
            "{} {}",
            reauth.status,
            reauth.text
        );
    }
    assert!(done.iter().any(|r| r.status == StatusCode::OK));
}
