//! One external audit event from another service, one stream per event.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{Audit, AuditRecord};
pub use command::AuditCommand;
pub use error::AuditError;
pub use event::AuditEvent;
