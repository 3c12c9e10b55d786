//! Every COSE algorithm real authenticators use (ES256, EdDSA, ES384,
//! RS256) with every attestation format the contract accepts (`none`,
//! `packed` self, `packed` x5c), through the real router: register, then
//! log in by email and discoverably. And the ways an assertion or an
//! attestation must be refused, for each algorithm (ADR 0206).

use axum::http::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{bearer, TestApp, ORIGIN, RP_ID};
use crate::soft::{Alg, Format, SoftAuthenticator, Tamper, AAGUID, AT, BS, UP, UV};

fn email(alg: Alg, format: Format) -> String {
    format!("{alg:?}-{format:?}@example.com").to_lowercase()
}

async fn register_complete(
    app: &TestApp,
    begin: &Value,
    credential: Value,
) -> crate::helpers::Response {
    app.post(
        "/api/v1/auth/webauthn/register/complete",
        json!({"challenge_id": begin["challenge_id"], "credential": credential, "name": "key"}),
    )
    .await
}

/// Registers a new customer with this authenticator; returns the tokens.
async fn register(app: &TestApp, soft: &mut SoftAuthenticator, email: &str) -> Value {
    let begin = app.register_begin(email).await;
    let credential = soft.create(&begin["options"]);
    let done = register_complete(app, &begin, credential).await;
    assert_eq!(
        done.status,
        StatusCode::CREATED,
        "{:?}/{:?}: {}",
        soft.alg,
        soft.format,
        done.text
    );
    done.json
}

async fn stored_passkey(app: &TestApp, credential_id: &Value) -> (Value, Option<uuid::Uuid>, i64) {
    app.catch_up().await;
    sqlx::query_as::<_, (Value, Option<uuid::Uuid>, i64)>(
        "SELECT passkey, aaguid, sign_count FROM queue_webauthn_credentials WHERE credential_id = $1::uuid",
    )
    .bind(credential_id.as_str().unwrap())
    .fetch_one(&app.state.pool)
    .await
    .unwrap()
}

