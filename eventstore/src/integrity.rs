//! Fail-closed integrity checks at decision time: what is wrong with a
//! stored row, and the process-wide record of such findings that
//! `/readyz`, `/metrics` and the logs report.
//!
//! No decision is made on a row that has not been checked (link, hash,
//! MAC): the unit of work refuses to fold a damaged stream and the sealer
//! stops at the first damaged row instead of signing over it.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The kind of damage found on one stored event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// The stream's sequence does not continue (an event is missing).
    SequenceGap,
    /// `prev_hash` is not the previous event's hash.
    PrevHashMismatch,
    /// The stored hash does not match the event's fields.
    HashMismatch,
    /// The MAC does not verify under the key it names.
    MacInvalid,
    /// The MAC names a key this instance does not have.
    UnknownMacKey,
    /// The stored fields cannot be canonicalised (they were never written by Queue).
    InvalidPayload,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SequenceGap => "sequence_gap",
            Self::PrevHashMismatch => "prev_hash_mismatch",
            Self::HashMismatch => "hash_mismatch",
            Self::MacInvalid => "mac_invalid",
            Self::UnknownMacKey => "unknown_mac_key",
            Self::InvalidPayload => "invalid_payload",
        }
    }
}

impl DamageKind {
    /// What the kind means, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::SequenceGap => "the previous event of its stream is missing",
            Self::PrevHashMismatch => "prev_hash does not match the previous event's hash",
            Self::HashMismatch => "the stored hash does not match the event's fields",
            Self::MacInvalid => "the MAC does not verify under the key it names",
            Self::UnknownMacKey => "the MAC key id is not among the configured keys",
            Self::InvalidPayload => "the stored fields cannot be canonicalised",
        }
    }
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One damaged event: where it is and what is wrong. Never carries payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("integrity: {aggregate_type} {aggregate_id} event {sequence}: {kind}")]
pub struct IntegrityError {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub kind: DamageKind,
}

/// Who found the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finder {
    /// A stream load for a decision (the request fails closed).
    Load,
    /// The sealer (sealing stops before the row).
    Sealer,
}

#[derive(Debug, Default)]
struct Findings {
    last_load: Option<IntegrityError>,
    sealer_halted_at: Option<IntegrityError>,
}

/// The integrity findings of this process, shared by the store, the sealer
/// and the health endpoint. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct IntegrityMonitor {
    findings: Arc<Mutex<Findings>>,
}

/// What `/readyz` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IntegrityStatus {
    /// The last damaged stream a load refused to fold, if any.
    pub last_refused: Option<IntegrityError>,
    /// The row the sealer stopped before, if it is stopped.
    pub sealer_halted_at: Option<IntegrityError>,
}

impl IntegrityStatus {
    pub fn is_intact(&self) -> bool {
        self.last_refused.is_none() && self.sealer_halted_at.is_none()
    }
}

impl IntegrityMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a finding: an error log naming stream, sequence and kind
    /// (never payload), and `queue_integrity_failures_total{kind,finder}`.
    /// The sealer re-finds the same row on every poll while it is stopped;
    /// that is logged and counted once.
    pub fn record(&self, finder: Finder, err: &IntegrityError) {
        let mut findings = match self.findings.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let finder_name = match finder {
            Finder::Load => {
                findings.last_load = Some(err.clone());
                "load"
            }
            Finder::Sealer => {
                if findings.sealer_halted_at.as_ref() == Some(err) {
                    return;
                }
                findings.sealer_halted_at = Some(err.clone());
                "sealer"
            }
        };
        drop(findings);
        tracing::error!(
            aggregate_type = %err.aggregate_type,
            aggregate_id = %err.aggregate_id,
            sequence = err.sequence,
            kind = err.kind.as_str(),
            finder = finder_name,
            "integrity failure: a stored event does not verify; it is not used"
        );
        metrics::counter!(
            "queue_integrity_failures_total",
            "kind" => err.kind.as_str(),
            "finder" => finder_name
        )
        .increment(1);
    }

    /// The sealer sealed past the row it had stopped at (the damage is gone).
    pub fn sealer_resumed(&self) {
        if let Ok(mut findings) = self.findings.lock() {
            findings.sealer_halted_at = None;
        }
    }

    pub fn status(&self) -> IntegrityStatus {
        let findings = match self.findings.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        IntegrityStatus {
            last_refused: findings.last_load.clone(),
            sealer_halted_at: findings.sealer_halted_at.clone(),
        }
    }
}
