use crate::types::GrantId;

/// Why a customer command was refused. No variant carries a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("customer not found")]
    NotFound,
    #[error("customer already registered")]
    AlreadyRegistered,
    /// Self-service commands (email verification, backup codes) are refused
    /// while suspended; admin commands (grants, revokes) are not.
    #[error("customer is suspended")]
    Suspended,
    #[error("email is already verified")]
    AlreadyVerified,
    /// Unknown, already used or superseded token.
    #[error("invalid email verification token")]
    InvalidToken,
    #[error("email verification token has expired")]
    TokenExpired,
    #[error("expiry must be later than the command time")]
    ExpiryInPast,
    #[error("grant {0} already exists")]
    DuplicateGrant(GrantId),
    #[error("grant {0} does not exist")]
    UnknownGrant(GrantId),
    #[error("grant {0} is already revoked")]
    GrantAlreadyRevoked(GrantId),
    #[error("invalid backup code set: {0}")]
    InvalidBackupCodeSet(&'static str),
    /// Unknown, already redeemed or voided backup code.
    #[error("invalid backup code")]
    InvalidCode,
    #[error("customer is already suspended")]
    AlreadySuspended,
    #[error("customer is not suspended")]
    NotSuspended,
}
