/// Why a tenant command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant not found")]
    NotFound,
    #[error("tenant already created")]
    AlreadyCreated,
    /// The stream id must be `TenantId::for_slug(slug)`.
    #[error("tenant id is not the id of its slug")]
    IdNotOfSlug,
    #[error("invalid SAML connection: {0}")]
    InvalidSamlConnection(&'static str),
    #[error("no SAML connection is enabled")]
    SamlNotEnabled,
}
