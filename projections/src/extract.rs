//! `queue extract`: Phase 3 (DB extraction) as one re-runnable command.
//!
//! 1. Migrate the target.
//! 2. Copy the events committed in the source (up to an end position E), in
//!    the source's global order, verifying every event on the way: its
//!    previous hash links to the stream's previous event, its hash is
//!    recomputed from its fields, its MAC verifies under the configured keys.
//!    A bad event stops the copy before it is written.
//! 3. Copy the ledger and the signed checkpoints, and set the target's
//!    sealer state (tree size, Merkle frontier, last sealed position) so a
//!    sealer there continues the same ledger.
//! 4. Rebuild every projection in the target (with its own validation).
//! 5. Report: event counts, the order check, the ledger roots, and per
//!    table row counts and portable checksums against a fold of the source
//!    (and against the source's live tables when its runners are at E).
//!
//! Order: the target assigns its own (commit_xid, insert_id). Events are
//! inserted by one connection, batch after batch, each batch one
//! transaction whose rows are inserted in source order
//! (`UNNEST … WITH ORDINALITY ORDER BY ordinality`): a later transaction
//! gets a larger xid, and `insert_id` grows with insertion order inside
//! one, so the target order equals the source order as long as nothing
//! else writes events to the target (the target is fenced until cutover).
//! Step 5 checks it by walking both orders side by side.
//!
//! Re-running copies only what the target does not have yet: the copy
//! resumes after the source position of the target's last event.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use queue_eventstore::chain::{self, Hash, MacVerifier};
use queue_eventstore::feed::{self, Columns, FeedRead, Position, Until};
use queue_eventstore::merkle::{self, Frontier};
use queue_eventstore::ChainedRow;
use queue_eventstore::{MacKeys, NoteVerifier, VerifyInput};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool, Row as _};

use crate::checksum::{self, Mode, Sums, TableSum};
use crate::error::{ProjectionError, ProjectionResult};
use crate::projection::Projection;
use crate::rebuild::{self, Progress, RebuildOptions, RebuildReport};
use crate::replay::stream_order_sums;
use crate::runner::{load_checkpoint, LIVE_SCHEMA};

