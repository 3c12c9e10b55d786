//! The per-stream hash chain and its MAC (ledger-format.md §1–2).

use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{StoreError, StoreResult};
use crate::integrity::DamageKind;
use crate::keys::MacKeys;
use crate::strict_json;

pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0u8; 32];
const EVENT_DOMAIN: &[u8] = b"queue.event.v1\x00";
/// Largest magnitude a payload integer may have (2^53 − 1): beyond it JSON
/// numbers do not survive canonicalisation unchanged.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The hashed fields of one event. The payload is a [`Value`], or (`P =
/// str`) its JSON text, canonicalised as it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord<'a, P: ?Sized = Value> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: DateTime<Utc>,
    pub payload: &'a P,
}

/// A payload that can be written in canonical form: a parsed [`Value`], or
/// JSON text ([`strict_json::canonicalise`], the same bytes without
/// building a `Value`: what `queue verify` and `verify-export` use).
pub trait CanonicalPayload {
    fn write_canonical(&self, out: &mut Vec<u8>) -> StoreResult<()>;
}

impl CanonicalPayload for Value {
    fn write_canonical(&self, out: &mut Vec<u8>) -> StoreResult<()> {
        write_canonical(self, out)
    }
}

impl CanonicalPayload for str {
    fn write_canonical(&self, out: &mut Vec<u8>) -> StoreResult<()> {
        strict_json::canonicalise(self, out).map_err(StoreError::InvalidEvent)
    }
}

/// Truncates a clock reading to whole microseconds, as stored and hashed.
pub fn truncate_time(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// `recorded_at` as hashed: RFC 3339 UTC with exactly six fractional digits.
pub fn format_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Checks that a time can be hashed as specified (years 0001–9999).
pub fn check_time(at: &DateTime<Utc>) -> StoreResult<()> {
    if (1..=9999).contains(&at.year()) {
        Ok(())
    } else {
        Err(StoreError::InvalidEvent(format!(
            "recorded_at {at} is outside years 0001-9999"
        )))
    }
}

/// Refuses payloads that cannot be stored and canonicalised faithfully:
/// floats, integers of magnitude ≥ 2^53, and NUL characters (jsonb rejects them).
pub fn check_payload(value: &Value) -> StoreResult<()> {
    match value {
        Value::Number(n) => {
            let ok = n.as_u64().is_some_and(|v| v <= MAX_SAFE_INTEGER)
                || n.as_i64()
                    .is_some_and(|v| v.unsigned_abs() <= MAX_SAFE_INTEGER);
            if ok {
                Ok(())
            } else {
                Err(StoreError::InvalidEvent(format!(
                    "payload number {n} is not an integer below 2^53"
                )))
            }
        }
        Value::String(s) => check_text(s),
        Value::Array(items) => items.iter().try_for_each(check_payload),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_text(k)?;
            check_payload(v)
        }),
        Value::Null | Value::Bool(_) => Ok(()),
    }
}

fn check_text(s: &str) -> StoreResult<()> {
    if s.contains('\0') {
        Err(StoreError::InvalidEvent(
            "payload text contains a NUL character".into(),
        ))
    } else {
        Ok(())
    }
}

/// The RFC 8785 canonical bytes of an event's record.
///
/// The record's own keys are fixed, so they are written in their JCS order
/// (aggregate_id, aggregate_type, event_type, event_version, payload,
/// recorded_at, sequence, v) directly; only the payload goes through the
/// generic canonicaliser. A test checks this against serde_jcs on the whole
/// object.
pub fn canonical_record<P: CanonicalPayload + ?Sized>(
    record: &EventRecord<'_, P>,
) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_record(record, &mut out)?;
    Ok(out)
}

/// [`canonical_record`] into a buffer the caller reuses (cleared first).
pub fn write_record<P: CanonicalPayload + ?Sized>(
    record: &EventRecord<'_, P>,
    out: &mut Vec<u8>,
) -> StoreResult<()> {
    out.clear();
    let fail = |e: serde_json::Error| StoreError::InvalidEvent(format!("canonical JSON: {e}"));
    out.extend_from_slice(b"{\"aggregate_id\":");
    serde_json::to_writer(&mut *out, record.aggregate_id).map_err(fail)?;
    out.extend_from_slice(b",\"aggregate_type\":");
    serde_json::to_writer(&mut *out, record.aggregate_type).map_err(fail)?;
    out.extend_from_slice(b",\"event_type\":");
    serde_json::to_writer(&mut *out, record.event_type).map_err(fail)?;
    out.extend_from_slice(b",\"event_version\":");
    serde_json::to_writer(&mut *out, record.event_version).map_err(fail)?;
    out.extend_from_slice(b",\"payload\":");
    record.payload.write_canonical(out)?;
    out.extend_from_slice(b",\"recorded_at\":\"");
    out.extend_from_slice(format_time(&record.recorded_at).as_bytes());
    out.extend_from_slice(b"\",\"sequence\":");
    out.extend_from_slice(record.sequence.to_string().as_bytes());
    out.extend_from_slice(b",\"v\":1}");
    Ok(())
}

