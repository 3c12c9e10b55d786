//! `queue projections rebuild`: replay the whole log into shadow tables,
//! validate them, swap them in.
//!
//! 1. Shadow tables are created in schema `queue_rebuild` as
//!    `LIKE <live> INCLUDING ALL EXCLUDING INDEXES`; the log up to an end
//!    position E (everything committed when the rebuild starts) is folded in
//!    memory and bulk-loaded with binary COPY; then the live tables'
//!    indexes are built (in parallel) and their constraints attached, under
//!    the same names.
//! 2. Validation: row counts and order-independent checksums of the shadow
//!    tables (read back) against a second, independent fold (own
//!    connection, stream order instead of global order, fresh state, no
//!    database writes), and against the live tables when the live
//!    checkpoint is at E; live tables and checkpoints are read in one
//!    read-only REPEATABLE READ snapshot (so it holds no transaction id and
//!    never holds the global watermark back).
//! 3. Swap, in one short transaction: lock the projections' checkpoint rows
//!    (the runners wait), apply the events committed since E to the shadow
//!    tables with the runner's own code, drop the live tables, move the
//!    shadow tables into place, set the checkpoints. All or nothing.
//!
//! A crash anywhere leaves the live tables as they were; the next rebuild
//! starts over (it drops whatever shadow schema is left).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_eventstore::feed::{Columns as FeedColumns, FeedRead, Position, Until};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::audit::{AuditFold, AuditRow};
use crate::checksum::{self, Mode, Sums, TableSum};
use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{read_batch, watermark, Decoder, Event};
use crate::projection::Projection;
use crate::projection::{apply_batch, BatchError};
use crate::replay::{decode_rows, stream_order_sums, FullFold};
use crate::row::{Columns, CopyRow, Row, COPY_BINARY_HEADER, COPY_BINARY_TRAILER};
use crate::runner::LIVE_SCHEMA;
use crate::table::{qualified, Table};
use crate::tenants::CustomerTenants;

/// Where shadow tables are built.
pub const SHADOW_SCHEMA: &str = "queue_rebuild";
/// Advisory lock held by the one running rebuild ("queuerbd").
pub const REBUILD_LOCK_KEY: i64 = 0x7175_6575_7262_6400;

/// What a rebuild reports while it runs (a progress bar).
pub trait Progress: Send + Sync {
    fn phase(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Debug, Default)]
pub struct RebuildOptions {
    /// Rebuild only this projection (default: all).
    pub only: Option<Projection>,
    /// Build and validate, but do not swap (a dry run).
    pub no_swap: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    pub ok: bool,
    pub projections: Vec<Projection>,
    /// Events folded (up to the end position).
    pub events: u64,
    /// Events applied to the shadow tables during the swap (committed
    /// since the rebuild started).
    pub delta_events: u64,
    pub end_commit_xid: i64,
    pub end_insert_id: i64,
    pub tables: Vec<TableSum>,
    /// Whether the live tables were compared (only when their runner was at
    /// the rebuild's end position).
    pub live_compared: bool,
    pub live_note: String,
    /// Empty when valid; otherwise one line per differing table.
    pub differences: Vec<String>,
    pub swapped: bool,
    /// Reading, decoding and folding the log, with the audit rows streamed
    /// to COPY meanwhile.
    pub fold_ms: u64,
    /// COPY of the other tables from memory and every table's constraints
    /// and indexes (one connection per table, all at once).
    pub load_ms: u64,
    /// fold + load + index.
    pub replay_ms: u64,
    /// The second fold (validation), after load and index.
    pub second_fold_ms: u64,
    /// Where the replay waited: which stage held it back.
    pub stage_waits: StageWaits,
    /// From the end of load and index: waiting for the second fold, reading
    /// back and checksumming the shadow (and live) tables.
    pub validate_ms: u64,
    pub swap_ms: u64,
    pub elapsed_ms: u64,
    /// Events per second of the replay and load (without validation).
    pub events_per_second: u64,
}

/// Time the replay's stages spent waiting for each other. The stage that
/// is waited for is the bottleneck: `read_ms` (dealing waited for decoded
/// events: reading or decoding), `fold_ms` (dealing waited for a fold to
/// take a chunk), `copy_ms` (the audit fold waited for the COPY writers,
/// that is for the server).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageWaits {
    pub read_ms: u64,
    pub fold_ms: u64,
    pub copy_ms: u64,
}

