//! WebAuthn payloads as the API receives them: the JSON body of
//! register/complete and login/complete, `passkeys::parse_credential` (the
//! handlers' own entry point), then webauthn-rs-core's verification, which
//! parses clientDataJSON, the CBOR attestationObject and authenticatorData.
//!
//! Properties: nothing panics, whatever the bytes; and an assertion whose
//! signed parts (authenticatorData, clientDataJSON, signature) were changed
//! never verifies.
//!
//! A random body never gets past the challenge check, so most modes start
//! from a genuine response made once by a software passkey against a real
//! challenge and change one binary field (overwrite, insert, truncate,
//! replace) before it goes through the same path: that reaches the
//! attestation-object, authenticator-data and signature parsers.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use queue_api::routes::passkeys::{
    credential_algorithms, parse_credential, LoginCompleteRequest, RegisterCompleteRequest,
};
use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_core::internals::{AttestationObject, AuthenticatorData};
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, Authentication, AuthenticationState, Credential,
    PublicKeyCredential, RegisterPublicKeyCredential, Registration, RegistrationState,
    UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

const ORIGIN: &str = "https://app.queue.example";

struct Fixture {
    core: WebauthnCore,
    registration: RegistrationState,
    /// RegistrationResponseJSON, genuine for `registration`.
    register_response: Value,
    authentication: AuthenticationState,
    /// AuthenticationResponseJSON, genuine for `authentication`.
    login_response: Value,
    credential: Credential,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let origin = Url::parse(ORIGIN).expect("origin");
        // As api::state builds it.
        let core = WebauthnCore::new_unsafe_experts_only(
            "Queue",
            "app.queue.example",
            vec![origin.clone()],
            Duration::from_secs(300),
            Some(false),
            Some(false),
        );
        let user = [7u8; 16];
        // As passkeys::register_begin asks, less the resident key that
        // SoftPasskey cannot store (the server cannot observe it anyway).
        let builder = core
            .new_challenge_register_builder(&user, "fuzz@example.com", "Fuzz")
            .expect("register builder")
            .attestation(AttestationConveyancePreference::None)
            .user_verification_policy(UserVerificationPolicy::Required)
            .credential_algorithms(credential_algorithms());
        let (options, registration) = core
            .generate_challenge_register(builder)
            .expect("register challenge");
        let mut soft = SoftPasskey::new(true);
        let response = soft
            .do_registration(origin.clone(), options)
            .expect("soft registration");
        let credential = core
            .register_credential(&response, &registration, None)
            .expect("genuine registration verifies");
        let register_response = serde_json::to_value(&response).expect("json");

        let builder = core
            .new_challenge_authenticate_builder(Vec::new(), Some(UserVerificationPolicy::Required))
            .expect("login builder");
        let (mut options, authentication) = core
            .generate_challenge_authenticate(builder)
            .expect("login challenge");
        options.public_key.allow_credentials = vec![serde_json::from_value(
            json!({"type": "public-key", "id": register_response["rawId"]}),
        )
        .expect("allow credential")];
        let mut login = soft
            .do_authentication(origin, options)
            .expect("soft authentication");
        login.response.user_handle = Some(user.to_vec());
        core.authenticate_single_credential(&login, &authentication, &credential)
            .expect("genuine assertion verifies");
        let login_response = serde_json::to_value(&login).expect("json");
        Fixture {
            core,
            registration,
            register_response,
            authentication,
            login_response,
            credential,
        }
    })
}

/// A register/complete body, as the handler receives it.
fn register_complete(body: &[u8]) -> bool {
    let f = fixture();
    let Ok(request) = serde_json::from_slice::<RegisterCompleteRequest>(body) else {
        return false;
    };
    let Ok(response) = parse_credential::<RegisterPublicKeyCredential>(request.credential) else {
        return false;
    };
    // As passkeys::register_complete does (Ed25519 keys included).
    queue_passkey::register(&f.core, &response, &f.registration).is_ok()
}

/// A login/complete body, as the handler receives it.
fn login_complete(body: &[u8]) -> bool {
    let f = fixture();
    let Ok(request) = serde_json::from_slice::<LoginCompleteRequest>(body) else {
        return false;
    };
    let Ok(response) = parse_credential::<PublicKeyCredential>(request.credential) else {
        return false;
    };
    // As passkeys::login does: the aggregate owns the counter.
    let mut credential = f.credential.clone();
    credential.counter = 0;
    queue_passkey::authenticate(&f.core, &response, &f.authentication, &credential).is_ok()
}

/// Applies one edit from `data` to `bytes`; returns whether it changed them.
fn edit(bytes: &mut Vec<u8>, data: &[u8]) -> bool {
    let before = bytes.clone();
    let (op, rest) = match data.split_first() {
        Some((op, rest)) => (*op, rest),
        None => return false,
    };
    let (at, patch) = match rest {
        [a, b, patch @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), patch),
        _ => (0, rest),
    };
    let at = at % (bytes.len() + 1);
    match op % 4 {
        0 => {
            for (i, b) in patch.iter().enumerate() {
                match bytes.get_mut(at + i) {
                    Some(slot) => *slot = *b,
                    None => bytes.push(*b),
                }
            }
        }
        1 => {
            let tail = bytes.split_off(at);
            bytes.extend_from_slice(patch);
            bytes.extend_from_slice(&tail);
        }
        2 => {
            bytes.truncate(at);
            bytes.extend_from_slice(patch);
        }
        _ => *bytes = patch.to_vec(),
    }
    *bytes != before
}

/// The genuine response with one binary field edited, sent as a body.
fn edited(genuine: &Value, field: &str, data: &[u8]) -> (Vec<u8>, bool) {
    let mut credential = genuine.clone();
    let slot = if field == "rawId" {
        &mut credential["rawId"]
    } else {
        &mut credential["response"][field]
    };
    let mut bytes = slot
        .as_str()
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .unwrap_or_default();
    let changed = edit(&mut bytes, data);
    *slot = Value::String(URL_SAFE_NO_PAD.encode(&bytes));
    let body = json!({"challenge_id": "fuzz", "credential": credential});
    (serde_json::to_vec(&body).unwrap_or_default(), changed)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((mode, data)) = data.split_first() else {
        return;
    };
    match mode % 10 {
        0 => {
            register_complete(data);
        }
        1 => {
            login_complete(data);
        }
        2..=4 => {
            let field =
                ["attestationObject", "clientDataJSON", "rawId"][usize::from(mode % 10 - 2)];
            // Attestation "none" (what register/begin asks for) signs
            // nothing: the server trusts the client's key, so an edit may
            // legitimately be accepted (a CBOR tag in front of the object, a
            // space in clientDataJSON). The property is only: no panic.
            let (body, _) = edited(&f.register_response, field, data);
            register_complete(&body);
        }
        5..=8 => {
            let field = [
                "authenticatorData",
                "clientDataJSON",
                "signature",
                "userHandle",
            ][usize::from(mode % 10 - 5)];
            let (body, changed) = edited(&f.login_response, field, data);
            let accepted = login_complete(&body);
            // The assertion signs authenticatorData and the hash of
            // clientDataJSON; the user handle is checked by the handler, not
            // here.
            if changed && field != "userHandle" {
                assert!(!accepted, "an edited {field} was accepted");
            }
        }
        _ => {
            // The CBOR parsers directly, on raw bytes.
            let _ = AttestationObject::<Registration>::try_from(data);
            let _ = AuthenticatorData::<Registration>::try_from(data);
            let _ = AuthenticatorData::<Authentication>::try_from(data);
        }
    }
});
