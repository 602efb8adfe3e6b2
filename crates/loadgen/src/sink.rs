//! The sink: an OTLP gRPC + HTTP server (one port, HTTP/1.1 and h2c) that counts what it receives and the
//! added latency of every stamped request (receive time − the generator's send stamp, same machine clock).
//!
//! `GET /stats` answers the summary so far, `POST /reset` zeroes it (to measure a steady window only).

use bizpilot_core::{Logs, Metrics, Traces};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::pb;
use crate::stats::{self, Percentiles};
use crate::workload::{GRPC_PREFIX, now_unix_nanos, stamps};

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Exit after this many spans.
    pub expect: Option<u64>,
    /// Refuse every n-th export (gRPC UNAVAILABLE / HTTP 503), to exercise clients' retries.
    pub refuse_every: Option<u64>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    spans: AtomicU64,
    log_records: AtomicU64,
    metric_points: AtomicU64,
    wire_bytes: AtomicU64,
    bytes: AtomicU64,
    invalid: AtomicU64,
    refused: AtomicU64,
    first_unix_ns: AtomicU64,
    last_unix_ns: AtomicU64,
}

/// The sink's shared state.
pub struct Sink {
    cfg: SinkConfig,
    c: Counters,
    latencies: Mutex<Vec<u64>>,
    negative_latencies: AtomicU64,
    /// Spans since start, never reset (`--expect` and the harness's delivery check).
    seen: AtomicU64,
    started: Mutex<Instant>,
    pub done: Notify,
}

/// What the sink received (one JSON line on stdout at exit; also `GET /stats`).
#[derive(Debug, Clone, Serialize)]
pub struct SinkSummary {
    pub mode: &'static str,
    pub elapsed_s: f64,
    pub requests: u64,
    pub spans: u64,
    /// Spans since the sink started (not zeroed by `/reset`).
    pub spans_total: u64,
    pub log_records: u64,
    pub metric_points: u64,
    /// Bytes as received (compressed) and after decompression.
    pub wire_bytes: u64,
    pub bytes: u64,
    pub invalid_requests: u64,
    pub refused_requests: u64,
    /// Spans per second between the first and the last received request.
    pub spans_per_sec: f64,
    /// Receive time − send stamp of every stamped request received.
    pub added_latency_ms: Percentiles,
    /// Stamps later than the receive time (clock trouble; not in the percentiles).
    pub negative_latencies: u64,
}

impl Sink {
    pub fn new(cfg: SinkConfig) -> Arc<Sink> {
        Arc::new(Sink {
            cfg,
            c: Counters::default(),
            latencies: Mutex::new(Vec::new()),
            negative_latencies: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
            done: Notify::new(),
        })
    }

