//! `/metrics`: Prometheus text of requests, rejections, the queue and the model.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteCode, Counter>,
    pub rejected: Family<Reason, Counter>,
    pub queue_depth: Gauge,
    pub queue_seconds: Histogram,
    pub infer_seconds: Histogram,
    pub batch_size: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("covseg");
        let requests = Family::<RouteCode, Counter>::default();
        let rejected = Family::<Reason, Counter>::default();
        let queue_depth = Gauge::default();
        let queue_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let infer_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        registry.register(
            "requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        registry.register(
            "rejected",
            "requests refused before the model, by reason",
            rejected.clone(),
        );
        registry.register(
            "queue_depth",
            "requests waiting for the model",
            queue_depth.clone(),
        );
        registry.register(
            "queue_seconds",
            "time a request waited for its batch",
            queue_seconds.clone(),
        );
        registry.register(
            "infer_seconds",
            "time a batch took in the model",
            infer_seconds.clone(),
        );
        registry.register("batch_size", "slices per forward pass", batch_size.clone());
        Self {
            registry,
            requests,
            rejected,
            queue_depth,
            queue_seconds,
            infer_seconds,
            batch_size,
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing into a String");
        out
    }
}
