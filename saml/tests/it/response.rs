//! Responses from the real IdP: the good ones are accepted, every attack is
//! refused with its own code.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use queue_saml::{ReplayCache, SamlError};

use crate::idp::{issue, other_sp, sp, Ask, Issued, Setup, IDP_ENTITY_ID};

const RID: &str = "_0123456789abcdef0123456789abcdef01234567";

fn one(ask: Ask) -> (Issued, String) {
    let mut issued = issue(&[ask]);
    let response = issued.responses.remove(0);
    (issued, response)
}

fn refused(setup: &Setup, xml: &str, expected: SamlError) {
    let error = setup.validate(xml).unwrap_err();
    assert_eq!(error, expected);
    assert_eq!(error.code(), expected.code());
}

/// The assertion's IssueInstant (the IdP's clock, whole seconds).
fn issue_instant(xml: &str) -> DateTime<Utc> {
    let start = xml.find("<ns1:Assertion").unwrap();
    let rest = &xml[start..];
    let at = rest.find("IssueInstant=\"").unwrap() + "IssueInstant=\"".len();
    let end = rest[at..].find('"').unwrap();
    DateTime::parse_from_rfc3339(&rest[at..at + end])
        .unwrap()
        .with_timezone(&Utc)
}

/// The signed `<ns1:Assertion ...>...</ns1:Assertion>` of a response.
fn assertion_of(xml: &str) -> &str {
    let start = xml.find("<ns1:Assertion").unwrap();
    let end = xml.find("</ns1:Assertion>").unwrap() + "</ns1:Assertion>".len();
    &xml[start..end]
}

/// An attacker's assertion: the signed one with its signature cut out, a
/// new id and another NameID.
fn evil_assertion(xml: &str, id: &str) -> String {
    let assertion = assertion_of(xml);
    let sig_start = assertion.find("<ns2:Signature").unwrap();
    let sig_end = assertion.find("</ns2:Signature>").unwrap() + "</ns2:Signature>".len();
    let unsigned = format!("{}{}", &assertion[..sig_start], &assertion[sig_end..]);
    let old_id = {
        let at = unsigned.find(" ID=\"").unwrap() + 5;
        let end = unsigned[at..].find('"').unwrap();
        unsigned[at..at + end].to_owned()
    };
    unsigned
        .replacen(&format!("ID=\"{old_id}\""), &format!("ID=\"{id}\""), 1)
        .replace("ann@example.com", "admin@example.com")
}

#[test]
fn a_signed_assertion_answering_our_request_is_accepted() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let setup = Setup::new(&issued, &[RID]);
    let login = setup.validate(&xml).unwrap();
    assert_eq!(login.name_id, "ann@example.com");
    assert_eq!(
        login.name_id_format.as_deref(),
        Some("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress")
    );
    assert_eq!(login.issuer, IDP_ENTITY_ID);
    assert_eq!(login.in_response_to.as_deref(), Some(RID));
    assert_eq!(login.email.as_deref(), Some("ann@example.com"));
    assert_eq!(login.display_name.as_deref(), Some("Ann Example"));
    assert_eq!(login.groups, vec!["eng".to_owned(), "ops".to_owned()]);
    assert!(login.assertion_id.starts_with("id-"));
    assert!(login.session_index.is_some());
    assert!(!login.response_signed);
    // Kept for the assertion's lifetime (5 minutes at this IdP) plus skew.
    let issued_at = issue_instant(&xml);
    assert_eq!(
        login.replay_cache_until,
        issued_at + Duration::minutes(5) + Duration::seconds(60)
    );
}

#[test]
fn a_signed_response_is_accepted_with_or_without_a_signed_assertion() {
    let mut response_only = Ask::login(Some(RID));
    response_only.sign_response = true;
    response_only.sign_assertion = false;
    let mut both = response_only.clone();
    both.sign_assertion = true;
    let issued = issue(&[response_only, both]);
    let setup = Setup::new(&issued, &[RID]);
    for xml in &issued.responses {
        let login = setup.validate(xml).unwrap();
        assert!(login.response_signed);
        assert_eq!(login.name_id, "ann@example.com");
        assert_eq!(login.groups, vec!["eng".to_owned(), "ops".to_owned()]);
    }
}

