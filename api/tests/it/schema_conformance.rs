//! What schemathesis (scripts/schemathesis) found where /openapi.json and the
//! server disagreed; the contract decided which side was wrong (ADR 1021).

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};
use crate::service::{service_app, AUDITOR};

async fn raw_post(
    app: &TestApp,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> crate::helpers::Response {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    app.send(builder.body(Body::from(body.to_owned())).unwrap())
        .await
}

/// serde fills a struct from a JSON array too; the contract's bodies are
/// objects. `[null, null]` with a Bearer token used to start an
/// add-a-passkey ceremony (200).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_body_that_is_not_an_object_is_invalid_request(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let token = bearer(&tokens);

    let r = raw_post(
        &app,
        "/api/v1/auth/webauthn/register/begin",
        "[null, null]",
        Some(&token),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.text.contains("JSON object"), "{}", r.text);
    for (path, body) in [
        ("/api/v1/auth/webauthn/login/begin", "[]"),
        ("/api/v1/auth/webauthn/login/begin", "null"),
        ("/api/v1/auth/session/refresh", r#"["a-refresh-token"]"#),
        (
            "/api/v1/auth/backup-codes/redeem",
            r#"["ada@example.com", "code"]"#,
        ),
    ] {
        let r = raw_post(&app, path, body, None).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }

    // Objects still pass, leading whitespace and all.
    let r = raw_post(
        &app,
        "/api/v1/auth/webauthn/register/begin",
        " \n{}",
        Some(&token),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = raw_post(&app, "/api/v1/auth/webauthn/login/begin", "{}", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_audit_write_as_an_array_is_refused_and_records_nothing(pool: PgPool) {
    let app = service_app(pool).await;
    let before = app.event_count().await;
    let r = raw_post(
        &app,
        "/api/v1/audit/events",
        r#"["svc", "founders.gate.check_failed", "customer:x", null, null, null, {}, "key-1"]"#,
        Some(AUDITOR),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, before);
}

fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} missing");
    op
}

fn parameter<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("parameter {name} missing"))
}

/// The audit filters and the history time were documented as required path
/// parameters; they are optional query parameters.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn openapi_query_parameters_are_optional_and_in_the_query(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app.get("/openapi.json").await.json;

    let list = operation(&doc, "/api/v1/audit/events", "get");
    for name in ["customer_id", "action", "since", "until", "limit", "cursor"] {
        let p = parameter(list, name);
        assert_eq!(p["in"], "query", "{name}: {p}");
        assert_ne!(p["required"], true, "{name}: {p}");
    }
    let limit = &parameter(list, "limit")["schema"];
    assert_eq!(limit["minimum"], 1, "{limit}");
    assert_eq!(limit["maximum"], 1000, "{limit}");

    let history = operation(&doc, "/api/v1/admin/customers/{customer_id}/history", "get");
    let at = parameter(history, "at");
    assert_eq!(at["in"], "query", "{at}");
    assert_ne!(at["required"], true, "{at}");
}

/// Ids in paths are UUIDs: documenting them as any string made every
/// generated example a 400/404.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn openapi_path_ids_are_uuids(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app.get("/openapi.json").await.json;
    for (path, method, name) in [
        (
            "/api/v1/auth/credentials/{credential_id}",
            "patch",
            "credential_id",
        ),
        (
            "/api/v1/auth/credentials/{credential_id}",
            "delete",
            "credential_id",
        ),
        ("/api/v1/auth/sessions/{session_id}", "delete", "session_id"),
        ("/api/v1/rbac/grants/{grant_id}", "delete", "grant_id"),
        (
            "/api/v1/rbac/customers/{customer_id}/roles",
            "get",
            "customer_id",
        ),
        (
            "/api/v1/admin/customers/{customer_id}/suspend",
            "post",
            "customer_id",
        ),
        (
            "/api/v1/admin/customers/{customer_id}/reinstate",
            "post",
            "customer_id",
        ),
        (
            "/api/v1/admin/customers/{customer_id}/history",
            "get",
            "customer_id",
        ),
    ] {
        let p = parameter(operation(&doc, path, method), name);
        assert_eq!(p["in"], "path", "{method} {path}: {p}");
        assert_eq!(p["schema"]["format"], "uuid", "{method} {path}: {p}");
    }
}

/// An audit query with the documented parameters answers 200, and one out
/// of the documented range 400.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn audit_query_parameters_work_as_documented(pool: PgPool) {
    let app = service_app(pool).await;
    let r = app
        .get_auth(
            "/api/v1/audit/events?limit=1000&action=customer.registered",
            AUDITOR,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .get_auth("/api/v1/audit/events?limit=1001", AUDITOR)
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
}

/// Shedding, the breaker and the body limit answer on every route, so every
/// /api operation documents 429 and 503 (with Retry-After), and every one
/// with a body 400 and 413, all with the error envelope.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_api_operation_documents_the_shared_error_responses(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app.get("/openapi.json").await.json;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            let mut expected = vec!["429", "503"];
            if op.get("requestBody").is_some() {
                expected.extend(["400", "413"]);
            }
            for status in expected {
                let response = &responses[status];
                assert!(
                    response["content"]["application/json"]["schema"].is_object(),
                    "{method} {path}: {status} missing or without a body: {response}"
                );
                if status == "429" || status == "503" {
                    assert!(
                        response["headers"]["Retry-After"].is_object(),
                        "{method} {path}: {status} lacks Retry-After"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} operations");
}
