//! The SAML assertion consumer service (issue 22, ADR 0218) through the
//! router, answered by the real pysaml2 IdP of the queue-saml tests
//! (saml/tests/idp/idp.py, installed by scripts/saml-setup).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use queue_domain::types::{TenantId, TenantSlug};
use queue_saml::SpConfig;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{Passkey, Response, TestApp};
use crate::pages::page_request;
use crate::service::{service_app, ACME, OPS};
use crate::tenants::{create_tenant, jwt_claims};

pub const IDP_ENTITY_ID: &str = "https://idp.example.test/metadata";
const IDP_SSO_URL: &str = "https://idp.example.test/sso/redirect";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The pysaml2 IdP; its keys live in one directory for the whole test, so
/// the metadata given to the tenant and the responses agree.
pub struct Idp {
    dir: PathBuf,
    sp_metadata: Vec<String>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Idp {
    fn new(base: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "queue-api-saml-idp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sp_metadata = ["acme", "globex"]
            .iter()
            .map(|slug| SpConfig::for_tenant(base, slug).unwrap().metadata_xml())
            .collect();
        Self { dir, sp_metadata }
    }

    /// The IdP's metadata and the responses (raw XML) it issued.
    pub fn issue(&self, responses: &[Value]) -> (String, Vec<String>) {
        let python = repo_root().join(".dev/saml/venv/bin/python");
        let ok = Command::new(&python)
            .args(["-c", "import saml2"])
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            ok,
            "the SAML tests need pysaml2 in {}; run scripts/saml-setup",
            python.display()
        );
        let request = json!({
            "idp_entity_id": IDP_ENTITY_ID,
            "sso_url": IDP_SSO_URL,
            "sp_metadata": self.sp_metadata,
            "responses": responses,
        });
        let mut child = Command::new(python)
            .arg(repo_root().join("saml/tests/idp/idp.py"))
            .arg(&self.dir)
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
        assert!(
            out.status.success(),
            "idp.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        let responses = answer["responses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        (answer["metadata"].as_str().unwrap().to_owned(), responses)
    }
}

/// A login of `email` in groups `eng`, for `audience_slug`'s SP, sent to
/// acme's ACS.
pub fn ask(base: &str, audience_slug: &str, in_response_to: &str, email: &str) -> Value {
    ask_in(base, audience_slug, Some(in_response_to), email, &["eng"])
}

fn ask_in(
    base: &str,
    audience_slug: &str,
    in_response_to: Option<&str>,
    email: &str,
    groups: &[&str],
) -> Value {
    let audience = SpConfig::for_tenant(base, audience_slug).unwrap();
    let acme = SpConfig::for_tenant(base, "acme").unwrap();
    json!({
        "key": "idp",
        "sp_entity_id": audience.entity_id,
        "destination": acme.acs_url,
        "in_response_to": in_response_to,
        "name_id": email,
        "attributes": {"mail": [email], "displayName": ["Ann Example"], "groups": groups},
        "sign_response": false,
        "sign_assertion": true,
    })
}

pub struct Setup {
    pub app: TestApp,
    pub idp: Idp,
    pub base: String,
}

/// Tenant `acme` trusting the pysaml2 IdP, JIT on, group `eng` → support-agent.
pub async fn setup(pool: PgPool) -> Setup {
    setup_with(pool, json!({})).await
}

/// As [`setup`], with `extra` fields of the connection's settings (such as
/// `allow_idp_initiated`) added.
pub async fn setup_with(pool: PgPool, extra: Value) -> Setup {
    let app = service_app(pool).await;
    let base = app.state.config().rp_origins[0]
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let idp = Idp::new(&base);
    let (metadata, _) = idp.issue(&[]);
    let tenant_id = create_tenant(&app, "acme").await;
    connect_idp(&app, &tenant_id, &metadata, extra).await;
    Setup { app, idp, base }
}

/// Configures the tenant's SAML connection to trust the IdP of `metadata`
/// (JIT on, group `eng` → support-agent, plus `extra` settings).
pub async fn connect_idp(app: &TestApp, tenant_id: &str, metadata: &str, extra: Value) {
    let mut settings = json!({
        "idp_metadata": metadata,
        "email_attribute": "urn:mace:dir:attribute-def:mail",
        "display_name_attribute": "urn:mace:dir:attribute-def:displayName",
        "groups_attribute": "groups",
        "group_roles": {"eng": ["support-agent"]},
        "jit_provisioning": true,
    });
    for (field, value) in extra.as_object().unwrap() {
        settings[field] = value.clone();
    }
    let put = app
        .request(
            Method::PUT,
            &format!("/api/v1/tenants/{tenant_id}/saml"),
            Some(settings),
            Some(OPS),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
}

/// Starts an SP-initiated login; the RelayState (the request id).
pub async fn start_login(app: &TestApp, return_to: &str) -> String {
    start_login_at(app, "acme", return_to).await
}

/// Starts an SP-initiated login at tenant `slug`; the RelayState.
async fn start_login_at(app: &TestApp, slug: &str, return_to: &str) -> String {
    let got = app
        .get(&format!(
            "/saml/{slug}/login?return_to={}",
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text);
    let location = url::Url::parse(got.headers[header::LOCATION].to_str().unwrap()).unwrap();
    location
        .query_pairs()
        .find(|(k, _)| k == "RelayState")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// The browser's auto-submitted form to the ACS.
pub async fn post_acs(app: &TestApp, response_xml: &str, relay_state: &str) -> Response {
    post_acs_to(app, "acme", response_xml, relay_state).await
}

/// The form to tenant `slug`'s ACS.
async fn post_acs_to(app: &TestApp, slug: &str, response_xml: &str, relay_state: &str) -> Response {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &STANDARD.encode(response_xml))
        .append_pair("RelayState", relay_state)
        .finish();
    app.send(
        Request::builder()
            .method(Method::POST)
            .uri(format!("/saml/{slug}/acs"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

/// What the hosted page does after the ACS's 303: refreshes with the
/// cookie the ACS set; the access token.
pub async fn page_refresh(app: &TestApp, acs: &Response) -> String {
    refresh_with_cookie(app, acs.headers[header::SET_COOKIE].to_str().unwrap()).await
}

/// The ids a login/begin allows (base64url).
fn allowed_ids(begin: &Value) -> Vec<String> {
    begin["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Emails are unique per tenant: a customer provisioned by SAML in acme
/// adds a passkey and logs in by email naming acme; the default tenant's
/// customer with the same email is another person, found without it.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_saml_customer_adds_a_passkey_and_logs_in_by_email_in_its_tenant(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let access = sign_in(&app, &idp, &base, "ann@example.com").await;

    // In her fresh SAML session, ann adds a passkey.
    let mut passkey = crate::helpers::Passkey::new();
    let begin = app
        .post_auth("/api/v1/auth/webauthn/register/begin", json!({}), &access)
        .await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let credential = passkey.create(&begin.json["options"]);
    let added = app
        .post_auth(
            "/api/v1/auth/webauthn/register/complete",
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential, "name": "laptop"}),
            &access,
        )
        .await;
    assert!(added.status.is_success(), "{}", added.text);
    let acme_ids = allowed_ids(
        &app.post(
            "/api/v1/auth/webauthn/login/begin",
            json!({"email": "ann@example.com", "tenant": "acme"}),
        )
        .await
        .json,
    );
    assert_eq!(acme_ids.len(), 1);

    // Another ann, in the default tenant.
    let mut other = crate::helpers::Passkey::new();
    app.register(&mut other, "ann@example.com").await;
    let default_ids = allowed_ids(&app.login_begin(Some("ann@example.com")).await);
    assert_eq!(default_ids.len(), 1);
    assert_ne!(default_ids, acme_ids);

    // By email in acme: acme's ann, a token of acme.
    let begin = app
        .post(
            "/api/v1/auth/webauthn/login/begin",
            json!({"email": "ann@example.com", "tenant": "acme"}),
        )
        .await;
    assert_eq!(allowed_ids(&begin.json), acme_ids);
    let credential = passkey.get(&begin.json["options"]);
    let login = app
        .login_complete(&begin.json["challenge_id"], credential)
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let claims = jwt_claims(login.json["access_token"].as_str().unwrap());
    let acme = queue_domain::types::TenantId::for_slug(
        &queue_domain::types::TenantSlug::parse("acme").unwrap(),
    );
    assert_eq!(claims["tid"], acme.to_string());
    assert_eq!(claims["amr"], json!(["webauthn"]));
    // acme's passkey answering a default-tenant challenge for ann: refused.
    let begin = app.login_begin(Some("ann@example.com")).await;
    let wrong = app
        .login_complete(
            &begin["challenge_id"],
            passkey.get(&json!({"publicKey": {
                "challenge": begin["options"]["publicKey"]["challenge"],
                "rpId": begin["options"]["publicKey"]["rpId"],
                "allowCredentials": [],
                "userVerification": "required",
            }})),
        )
        .await;
    wrong.assert_error(StatusCode::UNAUTHORIZED, "webauthn_failed");
    // A malformed tenant slug: 400.
    app.post(
        "/api/v1/auth/webauthn/login/begin",
        json!({"email": "ann@example.com", "tenant": "Not A Slug"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
}

/// The `reason` of every SAML refusal Queue audited.
async fn refusals(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT payload->'AuditRecorded'->'metadata'->>'reason' FROM events \
         WHERE aggregate_type = 'Audit' \
           AND payload->'AuditRecorded'->>'action' = 'saml.login_refused' \
         ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_first_sp_initiated_login_provisions_the_customer_and_grants_its_group_role(
    pool: PgPool,
) {
    let Setup { app, idp, base } = setup(pool).await;
    let return_to = format!("{base}/account?tab=sessions");
    let relay = start_login(&app, &return_to).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);

    let got = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text);
    assert_eq!(got.headers[header::LOCATION], return_to.as_str());
    let cookie = got.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("queue_refresh=qrt_"), "{cookie}");
    assert!(cookie.contains("Path=/api/v1/auth/session/refresh"));
    assert!(cookie.contains("HttpOnly"));

    // Registered in the tenant, granted the group's role by saml:acme, and a
    // saml session: one batch.
    let tenant = queue_domain::types::TenantId::for_slug(
        &queue_domain::types::TenantSlug::parse("acme").unwrap(),
    );
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT aggregate_type, event_type, payload FROM events \
         WHERE aggregate_type IN ('Customer', 'Session') ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["CustomerProvisioned", "RoleGranted", "SessionCreated"],
        "{rows:?}"
    );
    // Provisioned by the IdP: source saml, the tenant's provider as actor.
    let provisioned = &rows[0].2["CustomerProvisioned"];
    assert_eq!(provisioned["email"], "ann@example.com");
    assert_eq!(provisioned["tenant_id"], tenant.to_string());
    assert_eq!(provisioned["source"], "saml");
    assert_eq!(provisioned["actor"], "saml:acme");
    let granted = &rows[1].2["RoleGranted"];
    assert_eq!(granted["actor"], "saml:acme");
    assert_eq!(granted["role"], "support-agent");
    assert_eq!(granted["reason"], "SAML group eng");
    assert_eq!(rows[2].2["SessionCreated"]["method"]["kind"], "saml");
    let one_transaction: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT commit_xid) FROM events \
         WHERE aggregate_type IN ('Customer', 'Session')",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(one_transaction, 1);
    // The request is used up; nothing was refused.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(refusals(&app).await.is_empty());

    // The page refreshes with the cookie: a token of the tenant, amr saml,
    // with the granted role.
    let claims = jwt_claims(&refresh_with_cookie(&app, cookie).await);
    assert_eq!(claims["amr"], json!(["saml"]));
    assert_eq!(claims["tid"], tenant.to_string());
    // Every customer's base role, and the one the group gives.
    assert_eq!(claims["roles"], json!(["antlers-user", "support-agent"]));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_replayed_assertion_is_refused_and_audited(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let first = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);

    let before = app.event_count().await;
    post_acs(&app, &responses[0], &relay)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_assertion_replayed");
    // One new event: the audit record; no session, no customer change.
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(refusals(&app).await, ["saml_assertion_replayed"]);
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionCreated'")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(sessions, 1);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_response_for_another_audience_is_refused_and_audited(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(&base, "globex", &relay, "ann@example.com")]);
    let before = app.event_count().await;
    post_acs(&app, &responses[0], &relay)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_audience_mismatch");
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(refusals(&app).await, ["saml_audience_mismatch"]);
    let customer_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type IN ('Customer', 'Session')",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(customer_events, 0);
    // The request was not used: it stays outstanding until it expires.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(left, 1);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_later_login_without_the_group_revokes_the_saml_grant(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let first = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);

    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask_in(&base, "acme", Some(&relay), "ann@example.com", &[])]);
    let second = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(second.status, StatusCode::SEE_OTHER, "{}", second.text);
    // The same customer (no second registration), its SAML grant revoked.
    let kinds: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events WHERE aggregate_type = 'Customer' \
         ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["CustomerProvisioned", "RoleGranted", "RoleRevoked"]);
    assert_eq!(kinds[2].1["RoleRevoked"]["actor"], "saml:acme");
    assert_eq!(
        kinds[2].1["RoleRevoked"]["grant_id"],
        kinds[1].1["RoleGranted"]["grant_id"]
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_idp_initiated_login_is_refused_when_the_tenant_does_not_allow_it(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let (_, responses) = idp.issue(&[ask_in(&base, "acme", None, "ann@example.com", &["eng"])]);
    let before = app.event_count().await;
    post_acs(&app, &responses[0], "")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_idp_initiated_not_allowed");
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(refusals(&app).await, ["saml_idp_initiated_not_allowed"]);
}

// --- The attack corpus (issue 22) through the router --------------------

/// An unknown request id (the IdP answers a request Queue never made).
const UNKNOWN_REQUEST: &str = "_ffffffffffffffffffffffffffffffffffffffff";
/// Another unknown request id, which the attacker also puts in RelayState.
const FORGED_REQUEST: &str = "_eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

/// The corpus's asks of acme's IdP: each a login answering its own
/// outstanding request `relay`, changed as the variant `name` needs.
fn corpus_ask(base: &str, name: &str, relay: &str) -> Value {
    let globex = SpConfig::for_tenant(base, "globex").unwrap();
    let email = format!("{}@example.com", name.replace(' ', "-"));
    let mut ask = ask_in(base, "acme", Some(relay), &email, &["eng"]);
    let changes = match name {
        "unsigned" => json!({"sign_assertion": false}),
        "other key" => json!({"key": "other"}),
        "other key both signed" => json!({"key": "other", "sign_response": true}),
        // The IdP vouches for ann@example.com.evil.test; the attack cuts it
        // with a comment so a naive reader sees ann@example.com.
        "comment" => json!({"name_id": "ann@example.com.evil.test"}),
        // The base of the wrapping attacks: the evil assertion names admin.
        "wrapping" => json!({"name_id": "ann@example.com"}),
        "audience" => json!({"sp_entity_id": globex.entity_id}),
        "destination" => json!({"destination": globex.acs_url, "sign_response": true}),
        // Only the assertion signed: the envelope's Destination is removed
        // by the attacker, the signed Recipient (globex's ACS) remains.
        "recipient" => json!({"destination": globex.acs_url}),
        "unknown request" => json!({"in_response_to": UNKNOWN_REQUEST}),
        "forged relay" => json!({"in_response_to": FORGED_REQUEST}),
        "idp initiated" => json!({"in_response_to": null}),
        _ => json!({}),
    };
    for (field, value) in changes.as_object().unwrap() {
        ask[field] = value.clone();
    }
    ask
}

/// The signed `<ns1:Assertion ...>...</ns1:Assertion>` of a pysaml2 response.
fn assertion_of(xml: &str) -> &str {
    let start = xml.find("<ns1:Assertion").unwrap();
    let end = xml.find("</ns1:Assertion>").unwrap() + "</ns1:Assertion>".len();
    &xml[start..end]
}

/// An attacker's assertion: the signed one with its signature cut out, a
/// new id and admin's NameID (as saml/tests/it/response.rs builds it).
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

/// Every event: (aggregate type, aggregate id, sequence, event type, payload).
type EventRow = (String, String, i64, String, Value);

async fn all_events(app: &TestApp) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, payload FROM events \
         ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap()
}

/// Whether the outstanding request `id` is still in `saml_requests`.
async fn outstanding(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) FROM saml_requests WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.owner)
        .await
        .map(|n: i64| n == 1)
        .unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.owner).await.unwrap()
}

