//! `queue verify`: recomputes every stream hash, MAC, ledger leaf, Merkle
//! root and checkpoint signature, and names the first bad event.

use std::collections::BTreeMap;
use std::time::Instant;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::postgres::PgRow;
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
        Self::at(
            kind,
            (&ev.aggregate_type, &ev.aggregate_id, ev.sequence),
            ledger_seq,
            detail,
        )
    }

    fn at(
        kind: ProblemKind,
        (aggregate_type, aggregate_id, sequence): (&str, &str, i64),
        ledger_seq: Option<i64>,
        detail: String,
    ) -> Self {
        Self {
            kind,
            aggregate_type: Some(aggregate_type.to_owned()),
            aggregate_id: Some(aggregate_id.to_owned()),
            sequence: Some(sequence),
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
    // The two passes read different tables: they run at the same time (the
    // streams pass is bound by the server's ordered read, the ledger pass
    // by Merkle hashing here).
    let ledger_pass = tokio::spawn(verify_ledger(
        pool.clone(),
        input.checkpoint_key.clone(),
        input.external_checkpoints.to_vec(),
    ));
    let streams_pass = verify_streams(pool, input.mac_keys, total_events as u64, progress).await;
    let ledger_pass = ledger_pass
        .await
        .map_err(|e| StoreError::Ledger(format!("ledger pass failed: {e}")))?;
    let (checker, (ledger_findings, ledger_size, root, checkpoint_count, latest)) =
        (streams_pass?, ledger_pass?);
    let (events, streams, unsealed) = (checker.events, checker.streams, checker.unsealed);
    findings.count += checker.findings.count + ledger_findings.count;
    findings.problems.extend(checker.findings.problems);
    findings.problems.extend(ledger_findings.problems);
    // Ledger rows whose event is gone: the streams pass joined every event
    // with its ledger rows; when fewer joined than the ledger holds (or an
    // event had two), look for the rows without an event.
    if checker.ledger_joined != ledger_size || checker.duplicates > 0 {
        missing_events(pool, ledger_size, &mut findings).await?;
    }
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

/// Ledger rows (up to `size`) that name an event the store does not hold.
async fn missing_events(pool: &PgPool, size: u64, findings: &mut Findings) -> StoreResult<()> {
    let mut rows = sqlx::query(
        "SELECT l.seq, l.aggregate_type, l.aggregate_id, l.sequence FROM ledger l \
         WHERE l.seq <= $1 AND NOT EXISTS (SELECT 1 FROM events e \
           WHERE e.aggregate_type = l.aggregate_type AND e.aggregate_id = l.aggregate_id \
           AND e.sequence = l.sequence) \
         ORDER BY l.seq",
    )
    .bind(size as i64)
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let key = EventKey {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
        };
        findings.add(Problem::event(
            ProblemKind::LedgerMissingEvent,
            &key,
            Some(row.try_get("seq")?),
            "the ledger names an event that is not in the store (deleted)".into(),
        ));
    }
    Ok(())
}

/// The columns of the streams pass, by position (see `streams_query`).
mod col {
    pub const TYPE: usize = 0;
    pub const ID: usize = 1;
    pub const SEQUENCE: usize = 2;
    pub const EVENT_TYPE: usize = 3;
    pub const EVENT_VERSION: usize = 4;
    pub const PAYLOAD: usize = 5;
    pub const RECORDED_AT: usize = 6;
    pub const PREV_HASH: usize = 7;
    pub const HASH: usize = 8;
    pub const MAC: usize = 9;
    pub const MAC_KEY_ID: usize = 10;
    pub const LEDGER_SEQ: usize = 11;
    pub const LEAF: usize = 12;
    pub const AT_OR_BEFORE_SEALER: usize = 13;
}

/// Every event of one key range with its ledger row(s), in stream order.
/// The payload comes as JSON text and is canonicalised as it is read (no
/// `Value` is built). Whether an unsealed event lies at or before the
/// sealer's position (`$1`, `$2`) is computed by the server, so the two
/// position columns do not travel. The range is `[lower, upper)` over
/// (aggregate_type, aggregate_id), each bound present or not (bound as the
/// next two parameters each, lower first): a stream
/// lies wholly in one range. The bound is repeated on the ledger side (it
/// holds for every joined row anyway) so that both index scans start at it.
fn streams_query(lower: bool, upper: bool) -> String {
    let mut on_events = Vec::new();
    let mut on_ledger = String::new();
    let mut next = 3;
    for (present, op) in [(lower, ">="), (upper, "<")] {
        if present {
            let (a, b) = (next, next + 1);
            next += 2;
            on_events.push(format!(
                "(e.aggregate_type, e.aggregate_id) {op} (${a}, ${b})"
            ));
            on_ledger.push_str(&format!(
                " AND (l.aggregate_type, l.aggregate_id) {op} (${a}, ${b})"
            ));
        }
    }
    let filter = if on_events.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", on_events.join(" AND "))
    };
    format!(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
         e.event_version, e.payload::text, e.recorded_at, e.prev_hash, e.hash, e.mac, e.mac_key_id, \
         l.seq, l.event_hash, \
         l.seq IS NULL AND (e.commit_xid, e.insert_id) <= ($1::bigint, $2::bigint) \
         FROM events e LEFT JOIN ledger l ON l.aggregate_type = e.aggregate_type \
           AND l.aggregate_id = e.aggregate_id AND l.sequence = e.sequence{on_ledger}{filter} \
         ORDER BY e.aggregate_type, e.aggregate_id, e.sequence, l.seq"
    )
}