/// RFC 8785 serialisation of a JSON value without intermediate buffers:
/// object members sorted by UTF-16 code units, strings escaped as
/// serde_json does (which is JCS's escaping), integers in plain decimal.
/// Refuses what `check_payload` refuses (floats, |n| ≥ 2^53, NUL), so the
/// hash is only ever computed over values that canonicalise faithfully.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) -> StoreResult<()> {
    let fail = |e: serde_json::Error| StoreError::InvalidEvent(format!("canonical JSON: {e}"));
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(_) => {
            check_payload(value)?;
            out.extend_from_slice(value.to_string().as_bytes());
        }
        Value::String(s) => {
            check_text(s)?;
            serde_json::to_writer(&mut *out, s).map_err(fail)?
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // The map iterates in UTF-8 order; JCS wants UTF-16 code-unit order.
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                check_text(key)?;
                serde_json::to_writer(&mut *out, key).map_err(fail)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The same bytes through the generic canonicaliser (reference for tests).
pub fn canonical_record_reference(record: &EventRecord<'_>) -> StoreResult<Vec<u8>> {
    let object = serde_json::json!({
        "v": 1,
        "aggregate_type": record.aggregate_type,
        "aggregate_id": record.aggregate_id,
        "sequence": record.sequence,
        "event_type": record.event_type,
        "event_version": record.event_version,
        "recorded_at": format_time(&record.recorded_at),
        "payload": record.payload,
    });
    serde_jcs::to_vec(&object).map_err(|e| StoreError::InvalidEvent(format!("canonical JSON: {e}")))
}

/// `SHA-256("queue.event.v1" || 0x00 || prev_hash || JCS(record))`.
pub fn event_hash(prev_hash: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(EVENT_DOMAIN);
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// `HMAC-SHA-256(key, hash)`.
pub fn event_mac(key: &[u8], hash: &Hash) -> Hash {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return ZERO_HASH,
    };
    mac.update(hash);
    mac.finalize().into_bytes().into()
}

/// Checks a stored MAC in constant time.
pub fn mac_matches(keys: &MacKeys, key_id: &str, hash: &Hash, mac: &[u8]) -> Option<bool> {
    let key = keys.get(key_id)?;
    let mut verifier = Hmac::<Sha256>::new_from_slice(key).ok()?;
    verifier.update(hash);
    Some(verifier.verify_slice(mac).is_ok())
}

/// HMAC states with each key already absorbed, so checking many events
/// costs two compressions per MAC instead of four.
#[derive(Clone)]
pub struct MacVerifier {
    keyed: Vec<(String, Hmac<Sha256>)>,
}

/// Never prints key material.
impl std::fmt::Debug for MacVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keyed.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MacVerifier")
            .field("key_ids", &ids)
            .finish()
    }
}

impl MacVerifier {
    pub fn new(keys: &MacKeys) -> Self {
        let keyed = keys
            .ids()
            .filter_map(|id| {
                let key = keys.get(id)?;
                Some((id.to_string(), Hmac::<Sha256>::new_from_slice(key).ok()?))
            })
            .collect();
        Self { keyed }
    }

    /// `None` when the key id is unknown; otherwise whether the MAC verifies
    /// (constant-time comparison).
    pub fn check(&self, key_id: &str, hash: &Hash, mac: &[u8]) -> Option<bool> {
        let (_, state) = self.keyed.iter().find(|(id, _)| id == key_id)?;
        let mut verifier = state.clone();
        verifier.update(hash);
        Some(verifier.verify_slice(mac).is_ok())
    }
}

/// One stored event as read back, with its chain columns.
#[derive(Clone, Debug)]
pub struct StoredRow<'a, P: ?Sized = Value> {
    pub record: EventRecord<'a, P>,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub mac: &'a [u8],
    pub mac_key_id: &'a str,
}

/// The expensive part of checking a row: `hash` is Err(canonicalisation
/// error) or whether the stored hash recomputes from the row's fields and
/// its stored `prev_hash`; `mac` is None for an unknown key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowCheck {
    pub hash: Result<bool, String>,
    pub mac: Option<bool>,
}

/// Recomputes a row's hash and checks its MAC (constant time).
pub fn check_row<P: CanonicalPayload + ?Sized>(
    row: &StoredRow<'_, P>,
    mac: &MacVerifier,
) -> RowCheck {
    check_row_with(row, mac, &mut Vec::with_capacity(256))
}

