//! Runs the pysaml2 IdP (saml/tests/idp/idp.py) and hands its answers to the
//! tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use queue_saml::{AttributeNames, IdpMetadata, SpConfig, ValidationContext};
use serde_json::{json, Value};

pub const IDP_ENTITY_ID: &str = "https://idp.example.test/metadata";
pub const IDP_SSO_URL: &str = "https://idp.example.test/sso/redirect";
pub const BASE_URL: &str = "https://queue.example.test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The venv's Python with pysaml2, or a failure that says how to get it.
fn python() -> PathBuf {
    let python = repo_root().join(".dev/saml/venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import saml2"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ok,
        "the SAML tests need pysaml2 in {}; run scripts/saml-setup (scripts/test does)",
        python.display()
    );
    python
}

/// A fresh key directory per test (the IdP creates its keys there).
fn key_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "queue-saml-idp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One response the IdP is asked for; defaults: a login of ann answering
/// `in_response_to` for tenant `acme`, assertion signed.
#[derive(Clone, Debug)]
pub struct Ask {
    pub key: &'static str,
    pub sp_entity_id: String,
    pub destination: String,
    pub in_response_to: Option<String>,
    pub name_id: String,
    pub groups: Vec<&'static str>,
    pub sign_response: bool,
    pub sign_assertion: bool,
}

pub fn sp() -> SpConfig {
    SpConfig::for_tenant(BASE_URL, "acme").unwrap()
}

/// Another tenant's SP, known to the same IdP.
pub fn other_sp() -> SpConfig {
    SpConfig::for_tenant(BASE_URL, "globex").unwrap()
}

impl Ask {
    pub fn login(in_response_to: Option<&str>) -> Self {
        let sp = sp();
        Self {
            key: "idp",
            sp_entity_id: sp.entity_id,
            destination: sp.acs_url,
            in_response_to: in_response_to.map(str::to_owned),
            name_id: "ann@example.com".to_owned(),
            groups: vec!["eng", "ops"],
            sign_response: false,
            sign_assertion: true,
        }
    }
}

/// The IdP's metadata and the responses it issued (raw XML).
pub struct Issued {
    pub metadata: String,
    /// The DER certificate of the key the IdP's metadata does not list.
    pub other_certificate: Vec<u8>,
    pub responses: Vec<String>,
}

pub fn issue(asks: &[Ask]) -> Issued {
    let request = json!({
        "idp_entity_id": IDP_ENTITY_ID,
        "sso_url": IDP_SSO_URL,
        "sp_metadata": [sp().metadata_xml(), other_sp().metadata_xml()],
        "responses": asks.iter().map(|ask| json!({
            "key": ask.key,
            "sp_entity_id": ask.sp_entity_id,
            "destination": ask.destination,
            "in_response_to": ask.in_response_to,
            "name_id": ask.name_id,
            "attributes": {
                "mail": [ask.name_id],
                "displayName": ["Ann Example"],
                "groups": ask.groups,
            },
            "sign_response": ask.sign_response,
            "sign_assertion": ask.sign_assertion,
        })).collect::<Vec<_>>(),
    });
    let dir = key_dir();
    let mut child = Command::new(python())
        .arg(repo_root().join("saml/tests/idp/idp.py"))
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "idp.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    Issued {
        metadata: answer["metadata"].as_str().unwrap().to_owned(),
        other_certificate: hex_bytes(answer["other_certificate_der_hex"].as_str().unwrap()),
        responses: answer["responses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect(),
    }
}

pub fn attribute_names() -> AttributeNames {
    AttributeNames {
        email: Some("urn:mace:dir:attribute-def:mail".to_owned()),
        display_name: Some("urn:mace:dir:attribute-def:displayName".to_owned()),
        groups: Some("groups".to_owned()),
    }
}

/// Everything a validation needs, owned, so a test can adjust a part.
pub struct Setup {
    pub sp: SpConfig,
    pub idp: IdpMetadata,
    pub attributes: AttributeNames,
    pub allow_idp_initiated: bool,
    pub outstanding: Vec<String>,
    pub now: DateTime<Utc>,
}

impl Setup {
    pub fn new(issued: &Issued, outstanding: &[&str]) -> Self {
        Self {
            sp: sp(),
            idp: IdpMetadata::parse(&issued.metadata).unwrap(),
            attributes: attribute_names(),
            allow_idp_initiated: false,
            outstanding: outstanding.iter().map(|id| (*id).to_owned()).collect(),
            now: Utc::now(),
        }
    }

    pub fn validate(
        &self,
        response_xml: &str,
    ) -> Result<queue_saml::SamlLogin, queue_saml::SamlError> {
        let outstanding: Vec<&str> = self.outstanding.iter().map(String::as_str).collect();
        let ctx = ValidationContext {
            sp: &self.sp,
            idp: &self.idp,
            attributes: &self.attributes,
            allow_idp_initiated: self.allow_idp_initiated,
            outstanding_request_ids: &outstanding,
            now: self.now,
        };
        queue_saml::validate_response(&STANDARD.encode(response_xml), &ctx)
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
