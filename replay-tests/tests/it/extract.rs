use std::sync::Arc;

use queue_eventstore::{CheckpointSigner, Sealer, SealerConfig};
use queue_projections::checksum::Mode;
use queue_projections::rebuild::NoProgress;
use queue_projections::{catch_up, extract, read, ExtractKeys, ExtractOptions};
use queue_replay_tests::{mac_keys, ScratchDb};
use sqlx::PgPool;

use crate::helpers::*;

fn sealer() -> Sealer {
    Sealer::new(
        Arc::new(CheckpointSigner::from_seed("queue.test/extract", [9u8; 32]).unwrap()),
        SealerConfig::default(),
        queue_eventstore::SharedMacKeys::new(mac_keys().unwrap()),
    )
}

async fn ledger_root(pool: &PgPool, size: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT root_hash FROM checkpoints WHERE tree_size = $1")
        .bind(size)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Extraction into a second database: the verified log, ledger and
/// checkpoints are copied, the tables rebuilt there are identical, and a
/// second run copies only what is new. The target's sealer continues the
/// same ledger.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn extraction_into_a_second_database(source: PgPool) {
    history(&source, 120, 6).await;
    sealer().seal_pending(&source).await.unwrap();
    // Some events stay unsealed: the target's sealer seals them.
    history(&source, 15, 7).await;
    catch_up(&source).await.unwrap();

    let target = ScratchDb::beside(&source, "queue_extract", 8)
        .await
        .unwrap();
    let keys = mac_keys().unwrap();
    let verifier = sealer().signer().verifier();
    let report = extract(
        &source,
        &target.pool,
        &ExtractKeys {
            mac_keys: &keys,
            checkpoint_key: Some(&verifier),
        },
        &ExtractOptions { batch_size: 700 },
        &NoProgress,
    )
    .await
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.copied_events as i64, event_count(&source).await);
    assert_eq!(report.target_events, event_count(&source).await);
    assert!(report.order_equal && report.ledger_root_equal);
    assert!(report.source_live_compared, "{}", report.source_live_note);
    assert_eq!(report.target_verified, Some(true));
    assert_eq!(report.tables.len(), 8);
    assert!(report.tables.iter().all(|t| t.equal && t.target_rows > 0));
    assert_same(
        "source",
        &live_sums(&source, Mode::Portable).await,
        "target",
        &live_sums(&target.pool, Mode::Portable).await,
    );
    assert_eq!(
        read::customer_count(&target.pool, None).await.unwrap(),
        read::customer_count(&source, None).await.unwrap()
    );

    // More writes, then the cutover run: only the new events are copied.
    history(&source, 30, 8).await;
    let before = event_count(&target.pool).await;
    let again = extract(
        &source,
        &target.pool,
        &ExtractKeys {
            mac_keys: &keys,
            checkpoint_key: Some(&verifier),
        },
        &ExtractOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(again.ok, "{:?}", again.problems);
    assert_eq!(
        again.copied_events as i64,
        event_count(&source).await - before
    );
    assert!(
        !again.source_live_compared,
        "the source runner is behind now"
    );

    // Both sealers seal the same remaining events into the same tree.
    let s = sealer().seal_pending(&source).await.unwrap();
    let t = sealer().seal_pending(&target.pool).await.unwrap();
    assert_eq!(s.tree_size, t.tree_size);
    assert_eq!(s.tree_size as i64, event_count(&source).await);
    assert_eq!(
        ledger_root(&source, s.tree_size as i64).await,
        ledger_root(&target.pool, t.tree_size as i64).await
    );

    // A third run finds nothing to copy.
    let third = extract(
        &source,
        &target.pool,
        &ExtractKeys {
            mac_keys: &keys,
            checkpoint_key: Some(&verifier),
        },
        &ExtractOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(third.ok, "{:?}", third.problems);
    assert_eq!(third.copied_events, 0);
    target.drop_db().await.unwrap();
}

/// A tampered event in the source stops the copy before it is written.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn extraction_refuses_a_tampered_log(source: PgPool) {
    history(&source, 20, 9).await;
    // Tamper with one event behind the append-only trigger's back.
    sqlx::raw_sql(
        "ALTER TABLE events DISABLE TRIGGER events_append_only; \
         UPDATE events SET payload = jsonb_set(payload, '{CustomerRegistered,display_name}', '\"Mallory\"') \
         WHERE event_type = 'CustomerRegistered' AND insert_id = (SELECT min(insert_id) FROM events WHERE event_type = 'CustomerRegistered'); \
         ALTER TABLE events ENABLE TRIGGER events_append_only;",
    )
    .execute(&source)
    .await
    .unwrap();
    let target = ScratchDb::beside(&source, "queue_extract", 8)
        .await
        .unwrap();
    let keys = mac_keys().unwrap();
    let err = extract(
        &source,
        &target.pool,
        &ExtractKeys {
            mac_keys: &keys,
            checkpoint_key: None,
        },
        &ExtractOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("the stored hash does not match"),
        "{err}"
    );
    target.drop_db().await.unwrap();
}
