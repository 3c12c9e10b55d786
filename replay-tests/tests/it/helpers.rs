use std::time::Instant;

use queue_projections::checksum::{self, Mode, Sums};
use queue_projections::replay::stream_order_sums;
use queue_projections::runner::load_checkpoint;
use queue_projections::Projection;
use queue_replay_tests::{generate, Generated, Spec};
use sqlx::PgPool;

pub async fn history(pool: &PgPool, customers: usize, seed: u64) -> Generated {
    let started = Instant::now();
    let generated = generate(
        pool,
        &Spec {
            customers,
            writers: 6,
            seed,
        },
    )
    .await
    .unwrap();
    eprintln!(
        "generated {} customers, {} commands ({} refused, {} multi-stream batches) in {:?}",
        generated.customers,
        generated.accepted,
        generated.refused,
        generated.multi_stream_batches,
        started.elapsed()
    );
    generated
}

pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Checksums of the live tables of every projection.
pub async fn live_sums(pool: &PgPool, mode: Mode) -> Sums {
    let mut conn = pool.acquire().await.unwrap();
    let mut sums = Sums::new();
    for projection in Projection::ALL {
        checksum::database_sums(&mut conn, "public", projection, mode, &mut sums)
            .await
            .unwrap();
    }
    sums
}

/// Checksums of an in-memory fold of everything up to the audit checkpoint.
pub async fn folded_sums(pool: &PgPool, mode: Mode) -> Sums {
    let mut conn = pool.acquire().await.unwrap();
    let end = load_checkpoint(&mut conn, Projection::Audit, false)
        .await
        .unwrap()
        .position;
    stream_order_sums(&mut conn, &Projection::ALL, end, mode)
        .await
        .unwrap()
        .1
}

pub fn assert_same(left_name: &str, left: &Sums, right_name: &str, right: &Sums) {
    let diff = checksum::differences(left_name, left, right_name, right);
    assert!(diff.is_empty(), "tables differ:\n{}", diff.join("\n"));
}
