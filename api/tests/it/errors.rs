//! Request errors: every one in the contract's envelope with its code.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{Passkey, TestApp};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn malformed_json_is_invalid_request(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/webauthn/login/begin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"email\": "))
        .unwrap();
    let response = app.send(request).await;
    response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    // The request id in the body is the one in the header.
    assert_eq!(
        response.json["error"]["request_id"],
        response.headers["x-request-id"].to_str().unwrap()
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn missing_and_invalid_fields_are_named(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let before = app.event_count().await;
    let r = app.post("/api/v1/auth/session/refresh", json!({})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refresh_token"),
        "{}",
        r.text
    );

    let r = app
        .post(
            "/api/v1/auth/webauthn/register/begin",
            json!({"email": "nope", "display_name": "Ada"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("email"),
        "{}",
        r.text
    );

    let r = app
        .post(
            "/api/v1/auth/webauthn/register/begin",
            json!({"email": "ada@example.com"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("display_name"),
        "{}",
        r.text
    );

    let r = app
        .post(
            "/api/v1/auth/webauthn/login/complete",
            json!({"challenge_id": "x"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credential"),
        "{}",
        r.text
    );

    // A wrongly typed secret is not echoed back.
    let r = app
        .post(
            "/api/v1/auth/webauthn/login/complete",
            json!({"challenge_id": "x", "credential": {"id": "s3cr3t-value", "rawId": 5}}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(!r.text.contains("s3cr3t-value"), "{}", r.text);
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_missing_challenge_is_not_spent_by_a_bad_credential(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;
    let begin = app.login_begin(Some("ada@example.com")).await;
    app.login_complete(&begin["challenge_id"], json!({"nonsense": true}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let assertion = passkey.get(&begin["options"]);
    let ok = app.login_complete(&begin["challenge_id"], assertion).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_oversized_body_is_413(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let before = app.event_count().await;
    let big = json!({"email": "a".repeat(70 * 1024)});
    let r = app.post("/api/v1/auth/webauthn/login/begin", big).await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn wrong_content_type_unknown_routes_and_missing_tokens(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/webauthn/login/begin")
        .body(Body::from("{}"))
        .unwrap();
    app.send(request)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.get("/api/v1/nothing-here")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/api/v1/auth/me")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.get_auth("/api/v1/auth/me", "not.a.jwt")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn with_the_flag_off_every_v1_route_is_404(pool: PgPool) {
    let app = TestApp::with(pool, &[("FLAG_QUEUE_V1", "0")]).await;
    app.post("/api/v1/auth/webauthn/login/begin", json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(
        app.get("/.well-known/jwks.json").await.status,
        StatusCode::OK
    );
    assert_eq!(app.get("/metrics").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn while_draining_api_requests_answer_shutting_down(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.state.begin_shutdown();
    let r = app
        .post("/api/v1/auth/webauthn/login/begin", json!({}))
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    assert!(r.headers.contains_key("retry-after"));
    // SAML sign-ins too (outside /api/v1, inside the same layers), before
    // any work: not even the tenant is looked up.
    for (method, path) in [
        (Method::GET, "/saml/acme/login"),
        (Method::POST, "/saml/acme/acs"),
    ] {
        app.request(method, path, None, None)
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    }
    let health = app.get("/healthz").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.json, json!({"status": "shutting_down"}));
    // Offline verification keeps working while draining.
    assert_eq!(
        app.get("/.well-known/jwks.json").await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_caller_request_id_is_kept(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let request = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/auth/me")
        .header("x-request-id", "caller-chosen-id-123")
        .body(Body::empty())
        .unwrap();
    let r = app.send(request).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(r.json["error"]["request_id"], "caller-chosen-id-123");
    assert_eq!(r.headers["x-request-id"], "caller-chosen-id-123");
}
