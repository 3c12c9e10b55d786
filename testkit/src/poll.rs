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
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(INTERVAL).await;
    }
}
