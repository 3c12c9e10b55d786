//! JWKS, a real TCP server, metrics and OpenAPI.

use std::future::IntoFuture;

use axum::http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{metrics_show, Passkey, TestApp, AUDIENCE, ISSUER};

/// Verifies an access token the way a caller would: fetch the JWKS, pick the
/// key by `kid`, check signature, issuer, audience and expiry.
pub async fn claims_via_jwks(app: &TestApp, token: &str) -> Value {
    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    verify_with(&jwks.json, token)
}

pub fn verify_with(jwks: &Value, token: &str) -> Value {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = decode_header(token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).expect("kid in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    // The algorithm comes from the published key, never from the token.
    let alg = jwk.common.key_algorithm.expect("alg in the JWK");
    let alg: Algorithm = serde_json::from_value(json!(alg)).unwrap();
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    decode::<Value>(token, &key, &validation).unwrap().claims
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn access_tokens_verify_against_the_served_jwks(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let jwks = app.get("/.well-known/jwks.json").await;
    let key = &jwks.json["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = tokens["access_token"].as_str().unwrap();
    let claims = claims_via_jwks(&app, token).await;
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["sub"], tokens["customer_id"]);
    assert_eq!(claims["sid"], tokens["session_id"]);
    assert_eq!(claims["roles"], json!(["antlers-user"]));
    assert_eq!(claims["amr"], json!(["webauthn"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["jti"].is_string());
    assert_eq!(decode_header(token).unwrap().alg, Algorithm::EdDSA);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_whole_flow_over_a_real_tcp_server(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(
            listener,
            queue_api::app(app.state.clone())
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .into_future(),
    );
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut passkey = Passkey::new();
    let (status, begin) = post(
        "/api/v1/auth/webauthn/register/begin",
        json!({"email": "tcp@example.com", "display_name": "Tcp"}),
    )
    .await;
    assert_eq!(status, 200);
    let credential = passkey.create(&begin["options"]);
    let (status, registered) = post(
        "/api/v1/auth/webauthn/register/complete",
        json!({"challenge_id": begin["challenge_id"], "credential": credential}),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let (status, begin) = post(
        "/api/v1/auth/webauthn/login/begin",
        json!({"email": "tcp@example.com"}),
    )
    .await;
    assert_eq!(status, 200);
    let assertion = passkey.get(&begin["options"]);
    let (status, login) = post(
        "/api/v1/auth/webauthn/login/complete",
        json!({"challenge_id": begin["challenge_id"], "credential": assertion}),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let (status, refreshed) = post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": login["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let jwks: Value = http
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = verify_with(&jwks, refreshed["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], registered["customer_id"]);
    let me = http
        .get(format!("{base}/api/v1/auth/me"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status().as_u16(), 200);
    server.abort();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn metrics_count_requests_per_route_and_logins_by_outcome(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;
    app.login(&mut passkey, "ada@example.com").await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text;
    assert!(text.contains("queue_http_requests_total"), "{text}");
    assert!(
        text.contains("route=\"/api/v1/auth/webauthn/login/complete\""),
        "{text}"
    );
    assert!(
        text.contains("queue_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("queue_logins_total{outcome=\"success\"}"),
        "{text}"
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn openapi_describes_every_contract_route(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc.json["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert!(doc.json["components"]["schemas"]["TokenResponse"].is_object());
    let paths = doc.json["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/auth/webauthn/register/begin", "post"),
        ("/api/v1/auth/webauthn/register/complete", "post"),
        ("/api/v1/auth/webauthn/login/begin", "post"),
        ("/api/v1/auth/webauthn/login/complete", "post"),
        ("/api/v1/auth/credentials", "get"),
        ("/api/v1/auth/credentials/{credential_id}", "patch"),
        ("/api/v1/auth/credentials/{credential_id}", "delete"),
        ("/api/v1/auth/session/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/sessions", "get"),
        ("/api/v1/auth/sessions/{session_id}", "delete"),
        ("/api/v1/auth/me", "get"),
        ("/api/v1/auth/backup-codes", "post"),
        ("/api/v1/auth/backup-codes/redeem", "post"),
        ("/api/v1/auth/email/verification", "post"),
        ("/api/v1/auth/email/verify", "post"),
        ("/.well-known/jwks.json", "get"),
        ("/.well-known/openid-configuration", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/saml/{tenant_slug}/metadata", "get"),
        ("/saml/{tenant_slug}/login", "get"),
        ("/saml/{tenant_slug}/acs", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from /openapi.json"
        );
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn jwt_key_rotation_reaches_running_instances_and_keeps_old_tokens_valid(pool: PgPool) {
    let dir = crate::helpers::TempDir::new();
    let key_file = dir.0.join("jwt_keys");
    let keys = queue_api::auth::jwt::JwtKeySet::generate("first").unwrap();
    std::fs::write(&key_file, keys.to_spec()).unwrap();
    let file = key_file.display().to_string();
    let app = TestApp::with(
        pool.clone(),
        &[("QUEUE_JWT_KEYS", ""), ("QUEUE_JWT_KEYS_FILE", &file)],
    )
    .await;
    assert_eq!(
        app.state.config().jwt_keys_file.as_deref(),
        Some(key_file.as_path())
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reloader = tokio::spawn(queue_api::auth::jwt::run_key_reloader(
        pool.clone(),
        app.state.inner.jwt_keys.clone(),
        key_file.clone(),
        stopped,
    ));
    let mut passkey = Passkey::new();
    let before = app.register(&mut passkey, "ada@example.com").await;

    let kid =
        queue_api::auth::jwt::rotate_key_file(&key_file, 3, queue_api::auth::jwt::JwtAlg::EdDSA)
            .unwrap();
    queue_api::auth::jwt::notify_rotation(&app.state.pool)
        .await
        .unwrap();
    let jwks = crate::helpers::eventually("the rotated key in the JWKS", || async {
        let jwks = app.get("/.well-known/jwks.json").await;
        (jwks.json["keys"].as_array().unwrap().len() == 2).then_some(jwks.json)
    })
    .await;
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(jwks["keys"][1]["kid"], "first");

    // A token signed by the previous key still works; new ones use the new key.
    let me = app
        .get_auth("/api/v1/auth/me", before["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    let after = app.login(&mut passkey, "ada@example.com").await;
    let token = after["access_token"].as_str().unwrap();
    assert_eq!(
        decode_header(token).unwrap().kid.as_deref(),
        Some(kid.as_str())
    );
    verify_with(&jwks, token);
    verify_with(&jwks, before["access_token"].as_str().unwrap());
    stop.send(true).unwrap();
    reloader.await.unwrap();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn readyz_and_metrics_report_degraded_mac_keys(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["keys"], "ok");

    // A failed key reload keeps serving with the last good keys, and says so.
    app.state.store().repo().keys().mark_degraded();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["keys"], "degraded");
    metrics_show(&app, "queue_mac_keys_degraded 1").await;
}
