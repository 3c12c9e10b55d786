//! Registration and assertion: webauthn-rs-core first, then the Ed25519
//! signature it cannot check, and the steps it would have run after it.

use base64::Engine;
use crypto_glue::traits::DecodeDer;
use crypto_glue::x509::Certificate;
use serde::Deserialize;
use serde_cbor_2::Value;
use webauthn_rs_core::crypto::compute_sha256;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::internals::AuthenticatorData;
use webauthn_rs_core::proto::{
    AttestationFormat, AttestationMetadata, Authentication, AuthenticationState, COSEAlgorithm,
    CollectedClientData, Credential, ExtnState, ParsedAttestation, ParsedAttestationData,
    PublicKeyCredential, RegisterPublicKeyCredential, RegisteredExtensions, Registration,
    RegistrationState, RequestRegistrationExtensions, UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use crate::cose::{cose_key, verify_ed25519};
use crate::error::PasskeyError;

/// What a verified assertion says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub counter: u32,
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

/// Verifies a registration (attestation formats `none` and `packed`, self
/// or x5c, for the algorithms offered in `state`) and returns the
/// credential to store.
pub fn register(
    core: &WebauthnCore,
    response: &RegisterPublicKeyCredential,
    state: &RegistrationState,
) -> Result<Credential, PasskeyError> {
    match core.register_credential(response, state, None) {
        // The library checked the client data (type, challenge, origin,
        // crossOrigin) and the authenticator data (rpId hash, UP, UV) and
        // then met an Ed25519 credential key: in a packed self-attestation
        // (before checking that signature), or after a `none` or packed x5c
        // statement it verified, when it built the credential.
        Err(WebauthnError::SshPublicKeyEDUnsupported) => register_ed25519(response, state),
        other => other.map_err(PasskeyError::from),
    }
}

/// Verifies an assertion by `credential` (whose `counter` the caller may set
/// to zero to decide about counters itself).
pub fn authenticate(
    core: &WebauthnCore,
    response: &PublicKeyCredential,
    state: &AuthenticationState,
    credential: &Credential,
) -> Result<Assertion, PasskeyError> {
    // webauthn-rs-core 0.6 checks crossOrigin at registration only.
    refuse_cross_origin(&response.response.client_data_json)?;
    match core.authenticate_single_credential(response, state, credential) {
        Ok(result) => Ok(Assertion {
            counter: result.counter(),
            user_verified: result.user_verified(),
            backup_eligible: result.backup_eligible(),
            backup_state: result.backup_state(),
        }),
        // Raised by the signature check, the library's last step: client
        // data, rpId hash, UP, UV and backup flags have passed.
        Err(WebauthnError::SshPublicKeyEDUnsupported) => authenticate_ed25519(response, credential),
        Err(other) => Err(other.into()),
    }
}

fn refuse_cross_origin(client_data_json: &[u8]) -> Result<(), PasskeyError> {
    // Unparsable client data is the library's to refuse.
    match serde_json::from_slice::<CollectedClientData>(client_data_json) {
        Ok(client) if client.cross_origin == Some(true) => Err(PasskeyError::CrossOrigin),
        _ => Ok(()),
    }
}

fn authenticate_ed25519(
    response: &PublicKeyCredential,
    credential: &Credential,
) -> Result<Assertion, PasskeyError> {
    let raw = &response.response;
    let auth_data =
        AuthenticatorData::<Authentication>::try_from(raw.authenticator_data.as_slice())?;
    let mut signed = raw.authenticator_data.clone();
    signed.extend_from_slice(&compute_sha256(&raw.client_data_json));
    verify_ed25519(&credential.cred, &raw.signature, &signed)?;
    // As the library does after the signature (its counter check is always
    // on for a core built with `new_unsafe_experts_only`).
    if (auth_data.counter > 0 || credential.counter > 0) && auth_data.counter <= credential.counter
    {
        return Err(PasskeyError::Counter);
    }
    Ok(Assertion {
        counter: auth_data.counter,
        user_verified: auth_data.user_verified,
        backup_eligible: auth_data.backup_eligible,
        backup_state: auth_data.backup_state,
    })
}

/// The fields of a `RegistrationState` this crate needs (the library keeps
/// them private; its serialised form is what Queue stores between begin and
/// complete anyway).
#[derive(Deserialize)]
struct StateView {
    policy: UserVerificationPolicy,
    exclude_credentials: Vec<String>,
    credential_algorithms: Vec<COSEAlgorithm>,
    extensions: RequestRegistrationExtensions,
    allow_synchronised_authenticators: bool,
}

fn text(map: &std::collections::BTreeMap<Value, Value>, key: &str) -> Option<Value> {
    map.get(&Value::Text(key.to_owned())).cloned()
}

fn register_ed25519(
    response: &RegisterPublicKeyCredential,
    state: &RegistrationState,
) -> Result<Credential, PasskeyError> {
    let state: StateView = serde_json::to_value(state)
        .and_then(serde_json::from_value)
        .map_err(|e| PasskeyError::Cbor(format!("registration state: {e}")))?;
    let raw = &response.response;
    let object: Value = serde_cbor_2::from_slice(raw.attestation_object.as_slice())
        .map_err(|e| PasskeyError::Cbor(e.to_string()))?;
    let Value::Map(object) = object else {
        return Err(PasskeyError::Cbor("attestation object is not a map".into()));
    };
    let (Some(Value::Text(fmt)), Some(Value::Map(statement)), Some(Value::Bytes(auth_bytes))) = (
        text(&object, "fmt"),
        text(&object, "attStmt"),
        text(&object, "authData"),
    ) else {
        return Err(PasskeyError::Cbor("attestation object fields".into()));
    };
    let auth_data = AuthenticatorData::<Registration>::try_from(auth_bytes.as_slice())?;
    let acd = auth_data
        .acd
        .as_ref()
        .ok_or(WebauthnError::MissingAttestationCredentialData)?;
    let key = cose_key(&acd.credential_pk)?;
    if key.type_ != COSEAlgorithm::EDDSA {
        return Err(PasskeyError::Unsupported("expected an EdDSA key".into()));
    }
    let aaguid = uuid::Uuid::from_bytes(acd.aaguid);

    let (format, data, metadata) = match fmt.as_str() {
        "none" => (
            AttestationFormat::None,
            ParsedAttestationData::None,
            AttestationMetadata::None,
        ),
        "packed" => {
            let data = match (text(&statement, "x5c"), text(&statement, "ecdaaKeyId")) {
                // The library verified this statement (signature by the
                // attestation certificate, its requirements, its AAGUID
                // extension) before it met the credential key.
                (Some(Value::Array(chain)), _) => ParsedAttestationData::Basic(
                    chain
                        .iter()
                        .map(|c| match c {
                            Value::Bytes(der) => Certificate::from_der(der)
                                .map_err(|_| PasskeyError::Attestation("x5c certificate")),
                            _ => Err(PasskeyError::Attestation("x5c certificate")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                (Some(_), _) => return Err(PasskeyError::Attestation("x5c is not an array")),
                (None, Some(_)) => return Err(PasskeyError::Attestation("ECDAA")),
                (None, None) => {
                    // Self attestation: alg is the credential key's, and the
                    // credential key signed authData || SHA-256(clientDataJSON).
                    if text(&statement, "alg") != Some(Value::Integer(-8)) {
                        return Err(PasskeyError::Attestation(
                            "self attestation alg differs from the key's",
                        ));
                    }
                    let Some(Value::Bytes(sig)) = text(&statement, "sig") else {
                        return Err(PasskeyError::Attestation("self attestation without sig"));
                    };
                    let mut signed = auth_bytes.clone();
                    signed.extend_from_slice(&compute_sha256(&raw.client_data_json));
                    verify_ed25519(&key, &sig, &signed)
                        .map_err(|_| PasskeyError::Attestation("self attestation signature"))?;
                    ParsedAttestationData::Self_
                }
            };
            // As the library: the AAGUID is attested only by a certificate.
            let metadata = match data {
                ParsedAttestationData::Basic(_) => AttestationMetadata::Packed { aaguid },
                _ => AttestationMetadata::None,
            };
            (AttestationFormat::Packed, data, metadata)
        }
        _ => {
            return Err(PasskeyError::Attestation(
                "format other than none and packed",
            ))
        }
    };

    // What the library checks once it has the credential.
    if !state.credential_algorithms.contains(&key.type_) {
        return Err(WebauthnError::CredentialAlteredAlgFromRequest.into());
    }
    if !state.allow_synchronised_authenticators && auth_data.backup_eligible {
        return Err(WebauthnError::CredentialMayNotBeHardwareBound.into());
    }
    if auth_data.backup_state && !auth_data.backup_eligible {
        return Err(WebauthnError::CredentialMayNotBeHardwareBound.into());
    }
    let excluded = state.exclude_credentials.iter().any(|id| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id.trim_end_matches('='))
            .is_ok_and(|id| id == acd.credential_id)
    });
    if excluded {
        return Err(WebauthnError::CredentialAlteredAlgFromRequest.into());
    }

    // The credential as the library's `Credential::new` builds it.
    let cred_protect = match (
        auth_data.extensions.cred_protect.as_ref(),
        state.extensions.cred_protect.is_some(),
    ) {
        (Some(p), false) => ExtnState::Unsolicited(p.0),
        (Some(p), true) => ExtnState::Set(p.0),
        (None, true) => ExtnState::Ignored,
        (None, false) => ExtnState::NotRequested,
    };
    let hmac_create_secret = match (
        auth_data.extensions.hmac_secret,
        state.extensions.hmac_create_secret.is_some(),
    ) {
        (Some(s), false) => ExtnState::Unsolicited(s),
        (Some(s), true) => ExtnState::Set(s),
        (None, true) => ExtnState::Ignored,
        (None, false) => ExtnState::NotRequested,
    };
    let cred_props = match (
        response.extensions.cred_props.as_ref(),
        state.extensions.cred_props.is_some(),
    ) {
        (Some(p), _) => ExtnState::Unsigned(p.clone()),
        (None, true) => ExtnState::Ignored,
        (None, false) => ExtnState::NotRequested,
    };
    let transports = (format == AttestationFormat::Packed)
        .then(|| raw.transports.clone())
        .flatten();
    Ok(Credential {
        cred_id: acd.credential_id.clone(),
        cred: key,
        counter: auth_data.counter,
        transports,
        user_verified: auth_data.user_verified,
        backup_eligible: auth_data.backup_eligible,
        backup_state: auth_data.backup_state,
        registration_policy: state.policy,
        extensions: RegisteredExtensions {
            cred_protect,
            hmac_create_secret,
            appid: ExtnState::NotRequested,
            cred_props,
        },
        attestation: ParsedAttestation { data, metadata },
        attestation_format: format,
    })
}
