//! SP-initiated login: the AuthnRequest for the HTTP-Redirect binding.

use std::io::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use flate2::write::DeflateEncoder;
use flate2::Compression;
use url::Url;

use crate::xml::{self, NS_SAML, NS_SAMLP};
use crate::{IdpMetadata, SamlError, SpConfig};

/// The most RelayState bytes the SAML bindings allow.
pub const MAX_RELAY_STATE_BYTES: usize = 80;

/// A request id from 20 random bytes the caller drew: `_` and 40 hex digits
/// (an XML NCName, as `ID` attributes must be).
pub fn request_id_from_random(random: [u8; 20]) -> String {
    let mut id = String::with_capacity(41);
    id.push('_');
    for byte in random {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// An AuthnRequest ready to send: redirect the browser to `url`. The caller
/// keeps `request_id` as a single-use outstanding request (like a WebAuthn
/// challenge) and passes it to [`crate::ValidationContext`] when the
/// response comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectRequest {
    pub request_id: String,
    /// The IdP's SSO URL with `SAMLRequest` (and `RelayState`) added.
    pub url: String,
    /// The AuthnRequest XML before encoding, for the audit trail and tests.
    pub xml: String,
}

/// Builds the AuthnRequest for `idp`, issued at `issue_instant` with id
/// `request_id` (see [`request_id_from_random`]), and encodes it for the
/// HTTP-Redirect binding: raw DEFLATE, base64, URL parameter. Unsigned:
/// the SP metadata says `AuthnRequestsSigned="false"`. `force_authn` asks
/// the IdP to authenticate the user anew rather than answer from its own
/// session (`ForceAuthn="true"`, a step-up); whether it did is read from
/// the assertion's `AuthnInstant` ([`crate::SamlLogin::authn_instant`]).
pub fn authn_request_redirect(
    sp: &SpConfig,
    idp: &IdpMetadata,
    request_id: &str,
    issue_instant: DateTime<Utc>,
    relay_state: Option<&str>,
    force_authn: bool,
) -> Result<RedirectRequest, SamlError> {
    check_request_id(request_id)?;
    if relay_state.is_some_and(|state| state.len() > MAX_RELAY_STATE_BYTES) {
        return Err(SamlError::RelayStateTooLong);
    }
    let xml = format!(
        concat!(
            "<samlp:AuthnRequest xmlns:samlp=\"{samlp}\" xmlns:saml=\"{saml}\" ID=\"{id}\" ",
            "Version=\"2.0\" IssueInstant=\"{instant}\" Destination=\"{destination}\" ",
            "ProtocolBinding=\"{post}\" AssertionConsumerServiceURL=\"{acs}\"{force}>",
            "<saml:Issuer>{issuer}</saml:Issuer>",
            "<samlp:NameIDPolicy AllowCreate=\"true\"/>",
            "</samlp:AuthnRequest>"
        ),
        samlp = NS_SAMLP,
        saml = NS_SAML,
        id = request_id,
        instant = issue_instant.to_rfc3339_opts(SecondsFormat::Secs, true),
        destination = xml::escape(&idp.sso_redirect_url),
        post = xml::BINDING_HTTP_POST,
        acs = xml::escape(&sp.acs_url),
        issuer = xml::escape(&sp.entity_id),
        force = if force_authn {
            " ForceAuthn=\"true\""
        } else {
            ""
        },
    );
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(xml.as_bytes())
        .and_then(|()| encoder.finish())
        .map(|deflated| STANDARD.encode(deflated))
        .map_err(|_| SamlError::InvalidSpConfig("could not deflate the AuthnRequest"))
        .and_then(|encoded| {
            let mut url = Url::parse(&idp.sso_redirect_url)
                .map_err(|_| SamlError::InvalidIdpMetadata("SSO URL"))?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("SAMLRequest", &encoded);
                if let Some(state) = relay_state {
                    query.append_pair("RelayState", state);
                }
            }
            Ok(RedirectRequest {
                request_id: request_id.to_owned(),
                url: url.into(),
                xml,
            })
        })
}

fn check_request_id(id: &str) -> Result<(), SamlError> {
    let mut chars = id.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
    if !starts_well {
        return Err(SamlError::InvalidRequestId(
            "must start with a letter or underscore",
        ));
    }
    if id.len() < 17 || id.len() > 128 {
        return Err(SamlError::InvalidRequestId(
            "must be 17 to 128 characters (at least 128 bits of randomness)",
        ));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(SamlError::InvalidRequestId(
            "only letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(())
}
