//! A customer: profile, email verification, roles, backup codes and suspension.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{
    BackupCode, BackupCodeSet, Customer, CustomerState, CustomerStatus, GrantRevocation,
    PendingEmailVerification, RoleGrant, StatusChange,
};
pub use command::{CustomerCommand, BACKUP_CODE_COUNT, EMAIL_VERIFICATION_TTL_SECS};
pub use error::CustomerError;
pub use event::{CustomerEvent, ProvisioningSource};
