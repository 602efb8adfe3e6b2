//! The sender: workers that take requests from the ring on a shared schedule and export them over OTLP/gRPC
//! (a minimal unary gRPC client on hyper's HTTP/2 client) or OTLP/HTTP (protobuf), retrying retryable refusals
//! with exponential backoff as an SDK would.

use bytes::Bytes;
use http::{Request as HttpRequest, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::stats::{self, Percentiles};
use crate::workload::{Kind, Ring, now_unix_nanos};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    /// Spans per second; `None` = as fast as the workers go.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many spans (at request granularity).
    pub max_spans: Option<u64>,
    /// Send the ring exactly once (the whole workload), ignoring `duration`.
    pub once: bool,
    pub connections: usize,
    pub inflight: usize,
    pub gzip: Option<u32>,
    /// Rewrite ids and times on later laps of the ring.
    pub fresh_ids: bool,
    /// Stamp every n-th request with its send time (0: never).
    pub stamp_every: u64,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub progress: bool,
    pub stats_interval: Option<Duration>,
    /// Open loop: every request leaves at its scheduled time whether or not earlier ones were answered (needs
    /// `rate`), at most this many in flight; a request due while that many are in flight is not sent and counted
    /// (`unsent_spans`). `None`: closed loop, `connections` × `inflight` workers.
    pub open_loop: Option<usize>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    sent_spans: AtomicU64,
    ack_spans: AtomicU64,
    sent_logs: AtomicU64,
    ack_logs: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    dropped_spans: AtomicU64,
    dropped_logs: AtomicU64,
    unsent_spans: AtomicU64,
    max_inflight: AtomicU64,
}

struct Shared {
    ring: Arc<Ring>,
    cfg: SendConfig,
    counters: Counters,
    next: AtomicU64,
    start: Instant,
    deadline: Instant,
    traces_uri: Uri,
    logs_uri: Uri,
    refusals: Mutex<BTreeMap<String, u64>>,
    error_samples: Mutex<Vec<String>>,
}

/// The end-of-run summary (one JSON line on stdout).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub protocol: Protocol,
    pub endpoint: String,
    pub gzip_level: Option<u32>,
    pub target_spans_per_sec: Option<f64>,
    pub connections: usize,
    pub inflight: usize,
    pub elapsed_s: f64,
    pub requests: u64,
    pub sent_spans: u64,
    pub acknowledged_spans: u64,
    pub sent_log_records: u64,
    pub acknowledged_log_records: u64,
    /// Retryable refusals received (each was retried with backoff, or dropped after `max_retries`).
    pub refused: u64,
    pub refused_by_status: BTreeMap<String, u64>,
    pub retries: u64,
    /// Failed attempts other than refusals (transport errors, timeouts, non-retryable statuses).
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub dropped_spans: u64,
    pub dropped_log_records: u64,
    /// Open loop: the in-flight cap, spans due while it was reached (not sent), most requests in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoop>,
    /// Acknowledged spans per second over the whole run.
    pub spans_per_sec: f64,
    /// Export request latency (send → response) of acknowledged attempts.
    pub request_latency_ms: Percentiles,
    pub ring_requests: usize,
    pub ring_spans: u64,
    pub ring_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_file: Option<String>,
}

/// What the open-loop sender did beyond the closed loop's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoop {
    pub max_inflight: usize,
    pub unsent_spans: u64,
    pub peak_inflight: u64,
}

enum Outcome {
    Ok,
    Refused {
        label: String,
        retry_after: Option<Duration>,
    },
    Failed {
        message: String,
        retryable: bool,
    },
}

/// Normalises an endpoint to `scheme://authority` (plaintext when no scheme is given).
pub fn base_uri(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let e = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    if e.starts_with("https://") {
        anyhow::bail!("TLS endpoints are not supported by the load generator: use http://");
    }
    let _: Uri = e
        .parse()
        .map_err(|err| anyhow::anyhow!("endpoint {endpoint:?}: {err}"))?;
    Ok(e)
}

fn build_client(grpc: bool, inflight: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(inflight.max(1));
    if grpc {
        b.http2_only(true)
            .http2_initial_stream_window_size(4 << 20)
            .http2_initial_connection_window_size(8 << 20);
    }
    b.build(http)
}

