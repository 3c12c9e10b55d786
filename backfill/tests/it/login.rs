//! What an imported customer does next, over HTTP through the real router:
//! logs in with the same authenticator (the counter continues from the
//! legacy value, a lower one is refused), refreshes with the legacy token;
//! passkeys of every COSE algorithm the API accepts log in after import.

use axum::http::StatusCode;
use chrono::Duration;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;
use crate::soft::{Alg, Format, SoftAuthenticator, Tamper};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_imported_passkey_logs_in_and_its_counter_continues(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let mut ada = Authenticator::new();
    let ada_id = legacy
        .customer("Ada@Example.com", Some("Ada"), "active")
        .await;
    let key = ada.register_legacy("ada");
    // Three logins at the legacy service: its table holds counter 3.
    for _ in 0..3 {
        ada.use_at_legacy(&key);
    }
    let credential = legacy.credential(ada_id, &key, 3, Some("laptop")).await;
    legacy.grant(ada_id, "support-agent", None, false).await;

    // A clone's counter (or a stale table) below the legacy value.
    let mut eve = Authenticator::new();
    let eve_id = legacy.customer("eve@example.com", None, "active").await;
    let eve_key = eve.register_legacy("eve");
    legacy.credential(eve_id, &eve_key, 50, None).await;

    let report = backfill(&pool, &legacy, &options()).await;
    assert_eq!(report.rejected_count(), 0, "{report:#?}");
    catch_up(&pool).await;
    let app = TestApp::new(pool.clone()).await;

    let login = ada.login(&app, "ada@example.com").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert!(login.json["refresh_token"].is_string());
    let sign_count = || async {
        catch_up(&pool).await;
        sqlx::query_scalar::<_, i64>(
            "SELECT sign_count FROM queue_webauthn_credentials WHERE legacy_id = $1",
        )
        .bind(credential)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(sign_count().await, 4);
    let again = ada.login(&app, "ada@example.com").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(sign_count().await, 5);

    // The grant came along: the access token's customer has the role.
    let me = app
        .get_auth(
            "/api/v1/auth/me",
            login.json["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    let roles: Vec<String> = serde_json::from_value(me.json["roles"].clone()).unwrap();
    assert!(roles.contains(&"support-agent".to_owned()), "{roles:?}");

    // Counter 1 after the legacy 50: refused as a regression.
    let refused = eve.login(&app, "eve@example.com").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    assert_eq!(refused.json["error"]["code"], "webauthn_failed");
    legacy.drop().await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_imported_refresh_token_refreshes_and_then_rotates(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let id = legacy.customer("grace@example.com", None, "active").await;
    legacy
        .session(id, "legacy-refresh-token", Duration::days(20), false)
        .await;
    backfill(&pool, &legacy, &options()).await;
    catch_up(&pool).await;
    let app = TestApp::new(pool.clone()).await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/session/refresh",
                json!({"refresh_token": token}),
            )
            .await
        }
    };

    let first = refresh("legacy-refresh-token".into()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let rotated = first.json["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, "legacy-refresh-token");
    let second = refresh(rotated).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);

    // The legacy token was rotated out: presenting it again is reuse.
    catch_up(&pool).await;
    let reused = refresh("legacy-refresh-token".into()).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED, "{}", reused.text);
    assert_eq!(reused.json["error"]["code"], "refresh_reuse_detected");

    // A token nobody issued is still just invalid.
    let unknown = refresh("never-issued".into()).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json["error"]["code"], "invalid_refresh_token");
    legacy.drop().await;
}

/// Every algorithm the API accepts (ES256, EdDSA, ES384, RS256) is
/// imported from the legacy COSE key, agrees in parity, and logs in through
/// the router, by email and discoverably (the user handle is the customer
/// id Queue derives from the legacy id); a wrong signature, rpId hash, UP
/// or UV flag, crossOrigin or a counter that did not increase is refused.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn imported_passkeys_of_every_algorithm_log_in(pool: PgPool) {
    use queue_domain::types::{CustomerId, LegacyId};

    let legacy = LegacyDb::create(&pool).await;
    let mut customers = Vec::new();
    for alg in Alg::ALL {
        let email = format!("{alg:?}@example.com").to_lowercase();
        let id = legacy.customer(&email, Some("Ada"), "active").await;
        let handle = CustomerId::for_legacy_id(LegacyId::try_from(id).unwrap());
        let mut soft = SoftAuthenticator::new(alg, Format::None, RP_ID, ORIGIN);
        let (raw_id, cose) = soft.legacy_key(handle.as_uuid().as_bytes(), 7);
        let key = LegacyKey {
            raw_id,
            cose,
            aaguid: None,
            backup_eligible: false,
            backup_state: false,
        };
        let credential = legacy.credential(id, &key, 7, Some("key")).await;
        customers.push((alg, email, soft, credential));
    }

    let report = backfill(&pool, &legacy, &options()).await;
    assert_eq!(report.rejected_count(), 0, "{report:#?}");
    catch_up(&pool).await;
    let parity = queue_backfill::parity(&pool, &legacy.pool).await.unwrap();
    assert!(parity.agrees(), "{parity:#?}");
    let app = TestApp::new(pool.clone()).await;

    for (alg, email, soft, credential) in &mut customers {
        // The same checks as for a passkey registered in Queue.
        let mut cases = Tamper::wrong_assertions().to_vec();
        // The legacy counter again: not an increase.
        cases.push((
            "counter regression",
            Tamper {
                counter: Some(7),
                ..Tamper::default()
            },
        ));
        for (what, tamper) in cases {
            let refused = app.login_soft(soft, Some(email), &tamper).await;
            assert_eq!(
                refused.status,
                StatusCode::UNAUTHORIZED,
                "{alg:?} {what}: {}",
                refused.text
            );
            assert_eq!(
                refused.json["error"]["code"], "webauthn_failed",
                "{alg:?} {what}"
            );
        }

        for by_email in [Some(email.as_str()), None] {
            let login = app.login_soft(soft, by_email, &Tamper::default()).await;
            assert_eq!(login.status, StatusCode::OK, "{alg:?}: {}", login.text);
            let me = app
                .get_auth(
                    "/api/v1/auth/me",
                    login.json["access_token"].as_str().unwrap(),
                )
                .await;
            assert_eq!(me.json["email"], email.as_str());
        }
        catch_up(&pool).await;
        let sign_count: i64 = sqlx::query_scalar(
            "SELECT sign_count FROM queue_webauthn_credentials WHERE legacy_id = $1",
        )
        .bind(*credential)
        .fetch_one(&pool)
        .await
        .unwrap();
        // 7 at the legacy service; the six refused attempts moved the
        // authenticator to 13, the two logins to 14 and 15.
        assert_eq!(sign_count, 15, "{alg:?}");
    }
    legacy.drop().await;
}
