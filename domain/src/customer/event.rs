use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::types::{
    Actor, CustomerId, DisplayName, Email, GrantId, LegacyId, Reason, Role, SecretHash, TenantId,
    TicketId,
};

/// What happened to a customer. Serialised externally tagged under the event
/// type name (`{"CustomerRegistered": {...}}`); secrets appear only as hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerEvent {
    #[serde(rename = "CustomerRegistered")]
    Registered {
        customer_id: CustomerId,
        email: Email,
        display_name: DisplayName,
        /// Recorded so replay does not depend on today's default.
        default_role: Role,
        at: DateTime<Utc>,
        /// The customer's tenant; absent in stored events of the default
        /// tenant, which read as [`TenantId::DEFAULT`] and are written
        /// without it (ADR 0217: stored bytes unchanged).
        #[serde(
            default = "TenantId::default_tenant",
            skip_serializing_if = "TenantId::is_default"
        )]
        tenant_id: TenantId,
    },
    #[serde(rename = "CustomerImported")]
    Imported {
        customer_id: CustomerId,
        legacy_id: LegacyId,
        email: Email,
        display_name: Option<DisplayName>,
        default_role: Role,
        email_verified_at: Option<DateTime<Utc>>,
        suspended: bool,
        created_at: DateTime<Utc>,
        /// The customer's tenant; absent in stored events of the default
        /// tenant, which read as [`TenantId::DEFAULT`] and are written
        /// without it (ADR 0217: stored bytes unchanged).
        #[serde(
            default = "TenantId::default_tenant",
            skip_serializing_if = "TenantId::is_default"
        )]
        tenant_id: TenantId,
    },
    /// A customer created by an identity provider's first login (SAML
    /// just-in-time provisioning, issue 22): what `Registered` records, and
    /// who vouched for it (`source` `saml`, `actor` `saml:<tenant slug>`).
    #[serde(rename = "CustomerProvisioned")]
    Provisioned {
        customer_id: CustomerId,
        email: Email,
        display_name: DisplayName,
        default_role: Role,
        source: ProvisioningSource,
        actor: Actor,
        at: DateTime<Utc>,
        /// As on `Registered`: absent for the default tenant.
        #[serde(
            default = "TenantId::default_tenant",
            skip_serializing_if = "TenantId::is_default"
        )]
        tenant_id: TenantId,
    },
    EmailVerificationRequested {
        token_hash: SecretHash,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    EmailVerified {
        at: DateTime<Utc>,
    },
    RoleGranted {
        grant_id: GrantId,
        role: Role,
        ticket_id: Option<TicketId>,
        reason: Reason,
        actor: Actor,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    RoleRevoked {
        grant_id: GrantId,
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// A new set of backup codes; every earlier generation is void.
    BackupCodesGenerated {
        /// 1 for the first set, then one more per regeneration.
        generation: u32,
        /// HMAC-SHA-256 of each code under the backup-code key `key_id`
        /// (ADR 0211); without `key_id` (events before it, backfilled
        /// codes) each is the code's unkeyed SHA-256 (legacy).
        code_hashes: Vec<SecretHash>,
        /// The backup-code key the hashes are keyed with; absent: legacy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        at: DateTime<Utc>,
    },
    BackupCodeRedeemed {
        generation: u32,
        /// Position of the code in its generation's `code_hashes`.
        index: u32,
        at: DateTime<Utc>,
    },
    #[serde(rename = "CustomerSuspended")]
    Suspended {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
    #[serde(rename = "CustomerReinstated")]
    Reinstated {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
}

/// Who created a provisioned customer (`CustomerProvisioned.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningSource {
    /// A tenant's SAML identity provider (just-in-time provisioning).
    Saml,
}

impl ProvisioningSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Saml => "saml",
        }
    }
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Registered { .. } => "CustomerRegistered",
            Self::Imported { .. } => "CustomerImported",
            Self::Provisioned { .. } => "CustomerProvisioned",
            Self::EmailVerificationRequested { .. } => "EmailVerificationRequested",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::RoleGranted { .. } => "RoleGranted",
            Self::RoleRevoked { .. } => "RoleRevoked",
            Self::BackupCodesGenerated { .. } => "BackupCodesGenerated",
            Self::BackupCodeRedeemed { .. } => "BackupCodeRedeemed",
            Self::Suspended { .. } => "CustomerSuspended",
            Self::Reinstated { .. } => "CustomerReinstated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
