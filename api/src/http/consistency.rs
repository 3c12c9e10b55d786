//! Read-your-writes for the reads served from projections (sessions,
//! passkeys, the audit log). A read first waits, briefly and boundedly, for
//! the projection it reads to pass every event committed before the read
//! began, so a caller sees its own writes (a login's session, an added
//! passkey, a service's audit event) without sleeping or retrying. The
//! reads that come from the event streams (`/me`) need no wait.
//!
//! Bounded: if the projection does not get there within
//! `QUEUE_READ_WAIT_MS` (default 1 s; its runner is stopped, or a long write
//! transaction anywhere in the cluster holds the committed-transaction
//! watermark back), the read answers from what is there and says so in
//! `X-Queue-Consistency: stale` (`fresh` otherwise).

use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use queue_projections::runner::load_checkpoint;
use queue_projections::Projection;

use crate::http::error::ApiError;
use crate::state::AppState;

/// How often the projection's checkpoint is looked at while waiting.
const POLL: Duration = Duration::from_millis(5);

pub const CONSISTENCY_HEADER: HeaderName = HeaderName::from_static("x-queue-consistency");

/// Whether the read saw every write committed before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    Stale,
}

/// The response header a projection read carries.
pub type ConsistencyHeader = [(HeaderName, HeaderValue); 1];

impl Freshness {
    pub fn header(self) -> ConsistencyHeader {
        let value = match self {
            Self::Fresh => HeaderValue::from_static("fresh"),
            Self::Stale => HeaderValue::from_static("stale"),
        };
        [(CONSISTENCY_HEADER, value)]
    }
}

/// Waits until `projection` has applied every event committed before this
/// call (at most `read_wait` of the configuration).
pub async fn await_projection(
    state: &AppState,
    projection: Projection,
) -> Result<Freshness, ApiError> {
    let mut conn = state.pool.acquire().await?;
    // The newest committed event now: the caller's own writes are at or
    // before it (they committed before the request was sent).
    let target = queue_eventstore::feed::newest(&mut conn)
        .await?
        .map(|p| (p.commit_xid, p.insert_id));
    let Some(target) = target else {
        return Ok(Freshness::Fresh);
    };
    let started = Instant::now();
    loop {
        let checkpoint = load_checkpoint(&mut conn, projection, false).await?;
        let at = (
            checkpoint.position.commit_xid,
            checkpoint.position.insert_id,
        );
        if at >= target {
            return Ok(Freshness::Fresh);
        }
        if started.elapsed() >= state.config().read_wait {
            tracing::info!(
                projection = projection.name(),
                "read answered from a projection that has not caught up"
            );
            return Ok(Freshness::Stale);
        }
        tokio::time::sleep(POLL).await;
    }
}
