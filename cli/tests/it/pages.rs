//! The hosted pages in real headless chromium (Debian `chromium` and
//! `chromium-driver`, installed by scripts/browser-setup) against a real
//! `queue serve`, with WebDriver virtual authenticators doing the WebAuthn
//! ceremonies: every step a person takes, through the page ids the contract
//! names (docs/api-contract.md, "Hosted pages"; ADR 0209). And a SAML
//! customer's sign-in and step-up through pysaml2's IdP on another site,
//! its auto-posting forms submitted by the browser (ADRs 0218, 0220).

use std::path::{Path, PathBuf};
use std::time::Duration;

use queue_testkit::poll::eventually_within;
use queue_testkit::saml_idp::IdpServer;
use serde_json::{json, Value};

use crate::procs::{client, Instance, Keys, TestDb};
use crate::webdriver::Browser;

const EMAIL: &str = "ada@example.com";

/// `queue serve` whose WebAuthn origin is the page's (`http://localhost:PORT`
/// is a secure context, so WebAuthn works over plain HTTP there).
async fn serve(tag: &str) -> (TestDb, Keys, Instance, String) {
    serve_with(tag, &[]).await
}

/// As [`serve`], with `extra` settings.
async fn serve_with(tag: &str, extra: &[(&str, &str)]) -> (TestDb, Keys, Instance, String) {
    let db = TestDb::create(tag).await;
    let keys = Keys::new(tag);
    let mut settings = vec![
        ("QUEUE_RP_ID", "localhost"),
        ("QUEUE_RP_ORIGIN", "http://localhost:{port}"),
        ("QUEUE_ISSUER", "http://localhost:{port}"),
        ("QUEUE_RATE_LIMIT_PER_ADDRESS", "1000"),
        ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "1000"),
    ];
    settings.extend_from_slice(extra);
    let instance = Instance::start_with(tag, &db.url(tag), &keys, &settings).await;
    let origin = instance.base.replace("127.0.0.1", "localhost");
    (db, keys, instance, origin)
}

