//! One reloadable value: the shape of every key set a running process can
//! swap (JWT keys, MAC keys, the checkpoint signer). Readers take the value
//! current at that moment without a lock (`arc-swap`: a read is a few atomic
//! operations, so the MAC verifier on every event load stays cheap) and keep
//! it for as long as they need it; a reload swaps in a new value at once.
//! `degraded` says the last reload failed and the value in use is the last
//! good one. Reloads are driven by the one loop in `rotation::run_reloader`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub struct Reloadable<T> {
    value: Arc<ArcSwap<T>>,
    degraded: Arc<AtomicBool>,
}

impl<T> Clone for Reloadable<T> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            degraded: Arc::clone(&self.degraded),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("value", &self.value.load())
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

impl<T> Reloadable<T> {
    pub fn new(value: T) -> Self {
        Self {
            value: Arc::new(ArcSwap::from_pointee(value)),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The current value (lock-free).
    pub fn get(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Runs `f` on the current value without taking a reference count of
    /// its own (the hot path: the MAC verifier of every load).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.value.load())
    }

    /// Swaps in a freshly read value; a good read ends a degraded spell.
    pub fn replace(&self, value: T) {
        self.value.store(Arc::new(value));
        self.degraded.store(false, Ordering::SeqCst);
    }

    /// Records that a reload failed; the current value stays in use.
    pub fn mark_degraded(&self) {
        self.degraded.store(true, Ordering::SeqCst);
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_its_value_across_a_reload_and_the_next_read_sees_the_new_one() {
        let shared = Reloadable::new(String::from("first"));
        let held = shared.get();
        let clone = shared.clone();
        clone.replace(String::from("second"));
        assert_eq!(*held, "first");
        assert_eq!(*shared.get(), "second");
        assert_eq!(shared.with(|v| v.len()), 6);
    }

    #[test]
    fn degraded_is_shared_and_cleared_by_a_good_reload() {
        let shared = Reloadable::new(1u32);
        let clone = shared.clone();
        clone.mark_degraded();
        assert!(shared.is_degraded());
        shared.replace(2);
        assert!(!clone.is_degraded());
        assert_eq!(*clone.get(), 2);
    }
}