fn selected(options: &RebuildOptions) -> Vec<Projection> {
    match options.only {
        Some(p) => vec![p],
        None => Projection::ALL.to_vec(),
    }
}

/// Rebuilds the projections of the database behind `pool`.
pub async fn rebuild(
    pool: &PgPool,
    options: &RebuildOptions,
    progress: &dyn Progress,
) -> ProjectionResult<RebuildReport> {
    let started = Instant::now();
    let projections = selected(options);
    let connect = (*pool.connect_options()).clone();
    let mut control = PgConnection::connect_with(&connect).await?;
    take_rebuild_lock(&mut control).await?;

    crate::events::wait_for_watermark(&mut control, Duration::from_secs(60)).await?;
    let end = queue_eventstore::feed::end(&mut control).await?;
    let total =
        queue_eventstore::feed::count(&mut control, Position::default(), Until::Position(end))
            .await?;
    prepare_shadow(&mut control, &projections).await?;

    // 1. Replay and load.
    progress.phase("replay", total.max(0) as u64);
    let (fold, stage_waits) = replay_into_shadow(pool, &projections, end, progress).await?;
    let fold_ms = started.elapsed().as_millis() as u64;
    progress.phase("load+index", 0);
    load_and_index(pool, &fold, &projections).await?;
    let replay_ms = started.elapsed().as_millis() as u64;
    // The second, independent fold reads the log again on its own
    // connection while the server loads and indexes the shadow tables (the
    // events up to `end` are committed below the watermark and immutable,
    // so any snapshot reads the same ones).
    let second_started = Instant::now();
    let second = {
        let connect = connect.clone();
        let projections = projections.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut conn = PgConnection::connect_with(&connect).await?;
            let result = stream_order_sums(&mut conn, &projections, end, Mode::Local).await;
            let _ = conn.close().await;
            result.map(|sums| (sums, second_started.elapsed().as_millis() as u64))
        }))
    };

    let load_ms = replay_ms - fold_ms;
    let folded_events = fold.events;
    drop(fold);

    // 2. Validate.
    let validate_started = Instant::now();
    progress.phase("validate", total.max(0) as u64);
    let ((second_events, second_sums), second_fold_ms) = second
        .join()
        .await
        .map_err(|e| ProjectionError::Rebuild(format!("second fold: {e}")))??;
    let validation = validate(
        &connect,
        &mut control,
        &projections,
        end,
        folded_events,
        (second_events, second_sums),
    )
    .await?;
    progress.advance(total.max(0) as u64);
    let validate_ms = validate_started.elapsed().as_millis() as u64;

    let mut report = RebuildReport {
        ok: validation.differences.is_empty(),
        projections: projections.clone(),
        events: folded_events,
        delta_events: 0,
        end_commit_xid: end.commit_xid,
        end_insert_id: end.insert_id,
        tables: checksum::to_report(&validation.shadow),
        live_compared: validation.live_compared,
        live_note: validation.live_note,
        differences: validation.differences,
        swapped: false,
        fold_ms,
        load_ms,
        replay_ms,
        validate_ms,
        swap_ms: 0,
        elapsed_ms: 0,
        second_fold_ms,
        stage_waits,
        events_per_second: (folded_events as f64 / (replay_ms.max(1) as f64 / 1000.0)) as u64,
    };
    if !report.ok {
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::error!(differences = ?report.differences, "rebuild validation failed; live tables untouched; shadow tables kept in schema {SHADOW_SCHEMA}");
        return Ok(report);
    }
    if options.no_swap {
        drop_shadow(&mut control).await?;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // 3. Swap.
    progress.phase("swap", 0);
    let swap_started = Instant::now();
    analyze_shadow(&mut control, &projections).await?;
    let (delta, _covered) = swap(&mut control, &projections, end, total).await?;
    report.delta_events = delta;
    report.swapped = true;
    report.swap_ms = swap_started.elapsed().as_millis() as u64;
    drop_shadow(&mut control).await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    let _ = control.close().await;
    Ok(report)
}