/// Runs the sender to completion.
pub async fn run(ring: Arc<Ring>, cfg: SendConfig) -> anyhow::Result<Summary> {
    let base = base_uri(&cfg.endpoint)?;
    let grpc = cfg.protocol == Protocol::Grpc;
    let (tp, lp) = if grpc {
        (
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        )
    } else {
        ("/v1/traces", "/v1/logs")
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        traces_uri: format!("{base}{tp}").parse()?,
        logs_uri: format!("{base}{lp}").parse()?,
        ring,
        deadline: start + cfg.duration,
        cfg,
        counters: Counters::default(),
        next: AtomicU64::new(0),
        start,
        refusals: Mutex::new(BTreeMap::new()),
        error_samples: Mutex::new(Vec::new()),
    });
    let connections = shared.cfg.connections.max(1);
    let inflight = shared.cfg.inflight.max(1);
    let mut handles = Vec::new();
    if let (Some(cap), Some(_)) = (shared.cfg.open_loop, shared.cfg.rate) {
        let clients = (0..connections).map(|_| build_client(grpc, inflight)).collect();
        handles.push(tokio::spawn(open_loop(shared.clone(), clients, cap.max(1))));
    } else {
        for c in 0..connections {
            let client = build_client(grpc, inflight);
            for i in 0..inflight {
                let s = shared.clone();
                let client = client.clone();
                handles.push(tokio::spawn(worker(s, client, (c * inflight + i) as u64)));
            }
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn(report(shared.clone(), done.clone()));
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.unwrap_or_default());
    }
    let elapsed = shared.start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    let c = &shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ack = get(&c.ack_spans);
    let cfg = &shared.cfg;
    Ok(Summary {
        mode: "send",
        protocol: cfg.protocol,
        endpoint: base,
        gzip_level: cfg.gzip,
        target_spans_per_sec: cfg.rate,
        connections,
        inflight,
        elapsed_s: stats::round3(elapsed.as_secs_f64()),
        requests: get(&c.requests),
        sent_spans: get(&c.sent_spans),
        acknowledged_spans: ack,
        sent_log_records: get(&c.sent_logs),
        acknowledged_log_records: get(&c.ack_logs),
        refused: get(&c.refused),
        refused_by_status: shared.refusals.lock().map(|m| m.clone()).unwrap_or_default(),
        retries: get(&c.retries),
        errors: get(&c.errors),
        error_samples: shared.error_samples.lock().map(|m| m.clone()).unwrap_or_default(),
        dropped_spans: get(&c.dropped_spans),
        dropped_log_records: get(&c.dropped_logs),
        open_loop: cfg.open_loop.filter(|_| cfg.rate.is_some()).map(|cap| OpenLoop {
            max_inflight: cap,
            unsent_spans: get(&c.unsent_spans),
            peak_inflight: get(&c.max_inflight),
        }),
        spans_per_sec: (ack as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
        request_latency_ms: stats::percentiles(&mut latencies),
        ring_requests: shared.ring.requests.len(),
        ring_spans: shared.ring.spans,
        ring_bytes: shared.ring.bytes,
        truth_file: None,
    })
}

/// The request due next, and when: `None` when the run is over.
fn next_request(s: &Shared) -> Option<(u64, Option<Instant>)> {
    let cfg = &s.cfg;
    let n = s.ring.requests.len() as u64;
    let idx = s.next.fetch_add(1, Ordering::Relaxed);
    if cfg.once && idx >= n {
        return None;
    }
    let before = s.ring.spans_before(idx);
    if cfg.max_spans.is_some_and(|m| before >= m) {
        return None;
    }
    let due = cfg.rate.map(|r| s.start + Duration::from_secs_f64(before as f64 / r));
    // Over at the deadline, also when behind the schedule (a receiver slower than the rate).
    if !cfg.once && (due.unwrap_or_else(Instant::now) >= s.deadline || Instant::now() >= s.deadline) {
        return None;
    }
    Some((idx, due))
}

/// A closed-loop worker: one request at a time, each sent when due (or at once without a rate) and answered
/// before the next.
async fn worker(s: Arc<Shared>, client: HttpClient, seed: u64) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while let Some((idx, due)) = next_request(&s) {
        if let Some(d) = due {
            tokio::time::sleep_until(d).await;
        }
        deliver(&s, &client, idx, &mut rng, &mut lat).await;
    }
    lat
}

