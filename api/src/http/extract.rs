//! Extractors: JSON bodies whose rejections follow the contract, the Bearer
//! customer (JWT verified, session checked active on its event stream), and
//! the client address for rate limits.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts, Request,
};
use axum::http::header;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use queue_domain::session::SessionStatus;
use queue_domain::types::{CustomerId, SessionId};
use queue_domain::Session;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::jwt::{self, Claims};
use crate::http::error::ApiError;
use crate::state::AppState;
use queue_eventstore::Loaded;

/// `axum::Json` with 400 invalid_request / 413 payload_too_large rejections
/// in the contract's envelope. The body must be a JSON object, as the
/// contract and /openapi.json say: serde alone would also fill a struct from
/// an array (`[null, null]`), which schemathesis found accepted.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let headers = request.headers().clone();
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid(crate::http::error::redact_values(&e.body_text()))
            }
        })?;
        // axum::Json on the buffered body keeps its Content-Type check and
        // the existing rejection mapping (field-naming messages, redaction).
        let mut buffered = Request::new(Body::from(bytes.clone()));
        *buffered.headers_mut() = headers;
        let axum::Json(value) = axum::Json::<T>::from_request(buffered, state).await?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        Ok(Self(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A signed-in customer: a valid access token whose session is still active.
pub struct Authenticated {
    pub customer_id: CustomerId,
    pub session_id: SessionId,
    pub claims: Claims,
    pub session: Loaded<Session>,
}

impl Authenticated {
    /// A transaction for reading the read tables on the customer's behalf,
    /// bound by row-level security to its token's tenant (ADR 0219): the
    /// customer's own rows are found as before; a query that forgot its
    /// customer filter would still see no other tenant's.
    pub async fn read_tx(
        &self,
        state: &AppState,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
        let tenant = uuid::Uuid::parse_str(&self.claims.tid)
            .map_err(|_| ApiError::internal("an access token with a malformed tid"))?;
        let mut tx = state.store().pool().begin().await?;
        queue_projections::read::bind_to_tenants(&mut tx, &[tenant]).await?;
        Ok(tx)
    }
}

fn bearer_token(parts: &Parts) -> Option<Result<&str, ApiError>> {
    let value = parts.headers.get(header::AUTHORIZATION)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    Some(token.ok_or(ApiError::Unauthorized))
}

async fn authenticate(token: &str, state: &AppState) -> Result<Authenticated, ApiError> {
    let config = state.config();
    let now = state.now();
    let claims = jwt::verify(
        &state.inner.jwt_keys.get(),
        token,
        &config.issuer,
        &config.audience,
        now,
    )
    .map_err(|_| ApiError::Unauthorized)?;
    let customer_id: CustomerId = claims.sub.parse().map_err(|_| ApiError::Unauthorized)?;
    let session_id: SessionId = claims.sid.parse().map_err(|_| ApiError::Unauthorized)?;
    let session = state.store().session(session_id).await?;
    let Some(session_state) = session.aggregate.state() else {
        return Err(ApiError::Unauthorized);
    };
    if session_state.customer_id != customer_id {
        return Err(ApiError::Unauthorized);
    }
    match session_state.status(now) {
        SessionStatus::Active => {}
        SessionStatus::Expired => return Err(ApiError::SessionExpired),
        SessionStatus::Revoked { reason } => {
            return Err(match reason {
                queue_domain::session::RevokeReason::Expired => ApiError::SessionExpired,
                _ => ApiError::SessionRevoked,
            })
        }
    }
    Ok(Authenticated {
        customer_id,
        session_id,
        claims,
        session,
    })
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer_token(parts) {
            None => Err(ApiError::Unauthorized),
            Some(token) => authenticate(token?, state).await,
        }
    }
}

impl OptionalFromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        match bearer_token(parts) {
            None => Ok(None),
            Some(token) => authenticate(token?, state).await.map(Some),
        }
    }
}

/// The client's address, for per-address rate limits: the peer address, or
/// what the trusted proxies say (`QUEUE_TRUSTED_PROXIES`, walked from the
/// right; see `client_address`). IPv6 is keyed by its /64.
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            // The router in tests (`MockConnectInfo`).
            .or_else(|| {
                parts
                    .extensions
                    .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                    .map(|mock| mock.0.ip())
            });
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            // A value that is not text is a malformed entry: the peer.
            .map(|v| v.to_str().unwrap_or("!"));
        let client =
            crate::http::client_address::resolve(peer, forwarded, &state.config().trusted_proxies);
        Ok(Self(client.map_or_else(
            || "unknown".to_owned(),
            crate::http::client_address::key_of,
        )))
    }
}
