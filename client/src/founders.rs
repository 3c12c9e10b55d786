//! The founders gate check of a caller's sign-up path, with ADR 0094's
//! fail-open rule.
//!
//! The caller (Raptor in ADR 0094) reads the customer count from Queue
//! (`GET /api/v1/internal/customers/count`, scope `internal`) and admits a
//! sign-up while the count is below its threshold (`FOUNDERS_COHORT_THRESHOLD`,
//! the caller's configuration). When Queue cannot be reached (connect error,
//! timeout, outage) or answers 5xx, the gate is treated as open: the sign-up
//! path stays available during a Queue outage, and the caller records
//! `founders.gate.check_failed` (distinct from `founders.gate.rejected`) so
//! fail-open volume is visible ([`FoundersGate::check_failed_audit`]).
//! The threshold is best effort: concurrent sign-ups at the boundary may
//! overshoot it slightly (ADR 0094 accepts fewer than 5 seats; Queue's own
//! gate, ADR 0204, is the exact one).
//!
//! A 4xx other than 429 (a revoked token, a missing `internal` scope) is not
//! an outage but a misconfiguration: it is an error, so that a broken
//! service token does not silently open the gate for good.

use std::time::Duration;

use serde::Deserialize;

use crate::error::ClientError;
use crate::service::{body, AuditWrite, Retry, RetryPolicy, ServiceClient};

/// What the sign-up path is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// Admit the sign-up. `degraded: false`: the count is below the
    /// threshold. `degraded: true`: the count could not be read (Queue
    /// unreachable, timed out, 5xx, or still 429 after the retries) and
    /// ADR 0094 says admit; record `founders.gate.check_failed`.
    Admit { degraded: bool },
    /// The cohort is full: `count` customers, `threshold` admitted.
    Refuse { count: u64, threshold: u64 },
}

impl GateDecision {
    pub fn admits(&self) -> bool {
        matches!(self, Self::Admit { .. })
    }

    /// Admitted only because the count could not be read.
    pub fn is_degraded(&self) -> bool {
        matches!(self, Self::Admit { degraded: true })
    }
}

/// The gate: a [`ServiceClient`] with the `internal` scope and the
/// caller's threshold.
///
/// Fail-open, runnable without Queue (nothing listens on the address):
///
/// ```
/// use std::time::Duration;
/// use queue_client::{FoundersGate, GateDecision, ServiceClient};
///
/// #[tokio::main]
/// async fn main() -> Result<(), queue_client::ClientError> {
///     let service = ServiceClient::new("http://127.0.0.1:9", "signup-service-token-1")?;
///     let gate = FoundersGate::new(service, 500).with_timeout(Duration::from_millis(500));
///     let decision = gate.check().await?;
///     assert_eq!(decision, GateDecision::Admit { degraded: true });
///     if decision.is_degraded() {
///         // Record it once Queue is back (ADR 0094's invariant).
///         let audit = gate.check_failed_audit("signup", "challenge:42");
///         assert_eq!(audit.action, "founders.gate.check_failed");
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct FoundersGate {
    service: ServiceClient,
    threshold: u64,
    retry: RetryPolicy,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Count {
    count: i64,
}

impl FoundersGate {
    /// Admits while fewer than `threshold` customers exist. The check is on
    /// a sign-up path, so it gives up quickly (then admits): 2 attempts,
    /// waits of at most 500 ms, 2 s per request; see [`Self::with_retry`] and
    /// [`Self::with_timeout`].
    pub fn new(service: ServiceClient, threshold: u64) -> Self {
        Self {
            service,
            threshold,
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(500),
            },
            timeout: Duration::from_secs(2),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Per request; a timeout counts as unreachable (admit, degraded).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Reads the count (an idempotent GET: retried on 503/429/unreachable
    /// within the gate's policy) and decides. `Err` only for a refusal that
    /// is not an outage (a 4xx other than 429).
    pub async fn check(&self) -> Result<GateDecision, ClientError> {
        let url = self.service.url("/api/v1/internal/customers/count");
        let sent = self
            .service
            .send("founders gate check", Retry::Yes(&self.retry), || {
                self.service.http().get(&url).timeout(self.timeout)
            })
            .await;
        let count = match sent {
            Ok((response, _)) => body::<Count>(response).await.map(|c| c.count),
            Err(e) => Err(e),
        };
        match count {
            Ok(count) => {
                let count = u64::try_from(count).unwrap_or(0);
                if count < self.threshold {
                    Ok(GateDecision::Admit { degraded: false })
                } else {
                    Ok(GateDecision::Refuse {
                        count,
                        threshold: self.threshold,
                    })
                }
            }
            Err(e) if fails_open(&e) => {
                tracing::warn!(error = %e, "founders gate: count unavailable, admitting (ADR 0094)");
                Ok(GateDecision::Admit { degraded: true })
            }
            Err(e) => Err(e),
        }
    }

    /// The audit event ADR 0094 asks for on the fail-open path
    /// (`founders.gate.check_failed`, `target` e.g. the sign-up's email
    /// hash or challenge id), to write with [`ServiceClient::write_audit`]
    /// once Queue answers again; its idempotency key is derived from
    /// `target`, so writing it again is harmless.
    pub fn check_failed_audit(&self, actor: &str, target: &str) -> AuditWrite {
        AuditWrite::new(actor, "founders.gate.check_failed", target)
            .with_idempotency_key(format!("founders-gate-check-failed:{target}"))
    }
}

/// Unreachable, timed out, a bad body, 5xx, or still 503/429 after the
/// retries: an outage, so the gate is open.
fn fails_open(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) | ClientError::GaveUp { .. } => true,
        ClientError::Api { status, .. } => *status >= 500 || *status == 429,
        ClientError::Config(_) | ClientError::UnknownKey { .. } | ClientError::InvalidToken(_) => {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: String::new(),
            message: String::new(),
        }
    }

    #[test]
    fn outages_fail_open_and_misconfiguration_does_not() {
        assert!(fails_open(&ClientError::Transport("refused".into())));
        assert!(fails_open(&ClientError::GaveUp {
            attempts: 2,
            last: "503 unavailable".into()
        }));
        assert!(fails_open(&api(500)));
        assert!(fails_open(&api(502)));
        assert!(!fails_open(&api(401)));
        assert!(!fails_open(&api(403)));
        assert!(!fails_open(&api(404)));
    }
}
