#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! queue-api integration tests: the real router (oneshot and a TCP server),
//! a fresh PostgreSQL database per test, and a software passkey
//! (webauthn-authenticator-rs `SoftPasskey`) doing real WebAuthn crypto.

mod codes;
mod discovery;
mod errors;
mod helpers;
mod integrity;
mod key_reload;
mod mail;
mod operations;
mod outage;
mod passkeys;
mod ratelimit_redis;
mod schema_conformance;
mod service;
mod sessions;
mod shedding;
