//! The one error type of the event store.

use cqrs_es::persist::PersistenceError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first (postgres-es's 23505 mapping).
    #[error("optimistic lock: the stream changed under the writer")]
    OptimisticLock,
    /// A unique index other than the stream key refused the events.
    #[error("unique constraint {constraint} refused the events")]
    UniqueViolation { constraint: String },
    /// The event cannot be stored faithfully (see ledger-format.md §1).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The database cannot be reached (connection-class errors).
    #[error("cannot reach the database: {}", first_line(.0))]
    Unavailable(#[source] sqlx::Error),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("ledger: {0}")]
    Ledger(String),
    /// A stored event does not verify (link, hash or MAC): nothing is decided on it.
    #[error(transparent)]
    Integrity(#[from] crate::integrity::IntegrityError),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                match db.constraint() {
                    Some("events_pkey") | None => Self::OptimisticLock,
                    Some(other) => Self::UniqueViolation {
                        constraint: other.to_string(),
                    },
                }
            }
            // Connection-class SQLSTATEs (08xxx), shutdown (57P0x) and too many connections.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("57P") || c == "53300"
                }) =>
            {
                Self::Unavailable(err)
            }
            // A connection cut mid-message surfaces as a protocol error.
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            _ => Self::Database(err),
        }
    }
}

impl From<StoreError> for PersistenceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::OptimisticLock => Self::OptimisticLockError,
            StoreError::Unavailable(_) => Self::ConnectionError(Box::new(err)),
            other => Self::UnknownError(Box::new(other)),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The first line of an error's text (driver errors can span several).
fn first_line(err: &sqlx::Error) -> String {
    let text = err.to_string();
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(StoreError::from(io).is_unavailable());
        assert!(StoreError::from(sqlx::Error::Protocol("unexpected eof".into())).is_unavailable());
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