type Computed = chain::RowCheck;

/// The expensive part of a row (canonical form, hash, MAC), decoded in
/// place from the row (nothing copied), on a worker thread.
fn compute(
    row: &PgRow,
    mac: &chain::MacVerifier,
    buf: &mut Vec<u8>,
) -> Result<Computed, sqlx::Error> {
    let stored = chain::StoredRow::<str> {
        record: EventRecord {
            aggregate_type: row.try_get(col::TYPE)?,
            aggregate_id: row.try_get(col::ID)?,
            sequence: row.try_get(col::SEQUENCE)?,
            event_type: row.try_get(col::EVENT_TYPE)?,
            event_version: row.try_get(col::EVENT_VERSION)?,
            recorded_at: row.try_get(col::RECORDED_AT)?,
            payload: row.try_get::<&str, _>(col::PAYLOAD)?,
        },
        prev_hash: row.try_get(col::PREV_HASH)?,
        hash: row.try_get(col::HASH)?,
        mac: row.try_get(col::MAC)?,
        mac_key_id: row.try_get(col::MAC_KEY_ID)?,
    };
    Ok(chain::check_row_with(&stored, mac, buf))
}

/// What the sequential checker reads of a row (borrowed from it).
struct RowView<'r> {
    aggregate_type: &'r str,
    aggregate_id: &'r str,
    sequence: i64,
    prev_hash: &'r [u8],
    hash: &'r [u8],
    mac_key_id: &'r str,
    ledger_seq: Option<i64>,
    /// The ledger row's `event_hash`, when the event is sealed.
    leaf: Option<&'r [u8]>,
    /// Unsealed and at or before the sealer's recorded position.
    behind_sealer: bool,
}

impl<'r> RowView<'r> {
    fn decode(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            aggregate_type: row.try_get(col::TYPE)?,
            aggregate_id: row.try_get(col::ID)?,
            sequence: row.try_get(col::SEQUENCE)?,
            prev_hash: row.try_get(col::PREV_HASH)?,
            hash: row.try_get(col::HASH)?,
            mac_key_id: row.try_get(col::MAC_KEY_ID)?,
            ledger_seq: row.try_get(col::LEDGER_SEQ)?,
            leaf: row.try_get(col::LEAF)?,
            behind_sealer: row.try_get(col::AT_OR_BEFORE_SEALER)?,
        })
    }

    fn key(&self) -> (&'r str, &'r str, i64) {
        (self.aggregate_type, self.aggregate_id, self.sequence)
    }
}

