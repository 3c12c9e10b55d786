//! Key material for tests: fixed, so failures reproduce; never a real key.

use std::sync::Arc;

use queue_eventstore::{CheckpointSigner, MacKeys, SharedMacKeys};

/// The API and backfill tests' event MAC key (id `test`).
pub fn mac_keys() -> MacKeys {
    mac_keys_with("test", [7u8; 32])
}

/// [`mac_keys`], shared the way the service holds them.
pub fn shared_mac_keys() -> SharedMacKeys {
    SharedMacKeys::new(mac_keys())
}

/// A single MAC key with this id and bytes.
pub fn mac_keys_with(id: &str, key: [u8; 32]) -> MacKeys {
    MacKeys::single(id, key.to_vec()).unwrap()
}

/// A checkpoint signer for the origin `queue.test/ledger`.
pub fn checkpoint_signer() -> Arc<CheckpointSigner> {
    Arc::new(CheckpointSigner::from_seed("queue.test/ledger", [7u8; 32]).unwrap())
}
