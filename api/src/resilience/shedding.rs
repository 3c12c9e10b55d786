//! Priority load shedding (docs/design.md "Resilience", issue 10): every `/api/v1`
//! route has a priority, declared with the route (`v1_groups` in `lib.rs`),
//! and each priority has an in-flight level past which
//! it answers 429 `overloaded` with `Retry-After: 1`, lowest first:
//!
//! | priority | routes                                                   | shed past           |
//! |----------|----------------------------------------------------------|---------------------|
//! | LOW      | exports and history: audit log reads, customer history   | 1/4 of the limit, or more than `QUEUE_SHED_LOW_PAST_URGENT` CRITICAL/HIGH in flight |
//! | NORMAL   | everything else (reads, renames, backup-code generation) | 1/2 of the limit, or more than `QUEUE_SHED_NORMAL_PAST_URGENT` CRITICAL/HIGH in flight |
//! | HIGH     | registration, email verification, admin and RBAC writes  | 3/4 of the limit    |
//! | CRITICAL | login begin/complete, reauth, refresh, logout, backup-code redeem, audit writes, SAML login and ACS | the limit (`QUEUE_MAX_IN_FLIGHT`) |
//!
//! The second condition is priority-aware admission: LOW and NORMAL work is
//! not started while more urgent (CRITICAL or HIGH) work beyond a small level
//! is in flight, i.e. waiting for a connection or for the CPU, however little
//! else is running. Once admitted a request runs to the end; nothing is
//! preempted.
//!
//! The third, for LOW only, is adaptive: LOW work may have at most a limit of
//! requests in flight, and the limit follows what CRITICAL requests
//! experience (AIMD, as in TCP congestion control): every 100 ms window whose
//! mean CRITICAL latency (successful answers only) is above
//! `QUEUE_SHED_LOW_LATENCY_PCT` % (400) of the lowest window mean of the last
//! 30 s halves it; every other window adds one, up to LOW's level. It needs
//! no tuning to the machine — the baseline is CRITICAL's own recent best —
//! and it does not refuse LOW when nothing urgent suffers (a fixed count or
//! hold does either too much or too little: docs/decisions/1000).
//!
//! Health, metrics and JWKS are never shed. Counted as
//! `queue_shed_requests_total{priority,rule}` (rule: `limit`, `urgent`,
//! `latency`); the adaptive limit is the gauge `queue_shed_low_limit`. (A
//! busy DB pool is not a signal: measured with `queue-bench load`, every connection is busy much of the
//! time even at the sustainable rate, and shedding LOW on it refused most LOW
//! work without any overload; see docs/decisions/1000.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::state::AppState;

/// `/api/v1` requests in flight, per priority, and until when LOW and NORMAL
/// keep yielding after urgent work last went past their levels.
#[derive(Debug)]
pub struct InFlight {
    counts: [AtomicUsize; 4],
    since: Instant,
    /// Microseconds after `since`: LOW, NORMAL.
    yield_until: [AtomicU64; 2],
    /// The adaptive LOW limit (starts unbounded; the first window that closes
    /// clamps it to LOW's level).
    low_limit: std::sync::Mutex<LowLimit>,
}

impl Default for InFlight {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            counts: Default::default(),
            since: now,
            yield_until: Default::default(),
            low_limit: std::sync::Mutex::new(LowLimit::new(now, usize::MAX)),
        }
    }
}

impl InFlight {
    fn counter(&self, priority: Priority) -> &AtomicUsize {
        &self.counts[priority as usize]
    }

    /// Requests of `priority` in flight now.
    pub fn of(&self, priority: Priority) -> usize {
        self.counter(priority).load(Ordering::SeqCst)
    }

    /// Requests of every priority in flight now.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// CRITICAL and HIGH requests in flight now.
    pub fn urgent(&self) -> usize {
        self.of(Priority::Critical) + self.of(Priority::High)
    }

    /// Moves the adaptive LOW limit on to `now` — with a CRITICAL answer
    /// that took `answered`, or just the time passed — and returns it,
    /// published as `queue_shed_low_limit`. (A poisoned lock still holds a
    /// usable limit.)
    fn adapt_low_limit(
        &self,
        now: Instant,
        answered: Option<Duration>,
        level: usize,
        pct: u32,
    ) -> usize {
        let limit = {
            let mut low = self
                .low_limit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match answered {
                Some(latency) => low.record(now, latency, level, pct),
                None => low.tick(now, level, pct),
            }
            low.limit()
        };
        metrics::gauge!("queue_shed_low_limit").set(limit as f64);
        limit
    }

