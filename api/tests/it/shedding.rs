//! Priority load shedding through the real router (issue 10, ADR 1000):
//! requests held in flight by a store write waiting on a table lock the test
//! holds, so the in-flight counts are exact and nothing depends on timing.
//! (A request whose body has not arrived yet no longer counts at all, issue
//! 17: see `hostile::slow_body_clients_do_not_take_the_api_down`.)

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use queue_api::resilience::shedding::Priority;
use serde_json::json;
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::{eventually, metrics_show, Response, TestApp};
use crate::service::{AUDITOR, SERVICES};

/// Event writes wait while this is held (reads go on): `LOCK TABLE events
/// IN SHARE MODE` in an open transaction.
struct Stall(sqlx::Transaction<'static, sqlx::Postgres>);

async fn stall_writes(app: &TestApp) -> Stall {
    // Not something the service role may do: the owner stalls the store.
    let mut tx = app.owner.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    Stall(tx)
}

/// An audit write (CRITICAL) whose append waits on the stalled store: it
/// stays in flight, as one waiting for a connection or the CPU would.
struct Held {
    answer: tokio::task::JoinHandle<StatusCode>,
}

fn hold_audit_write(app: &TestApp) -> Held {
    let body = crate::service::audit_body(&format!("held-{}", uuid::Uuid::new_v4().simple()));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/audit/events")
        .header(header::AUTHORIZATION, format!("Bearer {AUDITOR}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let router = app.router.clone();
    let answer = tokio::spawn(async move { router.oneshot(request).await.unwrap().status() });
    Held { answer }
}

async fn wait_for_critical(app: &TestApp, n: usize) {
    eventually(&format!("{n} CRITICAL requests in flight"), || async {
        (app.state.inner.in_flight.of(Priority::Critical) == n).then_some(())
    })
    .await;
}

fn assert_shed(res: &Response, what: &str) {
    res.assert_error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
    assert_eq!(
        res.headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{what}"
    );
}

async fn audit_log(app: &TestApp) -> Response {
    app.get_auth("/api/v1/audit/events?limit=10", AUDITOR).await
}

/// The test services plus the shedding settings under test.
async fn shedding_app(pool: PgPool, settings: &[(&str, &str)]) -> TestApp {
    let mut all = SERVICES.to_vec();
    all.extend_from_slice(settings);
    TestApp::with(pool, &all).await
}

/// A NORMAL request (`/auth/me` without a token) is admitted: it gets its own
/// answer, 401, not 429.
async fn assert_normal_served(app: &TestApp) {
    app.get("/api/v1/auth/me")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn release(held: Vec<Held>, stall: Stall) {
    stall.0.rollback().await.unwrap();
    for h in held {
        // The store answers again: the write itself succeeds, never 429.
        assert_eq!(h.answer.await.unwrap(), StatusCode::CREATED);
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn low_and_normal_work_waits_while_urgent_work_is_in_flight(pool: PgPool) {
    let app = shedding_app(
        pool,
        &[
            // The overall limit is far away: only the urgent levels decide here.
            ("QUEUE_MAX_IN_FLIGHT", "1000"),
            ("QUEUE_SHED_LOW_PAST_URGENT", "1"),
            ("QUEUE_SHED_NORMAL_PAST_URGENT", "2"),
            // No hold: served again as soon as the urgent work ends.
            ("QUEUE_SHED_HOLD_MS", "0"),
        ],
    )
    .await;

    // Nothing urgent in flight: every priority is served.
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);

    // One CRITICAL request in flight, at the LOW level: LOW is still served.
    let stall = stall_writes(&app).await;
    let mut held = vec![hold_audit_write(&app)];
    wait_for_critical(&app, 1).await;
    let res = audit_log(&app).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);

    // Two: past the LOW level, so LOW waits; NORMAL (its level is 2) is served.
    held.push(hold_audit_write(&app));
    wait_for_critical(&app, 2).await;
    assert_shed(&audit_log(&app).await, "LOW past its urgent level");
    assert_normal_served(&app).await;

    // Three: NORMAL waits too.
    held.push(hold_audit_write(&app));
    wait_for_critical(&app, 3).await;
    assert_shed(
        &app.get("/api/v1/auth/me").await,
        "NORMAL past its urgent level",
    );
    assert_shed(&audit_log(&app).await, "LOW");
    // HIGH and CRITICAL never yield to urgent work, only to the overall limit.
    app.post(
        "/api/v1/auth/webauthn/register/begin",
        json!({"email": "not-an-email", "display_name": "Ada"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": "not-a-token"}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // The urgent work finishes: LOW is served again, and no slot leaked.
    release(held, stall).await;
    assert_eq!(app.state.inner.in_flight.total(), 0);
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);
    metrics_show(
        &app,
        "queue_shed_requests_total{priority=\"low\",rule=\"urgent\"}",
    )
    .await;
    metrics_show(
        &app,
        "queue_shed_requests_total{priority=\"normal\",rule=\"urgent\"}",
    )
    .await;
    // The adaptive LOW limit is published (no CRITICAL window was slow here).
    metrics_show(&app, "queue_shed_low_limit").await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_overall_limit_still_sheds_lowest_first(pool: PgPool) {
    let app = shedding_app(
        pool,
        &[
            // LOW tolerates 1 request in flight, NORMAL 2, HIGH 3, CRITICAL 4;
            // the urgent levels are out of the way.
            ("QUEUE_MAX_IN_FLIGHT", "4"),
            ("QUEUE_SHED_LOW_PAST_URGENT", "100"),
            ("QUEUE_SHED_NORMAL_PAST_URGENT", "100"),
            ("QUEUE_SHED_HOLD_MS", "0"),
        ],
    )
    .await;
    let stall = stall_writes(&app).await;
    let held = vec![hold_audit_write(&app)];
    wait_for_critical(&app, 1).await;
    // Two in flight with this one: past LOW's level, within NORMAL's.
    assert_shed(&audit_log(&app).await, "LOW past 1/4 of the limit");
    assert_normal_served(&app).await;
    release(held, stall).await;
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_level_of_zero_yields_to_any_urgent_request(pool: PgPool) {
    let app = shedding_app(
        pool,
        &[
            ("QUEUE_MAX_IN_FLIGHT", "1000"),
            ("QUEUE_SHED_LOW_PAST_URGENT", "0"),
            ("QUEUE_SHED_HOLD_MS", "0"),
        ],
    )
    .await;
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);
    let stall = stall_writes(&app).await;
    let held = vec![hold_audit_write(&app)];
    wait_for_critical(&app, 1).await;
    assert_shed(&audit_log(&app).await, "LOW with level 0");
    // NORMAL keeps its default level (8).
    assert_normal_served(&app).await;
    release(held, stall).await;
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn low_keeps_yielding_for_the_hold_after_urgent_work_went_past_its_level(pool: PgPool) {
    let app = shedding_app(
        pool,
        &[
            ("QUEUE_MAX_IN_FLIGHT", "1000"),
            ("QUEUE_SHED_LOW_PAST_URGENT", "1"),
            // Longer than the test: the hold cannot run out while it checks.
            ("QUEUE_SHED_HOLD_MS", "60000"),
        ],
    )
    .await;
    let stall = stall_writes(&app).await;
    let mut held = vec![hold_audit_write(&app)];
    wait_for_critical(&app, 1).await;
    // At the level, with no hold started: LOW is served.
    assert_eq!(audit_log(&app).await.status, StatusCode::OK);
    held.push(hold_audit_write(&app));
    wait_for_critical(&app, 2).await;
    assert_shed(&audit_log(&app).await, "LOW past its urgent level");
    release(held, stall).await;
    assert_eq!(app.state.inner.in_flight.total(), 0);
    // Nothing urgent in flight, but the overload was a moment ago: LOW still
    // yields, while NORMAL (never past its level) is served.
    assert_shed(&audit_log(&app).await, "LOW within the hold");
    assert_normal_served(&app).await;
}

/// Every operation of the document runs with a declared priority: sent
/// through the app (unauthenticated, so nothing is written), none answers
/// the 500 the shedding guard gives a route outside the priority groups.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_route_has_a_declared_priority(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app.get("/openapi.json").await.json;
    let mut sent = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET).then(|| json!({}));
            let res = app.request(method.clone(), &uri, body, None).await;
            assert_ne!(
                res.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}: {}",
                res.text
            );
            sent += 1;
        }
    }
    assert!(sent >= 29, "only {sent} operations in the document");
}
