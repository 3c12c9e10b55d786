//! COSE_Key parsing for the algorithms Queue accepts, into webauthn-rs-core's
//! own `COSEKey` (so a stored passkey keeps the shape it always had:
//! `{"type_": "EDDSA", "key": {"EC_OKP": {"curve": "ED25519", "x": …}}}` for
//! Ed25519 keys, the library's own form).

use ed25519_dalek::VerifyingKey;
use serde_cbor_2::Value;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{COSEAlgorithm, COSEKey, COSEKeyType, COSEOKPKey, EDDSACurve};

use crate::error::PasskeyError;

/// The algorithms Queue offers at registration and accepts at import, in
/// order of preference.
pub fn accepted_algorithms() -> Vec<COSEAlgorithm> {
    vec![
        COSEAlgorithm::ES256,
        COSEAlgorithm::EDDSA,
        COSEAlgorithm::ES384,
        COSEAlgorithm::RS256,
    ]
}

/// Parses COSE_Key bytes (one CBOR item and nothing after it).
pub fn parse_cose_key(bytes: &[u8]) -> Result<COSEKey, PasskeyError> {
    let value: Value =
        serde_cbor_2::from_slice(bytes).map_err(|e| PasskeyError::Cbor(e.to_string()))?;
    cose_key(&value)
}

/// A COSE_Key of an accepted algorithm. webauthn-rs-core parses and
/// validates it (curve points, RSA parameters); an Ed25519 key, which the
/// library parses but will not validate, is validated here: the point must
/// decompress and must not be of small order.
pub fn cose_key(value: &Value) -> Result<COSEKey, PasskeyError> {
    let key = match COSEKey::try_from(value) {
        Ok(key) => key,
        // Raised by the library's validation, after it checked kty OKP, alg
        // EdDSA, a known curve and the length of x.
        Err(WebauthnError::SshPublicKeyEDUnsupported) => okp_key(value)?,
        Err(WebauthnError::COSEKeyInvalidType) => {
            return Err(PasskeyError::Unsupported(
                "key type and algorithm are not one of ES256, EdDSA, ES384, RS256".into(),
            ))
        }
        Err(other) => return Err(PasskeyError::Key(format!("{other:?}"))),
    };
    if !accepted_algorithms().contains(&key.type_) {
        return Err(PasskeyError::Unsupported(format!(
            "{:?} keys are not accepted (ES256, EdDSA, ES384, RS256 are)",
            key.type_
        )));
    }
    Ok(key)
}

fn okp_key(value: &Value) -> Result<COSEKey, PasskeyError> {
    let Value::Map(map) = value else {
        return Err(PasskeyError::Key("not a map".into()));
    };
    if map.get(&Value::Integer(-1)) != Some(&Value::Integer(6)) {
        return Err(PasskeyError::Unsupported(
            "only the Ed25519 curve is accepted for EdDSA (not Ed448)".into(),
        ));
    }
    let Some(Value::Bytes(x)) = map.get(&Value::Integer(-2)) else {
        return Err(PasskeyError::Key("EdDSA key without x".into()));
    };
    let key = COSEKey {
        type_: COSEAlgorithm::EDDSA,
        key: COSEKeyType::EC_OKP(COSEOKPKey {
            curve: EDDSACurve::ED25519,
            x: x.clone(),
        }),
    };
    ed25519_key(&key)?;
    Ok(key)
}

/// The ed25519-dalek key of an Ed25519 COSE key; refuses points that do not
/// decompress and small-order (weak) points.
pub(crate) fn ed25519_key(key: &COSEKey) -> Result<VerifyingKey, PasskeyError> {
    let COSEKeyType::EC_OKP(okp) = &key.key else {
        return Err(PasskeyError::Key("not an octet key pair".into()));
    };
    if okp.curve != EDDSACurve::ED25519 || key.type_ != COSEAlgorithm::EDDSA {
        return Err(PasskeyError::Unsupported("not an Ed25519 EdDSA key".into()));
    }
    let bytes: [u8; 32] = okp
        .x
        .as_slice()
        .try_into()
        .map_err(|_| PasskeyError::Key("Ed25519 x is not 32 bytes".into()))?;
    let verifying = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| PasskeyError::Key("Ed25519 x is not a curve point".into()))?;
    if verifying.is_weak() {
        return Err(PasskeyError::Key("Ed25519 x is a small-order point".into()));
    }
    Ok(verifying)
}

