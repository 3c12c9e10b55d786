//! The HTTP-POST `SAMLResponse`: verified, then read only where signed.

use std::collections::HashSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use roxmltree::Node;
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode,
};

use crate::xml::{self, child, children, NS_DS, NS_SAML, NS_SAMLP};
use crate::{IdpMetadata, SamlError, SpConfig};

/// The most clock difference tolerated against the IdP, both ways.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// The largest decoded `SAMLResponse` accepted.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Signature methods accepted (and, with each, its digest). SHA-1 and DSA
/// are refused.
const ALLOWED_ALGORITHMS: [AllowedSignatureAlgorithm; 6] = [
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// Which attributes of the assertion carry what (a tenant's connection
/// settings). `None`: not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributeNames {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub groups: Option<String>,
}

/// Everything a response is checked against, supplied by the caller.
#[derive(Clone, Copy, Debug)]
pub struct ValidationContext<'a> {
    pub sp: &'a SpConfig,
    pub idp: &'a IdpMetadata,
    pub attributes: &'a AttributeNames,
    /// Whether a response answering no request of ours is accepted.
    pub allow_idp_initiated: bool,
    /// The ids of the caller's outstanding AuthnRequests for this browser
    /// (not yet used, not expired). A response naming another is refused.
    pub outstanding_request_ids: &'a [&'a str],
    pub now: DateTime<Utc>,
}

/// A verified login. The caller must, before trusting it:
/// record `assertion_id` in its replay cache until `replay_cache_until`
/// (a conflict is [`SamlError::AssertionReplayed`], see
/// [`crate::ReplayCache`]), and consume `in_response_to` from its
/// outstanding requests (single use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamlLogin {
    pub assertion_id: String,
    pub issuer: String,
    /// The NameID as a whole: every text node, never cut at a comment.
    pub name_id: String,
    pub name_id_format: Option<String>,
    /// The request this answers; `None` for an IdP-initiated login.
    pub in_response_to: Option<String>,
    pub session_index: Option<String>,
    /// When the IdP authenticated the user (`AuthnStatement/@AuthnInstant`,
    /// required by the schema): a step-up checks it is from after its
    /// ForceAuthn request.
    pub authn_instant: DateTime<Utc>,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub groups: Vec<String>,
    /// Until when this assertion could still be accepted (its latest
    /// `NotOnOrAfter` plus the skew): keep its id in the replay cache so long.
    pub replay_cache_until: DateTime<Utc>,
    /// Whether the signature covered the whole Response (else only the
    /// Assertion).
    pub response_signed: bool,
}

