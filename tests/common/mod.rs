//! Shared pieces of the end-to-end tests: free loopback ports, a real OTLP
//! gRPC server standing in for the downstream backend, and the `bizpilot`
//! binary run as a child process (started with a config file, stopped by PID).
//!
//! # Ports
//!
//! A test picks a port and a server (a `bizpilot` child, tansu, Prometheus, a mock OTLP server) binds it a moment
//! later; nothing can hold the port in between. Two things could take it in that moment, and [`free_port`] closes
//! both:
//!
//! - **Another test of the same binary** (tests run in parallel threads): the allocator hands out each port at
//!   most once per process (a static set), so two tests never get the same port, whenever they bind it.
//! - **The kernel**, which gives ports of its ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, usually
//!   32768–60999) to every outgoing connection and to every bind of port 0 (the mock servers that bind
//!   `127.0.0.1:0`): the allocator picks only from outside that range (15000 up to its start), so no such
//!   port can land on one we handed out. A candidate is also tried with a bind first and skipped while anything
//!   holds it.
//!
//! What remains is another process that binds a fixed port of that range between our check and our bind (e.g.
//! a second test run on the same machine): each process starts at its own place in the range (from its PID and the
//! clock), so that needs a near coincidence. If it happens anyway, [`Bizpilot`]'s start fails with a message that
//! says so instead of a bare "bizpilot exited".
#![allow(dead_code)]

pub mod demo;
pub mod kpi_shop;
mod ports;

#[allow(unused_imports)] // each test binary uses some of them
pub use ports::{PortAllocator, free_port, test_port_range};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// Everything the downstream received, request by request.
#[derive(Default)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
}

