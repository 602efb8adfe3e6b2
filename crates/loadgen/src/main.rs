//! `bizpilot-loadgen`: sends the shopgen workload (traces, and business events as OTLP logs) over OTLP/gRPC or
//! OTLP/HTTP at a fixed rate or as fast as possible, and `bizpilot-loadgen sink`: an OTLP server that counts what
//! it receives and measures the latency a pipeline adds.
//!
//! ```sh
//! bizpilot-loadgen sink --listen 127.0.0.1:14317 &
//! bizpilot-loadgen --endpoint http://127.0.0.1:4317 --rate 50000 --duration 30s
//! ```
//!
//! Output: one JSON line on stdout at the end (see `send::Summary`, `sink::SinkSummary`); progress and
//! `--stats-interval` lines on stderr.

mod pb;
mod send;
mod sink;
mod stats;
mod workload;

use anyhow::Context;
use bizpilot_core::config::Duration;
use bizpilot_shopgen::ShopConfig;
use bizpilot_shopgen::config::{PaymentOutage, SlowShipping};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use send::{Protocol, SendConfig};

#[derive(Parser)]
#[command(name = "bizpilot-loadgen", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Send the workload (the default command).
    Send(Box<SendArgs>),
    /// Serve OTLP (gRPC and HTTP on one port), count what arrives and measure added latency.
    Sink(SinkArgs),
}

#[derive(Args, Clone)]
struct SendArgs {
    /// Where to send: host:port or http://host:port [default: http://127.0.0.1:4317 for gRPC, :4318 for HTTP].
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Spans per second (business-event log records ride along, uncounted). Absent: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to send (ignored with --truth-file, which sends the whole workload once).
    #[arg(long, default_value = "10s")]
    duration: Duration,
    /// Stop after this many spans (rounded up to whole requests).
    #[arg(long)]
    spans: Option<u64>,
    /// Connections (HTTP/2 for gRPC).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 2)]
    inflight: usize,
    /// Spans (log records) per export request.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Compress requests with gzip.
    #[arg(long)]
    gzip: bool,
    /// gzip level with --gzip.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    gzip_level: u32,
    /// Traces only: do not send business events as OTLP logs.
    #[arg(long)]
    no_logs: bool,
    /// Spans pre-generated into the ring of requests (repeated, with fresh ids and times, for long runs).
    #[arg(long, default_value_t = 65_536)]
    ring_spans: u64,
    /// Replay the ring unchanged instead of rewriting trace/span ids and times on each lap.
    #[arg(long)]
    no_fresh_ids: bool,
    /// Stamp every n-th trace request with its send time (resource attribute `loadgen.sent_unix_nano`) for the
    /// sink's added-latency measurement; 0 = never. Stamping copies the request (and compresses it again with
    /// --gzip).
    #[arg(long, default_value_t = 1)]
    stamp_every: u64,
    /// Limit of one export attempt.
    #[arg(long, default_value = "10s")]
    timeout: Duration,
    /// Retries of a refused or failed (retryable) request before it is dropped.
    #[arg(long, default_value_t = 10)]
    max_retries: u32,
    /// First retry backoff (doubles, with jitter, up to --retry-max; HTTP Retry-After is honoured).
    #[arg(long, default_value = "50ms")]
    retry_initial: Duration,
    #[arg(long, default_value = "2s")]
    retry_max: Duration,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Print cumulative counters as a JSON line on stderr at this interval.
    #[arg(long)]
    stats_interval: Option<Duration>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// With --rate: shape the workload so that its event time advances as fast as the wall clock, as live
    /// traffic's does: the shop's checkout rate (and customers) are scaled so that it emits --rate spans per
    /// simulated second, and its first minute (the warm-up) is left out. Without it, event time advances by
    /// the ring's simulated period on every lap, however fast the laps go.
    #[arg(long)]
    realtime: bool,
    /// Open loop (with --rate): every request leaves at its scheduled time whether or not earlier ones were
    /// answered, as independent clients do, at most N in flight (a request due while N are in flight is not sent,
    /// counted as `unsent_spans`). Without it: closed loop, --connections × --inflight requests at most.
    #[arg(long, value_name = "N")]
    open_loop: Option<usize>,

