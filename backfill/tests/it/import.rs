//! A realistic legacy database imports completely: parity agrees, a second
//! run appends nothing, the ledger verifies, the flags are set.

use chrono::Duration;
use queue_backfill::legacy::Table;
use queue_domain::types::TenantId;
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{verify_store, CheckpointSigner, VerifyInput};
use sqlx::PgPool;

use crate::helpers::*;

/// Three customers with passkeys, sessions and grants; returns ids.
async fn populate(legacy: &LegacyDb) -> (Vec<i64>, Authenticator) {
    let mut authenticator = Authenticator::new();
    let mut customers = Vec::new();
    for (i, email) in ["Ada@Example.com", "grace@example.com", "linus@example.org"]
        .iter()
        .enumerate()
    {
        let status = if i == 2 { "suspended" } else { "active" };
        let name = if i == 1 {
            None
        } else {
            Some("  Ada Lovelace ")
        };
        let id = legacy.customer(email, name, status).await;
        for _ in 0..2 {
            let key = authenticator.register_legacy(email);
            legacy.credential(id, &key, 7, Some("YubiKey 5")).await;
        }
        legacy
            .session(id, &format!("legacy-token-{i}"), Duration::days(20), false)
            .await;
        legacy
            .session(id, &format!("revoked-token-{i}"), Duration::days(20), true)
            .await;
        customers.push(id);
    }
    legacy
        .grant(
            customers[0],
            "support-agent",
            Some(Duration::days(30)),
            false,
        )
        .await;
    legacy
        .grant(customers[0], "billing-admin", None, false)
        .await;
    legacy
        .grant(customers[1], "support-agent", None, true)
        .await;
    (customers, authenticator)
}

pub async fn verify(pool: &PgPool) -> queue_eventstore::VerifyReport {
    let keys = queue_eventstore::MacKeys::single("test", vec![7u8; 32]).unwrap();
    let verifier = CheckpointSigner::from_seed("queue.test/ledger", [7u8; 32])
        .unwrap()
        .verifier();
    verify_store(
        pool,
        &VerifyInput {
            mac_keys: &keys,
            checkpoint_key: &verifier,
            external_checkpoints: &[],
        },
        &NoProgress,
    )
    .await
    .unwrap()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_legacy_database_imports_completely_and_parity_agrees(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let (customers, _) = populate(&legacy).await;

    let report = backfill(&pool, &legacy, &options()).await;
    assert_eq!(report.rejected_count(), 0, "{:#?}", report);
    let counts: Vec<(u64, u64, u64)> = report
        .tables
        .iter()
        .map(|t| (t.read, t.imported, t.skipped))
        .collect();
    // 3 customers, 6 passkeys, 3 live sessions (revoked ones are not read), 2 live grants.
    assert_eq!(counts, vec![(3, 3, 0), (6, 6, 0), (3, 3, 0), (2, 2, 0)]);
    assert_eq!(report.events_appended, 3 + 6 + 3 + 2);
    assert_eq!(legacy.migrated("customers").await, customers);
    assert_eq!(legacy.migrated("webauthn_credentials").await.len(), 6);
    assert_eq!(legacy.migrated("customer_sessions").await.len(), 3);
    assert_eq!(legacy.migrated("rbac_grants").await.len(), 2);

    catch_up(&pool).await;
    let parity = queue_backfill::parity(&pool, &legacy.pool).await.unwrap();
    assert!(parity.agrees(), "{:#?}", parity.differences);
    let matched: Vec<u64> = parity.tables.iter().map(|t| t.matched).collect();
    assert_eq!(matched, vec![3, 6, 3, 2]);

    // Legacy customers are the default tenant's (issue 22, ADR 0217): the
    // read model says so, and their events are stored without `tenant_id`
    // (the bytes of before tenants).
    let tenants: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM queue_customers")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tenants, [*TenantId::DEFAULT.as_uuid()]);
    let imported: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Customer' AND sequence = 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(imported.len(), 3);
    for payload in &imported {
        let fields = payload["CustomerImported"].as_object().unwrap();
        assert!(!fields.contains_key("tenant_id"), "{payload}");
    }

    // Imported as the domain normalises: lower-case email, trimmed name,
    // suspension kept, the default role plus the grants.
    let (email, name, status): (String, Option<String>, String) = sqlx::query_as(
        "SELECT email, display_name, status FROM queue_customers WHERE legacy_id = $1",
    )
    .bind(customers[0])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (email.as_str(), name.as_deref(), status.as_str()),
        ("ada@example.com", Some("Ada Lovelace"), "active")
    );
    let suspended: String =
        sqlx::query_scalar("SELECT status FROM queue_customers WHERE legacy_id = $1")
            .bind(customers[2])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(suspended, "suspended");
    let transports: Vec<String> =
        sqlx::query_scalar("SELECT transports FROM queue_webauthn_credentials LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(transports, vec!["internal", "hybrid"]);

    // A second run appends nothing and says why.
    let before = event_count(&pool).await;
    let again = backfill(&pool, &legacy, &options()).await;
    assert_eq!(event_count(&pool).await, before);
    assert_eq!(again.events_appended, 0);
    let counts: Vec<(u64, u64, u64)> = again
        .tables
        .iter()
        .map(|t| (t.read, t.imported, t.skipped))
        .collect();
    assert_eq!(counts, vec![(3, 0, 3), (6, 0, 6), (3, 0, 3), (2, 0, 2)]);

    let verified = verify(&pool).await;
    assert!(verified.ok, "{:?}", verified.first_problem);
    assert_eq!(verified.events, before as u64);
    legacy.drop().await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_dry_run_writes_nothing_and_reports_what_would_happen(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    populate(&legacy).await;
    let dry = backfill(
        &pool,
        &legacy,
        &queue_backfill::Options {
            dry_run: true,
            ..options()
        },
    )
    .await;
    assert!(dry.dry_run);
    assert_eq!(event_count(&pool).await, 0);
    let counts: Vec<(u64, u64)> = dry.tables.iter().map(|t| (t.imported, t.skipped)).collect();
    assert_eq!(counts, vec![(3, 0), (6, 0), (3, 0), (2, 0)]);
    // Not even the column: the legacy schema is untouched.
    let has_column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'customers' AND column_name = 'migrated_to_queue')",
    )
    .fetch_one(&legacy.pool)
    .await
    .unwrap();
    assert!(!has_column);
    // The real run then does what the dry run said.
    let real = backfill(&pool, &legacy, &options()).await;
    let real_counts: Vec<(u64, u64)> = real
        .tables
        .iter()
        .map(|t| (t.imported, t.skipped))
        .collect();
    assert_eq!(real_counts, counts);
    legacy.drop().await;
}

