//! The mail outbox through the API (ADR 0208): requests answer at once,
//! messages are rows of the outbox delivered by the sender, retries back
//! off, and failures end in the dead-letter state. Delivery over a real
//! SMTP server: cli/tests/it/mail.rs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use queue_api::mail::mailer::{MailError, Mailer, Message};
use queue_api::{AppState, ServiceClock};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{bearer, config, mac_keys, Passkey, RolePools, TempDir, TestApp};

fn mail_files(app: &TestApp) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(&app.mail_dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

async fn outbox_rows(app: &TestApp) -> Vec<(String, String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT kind, state, attempts, last_error FROM mail_outbox ORDER BY created_at, id",
    )
    .fetch_all(&app.state.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_verification_request_is_mailed_from_the_outbox_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    // Signing up mails nothing (the first passkey is no change).
    assert_eq!(app.deliver_mail().await, 0);

    let sent = app
        .post_auth(
            "/api/v1/auth/email/verification",
            json!({}),
            &bearer(&tokens),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert!(
        mail_files(&app).is_empty(),
        "the request itself sends nothing"
    );

    assert_eq!(app.deliver_mail().await, 1);
    assert_eq!(app.deliver_mail().await, 0, "a sent row is not sent again");
    let mails = mail_files(&app);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    let (id,): (uuid::Uuid,) = sqlx::query_as("SELECT id FROM mail_outbox")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert!(
        mail.contains(&format!("Message-ID: <{id}@localhost>")),
        "{mail}"
    );
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("text/html"), "{mail}");
    let token = mail
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    // Neither the event log nor the outbox holds the token.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%') \
              + (SELECT count(*) FROM mail_outbox WHERE row_to_json(mail_outbox)::text LIKE '%' || $1 || '%')",
    )
    .bind(&token[40..])
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    let verified = app
        .post("/api/v1/auth/email/verify", json!({"token": token}))
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.text);
    assert_eq!(
        outbox_rows(&app).await,
        vec![("email_verification".into(), "sent".into(), 1, None)]
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn new_backup_codes_send_a_notice(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let generated = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), &bearer(&tokens))
        .await;
    assert_eq!(generated.status, StatusCode::CREATED, "{}", generated.text);
    assert_eq!(app.deliver_mail().await, 1);
    let mail = app.last_mail().await;
    assert!(mail.contains("Subject: New backup codes"), "{mail}");
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    for code in generated.json["codes"].as_array().unwrap() {
        assert!(
            !mail.contains(code.as_str().unwrap()),
            "no code in the mail"
        );
    }
}

/// Fails as told: `permanent` or transient, the first `fail` sends.
struct FailingMailer {
    fail: usize,
    permanent: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Mailer for FailingMailer {
    fn from(&self) -> &str {
        "Queue <queue@example.com>"
    }

    async fn send(&self, _message: &Message) -> Result<(), MailError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail {
            let reason = format!("refused (call {n})");
            return Err(if self.permanent {
                MailError::permanent(reason)
            } else {
                MailError::transient(reason)
            });
        }
        Ok(())
    }
}

async fn app_with(pool: PgPool, mailer: Arc<FailingMailer>, max_attempts: &str) -> TestApp {
    let tmp = TempDir::new();
    let config = config(
        &tmp.0,
        &[
            ("QUEUE_MAIL_MAX_ATTEMPTS", max_attempts),
            ("QUEUE_MAIL_RETRY_BASE_MS", "50"),
            ("QUEUE_MAIL_RETRY_MAX_MS", "200"),
        ],
    );
    let pools = RolePools::of(&pool).await;
    let state = AppState::with_parts(
        pools.service.clone(),
        config,
        mac_keys(),
        ServiceClock::new(),
        mailer,
    )
    .unwrap();
    TestApp::from_state_with(state, tmp, pools)
}

