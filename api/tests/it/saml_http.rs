//! SAML end to end over real HTTP (issue 22): Queue's router on a TCP port,
//! pysaml2's IdP as an HTTP server on loopback (saml/tests/idp/idp_server.py,
//! its own keys), and the test as the browser: it follows Queue's 303 to the
//! IdP, which parses Queue's AuthnRequest as any deployed IdP would, takes
//! the IdP's auto-submitting form and posts it to Queue's ACS. Then the same
//! with an IdP-initiated response.

use std::future::IntoFuture;

use queue_domain::types::{TenantId, TenantSlug};
use queue_saml::SpConfig;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{TestApp, ORIGIN};
use crate::saml_acs::{connect_idp, IDP_ENTITY_ID};
use crate::service::service_app;
use crate::tenants::{create_tenant, jwt_claims};
use queue_testkit::saml_idp::IdpServer;

/// The IdP for acme's SP, with one user: ann, in group `eng`.
fn start_idp() -> IdpServer {
    IdpServer::start(
        IDP_ENTITY_ID,
        &[SpConfig::for_tenant(ORIGIN, "acme").unwrap().metadata_xml()],
        json!({
            "name_id": "ann@example.com",
            "attributes": {"mail": ["ann@example.com"], "displayName": ["Ann Example"],
                           "groups": ["eng"]},
        }),
    )
}

/// An `<input name="…" value="…">` of the IdP's form, HTML entities undone.
fn form_field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let value = &html[at..];
    let start = value.find("value=\"").unwrap() + "value=\"".len();
    let end = start + value[start..].find('"').unwrap();
    value[start..end]
        .replace("&quot;", "\"")
        .replace("&#x3D;", "=")
        .replace("&#61;", "=")
        .replace("&amp;", "&")
}

/// The form's action attribute.
fn form_action(html: &str) -> String {
    let start = html.find("action=\"").unwrap() + "action=\"".len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

/// Queue's router on a TCP port; its base URL.
async fn serve(app: &TestApp) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        axum::serve(
            listener,
            queue_api::app(app.state.clone())
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .into_future(),
    );
    format!("http://{addr}")
}

/// Posts the IdP's form to the ACS it names (at Queue's TCP address: the
/// public origin is the one the SP metadata names, as behind a proxy).
async fn submit(http: &reqwest::Client, queue: &str, html: &str) -> reqwest::Response {
    let action = form_action(html);
    let path = action
        .strip_prefix(ORIGIN)
        .unwrap_or_else(|| panic!("the form posts to {action}, not Queue's ACS"));
    assert_eq!(path, "/saml/acme/acs");
    let mut fields = vec![("SAMLResponse", form_field(html, "SAMLResponse"))];
    if html.contains("name=\"RelayState\"") {
        fields.push(("RelayState", form_field(html, "RelayState")));
    }
    http.post(format!("{queue}{path}"))
        .form(&fields)
        .send()
        .await
        .unwrap()
}

