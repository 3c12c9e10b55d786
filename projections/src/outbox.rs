//! The mail outbox (ADR 0208): every event that needs a message becomes a
//! `mail_outbox` row, written by the `outbox` runner in the same
//! transaction as its checkpoint (like the read-table runners, and with the
//! same advisory-lock leadership); the sender in `queue serve` claims due
//! rows with `FOR UPDATE SKIP LOCKED` and a lease, delivers them, and marks
//! them sent, due again later (exponential backoff) or dead.
//!
//! Unlike the read tables the outbox is a record of effects, not a fold to
//! compare: it is never rebuilt (a rebuild would mail history again), and
//! an event that is already stale when the runner reaches it (a
//! verification link that has expired, a notice older than
//! [`STALE_NOTICE_AFTER`]) gets no row, so a new or extracted database does
//! not mail its past.

use futures::future::BoxFuture;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queue_domain::session::RevokeReason;
use queue_domain::{CredentialEvent, CustomerEvent, SessionEvent};
use queue_eventstore::feed::Position;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{read_batch, watermark, Body, Decoder, Event, RawEvent, EVENT_COLUMNS};
use crate::runner::{Lag, RunnerConfig};

/// The outbox's checkpoint row in `projection_checkpoints`.
pub const NAME: &str = "outbox";

/// The outbox runner's advisory lock ("queuepr" + 5, after the four projections).
pub const LOCK_KEY: i64 = 0x7175_6575_7072_0000 + 5;

/// A notice (factor changed) about an event older than this is not sent.
pub const STALE_NOTICE_AFTER: chrono::Duration = chrono::Duration::hours(24);

/// The event types that need a message; every other event is passed over
/// without being decoded.
const MAILED_TYPES: [&str; 5] = [
    "EmailVerificationRequested",
    "BackupCodesGenerated",
    "CredentialRegistered",
    "CredentialRevoked",
    "SessionRevoked",
];

/// What a message is about (one template each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    EmailVerification,
    PasskeyAdded,
    PasskeyRemoved,
    BackupCodesRegenerated,
    /// The customer ended another of their sessions (ADR 0211).
    SessionRevoked,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmailVerification => "email_verification",
            Self::PasskeyAdded => "passkey_added",
            Self::PasskeyRemoved => "passkey_removed",
            Self::BackupCodesRegenerated => "backup_codes_regenerated",
            Self::SessionRevoked => "session_revoked",
        }
    }
}

impl fmt::Display for MailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for MailKind {
    type Err = ProjectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::EmailVerification,
            Self::PasskeyAdded,
            Self::PasskeyRemoved,
            Self::BackupCodesRegenerated,
            Self::SessionRevoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| ProjectionError::Rebuild(format!("unknown mail kind {s:?}")))
    }
}

/// One outbox row as the sender sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    /// UUIDv5 of the event; the Message-ID is derived from it.
    pub id: Uuid,
    pub kind: MailKind,
    pub customer_id: Uuid,
    pub recipient: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_at: DateTime<Utc>,
    /// `email_verification`: the token's SHA-256 (hex), as in the event.
    pub token_hash: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub details: serde_json::Value,
    /// Attempts so far, this one included (claiming counts as an attempt,
    /// so a message that crashes its sender still reaches the dead state).
    pub attempts: i32,
}

/// The id of the row for an event: UUIDv5(`urn:queue:ns:mail-outbox`, `type/id/seq`).
pub fn row_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:queue:ns:mail-outbox");
    Uuid::new_v5(
        &namespace,
        format!("{aggregate_type}/{aggregate_id}/{sequence}").as_bytes(),
    )
}

// ---------------------------------------------------------------------------
// The runner: events → rows, in the checkpoint's transaction.

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Events the checkpoint moved over.
    pub applied: u64,
    /// Rows written.
    pub enqueued: u64,
    pub full: bool,
    pub failed: Option<String>,
}

