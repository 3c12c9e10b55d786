//! A JWT key file that turns unreadable leaves the last good keys in use and
//! says so in /readyz and /metrics; a good file ends the degraded spell.

use axum::http::StatusCode;
use sqlx::PgPool;

use crate::helpers::{eventually, metrics_show, Passkey, TempDir, TestApp};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_failed_jwt_key_reload_keeps_the_last_good_keys_and_reports_degraded(pool: PgPool) {
    let dir = TempDir::new();
    let key_file = dir.0.join("jwt_keys");
    let keys = queue_api::auth::jwt::JwtKeySet::generate("first").unwrap();
    std::fs::write(&key_file, keys.to_spec()).unwrap();
    let file = key_file.display().to_string();
    let app = TestApp::with(
        pool.clone(),
        &[("QUEUE_JWT_KEYS", ""), ("QUEUE_JWT_KEYS_FILE", &file)],
    )
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reloader = tokio::spawn(queue_api::auth::jwt::run_key_reloader(
        pool.clone(),
        app.state.inner.jwt_keys.clone(),
        key_file.clone(),
        stopped,
    ));
    let ready = app.get("/readyz").await;
    assert_eq!(ready.json["keys"], "ok");
    assert_eq!(ready.json["key_sets"]["jwt"], "ok");

    // Break the file and announce it. The listener may not have subscribed
    // yet, so the announcement is repeated until the reload shows.
    std::fs::write(&key_file, "first=not-a-key").unwrap();
    eventually("readyz to report degraded JWT keys", || async {
        queue_api::auth::jwt::notify_rotation(&app.state.pool)
            .await
            .unwrap();
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
        (ready.json["key_sets"]["jwt"] == "degraded" && ready.json["keys"] == "degraded")
            .then_some(())
    })
    .await;
    metrics_show(&app, "queue_jwt_keys_degraded 1").await;
    // Logins go on, signed with the last good key; the JWKS still serves it.
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(token).unwrap().kid.as_deref(),
        Some("first")
    );
    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.json["keys"][0]["kid"], "first");

    // A good file (a rotation) ends the degraded spell.
    std::fs::write(&key_file, keys.to_spec()).unwrap();
    let kid =
        queue_api::auth::jwt::rotate_key_file(&key_file, 3, queue_api::auth::jwt::JwtAlg::EdDSA)
            .unwrap();
    queue_api::auth::jwt::notify_rotation(&app.state.pool)
        .await
        .unwrap();
    eventually("readyz to report the JWT keys ok again", || async {
        let ready = app.get("/readyz").await;
        (ready.json["key_sets"]["jwt"] == "ok").then_some(())
    })
    .await;
    assert_eq!(app.state.inner.jwt_keys.get().current().kid, kid);
    metrics_show(&app, "queue_jwt_keys_degraded 0").await;
    stop.send(true).unwrap();
    reloader.await.unwrap();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_failed_checkpoint_key_reload_is_reported(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let signer = queue_eventstore::CheckpointSigner::from_seed("queue.test/ledger", [7u8; 32]);
    let shared = queue_eventstore::SharedCheckpointSigner::new(signer.unwrap());
    app.state
        .inner
        .checkpoint_signer
        .set(shared.clone())
        .unwrap();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.json["key_sets"]["checkpoint"], "ok");

    // What the reloader does when the key file is unusable.
    let dir = TempDir::new();
    let file = dir.0.join("checkpoint.key");
    std::fs::write(&file, "PRIVATE+KEY+garbage").unwrap();
    assert!(!queue_eventstore::rotation::reload_checkpoint_signer(
        &shared, &file
    ));
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["key_sets"]["checkpoint"], "degraded");
    assert_eq!(ready.json["keys"], "degraded");
    metrics_show(&app, "queue_checkpoint_keys_degraded 1").await;
}
