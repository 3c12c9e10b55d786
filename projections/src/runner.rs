//! The durable runner: per projection, read the feed after its checkpoint,
//! apply a batch and move the checkpoint in the same transaction.
//!
//! - Exactly-once effect: rows and checkpoint commit together; a crash
//!   loses both or neither, and a restart resumes from the checkpoint.
//! - One active runner per projection across instances: a session advisory
//!   lock on a dedicated connection, which also applies the batches; when
//!   that connection dies the lock goes with it and a standby takes over.
//!   The checkpoint row is locked `FOR UPDATE` in every apply transaction,
//!   so two appliers (a runner and `catch_up`, or a rebuild's swap) can
//!   never apply the same event twice.
//! - A poison event: the projection applies everything before it, stops
//!   there, records the error on its checkpoint row and retries slowly; the
//!   other projections keep running.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use queue_eventstore::feed::Position;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{read_batch, watermark, Decoder, Event, RawEvent};
use crate::projection::Projection;
use crate::projection::{apply_batch, BatchError};

/// The schema the live tables are in.
pub const LIVE_SCHEMA: &str = "public";

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Events read and applied per transaction.
    pub batch_size: i64,
    /// Sleep between polls when caught up.
    pub poll_interval: Duration,
    /// How often a standby retries the projection's lock.
    pub standby_interval: Duration,
    /// How long a projection stopped at a poison event waits before retrying.
    pub failed_retry_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(50),
            standby_interval: Duration::from_secs(1),
            failed_retry_interval: Duration::from_secs(10),
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Events the checkpoint moved over.
    pub applied: u64,
    /// Whether the step read a full batch (more may be waiting).
    pub full: bool,
    /// Set when the projection stopped at an event it cannot apply.
    pub failed: Option<String>,
}

/// The checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: Position,
    pub events: i64,
    pub failed: bool,
}

pub async fn load_checkpoint(
    conn: &mut PgConnection,
    projection: Projection,
    for_update: bool,
) -> ProjectionResult<Checkpoint> {
    let sql = format!(
        "SELECT commit_xid, insert_id, events, failed_at IS NOT NULL AS failed \
         FROM projection_checkpoints WHERE name = $1{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(projection.name())
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Checkpoint {
            position: Position {
                commit_xid: row.try_get("commit_xid")?,
                insert_id: row.try_get("insert_id")?,
            },
            events: row.try_get("events")?,
            failed: row.try_get("failed")?,
        }),
        None => {
            // A projection added after the migration: start it from the beginning.
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, commit_xid, insert_id, events) \
                 VALUES ($1, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
            )
            .bind(projection.name())
            .execute(&mut *conn)
            .await?;
            Ok(Checkpoint {
                position: Position::default(),
                events: 0,
                failed: false,
            })
        }
    }
}

/// Decodes the events the projection reads; stops at the first it cannot
/// decode. Returns the decoded prefix and the failure, if any.
fn decode_prefix(
    decoder: &Decoder,
    projection: Projection,
    raws: Vec<RawEvent>,
) -> (Vec<Event>, Vec<Position>, Option<(usize, ProjectionError)>) {
    let mut events = Vec::with_capacity(raws.len());
    let mut positions = Vec::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        positions.push(raw.meta.position);
        if !projection.reads(&raw.meta.aggregate_type) {
            continue;
        }
        match decoder.decode(raw) {
            Ok(event) => events.push(event),
            Err(err) => {
                positions.pop();
                return (events, positions, Some((index, err)));
            }
        }
    }
    (events, positions, None)
}

