#![forbid(unsafe_code)]
//! Queue's read side: the `queue_*` read tables and `customer_audit_events`
//! as pure folds of the event log, the durable runner that keeps them
//! current, rebuild into shadow tables, and extraction into a new database.
//!
//! Readers (the API) use [`read`]; nothing else here is needed to query.
//!
//! One module per projection, each holding its row types (one declaration
//! per table, see [`table_row!`]), its fold, how a batch is applied, and
//! its reads: [`customers`], [`credentials`], [`sessions`], [`audit`].
//! [`projection`] names them and dispatches to them. The rest is mechanism
//! shared by all: [`row`] and [`table`] (rows in memory and in the
//! database), [`runner`] (keeping them current), [`rebuild`], [`replay`],
//! [`checksum`], [`extract`], [`outbox`], [`events`] (reading the log).

pub mod audit;
pub mod checksum;
pub mod credentials;
pub mod customers;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod outbox;
pub mod projection;
pub mod read;
pub mod rebuild;
pub mod replay;
pub mod row;
pub mod runner;
pub mod sessions;
pub mod table;
pub mod tenants;

pub use error::{EventFailure, ProjectionError, ProjectionResult};
pub use extract::{extract, ExtractKeys, ExtractOptions, ExtractReport};
pub use projection::Projection;
pub use rebuild::{rebuild, RebuildOptions, RebuildReport};
pub use runner::{catch_up, run_all, status, CatchUp, ProjectionStatus, RunnerConfig};
