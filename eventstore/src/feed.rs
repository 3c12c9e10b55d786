//! Reading committed events in the one global order, independent of sealing.
//!
//! Position = (commit_xid, insert_id). Only events of transactions below the
//! committed-transaction watermark are returned, so a reader that resumes
//! from its last position never skips an event that committed late. The
//! sealer, every projection runner and extraction read this order through
//! [`FeedRead`] (the only place the ordered read of `events` is spelled);
//! the ledger `seq` of an event is its rank in it.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::error::StoreResult;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub commit_xid: i64,
    pub insert_id: i64,
}

impl Position {
    /// The position columns (`commit_xid`, `insert_id`) of a feed row.
    pub fn of(row: &PgRow) -> StoreResult<Self> {
        Ok(Self {
            commit_xid: row.try_get("commit_xid")?,
            insert_id: row.try_get("insert_id")?,
        })
    }
}

/// The current watermark: every transaction id below it has finished.
pub async fn watermark(conn: &mut PgConnection) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?,
    )
}

/// The first transaction id not yet started at the call: once the watermark
/// reaches it, everything committed before the call is readable.
pub async fn horizon(conn: &mut PgConnection) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?,
    )
}

/// The position of the last event committed below the watermark now (the
/// end a rebuild or an extraction fixes before it reads), or the start
/// when there is none.
pub async fn end(conn: &mut PgConnection) -> StoreResult<Position> {
    let below = watermark(conn).await?;
    let row = sqlx::query(
        "SELECT commit_xid, insert_id FROM events WHERE commit_xid < $1 \
         ORDER BY commit_xid DESC, insert_id DESC LIMIT 1",
    )
    .bind(below)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Position::of(&row),
        None => Ok(Position::default()),
    }
}

/// The position of the newest stored event, committed or not yet below the
/// watermark (a reader waiting for "everything written before now").
pub async fn newest(conn: &mut PgConnection) -> StoreResult<Option<Position>> {
    let row = sqlx::query(
        "SELECT commit_xid, insert_id FROM events ORDER BY commit_xid DESC, insert_id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(Position::of).transpose()
}

/// How many events lie after `after` up to `until`.
pub async fn count(conn: &mut PgConnection, after: Position, until: Until) -> StoreResult<i64> {
    const AFTER: &str = "SELECT count(*) FROM events WHERE (commit_xid, insert_id) > ($1, $2)";
    let sql = match until {
        Until::Watermark(_) => format!("{AFTER} AND commit_xid < $3"),
        Until::Position(_) => format!("{AFTER} AND (commit_xid, insert_id) <= ($3, $4)"),
        Until::Stored => AFTER.to_string(),
    };
    let query = sqlx::query_scalar(&sql)
        .bind(after.commit_xid)
        .bind(after.insert_id);
    let query = match until {
        Until::Watermark(below) => query.bind(below),
        Until::Position(end) => query.bind(end.commit_xid).bind(end.insert_id),
        Until::Stored => query,
    };
    Ok(query.fetch_one(&mut *conn).await?)
}

/// What a reader takes of each event row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// [`PAYLOAD_COLUMNS`], read by index (projections).
    Payload,
    /// The position and every column `ChainedRow::decode` reads
    /// (extraction copies and checks them).
    Chained,
    /// `Chained` plus `predecessor_hash`, the hash of the stream's previous
    /// row (the sealer checks each row's link before sealing it).
    ChainedWithPredecessor,
    /// The position and the stream key only (order comparison).
    Order,
}

/// The projections' columns, in this order: a reader takes them by index
/// (`commit_xid` 0, `insert_id` 1, `aggregate_type` 2, `aggregate_id` 3,
/// `sequence` 4, `event_type` 5, `event_version` 6, `payload` 7,
/// `recorded_at` 8, `hash` 9).
pub const PAYLOAD_COLUMNS: &str = "commit_xid, insert_id, aggregate_type, aggregate_id, \
     sequence, event_type, event_version, payload, recorded_at, hash";

const CHAINED_COLUMNS: &str = "commit_xid, insert_id, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata, recorded_at, prev_hash, hash, mac, mac_key_id";

const ORDER_COLUMNS: &str = "commit_xid, insert_id, aggregate_type, aggregate_id, sequence";

