//! Read-your-writes (issue 19): with the projection runners running as in
//! `queue serve`, a read right after a write reflects it — no sleep, no
//! catch-up call — and says so in `X-Queue-Consistency`. With the runners
//! stopped, the read answers within the bound and says it is stale.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::helpers::{bearer, eventually, Passkey, TestApp};
use crate::service::{audit_body, AUDITOR, SERVICES};

/// The read wait of these tests. The contract's bound is 1 s (the default);
/// here it is longer because the test cluster also runs other tests, whose
/// `DROP DATABASE` holds the cluster-wide committed-transaction watermark for
/// seconds on a loaded machine, and no runner can pass it meanwhile.
const READ_WAIT: (&str, &str) = ("QUEUE_READ_WAIT_MS", "30000");

async fn app_with_wait(pool: PgPool) -> TestApp {
    TestApp::with(pool, &[READ_WAIT]).await
}

/// Starts the projection runners as `queue serve` does and waits until each
/// holds its leader lock (as a started instance would); they stop when the
/// returned sender is dropped.
async fn runners(app: &TestApp) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(queue_projections::run_all(
        app.projector.clone(),
        queue_projections::RunnerConfig::default(),
        stopped,
    ));
    eventually("every projection runner to be active", || async {
        let status = queue_projections::status(&app.projector).await.ok()?;
        status.iter().all(|s| s.runner_active).then_some(())
    })
    .await;
    stop
}

fn fresh(response: &crate::helpers::Response) -> &str {
    response
        .headers
        .get("x-queue-consistency")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_sessions_list_shows_the_session_of_the_login_just_made(pool: PgPool) {
    let app = app_with_wait(pool).await;
    let _runners = runners(&app).await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;
    for _ in 0..3 {
        let tokens = app.login(&mut passkey, "ada@example.com").await;
        let list = app
            .get_auth("/api/v1/auth/sessions", &bearer(&tokens))
            .await;
        assert_eq!(list.status, StatusCode::OK, "{}", list.text);
        assert_eq!(fresh(&list), "fresh");
        let current: Vec<&str> = list.json["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["current"] == true)
            .map(|s| s["session_id"].as_str().unwrap())
            .collect();
        assert_eq!(current, [tokens["session_id"].as_str().unwrap()]);
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_passkey_list_shows_a_passkey_just_added(pool: PgPool) {
    let app = app_with_wait(pool).await;
    let _runners = runners(&app).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = bearer(&tokens);
    let begin = app
        .post_auth("/api/v1/auth/webauthn/register/begin", json!({}), &token)
        .await;
    let credential = Passkey::new().create(&begin.json["options"]);
    let done = app
        .post_auth(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential, "name": "phone"}),
            &token,
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.text);
    let list = app.get_auth("/api/v1/auth/credentials", &token).await;
    assert_eq!(fresh(&list), "fresh");
    let ids: Vec<&str> = list.json["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["credential_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&done.json["credential_id"].as_str().unwrap()),
        "{ids:?}"
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn me_shows_a_verified_email_right_after_verification(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = bearer(&tokens);
    let asked = app
        .post_auth("/api/v1/auth/email/verification", json!({}), &token)
        .await;
    assert!(asked.status.is_success(), "{}", asked.text);
    let mail = app.last_mail().await;
    let link_token = mail
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let verified = app
        .post("/api/v1/auth/email/verify", json!({"token": link_token}))
        .await;
    assert!(verified.status.is_success(), "{}", verified.text);
    // `/me` folds the customer's stream: no projection involved.
    let me = app.get_auth("/api/v1/auth/me", &token).await;
    assert_eq!(me.json["email_verified"], true, "{}", me.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_service_reads_back_the_audit_event_it_just_wrote(pool: PgPool) {
    let mut settings = SERVICES.to_vec();
    settings.push(READ_WAIT);
    let app = TestApp::with(pool, &settings).await;
    let _runners = runners(&app).await;
    for n in 0..3 {
        let key = format!("k-{n}");
        let written = app
            .post_auth("/api/v1/audit/events", audit_body(&key), AUDITOR)
            .await;
        assert_eq!(written.status, StatusCode::CREATED, "{}", written.text);
        let page = app
            .get_auth(
                "/api/v1/audit/events?action=founders.gate.check_failed",
                AUDITOR,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_eq!(fresh(&page), "fresh");
        assert_eq!(page.json["events"].as_array().unwrap().len(), n + 1);
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn with_the_projection_stopped_a_read_answers_within_the_bound_and_says_stale(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_READ_WAIT_MS", "300")]).await;
    // No runners: the read table never catches up.
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let started = Instant::now();
    let list = app
        .get_auth("/api/v1/auth/sessions", &bearer(&tokens))
        .await;
    let waited = started.elapsed();
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(fresh(&list), "stale");
    // Bounded (300 ms here; generous for a loaded test machine).
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Once caught up, the same read is fresh at once.
    app.catch_up().await;
    let list = app
        .get_auth("/api/v1/auth/sessions", &bearer(&tokens))
        .await;
    assert_eq!(fresh(&list), "fresh");
    assert_eq!(list.json["sessions"].as_array().unwrap().len(), 1);
}
