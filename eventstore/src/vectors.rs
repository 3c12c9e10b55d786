//! Test vectors for docs/ledger-format.md, computed by the code itself.
//! `cargo run -p queue-eventstore --example ledger_vectors` prints them; a
//! test checks that the document contains every value.

use chrono::{TimeZone, Utc};
use serde_json::json;

use crate::chain::{self, EventRecord, Hash, ZERO_HASH};
use crate::checkpoint::Checkpoint;
use crate::error::StoreResult;
use crate::keys::CheckpointSigner;
use crate::merkle;

pub const MAC_KEY_ID: &str = "test-k1";
pub const ORIGIN: &str = "queue.example.com/ledger";

pub fn mac_key() -> Vec<u8> {
    (0u8..32).collect()
}

pub fn checkpoint_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = 0x20 + i as u8;
    }
    seed
}

/// One computed example event.
pub struct VectorEvent {
    pub canonical: String,
    pub prev_hash: String,
    pub hash: String,
    pub mac: String,
}

pub struct Vectors {
    pub mac_key_hex: String,
    pub checkpoint_private_key: String,
    pub checkpoint_verifier_key: String,
    pub events: Vec<VectorEvent>,
    pub leaf_hashes: Vec<String>,
    pub root_2: String,
    pub root_3: String,
    pub inclusion_proof_leaf_1_size_3: Vec<String>,
    pub consistency_proof_2_to_3: Vec<String>,
    pub checkpoint_note: String,
}

pub fn compute() -> StoreResult<Vectors> {
    let at = |micros: u32| {
        Utc.with_ymd_and_hms(2026, 11, 25, 16, 22, 14)
            .single()
            .map(|t| t + chrono::Duration::microseconds(i64::from(micros)))
            .unwrap_or_default()
    };
    let customer = "0193a8e2-7c1d-7f00-8000-000000000001";
    let session = "0193a8e2-7c1d-7f00-8000-0000000000a1";
    let inputs = [
        (
            "Customer",
            customer,
            1,
            "CustomerRegistered",
            "1.0",
            at(123_456),
            json!({"CustomerRegistered": {"email": "ada@example.com", "display_name": "Ada", "default_role": "antlers-user", "at": "2026-11-25T16:22:14.123456Z"}}),
        ),
        (
            "Customer",
            customer,
            2,
            "EmailVerified",
            "1.0",
            at(200_000),
            json!({"EmailVerified": {"at": "2026-11-25T16:22:14.200Z"}}),
        ),
        (
            "Session",
            session,
            1,
            "SessionCreated",
            "1.0",
            at(300_001),
            json!({"SessionCreated": {"customer_id": customer, "refresh_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "idle_timeout_secs": 1800, "note": "caf\u{e9} \u{1f600}"}}),
        ),
    ];
    let key = mac_key();
    let mut events = Vec::new();
    let mut hashes: Vec<Hash> = Vec::new();
    let mut customer_prev = ZERO_HASH;
    for (aggregate_type, aggregate_id, sequence, event_type, version, recorded_at, payload) in
        &inputs
    {
        let prev = if *aggregate_type == "Customer" {
            customer_prev
        } else {
            ZERO_HASH
        };
        let canonical = chain::canonical_record(&EventRecord {
            aggregate_type,
            aggregate_id,
            sequence: *sequence,
            event_type,
            event_version: version,
            recorded_at: *recorded_at,
            payload,
        })?;
        let hash = chain::event_hash(&prev, &canonical);
        if *aggregate_type == "Customer" {
            customer_prev = hash;
        }
        events.push(VectorEvent {
            canonical: String::from_utf8_lossy(&canonical).into_owned(),
            prev_hash: hex::encode(prev),
            hash: hex::encode(hash),
            mac: hex::encode(chain::event_mac(&key, &hash)),
        });
        hashes.push(hash);
    }
    let leaves: Vec<Hash> = hashes.iter().map(|h| merkle::leaf_hash(h)).collect();
    let signer = CheckpointSigner::from_seed(ORIGIN, checkpoint_seed())?;
    let root_3 = merkle::root_of(&leaves);
    let note = Checkpoint {
        origin: ORIGIN.to_string(),
        tree_size: 3,
        root_hash: root_3,
    }
    .sign(&signer);
    Ok(Vectors {
        mac_key_hex: hex::encode(&key),
        checkpoint_private_key: signer.to_private_spec(),
        checkpoint_verifier_key: signer.verifier().to_string(),
        events,
        leaf_hashes: leaves.iter().map(hex::encode).collect(),
        root_2: hex::encode(merkle::root_of(&leaves[..2])),
        root_3: hex::encode(root_3),
        inclusion_proof_leaf_1_size_3: merkle::inclusion_proof(1, &leaves)
            .iter()
            .map(hex::encode)
            .collect(),
        consistency_proof_2_to_3: merkle::consistency_proof(2, &leaves)
            .iter()
            .map(hex::encode)
            .collect(),
        checkpoint_note: note,
    })
}