async fn every_format_registers_and_logs_in(pool: PgPool, alg: Alg) {
    let app = TestApp::new(pool).await;
    for format in Format::ALL {
        let email = email(alg, format);
        let mut soft = SoftAuthenticator::new(alg, format, RP_ID, ORIGIN);
        let registered = register(&app, &mut soft, &email).await;
        let customer = registered["customer_id"].clone();

        // Stored in webauthn-rs's own form, with the format and AAGUID.
        let (passkey, aaguid, _) = stored_passkey(&app, &registered["credential_id"]).await;
        let expected_type = match alg {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EDDSA",
            Alg::Es384 => "ES384",
            Alg::Rs256 => "RS256",
        };
        assert_eq!(passkey["cred"]["cred"]["type_"], expected_type, "{passkey}");
        // The AAGUID counts only when a certificate attests it (as
        // webauthn-rs-core reports it).
        let (expected_format, expected_aaguid) = match format {
            Format::None => ("none", None),
            Format::PackedSelf => ("packed", None),
            Format::PackedX5c => ("packed", Some(uuid::Uuid::from_bytes(AAGUID))),
        };
        assert_eq!(
            passkey["cred"]["attestation_format"], expected_format,
            "{passkey}"
        );
        assert_eq!(aaguid, expected_aaguid, "{alg:?}/{format:?}");

        // By email, then discoverably; the counter follows the authenticator.
        for login_email in [Some(email.as_str()), None] {
            let login = app
                .login_soft(&mut soft, login_email, &Tamper::default())
                .await;
            assert_eq!(
                login.status,
                StatusCode::OK,
                "{alg:?}/{format:?}: {}",
                login.text
            );
            assert_eq!(login.json["customer_id"], customer);
            let me = app.get_auth("/api/v1/auth/me", &bearer(&login.json)).await;
            assert_eq!(me.json["email"], email.as_str());
        }
        let (_, _, sign_count) = stored_passkey(&app, &registered["credential_id"]).await;
        assert_eq!(sign_count, 2, "{alg:?}/{format:?}");
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn es256_registers_and_logs_in_with_every_attestation_format(pool: PgPool) {
    every_format_registers_and_logs_in(pool, Alg::Es256).await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn eddsa_registers_and_logs_in_with_every_attestation_format(pool: PgPool) {
    every_format_registers_and_logs_in(pool, Alg::EdDsa).await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn es384_registers_and_logs_in_with_every_attestation_format(pool: PgPool) {
    every_format_registers_and_logs_in(pool, Alg::Es384).await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rs256_registers_and_logs_in_with_every_attestation_format(pool: PgPool) {
    every_format_registers_and_logs_in(pool, Alg::Rs256).await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_eddsa_passkey_is_added_to_a_signed_in_customer(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut first = SoftAuthenticator::new(Alg::Es256, Format::None, RP_ID, ORIGIN);
    let tokens = register(&app, &mut first, "ada@example.com").await;
    let begin = app
        .post_auth(
            "/api/v1/auth/webauthn/register/begin",
            json!({}),
            &bearer(&tokens),
        )
        .await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let mut second = SoftAuthenticator::new(Alg::EdDsa, Format::PackedSelf, RP_ID, ORIGIN);
    let credential = second.create(&begin.json["options"]);
    let added = app
        .post_auth(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
            &bearer(&tokens),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let login = app
        .login_soft(&mut second, Some("ada@example.com"), &Tamper::default())
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.json["customer_id"], tokens["customer_id"]);
}

/// Each wrong assertion is refused with 401 `webauthn_failed` and writes
/// nothing; a counter that did not increase is also audited; a correct
/// assertion afterwards still logs in.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn wrong_assertions_are_refused_for_every_algorithm(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    for alg in Alg::ALL {
        let email = email(alg, Format::PackedSelf);
        let mut soft = SoftAuthenticator::new(alg, Format::PackedSelf, RP_ID, ORIGIN);
        register(&app, &mut soft, &email).await;
        let cases = Tamper::wrong_assertions();
        for (what, tamper) in cases {
            let before = app.event_count().await;
            let refused = app.login_soft(&mut soft, Some(&email), &tamper).await;
            assert_eq!(
                refused.status,
                StatusCode::UNAUTHORIZED,
                "{alg:?} {what}: {}",
                refused.text
            );
            refused.assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
            assert_eq!(app.event_count().await, before, "{alg:?} {what}");
        }

        // A good login moves the stored counter to the authenticator's.
        let ok = app
            .login_soft(&mut soft, Some(&email), &Tamper::default())
            .await;
        assert_eq!(ok.status, StatusCode::OK, "{alg:?}: {}", ok.text);
        let counter = soft.credentials[0].counter;
        // The same counter again (a clone): refused and audited.
        let before = app.event_count().await;
        let cloned = Tamper {
            counter: Some(counter),
            ..Tamper::default()
        };
        let refused = app.login_soft(&mut soft, Some(&email), &cloned).await;
        refused.assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
        assert_eq!(
            app.event_count().await,
            before + 1,
            "{alg:?}: the audit event"
        );
        let audited: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Audit' \
             AND payload->'AuditRecorded'->>'customer_id' = $1",
        )
        .bind(ok.json["customer_id"].as_str().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(audited, 1, "{alg:?}");

        let again = app
            .login_soft(&mut soft, Some(&email), &Tamper::default())
            .await;
        assert_eq!(again.status, StatusCode::OK, "{alg:?}: {}", again.text);
    }
}

/// Each wrong registration is refused with 401 `webauthn_failed` and
/// creates nobody, for every algorithm (for EdDSA this also pins that
/// webauthn-rs-core runs these checks before it gives up on the key).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn wrong_registrations_are_refused_for_every_algorithm(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for alg in Alg::ALL {
        let cases = [
            (
                "wrong rpId hash",
                Format::None,
                Tamper {
                    rp_id: Some("evil.example".into()),
                    ..Tamper::default()
                },
            ),
            (
                "UP missing",
                Format::None,
                Tamper {
                    flags: Some(UV | AT),
                    ..Tamper::default()
                },
            ),
            (
                "UV missing",
                Format::PackedSelf,
                Tamper {
                    flags: Some(UP | AT),
                    ..Tamper::default()
                },
            ),
            (
                "crossOrigin true",
                Format::None,
                Tamper {
                    cross_origin: true,
                    ..Tamper::default()
                },
            ),
            (
                "bad self attestation",
                Format::PackedSelf,
                Tamper {
                    bad_signature: true,
                    ..Tamper::default()
                },
            ),
            (
                "bad x5c attestation",
                Format::PackedX5c,
                Tamper {
                    bad_signature: true,
                    ..Tamper::default()
                },
            ),
            (
                "backed up but not backup eligible",
                Format::None,
                Tamper {
                    flags: Some(UP | UV | AT | BS),
                    ..Tamper::default()
                },
            ),
        ];
        for (what, format, tamper) in cases {
            let email = format!("{alg:?}-refused@example.com").to_lowercase();
            let mut soft = SoftAuthenticator::new(alg, format, RP_ID, ORIGIN);
            let before = app.event_count().await;
            let begin = app.register_begin(&email).await;
            let credential = soft.create_with(&begin["options"], &tamper);
            let refused = register_complete(&app, &begin, credential).await;
            assert_eq!(
                refused.status,
                StatusCode::UNAUTHORIZED,
                "{alg:?} {what}: {}",
                refused.text
            );
            refused.assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
            assert_eq!(app.event_count().await, before, "{alg:?} {what}");
        }
    }
}

/// A packed self-attestation must be signed with the credential's own
/// algorithm: an EdDSA key whose statement claims ES256 is refused.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_self_attestation_with_another_alg_is_refused(pool: PgPool) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_cbor_2::Value as Cbor;

    let app = TestApp::new(pool).await;
    let begin = app.register_begin("ada@example.com").await;
    let mut soft = SoftAuthenticator::new(Alg::EdDsa, Format::PackedSelf, RP_ID, ORIGIN);
    let mut credential = soft.create(&begin["options"]);
    let object = URL_SAFE_NO_PAD
        .decode(
            credential["response"]["attestationObject"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let Cbor::Map(mut object) = serde_cbor_2::from_slice::<Cbor>(&object).unwrap() else {
        panic!("not a map")
    };
    let Some(Cbor::Map(statement)) = object.get_mut(&Cbor::Text("attStmt".into())) else {
        panic!("no attStmt")
    };
    statement.insert(Cbor::Text("alg".into()), Cbor::Integer(-7));
    credential["response"]["attestationObject"] =
        json!(URL_SAFE_NO_PAD.encode(serde_cbor_2::to_vec(&Cbor::Map(object)).unwrap()));
    register_complete(&app, &begin, credential)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
}

/// A synced passkey (backup eligible and backed up) of every algorithm
/// registers, logs in and is listed as such.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn synced_passkeys_of_every_algorithm_register_and_log_in(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for alg in Alg::ALL {
        let email = format!("{alg:?}-synced@example.com").to_lowercase();
        let mut soft = SoftAuthenticator::new(alg, Format::PackedSelf, RP_ID, ORIGIN);
        soft.synced = true;
        register(&app, &mut soft, &email).await;
        let login = app
            .login_soft(&mut soft, Some(&email), &Tamper::default())
            .await;
        assert_eq!(login.status, StatusCode::OK, "{alg:?}: {}", login.text);
        app.catch_up().await;
        let list = app
            .get_auth("/api/v1/auth/credentials", &bearer(&login.json))
            .await;
        assert_eq!(
            list.json["credentials"][0]["backup_eligible"], true,
            "{}",
            list.text
        );
        assert_eq!(
            list.json["credentials"][0]["backup_state"], true,
            "{}",
            list.text
        );
    }
}

/// A credential in `excludeCredentials` is refused when added again, by
/// the same step for every algorithm (the library's, or its copy for
/// Ed25519 keys): 401 `webauthn_failed`.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_excluded_credential_is_refused_for_every_algorithm(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for alg in Alg::ALL {
        let email = format!("{alg:?}-excluded@example.com").to_lowercase();
        let mut soft = SoftAuthenticator::new(alg, Format::None, RP_ID, ORIGIN);
        let tokens = register(&app, &mut soft, &email).await;
        let begin = app
            .post_auth(
                "/api/v1/auth/webauthn/register/begin",
                json!({}),
                &bearer(&tokens),
            )
            .await;
        assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
        let excluded = &begin.json["options"]["publicKey"]["excludeCredentials"];
        assert_eq!(excluded.as_array().map(Vec::len), Some(1), "{excluded}");
        let again = Tamper {
            credential_id: Some(soft.credentials[0].id.clone()),
            ..Tamper::default()
        };
        let credential = soft.create_with(&begin.json["options"], &again);
        let before = app.event_count().await;
        app.post_auth(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
            &bearer(&tokens),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
        assert_eq!(app.event_count().await, before, "{alg:?}");
    }
}
