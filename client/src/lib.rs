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
//! The service API's other calls are typed too: RBAC
//! ([`ServiceClient::grant_role`], [`ServiceClient::revoke_grant`],
//! [`ServiceClient::roles`]), admin ([`ServiceClient::suspend`],
//! [`ServiceClient::reinstate`], [`ServiceClient::customer_history`]) and the
//! founders gate check ([`FoundersGate::check`]) with ADR 0094's fail-open
//! rule: when Queue is unreachable or answers 5xx the sign-up is admitted,
//! and the [`GateDecision`] says so (`Admit { degraded: true }`). Only
//! idempotent or idempotency-keyed calls are retried (reads, audit writes,
//! the gate's count); grants, revokes, suspensions and reinstatements are
//! sent once.
//!
//! Guarding a route of an axum service with the verifier: the extractor in
//! `client/examples/guard/` (`cargo run -p queue-client --example guard`;
//! `cli/tests/it/client.rs` drives it with tokens from a real `queue serve`).
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
//!
//! RBAC, admin and the founders gate:
//!
//! ```no_run
//! # async fn demo() -> Result<(), queue_client::ClientError> {
//! use queue_client::{CustomerId, FoundersGate, GateDecision, GrantRole, ServiceClient};
//!
//! let service = ServiceClient::new("https://queue.example.com", "service-token-…")?;
//! let customer: CustomerId = "0190a5b0-7c1e-7a00-8000-000000000001".parse()?;
//! let grant = service
//!     .grant_role(&GrantRole::new(customer, "support-agent", "on call").with_ticket("OPS-7"))
//!     .await?;
//! assert!(service.roles(customer).await?.has("support-agent"));
//! service.revoke_grant(grant, "off call").await?;
//! service.suspend(customer, "chargeback").await?;
//! service.reinstate(customer, "resolved").await?;
//!
//! let gate = FoundersGate::new(service.clone(), 500);
//! match gate.check().await? {
//!     GateDecision::Admit { degraded: false } => { /* sign up */ }
//!     GateDecision::Admit { degraded: true } => {
//!         // Queue is down: admit anyway (ADR 0094) and record it.
//!         let audit = gate.check_failed_audit("signup", "challenge:42");
//!         # let _ = audit;
//!     }
//!     GateDecision::Refuse { .. } => { /* the cohort is full */ }
//! }
//! # Ok(()) }
//! ```

mod error;
mod founders;
mod ids;
mod rbac;
mod service;
mod verify;

pub use error::ClientError;
pub use founders::{FoundersGate, GateDecision};
pub use ids::{CustomerId, GrantId};
pub use rbac::{CustomerHistory, CustomerRoles, Grant, GrantRole};
pub use service::{AuditWrite, AuditWritten, RetryPolicy, ServiceClient};
pub use verify::{Claims, Clock, TokenVerifier, VerifierStats};