/// `attacked`, after checking that the surgery on `original` did something.
#[track_caller]
fn changed(original: &str, attacked: String) -> String {
    assert_ne!(original, attacked, "the attack changed nothing");
    attacked
}

/// One attack: the response posted to acme's ACS, and what Queue answers.
struct Attack {
    name: &'static str,
    xml: String,
    relay: String,
    /// Seconds the service clock is moved for the post.
    clock: i64,
    code: &'static str,
    /// The outstanding request the response answers, and whether it is
    /// still outstanding after the refusal.
    request: Option<(String, bool)>,
}

/// Issue 22's corpus, each response built by the real IdP (pysaml2 signing
/// with xmlsec1) and the attacks by string surgery on its XML, posted to
/// the ACS: 401 with the check's code, exactly one new event (Queue's
/// `saml.login_refused` audit record with that code), nothing for a
/// customer, no customer row.
///
/// The outstanding request: a refusal by `validate_response` (every
/// variant but two) happens before the transaction, so the request stays
/// outstanding (a legitimate answer may still come; it expires after 5
/// minutes). An unknown request named by the RelayState passes validation
/// (the RelayState is a candidate) and is refused when the transaction
/// finds nothing to take: it rolls back, so not even the assertion id is
/// recorded. The replay's request was taken by the first, accepted, use.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_attack_of_the_corpus_is_refused_at_the_acs_with_nothing_appended(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let acme_tenant = queue_domain::types::TenantId::for_slug(
        &queue_domain::types::TenantSlug::parse("acme").unwrap(),
    );

    // One outstanding request per SP-initiated ask of acme's IdP, all
    // issued in one run of the IdP.
    let names = [
        "unsigned",
        "other key",
        "other key both signed",
        "wrapping",
        "comment",
        "audience",
        "destination",
        "recipient",
        "expired",
        "not yet valid",
        "replay",
        "unknown request",
        "forged relay",
        "idp initiated",
    ];
    let mut relays = std::collections::HashMap::new();
    let mut asks = Vec::new();
    for name in names {
        let relay = start_login(&app, &format!("{base}/account")).await;
        asks.push(corpus_ask(&base, name, &relay));
        relays.insert(name, relay);
    }
    let (_, responses) = idp.issue(&asks);
    let xml: std::collections::HashMap<&str, String> = names.into_iter().zip(responses).collect();

    // Tenant globex trusts its own IdP: the same entityID (so only the key
    // tells them apart), its own keys. Its responses: one made for acme
    // (acme's audience, ACS and request), and a genuine globex login
    // (globex's audience, ACS and request), which globex accepts at the end.
    let globex_idp = Idp::new(&base);
    let globex_id = create_tenant(&app, "globex").await;
    let cross_relay = start_login(&app, &format!("{base}/account")).await;
    let (globex_metadata, _) = globex_idp.issue(&[]);
    connect_idp(&app, &globex_id, &globex_metadata, json!({})).await;
    let own_relay = start_login_at(&app, "globex", &format!("{base}/account")).await;
    let globex_ask = {
        let mut ask = ask(&base, "globex", &own_relay, "own@example.com");
        ask["destination"] = json!(SpConfig::for_tenant(&base, "globex").unwrap().acs_url);
        ask
    };
    let (_, cross) = globex_idp.issue(&[
        ask(&base, "acme", &cross_relay, "cross@example.com"),
        globex_ask,
    ]);

    // The replay's first use is accepted (its request taken).
    let first = post_acs(&app, &xml["replay"], &relays["replay"]).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);

    let wrapped = &xml["wrapping"];
    let signed = assertion_of(wrapped).to_owned();
    let evil = evil_assertion(wrapped, "id-evil");
    let signed_id = {
        let at = signed.find(" ID=\"").unwrap() + 5;
        let end = signed[at..].find('"').unwrap();
        signed[at..at + end].to_owned()
    };
    let in_extensions = |xml: &str, assertion: &str| {
        xml.replacen(
            "<ns0:Status>",
            &format!("<ns0:Extensions>{assertion}</ns0:Extensions><ns0:Status>"),
            1,
        )
    };
    let globex_acs = SpConfig::for_tenant(&base, "globex").unwrap().acs_url;
    let sp = |name: &'static str, xml: String, code: &'static str| Attack {
        name,
        xml,
        relay: relays[name].clone(),
        clock: 0,
        code,
        request: Some((relays[name].clone(), true)),
    };
    let wrap = |name: &'static str, xml: String| Attack {
        name,
        xml: changed(wrapped, xml),
        relay: relays["wrapping"].clone(),
        clock: 0,
        code: "saml_signature_wrapping",
        request: Some((relays["wrapping"].clone(), true)),
    };
    let attacks = vec![
        sp("unsigned", xml["unsigned"].clone(), "saml_unsigned"),
        sp(
            "other key",
            xml["other key"].clone(),
            "saml_signature_invalid",
        ),
        sp(
            "other key both signed",
            xml["other key both signed"].clone(),
            "saml_signature_invalid",
        ),
        Attack {
            code: "saml_signature_invalid",
            ..wrap(
                "tampered NameID",
                wrapped.replacen(
                    ">ann@example.com</ns1:NameID>",
                    ">admin@example.com</ns1:NameID>",
                    1,
                ),
            )
        },
        // An unsigned sibling assertion before the signed one.
        wrap(
            "wrapping: sibling",
            wrapped.replacen(&signed, &format!("{evil}{signed}"), 1),
        ),
        // The signed assertion hidden in Extensions, the evil one in its place.
        wrap(
            "wrapping: extensions",
            in_extensions(&wrapped.replacen(&signed, &evil, 1), &signed),
        ),
        // The evil assertion in a ds:Object of the signed one's signature.
        wrap(
            "wrapping: object",
            wrapped.replacen(
                "</ns2:KeyInfo></ns2:Signature><ns1:Subject>",
                &format!(
                    "</ns2:KeyInfo><ns2:Object>{evil}</ns2:Object></ns2:Signature><ns1:Subject>"
                ),
                1,
            ),
        ),
        // A sibling reusing the signed assertion's ID.
        wrap(
            "wrapping: same id",
            wrapped.replacen(
                &signed,
                &format!("{signed}{}", evil_assertion(wrapped, &signed_id)),
                1,
            ),
        ),
        // The only assertion moved into Extensions.
        wrap(
            "wrapping: moved",
            in_extensions(&wrapped.replacen(&signed, "", 1), &signed),
        ),
        sp(
            "comment",
            changed(
                &xml["comment"],
                xml["comment"].replacen(
                    ">ann@example.com.evil.test</ns1:NameID>",
                    ">ann@example.com<!---->.evil.test</ns1:NameID>",
                    1,
                ),
            ),
            "saml_comment_injection",
        ),
        sp(
            "audience",
            xml["audience"].clone(),
            "saml_audience_mismatch",
        ),
        sp(
            "destination",
            xml["destination"].clone(),
            "saml_destination_mismatch",
        ),
        sp(
            "recipient",
            changed(
                &xml["recipient"],
                xml["recipient"].replacen(&format!(" Destination=\"{globex_acs}\""), "", 1),
            ),
            "saml_recipient_mismatch",
        ),
        // NotOnOrAfter is 5 minutes after issue (+ 60 s skew): an hour
        // later. The request has expired too by then, but is not swept.
        Attack {
            clock: 3600,
            ..sp("expired", xml["expired"].clone(), "saml_expired")
        },
        // NotBefore is the issue instant (- 60 s skew): ten minutes early.
        Attack {
            clock: -600,
            ..sp(
                "not yet valid",
                xml["not yet valid"].clone(),
                "saml_not_yet_valid",
            )
        },
        Attack {
            request: Some((relays["replay"].clone(), false)),
            ..sp("replay", xml["replay"].clone(), "saml_assertion_replayed")
        },
        sp(
            "unknown request",
            xml["unknown request"].clone(),
            "saml_in_response_to_mismatch",
        ),
        // The RelayState names the forged request too: validation takes it
        // as a candidate, the transaction finds no such request. The
        // request of this variant's login is untouched.
        Attack {
            relay: FORGED_REQUEST.to_owned(),
            ..sp(
                "forged relay",
                xml["forged relay"].clone(),
                "saml_in_response_to_mismatch",
            )
        },
        // No InResponseTo, acme does not allow IdP-initiated login; posted
        // as an IdP would, without RelayState.
        Attack {
            relay: String::new(),
            ..sp(
                "idp initiated",
                xml["idp initiated"].clone(),
                "saml_idp_initiated_not_allowed",
            )
        },
        // Globex's IdP, its response made for acme (audience, destination,
        // recipient, acme's request): acme trusts another key.
        Attack {
            name: "another tenant's IdP, for acme",
            xml: cross[0].clone(),
            relay: cross_relay.clone(),
            clock: 0,
            code: "saml_signature_invalid",
            request: Some((cross_relay.clone(), true)),
        },
        // Globex's IdP, a login at globex's SP, posted to acme's ACS: its
        // envelope names globex's ACS, checked before the signature.
        Attack {
            name: "another tenant's IdP, for globex",
            xml: cross[1].clone(),
            relay: own_relay.clone(),
            clock: 0,
            code: "saml_destination_mismatch",
            request: Some((own_relay.clone(), true)),
        },
        // The same without the envelope's Destination: acme trusts
        // another key.
        Attack {
            name: "another tenant's IdP, for globex, no Destination",
            xml: changed(
                &cross[1],
                cross[1].replacen(&format!(" Destination=\"{globex_acs}\""), "", 1),
            ),
            relay: own_relay.clone(),
            clock: 0,
            code: "saml_signature_invalid",
            request: Some((own_relay.clone(), true)),
        },
    ];

    let codes: Vec<&str> = attacks.iter().map(|attack| attack.code).collect();
    app.catch_up().await;
    let customers_before = count(&app, "SELECT count(*) FROM queue_customers").await;
    assert_eq!(customers_before, 1, "the replay's first login");
    for attack in attacks {
        let name = attack.name;
        let before = all_events(&app).await;
        let assertions_before = count(&app, "SELECT count(*) FROM saml_assertions").await;
        app.clock().advance(attack.clock);
        let got = post_acs(&app, &attack.xml, &attack.relay).await;
        app.clock().advance(-attack.clock);
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{name}: {}", got.text);
        assert_eq!(
            got.json["error"]["code"], attack.code,
            "{name}: {}",
            got.text
        );
        got.assert_error(StatusCode::UNAUTHORIZED, attack.code);
        assert!(got.headers.get(header::SET_COOKIE).is_none(), "{name}");

        // Exactly one new event: Queue's audit record of the refusal.
        let new: Vec<EventRow> = all_events(&app)
            .await
            .into_iter()
            .filter(|(kind, id, seq, _, _)| {
                !before
                    .iter()
                    .any(|(k, i, s, _, _)| k == kind && i == id && s == seq)
            })
            .collect();
        assert_eq!(new.len(), 1, "{name}: {new:?}");
        let (kind, _, _, event_type, payload) = &new[0];
        assert_eq!(
            (kind.as_str(), event_type.as_str()),
            ("Audit", "AuditRecorded"),
            "{name}"
        );
        let recorded = &payload["AuditRecorded"];
        assert_eq!(recorded["action"], "saml.login_refused", "{name}");
        assert_eq!(
            recorded["target"],
            format!("tenant:{acme_tenant}"),
            "{name}"
        );
        assert_eq!(recorded["metadata"]["reason"], attack.code, "{name}");
        assert_eq!(recorded["metadata"]["tenant_slug"], "acme", "{name}");
        assert!(recorded["customer_id"].is_null(), "{name}");
        assert!(
            !new.iter()
                .any(|(k, ..)| ["Customer", "Session", "Credential"].contains(&k.as_str())),
            "{name}"
        );
        // No assertion recorded as used (a refusal rolls back), no customer.
        assert_eq!(
            count(&app, "SELECT count(*) FROM saml_assertions").await,
            assertions_before,
            "{name}"
        );
        app.catch_up().await;
        assert_eq!(
            count(&app, "SELECT count(*) FROM queue_customers").await,
            customers_before,
            "{name}"
        );
        if let Some((request, kept)) = &attack.request {
            assert_eq!(outstanding(&app, request).await, *kept, "{name}");
        }
    }
    // Every refusal audited, in order; one customer (the replay's first,
    // accepted, login) and one session.
    assert_eq!(refusals(&app).await, codes);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM events WHERE event_type = 'SessionCreated'"
        )
        .await,
        1
    );
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM queue_customers")
        .fetch_all(&app.owner)
        .await
        .unwrap();
    assert_eq!(emails, ["replay@example.com"]);

    // Globex's own login was a good response, for globex: the refusal at
    // acme was acme's trust, not a broken response.
    let globex = post_acs_to(&app, "globex", &cross[1], &own_relay).await;
    assert_eq!(globex.status, StatusCode::SEE_OTHER, "{}", globex.text);
    assert!(!outstanding(&app, &own_relay).await);
}

