#![forbid(unsafe_code)]
//! Queue's HTTP surface: `app(state) -> Router`. Only this crate knows HTTP.
//! The contract is `docs/api-contract.md`, the design `docs/design.md`, and
//! where to change what `docs/where-to-change-what.md`; the error table is
//! `error.rs`. Routes and their load-shedding priorities are declared
//! together in `v1_groups` below.

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod flows;
pub mod http;
pub mod mail;
pub mod resilience;
pub mod routes;
pub mod state;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use clock::ServiceClock;
pub use config::{Config, ConfigError};
pub use http::error::ApiError;
pub use resilience::shedding::Priority;
pub use state::AppState;

/// Request bodies over this many bytes answer 413 payload_too_large.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The layers every `/api/v1` route runs inside, applied per priority
/// group by `v1_routes`; the OpenAPI document needs none.
type Resilience<'a> = &'a dyn Fn(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>;

/// The v1 routes by load-shedding priority (see `shedding`): a route's
/// priority is declared here, with the route, once for its group.
fn v1_groups() -> [(Priority, OpenApiRouter<AppState>); 4] {
    // Sign-in and staying signed in; audit writes (a caller cannot retry
    // them later without losing the record).
    let critical = OpenApiRouter::new()
        .routes(routes!(routes::passkeys::login_begin))
        .routes(routes!(routes::passkeys::login_complete))
        .routes(routes!(routes::reauth::begin))
        .routes(routes!(routes::reauth::complete))
        .routes(routes!(routes::saml::reauth))
        .routes(routes!(routes::sessions::refresh))
        .routes(routes!(routes::sessions::logout))
        .routes(routes!(routes::backup_codes::redeem))
        .routes(routes!(routes::audit::record));
    // Sign-up, email verification, admin and RBAC writes.
    let high = OpenApiRouter::new()
        .routes(routes!(routes::passkeys::register_begin))
        .routes(routes!(routes::passkeys::register_complete))
        .routes(routes!(routes::email::request_verification))
        .routes(routes!(routes::email::verify))
        .routes(routes!(routes::rbac::grant))
        .routes(routes!(routes::rbac::revoke))
        .routes(routes!(routes::admin::suspend))
        .routes(routes!(routes::admin::reinstate))
        .routes(routes!(routes::tenants::create))
        .routes(routes!(
            routes::tenants::configure_saml,
            routes::tenants::disable_saml
        ))
        .routes(routes!(routes::tenants::revoke_sessions));
    // Reads, renames, backup-code generation.
    let normal = OpenApiRouter::new()
        .routes(routes!(routes::credentials::list))
        .routes(routes!(
            routes::credentials::rename,
            routes::credentials::delete
        ))
        .routes(routes!(routes::sessions::list))
        .routes(routes!(routes::sessions::revoke))
        .routes(routes!(routes::sessions::me))
        .routes(routes!(routes::backup_codes::generate))
        .routes(routes!(auth::service::customer_count))
        .routes(routes!(routes::rbac::roles))
        .routes(routes!(routes::tenants::get, routes::tenants::rename));
    // Exports and history.
    let low = OpenApiRouter::new()
        .routes(routes!(routes::audit::list))
        .routes(routes!(routes::admin::history));
    [
        (Priority::Critical, critical),
        (Priority::High, high),
        (Priority::Normal, normal),
        (Priority::Low, low),
    ]
}

/// Every priority group: `/api/v1`'s and the tenants' SAML routes (issue
/// 22), which browsers and IdPs call outside `/api/v1` but which sign
/// people in and are shed, refused while draining and behind the breaker
/// like a passkey login.
fn priority_groups() -> impl Iterator<Item = (Priority, OpenApiRouter<AppState>)> {
    v1_groups().into_iter().chain(routes::saml::groups())
}

/// The v1 routes and their OpenAPI description: each priority group
/// wrapped in `resilience` (the layers only `/api/v1` runs inside:
/// draining, shedding, breaker, deadline) and, outside that, its priority
/// as a request extension the shedding guard reads. A route without one
/// answers 500 (`resilience::shedding::guard`; a test sends every operation of the
/// document through the app), so none is silently NORMAL.
fn v1_routes(resilience: Resilience<'_>) -> OpenApiRouter<AppState> {
    priority_groups().fold(OpenApiRouter::new(), |v1, (priority, routes)| {
        v1.merge(resilience(routes).route_layer(Extension(priority)))
    })
}

/// Every `/api/v1` operation with its declared priority: `(method, path,
/// priority)`, the method lowercase and the path as in the OpenAPI document.
pub fn route_priorities() -> Vec<(String, String, Priority)> {
    let mut out: Vec<(String, String, Priority)> = priority_groups()
        .flat_map(|(priority, routes)| {
            let (_, doc) = routes.split_for_parts();
            operations(&doc)
                .into_iter()
                .map(move |(method, path)| (method, path, priority))
        })
        .collect();
    out.sort();
    out
}

/// The operations of an OpenAPI document: `(method, path)`, the method
/// lowercase, sorted.
pub fn operations(doc: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, operation) in [
            ("get", &item.get),
            ("post", &item.post),
            ("put", &item.put),
            ("patch", &item.patch),
            ("delete", &item.delete),
        ] {
            if operation.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

fn operation_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(http::discovery::openid_configuration))
        .routes(routes!(http::health::healthz))
        .routes(routes!(http::health::readyz))
}

