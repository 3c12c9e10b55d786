//! Who is calling and what proves it: access tokens (JWT signing,
//! verification, key sets), refresh and one-time tokens, service tokens
//! with scopes, the single-use WebAuthn challenges, and the keyed
//! backup-code hashes.

pub mod backup_code_keys;
pub mod challenges;
pub mod jwt;
pub mod service;
pub mod tokens;