    fn now_micros(&self) -> u64 {
        self.since.elapsed().as_micros() as u64
    }

    /// With `urgent` CRITICAL/HIGH requests in flight now: does a request of
    /// `priority` yield? Past a level, that priority keeps yielding for
    /// `levels.hold` (the overload is not over because one gap opened).
    fn must_yield(&self, urgent: usize, levels: UrgentLevels, priority: Priority) -> bool {
        let now = self.now_micros();
        let hold = levels.hold.as_micros() as u64;
        for (slot, yielding) in [Priority::Low, Priority::Normal].into_iter().enumerate() {
            if yields_to_urgent(urgent, levels, yielding) {
                self.yield_until[slot].fetch_max(now.saturating_add(hold), Ordering::SeqCst);
            }
        }
        let slot = match priority {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High | Priority::Critical => return false,
        };
        yields_to_urgent(urgent, levels, priority)
            || now < self.yield_until[slot].load(Ordering::SeqCst)
    }
}

/// The order in which routes are shed: LOW first, CRITICAL last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low = 0,
    Normal = 1,
    High = 2,
    Critical = 3,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// In-flight requests (this one included) this priority tolerates.
    pub fn level(self, max: usize) -> usize {
        let level = match self {
            Self::Low => max / 4,
            Self::Normal => max / 2,
            Self::High => max - max / 4,
            Self::Critical => max,
        };
        level.max(1)
    }
}

/// Shed a request of `priority` that would make `in_flight` concurrent ones
/// (itself included)?
pub fn should_shed(in_flight: usize, max: usize, priority: Priority) -> bool {
    in_flight > priority.level(max)
}

/// How many CRITICAL/HIGH requests in flight LOW and NORMAL work yields to
/// (`QUEUE_SHED_LOW_PAST_URGENT`, `QUEUE_SHED_NORMAL_PAST_URGENT`), and for
/// how long it keeps yielding after that (`QUEUE_SHED_HOLD_MS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrgentLevels {
    pub low: usize,
    pub normal: usize,
    pub hold: Duration,
    /// The adaptive LOW limit halves after a window whose mean CRITICAL
    /// latency is above this percentage of its baseline
    /// (`QUEUE_SHED_LOW_LATENCY_PCT`; 0 = no adaptive limit).
    pub low_latency_pct: u32,
}

impl Default for UrgentLevels {
    fn default() -> Self {
        Self {
            low: 4,
            normal: 8,
            // Off: a burst (50 registrations at once) would otherwise make
            // reads answer 429 for the hold after it has passed.
            hold: Duration::ZERO,
            low_latency_pct: 400,
        }
    }
}

/// Shed a request of `priority` because `urgent` CRITICAL/HIGH requests are
/// in flight? Only LOW and NORMAL yield; a level of 0 yields to any.
pub fn yields_to_urgent(urgent: usize, levels: UrgentLevels, priority: Priority) -> bool {
    match priority {
        Priority::Low => urgent > levels.low,
        Priority::Normal => urgent > levels.normal,
        Priority::High | Priority::Critical => false,
    }
}

/// How long one adaptive window lasts.
const WINDOW: Duration = Duration::from_millis(100);
/// Fewer CRITICAL answers than this in a window say nothing about latency.
const MIN_WINDOW_SAMPLES: u32 = 5;
/// The baseline is the lowest window mean of this many last seconds.
const BASELINE_SECS: u64 = 30;

/// The adaptive LOW limit: how many LOW requests may be in flight, moved by
/// the latency CRITICAL requests see (see the module docs). Pure: every
/// call gets the time.
#[derive(Debug)]
pub struct LowLimit {
    /// The limit now; starts at LOW's level (no evidence of harm yet).
    limit: usize,
    window_start: Instant,
    sum: Duration,
    count: u32,
    /// (second since `epoch`, lowest window mean that second), oldest first.
    minima: std::collections::VecDeque<(u64, Duration)>,
    epoch: Instant,
}

impl LowLimit {
    pub fn new(now: Instant, level: usize) -> Self {
        Self {
            limit: level,
            window_start: now,
            sum: Duration::ZERO,
            count: 0,
            minima: std::collections::VecDeque::new(),
            epoch: now,
        }
    }

    /// LOW requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A CRITICAL request answered after `latency`.
    pub fn record(&mut self, now: Instant, latency: Duration, level: usize, pct: u32) {
        self.tick(now, level, pct);
        self.sum += latency;
        self.count += 1;
    }