/// The access token the hosted page gets by refreshing, as page script
/// does, with the `queue_refresh` cookie of `set_cookie` (a `Set-Cookie`).
async fn refresh_with_cookie(app: &TestApp, set_cookie: &str) -> String {
    let cookie = set_cookie.split(';').next().unwrap();
    let refreshed = app
        .send(page_request(
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(json!({})),
            &[("cookie", cookie)],
        ))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    refreshed.json["access_token"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_idp_initiated_login_signs_in_when_the_tenant_allows_it(pool: PgPool) {
    let Setup { app, idp, base } = setup_with(pool, json!({"allow_idp_initiated": true})).await;
    let (_, responses) = idp.issue(&[
        ask_in(&base, "acme", None, "ann@example.com", &["eng"]),
        ask_in(
            &base,
            "acme",
            Some(UNKNOWN_REQUEST),
            "bob@example.com",
            &["eng"],
        ),
    ]);
    // No InResponseTo and, as IdPs post it, no RelayState: the account page.
    let got = post_acs(&app, &responses[0], "").await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text);
    assert_eq!(
        got.headers[header::LOCATION],
        format!("{base}/account").as_str()
    );
    let cookie = got.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("queue_refresh=qrt_"), "{cookie}");
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events \
         WHERE aggregate_type IN ('Customer', 'Session') ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["CustomerProvisioned", "RoleGranted", "SessionCreated"]
    );
    assert_eq!(rows[0].1["CustomerProvisioned"]["email"], "ann@example.com");
    assert_eq!(rows[2].1["SessionCreated"]["method"]["kind"], "saml");
    assert!(refusals(&app).await.is_empty());
    let claims = jwt_claims(&refresh_with_cookie(&app, cookie).await);
    assert_eq!(claims["amr"], json!(["saml"]));
    assert_eq!(claims["roles"], json!(["antlers-user", "support-agent"]));

    // Allowing IdP-initiated login does not let a response to a request
    // Queue never made through.
    let before = app.event_count().await;
    post_acs(&app, &responses[1], "")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_in_response_to_mismatch");
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(refusals(&app).await, ["saml_in_response_to_mismatch"]);

    // A portal's deep link in RelayState: followed when it is on an allowed
    // origin; ignored otherwise (the account page, not an open redirect).
    let deep = format!("{base}/account?tab=roles");
    for (relay, lands) in [
        (deep.as_str(), deep.clone()),
        ("https://evil.example/phish", format!("{base}/account")),
        ("not a url", format!("{base}/account")),
    ] {
        let (_, responses) = idp.issue(&[ask_in(&base, "acme", None, "ann@example.com", &["eng"])]);
        let got = post_acs(&app, &responses[0], relay).await;
        assert_eq!(got.status, StatusCode::SEE_OTHER, "{relay}: {}", got.text);
        assert_eq!(got.headers[header::LOCATION], lands.as_str(), "{relay}");
    }
}