    pub fn summary(&self) -> SinkSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let spans = get(&self.c.spans);
        let (first, last) = (get(&self.c.first_unix_ns), get(&self.c.last_unix_ns));
        let span_s = if last > first { (last - first) as f64 / 1e9 } else { 0.0 };
        let mut lat = self.latencies.lock().map(|v| v.clone()).unwrap_or_default();
        SinkSummary {
            mode: "sink",
            elapsed_s: stats::round3(self.started.lock().map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0)),
            requests: get(&self.c.requests),
            spans,
            spans_total: get(&self.seen),
            log_records: get(&self.c.log_records),
            metric_points: get(&self.c.metric_points),
            wire_bytes: get(&self.c.wire_bytes),
            bytes: get(&self.c.bytes),
            invalid_requests: get(&self.c.invalid),
            refused_requests: get(&self.c.refused),
            spans_per_sec: if span_s > 0.0 {
                (spans as f64 / span_s).round()
            } else {
                0.0
            },
            added_latency_ms: stats::percentiles(&mut lat),
            negative_latencies: get(&self.negative_latencies),
        }
    }

    pub fn reset(&self) {
        for a in [
            &self.c.requests,
            &self.c.spans,
            &self.c.log_records,
            &self.c.metric_points,
            &self.c.wire_bytes,
            &self.c.bytes,
            &self.c.invalid,
            &self.c.refused,
            &self.c.first_unix_ns,
            &self.c.last_unix_ns,
            &self.negative_latencies,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        if let Ok(mut v) = self.latencies.lock() {
            v.clear();
        }
        if let Ok(mut s) = self.started.lock() {
            *s = Instant::now();
        }
    }

    fn record(&self, signal: Signal, msg: Bytes, wire: usize, received: u64) -> Result<(), String> {
        // Spans and log records are counted by walking only the three container levels (the sink must not be
        // the bottleneck of a benchmark); metrics with the validating walk.
        let items = match signal {
            Signal::Traces | Signal::Logs => count_items(&msg)?,
            Signal::Metrics => Metrics::from_bytes(msg.clone()).map_err(|e| e.to_string())?.items() as u64,
        };
        let now = received;
        if signal == Signal::Traces {
            let st = stamps(&msg);
            if !st.is_empty() {
                let mut neg = 0;
                if let Ok(mut v) = self.latencies.lock() {
                    for s in st {
                        if now >= s {
                            v.push(now - s);
                        } else {
                            neg += 1;
                        }
                    }
                }
                self.negative_latencies.fetch_add(neg, Ordering::Relaxed);
            }
        }
        let _ = self
            .c
            .first_unix_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.c.last_unix_ns.fetch_max(now, Ordering::Relaxed);
        self.c.requests.fetch_add(1, Ordering::Relaxed);
        self.c.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
        self.c.bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
        let counter = match signal {
            Signal::Traces => &self.c.spans,
            Signal::Logs => &self.c.log_records,
            Signal::Metrics => &self.c.metric_points,
        };
        counter.fetch_add(items, Ordering::Relaxed);
        if signal == Signal::Traces {
            let total = self.seen.fetch_add(items, Ordering::Relaxed) + items;
            if self.cfg.expect.is_some_and(|n| total >= n) {
                self.done.notify_one();
            }
        }
        Ok(())
    }

    fn should_refuse(&self) -> bool {
        match self.cfg.refuse_every {
            Some(n) if n > 0 => {
                let k = self.c.refused.load(Ordering::Relaxed) + self.c.requests.load(Ordering::Relaxed) + 1;
                if k.is_multiple_of(n) {
                    self.c.refused.fetch_add(1, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Logs,
    Metrics,
}

/// A response body: optional data, then optional trailers (gRPC).
pub struct RespBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl RespBody {
    fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        RespBody {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: SocketAddr, sink: Arc<Sink>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(sink.clone(), req));
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http2()
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(8 << 20)
                    .max_frame_size(1 << 20)
                    .max_concurrent_streams(1024);
                let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

fn grpc_status(code: u32, message: &str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::new(Bytes::new()));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    r
}

fn plain(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static(ctype));
    r
}

fn decompress(encoding: Option<&str>, data: Bytes) -> Result<Bytes, String> {
    match encoding.unwrap_or("identity") {
        "" | "identity" => Ok(data),
        "gzip" => {
            // The gzip trailer holds the uncompressed size (mod 2^32).
            let isize = data
                .len()
                .checked_sub(4)
                .map(|at| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize)
                .unwrap_or(0);
            let mut out = Vec::with_capacity(isize.clamp(data.len(), 64 << 20) + 64);
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            Ok(out.into())
        }
        "deflate" => {
            let mut out = Vec::with_capacity(data.len() * 4);
            flate2::read::ZlibDecoder::new(&data[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("deflate: {e}"))?;
            Ok(out.into())
        }
        "zstd" => zstd::stream::decode_all(&data[..])
            .map(Bytes::from)
            .map_err(|e| format!("zstd: {e}")),
        other => Err(format!("unsupported encoding {other:?}")),
    }
}

async fn handle(sink: Arc<Sink>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let grpc_signal = match path.as_str() {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => Some(Signal::Traces),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => Some(Signal::Logs),
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => Some(Signal::Metrics),
        _ => None,
    };
    let http_signal = match path.as_str() {
        "/v1/traces" => Some(Signal::Traces),
        "/v1/logs" => Some(Signal::Logs),
        "/v1/metrics" => Some(Signal::Metrics),
        _ => None,
    };
    if method == Method::GET && path == "/stats" {
        let body = serde_json::to_vec(&sink.summary()).unwrap_or_default();
        return Ok(plain(StatusCode::OK, body, "application/json"));
    }
    if method == Method::POST && path == "/reset" {
        sink.reset();
        return Ok(plain(StatusCode::OK, "{}", "application/json"));
    }
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(signal) = grpc_signal {
        let encoding = header("grpc-encoding");
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(grpc_status(13, &format!("reading the body: {e}"))),
        };
        // Received: the whole message is here (before decompressing and counting it).
        let received = now_unix_nanos();
        if sink.should_refuse() {
            return Ok(grpc_status(14, "refused by the sink (--refuse-every)"));
        }
        if body.len() < GRPC_PREFIX {
            sink.c.invalid.fetch_add(1, Ordering::Relaxed);
            return Ok(grpc_status(3, "short gRPC frame"));
        }
        let compressed = body[0] == 1;
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < GRPC_PREFIX + len {
            sink.c.invalid.fetch_add(1, Ordering::Relaxed);
            return Ok(grpc_status(3, "truncated gRPC frame"));
        }
        let wire = body.slice(GRPC_PREFIX..GRPC_PREFIX + len);
        let msg = if compressed {
            decompress(encoding.as_deref(), wire.clone())
        } else {
            Ok(wire.clone())
        };
        let result = msg.and_then(|m| sink.record(signal, m, wire.len(), received));
        return Ok(match result {
            Ok(()) => {
                let mut r = Response::new(RespBody {
                    data: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
                    trailers: Some({
                        let mut t = HeaderMap::new();
                        t.insert("grpc-status", HeaderValue::from_static("0"));
                        t
                    }),
                });
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r
            }
            Err(e) => {
                sink.c.invalid.fetch_add(1, Ordering::Relaxed);
                grpc_status(3, &e)
            }
        });
    }
    if let (Some(signal), true) = (http_signal, method == Method::POST) {
        let encoding = header("content-encoding");
        let ctype = header("content-type").unwrap_or_default();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, e.to_string(), "text/plain")),
        };
        let received = now_unix_nanos();
        if sink.should_refuse() {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "refused by the sink", "text/plain");
            r.headers_mut().insert("retry-after", HeaderValue::from_static("0"));
            return Ok(r);
        }
        let wire = body.len();
        let msg = match decompress(encoding.as_deref(), body) {
            Ok(m) => m,
            Err(e) => {
                sink.c.invalid.fetch_add(1, Ordering::Relaxed);
                return Ok(plain(StatusCode::BAD_REQUEST, e, "text/plain"));
            }
        };
        let result = if ctype.starts_with("application/json") {
            json_to_protobuf(signal, &msg).and_then(|pb| sink.record(signal, pb.into(), wire, received))
        } else {
            sink.record(signal, msg, wire, received)
        };
        return Ok(match result {
            Ok(()) => plain(StatusCode::OK, Bytes::new(), "application/x-protobuf"),
            Err(e) => {
                sink.c.invalid.fetch_add(1, Ordering::Relaxed);
                plain(StatusCode::BAD_REQUEST, e, "text/plain")
            }
        });
    }
    Ok(plain(StatusCode::NOT_FOUND, "not found", "text/plain"))
}

