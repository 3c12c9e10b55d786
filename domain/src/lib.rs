#![forbid(unsafe_code)]
//! Queue's domain: the customer, credential, session, audit and tenant aggregates.
//!
//! Pure business rules: no IO, no clock, no randomness. Time, ids and secret
//! hashes arrive as command fields, so replaying the same events and commands
//! always gives the same result. Every aggregate's `Services` is `()`.
//!
//! Events are stored externally tagged under their event type name, e.g.
//! `{"CredentialUsed": {"sign_count": 4, "backup_state": true, "at": "..."}}`;
//! payloads hold no floats, no integers of 2^53 or more, and no secret in clear.

pub mod audit;
pub mod credential;
pub mod customer;
pub mod session;
pub mod tenant;
pub mod types;
pub mod upcast;

#[cfg(test)]
mod event_json_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;

pub use audit::{Audit, AuditCommand, AuditError, AuditEvent};
pub use credential::{Credential, CredentialCommand, CredentialError, CredentialEvent};
pub use customer::{Customer, CustomerCommand, CustomerError, CustomerEvent};
pub use session::{RefreshOutcome, Session, SessionCommand, SessionError, SessionEvent};
pub use tenant::{Tenant, TenantCommand, TenantError, TenantEvent};
pub use upcast::{upcasters, EventDecoder};