/// An outstanding request lives `REQUEST_TTL_SECS` (5 minutes): a response
/// answering it later is refused even while its row still waits for the
/// sweeper (the RelayState makes it a validation candidate; taking it checks
/// the expiry).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_response_to_an_expired_request_is_refused_before_the_sweeper_runs(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    // Past the request's 5 minutes (REQUEST_TTL_SECS), the response still
    // within its own 5 minutes plus 60 s of skew; the request row is still
    // there (no sweep ran).
    app.clock().advance(301);
    let before = app.event_count().await;
    post_acs(&app, &responses[0], &relay)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_in_response_to_mismatch");
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(refusals(&app).await, ["saml_in_response_to_mismatch"]);
    assert!(outstanding(&app, &relay).await);
}

/// The ACS reads a form up to 512 KiB (a large signed response with many
/// groups does not fit in the global 64 KiB); past that, 413 before any
/// work. A form of 200 KiB reaches the SAML checks (and is refused there).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_acs_reads_forms_up_to_512_kib(pool: PgPool) {
    let Setup { app, .. } = setup(pool).await;
    let form = |bytes: usize| {
        let filler = "A".repeat(bytes);
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &filler)
            .append_pair("RelayState", "x")
            .finish()
    };
    let send = |body: String| {
        app.send(
            Request::builder()
                .method(Method::POST)
                .uri("/saml/acme/acs")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    let large = send(form(200 * 1024)).await;
    assert_eq!(large.status, StatusCode::UNAUTHORIZED, "{}", large.text);
    assert!(
        large.json["error"]["code"]
            .as_str()
            .unwrap()
            .starts_with("saml_"),
        "{}",
        large.text
    );
    send(form(600 * 1024))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Every other route keeps the global limit.
    app.send(
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/auth/webauthn/login/begin")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!(
                "{{\"email\":\"{}\"}}",
                "a".repeat(100 * 1024)
            )))
            .unwrap(),
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

