//! Checkpoints as C2SP signed notes (tlog-checkpoint body, Ed25519 signature).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, Verifier};

use crate::chain::Hash;
use crate::keys::{CheckpointSigner, NoteVerifier};

/// A checkpoint body: origin, tree size, root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root_hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature by key {0} on the note")]
    NoSignature(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("checkpoint body is malformed: {0}")]
    BadBody(&'static str),
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.tree_size,
            B64.encode(self.root_hash)
        )
    }

    /// Signs the body: `<body>\n— <name> <base64(key id || signature)>\n`.
    pub fn sign(&self, signer: &CheckpointSigner) -> String {
        let body = self.body();
        let signature = signer.signing_key().sign(body.as_bytes());
        let mut blob = signer.key_id().to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", signer.name(), B64.encode(blob))
    }

    /// Verifies a signed note with one of the known keys and parses its checkpoint body.
    /// Signature lines of other keys are ignored, as the signed-note spec says.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before signatures"))?;
        let (body, signatures) = (&note[..=split], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline",
            ));
        }
        let mut found = false;
        for line in signatures.lines() {
            let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed(
                "signature line must start with an em dash",
            ))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line lacks a key name"))?;
            if name != verifier.name() {
                continue;
            }
            let blob = B64
                .decode(blob)
                .map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if blob.len() != 68 {
                return Err(NoteError::Malformed("Ed25519 signature must be 68 bytes"));
            }
            // The line names its key by id: any of the verifier's keys (the
            // current one or one replaced by a rotation) may have signed.
            let Some(key) =
                verifier.key_for(u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]))
            else {
                continue;
            };
            found = true;
            let signature =
                Signature::from_slice(&blob[4..]).map_err(|_| NoteError::BadSignature)?;
            key.verify(body.as_bytes(), &signature)
                .map_err(|_| NoteError::BadSignature)?;
        }
        if !found {
            return Err(NoteError::NoSignature(verifier.name().to_string()));
        }
        let checkpoint = Self::parse_body(body)?;
        if checkpoint.origin != verifier.name() {
            return Err(NoteError::BadBody("origin differs from the key name"));
        }
        Ok(checkpoint)
    }

    /// The id of the first key of `verifier` that has a signature line in
    /// `note` (after a rotation this may be a replaced key, not the current
    /// one). Only names the key: [`Checkpoint::open`] checks the signature.
    pub fn signed_by(note: &str, verifier: &NoteVerifier) -> Option<u32> {
        let (_, signatures) = note.rsplit_once("\n\n")?;
        signatures.lines().find_map(|line| {
            let (name, blob) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
            let blob = B64.decode(blob).ok()?;
            let id = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?);
            (name == verifier.name() && verifier.key_for(id).is_some()).then_some(id)
        })
    }

    fn parse_body(body: &str) -> Result<Self, NoteError> {
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .unwrap_or(body)
            .split('\n')
            .collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(NoteError::BadBody("v1 bodies have exactly three lines"));
        };
        let tree_size = size
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == *size)
            .ok_or(NoteError::BadBody("tree size is not a decimal number"))?;
        let root_hash: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadBody("root hash is not 32 bytes of base64"))?;
        Ok(Self {
            origin: (*origin).to_string(),
            tree_size,
            root_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_open() {
        let signer = CheckpointSigner::from_seed("queue.test/ledger", [9u8; 32]).unwrap();
        let cp = Checkpoint {
            origin: "queue.test/ledger".into(),
            tree_size: 5,
            root_hash: [3u8; 32],
        };
        let note = cp.sign(&signer);
        assert!(note.starts_with("queue.test/ledger\n5\n"));
        assert_eq!(Checkpoint::open(&note, &signer.verifier()).unwrap(), cp);

        let forged = note.replace("\n5\n", "\n6\n");
        assert_eq!(
            Checkpoint::open(&forged, &signer.verifier()),
            Err(NoteError::BadSignature)
        );
        let other = CheckpointSigner::from_seed("queue.test/ledger", [8u8; 32]).unwrap();
        assert!(matches!(
            Checkpoint::open(&note, &other.verifier()),
            Err(NoteError::NoSignature(_))
        ));
    }
}
