/// Why an audit command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The idempotency key was used before: the caller answers with the
    /// original record (`Audit::record`).
    #[error("audit event already recorded")]
    AlreadyRecorded,
    #[error("invalid metadata: {0}")]
    InvalidMetadata(&'static str),
    /// An entry with a customer is that customer's tenant's: it names one
    /// or the other.
    #[error("an audit event names its customer or its tenant, not both")]
    CustomerAndTenant,
}
