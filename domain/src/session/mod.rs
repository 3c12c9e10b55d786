//! A login session: refresh-token rotation with reuse detection, idle and
//! absolute timeouts, revocation.

mod aggregate;
mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

pub use aggregate::{
    FactorChange, RefreshOutcome, Session, SessionRevocation, SessionState, SessionStatus,
    StepUpRefusal,
};
pub use command::{
    SessionCommand, DEFAULT_ABSOLUTE_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS,
    MAX_REFRESH_GRACE_SECS, SAML_REAUTH_SKEW_SECS, STEP_UP_MAX_AGE_SECS,
};
pub use error::SessionError;
pub use event::{AuthMethod, RevokeReason, SessionEvent};
