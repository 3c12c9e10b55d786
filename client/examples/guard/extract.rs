//! The guard: extractors that admit a request only with a verified Queue
//! access token (and a role), and a router that uses them. `main.rs` serves
//! it; `cli/tests/it/client.rs` drives it with tokens from a real `queue serve`.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use queue_client::{Claims, ClientError, TokenVerifier};

/// The claims of a verified access token.
pub struct VerifiedCustomer(pub Claims);

/// Why a request was turned away.
pub enum Rejection {
    /// No token, or one that does not verify.
    Unauthorized(&'static str),
    /// A verified token without the role.
    Forbidden,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                [(
                    WWW_AUTHENTICATE,
                    format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
                )],
                Json(serde_json::json!({"error": {"code": "unauthorized", "message": why}})),
            )
                .into_response(),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                Json(
                    serde_json::json!({"error": {"code": "forbidden", "message": "role required"}}),
                ),
            )
                .into_response(),
        }
    }
}

impl<S> FromRequestParts<S> for VerifiedCustomer
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Rejection::Unauthorized("bearer token required"))?;
        let verifier = TokenVerifier::from_ref(state);
        match verifier.verify(token.trim()).await {
            Ok(claims) => Ok(Self(claims)),
            Err(ClientError::UnknownKey { .. }) => {
                Err(Rejection::Unauthorized("unknown signing key"))
            }
            Err(e) => {
                // The reason goes to the log, not to the caller.
                tracing::debug!(error = %e, "token refused");
                Err(Rejection::Unauthorized("invalid token"))
            }
        }
    }
}

/// A verified customer holding the `support-agent` role.
pub struct SupportAgent(pub Claims);

impl<S> FromRequestParts<S> for SupportAgent
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let VerifiedCustomer(claims) = VerifiedCustomer::from_request_parts(parts, state).await?;
        if claims.roles.iter().any(|r| r == "support-agent") {
            Ok(Self(claims))
        } else {
            Err(Rejection::Forbidden)
        }
    }
}

async fn me(VerifiedCustomer(claims): VerifiedCustomer) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"customer_id": claims.sub, "session_id": claims.sid, "roles": claims.roles}),
    )
}

async fn queue_of_tickets(SupportAgent(claims): SupportAgent) -> String {
    format!("tickets for agent {}\n", claims.sub)
}

/// The router: `/me` for any signed-in customer, `/tickets` for support
/// agents, `/healthz` for anyone. The state is the verifier (a cheap
/// clone; clones share the JWKS cache).
pub fn app(verifier: TokenVerifier) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/tickets", get(queue_of_tickets))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(verifier)
}
