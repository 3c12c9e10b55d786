//! Service-to-service authentication: `QUEUE_SERVICE_TOKEN_<NAME>` secrets
//! with `QUEUE_SERVICE_SCOPES_<NAME>` scopes (api-contract.md "Service
//! endpoints"), the [`ServiceCaller`] extractor, and the service routes that
//! need nothing else (`/internal/customers/count`).
//!
//! `QUEUE_SERVICE_TENANTS_<NAME>` (issue 22, ADR 0219) limits a token to
//! tenants (comma-separated slugs; unset or `*`: every tenant). A limited
//! token that names a customer, grant or tenant of another tenant is
//! answered 404 as if it did not exist, and its reads of the read tables run
//! in a transaction bound to its tenants (row-level security, migration 0332).
//!
//! The service name (`<NAME>` lower-cased) is the actor recorded in every
//! event a service causes. Tokens are compared in constant time, over their
//! SHA-256 digests, against every configured service (no early exit).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use queue_domain::types::{ServiceName, TenantId, TenantSlug};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::jwt;
use crate::config::ConfigError;
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::state::AppState;

pub const TOKEN_PREFIX: &str = "QUEUE_SERVICE_TOKEN_";
/// The service name Queue records its own audit events under.
pub const RESERVED_SERVICE: &str = "queue";
pub const SCOPES_PREFIX: &str = "QUEUE_SERVICE_SCOPES_";
pub const TENANTS_PREFIX: &str = "QUEUE_SERVICE_TENANTS_";
/// Service tokens shorter than this are refused at startup.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a service token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    AuditWrite,
    AuditRead,
    RbacRead,
    RbacWrite,
    Admin,
    Internal,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::AuditWrite,
        Scope::AuditRead,
        Scope::RbacRead,
        Scope::RbacWrite,
        Scope::Admin,
        Scope::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuditWrite => "audit:write",
            Self::AuditRead => "audit:read",
            Self::RbacRead => "rbac:read",
            Self::RbacWrite => "rbac:write",
            Self::Admin => "admin",
            Self::Internal => "internal",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// The tenants a service token may see (`QUEUE_SERVICE_TENANTS_<NAME>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TenantLimit {
    /// Unset or `*`: every tenant.
    #[default]
    All,
    /// Only these (never empty).
    Only(BTreeSet<TenantId>),
}

impl TenantLimit {
    /// Parses the variable's value: `*`, or comma-separated tenant slugs.
    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() || raw == "*" {
            return Ok(Self::All);
        }
        let mut tenants = BTreeSet::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let slug = TenantSlug::parse(part)
                .map_err(|_| "expected `*` or comma-separated tenant slugs".to_owned())?;
            tenants.insert(TenantId::for_slug(&slug));
        }
        if tenants.is_empty() {
            return Err("expected `*` or comma-separated tenant slugs".into());
        }
        Ok(Self::Only(tenants))
    }

    /// Whether a caller with this limit may see `tenant`.
    pub fn allows(&self, tenant: TenantId) -> bool {
        match self {
            Self::All => true,
            Self::Only(tenants) => tenants.contains(&tenant),
        }
    }

    /// The one tenant of a token limited to exactly one.
    pub fn only_one(&self) -> Option<TenantId> {
        match self {
            Self::Only(tenants) if tenants.len() == 1 => tenants.first().copied(),
            _ => None,
        }
    }

    /// The tenant ids a read is bound to; `None` for every tenant.
    pub fn ids(&self) -> Option<Vec<uuid::Uuid>> {
        match self {
            Self::All => None,
            Self::Only(tenants) => Some(tenants.iter().map(|t| *t.as_uuid()).collect()),
        }
    }
}

/// One configured service: its name, the digest of its token, its scopes,
/// the tenants it may see.
#[derive(Clone)]
struct ServiceEntry {
    name: ServiceName,
    token_digest: [u8; 32],
    scopes: BTreeSet<Scope>,
    tenants: TenantLimit,
}

/// Every configured service token (Debug shows names and scopes only).
#[derive(Clone, Default)]
pub struct ServiceTokens {
    entries: Vec<ServiceEntry>,
}

impl fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for entry in &self.entries {
            let scopes: Vec<&str> = entry.scopes.iter().map(|s| s.as_str()).collect();
            map.entry(&entry.name.as_str(), &(scopes, &entry.tenants));
        }
        map.finish()
    }
}

