//! Reading committed events in the one global order, independent of sealing.
//!
//! Position = (commit_xid, insert_id). Only events of transactions below the
//! committed-transaction watermark are returned, so a reader that resumes
//! from its last position never skips an event that committed late. The
//! sealer and every projection runner read this same order; the ledger
//! `seq` of an event is its rank in it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::error::StoreResult;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub commit_xid: i64,
    pub insert_id: i64,
}

/// One stored event with its place in the global order.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub hash: Vec<u8>,
}

/// The current watermark: every transaction id below it has finished.
pub async fn watermark(conn: &mut PgConnection) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?,
    )
}

/// Up to `limit` committed events after `after`, in global order.
pub async fn read_after(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
) -> StoreResult<Vec<StoredEvent>> {
    let below = watermark(conn).await?;
    let rows = sqlx::query(
        "SELECT commit_xid, insert_id, aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata, recorded_at, hash FROM events \
         WHERE (commit_xid, insert_id) > ($1, $2) AND commit_xid < $3 \
         ORDER BY commit_xid, insert_id LIMIT $4",
    )
    .bind(after.commit_xid)
    .bind(after.insert_id)
    .bind(below)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredEvent {
                position: Position {
                    commit_xid: row.try_get("commit_xid")?,
                    insert_id: row.try_get("insert_id")?,
                },
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: row.try_get("metadata")?,
                recorded_at: row.try_get("recorded_at")?,
                hash: row.try_get("hash")?,
            })
        })
        .collect()
}
