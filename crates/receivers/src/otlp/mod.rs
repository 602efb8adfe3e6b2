//! The `otlp` receiver: OTLP traces, metrics and logs over gRPC and HTTP.
//!
//! Requests are validated without being decoded (`Payload::from_bytes`) and handed
//! to the pipeline as they arrived; OTLP/JSON is parsed into messages. When the
//! pipeline stays full for `backpressure_wait`, the request is refused with a
//! retryable error (gRPC `UNAVAILABLE`, HTTP 503 with `Retry-After`); when a memory
//! limiter refuses, gRPC `RESOURCE_EXHAUSTED` with `RetryInfo` / HTTP 429.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `protocols.grpc` | off | enables OTLP/gRPC; present with no value (`grpc:`) = all defaults |
//! | `protocols.grpc.endpoint` | `0.0.0.0:4317` | `host:port` to listen on (port 0: any free port) |
//! | `protocols.grpc.max_recv_msg_size_mib` | `4` | largest message, after decompression, in MiB |
//! | `protocols.grpc.tls` | none | `cert_file`, `key_file`, `client_ca_file` (mTLS); see `bizpilot_core::tls` |
//! | `protocols.grpc.auth.bearer_token` | none | require `authorization: Bearer <token>` |
//! | `protocols.http` | off | enables OTLP/HTTP (protobuf and JSON; gzip, deflate, zstd) |
//! | `protocols.http.endpoint` | `0.0.0.0:4318` | `host:port` to listen on (port 0: any free port) |
//! | `protocols.http.max_request_body_size` | `20MiB` | largest body, both as sent and decompressed |
//! | `protocols.http.traces_url_path` | `/v1/traces` | path of trace exports |
//! | `protocols.http.metrics_url_path` | `/v1/metrics` | path of metric exports |
//! | `protocols.http.logs_url_path` | `/v1/logs` | path of log exports |
//! | `protocols.http.tls` | none | as for gRPC |
//! | `protocols.http.auth.bearer_token` | none | as for gRPC |
//! | `protocols.http.cors.allowed_origins` | none (CORS off) | browser origins allowed, `*` wildcards (`https://*.example.com`, `*`) |
//! | `protocols.http.cors.allowed_headers` | `Accept`, `Content-Type`, `Content-Encoding`, `X-Requested-With` | extra request headers browsers may send; `*` for any |
//! | `protocols.http.cors.max_age` | none | seconds browsers may cache a preflight answer |
//! | `backpressure_wait` | `1s` | how long a request may wait for room in the pipeline before it is refused |
//! | `wait_for_delivery` | `false` | answer a request only once every component downstream confirmed it — exported, stored in a persistent `sending_queue`, journaled — instead of once it entered the pipeline; a `SIGKILL` then never loses data a client was told was accepted. Costs latency (a `batch` processor's timeout, an export) and gives at-least-once: a refused request may have been delivered |
//! | `delivery_timeout` | `10s` | with `wait_for_delivery`: how long a request waits for confirmation before the answer is a retryable error (gRPC `UNAVAILABLE`, HTTP 503) |
//!
//! At least one protocol must be enabled.
//!
//! **What is refused.** A request is accepted or refused whole (gRPC `INVALID_ARGUMENT`, HTTP
//! 400 with a `google.rpc.Status` in the request's format whose message names the field and
//! what is wrong with it; `bizpilot_receiver_bad_requests_total{reason="malformed"}` counts it):
//! protobuf that prost could not decode (truncation, wrong wire types, invalid UTF-8), JSON that
//! is not OTLP/JSON, and, in both encodings alike (JSON input goes through the protobuf walk
//! too):
//! - a trace id that is not 16 bytes or a span id that is not 8 bytes (32 and 16 hex
//!   characters in OTLP/JSON; so a 15-byte trace id, or 30 or 34 hex characters), in spans
//!   (`Span.trace_id`, `Span.span_id`, `Span.parent_span_id`), links, log records and
//!   exemplars. Empty ids are accepted (absent, e.g. the parent of a root span). The OTLP
//!   specification makes such ids invalid; the Collector's pdata refuses them the same way
//!   ("invalid length for ID"), so the client learns of its bug instead of losing spans
//!   silently to a partial success nobody reads;
//! - an `AnyValue` nested deeper than `bizpilot_core::wire::MAX_ANY_VALUE_DEPTH` (25) levels,
//!   counting arrays and kvlists alike (an attribute's value is level 1): the deepest that
//!   prost's recursion limit and serde_json's depth limit let every placement decode.
//!
//! ```yaml
//! receivers:
//!   otlp:
//!     protocols:
//!       grpc:
//!         endpoint: 0.0.0.0:4317
//!         tls: {cert_file: /etc/bizpilot/cert.pem, key_file: /etc/bizpilot/key.pem}
//!         auth: {bearer_token: "${env:OTLP_TOKEN}"}
//!       http:
//!         endpoint: 0.0.0.0:4318
//!         cors:
//!           allowed_origins: ["https://*.example.com"]
//!           max_age: 7200
//!     backpressure_wait: 1s
//! ```
//!
//! Self-telemetry (labels `receiver`, `transport` = `grpc` | `http`):
//! `bizpilot_receiver_accepted_{spans,metric_points,log_records}_total`,
//! `bizpilot_receiver_refused_…_total{reason}` and
//! `bizpilot_receiver_bad_requests_total{reason = malformed | too_large | unsupported_media_type | unauthenticated}`.
//!
//! The addresses actually bound (useful with port 0) are published through
//! [`OtlpReceiver::bound_addresses`] once [`Receiver::start`] has returned.