#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Events per copy transaction.
    pub batch_size: i64,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { batch_size: 5_000 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TableComparison {
    pub table: String,
    pub source_rows: u64,
    pub source_checksum: String,
    pub target_rows: u64,
    pub target_checksum: String,
    pub equal: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtractReport {
    pub ok: bool,
    /// Events copied by this run (0 when the target was already current).
    pub copied_events: u64,
    /// Source events up to the end position of this run.
    pub source_events: i64,
    pub target_events: i64,
    /// Events committed in the source after this run's end position (run
    /// again after stopping writes to copy them).
    pub source_events_after: i64,
    pub order_equal: bool,
    pub copied_ledger_entries: u64,
    pub source_ledger_size: i64,
    pub target_ledger_size: i64,
    pub source_ledger_root: String,
    pub target_ledger_root: String,
    pub ledger_root_equal: bool,
    pub copied_checkpoints: u64,
    pub target_checkpoints: i64,
    /// `queue verify` on the target, when a checkpoint key was given.
    pub target_verified: Option<bool>,
    pub tables: Vec<TableComparison>,
    pub source_live_compared: bool,
    pub source_live_note: String,
    pub rebuild: RebuildReport,
    /// Empty when everything matches.
    pub problems: Vec<String>,
    pub elapsed_ms: u64,
}

/// Keys to verify the log with.
pub struct ExtractKeys<'a> {
    pub mac_keys: &'a MacKeys,
    /// When given, the target is verified in full at the end.
    pub checkpoint_key: Option<&'a NoteVerifier>,
}

/// Copies the source log to the target and rebuilds the target's tables.
pub async fn extract(
    source: &PgPool,
    target: &PgPool,
    keys: &ExtractKeys<'_>,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> ProjectionResult<ExtractReport> {
    let started = Instant::now();
    queue_eventstore::db::migrate(target).await?;
    let mut src = PgConnection::connect_with(&source.connect_options()).await?;
    let mut dst = PgConnection::connect_with(&target.connect_options()).await?;
    let mut problems = Vec::new();

    // Where this run ends and where the target stands.
    crate::events::wait_for_watermark(&mut src, std::time::Duration::from_secs(60)).await?;
    let end = feed::end(&mut src).await?;
    let resume = resume_position(&mut src, &mut dst).await?;
    let to_copy = feed::count(&mut src, resume, Until::Position(end)).await?;

    // 2. Events.
    progress.phase("copy", to_copy.max(0) as u64);
    let copied = copy_events(
        &mut src,
        &mut dst,
        keys.mac_keys,
        resume,
        end,
        options,
        progress,
    )
    .await?;

    // 3. Ledger, checkpoints, sealer state.
    progress.phase("ledger", 0);
    let copied_ledger = copy_ledger(&mut src, &mut dst).await?;
    let copied_checkpoints = copy_checkpoints(&mut src, &mut dst, &mut problems).await?;
    let target_ledger_size = set_sealer_state(&mut dst).await?;
    let source_root = ledger_root(&mut src, target_ledger_size).await?;
    let target_root = ledger_root(&mut dst, target_ledger_size).await?;
    let source_ledger_size: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM ledger")
        .fetch_one(&mut src)
        .await?;
    if source_root != target_root {
        problems.push(format!(
            "ledger root at size {target_ledger_size}: source {}, target {}",
            hex::encode(source_root),
            hex::encode(target_root)
        ));
    }

    // Counts and order.
    let source_events = count_up_to(&mut src, end).await?;
    let target_events = feed::count(&mut dst, Position::default(), Until::Stored).await?;
    let source_events_after = feed::count(&mut src, end, Until::Stored).await?;
    if source_events != target_events {
        problems.push(format!(
            "events: source has {source_events} up to the end position, target {target_events}"
        ));
    }
    progress.phase("order", source_events.max(0) as u64);
    let order_problem = compare_order(&mut src, &mut dst, end, progress).await?;
    let order_equal = order_problem.is_none();
    problems.extend(order_problem);

    let target_verified = match keys.checkpoint_key {
        Some(key) => {
            progress.phase("verify", 0);
            let report = queue_eventstore::verify_store(
                target,
                &VerifyInput {
                    mac_keys: keys.mac_keys,
                    checkpoint_key: key,
                    external_checkpoints: &[],
                },
                &queue_eventstore::verify::NoProgress,
            )
            .await?;
            if let Some(first) = &report.first_problem {
                problems.push(format!(
                    "queue verify on the target: {} problem(s); first: {}",
                    report.problem_count,
                    first.describe()
                ));
            }
            Some(report.ok)
        }
        None => None,
    };

    // 4. Rebuild the target's tables.
    let rebuild = rebuild::rebuild(target, &RebuildOptions::default(), progress).await?;
    if !rebuild.ok {
        problems.extend(
            rebuild
                .differences
                .iter()
                .map(|d| format!("target rebuild: {d}")),
        );
    }

    // 5. Tables: target vs a fold of the source, and the source's live tables.
    progress.phase("compare", source_events.max(0) as u64);
    let (_, source_fold) =
        stream_order_sums(&mut src, &Projection::ALL, end, Mode::Portable).await?;
    let mut target_sums = Sums::new();
    for projection in Projection::ALL {
        checksum::database_sums(
            &mut dst,
            LIVE_SCHEMA,
            projection,
            Mode::Portable,
            &mut target_sums,
        )
        .await?;
    }
    let tables = compare_tables(&source_fold, &target_sums);
    problems.extend(checksum::differences(
        "source",
        &source_fold,
        "target",
        &target_sums,
    ));
    let (source_live_compared, source_live_note) =
        compare_source_live(&mut src, end, &target_sums, &mut problems).await?;

    let _ = src.close().await;
    let _ = dst.close().await;
    Ok(ExtractReport {
        ok: problems.is_empty(),
        copied_events: copied,
        source_events,
        target_events,
        source_events_after,
        order_equal,
        copied_ledger_entries: copied_ledger,
        source_ledger_size,
        target_ledger_size,
        source_ledger_root: hex::encode(source_root),
        target_ledger_root: hex::encode(target_root),
        ledger_root_equal: source_root == target_root,
        copied_checkpoints,
        target_checkpoints: sqlx::query_scalar("SELECT count(*) FROM checkpoints")
            .fetch_one(target)
            .await?,
        target_verified,
        tables,
        source_live_compared,
        source_live_note,
        rebuild,
        problems,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn extract_error(message: impl Into<String>) -> ProjectionError {
    ProjectionError::Extract(message.into())
}

async fn count_up_to(conn: &mut PgConnection, end: Position) -> ProjectionResult<i64> {
    Ok(feed::count(conn, Position::default(), Until::Position(end)).await?)
}

/// The source position of the target's last event (the copy resumes after
/// it), after checking that the target holds exactly the source's prefix.
async fn resume_position(
    src: &mut PgConnection,
    dst: &mut PgConnection,
) -> ProjectionResult<Position> {
    let last: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM events \
         ORDER BY commit_xid DESC, insert_id DESC LIMIT 1",
    )
    .fetch_optional(&mut *dst)
    .await?;
    let Some((aggregate_type, aggregate_id, sequence)) = last else {
        return Ok(Position::default());
    };
    let row = sqlx::query(
        "SELECT commit_xid, insert_id FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(&aggregate_type)
    .bind(&aggregate_id)
    .bind(sequence)
    .fetch_optional(&mut *src)
    .await?
    .ok_or_else(|| {
        extract_error(format!(
            "the target's last event {aggregate_type}/{aggregate_id} sequence {sequence} \
             is not in the source: the target is not a copy of this source"
        ))
    })?;
    let position = Position {
        commit_xid: row.try_get("commit_xid")?,
        insert_id: row.try_get("insert_id")?,
    };
    let source_prefix = count_up_to(src, position).await?;
    let target_count = feed::count(dst, Position::default(), Until::Stored).await?;
    if source_prefix != target_count {
        return Err(extract_error(format!(
            "the target holds {target_count} events but the source has {source_prefix} up to \
             the target's last one: the target is not a prefix copy of this source"
        )));
    }
    Ok(position)
}

struct SourceEvent {
    position: Position,
    row: ChainedRow,
}

type StreamKey = (String, String);

#[allow(clippy::too_many_arguments)]
async fn copy_events(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    keys: &MacKeys,
    resume: Position,
    end: Position,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> ProjectionResult<u64> {
    let mac = MacVerifier::new(keys);
    // The last (sequence, hash) of every stream copied by this run.
    let mut last: HashMap<StreamKey, (i64, Hash)> = HashMap::new();
    let mut position = resume;
    let mut copied = 0u64;
    loop {
        let rows = FeedRead::new(Columns::Chained, position, Until::Position(end))
            .limit(options.batch_size)
            .fetch_all(src)
            .await?;
        if rows.is_empty() {
            return Ok(copied);
        }
        let mut batch = Vec::with_capacity(rows.len());
        for row in &rows {
            batch.push(SourceEvent {
                position: Position::of(row)?,
                row: ChainedRow::decode(row)?,
            });
        }
        load_previous_hashes(dst, &batch, &mut last).await?;
        for event in &batch {
            verify_event(event, &mac, &mut last)?;
        }
        insert_batch(dst, &batch).await?;
        copied += batch.len() as u64;
        progress.advance(batch.len() as u64);
        if let Some(event) = batch.last() {
            position = event.position;
        }
    }
}

/// For streams this run has not seen yet that continue a stream copied
/// earlier, the hash of their previous event as stored (and verified) in
/// the target.
async fn load_previous_hashes(
    dst: &mut PgConnection,
    batch: &[SourceEvent],
    last: &mut HashMap<StreamKey, (i64, Hash)>,
) -> ProjectionResult<()> {
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    for event in batch {
        let key = (
            event.row.event.aggregate_type.clone(),
            event.row.event.aggregate_id.clone(),
        );
        if event.row.sequence() > 1
            && !last.contains_key(&key)
            && !types
                .iter()
                .zip(ids.iter())
                .any(|(t, i)| (t, i) == (&key.0, &key.1))
        {
            types.push(key.0);
            ids.push(key.1);
            seqs.push(event.row.sequence() - 1);
        }
    }
    if types.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash FROM events e \
         JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS k(t, i, s) \
         ON e.aggregate_type = k.t AND e.aggregate_id = k.i AND e.sequence = k.s",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&seqs)
    .fetch_all(&mut *dst)
    .await?;
    for (aggregate_type, aggregate_id, sequence, hash) in rows {
        if let Some(hash) = chain::to_hash(&hash) {
            last.insert((aggregate_type, aggregate_id), (sequence, hash));
        }
    }
    Ok(())
}

/// The one link check (`chain::check_link`, as every load and the sealer
/// use) on a source row, against the previous row of its stream.
fn verify_event(
    event: &SourceEvent,
    mac: &MacVerifier,
    last: &mut HashMap<StreamKey, (i64, Hash)>,
) -> ProjectionResult<()> {
    let key = (
        event.row.event.aggregate_type.clone(),
        event.row.event.aggregate_id.clone(),
    );
    let hash = event
        .row
        .check(last.get(&key).copied(), mac)
        .map_err(|err| extract_error(format!("{err}: {}", err.kind.describe())))?;
    last.insert(key, (event.row.sequence(), hash));
    Ok(())
}

async fn insert_batch(dst: &mut PgConnection, batch: &[SourceEvent]) -> ProjectionResult<()> {
    let mut tx = dst.begin().await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, recorded_at, prev_hash, hash, mac, mac_key_id) \
         SELECT t, i, s, et, ev, p, m, r, ph, h, mac, k FROM UNNEST($1::text[], $2::text[], \
         $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::timestamptz[], \
         $9::bytea[], $10::bytea[], $11::bytea[], $12::text[]) WITH ORDINALITY \
         AS u(t, i, s, et, ev, p, m, r, ph, h, mac, k, ord) ORDER BY ord",
    )
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.aggregate_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.aggregate_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|e| e.row.sequence()).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.event_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.event_version.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.payload.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|e| e.row.event.metadata.clone())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|e| e.row.recorded_at).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|e| e.row.prev_hash.clone())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|e| e.row.hash.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.row.mac.clone()).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|e| e.row.mac_key_id.clone())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Copies the ledger entries the target lacks (their events are there now).
async fn copy_ledger(src: &mut PgConnection, dst: &mut PgConnection) -> ProjectionResult<u64> {
    let mut after: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM ledger")
        .fetch_one(&mut *dst)
        .await?;
    let mut copied = 0u64;
    loop {
        let rows: Vec<(i64, String, String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, aggregate_type, aggregate_id, sequence, event_hash FROM ledger \
             WHERE seq > $1 ORDER BY seq LIMIT 10000",
        )
        .bind(after)
        .fetch_all(&mut *src)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(copied);
        };
        after = last.0;
        let mut tx = dst.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO ledger (seq, aggregate_type, aggregate_id, sequence, event_hash) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bytea[])",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.4.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Every leaf must be the hash of an event the target holds.
        let mismatched: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ledger l LEFT JOIN events e \
             USING (aggregate_type, aggregate_id, sequence) \
             WHERE l.seq > $1 - $2 AND l.seq <= $1 AND e.hash IS DISTINCT FROM l.event_hash",
        )
        .bind(after)
        .bind(rows.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        if mismatched > 0 {
            return Err(extract_error(format!(
                "{mismatched} ledger entries up to seq {after} do not match the copied events"
            )));
        }
        tx.commit().await?;
        copied += inserted;
    }
}

