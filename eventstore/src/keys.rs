//! MAC keys and the checkpoint signing key, in the forms outside tools use
//! (`QUEUE_MAC_KEYS=id=<hex>,…` and signed-note `PRIVATE+KEY+…`). Keys never
//! live in the database, and `Debug` never prints them.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{StoreError, StoreResult};
use crate::reloadable::Reloadable;

/// Minimum MAC key length in bytes.
pub const MIN_MAC_KEY_LEN: usize = 32;

/// MAC keys by id; the first is current, the rest verify older events.
#[derive(Clone)]
pub struct MacKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MacKeys")
            .field("ids", &ids)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl MacKeys {
    /// Parses `id1=<hex>,id2=<hex>`. Errors never contain key material.
    pub fn parse(spec: &str) -> StoreResult<Self> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, part) in spec.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let Some((id, hex_key)) = part.split_once('=') else {
                return Err(StoreError::Config(format!(
                    "MAC key #{} is not of the form id=<hex>",
                    index + 1
                )));
            };
            let id = id.trim();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(StoreError::Config(format!(
                    "MAC key #{} has an invalid id (use letters, digits, - _ .)",
                    index + 1
                )));
            }
            let key = hex::decode(hex_key.trim())
                .map_err(|_| StoreError::Config(format!("MAC key {id:?} is not valid hex")))?;
            if key.len() < MIN_MAC_KEY_LEN {
                return Err(StoreError::Config(format!(
                    "MAC key {id:?} is {} bytes; at least {MIN_MAC_KEY_LEN} are required",
                    key.len()
                )));
            }
            if keys.iter().any(|(existing, _)| existing == id) {
                return Err(StoreError::Config(format!(
                    "MAC key id {id:?} appears twice"
                )));
            }
            keys.push((id.to_string(), key));
        }
        if keys.is_empty() {
            return Err(StoreError::Config("no MAC key given".into()));
        }
        Ok(Self { keys })
    }

    /// A single key (tests, dev mode).
    pub fn single(id: &str, key: Vec<u8>) -> StoreResult<Self> {
        Self::parse(&format!("{id}={}", hex::encode(key)))
    }

    pub fn current_id(&self) -> &str {
        self.keys.first().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    pub fn current_key(&self) -> &[u8] {
        self.keys.first().map(|(_, k)| k.as_slice()).unwrap_or(&[])
    }

    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, key)| key.as_slice())
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The `id=<hex>,…` form (for writing a dev key file).
    pub fn to_spec(&self) -> String {
        self.keys
            .iter()
            .map(|(id, key)| format!("{id}={}", hex::encode(key)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How `write_key_file` treats an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileWrite {
    /// Fail if the file exists (first generation: never clobber a key).
    CreateNew,
    /// Replace it atomically (rotation): write a sibling, sync, rename.
    Replace,
}

/// A new key id: `prefix`, the time to the millisecond (so ids sort by
/// age), and 32 random bits, so two keys made in the same instant (two
/// rotations, two instances) never share an id. Letters, digits and `-`:
/// valid for MAC, backup-code and JWT key ids alike.
pub fn new_key_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut random = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format!(
        "{prefix}{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f"),
        hex::encode(random)
    )
}

/// Writes one line of key material to a file readable by its owner only.
/// Errors name the path and the I/O error kind, never the contents.
pub fn write_key_file(
    path: &std::path::Path,
    contents: &str,
    how: KeyFileWrite,
) -> Result<(), String> {
    use std::io::Write;
    let fail = |p: &std::path::Path, e: std::io::Error| format!("{}: {}", p.display(), e.kind());
    let target = match how {
        KeyFileWrite::CreateNew => path.to_path_buf(),
        KeyFileWrite::Replace => path.with_extension("rotating"),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    match how {
        KeyFileWrite::CreateNew => options.create_new(true),
        KeyFileWrite::Replace => options.create(true).truncate(true),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&target).map_err(|e| fail(&target, e))?;
    writeln!(file, "{contents}").map_err(|e| fail(&target, e))?;
    file.sync_all().map_err(|e| fail(&target, e))?;
    if how == KeyFileWrite::Replace {
        std::fs::rename(&target, path).map_err(|e| fail(path, e))?;
    }
    Ok(())
}

/// The signed-note key id: first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key).
pub fn note_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0x0a, 0x01]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_key_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(|c| c.is_whitespace()) {
        return Err(StoreError::Config(
            "checkpoint key name must be non-empty, without '+' or white space".into(),
        ));
    }
    Ok(())
}

