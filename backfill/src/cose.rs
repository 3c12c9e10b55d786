//! Legacy passkeys: py-webauthn stores `credential_public_key`, the COSE_Key
//! exactly as it appears in the authenticator data. Queue stores a
//! webauthn-rs `Credential`; this converts one into the other with the COSE
//! parser the API registers with (queue-passkey: webauthn-rs-core's own for
//! ES256, ES384 and RS256, ed25519-dalek's point checks for EdDSA). Keys of
//! other algorithms are refused as unsupported: Queue could never verify
//! a login with them.

use serde_cbor_2::Value;
use webauthn_rs_core::proto::{
    AttestationFormat, AttestationMetadata, Credential, ParsedAttestation, ParsedAttestationData,
    RegisteredExtensions, UserVerificationPolicy,
};

pub use queue_passkey::{parse_cose_key, PasskeyError as CoseError};

/// The webauthn-rs credential for a legacy passkey. The attestation was not
/// kept by the legacy service, so it is `None`; user verification is Queue's
/// policy (required at every login) whatever happened at registration.
pub fn legacy_credential(
    raw_id: &[u8],
    cose_key: &[u8],
    sign_count: u32,
    backup_eligible: bool,
    backup_state: bool,
) -> Result<Credential, CoseError> {
    Ok(Credential {
        cred_id: raw_id.to_vec(),
        cred: parse_cose_key(cose_key)?,
        counter: sign_count,
        transports: None,
        user_verified: false,
        backup_eligible,
        backup_state,
        registration_policy: UserVerificationPolicy::Required,
        extensions: RegisteredExtensions::none(),
        attestation: ParsedAttestation {
            data: ParsedAttestationData::None,
            metadata: AttestationMetadata::None,
        },
        attestation_format: AttestationFormat::None,
    })
}

/// What py-webauthn's `verify_registration_response` returns as
/// `credential_public_key`: the COSE_Key bytes from the attested credential
/// data of an attestation object. Tests and the benchmark use it to store
/// passkeys exactly as the legacy service did.
pub fn credential_public_key(attestation_object: &[u8]) -> Result<Vec<u8>, CoseError> {
    let object: Value =
        serde_cbor_2::from_slice(attestation_object).map_err(|e| CoseError::Cbor(e.to_string()))?;
    let Value::Map(map) = object else {
        return Err(CoseError::Cbor("attestation object is not a map".into()));
    };
    let Some(Value::Bytes(auth_data)) = map.get(&Value::Text("authData".into())) else {
        return Err(CoseError::Cbor("no authData".into()));
    };
    // rpIdHash (32) | flags (1) | signCount (4) | aaguid (16) | idLen (2) | id | COSE_Key | ext
    let short = || CoseError::Cbor("authData too short".into());
    let flags = *auth_data.get(32).ok_or_else(short)?;
    if flags & 0x40 == 0 {
        return Err(CoseError::Cbor("no attested credential data".into()));
    }
    let len_bytes = auth_data.get(53..55).ok_or_else(short)?;
    let id_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let key_start = 55 + id_len;
    let rest = auth_data.get(key_start..).ok_or_else(short)?;
    let mut de = serde_cbor_2::Deserializer::from_slice(rest);
    let _: Value =
        serde::Deserialize::deserialize(&mut de).map_err(|e| CoseError::Cbor(e.to_string()))?;
    Ok(rest[..de.byte_offset()].to_vec())
}