async fn checkpoint(conn: &mut PgConnection, for_update: bool) -> ProjectionResult<Position> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, commit_xid, insert_id, events) \
         VALUES ($1, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
    )
    .bind(NAME)
    .execute(&mut *conn)
    .await?;
    let sql = format!(
        "SELECT commit_xid, insert_id FROM projection_checkpoints WHERE name = $1{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql).bind(NAME).fetch_one(&mut *conn).await?;
    Ok(Position {
        commit_xid: row.try_get("commit_xid")?,
        insert_id: row.try_get("insert_id")?,
    })
}

/// One apply transaction: up to `limit` events after the checkpoint.
pub async fn step(
    conn: &mut PgConnection,
    decoder: &Decoder,
    limit: i64,
) -> ProjectionResult<Step> {
    let below = watermark(conn).await?;
    let seen = checkpoint(conn, false).await?;
    if read_batch(conn, seen, below, 1).await?.is_empty() {
        return Ok(Step::default());
    }
    let limit = limit.max(1);
    let mut tx = conn.begin().await?;
    let position = checkpoint(&mut tx, true).await?;
    let raws = read_batch(&mut tx, position, below, limit).await?;
    let full = raws.len() as i64 == limit;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let mut last = None;
    let mut applied = 0u64;
    let mut enqueued = 0u64;
    let mut failure = None;
    for raw in raws {
        let at = raw.meta.position;
        if MAILED_TYPES.contains(&raw.meta.event_type.as_str()) {
            let result = match decoder.decode(raw) {
                Ok(event) => enqueue(&mut tx, decoder, &event, now).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(true) => enqueued += 1,
                Ok(false) => {}
                Err(err @ ProjectionError::Event(_)) => {
                    failure = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        last = Some(at);
        applied += 1;
    }
    if let Some(last) = last {
        crate::runner::advance_checkpoint(&mut tx, NAME, last, applied).await?;
    }
    tx.commit().await?;
    if enqueued > 0 {
        metrics::counter!("queue_mail_enqueued_total").increment(enqueued);
    }
    let failed = match failure {
        Some(err) => {
            record_failure(conn, &err).await?;
            Some(err.to_string())
        }
        None => None,
    };
    Ok(Step {
        applied,
        enqueued,
        full: full && failed.is_none(),
        failed,
    })
}

async fn record_failure(conn: &mut PgConnection, error: &ProjectionError) -> ProjectionResult<()> {
    let (aggregate_type, aggregate_id, sequence) = match error {
        ProjectionError::Event(f) => (
            Some(f.aggregate_type.clone()),
            Some(f.aggregate_id.clone()),
            Some(f.sequence),
        ),
        _ => (None, None, None),
    };
    tracing::error!(projection = NAME, error = %error, "the outbox stopped at an event it cannot read");
    sqlx::query(
        "UPDATE projection_checkpoints SET failed_at = coalesce(failed_at, now()), error = $2, \
         failed_aggregate_type = $3, failed_aggregate_id = $4, failed_sequence = $5 WHERE name = $1",
    )
    .bind(NAME)
    .bind(error.to_string())
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The first event of a stream (it names the owner and the email).
async fn first_event(
    conn: &mut PgConnection,
    decoder: &Decoder,
    aggregate_type: &str,
    aggregate_id: &str,
) -> ProjectionResult<Option<Event>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
         ORDER BY sequence LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let raw: RawEvent = crate::events::raw_from_row(&row)?;
    decoder.decode(raw).map(Some)
}

/// The customer's email, and the transaction that registered them (events
/// in that same transaction are the sign-up itself: no notice for those).
async fn customer_of(
    conn: &mut PgConnection,
    decoder: &Decoder,
    event: &Event,
    customer_id: Uuid,
) -> ProjectionResult<(String, i64)> {
    let first = first_event(conn, decoder, "Customer", &customer_id.to_string()).await?;
    match first {
        Some(Event {
            meta,
            body: Body::Customer(CustomerEvent::Registered { email, .. }),
        })
        | Some(Event {
            meta,
            body: Body::Customer(CustomerEvent::Provisioned { email, .. }),
        })
        | Some(Event {
            meta,
            body: Body::Customer(CustomerEvent::Imported { email, .. }),
        }) => Ok((email.as_str().to_owned(), meta.position.commit_xid)),
        _ => Err(event
            .meta
            .error(format!("customer {customer_id} has no registration event"))),
    }
}

/// Writes the row an event needs, if any; whether one was written.
async fn enqueue(
    conn: &mut PgConnection,
    decoder: &Decoder,
    event: &Event,
    now: DateTime<Utc>,
) -> ProjectionResult<bool> {
    let meta = &event.meta;
    let stream_uuid = || {
        Uuid::parse_str(&meta.aggregate_id).map_err(|_| meta.error("the stream id is not a UUID"))
    };
    let fresh = |at: &DateTime<Utc>| *at > now - STALE_NOTICE_AFTER;
    let mut token_hash = None;
    let mut expires_at = None;
    let (kind, customer_id, at, details) = match &event.body {
        Body::Customer(CustomerEvent::EmailVerificationRequested {
            token_hash: hash,
            expires_at: expires,
            at,
        }) => {
            if *expires <= now {
                return Ok(false);
            }
            token_hash = Some(hash.to_string());
            expires_at = Some(*expires);
            (
                MailKind::EmailVerification,
                stream_uuid()?,
                *at,
                serde_json::json!({}),
            )
        }
        Body::Customer(CustomerEvent::BackupCodesGenerated { generation, at, .. }) => {
            if !fresh(at) {
                return Ok(false);
            }
            (
                MailKind::BackupCodesRegenerated,
                stream_uuid()?,
                *at,
                serde_json::json!({ "generation": generation }),
            )
        }
        Body::Credential(CredentialEvent::Registered {
            customer_id,
            name,
            at,
            ..
        }) => {
            if !fresh(at) {
                return Ok(false);
            }
            (
                MailKind::PasskeyAdded,
                *customer_id.as_uuid(),
                *at,
                serde_json::json!({ "name": name.as_ref().map(|n| n.as_str().to_owned()) }),
            )
        }
        Body::Credential(CredentialEvent::Revoked { at, .. }) => {
            if !fresh(at) {
                return Ok(false);
            }
            let first = first_event(conn, decoder, "Credential", &meta.aggregate_id).await?;
            let (customer_id, name) = match first.map(|e| e.body) {
                Some(Body::Credential(CredentialEvent::Registered {
                    customer_id, name, ..
                }))
                | Some(Body::Credential(CredentialEvent::Imported {
                    customer_id, name, ..
                })) => (*customer_id.as_uuid(), name),
                _ => return Err(meta.error("the credential has no registration event")),
            };
            (
                MailKind::PasskeyRemoved,
                customer_id,
                *at,
                serde_json::json!({ "name": name.map(|n| n.as_str().to_owned()) }),
            )
        }
        Body::Session(SessionEvent::Revoked {
            reason: RevokeReason::RevokedByCustomer,
            at,
        }) => {
            if !fresh(at) {
                return Ok(false);
            }
            let first = first_event(conn, decoder, "Session", &meta.aggregate_id).await?;
            let customer_id = match first.map(|e| e.body) {
                Some(Body::Session(SessionEvent::Created { customer_id, .. }))
                | Some(Body::Session(SessionEvent::Imported { customer_id, .. })) => {
                    *customer_id.as_uuid()
                }
                _ => return Err(meta.error("the session has no creation event")),
            };
            (
                MailKind::SessionRevoked,
                customer_id,
                *at,
                serde_json::json!({ "session_id": meta.aggregate_id }),
            )
        }
        _ => return Ok(false),
    };
    let (recipient, registered_in) = customer_of(conn, decoder, event, customer_id).await?;
    if kind != MailKind::EmailVerification && registered_in == meta.position.commit_xid {
        // The first passkey (or code set) of a sign-up: nothing changed.
        return Ok(false);
    }
    let written = sqlx::query(
        "INSERT INTO mail_outbox (id, kind, customer_id, recipient, aggregate_type, aggregate_id, \
         sequence, event_at, token_hash, expires_at, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(row_id(
        &meta.aggregate_type,
        &meta.aggregate_id,
        meta.sequence,
    ))
    .bind(kind.as_str())
    .bind(customer_id)
    .bind(recipient)
    .bind(&meta.aggregate_type)
    .bind(&meta.aggregate_id)
    .bind(meta.sequence)
    .bind(at)
    .bind(token_hash)
    .bind(expires_at)
    .bind(details)
    .execute(&mut *conn)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// Applies every event committed before the call (tests; the CLI when no
/// `queue serve` runs). Returns the events applied, or the poison event.
pub async fn catch_up(pool: &PgPool) -> ProjectionResult<u64> {
    let mut conn = pool.acquire().await?;
    crate::events::wait_for_watermark(&mut conn, Duration::from_secs(60)).await?;
    let decoder = Decoder::new();
    let mut applied = 0;
    loop {
        let step = step(&mut conn, &decoder, 2_000).await?;
        applied += step.applied;
        if let Some(error) = step.failed {
            return Err(ProjectionError::Rebuild(format!(
                "the outbox is stopped: {error}"
            )));
        }
        if step.applied == 0 && !step.full {
            return Ok(applied);
        }
    }
}

/// The outbox runner: leader while it holds [`LOCK_KEY`], else standby (the
/// projections' leader loop, `runner::run_leader`).
pub async fn run(connect: PgConnectOptions, config: RunnerConfig, shutdown: watch::Receiver<bool>) {
    let work = OutboxWork {
        decoder: Decoder::new(),
        batch_size: config.batch_size,
    };
    crate::runner::run_leader(NAME, LOCK_KEY, connect, config, shutdown, work).await;
}

struct OutboxWork {
    decoder: Decoder,
    batch_size: i64,
}

impl crate::runner::LeaderWork for OutboxWork {
    fn step<'a>(
        &'a mut self,
        conn: &'a mut PgConnection,
    ) -> BoxFuture<'a, ProjectionResult<crate::runner::Step>> {
        Box::pin(async move {
            let done = step(conn, &self.decoder, self.batch_size).await?;
            Ok(crate::runner::Step {
                applied: done.applied,
                full: done.full,
                failed: done.failed,
            })
        })
    }

    fn every_second<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(status) = status_on(conn).await {
                status.record();
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The sender's side: claim, then sent / again later / dead.

const ROW_COLUMNS: &str = "id, kind, customer_id, recipient, aggregate_type, aggregate_id, \
     sequence, event_at, token_hash, expires_at, details, attempts";

fn row_from(row: &sqlx::postgres::PgRow) -> ProjectionResult<OutboxRow> {
    let kind: String = row.try_get("kind")?;
    Ok(OutboxRow {
        id: row.try_get("id")?,
        kind: kind.parse()?,
        customer_id: row.try_get("customer_id")?,
        recipient: row.try_get("recipient")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_at: row.try_get("event_at")?,
        token_hash: row.try_get("token_hash")?,
        expires_at: row.try_get("expires_at")?,
        details: row.try_get("details")?,
        attempts: row.try_get("attempts")?,
    })
}

/// Claims up to `limit` due rows for `lease`: another sender skips them
/// until the lease runs out (a sender that dies mid-send loses nothing; the
/// row is sent again, with the same Message-ID). Counts the attempt.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> ProjectionResult<Vec<OutboxRow>> {
    let sql = format!(
        "UPDATE mail_outbox SET attempts = attempts + 1, \
            leased_until = now() + make_interval(secs => $2) \
         WHERE id IN (SELECT id FROM mail_outbox \
            WHERE state = 'pending' AND next_attempt_at <= now() \
              AND (leased_until IS NULL OR leased_until < now()) \
            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING {ROW_COLUMNS}"
    );
    let rows = sqlx::query(&sql)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
    rows.iter().map(row_from).collect()
}

pub async fn mark_sent(pool: &PgPool, id: Uuid) -> ProjectionResult<()> {
    sqlx::query(
        "UPDATE mail_outbox SET state = 'sent', sent_at = now(), leased_until = NULL, \
         last_error = NULL WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    metrics::counter!("queue_mail_sent_total").increment(1);
    Ok(())
}

/// A transient failure: due again after `delay`.
pub async fn mark_retry(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    delay: Duration,
) -> ProjectionResult<()> {
    sqlx::query(
        "UPDATE mail_outbox SET next_attempt_at = now() + make_interval(secs => $3), \
         leased_until = NULL, last_error = $2, last_error_at = now() \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    metrics::counter!("queue_mail_failures_total", "kind" => "transient").increment(1);
    Ok(())
}

/// A permanent failure, or the last attempt: the dead-letter state.
pub async fn mark_dead(pool: &PgPool, id: Uuid, error: &str) -> ProjectionResult<()> {
    sqlx::query(
        "UPDATE mail_outbox SET state = 'dead', dead_at = now(), leased_until = NULL, \
         last_error = $2, last_error_at = now() WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    metrics::counter!("queue_mail_failures_total", "kind" => "dead").increment(1);
    Ok(())
}

/// A dead row, for `queue projections status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub kind: MailKind,
    pub attempts: i32,
    pub dead_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// The outbox in `queue projections status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxStatus {
    pub events_behind: i64,
    pub seconds_behind: f64,
    pub runner_active: bool,
    /// The event the outbox runner stopped at, if it did.
    pub error: Option<String>,
    pub pending: i64,
    pub sent: i64,
    pub dead: i64,
    /// Age of the oldest pending row (0 when none).
    pub oldest_pending_seconds: f64,
    /// The newest dead rows (up to 10).
    pub dead_letters: Vec<DeadLetter>,
}

impl OutboxStatus {
    /// Gauges for `/metrics`.
    pub fn record(&self) {
        for (state, n) in [
            ("pending", self.pending),
            ("sent", self.sent),
            ("dead", self.dead),
        ] {
            metrics::gauge!("queue_mail_outbox_messages", "state" => state).set(n as f64);
        }
        metrics::gauge!("queue_mail_oldest_pending_seconds").set(self.oldest_pending_seconds);
        let lag = Lag {
            events_behind: self.events_behind,
            seconds_behind: self.seconds_behind,
        };
        metrics::gauge!("queue_projection_events_behind", "projection" => NAME)
            .set(lag.events_behind as f64);
        metrics::gauge!("queue_projection_seconds_behind", "projection" => NAME)
            .set(lag.seconds_behind);
    }
}

pub async fn status(pool: &PgPool) -> ProjectionResult<OutboxStatus> {
    let mut conn = pool.acquire().await?;
    let status = status_on(&mut conn).await?;
    status.record();
    Ok(status)
}

async fn status_on(conn: &mut PgConnection) -> ProjectionResult<OutboxStatus> {
    let below = watermark(conn).await?;
    let position = checkpoint(conn, false).await?;
    let lag = queue_eventstore::feed::backlog(conn, position, below).await?;
    let checkpoint = sqlx::query(
        "SELECT error, EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
            AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND ((classid::bigint << 32) | objid::bigint) = $2) AS active \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(NAME)
    .bind(LOCK_KEY)
    .fetch_one(&mut *conn)
    .await?;
    let counts = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
                count(*) FILTER (WHERE state = 'sent') AS sent, \
                count(*) FILTER (WHERE state = 'dead') AS dead, \
                coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending'))::float8, 0) AS oldest \
         FROM mail_outbox",
    )
    .fetch_one(&mut *conn)
    .await?;
    let dead = sqlx::query(
        "SELECT id, kind, attempts, dead_at, last_error FROM mail_outbox WHERE state = 'dead' \
         ORDER BY dead_at DESC LIMIT 10",
    )
    .fetch_all(&mut *conn)
    .await?;
    let dead_letters = dead
        .iter()
        .map(|row| {
            let kind: String = row.try_get("kind")?;
            Ok(DeadLetter {
                id: row.try_get("id")?,
                kind: kind.parse()?,
                attempts: row.try_get("attempts")?,
                dead_at: row.try_get("dead_at")?,
                last_error: row.try_get("last_error")?,
            })
        })
        .collect::<ProjectionResult<Vec<_>>>()?;
    Ok(OutboxStatus {
        events_behind: lag.events,
        seconds_behind: lag.oldest_seconds,
        runner_active: checkpoint.try_get("active")?,
        error: checkpoint.try_get("error")?,
        pending: counts.try_get("pending")?,
        sent: counts.try_get("sent")?,
        dead: counts.try_get("dead")?,
        oldest_pending_seconds: counts.try_get::<f64, _>("oldest")?.max(0.0),
        dead_letters,
    })
}