/// Copies the checkpoints the target lacks; ones it has must be identical.
async fn copy_checkpoints(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    problems: &mut Vec<String>,
) -> ProjectionResult<u64> {
    let rows: Vec<(i64, Vec<u8>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT tree_size, root_hash, note, created_at FROM checkpoints ORDER BY tree_size",
    )
    .fetch_all(&mut *src)
    .await?;
    // A checkpoint row is (tree size, note) (migration 0306).
    let existing: HashMap<(i64, String), Vec<u8>> = sqlx::query_as::<_, (i64, Vec<u8>, String)>(
        "SELECT tree_size, root_hash, note FROM checkpoints",
    )
    .fetch_all(&mut *dst)
    .await?
    .into_iter()
    .map(|(size, root, note)| ((size, note), root))
    .collect();
    let mut copied = 0u64;
    for (tree_size, root, note, created_at) in rows {
        match existing.get(&(tree_size, note.clone())) {
            Some(r) if *r == root => {}
            Some(_) => problems.push(format!(
                "checkpoint {tree_size} differs between source and target"
            )),
            None => {
                sqlx::query(
                    "INSERT INTO checkpoints (tree_size, root_hash, note, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(tree_size)
                .bind(&root)
                .bind(&note)
                .bind(created_at)
                .execute(&mut *dst)
                .await?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

/// Points the target's sealer at the end of the copied ledger: tree size,
/// Merkle frontier, the target position of the last sealed event and the
/// last checkpoint. Returns the ledger size.
async fn set_sealer_state(dst: &mut PgConnection) -> ProjectionResult<i64> {
    let mut frontier = Frontier::new();
    {
        let mut leaves =
            sqlx::query_scalar::<_, Vec<u8>>("SELECT event_hash FROM ledger ORDER BY seq")
                .fetch(&mut *dst);
        while let Some(leaf) = leaves.try_next().await? {
            frontier.push(merkle::leaf_hash(&leaf));
        }
    }
    let size = frontier.size() as i64;
    let last = if size > 0 {
        let row = sqlx::query(
            "SELECT e.commit_xid, e.insert_id FROM ledger l JOIN events e \
             USING (aggregate_type, aggregate_id, sequence) WHERE l.seq = $1",
        )
        .bind(size)
        .fetch_one(&mut *dst)
        .await?;
        Position {
            commit_xid: row.try_get("commit_xid")?,
            insert_id: row.try_get("insert_id")?,
        }
    } else {
        Position::default()
    };
    let last_checkpoint: i64 =
        sqlx::query_scalar("SELECT coalesce(max(tree_size), -1) FROM checkpoints")
            .fetch_one(&mut *dst)
            .await?;
    sqlx::query(
        "UPDATE sealer_state SET last_xid = $1, last_insert_id = $2, tree_size = $3, \
         frontier = $4, last_checkpoint_size = $5, updated_at = now() WHERE id = 1",
    )
    .bind(last.commit_xid)
    .bind(last.insert_id)
    .bind(size)
    .bind(frontier.to_bytes())
    .bind(last_checkpoint)
    .execute(&mut *dst)
    .await?;
    Ok(size)
}

/// The Merkle root over the first `size` ledger leaves.
async fn ledger_root(conn: &mut PgConnection, size: i64) -> ProjectionResult<Hash> {
    let mut frontier = Frontier::new();
    let mut leaves = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT event_hash FROM ledger WHERE seq <= $1 ORDER BY seq",
    )
    .bind(size)
    .fetch(&mut *conn);
    while let Some(leaf) = leaves.try_next().await? {
        frontier.push(merkle::leaf_hash(&leaf));
    }
    Ok(frontier.root())
}

/// Walks the source order (up to `end`) and the target order side by side.
async fn compare_order(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    end: Position,
    progress: &dyn Progress,
) -> ProjectionResult<Option<String>> {
    let mut src_after = Position::default();
    let mut dst_after = Position::default();
    let mut rank = 0u64;
    loop {
        let a = order_batch(src, src_after, Until::Position(end)).await?;
        let b = order_batch(dst, dst_after, Until::Stored).await?;
        if a.is_empty() && b.is_empty() {
            return Ok(None);
        }
        for (x, y) in a.iter().zip(b.iter()) {
            rank += 1;
            if (&x.2, &x.3, x.4) != (&y.2, &y.3, y.4) {
                return Ok(Some(format!(
                    "order differs at rank {rank}: source {}/{} sequence {}, target {}/{} sequence {}",
                    x.2, x.3, x.4, y.2, y.3, y.4
                )));
            }
        }
        if a.len() != b.len() {
            return Ok(Some(format!(
                "order: after rank {rank} the {} has more events",
                if a.len() > b.len() {
                    "source"
                } else {
                    "target"
                }
            )));
        }
        progress.advance(a.len() as u64);
        if let (Some(x), Some(y)) = (a.last(), b.last()) {
            src_after = Position {
                commit_xid: x.0,
                insert_id: x.1,
            };
            dst_after = Position {
                commit_xid: y.0,
                insert_id: y.1,
            };
        }
    }
}

/// Up to 20 000 (position, stream, sequence) of the feed after `after`.
async fn order_batch(
    conn: &mut PgConnection,
    after: Position,
    until: Until,
) -> ProjectionResult<Vec<(i64, i64, String, String, i64)>> {
    let rows = FeedRead::new(Columns::Order, after, until)
        .limit(20_000)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ))
        })
        .collect()
}

