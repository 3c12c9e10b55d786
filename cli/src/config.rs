//! Ledger configuration from the environment, read once. Errors name the
//! variable, never its value.

use queue_eventstore::{CheckpointSigner, MacKeys, NoteVerifier};

pub use queue_eventstore::config::ConfigError;

pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn database_url(get: Lookup) -> Result<String, ConfigError> {
    get("DATABASE_URL")
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing("DATABASE_URL"))
}

/// `queue serve`'s URL for the sealer (`QUEUE_SEALER_DATABASE_URL`) or the
/// projection runners (`QUEUE_PROJECTOR_DATABASE_URL`): that variable, else
/// `DATABASE_URL` (one URL for everything in a dev set-up; ADR 0212).
pub fn role_database_url(get: Lookup, var: &'static str) -> Result<String, ConfigError> {
    match get(var).filter(|v| !v.trim().is_empty()) {
        Some(url) => Ok(url),
        None => database_url(get),
    }
}

/// `QUEUE_MAC_KEYS=id=<hex>,…` (or `QUEUE_MAC_KEYS_FILE` naming a file holding it).
pub fn mac_keys(get: Lookup) -> Result<MacKeys, ConfigError> {
    let spec = value_or_file(get, "QUEUE_MAC_KEYS", "QUEUE_MAC_KEYS_FILE")?;
    MacKeys::parse(&spec).map_err(|e| ConfigError::Invalid {
        var: "QUEUE_MAC_KEYS",
        why: e.to_string(),
    })
}

/// `QUEUE_CHECKPOINT_KEY=PRIVATE+KEY+…` (or `QUEUE_CHECKPOINT_KEY_FILE`,
/// which after a rotation also lists the previous public keys, one a line).
pub fn checkpoint_signer(get: Lookup) -> Result<CheckpointSigner, ConfigError> {
    let spec = value_or_file(get, "QUEUE_CHECKPOINT_KEY", "QUEUE_CHECKPOINT_KEY_FILE")?;
    CheckpointSigner::parse(&spec).map_err(|e| ConfigError::Invalid {
        var: "QUEUE_CHECKPOINT_KEY",
        why: e.to_string(),
    })
}

/// The checkpoint verifier: given outright, or derived from the signer key.
pub fn checkpoint_verifier(get: Lookup, given: Option<&str>) -> Result<NoteVerifier, ConfigError> {
    match given {
        Some(spec) => NoteVerifier::parse(spec).map_err(|e| ConfigError::Invalid {
            var: "--checkpoint-key",
            why: e.to_string(),
        }),
        None => Ok(checkpoint_signer(get)?.verifier()),
    }
}

fn value_or_file(
    get: Lookup,
    var: &'static str,
    file_var: &'static str,
) -> Result<String, ConfigError> {
    queue_eventstore::config::value_or_file(get, var, file_var).map(|(value, _)| value)
}

pub const DEV_MAC_FILE: &str = "mac_keys";
pub const DEV_CHECKPOINT_FILE: &str = "checkpoint.key";
pub const DEV_JWT_FILE: &str = "jwt_keys";
/// The backup-code pepper keys (`QUEUE_BACKUP_CODE_KEYS_FILE`, ADR 0211).
pub const DEV_BACKUP_CODE_FILE: &str = "backup_code_keys";

/// The type of new JWT keys: `given` (`--alg`), else `QUEUE_JWT_ALG`, else EdDSA.
pub fn jwt_alg(
    get: Lookup,
    given: Option<queue_api::auth::jwt::JwtAlg>,
) -> Result<queue_api::auth::jwt::JwtAlg, ConfigError> {
    if let Some(alg) = given {
        return Ok(alg);
    }
    queue_api::config::jwt_alg(&|k: &str| get(k)).map_err(|_| ConfigError::Invalid {
        var: "QUEUE_JWT_ALG",
        why: "expected EdDSA, ES256 or RS256".into(),
    })
}
