//! `prometheus` exporter: serves the metrics of the pipelines that export to it on a
//! scrape endpoint, in the Prometheus text format (OpenMetrics 1.0 when the scraper
//! asks for it and `enable_open_metrics` is on).
//!
//! Names and units follow the OpenTelemetry-to-Prometheus conventions: sanitised
//! names, base-unit suffixes (`_seconds`, `_bytes`), `_total` on monotonic counters,
//! HELP from the metric description, histograms as `_bucket`/`_sum`/`_count`.
//! Resource attributes go to a `target_info` series per `job`/`instance`
//! (`service.namespace/service.name`, `service.instance.id`), or onto every series
//! with `resource_to_telemetry_conversion`. Cumulative sums replace the previous
//! value; delta sums and histograms are accumulated. Series not updated for
//! `metric_expiration` disappear.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `endpoint` | `0.0.0.0:8889` | scrape address; `GET /metrics` |
//! | `namespace` | `""` | prefix added to every metric name |
//! | `const_labels` | `{}` | labels added to every series |
//! | `send_timestamps` | `false` | add the data point's timestamp to each sample |
//! | `metric_expiration` | `5m` | drop series not updated for this long |
//! | `resource_to_telemetry_conversion.enabled` | `false` | promote resource attributes to labels |
//! | `enable_open_metrics` | `false` | answer `Accept: application/openmetrics-text` with OpenMetrics |
//! | `add_metric_suffixes` | `true` | add unit and `_total` suffixes |
//!
//! ```yaml
//! exporters:
//!   prometheus:
//!     endpoint: 0.0.0.0:8889
//!     metric_expiration: 10m
//!     const_labels: {deployment: prod}
//! ```

pub mod naming;
pub mod store;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bizpilot_core::config::Duration;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Exporter, ExporterContext,
    ExporterFactory, FieldError, Payload, Running, Signal, Stability,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::watch;

pub use store::{Conversion, Store};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConversion {
    pub enabled: bool,
}

/// Configuration of the `prometheus` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusExporterConfig {
    pub endpoint: String,
    pub namespace: String,
    pub const_labels: BTreeMap<String, String>,
    pub send_timestamps: bool,
    pub metric_expiration: Duration,
    pub resource_to_telemetry_conversion: ResourceConversion,
    pub enable_open_metrics: bool,
    pub add_metric_suffixes: bool,
}

impl Default for PrometheusExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:8889".into(),
            namespace: String::new(),
            const_labels: BTreeMap::new(),
            send_timestamps: false,
            metric_expiration: Duration::from_secs(300),
            resource_to_telemetry_conversion: ResourceConversion::default(),
            enable_open_metrics: false,
            add_metric_suffixes: true,
        }
    }
}

impl ComponentConfig for PrometheusExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.endpoint.is_empty() || !self.endpoint.contains(':') {
            e.push(FieldError::new(
                "endpoint",
                format!("invalid address {:?} (expected host:port)", self.endpoint),
            ));
        }
        if self.metric_expiration.is_zero() {
            e.push(FieldError::new("metric_expiration", "must be greater than 0"));
        }
        for k in self.const_labels.keys() {
            if naming::sanitize_label_name(k) != *k {
                e.push(FieldError::new(
                    format!("const_labels.{k}"),
                    "not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                ));
            }
        }
        e
    }
}

pub struct PrometheusExporterFactory;

impl ExporterFactory for PrometheusExporterFactory {
    type Config = PrometheusExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "prometheus",
            kind: ComponentKind::Exporter,
            stability: Stability::Beta,
            description: "Serves pipeline metrics on a Prometheus scrape endpoint",
            signals: &[Signal::Metrics],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        Ok(Box::new(PrometheusExporter {
            id: ctx.id.to_string(),
            config,
            bound: watch::channel(None).0,
        }))
    }
}

/// The running exporter's state shared with its scrape server.
struct Shared {
    store: Mutex<Store>,
    config: PrometheusExporterConfig,
}

pub struct PrometheusExporter {
    id: String,
    config: PrometheusExporterConfig,
    bound: watch::Sender<Option<std::net::SocketAddr>>,
}

impl PrometheusExporter {
    /// The address the scrape server bound (useful with port 0).
    pub fn bound_address(&self) -> watch::Receiver<Option<std::net::SocketAddr>> {
        self.bound.subscribe()
    }
}

fn wants_open_metrics(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"))
}

async fn scrape(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let open = shared.config.enable_open_metrics && wants_open_metrics(&headers);
    let body = {
        let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.expire(shared.config.metric_expiration.get(), Instant::now());
        store.render(open, shared.config.send_timestamps)
    };
    let ct = if open {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, ct)], body)
}

impl Exporter for PrometheusExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let std_listener = std::net::TcpListener::bind(&self.config.endpoint).map_err(|e| ComponentError::Bind {
            address: self.config.endpoint.clone(),
            source: e,
        })?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let _ = self.bound.send(listener.local_addr().ok());
        let conv = Conversion {
            namespace: self.config.namespace.clone(),
            const_labels: self
                .config
                .const_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            resource_to_labels: self.config.resource_to_telemetry_conversion.enabled,
            add_metric_suffixes: self.config.add_metric_suffixes,
            send_timestamps: self.config.send_timestamps,
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            config: self.config.clone(),
        });
        let app = Router::new().route("/metrics", get(scrape)).with_state(shared.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { server_stop.cancelled().await })
                .await;
        });
        let id = self.id.clone();
        let telemetry = bizpilot_core::telemetry::ExporterTelemetry::new(&id);
        let ExporterContext { mut input, .. } = ctx;
        Ok(Running::spawn(async move {
            while let Some(mut batch) = input.recv().await {
                let items = batch.items();
                let Payload::Metrics(m) = &mut batch.payload else {
                    telemetry.failed(batch.signal(), items);
                    batch.fail();
                    continue;
                };
                match m.message() {
                    Ok(req) => {
                        let dropped = {
                            let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
                            store.ingest(req, &conv, Instant::now())
                        };
                        if dropped.type_conflicts + dropped.unsupported > 0 {
                            metrics::counter!("bizpilot_exporter_prometheus_dropped_points_total", "exporter" => id.clone())
                                .increment(dropped.type_conflicts + dropped.unsupported);
                            tracing::debug!(exporter = %id, ?dropped, "some points cannot be shown in Prometheus format");
                        }
                        telemetry.sent(Signal::Metrics, items);
                    }
                    Err(e) => {
                        tracing::warn!(exporter = %id, error = %e, "cannot decode metrics");
                        telemetry.failed(Signal::Metrics, items);
                        batch.fail();
                    }
                }
            }
            // Keep serving the last values until the pipeline is gone, then stop.
            stop.cancel();
            let _ = server.await;
            Ok(())
        }))
    }
}