/// Validates the base64 `SAMLResponse` form field of the HTTP-POST binding.
pub fn validate_response(
    saml_response: &str,
    ctx: &ValidationContext<'_>,
) -> Result<SamlLogin, SamlError> {
    let compact: String = saml_response
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if compact.len() > MAX_RESPONSE_BYTES / 3 * 4 + 4 {
        return Err(SamlError::ResponseTooLarge(MAX_RESPONSE_BYTES));
    }
    let bytes = STANDARD
        .decode(compact)
        .map_err(|_| SamlError::ResponseMalformed("not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| SamlError::ResponseMalformed("not UTF-8"))?;
    validate_response_xml(&text, ctx)
}

/// Validates a decoded `samlp:Response` document.
pub fn validate_response_xml(
    response_xml: &str,
    ctx: &ValidationContext<'_>,
) -> Result<SamlLogin, SamlError> {
    if response_xml.len() > MAX_RESPONSE_BYTES {
        return Err(SamlError::ResponseTooLarge(MAX_RESPONSE_BYTES));
    }
    let raw = check_raw_document(response_xml, ctx.sp)?;

    // Verify every signature with the IdP's certificates and keep only what
    // they cover: everything below is read from `signed`, never `raw`.
    let certificates: Vec<CertificateDer> = ctx
        .idp
        .signing_certificates
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let signed_xml = Crypto::reduce_xml_to_signed_with_allowed_algorithms(
        response_xml,
        &certificates,
        ReduceMode::ValidateAndMarkNoAncestors,
        Some(&ALLOWED_ALGORITHMS),
    )
    .map_err(|_| SamlError::SignatureInvalid)?;
    let signed_doc = xml::parse(&signed_xml).map_err(|_| SamlError::SignatureInvalid)?;
    let signed_root = signed_doc.root_element();

    let (assertion, response_signed, response_in_response_to) =
        if xml::is(&signed_root, NS_SAMLP, "Response") {
            let mut assertions = children(signed_root, NS_SAML, "Assertion");
            let assertion = match (assertions.next(), assertions.next()) {
                (Some(assertion), None) => assertion,
                (None, _) => return Err(SamlError::SignatureInvalid),
                (Some(_), Some(_)) => return Err(SamlError::SignatureWrapping),
            };
            // A signed response must say where it is going.
            if signed_root.attribute("Destination") != Some(ctx.sp.acs_url.as_str()) {
                return Err(SamlError::DestinationMismatch);
            }
            if let Some(issuer) = child(signed_root, NS_SAML, "Issuer") {
                if xml::text(issuer) != ctx.idp.entity_id {
                    return Err(SamlError::IssuerMismatch);
                }
            }
            let in_response_to = signed_root.attribute("InResponseTo").map(str::to_owned);
            (assertion, true, in_response_to)
        } else if xml::is(&signed_root, NS_SAML, "Assertion") {
            // Only the assertion is signed; the envelope's InResponseTo may
            // only make us refuse, never accept.
            (signed_root, false, raw.in_response_to.clone())
        } else {
            return Err(SamlError::SignatureInvalid);
        };
    if assertion.attribute("ID") != Some(raw.assertion_id.as_str()) {
        return Err(SamlError::SignatureWrapping);
    }
    check_assertion(assertion, response_signed, response_in_response_to, ctx)
}

/// What the unsigned document may tell us: only reasons to refuse.
struct RawFacts {
    assertion_id: String,
    in_response_to: Option<String>,
}

fn check_raw_document(response_xml: &str, sp: &SpConfig) -> Result<RawFacts, SamlError> {
    let doc = xml::parse(response_xml)
        .map_err(|_| SamlError::ResponseMalformed("not well-formed XML without DTD"))?;
    if doc
        .descendants()
        .any(|node| node.is_comment() || node.is_pi())
    {
        return Err(SamlError::CommentInjection);
    }
    let root = doc.root_element();
    if !xml::is(&root, NS_SAMLP, "Response") {
        return Err(SamlError::ResponseMalformed("root must be samlp:Response"));
    }
    if root.attribute("Version") != Some("2.0") {
        return Err(SamlError::ResponseMalformed("Version must be 2.0"));
    }
    // Ids must be unique, or a signature reference could resolve to a
    // different element than the one we read.
    let mut ids = HashSet::new();
    for node in doc.descendants().filter(Node::is_element) {
        for attribute in node.attributes() {
            if matches!(attribute.name(), "ID" | "Id" | "id") && !ids.insert(attribute.value()) {
                return Err(SamlError::SignatureWrapping);
            }
        }
    }
    if doc
        .descendants()
        .any(|node| xml::is(&node, NS_SAML, "EncryptedAssertion"))
    {
        return Err(SamlError::EncryptedAssertionUnsupported);
    }
    let assertions: Vec<Node<'_, '_>> = doc
        .descendants()
        .filter(|node| xml::is(node, NS_SAML, "Assertion"))
        .collect();
    let assertion = match assertions.as_slice() {
        [] => return Err(SamlError::AssertionMissing),
        [assertion] => *assertion,
        _ => return Err(SamlError::SignatureWrapping),
    };
    // The one assertion must be a direct child of the Response (not inside
    // Extensions, a ds:Object or another element).
    if assertion.parent_element() != Some(root) {
        return Err(SamlError::SignatureWrapping);
    }
    let status = child(root, NS_SAMLP, "Status")
        .and_then(|status| child(status, NS_SAMLP, "StatusCode"))
        .and_then(|code| code.attribute("Value"));
    match status {
        Some(xml::STATUS_SUCCESS) => {}
        Some(_) => return Err(SamlError::StatusNotSuccess),
        None => return Err(SamlError::ResponseMalformed("no StatusCode")),
    }
    if let Some(destination) = root.attribute("Destination") {
        if destination != sp.acs_url {
            return Err(SamlError::DestinationMismatch);
        }
    }
    if !doc
        .descendants()
        .any(|node| xml::is(&node, NS_DS, "Signature"))
    {
        return Err(SamlError::Unsigned);
    }
    let assertion_id = assertion
        .attribute("ID")
        .filter(|id| !id.is_empty())
        .ok_or(SamlError::ResponseMalformed("assertion without ID"))?
        .to_owned();
    Ok(RawFacts {
        assertion_id,
        in_response_to: root.attribute("InResponseTo").map(str::to_owned),
    })
}

fn required_time(node: Node<'_, '_>, name: &str) -> Result<Option<DateTime<Utc>>, SamlError> {
    match node.attribute(name) {
        None => Ok(None),
        Some(value) => xml::time(value)
            .map(Some)
            .ok_or(SamlError::ResponseMalformed(
                "a time is not xs:dateTime with a zone",
            )),
    }
}

fn check_assertion(
    assertion: Node<'_, '_>,
    response_signed: bool,
    response_in_response_to: Option<String>,
    ctx: &ValidationContext<'_>,
) -> Result<SamlLogin, SamlError> {
    let skew = Duration::seconds(MAX_CLOCK_SKEW_SECS);
    let now = ctx.now;
    if assertion.attribute("Version") != Some("2.0") {
        return Err(SamlError::ResponseMalformed(
            "assertion Version must be 2.0",
        ));
    }
    let assertion_id = assertion
        .attribute("ID")
        .filter(|id| !id.is_empty())
        .ok_or(SamlError::ResponseMalformed("assertion without ID"))?
        .to_owned();
    let issuer = child(assertion, NS_SAML, "Issuer")
        .map(xml::text)
        .ok_or(SamlError::IssuerMismatch)?;
    if issuer != ctx.idp.entity_id {
        return Err(SamlError::IssuerMismatch);
    }
    let issued = required_time(assertion, "IssueInstant")?.ok_or(SamlError::ResponseMalformed(
        "assertion without IssueInstant",
    ))?;
    if issued > now + skew {
        return Err(SamlError::NotYetValid);
    }

    // Conditions: the time window and our audience.
    let conditions = child(assertion, NS_SAML, "Conditions").ok_or(SamlError::AudienceMismatch)?;
    if let Some(not_before) = required_time(conditions, "NotBefore")? {
        if now + skew < not_before {
            return Err(SamlError::NotYetValid);
        }
    }
    let conditions_until = required_time(conditions, "NotOnOrAfter")?;
    if let Some(until) = conditions_until {
        if now - skew >= until {
            return Err(SamlError::Expired);
        }
    }
    let restrictions: Vec<Node<'_, '_>> =
        children(conditions, NS_SAML, "AudienceRestriction").collect();
    let audience_ok = !restrictions.is_empty()
        && restrictions.iter().all(|restriction| {
            children(*restriction, NS_SAML, "Audience")
                .any(|audience| xml::text(audience) == ctx.sp.entity_id)
        });
    if !audience_ok {
        return Err(SamlError::AudienceMismatch);
    }

    // Subject: the NameID and a usable bearer confirmation.
    let subject = child(assertion, NS_SAML, "Subject").ok_or(SamlError::NameIdMissing)?;
    let name_id_node = child(subject, NS_SAML, "NameID").ok_or(SamlError::NameIdMissing)?;
    if name_id_node.children().any(|node| !node.is_text()) {
        return Err(SamlError::CommentInjection);
    }
    let name_id = xml::text(name_id_node);
    if name_id.is_empty() {
        return Err(SamlError::NameIdMissing);
    }
    let confirmation = bearer_confirmation(subject, ctx)?;

    // InResponseTo: signed in the confirmation data; the response's, when
    // present, must agree.
    let in_response_to = confirmation.in_response_to;
    if response_in_response_to.is_some() && response_in_response_to != in_response_to {
        return Err(SamlError::InResponseToMismatch);
    }
    match in_response_to.as_deref() {
        Some(id) => {
            if !ctx.outstanding_request_ids.contains(&id) {
                return Err(SamlError::InResponseToMismatch);
            }
        }
        None => {
            if !ctx.allow_idp_initiated {
                return Err(SamlError::IdpInitiatedNotAllowed);
            }
        }
    }

    let authn =
        child(assertion, NS_SAML, "AuthnStatement").ok_or(SamlError::AuthnStatementMissing)?;
    if let Some(session_until) = required_time(authn, "SessionNotOnOrAfter")? {
        if now - skew >= session_until {
            return Err(SamlError::Expired);
        }
    }
    let session_index = authn.attribute("SessionIndex").map(str::to_owned);
    let authn_instant =
        required_time(authn, "AuthnInstant")?.ok_or(SamlError::AuthnStatementMissing)?;

    let values = |name: &Option<String>| -> Vec<String> {
        let Some(name) = name else {
            return Vec::new();
        };
        children(assertion, NS_SAML, "AttributeStatement")
            .flat_map(|statement| children(statement, NS_SAML, "Attribute"))
            .filter(|attribute| attribute.attribute("Name") == Some(name.as_str()))
            .flat_map(|attribute| children(attribute, NS_SAML, "AttributeValue"))
            .map(xml::text)
            .filter(|value| !value.is_empty())
            .collect()
    };
    let email = values(&ctx.attributes.email).into_iter().next();
    let display_name = values(&ctx.attributes.display_name).into_iter().next();
    let mut groups = values(&ctx.attributes.groups);
    groups.sort();
    groups.dedup();

    let latest = [conditions_until, Some(confirmation.not_on_or_after)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(confirmation.not_on_or_after);
    Ok(SamlLogin {
        assertion_id,
        issuer,
        name_id,
        name_id_format: name_id_node.attribute("Format").map(str::to_owned),
        in_response_to,
        session_index,
        authn_instant,
        email,
        display_name,
        groups,
        replay_cache_until: latest + skew,
        response_signed,
    })
}

struct Confirmation {
    not_on_or_after: DateTime<Utc>,
    in_response_to: Option<String>,
}

/// The first bearer `SubjectConfirmation` whose data is complete and right
/// for us; else the most telling refusal among them.
fn bearer_confirmation(
    subject: Node<'_, '_>,
    ctx: &ValidationContext<'_>,
) -> Result<Confirmation, SamlError> {
    let skew = Duration::seconds(MAX_CLOCK_SKEW_SECS);
    let mut first_error = None;
    let bearers = children(subject, NS_SAML, "SubjectConfirmation")
        .filter(|confirmation| confirmation.attribute("Method") == Some(xml::CONFIRMATION_BEARER));
    for bearer in bearers {
        let outcome = (|| {
            let data = child(bearer, NS_SAML, "SubjectConfirmationData")
                .ok_or(SamlError::SubjectConfirmationInvalid)?;
            let until = required_time(data, "NotOnOrAfter")?
                .ok_or(SamlError::SubjectConfirmationInvalid)?;
            if ctx.now - skew >= until {
                return Err(SamlError::Expired);
            }
            if let Some(not_before) = required_time(data, "NotBefore")? {
                if ctx.now + skew < not_before {
                    return Err(SamlError::NotYetValid);
                }
            }
            if data.attribute("Recipient") != Some(ctx.sp.acs_url.as_str()) {
                return Err(SamlError::RecipientMismatch);
            }
            Ok(Confirmation {
                not_on_or_after: until,
                in_response_to: data.attribute("InResponseTo").map(str::to_owned),
            })
        })();
        match outcome {
            Ok(confirmation) => return Ok(confirmation),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or(SamlError::SubjectConfirmationInvalid))
}