/// `columns` (a comma-separated list) qualified with the table alias `alias`.
pub fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The upper end of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Events of transactions below this watermark (a live reader).
    Watermark(i64),
    /// Up to and including this position (a run that fixed its end first,
    /// itself below a watermark).
    Position(Position),
    /// Everything stored (a database nobody writes to: an extraction
    /// target, a benchmark).
    Stored,
}

/// One read of the feed: events after a position, up to an end, in the
/// global order, optionally at most `limit` of them.
#[derive(Clone, Debug)]
pub struct FeedRead {
    sql: String,
    columns: Columns,
    after: Position,
    until: Until,
    limit: Option<i64>,
}

impl FeedRead {
    pub fn new(columns: Columns, after: Position, until: Until) -> Self {
        Self::build(columns, after, until, None)
    }

    /// At most `limit` events (at least one).
    pub fn limit(self, limit: i64) -> Self {
        Self::build(self.columns, self.after, self.until, Some(limit.max(1)))
    }

    fn build(columns: Columns, after: Position, until: Until, limit: Option<i64>) -> Self {
        let (select, join) = match columns {
            Columns::Payload => (qualified(PAYLOAD_COLUMNS, "e"), ""),
            Columns::Chained => (qualified(CHAINED_COLUMNS, "e"), ""),
            Columns::ChainedWithPredecessor => (
                format!(
                    "{}, p.hash AS predecessor_hash",
                    qualified(CHAINED_COLUMNS, "e")
                ),
                " LEFT JOIN events p ON p.aggregate_type = e.aggregate_type \
                 AND p.aggregate_id = e.aggregate_id AND p.sequence = e.sequence - 1",
            ),
            Columns::Order => (qualified(ORDER_COLUMNS, "e"), ""),
        };
        let (bound, next) = match until {
            Until::Watermark(_) => (" AND e.commit_xid < $3", 4),
            Until::Position(_) => (" AND (e.commit_xid, e.insert_id) <= ($3, $4)", 5),
            Until::Stored => ("", 3),
        };
        let limit_sql = match limit {
            Some(_) => format!(" LIMIT ${next}"),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {select} FROM events e{join} WHERE (e.commit_xid, e.insert_id) > ($1, $2)\
             {bound} ORDER BY e.commit_xid, e.insert_id{limit_sql}"
        );
        Self {
            sql,
            columns,
            after,
            until,
            limit,
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(&self.sql)
            .bind(self.after.commit_xid)
            .bind(self.after.insert_id);
        match self.until {
            Until::Watermark(below) => query = query.bind(below),
            Until::Position(end) => query = query.bind(end.commit_xid).bind(end.insert_id),
            Until::Stored => {}
        }
        if let Some(limit) = self.limit {
            query = query.bind(limit);
        }
        query
    }

    /// The whole batch.
    pub async fn fetch_all(&self, conn: &mut PgConnection) -> StoreResult<Vec<PgRow>> {
        Ok(self.query().fetch_all(conn).await?)
    }

    /// Row by row, for a read too large to hold at once.
    pub fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
    ) -> BoxStream<'a, Result<PgRow, sqlx::Error>> {
        self.query().fetch(conn)
    }
}

/// How far a reader at `after` trails the feed below `watermark`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backlog {
    /// Committed events after the position.
    pub events: i64,
    /// Age of the oldest of those in seconds (0 when caught up).
    pub oldest_seconds: f64,
}

/// The backlog of a reader at `after` (projection lag, outbox lag).
pub async fn backlog(
    conn: &mut PgConnection,
    after: Position,
    watermark: i64,
) -> StoreResult<Backlog> {
    let row = sqlx::query(
        "SELECT count(*) AS behind, \
         coalesce(extract(epoch FROM now() - min(recorded_at))::float8, 0) AS seconds \
         FROM events WHERE (commit_xid, insert_id) > ($1, $2) AND commit_xid < $3",
    )
    .bind(after.commit_xid)
    .bind(after.insert_id)
    .bind(watermark)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Backlog {
        events: row.try_get("behind")?,
        oldest_seconds: row.try_get::<f64, _>("seconds")?.max(0.0),
    })
}
