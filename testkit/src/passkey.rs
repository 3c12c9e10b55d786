//! A software passkey (webauthn-authenticator-rs `SoftPasskey`, ES256) that
//! plays the authenticator and the browser. For other algorithms and
//! attestation formats see [`crate::soft`].

use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_proto::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse,
};

use crate::app::ORIGIN;

/// A software passkey that plays the authenticator and the browser.
pub struct Passkey {
    pub soft: SoftPasskey,
    pub origin: Url,
    /// The user handle of the registered credential (for discoverable logins).
    pub user_handle: Option<Vec<u8>>,
    /// The credential ids it holds (base64url).
    pub credential_ids: Vec<String>,
}

impl Default for Passkey {
    fn default() -> Self {
        Self::new()
    }
}

impl Passkey {
    pub fn new() -> Self {
        Self {
            soft: SoftPasskey::new(true),
            origin: Url::parse(ORIGIN).unwrap(),
            user_handle: None,
            credential_ids: Vec::new(),
        }
    }

    /// `navigator.credentials.create()`: returns RegistrationResponseJSON.
    pub fn create(&mut self, options: &Value) -> Value {
        let mut ccr: CreationChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        // The server demands a discoverable credential; SoftPasskey cannot
        // store one and refuses the flag, so the test "browser" clears it
        // (the server cannot observe resident-key storage anyway).
        if let Some(selection) = ccr.public_key.authenticator_selection.as_mut() {
            selection.require_resident_key = false;
            selection.resident_key = None;
        }
        self.user_handle = Some(ccr.public_key.user.id.to_vec());
        let response: RegisterPublicKeyCredential =
            self.soft.do_registration(self.origin.clone(), ccr).unwrap();
        let value = serde_json::to_value(&response).unwrap();
        self.credential_ids
            .push(value["rawId"].as_str().unwrap().to_owned());
        value
    }

    /// `navigator.credentials.get()`: returns AuthenticationResponseJSON.
    pub fn get(&mut self, options: &Value) -> Value {
        let response = self.assert(options);
        serde_json::to_value(&response).unwrap()
    }

    pub fn assert(&mut self, options: &Value) -> PublicKeyCredential {
        let mut rcr: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        if rcr.public_key.allow_credentials.is_empty() {
            // Discoverable login: the authenticator finds its own credential
            // and returns the user handle stored with it.
            rcr.public_key.allow_credentials = self
                .credential_ids
                .iter()
                .map(|id| serde_json::from_value(json!({"type": "public-key", "id": id})).unwrap())
                .collect();
            let mut response = self
                .soft
                .do_authentication(self.origin.clone(), rcr)
                .unwrap();
            response.response.user_handle = self.user_handle.clone();
            return response;
        }
        let mut response = self
            .soft
            .do_authentication(self.origin.clone(), rcr)
            .unwrap();
        response.response.user_handle = self.user_handle.clone();
        response
    }
}
