//! Work that spans several aggregates, limits or side tables, written once
//! and called by the handlers (which only parse, call a flow and shape the
//! answer): signing in with a passkey and reauthenticating (`login`),
//! registering a customer or a passkey (`register`) behind the founders gate
//! (`founders`), a SAML login at the ACS (`saml`), suspension (`suspend`),
//! ending a tenant's sessions (`tenant_sessions`), and Queue's own audit
//! events (`queue_audit`).

pub mod founders;
pub mod login;
pub mod queue_audit;
pub mod register;
pub mod saml;
pub mod suspend;
pub mod tenant_sessions;
