//! Test support shared by the workspace's integration tests and benches, so
//! each mechanism is written once: scratch databases ([`db`]), the API
//! router under test ([`app`]), software passkeys ([`passkey`] for ES256
//! through webauthn-authenticator-rs, [`soft`] for every COSE algorithm and
//! attestation format), polling with a deadline ([`poll`]), test key
//! material ([`keys`]), a TCP proxy a test can cut ([`proxy`]) and a real
//! SAML identity provider over HTTP ([`saml_idp`]).
//!
//! Dev-only: a dev-dependency of the crates' tests and a dependency of
//! `bench/`, never of a shipped crate. Like test code, it fails loudly
//! (unwrap/expect/panic) instead of returning errors: a broken fixture is a
//! failed test.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a broken fixture fails the test that uses it"
)]

pub mod app;
pub mod db;
pub mod keys;
pub mod passkey;
pub mod poll;
pub mod proxy;
pub mod saml_idp;
pub mod soft;
