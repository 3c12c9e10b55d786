//! The service clock: the system clock plus an offset that tests can move
//! forward (challenge expiry, session timeouts) without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use queue_eventstore::Clock;

#[derive(Clone, Debug, Default)]
pub struct ServiceClock {
    offset_secs: Arc<AtomicI64>,
}

impl ServiceClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
}

impl Clock for ServiceClock {
    fn now(&self) -> DateTime<Utc> {
        ServiceClock::now(self)
    }
}
