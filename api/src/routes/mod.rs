//! The `/api/v1` handlers, one file per route group: each parses the
//! request, calls a flow or the store, and shapes the answer.

pub mod admin;
pub mod audit;
pub mod backup_codes;
pub mod credentials;
pub mod email;
pub mod passkeys;
pub mod rbac;
pub mod reauth;
pub mod saml;
pub mod sessions;
pub mod tenants;