mod config;
mod grpc;
mod http;
mod ingest;
mod server;

pub use config::{AuthConfig, CorsConfig, GrpcConfig, HttpConfig, OtlpReceiverConfig, Protocols};

use bizpilot_core::pdata::Signal;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Receiver, ReceiverContext,
    ReceiverFactory, Running, Stability,
};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::grpc::GrpcState;
use self::http::HttpState;
use self::ingest::{BearerAuth, Ingest};
use self::server::{Handler, Server};

/// Creates `otlp` receivers.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpReceiverFactory;

impl ReceiverFactory for OtlpReceiverFactory {
    type Config = OtlpReceiverConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "otlp",
            kind: ComponentKind::Receiver,
            stability: Stability::Beta,
            description: "Receives OTLP traces, metrics and logs over gRPC and HTTP (protobuf or JSON).",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[],
        }
    }

    fn create(
        &self,
        config: OtlpReceiverConfig,
        _ctx: &CreateContext<'_>,
    ) -> Result<Box<dyn Receiver>, ComponentError> {
        Ok(Box::new(OtlpReceiver::new(config)?))
    }
}

/// The addresses a started receiver listens on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addresses {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

/// A handle that learns the receiver's listening addresses when it starts.
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses(Arc<OnceLock<Addresses>>);

impl BoundAddresses {
    /// The bound addresses, once the receiver has started.
    pub fn get(&self) -> Option<Addresses> {
        self.0.get().copied()
    }
    /// The gRPC address, once started with gRPC enabled.
    pub fn grpc(&self) -> Option<SocketAddr> {
        self.get().and_then(|a| a.grpc)
    }
    /// The HTTP address, once started with HTTP enabled.
    pub fn http(&self) -> Option<SocketAddr> {
        self.get().and_then(|a| a.http)
    }
}

/// An OTLP receiver, ready to start.
pub struct OtlpReceiver {
    config: OtlpReceiverConfig,
    grpc_tls: Option<TlsAcceptor>,
    http_tls: Option<TlsAcceptor>,
    bound: BoundAddresses,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("config", &self.config)
            .field("bound", &self.bound)
            .finish()
    }
}

fn tls_acceptor(
    tls: Option<&bizpilot_core::tls::TlsServerSettings>,
    alpn: &[&[u8]],
    key: &str,
) -> Result<Option<TlsAcceptor>, ComponentError> {
    tls.map(|t| {
        t.server_config(alpn)
            .map(TlsAcceptor::from)
            .map_err(|e| ComponentError::Config(format!("{key}: {e}")))
    })
    .transpose()
}

