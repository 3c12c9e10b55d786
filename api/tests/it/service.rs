//! Service routes: service tokens and scopes, the audit writer, RBAC,
//! admin actions and the founders gate (issue 7).

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};

pub const AUDITOR: &str = "auditor-token-0000000001";
pub const OPS: &str = "ops-token-000000000000001";
pub const READER: &str = "reader-token-00000000001";

pub const SERVICES: &[(&str, &str)] = &[
    ("QUEUE_SERVICE_TOKEN_AUDITOR", AUDITOR),
    ("QUEUE_SERVICE_SCOPES_AUDITOR", "audit:write,audit:read"),
    ("QUEUE_SERVICE_TOKEN_OPS", OPS),
    (
        "QUEUE_SERVICE_SCOPES_OPS",
        "admin,internal,rbac:read,rbac:write",
    ),
    ("QUEUE_SERVICE_TOKEN_READER", READER),
    ("QUEUE_SERVICE_SCOPES_READER", "audit:read,rbac:read"),
];

pub async fn service_app(pool: PgPool) -> TestApp {
    TestApp::with(pool, SERVICES).await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn customer_count_needs_the_internal_scope(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    app.catch_up().await;

    let ok = app.get_auth("/api/v1/internal/customers/count", OPS).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.json, json!({"count": 1}));

    // A token without the scope: 403 forbidden.
    for token in [AUDITOR, READER] {
        app.get_auth("/api/v1/internal/customers/count", token)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // A customer's JWT is never accepted on a service route: 403.
    app.get_auth("/api/v1/internal/customers/count", &bearer(&tokens))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // No token, a wrong token, a near-miss token: 401 unauthorized.
    app.get("/api/v1/internal/customers/count")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for token in ["nope", "ops-token-000000000000002", &OPS[..OPS.len() - 1]] {
        app.get_auth("/api/v1/internal/customers/count", token)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn service_routes_answer_404_with_the_flag_off(pool: PgPool) {
    let mut overrides = SERVICES.to_vec();
    overrides.push(("FLAG_QUEUE_V1", "0"));
    let app = TestApp::with(pool, &overrides).await;
    app.get_auth("/api/v1/internal/customers/count", OPS)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}