async fn take_rebuild_lock(conn: &mut PgConnection) -> ProjectionResult<()> {
    // A crashed rebuild's connection may take a moment to be noticed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(REBUILD_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if acquired {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProjectionError::Rebuild(
                "another rebuild is running (advisory lock held)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn prepare_shadow(
    conn: &mut PgConnection,
    projections: &[Projection],
) -> ProjectionResult<()> {
    let mut sql =
        format!("SET client_min_messages = warning; DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE; CREATE SCHEMA {SHADOW_SCHEMA};");
    for projection in projections {
        for table in projection.tables() {
            sql.push_str(&format!(
                " CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES);",
                qualified(SHADOW_SCHEMA, table),
                qualified(LIVE_SCHEMA, table)
            ));
        }
    }
    sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    Ok(())
}

async fn drop_shadow(conn: &mut PgConnection) -> ProjectionResult<()> {
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How to give a shadow table the live table's constraints and indexes,
/// under the same names.
struct IndexPlan {
    /// `CREATE [UNIQUE] INDEX` statements, independent of each other: they
    /// may run at once on separate connections (each takes a SHARE lock).
    creates: Vec<String>,
    /// Then, in one statement: primary key and unique constraints attached
    /// to their already built indexes (`USING INDEX`, no second build), and
    /// any other constraint (exclusion, deferrable) added in full.
    attach: String,
}

/// Reads the live table's primary key, unique and exclusion constraints and
/// its other indexes, rewritten for the shadow table.
async fn index_plan(conn: &mut PgConnection, table: &str) -> ProjectionResult<IndexPlan> {
    let live = qualified(LIVE_SCHEMA, table);
    let shadow = qualified(SHADOW_SCHEMA, table);
    let rewrite = |definition: &str| -> ProjectionResult<String> {
        let rewritten = definition
            .replacen(&format!(" ON {live} "), &format!(" ON {shadow} "), 1)
            .replacen(
                &format!(" ON ONLY {live} "),
                &format!(" ON ONLY {shadow} "),
                1,
            );
        if rewritten == definition {
            return Err(ProjectionError::Rebuild(format!(
                "cannot carry index over to the shadow table: {definition}"
            )));
        }
        Ok(rewritten)
    };
    let constraints: Vec<(String, String, String, bool, String, String)> = sqlx::query_as(
        "SELECT c.conname::text, pg_get_constraintdef(c.oid), c.contype::text, c.condeferrable, \
         COALESCE(pg_get_indexdef(c.conindid), ''), COALESCE(i.relname::text, '') \
         FROM pg_constraint c LEFT JOIN pg_class i ON i.oid = c.conindid \
         WHERE c.conrelid = $1::regclass AND c.contype IN ('p', 'u', 'x') \
         ORDER BY c.contype, c.conname",
    )
    .bind(&live)
    .fetch_all(&mut *conn)
    .await?;
    let mut plan = IndexPlan {
        creates: Vec::new(),
        attach: String::new(),
    };
    for (name, definition, kind, deferrable, index_definition, index_name) in &constraints {
        let attachable = (kind == "p" || kind == "u") && !deferrable && !index_name.is_empty();
        if attachable {
            plan.creates.push(rewrite(index_definition)?);
            let what = if kind == "p" { "PRIMARY KEY" } else { "UNIQUE" };
            plan.attach.push_str(&format!(
                "ALTER TABLE {shadow} ADD CONSTRAINT \"{name}\" {what} USING INDEX \"{index_name}\";"
            ));
        } else {
            plan.attach.push_str(&format!(
                "ALTER TABLE {shadow} ADD CONSTRAINT \"{name}\" {definition};"
            ));
        }
    }
    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
         WHERE i.indrelid = $1::regclass \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) \
         ORDER BY i.indexrelid",
    )
    .bind(&live)
    .fetch_all(&mut *conn)
    .await?;
    for (definition,) in &indexes {
        plan.creates.push(rewrite(definition)?);
    }
    Ok(plan)
}

