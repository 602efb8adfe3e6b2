//! The `health_check` extension: an HTTP endpoint for liveness and readiness probes, configured
//! like the OpenTelemetry Collector's extension of the same name, and separate from the admin
//! server (whose data API lists customers and stays on loopback by default).
//!
//! `GET <path>` answers `200 {"status":"Server available", …}` once every component of the service
//! has started, and `503 {"status":"Server not available", …}` while it starts, while a component
//! holds readiness down (a `kafka` receiver restoring the `business_state` changelog of newly
//! assigned partitions: `docs/partition-state.md`) and once shutdown begins (so a load balancer
//! stops sending before the receivers close). Any other path is 404.
//! The answer names nothing but the status, so the endpoint may listen on every interface for
//! the kubelet.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `endpoint` | `localhost:13133` | `host:port` to listen on (the Collector's default); `0.0.0.0:13133` for Kubernetes probes |
//! | `path` | `/` | the path probes request |
//!
//! ```yaml
//! extensions:
//!   health_check:
//!     endpoint: ${env:BIZPILOT_HEALTH_ENDPOINT:-0.0.0.0:13133}
//! service:
//!   extensions: [health_check]
//! ```

use serde::Deserialize;
use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Extension, ExtensionContext,
    ExtensionFactory, FieldError, Running, Stability,
};

/// The component type name.
pub const TYPE: &str = "health_check";

/// Config of the `health_check` extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub endpoint: String,
    pub path: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            endpoint: "localhost:13133".into(),
            path: "/".into(),
        }
    }
}

impl ComponentConfig for HealthCheckConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let port_ok = self
            .endpoint
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        if self.endpoint.contains("://") || !port_ok {
            errs.push(FieldError::new(
                "endpoint",
                format!(
                    "invalid endpoint {:?} (expected host:port, e.g. \"0.0.0.0:13133\")",
                    self.endpoint
                ),
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#', '{', '}', '*']) {
            errs.push(FieldError::new(
                "path",
                format!("invalid path {:?} (expected an absolute path such as \"/\")", self.path),
            ));
        }
        errs
    }
}

/// Makes `health_check` extensions.
#[derive(Debug, Default, Clone, Copy)]
pub struct HealthCheckExtensionFactory;

/// A `health_check` extension; after `start`, [`HealthCheckExtension::local_addr`] is the bound address.
pub struct HealthCheckExtension {
    config: HealthCheckConfig,
    local: Mutex<Option<SocketAddr>>,
}

impl HealthCheckExtension {
    pub fn new(config: HealthCheckConfig) -> Self {
        HealthCheckExtension {
            config,
            local: Mutex::new(None),
        }
    }

    /// The address the endpoint listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local.lock().ok().and_then(|l| *l)
    }
}

impl ExtensionFactory for HealthCheckExtensionFactory {
    type Config = HealthCheckConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Extension,
            stability: Stability::Beta,
            description: "HTTP liveness/readiness endpoint for probes (the Collector's health_check)",
            signals: &[],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, _ctx: &CreateContext<'_>) -> Result<Arc<dyn Extension>, ComponentError> {
        Ok(Arc::new(HealthCheckExtension::new(config)))
    }
}

#[derive(Clone)]
struct Probe {
    ready: Arc<AtomicBool>,
    since: Instant,
}

async fn probe(State(p): State<Probe>) -> impl IntoResponse {
    let uptime = format!("{:?}", p.since.elapsed());
    if p.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "Server available", "uptime": uptime})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "Server not available", "uptime": uptime})),
        )
    }
}

impl Extension for HealthCheckExtension {
    fn start(self: Arc<Self>, ctx: ExtensionContext) -> Result<Running, ComponentError> {
        let address = self.config.endpoint.trim().to_string();
        let bind_err = |source: std::io::Error| ComponentError::Bind {
            address: address.clone(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(address.as_str()).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        if let Ok(mut l) = self.local.lock() {
            *l = Some(local);
        }
        tracing::info!(extension = %ctx.id, address = %local, path = %self.config.path, "health check listening");
        let app = Router::new().route(&self.config.path, get(probe)).with_state(Probe {
            ready: ctx.ready,
            since: Instant::now(),
        });
        let shutdown = ctx.shutdown;
        Ok(Running::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .map_err(ComponentError::Io)
        }))
    }

    fn shared(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