#[test]
fn an_unsigned_response_is_refused() {
    let mut ask = Ask::login(Some(RID));
    ask.sign_assertion = false;
    let (issued, xml) = one(ask);
    refused(&Setup::new(&issued, &[RID]), &xml, SamlError::Unsigned);
}

#[test]
fn a_response_signed_by_another_key_is_refused() {
    let mut ask = Ask::login(Some(RID));
    ask.key = "other";
    let mut both = ask.clone();
    both.sign_response = true;
    let issued = issue(&[ask, both]);
    let setup = Setup::new(&issued, &[RID]);
    for xml in &issued.responses {
        refused(&setup, xml, SamlError::SignatureInvalid);
    }
}

#[test]
fn a_tampered_signed_assertion_is_refused() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let tampered = xml.replacen(
        ">ann@example.com</ns1:NameID>",
        ">admin@example.com</ns1:NameID>",
        1,
    );
    assert_ne!(tampered, xml);
    refused(
        &Setup::new(&issued, &[RID]),
        &tampered,
        SamlError::SignatureInvalid,
    );
}

#[test]
fn signature_wrapping_variants_are_refused() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let setup = Setup::new(&issued, &[RID]);
    let signed = assertion_of(&xml).to_owned();
    let evil = evil_assertion(&xml, "id-evil");

    // 1. An unsigned sibling assertion before the signed one.
    let sibling = xml.replacen(&signed, &format!("{evil}{signed}"), 1);
    // 2. The signed assertion hidden in Extensions, the evil one in its place.
    let extensions = xml.replacen(&signed, &evil, 1).replacen(
        "<ns0:Status>",
        &format!("<ns0:Extensions>{signed}</ns0:Extensions><ns0:Status>"),
        1,
    );
    // 3. The evil assertion inside a ds:Object of the signed one's signature.
    let object = xml.replacen(
        "</ns2:KeyInfo></ns2:Signature><ns1:Subject>",
        &format!("</ns2:KeyInfo><ns2:Object>{evil}</ns2:Object></ns2:Signature><ns1:Subject>"),
        1,
    );
    // 4. A sibling reusing the signed assertion's ID.
    let signed_id = {
        let at = signed.find(" ID=\"").unwrap() + 5;
        let end = signed[at..].find('"').unwrap();
        signed[at..at + end].to_owned()
    };
    let same_id = xml.replacen(
        &signed,
        &format!("{signed}{}", evil_assertion(&xml, &signed_id)),
        1,
    );
    // 5. The only assertion moved out of place (into Extensions).
    let moved = xml.replacen(&signed, "", 1).replacen(
        "<ns0:Status>",
        &format!("<ns0:Extensions>{signed}</ns0:Extensions><ns0:Status>"),
        1,
    );
    for (name, attack) in [
        ("sibling", sibling),
        ("extensions", extensions),
        ("object", object),
        ("same id", same_id),
        ("moved", moved),
    ] {
        assert_ne!(attack, xml, "{name}: the attack changed nothing");
        let error = setup.validate(&attack).unwrap_err();
        assert_eq!(error, SamlError::SignatureWrapping, "{name}");
        assert_eq!(error.code(), "saml_signature_wrapping", "{name}");
    }
}

#[test]
fn a_comment_injected_name_id_is_refused() {
    // The IdP vouches for ann@example.com.evil.test; a comment after
    // "ann@example.com" keeps the signature valid (exclusive c14n drops
    // comments) but a parser reading the first text node would see
    // ann@example.com.
    let mut ask = Ask::login(Some(RID));
    ask.name_id = "ann@example.com.evil.test".to_owned();
    let (issued, xml) = one(ask);
    let setup = Setup::new(&issued, &[RID]);
    assert_eq!(
        setup.validate(&xml).unwrap().name_id,
        "ann@example.com.evil.test"
    );
    let injected = xml.replacen(
        ">ann@example.com.evil.test</ns1:NameID>",
        ">ann@example.com<!---->.evil.test</ns1:NameID>",
        1,
    );
    assert_ne!(injected, xml);
    refused(&setup, &injected, SamlError::CommentInjection);
}

