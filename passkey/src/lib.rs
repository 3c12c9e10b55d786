#![forbid(unsafe_code)]
//! WebAuthn verification for every COSE algorithm Queue accepts: ES256,
//! EdDSA (Ed25519), ES384 and RS256 (ADR 0206).
//!
//! webauthn-rs-core 0.6 does every check it can: client data (type,
//! challenge, origin, `crossOrigin` at registration), authenticator data
//! (rpId hash, UP, UV, backup flags), attestation statements (`none`,
//! `packed` self and x5c) and the signatures of ES256, ES384 and RS256 keys.
//! It parses Ed25519 COSE keys but refuses to build a verifier for them
//! (`SshPublicKeyEDUnsupported`), and it raises that error only after all
//! of its other checks passed. [`register`] and [`authenticate`] call the
//! library first and, on exactly that error, verify the one remaining
//! Ed25519 signature with ed25519-dalek (strict verification) and finish
//! the steps the library would have run after it. The `crossOrigin` flag of
//! an assertion, which the library does not check, is checked here for
//! every algorithm.

pub mod ceremony;
pub mod cose;
pub mod error;

pub use ceremony::{authenticate, register, Assertion};
pub use cose::{accepted_algorithms, cose_key, parse_cose_key};
pub use error::PasskeyError;
