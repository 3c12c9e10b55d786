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
use queue_domain::session::AuthMethod;
use queue_domain::types::{Actor, CustomerId, DisplayName, Email, GrantId};
use queue_domain::{Customer, CustomerEvent};
use queue_eventstore::{Batch, Loaded};
use queue_saml::{AttributeNames, SamlError, ValidationContext};
use serde_json::json;
use uuid::Uuid;

use crate::auth::tokens;
use crate::flows::queue_audit::{self, QueueAudit};
use crate::http::error::ApiError;
use crate::routes::saml::{allowed_return_to, SamlTenant};
use crate::state::AppState;

/// A completed SAML login: the session's refresh token and where to send
/// the browser.
pub struct SamlSignIn {
    pub customer_id: CustomerId,
    pub refresh_token: String,
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
    match sign_in(state, tenant, saml_response, relay_state, now).await {
        Ok(Ok(done)) => {
            tracing::info!(tenant = tenant.slug.as_str(), "SAML login");
            Ok(done)
        }
        Ok(Err(refusal)) => {
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
        Err(other) => Err(other),
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
    let return_to = match &login.in_response_to {
        Some(request_id) => {
            match crate::db::take_saml_request(&mut tx, request_id, tenant_uuid, now).await? {
                Some(return_to) => return_to,
                None => return Ok(Err(SamlError::InResponseToMismatch.into())),
            }
        }
        None => None,
    };
    let return_to = match return_to {
        Some(url) => url,
        None => allowed_return_to(state, None)?,
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
    let (customer_id, mut customer): (CustomerId, Loaded<Customer>) =
        match store.customer_by_email_in(tenant.tenant_id, &email).await? {
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
    let session =
        tokens::create_session(state, &mut batch, customer_id, AuthMethod::Saml, now).await?;

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
        customer_id,
        refresh_token: session.refresh_token,
        return_to,
    }))
}

/// Folds events the aggregate just decided into it, so the next command
/// (and the role reconciliation) sees them.
fn apply(customer: &mut Loaded<Customer>, events: &[CustomerEvent]) {
    for event in events {
        customer.aggregate.apply(event.clone());
    }
}