/// One apply transaction on `conn`: up to `limit` events after the
/// checkpoint. A poison event is recorded on the checkpoint row.
pub async fn step(
    conn: &mut PgConnection,
    projection: Projection,
    decoder: &Decoder,
    limit: i64,
) -> ProjectionResult<Step> {
    // Cheap check first, outside any transaction (no transaction id is
    // taken while idle, so idle runners never hold the watermark back).
    let below = watermark(conn).await?;
    let seen = load_checkpoint(conn, projection, false).await?;
    if read_batch(conn, seen.position, below, 1).await?.is_empty() {
        return Ok(Step::default());
    }
    let mut limit = limit.max(1);
    loop {
        match try_step(conn, projection, decoder, below, limit).await? {
            Attempt::Done(step) => return Ok(step),
            // The batch hit an error inside the database (a constraint, a
            // type): narrow down to the one event that causes it.
            Attempt::DatabaseError(err) if limit > 1 => {
                tracing::debug!(projection = %projection, error = %err, "batch failed; retrying one event at a time");
                limit = 1;
            }
            Attempt::DatabaseError(err) => {
                let first = first_event_after(conn, projection, below).await?;
                let reason = first
                    .as_ref()
                    .map(|raw| raw.meta.error(err.to_string()))
                    .unwrap_or(err);
                record_failure(conn, projection, &reason).await?;
                return Ok(Step {
                    applied: 0,
                    full: false,
                    failed: Some(reason.to_string()),
                });
            }
        }
    }
}

enum Attempt {
    Done(Step),
    DatabaseError(ProjectionError),
}

async fn first_event_after(
    conn: &mut PgConnection,
    projection: Projection,
    below: i64,
) -> ProjectionResult<Option<RawEvent>> {
    let cp = load_checkpoint(conn, projection, false).await?;
    let mut position = cp.position;
    loop {
        let batch = read_batch(conn, position, below, 100).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        for raw in batch {
            position = raw.meta.position;
            if projection.reads(&raw.meta.aggregate_type) {
                return Ok(Some(raw));
            }
        }
    }
}

async fn try_step(
    conn: &mut PgConnection,
    projection: Projection,
    decoder: &Decoder,
    below: i64,
    limit: i64,
) -> ProjectionResult<Attempt> {
    let mut tx = conn.begin().await?;
    let checkpoint = load_checkpoint(&mut tx, projection, true).await?;
    let raws = read_batch(&mut tx, checkpoint.position, below, limit).await?;
    let full = raws.len() as i64 == limit;
    let (mut events, mut positions, mut failure) = decode_prefix(decoder, projection, raws);
    loop {
        let mut savepoint = tx.begin().await?;
        match apply_batch(
            &mut savepoint,
            crate::runner::LIVE_SCHEMA,
            projection,
            &events,
        )
        .await
        {
            Ok(()) => {
                savepoint.commit().await?;
                break;
            }
            Err(BatchError::Event { index, error }) => {
                savepoint.rollback().await?;
                // Apply what comes before the bad event, stop there.
                let bad = events[index].meta.position;
                events.truncate(index);
                positions.retain(|p| *p < bad);
                failure = Some((index, error));
            }
            Err(BatchError::Database(err)) => {
                savepoint.rollback().await?;
                tx.rollback().await?;
                return Ok(Attempt::DatabaseError(err));
            }
        }
    }
    let applied = positions.len() as u64;
    if let Some(last) = positions.last() {
        advance_checkpoint(&mut tx, projection.name(), *last, applied).await?;
    }
    tx.commit().await?;
    let failed = match failure {
        Some((_, error)) => {
            record_failure(conn, projection, &error).await?;
            Some(error.to_string())
        }
        None => None,
    };
    Ok(Attempt::Done(Step {
        applied,
        full: full && failed.is_none(),
        failed,
    }))
}

/// Moves a feed reader's checkpoint to `last`, counting `applied` events
/// and clearing any recorded failure (projection runners and the outbox).
pub(crate) async fn advance_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    last: Position,
    applied: u64,
) -> ProjectionResult<()> {
    sqlx::query(
        "UPDATE projection_checkpoints SET commit_xid = $2, insert_id = $3, \
         events = events + $4, updated_at = now(), failed_at = NULL, error = NULL, \
         failed_aggregate_type = NULL, failed_aggregate_id = NULL, failed_sequence = NULL \
         WHERE name = $1",
    )
    .bind(name)
    .bind(last.commit_xid)
    .bind(last.insert_id)
    .bind(applied as i64)
    .execute(conn)
    .await?;
    Ok(())
}

