//! `queue verify`: recomputes every stream hash, MAC, ledger leaf, Merkle
//! root and checkpoint signature, and names the first bad event.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::chain::{self, EventRecord, Hash, ZERO_HASH};
use crate::checkpoint::Checkpoint;
use crate::error::{StoreError, StoreResult};
use crate::keys::{MacKeys, NoteVerifier};
use crate::merkle::{self, Frontier};

/// Most problems listed in one report (the count is always exact).
const MAX_LISTED: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    SequenceGap,
    PrevHashMismatch,
    HashMismatch,
    MacInvalid,
    UnknownMacKey,
    InvalidPayload,
    LedgerGap,
    LedgerMissingEvent,
    LedgerHashMismatch,
    LedgerDuplicate,
    LedgerOrder,
    UnsealedNotNewest,
    /// An event at or before the sealer's recorded position that is not in
    /// the ledger (the position was moved past it: it would never be sealed).
    SkippedBySealer,
    /// The event count is not the ledger size plus the unsealed tail.
    EventCountMismatch,
    CheckpointSignature,
    CheckpointMismatch,
    CheckpointBeyondLedger,
    CheckpointRootMismatch,
    ExternalCheckpointSignature,
    ExternalCheckpointBeyondLedger,
    ExternalCheckpointRootMismatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_size: Option<u64>,
    pub detail: String,
}

impl Problem {
    fn event(kind: ProblemKind, ev: &EventKey, ledger_seq: Option<i64>, detail: String) -> Self {
        Self {
            kind,
            aggregate_type: Some(ev.aggregate_type.clone()),
            aggregate_id: Some(ev.aggregate_id.clone()),
            sequence: Some(ev.sequence),
            ledger_seq,
            tree_size: None,
            detail,
        }
    }

