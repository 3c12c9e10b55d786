//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "{\"status\":\"ok\"}"), (status = 503, description = "{\"status\":\"shutting_down\"}")))]
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    }
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "the store answers and the breaker is closed; `keys` and `rate_limits` say whether it runs degraded"), (status = 503, description = "not ready; `integrity_error` names the damaged event a load refused or the sealer stopped at")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        );
    }
    if !state.inner.breaker.is_closed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "breaker": "open"})),
        );
    }
    match crate::db::ping(&state.pool).await {
        // Still ready with the last good keys, or with per-process rate
        // limits while Redis is away, but say so.
        Ok(_) => {
            let integrity = state.store().integrity().status();
            if !integrity.is_intact() {
                // Damaged history: this instance refuses decisions on it and
                // the sealer has stopped (if it ran here). Operators must look.
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "status": "integrity_error",
                        "database": "ok",
                        "integrity": integrity,
                    })),
                );
            }
            let keys = state.keys_degraded();
            let word = |degraded: bool| if degraded { "degraded" } else { "ok" };
            (
                StatusCode::OK,
                Json(json!({
                    "status": "ready",
                    "database": "ok",
                    "keys": word(keys.any()),
                    "key_sets": {
                        "mac": word(keys.mac),
                        "jwt": word(keys.jwt),
                        "checkpoint": word(keys.checkpoint),
                    },
                    "rate_limits": state.rate_limit_mode().as_str(),
                })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "database": "unreachable"})),
        ),
    }
}