/// Where screenshots go: docs/screenshots/ with `QUEUE_UPDATE_SCREENSHOTS=1`
/// (how the committed ones were made), else a scratch directory, so a test
/// run takes and checks them without touching tracked files.
fn screenshots(scratch: &Path) -> PathBuf {
    let dir = if std::env::var("QUEUE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        scratch.join("screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page at phone (390 CSS px, mobile) and desktop (1280 px) width.
async fn shoot(browser: &Browser, dir: &Path, name: &str) {
    browser
        .screenshot(390, true, &dir.join(format!("{name}-phone.png")))
        .await;
    browser
        .screenshot(1280, false, &dir.join(format!("{name}-desktop.png")))
        .await;
}

/// The ids of `li[data-<attr>]` in `list`, in page order.
async fn ids(browser: &Browser, list: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in browser
        .find_all(&format!("ul#{list} > li[data-{attr}]"))
        .await
    {
        out.push(
            browser
                .attr(&element, &format!("data-{attr}"))
                .await
                .unwrap(),
        );
    }
    out
}

/// Nothing page script can read holds a refresh token: no readable cookie,
/// nothing in either storage, and a refresh answer without one. The cookie
/// exists, HttpOnly, SameSite=Strict and scoped to the refresh path.
async fn assert_refresh_token_hidden(browser: &Browser) {
    let readable = browser
        .js(
            "const all = [document.cookie];\
             for (const s of [localStorage, sessionStorage]) {\
               for (let i = 0; i < s.length; i++) { all.push(s.key(i) + '=' + s.getItem(s.key(i))); }\
             }\
             return all;",
            json!([]),
        )
        .await;
    assert_eq!(readable, json!([""]), "page script can read: {readable}");

    let answer = browser
        .js_async(
            "const done = arguments[arguments.length - 1];\
             fetch('/api/v1/auth/session/refresh', {method: 'POST',\
               headers: {'X-Queue-Page': '1', 'Content-Type': 'application/json'}, body: '{}'})\
               .then(r => r.json().then(body => done({status: r.status, body})))\
               .catch(e => done({error: String(e)}));",
            json!([]),
        )
        .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(answer["body"]["access_token"].is_string(), "{answer}");
    assert!(answer["body"].get("refresh_token").is_none(), "{answer}");
    assert!(!answer.to_string().contains("qrt"), "{answer}");

    let cookies = browser.all_cookies().await;
    let refresh: Vec<&Value> = cookies
        .iter()
        .filter(|c| c["name"] == "queue_refresh")
        .collect();
    assert_eq!(refresh.len(), 1, "{cookies:?}");
    let cookie = refresh[0];
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/api/v1/auth/session/refresh", "{cookie}");
    assert_eq!(cookie["secure"], false, "http://localhost: not Secure");
}

/// Takes the WebAuthn JSON helpers away from this page, so its next
/// ceremony runs the script's base64url fallback (older browsers).
async fn without_json_helpers(browser: &Browser) {
    let gone = browser
        .js(
            "PublicKeyCredential.parseCreationOptionsFromJSON = undefined;\
             PublicKeyCredential.parseRequestOptionsFromJSON = undefined;\
             PublicKeyCredential.prototype.toJSON = undefined;\
             return [typeof PublicKeyCredential.parseCreationOptionsFromJSON,\
                     typeof PublicKeyCredential.parseRequestOptionsFromJSON,\
                     typeof PublicKeyCredential.prototype.toJSON];",
            json!([]),
        )
        .await;
    assert_eq!(gone, json!(["undefined", "undefined", "undefined"]));
}

/// The page's console shows no CSP violation and no script error.
async fn assert_clean_console(browser: &Browser) {
    let bad: Vec<Value> = browser
        .console()
        .await
        .into_iter()
        .filter(|entry| {
            let message = entry["message"].as_str().unwrap_or("");
            entry["level"] == "SEVERE"
                // Refusals the pages expect and show (401 after logout,
                // 401 invalid_code, 409 last_credential) are logged by
                // chromium as failed loads; CSP violations and script
                // errors are not.
                && !message.contains("Failed to load resource")
        })
        .collect();
    assert!(bad.is_empty(), "console errors: {bad:?}");
}

#[tokio::test]
async fn a_person_manages_passkeys_sessions_and_recovery_in_a_real_browser() {
    let (_db, keys, instance, origin) = serve("pages_flow").await;
    let shots = screenshots(&keys.dir);
    let browser = Browser::start().await;
    let first = browser.add_authenticator().await;

    // GET / → /login.
    browser.goto(&format!("{origin}/")).await;
    browser.wait_path("/login").await;
    browser.wait_for("input#email").await;
    shoot(&browser, &shots, "login").await;
    // This chromium has the WebAuthn JSON helpers, so the first ceremonies
    // use them; the fallback is exercised below.
    let native = browser
        .js(
            "return [typeof PublicKeyCredential.parseCreationOptionsFromJSON,\
                     typeof PublicKeyCredential.parseRequestOptionsFromJSON,\
                     typeof PublicKeyCredential.prototype.toJSON];",
            json!([]),
        )
        .await;
    assert_eq!(native, json!(["function", "function", "function"]));

    // Register with the first authenticator.
    browser.type_into("#email", EMAIL).await;
    browser.type_into("#display-name", "Ada Lovelace").await;
    browser.click("#register").await;
    browser.wait_path("/account").await;
    browser
        .wait_for("ul#passkeys > li[data-credential-id]")
        .await;
    assert_eq!(browser.text_of("#me").await.as_deref(), Some(EMAIL));
    let first_ids = ids(&browser, "passkeys", "credential-id").await;
    assert_eq!(first_ids.len(), 1);
    assert_eq!(browser.credentials(&first).await.len(), 1);
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(
        browser
            .count("ul#passkeys > li button[data-action=\"rename\"]")
            .await,
        1
    );
    assert_eq!(
        browser
            .count("ul#passkeys > li button[data-action=\"delete\"]")
            .await,
        1
    );
    assert_eq!(
        browser
            .count("ul#sessions > li button[data-action=\"revoke\"]")
            .await,
        1
    );
    assert_refresh_token_hidden(&browser).await;

    // A reload keeps the person signed in (refresh through the cookie).
    browser.goto(&format!("{origin}/account")).await;
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(browser.text_of("#me").await.as_deref(), Some(EMAIL));

    // Log out: back on /login, and /account sends us back there.
    browser.click("#logout").await;
    browser.wait_path("/login").await;
    assert!(
        browser
            .all_cookies()
            .await
            .iter()
            .all(|c| c["name"] != "queue_refresh"),
        "logout clears the refresh cookie"
    );
    browser.goto(&format!("{origin}/account")).await;
    browser.wait_path("/login").await;

    // Discoverable login: #email empty.
    browser.wait_for("input#email").await;
    browser.click("#login").await;
    browser.wait_path("/account").await;
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(browser.text_of("#me").await.as_deref(), Some(EMAIL));
    shoot(&browser, &shots, "account").await;

    // Rename the passkey.
    browser
        .click("ul#passkeys > li[data-credential-id] button[data-action=\"rename\"]")
        .await;
    browser
        .type_into(
            "ul#passkeys > li[data-credential-id] form input",
            "Work laptop",
        )
        .await;
    browser
        .click("ul#passkeys > li[data-credential-id] form button[type=\"submit\"]")
        .await;
    browser
        .wait_for_count(
            "ul#passkeys > li[data-credential-id] form",
            |n| n == 0,
            "to close",
        )
        .await;
    assert_eq!(
        browser
            .text_of("ul#passkeys > li[data-credential-id] .name")
            .await
            .as_deref(),
        Some("Work laptop")
    );

    // A second passkey from a second authenticator (the first one gone),
    // through the script's fallback.
    browser.remove_authenticator(&first).await;
    let second = browser.add_authenticator().await;
    without_json_helpers(&browser).await;
    browser.click("#add-passkey").await;
    browser
        .wait_for_count(
            "ul#passkeys > li[data-credential-id]",
            |n| n == 2,
            "to be two",
        )
        .await;
    assert_eq!(browser.credentials(&second).await.len(), 1);
    let both = ids(&browser, "passkeys", "credential-id").await;
    let second_id = both
        .iter()
        .find(|id| !first_ids.contains(id))
        .unwrap()
        .clone();

    // Log in with the second alone (fallback again, for the assertion).
    browser.click("#logout").await;
    browser.wait_path("/login").await;
    browser.type_into("#email", EMAIL).await;
    without_json_helpers(&browser).await;
    browser.click("#login").await;
    browser.wait_path("/account").await;
    browser
        .wait_for_count(
            "ul#passkeys > li[data-credential-id]",
            |n| n == 2,
            "to be two",
        )
        .await;

    // Delete the first; the last is refused with the reason announced.
    browser
        .click(&format!(
            "ul#passkeys > li[data-credential-id=\"{}\"] button[data-action=\"delete\"]",
            first_ids[0]
        ))
        .await;
    browser
        .wait_for_count(
            "ul#passkeys > li[data-credential-id]",
            |n| n == 1,
            "to be one",
        )
        .await;
    assert_eq!(
        ids(&browser, "passkeys", "credential-id").await,
        vec![second_id.clone()]
    );
    browser
        .click("ul#passkeys > li[data-credential-id] button[data-action=\"delete\"]")
        .await;
    let error = browser.wait_error().await;
    assert!(error.contains("last passkey"), "{error}");
    let alert = browser.wait_for("#error").await;
    assert_eq!(browser.attr(&alert, "role").await.as_deref(), Some("alert"));
    assert_eq!(
        ids(&browser, "passkeys", "credential-id").await,
        vec![second_id.clone()]
    );

    // Backup codes, shown once.
    browser.click("#backup-codes").await;
    browser
        .wait_for_count("ul#codes > li", |n| n == 10, "to be ten")
        .await;
    let code = browser.text_of("ul#codes > li").await.unwrap();
    assert!(!code.is_empty());
    shoot(&browser, &shots, "account-codes").await;
    let passkey_session = ids(&browser, "sessions", "session-id").await;
    assert_eq!(
        passkey_session.len(),
        1,
        "only the current session is active"
    );

    // Recovery on /recover (the passkey session stays signed in elsewhere:
    // its cookie is simply replaced in this browser).
    browser.goto(&format!("{origin}/recover")).await;
    browser.wait_for("input#code").await;
    browser.type_into("#email", EMAIL).await;
    browser.type_into("#code", "not-a-code").await;
    browser.click("#redeem").await;
    let error = browser.wait_error().await;
    assert!(error.contains("backup code"), "{error}");
    shoot(&browser, &shots, "recover").await;
    browser.type_into("#code", &code).await;
    browser.click("#redeem").await;
    browser.wait_path("/account").await;
    browser
        .wait_for_count("ul#sessions > li[data-session-id]", |n| n == 2, "to be two")
        .await;
    let current = browser
        .find_all("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(current.len(), 1);
    let current_id = browser.attr(&current[0], "data-session-id").await.unwrap();
    assert_ne!(current_id, passkey_session[0]);

    // Revoke the other session.
    browser
        .click(&format!(
            "ul#sessions > li[data-session-id=\"{}\"] button[data-action=\"revoke\"]",
            passkey_session[0]
        ))
        .await;
    browser
        .wait_for_count("ul#sessions > li[data-session-id]", |n| n == 1, "to be one")
        .await;
    assert_eq!(
        ids(&browser, "sessions", "session-id").await,
        vec![current_id]
    );
    // The server says so too: a fresh page load lists one session (reads
    // see the caller's own writes, ADR 0210).
    browser.goto(&format!("{origin}/account")).await;
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(browser.count("ul#sessions > li[data-session-id]").await, 1);
    assert_refresh_token_hidden(&browser).await;
    assert_clean_console(&browser).await;

    drop(browser);
    let log = instance.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn every_page_is_served_with_a_strict_policy() {
    let (_db, _keys, instance, _origin) = serve("pages_csp").await;
    let http = client();
    let root = http
        .get(format!("{}/", instance.base))
        .send()
        .await
        .unwrap();
    // reqwest follows the redirect.
    assert_eq!(root.url().path(), "/login");
    for path in [
        "/login",
        "/account",
        "/recover",
        "/pages/app.js",
        "/pages/app.css",
    ] {
        let response = http
            .get(format!("{}{path}", instance.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let csp = header("content-security-policy");
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for wanted in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(
                directives.contains(&wanted),
                "{path}: {wanted} missing in {csp}"
            );
        }
        for loose in [
            "unsafe-inline",
            "unsafe-eval",
            "*",
            "data:",
            "http:",
            "https:",
        ] {
            assert!(!csp.contains(loose), "{path}: {loose} in {csp}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        let body = response.text().await.unwrap();
        if path.ends_with(".html") || !path.starts_with("/pages/") {
            // No inline script or style, nothing from another origin.
            assert!(!body.contains("<script>"), "{path}");
            assert!(!body.contains("style="), "{path}");
            assert!(!body.contains("<style"), "{path}");
            assert!(!body.contains("://"), "{path}: {body}");
        }
    }
}

/// A tenant admin's token for the SAML test.
const ADMIN: &str = "admin-token-pages-000001";

#[tokio::test]
async fn a_saml_customer_signs_in_and_steps_up_at_the_idp_in_a_real_browser() {
    let (db, _keys, instance, origin) = serve_with(
        "pages_saml",
        &[
            ("QUEUE_SERVICE_TOKEN_ADMIN", ADMIN),
            ("QUEUE_SERVICE_SCOPES_ADMIN", "admin"),
        ],
    )
    .await;
    // pysaml2's IdP on its own origin, knowing acme's SP at the page's.
    let sp = queue_saml::SpConfig::for_tenant(&origin, "acme").unwrap();
    let idp = IdpServer::start(
        "https://idp.example.test/idp",
        &[sp.metadata_xml()],
        json!({"name_id": "ann@example.com",
               "attributes": {"mail": ["ann@example.com"], "displayName": ["Ann Example"]}}),
    );
    // Her IdP session began an hour ago: her login is not a fresh proof.
    let hour_ago = epoch_secs() - 3600;
    idp.put("/sso", json!({"started_at": hour_ago})).await;
    let http = client();
    let created = http
        .post(format!("{}/api/v1/tenants", instance.base))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "acme", "name": "Acme Inc."}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tenant: Value = created.json().await.unwrap();
    let configured = http
        .put(format!(
            "{}/api/v1/tenants/{}/saml",
            instance.base,
            tenant["tenant_id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN)
        .json(
            &json!({"idp_metadata": idp.metadata, "email_attribute": "mail",
                      "display_name_attribute": "displayName", "jit_provisioning": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        configured.status(),
        200,
        "{}",
        configured.text().await.unwrap()
    );

    // The browser goes to acme's login, through the IdP (its auto-posting
    // form, from another site), and lands on the account page signed in.
    let browser = Browser::start().await;
    browser.goto(&format!("{origin}/saml/acme/login")).await;
    browser.wait_path("/account").await;
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    assert_eq!(
        browser.text_of("#me").await.as_deref(),
        Some("ann@example.com")
    );
    let current = browser
        .text_of("ul#sessions > li[data-current=\"true\"] .name")
        .await
        .unwrap_or_default();
    assert!(current.ends_with("single sign-on"), "{current}");
    assert_refresh_token_hidden(&browser).await;

    // New backup codes need a fresh authentication: the page sends her to
    // the IdP with ForceAuthn, and she comes back to a new load of this page
    // (the mark set on this one is gone).
    browser
        .js("window.queueTestMark = true; return null;", json!([]))
        .await;
    browser.click("#backup-codes").await;
    eventually_within("the page to come back from the IdP", Duration::from_secs(15), || async {
        let fresh = browser
            .js("return typeof window.queueTestMark === 'undefined' && document.readyState === 'complete';", json!([]))
            .await;
        (fresh == json!(true)).then_some(())
    })
    .await;
    browser.wait_path("/account").await;
    browser
        .wait_for("ul#sessions > li[data-current=\"true\"]")
        .await;
    let reauthenticated: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'SessionSamlReauthenticated'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(reauthenticated.len(), 1, "one step-up at the IdP");
    // Now the same click gives the codes.
    browser.click("#backup-codes").await;
    browser
        .wait_for_count("ul#codes > li", |n| n == 10, "to be ten")
        .await;
    // One session all along: the step-up reauthenticated it.
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionCreated'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(sessions, 1);
    assert_clean_console(&browser).await;

    drop(browser);
    let log = instance.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Seconds since the epoch.
fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
