//! Reading the log in the global order and decoding payloads into the
//! domain event enums (after the domain's upcasters).

use chrono::{DateTime, Utc};
use queue_domain::{AuditEvent, CredentialEvent, CustomerEvent, EventDecoder, SessionEvent};
use queue_eventstore::feed::{Columns, FeedRead, Position, Until};
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{PgConnection, Row};

use crate::error::{EventFailure, ProjectionError, ProjectionResult};

/// Where an event is and what it is, without its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub hash: Vec<u8>,
}

impl Meta {
    /// The error for this event.
    pub fn error(&self, reason: impl Into<String>) -> ProjectionError {
        ProjectionError::Event(Box::new(EventFailure {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            reason: reason.into(),
        }))
    }
}

/// A decoded payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Customer(CustomerEvent),
    Credential(CredentialEvent),
    Session(SessionEvent),
    Audit(AuditEvent),
    /// An aggregate type no projection reads.
    Other,
}

/// A stored event as the projections see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub meta: Meta,
    pub body: Body,
}

/// The stored event with its payload still encoded (JSON text).
#[derive(Debug)]
pub struct RawEvent {
    pub meta: Meta,
    pub payload: String,
}

/// The aggregate types the projections read.
pub const KNOWN_TYPES: [&str; 4] = ["Customer", "Credential", "Session", "Audit"];

/// Columns every event query selects, in `raw_from_row` order (the feed's
/// payload columns).
pub const EVENT_COLUMNS: &str = queue_eventstore::feed::PAYLOAD_COLUMNS;

/// Where `aggregate_type` is among `EVENT_COLUMNS`.
pub const AGGREGATE_TYPE_COLUMN: usize = 2;

/// Reads a row of a query selecting exactly `EVENT_COLUMNS`. Columns are
/// taken by position (a name lookup per column and row showed in the
/// rebuild's profile); a query with other columns fails on the types.
pub fn raw_from_row(row: &PgRow) -> ProjectionResult<RawEvent> {
    Ok(RawEvent {
        payload: jsonb_text(row, 7)?,
        meta: Meta {
            position: Position {
                commit_xid: row.try_get(0)?,
                insert_id: row.try_get(1)?,
            },
            aggregate_type: row.try_get(AGGREGATE_TYPE_COLUMN)?,
            aggregate_id: row.try_get(3)?,
            sequence: row.try_get(4)?,
            event_type: row.try_get(5)?,
            event_version: row.try_get(6)?,
            recorded_at: row.try_get(8)?,
            hash: row.try_get(9)?,
        },
    })
}

/// A jsonb column's JSON text, without parsing it (the binary jsonb wire
/// format is a version byte, 1, then the text).
fn jsonb_text(row: &PgRow, column: usize) -> ProjectionResult<String> {
    let value = row.try_get_raw(column)?;
    let bytes = value.as_bytes().map_err(sqlx::Error::Decode)?;
    let text = match (value.format(), bytes.split_first()) {
        (PgValueFormat::Binary, Some((1, text))) => text,
        (PgValueFormat::Text, _) => bytes,
        _ => {
            return Err(sqlx::Error::Decode(
                format!("column {column}: unsupported jsonb format").into(),
            )
            .into())
        }
    };
    String::from_utf8(text.to_vec()).map_err(|e| sqlx::Error::Decode(Box::new(e)).into())
}

/// Decodes payloads through the domain's one decoder (upcasting old
/// versions first).
#[derive(Debug, Default)]
pub struct Decoder {
    inner: EventDecoder,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decode(&self, raw: RawEvent) -> ProjectionResult<Event> {
        let body = match raw.meta.aggregate_type.as_str() {
            "Customer" => Body::Customer(self.payload(&raw)?),
            "Credential" => Body::Credential(self.payload(&raw)?),
            "Session" => Body::Session(self.payload(&raw)?),
            "Audit" => Body::Audit(self.payload(&raw)?),
            _ => Body::Other,
        };
        Ok(Event {
            meta: raw.meta,
            body,
        })
    }

    fn payload<T: DeserializeOwned>(&self, raw: &RawEvent) -> ProjectionResult<T> {
        let meta = &raw.meta;
        self.inner
            .decode_text(&meta.event_type, &meta.event_version, &raw.payload)
            .map_err(|e| meta.error(format!("cannot decode payload: {e}")))
    }
}

/// The current watermark (see `queue_eventstore::feed`), read before the
/// caller's transaction takes an id of its own.
pub async fn watermark(conn: &mut PgConnection) -> ProjectionResult<i64> {
    Ok(queue_eventstore::feed::watermark(conn).await?)
}

/// Waits until every transaction that was running at the call has finished
/// (the watermark passed them), so "everything committed so far" is
/// readable. A write transaction left open anywhere in the cluster holds the
/// watermark back: after `timeout` this fails and says so.
pub async fn wait_for_watermark(
    conn: &mut PgConnection,
    timeout: std::time::Duration,
) -> ProjectionResult<()> {
    let target = queue_eventstore::feed::horizon(conn).await?;
    let deadline = std::time::Instant::now() + timeout;
    while watermark(conn).await? < target {
        if std::time::Instant::now() >= deadline {
            return Err(ProjectionError::Rebuild(format!(
                "a write transaction older than xid {target} is still open after {}s; \
                 committed events after it cannot be read in order (see pg_stat_activity)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Up to `limit` committed events after `after` and below `below`
/// (a watermark), in the global order (the one feed read).
pub async fn read_batch(
    conn: &mut PgConnection,
    after: Position,
    below: i64,
    limit: i64,
) -> ProjectionResult<Vec<RawEvent>> {
    let rows = FeedRead::new(Columns::Payload, after, Until::Watermark(below))
        .limit(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(raw_from_row).collect()
}
