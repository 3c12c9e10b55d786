#![forbid(unsafe_code)]
//! The Phase 2 backfill: legacy ("Raptor") customers, passkeys, live sessions
//! and role grants become `*Imported` / `RoleGranted` events with
//! deterministic stream ids, so a re-run appends nothing; the read tables fill
//! from them through the ordinary projections. [`parity`] compares the legacy
//! rows marked `migrated_to_queue` with those read tables.

pub mod cose;
pub mod error;
pub mod legacy;
pub mod parity;
pub mod report;
pub mod run;

pub use error::{BackfillError, BackfillResult};
pub use parity::{parity, ParityReport};
pub use report::{Rejection, Report, TableReport};
pub use run::{backfill, Options, Progress};

/// The legacy schema as the Python service created it (tests and benchmarks
/// build legacy databases from it).
pub const LEGACY_SCHEMA: &str = include_str!("../legacy-schema.sql");
