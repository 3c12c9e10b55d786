#![forbid(unsafe_code)]
//! Queue's domain: the customer, credential, session and audit aggregates.
//!
//! Pure business rules: no IO, no clock, no randomness. Time, ids and secret
//! hashes arrive as command fields, so replaying the same events and commands
//! always gives the same result. Every aggregate's `Services` is `()`.

pub mod customer;
pub mod types;

#[cfg(test)]
mod test_support;

pub use customer::{Customer, CustomerCommand, CustomerError, CustomerEvent};
