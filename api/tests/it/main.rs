#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! queue-api integration tests: the real router (oneshot and a TCP server),
//! a fresh PostgreSQL database per test, and a software passkey
//! (webauthn-authenticator-rs `SoftPasskey`, and `soft` for every COSE
//! algorithm and attestation format) doing real WebAuthn crypto.

mod algorithms;
mod codes;
mod consistency;
mod discovery;
mod errors;
mod helpers;
mod hostile;
mod integrity;
mod isolation;
mod key_reload;
mod mail;
mod operations;
mod outage;
mod pages;
mod passkeys;
mod ratelimit_redis;
mod saml_acs;
mod saml_http;
mod schema_conformance;
mod service;
mod sessions;
mod shedding;
use queue_testkit::soft;
mod stepup;
mod tenants;
