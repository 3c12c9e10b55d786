//! Hosted pages through the router: the pages and their headers, and the
//! page cookie flow (ADR 0209): the refresh token moves into an HttpOnly
//! cookie for requests marked `X-Queue-Page: 1`, is read from it only on
//! refresh, and only for a same-origin write. The browser side is
//! cli/tests/it/pages.rs (real chromium).

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, Response, TestApp, ORIGIN};

const REFRESH: &str = "/api/v1/auth/session/refresh";

/// A request as page script sends it: marker header and the page's Origin.
pub(crate) fn page_request(
    method: Method,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("x-queue-page", "1")
        .header(header::ORIGIN, ORIGIN)
        .header("sec-fetch-site", "same-origin");
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The one `queue_refresh` cookie set by `response`: its value and attributes.
fn refresh_cookie(response: &Response) -> (String, Vec<String>) {
    let cookies = set_cookies(response);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let mut parts = cookies[0].split(';').map(|p| p.trim().to_owned());
    let pair = parts.next().unwrap();
    let value = pair.strip_prefix("queue_refresh=").unwrap().to_owned();
    (value, parts.collect())
}

/// Registers through the page flow; returns the answer.
async fn page_register(app: &TestApp, passkey: &mut Passkey) -> Response {
    let begin = app
        .send(page_request(
            Method::POST,
            "/api/v1/auth/webauthn/register/begin",
            Some(json!({"email": "ada@example.com", "display_name": "Ada"})),
            &[],
        ))
        .await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let credential = passkey.create(&begin.json["options"]);
    app.send(page_request(
        Method::POST,
        "/api/v1/auth/webauthn/register/complete",
        Some(json!({"challenge_id": begin.json["challenge_id"], "credential": credential})),
        &[],
    ))
    .await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_page_gets_its_refresh_token_as_an_http_only_cookie_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let done = page_register(&app, &mut Passkey::new()).await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.text);
    assert!(done.json["access_token"].is_string(), "{}", done.text);
    assert!(done.json.get("refresh_token").is_none(), "{}", done.text);
    assert!(!done.text.contains("qrt"), "{}", done.text);
    assert_eq!(done.headers[header::CACHE_CONTROL], "no-store");
    let (token, attributes) = refresh_cookie(&done);
    assert!(token.starts_with("qrt"), "{token}");
    for wanted in [
        "Path=/api/v1/auth/session/refresh",
        "HttpOnly",
        "SameSite=Strict",
        // The test origin is https.
        "Secure",
    ] {
        assert!(
            attributes.iter().any(|a| a == wanted),
            "{wanted}: {attributes:?}"
        );
    }

    // Refresh reads the cookie, whatever the body says, and rotates it.
    let cookie = format!("queue_refresh={token}");
    let refreshed = app
        .send(page_request(
            Method::POST,
            REFRESH,
            Some(json!({"refresh_token": "ignored"})),
            &[("cookie", cookie.as_str())],
        ))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    assert!(refreshed.json["access_token"].is_string());
    assert!(
        refreshed.json.get("refresh_token").is_none(),
        "{}",
        refreshed.text
    );
    let (rotated, _) = refresh_cookie(&refreshed);
    assert_ne!(rotated, token);

    // The old cookie again is reuse: the session is revoked and the cookie cleared.
    let reused = app
        .send(page_request(
            Method::POST,
            REFRESH,
            None,
            &[("cookie", cookie.as_str())],
        ))
        .await;
    reused.assert_error(StatusCode::UNAUTHORIZED, "refresh_reuse_detected");
    let (cleared, attributes) = refresh_cookie(&reused);
    assert_eq!(cleared, "");
    assert!(
        attributes.iter().any(|a| a == "Max-Age=0"),
        "{attributes:?}"
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_refresh_cookie_is_read_only_for_a_same_origin_page_write(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let done = page_register(&app, &mut Passkey::new()).await;
    let (token, _) = refresh_cookie(&done);
    let cookie = format!("queue_refresh={token}");

    // Another origin, no Origin, or a cross-site fetch: 403, nothing read.
    for extra in [
        vec![("origin", "https://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(extra.iter().copied());
        let mut request = page_request(Method::POST, REFRESH, None, &[]);
        for (k, v) in headers {
            request.headers_mut().insert(k, v.parse().unwrap());
        }
        app.send(request)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let mut no_origin = page_request(Method::POST, REFRESH, None, &[("cookie", cookie.as_str())]);
    no_origin.headers_mut().remove(header::ORIGIN);
    app.send(no_origin)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    // Without the page marker the cookie is never read (a form post or an
    // <img> carries no custom header): the JSON body is all there is.
    let plain = Request::builder()
        .method(Method::POST)
        .uri(REFRESH)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ORIGIN, ORIGIN)
        .header("cookie", cookie.as_str())
        .body(Body::from(json!({"refresh_token": ""}).to_string()))
        .unwrap();
    app.send(plain)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // No cookie at all: 401, and the (absent) cookie is cleared.
    let none = app
        .send(page_request(Method::POST, REFRESH, None, &[]))
        .await;
    none.assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // The cookie still works from the page.
    let ok = app
        .send(page_request(
            Method::POST,
            REFRESH,
            None,
            &[("cookie", cookie.as_str())],
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn page_logout_clears_the_cookie_and_api_clients_are_unchanged(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let done = page_register(&app, &mut Passkey::new()).await;
    let access = bearer(&done.json);
    let auth = format!("Bearer {access}");
    let out = app
        .send(page_request(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            &[("authorization", auth.as_str())],
        ))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    let (cleared, attributes) = refresh_cookie(&out);
    assert_eq!(cleared, "");
    assert!(
        attributes.iter().any(|a| a == "Max-Age=0"),
        "{attributes:?}"
    );
    assert!(
        attributes
            .iter()
            .any(|a| a == "Path=/api/v1/auth/session/refresh"),
        "{attributes:?}"
    );

    // A JSON client without the marker gets the contract's body, no cookie.
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "bob@example.com").await;
    assert!(tokens["refresh_token"].as_str().unwrap().starts_with("qrt"));
    let begin = app.login_begin(Some("bob@example.com")).await;
    let credential = passkey.get(&begin["options"]);
    let login = app.login_complete(&begin["challenge_id"], credential).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.json["refresh_token"].is_string());
    assert!(set_cookies(&login).is_empty());
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_pages_are_served_with_a_strict_policy(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let root = app.get("/").await;
    assert!(root.status.is_redirection(), "{}", root.status);
    assert_eq!(root.headers[header::LOCATION], "/login");
    for (path, kind) in [
        ("/login", "text/html"),
        ("/account", "text/html"),
        ("/recover", "text/html"),
        ("/pages/app.js", "text/javascript"),
        ("/pages/app.css", "text/css"),
    ] {
        let page = app.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let content_type = page.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert_eq!(
            page.headers[header::CONTENT_SECURITY_POLICY],
            queue_api::http::pages::CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
    }
    let policy = queue_api::http::pages::CONTENT_SECURITY_POLICY;
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(policy.split("; ").any(|d| d == directive), "{directive}");
    }
    assert!(!policy.contains("unsafe"));

    // The contract's element ids are on the pages.
    let login = app.get("/login").await.text;
    for id in [
        "id=\"email\"",
        "id=\"display-name\"",
        "id=\"register\"",
        "id=\"login\"",
        "id=\"error\" class=\"error\" role=\"alert\"",
    ] {
        assert!(login.contains(id), "/login lacks {id}");
    }
    let account = app.get("/account").await.text;
    for id in [
        "id=\"me\"",
        "<ul id=\"passkeys\"",
        "id=\"add-passkey\"",
        "<ul id=\"sessions\"",
        "id=\"backup-codes\"",
        "<ul id=\"codes\"",
        "id=\"logout\"",
    ] {
        assert!(account.contains(id), "/account lacks {id}");
    }
    let recover = app.get("/recover").await.text;
    for id in [
        "id=\"email\"",
        "id=\"code\"",
        "id=\"redeem\"",
        "role=\"alert\"",
    ] {
        assert!(recover.contains(id), "/recover lacks {id}");
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_pages_share_the_v1_flag(pool: PgPool) {
    let app = TestApp::with(pool, &[("FLAG_QUEUE_V1", "0")]).await;
    for path in ["/", "/login", "/pages/app.js"] {
        app.get(path)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
}