/// The open loop: each request leaves at its due time in its own task, whatever happened to the earlier ones
/// (as independent clients do), over `clients` in turn, at most `cap` in flight.
async fn open_loop(s: Arc<Shared>, clients: Vec<HttpClient>, cap: usize) -> Vec<u64> {
    let inflight = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut turn = 0usize;
    while let Some((idx, due)) = next_request(&s) {
        if let Some(d) = due {
            tokio::time::sleep_until(d).await;
        }
        while let Some(done) = tasks.try_join_next() {
            drop(done);
        }
        let req = &s.ring.requests[(idx % s.ring.requests.len() as u64) as usize];
        if inflight.load(Ordering::Relaxed) >= cap as u64 {
            if matches!(req.kind, Kind::Traces) {
                s.counters
                    .unsent_spans
                    .fetch_add(u64::from(req.items), Ordering::Relaxed);
            }
            continue;
        }
        let now = inflight.fetch_add(1, Ordering::Relaxed) + 1;
        s.counters.max_inflight.fetch_max(now, Ordering::Relaxed);
        let Some(client) = clients.get(turn % clients.len().max(1)).cloned() else {
            break;
        };
        turn += 1;
        let (s2, n) = (s.clone(), inflight.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut rng = idx.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            deliver(&s2, &client, idx, &mut rng, &mut lat).await;
            n.fetch_sub(1, Ordering::Relaxed);
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.unwrap_or_default());
    }
    lat
}

/// Sends request `idx` of the ring, retrying retryable refusals and failures with backoff; records the
/// latency of the acknowledged attempt in `lat`.
async fn deliver(s: &Shared, client: &HttpClient, idx: u64, rng: &mut u64, lat: &mut Vec<u64>) {
    let ring = &s.ring;
    let cfg = &s.cfg;
    let n = ring.requests.len() as u64;
    let grpc = cfg.protocol == Protocol::Grpc;
    {
        let req = &ring.requests[(idx % n) as usize];
        let lap = if cfg.fresh_ids { idx / n } else { 0 };
        let stamp = cfg.stamp_every > 0 && idx.is_multiple_of(cfg.stamp_every) && req.has_stamp();
        let (uri, sent, ack, dropped) = match req.kind {
            Kind::Traces => (
                &s.traces_uri,
                &s.counters.sent_spans,
                &s.counters.ack_spans,
                &s.counters.dropped_spans,
            ),
            Kind::Logs => (
                &s.logs_uri,
                &s.counters.sent_logs,
                &s.counters.ack_logs,
                &s.counters.dropped_logs,
            ),
        };
        let items = u64::from(req.items);
        s.counters.requests.fetch_add(1, Ordering::Relaxed);
        sent.fetch_add(items, Ordering::Relaxed);
        let mut attempt = 0u32;
        let mut backoff = cfg.retry_initial;
        loop {
            let body = req.body(lap, ring.period_ns, stamp.then(now_unix_nanos), cfg.gzip, grpc);
            let t0 = Instant::now();
            let wait = match send_once(client, uri, grpc, cfg.gzip.is_some(), body, cfg.timeout).await {
                Outcome::Ok => {
                    lat.push(t0.elapsed().as_nanos() as u64);
                    ack.fetch_add(items, Ordering::Relaxed);
                    break;
                }
                Outcome::Refused { label, retry_after } => {
                    s.counters.refused.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut m) = s.refusals.lock() {
                        *m.entry(label).or_default() += 1;
                    }
                    if attempt >= cfg.max_retries {
                        dropped.fetch_add(items, Ordering::Relaxed);
                        break;
                    }
                    retry_after.unwrap_or(backoff).min(cfg.retry_max)
                }
                Outcome::Failed { message, retryable } => {
                    s.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut v) = s.error_samples.lock()
                        && v.len() < 5
                        && !v.contains(&message)
                    {
                        v.push(message);
                    }
                    if !retryable || attempt >= cfg.max_retries {
                        dropped.fetch_add(items, Ordering::Relaxed);
                        break;
                    }
                    backoff
                }
            };
            // Full jitter on the upper half, as the OpenTelemetry SDKs do.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let f = 0.5 + (*rng >> 11) as f64 / (1u64 << 53) as f64 * 0.5;
            tokio::time::sleep(wait.mul_f64(f)).await;
            s.counters.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            backoff = (backoff * 2).min(cfg.retry_max);
        }
    }
}

