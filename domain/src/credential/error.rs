/// Why a passkey command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("credential not found")]
    NotFound,
    #[error("credential already registered")]
    AlreadyRegistered,
    #[error("credential is revoked")]
    Revoked,
    /// The authenticator presented a counter not above the stored one while
    /// counters are in use: it may have been cloned.
    #[error("sign counter went from {stored} to {presented}: possible cloned authenticator")]
    CounterRegression { stored: u32, presented: u32 },
    #[error("invalid passkey data: {0}")]
    InvalidPasskey(&'static str),
    #[error("invalid transport: {0}")]
    InvalidTransport(String),
}
