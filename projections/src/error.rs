//! The one error type of queue-projections.

use queue_eventstore::StoreError;

pub type ProjectionResult<T> = Result<T, ProjectionError>;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A projection cannot apply one event (undecodable payload, an event
    /// for a row that does not exist, …). Deterministic: retrying the same
    /// code on the same event fails the same way.
    #[error("{aggregate_type}/{aggregate_id} sequence {sequence} ({event_type} {event_version}): {reason}")]
    Event {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        event_type: String,
        event_version: String,
        reason: String,
    },
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("unknown projection {0:?} (known: customers, credentials, sessions, audit)")]
    UnknownProjection(String),
    #[error("{0}")]
    Rebuild(String),
    #[error("{0}")]
    Extract(String),
}
