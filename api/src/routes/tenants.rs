//! Tenants (issue 22, ADR 0218), scope `admin`: create a tenant, read one,
//! configure its SAML connection. A tenant is its own `Tenant` stream
//! (`TenantId::for_slug`), so creating a taken slug meets the existing
//! stream and is refused with `tenant_exists`, with no cross-stream check.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use queue_domain::tenant::SamlConnection;
use queue_domain::types::{
    Actor, IdpMetadataXml, Role, SamlAttributeName, SamlGroup, TenantId, TenantName, TenantSlug,
};
use queue_domain::{Tenant, TenantCommand, TenantError};
use queue_eventstore::{Batch, Loaded};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::service::{Scope, ServiceCaller};
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::routes::rbac::parse_uuid;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTenantRequest {
    /// 2–63 of `[a-z0-9-]`, starting with a letter; never changes.
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedTenant {
    pub tenant_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub tenant_id: String,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Absent until `PUT /api/v1/tenants/{id}/saml`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saml: Option<SamlView>,
}

/// The tenant's SAML connection as configured (the IdP metadata itself is
/// not echoed; its entityID is) and the SP endpoints to give the IdP.
#[derive(Debug, Serialize, ToSchema)]
pub struct SamlView {
    pub enabled: bool,
    pub idp_entity_id: String,
    pub sp_entity_id: String,
    pub acs_url: String,
    pub email_attribute: Option<String>,
    pub display_name_attribute: Option<String>,
    pub groups_attribute: Option<String>,
    pub group_roles: BTreeMap<String, Vec<String>>,
    pub allow_idp_initiated: bool,
    pub jit_provisioning: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlConfigRequest {
    /// The IdP's SAML metadata XML (entityID, HTTP-Redirect SSO URL,
    /// signing certificates).
    #[serde(alias = "idp_metadata_xml")]
    pub idp_metadata: String,
    #[serde(default)]
    pub email_attribute: Option<String>,
    #[serde(default)]
    pub display_name_attribute: Option<String>,
    #[serde(default)]
    pub groups_attribute: Option<String>,
    /// IdP group → roles its members hold in this tenant.
    #[serde(default)]
    pub group_roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub allow_idp_initiated: bool,
    #[serde(default, alias = "jit")]
    pub jit_provisioning: bool,
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        match err {
            TenantError::NotFound => Self::NotFound,
            TenantError::AlreadyCreated => Self::TenantExists,
            TenantError::InvalidSamlConnection(why) => {
                Self::InvalidRequest(format!("invalid SAML connection: {why}"))
            }
            TenantError::SamlNotEnabled => Self::Conflict,
            other @ TenantError::IdNotOfSlug => Self::Internal(other.to_string()),
        }
    }
}

/// The SAML base URL: the first configured relying-party origin, so the
/// SP entityID and ACS are on the origin the hosted pages are served from.
pub fn saml_base_url(state: &AppState) -> Result<String, ApiError> {
    let origin = state
        .config()
        .rp_origins
        .first()
        .ok_or_else(|| ApiError::internal("no relying-party origin configured"))?;
    Ok(origin.as_str().trim_end_matches('/').to_owned())
}

/// The tenant stream, or 404 when it was never created.
pub async fn existing_tenant(
    state: &AppState,
    tenant_id: TenantId,
) -> Result<Loaded<Tenant>, ApiError> {
    let tenant: Loaded<Tenant> = state.store().load(&tenant_id.to_string()).await?;
    if tenant.aggregate.state().is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(tenant)
}

fn view(state: &AppState, tenant: &Tenant) -> Result<TenantView, ApiError> {
    let t = tenant.state().ok_or(ApiError::NotFound)?;
    let saml = match &t.saml {
        None => None,
        Some(connection) => {
            let idp = queue_saml::IdpMetadata::parse(connection.idp_metadata.as_str())
                .map_err(|e| ApiError::internal(format!("stored IdP metadata: {e}")))?;
            let sp = queue_saml::SpConfig::for_tenant(&saml_base_url(state)?, t.slug.as_str())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Some(SamlView {
                enabled: t.saml_enabled,
                idp_entity_id: idp.entity_id.clone(),
                sp_entity_id: sp.entity_id.clone(),
                acs_url: sp.acs_url.clone(),
                email_attribute: connection.email_attribute.as_ref().map(|a| a.to_string()),
                display_name_attribute: connection
                    .display_name_attribute
                    .as_ref()
                    .map(|a| a.to_string()),
                groups_attribute: connection.groups_attribute.as_ref().map(|a| a.to_string()),
                group_roles: connection
                    .group_roles
                    .iter()
                    .map(|(g, roles)| {
                        (
                            g.to_string(),
                            roles.iter().map(ToString::to_string).collect(),
                        )
                    })
                    .collect(),
                allow_idp_initiated: connection.allow_idp_initiated,
                jit_provisioning: connection.jit_provisioning,
            })
        }
    };
    Ok(TenantView {
        tenant_id: t.tenant_id.to_string(),
        slug: t.slug.to_string(),
        name: t.name.to_string(),
        created_at: t.created_at,
        saml,
    })
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "service",
    security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = CreatedTenant), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 409, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Json(request): Json<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    caller.require(Scope::Admin)?;
    let slug = TenantSlug::parse(&request.slug)?;
    let name = TenantName::parse(&request.name)?;
    let actor = Actor::parse(caller.name.as_str())?;
    // Creating another tenant is not a tenant admin's to do (ADR 0219):
    // a limited token may create only a tenant it is limited to.
    if !caller.tenants.allows(TenantId::for_slug(&slug)) {
        return Err(ApiError::Forbidden);
    }
    let tenant_id = append_created(&state, slug, name, actor).await?;
    tracing::info!(tenant = %tenant_id, service = caller.name.as_str(), "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            tenant_id: tenant_id.to_string(),
        }),
    ))
}

