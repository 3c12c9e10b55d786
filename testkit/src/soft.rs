//! A test-only software authenticator for every COSE algorithm Queue
//! accepts (webauthn-authenticator-rs's `SoftPasskey` does ES256 only). It
//! plays authenticator and browser: builds clientDataJSON, authenticatorData
//! and the attestation object (CBOR) by hand, as the WebAuthn spec lays them
//! out, and signs with ed25519-dalek, or with p256 / p384 / rsa through
//! crypto-glue (the RustCrypto facade webauthn-rs-core itself uses). Its
//! [`Tamper`] knobs make the wrong answers the negative tests need.
//!
//! The API and backfill tests use it (the backfill for legacy keys).
//!
//! Fixtures (`fixtures/`, made once with openssl): `attestation-p256.pk8` and
//! `attestation-p256.der`, a P-256 attestation key and its self-signed
//! certificate meeting the packed-attestation requirements (C, O,
//! OU=Authenticator Attestation, CN; CA:FALSE); `rs256-2048.pk8`, an RSA
//! 2048 key (generating one per test is slow in debug builds).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crypto_glue::ecdsa_p256::{EcdsaP256DerSignature, EcdsaP256SigningKey};
use crypto_glue::ecdsa_p384::{EcdsaP384DerSignature, EcdsaP384SigningKey};
use crypto_glue::rsa::{RS256PrivateKey, RS256Signature, RS256SigningKey};
use crypto_glue::traits::{Generate, Pkcs8DecodePrivateKey, PublicKeyParts, SignatureEncoding};
use serde_cbor_2::Value as Cbor;
use serde_json::{json, Value};
use webauthn_rs_core::crypto::compute_sha256;

const ATTESTATION_KEY: &[u8] = include_bytes!("../fixtures/attestation-p256.pk8");
const ATTESTATION_CERT: &[u8] = include_bytes!("../fixtures/attestation-p256.der");
const RSA_KEY: &[u8] = include_bytes!("../fixtures/rs256-2048.pk8");

/// The authenticator's AAGUID (packed formats report it).
pub const AAGUID: [u8; 16] = *b"queue-soft-authn";

/// authenticatorData flags.
pub const UP: u8 = 0x01;
pub const UV: u8 = 0x04;
pub const BE: u8 = 0x08;
pub const BS: u8 = 0x10;
pub const AT: u8 = 0x40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Es256,
    EdDsa,
    Es384,
    Rs256,
}

impl Alg {
    pub const ALL: [Alg; 4] = [Alg::Es256, Alg::EdDsa, Alg::Es384, Alg::Rs256];

    /// The COSE algorithm identifier.
    pub fn id(self) -> i128 {
        match self {
            Alg::Es256 => -7,
            Alg::EdDsa => -8,
            Alg::Es384 => -35,
            Alg::Rs256 => -257,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    None,
    PackedSelf,
    PackedX5c,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::None, Format::PackedSelf, Format::PackedX5c];
}

/// Wrong answers for negative tests; the default is a correct authenticator.
#[derive(Clone, Debug, Default)]
pub struct Tamper {
    /// Hash this RP id instead of the one asked for.
    pub rp_id: Option<String>,
    /// This flags byte instead of UP | UV (| AT at registration).
    pub flags: Option<u8>,
    /// This sign counter instead of the next one.
    pub counter: Option<u32>,
    /// Claim a cross-origin iframe in the client data.
    pub cross_origin: bool,
    /// Flip one bit of the signature (assertion or attestation statement).
    pub bad_signature: bool,
    /// Register this credential id instead of a new random one.
    pub credential_id: Option<Vec<u8>>,
}

impl Tamper {
    /// The wrong assertions every algorithm must refuse at login, named.
    pub fn wrong_assertions() -> [(&'static str, Tamper); 5] {
        [
            (
                "wrong signature",
                Tamper {
                    bad_signature: true,
                    ..Tamper::default()
                },
            ),
            (
                "wrong rpId hash",
                Tamper {
                    rp_id: Some("evil.example".into()),
                    ..Tamper::default()
                },
            ),
            (
                "UP missing",
                Tamper {
                    flags: Some(UV),
                    ..Tamper::default()
                },
            ),
            (
                "UV missing",
                Tamper {
                    flags: Some(UP),
                    ..Tamper::default()
                },
            ),
            (
                "crossOrigin true",
                Tamper {
                    cross_origin: true,
                    ..Tamper::default()
                },
            ),
        ]
    }
}

enum Key {
    Ed25519(ed25519_dalek::SigningKey),
    P256(EcdsaP256SigningKey),
    P384(EcdsaP384SigningKey),
    Rsa(Box<RS256SigningKey>, Vec<u8>, Vec<u8>),
}

impl Key {
    fn new(alg: Alg) -> Self {
        match alg {
            Alg::EdDsa => Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&rand::random())),
            Alg::Es256 => Key::P256(EcdsaP256SigningKey::generate()),
            Alg::Es384 => Key::P384(EcdsaP384SigningKey::generate()),
            Alg::Rs256 => {
                let private = RS256PrivateKey::from_pkcs8_der(RSA_KEY).unwrap();
                let n = private.n_bytes().to_vec();
                let e = private.e_bytes().to_vec();
                Key::Rsa(Box::new(RS256SigningKey::new(private)), n, e)
            }
        }
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        match self {
            Key::Ed25519(k) => ed25519_dalek::Signer::sign(k, data).to_bytes().to_vec(),
            Key::P256(k) => {
                let sig: EcdsaP256DerSignature = crypto_glue::traits::Signer::sign(k, data);
                sig.to_vec()
            }
            Key::P384(k) => {
                let sig: EcdsaP384DerSignature = crypto_glue::traits::Signer::sign(k, data);
                sig.to_vec()
            }
            Key::Rsa(k, _, _) => {
                let sig: RS256Signature = crypto_glue::traits::Signer::sign(k.as_ref(), data);
                sig.to_vec()
            }
        }
    }

