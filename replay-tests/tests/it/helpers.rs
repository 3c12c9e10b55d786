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

/// Every read table's rows as PostgreSQL prints them (`row::text`, which
/// includes json columns byte for byte), sorted: for comparing live and
/// rebuilt tables by their text, not only by checksums.
pub async fn table_texts(pool: &PgPool) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for projection in Projection::ALL {
        for table in projection.tables() {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
                    .fetch_all(pool)
                    .await
                    .unwrap();
            out.insert(*table, rows);
        }
    }
    out
}

/// Asserts two table dumps are identical, naming the first differing row.
pub fn assert_same_text(
    left_name: &str,
    left: &std::collections::BTreeMap<&'static str, Vec<String>>,
    right_name: &str,
    right: &std::collections::BTreeMap<&'static str, Vec<String>>,
) {
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        right.keys().collect::<Vec<_>>()
    );
    for (table, rows) in left {
        let other = &right[table];
        assert_eq!(rows.len(), other.len(), "{table}: row counts differ");
        if let Some((a, b)) = rows.iter().zip(other).find(|(a, b)| a != b) {
            panic!("{table} differs:\n{left_name}: {a}\n{right_name}: {b}");
        }
    }
}

pub fn assert_same(left_name: &str, left: &Sums, right_name: &str, right: &Sums) {
    let diff = checksum::differences(left_name, left, right_name, right);
    assert!(diff.is_empty(), "tables differ:\n{}", diff.join("\n"));
}