/// The OpenAPI document of every route (served whatever the feature flag).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut v1) = v1_routes(&|routes| routes).split_for_parts();
    http::openapi::add_shared_responses(&mut v1);
    let (_, mut doc) = OpenApiRouter::<AppState>::with_openapi(http::openapi::ApiDoc::openapi())
        .merge(operation_routes())
        .split_for_parts();
    doc.merge(v1);
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
        router = router.route("/metrics", get(http::metrics::render));
    }
    router = router.route(
        "/openapi.json",
        get(move || {
            let doc = Arc::clone(&doc);
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    );
    if state.config().flag_queue_v1 {
        // Outside in: refused while draining, shed, the breaker (which so
        // times the handler's work only), the handler's deadline, the hosted
        // pages' cookie flow. The body is read before any of them (below):
        // a request counts against shedding and the breaker only once its
        // body is in memory (issue 17).
        let resilience = |routes: OpenApiRouter<AppState>| {
            routes
                .route_layer(from_fn_with_state(state.clone(), http::pages::cookie_flow))
                .route_layer(from_fn_with_state(state.clone(), http::timeouts::deadline))
                .route_layer(from_fn_with_state(
                    state.clone(),
                    resilience::breaker::guard,
                ))
                .route_layer(from_fn_with_state(
                    state.clone(),
                    resilience::shedding::guard,
                ))
                .route_layer(from_fn_with_state(state.clone(), refuse_while_draining))
        };
        let (v1, _) = v1_routes(&resilience).split_for_parts();
        // The hosted pages only call /api/v1, so they share its flag.
        router = router.merge(http::pages::routes());
        router = with_deadline(&state, router).merge(v1);
    } else {
        router = with_deadline(&state, router);
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), http::timeouts::read_body))
        .layer(from_fn(http::metrics::track))
        .with_state(state)
        .layer(from_fn(http::error::error_envelope))
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

/// The routes outside `/api/v1` (operations, pages): the handler's
/// deadline and the hosted pages' cookie flow, as on `/api/v1`, without
/// the rest.
fn with_deadline(state: &AppState, router: Router<AppState>) -> Router<AppState> {
    router
        .route_layer(from_fn_with_state(state.clone(), http::pages::cookie_flow))
        .route_layer(from_fn_with_state(state.clone(), http::timeouts::deadline))
}

/// `/metrics` alone, for `QUEUE_METRICS_LISTEN` (an address only the
/// scraper reaches); the token, when set, is still asked for.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(http::metrics::render))
        .fallback(not_found)
        .with_state(state)
        .layer(from_fn(http::error::error_envelope))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// While draining after SIGTERM, new API work is refused with 503
/// shutting_down; health and metrics still answer (only `/api/v1` routes
/// run inside this).
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if state.is_shutting_down() {
        return ApiError::ShuttingDown.into_response();
    }
    next.run(request).await
}

/// `GET /.well-known/jwks.json`: current and previous signing keys, each
/// with its own `kty`/`alg`. Served from memory, so it keeps answering while
/// the store is down; `Cache-Control` as [`http::discovery::CACHE_CONTROL`].
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "JWK set", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    http::discovery::with_cache_control(
        axum::Json(state.inner.jwt_keys.get().jwks()).into_response(),
    )
}

/// Deletes expired challenges every `every` until the shutdown flag is set.
pub async fn run_challenge_sweeper(state: AppState, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        match auth::challenges::sweep(&state.pool, state.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swept = n, "expired challenges deleted"),
            Err(e) => tracing::warn!(error = %e, "challenge sweep failed"),
        }
    }
}
