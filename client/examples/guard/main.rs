//! Guarding an axum route with Queue's access tokens, verified offline.
//!
//! `VerifiedCustomer` is an extractor: a handler that takes it runs only
//! for a request with `Authorization: Bearer <access token>` that verifies
//! against Queue's JWKS (cached; refreshed on an unknown `kid`, at most
//! once per 30 s; tokens keep verifying while Queue is down, ADR 0068).
//! Anything else is answered 401 with `WWW-Authenticate: Bearer`, before
//! the handler runs. `RequireRole` does the same and answers 403 unless the
//! token carries the role.
//!
//! ```sh
//! QUEUE_URL=http://127.0.0.1:8080 QUEUE_ISSUER=http://localhost:8080 \
//!   cargo run -p queue-client --example guard
//! curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:3000/me
//! ```

use std::net::SocketAddr;

use queue_client::TokenVerifier;

mod extract;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::var("QUEUE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let issuer = std::env::var("QUEUE_ISSUER").unwrap_or_else(|_| queue.clone());
    let audience = std::env::var("QUEUE_AUDIENCE").unwrap_or_else(|_| "queue".into());
    let listen: SocketAddr = std::env::var("GUARD_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let verifier = TokenVerifier::new(
        &format!("{}/.well-known/jwks.json", queue.trim_end_matches('/')),
        &issuer,
        &audience,
    )?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("guarding http://{listen}/me and /tickets with {queue}'s tokens");
    axum::serve(listener, extract::app(verifier)).await?;
    Ok(())
}