/// Phase 2 proper: the legacy tables live in Queue's own database, and each
/// page's flags commit in the same transaction as its events.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn legacy_tables_in_the_queue_database_are_flagged_in_the_same_transaction(pool: PgPool) {
    sqlx::raw_sql(queue_backfill::LEGACY_SCHEMA)
        .execute(&pool)
        .await
        .unwrap();
    let repo = repo(&pool);
    assert!(queue_backfill::legacy::same_database(&pool, &pool)
        .await
        .unwrap());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO customers (email) VALUES ('same@example.com') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let report =
        queue_backfill::backfill(&repo, &pool, &options(), &queue_backfill::run::NoProgress)
            .await
            .unwrap();
    assert_eq!(report.table(Table::Customers.name()).unwrap().imported, 1);
    let flagged: bool = sqlx::query_scalar("SELECT migrated_to_queue FROM customers WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(flagged);
    catch_up(&pool).await;
    assert!(queue_backfill::parity(&pool, &pool).await.unwrap().agrees());
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn separate_databases_are_told_apart(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    assert!(!queue_backfill::legacy::same_database(&pool, &legacy.pool)
        .await
        .unwrap());
    legacy.drop().await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn parity_reports_a_field_that_differs(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    let (customers, _) = populate(&legacy).await;
    backfill(&pool, &legacy, &options()).await;
    catch_up(&pool).await;
    // The legacy service wrote after the backfill (it should not have).
    sqlx::query("UPDATE customers SET display_name = 'Changed' WHERE id = $1")
        .bind(customers[1])
        .execute(&legacy.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE customer_sessions SET migrated_to_queue = false WHERE customer_id = $1")
        .bind(customers[0])
        .execute(&legacy.pool)
        .await
        .unwrap();
    let parity = queue_backfill::parity(&pool, &legacy.pool).await.unwrap();
    assert!(!parity.agrees());
    let fields: Vec<(&str, i64, &str)> = parity
        .differences
        .iter()
        .map(|d| (d.table, d.legacy_id, d.field))
        .collect();
    assert!(
        fields.contains(&("customers", customers[1], "display_name")),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|(t, _, f)| *t == "customer_sessions" && *f == "row"),
        "{fields:?}"
    );
    assert_eq!(parity.differences.len(), 2, "{:#?}", parity.differences);
    legacy.drop().await;
}

/// Hundreds of rows per table across several pages (more than one
/// runtime budget's worth of domain commands in a page).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn many_pages_import_and_agree(pool: PgPool) {
    let legacy = LegacyDb::create(&pool).await;
    sqlx::query(
        "INSERT INTO customers (email) SELECT 'c' || g || '@example.com' FROM generate_series(1, 450) g",
    )
    .execute(&legacy.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO customer_sessions (customer_id, token_hash, expires_at) \
         SELECT g, encode(sha256(('t' || g)::bytea), 'hex'), now() + interval '1 day' FROM generate_series(1, 450) g",
    )
    .execute(&legacy.pool)
    .await
    .unwrap();
    let report = backfill(
        &pool,
        &legacy,
        &queue_backfill::Options {
            batch_size: 200,
            ..options()
        },
    )
    .await;
    assert_eq!(report.rejected_count(), 0);
    assert_eq!(report.events_appended, 900);
    catch_up(&pool).await;
    assert!(queue_backfill::parity(&pool, &legacy.pool)
        .await
        .unwrap()
        .agrees());
    legacy.drop().await;
}
