//! Upcasting: old stored event versions are rewritten to the current shape
//! on load, so the aggregates and projections only know the latest version.
//! The ledger keeps the original bytes; upcasting never touches storage.
//!
//! Register them with the event store:
//! `PersistedEventStore::new_event_store(repo).with_upcasters(queue_domain::upcasters())`.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::Value;

use crate::credential::CREDENTIAL_REGISTERED_VERSION;

/// Every upcaster of this crate, in the order they must run.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "CredentialRegistered",
        CREDENTIAL_REGISTERED_VERSION,
        Box::new(credential_registered_v1_to_v2),
    ))]
}

/// `CredentialRegistered` 1.0 had no `backup_state` or `transports`. The
/// registered passkey JSON usually knows both (webauthn-rs keeps them under
/// `cred`), so take them from there (transport names lowercased, as
/// registration stores them), else assume not backed up and no hints.
///
/// The stored payload is the externally tagged enum,
/// `{"CredentialRegistered": {...}}`.
fn credential_registered_v1_to_v2(mut payload: Value) -> Value {
    let Some(Value::Object(fields)) = payload.get_mut("CredentialRegistered") else {
        return payload;
    };
    let embedded = fields
        .get("passkey")
        .and_then(|passkey| passkey.get("cred"))
        .cloned()
        .unwrap_or(Value::Null);
    if !fields.contains_key("backup_state") {
        let backup_state = embedded
            .get("backup_state")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        fields.insert("backup_state".to_owned(), Value::Bool(backup_state));
    }
    if !fields.contains_key("transports") {
        let transports: Vec<Value> = embedded
            .get("transports")
            .and_then(Value::as_array)
            .map(|hints| {
                hints
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|hint| Value::String(hint.to_lowercase()))
                    .collect()
            })
            .unwrap_or_default();
        fields.insert("transports".to_owned(), Value::Array(transports));
    }
    payload
}

#[cfg(test)]
#[path = "upcast_tests.rs"]
mod tests;