impl Received {
    pub fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
    pub fn span_count(&self) -> usize {
        self.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
    pub fn log_count(&self) -> usize {
        self.logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
}

#[derive(Clone)]
struct Sink {
    got: Arc<Mutex<Received>>,
    unavailable: Arc<AtomicBool>,
}

impl Sink {
    fn check(&self) -> Result<(), Status> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(Status::unavailable("downstream is refusing (test)"))
        } else {
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.check()?;
        self.got.lock().unwrap().traces.push(r.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        r: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.check()?;
        self.got.lock().unwrap().metrics.push(r.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        r: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.check()?;
        self.got.lock().unwrap().logs.push(r.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A real OTLP/gRPC server (tonic) that records what it receives. It can be
/// stopped and started again on the same port, or told to answer UNAVAILABLE.
pub struct Downstream {
    pub addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    unavailable: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Downstream {
    pub async fn start() -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut d = Downstream {
            addr,
            got: Arc::default(),
            unavailable: Arc::default(),
            stop: None,
            task: None,
        };
        d.up().await;
        d
    }

    /// Starts serving (again) on the same address.
    pub async fn up(&mut self) {
        let sink = Sink {
            got: self.got.clone(),
            unavailable: self.unavailable.clone(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = self.addr;
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("downstream cannot bind {addr}: {e}"),
                }
            }
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(sink.clone())
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_decoding_message_size(64 << 20),
                )
                .add_service(
                    MetricsServiceServer::new(sink.clone())
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_decoding_message_size(64 << 20),
                )
                .add_service(
                    LogsServiceServer::new(sink)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_decoding_message_size(64 << 20),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some(tx);
        self.task = Some(task);
    }

    /// Stops serving; connections are closed.
    pub async fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn set_unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::SeqCst);
    }

    pub fn received<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.got.lock().unwrap())
    }

    /// Waits until `cond` holds for what was received, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, cond: impl Fn(&Received) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.received(&cond) {
                return;
            }
            if Instant::now() > deadline {
                let (t, l) = self.received(|r| (r.span_count(), r.log_count()));
                panic!("timed out waiting for {what} (downstream has {t} spans, {l} log records)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `bizpilot` binary running as a child process.
pub struct Bizpilot {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bizpilot"))
}

impl Bizpilot {
    /// Writes `config` to a file and runs `bizpilot run --config <file>`; waits for `/readyz`.
    /// The config must set `service.telemetry.metrics.address` to `admin`.
    pub fn start(config: &str, admin: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
        Self::start_with(&[path.as_path()], admin, dir, &[])
    }

    pub fn start_with(configs: &[&Path], admin: SocketAddr, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.arg("run");
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        // The shipped pipelines listen on fixed ports unless moved (health_check :13133, OTLP :4317/:4318,
        // Prometheus :8889/:8890, admin :8888): tests run in parallel, so each process gets ports of its own, and
        // the admin endpoint is `admin` (a test may still set any of them in `env`).
        cmd.env("BIZPILOT_HEALTH_ENDPOINT", free_addr().to_string());
        for var in [
            "BIZPILOT_OTLP_GRPC_ENDPOINT",
            "BIZPILOT_OTLP_HTTP_ENDPOINT",
            "BIZPILOT_PROMETHEUS_ENDPOINT",
            "BIZPILOT_FLEET_PROMETHEUS_ENDPOINT",
        ] {
            cmd.env(var, free_addr().to_string());
        }
        cmd.env("BIZPILOT_ADMIN_ENDPOINT", admin.to_string());
        // Likewise the shipped pipelines' durable state (`file_storage`): one directory per process unless set.
        cmd.env("BIZPILOT_STORAGE_DIR", dir.path().join("storage"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = std::fs::File::create(dir.path().join("stdout.log")).expect("log file");
        let err = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd.spawn().expect("spawn bizpilot");
        let mut b = Bizpilot {
            child: Some(child),
            admin,
            dir,
        };
        b.wait_ready(Duration::from_secs(30));
        b
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let logs = self.logs();
                if logs.contains("Address already in use") {
                    panic!(
                        "bizpilot exited during start with {status}: a port the test gave it was taken by another \
                         process before bizpilot could bind it (\"Address already in use\"). free_port() never gives \
                         a port twice in one test binary and picks outside the kernel's ephemeral range, so another \
                         process bound it (a second test run on this machine?); rerun.\n{logs}"
                    );
                }
                panic!("bizpilot exited during start with {status}\n{logs}");
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            if Instant::now() > deadline {
                panic!("bizpilot not ready after {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Self-telemetry in Prometheus text format.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Sum of the samples of a metric (all label sets) whose labels contain every `label_filter`.
    pub fn metric_sum(&self, name: &str, label_filter: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, label_filter)
    }

    /// Sends a signal by PID with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("bizpilot did not exit within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bizpilot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sums the samples of `name` in Prometheus text whose label set contains every filter string.
pub fn metric_sum(text: &str, name: &str, label_filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name && label_filter.iter().all(|f| l.contains(f))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A plain HTTP/1.1 GET over std TCP (no client library needed): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], &[])
}

/// A plain HTTP/1.1 request: (status, body as lossy UTF-8).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_request_full(addr, method, path, headers, body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Status, headers (names lower-cased) and body of an HTTP response.
pub type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// A plain HTTP/1.1 request: (status, response headers lower-cased, body).
pub fn http_request_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok((status, hdrs, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// An `opentelemetry_http::HttpClient` over blocking std TCP, so the SDK's
/// thread-based batch processors and periodic readers can export over OTLP/HTTP
/// from any thread (the SDK's async clients need a Tokio context there).
#[derive(Debug, Default)]
pub struct BlockingHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let uri = request.uri().clone();
        let authority = uri.authority().ok_or("no authority")?.as_str().to_string();
        let addr: SocketAddr = authority.parse()?;
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "content-length" && k.as_str() != "host")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let hdr_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, resp_headers, body) = http_request_full(
            addr,
            request.method().as_str(),
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            &hdr_refs,
            request.body(),
        )?;
        let mut resp = http::Response::builder().status(status);
        for (k, v) in resp_headers {
            resp = resp.header(k, v);
        }
        Ok(resp.body(bytes::Bytes::from(body))?)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Business impact tests: OTLP/HTTP posts, percent-encoding, and a real Prometheus server (Debian package
// `prometheus`, installed by .ci/prereq-prometheus.sh) with promtool.

/// POSTs an OTLP/HTTP protobuf body (`path` = `/v1/traces`, `/v1/logs`, …); returns the HTTP status.
/// POSTs an OTLP/HTTP protobuf body until it is accepted (200), waiting out 429/503 and refused connections for up
/// to about 5 s; any other answer fails the test.
pub fn post_accepted(addr: SocketAddr, path: &str, body: &[u8]) {
    for attempt in 0..100 {
        match otlp_post(addr, path, body) {
            200 => return,
            s if attempt < 99 && (s == 429 || s == 503 || s == 0) => std::thread::sleep(Duration::from_millis(50)),
            s => panic!("POST {path} answered {s}"),
        }
    }
}

/// A span attribute as a string (strings, and other values in their string form).
pub fn span_attr(sp: &opentelemetry_proto::tonic::trace::v1::Span, k: &str) -> Option<String> {
    bizpilot_business::attrs::get_string(&sp.attributes, k).map(|s| s.into_owned())
}

/// Lower-case hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn otlp_post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    http_request(addr, "POST", path, &[("Content-Type", "application/x-protobuf")], body)
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";

/// A real Prometheus server on a free loopback port, scraping `targets` every second, with its data in a
/// temporary directory. Stopped (by its PID) when dropped.
pub struct Prometheus {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} is missing: run .ci/prereq-prometheus.sh (apt-get install prometheus)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bizpilot\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(p.addr, "/-/ready") {
                break;
            }
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query: the samples of the result vector as (labels, value).
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, String)> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let Ok((200, body)) = http_get(self.addr, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `promql` until its single sample satisfies `ok`, or panics after `timeout`.
    pub fn wait_for(&self, promql: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if let Some(v) = r.first().and_then(|(_, v)| v.parse::<f64>().ok())
                && r.len() == 1
                && ok(v)
            {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "PromQL {promql:?} did not reach the expected value; last result {r:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `promtool check metrics` on a scrape: (passed, output).
pub fn promtool_check_metrics(scrape: &str) -> (bool, String) {
    let mut child = Command::new(PROMTOOL_BIN)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool (run .ci/prereq-prometheus.sh)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(scrape.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A JSON GET (status, body).
pub fn json_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    match http_get(addr, path) {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Resident memory of a process in KiB (Linux `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Shipped pipelines run as they are, with a test overlay.

/// The workspace root (`pipelines/` is under it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Runs the shipped `pipeline` (a path under the workspace root) with `overlay` merged over it (maps merge key by
/// key, lists are replaced) and `env` set; waits for `/readyz` on `admin`, which the pipeline must serve (through
/// its `${env:BIZPILOT_ADMIN_ENDPOINT}` or the overlay).
pub fn start_pipeline(pipeline: &str, overlay: &str, admin: SocketAddr, env: &[(&str, &str)]) -> Bizpilot {
    let dir = tempfile::tempdir().expect("tempdir");
    let over = dir.path().join("overlay.yaml");
    std::fs::write(&over, overlay).expect("write overlay");
    let shipped = workspace_root().join(pipeline);
    Bizpilot::start_with(&[shipped.as_path(), over.as_path()], admin, dir, env)
}

// ---------------------------------------------------------------------------------------------------------------
// Order-KPI tests: shopgen workloads recorded for `bizpilot replay`, replays, and the `debug` exporter's
// `detailed` output (OTLP/JSON, one line per batch, on stdout).

/// Records `cfg`'s emissions in arrival order as a binary replay recording (`BZPOTLP1`): one request per signal
/// per `window` of arrival time. Returns the ground truth and the catalog's customers as CSV.
pub fn kpi_record_shop(
    cfg: &bizpilot_shopgen::ShopConfig,
    window: Duration,
    path: &Path,
) -> (bizpilot_shopgen::GroundTruth, String) {
    use bizpilot_connectors::kpi::recording::Writer;
    use bizpilot_core::Signal;
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create recording"));
    let mut w = Writer::new(file).expect("write recording");
    let mut stream = bizpilot_shopgen::Shop::stream_with_truth(cfg).expect("valid workload");
    let customers = stream.catalog().customers_csv();
    let mut traces = bizpilot_shopgen::TraceBatcher::new(512);
    let mut logs = bizpilot_shopgen::LogBatcher::new(512);
    let (mut enc, mut lr) = (Vec::new(), Vec::new());
    let step = window.as_nanos().max(1) as u64;
    let mut current = None;
    let flush = |w: &mut Writer<std::io::BufWriter<std::fs::File>>,
                 traces: &mut bizpilot_shopgen::TraceBatcher,
                 logs: &mut bizpilot_shopgen::LogBatcher,
                 enc: &mut Vec<Vec<u8>>,
                 lr: &mut Vec<ExportLogsServiceRequest>| {
        enc.extend(traces.finish());
        lr.extend(logs.finish());
        for b in enc.drain(..) {
            w.write(Signal::Traces, &b).expect("write");
        }
        for r in lr.drain(..) {
            w.write_logs(&r).expect("write");
        }
    };
    for em in stream.by_ref() {
        let k = em.arrival_unix_nano / step;
        if current.is_some_and(|c| c != k) {
            flush(&mut w, &mut traces, &mut logs, &mut enc, &mut lr);
        }
        current = Some(k);
        if let Some(t) = em.as_trace() {
            traces.push(t, &mut enc);
        } else if let Some(e) = em.as_event() {
            logs.push(e, &mut lr);
        }
    }
    flush(&mut w, &mut traces, &mut logs, &mut enc, &mut lr);
    w.finish().expect("flush recording");
    (stream.into_truth().expect("truth"), customers)
}

/// Runs `bizpilot replay --config <config> --input <inputs…> <extra…>`: (exit status, stdout, stderr).
pub fn kpi_run_replay(config: &Path, inputs: &[&Path], extra: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("replay").arg("--config").arg(config).arg("--input");
    for i in inputs {
        cmd.arg(i);
    }
    cmd.args(extra);
    let out = cmd.output().expect("run bizpilot replay");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `debug` exporter's `detailed` output: every log record and every metrics request, as JSON.
pub fn kpi_debug_output(stdout: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (mut records, mut metrics) = (Vec::new(), Vec::new());
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("debug exporter JSON");
        if let Some(rl) = v.get("resourceLogs").and_then(|x| x.as_array()) {
            for r in rl {
                for sl in r["scopeLogs"].as_array().into_iter().flatten() {
                    records.extend(sl["logRecords"].as_array().into_iter().flatten().cloned());
                }
            }
        } else if v.get("resourceMetrics").is_some() {
            metrics.push(v);
        }
    }
    (records, metrics)
}

/// POSTs recorded requests in order over OTLP/HTTP (`/v1/traces`, `/v1/logs`, `/v1/metrics`), retrying
/// refusals (429, 503) until accepted.
pub fn kpi_post_records(addr: SocketAddr, records: &[bizpilot_connectors::kpi::recording::Recorded]) {
    for r in records {
        let p = match r.signal {
            bizpilot_core::Signal::Traces => "/v1/traces",
            bizpilot_core::Signal::Logs => "/v1/logs",
            bizpilot_core::Signal::Metrics => "/v1/metrics",
        };
        let mut attempt = 0;
        loop {
            match otlp_post(addr, p, &r.bytes) {
                200 => break,
                s if attempt < 500 && (s == 429 || s == 503 || s == 0) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                s => panic!("POST {p} answered {s}"),
            }
        }
    }
}
