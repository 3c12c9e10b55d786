//! The SAML 2.0 service provider of each tenant (issue 22, ADRs 0216, 0218):
//! `GET /saml/{tenant_slug}/metadata`, `GET /saml/{tenant_slug}/login` and
//! the assertion consumer service `POST /saml/{tenant_slug}/acs`.
//! Outside `/api/v1`: browsers and IdPs call these, not API clients.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Duration;
use queue_domain::tenant::SamlConnection;
use queue_domain::types::{TenantId, TenantSlug};
use queue_domain::Tenant;
use queue_eventstore::Loaded;
use queue_saml::{IdpMetadata, SamlError, SpConfig};
use serde::Deserialize;
use url::Url;

use crate::auth::tokens::random_bytes;
use crate::http::error::ApiError;
use crate::http::extract::ClientAddress;
use crate::routes::tenants::saml_base_url;
use crate::state::AppState;

/// How long an AuthnRequest may stay unanswered.
pub const REQUEST_TTL_SECS: i64 = 5 * 60;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/saml/{tenant_slug}/metadata", get(metadata))
        .route("/saml/{tenant_slug}/login", get(login))
        .route("/saml/{tenant_slug}/acs", post(acs))
}

/// A tenant with an enabled SAML connection, as the SAML routes need it.
pub struct SamlTenant {
    pub tenant_id: TenantId,
    pub slug: TenantSlug,
    pub connection: SamlConnection,
    pub sp: SpConfig,
    pub idp: IdpMetadata,
}

/// The tenant of `slug` with its enabled connection; 404 for a slug that
/// is malformed, unknown, or has no enabled connection (all alike).
pub async fn saml_tenant(state: &AppState, slug: &str) -> Result<SamlTenant, ApiError> {
    let slug = TenantSlug::parse(slug).map_err(|_| ApiError::NotFound)?;
    let tenant_id = TenantId::for_slug(&slug);
    let tenant: Loaded<Tenant> = state.store().load(&tenant_id.to_string()).await?;
    let connection = tenant
        .aggregate
        .enabled_saml()
        .cloned()
        .ok_or(ApiError::NotFound)?;
    let idp = IdpMetadata::parse(connection.idp_metadata.as_str()).map_err(ApiError::Saml)?;
    let sp = SpConfig::for_tenant(&saml_base_url(state)?, slug.as_str()).map_err(ApiError::Saml)?;
    Ok(SamlTenant {
        tenant_id,
        slug,
        connection,
        sp,
        idp,
    })
}

/// The SP metadata to give the tenant's IdP.
pub async fn metadata(
    State(state): State<AppState>,
    Path(tenant_slug): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = saml_tenant(&state, &tenant_slug).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        tenant.sp.metadata_xml(),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    pub return_to: Option<String>,
}

/// `return_to` must be an absolute URL on one of the configured RP origins
/// (no open redirect); absent: the hosted account page.
pub fn allowed_return_to(state: &AppState, raw: Option<&str>) -> Result<String, ApiError> {
    let origins = &state.config().rp_origins;
    let Some(raw) = raw else {
        return Ok(format!("{}/account", saml_base_url(state)?));
    };
    let url =
        Url::parse(raw).map_err(|_| ApiError::invalid("return_to must be an absolute URL"))?;
    let allowed = origins
        .iter()
        .any(|origin| origin.origin() == url.origin() && url.username().is_empty());
    if !allowed || url.password().is_some() {
        return Err(ApiError::invalid(
            "return_to is not on an allowed origin (QUEUE_RP_ORIGINS)",
        ));
    }
    Ok(url.to_string())
}

/// SP-initiated login: stores the AuthnRequest id (single use) with where
/// to go afterwards, and redirects the browser to the IdP (HTTP-Redirect).
/// The RelayState is the request id: an opaque handle, never the URL.
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path(tenant_slug): Path<String>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    // Each call stores an outstanding request: limited per address, as
    // passkey logins are (`QUEUE_RATE_LIMIT_PER_ADDRESS`).
    state
        .inner
        .address_limiter
        .check(&format!("saml:{address}"))
        .await?;
    let tenant = saml_tenant(&state, &tenant_slug).await?;
    let return_to = allowed_return_to(&state, query.return_to.as_deref())?;
    let now = state.now();
    let request_id = queue_saml::request_id_from_random(random_bytes::<20>());
    let redirect = queue_saml::authn_request_redirect(
        &tenant.sp,
        &tenant.idp,
        &request_id,
        now,
        Some(&request_id),
    )
    .map_err(ApiError::Saml)?;
    crate::db::insert_saml_request(
        state.store().pool(),
        &redirect.request_id,
        *tenant.tenant_id.as_uuid(),
        Some(&return_to),
        now,
        now + Duration::seconds(REQUEST_TTL_SECS),
    )
    .await?;
    tracing::info!(tenant = tenant.slug.as_str(), "SAML login started");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, redirect.url.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

/// The HTTP-POST binding's form.
#[derive(Debug, Deserialize)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    pub saml_response: String,
    #[serde(rename = "RelayState")]
    pub relay_state: Option<String>,
}

/// The assertion consumer service: a verified login sets the hosted pages'
/// refresh cookie and sends the browser (303) to the request's `return_to`,
/// else the account page. Refusals answer their `saml_*` code.
pub async fn acs(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path(tenant_slug): Path<String>,
    form: Result<Form<AcsForm>, FormRejection>,
) -> Result<Response, ApiError> {
    // Every response costs an XML signature check: limited per address
    // before any of it, as passkey logins are.
    state
        .inner
        .address_limiter
        .check(&format!("saml:{address}"))
        .await?;
    let tenant = saml_tenant(&state, &tenant_slug).await?;
    let Form(form) = form.map_err(|_| {
        ApiError::Saml(SamlError::ResponseMalformed(
            "not a form with a SAMLResponse field",
        ))
    })?;
    let done = crate::flows::saml::acs(
        &state,
        &tenant,
        &form.saml_response,
        form.relay_state.as_deref(),
    )
    .await?;
    let secure = state
        .config()
        .rp_origins
        .first()
        .is_some_and(|o| o.scheme() == "https");
    let cookie = crate::http::pages::refresh_cookie(
        &done.refresh_token,
        state.config().absolute_timeout_secs,
        secure,
    )
    .ok_or_else(|| ApiError::internal("refresh token not fit for a cookie"))?;
    let mut response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, done.return_to.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}