/// Verifies an Ed25519 signature (RFC 8032, strict: no malleable or
/// small-order components) by this key over `data`.
pub(crate) fn verify_ed25519(
    key: &COSEKey,
    signature: &[u8],
    data: &[u8],
) -> Result<(), PasskeyError> {
    let verifying = ed25519_key(key)?;
    let signature =
        ed25519_dalek::Signature::from_slice(signature).map_err(|_| PasskeyError::Signature)?;
    verifying
        .verify_strict(data, &signature)
        .map_err(|_| PasskeyError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(entries: Vec<(i128, Value)>) -> Vec<u8> {
        let map = entries
            .into_iter()
            .map(|(k, v)| (Value::Integer(k), v))
            .collect();
        serde_cbor_2::to_vec(&Value::Map(map)).unwrap()
    }

    fn okp(crv: i128, x: Vec<u8>) -> Vec<u8> {
        cbor(vec![
            (1, Value::Integer(1)),
            (3, Value::Integer(-8)),
            (-1, Value::Integer(crv)),
            (-2, Value::Bytes(x)),
        ])
    }

    /// RFC 8032 §7.1 test 1.
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_library_refuses_to_validate_an_ed25519_key_and_we_do_it() {
        let bytes = okp(6, hex(PUBLIC));
        let value: Value = serde_cbor_2::from_slice(&bytes).unwrap();
        // Pins where webauthn-rs-core 0.6 stops: in key validation.
        assert!(matches!(
            COSEKey::try_from(&value),
            Err(WebauthnError::SshPublicKeyEDUnsupported)
        ));
        let key = parse_cose_key(&bytes).unwrap();
        assert_eq!(key.type_, COSEAlgorithm::EDDSA);
        // The RFC's empty message and signature verify; a flipped bit does not.
        verify_ed25519(&key, &hex(SIGNATURE), b"").unwrap();
        let mut bad = hex(SIGNATURE);
        bad[0] ^= 1;
        assert!(matches!(
            verify_ed25519(&key, &bad, b""),
            Err(PasskeyError::Signature)
        ));
        assert!(matches!(
            verify_ed25519(&key, &hex(SIGNATURE)[..63], b""),
            Err(PasskeyError::Signature)
        ));
    }

    #[test]
    fn bad_ed25519_keys_are_refused() {
        // Ed448 is well formed but not accepted.
        assert!(matches!(
            parse_cose_key(&okp(7, vec![1; 57])),
            Err(PasskeyError::Unsupported(_))
        ));
        // Short x.
        assert!(matches!(
            parse_cose_key(&okp(6, vec![1; 31])),
            Err(PasskeyError::Key(_))
        ));
        // The identity point has small order.
        let mut identity = vec![0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            parse_cose_key(&okp(6, identity)),
            Err(PasskeyError::Key(_))
        ));
        // Not a point: y = 2 has no x on the curve.
        let mut not_a_point = vec![0u8; 32];
        not_a_point[0] = 2;
        assert!(matches!(
            parse_cose_key(&okp(6, not_a_point)),
            Err(PasskeyError::Key(_))
        ));
    }

    #[test]
    fn keys_of_other_algorithms_are_unsupported() {
        // ES512 (P-521): webauthn-rs-core parses it but can never verify it.
        let p521 = cbor(vec![
            (1, Value::Integer(2)),
            (3, Value::Integer(-36)),
            (-1, Value::Integer(3)),
            (-2, Value::Bytes(vec![0; 66])),
            (-3, Value::Bytes(vec![0; 66])),
        ]);
        assert!(parse_cose_key(&p521).is_err());
        // kty RSA with alg PS256.
        let ps256 = cbor(vec![(1, Value::Integer(3)), (3, Value::Integer(-37))]);
        assert!(matches!(
            parse_cose_key(&ps256),
            Err(PasskeyError::Unsupported(_))
        ));
        // Trailing bytes after the key.
        let mut trailing = okp(6, hex(PUBLIC));
        trailing.push(0);
        assert!(matches!(
            parse_cose_key(&trailing),
            Err(PasskeyError::Cbor(_))
        ));
    }
}
