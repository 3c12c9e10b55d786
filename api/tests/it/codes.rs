//! Backup codes and email verification.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_backup_code_logs_in_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let generated = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), &bearer(&tokens))
        .await;
    assert_eq!(generated.status, StatusCode::CREATED, "{}", generated.text);
    let codes: Vec<String> = generated.json["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);

    let redeemed = app
        .post(
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ADA@example.com", "code": codes[3].to_lowercase()}),
        )
        .await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.text);
    assert_eq!(redeemed.json["customer_id"], tokens["customer_id"]);
    let claims =
        crate::operations::claims_via_jwks(&app, redeemed.json["access_token"].as_str().unwrap())
            .await;
    assert_eq!(claims["amr"], json!(["backup_code"]));

    let before = app.event_count().await;
    app.post(
        "/api/v1/auth/backup-codes/redeem",
        json!({"email": "ada@example.com", "code": codes[3]}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    app.post(
        "/api/v1/auth/backup-codes/redeem",
        json!({"email": "nobody@example.com", "code": codes[4]}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    assert_eq!(app.event_count().await, before);

    // A new set voids the old one.
    app.post_auth("/api/v1/auth/backup-codes", json!({}), &bearer(&tokens))
        .await;
    app.post(
        "/api/v1/auth/backup-codes/redeem",
        json!({"email": "ada@example.com", "code": codes[5]}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn redeem_is_rate_limited_per_account(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_RATE_LIMIT_PER_ACCOUNT", "3")]).await;
    for _ in 0..3 {
        app.post(
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ada@example.com", "code": "AAAAA-AAAAA"}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    }
    let limited = app
        .post(
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ada@example.com", "code": "AAAAA-AAAAA"}),
        )
        .await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Another account is not affected.
    app.post(
        "/api/v1/auth/backup-codes/redeem",
        json!({"email": "bob@example.com", "code": "AAAAA-AAAAA"}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn login_is_rate_limited_per_client_address(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_RATE_LIMIT_PER_ADDRESS", "2")]).await;
    app.login_begin(None).await;
    app.login_begin(None).await;
    let limited = app
        .post("/api/v1/auth/webauthn/login/begin", json!({}))
        .await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn email_verification_through_the_log_mailer(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let sent = app
        .post_auth(
            "/api/v1/auth/email/verification",
            json!({}),
            &bearer(&tokens),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let mail = app.last_mail().await;
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    let token = mail
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();

    app.post("/api/v1/auth/email/verify", json!({"token": "qev_bogus"}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    let verified = app
        .post("/api/v1/auth/email/verify", json!({"token": token}))
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.text);
    assert_eq!(verified.json, json!({"email_verified": true}));
    let me = app.get_auth("/api/v1/auth/me", &bearer(&tokens)).await;
    assert_eq!(me.json["email_verified"], true);
    // Single use.
    app.post("/api/v1/auth/email/verify", json!({"token": token}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_expired_email_token_is_invalid(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    app.post_auth(
        "/api/v1/auth/email/verification",
        json!({}),
        &bearer(&tokens),
    )
    .await;
    let mail = app.last_mail().await;
    let token = mail
        .split("token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    app.clock().advance(24 * 3600 + 1);
    app.post("/api/v1/auth/email/verify", json!({"token": token}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
}