    // --- the workload (shopgen) ---
    /// Base shop config (YAML, shopgen's `ShopConfig`); the flags below override it.
    #[arg(long)]
    shop_config: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated checkout sessions per second (the workload's shape, not the send rate).
    #[arg(long)]
    orders_per_sec: Option<f64>,
    /// Simulated duration in which sessions start [default: 10m with --truth-file, else long enough to fill
    /// the ring].
    #[arg(long)]
    shop_duration: Option<Duration>,
    /// Payment outage window in simulated time, START-END[:PROBABILITY], e.g. `2m-4m:0.9` (repeatable).
    #[arg(long)]
    payment_outage: Vec<String>,
    /// Slow shipping from START[-END] (simulated), e.g. `5m-10m`.
    #[arg(long)]
    slow_shipping: Option<String>,
    /// Probability that a customer retries a failed checkout.
    #[arg(long)]
    retry_probability: Option<f64>,
    /// Probability that a trace is delivered twice.
    #[arg(long)]
    duplicates: Option<f64>,
    /// Probability that an emission arrives late (minutes).
    #[arg(long)]
    late: Option<f64>,
    /// Probability that an emission arrives out of order (seconds).
    #[arg(long)]
    out_of_order: Option<f64>,
    /// Probability that a business event arrives after its spans.
    #[arg(long)]
    events_after_spans: Option<f64>,
    /// Generate the whole workload, send it exactly once and write shopgen's ground truth to this file.
    #[arg(long)]
    truth_file: Option<PathBuf>,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (gRPC and HTTP on the same port).
    #[arg(long, default_value = "127.0.0.1:14317")]
    listen: SocketAddr,
    /// Exit (printing the summary) once this many spans have arrived.
    #[arg(long)]
    expect: Option<u64>,
    /// Refuse every n-th export with a retryable status (gRPC UNAVAILABLE, HTTP 503).
    #[arg(long)]
    refuse_every: Option<u64>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Command::Sink(a)) => run_sink(a),
        Some(Command::Send(a)) => run_send(*a),
        None => run_send(cli.send),
    };
    if let Err(e) = r {
        eprintln!("bizpilot-loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

/// `START-END` (simulated offsets) with an optional `:PROBABILITY`.
fn parse_window(s: &str) -> anyhow::Result<(Duration, Option<Duration>, Option<f64>)> {
    let (range, p) = match s.split_once(':') {
        Some((r, p)) => (
            r,
            Some(p.parse::<f64>().with_context(|| format!("probability in {s:?}"))?),
        ),
        None => (s, None),
    };
    let (a, b) = match range.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (range, None),
    };
    let start: Duration = a.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let end = match b {
        Some(b) => Some(b.parse::<Duration>().map_err(|e: String| anyhow::anyhow!(e))?),
        None => None,
    };
    Ok((start, end, p))
}

fn shop_config(a: &SendArgs) -> anyhow::Result<ShopConfig> {
    let mut cfg: ShopConfig = match &a.shop_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => {
            let mut c = ShopConfig {
                orders_per_sec: 20.0,
                customers: 50_000,
                ..Default::default()
            };
            // Fulfilment stages arrive hours later: without --truth-file they would never be reached.
            c.fulfilment.enabled = a.truth_file.is_some();
            c
        }
    };
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(r) = a.orders_per_sec {
        cfg.orders_per_sec = r;
    }
    match a.shop_duration {
        Some(d) => cfg.duration = d,
        None if a.shop_config.is_none() => {
            cfg.duration = if a.truth_file.is_some() {
                Duration::from_secs(600)
            } else {
                Duration::from_secs(24 * 3600)
            }
        }
        None => {}
    }
    for w in &a.payment_outage {
        let (start, end, p) = parse_window(w).with_context(|| format!("--payment-outage {w}"))?;
        cfg.injections.payment_outages.push(PaymentOutage {
            start,
            end: end.ok_or_else(|| anyhow::anyhow!("--payment-outage {w}: expected START-END"))?,
            failure_probability: p.unwrap_or(1.0),
            ..Default::default()
        });
    }
    if let Some(w) = &a.slow_shipping {
        let (start, end, _) = parse_window(w).with_context(|| format!("--slow-shipping {w}"))?;
        cfg.injections.slow_shipping = Some(SlowShipping {
            start,
            end,
            ..Default::default()
        });
    }
    let inj = &mut cfg.injections;
    if let Some(p) = a.retry_probability {
        inj.retries.probability = p;
    }
    if let Some(p) = a.duplicates {
        inj.duplicates.probability = p;
    }
    if let Some(p) = a.late {
        inj.late.probability = p;
    }
    if let Some(p) = a.out_of_order {
        inj.out_of_order.probability = p;
    }
    if let Some(p) = a.events_after_spans {
        inj.events_after_spans.probability = p;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::bail!("invalid shop config: {}", list.join("; "));
    }
    Ok(cfg)
}

