//! The assertion-id replay cache, in memory. The API keeps the same in
//! PostgreSQL (`INSERT .. ON CONFLICT DO NOTHING`, no row inserted →
//! [`SamlError::AssertionReplayed`]); this one serves one process and the tests.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{SamlError, SamlLogin};

#[derive(Clone, Debug, Default)]
pub struct ReplayCache {
    seen: HashMap<String, DateTime<Utc>>,
}

impl ReplayCache {
    /// Records `login`'s assertion id until its `replay_cache_until`;
    /// refuses an id already recorded and not yet expired.
    pub fn record(&mut self, login: &SamlLogin, now: DateTime<Utc>) -> Result<(), SamlError> {
        self.seen.retain(|_, until| *until > now);
        if self.seen.contains_key(&login.assertion_id) {
            return Err(SamlError::AssertionReplayed);
        }
        self.seen
            .insert(login.assertion_id.clone(), login.replay_cache_until);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