/// The tenant a pre-login request names by slug (`"tenant"` beside an
/// email, issue 22); absent: the default tenant, as before tenants. Emails
/// are unique per tenant, so an email alone means the default tenant's.
pub fn tenant_by_slug(raw: Option<&str>) -> Result<TenantId, ApiError> {
    match raw {
        None => Ok(TenantId::DEFAULT),
        Some(raw) => Ok(TenantId::for_slug(&TenantSlug::parse(raw)?)),
    }
}

/// Appends the tenant's `TenantCreated`; 409 tenant_exists when its stream
/// exists (or a concurrent creation of the slug won).
async fn append_created(
    state: &AppState,
    slug: TenantSlug,
    name: TenantName,
    actor: Actor,
) -> Result<TenantId, ApiError> {
    let tenant_id = TenantId::for_slug(&slug);
    let mut tenant: Loaded<Tenant> = state.store().load(&tenant_id.to_string()).await?;
    let events = tenant
        .execute(TenantCommand::Create {
            tenant_id,
            slug,
            name,
            actor,
            at: state.now(),
        })
        .await?;
    let mut batch = Batch::new();
    batch.add(&mut tenant, &events)?;
    state.store().append(batch).await.map_err(|e| match e {
        // Two creations of one slug raced: the second lost on the stream.
        queue_eventstore::StoreError::OptimisticLock => ApiError::TenantExists,
        other => other.into(),
    })?;
    Ok(tenant_id)
}

/// The default tenant's stream, appended once by `queue serve` at start
/// (actor `queue`): every customer from before tenants belongs to it, and
/// with its stream `/auth/me` and `GET /api/v1/tenants/{id}` show it like
/// any other tenant. True when this call created it.
pub async fn ensure_default_tenant(state: &AppState) -> Result<bool, ApiError> {
    let slug = TenantSlug::parse(TenantSlug::DEFAULT)?;
    let name = TenantName::parse("Default")?;
    let actor = Actor::parse(crate::auth::service::RESERVED_SERVICE)?;
    match append_created(state, slug, name, actor).await {
        Ok(_) => Ok(true),
        Err(ApiError::TenantExists) => Ok(false),
        Err(other) => Err(other),
    }
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}", tag = "service",
    security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, body = TenantView), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(tenant_id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant_id = TenantId::from(parse_uuid("tenant_id", &tenant_id)?);
    caller.require_tenant(tenant_id)?;
    let tenant = existing_tenant(&state, tenant_id).await?;
    Ok(Json(view(&state, &tenant.aggregate)?))
}

fn optional<T>(
    raw: Option<String>,
    parse: impl Fn(&str) -> Result<T, queue_domain::types::ParseError>,
) -> Result<Option<T>, ApiError> {
    raw.map(|r| parse(&r)).transpose().map_err(ApiError::from)
}

