//! The ledger's JSON: strict parsing (duplicate keys refused) and the RFC 8785
//! canonical writer that every event hash is computed over.
//!
//! Properties, for any input:
//! - nothing panics;
//! - the strict parser accepts a subset of what serde_json accepts, and
//!   where both accept they agree on the value;
//! - the canonical writer refuses exactly what `check_payload` refuses;
//! - accepted output is valid JSON that parses back (strictly) to the same
//!   value, canonicalising it again gives the same bytes, and the bytes are
//!   serde_jcs's for the same value;
//! - the record writer (fixed keys written by hand) equals the generic
//!   serde_jcs reference on the same record;
//! - the streaming canonicaliser (`strict_json::canonicalise`, straight
//!   from the text) accepts exactly what the strict parser and the writer
//!   accept together, with the same bytes.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use queue_eventstore::chain::{
    canonical_record, canonical_record_reference, check_payload, write_canonical, EventRecord,
};
use queue_eventstore::strict_json;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strict = strict_json::parse(text);
    let mut streamed = Vec::new();
    let streamed_ok = strict_json::canonicalise(text, &mut streamed).is_ok();
    let mut via_value = Vec::new();
    let via_value_ok = strict
        .as_ref()
        .is_ok_and(|v| write_canonical(v, &mut via_value).is_ok());
    assert_eq!(streamed_ok, via_value_ok, "streamed and Value paths disagree");
    if streamed_ok {
        assert_eq!(streamed, via_value, "streamed canonical bytes differ");
    }
    let lax = serde_json::from_str::<Value>(text);
    match (&strict, &lax) {
        (Ok(s), Ok(l)) => assert_eq!(s, l, "strict and lax parsers disagree"),
        (Ok(_), Err(e)) => panic!("strict parser accepted what serde_json refuses: {e}"),
        _ => {}
    }
    let Ok(value) = strict else {
        return;
    };

    let mut out = Vec::new();
    let written = write_canonical(&value, &mut out);
    assert_eq!(
        written.is_ok(),
        check_payload(&value).is_ok(),
        "write_canonical and check_payload disagree on {value}"
    );
    if written.is_err() {
        return;
    }
    let canonical = std::str::from_utf8(&out).expect("canonical JSON is UTF-8");
    let back = strict_json::parse(canonical).expect("canonical JSON parses strictly");
    assert_eq!(back, value, "canonical JSON does not round-trip");
    let mut again = Vec::new();
    write_canonical(&back, &mut again).expect("canonical value canonicalises");
    assert_eq!(again, out, "canonicalisation is not idempotent");
    let reference = serde_jcs::to_vec(&value).expect("serde_jcs serialises a checked value");
    assert_eq!(
        out,
        reference,
        "differs from serde_jcs:\n ours: {}\n jcs:  {}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&reference)
    );

    // The same value as an event payload, with one of its strings (if any)
    // as the aggregate id so the hand-written record keys meet odd text too.
    let id = first_string(&value).unwrap_or("stream");
    let record = EventRecord {
        aggregate_type: "Fuzz",
        aggregate_id: id,
        sequence: i64::try_from(data.len()).unwrap_or(i64::MAX),
        event_type: "FuzzEvent",
        event_version: "1",
        recorded_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456)
            .unwrap_or_default(),
        payload: &value,
    };
    if let (Ok(ours), Ok(reference)) = (
        canonical_record(&record),
        canonical_record_reference(&record),
    ) {
        assert_eq!(
            ours,
            reference,
            "record differs from serde_jcs:\n ours: {}\n jcs:  {}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&reference)
        );
    }
});

fn first_string(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Array(items) => items.iter().find_map(first_string),
        Value::Object(map) => map.values().find_map(first_string),
        _ => None,
    }
}
