//! Sessions: grace retry, timeouts, listing and revoking, credentials management.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_grace_period_allows_one_retry_with_the_previous_token(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_REFRESH_REUSE_GRACE", "30")]).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let first = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    // The client lost that response and retries with the previous token.
    let retry = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    // The fresh pair works; a second retry is reuse.
    let next = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": retry.json["refresh_token"]}),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "refresh_reuse_detected");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn idle_and_absolute_timeouts_expire_the_session(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("QUEUE_SESSION_IDLE_TIMEOUT", "600"),
            ("QUEUE_SESSION_ABSOLUTE_TIMEOUT", "1000"),
        ],
    )
    .await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    app.clock().advance(601);
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "session_expired");

    // Refreshing keeps a session alive, up to the absolute timeout.
    let tokens = app.login(&mut passkey, "ada@example.com").await;
    let mut refresh = tokens["refresh_token"].clone();
    for _ in 0..2 {
        app.clock().advance(400);
        let r = app
            .post(
                "/api/v1/auth/session/refresh",
                json!({"refresh_token": refresh}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        refresh = r.json["refresh_token"].clone();
    }
    app.clock().advance(400);
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": refresh}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "session_expired");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn garbage_refresh_tokens_are_invalid(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let before = app.event_count().await;
    for token in [
        "nope".to_owned(),
        format!("qrt_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43)),
        // A well-formed token of the right session with a wrong secret.
        {
            let real = tokens["refresh_token"].as_str().unwrap();
            format!("{}{}", &real[..real.len() - 43], "B".repeat(43))
        },
    ] {
        app.post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": token}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    }
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn sessions_are_listed_and_revoked_by_their_owner_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut ada = Passkey::new();
    let first = app.register(&mut ada, "ada@example.com").await;
    let second = app.login(&mut ada, "ada@example.com").await;
    let token = bearer(&second);

    app.catch_up().await;
    let list = app.get_auth("/api/v1/auth/sessions", &token).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let sessions = list.json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let current: Vec<bool> = sessions
        .iter()
        .map(|s| s["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current, vec![true, false], "newest first");
    assert_eq!(sessions[1]["amr"], json!(["webauthn"]));
    for field in ["created_at", "last_seen_at", "expires_at"] {
        assert!(sessions[0][field].is_string(), "{field}");
    }

    // Another customer cannot see or revoke Ada's session.
    let eve = app.register(&mut Passkey::new(), "eve@example.com").await;
    let path = format!(
        "/api/v1/auth/sessions/{}",
        first["session_id"].as_str().unwrap()
    );
    app.request(Method::DELETE, &path, None, Some(&bearer(&eve)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let revoked = app.request(Method::DELETE, &path, None, Some(&token)).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    app.get_auth("/api/v1/auth/me", &bearer(&first))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "session_revoked");
    app.catch_up().await;
    let list = app.get_auth("/api/v1/auth/sessions", &token).await;
    assert_eq!(list.json["sessions"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn credentials_are_renamed_and_the_last_one_is_kept(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = bearer(&tokens);
    let id = tokens["credential_id"].as_str().unwrap();
    let path = format!("/api/v1/auth/credentials/{id}");

    let renamed = app
        .request(
            Method::PATCH,
            &path,
            Some(json!({"name": "work laptop"})),
            Some(&token),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.json["name"], "work laptop");
    app.request(
        Method::PATCH,
        &path,
        Some(json!({"name": ""})),
        Some(&token),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");

    let before = app.event_count().await;
    app.request(Method::DELETE, &path, None, Some(&token))
        .await
        .assert_error(StatusCode::CONFLICT, "last_credential");
    assert_eq!(app.event_count().await, before);

    // With unused backup codes the last passkey may go.
    let codes = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), &token)
        .await;
    assert_eq!(codes.status, StatusCode::CREATED);
    let deleted = app.request(Method::DELETE, &path, None, Some(&token)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    app.catch_up().await;
    let list = app.get_auth("/api/v1/auth/credentials", &token).await;
    assert_eq!(list.json["credentials"], json!([]));
    app.request(Method::DELETE, &path, None, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}
