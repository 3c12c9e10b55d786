use chrono::{DateTime, Utc};

use super::SamlConnection;
use crate::types::{Actor, Reason, TenantId, TenantName, TenantSlug};

/// The most group → role entries (counting each role of a group) a SAML
/// connection may map.
pub const MAX_GROUP_MAPPINGS: usize = 256;

/// Everything that can be asked of a tenant. `at` is the caller's clock.
/// The stream id is [`TenantId::for_slug`]`(slug)`, which makes slugs unique
/// by construction: creating a taken slug is `AlreadyCreated`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantCommand {
    Create {
        tenant_id: TenantId,
        slug: TenantSlug,
        name: TenantName,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// Renaming to the current name appends nothing.
    Rename {
        name: TenantName,
        actor: Actor,
        at: DateTime<Utc>,
    },
    /// Sets (or replaces) the tenant's SAML connection and enables it.
    ConfigureSaml {
        connection: SamlConnection,
        actor: Actor,
        at: DateTime<Utc>,
    },
    DisableSaml {
        reason: Reason,
        actor: Actor,
        at: DateTime<Utc>,
    },
}