/// An SP-initiated login as a browser makes it: Queue's 303 to the IdP, the
/// IdP's form (it parses Queue's AuthnRequest), that form posted to the ACS.
/// Queue's answer to the post.
async fn sp_initiated_login(
    http: &reqwest::Client,
    queue: &str,
    idp: &IdpServer,
    return_to: &str,
) -> reqwest::Response {
    let login = http
        .get(format!("{queue}/saml/acme/login"))
        .query(&[("return_to", return_to)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let to_idp = login.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        to_idp.starts_with(&format!("{}/sso/redirect?", idp.base)),
        "{to_idp}"
    );
    let at_idp = http.get(&to_idp).send().await.unwrap();
    let status = at_idp.status();
    let form = at_idp.text().await.unwrap();
    assert_eq!(status, 200, "the IdP refused Queue's request: {form}");
    submit(http, queue, &form).await
}

/// The access token a page gets by refreshing with the `queue_refresh`
/// cookie Queue set, its claims, and the rotated cookie.
async fn page_access(
    http: &reqwest::Client,
    queue: &str,
    set_cookie: &str,
) -> (String, Value, String) {
    let token = set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("queue_refresh=");
    let refreshed = http
        .post(format!("{queue}/api/v1/auth/session/refresh"))
        .header("x-queue-page", "1")
        .header("origin", ORIGIN)
        .header("sec-fetch-site", "same-origin")
        .header("cookie", format!("queue_refresh={token}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let rotated = refreshed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = refreshed.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&access);
    (access, claims, rotated)
}

/// The claims of the access token a page gets with the cookie.
async fn page_token(http: &reqwest::Client, queue: &str, set_cookie: &str) -> Value {
    page_access(http, queue, set_cookie).await.1
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_real_idp_over_http_signs_customers_in_sp_and_idp_initiated(pool: PgPool) {
    let app = service_app(pool).await;
    let idp = start_idp();
    let tenant_id = create_tenant(&app, "acme").await;
    connect_idp(
        &app,
        &tenant_id,
        &idp.metadata,
        json!({"allow_idp_initiated": true}),
    )
    .await;
    let queue = serve(&app).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // SP-initiated: Queue sends the browser to the IdP.
    let return_to = format!("{ORIGIN}/account?tab=roles");
    let acs = sp_initiated_login(&http, &queue, &idp, &return_to).await;
    assert_eq!(acs.status(), 303, "{:?}", acs.headers());
    assert_eq!(acs.headers()["location"], return_to.as_str());
    let cookie = acs.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("queue_refresh=qrt_"), "{cookie}");

    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type IN ('Customer', 'Session') \
         ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        ["CustomerProvisioned", "RoleGranted", "SessionCreated"]
    );
    // The page's refresh with the cookie: a token of the tenant, amr saml,
    // the group's role.
    let claims = page_token(&http, &queue, &cookie).await;
    assert_eq!(claims["amr"], json!(["saml"]));
    let acme = TenantId::for_slug(&TenantSlug::parse("acme").unwrap());
    assert_eq!(claims["tid"], acme.to_string());
    assert_eq!(claims["roles"], json!(["antlers-user", "support-agent"]));

    // IdP-initiated (allowed for this tenant): no request, lands on /account.
    let sp = SpConfig::for_tenant(ORIGIN, "acme").unwrap();
    let unsolicited = http
        .get(format!("{}/idp-initiated", idp.base))
        .query(&[("sp", sp.entity_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(unsolicited.status(), 200);
    let form = unsolicited.text().await.unwrap();
    let acs = submit(&http, &queue, &form).await;
    assert_eq!(acs.status(), 303, "{:?}", acs.headers());
    assert_eq!(
        acs.headers()["location"],
        format!("{ORIGIN}/account").as_str()
    );
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'SessionCreated' \
         AND payload->'SessionCreated'->'method'->>'kind' = 'saml'",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(sessions, 2);

    // The IdP's administrator takes ann out of `eng`: her next login
    // revokes the role the group gave, by `saml:acme` with the reason, and
    // her new token no longer carries it.
    idp.put("/user/groups", json!([])).await;
    let acs = sp_initiated_login(&http, &queue, &idp, &return_to).await;
    assert_eq!(acs.status(), 303, "{:?}", acs.headers());
    let cookie = acs.headers()["set-cookie"].to_str().unwrap().to_owned();
    let revoked: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->'RoleRevoked'->>'actor', payload->'RoleRevoked'->>'reason' \
         FROM events WHERE event_type = 'RoleRevoked'",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].0, "saml:acme");
    assert_eq!(
        revoked[0].1,
        "no SAML group of the customer gives support-agent any more"
    );
    let claims = page_token(&http, &queue, &cookie).await;
    assert_eq!(claims["roles"], json!(["antlers-user"]));
}

/// A step-up at the IdP: Queue's ForceAuthn request for the session of
/// `access`, the IdP's form, posted to the ACS. Queue's answer to the post.
async fn saml_step_up(
    http: &reqwest::Client,
    queue: &str,
    idp: &IdpServer,
    access: &str,
    return_to: &str,
) -> reqwest::Response {
    let started = http
        .post(format!("{queue}/api/v1/auth/saml/reauth"))
        .bearer_auth(access)
        .json(&json!({"return_to": return_to}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let started: Value = started.json().await.unwrap();
    let to_idp = started["redirect_url"].as_str().unwrap();
    assert!(
        to_idp.starts_with(&format!("{}/sso/redirect?", idp.base)),
        "{to_idp}"
    );
    let at_idp = http.get(to_idp).send().await.unwrap();
    let status = at_idp.status();
    let form = at_idp.text().await.unwrap();
    assert_eq!(status, 200, "the IdP refused Queue's request: {form}");
    submit(http, queue, &form).await
}

/// A factor change (new backup codes) with `access`: its status and code.
async fn regenerate_codes(http: &reqwest::Client, queue: &str, access: &str) -> (u16, Value) {
    let answer = http
        .post(format!("{queue}/api/v1/auth/backup-codes"))
        .bearer_auth(access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].clone())
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_saml_customer_steps_up_at_the_idp_which_must_authenticate_anew(pool: PgPool) {
    let app = service_app(pool).await;
    let idp = start_idp();
    let tenant_id = create_tenant(&app, "acme").await;
    connect_idp(&app, &tenant_id, &idp.metadata, json!({})).await;
    let queue = serve(&app).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The IdP's own session of ann began an hour ago.
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    idp.put("/sso", json!({"started_at": hour_ago})).await;
    let account = format!("{ORIGIN}/account");
    let acs = sp_initiated_login(&http, &queue, &idp, &account).await;
    assert_eq!(acs.status(), 303, "{:?}", acs.headers());
    // Her Queue session is new, but she proved presence an hour ago: a
    // factor change needs a fresh authentication.
    let login_cookie = acs.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (access, claims, cookie) = page_access(&http, &queue, &login_cookie).await;
    assert_eq!(claims["auth_time"], hour_ago);
    let session_id = claims["sid"].as_str().unwrap().to_owned();
    assert_eq!(
        regenerate_codes(&http, &queue, &access).await,
        (401, json!("reauth_required"))
    );
    let reauthenticated = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT payload FROM events WHERE event_type = 'SessionSamlReauthenticated' \
             AND aggregate_id = $1",
        )
        .bind(&session_id)
        .fetch_all(&app.owner)
        .await
        .unwrap()
    };

    // An IdP that ignores ForceAuthn answers from its hour-old session:
    // refused, audited, the session not reauthenticated.
    idp.put("/sso", json!({"honor_force_authn": false})).await;
    let refused = saml_step_up(&http, &queue, &idp, &access, &account).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "saml_reauth_stale");
    assert!(reauthenticated().await.is_empty());
    assert_eq!(
        regenerate_codes(&http, &queue, &access).await,
        (401, json!("reauth_required"))
    );

    // One that honours it authenticates her anew: the same session is
    // reauthenticated (no new cookie), and the factor change goes through.
    idp.put("/sso", json!({"honor_force_authn": true})).await;
    let return_to = format!("{ORIGIN}/account?tab=security");
    let done = saml_step_up(&http, &queue, &idp, &access, &return_to).await;
    assert_eq!(done.status(), 303, "{:?}", done.headers());
    assert_eq!(done.headers()["location"], return_to.as_str());
    assert!(done.headers().get("set-cookie").is_none());
    let events = reauthenticated().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let authn_instant = events[0]["SessionSamlReauthenticated"]["authn_instant"]
        .as_str()
        .unwrap()
        .to_owned();
    let authn_instant = chrono::DateTime::parse_from_rfc3339(&authn_instant).unwrap();
    assert!(
        authn_instant.timestamp() > hour_ago + 3000,
        "{authn_instant}"
    );
    assert_eq!(regenerate_codes(&http, &queue, &access).await.0, 201);
    // Her refreshed token says when: `auth_time` is the IdP's AuthnInstant.
    let (_, claims, _) = page_access(&http, &queue, &cookie).await;
    assert_eq!(claims["auth_time"], authn_instant.timestamp());
}
