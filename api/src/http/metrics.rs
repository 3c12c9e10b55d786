//! Prometheus metrics: request counts and latencies per route, logins by
//! outcome. One recorder per process (metrics' global recorder).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::resilience::ratelimit::RateLimitMode;
use crate::state::AppState;

#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// The process-wide recorder, installed on first use. `None` if another
    /// recorder was installed first (metrics are then not rendered here).
    pub fn global() -> Self {
        let handle = HANDLE.get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS) {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets rejected");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!("a metrics recorder was already installed");
                    None
                }
            }
        });
        Self {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        self.handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }
}

/// A login attempt's result, for `queue_logins_total{outcome}`.
pub fn login(outcome: &'static str) {
    metrics::counter!("queue_logins_total", "outcome" => outcome).increment(1);
}

/// A SAML response's result at an ACS, for
/// `queue_saml_logins_total{outcome}`: `success`, `step_up`, the refusal's
/// `saml_*` (or other stable) code, or `error` (Queue's own failure). No
/// tenant label: one series per outcome, whatever the number of tenants.
pub fn saml_login(outcome: &'static str) {
    metrics::counter!("queue_saml_logins_total", "outcome" => outcome).increment(1);
}

/// Counts and times every request by route template (never the raw path).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("queue_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("queue_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text format. With `QUEUE_METRICS_TOKEN` set,
/// only for `Authorization: Bearer <token>` (401 otherwise).
pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config().metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token.matches(presented.trim()) {
            return crate::http::error::ApiError::Unauthorized.into_response();
        }
    }
    let gauge = |degraded: bool| if degraded { 1.0 } else { 0.0 };
    let keys = state.keys_degraded();
    metrics::gauge!("queue_mac_keys_degraded").set(gauge(keys.mac));
    metrics::gauge!("queue_jwt_keys_degraded").set(gauge(keys.jwt));
    metrics::gauge!("queue_checkpoint_keys_degraded").set(gauge(keys.checkpoint));
    // 1 for the mode in force, 0 for the others (one series per mode).
    let mode = state.rate_limit_mode();
    for candidate in [
        RateLimitMode::Local,
        RateLimitMode::Shared,
        RateLimitMode::Degraded,
    ] {
        metrics::gauge!("queue_rate_limits_mode", "mode" => candidate.as_str())
            .set(gauge(candidate == mode));
    }
    let body = state.inner.metrics.render();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
