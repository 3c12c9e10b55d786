//! The database circuit breaker (docs/design.md "Resilience", ADR 0202):
//! by default open after 5 consecutive store failures, or when the mean
//! latency of the last 20 store-backed requests exceeds 3 s; while open
//! every `/api/v1` request answers 503 `unavailable` with Retry-After
//! without touching the store; after 30 s one probe request is let through
//! (half-open) and its outcome closes or re-opens the breaker. Every
//! threshold is a `QUEUE_BREAKER_*` setting (`BreakerConfig::from_lookup`).
//! JWKS, health and metrics bypass it (it is layered on the `/api/v1`
//! routes only).
//!
//! It times the store's share of a request only (issue 17): the guard sits
//! inside `timeouts::read_body`, so the clock starts once the client's body
//! is in memory and a client that uploads slowly cannot make the store look
//! slow. The half-open probe has its own deadline
//! (`QUEUE_BREAKER_PROBE_TIMEOUT_MS`, 5 s): a probe that does not answer in
//! time counts as a failure and re-opens the breaker, so one slow request
//! cannot hold it half-open.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::http::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub latency_window: usize,
    pub max_mean_latency: Duration,
    pub open_for: Duration,
    /// The half-open probe's deadline.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            latency_window: 20,
            max_mean_latency: Duration::from_secs(3),
            open_for: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: DateTime<Utc>,
    },
    /// One probe is in flight; everything else is refused.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    latencies: VecDeque<Duration>,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Whether a request may go to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The half-open probe: its outcome decides.
    Probe,
    Refused {
        retry_after_secs: u64,
    },
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                latencies: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn is_closed(&self) -> bool {
        self.state() == BreakerState::Closed
    }

    pub fn admit(&self, now: DateTime<Utc>) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { until } if now >= until => {
                inner.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::Open { until } => Admission::Refused {
                retry_after_secs: (until - now).num_seconds().max(1) as u64,
            },
            BreakerState::HalfOpen => Admission::Refused {
                retry_after_secs: 1,
            },
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, now: DateTime<Utc>, store_failed: bool, latency: Duration) {
        let mut inner = self.lock();
        let open = BreakerState::Open {
            until: now + chrono::Duration::from_std(self.config.open_for).unwrap_or_default(),
        };
        if store_failed {
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            if inner.state == BreakerState::HalfOpen
                || inner.consecutive_failures >= self.config.failure_threshold
            {
                if inner.state != open {
                    tracing::warn!(
                        failures = inner.consecutive_failures,
                        "circuit breaker open: the store is failing"
                    );
                }
                inner.state = open;
            }
            return;
        }
        inner.consecutive_failures = 0;
        if inner.state == BreakerState::HalfOpen {
            tracing::info!("circuit breaker closed: the store answers again");
            inner.state = BreakerState::Closed;
            inner.latencies.clear();
        }
        inner.latencies.push_back(latency);
        while inner.latencies.len() > self.config.latency_window {
            inner.latencies.pop_front();
        }
        if inner.latencies.len() == self.config.latency_window {
            let total: Duration = inner.latencies.iter().sum();
            let mean = total / self.config.latency_window as u32;
            if mean > self.config.max_mean_latency {
                tracing::warn!(?mean, "circuit breaker open: the store is too slow");
                inner.state = open;
                inner.latencies.clear();
            }
        }
    }
}

/// Middleware on every `/api/v1` route (`crate::v1_routes`): refuses while
/// open, records each outcome.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let breaker = &state.inner.breaker;
    let probe = match breaker.admit(state.now()) {
        Admission::Refused { retry_after_secs } => {
            return ApiError::Unavailable { retry_after_secs }.into_response();
        }
        Admission::Allowed => false,
        Admission::Probe => true,
    };
    let started = std::time::Instant::now();
    let response = if probe {
        let deadline = breaker.config.probe_timeout;
        match tokio::time::timeout(deadline, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(?deadline, "circuit breaker probe did not answer in time");
                breaker.record(state.now(), true, started.elapsed());
                return ApiError::unavailable().into_response();
            }
        }
    } else {
        next.run(request).await
    };
    let store_failed = response
        .extensions()
        .get::<ErrorBody>()
        .is_some_and(|body| body.code == "unavailable");
    breaker.record(state.now(), store_failed, started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(secs)
    }

    #[test]
    fn five_failures_open_then_a_probe_closes() {
        let breaker = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            breaker.record(t(0), true, Duration::ZERO);
        }
        assert!(breaker.is_closed());
        breaker.record(t(0), true, Duration::ZERO);
        assert_eq!(
            breaker.admit(t(10)),
            Admission::Refused {
                retry_after_secs: 20
            }
        );
        assert_eq!(breaker.admit(t(30)), Admission::Probe);
        assert!(matches!(breaker.admit(t(30)), Admission::Refused { .. }));
        breaker.record(t(31), false, Duration::from_millis(5));
        assert!(breaker.is_closed());
        assert_eq!(breaker.admit(t(31)), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            breaker.record(t(0), true, Duration::ZERO);
        }
        assert_eq!(breaker.admit(t(30)), Admission::Probe);
        breaker.record(t(30), true, Duration::ZERO);
        assert!(matches!(breaker.admit(t(31)), Admission::Refused { .. }));
        assert_eq!(breaker.admit(t(60)), Admission::Probe);
    }

    #[test]
    fn a_slow_store_opens_it() {
        let breaker = Breaker::new(BreakerConfig::default());
        for _ in 0..19 {
            breaker.record(t(0), false, Duration::from_secs(4));
        }
        assert!(breaker.is_closed());
        breaker.record(t(0), false, Duration::from_secs(4));
        assert!(!breaker.is_closed());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breaker = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            breaker.record(t(0), true, Duration::ZERO);
        }
        breaker.record(t(0), false, Duration::ZERO);
        for _ in 0..4 {
            breaker.record(t(0), true, Duration::ZERO);
        }
        assert!(breaker.is_closed());
    }
}
