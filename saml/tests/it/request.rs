//! The SP-initiated AuthnRequest, decoded as the IdP would.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{TimeZone, Utc};
use flate2::read::DeflateDecoder;
use queue_saml::{authn_request_redirect, request_id_from_random, IdpMetadata, SamlError};
use url::Url;

use crate::idp::{issue, sp, IDP_SSO_URL};

fn idp() -> IdpMetadata {
    IdpMetadata::parse(&issue(&[]).metadata).unwrap()
}

#[test]
fn the_redirect_carries_a_deflated_authn_request_and_the_relay_state() {
    let idp = idp();
    let id = request_id_from_random([7; 20]);
    assert_eq!(id, format!("_{}", "07".repeat(20)));
    let at = Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 0).unwrap();
    let request = authn_request_redirect(&sp(), &idp, &id, at, Some("r-123"), false).unwrap();
    assert_eq!(request.request_id, id);

    let url = Url::parse(&request.url).unwrap();
    assert!(request.url.starts_with(IDP_SSO_URL));
    let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(params[1], ("RelayState".to_owned(), "r-123".to_owned()));
    assert_eq!(params[0].0, "SAMLRequest");
    let deflated = STANDARD.decode(&params[0].1).unwrap();
    let mut xml = String::new();
    DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut xml)
        .unwrap();
    assert_eq!(xml, request.xml);

    assert!(xml.starts_with("<samlp:AuthnRequest "));
    assert!(xml.ends_with("</samlp:AuthnRequest>"));
    let doc = &xml;
    assert!(doc.contains(&format!("ID=\"{id}\"")));
    assert!(doc.contains("IssueInstant=\"2026-12-06T03:00:00Z\""));
    assert!(doc.contains(&format!("Destination=\"{IDP_SSO_URL}\"")));
    assert!(
        doc.contains("AssertionConsumerServiceURL=\"https://queue.example.test/saml/acme/acs\"")
    );
    assert!(doc.contains("ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\""));
    assert!(
        doc.contains("<saml:Issuer>https://queue.example.test/saml/acme/metadata</saml:Issuer>")
    );
    assert!(
        !doc.contains("ForceAuthn"),
        "a login lets the IdP use its session"
    );
}

#[test]
fn a_step_up_request_asks_the_idp_to_authenticate_anew() {
    let id = request_id_from_random([9; 20]);
    let request = authn_request_redirect(&sp(), &idp(), &id, Utc::now(), None, true).unwrap();
    assert!(
        request
            .xml
            .contains("AssertionConsumerServiceURL=\"https://queue.example.test/saml/acme/acs\" ForceAuthn=\"true\">"),
        "{}",
        request.xml
    );
}

#[test]
fn an_sso_url_with_a_query_keeps_it() {
    let mut idp = idp();
    idp.sso_redirect_url = "https://idp.example.test/sso?tenant=acme".to_owned();
    let id = request_id_from_random([1; 20]);
    let request = authn_request_redirect(&sp(), &idp, &id, Utc::now(), None, false).unwrap();
    let url = Url::parse(&request.url).unwrap();
    let names: Vec<String> = url
        .query_pairs()
        .map(|(name, _)| name.into_owned())
        .collect();
    assert_eq!(names, vec!["tenant".to_owned(), "SAMLRequest".to_owned()]);
}

#[test]
fn bad_request_ids_and_long_relay_states_are_refused() {
    let idp = idp();
    for id in [
        "",
        "1abcdefabcdefabcdef",
        "_short",
        "_abcdefabcdefabcdef\"x",
        &format!("_{}", "a".repeat(200)),
    ] {
        let error = authn_request_redirect(&sp(), &idp, id, Utc::now(), None, false).unwrap_err();
        assert_eq!(error.code(), "saml_request_id_invalid", "{id}");
    }
    let id = request_id_from_random([2; 20]);
    let error = authn_request_redirect(&sp(), &idp, &id, Utc::now(), Some(&"r".repeat(81)), false)
        .unwrap_err();
    assert_eq!(error, SamlError::RelayStateTooLong);
    assert_eq!(error.code(), "saml_relay_state_too_long");
}
