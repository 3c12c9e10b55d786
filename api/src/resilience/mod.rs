//! Staying up under load and faults: the store circuit breaker,
//! priority-aware load shedding (priorities are declared with the routes,
//! `v1_groups` in `lib.rs`), and rate limits (per process or shared
//! through Redis).

pub mod breaker;
pub mod ratelimit;
pub mod shedding;
