//! The one error type of this crate. The API answers every one of them with
//! 401 `webauthn_failed`; the backfill reports the COSE ones as row
//! rejections.

use webauthn_rs_core::error::WebauthnError;

#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// Refused by webauthn-rs-core (client data, authenticator data,
    /// attestation or signature).
    #[error("webauthn: {0}")]
    Webauthn(#[from] WebauthnError),
    /// Bytes that are not the CBOR they should be.
    #[error("not a CBOR value: {0}")]
    Cbor(String),
    /// A COSE key of an accepted algorithm that is not well formed.
    #[error("not a usable COSE key: {0}")]
    Key(String),
    /// A well-formed COSE key of an algorithm Queue does not accept.
    #[error("unsupported COSE key: {0}")]
    Unsupported(String),
    /// An attestation statement Queue does not accept, or whose signature
    /// does not verify.
    #[error("attestation refused: {0}")]
    Attestation(&'static str),
    /// An Ed25519 assertion or self-attestation signature that does not verify.
    #[error("signature does not verify")]
    Signature,
    /// The client says the ceremony ran in a cross-origin iframe.
    #[error("cross-origin ceremony")]
    CrossOrigin,
    /// The sign counter did not increase (only when the stored counter is
    /// not zero; Queue's API passes zero and lets the aggregate decide).
    #[error("sign counter did not increase")]
    Counter,
}
