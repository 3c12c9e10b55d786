//! The test harness lives in `queue-testkit` (shared with the other crates'
//! tests): an app on a fresh database, JSON requests through the router, and
//! a software authenticator that plays the browser's part. What is only the
//! API tests' is here.

pub use queue_testkit::app::*;
pub use queue_testkit::passkey::Passkey;
pub use queue_testkit::poll::eventually;
use serde_json::Value;

pub fn bearer(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// Gauges are process-wide and other tests' instances set them too, so poll.
pub async fn metrics_show(app: &TestApp, line: &str) {
    eventually(&format!("/metrics to show {line}"), || async {
        app.get("/metrics").await.text.contains(line).then_some(())
    })
    .await;
}