/// [`check_row`] canonicalising into a buffer the caller reuses.
pub fn check_row_with<P: CanonicalPayload + ?Sized>(
    row: &StoredRow<'_, P>,
    mac: &MacVerifier,
    buf: &mut Vec<u8>,
) -> RowCheck {
    let hash = match (write_record(&row.record, buf), to_hash(row.prev_hash)) {
        (Err(err), _) => Err(err.to_string()),
        (Ok(()), Some(prev)) => Ok(event_hash(&prev, buf).as_slice() == row.hash),
        (Ok(()), None) => Ok(false),
    };
    let stored = to_hash(row.hash).unwrap_or(ZERO_HASH);
    RowCheck {
        hash,
        mac: mac.check(row.mac_key_id, &stored, row.mac),
    }
}

/// The one link check (used by loads for decisions, the sealer, verify,
/// export and extraction): the row continues `previous` (the stream's
/// previous row's sequence and hash, `None` for the first row), its hash
/// recomputes and its MAC verifies. Returns the row's hash, which the next
/// row must name as its `prev_hash`.
pub fn check_link<P: CanonicalPayload + ?Sized>(
    previous: Option<(i64, Hash)>,
    row: &StoredRow<'_, P>,
    mac: &MacVerifier,
) -> Result<Hash, DamageKind> {
    let (expected_sequence, expected_prev) = match previous {
        Some((sequence, hash)) => (sequence + 1, hash),
        None => (1, ZERO_HASH),
    };
    if row.record.sequence != expected_sequence {
        return Err(DamageKind::SequenceGap);
    }
    if row.prev_hash != expected_prev.as_slice() {
        return Err(DamageKind::PrevHashMismatch);
    }
    let checked = check_row(row, mac);
    match checked.hash {
        Err(_) => return Err(DamageKind::InvalidPayload),
        Ok(false) => return Err(DamageKind::HashMismatch),
        Ok(true) => {}
    }
    match checked.mac {
        None => Err(DamageKind::UnknownMacKey),
        Some(false) => Err(DamageKind::MacInvalid),
        Some(true) => to_hash(row.hash).ok_or(DamageKind::HashMismatch),
    }
}

/// Converts a stored bytea into a 32-byte hash.
pub fn to_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn time_is_formatted_with_six_digits() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 16, 22, 14).unwrap();
        assert_eq!(format_time(&t), "2026-11-25T16:22:14.000000Z");
        let t = t + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(
            format_time(&truncate_time(t)),
            "2026-11-25T16:22:14.123456Z"
        );
    }

    #[test]
    fn payload_rules() {
        assert!(check_payload(&serde_json::json!({"a": [1, -2, 9007199254740991i64]})).is_ok());
        assert!(check_payload(&serde_json::json!({"a": 9007199254740992u64})).is_err());
        assert!(check_payload(&serde_json::json!({"a": -9007199254740992i64})).is_err());
        assert!(check_payload(&serde_json::json!({"a": 1.5})).is_err());
        assert!(check_payload(&serde_json::json!({"a": "x\u{0}"})).is_err());
    }

    #[test]
    fn fast_canonical_form_equals_the_reference() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let payloads = [
            serde_json::json!(null),
            serde_json::json!([1, "two", {"z": 1, "a": [true, false]}]),
            serde_json::json!({"\u{20ac}": 1, "\r": "\u{1f600}\t\"\\/", "b": {"d": -5, "c": "\u{1}"}}),
            // U+E000 sorts before U+1F600 in UTF-8 but after it in UTF-16.
            serde_json::json!({"\u{e000}": 1, "\u{1f600}": 2, "a": [9007199254740991i64, -1, 0]}),
        ];
        for (i, payload) in payloads.iter().enumerate() {
            let rec = EventRecord {
                aggregate_type: "Type \"quoted\"",
                aggregate_id: "id\u{7f}\u{e9}",
                sequence: i as i64 + 1,
                event_type: "E\n",
                event_version: "2.0",
                recorded_at: t,
                payload,
            };
            assert_eq!(
                canonical_record(&rec).unwrap(),
                canonical_record_reference(&rec).unwrap()
            );
        }
    }

    #[test]
    fn canonical_record_sorts_keys() {
        let payload = serde_json::json!({"b": 1, "a": "é"});
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let rec = EventRecord {
            aggregate_type: "T",
            aggregate_id: "1",
            sequence: 1,
            event_type: "E",
            event_version: "1.0",
            recorded_at: t,
            payload: &payload,
        };
        let bytes = canonical_record(&rec).unwrap();
        assert_eq!(bytes, canonical_record_reference(&rec).unwrap());
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"aggregate_id":"1","aggregate_type":"T","event_type":"E","event_version":"1.0","payload":{"a":"é","b":1},"recorded_at":"2026-01-02T03:04:05.000000Z","sequence":1,"v":1}"#
        );
    }
}
