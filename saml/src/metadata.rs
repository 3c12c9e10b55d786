//! IdP metadata in, SP metadata out.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use url::Url;

use crate::xml::{self, child, children, NS_DS, NS_MD};
use crate::SamlError;

/// The largest IdP metadata document accepted.
pub const MAX_METADATA_BYTES: usize = 512 * 1024;

/// What Queue needs from an IdP's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpMetadata {
    /// The IdP's `entityID`: assertions must name it as Issuer.
    pub entity_id: String,
    /// Where AuthnRequests go (the `SingleSignOnService` with the
    /// HTTP-Redirect binding).
    pub sso_redirect_url: String,
    /// DER X.509 certificates whose keys may sign responses (`KeyDescriptor`
    /// with `use="signing"` or no `use`). Rollover: every one listed is
    /// accepted.
    pub signing_certificates: Vec<Vec<u8>>,
}

impl IdpMetadata {
    /// Parses an `EntityDescriptor` (or an `EntitiesDescriptor` holding exactly
    /// one IdP) as published by the IdP.
    pub fn parse(metadata_xml: &str) -> Result<Self, SamlError> {
        if metadata_xml.len() > MAX_METADATA_BYTES {
            return Err(SamlError::InvalidIdpMetadata("larger than 512 KiB"));
        }
        let doc = xml::parse(metadata_xml)
            .map_err(|_| SamlError::InvalidIdpMetadata("not well-formed XML without DTD"))?;
        let root = doc.root_element();
        let entity = if xml::is(&root, NS_MD, "EntityDescriptor") {
            root
        } else if xml::is(&root, NS_MD, "EntitiesDescriptor") {
            let mut idps = root
                .descendants()
                .filter(|node| xml::is(node, NS_MD, "EntityDescriptor"))
                .filter(|node| child(*node, NS_MD, "IDPSSODescriptor").is_some());
            match (idps.next(), idps.next()) {
                (Some(entity), None) => entity,
                (None, _) => return Err(SamlError::InvalidIdpMetadata("no IdP entity")),
                (Some(_), Some(_)) => {
                    return Err(SamlError::InvalidIdpMetadata("more than one IdP entity"))
                }
            }
        } else {
            return Err(SamlError::InvalidIdpMetadata(
                "root must be md:EntityDescriptor",
            ));
        };
        let entity_id = entity
            .attribute("entityID")
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or(SamlError::InvalidIdpMetadata("entityID is missing"))?
            .to_owned();
        if entity_id.len() > 1024 {
            return Err(SamlError::InvalidIdpMetadata("entityID is too long"));
        }
        let idp = child(entity, NS_MD, "IDPSSODescriptor")
            .ok_or(SamlError::InvalidIdpMetadata("no IDPSSODescriptor"))?;
        let supports_saml2 = idp
            .attribute("protocolSupportEnumeration")
            .is_some_and(|protocols| protocols.split_whitespace().any(|p| p == xml::NS_SAMLP));
        if !supports_saml2 {
            return Err(SamlError::InvalidIdpMetadata(
                "IDPSSODescriptor does not support SAML 2.0",
            ));
        }
        let sso_redirect_url = children(idp, NS_MD, "SingleSignOnService")
            .find(|sso| sso.attribute("Binding") == Some(xml::BINDING_HTTP_REDIRECT))
            .and_then(|sso| sso.attribute("Location"))
            .ok_or(SamlError::InvalidIdpMetadata(
                "no SingleSignOnService with the HTTP-Redirect binding",
            ))?
            .trim()
            .to_owned();
        http_url(&sso_redirect_url).ok_or(SamlError::InvalidIdpMetadata(
            "SingleSignOnService Location is not an http(s) URL",
        ))?;
        let mut signing_certificates = Vec::new();
        for key in children(idp, NS_MD, "KeyDescriptor") {
            if !matches!(key.attribute("use"), None | Some("signing")) {
                continue;
            }
            let certificates = key
                .descendants()
                .filter(|node| xml::is(node, NS_DS, "X509Certificate"));
            for certificate in certificates {
                let base64: String = xml::text(certificate)
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                let der = STANDARD
                    .decode(base64)
                    .map_err(|_| SamlError::InvalidIdpMetadata("X509Certificate is not base64"))?;
                // A DER certificate is a SEQUENCE; xmlsec checks the rest
                // when it loads the key.
                if der.len() < 64 || der.first() != Some(&0x30) {
                    return Err(SamlError::InvalidIdpMetadata(
                        "X509Certificate is not a DER certificate",
                    ));
                }
                if !signing_certificates.contains(&der) {
                    signing_certificates.push(der);
                }
            }
        }
        if signing_certificates.is_empty() {
            return Err(SamlError::InvalidIdpMetadata("no signing certificate"));
        }
        Ok(Self {
            entity_id,
            sso_redirect_url,
            signing_certificates,
        })
    }
}

fn http_url(value: &str) -> Option<Url> {
    Url::parse(value)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
}

/// This service provider, as one tenant's connection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpConfig {
    /// Our `entityID`: the Audience assertions must name.
    pub entity_id: String,
    /// Our AssertionConsumerService (HTTP-POST): Destination and Recipient.
    pub acs_url: String,
}

impl SpConfig {
    /// The SP of tenant `slug` under Queue's public base URL:
    /// entityID `{base}/saml/{slug}/metadata`, ACS `{base}/saml/{slug}/acs`.
    pub fn for_tenant(base_url: &str, slug: &str) -> Result<Self, SamlError> {
        let base = base_url.trim_end_matches('/');
        http_url(base).ok_or(SamlError::InvalidSpConfig("base URL is not an http(s) URL"))?;
        if slug.is_empty()
            || !slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(SamlError::InvalidSpConfig("tenant slug"));
        }
        Ok(Self {
            entity_id: format!("{base}/saml/{slug}/metadata"),
            acs_url: format!("{base}/saml/{slug}/acs"),
        })
    }

    /// The SP metadata document (`GET /saml/{slug}/metadata`): entityID, the
    /// ACS with the HTTP-POST binding, the NameID formats; it asks for
    /// signed assertions.
    pub fn metadata_xml(&self) -> String {
        let formats: String = xml::NAME_ID_FORMATS
            .iter()
            .map(|format| format!("    <md:NameIDFormat>{format}</md:NameIDFormat>\n"))
            .collect();
        format!(
            concat!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                "<md:EntityDescriptor xmlns:md=\"{md}\" entityID=\"{entity_id}\">\n",
                "  <md:SPSSODescriptor AuthnRequestsSigned=\"false\" WantAssertionsSigned=\"true\" ",
                "protocolSupportEnumeration=\"{samlp}\">\n",
                "{formats}",
                "    <md:AssertionConsumerService Binding=\"{post}\" Location=\"{acs}\" ",
                "index=\"0\" isDefault=\"true\"/>\n",
                "  </md:SPSSODescriptor>\n",
                "</md:EntityDescriptor>\n"
            ),
            md = NS_MD,
            samlp = xml::NS_SAMLP,
            post = xml::BINDING_HTTP_POST,
            entity_id = xml::escape(&self.entity_id),
            acs = xml::escape(&self.acs_url),
            formats = formats,
        )
    }
}