/// Builds a shadow table's indexes, each on its own connection and all at
/// once (on a shared machine more backends also get more CPU time), then
/// attaches the constraints.
async fn build_indexes(connect: &PgConnectOptions, table: &str) -> ProjectionResult<()> {
    let mut conn = index_connection(connect).await?;
    let plan = index_plan(&mut conn, table).await?;
    let builds = plan.creates.iter().map(|create| async move {
        let mut conn = index_connection(connect).await?;
        sqlx::raw_sql(create).execute(&mut conn).await?;
        let _ = conn.close().await;
        Ok::<(), ProjectionError>(())
    });
    futures::future::try_join_all(builds).await?;
    if !plan.attach.is_empty() {
        sqlx::raw_sql(&plan.attach).execute(&mut conn).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

const AUDIT_WRITERS: usize = 2;
const COPY_BUFFER: usize = 1 << 20;

/// Streams the log up to `end` in global order. One task reads the rows
/// and hands chunks to the blocking pool for decoding (in order, a few at
/// once); this one deals the decoded chunks to the folds, on threads of
/// their own, one per table projection (customers, credentials, sessions)
/// and one for the audit rows, which it encodes and hands to the COPY writers
/// as it makes them. Every stage runs beside the others, so the replay uses
/// several cores (and, on a shared machine, gets more CPU time).
async fn replay_into_shadow(
    pool: &PgPool,
    projections: &[Projection],
    end: Position,
    progress: &dyn Progress,
) -> ProjectionResult<(FullFold, StageWaits)> {
    let connect = (*pool.connect_options()).clone();
    let tenants = {
        let mut conn = pool.acquire().await?;
        Arc::new(CustomerTenants::load_until(&mut conn, end).await?)
    };
    let (event_tx, mut event_rx) = mpsc::channel::<Vec<Event>>(8);
    let (skipped_tx, skipped_rx) = tokio::sync::watch::channel(0u64);
    let reader_projections = projections.to_vec();
    let reader_connect = connect.clone();
    let reader = AbortOnDrop(tokio::spawn(async move {
        let mut conn = PgConnection::connect_with(&reader_connect).await?;
        let read = FeedRead::new(
            FeedColumns::Payload,
            Position::default(),
            Until::Position(end),
        );
        let rows = read.fetch(&mut conn);
        let skipped = decode_rows(rows, &reader_projections, &event_tx).await?;
        let _ = skipped_tx.send(skipped);
        Ok::<(), ProjectionError>(())
    }));

    // The audit rows go to the shadow table through AUDIT_WRITERS COPY
    // streams at once (buffers dealt round-robin), so the server parses them
    // on more than one backend.
    let with_audit = projections.contains(&Projection::Audit);
    let mut copy_txs = Vec::new();
    let mut writers = Vec::new();
    if with_audit {
        for _ in 0..AUDIT_WRITERS {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(2);
            let connect = connect.clone();
            copy_txs.push(tx);
            writers.push(AbortOnDrop(tokio::spawn(async move {
                let mut conn = PgConnection::connect_with(&connect).await?;
                copy_stream::<AuditRow>(&mut conn, rx).await
            })));
        }
    }
    let (audit_tx, audit_fold) = if with_audit {
        let (tx, mut rx) = mpsc::channel::<Arc<Vec<Event>>>(8);
        let tenants = Arc::clone(&tenants);
        let fold = AbortOnDrop(tokio::task::spawn_blocking(move || {
            let mut fold = AuditFold::new();
            let mut buffer = Vec::with_capacity(COPY_BUFFER + 4096);
            let mut next_writer = 0usize;
            let mut copy_wait = Duration::ZERO;
            while let Some(chunk) = rx.blocking_recv() {
                for event in chunk.iter() {
                    if let Some(row) = fold.apply(event, &tenants)? {
                        let mut tuple = CopyRow::new(&mut buffer, AuditRow::COLUMNS.len());
                        row.copy_binary(&mut tuple);
                    }
                }
                if buffer.len() >= COPY_BUFFER {
                    let full =
                        std::mem::replace(&mut buffer, Vec::with_capacity(COPY_BUFFER + 4096));
                    next_writer = (next_writer + 1) % copy_txs.len().max(1);
                    // A writer that stopped reports its own error.
                    let waited = Instant::now();
                    match copy_txs.get(next_writer) {
                        Some(tx) if tx.blocking_send(full).is_ok() => {}
                        _ => return Ok(copy_wait),
                    }
                    copy_wait += waited.elapsed();
                }
            }
            if !buffer.is_empty() {
                if let Some(tx) = copy_txs.first() {
                    let _ = tx.blocking_send(buffer);
                }
            }
            Ok::<Duration, ProjectionError>(copy_wait)
        }));
        (Some(tx), Some(fold))
    } else {
        drop(copy_txs);
        (None, None)
    };
    // One thread per table projection (each reads one aggregate type; they
    // share nothing).
    let mut table_txs = Vec::new();
    let mut table_folds = Vec::new();
    for projection in projections.iter().copied() {
        if projection == Projection::Audit {
            continue;
        }
        let (tx, mut rx) = mpsc::channel::<Arc<Vec<Event>>>(8);
        table_txs.push(tx);
        let tenants = Arc::clone(&tenants);
        table_folds.push(AbortOnDrop(tokio::task::spawn_blocking(move || {
            let mut fold = FullFold::new(&[projection], tenants);
            while let Some(chunk) = rx.blocking_recv() {
                for event in chunk.iter() {
                    fold.apply(event)?;
                }
            }
            Ok::<FullFold, ProjectionError>(fold)
        })));
    }

    let mut dealt = 0u64;
    let mut waits = StageWaits::default();
    loop {
        let waited = Instant::now();
        let Some(chunk) = event_rx.recv().await else {
            break;
        };
        waits.read_ms += waited.elapsed().as_millis() as u64;
        let n = chunk.len() as u64;
        let chunk = Arc::new(chunk);
        let waited = Instant::now();
        // A fold that stopped (on a bad event) reports its own error.
        let mut stopped = false;
        for tx in &table_txs {
            stopped |= tx.send(Arc::clone(&chunk)).await.is_err();
        }
        if stopped {
            break;
        }
        if let Some(tx) = &audit_tx {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        waits.fold_ms += waited.elapsed().as_millis() as u64;
        dealt += n;
        progress.advance(n);
        // Let other tasks (and cancellation) in between chunks.
        tokio::task::yield_now().await;
    }
    drop(event_rx);
    drop(table_txs);
    drop(audit_tx);
    let joined = |what: &'static str| {
        move |e: tokio::task::JoinError| ProjectionError::Rebuild(format!("{what}: {e}"))
    };
    let mut table_results = Vec::new();
    for fold in table_folds {
        table_results.push(fold.join().await.map_err(joined("table fold"))?);
    }
    let audit_result = match audit_fold {
        Some(fold) => Some(fold.join().await.map_err(joined("audit fold"))?),
        None => None,
    };
    let read_result = reader.join().await.map_err(joined("replay reader"))?;
    let mut write_results = Vec::new();
    for writer in writers {
        write_results.push(writer.join().await.map_err(joined("audit writer"))?);
    }
    let mut fold = FullFold::new(&[], tenants);
    for result in table_results {
        let part = result?;
        fold.customers = fold.customers.or(part.customers);
        fold.credentials = fold.credentials.or(part.credentials);
        fold.sessions = fold.sessions.or(part.sessions);
    }
    if let Some(result) = audit_result {
        waits.copy_ms = result?.as_millis() as u64;
    }
    read_result?;
    for result in write_results {
        result?;
    }
    let skipped = *skipped_rx.borrow();
    fold.events = dealt + skipped;
    progress.advance(skipped);
    Ok((fold, waits))
}

/// A spawned task that is aborted when its handle is dropped, so a
/// cancelled rebuild leaves nothing running behind it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The COPY statement of a shadow table (binary format; FREEZE when the
/// table was created or truncated in the same transaction).
fn copy_statement<R: Row>(freeze: bool) -> String {
    format!(
        "COPY {} ({}) FROM STDIN WITH (FORMAT binary{})",
        qualified(SHADOW_SCHEMA, R::TABLE),
        R::COLUMNS.join(", "),
        if freeze { ", FREEZE" } else { "" }
    )
}

/// COPYs byte chunks (whole binary COPY tuples) into a shadow table.
async fn copy_stream<R: Row>(
    conn: &mut PgConnection,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> ProjectionResult<u64> {
    let mut copy = conn.copy_in_raw(&copy_statement::<R>(false)).await?;
    copy.send(COPY_BINARY_HEADER).await?;
    while let Some(chunk) = chunks.recv().await {
        if let Err(err) = copy.send(chunk).await {
            let _ = copy.abort("rebuild failed").await;
            return Err(err.into());
        }
    }
    copy.send(COPY_BINARY_TRAILER).await?;
    Ok(copy.finish().await?)
}

/// Loads a table from memory. The shadow table is truncated in the COPY's
/// transaction so the rows can be written frozen (COPY FREEZE): the index
/// builds and the validation read-back then find hint bits set instead of
/// setting them and rewriting every page.
async fn copy_table<R: Row>(conn: &mut PgConnection, table: &Table<R>) -> ProjectionResult<()> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(&format!("TRUNCATE {}", qualified(SHADOW_SCHEMA, R::TABLE)))
        .execute(&mut *tx)
        .await?;
    let mut copy = tx.copy_in_raw(&copy_statement::<R>(true)).await?;
    let mut buffer = Vec::with_capacity(COPY_BUFFER + 4096);
    buffer.extend_from_slice(COPY_BINARY_HEADER);
    for row in table.values() {
        let mut tuple = CopyRow::new(&mut buffer, R::COLUMNS.len());
        row.copy_binary(&mut tuple);
        if buffer.len() >= COPY_BUFFER {
            let full = std::mem::replace(&mut buffer, Vec::with_capacity(COPY_BUFFER + 4096));
            copy.send(full).await?;
        }
    }
    buffer.extend_from_slice(COPY_BINARY_TRAILER);
    copy.send(buffer).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(())
}

type Job<'a> = Pin<Box<dyn Future<Output = ProjectionResult<()>> + 'a>>;

/// Loads one table from memory and builds its constraints and indexes, on
/// its own connection.
fn table_job<'a, R: Row>(connect: &'a PgConnectOptions, table: &'a Table<R>) -> Job<'a> {
    Box::pin(async move {
        let mut conn = index_connection(connect).await?;
        copy_table(&mut conn, table).await?;
        let _ = conn.close().await;
        build_indexes(connect, R::TABLE).await
    })
}

/// A connection for loading and indexing one table. Every index is built on
/// a connection of its own, all at once, so each build is kept to one
/// process: parallel workers on top would only split its sort memory (the
/// sorts then spill to disk) and oversubscribe the cores the other builds use.
async fn index_connection(connect: &PgConnectOptions) -> ProjectionResult<PgConnection> {
    let mut conn = PgConnection::connect_with(connect).await?;
    sqlx::raw_sql("SET maintenance_work_mem = '256MB'; SET max_parallel_maintenance_workers = 0")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Every table at once, one connection each: the audit table (loaded during
/// the fold) gets its constraints and indexes; the others are COPYed from
/// memory, then indexed.
async fn load_and_index(
    pool: &PgPool,
    fold: &FullFold,
    projections: &[Projection],
) -> ProjectionResult<()> {
    let connect = (*pool.connect_options()).clone();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    if projections.contains(&Projection::Audit) {
        let connect = &connect;
        jobs.push(Box::pin(build_indexes(connect, AuditRow::TABLE)));
    }
    if let Some(f) = &fold.customers {
        jobs.push(table_job(&connect, &f.customers));
        jobs.push(table_job(&connect, &f.roles));
        jobs.push(table_job(&connect, &f.codes));
        jobs.push(table_job(&connect, &f.verifications));
    }
    if let Some(f) = &fold.credentials {
        jobs.push(table_job(&connect, &f.credentials));
    }
    if let Some(f) = &fold.sessions {
        jobs.push(table_job(&connect, &f.sessions));
        jobs.push(table_job(&connect, &f.tokens));
    }
    futures::future::try_join_all(jobs).await?;
    Ok(())
}

struct Validation {
    shadow: Sums,
    live_compared: bool,
    live_note: String,
    differences: Vec<String>,
}

async fn validate(
    connect: &PgConnectOptions,
    conn: &mut PgConnection,
    projections: &[Projection],
    end: Position,
    folded_events: u64,
    (second_events, second): (u64, Sums),
) -> ProjectionResult<Validation> {
    // The shadow tables are read back one projection per connection, all at
    // once: nothing else writes them, so they need no common snapshot.
    let reads = projections.iter().map(|projection| async move {
        let mut conn = PgConnection::connect_with(connect).await?;
        let mut sums = Sums::new();
        checksum::database_sums(
            &mut conn,
            SHADOW_SCHEMA,
            *projection,
            Mode::Local,
            &mut sums,
        )
        .await?;
        let _ = conn.close().await;
        Ok::<Sums, ProjectionError>(sums)
    });
    let mut shadow = Sums::new();
    for sums in futures::future::try_join_all(reads).await? {
        shadow.extend(sums);
    }
    let mut differences = checksum::differences("rebuild", &shadow, "second fold", &second);
    if second_events != folded_events {
        differences.push(format!(
            "events: the rebuild folded {folded_events}, the second fold {second_events}"
        ));
    }
    // The live tables and their checkpoints in one read-only snapshot (no
    // transaction id: it does not hold the watermark back).
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Live tables, when their runner is exactly at the end position.
    let mut at_end = true;
    let mut notes = Vec::new();
    for projection in projections {
        let cp = crate::runner::load_checkpoint(&mut tx, *projection, false).await?;
        if cp.position != end || cp.failed {
            at_end = false;
            notes.push(format!(
                "{projection} runner at ({}, {}){}",
                cp.position.commit_xid,
                cp.position.insert_id,
                if cp.failed {
                    ", stopped at a failed event"
                } else {
                    ""
                }
            ));
        }
    }
    let live_note;
    if at_end {
        let mut live = Sums::new();
        for projection in projections {
            checksum::database_sums(&mut tx, LIVE_SCHEMA, *projection, Mode::Local, &mut live)
                .await?;
        }
        differences.extend(checksum::differences("rebuild", &shadow, "live", &live));
        live_note = "live tables compared (runner caught up)".to_owned();
    } else {
        live_note = format!(
            "live tables not compared: rebuild ends at ({}, {}); {}",
            end.commit_xid,
            end.insert_id,
            notes.join("; ")
        );
    }
    tx.rollback().await?;
    Ok(Validation {
        shadow,
        live_compared: at_end,
        live_note,
        differences,
    })
}

/// The swap transaction. Returns (events applied since `end`, total events
/// the checkpoints now cover).
/// Statistics for the shadow tables before they go live: new tables have
/// none, and autovacuum analyzes them only later (or never, where it is
/// off), so the API's plans on the swapped tables would be guesses (ADR 0103:
/// several read queries are slower without statistics). Outside the swap's
/// transaction, which stays short.
async fn analyze_shadow(
    conn: &mut PgConnection,
    projections: &[Projection],
) -> ProjectionResult<()> {
    let tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables())
        .map(|table| qualified(SHADOW_SCHEMA, table))
        .collect();
    if !tables.is_empty() {
        sqlx::raw_sql(&format!("ANALYZE {}", tables.join(", ")))
            .execute(conn)
            .await?;
    }
    Ok(())
}

async fn swap(
    conn: &mut PgConnection,
    projections: &[Projection],
    end: Position,
    folded_total: i64,
) -> ProjectionResult<(u64, i64)> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let below = watermark(conn).await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "SELECT name FROM projection_checkpoints WHERE name = ANY($1) ORDER BY name FOR UPDATE",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    // Catch the shadow tables up with what committed since the end position.
    let decoder = Decoder::new();
    let mut position = end;
    let mut delta = 0u64;
    loop {
        let raws = read_batch(&mut tx, position, below, 2_000).await?;
        let Some(last) = raws.last() else { break };
        position = last.meta.position;
        delta += raws.len() as u64;
        let mut events = Vec::with_capacity(raws.len());
        for raw in raws {
            if projections
                .iter()
                .any(|p| p.reads(&raw.meta.aggregate_type))
            {
                events.push(decoder.decode(raw)?);
            }
        }
        for projection in projections {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| projection.reads(&e.meta.aggregate_type))
                .cloned()
                .collect();
            match apply_batch(&mut tx, SHADOW_SCHEMA, *projection, &mine).await {
                Ok(()) => {}
                Err(BatchError::Event { error, .. }) => return Err(error),
                Err(BatchError::Database(error)) => return Err(error),
            }
        }
    }
    let mut sql = String::new();
    for projection in projections {
        for table in projection.tables() {
            sql.push_str(&format!(
                "DROP TABLE {live}; ALTER TABLE {shadow} SET SCHEMA {LIVE_SCHEMA}; \
                 GRANT SELECT ON {live} TO queue_service; \
                 GRANT SELECT, INSERT, UPDATE ON {live} TO queue_projector; \
                 SELECT queue_isolate_tenants('{live}'::regclass);",
                live = qualified(LIVE_SCHEMA, table),
                shadow = qualified(SHADOW_SCHEMA, table),
            ));
        }
    }
    sqlx::raw_sql(&sql).execute(&mut *tx).await?;
    let total = folded_total + delta as i64;
    sqlx::query(
        "UPDATE projection_checkpoints SET commit_xid = $2, insert_id = $3, events = $4, \
         updated_at = now(), failed_at = NULL, error = NULL, failed_aggregate_type = NULL, \
         failed_aggregate_id = NULL, failed_sequence = NULL WHERE name = ANY($1)",
    )
    .bind(&names)
    .bind(position.commit_xid)
    .bind(position.insert_id)
    .bind(total)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((delta, total))
}
