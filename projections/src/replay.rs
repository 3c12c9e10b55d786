//! Folding a whole log in memory: the rebuild's first pass and the second,
//! independent fold that validates it.

use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::{StreamExt as _, TryStreamExt};
use queue_eventstore::feed::Position;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use tokio::sync::mpsc;

use crate::audit::{AuditFold, AuditRow};
use crate::checksum::{Mode, Sum, Sums};
use crate::credentials::CredentialsFold;
use crate::customers::CustomersFold;
use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{raw_from_row, Decoder, Event, AGGREGATE_TYPE_COLUMN, EVENT_COLUMNS};
use crate::projection::Projection;
use crate::row::Row;
use crate::sessions::SessionsFold;
use crate::tenants::CustomerTenants;

/// The selected projections folded over events held in memory.
pub struct FullFold {
    pub customers: Option<CustomersFold>,
    pub credentials: Option<CredentialsFold>,
    pub sessions: Option<SessionsFold>,
    pub audit: Option<AuditFold>,
    /// The tenant of every customer of the log (loaded before folding).
    tenants: Arc<CustomerTenants>,
    /// Audit rows are not kept; their checksum is, when asked for.
    audit_sum: Option<(Mode, Sum)>,
    pub events: u64,
    pub last: Position,
}

impl FullFold {
    /// `tenants`: the tenant of every customer the folded events name
    /// ([`CustomerTenants::load_until`] the fold's end).
    pub fn new(projections: &[Projection], tenants: Arc<CustomerTenants>) -> Self {
        let has = |p| projections.contains(&p);
        Self {
            customers: has(Projection::Customers).then(|| CustomersFold::new(false)),
            credentials: has(Projection::Credentials).then(|| CredentialsFold::new(false)),
            sessions: has(Projection::Sessions).then(|| SessionsFold::new(false)),
            audit: has(Projection::Audit).then(AuditFold::new),
            tenants,
            audit_sum: None,
            events: 0,
            last: Position::default(),
        }
    }

    /// Also checksum the audit rows as they are made.
    pub fn with_audit_sum(mut self, mode: Mode) -> Self {
        self.audit_sum = Some((mode, Sum::default()));
        self
    }

    /// Folds one event; returns its audit row, if the audit projection is
    /// selected and the event has one.
    pub fn apply(&mut self, event: &Event) -> ProjectionResult<Option<AuditRow>> {
        self.events += 1;
        self.last = self.last.max(event.meta.position);
        if let Some(fold) = &mut self.customers {
            fold.apply(event)?;
        }
        if let Some(fold) = &mut self.credentials {
            fold.apply(event, &self.tenants)?;
        }
        if let Some(fold) = &mut self.sessions {
            fold.apply(event, &self.tenants)?;
        }
        let row = match &mut self.audit {
            Some(fold) => fold.apply(event, &self.tenants)?,
            None => None,
        };
        if let (Some((mode, sum)), Some(row)) = (&mut self.audit_sum, &row) {
            sum.add(row, *mode);
        }
        Ok(row)
    }

    /// Checksums of the folded tables (audit only if `with_audit_sum`).
    pub fn sums(&self, mode: Mode) -> Sums {
        let mut out = Sums::new();
        if let Some(fold) = &self.customers {
            crate::customers::sums(fold, mode, &mut out);
        }
        if let Some(fold) = &self.credentials {
            crate::credentials::sums(fold, mode, &mut out);
        }
        if let Some(fold) = &self.sessions {
            crate::sessions::sums(fold, mode, &mut out);
        }
        if let (Some(_), Some((_, sum))) = (&self.audit, &self.audit_sum) {
            out.insert(AuditRow::TABLE, *sum);
        }
        out
    }
}

