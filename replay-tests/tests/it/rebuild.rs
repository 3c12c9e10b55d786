use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_projections::checksum::Mode;
use queue_projections::rebuild::{NoProgress, Progress};
use queue_projections::{catch_up, rebuild, Projection, RebuildOptions};
use sqlx::PgPool;

use crate::helpers::*;

/// Generated history → live projection; a full rebuild validates against
/// the second fold and the live tables, swaps, and the runner carries on
/// on the swapped tables.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rebuild_equals_live_projection_table_by_table(pool: PgPool) {
    let generated = history(&pool, 600, 2).await;
    // The history includes suspensions whose session revokes commit in the
    // same batch as the suspension (several streams, one transaction).
    assert!(generated.multi_stream_batches > 0, "{generated:?}");
    catch_up(&pool).await.unwrap();
    let live_before = live_sums(&pool, Mode::Local).await;
    let live_text = table_texts(&pool).await;

    let report = rebuild(&pool, &RebuildOptions::default(), &NoProgress)
        .await
        .unwrap();
    eprintln!("{report:#?}");
    assert!(report.ok, "{:?}", report.differences);
    assert!(report.live_compared, "{}", report.live_note);
    assert!(report.swapped);
    assert_eq!(report.events as i64, event_count(&pool).await);
    let live_after = live_sums(&pool, Mode::Local).await;
    assert_same("before", &live_before, "after rebuild", &live_after);
    // Byte for byte: every column of every row prints the same text (json
    // included) whether the live runner or the rebuild wrote it.
    assert_same_text("live", &live_text, "rebuilt", &table_texts(&pool).await);
    assert_eq!(live_after.len(), 8, "every read table is covered");
    // The swapped tables come with statistics (pg_statistic rows, which
    // only ANALYZE writes; an index build sets reltuples but not these), so
    // plans on them are not guesses until autovacuum runs.
    let unanalyzed: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reltuples > 0 \
         AND (c.relname LIKE 'queue\\_%' OR c.relname = 'customer_audit_events') \
         AND NOT EXISTS (SELECT 1 FROM pg_stats s \
             WHERE s.schemaname = 'public' AND s.tablename = c.relname) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(unanalyzed.is_empty(), "no statistics: {unanalyzed:?}");
    // The swapped tables keep migration 0315's privileges: the projector
    // writes them, the service only reads them (ADR 0212).
    let wrong: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' \
         AND (c.relname LIKE 'queue\\_%' OR c.relname = 'customer_audit_events') \
         AND NOT (has_table_privilege('queue_projector', c.oid, 'SELECT') \
              AND has_table_privilege('queue_projector', c.oid, 'INSERT') \
              AND has_table_privilege('queue_projector', c.oid, 'UPDATE') \
              AND has_table_privilege('queue_service', c.oid, 'SELECT') \
              AND NOT has_table_privilege('queue_service', c.oid, 'INSERT, UPDATE, DELETE')) \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(wrong.is_empty(), "privileges after the swap: {wrong:?}");

    // The runner continues on the swapped tables from the reset checkpoint.
    assert!(catch_up(&pool)
        .await
        .unwrap()
        .iter()
        .all(|c| c.applied == 0));
    history(&pool, 40, 3).await;
    catch_up(&pool).await.unwrap();
    assert_same(
        "live",
        &live_sums(&pool, Mode::Local).await,
        "fold",
        &folded_sums(&pool, Mode::Local).await,
    );
    // Indexes and constraints carried over under the same names.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' \
         AND tablename = 'customer_audit_events' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "customer_audit_events_action_commit_xid_insert_id_idx",
            "customer_audit_events_customer_id_commit_xid_insert_id_idx",
            "customer_audit_events_event_id_key",
            "customer_audit_events_occurred_at_idx",
            "customer_audit_events_pkey",
            "customer_audit_events_tenant",
        ]
    );
    // Row-level security came along too (ADR 0219): two policies a table.
    let policies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' \
         AND policyname IN ('tenant_reads', 'projector_all')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(policies, 16);
    // The primary key is the ledger position (migration 0300), also after the swap.
    let primary_key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = 'public.customer_audit_events'::regclass AND contype = 'p'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(primary_key, "PRIMARY KEY (commit_xid, insert_id)");
}

/// Rebuilding one projection leaves the others' tables and checkpoints alone.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rebuild_only_one_projection(pool: PgPool) {
    history(&pool, 40, 4).await;
    catch_up(&pool).await.unwrap();
    let before = live_sums(&pool, Mode::Local).await;
    let options = RebuildOptions {
        only: Some(Projection::Sessions),
        no_swap: false,
    };
    let report = rebuild(&pool, &options, &NoProgress).await.unwrap();
    assert!(report.ok && report.swapped, "{report:?}");
    assert_eq!(report.tables.len(), 2);
    assert_same(
        "before",
        &before,
        "after",
        &live_sums(&pool, Mode::Local).await,
    );
}

/// Counts replayed events; asks the test to kill the rebuild midway.
struct Tripwire {
    seen: AtomicU64,
    trip_at: u64,
    tripped: tokio::sync::Notify,
}

impl Progress for Tripwire {
    fn advance(&self, n: u64) {
        let before = self.seen.fetch_add(n, Ordering::SeqCst);
        if before < self.trip_at && before + n >= self.trip_at {
            self.tripped.notify_one();
        }
    }
}

/// A rebuild killed halfway (its task aborted, its connections dropped)
/// leaves the live tables untouched; the next rebuild recovers and matches.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rebuild_after_a_crash_halfway_recovers(pool: PgPool) {
    history(&pool, 150, 5).await;
    catch_up(&pool).await.unwrap();
    let live_before = live_sums(&pool, Mode::Local).await;
    let total = event_count(&pool).await as u64;

    let tripwire = Arc::new(Tripwire {
        seen: AtomicU64::new(0),
        trip_at: total / 2,
        tripped: tokio::sync::Notify::new(),
    });
    // The rebuild future is dropped when the tripwire fires: its
    // connections close mid-COPY, as when the process is killed.
    let options = RebuildOptions::default();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        // Biased: once the tripwire fires, the kill wins at the rebuild's
        // next yield point instead of racing it for another chunk.
        tokio::select! {
            biased;
            _ = tripwire.tripped.notified() => None,
            result = rebuild(&pool, &options, tripwire.as_ref()) => Some(result),
        }
    })
    .await
    .expect("the rebuild never got halfway");
    assert!(
        outcome.is_none(),
        "the rebuild finished before it was killed"
    );
    let seen = tripwire.seen.load(Ordering::SeqCst);
    eprintln!("killed the rebuild after {seen} of {total} events");
    assert!(seen < total, "killed during the replay, not after it");

    // Nothing changed for readers; the half-built shadow schema is left over.
    assert_same(
        "before",
        &live_before,
        "after crash",
        &live_sums(&pool, Mode::Local).await,
    );
    let leftover: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'queue_rebuild')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(leftover);

    let started = Instant::now();
    let report = rebuild(&pool, &RebuildOptions::default(), &NoProgress)
        .await
        .unwrap();
    eprintln!("recovered in {:?}", started.elapsed());
    assert!(
        report.ok && report.swapped && report.live_compared,
        "{report:?}"
    );
    assert_same(
        "before",
        &live_before,
        "after",
        &live_sums(&pool, Mode::Local).await,
    );
    let leftover: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'queue_rebuild')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!leftover);
}
