//! The sealer: takes committed events in a stable global order and appends
//! them to the gap-free ledger as Merkle leaves, writing signed checkpoints.
//!
//! Order: events are read through `feed::FeedRead` by (commit_xid,
//! insert_id), and only those whose transaction id is below
//! `pg_snapshot_xmin(pg_current_snapshot())`: every
//! transaction below that watermark has finished, and any transaction that
//! will still write gets a larger id. So a late commit is never skipped,
//! and writers never take a global lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;

use crate::chain::{self, Hash, MacVerifier, ZERO_HASH};
use crate::checkpoint::Checkpoint;
use crate::error::{StoreError, StoreResult};
use crate::feed::{Columns, FeedRead, Position, Until};
use crate::integrity::{DamageKind, Finder, IntegrityError, IntegrityMonitor};
use crate::keys::{CheckpointSigner, SharedCheckpointSigner};
use crate::merkle::{self, Frontier};
use crate::repository::SharedMacKeys;
use crate::unit_of_work::ChainedRow;

/// Advisory lock key held by the one active sealer ("queue.sealer").
pub const SEALER_LOCK_KEY: i64 = 0x7175_6575_7365_616c;

/// How long `seal_pending` waits for older transactions to finish.
const PENDING_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct SealerConfig {
    /// Events sealed per transaction.
    pub batch_size: i64,
    /// Write a checkpoint once this many events were sealed since the last one…
    pub checkpoint_every: u64,
    /// …or once this much time passed with new events.
    pub checkpoint_interval: Duration,
    /// Sleep between polls when there is nothing to seal.
    pub poll_interval: Duration,
    /// How often a standby retries the leader lock.
    pub standby_interval: Duration,
}

impl Default for SealerConfig {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            standby_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealOutcome {
    pub sealed: u64,
    /// The first row that did not verify: sealing stopped before it.
    pub halted: Option<IntegrityError>,
    pub tree_size: u64,
    pub checkpoint: Option<u64>,
    /// Every transaction id below this had finished when the batch was read.
    pub watermark: i64,
}

#[derive(Clone)]
pub struct Sealer {
    /// Swappable: a checkpoint key rotation reaches a running sealer.
    signer: SharedCheckpointSigner,
    config: SealerConfig,
    /// Every row is checked (link, hash, MAC) before it is sealed.
    mac: SharedMacKeys,
    integrity: IntegrityMonitor,
}

struct SealerState {
    last_xid: i64,
    last_insert_id: i64,
    frontier: Frontier,
    last_checkpoint_size: i64,
}

impl Sealer {
    pub fn new(signer: Arc<CheckpointSigner>, config: SealerConfig, mac: SharedMacKeys) -> Self {
        Self::with_shared_signer(
            SharedCheckpointSigner::new(CheckpointSigner::clone(&signer)),
            config,
            mac,
        )
    }

    /// A sealer that signs with whatever key `signer` holds at each checkpoint.
    pub fn with_shared_signer(
        signer: SharedCheckpointSigner,
        config: SealerConfig,
        mac: SharedMacKeys,
    ) -> Self {
        Self {
            signer,
            config,
            mac,
            integrity: IntegrityMonitor::new(),
        }
    }

    /// Reports integrity findings through `monitor` (shared with `/readyz`).
    pub fn with_integrity(mut self, monitor: IntegrityMonitor) -> Self {
        self.integrity = monitor;
        self
    }

    pub fn signer(&self) -> Arc<CheckpointSigner> {
        self.signer.current()
    }

