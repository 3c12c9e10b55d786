//! Global order under concurrency: late commits, aborts, and a sealer that dies.

use std::time::Duration;

use queue_eventstore::{Sealer, SealerConfig, SharedMacKeys};
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::helpers::*;

/// Polls with the sealer's generous deadline (30 s).
async fn eventually<F: std::future::Future<Output = Option<()>>>(
    what: &str,
    probe: impl FnMut() -> F,
) {
    queue_testkit::poll::eventually_within(what, Duration::from_secs(30), probe).await
}

/// Every committed event is in the ledger exactly once, seq 1..N without
/// gaps, in (commit_xid, insert_id) order, and the store verifies.
async fn assert_ledger_complete(pool: &PgPool) {
    let events = count(pool, "SELECT count(*) FROM events").await;
    let ledger = count(pool, "SELECT count(*) FROM ledger").await;
    assert_eq!(events, ledger, "every committed event is sealed");
    assert_eq!(
        count(pool, "SELECT coalesce(max(seq), 0) FROM ledger").await,
        ledger,
        "no gaps"
    );
    let out_of_order = count(
        pool,
        "SELECT count(*) FROM (SELECT l.seq, row_number() OVER (ORDER BY e.commit_xid, e.insert_id) AS pos \
         FROM ledger l JOIN events e USING (aggregate_type, aggregate_id, sequence)) t WHERE seq <> pos",
    )
    .await;
    assert_eq!(out_of_order, 0, "ledger order is the commit order");
    let report = verify(pool).await;
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.unsealed, 0);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_late_commit_is_never_skipped(pool: PgPool) {
    let repo = repo(&pool);
    let sealer = sealer();
    // Writer A takes its transaction id first and commits last.
    let mut slow = pool.begin().await.unwrap();
    repo.append_in(&mut slow, &[ev("T", "slow", 1, json!({}))])
        .await
        .unwrap();
    repo.append(&[ev("T", "fast", 1, json!({}))]).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let outcome = sealer.seal_batch(&mut conn, false).await.unwrap();
    assert_eq!(
        outcome.sealed, 0,
        "the fast event waits behind the open slow one"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM ledger").await, 0);

    slow.commit().await.unwrap();
    sealer.seal_pending(&pool).await.unwrap();
    let order: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM ledger ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(order, vec!["slow", "fast"]);
    assert_ledger_complete(&pool).await;
}

async fn writer(pool: PgPool, stream: String, rounds: usize) -> usize {
    let repo = repo(&pool);
    let mut next = 1usize;
    for round in 0..rounds {
        let (delay, abort, size) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_range(0..4u64),
                rng.gen_bool(0.2),
                rng.gen_range(1..=3usize),
            )
        };
        let events: Vec<_> = (0..size)
            .map(|i| {
                ev(
                    "T",
                    &stream,
                    next + i,
                    json!({"round": round as i64, "i": i as i64}),
                )
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        repo.append_in(&mut tx, &events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if abort {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            next += size;
        }
    }
    next - 1
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn many_writers_with_delays_and_aborts_are_sealed_exactly_once(pool: PgPool) {
    let (stop, stopped) = watch::channel(false);
    let sealer = Sealer::new(
        signer(),
        SealerConfig {
            batch_size: 13,
            checkpoint_every: 50,
            poll_interval: Duration::from_millis(2),
            ..SealerConfig::default()
        },
        SharedMacKeys::new(mac_keys()),
    );
    let options = (*pool.connect_options()).clone();
    let sealing = tokio::spawn(sealer.clone().run(options, stopped));

    let writers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(writer(pool.clone(), format!("w{w}"), 25)))
        .collect();
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events").await as usize,
        committed
    );
    eventually("the running sealer to catch up", || async {
        (count(&pool, "SELECT count(*) FROM ledger").await as usize == committed).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    sealing.await.unwrap();
    assert_ledger_complete(&pool).await;
    // A clean stop leaves a checkpoint over the whole ledger.
    let latest = count(&pool, "SELECT max(tree_size) FROM checkpoints").await;
    assert_eq!(latest as usize, committed);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_killed_sealer_is_replaced_without_loss_or_duplication(pool: PgPool) {
    let config = SealerConfig {
        batch_size: 5,
        checkpoint_every: 20,
        poll_interval: Duration::from_millis(2),
        standby_interval: Duration::from_millis(20),
        ..SealerConfig::default()
    };
    let options = (*pool.connect_options()).clone();
    let (_keep, never) = watch::channel(false);
    let first = tokio::spawn(
        Sealer::new(signer(), config.clone(), SharedMacKeys::new(mac_keys()))
            .run(options.clone(), never.clone()),
    );

    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(pool.clone(), format!("w{w}"), 30)))
        .collect();
    eventually("the first sealer to seal something", || async {
        (count(&pool, "SELECT count(*) FROM ledger").await > 10).then_some(())
    })
    .await;
    first.abort();
    let _ = first.await;
    let sealed_by_first = count(&pool, "SELECT count(*) FROM ledger").await;

    // Two standbys: exactly one becomes leader; both running is safe anyway.
    let (stop, stopped) = watch::channel(false);
    let second = tokio::spawn(
        Sealer::new(signer(), config.clone(), SharedMacKeys::new(mac_keys()))
            .run(options.clone(), stopped.clone()),
    );
    let third = tokio::spawn(
        Sealer::new(signer(), config, SharedMacKeys::new(mac_keys())).run(options, stopped),
    );
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    eventually("the new leader to seal everything", || async {
        (count(&pool, "SELECT count(*) FROM ledger").await as usize == committed).then_some(())
    })
    .await;
    assert!(count(&pool, "SELECT count(*) FROM ledger").await > sealed_by_first);
    stop.send(true).unwrap();
    second.await.unwrap();
    third.await.unwrap();
    assert_ledger_complete(&pool).await;
}
