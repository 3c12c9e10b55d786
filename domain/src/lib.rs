#![forbid(unsafe_code)]
//! Queue's domain: the customer, credential, session and audit aggregates.
//!
//! Pure business rules: no IO, no clock, no randomness. Time, ids and secret
//! hashes arrive as command fields, so replaying the same events and commands
//! always gives the same result.

pub mod types;
