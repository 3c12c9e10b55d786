/// Why a SAML input was refused. Every variant has a stable [`code`](SamlError::code)
/// the API answers with and writes into the audit event; no variant carries
/// the response itself or any secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    // --- configuration ---
    #[error("invalid IdP metadata: {0}")]
    InvalidIdpMetadata(&'static str),
    #[error("invalid service provider setting: {0}")]
    InvalidSpConfig(&'static str),
    #[error("invalid request id: {0}")]
    InvalidRequestId(&'static str),
    /// SAML bindings allow at most 80 bytes of RelayState.
    #[error("RelayState is longer than 80 bytes")]
    RelayStateTooLong,

    // --- the response as a document ---
    #[error("SAMLResponse is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("SAMLResponse is not valid: {0}")]
    ResponseMalformed(&'static str),
    /// XML comments or processing instructions inside a response: the
    /// comment-injection attack (`user@evil.com<!---->.example.com`) relies on
    /// them, and no IdP needs them.
    #[error("SAMLResponse contains an XML comment or processing instruction")]
    CommentInjection,
    #[error("SAMLResponse carries no assertion")]
    AssertionMissing,
    /// More than one assertion anywhere in the document, or an assertion in a
    /// place a response does not put one: a signature-wrapping attempt.
    #[error("SAMLResponse carries more than one assertion or one out of place")]
    SignatureWrapping,
    #[error("encrypted assertions are not supported")]
    EncryptedAssertionUnsupported,
    #[error("the IdP answered with a non-success status")]
    StatusNotSuccess,

    // --- signature ---
    #[error("neither the response nor the assertion is signed")]
    Unsigned,
    /// The signature does not verify with the configured IdP certificates,
    /// uses an algorithm outside the allow-list, or does not cover the
    /// assertion.
    #[error("the signature is not valid for the configured IdP")]
    SignatureInvalid,

    // --- the signed content ---
    #[error("issuer is not the configured IdP")]
    IssuerMismatch,
    #[error("audience does not name this service provider")]
    AudienceMismatch,
    #[error("destination is not this service provider's ACS URL")]
    DestinationMismatch,
    #[error("subject confirmation recipient is not this service provider's ACS URL")]
    RecipientMismatch,
    #[error("the assertion is not valid yet")]
    NotYetValid,
    #[error("the assertion has expired")]
    Expired,
    #[error("no bearer subject confirmation with complete data")]
    SubjectConfirmationInvalid,
    #[error("InResponseTo names no outstanding request")]
    InResponseToMismatch,
    #[error("IdP-initiated login is not allowed for this connection")]
    IdpInitiatedNotAllowed,
    #[error("the assertion has no NameID")]
    NameIdMissing,
    #[error("the assertion has no authentication statement")]
    AuthnStatementMissing,
    #[error("the assertion was already used")]
    AssertionReplayed,
    /// A step-up's answer names another person than the session's customer.
    #[error("the assertion's subject is not the customer of the session that asked")]
    ReauthSubjectMismatch,
    /// A step-up's answer whose `AuthnInstant` is from before the request:
    /// the IdP did not authenticate anew (it ignored `ForceAuthn`).
    #[error("the identity provider did not authenticate anew")]
    ReauthStale,
}

impl SamlError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidIdpMetadata(_) => "saml_idp_metadata_invalid",
            Self::InvalidSpConfig(_) => "saml_sp_config_invalid",
            Self::InvalidRequestId(_) => "saml_request_id_invalid",
            Self::RelayStateTooLong => "saml_relay_state_too_long",
            Self::ResponseTooLarge(_) => "saml_response_too_large",
            Self::ResponseMalformed(_) => "saml_response_malformed",
            Self::CommentInjection => "saml_comment_injection",
            Self::AssertionMissing => "saml_assertion_missing",
            Self::SignatureWrapping => "saml_signature_wrapping",
            Self::EncryptedAssertionUnsupported => "saml_encrypted_assertion_unsupported",
            Self::StatusNotSuccess => "saml_status_not_success",
            Self::Unsigned => "saml_unsigned",
            Self::SignatureInvalid => "saml_signature_invalid",
            Self::IssuerMismatch => "saml_issuer_mismatch",
            Self::AudienceMismatch => "saml_audience_mismatch",
            Self::DestinationMismatch => "saml_destination_mismatch",
            Self::RecipientMismatch => "saml_recipient_mismatch",
            Self::NotYetValid => "saml_not_yet_valid",
            Self::Expired => "saml_expired",
            Self::SubjectConfirmationInvalid => "saml_subject_confirmation_invalid",
            Self::InResponseToMismatch => "saml_in_response_to_mismatch",
            Self::IdpInitiatedNotAllowed => "saml_idp_initiated_not_allowed",
            Self::NameIdMissing => "saml_name_id_missing",
            Self::AuthnStatementMissing => "saml_authn_statement_missing",
            Self::AssertionReplayed => "saml_assertion_replayed",
            Self::ReauthSubjectMismatch => "saml_reauth_subject_mismatch",
            Self::ReauthStale => "saml_reauth_stale",
        }
    }
}