    /// The COSE_Key (RFC 9053) of the public key.
    fn cose(&self) -> Vec<u8> {
        let entries: Vec<(i128, Cbor)> = match self {
            Key::Ed25519(k) => vec![
                (1, Cbor::Integer(1)),
                (3, Cbor::Integer(-8)),
                (-1, Cbor::Integer(6)),
                (-2, Cbor::Bytes(k.verifying_key().to_bytes().to_vec())),
            ],
            Key::P256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                vec![
                    (1, Cbor::Integer(2)),
                    (3, Cbor::Integer(-7)),
                    (-1, Cbor::Integer(1)),
                    (-2, Cbor::Bytes(point.x().unwrap().to_vec())),
                    (-3, Cbor::Bytes(point.y().unwrap().to_vec())),
                ]
            }
            Key::P384(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                vec![
                    (1, Cbor::Integer(2)),
                    (3, Cbor::Integer(-35)),
                    (-1, Cbor::Integer(2)),
                    (-2, Cbor::Bytes(point.x().unwrap().to_vec())),
                    (-3, Cbor::Bytes(point.y().unwrap().to_vec())),
                ]
            }
            Key::Rsa(_, n, e) => vec![
                (1, Cbor::Integer(3)),
                (3, Cbor::Integer(-257)),
                (-1, Cbor::Bytes(n.clone())),
                (-2, Cbor::Bytes(e.clone())),
            ],
        };
        let map = entries
            .into_iter()
            .map(|(k, v)| (Cbor::Integer(k), v))
            .collect();
        serde_cbor_2::to_vec(&Cbor::Map(map)).unwrap()
    }
}

pub struct SoftCredential {
    pub id: Vec<u8>,
    key: Key,
    pub user_handle: Vec<u8>,
    pub counter: u32,
}

/// One authenticator of one algorithm and attestation format.
pub struct SoftAuthenticator {
    pub alg: Alg,
    pub format: Format,
    pub rp_id: String,
    pub origin: String,
    /// A synced passkey: backup eligible and backed up (BE | BS) in every
    /// answer.
    pub synced: bool,
    pub credentials: Vec<SoftCredential>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(value.as_str().unwrap().trim_end_matches('='))
        .unwrap()
}

impl SoftAuthenticator {
    pub fn new(alg: Alg, format: Format, rp_id: &str, origin: &str) -> Self {
        Self {
            alg,
            format,
            rp_id: rp_id.to_owned(),
            origin: origin.to_owned(),
            synced: false,
            credentials: Vec::new(),
        }
    }

