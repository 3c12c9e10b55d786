use super::{RevokeReason, StepUpRefusal};

/// Why a session command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session not found")]
    NotFound,
    #[error("session already exists")]
    AlreadyExists,
    #[error("invalid session timeouts: {0}")]
    InvalidTimeouts(&'static str),
    /// A refresh of a session that is already revoked (for any reason,
    /// including an earlier expiry or reuse detection).
    #[error("session is revoked ({reason})")]
    Revoked { reason: RevokeReason },
    #[error("session is already revoked ({reason})")]
    AlreadyRevoked { reason: RevokeReason },
    /// The presented token was never a refresh token of this session.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// The new hash was already used in this session (a caller bug).
    #[error("the new refresh token hash is not fresh")]
    RefreshHashNotFresh,
    /// The session is revoked or expired.
    #[error("session is not active")]
    NotActive,
    /// A factor change this session may not make now (ADR 0211).
    #[error("step-up refused: {0}")]
    StepUp(StepUpRefusal),
    /// A SAML reauthentication whose `AuthnInstant` is not from after the
    /// request: the IdP answered from its own session instead of
    /// authenticating anew (ForceAuthn ignored).
    #[error("the identity provider did not authenticate anew")]
    StaleAuthentication,
    #[error("refresh grace period of {grace_secs} s is over the maximum of 60 s")]
    InvalidGracePeriod { grace_secs: u32 },
}
