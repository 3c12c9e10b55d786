use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventStore, PersistenceError};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, DomainEvent};
use queue_eventstore::chain::{self, EventRecord, ZERO_HASH};
use queue_eventstore::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::helpers::*;

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn appended_events_are_chained_and_maced(pool: PgPool) {
    let repo = fixed_repo(&pool);
    repo.append(&[
        ev("T", "a", 1, json!({"n": 1})),
        ev("T", "a", 2, json!({"n": 2})),
    ])
    .await
    .unwrap();
    let third = repo
        .append(&[ev("T", "a", 3, json!({"n": 3}))])
        .await
        .unwrap();

    let rows = sqlx::query("SELECT sequence, payload, recorded_at, prev_hash, hash, mac, mac_key_id FROM events ORDER BY sequence")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut prev = ZERO_HASH.to_vec();
    for row in &rows {
        let payload: serde_json::Value = row.get("payload");
        let prev_hash: Vec<u8> = row.get("prev_hash");
        let hash: Vec<u8> = row.get("hash");
        assert_eq!(prev_hash, prev);
        let canonical = chain::canonical_record(&EventRecord {
            aggregate_type: "T",
            aggregate_id: "a",
            sequence: row.get("sequence"),
            event_type: "Happened",
            event_version: "1.0",
            recorded_at: row.get("recorded_at"),
            payload: &payload,
        })
        .unwrap();
        let expected = chain::event_hash(&prev_hash.clone().try_into().unwrap(), &canonical);
        assert_eq!(hash, expected.to_vec());
        let mac: Vec<u8> = row.get("mac");
        assert_eq!(mac, chain::event_mac(&MAC_KEY, &expected).to_vec());
        assert_eq!(row.get::<String, _>("mac_key_id"), "k1");
        prev = hash;
    }
    assert_eq!(third[0].hash.to_vec(), prev);

    sealer().seal_pending(&pool).await.unwrap();
    let report = verify(&pool).await;
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(
        (
            report.events,
            report.streams,
            report.ledger_size,
            report.unsealed
        ),
        (3, 1, 3, 0)
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn two_writers_on_one_stream_one_wins_and_nothing_is_half_written(pool: PgPool) {
    let repo = repo(&pool);
    repo.append(&[ev("T", "a", 1, json!({}))]).await.unwrap();
    let batch_one = [
        ev("T", "a", 2, json!({"w": 1})),
        ev("T", "a", 3, json!({"w": 1})),
    ];
    let batch_two = [
        ev("T", "a", 2, json!({"w": 2})),
        ev("T", "a", 3, json!({"w": 2})),
    ];
    let first = repo.append(&batch_one);
    let second = repo.append(&batch_two);
    let (a, b) = tokio::join!(first, second);
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one writer wins"
    );
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(StoreError::OptimisticLock)));
    let writers: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT (payload->>'w')::bigint FROM events WHERE sequence > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(writers.len(), 1, "only the winner's events are stored");
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 3);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_stale_sequence_is_a_conflict(pool: PgPool) {
    let repo = repo(&pool);
    repo.append(&[ev("T", "a", 1, json!({}))]).await.unwrap();
    let err = repo
        .append(&[ev("T", "a", 1, json!({}))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OptimisticLock));
    let err = repo
        .append(&[ev("T", "b", 2, json!({}))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OptimisticLock), "{err}");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn payloads_that_do_not_canonicalise_are_refused(pool: PgPool) {
    let repo = repo(&pool);
    for bad in [
        json!({"f": 1.5}),
        json!({"big": 9007199254740993u64}),
        json!({"s": "a\u{0}b"}),
    ] {
        let err = repo
            .append(&[ev("T", "ok", 1, json!({})), ev("T", "a", 1, bad)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidEvent(_)), "{err}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 0);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn history_is_append_only(pool: PgPool) {
    let repo = repo(&pool);
    repo.append(&[ev("T", "a", 1, json!({}))]).await.unwrap();
    sealer().seal_pending(&pool).await.unwrap();
    for sql in [
        "UPDATE events SET payload = '{\"x\":1}'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE ledger SET seq = 9",
        "DELETE FROM ledger",
        "TRUNCATE ledger",
        "DELETE FROM checkpoints",
        "UPDATE checkpoints SET note = ''",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    for (table, right) in [
        ("events", "UPDATE"),
        ("events", "DELETE"),
        ("events", "TRUNCATE"),
        ("ledger", "DELETE"),
        ("checkpoints", "UPDATE"),
    ] {
        let has: bool = sqlx::query_scalar("SELECT has_table_privilege('queue_service', $1, $2)")
            .bind(table)
            .bind(right)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(!has, "queue_service must not have {right} on {table}");
    }
    let can_insert: bool =
        sqlx::query_scalar("SELECT has_table_privilege('queue_service', 'events', 'INSERT')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(can_insert);
}

// A tiny aggregate to drive the repository through cqrs-es itself.
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Added { by: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Added".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("counter error")]
struct CounterError;

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = u64;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        by: u64,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        sink.write(CounterEvent::Added { by }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Added { by } = event;
        self.value += by;
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn cqrs_es_commands_land_in_the_chain(pool: PgPool) {
    let store = PersistedEventStore::<_, Counter>::new_event_store(repo(&pool));
    let cqrs = CqrsFramework::new(store, vec![], ());
    for by in [1, 2, 3] {
        cqrs.execute("c-1", by).await.unwrap();
    }
    let value: i64 = count(&pool, "SELECT sum((payload->'Added'->>'by')::bigint)::bigint FROM events WHERE aggregate_id = 'c-1'").await;
    assert_eq!(value, 6);
    sealer().seal_pending(&pool).await.unwrap();
    assert!(verify(&pool).await.ok);

    // The optimistic lock surfaces as cqrs-es's AggregateConflict.
    let err: PersistenceError = StoreError::OptimisticLock.into();
    assert!(matches!(err, PersistenceError::OptimisticLockError));
    let agg: AggregateError<CounterError> = err.into();
    assert!(matches!(agg, AggregateError::AggregateConflict));
}