#[test]
fn an_assertion_for_another_audience_is_refused() {
    let mut ask = Ask::login(Some(RID));
    ask.sp_entity_id = other_sp().entity_id;
    let (issued, xml) = one(ask);
    assert!(xml.contains(&sp().acs_url));
    refused(
        &Setup::new(&issued, &[RID]),
        &xml,
        SamlError::AudienceMismatch,
    );
}

#[test]
fn a_response_for_another_destination_is_refused() {
    let mut ask = Ask::login(Some(RID));
    ask.destination = other_sp().acs_url;
    ask.sign_response = true;
    let (issued, xml) = one(ask);
    refused(
        &Setup::new(&issued, &[RID]),
        &xml,
        SamlError::DestinationMismatch,
    );
}

#[test]
fn an_assertion_for_another_recipient_is_refused() {
    // Only the assertion is signed, so an attacker may drop the envelope's
    // Destination: the signed Recipient still gives it away.
    let mut ask = Ask::login(Some(RID));
    ask.destination = other_sp().acs_url;
    let (issued, xml) = one(ask);
    let setup = Setup::new(&issued, &[RID]);
    refused(&setup, &xml, SamlError::DestinationMismatch);
    let no_destination = xml.replacen(&format!(" Destination=\"{}\"", other_sp().acs_url), "", 1);
    assert_ne!(no_destination, xml);
    refused(&setup, &no_destination, SamlError::RecipientMismatch);
}

#[test]
fn the_validity_window_allows_sixty_seconds_of_skew_and_no_more() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let issued_at = issue_instant(&xml);
    let mut setup = Setup::new(&issued, &[RID]);
    // NotOnOrAfter is 5 minutes after issue at this IdP.
    setup.now = issued_at + Duration::minutes(5) + Duration::seconds(30);
    setup.validate(&xml).unwrap();
    setup.now = issued_at + Duration::minutes(5) + Duration::seconds(61);
    refused(&setup, &xml, SamlError::Expired);
    setup.now = issued_at + Duration::hours(3);
    refused(&setup, &xml, SamlError::Expired);
    // NotBefore is the issue instant.
    setup.now = issued_at - Duration::seconds(30);
    setup.validate(&xml).unwrap();
    setup.now = issued_at - Duration::seconds(90);
    refused(&setup, &xml, SamlError::NotYetValid);
}

#[test]
fn a_response_to_a_request_we_did_not_make_is_refused() {
    let (issued, xml) = one(Ask::login(Some(
        "_ffffffffffffffffffffffffffffffffffffffff",
    )));
    refused(
        &Setup::new(&issued, &[RID]),
        &xml,
        SamlError::InResponseToMismatch,
    );
    // Nor when nothing is outstanding, IdP-initiated allowed or not.
    let mut setup = Setup::new(&issued, &[]);
    refused(&setup, &xml, SamlError::InResponseToMismatch);
    setup.allow_idp_initiated = true;
    refused(&setup, &xml, SamlError::InResponseToMismatch);
}

#[test]
fn idp_initiated_login_needs_the_connection_to_allow_it() {
    let (issued, xml) = one(Ask::login(None));
    let mut setup = Setup::new(&issued, &[RID]);
    refused(&setup, &xml, SamlError::IdpInitiatedNotAllowed);
    setup.allow_idp_initiated = true;
    let login = setup.validate(&xml).unwrap();
    assert_eq!(login.in_response_to, None);
    assert_eq!(login.name_id, "ann@example.com");
}