/// Walks events in (stream, sequence) order and checks each stream's chain.
struct StreamChecker {
    findings: Findings,
    events: u64,
    streams: u64,
    unsealed: u64,
    /// Event rows joined with a ledger row (one per ledger row that names
    /// an existing event).
    ledger_joined: u64,
    /// Events named by more than one ledger row.
    duplicates: u64,
    current: Option<(String, String)>,
    last_sequence: i64,
    last_hash: Hash,
    last_ledger: i64,
    seen_unsealed: bool,
}

impl StreamChecker {
    fn new() -> Self {
        Self {
            findings: Findings {
                problems: Vec::new(),
                count: 0,
            },
            events: 0,
            streams: 0,
            unsealed: 0,
            ledger_joined: 0,
            duplicates: 0,
            current: None,
            last_sequence: 0,
            last_hash: ZERO_HASH,
            last_ledger: 0,
            seen_unsealed: false,
        }
    }

    /// Adds the counts and findings of the checker of the next key range
    /// (no stream spans two ranges).
    fn absorb(&mut self, next: StreamChecker) {
        self.events += next.events;
        self.streams += next.streams;
        self.unsealed += next.unsealed;
        self.ledger_joined += next.ledger_joined;
        self.duplicates += next.duplicates;
        self.findings.count += next.findings.count;
        let room = (MAX_LISTED * 4).saturating_sub(self.findings.problems.len());
        self.findings
            .problems
            .extend(next.findings.problems.into_iter().take(room));
    }

