#![forbid(unsafe_code)]
//! Queue's read side: the `queue_*` read tables and `customer_audit_events`
//! as pure folds of the event log, the durable runner that keeps them
//! current, rebuild into shadow tables, and extraction into a new database.
//!
//! Readers (the API) use [`read`]; nothing else here is needed to query.

pub mod checksum;
pub mod error;
pub mod events;
pub mod extract;
pub mod fold;
pub mod metrics;
pub mod outbox;
pub mod projection;
pub mod read;
pub mod rebuild;
pub mod replay;
pub mod rows;
pub mod runner;
pub mod store;

pub use error::{EventFailure, ProjectionError, ProjectionResult};
pub use extract::{extract, ExtractKeys, ExtractOptions, ExtractReport};
pub use projection::Projection;
pub use rebuild::{rebuild, RebuildOptions, RebuildReport};
pub use runner::{catch_up, run_all, status, CatchUp, ProjectionStatus, RunnerConfig};