#[test]
fn a_replayed_assertion_is_refused_by_the_replay_cache() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let setup = Setup::new(&issued, &[RID]);
    let mut cache = ReplayCache::default();
    let first = setup.validate(&xml).unwrap();
    cache.record(&first, setup.now).unwrap();
    let again = setup.validate(&xml).unwrap();
    assert_eq!(again.assertion_id, first.assertion_id);
    let error = cache.record(&again, setup.now).unwrap_err();
    assert_eq!(error, SamlError::AssertionReplayed);
    assert_eq!(error.code(), "saml_assertion_replayed");
    // Forgotten only once the assertion could no longer be accepted anyway.
    cache
        .record(&again, first.replay_cache_until + Duration::seconds(1))
        .unwrap();
    let mut late = Setup::new(&issued, &[RID]);
    late.now = first.replay_cache_until;
    refused(&late, &xml, SamlError::Expired);
}

#[test]
fn an_assertion_from_another_issuer_is_refused() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let mut setup = Setup::new(&issued, &[RID]);
    setup.idp.entity_id = "https://other-idp.example.test/metadata".to_owned();
    refused(&setup, &xml, SamlError::IssuerMismatch);
}

#[test]
fn a_failed_status_in_the_envelope_is_refused() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let failed = xml.replacen(
        "urn:oasis:names:tc:SAML:2.0:status:Success",
        "urn:oasis:names:tc:SAML:2.0:status:Requester",
        1,
    );
    refused(
        &Setup::new(&issued, &[RID]),
        &failed,
        SamlError::StatusNotSuccess,
    );
}

#[test]
fn malformed_input_is_refused_without_a_panic() {
    let (issued, xml) = one(Ask::login(Some(RID)));
    let setup = Setup::new(&issued, &[RID]);
    let body = xml
        .trim_start_matches("<?xml version=\"1.0\"?>")
        .trim_start();
    let with_dtd = format!("<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{body}");
    for attack in [
        with_dtd,
        String::new(),
        "<a/>".to_owned(),
        xml[..xml.len() / 2].to_owned(),
    ] {
        let error = setup.validate(&attack).unwrap_err();
        assert!(
            matches!(error, SamlError::ResponseMalformed(_)),
            "{error:?} for {}",
            &attack[..attack.len().min(60)]
        );
        assert_eq!(error.code(), "saml_response_malformed");
    }
    let outstanding: Vec<&str> = vec![RID];
    let ctx = queue_saml::ValidationContext {
        sp: &setup.sp,
        idp: &setup.idp,
        attributes: &setup.attributes,
        allow_idp_initiated: false,
        outstanding_request_ids: &outstanding,
        now: setup.now,
    };
    assert_eq!(
        queue_saml::validate_response("not base64!", &ctx)
            .unwrap_err()
            .code(),
        "saml_response_malformed"
    );
    let huge = "A".repeat(queue_saml::MAX_RESPONSE_BYTES * 2);
    assert_eq!(
        queue_saml::validate_response(&huge, &ctx)
            .unwrap_err()
            .code(),
        "saml_response_too_large"
    );
}

#[test]
fn every_signing_certificate_in_the_metadata_is_trusted_for_key_rollover() {
    let mut old_key = Ask::login(Some(RID));
    old_key.key = "other";
    let issued = issue(&[Ask::login(Some(RID)), old_key]);
    let mut setup = Setup::new(&issued, &[RID]);
    refused(&setup, &issued.responses[1], SamlError::SignatureInvalid);
    setup
        .idp
        .signing_certificates
        .push(issued.other_certificate.clone());
    for xml in &issued.responses {
        assert_eq!(setup.validate(xml).unwrap().name_id, "ann@example.com");
    }
    // And a metadata document listing both yields both.
    let cert = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let listed = cert(&setup.idp.signing_certificates[0]);
    let start = issued.metadata.find("<ns0:KeyDescriptor").unwrap();
    let end = issued.metadata.find("</ns0:KeyDescriptor>").unwrap() + "</ns0:KeyDescriptor>".len();
    let descriptor = &issued.metadata[start..end];
    assert!(descriptor.contains(&listed));
    let second = descriptor.replace(&listed, &cert(&issued.other_certificate));
    let both = issued
        .metadata
        .replacen(descriptor, &format!("{descriptor}{second}"), 1);
    let parsed = queue_saml::IdpMetadata::parse(&both).unwrap();
    assert_eq!(parsed.signing_certificates, setup.idp.signing_certificates);
}