/// Starts a step-up at the IdP for the session of `access`; the RelayState
/// (the ForceAuthn request's id).
async fn start_step_up(app: &TestApp, access: &str) -> String {
    let started = app
        .post_auth("/api/v1/auth/saml/reauth", json!({}), access)
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    let url = url::Url::parse(started.json["redirect_url"].as_str().unwrap()).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "RelayState")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// An SP-initiated login of `email` at acme (JIT on a first one): the
/// page's access token afterwards.
async fn sign_in(app: &TestApp, idp: &Idp, base: &str, email: &str) -> String {
    let relay = start_login(app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(base, "acme", &relay, email)]);
    let acs = post_acs(app, &responses[0], &relay).await;
    assert_eq!(acs.status, StatusCode::SEE_OTHER, "{}", acs.text);
    page_refresh(app, &acs).await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_step_up_answered_for_another_person_is_refused(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    // ann and eve are both acme's.
    let mut access = Vec::new();
    for email in ["ann@example.com", "eve@example.com"] {
        access.push(sign_in(&app, &idp, &base, email).await);
    }
    // ann's step-up, answered with eve's assertion: refused with its own
    // code and audited; no session of either is reauthenticated, no new
    // session, no cookie.
    let relay = start_step_up(&app, &access[0]).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "eve@example.com")]);
    let before = app.event_count().await;
    post_acs(&app, &responses[0], &relay)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "saml_reauth_subject_mismatch");
    assert_eq!(app.event_count().await, before + 1, "only the audit event");
    assert_eq!(
        refusals(&app).await.last().map(String::as_str),
        Some("saml_reauth_subject_mismatch")
    );
    // A refusal appends nothing, and leaves the request to its session (as
    // a login's): ann's own answer to it reauthenticates her session and
    // creates none.
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let done = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert!(!done.headers.contains_key(header::SET_COOKIE));
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Session' \
         ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.as_str() != "SessionRefreshed")
            .collect::<Vec<_>>(),
        [
            "SessionCreated",
            "SessionCreated",
            "SessionSamlReauthenticated"
        ]
    );
    // Operators see each outcome as its own series (no tenant label).
    let metrics = app.get("/metrics").await.text;
    for outcome in ["success", "step_up", "saml_reauth_subject_mismatch"] {
        assert!(
            metrics.contains(&format!("queue_saml_logins_total{{outcome=\"{outcome}\"}}")),
            "{outcome}: {metrics}"
        );
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_step_up_at_the_idp_needs_a_tenant_with_saml_and_a_session(pool: PgPool) {
    let Setup { app, .. } = setup(pool).await;
    // The default tenant's passkey customer: no IdP to step up at.
    let tokens = app.register(&mut Passkey::new(), "bob@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let before = app.event_count().await;
    app.post_auth("/api/v1/auth/saml/reauth", json!({}), access)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // No token, or a service token (no customer's session): 401.
    app.post("/api/v1/auth/saml/reauth", json!({}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.post_auth("/api/v1/auth/saml/reauth", json!({}), OPS)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // return_to off the allowed origins: 400.
    app.post_auth(
        "/api/v1/auth/saml/reauth",
        json!({"return_to": "https://evil.example/"}),
        access,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_suspended_customer_cannot_start_a_step_up(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let access = sign_in(&app, &idp, &base, "ann@example.com").await;
    let customer = jwt_claims(&access)["sub"].as_str().unwrap().to_owned();
    let suspended = app
        .post_auth(
            &format!("/api/v1/admin/customers/{customer}/suspend"),
            json!({"reason": "fraud check"}),
            OPS,
        )
        .await;
    assert!(suspended.status.is_success(), "{}", suspended.text);
    let before = app.event_count().await;
    // Suspension ended her session in the same transaction: the step-up
    // is refused before it stores a request.
    app.post_auth("/api/v1/auth/saml/reauth", json!({}), &access)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "session_revoked");
    assert_eq!(app.event_count().await, before);
    let requests: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saml_requests WHERE session_id IS NOT NULL")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(requests, 0);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_step_up_answered_after_the_session_ended_is_refused(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let access = sign_in(&app, &idp, &base, "ann@example.com").await;
    // She starts a step-up, then signs out (another tab) while at the IdP.
    let relay = start_step_up(&app, &access).await;
    let logout = app
        .post_auth("/api/v1/auth/logout", json!({}), &access)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text);
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let before = app.event_count().await;
    post_acs(&app, &responses[0], &relay)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Only the refusal's audit event; no session comes back to life.
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(
        refusals(&app).await.last().map(String::as_str),
        Some("session_not_active")
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_admin_ends_a_tenants_saml_sessions_decided_on_the_log(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let tenant_id = TenantId::for_slug(&TenantSlug::parse("acme").unwrap()).to_string();
    // SAML sessions of ann in acme; bob's passkey session in the default
    // tenant.
    let mut ann = Vec::new();
    for _ in 0..2 {
        ann.push(sign_in(&app, &idp, &base, "ann@example.com").await);
    }
    let bob = app.register(&mut Passkey::new(), "bob@example.com").await;
    let bob = bob["access_token"].as_str().unwrap().to_owned();
    app.catch_up().await;
    // A read row edited to look like one of acme's SAML sessions: the rows
    // only nominate; bob's session stays (its customer is not acme's).
    let bob_session = jwt_claims(&bob)["sid"].as_str().unwrap().to_owned();
    let forged =
        sqlx::query("UPDATE queue_sessions SET tenant_id = $1, amr = 'saml' WHERE session_id = $2")
            .bind(uuid::Uuid::parse_str(&tenant_id).unwrap())
            .bind(uuid::Uuid::parse_str(&bob_session).unwrap())
            .execute(&app.owner)
            .await
            .unwrap()
            .rows_affected();
    assert_eq!(forged, 1);
    // A third session the projector has not folded yet: the log names it.
    ann.push(sign_in(&app, &idp, &base, "ann@example.com").await);
    let folded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM queue_sessions WHERE customer_id <> $1")
            .bind(uuid::Uuid::parse_str(jwt_claims(&bob)["sub"].as_str().unwrap()).unwrap())
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(folded, 2, "the third session is not in the read table yet");

    let path = format!("/api/v1/tenants/{tenant_id}/sessions/revoke");
    let ended = app
        .post_auth(
            &path,
            json!({"reason": "IdP key leaked", "saml_only": true}),
            OPS,
        )
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.text);
    assert_eq!(ended.json, json!({"revoked": 3}));
    for access in &ann {
        app.get_auth("/api/v1/auth/me", access)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "session_revoked");
    }
    assert_eq!(
        app.get_auth("/api/v1/auth/me", &bob).await.status,
        StatusCode::OK
    );
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT payload->'SessionRevoked'->>'reason' FROM events WHERE event_type = 'SessionRevoked'",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    assert_eq!(reasons, ["admin", "admin", "admin"]);
    // One audit event with the reason, the caller and the count, in acme:
    // acme's own limited token reads it.
    app.catch_up().await;
    let page = app
        .get_auth("/api/v1/audit/events?action=tenant.sessions_revoked", ACME)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let events = page.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", page.text);
    assert_eq!(
        events[0]["metadata"],
        json!({"reason": "IdP key leaked", "service": "ops", "saml_only": true, "revoked": 3})
    );
    // Again: nothing left to end.
    let again = app
        .post_auth(
            &path,
            json!({"reason": "IdP key leaked", "saml_only": true}),
            OPS,
        )
        .await;
    assert_eq!(again.json, json!({"revoked": 0}));
    // Refusals: no reason 400; another tenant's token 404; unknown tenant
    // 404; no admin scope 403. Nothing appended.
    let before = app.event_count().await;
    app.post_auth(&path, json!({"saml_only": true}), OPS)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let nobody = TenantId::for_slug(&TenantSlug::parse("initech").unwrap());
    app.post_auth(
        &format!("/api/v1/tenants/{nobody}/sessions/revoke"),
        json!({"reason": "x"}),
        OPS,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post_auth(&path, json!({"reason": "x"}), crate::service::AUDITOR)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post(&path, json!({"reason": "x"}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // A customer's token is no service's: 403.
    app.post_auth(&path, json!({"reason": "x"}), &bob)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_step_up_whose_append_loses_a_race_is_decided_again(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    let access = sign_in(&app, &idp, &base, "ann@example.com").await;
    // The first append of the step-up meets another writer's row on the
    // stream (as when the page refreshes the session at that moment): the
    // store reports the lost race once, as Postgres would. (A sequence
    // counts the attempts: nextval survives the rollback.)
    sqlx::raw_sql(
        "CREATE SEQUENCE step_up_appends; \
         CREATE FUNCTION lose_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
         BEGIN \
           IF NEW.event_type = 'SessionSamlReauthenticated' \
              AND nextval('step_up_appends') = 1 THEN \
             RAISE unique_violation USING CONSTRAINT = 'events_pkey'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER lose_once BEFORE INSERT ON events \
           FOR EACH ROW EXECUTE FUNCTION lose_once();",
    )
    .execute(&app.owner)
    .await
    .unwrap();
    let relay = start_step_up(&app, &access).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let done = post_acs(&app, &responses[0], &relay).await;
    // Decided again: reauthenticated, not 409 (nor a replay of its own
    // assertion: the lost attempt kept nothing).
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM step_up_appends")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(attempts, 2, "lost once, then appended");
    let reauthenticated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'SessionSamlReauthenticated'",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(reauthenticated, 1);
}
