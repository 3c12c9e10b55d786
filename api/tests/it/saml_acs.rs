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
use queue_saml::SpConfig;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{Response, TestApp, ORIGIN};
use crate::service::{service_app, OPS};
use crate::tenants::{create_tenant, jwt_claims};

const IDP_ENTITY_ID: &str = "https://idp.example.test/metadata";
const IDP_SSO_URL: &str = "https://idp.example.test/sso/redirect";

fn repo_root() -> PathBuf {
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
    let app = service_app(pool).await;
    let base = app.state.config().rp_origins[0]
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let idp = Idp::new(&base);
    let (metadata, _) = idp.issue(&[]);
    let tenant_id = create_tenant(&app, "acme").await;
    let put = app
        .request(
            Method::PUT,
            &format!("/api/v1/tenants/{tenant_id}/saml"),
            Some(json!({
                "idp_metadata": metadata,
                "email_attribute": "urn:mace:dir:attribute-def:mail",
                "display_name_attribute": "urn:mace:dir:attribute-def:displayName",
                "groups_attribute": "groups",
                "group_roles": {"eng": ["support-agent"]},
                "jit_provisioning": true,
            })),
            Some(OPS),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    Setup { app, idp, base }
}

/// Starts an SP-initiated login; the RelayState (the request id).
pub async fn start_login(app: &TestApp, return_to: &str) -> String {
    let got = app
        .get(&format!(
            "/saml/acme/login?return_to={}",
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
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &STANDARD.encode(response_xml))
        .append_pair("RelayState", relay_state)
        .finish();
    app.send(
        Request::builder()
            .method(Method::POST)
            .uri("/saml/acme/acs")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
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
        ["CustomerRegistered", "RoleGranted", "SessionCreated"],
        "{rows:?}"
    );
    let registered = &rows[0].2["CustomerRegistered"];
    assert_eq!(registered["email"], "ann@example.com");
    assert_eq!(registered["tenant_id"], tenant.to_string());
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
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("queue_refresh=");
    let refreshed = app
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/api/v1/auth/session/refresh")
                .header("x-queue-page", "1")
                .header(header::ORIGIN, ORIGIN)
                .header("sec-fetch-site", "same-origin")
                .header(header::COOKIE, format!("queue_refresh={token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    let claims = jwt_claims(refreshed.json["access_token"].as_str().unwrap());
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
    assert_eq!(names, ["CustomerRegistered", "RoleGranted", "RoleRevoked"]);
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
