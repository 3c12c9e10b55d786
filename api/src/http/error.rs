//! The one error type of the API and its mapping to the contract's status
//! codes and machine codes (api-contract.md "Errors"). Every error response
//! is `{"error": {"code", "message", "request_id"}}`: handlers return
//! `ApiError`, whose response carries an [`ErrorBody`] extension that
//! [`error_envelope`] turns into the body with the request id.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use queue_domain::credential::CredentialError;
use queue_domain::customer::CustomerError;
use queue_domain::session::{RevokeReason, SessionError, StepUpRefusal};
use queue_domain::types::ParseError;
use queue_eventstore::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("passkey verification failed")]
    WebauthnFailed,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("refresh token reuse detected; the session is revoked")]
    RefreshReuseDetected,
    #[error("the session has expired")]
    SessionExpired,
    #[error("the session is revoked")]
    SessionRevoked,
    #[error("invalid or expired code")]
    InvalidCode,
    #[error("forbidden")]
    Forbidden,
    /// A factor change needs a passkey assertion at most 5 minutes old in
    /// this session (ADR 0211).
    #[error("a recent passkey authentication is required: reauthenticate and retry")]
    ReauthRequired,
    /// A session created by a backup code may add one passkey and revoke
    /// sessions, nothing more (ADR 0211).
    #[error("not allowed in a session created by a backup code: sign in with a passkey")]
    BackupCodeSession,
    #[error("the customer is suspended")]
    CustomerSuspended,
    #[error("the founders cohort is full")]
    FoundersCohortFull,
    #[error("not found")]
    NotFound,
    #[error("conflict: the resource changed, retry")]
    Conflict,
    #[error("this email cannot be registered")]
    EmailTaken,
    #[error("a tenant with this slug exists")]
    TenantExists,
    /// A SAML refusal (issue 22, ADR 0216): the crate's stable `saml_*` code.
    #[error("{0}")]
    Saml(queue_saml::SamlError),
    #[error("the last passkey cannot be deleted while no unused backup code remains")]
    LastCredential,
    #[error("the challenge has expired or was already used")]
    ChallengeExpired,
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("metadata is larger than 16 KiB")]
    MetadataTooLarge,
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("overloaded")]
    Overloaded { retry_after_secs: u64 },
    /// Details go to the log only.
    #[error("internal error")]
    Internal(String),
    #[error("the service is temporarily unavailable")]
    Unavailable { retry_after_secs: u64 },
    #[error("the service is shutting down")]
    ShuttingDown,
    /// Stored history that the decision needs does not verify (link, hash
    /// or MAC): nothing is decided and nothing appended. Details go to the
    /// log only (stream, sequence, kind; never payload).
    #[error("stored history does not verify; the request was refused")]
    Integrity(String),
}

/// The error envelope, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `challenge_expired`.
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// Retry-After for 503s raised where the configured value is not at hand.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

/// The error's code and message, left in the response extensions for
/// [`error_envelope`].
#[derive(Clone, Debug)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// The one table to check against api-contract.md.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::WebauthnFailed => (StatusCode::UNAUTHORIZED, "webauthn_failed"),
            Self::InvalidRefreshToken => (StatusCode::UNAUTHORIZED, "invalid_refresh_token"),
            Self::RefreshReuseDetected => (StatusCode::UNAUTHORIZED, "refresh_reuse_detected"),
            Self::SessionExpired => (StatusCode::UNAUTHORIZED, "session_expired"),
            Self::SessionRevoked => (StatusCode::UNAUTHORIZED, "session_revoked"),
            Self::InvalidCode => (StatusCode::UNAUTHORIZED, "invalid_code"),
            Self::Forbidden | Self::BackupCodeSession => (StatusCode::FORBIDDEN, "forbidden"),
            Self::ReauthRequired => (StatusCode::UNAUTHORIZED, "reauth_required"),
            Self::CustomerSuspended => (StatusCode::FORBIDDEN, "customer_suspended"),
            Self::FoundersCohortFull => (StatusCode::FORBIDDEN, "founders_cohort_full"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict => (StatusCode::CONFLICT, "conflict"),
            Self::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            Self::TenantExists => (StatusCode::CONFLICT, "tenant_exists"),
            Self::Saml(err) => (saml_status(err), err.code()),
            Self::LastCredential => (StatusCode::CONFLICT, "last_credential"),
            Self::ChallengeExpired => (StatusCode::GONE, "challenge_expired"),
            Self::PayloadTooLarge | Self::MetadataTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::Integrity(_) => (StatusCode::SERVICE_UNAVAILABLE, "integrity_error"),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs }
            | Self::Overloaded { retry_after_secs }
            | Self::Unavailable { retry_after_secs } => Some(*retry_after_secs),
            Self::ShuttingDown => Some(DEFAULT_RETRY_AFTER_SECS),
            // Damage does not heal by retrying: no Retry-After.
            Self::Integrity(_) => None,
            _ => None,
        }
    }

    pub fn unavailable() -> Self {
        Self::Unavailable {
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
        }
    }

    pub fn internal(details: impl Into<String>) -> Self {
        Self::Internal(details.into())
    }

    /// `map_err` for a (de)serialisation of our own data that cannot fail
    /// unless something is broken: 500, naming `what`.
    pub fn internal_json(what: &str) -> impl FnOnce(serde_json::Error) -> Self + '_ {
        move |e| Self::Internal(format!("{what}: {e}"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(details) => {
                tracing::error!(code, details = %details, "internal error");
                "internal error".to_owned()
            }
            Self::Unavailable { .. } => {
                tracing::warn!(code, "store unavailable");
                self.to_string()
            }
            Self::Integrity(details) => {
                tracing::error!(code, details = %details, "request refused: stored history does not verify");
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after() {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if matches!(self, Self::RequestTimeout) {
            // The rest of the body is not worth waiting for.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
            .extensions_mut()
            .insert(ErrorBody { code, message });
        response
    }
}

/// Configuration mistakes are the caller's bad request; every refusal of
/// a response or a login is an authentication failure.
fn saml_status(err: &queue_saml::SamlError) -> StatusCode {
    use queue_saml::SamlError;
    match err {
        SamlError::InvalidIdpMetadata(_)
        | SamlError::InvalidSpConfig(_)
        | SamlError::InvalidRequestId(_)
        | SamlError::RelayStateTooLong => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// Adds the request id to every error body, and gives errors produced
/// outside the handlers (unknown route, wrong method, body limit) the same
/// envelope.
pub async fn error_envelope(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let body = match response.extensions().get::<ErrorBody>() {
        Some(body) => body.clone(),
        None if status.is_client_error() || status.is_server_error() => {
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                return response;
            }
            fallback_body(status)
        }
        None => return response,
    };
    let (mut parts, _) = response.into_parts();
    let json =
        json!({"error": {"code": body.code, "message": body.message, "request_id": request_id}});
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json.to_string()))
}

fn fallback_body(status: StatusCode) -> ErrorBody {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "not found"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than 64 KiB",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request", "method not allowed on this path"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("invalid_request", "expected Content-Type: application/json")
        }
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request was not received in time"),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => {
            ("unavailable", "the service is temporarily unavailable")
        }
        s if s.is_client_error() => ("invalid_request", "invalid request"),
        _ => ("internal", "internal error"),
    };
    ErrorBody {
        code,
        message: message.to_owned(),
    }
}

