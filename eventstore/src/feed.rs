//! Reading committed events in the one global order, independent of sealing.
//!
//! Position = (commit_xid, insert_id). Only events of transactions below the
//! committed-transaction watermark are returned, so a reader that resumes
//! from its last position never skips an event that committed late. The
//! sealer and every projection runner read this same order; the ledger
//! `seq` of an event is its rank in it.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::error::StoreResult;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub commit_xid: i64,
    pub insert_id: i64,
}

/// The current watermark: every transaction id below it has finished.
pub async fn watermark(conn: &mut PgConnection) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?,
    )
}
