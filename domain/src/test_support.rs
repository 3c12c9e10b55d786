//! Small builders shared by the tests.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::types::{Actor, Reason, SecretHash};

/// `secs` seconds after a fixed instant.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(secs)
}

/// The hash of a test secret.
pub fn h(secret: &str) -> SecretHash {
    SecretHash::of(secret.as_bytes())
}

pub fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

pub fn actor(name: &str) -> Actor {
    Actor::parse(name).unwrap()
}