fn compare_tables(source: &Sums, target: &Sums) -> Vec<TableComparison> {
    let source_report: HashMap<String, TableSum> = checksum::to_report(source)
        .into_iter()
        .map(|t| (t.table.clone(), t))
        .collect();
    checksum::to_report(target)
        .into_iter()
        .map(|t| {
            let s = source_report.get(&t.table);
            TableComparison {
                source_rows: s.map_or(0, |s| s.rows),
                source_checksum: s.map_or_else(String::new, |s| s.checksum.clone()),
                equal: s.is_some_and(|s| s.rows == t.rows && s.checksum == t.checksum),
                table: t.table,
                target_rows: t.rows,
                target_checksum: t.checksum,
            }
        })
        .collect()
}

/// The source's live tables, when every runner there is exactly at `end`
/// (read in one snapshot).
async fn compare_source_live(
    src: &mut PgConnection,
    end: Position,
    target: &Sums,
    problems: &mut Vec<String>,
) -> ProjectionResult<(bool, String)> {
    let mut tx = src.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    for projection in Projection::ALL {
        let cp = load_checkpoint(&mut tx, projection, false).await?;
        if cp.position != end || cp.failed {
            tx.rollback().await?;
            return Ok((
                false,
                format!(
                    "source live tables not compared: its {projection} runner is at ({}, {}), \
                     the copy ends at ({}, {})",
                    cp.position.commit_xid, cp.position.insert_id, end.commit_xid, end.insert_id
                ),
            ));
        }
    }
    let mut live = Sums::new();
    for projection in Projection::ALL {
        checksum::database_sums(&mut tx, LIVE_SCHEMA, projection, Mode::Portable, &mut live)
            .await?;
    }
    tx.rollback().await?;
    problems.extend(checksum::differences(
        "source live",
        &live,
        "target",
        target,
    ));
    Ok((true, "source live tables compared".to_owned()))
}
