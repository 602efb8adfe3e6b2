//! The cost of `order_kpi`'s checkpoint at large open-order counts (issue #17, `docs/durable-state.md`).
//!
//! ```text
//! cargo build --release -p bizpilot-connectors --example kpi_snapshot
//! ./target/release/examples/kpi_snapshot 1000 100000 1000000
//! ```
//!
//! For each count N it builds an engine (the shipped `pipelines/order-kpi.yaml` configuration: placed → paid →
//! shipped → delivered, 24 h deadline; evaluations hourly here to keep the build of a million orders short) holding
//! about N open orders, by feeding it a shop's business events and spans in event-time order, in requests of 1,000
//! records: orders placed over 20 hours, each with a customer, tier, amount and currency; 90 % paid 1–30 min later
//! (a `payment` span, 3 % failed), 60 % of those shipped 1–8 h later (a `shipping` span), and those shipped early enough
//! delivered 4–12 h after shipping, within the window (those close; their ids are remembered for `closed_memory`).
//! Then it reports:
//!
//! - **stall**: the time the stage's thread is held by a checkpoint: taking the snapshot's copy
//!   ([`Engine::snapshot_copy`]);
//! - **encode**: encoding that copy (on another thread in the connector), and its bytes per open order (what is
//!   written to the store per checkpoint);
//! - **restore**: a new engine restoring from the bytes (decode + rebuild), and per million open orders;
//! - **copy-on-write**: the next 20 requests' time while the copy is alive (the encoding in flight: shards written
//!   to are copied), against the 20 after it was dropped, and one evaluation (every open order updated) with a
//!   copy alive and without.

use std::collections::BinaryHeap;
use std::time::Instant;

use bizpilot_connectors::kpi::{Compiled, Engine, OrderKpiConfig};
use bizpilot_core::config::Duration;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode};

const SEC: u64 = 1_000_000_000;
const H: u64 = 3600 * SEC;
const START: u64 = 1_767_225_600 * SEC; // 2026-01-01T00:00:00Z
const WINDOW: u64 = 20 * H;

fn config() -> OrderKpiConfig {
    let mut cfg = OrderKpiConfig::default();
    cfg.prediction.threshold = 0.93;
    cfg.evaluation_interval = Duration::from_secs(3600);
    cfg.metrics_interval = Duration::from_secs(3600);
    cfg.health.window = Duration::from_secs(3600);
    cfg
}

fn engine() -> Engine {
    Engine::new(Compiled::new(&config(), |id| Err(format!("no extension {id}"))).expect("valid config"))
}