/// The second fold: reads every event up to `end` in stream order
/// (aggregate type, id, sequence) rather than the global order, with a
/// fresh decoder and state, and returns the tables' checksums. Every row
/// depends on one stream only, so this must equal the global-order fold.
pub async fn stream_order_sums(
    conn: &mut PgConnection,
    projections: &[Projection],
    end: Position,
    mode: Mode,
) -> ProjectionResult<(u64, Sums)> {
    // Folding (and checksumming) on a thread of its own, beside the reading
    // and decoding.
    let tenants = Arc::new(CustomerTenants::load_until(conn, end).await?);
    let (fold_tx, mut fold_rx) = mpsc::channel::<Vec<Event>>(8);
    let fold_projections = projections.to_vec();
    let folder = tokio::task::spawn_blocking(move || {
        let mut fold = FullFold::new(&fold_projections, tenants).with_audit_sum(mode);
        while let Some(events) = fold_rx.blocking_recv() {
            for event in &events {
                fold.apply(event)?;
            }
        }
        Ok::<(u64, Sums), ProjectionError>((fold.events, fold.sums(mode)))
    });
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE (commit_xid, insert_id) <= ($1, $2) \
         ORDER BY aggregate_type, aggregate_id, sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(end.commit_xid)
        .bind(end.insert_id)
        .fetch(&mut *conn);
    // A fold that stopped reports its own error below.
    let skipped = decode_rows(rows, projections, &fold_tx).await?;
    drop(fold_tx);
    let (folded, sums) = folder
        .await
        .map_err(|e| ProjectionError::Rebuild(format!("second fold: {e}")))??;
    Ok((folded + skipped, sums))
}

/// Events per chunk handed to the decoders.
pub const CHUNK: usize = 1024;
/// Chunks being decoded at once on the blocking pool.
pub const DECODE_IN_FLIGHT: usize = 3;

/// Reads `rows`, keeps the events `projections` read and decodes them in
/// chunks on the blocking pool (a few at once, results taken in order) while
/// rows keep coming, sending each decoded chunk to `tx` in order. Stops early,
/// without error, when the receiver is gone (its owner reports why). Returns
/// how many rows no projection reads.
///
/// The reading task is the one serial stage of a replay, so it only looks
/// at each row's aggregate type (borrowed); taking the row's columns apart
/// (`raw_from_row`, a third of its time in the profile) happens in the
/// decoders.
pub async fn decode_rows(
    mut rows: impl futures::Stream<Item = Result<PgRow, sqlx::Error>> + Unpin,
    projections: &[Projection],
    tx: &mpsc::Sender<Vec<Event>>,
) -> ProjectionResult<u64> {
    let decoder = Arc::new(Decoder::new());
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut skipped = 0u64;
    let mut decoding = FuturesOrdered::new();
    let mut done = false;
    while !done {
        match rows.try_next().await? {
            Some(row) => {
                let aggregate_type: &str = row.try_get(AGGREGATE_TYPE_COLUMN)?;
                if projections.iter().any(|p| p.reads(aggregate_type)) {
                    chunk.push(row);
                } else {
                    skipped += 1;
                }
            }
            None => done = true,
        }
        if chunk.len() == CHUNK || (done && !chunk.is_empty()) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            let decoder = Arc::clone(&decoder);
            decoding.push_back(tokio::task::spawn_blocking(move || {
                decode_chunk(&decoder, full)
            }));
        }
        while decoding.len() >= DECODE_IN_FLIGHT || (done && !decoding.is_empty()) {
            let Some(decoded) = decoding.next().await else {
                break;
            };
            let events =
                decoded.map_err(|e| ProjectionError::Rebuild(format!("decoder: {e}")))??;
            if tx.send(events).await.is_err() {
                return Ok(skipped);
            }
        }
    }
    Ok(skipped)
}

/// Decodes a chunk of event rows (on the blocking pool).
pub fn decode_chunk(decoder: &Decoder, rows: Vec<PgRow>) -> ProjectionResult<Vec<Event>> {
    rows.iter()
        .map(|row| decoder.decode(raw_from_row(row)?))
        .collect()
}
