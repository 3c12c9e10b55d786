//! Slow clients cannot take the API down (issue 17, item 1).
//!
//! - Headers: [`serve`] gives hyper a header read timeout
//!   (`QUEUE_HEADER_TIMEOUT_MS`, 10 s); a client that has not sent its
//!   headers by then has its connection closed (no request exists yet, so
//!   there is nothing to answer).
//! - Body: [`read_body`] reads the whole body (at most 64 KiB) within
//!   `QUEUE_BODY_TIMEOUT_MS` (10 s) *before* the request reaches load
//!   shedding and the breaker; past it the answer is 408 `request_timeout`.
//!   So a request counts against `QUEUE_MAX_IN_FLIGHT` only once its body is
//!   in memory, and a thousand clients dribbling bodies hold a thousand idle
//!   tasks, not the service's capacity.
//! - Handler: [`deadline`] bounds the work after that
//!   (`QUEUE_HANDLER_TIMEOUT_MS`, 30 s): past it 503 `unavailable`, which the
//!   breaker counts as a store failure (a handler that slow is waiting on
//!   the store).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::BODY_LIMIT;

/// The most a request may carry: [`BODY_LIMIT`], but for a SAML assertion
/// consumer service, whose form holds a whole signed response (a
/// `SAMLResponse` up to `queue_saml::MAX_RESPONSE_BYTES`, base64 and then
/// form-encoded).
pub fn body_limit_of(path: &str) -> usize {
    let acs = path.starts_with("/saml/") && path.ends_with("/acs");
    if acs {
        crate::routes::saml::ACS_BODY_LIMIT
    } else {
        BODY_LIMIT
    }
}

/// Reads the request body into memory within the body timeout; answers 408
/// `request_timeout` when the client is too slow and 413 when it is too
/// large ([`body_limit_of`] its path). Requests without a body pass at once.
pub async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let max = body_limit_of(request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    let (parts, body) = request.into_parts();
    let limit = state.config().timeouts.body;
    let read = tokio::time::timeout(limit, Limited::new(body, max).collect()).await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return ApiError::PayloadTooLarge.into_response()
        }
        Ok(Err(_)) => {
            return ApiError::invalid("the request body could not be read").into_response()
        }
        Err(_) => {
            metrics::counter!("queue_request_timeouts_total", "phase" => "body").increment(1);
            return ApiError::RequestTimeout.into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Bounds the handler's work (the body is already read when it starts).
pub async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config().timeouts.handler;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("queue_request_timeouts_total", "phase" => "handler").increment(1);
            tracing::warn!(?limit, "handler deadline passed");
            ApiError::unavailable().into_response()
        }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 with the header read timeout
/// of `state`'s configuration, until `shutdown` completes; then stops
/// accepting and lets open connections finish their current request.
/// (axum::serve offers no header timeout.) Each connection's peer address is
/// available to handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let service = tower::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(Body::new)).await;
                    Ok::<_, Infallible>(match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    })
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = async {
                    // The guard it returns must not live across an await.
                    let _ = closing.wait_for(|closing| *closing).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error while draining");
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
