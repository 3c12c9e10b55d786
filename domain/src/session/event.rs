use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::types::{CredentialId, CustomerId, LegacyId, SecretHash, SessionFamilyId};

/// How the customer authenticated when the session was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthMethod {
    Webauthn {
        credential_id: CredentialId,
    },
    BackupCode,
    /// A SAML login through the customer's tenant IdP (ADR 0218).
    Saml,
}

impl AuthMethod {
    /// The JWT `amr` value: `webauthn`, `backup_code` or `saml`.
    pub fn amr(&self) -> &'static str {
        match self {
            Self::Webauthn { .. } => "webauthn",
            Self::BackupCode => "backup_code",
            Self::Saml => "saml",
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Logout,
    Admin,
    ReuseDetected,
    Suspended,
    Expired,
    /// Ended by the customer from another of their sessions (a factor
    /// change: step-up and a notice, ADR 0211).
    RevokedByCustomer,
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Logout => "logout",
            Self::Admin => "admin",
            Self::ReuseDetected => "reuse_detected",
            Self::Suspended => "suspended",
            Self::Expired => "expired",
            Self::RevokedByCustomer => "revoked_by_customer",
        })
    }
}

/// What happened to a session, externally tagged under the event type name.
/// Refresh tokens appear only as hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    #[serde(rename = "SessionCreated")]
    Created {
        customer_id: CustomerId,
        method: AuthMethod,
        refresh_hash: SecretHash,
        family_id: SessionFamilyId,
        idle_timeout_secs: u32,
        absolute_timeout_secs: u32,
        at: DateTime<Utc>,
        /// When the customer last proved presence, if before `at`: a SAML
        /// login answered from the IdP's own session (its `AuthnInstant`).
        /// The session's `auth_time` (step-up) is this, else `at`. Absent in
        /// every other event (stored bytes unchanged, ADR 0220).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authn_instant: Option<DateTime<Utc>>,
    },
    #[serde(rename = "SessionImported")]
    Imported {
        legacy_id: LegacyId,
        customer_id: CustomerId,
        refresh_hash: SecretHash,
        idle_timeout_secs: u32,
        created_at: DateTime<Utc>,
        last_seen_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// `new` replaced the current token. `previous` is the token presented:
    /// the current one, or on a grace retry the one rotated out just before.
    #[serde(rename = "SessionRefreshed")]
    Refreshed {
        previous: SecretHash,
        new: SecretHash,
        grace_retry: bool,
        at: DateTime<Utc>,
    },
    #[serde(rename = "SessionRevoked")]
    Revoked {
        reason: RevokeReason,
        at: DateTime<Utc>,
    },
    /// A user-verified assertion of `credential_id` in this session: its
    /// `auth_time` is now `at` (step-up, ADR 0211).
    #[serde(rename = "SessionReauthenticated")]
    Reauthenticated {
        credential_id: CredentialId,
        at: DateTime<Utc>,
    },
    /// The customer authenticated anew at the tenant's identity provider
    /// (at `authn_instant`, as the signed assertion says), answering this
    /// session's ForceAuthn request: its `auth_time` is now `authn_instant`
    /// (step-up for SAML customers, ADR 0220).
    #[serde(rename = "SessionSamlReauthenticated")]
    SamlReauthenticated {
        authn_instant: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// This session added the passkey `credential_id` (a backup-code
    /// session may add one, ADR 0211).
    #[serde(rename = "SessionPasskeyAdded")]
    PasskeyAdded {
        credential_id: CredentialId,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Created { .. } => "SessionCreated",
            Self::Imported { .. } => "SessionImported",
            Self::Refreshed { .. } => "SessionRefreshed",
            Self::Revoked { .. } => "SessionRevoked",
            Self::Reauthenticated { .. } => "SessionReauthenticated",
            Self::SamlReauthenticated { .. } => "SessionSamlReauthenticated",
            Self::PasskeyAdded { .. } => "SessionPasskeyAdded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