/// A variable name built at startup, kept for the life of the process so a
/// config error can name it (a handful of short strings, once).
fn static_var(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ServiceTokens {
    /// Reads `QUEUE_SERVICE_TOKEN_<NAME>` / `QUEUE_SERVICE_SCOPES_<NAME>` /
    /// `QUEUE_SERVICE_TENANTS_<NAME>` for every variable name in `names`
    /// that has one of the prefixes; values come from `get`. Errors name the
    /// variable, never its value.
    pub fn from_lookup<'a>(
        get: &impl Fn(&str) -> Option<String>,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ConfigError> {
        let mut services: BTreeMap<String, ()> = BTreeMap::new();
        for name in names {
            let suffix = name
                .strip_prefix(TOKEN_PREFIX)
                .or_else(|| name.strip_prefix(SCOPES_PREFIX))
                .or_else(|| name.strip_prefix(TENANTS_PREFIX));
            if let Some(suffix) = suffix {
                services.insert(suffix.to_owned(), ());
            }
        }
        let mut entries = Vec::new();
        for suffix in services.keys() {
            let token_var = static_var(format!("{TOKEN_PREFIX}{suffix}"));
            let scopes_var = static_var(format!("{SCOPES_PREFIX}{suffix}"));
            let tenants_var = static_var(format!("{TENANTS_PREFIX}{suffix}"));
            let name = ServiceName::parse(&suffix.to_ascii_lowercase()).map_err(|_| {
                ConfigError::Invalid {
                    var: token_var,
                    why: "the service name (after the prefix) must be 1 to 64 printable characters"
                        .into(),
                }
            })?;
            if name.as_str() == RESERVED_SERVICE {
                // Queue records its own audit events as service `queue`; a
                // caller under that name could forge them.
                return Err(ConfigError::Invalid {
                    var: token_var,
                    why: "the service name `queue` is reserved for Queue's own audit events".into(),
                });
            }
            let token = get(token_var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(token_var))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(ConfigError::Invalid {
                    var: token_var,
                    why: format!("a service token must be at least {MIN_TOKEN_LEN} characters"),
                });
            }
            let scopes_raw = get(scopes_var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(scopes_var))?;
            let mut scopes = BTreeSet::new();
            for part in scopes_raw
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let scope = Scope::parse(part).ok_or_else(|| ConfigError::Invalid {
                    var: scopes_var,
                    why: format!(
                        "unknown scope; expected a comma-separated list of {}",
                        Scope::ALL.map(Scope::as_str).join(", ")
                    ),
                })?;
                scopes.insert(scope);
            }
            let tenants = match get(tenants_var) {
                Some(raw) => TenantLimit::parse(&raw).map_err(|why| ConfigError::Invalid {
                    var: tenants_var,
                    why,
                })?,
                None => TenantLimit::All,
            };
            let token_digest = digest(&token);
            if entries
                .iter()
                .any(|e: &ServiceEntry| bool::from(e.token_digest.ct_eq(&token_digest)))
            {
                return Err(ConfigError::Invalid {
                    var: token_var,
                    why: "two services share the same token".into(),
                });
            }
            entries.push(ServiceEntry {
                name,
                token_digest,
                scopes,
                tenants,
            });
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The service whose token this is. Every entry is compared (in constant
    /// time) whatever matches, so timing tells nothing about which did.
    fn find(&self, presented: &str) -> Option<&ServiceEntry> {
        let presented = digest(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token_digest.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// A caller authenticated by its service token.
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub name: ServiceName,
    scopes: BTreeSet<Scope>,
    pub tenants: TenantLimit,
}

impl ServiceCaller {
    /// 403 forbidden unless the token carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// 404 not_found unless the caller may see `tenant`: to a limited
    /// token, another tenant's customer, grant or tenant does not exist.
    pub fn require_tenant(&self, tenant: TenantId) -> Result<(), ApiError> {
        if self.tenants.allows(tenant) {
            Ok(())
        } else {
            Err(ApiError::NotFound)
        }
    }
}

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    /// 401 without a Bearer token or with one that is neither a service
    /// token nor a valid customer JWT; 403 for a valid customer JWT.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let config = state.config();
        if let Some(entry) = config.service_tokens.find(token) {
            return Ok(Self {
                name: entry.name.clone(),
                scopes: entry.scopes.clone(),
                tenants: entry.tenants.clone(),
            });
        }
        let is_customer_jwt = jwt::verify(
            &state.inner.jwt_keys.get(),
            token,
            &config.issuer,
            &config.audience,
            state.now(),
        )
        .is_ok();
        if is_customer_jwt {
            Err(ApiError::Forbidden)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountResponse {
    pub count: i64,
}

/// `GET /api/v1/internal/customers/count` (scope internal): customers
/// registered or imported, suspended included, from the read table; a
/// tenant-limited token counts its tenants' only.
#[utoipa::path(get, path = "/api/v1/internal/customers/count", tag = "service",
    security(("bearer" = [])),
    responses((status = 200, body = CountResponse), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn customer_count(
    State(state): State<AppState>,
    caller: ServiceCaller,
) -> Result<Json<CountResponse>, ApiError> {
    caller.require(Scope::Internal)?;
    let count =
        queue_projections::read::customer_count(&state.pool, caller.tenants.ids().as_deref())
            .await?;
    Ok(Json(CountResponse { count }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use super::*;

    fn tokens(pairs: &[(&str, &str)]) -> Result<ServiceTokens, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let get = |k: &str| map.get(k).cloned();
        ServiceTokens::from_lookup(&get, map.keys().map(String::as_str))
    }

    #[test]
    fn unknown_scope_names_the_variable_not_the_value() {
        let err = tokens(&[
            ("QUEUE_SERVICE_TOKEN_BILLING", "0123456789abcdef0123"),
            ("QUEUE_SERVICE_SCOPES_BILLING", "audit:write,root"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("QUEUE_SERVICE_SCOPES_BILLING"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "{err}");
    }

    #[test]
    fn scopes_without_a_token_and_short_tokens_are_refused() {
        let err = tokens(&[("QUEUE_SERVICE_SCOPES_X", "admin")]).unwrap_err();
        assert_eq!(err, ConfigError::Missing("QUEUE_SERVICE_TOKEN_X"));
        let err = tokens(&[
            ("QUEUE_SERVICE_TOKEN_X", "short"),
            ("QUEUE_SERVICE_SCOPES_X", "admin"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("QUEUE_SERVICE_TOKEN_X"), "{err}");
        let err = tokens(&[("QUEUE_SERVICE_TOKEN_X", "0123456789abcdef")]).unwrap_err();
        assert_eq!(err, ConfigError::Missing("QUEUE_SERVICE_SCOPES_X"));
    }

    #[test]
    fn a_token_may_be_limited_to_tenants() {
        let t = tokens(&[
            ("QUEUE_SERVICE_TOKEN_ACME", "acme-secret-00000001"),
            ("QUEUE_SERVICE_SCOPES_ACME", "admin"),
            ("QUEUE_SERVICE_TENANTS_ACME", "acme, acme-eu"),
            ("QUEUE_SERVICE_TOKEN_OPS", "ops-secret-000000001"),
            ("QUEUE_SERVICE_SCOPES_OPS", "admin"),
            ("QUEUE_SERVICE_TOKEN_ALL", "all-secret-000000001"),
            ("QUEUE_SERVICE_SCOPES_ALL", "admin"),
            ("QUEUE_SERVICE_TENANTS_ALL", "*"),
        ])
        .unwrap();
        let slug = |s: &str| TenantId::for_slug(&TenantSlug::parse(s).unwrap());
        let acme = &t.find("acme-secret-00000001").unwrap().tenants;
        assert!(acme.allows(slug("acme")) && acme.allows(slug("acme-eu")));
        assert!(!acme.allows(slug("globex")) && !acme.allows(TenantId::DEFAULT));
        assert_eq!(acme.ids().map(|ids| ids.len()), Some(2));
        for name in ["ops-secret-000000001", "all-secret-000000001"] {
            let all = &t.find(name).unwrap().tenants;
            assert_eq!(*all, TenantLimit::All);
            assert!(all.allows(slug("globex")) && all.ids().is_none());
        }
        // A bad slug, or nothing but commas: the variable is named.
        for bad in ["Acme", " , ,", "acme,-x"] {
            let err = tokens(&[
                ("QUEUE_SERVICE_TOKEN_ACME", "acme-secret-00000001"),
                ("QUEUE_SERVICE_SCOPES_ACME", "admin"),
                ("QUEUE_SERVICE_TENANTS_ACME", bad),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("QUEUE_SERVICE_TENANTS_ACME"),
                "{bad}: {err}"
            );
        }
        // Tenants without a token: the token is missing.
        let err = tokens(&[("QUEUE_SERVICE_TENANTS_X", "acme")]).unwrap_err();
        assert_eq!(err, ConfigError::Missing("QUEUE_SERVICE_TOKEN_X"));
    }

    #[test]
    fn tokens_resolve_to_their_service_and_debug_hides_them() {
        let t = tokens(&[
            ("QUEUE_SERVICE_TOKEN_BILLING", "billing-secret-0001"),
            ("QUEUE_SERVICE_SCOPES_BILLING", "audit:write, audit:read"),
            ("QUEUE_SERVICE_TOKEN_OPS", "ops-secret-000000001"),
            (
                "QUEUE_SERVICE_SCOPES_OPS",
                "admin,internal,rbac:read,rbac:write",
            ),
        ])
        .unwrap();
        assert_eq!(t.len(), 2);
        let billing = t.find("billing-secret-0001").unwrap();
        assert_eq!(billing.name.as_str(), "billing");
        assert!(billing.scopes.contains(&Scope::AuditRead));
        assert!(!billing.scopes.contains(&Scope::Admin));
        assert_eq!(t.find("ops-secret-000000001").unwrap().name.as_str(), "ops");
        assert!(t.find("billing-secret-0002").is_none());
        let debug = format!("{t:?}");
        assert!(
            debug.contains("billing") && !debug.contains("secret"),
            "{debug}"
        );
    }
}
