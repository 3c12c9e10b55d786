//! The SAML 2.0 service provider of each tenant (issue 22, ADRs 0216, 0218):
//! `GET /saml/{tenant_slug}/metadata`, `GET /saml/{tenant_slug}/login` and
//! the assertion consumer service `POST /saml/{tenant_slug}/acs`.
//! Outside `/api/v1`: browsers and IdPs call these, not API clients.

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Duration;
use queue_domain::tenant::SamlConnection;
use queue_domain::types::{TenantId, TenantSlug};
use queue_domain::Tenant;
use queue_eventstore::Loaded;
use queue_saml::{IdpMetadata, SamlError, SpConfig};
use serde::{Deserialize, Serialize};
use url::Url;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::tokens::random_bytes;
use crate::db::SamlRequestRow;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::resilience::shedding::Priority;
use crate::routes::tenants::saml_base_url;
use crate::state::AppState;

/// The ACS's body limit: a `SAMLResponse` of up to
/// `queue_saml::MAX_RESPONSE_BYTES` (256 KiB of XML) is 4/3 that in base64
/// (342 KiB), and form encoding triples only `+`, `/` and `=` (about 1 in
/// 32 characters): 512 KiB holds any response the crate would read. Every
/// other route keeps the global 64 KiB (`crate::BODY_LIMIT`).
pub const ACS_BODY_LIMIT: usize = 512 * 1024;

/// How long an AuthnRequest may stay unanswered.
pub const REQUEST_TTL_SECS: i64 = 5 * 60;

/// The SAML routes and their OpenAPI description (tag `saml`), by
/// load-shedding priority: signing in (`login`, `acs`) is CRITICAL, as a
/// passkey login is; the metadata NORMAL. `app` serves them inside the
/// same draining, shedding, breaker and deadline layers as `/api/v1`.
pub fn groups() -> [(Priority, OpenApiRouter<AppState>); 2] {
    let sign_in = OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(acs))
        // The form extractor's own limit, as `read_body`'s for this path.
        .route_layer(DefaultBodyLimit::max(ACS_BODY_LIMIT));
    let metadata = OpenApiRouter::new().routes(routes!(metadata));
    [(Priority::Critical, sign_in), (Priority::Normal, metadata)]
}

/// The SAML routes as one router (for the OpenAPI document).
pub fn routes() -> OpenApiRouter<AppState> {
    groups()
        .into_iter()
        .fold(OpenApiRouter::new(), |all, (_, routes)| all.merge(routes))
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

/// The tenant's SP metadata (entityID, ACS, NameID formats) for its IdP.
#[utoipa::path(get, path = "/saml/{tenant_slug}/metadata", tag = "saml",
    params(("tenant_slug" = String, Path, description = "the tenant's slug")),
    responses((status = 200, description = "the SP EntityDescriptor", content_type = "application/samlmetadata+xml", body = String),
        (status = 404, description = "no such tenant, or no enabled SAML connection", body = crate::http::error::ErrorEnvelope)))]
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginQuery {
    /// Where the browser lands after the login: an absolute URL on one of
    /// QUEUE_RP_ORIGINS (default: the hosted `/account` page).
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

/// SP-initiated login: a single-use AuthnRequest (5 minutes) and a 303 to
/// the IdP's HTTP-Redirect SSO URL with `RelayState` = the request id.
#[utoipa::path(get, path = "/saml/{tenant_slug}/login", tag = "saml",
    params(("tenant_slug" = String, Path, description = "the tenant's slug"), LoginQuery),
    responses((status = 303, description = "to the IdP (Location)"),
        (status = 400, description = "return_to not on an allowed origin", body = crate::http::error::ErrorEnvelope),
        (status = 404, description = "no such tenant, or no enabled SAML connection", body = crate::http::error::ErrorEnvelope),
        (status = 429, description = "rate limited per client address", body = crate::http::error::ErrorEnvelope)))]
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
    let url = send_to_idp(&state, &tenant, return_to, None).await?;
    tracing::info!(tenant = tenant.slug.as_str(), "SAML login started");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

/// Stores a single-use AuthnRequest (5 minutes) and returns the IdP URL
/// that carries it, with the request id as `RelayState`. `step_up`: the
/// (session, customer) a ForceAuthn request reauthenticates; `None` for a
/// login.
async fn send_to_idp(
    state: &AppState,
    tenant: &SamlTenant,
    return_to: String,
    step_up: Option<(uuid::Uuid, uuid::Uuid)>,
) -> Result<String, ApiError> {
    let now = state.now();
    let request_id = queue_saml::request_id_from_random(random_bytes::<20>());
    let redirect = queue_saml::authn_request_redirect(
        &tenant.sp,
        &tenant.idp,
        &request_id,
        now,
        Some(&request_id),
        step_up.is_some(),
    )
    .map_err(ApiError::Saml)?;
    crate::db::insert_saml_request(
        state.store().pool(),
        &SamlRequestRow {
            request_id: redirect.request_id,
            return_to: Some(return_to),
            created_at: now,
            session_id: step_up.map(|(session, _)| session),
            customer_id: step_up.map(|(_, customer)| customer),
        },
        *tenant.tenant_id.as_uuid(),
        now + Duration::seconds(REQUEST_TTL_SECS),
    )
    .await?;
    Ok(redirect.url)
}

