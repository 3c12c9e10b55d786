//! Lag gauges for `/metrics` (recorded through the `metrics` facade; the
//! API's Prometheus exporter publishes them when it is installed).

use crate::projection::Projection;
use crate::runner::Lag;

pub fn record(projection: Projection, lag: &Lag) {
    let name = projection.name();
    metrics::gauge!("queue_projection_events_behind", "projection" => name)
        .set(lag.events_behind as f64);
    metrics::gauge!("queue_projection_seconds_behind", "projection" => name)
        .set(lag.seconds_behind);
}
