//! The one error type of the backfill. Bad legacy rows are not errors (they
//! are [`crate::Rejection`]s in the report); these stop the run.

use queue_eventstore::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("legacy database: {0}")]
    Legacy(String),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("queue database: {0}")]
    Queue(String),
    #[error("invalid option: {0}")]
    Options(String),
}

impl BackfillError {
    pub(crate) fn legacy(err: sqlx::Error) -> Self {
        Self::Legacy(err.to_string())
    }

    pub(crate) fn queue(err: sqlx::Error) -> Self {
        Self::Queue(err.to_string())
    }
}

pub type BackfillResult<T> = Result<T, BackfillError>;
