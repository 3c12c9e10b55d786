use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateContext, EventStore};
use serde_json::json;

use super::*;
use crate::credential::{Credential, CredentialEvent};
use crate::test_support::t;
use crate::types::{CustomerId, RawCredentialId};

const STREAM: &str = "c5d6f1a2-0000-5000-8000-000000000001";

fn v1_payload(passkey: Value) -> Value {
    json!({"CredentialRegistered": {
        "customer_id": "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01",
        "raw_credential_id": "AQIDBA",
        "passkey": passkey,
        "name": "Phone",
        "aaguid": null,
        "backup_eligible": true,
        "sign_count": 3,
        "at": "2026-01-01T00:00:00Z"
    }})
}

fn serialized(event_type: &str, version: &str, payload: Value) -> SerializedEvent {
    SerializedEvent::new(
        STREAM.to_owned(),
        1,
        Credential::TYPE.to_owned(),
        event_type.to_owned(),
        version.to_owned(),
        payload,
        json!({}),
    )
}

/// The one decoder's upcast step.
fn upcast(event: SerializedEvent) -> SerializedEvent {
    EventDecoder::new().upcast(event)
}

fn expected_v2(backup_state: bool, transports: Vec<String>, passkey: Value) -> CredentialEvent {
    CredentialEvent::Registered {
        customer_id: "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01"
            .parse::<CustomerId>()
            .unwrap(),
        raw_credential_id: RawCredentialId::from_bytes(vec![1, 2, 3, 4]).unwrap(),
        passkey,
        name: Some("Phone".parse().unwrap()),
        aaguid: None,
        backup_eligible: true,
        backup_state,
        sign_count: 3,
        transports,
        at: t(0),
    }
}

#[test]
fn v1_credential_registered_gets_defaults_when_the_passkey_is_silent() {
    let passkey = json!({"cred": {"counter": 3}});
    let event = upcast(serialized(
        "CredentialRegistered",
        "1.0",
        v1_payload(passkey.clone()),
    ));
    // cqrs-es writes the upcast version in full semantic form.
    assert_eq!(event.event_version, "2.0.0");
    assert_eq!(upcast(event.clone()), event);
    let payload: CredentialEvent = serde_json::from_value(event.payload).unwrap();
    assert_eq!(payload, expected_v2(false, vec![], passkey));
}

#[test]
fn v1_credential_registered_takes_backup_state_and_transports_from_the_passkey() {
    let passkey = json!({"cred": {"backup_state": true, "transports": ["Internal", "hybrid"]}});
    let event = upcast(serialized(
        "CredentialRegistered",
        "1",
        v1_payload(passkey.clone()),
    ));
    let payload: CredentialEvent = serde_json::from_value(event.payload).unwrap();
    assert_eq!(
        payload,
        expected_v2(true, vec!["internal".into(), "hybrid".into()], passkey)
    );
}

#[test]
fn v1_payload_does_not_deserialise_without_the_upcaster() {
    let result = serde_json::from_value::<CredentialEvent>(v1_payload(json!({})));
    assert!(result.is_err());
}

#[test]
fn current_and_other_events_are_left_alone() {
    let current = serde_json::to_value(expected_v2(true, vec!["usb".into()], json!({}))).unwrap();
    let event = serialized("CredentialRegistered", "2.0", current.clone());
    assert_eq!(upcast(event.clone()), event);

    let used = serialized(
        "CredentialUsed",
        "1.0",
        json!({"CredentialUsed": {"sign_count": 1, "backup_state": false, "at": "2026-01-01T00:00:00Z"}}),
    );
    assert_eq!(upcast(used.clone()), used);
}

#[test]
fn the_decoder_gives_the_same_event_from_text_and_from_a_value() {
    let decoder = EventDecoder::new();
    let passkey = json!({"cred": {"backup_state": true, "transports": ["NFC"]}});
    let old = v1_payload(passkey.clone());
    let expected = expected_v2(true, vec!["nfc".into()], passkey);
    assert!(decoder.needs_upcast("CredentialRegistered", "1.0"));
    let from_text: CredentialEvent = decoder
        .decode_text("CredentialRegistered", "1.0", &old.to_string())
        .unwrap();
    let from_value: CredentialEvent = decoder
        .decode(serialized("CredentialRegistered", "1.0", old.clone()))
        .unwrap();
    assert_eq!(from_text, expected);
    assert_eq!(from_value, expected);

    // A current event is parsed as it is; a v1 payload claiming to be
    // current is refused rather than silently filled in.
    let current = serde_json::to_string(&expected).unwrap();
    assert!(!decoder.needs_upcast("CredentialRegistered", "2.0.0"));
    let parsed: CredentialEvent = decoder
        .decode_text("CredentialRegistered", "2.0.0", &current)
        .unwrap();
    assert_eq!(parsed, expected);
    assert!(decoder
        .decode_text::<CredentialEvent>("CredentialRegistered", "2.0.0", &old.to_string())
        .is_err());
}

/// A repository holding one v1 event, to show the upcaster runs on a real load.
struct OneOldEvent;

impl PersistedEventRepository for OneOldEvent {
    async fn get_events<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(vec![serialized(
            "CredentialRegistered",
            "1.0",
            v1_payload(json!({"cred": {"backup_state": true}})),
        )])
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        _last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.get_events::<A>(aggregate_id).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        _events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Err(PersistenceError::UnknownError(
            "this one-event test repository does not stream".into(),
        ))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(PersistenceError::UnknownError(
            "this one-event test repository does not stream".into(),
        ))
    }
}

#[tokio::test]
async fn the_event_store_applies_the_upcasters_on_load() {
    let store: PersistedEventStore<OneOldEvent, Credential> =
        PersistedEventStore::new_event_store(OneOldEvent).with_upcasters(upcasters());
    let mut context = store.load_aggregate(STREAM).await.unwrap();
    let state = context.aggregate().state().cloned().unwrap();
    assert!(state.backup_state);
    assert!(state.transports.is_empty());
    assert_eq!(state.sign_count, 3);

    let without: PersistedEventStore<OneOldEvent, Credential> =
        PersistedEventStore::new_event_store(OneOldEvent);
    assert!(without.load_aggregate(STREAM).await.is_err());
}
