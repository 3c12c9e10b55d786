use queue_projections::checksum::Mode;
use queue_projections::{catch_up, read};
use sqlx::PgPool;

use crate::helpers::*;

/// The runner's incremental batches produce exactly what one in-memory
/// fold of the whole log produces.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn live_projection_equals_a_full_fold(pool: PgPool) {
    history(&pool, 60, 1).await;
    let report = catch_up(&pool).await.unwrap();
    for entry in &report {
        assert!(entry.error.is_none(), "{entry:?}");
    }
    let live = live_sums(&pool, Mode::Local).await;
    let folded = folded_sums(&pool, Mode::Local).await;
    assert_same("live", &live, "fold", &folded);
    assert_eq!(
        live["customer_audit_events"].rows as i64,
        event_count(&pool).await
    );
    assert_eq!(read::customer_count(&pool, None).await.unwrap(), 60);
    // Catching up again changes nothing.
    let again = catch_up(&pool).await.unwrap();
    assert!(again.iter().all(|c| c.applied == 0), "{again:?}");
}