    /// Closes the window if it has ended: halve the limit if CRITICAL got
    /// slow, else add one (also for windows without enough answers, so LOW
    /// is not starved once CRITICAL traffic stops).
    pub fn tick(&mut self, now: Instant, level: usize, pct: u32) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let second = now.saturating_duration_since(self.epoch).as_secs();
        while self
            .minima
            .front()
            .is_some_and(|(s, _)| second.saturating_sub(*s) >= BASELINE_SECS)
        {
            self.minima.pop_front();
        }
        self.limit = match self.window_mean() {
            Some(mean) => {
                let slow = self.baseline().is_some_and(|base| {
                    mean.as_secs_f64() * 100.0 > base.as_secs_f64() * f64::from(pct)
                });
                match self.minima.back_mut() {
                    Some((s, lowest)) if *s == second => *lowest = (*lowest).min(mean),
                    _ => self.minima.push_back((second, mean)),
                }
                if slow {
                    self.limit / 2
                } else {
                    self.limit.saturating_add(1)
                }
            }
            // Too few answers to judge: every window that passed counts
            // as a healthy one.
            None => {
                let windows = elapsed.as_millis() / WINDOW.as_millis();
                self.limit
                    .saturating_add(usize::try_from(windows).unwrap_or(usize::MAX))
            }
        }
        .min(level);
        self.window_start = now;
        self.sum = Duration::ZERO;
        self.count = 0;
    }

    fn window_mean(&self) -> Option<Duration> {
        (self.count >= MIN_WINDOW_SAMPLES).then(|| self.sum / self.count)
    }

    fn baseline(&self) -> Option<Duration> {
        self.minima.iter().map(|(_, mean)| *mean).min()
    }
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Middleware on every `/api/v1` route (`crate::v1_routes`): the route's
/// priority is the [`Priority`] its group declared as a request extension.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(&priority) = request.extensions().get::<Priority>() else {
        // A route outside the priority groups: a bug, caught by the test that
        // sends every operation through the app; never silently NORMAL.
        tracing::error!(path = %request.uri().path(), "route has no declared shedding priority");
        return ApiError::internal("route has no declared shedding priority").into_response();
    };
    let in_flight = &state.inner.in_flight;
    let counter = in_flight.counter(priority);
    counter.fetch_add(1, Ordering::SeqCst);
    let slot = Slot(counter);
    let config = state.config();
    let levels = config.shed_past_urgent;
    let low_level = Priority::Low.level(config.max_in_flight);
    let rule = if should_shed(in_flight.total(), config.max_in_flight, priority) {
        Some("limit")
    } else if in_flight.must_yield(in_flight.urgent(), levels, priority) {
        Some("urgent")
    } else if priority == Priority::Low && levels.low_latency_pct > 0 {
        let limit =
            in_flight.adapt_low_limit(Instant::now(), None, low_level, levels.low_latency_pct);
        (in_flight.of(Priority::Low) > limit).then_some("latency")
    } else {
        None
    };
    if let Some(rule) = rule {
        drop(slot);
        metrics::counter!("queue_shed_requests_total", "priority" => priority.as_str(), "rule" => rule)
            .increment(1);
        return ApiError::Overloaded {
            retry_after_secs: 1,
        }
        .into_response();
    }
    let started = Instant::now();
    let response = next.run(request).await;
    drop(slot);
    // Only answers that did the work count: fast refusals (401, or 503
    // while the breaker is open) would drag the baseline down and make
    // normal latency look slow for the next 30 s.
    if priority == Priority::Critical
        && levels.low_latency_pct > 0
        && response.status().is_success()
    {
        in_flight.adapt_low_limit(
            Instant::now(),
            Some(started.elapsed()),
            low_level,
            levels.low_latency_pct,
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_priorities_are_shed_first() {
        let max = 100;
        for (priority, level) in [
            (Priority::Low, 25),
            (Priority::Normal, 50),
            (Priority::High, 75),
            (Priority::Critical, 100),
        ] {
            assert!(!should_shed(level, max, priority), "{priority:?}");
            assert!(should_shed(level + 1, max, priority), "{priority:?}");
        }
        // A limit of 1 still admits one request of any priority.
        assert!(!should_shed(1, 1, Priority::Low));
        assert!(should_shed(2, 1, Priority::Critical));
    }

    #[test]
    fn routes_have_the_issue_priorities() {
        let declared = crate::route_priorities();
        let of = |method: &str, path: &str| {
            declared
                .iter()
                .find(|(m, p, _)| m == method && p == path)
                .map(|(_, _, priority)| *priority)
        };
        for path in [
            "/api/v1/auth/webauthn/login/begin",
            "/api/v1/auth/webauthn/login/complete",
            "/api/v1/auth/session/refresh",
            "/api/v1/auth/logout",
            "/api/v1/auth/backup-codes/redeem",
            "/api/v1/audit/events",
        ] {
            assert_eq!(of("post", path), Some(Priority::Critical), "{path}");
        }
        assert_eq!(
            of("post", "/api/v1/auth/webauthn/register/complete"),
            Some(Priority::High)
        );
        assert_eq!(
            of("post", "/api/v1/auth/email/verify"),
            Some(Priority::High)
        );
        assert_eq!(
            of("post", "/api/v1/admin/customers/{customer_id}/suspend"),
            Some(Priority::High)
        );
        assert_eq!(
            of("delete", "/api/v1/rbac/grants/{grant_id}"),
            Some(Priority::High)
        );
        assert_eq!(of("get", "/api/v1/auth/me"), Some(Priority::Normal));
        assert_eq!(of("get", "/api/v1/auth/sessions"), Some(Priority::Normal));
        assert_eq!(
            of("get", "/api/v1/rbac/customers/{customer_id}/roles"),
            Some(Priority::Normal)
        );
        assert_eq!(of("get", "/api/v1/audit/events"), Some(Priority::Low));
        // SAML sign-in is a sign-in; the SP metadata a read.
        assert_eq!(
            of("get", "/saml/{tenant_slug}/login"),
            Some(Priority::Critical)
        );
        assert_eq!(
            of("post", "/saml/{tenant_slug}/acs"),
            Some(Priority::Critical)
        );
        assert_eq!(
            of("post", "/api/v1/auth/saml/reauth"),
            Some(Priority::Critical)
        );
        assert_eq!(
            of("get", "/saml/{tenant_slug}/metadata"),
            Some(Priority::Normal)
        );
        assert_eq!(
            of("get", "/api/v1/admin/customers/{customer_id}/history"),
            Some(Priority::Low)
        );
    }

    /// Every operation of the OpenAPI document but the operations routes
    /// (health, JWKS, discovery, metrics) has exactly one declared
    /// priority: `/api/v1`'s and the SAML routes.
    #[test]
    fn every_v1_and_saml_operation_has_one_declared_priority() {
        let declared = crate::route_priorities();
        let (_, others) = crate::operation_routes().split_for_parts();
        let others = crate::operations(&others);
        let operations: Vec<(String, String)> = crate::operations(&crate::openapi())
            .into_iter()
            .filter(|(_, path)| path != "/metrics")
            .filter(|operation| !others.contains(operation))
            .collect();
        let named: Vec<(String, String)> = declared
            .iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect();
        assert_eq!(named, operations);
    }

    #[test]
    fn low_and_normal_yield_to_urgent_work_past_their_levels() {
        let levels = UrgentLevels {
            low: 2,
            normal: 5,
            hold: Duration::ZERO,
            low_latency_pct: 0,
        };
        assert!(!yields_to_urgent(2, levels, Priority::Low));
        assert!(yields_to_urgent(3, levels, Priority::Low));
        assert!(!yields_to_urgent(5, levels, Priority::Normal));
        assert!(yields_to_urgent(6, levels, Priority::Normal));
        // HIGH and CRITICAL never yield; they answer only to the overall limit.
        for priority in [Priority::High, Priority::Critical] {
            assert!(!yields_to_urgent(usize::MAX, levels, priority));
        }
        // Level 0: any urgent request in flight makes LOW wait.
        let strict = UrgentLevels {
            low: 0,
            normal: 0,
            hold: Duration::ZERO,
            low_latency_pct: 0,
        };
        assert!(!yields_to_urgent(0, strict, Priority::Low));
        assert!(yields_to_urgent(1, strict, Priority::Low));
    }

    #[test]
    fn in_flight_counts_per_priority() {
        let in_flight = InFlight::default();
        for (priority, n) in [
            (Priority::Low, 1),
            (Priority::Normal, 2),
            (Priority::High, 3),
            (Priority::Critical, 4),
        ] {
            in_flight.counter(priority).fetch_add(n, Ordering::SeqCst);
        }
        assert_eq!(in_flight.of(Priority::Normal), 2);
        assert_eq!(in_flight.urgent(), 7);
        assert_eq!(in_flight.total(), 10);
        drop(Slot(in_flight.counter(Priority::Critical)));
        assert_eq!(in_flight.of(Priority::Critical), 3);
    }

    #[test]
    fn past_a_level_lower_priorities_keep_yielding_for_the_hold() {
        let in_flight = InFlight::default();
        let levels = UrgentLevels {
            low: 1,
            normal: 3,
            hold: Duration::from_secs(3600),
            low_latency_pct: 0,
        };
        assert!(!in_flight.must_yield(1, levels, Priority::Low));
        // Urgent work goes past LOW's level (not NORMAL's): LOW yields, and
        // keeps yielding once the urgent work is gone; NORMAL does not.
        assert!(in_flight.must_yield(2, levels, Priority::Low));
        assert!(in_flight.must_yield(0, levels, Priority::Low));
        assert!(!in_flight.must_yield(0, levels, Priority::Normal));
        // A CRITICAL arrival past NORMAL's level starts NORMAL's hold too.
        assert!(!in_flight.must_yield(4, levels, Priority::Critical));
        assert!(in_flight.must_yield(0, levels, Priority::Normal));
        assert!(!in_flight.must_yield(0, levels, Priority::High));

        // No hold: only the count now matters.
        let now_only = UrgentLevels {
            hold: Duration::ZERO,
            ..levels
        };
        let fresh = InFlight::default();
        assert!(fresh.must_yield(2, now_only, Priority::Low));
        assert!(!fresh.must_yield(1, now_only, Priority::Low));
    }

    /// Feeds one window of `n` CRITICAL answers of `ms` each, then closes it.
    fn window(low: &mut LowLimit, at: &mut Instant, n: u32, ms: u64, level: usize) {
        for _ in 0..n {
            low.record(*at, Duration::from_millis(ms), level, 200);
        }
        *at += WINDOW;
        low.tick(*at, level, 200);
    }

    #[test]
    fn the_low_limit_halves_when_critical_gets_slow_and_grows_back_by_one() {
        let mut at = Instant::now();
        let mut low = LowLimit::new(at, usize::MAX);
        // Steady 4 ms answers: the baseline; the limit settles at the level.
        for _ in 0..3 {
            window(&mut low, &mut at, 20, 4, 16);
        }
        assert_eq!(low.limit(), 16);
        // Twice as slow is still within 200 %; slower than that halves.
        window(&mut low, &mut at, 20, 8, 16);
        assert_eq!(low.limit(), 16);
        window(&mut low, &mut at, 20, 9, 16);
        assert_eq!(low.limit(), 8);
        for expected in [4, 2, 1, 0, 0] {
            window(&mut low, &mut at, 20, 30, 16);
            assert_eq!(low.limit(), expected);
        }
        // Healthy again: one more per window.
        for expected in [1, 2, 3] {
            window(&mut low, &mut at, 20, 5, 16);
            assert_eq!(low.limit(), expected);
        }
    }

    #[test]
    fn without_critical_answers_the_low_limit_recovers() {
        let mut at = Instant::now();
        let mut low = LowLimit::new(at, usize::MAX);
        window(&mut low, &mut at, 20, 4, 16);
        for _ in 0..5 {
            window(&mut low, &mut at, 20, 40, 16);
        }
        assert_eq!(low.limit(), 0);
        // Too few answers to judge count as a healthy window, and time with
        // no answers at all as one healthy window per 100 ms.
        window(&mut low, &mut at, MIN_WINDOW_SAMPLES - 1, 400, 16);
        assert_eq!(low.limit(), 1);
        at += Duration::from_millis(500);
        low.tick(at, 16, 200);
        assert_eq!(low.limit(), 6);
    }

    #[test]
    fn the_baseline_is_the_best_window_of_the_last_30_seconds() {
        let mut at = Instant::now();
        let mut low = LowLimit::new(at, usize::MAX);
        window(&mut low, &mut at, 20, 2, 16);
        // 10 ms stays "slow" against the 2 ms window while it is remembered…
        window(&mut low, &mut at, 20, 10, 16);
        assert_eq!(low.limit(), 8);
        // …and becomes the normal once that window is older than 30 s.
        at += Duration::from_secs(BASELINE_SECS + 1);
        window(&mut low, &mut at, 20, 10, 16);
        window(&mut low, &mut at, 20, 10, 16);
        assert_eq!(low.limit(), 16);
    }
}