/// Items of an `ExportTraceServiceRequest` / `ExportLogsServiceRequest`: entries of field 2 of field 2 of field 1.
fn count_items(msg: &[u8]) -> Result<u64, String> {
    let mut n = 0u64;
    let mut f1 = pb::Fields::new(msg, 0);
    for (f, v) in f1.by_ref() {
        let pb::Val::Bytes(res, _) = v else { continue };
        if f != 1 {
            continue;
        }
        let mut f2 = pb::Fields::new(res, 0);
        for (g, w) in f2.by_ref() {
            let pb::Val::Bytes(scope, _) = w else { continue };
            if g != 2 {
                continue;
            }
            let mut f3 = pb::Fields::new(scope, 0);
            n += f3
                .by_ref()
                .filter(|(h, x)| *h == 2 && matches!(x, pb::Val::Bytes(..)))
                .count() as u64;
            if !f3.complete() {
                return Err("malformed protobuf".into());
            }
        }
        if !f2.complete() {
            return Err("malformed protobuf".into());
        }
    }
    if !f1.complete() {
        return Err("malformed protobuf".into());
    }
    Ok(n)
}

fn json_to_protobuf(signal: Signal, json: &[u8]) -> Result<Vec<u8>, String> {
    let e = |e: bizpilot_core::pdata::DataError| e.to_string();
    Ok(match signal {
        Signal::Traces => Traces::from_json(json).map_err(e)?.to_bytes().to_vec(),
        Signal::Logs => Logs::from_json(json).map_err(e)?.to_bytes().to_vec(),
        Signal::Metrics => Metrics::from_json(json).map_err(e)?.to_bytes().to_vec(),
    })
}
