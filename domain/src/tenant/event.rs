use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::types::{
    Actor, IdpMetadataXml, Reason, Role, SamlAttributeName, SamlGroup, TenantId, TenantName,
    TenantSlug,
};

/// A tenant's SAML 2.0 connection to its identity provider, as configured by
/// an admin (`PUT /api/v1/tenants/{id}/saml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlConnection {
    /// The IdP's metadata (entityID, SSO URL, signing certificates); public
    /// data, kept whole so replay and export see what was trusted.
    pub idp_metadata: IdpMetadataXml,
    /// The attribute carrying the email (required for just-in-time
    /// provisioning; otherwise the NameID must be the email).
    pub email_attribute: Option<SamlAttributeName>,
    pub display_name_attribute: Option<SamlAttributeName>,
    pub groups_attribute: Option<SamlAttributeName>,
    /// IdP group → the tenant roles its members hold. Every SAML login
    /// reconciles the customer's SAML-granted roles with this map.
    pub group_roles: BTreeMap<SamlGroup, BTreeSet<Role>>,
    /// Whether a response that answers no AuthnRequest of ours is accepted.
    pub allow_idp_initiated: bool,
    /// Whether a first login provisions the customer.
    pub jit_provisioning: bool,
}

/// What happened to a tenant, externally tagged under the event type name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantCreated {
        tenant_id: TenantId,
        slug: TenantSlug,
        name: TenantName,
        actor: Actor,
        at: DateTime<Utc>,
    },
    TenantRenamed {
        name: TenantName,
        actor: Actor,
        at: DateTime<Utc>,
    },
    SamlConnectionConfigured {
        connection: SamlConnection,
        actor: Actor,
        at: DateTime<Utc>,
    },
    SamlConnectionDisabled {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantCreated { .. } => "TenantCreated",
            Self::TenantRenamed { .. } => "TenantRenamed",
            Self::SamlConnectionConfigured { .. } => "SamlConnectionConfigured",
            Self::SamlConnectionDisabled { .. } => "SamlConnectionDisabled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