/// The HTTP-POST binding's form.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    pub saml_response: String,
    #[serde(rename = "RelayState")]
    pub relay_state: Option<String>,
}

/// The assertion consumer service: a verified response becomes a session
/// (303 with the hosted pages' refresh cookie); every refusal is audited.
#[utoipa::path(post, path = "/saml/{tenant_slug}/acs", tag = "saml",
    params(("tenant_slug" = String, Path, description = "the tenant's slug")),
    request_body(content = AcsForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "logged in: to return_to (or /account) with the refresh cookie"),
        (status = 401, description = "refused: a saml_* code", body = crate::http::error::ErrorEnvelope),
        (status = 403, description = "not a customer here (no JIT), or suspended", body = crate::http::error::ErrorEnvelope),
        (status = 404, description = "no such tenant, or no enabled SAML connection", body = crate::http::error::ErrorEnvelope),
        (status = 413, description = "body over the limit", body = crate::http::error::ErrorEnvelope),
        (status = 429, description = "rate limited per client address", body = crate::http::error::ErrorEnvelope)))]
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
    let mut response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, done.return_to.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response();
    // A step-up keeps the session (and the cookie) it reauthenticated.
    if let Some(refresh_token) = &done.refresh_token {
        let secure = state
            .config()
            .rp_origins
            .first()
            .is_some_and(|o| o.scheme() == "https");
        let cookie = crate::http::pages::refresh_cookie(
            refresh_token,
            state.config().absolute_timeout_secs,
            secure,
        )
        .ok_or_else(|| ApiError::internal("refresh token not fit for a cookie"))?;
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SamlReauthRequest {
    /// Where the browser lands after the IdP: an absolute URL on one of
    /// QUEUE_RP_ORIGINS (default: the hosted `/account` page).
    #[serde(default)]
    pub return_to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SamlReauthStarted {
    /// The IdP's SSO URL with a `ForceAuthn` AuthnRequest: send the browser
    /// there. Its answer at the ACS reauthenticates this session (303 to
    /// `return_to`, no new cookie).
    pub redirect_url: String,
}

/// Step-up for a customer of a tenant with SAML (ADR 0220): a single-use
/// `ForceAuthn` AuthnRequest bound to the caller's session (5 minutes).
/// The IdP must authenticate anew: an answer whose `AuthnInstant` is from
/// before the request is refused (`saml_reauth_stale`), as is one naming
/// another person (`saml_reauth_subject_mismatch`).
#[utoipa::path(post, path = "/api/v1/auth/saml/reauth", tag = "saml",
    request_body = SamlReauthRequest,
    responses((status = 200, body = SamlReauthStarted),
        (status = 400, description = "return_to not on an allowed origin", body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope),
        (status = 403, description = "the customer is suspended", body = crate::http::error::ErrorEnvelope),
        (status = 404, description = "the customer's tenant has no enabled SAML connection", body = crate::http::error::ErrorEnvelope),
        (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn reauth(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    auth: Authenticated,
    Json(request): Json<SamlReauthRequest>,
) -> Result<Json<SamlReauthStarted>, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("saml:{address}"))
        .await?;
    let return_to = allowed_return_to(&state, request.return_to.as_deref())?;
    let customer = state.store().customer(auth.customer_id).await?;
    let customer_state = customer.aggregate.state().ok_or(ApiError::Unauthorized)?;
    if customer_state.is_suspended() {
        return Err(ApiError::CustomerSuspended);
    }
    let tenant: Loaded<Tenant> = state
        .store()
        .load(&customer_state.tenant_id.to_string())
        .await?;
    let slug = tenant
        .aggregate
        .state()
        .map(|t| t.slug.clone())
        .ok_or(ApiError::NotFound)?;
    let tenant = saml_tenant(&state, slug.as_str()).await?;
    let step_up = (*auth.session_id.as_uuid(), *auth.customer_id.as_uuid());
    let redirect_url = send_to_idp(&state, &tenant, return_to, Some(step_up)).await?;
    tracing::info!(tenant = tenant.slug.as_str(), "SAML step-up started");
    Ok(Json(SamlReauthStarted { redirect_url }))
}