    /// Seals one batch in one transaction. The sealer row is locked FOR
    /// UPDATE, so even two sealers that both believe they lead cannot
    /// interleave: the ledger stays gap-free and duplicate-free.
    pub async fn seal_batch(
        &self,
        conn: &mut PgConnection,
        force_checkpoint: bool,
    ) -> StoreResult<SealOutcome> {
        let mut tx = conn.begin().await?;
        // Read the watermark before this transaction takes an id of its own.
        let watermark = crate::feed::watermark(&mut tx).await?;
        let state = load_state(&mut tx).await?;
        // Each row comes with its stream predecessor's hash: the predecessor
        // committed earlier (or earlier in the same transaction), so it was
        // checked when it was sealed, and the chain of checks is unbroken.
        let after = Position {
            commit_xid: state.last_xid,
            insert_id: state.last_insert_id,
        };
        let rows = FeedRead::new(
            Columns::ChainedWithPredecessor,
            after,
            Until::Watermark(watermark),
        )
        .limit(self.config.batch_size)
        .fetch_all(&mut tx)
        .await?;

        let mac = self.mac.verifier();
        let mut halted = None;
        let mut frontier = state.frontier;
        let first_seq = frontier.size() as i64 + 1;
        let (mut types, mut ids, mut seqs, mut hashes, mut ledger_seqs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut last_xid, mut last_insert_id) = (state.last_xid, state.last_insert_id);
        for (offset, row) in rows.iter().enumerate() {
            let hash = match check_sealing_row(row, &mac)? {
                Ok(hash) => hash,
                Err(err) => {
                    self.integrity.record(Finder::Sealer, &err);
                    halted = Some(err);
                    break;
                }
            };
            frontier.push(merkle::leaf_hash(&hash));
            types.push(row.try_get::<String, _>("aggregate_type")?);
            ids.push(row.try_get::<String, _>("aggregate_id")?);
            seqs.push(row.try_get::<i64, _>("sequence")?);
            hashes.push(hash.to_vec());
            ledger_seqs.push(first_seq + offset as i64);
            last_xid = row.try_get("commit_xid")?;
            last_insert_id = row.try_get("insert_id")?;
        }
        let sealed = types.len();
        if sealed > 0 {
            sqlx::query(
                "INSERT INTO ledger (seq, aggregate_type, aggregate_id, sequence, event_hash) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bytea[])",
            )
            .bind(&ledger_seqs)
            .bind(&types)
            .bind(&ids)
            .bind(&seqs)
            .bind(&hashes)
            .execute(&mut *tx)
            .await?;
        }
        let tree_size = frontier.size();
        let since_checkpoint = tree_size as i64 - state.last_checkpoint_size.max(0);
        let want_checkpoint = (tree_size as i64) > state.last_checkpoint_size
            && (force_checkpoint || since_checkpoint >= self.config.checkpoint_every as i64);
        let mut checkpoint = None;
        let mut last_checkpoint_size = state.last_checkpoint_size;
        if want_checkpoint {
            let signer = self.signer.current();
            let cp = Checkpoint {
                origin: signer.name().to_string(),
                tree_size,
                root_hash: frontier.root(),
            };
            sqlx::query(
                "INSERT INTO checkpoints (tree_size, root_hash, note) VALUES ($1, $2, $3) \
                 ON CONFLICT (tree_size, note) DO NOTHING",
            )
            .bind(tree_size as i64)
            .bind(cp.root_hash.to_vec())
            .bind(cp.sign(&signer))
            .execute(&mut *tx)
            .await?;
            checkpoint = Some(tree_size);
            last_checkpoint_size = tree_size as i64;
        }
        if sealed > 0 || checkpoint.is_some() {
            sqlx::query(
                "UPDATE sealer_state SET last_xid = $1, last_insert_id = $2, tree_size = $3, \
                 frontier = $4, last_checkpoint_size = $5, updated_at = now() WHERE id = 1",
            )
            .bind(last_xid)
            .bind(last_insert_id)
            .bind(tree_size as i64)
            .bind(frontier.to_bytes())
            .bind(last_checkpoint_size)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if halted.is_none() && sealed > 0 {
            self.integrity.sealer_resumed();
        }
        Ok(SealOutcome {
            sealed: sealed as u64,
            halted,
            tree_size,
            checkpoint,
            watermark,
        })
    }

    /// Seals every event committed before the call and writes a checkpoint
    /// over it (clean shutdown, export, tests). Waits while older write
    /// transactions anywhere in the cluster hold the watermark back, up to
    /// `PENDING_WAIT`.
    pub async fn seal_pending(&self, pool: &PgPool) -> StoreResult<SealOutcome> {
        let mut conn = pool.acquire().await?;
        let target = crate::feed::horizon(&mut conn).await?;
        let deadline = Instant::now() + PENDING_WAIT;
        let mut total = SealOutcome::default();
        loop {
            let outcome = self.seal_batch(&mut conn, false).await?;
            if let Some(err) = outcome.halted {
                // Everything before the damaged row is sealed; nothing past it is.
                let _ = self.seal_batch(&mut conn, true).await;
                return Err(err.into());
            }
            total.sealed += outcome.sealed;
            total.tree_size = outcome.tree_size;
            total.checkpoint = outcome.checkpoint.or(total.checkpoint);
            total.watermark = outcome.watermark;
            if outcome.sealed > 0 {
                continue;
            }
            if outcome.watermark >= target {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Ledger(format!(
                    "a write transaction older than xid {target} is still open after {}s; \
                     the ledger cannot pass it (see pg_stat_activity)",
                    PENDING_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = self.seal_batch(&mut conn, true).await?;
        total.tree_size = last.tree_size;
        total.checkpoint = last.checkpoint.or(total.checkpoint);
        Ok(total)
    }

    /// Runs as leader or standby until `shutdown` turns true. The leader holds
    /// a session advisory lock on its own connection and seals on that same
    /// connection: if the connection dies, the lock goes with it and a standby
    /// takes over.
    pub async fn run(self, connect: PgConnectOptions, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.lead(&connect, &mut shutdown).await {
                Ok(()) => {}
                Err(err) => tracing::warn!(error = %err, "sealer lost its connection; retrying"),
            }
            if *shutdown.borrow() {
                break;
            }
            if stop_requested_within(&mut shutdown, self.config.standby_interval).await {
                break;
            }
        }
    }

    async fn lead(
        &self,
        connect: &PgConnectOptions,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StoreResult<()> {
        let mut conn = PgConnection::connect_with(connect).await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SEALER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !acquired {
            return Ok(());
        }
        tracing::info!("sealer: this instance is the leader");
        let mut last_checkpoint = Instant::now();
        loop {
            let due = last_checkpoint.elapsed() >= self.config.checkpoint_interval;
            let outcome = self.seal_batch(&mut conn, due).await?;
            if outcome.checkpoint.is_some() || due {
                last_checkpoint = Instant::now();
            }
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                // Clean point: seal what is committed and checkpoint it.
                while self.seal_batch(&mut conn, false).await?.sealed > 0 {}
                self.seal_batch(&mut conn, true).await?;
                return Ok(());
            }
            if outcome.sealed == 0 {
                // The next pass sees the stop and seals to a clean point.
                let _ = stop_requested_within(shutdown, self.config.poll_interval).await;
            }
        }
    }
}

/// Sleeps for `wait` unless a stop is requested first; a dropped sender
/// counts as a stop, so the loop can never spin.
async fn stop_requested_within(shutdown: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => *shutdown.borrow(),
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
    }
}

/// Checks one row read for sealing against its stream predecessor: the
/// outer error is a decoding failure, the inner one damage.
fn check_sealing_row(
    row: &sqlx::postgres::PgRow,
    mac: &MacVerifier,
) -> StoreResult<Result<Hash, IntegrityError>> {
    let chained = ChainedRow::decode(row)?;
    let sequence = chained.event.sequence as i64;
    let predecessor: Option<Vec<u8>> = row.try_get("predecessor_hash")?;
    let previous = match (sequence, predecessor) {
        (1, _) => None,
        (_, Some(hash)) => Some((sequence - 1, chain::to_hash(&hash).unwrap_or(ZERO_HASH))),
        (_, None) => {
            return Ok(Err(IntegrityError {
                aggregate_type: chained.event.aggregate_type,
                aggregate_id: chained.event.aggregate_id,
                sequence,
                kind: DamageKind::SequenceGap,
            }))
        }
    };
    Ok(chained.check(previous, mac))
}

async fn load_state(conn: &mut PgConnection) -> StoreResult<SealerState> {
    let row = sqlx::query(
        "SELECT last_xid, last_insert_id, tree_size, frontier, last_checkpoint_size \
         FROM sealer_state WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut *conn)
    .await?;
    let tree_size: i64 = row.try_get("tree_size")?;
    let frontier_bytes: Vec<u8> = row.try_get("frontier")?;
    let frontier = Frontier::from_bytes(tree_size as u64, &frontier_bytes)
        .ok_or_else(|| StoreError::Ledger("sealer frontier does not match the tree size".into()))?;
    Ok(SealerState {
        last_xid: row.try_get("last_xid")?,
        last_insert_id: row.try_get("last_insert_id")?,
        frontier,
        last_checkpoint_size: row.try_get("last_checkpoint_size")?,
    })
}