async fn record_failure(
    conn: &mut PgConnection,
    projection: Projection,
    error: &ProjectionError,
) -> ProjectionResult<()> {
    let (aggregate_type, aggregate_id, sequence) = match error {
        ProjectionError::Event(failure) => (
            Some(failure.aggregate_type.clone()),
            Some(failure.aggregate_id.clone()),
            Some(failure.sequence),
        ),
        _ => (None, None, None),
    };
    tracing::error!(projection = %projection, error = %error, "projection stopped at an event it cannot apply");
    sqlx::query(
        "UPDATE projection_checkpoints SET failed_at = coalesce(failed_at, now()), error = $2, \
         failed_aggregate_type = $3, failed_aggregate_id = $4, failed_sequence = $5 WHERE name = $1",
    )
    .bind(projection.name())
    .bind(error.to_string())
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What `catch_up` did for one projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatchUp {
    pub projection: Projection,
    pub applied: u64,
    /// Set when the projection is stopped at an event it cannot apply.
    pub error: Option<String>,
}

/// Applies every event committed before the call to every projection
/// (tests, CLI, before a cutover). A projection stopped at a poison event
/// reports it; the others still catch up.
pub async fn catch_up(pool: &PgPool) -> ProjectionResult<Vec<CatchUp>> {
    catch_up_only(pool, &Projection::ALL).await
}

/// `catch_up` for some projections.
pub async fn catch_up_only(
    pool: &PgPool,
    projections: &[Projection],
) -> ProjectionResult<Vec<CatchUp>> {
    let mut conn = pool.acquire().await?;
    crate::events::wait_for_watermark(&mut conn, Duration::from_secs(60)).await?;
    let decoder = Decoder::new();
    let mut out = Vec::new();
    for projection in projections {
        let mut applied = 0;
        let error = loop {
            let step = step(&mut conn, *projection, &decoder, 2_000).await?;
            applied += step.applied;
            if step.failed.is_some() {
                break step.failed;
            }
            if step.applied == 0 && !step.full {
                break None;
            }
        };
        out.push(CatchUp {
            projection: *projection,
            applied,
            error,
        });
    }
    Ok(out)
}

/// Runs one runner per projection until `shutdown` turns true (or its
/// sender is dropped). Each is leader or standby for its projection.
pub async fn run_all(pool: PgPool, config: RunnerConfig, shutdown: watch::Receiver<bool>) {
    let options = (*pool.connect_options()).clone();
    let mut tasks = Vec::new();
    for projection in Projection::ALL {
        tasks.push(tokio::spawn(run(
            projection,
            options.clone(),
            config.clone(),
            shutdown.clone(),
        )));
    }
    for task in tasks {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "projection runner task ended abnormally");
        }
    }
}

/// One projection's runner: leader while it holds the lock, else standby.
pub async fn run(
    projection: Projection,
    connect: PgConnectOptions,
    config: RunnerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let work = ProjectionWork {
        projection,
        decoder: Decoder::new(),
        batch_size: config.batch_size,
    };
    run_leader(
        projection.name(),
        projection.lock_key(),
        connect,
        config,
        shutdown,
        work,
    )
    .await;
}

/// What a leader does on its connection: a step, and gauges about once a
/// second. Boxed futures keep the loop `Send` for `tokio::spawn`.
pub(crate) trait LeaderWork: Send {
    fn step<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, ProjectionResult<Step>>;
    fn every_second<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, ()>;
}

struct ProjectionWork {
    projection: Projection,
    decoder: Decoder,
    batch_size: i64,
}

impl LeaderWork for ProjectionWork {
    fn step<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, ProjectionResult<Step>> {
        Box::pin(step(conn, self.projection, &self.decoder, self.batch_size))
    }

    fn every_second<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(lag) = lag_of(conn, self.projection).await {
                crate::metrics::record(self.projection, &lag);
            }
        })
    }
}

