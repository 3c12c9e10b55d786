//! Verified folds kept in memory, so that loading a long stream reads only
//! the rows after the fold instead of the whole history (ADR 0215).
//!
//! An entry is what a load folded from rows it checked: the aggregate, the
//! stream version (sequence of the last folded event), the hash of that
//! event, and the MAC key set the rows were checked under. It never stands
//! in for verification of anything newer: the next load reads the row at
//! `version` (the anchor: its stored hash must still be `head`) and every
//! row after it, each checked with `chain::check_link` from `(version,
//! head)`. When in doubt the entry is dropped and the stream is folded from
//! its first event again: the anchor row is missing or differs (a restore,
//! a rewritten or truncated stream, a snapshot that does not see it), the
//! MAC key set was replaced since, or a row after it does not verify.
//!
//! Bounded: past `capacity` entries the least recently used quarter goes.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::chain::{Hash, MacVerifier};

/// Streams kept by default (per store, all aggregate types together).
pub const DEFAULT_CAPACITY: usize = 20_000;

struct Entry {
    version: usize,
    head: Hash,
    verifier: Arc<MacVerifier>,
    aggregate: Box<dyn Any + Send + Sync>,
    used: u64,
}

/// A cached fold, cloned out of the cache.
pub(crate) struct Fold<A> {
    pub version: usize,
    pub head: Hash,
    pub aggregate: A,
}

#[derive(Default)]
struct Entries {
    by_type: HashMap<&'static str, HashMap<String, Entry>>,
    len: usize,
    tick: u64,
}

pub(crate) struct FoldCache {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl FoldCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity,
        }
    }

    /// The cached fold of a stream, if there is one that was checked under
    /// this very key set.
    pub fn get<A: Clone + 'static>(
        &self,
        aggregate_type: &'static str,
        id: &str,
        verifier: &Arc<MacVerifier>,
    ) -> Option<Fold<A>> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        entries.tick += 1;
        let tick = entries.tick;
        let entry = entries.by_type.get_mut(aggregate_type)?.get_mut(id)?;
        if !Arc::ptr_eq(&entry.verifier, verifier) {
            return None;
        }
        let aggregate = entry.aggregate.downcast_ref::<A>()?.clone();
        entry.used = tick;
        Some(Fold {
            version: entry.version,
            head: entry.head,
            aggregate,
        })
    }

    /// Keeps a fold the caller has just checked (replacing an older one).
    pub fn put<A: Clone + Send + Sync + 'static>(
        &self,
        aggregate_type: &'static str,
        id: &str,
        fold: Fold<&A>,
        verifier: &Arc<MacVerifier>,
    ) {
        if self.capacity == 0 || fold.version == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len >= self.capacity {
            evict_oldest_quarter(&mut entries);
        }
        entries.tick += 1;
        let entry = Entry {
            version: fold.version,
            head: fold.head,
            verifier: Arc::clone(verifier),
            aggregate: Box::new(fold.aggregate.clone()),
            used: entries.tick,
        };
        let replaced = entries
            .by_type
            .entry(aggregate_type)
            .or_default()
            .insert(id.to_owned(), entry);
        if replaced.is_none() {
            entries.len += 1;
        }
    }

    /// Drops a stream's entry (in doubt, or found damaged).
    pub fn forget(&self, aggregate_type: &'static str, id: &str) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let removed = entries
            .by_type
            .get_mut(aggregate_type)
            .and_then(|streams| streams.remove(id));
        if removed.is_some() {
            entries.len -= 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len).unwrap_or(0)
    }
}

fn evict_oldest_quarter(entries: &mut Entries) {
    let mut ticks: Vec<u64> = entries
        .by_type
        .values()
        .flat_map(|streams| streams.values().map(|e| e.used))
        .collect();
    if ticks.is_empty() {
        return;
    }
    let cut = ticks.len() / 4;
    let (_, cutoff, _) = ticks.select_nth_unstable(cut);
    let cutoff = *cutoff;
    let mut len = 0;
    for streams in entries.by_type.values_mut() {
        streams.retain(|_, e| e.used > cutoff);
        len += streams.len();
    }
    entries.len = len;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MacKeys;

    fn verifier(byte: u8) -> Arc<MacVerifier> {
        Arc::new(MacVerifier::new(
            &MacKeys::single("k", vec![byte; 32]).unwrap(),
        ))
    }

    fn fold(version: usize, value: &String) -> Fold<&String> {
        Fold {
            version,
            head: [version as u8; 32],
            aggregate: value,
        }
    }

    #[test]
    fn an_entry_is_only_used_under_the_key_set_it_was_checked_with() {
        let cache = FoldCache::new(10);
        let keys = verifier(1);
        cache.put("T", "a", fold(3, &"state".to_owned()), &keys);
        let hit = cache.get::<String>("T", "a", &keys).unwrap();
        assert_eq!(
            (hit.version, hit.head, hit.aggregate.as_str()),
            (3, [3; 32], "state")
        );
        // Another type, another id, another aggregate type: no hit.
        assert!(cache.get::<String>("U", "a", &keys).is_none());
        assert!(cache.get::<String>("T", "b", &keys).is_none());
        assert!(cache.get::<u32>("T", "a", &keys).is_none());
        // The same keys reloaded (a new verifier) invalidate it.
        assert!(cache.get::<String>("T", "a", &verifier(1)).is_none());
        cache.forget("T", "a");
        assert!(cache.get::<String>("T", "a", &keys).is_none());
        assert_eq!(cache.len(), 0);
        // An empty stream is never cached; a disabled cache keeps nothing.
        cache.put("T", "z", fold(0, &String::new()), &keys);
        assert_eq!(cache.len(), 0);
        let off = FoldCache::new(0);
        off.put("T", "a", fold(1, &String::new()), &keys);
        assert!(off.get::<String>("T", "a", &keys).is_none());
    }

    #[test]
    fn the_least_recently_used_entries_are_evicted() {
        let cache = FoldCache::new(8);
        let keys = verifier(1);
        for i in 0..8 {
            cache.put("T", &i.to_string(), fold(1, &i.to_string()), &keys);
        }
        // Touch 0 and 1: they are the most recently used now.
        assert!(cache.get::<String>("T", "0", &keys).is_some());
        assert!(cache.get::<String>("T", "1", &keys).is_some());
        cache.put("T", "8", fold(1, &"8".to_owned()), &keys);
        assert!(cache.len() <= 8);
        assert!(cache.get::<String>("T", "0", &keys).is_some());
        assert!(cache.get::<String>("T", "1", &keys).is_some());
        assert!(cache.get::<String>("T", "8", &keys).is_some());
        assert!(cache.get::<String>("T", "2", &keys).is_none());
    }
}
