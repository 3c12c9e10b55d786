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

use std::future::Future;

use crate::http::error::ApiError;

/// How many times in all [`again_on_conflict`] runs a decision.
pub const ATTEMPTS: usize = 3;

/// Runs `attempt` again, up to [`ATTEMPTS`] times in all, while it answers
/// 409 `Conflict`: its append lost an optimistic-concurrency race on a
/// stream (a session refreshed meanwhile, two logins of one customer).
/// Each attempt reads what it decides on afresh and keeps nothing of a
/// lost one, so it is decided again on the winner's events; the last
/// answer is returned as it is.
pub async fn again_on_conflict<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut outcome = attempt().await;
    for _ in 1..ATTEMPTS {
        if !matches!(outcome, Err(ApiError::Conflict)) {
            break;
        }
        outcome = attempt().await;
    }
    outcome
}
