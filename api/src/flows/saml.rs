//! A SAML login at the assertion consumer service (`POST
//! /saml/{tenant_slug}/acs`, ADR 0218). The order: validate the response
//! with `queue-saml` against the tenant's connection; then, in one
//! transaction, record the assertion id (a replay is refused), take the
//! outstanding request it answers (single use), find or provision the
//! customer, reconcile its SAML roles with the groups, create a `saml`
//! session and append all of it in one batch. A refusal appends nothing for
//! the customer: Queue records an audit event naming the tenant and the
//! refusal's code, and the caller answers that code.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use queue_domain::customer::CustomerCommand;
use queue_domain::customer::ProvisioningSource;
use queue_domain::session::{AuthMethod, SessionCommand, SessionError};
use queue_domain::types::{Actor, CustomerId, DisplayName, Email, GrantId, SessionId};
use queue_domain::{Customer, CustomerEvent, Session};
use queue_eventstore::{Batch, Loaded};
use queue_saml::{AttributeNames, SamlError, ValidationContext};
use serde_json::json;
use uuid::Uuid;

use crate::auth::tokens;
use crate::flows::queue_audit::{self, QueueAudit};
use crate::http::error::ApiError;
use crate::routes::saml::{allowed_return_to, SamlTenant};
use crate::state::AppState;

/// A completed SAML login: the new session's refresh token (`None` for a
/// step-up, which reauthenticated the session that asked) and where to
/// send the browser.
pub struct SamlSignIn {
    pub refresh_token: Option<String>,
    pub return_to: String,
}

/// Why a SAML login was refused: the API error and the code the audit
/// event records.
struct Refusal {
    error: ApiError,
    code: &'static str,
}

impl From<SamlError> for Refusal {
    fn from(error: SamlError) -> Self {
        Self {
            code: error.code(),
            error: ApiError::Saml(error),
        }
    }
}

/// The ACS: `saml_response` and `relay_state` are the form fields of the
/// HTTP-POST binding.
pub async fn acs(
    state: &AppState,
    tenant: &SamlTenant,
    saml_response: &str,
    relay_state: Option<&str>,
) -> Result<SamlSignIn, ApiError> {
    let now = state.now();
    // A lost race (a page refreshing the session a step-up reauthenticates,
    // two first logins of one customer) is decided again: nothing of the
    // lost attempt is kept, not even its assertion id.
    let outcome =
        super::again_on_conflict(|| sign_in(state, tenant, saml_response, relay_state, now)).await;
    match outcome {
        Ok(Ok(done)) => {
            tracing::info!(tenant = tenant.slug.as_str(), "SAML login");
            crate::http::metrics::saml_login(match done.refresh_token {
                Some(_) => "success",
                None => "step_up",
            });
            Ok(done)
        }
        Ok(Err(refusal)) => {
            crate::http::metrics::saml_login(refusal.code);
            tracing::info!(
                tenant = tenant.slug.as_str(),
                code = refusal.code,
                "SAML login refused"
            );
            queue_audit::record(
                state,
                QueueAudit {
                    key: &format!("saml-refused:{}", Uuid::new_v4()),
                    action: "saml.login_refused",
                    target: &format!("tenant:{}", tenant.tenant_id),
                    customer_id: None,
                    tenant_id: Some(tenant.tenant_id),
                    metadata: json!({
                        "tenant_id": tenant.tenant_id.to_string(),
                        "tenant_slug": tenant.slug.as_str(),
                        "reason": refusal.code,
                    }),
                },
                now,
            )
            .await?;
            Err(refusal.error)
        }
        Err(other) => {
            crate::http::metrics::saml_login("error");
            Err(other)
        }
    }
}