    fn client_data(&self, kind: &str, challenge: &Value, tamper: &Tamper) -> Vec<u8> {
        json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": tamper.cross_origin,
        })
        .to_string()
        .into_bytes()
    }

    fn backup_flags(&self) -> u8 {
        if self.synced {
            BE | BS
        } else {
            0
        }
    }

    fn rp_hash(&self, tamper: &Tamper) -> [u8; 32] {
        compute_sha256(tamper.rp_id.as_deref().unwrap_or(&self.rp_id).as_bytes())
    }

    /// `navigator.credentials.create()`: RegistrationResponseJSON.
    pub fn create(&mut self, options: &Value) -> Value {
        self.create_with(options, &Tamper::default())
    }

    pub fn create_with(&mut self, options: &Value, tamper: &Tamper) -> Value {
        let public_key = &options["publicKey"];
        assert!(
            public_key["pubKeyCredParams"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["alg"].as_i64() == Some(self.alg.id() as i64)),
            "{:?} is not offered: {public_key}",
            self.alg
        );
        assert_eq!(public_key["rp"]["id"], self.rp_id.as_str());
        let key = Key::new(self.alg);
        let id: Vec<u8> = tamper
            .credential_id
            .clone()
            .unwrap_or_else(|| rand::random::<[u8; 24]>().to_vec());
        let user_handle = unb64(&public_key["user"]["id"]);
        let client_data = self.client_data("webauthn.create", &public_key["challenge"], tamper);

        let counter = tamper.counter.unwrap_or(0);
        let mut auth_data = self.rp_hash(tamper).to_vec();
        auth_data.push(tamper.flags.unwrap_or(UP | UV | AT | self.backup_flags()));
        auth_data.extend_from_slice(&counter.to_be_bytes());
        auth_data.extend_from_slice(&AAGUID);
        auth_data.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
        auth_data.extend_from_slice(&id);
        auth_data.extend_from_slice(&key.cose());

        let mut signed = auth_data.clone();
        signed.extend_from_slice(&compute_sha256(&client_data));
        let flip = |mut sig: Vec<u8>| {
            if tamper.bad_signature {
                let last = sig.len() - 1;
                sig[last] ^= 1;
            }
            sig
        };
        let text = |s: &str| Cbor::Text(s.to_owned());
        let (fmt, statement) = match self.format {
            Format::None => ("none", vec![]),
            Format::PackedSelf => (
                "packed",
                vec![
                    (text("alg"), Cbor::Integer(self.alg.id())),
                    (text("sig"), Cbor::Bytes(flip(key.sign(&signed)))),
                ],
            ),
            Format::PackedX5c => {
                let attestation = EcdsaP256SigningKey::from_pkcs8_der(ATTESTATION_KEY).unwrap();
                let sig: EcdsaP256DerSignature =
                    crypto_glue::traits::Signer::sign(&attestation, &signed);
                (
                    "packed",
                    vec![
                        (text("alg"), Cbor::Integer(-7)),
                        (text("sig"), Cbor::Bytes(flip(sig.to_vec()))),
                        (
                            text("x5c"),
                            Cbor::Array(vec![Cbor::Bytes(ATTESTATION_CERT.to_vec())]),
                        ),
                    ],
                )
            }
        };
        let object = Cbor::Map(
            [
                (text("fmt"), text(fmt)),
                (text("attStmt"), Cbor::Map(statement.into_iter().collect())),
                (text("authData"), Cbor::Bytes(auth_data)),
            ]
            .into_iter()
            .collect(),
        );
        let attestation_object = serde_cbor_2::to_vec(&object).unwrap();
        self.credentials.push(SoftCredential {
            id: id.clone(),
            key,
            user_handle,
            counter,
        });
        json!({
            "id": b64(&id),
            "rawId": b64(&id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "attestationObject": b64(&attestation_object),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
        })
    }

    #[allow(dead_code, reason = "the backfill tests use it")]
    /// A passkey made outside any Queue ceremony (at the legacy service):
    /// its raw id and the COSE_Key bytes py-webauthn stored for it.
    pub fn legacy_key(&mut self, user_handle: &[u8], counter: u32) -> (Vec<u8>, Vec<u8>) {
        let key = Key::new(self.alg);
        let id: Vec<u8> = rand::random::<[u8; 24]>().to_vec();
        let cose = key.cose();
        self.credentials.push(SoftCredential {
            id: id.clone(),
            key,
            user_handle: user_handle.to_vec(),
            counter,
        });
        (id, cose)
    }

    /// `navigator.credentials.get()`: AuthenticationResponseJSON.
    #[allow(
        dead_code,
        reason = "not every test binary that includes this file uses it"
    )]
    pub fn get(&mut self, options: &Value) -> Value {
        self.get_with(options, &Tamper::default())
    }

    pub fn get_with(&mut self, options: &Value, tamper: &Tamper) -> Value {
        let public_key = &options["publicKey"];
        let allowed: Vec<Vec<u8>> = public_key["allowCredentials"]
            .as_array()
            .map(|list| list.iter().map(|c| unb64(&c["id"])).collect())
            .unwrap_or_default();
        let client_data = self.client_data("webauthn.get", &public_key["challenge"], tamper);
        let rp_hash = self.rp_hash(tamper);
        let backup_flags = self.backup_flags();
        let credential = self
            .credentials
            .iter_mut()
            .find(|c| allowed.is_empty() || allowed.contains(&c.id))
            .expect("no credential for these options");
        credential.counter += 1;
        let counter = tamper.counter.unwrap_or(credential.counter);
        let mut auth_data = rp_hash.to_vec();
        auth_data.push(tamper.flags.unwrap_or(UP | UV | backup_flags));
        auth_data.extend_from_slice(&counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&compute_sha256(&client_data));
        let mut signature = credential.key.sign(&signed);
        if tamper.bad_signature {
            let last = signature.len() - 1;
            signature[last] ^= 1;
        }
        json!({
            "id": b64(&credential.id),
            "rawId": b64(&credential.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "authenticatorData": b64(&auth_data),
                "signature": b64(&signature),
                "userHandle": b64(&credential.user_handle),
            },
            "clientExtensionResults": {},
        })
    }
}
