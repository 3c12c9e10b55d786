//! One passkey: registration, import, uses (sign counter), rename, revocation.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{Credential, CredentialRevocation, CredentialState};
pub use command::CredentialCommand;
pub use error::CredentialError;
pub use event::{CredentialEvent, CREDENTIAL_REGISTERED_VERSION};
