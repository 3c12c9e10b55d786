#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Replay tests: generated histories through the real command path, then
//! live projection vs rebuild, crash recovery, extraction, poison events,
//! runner failover.

mod extract;
mod helpers;
mod live;
mod poison;
mod read;
mod rebuild;
mod runner;
