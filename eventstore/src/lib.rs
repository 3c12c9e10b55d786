#![forbid(unsafe_code)]
//! Queue's chained Postgres event store: the per-stream hash chain and MAC
//! (written synchronously with each event), the gap-free global ledger and
//! its signed checkpoints (sealed asynchronously), and verification.
//! The byte-exact format is docs/ledger-format.md.

pub mod chain;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod export;
pub mod feed;
pub mod fold_cache;
pub mod history;
pub mod integrity;
pub mod keys;
pub mod lookup;
pub mod merkle;
pub mod reloadable;
pub mod repository;
pub mod roles;
pub mod rotation;
pub mod sealer;
pub mod strict_json;
pub mod unit_of_work;
pub mod vectors;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{StoreError, StoreResult};
pub use integrity::{DamageKind, IntegrityError, IntegrityMonitor, IntegrityStatus};
pub use keys::{CheckpointSigner, MacKeys, NoteVerifier, SharedCheckpointSigner};
pub use reloadable::Reloadable;
pub use repository::{AppendedEvent, ChainedEventRepository, SharedMacKeys};
pub use sealer::{SealOutcome, Sealer, SealerConfig};
pub use unit_of_work::{Batch, ChainedRow, EventStore, Loaded};
pub use verify::{verify_store, Problem, ProblemKind, VerifyInput, VerifyProgress, VerifyReport};

/// The one ordered set of migrations for the whole schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