/// The Ed25519 checkpoint signer; its name is the log origin. It also
/// carries the public halves of the keys it replaced (rotation), so that
/// its verifier accepts checkpoints signed before a rotation.
#[derive(Clone)]
pub struct CheckpointSigner {
    name: String,
    key: SigningKey,
    /// Verify-only keys of earlier rotations, newest first.
    previous: Vec<VerifyingKey>,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id()))
            .field("previous", &self.previous.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Splits a key list: entries separated by newlines, white space or commas
/// (none of which occur inside a key).
fn key_entries(spec: &str) -> impl Iterator<Item = &str> {
    spec.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
}

impl CheckpointSigner {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> StoreResult<Self> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
            previous: Vec::new(),
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<8 hex id>+<base64(0x01 || seed)>`,
    /// optionally followed (one per line) by verifier keys of the same name:
    /// the keys earlier rotations replaced, kept to verify old checkpoints.
    pub fn parse(spec: &str) -> StoreResult<Self> {
        let bad = |why: &str| StoreError::Config(format!("checkpoint key: {why}"));
        let mut entries = key_entries(spec);
        let rest = entries
            .next()
            .unwrap_or("")
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("must start with PRIVATE+KEY+"))?;
        // Split from the left: names hold no '+', but base64 keys may.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected PRIVATE+KEY+<name>+<id>+<key>"));
        };
        let raw = B64.decode(key_b64).map_err(|_| bad("key is not base64"))?;
        let seed: [u8; 32] = match raw.split_first() {
            Some((1, seed)) => seed.try_into().map_err(|_| bad("key must be 32 bytes"))?,
            _ => return Err(bad("only Ed25519 (algorithm 1) keys are supported")),
        };
        let mut signer = Self::from_seed(name, seed)?;
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id is not hex"))?;
        if id_hex.len() != 8 || id != signer.key_id() {
            return Err(bad("key id does not match the key"));
        }
        for entry in entries {
            let previous = NoteVerifier::parse_one(entry)?;
            if previous.name != signer.name {
                return Err(bad(
                    "a previous key has another name (the log origin never changes)",
                ));
            }
            if signer.verifier().key_for(previous.key_id()).is_some() {
                return Err(bad("a previous key appears twice"));
            }
            signer.previous.push(previous.key);
        }
        Ok(signer)
    }

    pub fn generate(name: &str) -> StoreResult<Self> {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(name, seed)
    }

    /// A new random signing key of the same name; the current key becomes
    /// the newest verify-only key.
    pub fn rotated(&self) -> StoreResult<Self> {
        let mut fresh = Self::generate(&self.name)?;
        fresh.previous.push(self.key.verifying_key());
        fresh.previous.extend(self.previous.iter().copied());
        Ok(fresh)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        note_key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    /// The current key and every previous one.
    pub fn verifier(&self) -> NoteVerifier {
        let mut keys = vec![self.key.verifying_key()];
        keys.extend(self.previous.iter().copied());
        NoteVerifier {
            name: self.name.clone(),
            keys,
        }
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The private key in signed-note form (only for writing a key file).
    pub fn to_private_spec(&self) -> String {
        let mut raw = vec![1u8];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id(),
            B64.encode(raw)
        )
    }

    /// The key file: the private key, then one previous verifier key a line.
    pub fn to_file_spec(&self) -> String {
        let mut lines = vec![self.to_private_spec()];
        lines.extend(
            self.previous
                .iter()
                .map(|key| verifier_spec(&self.name, key)),
        );
        lines.join("\n")
    }
}

/// The checkpoint signer of a running process, swappable at run time
/// (`queue keys rotate --kind checkpoint`): a [`Reloadable`] signer that
/// refuses a key for another log.
#[derive(Clone, Debug)]
pub struct SharedCheckpointSigner {
    signer: Reloadable<CheckpointSigner>,
}

impl SharedCheckpointSigner {
    pub fn new(signer: CheckpointSigner) -> Self {
        Self {
            signer: Reloadable::new(signer),
        }
    }

    pub fn current(&self) -> Arc<CheckpointSigner> {
        self.signer.get()
    }

    /// Swaps in a freshly read signer. One of another name is refused: the
    /// name is the log origin, and a log never changes its origin.
    pub fn replace(&self, signer: CheckpointSigner) -> Result<(), String> {
        let origin = self.current();
        if signer.name() != origin.name() {
            return Err(format!(
                "the new key is for log {:?}, this ledger is {:?}",
                signer.name(),
                origin.name()
            ));
        }
        self.signer.replace(signer);
        Ok(())
    }

    /// Records that a reload failed; the current key stays in use.
    pub fn mark_degraded(&self) {
        self.signer.mark_degraded();
    }

    pub fn is_degraded(&self) -> bool {
        self.signer.is_degraded()
    }
}

fn verifier_spec(name: &str, key: &VerifyingKey) -> String {
    let mut raw = vec![1u8];
    raw.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{:08x}+{}",
        note_key_id(name, key.as_bytes()),
        B64.encode(raw)
    )
}

/// Signed-note verifier keys of one log: `<name>+<8 hex id>+<base64(0x01 ||
/// public key)>`, several separated by commas or new lines. The first is the
/// current key; the others verify checkpoints signed before a rotation. A
/// note names its key by id, so the right one is picked per note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    /// Never empty.
    keys: Vec<VerifyingKey>,
}

struct OneVerifier {
    name: String,
    key: VerifyingKey,
}

impl OneVerifier {
    fn key_id(&self) -> u32 {
        note_key_id(&self.name, self.key.as_bytes())
    }
}

impl NoteVerifier {
    pub fn parse(spec: &str) -> StoreResult<Self> {
        let mut verifier: Option<Self> = None;
        for entry in key_entries(spec) {
            let one = Self::parse_one(entry)?;
            match &mut verifier {
                None => {
                    verifier = Some(Self {
                        name: one.name,
                        keys: vec![one.key],
                    })
                }
                Some(verifier) => {
                    if verifier.name != one.name {
                        return Err(StoreError::Config(
                            "verifier key: all keys must be of one log (same name)".into(),
                        ));
                    }
                    if verifier.key_for(one.key_id()).is_some() {
                        return Err(StoreError::Config(
                            "verifier key: a key appears twice".into(),
                        ));
                    }
                    verifier.keys.push(one.key);
                }
            }
        }
        verifier
            .ok_or_else(|| StoreError::Config("verifier key: expected <name>+<id>+<key>".into()))
    }

    fn parse_one(spec: &str) -> StoreResult<OneVerifier> {
        let bad = |why: &str| StoreError::Config(format!("verifier key: {why}"));
        let mut parts = spec.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <name>+<id>+<key>"));
        };
        check_key_name(name)?;
        let raw = B64.decode(key_b64).map_err(|_| bad("key is not base64"))?;
        let public: [u8; 32] = match raw.split_first() {
            Some((1, key)) => key.try_into().map_err(|_| bad("key must be 32 bytes"))?,
            _ => return Err(bad("only Ed25519 (algorithm 1) keys are supported")),
        };
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not an Ed25519 point"))?;
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id is not hex"))?;
        if id_hex.len() != 8 || id != note_key_id(name, &public) {
            return Err(bad("key id does not match the key"));
        }
        Ok(OneVerifier {
            name: name.to_string(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current key's id.
    pub fn key_id(&self) -> u32 {
        self.keys
            .first()
            .map(|key| note_key_id(&self.name, key.as_bytes()))
            .unwrap_or(0)
    }

    /// Every key's id, the current one first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys
            .iter()
            .map(|key| note_key_id(&self.name, key.as_bytes()))
            .collect()
    }

    /// Each key in its own `<name>+<id>+<key>` form, the current one first.
    pub fn key_specs(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| verifier_spec(&self.name, key))
            .collect()
    }

    /// The key a signature line names by id, if it is one of these.
    pub(crate) fn key_for(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.keys
            .iter()
            .find(|key| note_key_id(&self.name, key.as_bytes()) == key_id)
    }
}

/// All keys, comma-separated (one key prints exactly as before rotation).
impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key_specs().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_keys_parse_and_reject() {
        let k = MacKeys::parse(&format!("a={},b={}", "11".repeat(32), "22".repeat(40))).unwrap();
        assert_eq!(k.current_id(), "a");
        assert_eq!(k.get("b").unwrap().len(), 40);
        let short = MacKeys::parse(&format!("a={}", "11".repeat(16))).unwrap_err();
        assert!(short.to_string().contains("at least 32"));
        assert!(!short.to_string().contains("1111"));
        assert!(MacKeys::parse("").is_err());
        assert!(MacKeys::parse("nokey").is_err());
        assert!(MacKeys::parse("a=zz").is_err());
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn a_rotated_checkpoint_key_keeps_its_predecessors_for_verification() {
        let first = CheckpointSigner::from_seed("queue.test/ledger", [7u8; 32]).unwrap();
        let second = first.rotated().unwrap();
        let third = second.rotated().unwrap();
        assert_ne!(third.key_id(), second.key_id());
        let file = third.to_file_spec();
        assert_eq!(file.lines().count(), 3);
        let again = CheckpointSigner::parse(&file).unwrap();
        assert_eq!(again.key_id(), third.key_id());
        let verifier = again.verifier();
        assert_eq!(
            verifier.key_ids(),
            vec![third.key_id(), second.key_id(), first.key_id()]
        );
        assert!(verifier.key_for(first.key_id()).is_some());
        // The printed form parses back to the same set.
        assert_eq!(
            NoteVerifier::parse(&verifier.to_string()).unwrap(),
            verifier
        );
        assert_eq!(
            NoteVerifier::parse(&verifier.key_specs().join("\n")).unwrap(),
            verifier
        );
        // A single key prints as it always did.
        assert_eq!(first.verifier().to_string().matches(',').count(), 0);
        // Keys of another log, or twice the same key, are refused.
        let other = CheckpointSigner::from_seed("other/log", [8u8; 32]).unwrap();
        let mixed = format!("{}\n{}", third.to_private_spec(), other.verifier());
        assert!(CheckpointSigner::parse(&mixed).is_err());
        let twice = format!("{},{}", first.verifier(), first.verifier());
        assert!(NoteVerifier::parse(&twice).is_err());
        // The shared signer refuses a key for another log.
        let shared = SharedCheckpointSigner::new(first.clone());
        assert!(shared.replace(other).is_err());
        shared.replace(second.clone()).unwrap();
        assert_eq!(shared.current().key_id(), second.key_id());
    }

    #[test]
    fn checkpoint_key_round_trips() {
        let signer = CheckpointSigner::from_seed("queue.test/ledger", [7u8; 32]).unwrap();
        let spec = signer.to_private_spec();
        let again = CheckpointSigner::parse(&spec).unwrap();
        assert_eq!(again.key_id(), signer.key_id());
        let verifier = NoteVerifier::parse(&signer.verifier().to_string()).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert!(CheckpointSigner::parse(&spec.replace("+KEY+", "+KEYS+")).is_err());
        let mut wrong_id = spec.clone();
        wrong_id.replace_range(30..31, if &spec[30..31] == "0" { "1" } else { "0" });
        assert!(CheckpointSigner::parse(&wrong_id).is_err());
    }
}
