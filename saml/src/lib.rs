#![forbid(unsafe_code)]
//! Queue as a SAML 2.0 service provider: one SP per tenant.
//!
//! Pure where it can be: the clock, request ids and randomness come from the
//! caller, and nothing here does IO. XML signatures are verified by xmlsec
//! (libxmlsec1) through `samael`, which also reduces the document to what
//! the verified signatures cover; every field is read from that reduced
//! document (signature-wrapping defence). See
//! `docs/decisions/0216-saml-service-provider.md` for the checks and why.
//!
//! - [`IdpMetadata::parse`]: entityID, HTTP-Redirect SSO URL, signing certificates.
//! - [`SpConfig::metadata_xml`]: our metadata for the IdP.
//! - [`authn_request_redirect`]: an SP-initiated login.
//! - [`validate_response`]: the HTTP-POST response, checked as the OWASP
//!   SAML cheat sheet asks; refusals are [`SamlError`] with stable codes.

mod error;
mod metadata;
mod replay;
mod request;
mod response;
mod xml;

pub use error::SamlError;
pub use metadata::{IdpMetadata, SpConfig, MAX_METADATA_BYTES};
pub use replay::ReplayCache;
pub use request::{
    authn_request_redirect, request_id_from_random, RedirectRequest, MAX_RELAY_STATE_BYTES,
};
pub use response::{
    validate_response, validate_response_xml, AttributeNames, SamlLogin, ValidationContext,
    MAX_CLOCK_SKEW_SECS, MAX_RESPONSE_BYTES,
};
pub use xml::NAME_ID_FORMATS;
