#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! queue-backfill integration tests: a legacy database built from
//! legacy-schema.sql next to a fresh Queue database, passkeys made by a real
//! software authenticator and stored as py-webauthn stores them, and the
//! real API router for logging in and refreshing afterwards.

mod bad_rows;
mod cose;
mod helpers;
mod import;
mod login;
/// The soft authenticator for every COSE algorithm.
use queue_testkit::soft;