fn mix(i: u64, salt: u64) -> u64 {
    let mut x = i.wrapping_add(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn order_id(i: u64) -> String {
    // shopgen-like: a UUID's shape.
    let a = mix(i, 1);
    let b = mix(i, 2);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        a & 0xffff,
        (a >> 16) & 0xfff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// What happens to order `i` when: `(time, kind)`, kind 0–3 a stage's event, 4 the payment span, 5 the shipping
/// span.
fn timeline(i: u64, orders: u64) -> Vec<(u64, u8)> {
    let placed = START + i * (WINDOW / orders.max(1));
    let h = mix(i, 3);
    let mut v = vec![(placed, 0)];
    if h % 10 == 9 {
        return v; // not paid (yet)
    }
    let paid = placed + 60 * SEC + (h >> 8) % (29 * 60) * SEC;
    v.push((paid - SEC, 4));
    v.push((paid, 1));
    if (h >> 20) % 10 >= 6 {
        return v;
    }
    let shipped = paid + H + (h >> 28) % (7 * 3600) * SEC;
    v.push((shipped - SEC, 5));
    v.push((shipped, 2));
    let delivered = shipped + 4 * H + (h >> 48) % (8 * 3600) * SEC;
    if delivered < START + WINDOW {
        v.push((delivered, 3));
    }
    v
}

const EVENTS: [&str; 4] = ["order.placed", "order.paid", "order.shipped", "order.delivered"];
const TIERS: [&str; 3] = ["standard", "gold", "platinum"];

fn event(i: u64, kind: u8, t: u64) -> LogRecord {
    let h = mix(i, 4);
    LogRecord {
        time_unix_nano: t,
        event_name: EVENTS[kind as usize].into(),
        attributes: vec![
            kv("order.id", Value::StringValue(order_id(i))),
            kv("customer.id", Value::StringValue(format!("cust-{:06}", h % 200_000))),
            kv(
                "customer.tier",
                Value::StringValue(TIERS[(h >> 20) as usize % 3].into()),
            ),
            kv(
                "order.amount",
                Value::StringValue(format!("{}.{:02}", 5 + (h >> 24) % 500, (h >> 40) % 100)),
            ),
            kv("order.currency", Value::StringValue("USD".into())),
            kv("order.items", Value::IntValue(1 + (h >> 48) as i64 % 5)),
        ],
        ..Default::default()
    }
}

fn span(i: u64, kind: u8, t: u64) -> (String, Span) {
    let h = mix(i, 5 + u64::from(kind));
    let failed = kind == 4 && h % 100 < 3;
    let mut trace_id = mix(i, 7).to_le_bytes().to_vec();
    trace_id.extend(mix(i, 8).to_le_bytes());
    let svc = if kind == 4 { "payment" } else { "shipping" };
    (
        svc.into(),
        Span {
            trace_id,
            span_id: h.to_le_bytes().to_vec(),
            name: if kind == 4 { "Charge".into() } else { "ShipOrder".into() },
            start_time_unix_nano: t - 20_000_000,
            end_time_unix_nano: t,
            attributes: vec![kv("business.order.id", Value::StringValue(order_id(i)))],
            status: failed.then(|| Status {
                code: StatusCode::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// The shop's records in event-time order, in requests of about 1,000 records.
struct Feed {
    heap: BinaryHeap<std::cmp::Reverse<(u64, u64, u8)>>,
    last: u64,
}

impl Feed {
    fn new(orders: u64) -> Feed {
        let mut heap = BinaryHeap::new();
        for i in 0..orders {
            for (t, k) in timeline(i, orders) {
                heap.push(std::cmp::Reverse((t, i, k)));
            }
        }
        Feed { heap, last: START }
    }

    /// Feeds the next request (logs and traces); false at the end.
    fn step(&mut self, e: &mut Engine) -> bool {
        let mut logs = Vec::new();
        let mut spans: Vec<(String, Span)> = Vec::new();
        while logs.len() + spans.len() < 1000 {
            let Some(std::cmp::Reverse((t, i, k))) = self.heap.pop() else {
                break;
            };
            self.last = t;
            if k < 4 {
                logs.push(event(i, k, t));
            } else {
                spans.push(span(i, k, t));
            }
        }
        if logs.is_empty() && spans.is_empty() {
            return false;
        }
        e.ingest_logs(&ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: logs,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        let mut rs = Vec::new();
        for svc in ["payment", "shipping"] {
            let s: Vec<Span> = spans.iter().filter(|(n, _)| n == svc).map(|(_, s)| s.clone()).collect();
            if s.is_empty() {
                continue;
            }
            rs.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue(svc.into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: s,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        e.ingest_traces(&ExportTraceServiceRequest { resource_spans: rs });
        e.advance();
        let _ = e.take_logs();
        let _ = e.take_metrics();
        true
    }
}

/// Feeds order `i`'s placement at `t`, an hour past the data: the watermark passes the next hourly evaluation.
fn evaluate(e: &mut Engine, t: u64, i: u64) {
    e.ingest_logs(&ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![event(i, 0, t)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    e.advance();
    let _ = e.take_logs();
    let _ = e.take_metrics();
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `n` requests: (mean, max) ms.
fn timed_steps(feed: &mut Feed, e: &mut Engine, n: usize) -> (f64, f64) {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        if !feed.step(e) {
            break;
        }
        v.push(ms(t.elapsed()));
    }
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (mean, v.iter().copied().fold(0.0, f64::max))
}

fn run(n: u64) {
    // About 80 % of the orders placed stay open (not delivered in the window): place enough for `n` open.
    let placed = n * 5 / 4;
    let t = Instant::now();
    let mut e = engine();
    let mut feed = Feed::new(placed);
    // Keep up to 60 requests back for the copy-on-write figures.
    let keep = (60 * 1000).min(feed.heap.len() / 4);
    while feed.heap.len() > keep && feed.step(&mut e) {}
    let built = t.elapsed();
    let open = e.open_orders();
    let (closed, orphans) = e.remembered();
    println!(
        "N={n}: {open} open orders, {closed} closed ids, {orphans} orphans, {} pending items, model {} KiB; built in {:.1} s",
        e.pending(),
        e.model_bytes() / 1024,
        built.as_secs_f64()
    );

    // Five checkpoints (the machine is shared: the least of each figure is the one least disturbed).
    let mut bytes = Vec::new();
    let mut v1_bytes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let copy = e.snapshot_copy().expect("copies");
        let stall = t.elapsed();
        let t = Instant::now();
        bytes = copy.encode().expect("encodes");
        let encode = t.elapsed();
        // Before: format 1 (CBOR) encoded on the stage thread.
        let t = Instant::now();
        let v1 = e.snapshot_format_1().expect("encodes");
        let before = t.elapsed();
        println!(
            "  stall (copy on the stage thread) {:.3} ms; encode (another thread) {:.1} ms; {} bytes = {:.1} B per open order | before: format 1 encoded on the stage thread {:.1} ms, {} bytes = {:.1} B per open order",
            ms(stall),
            ms(encode),
            bytes.len(),
            bytes.len() as f64 / open.max(1) as f64,
            ms(before),
            v1.len(),
            v1.len() as f64 / open.max(1) as f64
        );
        v1_bytes = v1;
    }
    // A restore into a new engine, timed (the engine's drop is not).
    let restore_of = |snapshot: &[u8]| {
        let t = Instant::now();
        let mut r = engine();
        r.restore(snapshot).expect("restores");
        let took = t.elapsed();
        assert_eq!(r.open_orders(), open, "the restored engine holds the same open orders");
        took
    };
    let restore = restore_of(&bytes);
    let restore_v1 = restore_of(&v1_bytes);
    println!(
        "  restore (decode + rebuild) {:.1} ms = {:.2} s per million open orders | before (format 1) {:.1} ms = {:.2} s per million",
        ms(restore),
        restore.as_secs_f64() / open.max(1) as f64 * 1e6,
        ms(restore_v1),
        restore_v1.as_secs_f64() / open.max(1) as f64 * 1e6
    );

    // Copy-on-write: requests while a copy is alive, then without.
    let copy = e.snapshot_copy().expect("copies");
    let (with_mean, with_max) = timed_steps(&mut feed, &mut e, 20);
    drop(copy);
    let (without_mean, without_max) = timed_steps(&mut feed, &mut e, 20);
    println!(
        "  requests of 1,000 records: with a copy alive mean {with_mean:.2} ms, max {with_max:.2} ms; without mean {without_mean:.2} ms, max {without_max:.2} ms"
    );
    // An evaluation (every open order updated): jump the watermark past the next hour with and without a copy.
    let copy = e.snapshot_copy().expect("copies");
    let t = Instant::now();
    evaluate(&mut e, feed.last + H, u64::MAX);
    let with_eval = t.elapsed();
    drop(copy);
    let t = Instant::now();
    evaluate(&mut e, feed.last + 2 * H, u64::MAX - 1);
    let without_eval = t.elapsed();
    println!(
        "  an evaluation of every open order: with a copy alive {:.1} ms, without {:.1} ms",
        ms(with_eval),
        ms(without_eval)
    );
}

fn main() {
    let counts: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.replace('_', "").parse().expect("a count of open orders"))
        .collect();
    let counts = if counts.is_empty() { vec![1000, 100_000] } else { counts };
    for n in counts {
        run(n);
    }
}