async fn request_verification(app: &TestApp) {
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let sent = app
        .post_auth(
            "/api/v1/auth/email/verification",
            json!({}),
            &bearer(&tokens),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
}

/// Delivery rounds until `done` holds for the rows (5 s at most).
async fn drive_until(
    app: &TestApp,
    what: &str,
    done: impl Fn(&[(String, String, i32, Option<String>)]) -> bool,
) {
    let reached = queue_testkit::poll::poll_until(Duration::from_secs(5), || async {
        app.deliver_mail().await;
        done(&outbox_rows(app).await).then_some(())
    })
    .await;
    if reached.is_none() {
        panic!("timed out waiting for {what}: {:?}", outbox_rows(app).await);
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn transient_failures_back_off_and_then_deliver(pool: PgPool) {
    let mailer = Arc::new(FailingMailer {
        fail: 3,
        permanent: false,
        calls: AtomicUsize::new(0),
    });
    let app = app_with(pool, mailer.clone(), "10").await;
    request_verification(&app).await;
    app.deliver_mail().await;
    let rows = outbox_rows(&app).await;
    assert_eq!(rows[0].1, "pending");
    assert_eq!(rows[0].2, 1);
    assert_eq!(rows[0].3.as_deref(), Some("refused (call 0)"));
    // Due again after the base delay (then 100, 200, 200 ms: the unit test
    // of `backoff`), not at once.
    let delay_ms: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - last_error_at)::float8 * 1000 FROM mail_outbox",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    assert!((delay_ms - 50.0).abs() < 0.01, "{delay_ms}");
    drive_until(&app, "delivery", |rows| rows[0].1 == "sent").await;
    assert_eq!(mailer.calls.load(Ordering::SeqCst), 4);
    assert_eq!(outbox_rows(&app).await[0].2, 4);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_last_attempt_dead_letters(pool: PgPool) {
    let mailer = Arc::new(FailingMailer {
        fail: usize::MAX,
        permanent: false,
        calls: AtomicUsize::new(0),
    });
    let app = app_with(pool, mailer.clone(), "3").await;
    request_verification(&app).await;
    drive_until(&app, "the dead-letter state", |rows| rows[0].1 == "dead").await;
    assert_eq!(mailer.calls.load(Ordering::SeqCst), 3);
    let status = queue_projections::outbox::status(&app.projector)
        .await
        .unwrap();
    assert_eq!((status.pending, status.sent, status.dead), (0, 0, 1));
    assert_eq!(status.dead_letters[0].attempts, 3);
    assert_eq!(
        status.dead_letters[0].last_error.as_deref(),
        Some("refused (call 2)")
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_permanent_failure_dead_letters_at_once(pool: PgPool) {
    let mailer = Arc::new(FailingMailer {
        fail: usize::MAX,
        permanent: true,
        calls: AtomicUsize::new(0),
    });
    let app = app_with(pool, mailer.clone(), "10").await;
    request_verification(&app).await;
    app.deliver_mail().await;
    let rows = outbox_rows(&app).await;
    assert_eq!(rows[0].1, "dead");
    assert_eq!(rows[0].2, 1);
    assert_eq!(mailer.calls.load(Ordering::SeqCst), 1);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn adding_and_removing_a_passkey_send_notices(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = bearer(&tokens);
    let begin = app
        .post_auth("/api/v1/auth/webauthn/register/begin", json!({}), &token)
        .await;
    let credential = Passkey::new().create(&begin.json["options"]);
    let done = app
        .post_auth(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential, "name": "phone <b>"}),
            &token,
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.text);
    assert_eq!(app.deliver_mail().await, 1);
    let added = app.last_mail().await;
    assert!(added.contains("Subject: A passkey was added"), "{added}");
    assert!(
        added.contains("\u{201c}phone <b>\u{201d}"),
        "text as is: {added}"
    );
    assert!(added.contains("phone &lt;b&gt;"), "HTML escaped: {added}");

    let id = done.json["credential_id"].as_str().unwrap();
    let deleted = app
        .request(
            axum::http::Method::DELETE,
            &format!("/api/v1/auth/credentials/{id}"),
            None,
            Some(tokens["access_token"].as_str().unwrap()),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(app.deliver_mail().await, 1);
    let removed = app.last_mail().await;
    assert!(
        removed.contains("Subject: A passkey was removed"),
        "{removed}"
    );
    assert!(removed.contains("phone"), "{removed}");
    let kinds: Vec<String> = outbox_rows(&app).await.into_iter().map(|r| r.0).collect();
    assert_eq!(kinds, vec!["passkey_added", "passkey_removed"]);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn events_that_are_stale_when_the_outbox_reaches_them_are_not_mailed(pool: PgPool) {
    // A log whose events are two days old when the outbox first runs (a new
    // or extracted database, a runner stopped for days): an expired link and
    // an old notice are not worth a message.
    let app = TestApp::new(pool).await;
    app.clock().advance(-2 * 86_400);
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    for path in [
        "/api/v1/auth/backup-codes",
        "/api/v1/auth/email/verification",
    ] {
        let done = app.post_auth(path, json!({}), &bearer(&tokens)).await;
        assert!(done.status.is_success(), "{path}: {}", done.text);
    }
    app.clock().advance(2 * 86_400);
    assert_eq!(app.deliver_mail().await, 0);
    assert!(outbox_rows(&app).await.is_empty());
    let status = queue_projections::outbox::status(&app.projector)
        .await
        .unwrap();
    assert_eq!(status.events_behind, 0, "the outbox read past them");

    // What happens now is mailed.
    let tokens = app.login(&mut passkey, "ada@example.com").await;
    let done = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), &bearer(&tokens))
        .await;
    assert!(done.status.is_success(), "{}", done.text);
    assert_eq!(app.deliver_mail().await, 1);
    assert_eq!(
        outbox_rows(&app).await,
        vec![("backup_codes_regenerated".into(), "sent".into(), 1, None)]
    );
}
