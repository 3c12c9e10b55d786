//! Fail-closed: with the database unreachable, login/complete,
//! register/complete and refresh answer 503 with Retry-After; JWKS keeps
//! being served; when the database is back, everything works again.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use queue_testkit::proxy::Proxy;

use crate::helpers::{Passkey, TempDir, TestApp};

/// An app whose pool goes through a proxy that the test can cut.
async fn proxied_app(pool: &PgPool) -> (Proxy, TestApp) {
    proxied_app_with(pool, &[]).await
}

async fn proxied_app_with(pool: &PgPool, overrides: &[(&str, &str)]) -> (Proxy, TestApp) {
    // The service role's connection, through the proxy (ADR 0212).
    let pools = crate::helpers::RolePools::of(pool).await;
    let options = (*pools.service.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = Proxy::start(target).await;
    let proxied = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.host("127.0.0.1").port(proxy.port))
        .await
        .unwrap();
    let tmp = TempDir::new();
    let config = crate::helpers::config(&tmp.0, overrides);
    let state = queue_api::AppState::with_parts(
        proxied,
        config,
        crate::helpers::mac_keys(),
        queue_api::ServiceClock::new(),
        Arc::new(queue_api::mail::mailer::LogMailer::new(tmp.0.clone())),
    )
    .unwrap();
    (proxy, TestApp::from_state_with(state, tmp, pools))
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn store_outage_answers_503_then_recovers(pool: PgPool) {
    let (proxy, app) = proxied_app(&pool).await;

    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let login_begin = app.login_begin(Some("ada@example.com")).await;
    let assertion = passkey.get(&login_begin["options"]);
    let register_begin = app
        .post(
            "/api/v1/auth/webauthn/register/begin",
            json!({"email": "bob@example.com", "display_name": "Bob"}),
        )
        .await;
    let credential = Passkey::new().create(&register_begin.json["options"]);

    proxy.cut();
    let login = app
        .login_complete(&login_begin["challenge_id"], assertion)
        .await;
    login.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(login.headers.contains_key("retry-after"));
    let register = app
        .post(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": register_begin.json["challenge_id"], "credential": credential}),
        )
        .await;
    register.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(register.headers.contains_key("retry-after"));
    let refresh = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    refresh.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(refresh.headers.contains_key("retry-after"));
    // Offline verification keeps working: the JWKS and the discovery
    // document are served from memory.
    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let discovery = app.get("/.well-known/openid-configuration").await;
    assert_eq!(discovery.status, StatusCode::OK);
    assert_eq!(
        app.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.restore();
    let refresh = crate::helpers::eventually("refresh after recovery", || async {
        let r = app
            .post(
                "/api/v1/auth/session/refresh",
                json!({"refresh_token": tokens["refresh_token"]}),
            )
            .await;
        (r.status != StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert_eq!(refresh.status, StatusCode::OK, "{}", refresh.text);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.login(&mut passkey, "ada@example.com").await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_breaker_opens_after_five_failures_and_probes_after_30s(pool: PgPool) {
    let (proxy, app) = proxied_app(&pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let refresh = || async {
        app.post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await
    };
    proxy.cut();
    for _ in 0..5 {
        refresh()
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    // Open: refused without trying the store, with the time left as Retry-After.
    let refused = refresh().await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        app.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.get("/.well-known/jwks.json").await.status,
        StatusCode::OK
    );

    // The store is back, but the breaker stays open until the probe time.
    proxy.restore();
    refresh()
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    app.clock().advance(31);
    let probe = crate::helpers::eventually("a successful probe", || async {
        let r = refresh().await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            // A probe that met a stale connection re-opens the breaker.
            app.clock().advance(31);
            return None;
        }
        Some(r)
    })
    .await;
    assert_eq!(probe.status, StatusCode::OK, "{}", probe.text);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_audit_writer_answers_503_in_an_outage_and_the_retry_lands_once(pool: PgPool) {
    use crate::service::{AUDITOR, SERVICES};
    let (proxy, app) = proxied_app_with(&pool, SERVICES).await;
    let body = json!({"actor": "ops", "action": "billing.refund", "target": "invoice:1",
                      "idempotency_key": "refund-1"});
    proxy.cut();
    let down = app
        .post_auth("/api/v1/audit/events", body.clone(), AUDITOR)
        .await;
    down.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(down.headers.contains_key("retry-after"));

    proxy.restore();
    let first = crate::helpers::eventually("audit write after recovery", || async {
        let r = app
            .post_auth("/api/v1/audit/events", body.clone(), AUDITOR)
            .await;
        (r.status != StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert!(
        first.status == StatusCode::CREATED || first.status == StatusCode::OK,
        "{}",
        first.text
    );
    let again = app.post_auth("/api/v1/audit/events", body, AUDITOR).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Audit'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 1);
}
