//! Bad legacy data never aborts the run and is never dropped silently: each
//! bad row is reported with its legacy id and reason, the rest imports, and
//! a re-run reports the same rows again without appending anything.

use chrono::Duration;
use queue_backfill::Report;
use sqlx::PgPool;

use crate::helpers::*;

fn reasons(report: &Report, table: &str) -> Vec<(i64, &'static str)> {
    let mut out: Vec<(i64, &'static str)> = report
        .table(table)
        .unwrap()
        .rejected
        .iter()
        .map(|r| (r.legacy_id, r.reason))
        .collect();
    out.sort();
    out
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_bad_row_kind_is_reported_and_the_good_rows_import(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let mut authenticator = Authenticator::new();
    // Legacy emails are unique only case-sensitively.
    let good = legacy
        .customer("Dup@Example.com", Some("First"), "active")
        .await;
    let dup_same_page = legacy
        .customer("dup@example.com", Some("Second"), "active")
        .await;
    let invalid_email = legacy.customer("not an email", None, "active").await;
    let other = legacy.customer("other@example.com", None, "active").await;
    let dup_later_page = legacy.customer("DUP@EXAMPLE.COM", None, "active").await;
    let bad_status = legacy.customer("status@example.com", None, "deleted").await;

    let good_key = authenticator.register_legacy("dup");
    let good_cred = legacy.credential(good, &good_key, 0, None).await;
    let mut garbage = authenticator.register_legacy("garbage");
    garbage.cose = vec![0xa5, 0x01, 0x02, 0x03];
    let not_cbor = legacy.credential(other, &garbage, 0, None).await;
    // Valid CBOR, EC2/ES256, but the point is not on the curve.
    let mut off_curve = authenticator.register_legacy("off-curve");
    let map: serde_cbor_2::Value = serde_cbor_2::from_slice(&off_curve.cose).unwrap();
    let serde_cbor_2::Value::Map(mut map) = map else {
        panic!()
    };
    map.insert(
        serde_cbor_2::Value::Integer(-3),
        serde_cbor_2::Value::Bytes(vec![1u8; 32]),
    );
    off_curve.cose = serde_cbor_2::to_vec(&serde_cbor_2::Value::Map(map)).unwrap();
    let off_curve_cred = legacy.credential(other, &off_curve, 0, None).await;
    let of_rejected = legacy
        .credential(dup_same_page, &authenticator.register_legacy("x"), 0, None)
        .await;
    // A credential whose customer row is gone (the legacy service once ran
    // without the foreign key).
    sqlx::query(
        "ALTER TABLE webauthn_credentials DROP CONSTRAINT webauthn_credentials_customer_id_fkey",
    )
    .execute(&legacy.pool)
    .await
    .unwrap();
    let dangling = legacy
        .credential(999_999, &authenticator.register_legacy("y"), 0, None)
        .await;

    let live = legacy.session(good, "live", Duration::days(1), false).await;
    let expired = legacy
        .session(good, "expired", Duration::hours(-1), false)
        .await;
    legacy
        .session(good, "revoked", Duration::days(1), true)
        .await;
    let session_of_rejected = legacy
        .session(dup_later_page, "dup", Duration::days(1), false)
        .await;
    let bad_hash: i64 = sqlx::query_scalar(
        "INSERT INTO customer_sessions (customer_id, token_hash, expires_at) VALUES ($1, 'not-hex', now() + interval '1 day') RETURNING id",
    )
    .bind(other)
    .fetch_one(&legacy.pool)
    .await
    .unwrap();

    let good_grant = legacy.grant(good, "support-agent", None, false).await;
    let bad_role = legacy.grant(good, "Support Agent", None, false).await;
    let grant_of_rejected = legacy
        .grant(invalid_email, "support-agent", None, false)
        .await;

    let report = backfill(&pool, &legacy, &options()).await;
    assert_eq!(
        reasons(&report, "customers"),
        vec![
            (dup_same_page, "email_taken"),
            (invalid_email, "invalid_email"),
            (dup_later_page, "email_taken"),
            (bad_status, "invalid_status"),
        ]
    );
    assert_eq!(
        reasons(&report, "webauthn_credentials"),
        vec![
            (not_cbor, "malformed_cose_key"),
            (off_curve_cred, "malformed_cose_key"),
            (of_rejected, "customer_not_imported"),
            (dangling, "customer_missing"),
        ]
    );
    assert_eq!(
        reasons(&report, "customer_sessions"),
        vec![
            (expired, "session_expired"),
            (session_of_rejected, "customer_not_imported"),
            (bad_hash, "invalid_token_hash")
        ]
    );
    assert_eq!(
        reasons(&report, "rbac_grants"),
        vec![
            (bad_role, "invalid_role"),
            (grant_of_rejected, "customer_not_imported")
        ]
    );
    // Every rejection says something a person can act on.
    for table in &report.tables {
        for r in &table.rejected {
            assert!(!r.detail.is_empty(), "{r:?}");
        }
    }
    // The good rows are in and flagged; the bad ones are not.
    assert_eq!(legacy.migrated("customers").await, vec![good, other]);
    assert_eq!(
        legacy.migrated("webauthn_credentials").await,
        vec![good_cred]
    );
    assert_eq!(legacy.migrated("customer_sessions").await, vec![live]);
    assert_eq!(legacy.migrated("rbac_grants").await, vec![good_grant]);

    // The JSON report carries the same.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tables"][0]["table"], "customers");
    assert_eq!(json["tables"][0]["rejected"][0]["reason"], "email_taken");

    // Parity agrees: rejected rows are expected to be missing.
    catch_up(&pool).await;
    let parity = queue_backfill::parity(&pool, &legacy.pool).await.unwrap();
    assert!(parity.agrees(), "{:#?}", parity.differences);
    assert_eq!(parity.tables[0].legacy_not_migrated, 4);

    // A re-run appends nothing and reports the same rows.
    let before = event_count(&pool).await;
    let again = backfill(&pool, &legacy, &options()).await;
    assert_eq!(event_count(&pool).await, before);
    for table in [
        "customers",
        "webauthn_credentials",
        "customer_sessions",
        "rbac_grants",
    ] {
        assert_eq!(reasons(&again, table), reasons(&report, table), "{table}");
    }
    legacy.drop().await;
}

/// An email registered natively in Queue (dark launch) wins; the legacy row
/// with the same email is reported, not merged.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_email_already_registered_in_queue_is_reported(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let first = legacy.customer("taken@example.com", None, "active").await;
    let id = legacy.customer("free@example.com", None, "active").await;
    // Another import (standing in for a registration) holds the email.
    let other = LegacyDb::create(&pool).await;
    sqlx::query("ALTER SEQUENCE customers_id_seq RESTART WITH 1000")
        .execute(&other.pool)
        .await
        .unwrap();
    other.customer("Taken@Example.com", None, "active").await;
    backfill(&pool, &other, &options()).await;
    let report = backfill(&pool, &legacy, &options()).await;
    assert_eq!(reasons(&report, "customers"), vec![(first, "email_taken")]);
    assert_eq!(legacy.migrated("customers").await, vec![id]);
    legacy.drop().await;
    other.drop().await;
}
