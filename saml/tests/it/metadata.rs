//! IdP metadata from the real IdP; our SP metadata as the IdP reads it.

use queue_saml::{IdpMetadata, SamlError, SpConfig};

use crate::idp::{issue, sp, Ask, IDP_ENTITY_ID, IDP_SSO_URL};

#[test]
fn the_idps_metadata_gives_entity_id_sso_url_and_signing_certificate() {
    let issued = issue(&[]);
    let idp = IdpMetadata::parse(&issued.metadata).unwrap();
    assert_eq!(idp.entity_id, IDP_ENTITY_ID);
    assert_eq!(idp.sso_redirect_url, IDP_SSO_URL);
    assert_eq!(idp.signing_certificates.len(), 1);
    assert_eq!(idp.signing_certificates[0][0], 0x30);
}

#[test]
fn our_sp_metadata_is_what_the_idp_needs() {
    let sp = sp();
    assert_eq!(
        sp.entity_id,
        "https://queue.example.test/saml/acme/metadata"
    );
    assert_eq!(sp.acs_url, "https://queue.example.test/saml/acme/acs");
    let xml = sp.metadata_xml();
    assert!(xml.contains("entityID=\"https://queue.example.test/saml/acme/metadata\""));
    assert!(xml.contains(
        "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" \
         Location=\"https://queue.example.test/saml/acme/acs\""
    ));
    for format in queue_saml::NAME_ID_FORMATS {
        assert!(xml.contains(&format!("<md:NameIDFormat>{format}</md:NameIDFormat>")));
    }
    // The IdP loaded it (issue() hands it over) and answers to its ACS.
    let issued = issue(&[Ask::login(None)]);
    assert!(issued.responses[0].contains("Recipient=\"https://queue.example.test/saml/acme/acs\""));
}

#[test]
fn sp_settings_are_checked() {
    for (base, slug) in [
        ("ftp://queue.example.test", "acme"),
        ("not a url", "acme"),
        ("https://queue.example.test", ""),
        ("https://queue.example.test", "Acme"),
        ("https://queue.example.test", "a/b"),
    ] {
        let error = SpConfig::for_tenant(base, slug).unwrap_err();
        assert_eq!(error.code(), "saml_sp_config_invalid", "{base} {slug}");
    }
    // A trailing slash on the base URL is not doubled.
    let sp = SpConfig::for_tenant("https://queue.example.test/", "acme").unwrap();
    assert_eq!(sp.acs_url, "https://queue.example.test/saml/acme/acs");
}

#[test]
fn bad_idp_metadata_is_refused_with_a_reason() {
    let issued = issue(&[]);
    let good = issued.metadata;
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "not well-formed XML without DTD"),
        ("<x/>".to_owned(), "root must be md:EntityDescriptor"),
        (
            format!("<!DOCTYPE x [<!ENTITY e \"e\">]>{good}"),
            "not well-formed XML without DTD",
        ),
        (
            good.replacen(&format!("entityID=\"{IDP_ENTITY_ID}\""), "", 1),
            "entityID is missing",
        ),
        (
            good.replace("bindings:HTTP-Redirect", "bindings:SOAP"),
            "no SingleSignOnService with the HTTP-Redirect binding",
        ),
        (
            good.replace(IDP_SSO_URL, "javascript:alert(1)"),
            "SingleSignOnService Location is not an http(s) URL",
        ),
        (
            good.replace("use=\"signing\"", "use=\"encryption\""),
            "no signing certificate",
        ),
        (
            good.replace("<ns2:X509Certificate>MII", "<ns2:X509Certificate>!!!"),
            "X509Certificate is not base64",
        ),
        (
            good.replace("IDPSSODescriptor", "SPSSODescriptor"),
            "no IDPSSODescriptor",
        ),
    ];
    for (xml, reason) in cases {
        let error = IdpMetadata::parse(&xml).unwrap_err();
        assert_eq!(error, SamlError::InvalidIdpMetadata(reason));
        assert_eq!(error.code(), "saml_idp_metadata_invalid");
    }
}