#[utoipa::path(put, path = "/api/v1/tenants/{tenant_id}/saml", tag = "service",
    security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = SamlConfigRequest,
    responses((status = 200, body = TenantView), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope),
        (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn configure_saml(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(tenant_id): Path<String>,
    Json(request): Json<SamlConfigRequest>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant_id = TenantId::from(parse_uuid("tenant_id", &tenant_id)?);
    caller.require_tenant(tenant_id)?;
    // Parsed once here, so a stored connection always parsed (ADR 0217).
    queue_saml::IdpMetadata::parse(&request.idp_metadata).map_err(ApiError::Saml)?;
    let mut group_roles: BTreeMap<SamlGroup, BTreeSet<Role>> = BTreeMap::new();
    for (group, roles) in &request.group_roles {
        let group = SamlGroup::parse(group)?;
        let roles = roles
            .iter()
            .map(|r| Role::parse(r))
            .collect::<Result<BTreeSet<Role>, _>>()?;
        // A group grants only roles a person could grant (the catalogue).
        if let Some(role) = roles
            .iter()
            .find(|role| !state.config().role_catalogue.contains(role))
        {
            return Err(ApiError::invalid(format!(
                "group_roles: role {role} is not in the role catalogue"
            )));
        }
        group_roles.entry(group).or_default().extend(roles);
    }
    let connection = SamlConnection {
        idp_metadata: IdpMetadataXml::parse(&request.idp_metadata)?,
        email_attribute: optional(request.email_attribute, SamlAttributeName::parse)?,
        display_name_attribute: optional(request.display_name_attribute, SamlAttributeName::parse)?,
        groups_attribute: optional(request.groups_attribute, SamlAttributeName::parse)?,
        group_roles,
        allow_idp_initiated: request.allow_idp_initiated,
        jit_provisioning: request.jit_provisioning,
    };
    let actor = Actor::parse(caller.name.as_str())?;
    let command = TenantCommand::ConfigureSaml {
        connection,
        actor,
        at: state.now(),
    };
    let answer = change(&state, tenant_id, command).await?;
    tracing::info!(tenant = %tenant_id, service = caller.name.as_str(), "SAML connection configured");
    Ok(answer)
}

/// Runs one command on an existing tenant (404 otherwise), appends its
/// events, and answers the tenant's new view.
async fn change(
    state: &AppState,
    tenant_id: TenantId,
    command: TenantCommand,
) -> Result<Json<TenantView>, ApiError> {
    let mut tenant = existing_tenant(state, tenant_id).await?;
    let events = tenant.execute(command).await?;
    if !events.is_empty() {
        let mut batch = Batch::new();
        batch.add(&mut tenant, &events)?;
        state.store().append(batch).await?;
    }
    Ok(Json(view(state, &tenant.aggregate)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameTenantRequest {
    pub name: String,
}

/// `PATCH /api/v1/tenants/{tenant_id}` (scope admin): a new display name
/// (`TenantRenamed`; the slug and id never change). The same name again
/// appends nothing.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant_id}", tag = "service",
    security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = RenameTenantRequest,
    responses((status = 200, body = TenantView), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope),
        (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn rename(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(tenant_id): Path<String>,
    Json(request): Json<RenameTenantRequest>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant_id = TenantId::from(parse_uuid("tenant_id", &tenant_id)?);
    caller.require_tenant(tenant_id)?;
    let name = TenantName::parse(&request.name)?;
    let actor = Actor::parse(caller.name.as_str())?;
    let command = TenantCommand::Rename {
        name,
        actor,
        at: state.now(),
    };
    let answer = change(&state, tenant_id, command).await?;
    tracing::info!(tenant = %tenant_id, service = caller.name.as_str(), "tenant renamed");
    Ok(answer)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DisableSamlRequest {
    pub reason: String,
}

#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/saml", tag = "service",
    security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = DisableSamlRequest,
    responses((status = 200, body = TenantView), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope),
        (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn disable_saml(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(tenant_id): Path<String>,
    Json(request): Json<DisableSamlRequest>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant_id = TenantId::from(parse_uuid("tenant_id", &tenant_id)?);
    caller.require_tenant(tenant_id)?;
    let reason = queue_domain::types::Reason::parse(&request.reason)?;
    let actor = Actor::parse(caller.name.as_str())?;
    let command = TenantCommand::DisableSaml {
        reason,
        actor,
        at: state.now(),
    };
    let answer = change(&state, tenant_id, command).await?;
    tracing::info!(tenant = %tenant_id, service = caller.name.as_str(), "SAML connection disabled");
    Ok(answer)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RevokeSessionsRequest {
    pub reason: String,
    /// Only the sessions a SAML login created (passkey and backup-code
    /// sessions stay).
    #[serde(default)]
    pub saml_only: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsRevoked {
    /// How many live sessions were ended.
    pub revoked: usize,
}

/// Ends every live session of the tenant's customers (with `saml_only`,
/// those a SAML login created): `SessionRevoked` (reason `admin`) on each,
/// and one `tenant.sessions_revoked` audit event with the reason. For an
/// incident (a leaked IdP key, a connection being replaced). Idempotent:
/// again, it ends what has come since.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/sessions/revoke", tag = "service",
    security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path)),
    request_body = RevokeSessionsRequest,
    responses((status = 200, body = SessionsRevoked), (status = 400, body = crate::http::error::ErrorEnvelope),
        (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 404, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(tenant_id): Path<String>,
    Json(request): Json<RevokeSessionsRequest>,
) -> Result<Json<SessionsRevoked>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant_id = TenantId::from(parse_uuid("tenant_id", &tenant_id)?);
    caller.require_tenant(tenant_id)?;
    let reason = queue_domain::types::Reason::parse(&request.reason)?;
    existing_tenant(&state, tenant_id).await?;
    let revoked = crate::flows::tenant_sessions::end_sessions(
        &state,
        tenant_id,
        request.saml_only,
        &reason,
        &caller.name,
    )
    .await?;
    tracing::info!(tenant = %tenant_id, service = caller.name.as_str(), revoked, saml_only = request.saml_only, "tenant sessions revoked");
    Ok(Json(SessionsRevoked { revoked }))
}