    fn check(&mut self, row: &RowView<'_>, computed: &Computed) {
        let key = row.key();
        let ledger_seq = row.ledger_seq;
        if ledger_seq.is_some() {
            self.ledger_joined += 1;
        }
        let same_stream = self
            .current
            .as_ref()
            .is_some_and(|(t, i)| t == row.aggregate_type && i == row.aggregate_id);
        if !same_stream {
            self.current = Some((row.aggregate_type.to_owned(), row.aggregate_id.to_owned()));
            self.streams += 1;
            self.last_sequence = 0;
            self.last_hash = ZERO_HASH;
            self.last_ledger = 0;
            self.seen_unsealed = false;
        } else if row.sequence == self.last_sequence {
            // The join produced the same event twice: two ledger rows name it.
            self.duplicates += 1;
            self.findings.add(Problem::at(
                ProblemKind::LedgerDuplicate,
                key,
                ledger_seq,
                "the event appears more than once in the ledger".into(),
            ));
            return;
        }
        self.events += 1;
        if row.sequence != self.last_sequence + 1 {
            self.findings.add(Problem::at(
                ProblemKind::SequenceGap,
                key,
                ledger_seq,
                format!(
                    "expected sequence {}, found {} (events missing)",
                    self.last_sequence + 1,
                    row.sequence
                ),
            ));
        }
        let expected_prev = if row.sequence == self.last_sequence + 1 {
            self.last_hash
        } else if row.sequence == 1 {
            ZERO_HASH
        } else {
            // After a gap the predecessor is unknown; the gap is the finding.
            chain::to_hash(row.prev_hash).unwrap_or(ZERO_HASH)
        };
        if row.prev_hash != expected_prev.as_slice() {
            self.findings.add(Problem::at(
                ProblemKind::PrevHashMismatch,
                key,
                ledger_seq,
                "prev_hash does not equal the previous event's hash".into(),
            ));
        }
        match &computed.hash {
            Err(err) => self.findings.add(Problem::at(
                ProblemKind::InvalidPayload,
                key,
                ledger_seq,
                err.clone(),
            )),
            Ok(true) => {}
            Ok(false) => self.findings.add(Problem::at(
                ProblemKind::HashMismatch,
                key,
                ledger_seq,
                "the stored hash does not match the event's fields".into(),
            )),
        }
        let stored: Hash = chain::to_hash(row.hash).unwrap_or(ZERO_HASH);
        match computed.mac {
            None => self.findings.add(Problem::at(
                ProblemKind::UnknownMacKey,
                key,
                ledger_seq,
                format!(
                    "MAC key id {:?} is not among the configured keys",
                    row.mac_key_id
                ),
            )),
            Some(false) => self.findings.add(Problem::at(
                ProblemKind::MacInvalid,
                key,
                ledger_seq,
                format!("MAC does not verify under key {:?}", row.mac_key_id),
            )),
            Some(true) => {}
        }
        match ledger_seq {
            Some(seq) => {
                if row.leaf != Some(row.hash) {
                    self.findings.add(Problem::at(
                        ProblemKind::LedgerHashMismatch,
                        key,
                        Some(seq),
                        "the event's hash differs from the sealed leaf".into(),
                    ));
                }
                if self.seen_unsealed {
                    self.findings.add(Problem::at(
                        ProblemKind::UnsealedNotNewest,
                        key,
                        Some(seq),
                        "a sealed event follows an unsealed one in its stream".into(),
                    ));
                }
                if seq <= self.last_ledger {
                    self.findings.add(Problem::at(
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
                if row.behind_sealer {
                    self.findings.add(Problem::at(
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
        self.last_sequence = row.sequence;
        self.last_hash = stored;
    }
}

/// Rows per batch handed to a worker.
const BATCH: usize = 2048;

/// Key ranges read at the same time, on as many connections.
const MAX_RANGES: usize = 4;

/// Bounds splitting the streams, by (aggregate_type, aggregate_id), into up
/// to `ranges` ranges of about the same number of events: taken from a
/// sample of the table (every row when it is small), so the split costs a
/// few milliseconds however large the store is.
async fn split_points(
    pool: &PgPool,
    total: u64,
    ranges: usize,
) -> StoreResult<Vec<(String, String)>> {
    if ranges < 2 || total < 2 {
        return Ok(Vec::new());
    }
    // About 20,000 sampled rows: plenty to balance the ranges.
    let percent = (2_000_000.0 / total as f32).min(100.0);
    let sample: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id FROM events TABLESAMPLE SYSTEM ($1::real) REPEATABLE (21) \
         ORDER BY aggregate_type, aggregate_id",
    )
    .bind(percent)
    .fetch_all(pool)
    .await?;
    let mut points: Vec<(String, String)> = (1..ranges)
        .filter_map(|k| sample.get(k * sample.len() / ranges).cloned())
        .collect();
    points.dedup();
    Ok(points)
}

/// Pass 1: every stream's chain and MACs, and how each event sits in the
/// ledger. The streams are split into key ranges read at the same time on
/// their own connections (each range walked in stream order by its own
/// checker); each is a pipeline: its task reads rows off the connection
/// (no decoding), worker threads canonicalise, hash and check MACs batch
/// by batch, and the chain is walked in order as batches come back (each
/// field borrowed from its row). The checkers of the ranges are added up
/// in key order.
async fn verify_streams(
    pool: &PgPool,
    keys: &MacKeys,
    total: u64,
    progress: &dyn VerifyProgress,
) -> StoreResult<StreamChecker> {
    progress.phase("streams", total);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let sealer_position: (i64, i64) =
        sqlx::query_as("SELECT last_xid, last_insert_id FROM sealer_state WHERE id = 1")
            .fetch_optional(pool)
            .await?
            .unwrap_or((0, 0));
    let points = split_points(pool, total, cores.clamp(1, MAX_RANGES)).await?;
    let mac = Arc::new(chain::MacVerifier::new(keys));
    let (advance, mut advanced) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut readers = Vec::new();
    for k in 0..=points.len() {
        let lower = k.checked_sub(1).and_then(|i| points.get(i)).cloned();
        let upper = points.get(k).cloned();
        readers.push(tokio::spawn(verify_range(
            pool.clone(),
            Arc::clone(&mac),
            sealer_position,
            (lower, upper),
            cores + 1,
            advance.clone(),
        )));
    }
    drop(advance);
    while let Some(n) = advanced.recv().await {
        progress.advance(n);
    }
    let mut checker = StreamChecker::new();
    for reader in readers {
        let range = reader
            .await
            .map_err(|e| StoreError::Ledger(format!("verify reader failed: {e}")))??;
        checker.absorb(range);
    }
    Ok(checker)
}

type Bound = Option<(String, String)>;

/// One key range of pass 1, on its own connection.
async fn verify_range(
    pool: PgPool,
    mac: Arc<chain::MacVerifier>,
    sealer_position: (i64, i64),
    (lower, upper): (Bound, Bound),
    in_flight: usize,
    advance: tokio::sync::mpsc::UnboundedSender<u64>,
) -> StoreResult<StreamChecker> {
    let mut checker = StreamChecker::new();
    let sql = streams_query(lower.is_some(), upper.is_some());
    let mut query = sqlx::query(&sql)
        .bind(sealer_position.0)
        .bind(sealer_position.1);
    for (aggregate_type, aggregate_id) in [lower, upper].into_iter().flatten() {
        query = query.bind(aggregate_type).bind(aggregate_id);
    }
    let mut hashing = futures::stream::FuturesOrdered::new();
    let mut rows = query.fetch(&pool);
    let spawn = |batch: Vec<PgRow>, mac: Arc<chain::MacVerifier>| {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(1024);
            let computed: Result<Vec<Computed>, sqlx::Error> = batch
                .iter()
                .map(|row| compute(row, &mac, &mut buf))
                .collect();
            computed.map(|computed| (batch, computed))
        })
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next = rows.try_next().await?;
        let done = next.is_none();
        if let Some(row) = next {
            batch.push(row);
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            // The receiver only goes away when verify itself is dropped.
            let _ = advance.send(batch.len() as u64);
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            hashing.push_back(spawn(full, Arc::clone(&mac)));
        }
        while hashing.len() >= in_flight || (done && !hashing.is_empty()) {
            let Some(result) = hashing.next().await else {
                break;
            };
            let (rows, computed) =
                result.map_err(|e| StoreError::Ledger(format!("verify worker failed: {e}")))??;
            for (row, computed) in rows.iter().zip(&computed) {
                checker.check(&RowView::decode(row)?, computed);
            }
        }
        if done {
            break;
        }
    }
    Ok(checker)
}

/// Pass 2: the ledger rows, the Merkle roots and every checkpoint.
/// Runs beside pass 1 on its own task (and connection); its progress is
/// not reported separately (it reads the smaller table and finishes first).
async fn verify_ledger(
    pool: PgPool,
    checkpoint_key: NoteVerifier,
    external_checkpoints: Vec<String>,
) -> StoreResult<(Findings, u64, Hash, u64, Option<u64>)> {
    let pool = &pool;
    let mut findings = Findings {
        problems: Vec::new(),
        count: 0,
    };
    let findings = &mut findings;
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
        match Checkpoint::open(&note, &checkpoint_key) {
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
    for (index, note) in external_checkpoints.iter().enumerate() {
        match Checkpoint::open(note, &checkpoint_key) {
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

    // Whether each row names an existing event with that hash is checked
    // by the streams pass (which joins events with their ledger rows).
    let mut rows = sqlx::query(
        "SELECT l.seq, l.aggregate_type, l.aggregate_id, l.sequence, l.event_hash \
         FROM ledger l ORDER BY l.seq",
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
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(0)?;
        let expected = frontier.size() as i64 + 1;
        if seq != expected {
            findings.add(Problem::at(
                ProblemKind::LedgerGap,
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
                Some(seq),
                format!("expected ledger seq {expected}, found {seq}"),
            ));
        }
        let leaf: &[u8] = row.try_get(4)?;
        frontier.push(merkle::leaf_hash(leaf));
        check_at(&frontier, findings);
    }
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
    let root = frontier.root();
    Ok((
        std::mem::replace(
            findings,
            Findings {
                problems: Vec::new(),
                count: 0,
            },
        ),
        size,
        root,
        stored.len() as u64,
        latest,
    ))
}
