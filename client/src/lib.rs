#![forbid(unsafe_code)]
//! `queue-client`: a typed client for Queue's service API (audit writes with
//! idempotency keys, retried on 503/429 as `Retry-After` says) and offline
//! verification of Queue's access tokens through a JWKS cache that refreshes
//! on an unknown `kid` (rate limited) and keeps verifying with the keys it
//! has while Queue is down (ADR 0068: in-flight tokens stay valid until they
//! expire).
//!
//! The JWKS refresh is rate limited to one fetch per 30 s (configurable with
//! [`TokenVerifier::with_refresh_interval`]), like `jose`'s
//! `createRemoteJWKSet` cooldown: a token with a `kid` that appeared less
//! than that after the last fetch is refused ([`ClientError::UnknownKey`])
//! until the interval has passed. Tokens with made-up `kid`s therefore cost
//! Queue at most one request per interval per verifier.
//!
//! Not here yet: RBAC, admin and founders-gate calls, and an axum/tower
//! layer (issue 20 lists them).
//!
//! ```no_run
//! # async fn demo() -> Result<(), queue_client::ClientError> {
//! use queue_client::{AuditWrite, ServiceClient, TokenVerifier};
//!
//! let service = ServiceClient::new("https://queue.example.com", "service-token-…")?;
//! let written = service
//!     .write_audit(&AuditWrite::new("billing", "invoice.sent", "invoice:42"))
//!     .await?;
//! println!("{} ({} attempts)", written.event_id, written.attempts);
//!
//! let verifier = TokenVerifier::new(
//!     "https://queue.example.com/.well-known/jwks.json",
//!     "https://queue.example.com",
//!     "queue",
//! )?;
//! # let token = "";
//! let claims = verifier.verify(token).await?;
//! println!("customer {}", claims.sub);
//! # Ok(()) }
//! ```

mod error;
mod service;
mod verify;

pub use error::ClientError;
pub use service::{AuditWrite, AuditWritten, RetryPolicy, ServiceClient};
pub use verify::{Claims, TokenVerifier, VerifierStats};