impl OtlpReceiver {
    /// Checks the config and loads TLS material.
    pub fn new(config: OtlpReceiverConfig) -> Result<Self, ComponentError> {
        let errors = config.validate();
        if !errors.is_empty() {
            let msg = errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ComponentError::Config(msg));
        }
        let p = &config.protocols;
        let grpc_tls = tls_acceptor(
            p.grpc.as_ref().and_then(|g| g.tls.as_ref()),
            &[b"h2"],
            "protocols.grpc.tls",
        )?;
        let http_tls = tls_acceptor(
            p.http.as_ref().and_then(|h| h.tls.as_ref()),
            &[b"h2", b"http/1.1"],
            "protocols.http.tls",
        )?;
        Ok(Self {
            config,
            grpc_tls,
            http_tls,
            bound: BoundAddresses::default(),
        })
    }

    /// A handle that reports the listening addresses once [`Receiver::start`] has returned
    /// (the actual ports when the config asks for port 0).
    pub fn bound_addresses(&self) -> BoundAddresses {
        self.bound.clone()
    }
}

impl Receiver for OtlpReceiver {
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ComponentError::Other(
                "the OTLP receiver must start inside a Tokio runtime".into(),
            ));
        }
        let OtlpReceiver {
            config,
            grpc_tls,
            http_tls,
            bound,
        } = *self;
        let ReceiverContext { id, output, shutdown } = ctx;
        let id = id.to_string();
        let wait: Duration = config.backpressure_wait.get();
        // In-flight requests may wait for room (at most `wait`) and need a moment to answer;
        // after that, whatever still waits is refused so shutdown takes a few seconds at most.
        let delivery = config.wait_for_delivery.then(|| config.delivery_timeout.get());
        let grace = wait.min(Duration::from_secs(5))
            + delivery.unwrap_or_default().min(Duration::from_secs(5))
            + Duration::from_secs(2);
        let hard_stop = CancellationToken::new();

        // Bind both listeners before serving, so a taken port fails the start.
        let mut servers = Vec::new();
        let mut addrs = Addresses::default();
        if let Some(g) = &config.protocols.grpc {
            let address = config::bind_address(&g.endpoint).map_err(ComponentError::Config)?;
            let listener = server::bind(&address)?;
            let local = listener.local_addr()?;
            addrs.grpc = Some(local);
            let state = GrpcState {
                ingest: Ingest::new(&id, "grpc", &output, wait, delivery, hard_stop.clone()),
                auth: g.auth.as_ref().map(|a| BearerAuth::new(&a.bearer_token)),
                max_message_size: g.max_recv_msg_size(),
            };
            tracing::info!(receiver = %id, address = %local, tls = grpc_tls.is_some(), "OTLP/gRPC receiver listening");
            servers.push(Server {
                listener,
                tls: grpc_tls,
                handler: Handler::Grpc(Arc::new(state)),
                http2_only: true,
                transport: "grpc",
                receiver: id.clone(),
                grace,
                hard_stop: hard_stop.clone(),
            });
        }
        if let Some(h) = &config.protocols.http {
            let address = config::bind_address(&h.endpoint).map_err(ComponentError::Config)?;
            let listener = server::bind(&address)?;
            let local = listener.local_addr()?;
            addrs.http = Some(local);
            let state = HttpState::new(Ingest::new(&id, "http", &output, wait, delivery, hard_stop.clone()), h);
            tracing::info!(receiver = %id, address = %local, tls = http_tls.is_some(), "OTLP/HTTP receiver listening");
            servers.push(Server {
                listener,
                tls: http_tls,
                handler: Handler::Http(Arc::new(state)),
                http2_only: false,
                transport: "http",
                receiver: id.clone(),
                grace,
                hard_stop: hard_stop.clone(),
            });
        }
        // Only the per-transport states hold the outputs from here on.
        drop(output);
        let _ = bound.0.set(addrs);

        Ok(Running::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for s in servers {
                tasks.spawn(s.run(shutdown.clone()));
            }
            while let Some(r) = tasks.join_next().await {
                if let Err(e) = r
                    && e.is_panic()
                {
                    return Err(ComponentError::Other(format!("OTLP server task panicked: {e}")));
                }
            }
            tracing::debug!(receiver = %id, "OTLP receiver stopped");
            Ok(())
        }))
    }
}
