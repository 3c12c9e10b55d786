//! Priority load shedding (DESIGN "Resilience"): past 3/4 of
//! `QUEUE_MAX_IN_FLIGHT` concurrent `/api/*` requests, ordinary routes answer
//! 429 `overloaded`; past the limit, everything does. Authentication
//! (WebAuthn ceremonies, refresh, logout, backup-code redeem, email verify)
//! and audit writes are CRITICAL and shed last. Health, metrics and JWKS are
//! never shed.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

/// Whether a route is shed last.
pub fn is_critical(path: &str) -> bool {
    path.starts_with("/api/v1/auth/webauthn/")
        || path.starts_with("/api/v1/audit/")
        || matches!(
            path,
            "/api/v1/auth/session/refresh"
                | "/api/v1/auth/logout"
                | "/api/v1/auth/backup-codes/redeem"
                | "/api/v1/auth/email/verify"
        )
}

/// Shed a request that would make `in_flight` concurrent ones (itself included)?
pub fn should_shed(in_flight: usize, max: usize, critical: bool) -> bool {
    let ordinary_limit = max - max / 4;
    if critical {
        in_flight > max
    } else {
        in_flight > ordinary_limit
    }
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/") {
        return next.run(request).await;
    }
    let counter = &state.inner.in_flight.0;
    let slot = Slot(counter);
    let in_flight = counter.fetch_add(1, Ordering::SeqCst) + 1;
    if should_shed(in_flight, state.config().max_in_flight, is_critical(path)) {
        drop(slot);
        metrics::counter!("queue_shed_requests_total", "critical" => is_critical(path).to_string())
            .increment(1);
        return ApiError::Overloaded {
            retry_after_secs: 1,
        }
        .into_response();
    }
    let response = next.run(request).await;
    drop(slot);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_routes_are_shed_first() {
        assert!(!should_shed(75, 100, false));
        assert!(should_shed(76, 100, false));
        assert!(!should_shed(76, 100, true));
        assert!(!should_shed(100, 100, true));
        assert!(should_shed(101, 100, true));
        assert!(!should_shed(1, 1, false));
        assert!(should_shed(2, 1, true));
    }

    #[test]
    fn authentication_and_audit_are_critical() {
        assert!(is_critical("/api/v1/auth/webauthn/login/complete"));
        assert!(is_critical("/api/v1/auth/session/refresh"));
        assert!(is_critical("/api/v1/audit/events"));
        assert!(!is_critical("/api/v1/auth/sessions"));
        assert!(!is_critical("/api/v1/auth/me"));
    }
}
