use std::future::Future;
use std::time::Duration;

use queue_projections::checksum::Mode;
use queue_projections::{run_all, status, Projection, RunnerConfig};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::helpers::*;

/// Polls with the runners' generous deadline (30 s).
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    probe: impl FnMut() -> F,
) -> T {
    queue_testkit::poll::eventually_within(what, Duration::from_secs(30), probe).await
}

async fn caught_up(pool: &PgPool) -> Option<()> {
    let statuses = status(pool).await.ok()?;
    let total = event_count(pool).await;
    statuses
        .iter()
        .all(|s| s.events_behind == 0 && s.events == total)
        .then_some(())
}

fn config() -> RunnerConfig {
    RunnerConfig {
        poll_interval: Duration::from_millis(20),
        standby_interval: Duration::from_millis(100),
        batch_size: 97,
        ..RunnerConfig::default()
    }
}

/// Two instances run the projections while histories are written; one of
/// them is active per projection; when it stops, the other takes over;
/// the result equals a full fold.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn runners_follow_the_log_with_failover(pool: PgPool) {
    let (stop_a, rx_a) = watch::channel(false);
    let (stop_b, rx_b) = watch::channel(false);
    let a = tokio::spawn(run_all(pool.clone(), config(), rx_a));
    history(&pool, 40, 12).await;
    eventually("instance A to catch up", || caught_up(&pool)).await;
    let b = tokio::spawn(run_all(pool.clone(), config(), rx_b));
    let statuses = status(&pool).await.unwrap();
    assert!(statuses.iter().all(|s| s.runner_active));

    // A stops (its lock connections close); B takes over and follows.
    stop_a.send(true).unwrap();
    a.await.unwrap();
    history(&pool, 40, 13).await;
    eventually("instance B to catch up", || caught_up(&pool)).await;
    assert_same(
        "live",
        &live_sums(&pool, Mode::Local).await,
        "fold",
        &folded_sums(&pool, Mode::Local).await,
    );
    let statuses = status(&pool).await.unwrap();
    assert!(statuses
        .iter()
        .all(|s| s.runner_active && s.error.is_none()));
    assert_eq!(statuses.len(), Projection::ALL.len());
    stop_b.send(true).unwrap();
    b.await.unwrap();
}
