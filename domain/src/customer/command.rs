use chrono::{DateTime, Utc};

use super::event::ProvisioningSource;

use crate::types::{
    Actor, CustomerId, DisplayName, Email, GrantId, LegacyId, Reason, Role, SecretHash, TenantId,
    TicketId,
};

/// How many backup codes make a set.
pub const BACKUP_CODE_COUNT: usize = 10;

/// How long an email verification token is valid; the caller computes
/// `expires_at = at + EMAIL_VERIFICATION_TTL_SECS`.
pub const EMAIL_VERIFICATION_TTL_SECS: i64 = 24 * 60 * 60;

/// Everything that can be asked of a customer. `at` is the caller's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerCommand {
    /// A new customer, with the default role.
    Register {
        customer_id: CustomerId,
        /// The tenant the customer belongs to for good ([`TenantId::DEFAULT`]
        /// for the public registration).
        tenant_id: TenantId,
        email: Email,
        display_name: DisplayName,
        at: DateTime<Utc>,
    },
    /// A customer created by an identity provider's first login (SAML JIT):
    /// `CustomerProvisioned` in the tenant, with the default role.
    Provision {
        customer_id: CustomerId,
        tenant_id: TenantId,
        email: Email,
        display_name: DisplayName,
        source: ProvisioningSource,
        /// `saml:<tenant slug>`, as on the roles the provider grants.
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// A customer backfilled from the legacy database. Whether this legacy id
    /// was already imported is the caller's concern (see
    /// [`CustomerId::for_legacy_id`], which makes a re-import hit
    /// `AlreadyRegistered`).
    Import {
        customer_id: CustomerId,
        legacy_id: LegacyId,
        email: Email,
        display_name: Option<DisplayName>,
        email_verified_at: Option<DateTime<Utc>>,
        suspended: bool,
        created_at: DateTime<Utc>,
    },
    /// Starts email verification; a new request supersedes the previous token.
    RequestEmailVerification {
        token_hash: SecretHash,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Confirms the email with the hash of the emailed token.
    VerifyEmail {
        token_hash: SecretHash,
        at: DateTime<Utc>,
    },
    GrantRole {
        grant_id: GrantId,
        role: Role,
        ticket_id: Option<TicketId>,
        reason: Reason,
        actor: Actor,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    RevokeRole {
        grant_id: GrantId,
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// Stores a new set of [`BACKUP_CODE_COUNT`] distinct code hashes and
    /// voids the previous set.
    GenerateBackupCodes {
        code_hashes: Vec<SecretHash>,
        /// The id of the backup-code key that keyed `code_hashes` (`None`:
        /// unkeyed SHA-256, kept for replays and tools of old histories).
        key_id: Option<String>,
        at: DateTime<Utc>,
    },
    RedeemBackupCode {
        code_hash: SecretHash,
        at: DateTime<Utc>,
    },
    Suspend {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
    Reinstate {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
}
