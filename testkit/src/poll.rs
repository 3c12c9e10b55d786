//! Waiting for something that happens in the background, with a deadline,
//! instead of sleeping for a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a probe is retried.
const INTERVAL: Duration = Duration::from_millis(20);

/// Polls until `probe` returns `Some`, failing after five seconds.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    probe: impl FnMut() -> F,
) -> T {
    eventually_within(what, Duration::from_secs(5), probe).await
}

/// Polls until `probe` returns `Some`, failing after `timeout`.
pub async fn eventually_within<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> F,
) -> T {
    match poll_until(timeout, probe).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// Polls until `probe` returns `Some`; `None` once `timeout` has passed
/// (for a caller that cleans up, or says more, before it fails).
pub async fn poll_until<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
