//! Loads continue cached verified folds (ADR 0215): only the rows after a
//! fold are read, each checked from the fold's (version, hash); anything in
//! doubt is folded from the first event again, and damage is still refused.

use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use queue_eventstore::unit_of_work::SELECT_STREAMS_FROM;
use queue_eventstore::{
    Batch, ChainedEventRepository, DamageKind, EventStore, MacKeys, SharedMacKeys, StoreError,
    SystemClock,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres};

use crate::helpers::*;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    total: u64,
    count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added { by: u64 },
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> String {
        "Added".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tally error")]
struct TallyError;

impl Aggregate for Tally {
    const TYPE: &'static str = "Tally";
    type Command = u64;
    type Event = TallyEvent;
    type Error = TallyError;
    type Services = ();

    async fn handle(&mut self, by: u64, _: &(), sink: &EventSink<Self>) -> Result<(), TallyError> {
        sink.write(TallyEvent::Added { by }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: TallyEvent) {
        let TallyEvent::Added { by } = event;
        self.total += by;
        self.count += 1;
    }
}

/// Load, add, append: what a request does.
async fn add(store: &EventStore, id: &str, by: u64) -> Result<(), StoreError> {
    let mut loaded = store.load::<Tally>(id).await?;
    let events = loaded.execute(by).await.unwrap();
    let mut batch = Batch::new();
    batch.add(&mut loaded, &events)?;
    store.append(batch).await
}

/// A store without cached folds: every load reads whole streams.
fn uncached(pool: &PgPool) -> EventStore {
    EventStore::with_fold_cache(repo(pool), 0)
}

fn damage(err: StoreError) -> DamageKind {
    match err {
        StoreError::Integrity(e) => e.kind,
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_cached_fold_continues_into_rows_another_instance_wrote(pool: PgPool) {
    let store = EventStore::new(repo(&pool));
    let other = EventStore::new(repo(&pool));
    for by in 1..=5 {
        add(&store, "t-1", by).await.unwrap();
    }
    // Another instance appends after this one's fold; this one continues.
    for by in 6..=8 {
        add(&other, "t-1", by).await.unwrap();
    }
    add(&store, "t-1", 9).await.unwrap();
    let cached = store.load::<Tally>("t-1").await.unwrap();
    let whole = uncached(&pool).load::<Tally>("t-1").await.unwrap();
    assert_eq!(cached.aggregate, whole.aggregate);
    assert_eq!(cached.aggregate.total, 45);
    assert_eq!((cached.version, whole.version), (9, 9));
    // Several streams in one load, some cached, some not, one twice.
    add(&other, "t-2", 100).await.unwrap();
    let ids = ["t-2", "t-1", "t-3", "t-1"].map(String::from);
    let many = store.load_many::<Tally>(&ids).await.unwrap();
    let totals: Vec<(&str, u64, usize)> = many
        .iter()
        .map(|l| (l.id.as_str(), l.aggregate.total, l.version))
        .collect();
    assert_eq!(totals, vec![("t-2", 100, 1), ("t-1", 45, 9), ("t-3", 0, 0)]);
    sealer().seal_pending(&pool).await.unwrap();
    assert!(verify(&pool).await.ok);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_forged_row_after_a_cached_fold_is_refused(pool: PgPool) {
    let store = EventStore::new(repo(&pool));
    for by in 1..=3 {
        add(&store, "t-1", by).await.unwrap();
    }
    store.load::<Tally>("t-1").await.unwrap();
    // Someone who can INSERT but has another key chains a row on.
    let forger = ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(MacKeys::single("k1", vec![0x22; 32]).unwrap()),
        Arc::new(SystemClock),
    );
    forger
        .append(&[ev("Tally", "t-1", 4, json!({"Added": {"by": 1000}}))])
        .await
        .unwrap();
    let err = store.load::<Tally>("t-1").await.unwrap_err();
    assert_eq!(damage(err), DamageKind::MacInvalid);
    // And again (the fold was dropped; the whole stream is read and refused).
    let err = store.load::<Tally>("t-1").await.unwrap_err();
    assert_eq!(damage(err), DamageKind::MacInvalid);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_missing_anchor_row_makes_the_load_read_the_whole_stream(pool: PgPool) {
    let store = EventStore::new(repo(&pool));
    for by in 1..=3 {
        add(&store, "t-1", by).await.unwrap();
    }
    // The fold now stands at version 3.
    assert_eq!(store.load::<Tally>("t-1").await.unwrap().version, 3);
    let other = uncached(&pool);
    for by in 4..=5 {
        add(&other, "t-1", by).await.unwrap();
    }
    tamper(
        &pool,
        "DELETE FROM events WHERE aggregate_id = 't-1' AND sequence = 3",
    )
    .await;
    let err = store.load::<Tally>("t-1").await.unwrap_err();
    assert_eq!(damage(err), DamageKind::SequenceGap);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_rewritten_anchor_row_is_noticed(pool: PgPool) {
    let store = EventStore::new(repo(&pool));
    for by in 1..=3 {
        add(&store, "t-1", by).await.unwrap();
    }
    assert_eq!(store.load::<Tally>("t-1").await.unwrap().version, 3);
    // The anchor's hash no longer is the fold's: fold from the start, which
    // finds the row does not verify.
    tamper(
        &pool,
        "UPDATE events SET hash = sha256(hash) WHERE aggregate_id = 't-1' AND sequence = 3",
    )
    .await;
    let err = store.load::<Tally>("t-1").await.unwrap_err();
    assert_eq!(damage(err), DamageKind::HashMismatch);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn replaced_mac_keys_set_cached_folds_aside(pool: PgPool) {
    let store = EventStore::new(repo(&pool));
    for by in 1..=3 {
        add(&store, "t-1", by).await.unwrap();
    }
    assert_eq!(store.load::<Tally>("t-1").await.unwrap().version, 3);
    // A rotation that keeps the old key: the stream still loads.
    let rotated = format!("k2={},k1={}", "33".repeat(32), hex::encode(MAC_KEY));
    store
        .repo()
        .keys()
        .replace(MacKeys::parse(&rotated).unwrap());
    assert_eq!(store.load::<Tally>("t-1").await.unwrap().aggregate.total, 6);
    // The old key retired: the fold checked under it is not used, and the
    // rows it signed no longer verify.
    store
        .repo()
        .keys()
        .replace(MacKeys::single("k2", vec![0x33; 32]).unwrap());
    let err = store.load::<Tally>("t-1").await.unwrap_err();
    assert_eq!(damage(err), DamageKind::UnknownMacKey);
}

/// Cached folds and whole streams alike are read by a primary-key scan per
/// stream, never by scanning the log.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn load_uses_the_primary_key(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let explain = format!("EXPLAIN (FORMAT JSON) {SELECT_STREAMS_FROM}");
    let plan = sqlx::query_scalar::<Postgres, Value>(&explain)
        .bind("Tally")
        .bind(vec!["t-1".to_owned(), "t-2".to_owned()])
        .bind(vec![0i64, 7])
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("\"Index Name\":\"events_pkey\"") && text.contains("Index Cond"),
        "{text}"
    );
}