fn run_send(a: SendArgs) -> anyhow::Result<()> {
    let shop = shop_config(&a)?;
    let whole = a.truth_file.is_some();
    if whole && a.spans.is_some() {
        anyhow::bail!("--spans cannot be combined with --truth-file (the whole workload is sent)");
    }
    if a.realtime && (whole || a.rate.is_none()) {
        anyhow::bail!("--realtime needs --rate and no --truth-file");
    }
    let t = std::time::Instant::now();
    let mut spec = workload::Spec {
        shop,
        batch_size: a.batch_size.max(1),
        logs: !a.no_logs,
        ring_spans: a.ring_spans.max(1),
        whole,
        stamp: a.stamp_every > 0,
        skip_ns: if a.realtime { 60_000_000_000 } else { 0 },
    };
    let (mut ring, mut truth) = workload::build(&spec)?;
    if let (true, Some(rate)) = (a.realtime, a.rate) {
        // Spans per simulated second at the configured checkout rate, then the shop scaled to `rate` of them.
        let per_sim_s = ring.spans as f64 / (ring.period_ns as f64 / 1e9);
        let factor = rate / per_sim_s.max(1e-9);
        spec.shop.orders_per_sec *= factor;
        // Customers well above sessions/s × session length (about 30 s), as shopgen asks.
        spec.shop.customers = spec
            .shop
            .customers
            .max((spec.shop.orders_per_sec * 100.0).min(f64::from(u32::MAX)) as u32);
        (ring, truth) = workload::build(&spec)?;
        // Each lap is shifted by its duration at `rate`, so event time follows the send schedule exactly.
        ring.period_ns = (ring.spans as f64 / rate * 1e9).max(1.0) as u64;
        eprintln!(
            "bizpilot-loadgen: realtime: {:.1} checkout sessions/s, {} customers; a lap of the ring is {:.2} s of \
             event time ({:.0} spans per second of event time)",
            spec.shop.orders_per_sec,
            spec.shop.customers,
            ring.period_ns as f64 / 1e9,
            ring.spans as f64 / (ring.period_ns as f64 / 1e9)
        );
    }
    eprintln!(
        "bizpilot-loadgen: {} requests ({} spans, {} log records, {:.1} MB) generated in {:.2}s",
        ring.requests.len(),
        ring.spans,
        ring.log_records,
        ring.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    if let (Some(path), Some(truth)) = (&a.truth_file, &truth) {
        std::fs::write(path, truth.to_json()).with_context(|| format!("writing {}", path.display()))?;
    }
    let endpoint = a.endpoint.clone().unwrap_or_else(|| match a.protocol {
        Protocol::Grpc => "http://127.0.0.1:4317".into(),
        Protocol::Http => "http://127.0.0.1:4318".into(),
    });
    if let Some(r) = a.rate
        && !(r.is_finite() && r > 0.0)
    {
        anyhow::bail!("--rate must be > 0");
    }
    let long = whole || a.duration.get() >= std::time::Duration::from_secs(5);
    let cfg = SendConfig {
        endpoint,
        protocol: a.protocol,
        rate: a.rate,
        duration: a.duration.get(),
        max_spans: a.spans,
        once: whole,
        connections: a.connections,
        inflight: a.inflight,
        gzip: a.gzip.then_some(a.gzip_level),
        fresh_ids: !a.no_fresh_ids,
        stamp_every: a.stamp_every,
        timeout: a.timeout.get(),
        max_retries: a.max_retries,
        retry_initial: a.retry_initial.get(),
        retry_max: a.retry_max.get(),
        progress: a.progress || (long && std::io::stderr().is_terminal()),
        stats_interval: a.stats_interval.map(Duration::get).filter(|d| !d.is_zero()),
        open_loop: a.open_loop,
    };
    let rt = runtime(a.threads)?;
    let mut summary = rt.block_on(send::run(Arc::new(ring), cfg))?;
    summary.truth_file = a.truth_file.as_ref().map(|p| p.display().to_string());
    if whole && (summary.dropped_spans > 0 || summary.dropped_log_records > 0) {
        eprintln!(
            "bizpilot-loadgen: warning: {} spans and {} log records were dropped; the truth file covers the whole \
             workload",
            summary.dropped_spans, summary.dropped_log_records
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn run_sink(a: SinkArgs) -> anyhow::Result<()> {
    let rt = runtime(a.threads)?;
    rt.block_on(async move {
        let s = sink::Sink::new(sink::SinkConfig {
            expect: a.expect,
            refuse_every: a.refuse_every,
        });
        let addr = sink::serve(a.listen, s.clone()).await?;
        eprintln!("bizpilot-loadgen sink: listening on {addr} (OTLP gRPC and HTTP)");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = s.done.notified() => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!("{}", serde_json::to_string(&s.summary())?);
        Ok::<_, anyhow::Error>(())
    })?;
    // Do not wait for open connections.
    rt.shutdown_background();
    Ok(())
}
