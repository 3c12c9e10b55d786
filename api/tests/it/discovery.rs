//! JWT algorithms (EdDSA, ES256, RS256) through the JWKS, and
//! `/.well-known/openid-configuration`.

use axum::http::StatusCode;
use jsonwebtoken::decode_header;
use queue_api::auth::jwt::{JwtAlg, JwtKey, JwtKeySet};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{Passkey, TestApp, AUDIENCE, ISSUER};
use crate::operations::claims_via_jwks;

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn tokens_of_every_algorithm_verify_against_the_served_jwks(pool: PgPool) {
    for alg in JwtAlg::ALL {
        let spec = JwtKeySet::generate_with("only", alg).unwrap().to_spec();
        let app = TestApp::with(pool.clone(), &[("QUEUE_JWT_KEYS", &spec)]).await;
        let jwks = app.get("/.well-known/jwks.json").await;
        assert_eq!(jwks.status, StatusCode::OK);
        let key = &jwks.json["keys"][0];
        assert_eq!(key["alg"], alg.as_str());
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], "only");
        match alg {
            JwtAlg::EdDSA => {
                assert_eq!(
                    (&key["kty"], &key["crv"]),
                    (&json!("OKP"), &json!("Ed25519"))
                );
                assert!(key["x"].is_string() && key.get("y").is_none());
            }
            JwtAlg::ES256 => {
                assert_eq!((&key["kty"], &key["crv"]), (&json!("EC"), &json!("P-256")));
                assert!(key["x"].is_string() && key["y"].is_string());
            }
            JwtAlg::RS256 => {
                assert_eq!(key["kty"], "RSA");
                assert!(key["n"].is_string() && key["e"] == "AQAB");
                assert!(key.get("d").is_none());
            }
        }
        let email = format!("{}@example.com", alg.as_str().to_lowercase());
        let tokens = app.register(&mut Passkey::new(), &email).await;
        let token = tokens["access_token"].as_str().unwrap();
        let header = decode_header(token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg.as_str());
        assert_eq!(header.kid.as_deref(), Some("only"));
        let claims = claims_via_jwks(&app, token).await;
        assert_eq!(claims["sub"], tokens["customer_id"]);
        // Queue itself accepts its token on a customer route.
        let me = app.get_auth("/api/v1/auth/me", token).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn discovery_names_the_issuer_the_jwks_and_every_published_algorithm(pool: PgPool) {
    // A migration half done: RS256 signs, the EdDSA and ES256 keys still verify.
    let keys = JwtKeySet::generate_with("ed", JwtAlg::EdDSA)
        .unwrap()
        .rotated(JwtKey::generate("ec", JwtAlg::ES256).unwrap())
        .rotated(JwtKey::generate("rsa", JwtAlg::RS256).unwrap());
    let spec = keys.to_spec();
    let app = TestApp::with(pool.clone(), &[("QUEUE_JWT_KEYS", &spec)]).await;

    let doc = app.get("/.well-known/openid-configuration").await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    assert_eq!(
        doc.headers.get("cache-control").unwrap(),
        queue_api::http::discovery::CACHE_CONTROL
    );
    assert_eq!(doc.json["issuer"], ISSUER);
    assert_eq!(
        doc.json["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json")
    );
    assert_eq!(
        doc.json["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256", "EdDSA"])
    );
    assert_eq!(doc.json["subject_types_supported"], json!(["public"]));
    assert_eq!(
        doc.json["queue_refresh_endpoint"],
        format!("{ISSUER}/api/v1/auth/session/refresh")
    );
    assert_eq!(
        doc.json["queue_openapi_uri"],
        format!("{ISSUER}/openapi.json")
    );
    // No OpenID Provider endpoint is claimed: Queue has none.
    for absent in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
    ] {
        assert!(doc.json.get(absent).is_none(), "{absent}: {}", doc.text);
    }
    // Every endpoint named is one this router serves (a POST route answers
    // a GET with 405, not 404).
    for (name, url) in doc.json.as_object().unwrap() {
        let Some(path) = url
            .as_str()
            .and_then(|u| u.strip_prefix(ISSUER))
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        let status = app.get(path).await.status;
        assert_ne!(
            status,
            StatusCode::NOT_FOUND,
            "{name}: {path} is not a route"
        );
    }

    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(
        jwks.headers.get("cache-control").unwrap(),
        queue_api::http::discovery::CACHE_CONTROL
    );
    let kty: Vec<_> = jwks.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].clone(), k["kty"].clone(), k["alg"].clone()))
        .collect();
    assert_eq!(
        kty,
        vec![
            (json!("rsa"), json!("RSA"), json!("RS256")),
            (json!("ec"), json!("EC"), json!("ES256")),
            (json!("ed"), json!("OKP"), json!("EdDSA")),
        ]
    );

    // The new key signs; a token of every published key verifies.
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(decode_header(token).unwrap().kid.as_deref(), Some("rsa"));
    claims_via_jwks(&app, token).await;
    let now = chrono::Utc::now().timestamp();
    for kid in ["ec", "ed"] {
        let older = JwtKeySet::parse(&spec)
            .unwrap()
            .rotated(keys.find(kid).unwrap().clone());
        let claims = queue_api::auth::jwt::Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "someone".into(),
            sid: "s".into(),
            iat: now,
            exp: now + 900,
            jti: "j".into(),
            roles: vec![],
            amr: vec!["webauthn".into()],
            tid: "e02b51ee-91ce-59b2-8ff6-b3ef33a10a99".into(),
            auth_time: None,
        };
        let old_token = queue_api::auth::jwt::mint(&older, &claims).unwrap();
        assert_eq!(claims_via_jwks(&app, &old_token).await["sub"], "someone");
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn discovery_lists_only_routes_that_are_served(pool: PgPool) {
    // FLAG_QUEUE_V1 off: the customer routes answer 404, so none is named.
    let app = TestApp::with(pool.clone(), &[("FLAG_QUEUE_V1", "0")]).await;
    let doc = app.get("/.well-known/openid-configuration").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.json.get("queue_refresh_endpoint").is_none(),
        "{}",
        doc.text
    );
    assert!(doc.json["jwks_uri"].is_string());

    // An issuer that is not a URL cannot be discovered from.
    let app = TestApp::with(pool, &[("QUEUE_ISSUER", "queue-issuer")]).await;
    app.get("/.well-known/openid-configuration")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get("/.well-known/jwks.json").await.status,
        StatusCode::OK
    );
}
