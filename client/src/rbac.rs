//! RBAC and admin calls of the service API (`docs/api-contract.md`,
//! "Service endpoints").
//!
//! Retries: the reads (roles, history) are idempotent and retried like an
//! audit write (503/429/unreachable, `Retry-After`). The writes (grant,
//! revoke, suspend, reinstate) carry no idempotency key in the contract, so
//! they are sent once: a grant Queue applied before the connection broke
//! would otherwise be granted twice, and a repeated revoke, suspend or
//! reinstate answers 404/409 instead of what happened. A 503 or 429 comes
//! back as [`ClientError::Api`] for the caller to decide.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::ids::{CustomerId, GrantId};
use crate::service::{body, Retry, ServiceClient};

/// `POST /api/v1/rbac/grants` (scope `rbac:write`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrantRole {
    pub customer_id: CustomerId,
    /// One of Queue's `QUEUE_ROLE_CATALOGUE`.
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl GrantRole {
    pub fn new(
        customer_id: CustomerId,
        role: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            customer_id,
            role: role.into(),
            ticket_id: None,
            reason: reason.into(),
            expires_at: None,
        }
    }

    pub fn with_ticket(mut self, ticket_id: impl Into<String>) -> Self {
        self.ticket_id = Some(ticket_id.into());
        self
    }

    /// The grant stops counting at `at` (it then no longer appears in
    /// [`ServiceClient::roles`]).
    pub fn expiring_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// One active grant (not revoked, not expired).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Grant {
    pub grant_id: GrantId,
    pub role: String,
    pub ticket_id: Option<String>,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/rbac/customers/{customer_id}/roles`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CustomerRoles {
    /// Active grants.
    pub roles: Vec<Grant>,
    /// The role every customer holds without a grant.
    #[serde(default)]
    pub default_role: Option<String>,
}

impl CustomerRoles {
    /// Whether an active grant names `role`.
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|g| g.role == role)
    }
}

/// `GET /api/v1/admin/customers/{customer_id}/history`: the customer's
/// state at `at` (`None` before registration), the events that led there,
/// and whether a signed checkpoint covers them. `state` and `events` are
/// kept as JSON: their fields are Queue's `queue_eventstore::history`
/// report and grow with it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CustomerHistory {
    pub customer_id: String,
    pub at: DateTime<Utc>,
    pub state: Option<serde_json::Value>,
    pub events: Vec<serde_json::Value>,
    pub covered_by_checkpoint: bool,
    #[serde(default)]
    pub checkpoint_tree_size: Option<i64>,
}

impl CustomerHistory {
    /// `state.status` at `at` (`active`, `suspended`, …), if the customer
    /// existed then.
    pub fn status(&self) -> Option<&str> {
        self.state.as_ref()?.get("status")?.as_str()
    }
}

#[derive(Deserialize)]
struct Created {
    grant_id: GrantId,
}

#[derive(Serialize)]
struct Reason<'a> {
    reason: &'a str,
}

impl ServiceClient {
    /// Grants a role; sent once (see the module docs). Every grant is in
    /// the ledger, with this service as actor and the reason, before it
    /// takes effect.
    pub async fn grant_role(&self, grant: &GrantRole) -> Result<GrantId, ClientError> {
        let url = self.url("/api/v1/rbac/grants");
        let (response, _) = self
            .send("rbac grant", Retry::No, || {
                self.http().post(&url).json(grant)
            })
            .await?;
        Ok(body::<Created>(response).await?.grant_id)
    }

    /// Revokes a grant; sent once.
    pub async fn revoke_grant(&self, grant_id: GrantId, reason: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/api/v1/rbac/grants/{grant_id}"));
        self.send("rbac revoke", Retry::No, || {
            self.http().delete(&url).json(&Reason { reason })
        })
        .await?;
        Ok(())
    }

    /// A customer's active grants (scope `rbac:read`); retried.
    pub async fn roles(&self, customer_id: CustomerId) -> Result<CustomerRoles, ClientError> {
        let url = self.url(&format!("/api/v1/rbac/customers/{customer_id}/roles"));
        let (response, _) = self
            .send("rbac roles", Retry::Yes(self.retry_policy()), || {
                self.http().get(&url)
            })
            .await?;
        body(response).await
    }

    /// Suspends a customer and revokes all their sessions (scope `admin`);
    /// sent once. 409 when already suspended.
    pub async fn suspend(&self, customer_id: CustomerId, reason: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/api/v1/admin/customers/{customer_id}/suspend"));
        self.send("admin suspend", Retry::No, || {
            self.http().post(&url).json(&Reason { reason })
        })
        .await?;
        Ok(())
    }

    /// Lifts a suspension (scope `admin`); sent once. 409 when not
    /// suspended. Sessions the suspension revoked stay revoked.
    pub async fn reinstate(
        &self,
        customer_id: CustomerId,
        reason: &str,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/api/v1/admin/customers/{customer_id}/reinstate"));
        self.send("admin reinstate", Retry::No, || {
            self.http().post(&url).json(&Reason { reason })
        })
        .await?;
        Ok(())
    }

    /// The customer as they were at `at` (now when `None`), from the
    /// verified log (scope `admin`); retried.
    pub async fn customer_history(
        &self,
        customer_id: CustomerId,
        at: Option<DateTime<Utc>>,
    ) -> Result<CustomerHistory, ClientError> {
        let url = self.url(&format!("/api/v1/admin/customers/{customer_id}/history"));
        let at = at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let (response, _) = self
            .send("admin history", Retry::Yes(self.retry_policy()), || {
                let request = self.http().get(&url);
                match &at {
                    Some(at) => request.query(&[("at", at)]),
                    None => request,
                }
            })
            .await?;
        body(response).await
    }
}
