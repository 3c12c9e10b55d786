//! COSE_Key bytes as py-webauthn stores them, beyond ES256: RS256 (-257) and
//! EdDSA (-8, Ed25519) keys convert (queue-passkey verifies Ed25519 where
//! webauthn-rs-core 0.6 cannot); keys of algorithms the API does not accept
//! are refused as unsupported; wrong shapes are refused as malformed.

use queue_backfill::cose::{legacy_credential, parse_cose_key, CoseError};
use serde_cbor_2::Value;

fn cbor(entries: Vec<(i128, Value)>) -> Vec<u8> {
    let map = entries
        .into_iter()
        .map(|(k, v)| (Value::Integer(k), v))
        .collect();
    serde_cbor_2::to_vec(&Value::Map(map)).unwrap()
}

/// RFC 8032 §7.1 test 1 public key.
const ED25519_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

#[test]
fn an_eddsa_key_converts_in_webauthn_rs_form() {
    let key = cbor(vec![
        (1, Value::Integer(1)),  // kty OKP
        (3, Value::Integer(-8)), // alg EdDSA
        (-1, Value::Integer(6)), // crv Ed25519
        (-2, Value::Bytes(hex::decode(ED25519_PUBLIC).unwrap())),
    ]);
    let credential = legacy_credential(b"raw-id", &key, 9, true, false).unwrap();
    assert_eq!(credential.counter, 9);
    let json = serde_json::to_value(&credential).unwrap();
    assert_eq!(json["cred"]["type_"], "EDDSA");
    assert_eq!(json["cred"]["key"]["EC_OKP"]["curve"], "ED25519");
    // The form the rest of the tree (and older events) already use.
    assert_eq!(
        json["cred"]["key"]["EC_OKP"]["x"],
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    );
}

#[test]
fn keys_the_api_does_not_accept_are_refused_as_unsupported() {
    // Ed448 (crv 7): EdDSA, but not Ed25519.
    let ed448 = cbor(vec![
        (1, Value::Integer(1)),
        (3, Value::Integer(-8)),
        (-1, Value::Integer(7)),
        (-2, Value::Bytes(vec![7; 57])),
    ]);
    assert!(matches!(
        legacy_credential(b"raw-id", &ed448, 9, true, false),
        Err(CoseError::Unsupported(_))
    ));
    // PS256 (RSASSA-PSS).
    let ps256 = cbor(vec![(1, Value::Integer(3)), (3, Value::Integer(-37))]);
    assert!(matches!(
        parse_cose_key(&ps256),
        Err(CoseError::Unsupported(_))
    ));
}

#[test]
fn an_rs256_key_converts() {
    let mut n = vec![0xc5u8; 256];
    n[255] = 0x01;
    let key = cbor(vec![
        (1, Value::Integer(3)),    // kty RSA
        (3, Value::Integer(-257)), // alg RS256
        (-1, Value::Bytes(n)),
        (-2, Value::Bytes(vec![1, 0, 1])),
    ]);
    let credential = legacy_credential(b"raw-id", &key, 9, true, false).unwrap();
    assert_eq!(credential.counter, 9);
    assert_eq!(credential.cred_id, b"raw-id".to_vec());
    let json = serde_json::to_value(&credential).unwrap();
    assert_eq!(json["cred"]["type_"], "RS256");
}

#[test]
fn wrong_shapes_are_refused() {
    // Not CBOR at all, and trailing bytes after a key.
    assert!(matches!(
        parse_cose_key(b"\xff\x00"),
        Err(CoseError::Cbor(_))
    ));
    // EdDSA with a short key.
    let short = cbor(vec![
        (1, Value::Integer(1)),
        (3, Value::Integer(-8)),
        (-1, Value::Integer(6)),
        (-2, Value::Bytes(vec![1; 31])),
    ]);
    assert!(matches!(parse_cose_key(&short), Err(CoseError::Key(_))));
    // RS1 (SHA-1) is insecure and refused.
    let rs1 = cbor(vec![(1, Value::Integer(3)), (3, Value::Integer(-65535))]);
    assert!(parse_cose_key(&rs1).is_err());
    // A CBOR text string, not a map.
    assert!(parse_cose_key(&serde_cbor_2::to_vec(&Value::Text("key".into())).unwrap()).is_err());
}
