//! Test peers (a tonic OTLP/gRPC server, a hyper OTLP/HTTP server), data, a metrics recorder
//! and a harness that runs one exporter.

use bizpilot_core::pdata::proto::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use bizpilot_core::pdata::proto::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use bizpilot_core::pdata::proto::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use bizpilot_core::pdata::proto::common::v1::{AnyValue, KeyValue, any_value};
use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use bizpilot_core::pdata::proto::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use bizpilot_core::pdata::proto::resource::v1::Resource;
use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use bizpilot_core::{
    Ack, Batch, ComponentId, CreateContext, Delivery, ExporterContext, ExporterFactory, Extensions, Logs, Metrics,
    Payload, Running, Signal, Traces, parse_config,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use metrics::{Counter, Gauge as MGauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use prost::Message;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

// ---------------------------------------------------------------- metrics

#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

static STORE: LazyLock<Arc<Store>> = LazyLock::new(Arc::default);

struct TestRecorder(Arc<Store>);

fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        let mut m = self.0.values.lock().unwrap();
        m.entry(key_string(key)).or_default().clone()
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> MGauge {
        MGauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Installs the recording metrics recorder and a test log subscriber (once per binary).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = metrics::set_global_recorder(TestRecorder(STORE.clone()));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A counter's value, by name and the `exporter` label.
pub fn counter(name: &str, exporter: &str) -> u64 {
    let want = format!("exporter={exporter}");
    let m = STORE.values.lock().unwrap();
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{"))
                && k.trim_start_matches(name)
                    .trim_matches(|c| c == '{' || c == '}')
                    .split(',')
                    .any(|l| l == want)
        })
        .map(|(_, v)| v.load(Ordering::Relaxed))
        .sum()
}

/// A gauge's value (stored as f64 bits).
pub fn gauge(name: &str, exporter: &str) -> f64 {
    let m = STORE.values.lock().unwrap();
    m.get(&format!("{name}{{exporter={exporter}}}"))
        .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
        .unwrap_or(-1.0)
}

// ---------------------------------------------------------------- data

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn resource(tag: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", "shop"), kv("test.tag", tag)],
        ..Default::default()
    })
}