/// The login; the inner `Err` is a refusal to audit, the outer one a
/// failure of Queue itself.
async fn sign_in(
    state: &AppState,
    tenant: &SamlTenant,
    saml_response: &str,
    relay_state: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Result<SamlSignIn, Refusal>, ApiError> {
    let store = state.store();
    let tenant_uuid = *tenant.tenant_id.as_uuid();
    let connection = &tenant.connection;
    // The requests this tenant has outstanding, and the one the RelayState
    // names: whether that one is still outstanding is decided below, when it
    // is taken (single use), after the replay check, so a replayed response
    // is refused as a replay.
    let mut outstanding =
        crate::db::outstanding_saml_requests(store.pool(), tenant_uuid, now).await?;
    if let Some(relay) = relay_state.filter(|r| !r.is_empty() && r.len() <= 80) {
        outstanding.push(relay.to_owned());
    }
    let outstanding: Vec<&str> = outstanding.iter().map(String::as_str).collect();
    let attributes = AttributeNames {
        email: connection
            .email_attribute
            .as_ref()
            .map(|a| a.as_str().to_owned()),
        display_name: connection
            .display_name_attribute
            .as_ref()
            .map(|a| a.as_str().to_owned()),
        groups: connection
            .groups_attribute
            .as_ref()
            .map(|a| a.as_str().to_owned()),
    };
    let ctx = ValidationContext {
        sp: &tenant.sp,
        idp: &tenant.idp,
        attributes: &attributes,
        allow_idp_initiated: connection.allow_idp_initiated,
        outstanding_request_ids: &outstanding,
        now,
    };
    let login = match queue_saml::validate_response(saml_response, &ctx) {
        Ok(login) => login,
        Err(error) => return Ok(Err(error.into())),
    };

    let mut tx = state.pool.begin().await?;
    let fresh = crate::db::record_saml_assertion(
        &mut tx,
        tenant_uuid,
        &login.assertion_id,
        login.replay_cache_until,
    )
    .await?;
    if !fresh {
        return Ok(Err(SamlError::AssertionReplayed.into()));
    }
    let request = match &login.in_response_to {
        Some(request_id) => {
            match crate::db::take_saml_request(&mut tx, request_id, tenant_uuid, now).await? {
                Some(request) => Some(request),
                None => return Ok(Err(SamlError::InResponseToMismatch.into())),
            }
        }
        None => None,
    };
    let step_up = request.as_ref().and_then(StepUp::of);
    let return_to = match request {
        Some(request) => match request.return_to {
            Some(url) => url,
            None => allowed_return_to(state, None)?,
        },
        // IdP-initiated: a portal's deep link in RelayState is followed
        // when it is an allowed URL (QUEUE_RP_ORIGINS), else ignored (never
        // an open redirect, never a reason to refuse the login).
        None => relay_state
            .and_then(|relay| allowed_return_to(state, Some(relay)).ok())
            .map_or_else(|| allowed_return_to(state, None), Ok)?,
    };

    // Without an email attribute the NameID must be the email (ADR 0216).
    let raw_email = login.email.as_deref().unwrap_or(&login.name_id);
    let Ok(email) = Email::parse(raw_email) else {
        return Ok(Err(Refusal {
            error: ApiError::Forbidden,
            code: "saml_email_invalid",
        }));
    };
    let mut batch = Batch::new();
    let mut events: Vec<CustomerEvent> = Vec::new();
    let found = store.customer_by_email_in(tenant.tenant_id, &email).await?;
    // A step-up's answer is the session's customer's, or nobody's.
    if let Some(step_up) = &step_up {
        if found != Some(step_up.customer_id) {
            return Ok(Err(SamlError::ReauthSubjectMismatch.into()));
        }
    }
    let (customer_id, mut customer): (CustomerId, Loaded<Customer>) = match found {
        Some(id) => (id, store.customer(id).await?),
        None if connection.jit_provisioning => {
            let id = CustomerId::from(Uuid::now_v7());
            let mut customer: Loaded<Customer> = Loaded::new_stream(id.to_string());
            let display_name = login
                .display_name
                .as_deref()
                .and_then(|name| DisplayName::parse(name).ok())
                .map_or_else(|| DisplayName::parse(email.as_str()), Ok)?;
            let registered = customer
                .execute(CustomerCommand::Provision {
                    customer_id: id,
                    tenant_id: tenant.tenant_id,
                    email: email.clone(),
                    display_name,
                    source: ProvisioningSource::Saml,
                    actor: Actor::parse(&format!("saml:{}", tenant.slug.as_str()))?,
                    at: now,
                })
                .await?;
            apply(&mut customer, &registered);
            events.extend(registered);
            (id, customer)
        }
        None => {
            return Ok(Err(Refusal {
                error: ApiError::Forbidden,
                code: "saml_customer_unknown",
            }))
        }
    };
    let Some(customer_state) = customer.aggregate.state().cloned() else {
        return Err(ApiError::internal("customer of the email has no state"));
    };
    if customer_state.tenant_id != tenant.tenant_id {
        return Err(ApiError::internal("customer found in another tenant"));
    }
    if customer_state.is_suspended() {
        return Ok(Err(Refusal {
            error: ApiError::CustomerSuspended,
            code: "customer_suspended",
        }));
    }

    let actor = Actor::parse(&format!("saml:{}", tenant.slug.as_str()))?;
    let changes = connection.reconcile_roles(&customer_state, &actor, &login.groups, now)?;
    for (grant_id, reason) in changes.revoke {
        let revoked = customer
            .execute(CustomerCommand::RevokeRole {
                grant_id,
                reason,
                actor: actor.clone(),
                at: now,
            })
            .await?;
        apply(&mut customer, &revoked);
        events.extend(revoked);
    }
    for (role, reason) in changes.grant {
        let granted = customer
            .execute(CustomerCommand::GrantRole {
                grant_id: GrantId::from(Uuid::new_v4()),
                role,
                ticket_id: None,
                reason,
                actor: actor.clone(),
                expires_at: None,
                at: now,
            })
            .await?;
        apply(&mut customer, &granted);
        events.extend(granted);
    }
    batch.add(&mut customer, &events)?;
    let refresh_token = match &step_up {
        None => Some(
            tokens::create_session_authenticated_at(
                state,
                &mut batch,
                customer_id,
                AuthMethod::Saml,
                now,
                Some(login.authn_instant),
            )
            .await?
            .refresh_token,
        ),
        Some(step_up) => {
            let mut session: Loaded<Session> = store.load(&step_up.session_id.to_string()).await?;
            let reauthenticated = session
                .execute(SessionCommand::ReauthenticateWithSaml {
                    authn_instant: login.authn_instant,
                    requested_at: step_up.requested_at,
                    at: now,
                })
                .await;
            match reauthenticated {
                Ok(events) => batch.add(&mut session, &events)?,
                Err(SessionError::StaleAuthentication) => {
                    return Ok(Err(SamlError::ReauthStale.into()))
                }
                // Signed out (or expired) while at the IdP.
                Err(SessionError::NotActive) => {
                    return Ok(Err(Refusal {
                        error: ApiError::Unauthorized,
                        code: "session_not_active",
                    }))
                }
                Err(other) => return Err(other.into()),
            }
            None
        }
    };

    // The assertion, the request and the login commit together, under the
    // customer's shared lock (a login racing a suspension sees it).
    crate::db::lock(
        &mut tx,
        crate::db::Lock::CustomerShared,
        &customer_id.to_string(),
    )
    .await?;
    let suspended = store
        .load_many_in::<Customer>(&mut tx, &[customer_id.to_string()])
        .await?
        .pop()
        .and_then(|c| c.aggregate.state().map(|s| s.is_suspended()))
        .unwrap_or(false);
    if suspended {
        return Ok(Err(Refusal {
            error: ApiError::CustomerSuspended,
            code: "customer_suspended",
        }));
    }
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(Ok(SamlSignIn {
        refresh_token,
        return_to,
    }))
}

/// What a step-up's request says (see `crate::db::SamlRequestRow`).
struct StepUp {
    session_id: SessionId,
    customer_id: CustomerId,
    requested_at: DateTime<Utc>,
}

impl StepUp {
    fn of(request: &crate::db::SamlRequestRow) -> Option<Self> {
        Some(Self {
            session_id: SessionId::from(request.session_id?),
            customer_id: CustomerId::from(request.customer_id?),
            requested_at: request.created_at,
        })
    }
}

/// Folds events the aggregate just decided into it, so the next command
/// (and the role reconciliation) sees them.
fn apply(customer: &mut Loaded<Customer>, events: &[CustomerEvent]) {
    for event in events {
        customer.aggregate.apply(event.clone());
    }
}