async fn send_once(
    client: &HttpClient,
    uri: &Uri,
    grpc: bool,
    compressed: bool,
    body: Bytes,
    timeout: Duration,
) -> Outcome {
    let mut b = HttpRequest::post(uri.clone());
    if grpc {
        b = b.header("content-type", "application/grpc").header("te", "trailers");
        if compressed {
            b = b.header("grpc-encoding", "gzip");
        }
    } else {
        b = b.header("content-type", "application/x-protobuf");
        if compressed {
            b = b.header("content-encoding", "gzip");
        }
    }
    let req = match b.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                message: format!("building the request: {e}"),
                retryable: false,
            };
        }
    };
    let call = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.map_err(|e| error_chain(&e))?;
        let trailers = collected.trailers().cloned();
        Ok::<_, String>((status, headers, trailers, collected.to_bytes()))
    };
    let (status, headers, trailers, body) = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            return Outcome::Failed {
                message: format!("timeout after {timeout:?}"),
                retryable: true,
            };
        }
        Ok(Err(message)) => {
            return Outcome::Failed {
                message,
                retryable: true,
            };
        }
        Ok(Ok(r)) => r,
    };
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if grpc && status == StatusCode::OK {
        let st = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let msg = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        return match st.as_deref() {
            Some("0") => Outcome::Ok,
            Some("8") => Outcome::Refused {
                label: "grpc RESOURCE_EXHAUSTED".into(),
                retry_after: None,
            },
            Some("14") => Outcome::Refused {
                label: "grpc UNAVAILABLE".into(),
                retry_after: None,
            },
            // Retryable per the OTLP specification.
            Some(code @ ("1" | "4" | "10" | "11" | "15")) => Outcome::Failed {
                message: format!("grpc-status {code}: {msg}"),
                retryable: true,
            },
            Some(code) => Outcome::Failed {
                message: format!("grpc-status {code}: {msg}"),
                retryable: false,
            },
            None => Outcome::Failed {
                message: "response without grpc-status".into(),
                retryable: false,
            },
        };
    }
    match status.as_u16() {
        200..=299 => Outcome::Ok,
        code @ (429 | 503) => Outcome::Refused {
            label: format!("http {code}"),
            retry_after,
        },
        code @ (502 | 504) => Outcome::Failed {
            message: format!("http {code}"),
            retryable: true,
        },
        code => Outcome::Failed {
            message: format!("http {code}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
            retryable: false,
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Cumulative counters, as printed by `--stats-interval` (one JSON line on stderr each time).
#[derive(Serialize)]
struct Tick {
    t: f64,
    unix_ms: u64,
    sent_spans: u64,
    acknowledged_spans: u64,
    acknowledged_log_records: u64,
    refused: u64,
    errors: u64,
    dropped_spans: u64,
}

async fn report(s: Arc<Shared>, done: Arc<AtomicBool>) {
    let progress = s.cfg.progress;
    let interval = s.cfg.stats_interval;
    if !progress && interval.is_none() {
        return;
    }
    let step = Duration::from_millis(250);
    let mut next_tick = interval.map(|i| s.start + i);
    let mut last = (s.start, 0u64);
    let total = if s.cfg.once {
        format!("{} spans", s.ring.spans)
    } else {
        format!("{:.0}s", s.cfg.duration.as_secs_f64())
    };
    let mut stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(step).await;
        let now = Instant::now();
        let c = &s.counters;
        let ack = c.ack_spans.load(Ordering::Relaxed);
        if let Some(t) = next_tick
            && now >= t
        {
            let tick = Tick {
                t: stats::round3((now - s.start).as_secs_f64()),
                unix_ms: now_unix_nanos() / 1_000_000,
                sent_spans: c.sent_spans.load(Ordering::Relaxed),
                acknowledged_spans: ack,
                acknowledged_log_records: c.ack_logs.load(Ordering::Relaxed),
                refused: c.refused.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                dropped_spans: c.dropped_spans.load(Ordering::Relaxed),
            };
            if let Ok(line) = serde_json::to_string(&tick) {
                let _ = writeln!(stderr, "{line}");
            }
            next_tick = interval.map(|i| t + i);
        }
        if progress && now - last.0 >= Duration::from_secs(1) {
            let rate = (ack - last.1) as f64 / (now - last.0).as_secs_f64();
            last = (now, ack);
            let line = format!(
                "[{:6.1}s / {total}] acknowledged {} spans, {:.0} spans/s, refused {}, errors {}, dropped {}",
                (now - s.start).as_secs_f64(),
                ack,
                rate,
                c.refused.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.dropped_spans.load(Ordering::Relaxed),
            );
            if tty {
                let _ = write!(stderr, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(stderr, "{line}");
            }
            let _ = stderr.flush();
        }
    }
    if progress && tty {
        let _ = writeln!(stderr);
    }
}