    fn checkpoint(kind: ProblemKind, tree_size: u64, detail: String) -> Self {
        Self {
            kind,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
            ledger_seq: Some(tree_size as i64),
            tree_size: Some(tree_size),
            detail,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let mut place = Vec::new();
        if let (Some(t), Some(i)) = (&self.aggregate_type, &self.aggregate_id) {
            place.push(format!("stream {t}/{i}"));
        }
        if let Some(s) = self.sequence {
            place.push(format!("sequence {s}"));
        }
        if let Some(l) = self.ledger_seq {
            if self.tree_size.is_none() {
                place.push(format!("ledger seq {l}"));
            }
        }
        if let Some(t) = self.tree_size {
            place.push(format!("checkpoint tree size {t}"));
        }
        format!("{:?}: {} ({})", self.kind, self.detail, place.join(", "))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events: u64,
    pub streams: u64,
    pub ledger_size: u64,
    pub unsealed: u64,
    pub checkpoints: u64,
    pub external_checkpoints: u64,
    pub latest_checkpoint_size: Option<u64>,
    pub root_hash: String,
    pub problem_count: u64,
    pub first_problem: Option<Problem>,
    pub problems: Vec<Problem>,
    pub elapsed_ms: u64,
    pub events_per_second: u64,
}

/// What verification can report while it runs (a progress bar, a log).
pub trait VerifyProgress: Send + Sync {
    fn phase(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

pub struct NoProgress;
impl VerifyProgress for NoProgress {}

#[derive(Clone, Debug, PartialEq, Eq)]
struct EventKey {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
}

struct Findings {
    problems: Vec<Problem>,
    count: u64,
}

impl Findings {
    fn add(&mut self, p: Problem) {
        self.count += 1;
        if self.problems.len() < MAX_LISTED * 4 {
            self.problems.push(p);
        }
    }
}

pub struct VerifyInput<'a> {
    pub mac_keys: &'a MacKeys,
    pub checkpoint_key: &'a NoteVerifier,
    /// Checkpoint notes kept outside the database (an auditor's copy).
    pub external_checkpoints: &'a [String],
}

/// Verifies the whole store.
pub async fn verify_store(
    pool: &PgPool,
    input: &VerifyInput<'_>,
    progress: &dyn VerifyProgress,
) -> StoreResult<VerifyReport> {
    let started = Instant::now();
    let mut findings = Findings {
        problems: Vec::new(),
        count: 0,
    };
    let total_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let ledger_at_start: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await?;
    let (events, streams, unsealed) = verify_streams(
        pool,
        input.mac_keys,
        total_events as u64,
        progress,
        &mut findings,
    )
    .await?;
    let (ledger_size, root, checkpoint_count, latest) =
        verify_ledger(pool, input, progress, &mut findings).await?;
    // A safety net under the per-event checks (a ledger row without its
    // event, an unsealed event behind the sealer's position, … are reported
    // one by one and explain any difference): only meaningful on a store
    // that did not change while it was read (a live sealer or writer moves
    // both counts).
    let unchanged = events == total_events as u64 && ledger_size == ledger_at_start as u64;
    if unchanged && findings.count == 0 && events != ledger_size + unsealed {
        findings.add(Problem {
            kind: ProblemKind::EventCountMismatch,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
            ledger_seq: None,
            tree_size: Some(ledger_size),
            detail: format!(
                "{events} events, but the ledger holds {ledger_size} and {unsealed} are unsealed"
            ),
        });
    }

    findings
        .problems
        .sort_by_key(|p| (p.ledger_seq.unwrap_or(i64::MAX), p.kind));
    findings.problems.truncate(MAX_LISTED);
    let elapsed = started.elapsed();
    Ok(VerifyReport {
        ok: findings.count == 0,
        events,
        streams,
        ledger_size,
        unsealed,
        checkpoints: checkpoint_count,
        external_checkpoints: input.external_checkpoints.len() as u64,
        latest_checkpoint_size: latest,
        root_hash: hex::encode(root),
        problem_count: findings.count,
        first_problem: findings.problems.first().cloned(),
        problems: findings.problems,
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: (events as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
    })
}

/// One event row as pass 1 needs it.
struct StreamRow {
    key: EventKey,
    ledger_seq: Option<i64>,
    event_type: String,
    event_version: String,
    payload: Value,
    recorded_at: DateTime<Utc>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    mac: Vec<u8>,
    mac_key_id: String,
    /// The event's place in the global order.
    position: (i64, i64),
    /// The expensive part, computed off the checker's thread.
    computed: Option<Computed>,
}

type Computed = chain::RowCheck;

fn compute(row: &StreamRow, mac: &chain::MacVerifier) -> Computed {
    chain::check_row(
        &chain::StoredRow {
            record: EventRecord {
                aggregate_type: &row.key.aggregate_type,
                aggregate_id: &row.key.aggregate_id,
                sequence: row.key.sequence,
                event_type: &row.event_type,
                event_version: &row.event_version,
                recorded_at: row.recorded_at,
                payload: &row.payload,
            },
            prev_hash: &row.prev_hash,
            hash: &row.hash,
            mac: &row.mac,
            mac_key_id: &row.mac_key_id,
        },
        mac,
    )
}

/// Walks events in (stream, sequence) order and checks each stream's chain.
struct StreamChecker {
    mac: chain::MacVerifier,
    /// The sealer's recorded position: every event at or before it must be sealed.
    sealer_position: (i64, i64),
    findings: Findings,
    events: u64,
    streams: u64,
    unsealed: u64,
    current: Option<(String, String)>,
    last_sequence: i64,
    last_hash: Hash,
    last_ledger: i64,
    seen_unsealed: bool,
}

impl StreamChecker {
    fn new(keys: &MacKeys, sealer_position: (i64, i64)) -> Self {
        Self {
            mac: chain::MacVerifier::new(keys),
            sealer_position,
            findings: Findings {
                problems: Vec::new(),
                count: 0,
            },
            events: 0,
            streams: 0,
            unsealed: 0,
            current: None,
            last_sequence: 0,
            last_hash: ZERO_HASH,
            last_ledger: 0,
            seen_unsealed: false,
        }
    }

    fn check(&mut self, row: StreamRow) {
        let key = &row.key;
        let ledger_seq = row.ledger_seq;
        let same_stream = self
            .current
            .as_ref()
            .is_some_and(|(t, i)| *t == key.aggregate_type && *i == key.aggregate_id);
        if !same_stream {
            self.current = Some((key.aggregate_type.clone(), key.aggregate_id.clone()));
            self.streams += 1;
            self.last_sequence = 0;
            self.last_hash = ZERO_HASH;
            self.last_ledger = 0;
            self.seen_unsealed = false;
        } else if key.sequence == self.last_sequence {
            // The join produced the same event twice: two ledger rows name it.
            self.findings.add(Problem::event(
                ProblemKind::LedgerDuplicate,
                key,
                ledger_seq,
                "the event appears more than once in the ledger".into(),
            ));
            return;
        }
        self.events += 1;
        if key.sequence != self.last_sequence + 1 {
            self.findings.add(Problem::event(
                ProblemKind::SequenceGap,
                key,
                ledger_seq,
                format!(
                    "expected sequence {}, found {} (events missing)",
                    self.last_sequence + 1,
                    key.sequence
                ),
            ));
        }
        let expected_prev = if key.sequence == self.last_sequence + 1 {
            self.last_hash
        } else if key.sequence == 1 {
            ZERO_HASH
        } else {
            // After a gap the predecessor is unknown; the gap is the finding.
            chain::to_hash(&row.prev_hash).unwrap_or(ZERO_HASH)
        };
        if row.prev_hash.as_slice() != expected_prev.as_slice() {
            self.findings.add(Problem::event(
                ProblemKind::PrevHashMismatch,
                key,
                ledger_seq,
                "prev_hash does not equal the previous event's hash".into(),
            ));
        }
        let computed = match &row.computed {
            Some(c) => c,
            None => &compute(&row, &self.mac),
        };
        match &computed.hash {
            Err(err) => self.findings.add(Problem::event(
                ProblemKind::InvalidPayload,
                key,
                ledger_seq,
                err.clone(),
            )),
            Ok(true) => {}
            Ok(false) => self.findings.add(Problem::event(
                ProblemKind::HashMismatch,
                key,
                ledger_seq,
                "the stored hash does not match the event's fields".into(),
            )),
        }
        let stored: Hash = chain::to_hash(&row.hash).unwrap_or(ZERO_HASH);
        match computed.mac {
            None => self.findings.add(Problem::event(
                ProblemKind::UnknownMacKey,
                key,
                ledger_seq,
                format!(
                    "MAC key id {:?} is not among the configured keys",
                    row.mac_key_id
                ),
            )),
            Some(false) => self.findings.add(Problem::event(
                ProblemKind::MacInvalid,
                key,
                ledger_seq,
                format!("MAC does not verify under key {:?}", row.mac_key_id),
            )),
            Some(true) => {}
        }
        match ledger_seq {
            Some(seq) => {
                if self.seen_unsealed {
                    self.findings.add(Problem::event(
                        ProblemKind::UnsealedNotNewest,
                        key,
                        Some(seq),
                        "a sealed event follows an unsealed one in its stream".into(),
                    ));
                }
                if seq <= self.last_ledger {
                    self.findings.add(Problem::event(
                        ProblemKind::LedgerOrder,
                        key,
                        Some(seq),
                        format!(
                            "ledger seq {seq} does not rise with the stream (previous {})",
                            self.last_ledger
                        ),
                    ));
                }
                self.last_ledger = seq;
            }
            None => {
                self.unsealed += 1;
                self.seen_unsealed = true;
                if row.position <= self.sealer_position {
                    self.findings.add(Problem::event(
                        ProblemKind::SkippedBySealer,
                        key,
                        None,
                        "the event is at or before the sealer's position but not in the ledger \
                         (sealer_state was moved past it; no checkpoint will cover it)"
                            .into(),
                    ));
                }
            }
        }
        self.last_sequence = key.sequence;
        self.last_hash = stored;
    }
}

fn stream_row(row: &sqlx::postgres::PgRow) -> Result<StreamRow, sqlx::Error> {
    Ok(StreamRow {
        key: EventKey {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
        },
        ledger_seq: row.try_get("ledger_seq")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        recorded_at: row.try_get("recorded_at")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        mac: row.try_get("mac")?,
        mac_key_id: row.try_get("mac_key_id")?,
        position: (row.try_get("commit_xid")?, row.try_get("insert_id")?),
        computed: None,
    })
}

/// Pass 1: every stream's chain and MACs, and how each event sits in the
/// ledger. Decoding rows (here) and hashing (on a blocking thread) overlap.
async fn verify_streams(
    pool: &PgPool,
    keys: &MacKeys,
    total: u64,
    progress: &dyn VerifyProgress,
    findings: &mut Findings,
) -> StoreResult<(u64, u64, u64)> {
    progress.phase("streams", total);
    const BATCH: usize = 2048;
    /// Batches hashed concurrently on the blocking pool while rows decode.
    const IN_FLIGHT: usize = 3;
    let sealer_position: (i64, i64) =
        sqlx::query_as("SELECT last_xid, last_insert_id FROM sealer_state WHERE id = 1")
            .fetch_optional(pool)
            .await?
            .unwrap_or((0, 0));
    let mut checker = StreamChecker::new(keys, sealer_position);
    let mac = Arc::new(checker.mac.clone());
    let mut hashing = futures::stream::FuturesOrdered::new();
    let mut rows = sqlx::query(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
         e.payload, e.recorded_at, e.prev_hash, e.hash, e.mac, e.mac_key_id, l.seq AS ledger_seq, \
         e.commit_xid, e.insert_id \
         FROM events e LEFT JOIN ledger l USING (aggregate_type, aggregate_id, sequence) \
         ORDER BY e.aggregate_type, e.aggregate_id, e.sequence, l.seq",
    )
    .fetch(pool);
    let spawn = |mut batch: Vec<StreamRow>, mac: Arc<chain::MacVerifier>| {
        tokio::task::spawn_blocking(move || {
            for row in &mut batch {
                row.computed = Some(compute(row, &mac));
            }
            batch
        })
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next = rows.try_next().await?;
        let done = next.is_none();
        if let Some(row) = next {
            batch.push(stream_row(&row)?);
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            progress.advance(batch.len() as u64);
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            hashing.push_back(spawn(full, Arc::clone(&mac)));
        }
        while hashing.len() >= IN_FLIGHT || (done && !hashing.is_empty()) {
            let Some(result) = hashing.next().await else {
                break;
            };
            let hashed =
                result.map_err(|e| StoreError::Ledger(format!("verify worker failed: {e}")))?;
            for row in hashed {
                checker.check(row);
            }
        }
        if done {
            break;
        }
    }
    findings.count += checker.findings.count;
    findings.problems.extend(checker.findings.problems);
    Ok((checker.events, checker.streams, checker.unsealed))
}

/// Pass 2: the ledger rows, the Merkle roots and every checkpoint.
async fn verify_ledger(
    pool: &PgPool,
    input: &VerifyInput<'_>,
    progress: &dyn VerifyProgress,
    findings: &mut Findings,
) -> StoreResult<(u64, Hash, u64, Option<u64>)> {
    // Checkpoints to check, by tree size: (stored?, note, stored root).
    let mut wanted: BTreeMap<u64, Vec<(bool, Checkpoint)>> = BTreeMap::new();
    let stored =
        sqlx::query("SELECT tree_size, root_hash, note FROM checkpoints ORDER BY tree_size")
            .fetch_all(pool)
            .await?;
    let mut latest = None;
    for row in &stored {
        let tree_size: i64 = row.try_get("tree_size")?;
        let root: Vec<u8> = row.try_get("root_hash")?;
        let note: String = row.try_get("note")?;
        let size = tree_size.max(0) as u64;
        match Checkpoint::open(&note, input.checkpoint_key) {
            Ok(cp) => {
                if cp.tree_size != size || cp.root_hash.as_slice() != root.as_slice() {
                    findings.add(Problem::checkpoint(
                        ProblemKind::CheckpointMismatch,
                        size,
                        "the tree_size/root_hash columns differ from the signed note".into(),
                    ));
                }
                latest = Some(size);
                wanted.entry(cp.tree_size).or_default().push((true, cp));
            }
            Err(err) => findings.add(Problem::checkpoint(
                ProblemKind::CheckpointSignature,
                size,
                format!("checkpoint note does not verify: {err}"),
            )),
        }
    }
    for (index, note) in input.external_checkpoints.iter().enumerate() {
        match Checkpoint::open(note, input.checkpoint_key) {
            Ok(cp) => wanted.entry(cp.tree_size).or_default().push((false, cp)),
            Err(err) => findings.add(Problem {
                kind: ProblemKind::ExternalCheckpointSignature,
                aggregate_type: None,
                aggregate_id: None,
                sequence: None,
                ledger_seq: None,
                tree_size: None,
                detail: format!("external checkpoint #{} does not verify: {err}", index + 1),
            }),
        }
    }

    let ledger_total: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await?;
    progress.phase("ledger", ledger_total as u64);
    let mut rows = sqlx::query(
        "SELECT l.seq, l.aggregate_type, l.aggregate_id, l.sequence, l.event_hash, e.hash \
         FROM ledger l LEFT JOIN events e USING (aggregate_type, aggregate_id, sequence) \
         ORDER BY l.seq",
    )
    .fetch(pool);
    let mut frontier = Frontier::new();
    let mut check_at = |frontier: &Frontier, findings: &mut Findings| {
        if let Some(list) = wanted.remove(&frontier.size()) {
            let root = frontier.root();
            for (stored, cp) in list {
                if cp.root_hash != root {
                    let kind = if stored {
                        ProblemKind::CheckpointRootMismatch
                    } else {
                        ProblemKind::ExternalCheckpointRootMismatch
                    };
                    findings.add(Problem::checkpoint(
                        kind,
                        cp.tree_size,
                        "the signed root differs from the ledger's root at that size (history rewritten)"
                            .into(),
                    ));
                }
            }
        }
    };
    check_at(&frontier, findings);
    let mut pending = 0u64;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get("seq")?;
        let key = EventKey {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
        };
        let expected = frontier.size() as i64 + 1;
        if seq != expected {
            findings.add(Problem::event(
                ProblemKind::LedgerGap,
                &key,
                Some(seq),
                format!("expected ledger seq {expected}, found {seq}"),
            ));
        }
        let leaf: Vec<u8> = row.try_get("event_hash")?;
        let event_hash: Option<Vec<u8>> = row.try_get("hash")?;
        match event_hash {
            None => findings.add(Problem::event(
                ProblemKind::LedgerMissingEvent,
                &key,
                Some(seq),
                "the ledger names an event that is not in the store (deleted)".into(),
            )),
            Some(h) if h != leaf => findings.add(Problem::event(
                ProblemKind::LedgerHashMismatch,
                &key,
                Some(seq),
                "the event's hash differs from the sealed leaf".into(),
            )),
            Some(_) => {}
        }
        frontier.push(merkle::leaf_hash(&leaf));
        check_at(&frontier, findings);
        pending += 1;
        if pending == 4096 {
            progress.advance(pending);
            pending = 0;
        }
    }
    progress.advance(pending);
    let size = frontier.size();
    for (tree_size, list) in wanted {
        for (stored, _) in list {
            let kind = if stored {
                ProblemKind::CheckpointBeyondLedger
            } else {
                ProblemKind::ExternalCheckpointBeyondLedger
            };
            findings.add(Problem::checkpoint(
                kind,
                tree_size,
                format!("a signed checkpoint covers {tree_size} entries but the ledger has {size} (truncated)"),
            ));
        }
    }
    Ok((size, frontier.root(), stored.len() as u64, latest))
}
