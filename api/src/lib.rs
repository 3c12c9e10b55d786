#![forbid(unsafe_code)]
//! Queue's HTTP surface: `app(state) -> Router`. Only this crate knows HTTP.
//! The contract is docs/api-contract.md (the project copy of
//! ../shared/api-contract.md); the error table is `error.rs`.

pub mod admin;
pub mod audit;
pub mod backup_codes;
pub mod breaker;
pub mod challenges;
pub mod client_address;
pub mod clock;
pub mod config;
pub mod consistency;
pub mod credentials;
pub mod db;
pub mod discovery;
pub mod email;
pub mod error;
pub mod extract;
pub mod founders;
pub mod health;
pub mod jwt;
pub mod mailer;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod pages;
pub mod passkeys;
pub mod ratelimit;
pub mod rbac;
pub mod service;
pub mod sessions;
pub mod shedding;
pub mod state;
pub mod timeouts;
pub mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use clock::ServiceClock;
pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use state::AppState;

/// Request bodies over this many bytes answer 413 payload_too_large.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The v1 routes and their OpenAPI description.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(passkeys::register_begin))
        .routes(routes!(passkeys::register_complete))
        .routes(routes!(passkeys::login_begin))
        .routes(routes!(passkeys::login_complete))
        .routes(routes!(credentials::list))
        .routes(routes!(credentials::rename, credentials::delete))
        .routes(routes!(sessions::refresh))
        .routes(routes!(sessions::logout))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::revoke))
        .routes(routes!(sessions::me))
        .routes(routes!(backup_codes::generate))
        .routes(routes!(backup_codes::redeem))
        .routes(routes!(email::request_verification))
        .routes(routes!(email::verify))
        .routes(routes!(service::customer_count))
        .routes(routes!(audit::record, audit::list))
        .routes(routes!(rbac::grant))
        .routes(routes!(rbac::revoke))
        .routes(routes!(rbac::roles))
        .routes(routes!(admin::suspend))
        .routes(routes!(admin::reinstate))
        .routes(routes!(admin::history))
}

fn operation_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(discovery::openid_configuration))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The OpenAPI document of every route (served whatever the feature flag).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .merge(v1_routes())
        .merge(operation_routes())
        .split_for_parts();
    openapi::add_shared_responses(&mut doc);
    doc.paths.paths.insert(
        "/metrics".to_owned(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .tag("operations")
                .summary(Some("Prometheus metrics (text format)"))
                .response("200", utoipa::openapi::Response::new("Prometheus text"))
                .build(),
        ),
    );
    doc
}

/// The whole router; tests drive it with `oneshot`, `queue serve` with a listener.
pub fn app(state: AppState) -> Router {
    let doc = Arc::new(openapi());
    let (operations, _) = operation_routes().split_for_parts();
    let mut router = Router::new().merge(operations);
    // QUEUE_METRICS_LISTEN: /metrics lives on its own listener only.
    if state.config().metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics::render));
    }
    router = router.route(
        "/openapi.json",
        get(move || {
            let doc = Arc::clone(&doc);
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    );
    if state.config().flag_queue_v1 {
        let (v1, _) = v1_routes().split_for_parts();
        // The hosted pages only call /api/v1, so they share its flag.
        router = router.merge(v1).merge(pages::routes());
    }
    // Inside out: the hosted pages' cookie flow, the handler's deadline, the
    // breaker (which so times the handler's work only), shedding, and
    // outside them the body read: a
    // request counts against shedding and the breaker only once its body
    // is in memory (issue 17).
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), pages::cookie_flow))
        .layer(from_fn_with_state(state.clone(), timeouts::deadline))
        .layer(from_fn_with_state(state.clone(), breaker::guard))
        .layer(from_fn_with_state(state.clone(), shedding::guard))
        .layer(from_fn_with_state(state.clone(), timeouts::read_body))
        .layer(from_fn(metrics::track))
        .layer(from_fn_with_state(state.clone(), refuse_while_draining))
        .with_state(state)
        .layer(from_fn(error::error_envelope))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", request_id = %id, method = %request.method(), path = %request.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// `/metrics` alone, for `QUEUE_METRICS_LISTEN` (an address only the
/// scraper reaches); the token, when set, is still asked for.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::render))
        .fallback(not_found)
        .with_state(state)
        .layer(from_fn(error::error_envelope))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// While draining after SIGTERM, new API work is refused with 503
/// shutting_down; health and metrics still answer.
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if state.is_shutting_down() && request.uri().path().starts_with("/api/") {
        return ApiError::ShuttingDown.into_response();
    }
    next.run(request).await
}

/// `GET /.well-known/jwks.json`: current and previous signing keys, each
/// with its own `kty`/`alg`. Served from memory, so it keeps answering while
/// the store is down; `Cache-Control` as [`discovery::CACHE_CONTROL`].
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "JWK set", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    discovery::with_cache_control(axum::Json(state.inner.jwt_keys.get().jwks()).into_response())
}

/// Deletes expired challenges every `every` until the shutdown flag is set.
pub async fn run_challenge_sweeper(state: AppState, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        match challenges::sweep(&state.pool, state.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swept = n, "expired challenges deleted"),
            Err(e) => tracing::warn!(error = %e, "challenge sweep failed"),
        }
    }
}
