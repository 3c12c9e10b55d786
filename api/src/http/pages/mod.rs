//! Hosted pages (`/login`, `/account`, `/recover`) and the cookie flow that
//! keeps the refresh token out of page script (ADR 0209).
//!
//! The pages are plain HTML, one script and one stylesheet, embedded in the
//! binary and served with a strict Content-Security-Policy. They call the
//! ordinary JSON endpoints with the header `X-Queue-Page: 1`. For such a
//! request [`cookie_flow`]:
//! - refuses a write whose `Origin` is not one of `QUEUE_RP_ORIGIN` (or whose
//!   `Sec-Fetch-Site` is not `same-origin`) with 403 `forbidden`: a custom
//!   header cannot be sent cross-origin without a CORS preflight, which Queue
//!   never grants, and the Origin check holds even where it could;
//! - moves a `refresh_token` out of a successful JSON answer into an
//!   HttpOnly, SameSite=Strict cookie scoped to [`REFRESH_PATH`] (Secure when
//!   the origin is https);
//! - on `POST` [`REFRESH_PATH`] replaces the body with the cookie's token
//!   (the page never sees it), and clears the cookie when refresh fails;
//! - clears the cookie on logout.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::http::error::ApiError;
use crate::state::AppState;

/// The header page script sends with every API call.
pub const PAGE_HEADER: &str = "x-queue-page";
/// The HttpOnly cookie that holds a page's refresh token.
pub const REFRESH_COOKIE: &str = "queue_refresh";
/// The only path the refresh cookie is sent to.
pub const REFRESH_PATH: &str = "/api/v1/auth/session/refresh";
const LOGOUT_PATH: &str = "/api/v1/auth/logout";

/// The policy of every page, script and stylesheet: nothing from another
/// origin, no inline script or style, no framing, no `<base>`, forms only to
/// this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Token answers are small; anything bigger is passed through untouched.
const MAX_REWRITE: usize = 64 * 1024;

const LOGIN_HTML: &str = include_str!("login.html");
const ACCOUNT_HTML: &str = include_str!("account.html");
const RECOVER_HTML: &str = include_str!("recover.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// `GET /` (redirect), the three pages and their two assets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/login") }))
        .route("/login", get(|| async { page(LOGIN_HTML) }))
        .route("/account", get(|| async { page(ACCOUNT_HTML) }))
        .route("/recover", get(|| async { page(RECOVER_HTML) }))
        .route(
            "/pages/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/pages/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
}

fn page(html: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response();
    security_headers(response.headers_mut());
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    security_headers(response.headers_mut());
    response
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

fn is_page_request(headers: &HeaderMap) -> bool {
    headers
        .get(PAGE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// The request's `Origin` when it is one of the configured WebAuthn origins
/// and the browser does not call the request cross-site.
fn same_origin(state: &AppState, headers: &HeaderMap) -> Option<url::Url> {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return None;
        }
    }
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    let origin = url::Url::parse(origin).ok()?;
    state
        .config()
        .rp_origins
        .iter()
        .any(|allowed| allowed.origin() == origin.origin())
        .then_some(origin)
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn refresh_cookie(token: &str, max_age_secs: u32, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={token}; Path={REFRESH_PATH}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// The cookie flow for requests carrying [`PAGE_HEADER`]; every other
/// request passes through untouched.
pub async fn cookie_flow(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !is_page_request(request.headers()) {
        return next.run(request).await;
    }
    let is_write = request.method() != Method::GET && request.method() != Method::HEAD;
    let origin = same_origin(&state, request.headers());
    if is_write && origin.is_none() {
        tracing::warn!("page write refused: Origin is not a configured origin");
        return ApiError::Forbidden.into_response();
    }
    // Secure when the page's origin is https (for a GET without Origin, when
    // the first configured origin is).
    let secure = origin
        .as_ref()
        .or_else(|| state.config().rp_origins.first())
        .is_some_and(|o| o.scheme() == "https");
    let path = request.uri().path().to_owned();
    let is_refresh = request.method() == Method::POST && path == REFRESH_PATH;
    let is_logout = request.method() == Method::POST && path == LOGOUT_PATH;

    let request = if is_refresh {
        // The page never holds the token: whatever it sent, the cookie's
        // token (or none, which answers 401 invalid_refresh_token) is used.
        let token = cookie_value(request.headers(), REFRESH_COOKIE).unwrap_or("");
        let body = serde_json::json!({ "refresh_token": token }).to_string();
        let (mut parts, _) = request.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        Request::from_parts(parts, Body::from(body))
    } else {
        request
    };

    let response = next.run(request).await;
    let status = response.status();
    let clear =
        (is_logout && status.is_success()) || (is_refresh && status == StatusCode::UNAUTHORIZED);
    if clear {
        let mut response = response;
        if let Some(value) = refresh_cookie("", 0, secure) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        return response;
    }
    if !status.is_success() || !is_json(response.headers()) {
        return response;
    }
    move_refresh_token(response, state.config().absolute_timeout_secs, secure).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Takes `refresh_token` out of a JSON answer and sets it as the cookie.
async fn move_refresh_token(response: Response, max_age_secs: u32, secure: bool) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_REWRITE).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "page answer could not be read");
            return ApiError::internal("page answer could not be read").into_response();
        }
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    let token = value
        .as_object_mut()
        .and_then(|object| object.remove("refresh_token"));
    let Some(token) = token else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let cookie = token
        .as_str()
        .and_then(|t| refresh_cookie(t, max_age_secs, secure));
    let Some(cookie) = cookie else {
        return ApiError::internal("refresh token not fit for a cookie").into_response();
    };
    parts.headers.append(header::SET_COOKIE, cookie);
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}