pub fn traces(n: usize, tag: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(tag),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("{tag}-span-{i}"),
                        trace_id: vec![i as u8 + 1; 16],
                        span_id: vec![i as u8 + 2; 8],
                        start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                        end_time_unix_nano: 1_700_000_000_100_000_000 + i as u64,
                        attributes: vec![kv("http.route", "/cart")],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn metrics(n: usize, tag: &str) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(tag),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: format!("{tag}.depth"),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: (0..n)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                                value: Some(number_data_point::Value::AsInt(i as i64)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn logs(n: usize, tag: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(tag),
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("{tag} log {i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An encoded trace batch (as a receiver would hand it on) with an ack.
pub fn trace_batch(n: usize, tag: &str) -> (Batch, oneshot::Receiver<Delivery>) {
    let (ack, rx) = Ack::channel();
    let p = Payload::Traces(Traces::from_bytes(traces(n, tag).encode_to_vec().into()).unwrap());
    (Batch::with_ack(p, ack), rx)
}

/// One encoded batch of each signal.
pub fn all_signals(tag: &str) -> Vec<Batch> {
    vec![
        Batch::new(Payload::Traces(
            Traces::from_bytes(traces(3, tag).encode_to_vec().into()).unwrap(),
        )),
        Batch::new(Payload::Metrics(
            Metrics::from_bytes(metrics(4, tag).encode_to_vec().into()).unwrap(),
        )),
        Batch::new(Payload::Logs(
            Logs::from_bytes(logs(5, tag).encode_to_vec().into()).unwrap(),
        )),
    ]
}

// ---------------------------------------------------------------- exporter harness

pub struct Harness {
    pub tx: mpsc::Sender<Batch>,
    pub abort: CancellationToken,
    pub running: Running,
}

/// Creates and starts exporter `id` from YAML config; its input holds `capacity` batches.
pub fn start<F: ExporterFactory>(factory: F, id: &str, yaml: &str, capacity: usize) -> Harness {
    init();
    let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let cfg = parse_config::<F::Config>(&raw).unwrap_or_else(|e| panic!("config: {e:?}"));
    let cid: ComponentId = id.parse().unwrap();
    let ext = Extensions::default();
    let ctx = CreateContext {
        id: &cid,
        pipeline: None,
        signals: Signal::ALL.into_iter().collect(),
        output_signals: BTreeSet::new(),
        extensions: &ext,
    };
    let exporter = factory.create(cfg, &ctx).unwrap_or_else(|e| panic!("create: {e}"));
    let (tx, rx) = mpsc::channel(capacity);
    let abort = CancellationToken::new();
    let running = exporter
        .start(ExporterContext {
            id: cid,
            input: rx,
            abort: abort.clone(),
        })
        .unwrap();
    Harness { tx, abort, running }
}

impl Harness {
    /// Closes the input and waits for the task to end.
    pub async fn finish(self, within: Duration) {
        let Harness { tx, mut running, .. } = self;
        drop(tx);
        tokio::time::timeout(within, running.join())
            .await
            .expect("exporter did not finish in time")
            .unwrap();
    }
}

/// Waits until `f` holds, polling.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- gRPC server

/// What the gRPC server saw and how it answers.
#[derive(Default)]
pub struct GrpcState {
    pub traces: Mutex<Vec<ExportTraceServiceRequest>>,
    pub metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    pub logs: Mutex<Vec<ExportLogsServiceRequest>>,
    /// Request headers of every call, accepted or not.
    pub headers: Mutex<Vec<http::HeaderMap>>,
    /// Statuses to answer with, in order, before answering OK.
    pub script: Mutex<VecDeque<tonic::Status>>,
    /// Calls (including refused ones).
    pub calls: AtomicUsize,
    /// Calls in progress (waiting at the gate).
    pub in_flight: AtomicUsize,
    /// While false, calls wait.
    pub open: Option<watch::Sender<bool>>,
    /// Rejected items reported as partial success on OK responses.
    pub reject: AtomicU64,
}

impl GrpcState {
    pub fn gated() -> Self {
        GrpcState {
            open: Some(watch::channel(false).0),
            ..Default::default()
        }
    }
    pub fn push_error(&self, s: tonic::Status) {
        self.script.lock().unwrap().push_back(s);
    }
    pub fn release(&self) {
        if let Some(o) = &self.open {
            o.send_replace(true);
        }
    }
    pub fn span_count(&self) -> usize {
        self.traces.lock().unwrap().iter().map(count_spans).sum()
    }

    async fn handle(&self, headers: &http::HeaderMap) -> Result<(), tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.headers.lock().unwrap().push(headers.clone());
        if let Some(o) = &self.open {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let mut rx = o.subscribe();
            let _ = rx.wait_for(|open| *open).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        match self.script.lock().unwrap().pop_front() {
            Some(st) => Err(st),
            None => Ok(()),
        }
    }
}

pub fn count_spans(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

#[derive(Clone)]
struct Svc(Arc<GrpcState>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.handle(req.metadata().as_ref()).await?;
        self.0.traces.lock().unwrap().push(req.into_inner());
        let rejected = self.0.reject.load(Ordering::SeqCst) as i64;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| {
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: "spans too old".into(),
                }
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.handle(req.metadata().as_ref()).await?;
        self.0.metrics.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.handle(req.metadata().as_ref()).await?;
        self.0.logs.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A running gRPC server; stops when dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub state: Arc<GrpcState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl GrpcServer {
    pub async fn start(state: GrpcState) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(state), None).await
    }

    /// Serves on `addr` (to bring a server "back up" on a known port).
    pub async fn start_at(addr: SocketAddr, state: Arc<GrpcState>) -> GrpcServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, state, None).await
    }

    pub async fn start_tls(state: GrpcState, cert_pem: &str, key_pem: &str) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Self::serve(listener, Arc::new(state), Some(tls)).await
    }

    async fn serve(
        listener: TcpListener,
        state: Arc<GrpcState>,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> GrpcServer {
        let addr = listener.local_addr().unwrap();
        let svc = Svc(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let router = builder
            .add_service(
                TraceServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd),
            )
            .add_service(
                MetricsServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd),
            )
            .add_service(
                LogsServiceServer::new(svc)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd),
            );
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        GrpcServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

// ---------------------------------------------------------------- HTTP server

/// One request the HTTP server got.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub path: String,
    pub headers: http::HeaderMap,
    /// Decompressed body.
    pub body: Bytes,
}

/// A scripted response: status, headers, body.
pub type Scripted = (u16, Vec<(&'static str, String)>, Vec<u8>);

#[derive(Default)]
pub struct HttpState {
    pub requests: Mutex<Vec<HttpRequest>>,
    /// Responses (status, headers, body) to give, in order, before answering 200.
    pub script: Mutex<VecDeque<Scripted>>,
    /// The body of 200 responses (and its content type).
    pub ok_body: Mutex<Option<(&'static str, Vec<u8>)>>,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    pub state: Arc<HttpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decompress(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Some("gzip") => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        Some("zstd") => {
            out = zstd::decode_all(body).unwrap();
        }
        None => out = body.to_vec(),
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

impl HttpServer {
    pub async fn start(state: HttpState) -> HttpServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), state).await
    }

    pub async fn start_at(addr: SocketAddr, state: HttpState) -> HttpServer {
        Self::serve(addr, state, None).await
    }

    /// HTTPS (ALPN h2 and http/1.1) with the given certificate.
    pub async fn start_tls(state: HttpState, cert_file: &std::path::Path, key_file: &std::path::Path) -> HttpServer {
        let settings = bizpilot_core::tls::TlsServerSettings {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
            ..Default::default()
        };
        let cfg = settings.server_config(&[b"h2", b"http/1.1"]).unwrap();
        Self::serve(
            "127.0.0.1:0".parse().unwrap(),
            state,
            Some(tokio_rustls::TlsAcceptor::from(cfg)),
        )
        .await
    }

    async fn serve(addr: SocketAddr, state: HttpState, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(state);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let raw = body.collect().await.unwrap().to_bytes();
                            let enc = parts
                                .headers
                                .get("content-encoding")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = Bytes::from(decompress(enc.as_deref(), &raw));
                            st.requests.lock().unwrap().push(HttpRequest {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers.clone(),
                                body,
                            });
                            let scripted = st.script.lock().unwrap().pop_front();
                            let mut resp = http::Response::builder();
                            let body = match scripted {
                                Some((status, headers, body)) => {
                                    resp = resp.status(status);
                                    for (k, v) in headers {
                                        resp = resp.header(k, v);
                                    }
                                    body
                                }
                                None => match st.ok_body.lock().unwrap().clone() {
                                    Some((ct, body)) => {
                                        resp = resp.header("content-type", ct);
                                        body
                                    }
                                    None => Vec::new(),
                                },
                            };
                            Ok::<_, std::convert::Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        HttpServer { addr, state, task }
    }
}
