//! A tenant: an organisation whose customers, roles and SAML single sign-on
//! are kept apart from every other tenant's (issue 22).

mod aggregate;
mod command;
mod error;
mod event;
mod roles;
#[cfg(test)]
mod tests;

pub use aggregate::{Tenant, TenantState};
pub use command::{TenantCommand, MAX_GROUP_MAPPINGS};
pub use error::TenantError;
pub use event::{SamlConnection, TenantEvent};
pub use roles::{saml_actor, SamlRoleChanges};
