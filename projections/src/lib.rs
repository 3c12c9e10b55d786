#![forbid(unsafe_code)]
//! Queue's read side: the `queue_*` read tables and `customer_audit_events`
//! as pure folds of the event log, the durable runner that keeps them
//! current, rebuild into shadow tables, and extraction into a new database.
//!
//! Readers (the API) use [`read`]; nothing else here is needed to query.

pub mod error;
pub mod read;

pub use error::{ProjectionError, ProjectionResult};
