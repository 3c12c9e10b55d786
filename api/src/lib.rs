#![forbid(unsafe_code)]
//! Queue's HTTP surface: `app(state) -> Router`. Only this crate knows HTTP.

pub mod health;
pub mod state;

use axum::routing::get;
use axum::Router;

pub use state::AppState;

/// The whole router; tests drive it with `oneshot`, `queue serve` with a listener.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}
