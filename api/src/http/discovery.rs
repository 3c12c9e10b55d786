//! `GET /.well-known/openid-configuration`: enough OpenID Provider metadata
//! for standard JWT middleware to configure itself from the issuer URL (the
//! JWKS location, the signing algorithms), plus Queue's own endpoints under
//! `queue_*` names. Queue is not an OpenID Provider: no authorization or
//! token endpoint is claimed (ADR 0207).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use url::Url;

use crate::auth::jwt::JwtKeySet;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::state::AppState;

/// `Cache-Control` of the JWKS and of this document. A rotation shows in
/// both at once on the server; a verifier honouring the header sees it at
/// most this long later (one that refetches on an unknown `kid`, at once).
pub const CACHE_CONTROL: &str = "public, max-age=60";

/// The claims every access token carries (contract "Tokens").
const CLAIMS: [&str; 11] = [
    "iss",
    "aud",
    "sub",
    "sid",
    "iat",
    "exp",
    "jti",
    "roles",
    "amr",
    "auth_time",
    "tid",
];

/// The issuer as a base URL for the documents published under it, when it is
/// one (`http(s)://host[/path]`, no query or fragment).
fn issuer_base(issuer: &str) -> Option<String> {
    let url = Url::parse(issuer).ok()?;
    if !matches!(url.scheme(), "https" | "http")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    Some(issuer.trim_end_matches('/').to_owned())
}

/// The discovery document, or `None` when `QUEUE_ISSUER` is not an http(s)
/// URL (then nobody can fetch it from the issuer anyway).
pub fn document(config: &Config, keys: &JwtKeySet) -> Option<Value> {
    let base = issuer_base(&config.issuer)?;
    let mut doc = Map::new();
    doc.insert("issuer".into(), json!(config.issuer));
    doc.insert(
        "jwks_uri".into(),
        json!(format!("{base}/.well-known/jwks.json")),
    );
    doc.insert(
        "id_token_signing_alg_values_supported".into(),
        json!(keys.algs().iter().map(|a| a.as_str()).collect::<Vec<_>>()),
    );
    doc.insert("subject_types_supported".into(), json!(["public"]));
    doc.insert("claims_supported".into(), json!(CLAIMS));
    doc.insert(
        "queue_openapi_uri".into(),
        json!(format!("{base}/openapi.json")),
    );
    // The customer routes exist only with FLAG_QUEUE_V1 on.
    if config.flag_queue_v1 {
        for (name, path) in [
            ("queue_refresh_endpoint", "/api/v1/auth/session/refresh"),
            ("queue_logout_endpoint", "/api/v1/auth/logout"),
            ("queue_me_endpoint", "/api/v1/auth/me"),
        ] {
            doc.insert(name.into(), json!(format!("{base}{path}")));
        }
    }
    Some(Value::Object(doc))
}

/// `GET /.well-known/openid-configuration`. Served from memory, like the
/// JWKS, so it keeps answering while the store is down.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "operations",
    responses(
        (status = 200, description = "discovery document: issuer, jwks_uri, id_token_signing_alg_values_supported, subject_types_supported, claims_supported, queue_* endpoints", body = Object),
        (status = 404, description = "QUEUE_ISSUER is not an http(s) URL", body = crate::http::error::ErrorEnvelope)))]
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    let Some(doc) = document(state.config(), &state.inner.jwt_keys.get()) else {
        return ApiError::NotFound.into_response();
    };
    with_cache_control(axum::Json(doc).into_response())
}

/// Adds [`CACHE_CONTROL`].
pub fn with_cache_control(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::issuer_base;

    #[test]
    fn only_http_urls_are_issuer_bases() {
        assert_eq!(
            issuer_base("https://id.example.com/").as_deref(),
            Some("https://id.example.com")
        );
        assert_eq!(
            issuer_base("https://example.com/queue").as_deref(),
            Some("https://example.com/queue")
        );
        for bad in [
            "queue",
            "urn:queue",
            "https://x.example/?a=1",
            "ftp://x.example",
        ] {
            assert_eq!(issuer_base(bad), None, "{bad}");
        }
    }
}