/// Strips double-quoted values from a deserialisation message, so an error
/// never echoes what was sent (it may be a secret); field names stay.
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        if c == '"' {
            if in_quotes {
                out.push_str("\"…\"");
            }
            in_quotes = !in_quotes;
        } else if !in_quotes {
            out.push(c);
        }
    }
    out
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge;
        }
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::InvalidRequest("expected Content-Type: application/json".into())
            }
            JsonRejection::JsonSyntaxError(_) => Self::InvalidRequest("malformed JSON body".into()),
            JsonRejection::JsonDataError(err) => {
                let text = err.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                Self::InvalidRequest(redact_values(detail))
            }
            other => {
                let text = other.body_text();
                if text.contains("length limit") {
                    Self::PayloadTooLarge
                } else {
                    Self::InvalidRequest(redact_values(&text))
                }
            }
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(err: ParseError) -> Self {
        Self::InvalidRequest(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::OptimisticLock => Self::Conflict,
            StoreError::UniqueViolation { constraint } if constraint == "events_customer_email" => {
                Self::EmailTaken
            }
            StoreError::Unavailable(_) => Self::unavailable(),
            StoreError::Integrity(err) => Self::Integrity(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<queue_projections::ProjectionError> for ApiError {
    fn from(err: queue_projections::ProjectionError) -> Self {
        match err {
            queue_projections::ProjectionError::Database(e) => e.into(),
            queue_projections::ProjectionError::Store(e) => e.into(),
            queue_projections::ProjectionError::InvalidCursor => {
                Self::InvalidRequest("cursor is invalid".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::from(err).into()
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::NotFound | SessionError::InvalidRefreshToken => Self::InvalidRefreshToken,
            SessionError::Revoked {
                reason: RevokeReason::Expired,
            }
            | SessionError::AlreadyRevoked {
                reason: RevokeReason::Expired,
            } => Self::SessionExpired,
            SessionError::Revoked { .. }
            | SessionError::AlreadyRevoked { .. }
            | SessionError::NotActive => Self::SessionRevoked,
            SessionError::StepUp(refusal) => refusal.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<StepUpRefusal> for ApiError {
    fn from(refusal: StepUpRefusal) -> Self {
        match refusal {
            StepUpRefusal::ReauthRequired => Self::ReauthRequired,
            StepUpRefusal::BackupCodeSession => Self::BackupCodeSession,
        }
    }
}

impl From<CustomerError> for ApiError {
    fn from(err: CustomerError) -> Self {
        match err {
            CustomerError::NotFound => Self::NotFound,
            CustomerError::Suspended => Self::CustomerSuspended,
            CustomerError::InvalidToken
            | CustomerError::TokenExpired
            | CustomerError::InvalidCode => Self::InvalidCode,
            CustomerError::AlreadyRegistered => Self::EmailTaken,
            CustomerError::AlreadyVerified
            | CustomerError::AlreadySuspended
            | CustomerError::NotSuspended
            | CustomerError::DuplicateGrant(_)
            | CustomerError::GrantAlreadyRevoked(_) => Self::Conflict,
            CustomerError::UnknownGrant(_) => Self::NotFound,
            CustomerError::ExpiryInPast => {
                Self::InvalidRequest("expires_at must be in the future".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CredentialError> for ApiError {
    fn from(err: CredentialError) -> Self {
        match err {
            CredentialError::NotFound | CredentialError::Revoked => Self::NotFound,
            CredentialError::AlreadyRegistered => Self::Conflict,
            CredentialError::CounterRegression { .. } => Self::WebauthnFailed,
            CredentialError::InvalidPasskey(_) | CredentialError::InvalidTransport(_) => {
                Self::WebauthnFailed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_redacted_but_field_names_stay() {
        let msg = r#"refresh_token: invalid type: string "s3cr3t", expected u32 at line 1"#;
        let out = redact_values(msg);
        assert!(!out.contains("s3cr3t"));
        assert!(out.contains("refresh_token"));
        assert_eq!(
            redact_values("missing field `email`"),
            "missing field `email`"
        );
    }
}
