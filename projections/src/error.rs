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
    #[error("{0}")]
    Event(Box<EventFailure>),
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("unknown projection {0:?} (known: customers, credentials, sessions, audit)")]
    UnknownProjection(String),
    #[error("{0}")]
    Rebuild(String),
    #[error("{0}")]
    Extract(String),
}

/// Which event a projection cannot apply, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{aggregate_type}/{aggregate_id} sequence {sequence} ({event_type} {event_version}): {reason}"
)]
pub struct EventFailure {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub reason: String,
}
