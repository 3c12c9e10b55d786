/// Why a tenant command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant not found")]
    NotFound,
    #[error("tenant already created")]
    AlreadyCreated,
    /// The slug `default` is the default tenant's, and the default tenant's
    /// slug is `default`.
    #[error("the slug default belongs to the default tenant only")]
    ReservedSlug,
    #[error("invalid SAML connection: {0}")]
    InvalidSamlConnection(&'static str),
    #[error("no SAML connection is enabled")]
    SamlNotEnabled,
}
