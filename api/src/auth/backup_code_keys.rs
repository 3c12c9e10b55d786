//! Backup codes that cannot be cracked offline (ADR 0211): codes of 80
//! random bits, stored only as HMAC-SHA-256 under a pepper key kept outside
//! the database (`QUEUE_BACKUP_CODE_KEYS` / `_FILE`, `id=<hex>,…` like
//! `QUEUE_MAC_KEYS`: the first key is current, the others verify older
//! sets). The key id is recorded in `BackupCodesGenerated`; a set without
//! one holds legacy unkeyed SHA-256 hashes, which keep verifying until they
//! are redeemed or the set is regenerated.
//!
//! Self-contained on purpose: [`from_lookup`] is the one call `Config`
//! makes.

use hmac::{Hmac, Mac};
use queue_domain::customer::BackupCodeSet;
use queue_domain::types::{CustomerId, SecretHash};
use queue_eventstore::config::{value_or_file, ConfigError};
use queue_eventstore::MacKeys;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::tokens::{random_bytes, CODE_ALPHABET};

pub const VAR: &str = "QUEUE_BACKUP_CODE_KEYS";
pub const FILE_VAR: &str = "QUEUE_BACKUP_CODE_KEYS_FILE";

/// The id of the key made up in dev mode when none is configured.
const DEV_EPHEMERAL_ID: &str = "dev-ephemeral";

/// Domain separation of the keyed hash.
const LABEL: &[u8] = b"queue backup code v1";

/// `QUEUE_BACKUP_CODE_KEYS` (or the file `QUEUE_BACKUP_CODE_KEYS_FILE`
/// names). Required outside dev mode; in dev mode without either a random
/// key lives as long as the process (`queue serve --dev` always gives one
/// from its key directory, so codes survive restarts there).
pub fn from_lookup(
    get: &impl Fn(&str) -> Option<String>,
    dev: bool,
) -> Result<MacKeys, ConfigError> {
    match value_or_file(get, VAR, FILE_VAR) {
        Ok((spec, _)) => MacKeys::parse(&spec).map_err(|e| ConfigError::Invalid {
            var: VAR,
            why: e.to_string().replace("MAC key", "backup-code key"),
        }),
        Err(ConfigError::Missing(_)) if dev => {
            MacKeys::single(DEV_EPHEMERAL_ID, random_bytes::<32>().to_vec()).map_err(|e| {
                ConfigError::Invalid {
                    var: VAR,
                    why: e.to_string(),
                }
            })
        }
        Err(other) => Err(other),
    }
}

/// HMAC-SHA-256(key, label ‖ 0 ‖ customer id ‖ normalized code): bound to
/// the customer, so equal codes of two customers hash apart.
pub fn keyed_hash(key: &[u8], customer: CustomerId, normalized_code: &str) -> SecretHash {
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of every length")]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("an HMAC key");
    mac.update(LABEL);
    mac.update(&[0u8]);
    mac.update(customer.as_uuid().as_bytes());
    mac.update(normalized_code.as_bytes());
    SecretHash::from_bytes(mac.finalize().into_bytes().into())
}

/// The hashes of new codes under the current key, and that key's id.
pub fn hash_new_codes(
    keys: &MacKeys,
    customer: CustomerId,
    codes: &[String],
) -> (Vec<SecretHash>, String) {
    let key = keys.current_key();
    let hashes = codes
        .iter()
        .map(|code| keyed_hash(key, customer, &normalize(code)))
        .collect();
    (hashes, keys.current_id().to_owned())
}

/// Why a presented code matched nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// Wrong, used or voided code.
    Invalid,
    /// The set's key is no longer configured (it was removed after a
    /// rotation while codes keyed with it were still unused).
    UnknownKey(String),
}

/// The stored hash of the unused code of `set` that `code` is, compared in
/// constant time against every code of the set (no early exit).
pub fn matching_hash(
    keys: &MacKeys,
    customer: CustomerId,
    set: &BackupCodeSet,
    code: &str,
) -> Result<SecretHash, Unmatched> {
    let normalized = normalize(code);
    let presented = match &set.key_id {
        Some(id) => {
            let key = keys
                .get(id)
                .ok_or_else(|| Unmatched::UnknownKey(id.clone()))?;
            keyed_hash(key, customer, &normalized)
        }
        // Legacy: unkeyed SHA-256 (events before ADR 0211, backfilled codes).
        None => SecretHash::of(normalized.as_bytes()),
    };
    let mut found = subtle::Choice::from(0u8);
    for stored in &set.codes {
        let unused = subtle::Choice::from(u8::from(stored.redeemed_at.is_none()));
        found |= stored.hash.as_bytes().ct_eq(presented.as_bytes()) & unused;
    }
    if bool::from(found) {
        Ok(presented)
    } else {
        Err(Unmatched::Invalid)
    }
}

/// The form a code is hashed in: upper case, letters and digits only.
pub fn normalize(code: &str) -> String {
    crate::auth::tokens::normalize_backup_code(code)
}

/// Ten distinct codes `XXXX-XXXX-XXXX-XXXX` of Crockford base32 (no I, L,
/// O, U): 16 characters, 80 random bits each.
pub fn new_codes() -> Vec<String> {
    let mut codes: Vec<String> = Vec::with_capacity(10);
    while codes.len() < 10 {
        let bytes = random_bytes::<16>();
        let chars: Vec<char> = bytes
            .iter()
            .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
            .collect();
        let code = chars
            .chunks(4)
            .map(|group| group.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-");
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_carry_80_bits_in_four_groups_of_four() {
        let codes = new_codes();
        assert_eq!(codes.len(), 10);
        for code in &codes {
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 4, "{code}");
            assert!(groups.iter().all(|g| g.len() == 4));
            assert!(normalize(code).bytes().all(|b| CODE_ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn the_keyed_hash_is_not_sha256_and_depends_on_key_and_customer() {
        let customer: CustomerId = "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01".parse().unwrap();
        let other: CustomerId = "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c02".parse().unwrap();
        let code = "ABCD1234EFGH5678";
        let h = keyed_hash(&[1u8; 32], customer, code);
        assert_ne!(h, SecretHash::of(code.as_bytes()));
        assert_ne!(h, keyed_hash(&[2u8; 32], customer, code));
        assert_ne!(h, keyed_hash(&[1u8; 32], other, code));
    }

    #[test]
    fn missing_keys_are_an_error_outside_dev_mode_and_never_echoed() {
        let none = |_: &str| None;
        assert!(matches!(
            from_lookup(&none, false),
            Err(ConfigError::Missing(VAR))
        ));
        assert_eq!(
            from_lookup(&none, true).unwrap().current_id(),
            DEV_EPHEMERAL_ID
        );
        let short = |k: &str| (k == VAR).then(|| "k1=abcd".to_owned());
        let err = from_lookup(&short, false).unwrap_err().to_string();
        assert!(err.starts_with(VAR), "{err}");
        assert!(!err.contains("abcd"), "{err}");
    }
}