/// The leader loop every runner of the log shares (the projections and the
/// mail outbox): hold the advisory lock `lock_key` on a connection of its
/// own (a standby retries every `standby_interval`; when the connection
/// dies the lock goes with it and a standby takes over), then step `work`
/// until it reads less than a full batch, wait `poll_interval` (or
/// `failed_retry_interval` after a failure), and record gauges about once a
/// second.
pub(crate) async fn run_leader(
    name: &'static str,
    lock_key: i64,
    connect: PgConnectOptions,
    config: RunnerConfig,
    mut shutdown: watch::Receiver<bool>,
    mut work: impl LeaderWork,
) {
    while !stopping(&shutdown) {
        let led = lead(name, lock_key, &connect, &config, &mut shutdown, &mut work).await;
        if let Err(err) = led {
            tracing::warn!(runner = name, error = %err, "runner lost its connection; retrying");
        }
        if stop_requested_within(&mut shutdown, config.standby_interval).await {
            break;
        }
    }
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

async fn lead(
    name: &'static str,
    lock_key: i64,
    connect: &PgConnectOptions,
    config: &RunnerConfig,
    shutdown: &mut watch::Receiver<bool>,
    work: &mut impl LeaderWork,
) -> ProjectionResult<()> {
    let mut conn = PgConnection::connect_with(connect).await?;
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key)
        .fetch_one(&mut conn)
        .await?;
    if !acquired {
        return Ok(());
    }
    tracing::info!(runner = name, "runner: this instance is active");
    let mut last_tick = Instant::now() - Duration::from_secs(60);
    loop {
        if stopping(shutdown) {
            // Release the lock now rather than when the connection closes.
            let _ = conn.close().await;
            return Ok(());
        }
        let step = work.step(&mut conn).await?;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            work.every_second(&mut conn).await;
        }
        let wait = if step.failed.is_some() {
            config.failed_retry_interval
        } else if step.full {
            continue;
        } else {
            config.poll_interval
        };
        if stop_requested_within(shutdown, wait).await {
            let _ = conn.close().await;
            return Ok(());
        }
    }
}

/// Sleeps for `wait` unless a stop is requested first.
async fn stop_requested_within(shutdown: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => stopping(shutdown),
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
    }
}

/// How far a projection trails the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lag {
    /// Committed events after the checkpoint.
    pub events_behind: i64,
    /// Age of the oldest of those (0 when caught up).
    pub seconds_behind: f64,
}

pub async fn lag_of(conn: &mut PgConnection, projection: Projection) -> ProjectionResult<Lag> {
    let below = watermark(conn).await?;
    let cp = load_checkpoint(conn, projection, false).await?;
    let backlog = queue_eventstore::feed::backlog(conn, cp.position, below).await?;
    Ok(Lag {
        events_behind: backlog.events,
        seconds_behind: backlog.oldest_seconds,
    })
}

/// `queue projections status`: one entry per projection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub projection: Projection,
    pub commit_xid: i64,
    pub insert_id: i64,
    /// Events the checkpoint has moved over since it was last reset.
    pub events: i64,
    pub events_behind: i64,
    pub seconds_behind: f64,
    pub updated_at: DateTime<Utc>,
    /// Whether some instance holds this projection's runner lock.
    pub runner_active: bool,
    pub failed_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

pub async fn status(pool: &PgPool) -> ProjectionResult<Vec<ProjectionStatus>> {
    let mut conn = pool.acquire().await?;
    let mut out = Vec::new();
    for projection in Projection::ALL {
        load_checkpoint(&mut conn, projection, false).await?;
        let lag = lag_of(&mut conn, projection).await?;
        let row = sqlx::query(
            "SELECT commit_xid, insert_id, events, updated_at, failed_at, error, \
             EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                AND ((classid::bigint << 32) | objid::bigint) = $2) AS active \
             FROM projection_checkpoints WHERE name = $1",
        )
        .bind(projection.name())
        .bind(projection.lock_key())
        .fetch_one(&mut *conn)
        .await?;
        crate::metrics::record(projection, &lag);
        out.push(ProjectionStatus {
            projection,
            commit_xid: row.try_get("commit_xid")?,
            insert_id: row.try_get("insert_id")?,
            events: row.try_get("events")?,
            events_behind: lag.events_behind,
            seconds_behind: lag.seconds_behind,
            updated_at: row.try_get("updated_at")?,
            runner_active: row.try_get("active")?,
            failed_at: row.try_get("failed_at")?,
            error: row.try_get("error")?,
        });
    }
    Ok(out)
}
