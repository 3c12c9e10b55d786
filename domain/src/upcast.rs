//! Upcasting: old stored event versions are rewritten to the current shape
//! on load, so the aggregates and projections only know the latest version.
//! The ledger keeps the original bytes; upcasting never touches storage.
//!
//! [`EventDecoder`] is the one path from a stored payload to a domain event
//! (upcast, then deserialise): the unit of work, history and the
//! projections all decode through it.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use serde::de::DeserializeOwned;
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

/// Decodes stored payloads into domain events, upcasting old versions first.
pub struct EventDecoder {
    upcasters: Vec<Box<dyn EventUpcaster>>,
}

impl Default for EventDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EventDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDecoder")
            .field("upcasters", &self.upcasters.len())
            .finish()
    }
}

impl EventDecoder {
    /// A decoder with every upcaster of this crate.
    pub fn new() -> Self {
        Self {
            upcasters: upcasters(),
        }
    }

    /// Whether an event of this type and version is rewritten on load.
    pub fn needs_upcast(&self, event_type: &str, event_version: &str) -> bool {
        self.upcasters
            .iter()
            .any(|u| u.can_upcast(event_type, event_version))
    }

    /// Applies every upcaster that applies to the event, in order.
    pub fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        let mut event = event;
        for upcaster in &self.upcasters {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                event = upcaster.upcast(event);
            }
        }
        event
    }

    /// Upcasts a stored event and deserialises its payload.
    pub fn decode<T: DeserializeOwned>(&self, event: SerializedEvent) -> serde_json::Result<T> {
        serde_json::from_value(self.upcast(event).payload)
    }

    /// The same from the payload's JSON text: parsed straight into `T`
    /// (no intermediate `Value`) when no upcaster applies.
    pub fn decode_text<T: DeserializeOwned>(
        &self,
        event_type: &str,
        event_version: &str,
        payload: &str,
    ) -> serde_json::Result<T> {
        if !self.needs_upcast(event_type, event_version) {
            return serde_json::from_str(payload);
        }
        // The upcasters read only the type, the version and the payload.
        let event = SerializedEvent::new(
            String::new(),
            0,
            String::new(),
            event_type.to_owned(),
            event_version.to_owned(),
            serde_json::from_str(payload)?,
            Value::Null,
        );
        self.decode(event)
    }
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
