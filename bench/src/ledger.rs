//! Chained append (hash chain + MAC, global order columns) against plain
//! postgres-es append of the same events, and `verify` throughput.

use std::sync::Arc;
use std::time::Instant;

use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use postgres_es::PostgresEventRepository;
use queue_eventstore::verify::NoProgress;
use queue_eventstore::{
    db, verify_store, ChainedEventRepository, CheckpointSigner, MacKeys, Sealer, SealerConfig,
    SharedMacKeys, SystemClock, VerifyInput,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{rate, BenchResult, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Events each configuration appends (split across its writers).
    #[arg(long, default_value_t = 8_000)]
    events: u64,
    /// Events in the store that `verify` walks.
    #[arg(long, default_value_t = 200_000)]
    verify_events: u64,
}

/// Only `TYPE` is used: the repositories are driven directly.
#[derive(Default, Serialize, Deserialize)]
struct BenchAggregate;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct BenchEvent;

impl DomainEvent for BenchEvent {
    fn event_type(&self) -> String {
        "BenchEvent".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug)]
struct NoError;
impl std::fmt::Display for NoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("none")
    }
}
impl std::error::Error for NoError {}

impl Aggregate for BenchAggregate {
    const TYPE: &'static str = "Bench";
    type Command = ();
    type Event = BenchEvent;
    type Error = NoError;
    type Services = ();
    async fn handle(
        &mut self,
        _: (),
        _: &(),
        _: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), NoError> {
        Ok(())
    }
    fn apply(&mut self, _: BenchEvent) {}
}

fn event(stream: &str, sequence: usize) -> SerializedEvent {
    SerializedEvent::new(
        stream.to_string(),
        sequence,
        "Bench".into(),
        "SessionRefreshed".into(),
        "1.0".into(),
        json!({"session_id": stream, "previous": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
               "new": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752", "at": "2026-11-25T16:22:14.123456Z"}),
        json!({}),
    )
}

/// Each writer appends its share to its own streams, one event per call (as commands do).
async fn drive<R: PersistedEventRepository + 'static>(
    repo: Arc<R>,
    writers: u64,
    events: u64,
    tag: &str,
) -> BenchResult<f64> {
    let per_writer = events / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let repo = Arc::clone(&repo);
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let stream = format!("{tag}-w{w}-s{}", i / 10);
                let seq = (i % 10) as usize + 1;
                repo.persist::<BenchAggregate>(&[event(&stream, seq)], None)
                    .await?;
            }
            Ok::<(), cqrs_es::persist::PersistenceError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(per_writer * writers, started.elapsed().as_secs_f64()))
}

pub async fn run(args: Args) -> BenchResult<()> {
    let scratch = ScratchDb::create("queue_bench", 40).await?;
    let pool = scratch.pool.clone();
    db::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE pes_events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
         event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, \
         PRIMARY KEY (aggregate_type, aggregate_id, sequence)); \
         CREATE TABLE pes_snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         last_sequence bigint NOT NULL, current_snapshot bigint NOT NULL, payload json NOT NULL, \
         PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));",
    )
    .execute(&pool)
    .await?;
    let keys = MacKeys::single("bench", vec![0x42; 32])?;
    let chained = Arc::new(ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(keys.clone()),
        Arc::new(SystemClock),
    ));
    let plain = Arc::new(
        PostgresEventRepository::new(pool.clone()).with_tables("pes_events", "pes_snapshots"),
    );

    println!(
        "ledger append: {} events per configuration, one event per append",
        args.events
    );
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "writers", "plain ev/s", "chained ev/s", "ratio"
    );
    for writers in [1u64, 16] {
        // Warm both paths, then measure plain first and chained second, twice, keeping the better.
        let _ = drive(Arc::clone(&plain), writers, 200, &format!("warm{writers}")).await?;
        let _ = drive(
            Arc::clone(&chained),
            writers,
            200,
            &format!("warm{writers}"),
        )
        .await?;
        let mut best = (0f64, 0f64);
        for round in 0..2 {
            let p = drive(
                Arc::clone(&plain),
                writers,
                args.events,
                &format!("p{writers}r{round}"),
            )
            .await?;
            let c = drive(
                Arc::clone(&chained),
                writers,
                args.events,
                &format!("c{writers}r{round}"),
            )
            .await?;
            best = (best.0.max(p), best.1.max(c));
        }
        println!(
            "{:>8} {:>16.0} {:>16.0} {:>8.2}",
            writers,
            best.0,
            best.1,
            best.1 / best.0
        );
    }

    // Fill the store for verify with batched appends, then seal.
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let mut remaining = (args.verify_events as i64 - existing).max(0) as u64;
    let mut stream_no = 0u64;
    while remaining > 0 {
        let batch: Vec<SerializedEvent> = (0..remaining.min(1000))
            .map(|i| event(&format!("v-{}", stream_no + i / 5), (i % 5) as usize + 1))
            .collect();
        stream_no += (batch.len() as u64).div_ceil(5);
        remaining -= batch.len() as u64;
        chained.append(&batch).await?;
    }
    let signer = Arc::new(CheckpointSigner::generate("bench.queue/ledger")?);
    let sealed_at = Instant::now();
    let sealed = Sealer::new(
        Arc::clone(&signer),
        SealerConfig::default(),
        SharedMacKeys::new(keys.clone()),
    )
    .seal_pending(&pool)
    .await?;
    let seal_rate = rate(sealed.sealed, sealed_at.elapsed().as_secs_f64());

    let scan_rate = crate::support::ordered_scan_rate(&pool).await?;
    let verifier = signer.verifier();
    let report = verify_store(
        &pool,
        &VerifyInput {
            mac_keys: &keys,
            checkpoint_key: &verifier,
            external_checkpoints: &[],
        },
        &NoProgress,
    )
    .await?;
    println!(
        "seal: {} events at {:.0} ev/s; verify: {} events, ok={}, {} ev/s ({} ms); bare ordered scan in SQL {:.0} ev/s; verify/scan {:.2}",
        sealed.sealed,
        seal_rate,
        report.events,
        report.ok,
        report.events_per_second,
        report.elapsed_ms,
        scan_rate,
        report.events_per_second as f64 / scan_rate
    );
    canonical_forms(&pool).await?;
    scratch.drop_db().await?;
    Ok(())
}

/// The canonicalisation step alone, on the stored payloads: through a
/// parsed `serde_json::Value` (how loads and the old verify did it) against
/// streaming from the JSON text (verify and verify-export now), one thread.
async fn canonical_forms(pool: &sqlx::PgPool) -> BenchResult<()> {
    let texts: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events LIMIT 200000")
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(512);
    let value_at = Instant::now();
    for text in &texts {
        let value = queue_eventstore::strict_json::parse(text)?;
        out.clear();
        queue_eventstore::chain::write_canonical(&value, &mut out)?;
    }
    let value_rate = rate(texts.len() as u64, value_at.elapsed().as_secs_f64());
    let text_at = Instant::now();
    for text in &texts {
        out.clear();
        queue_eventstore::strict_json::canonicalise(text, &mut out)?;
    }
    let text_rate = rate(texts.len() as u64, text_at.elapsed().as_secs_f64());
    println!(
        "canonical form of {} payloads: via Value {value_rate:.0}/s, streamed from text {text_rate:.0}/s ({:.2}x)",
        texts.len(),
        text_rate / value_rate.max(1e-9)
    );
    Ok(())
}
