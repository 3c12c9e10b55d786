#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Event store integration tests: real Postgres, a fresh database per test.

mod append;
mod concurrency;
mod export;
mod feed;
mod folds;
mod helpers;
mod history;
mod lookup;
mod roles;
mod rotation;
mod tamper;
mod vectors;
