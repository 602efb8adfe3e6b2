//! End to end: business impact scaled out over Kafka, all real `bizpilot` processes against a real
//! Kafka-protocol broker (tansu, see `kafka_harness.rs`).
//!
//! A sidecar (`pipelines/sidecar-kafka.yaml` in its order-affinity variant) receives a generated shop workload with a payment outage over
//! OTLP/HTTP and writes its spans and business events to `shop.spans` and `shop.orders`, both keyed by order id and
//! with the same number of partitions. Two gateways (`pipelines/gateway-kafka.yaml`) consume both topics as one
//! consumer group; a third gateway, alone in another group, is the single-instance reference on the same data.
//!
//! 1. **Steady state.** Each gateway holds the same partition numbers of both topics. Summed over the two gateways
//!    (their `/api/v1/impact` APIs and Prometheus endpoints), operations by outcome and tier and revenue equal the
//!    reference's, which equals the ground truth in full. Revenue at risk, recovered and lost revenue and the
//!    distinct affected customers are keyed by customer, not by order: they equal the ground truth's definitions
//!    applied to each gateway's share of the orders, summed — a customer whose orders hash to partitions of both
//!    gateways is counted by both (docs/deployment.md). The value of every failed checkout came from the business
//!    event in the same gateway (no join miss).
//! 2. **Handover.** One gateway gets SIGTERM while a second workload streams in; the other takes its partitions
//!    over. Every span and business event is consumed at least once; each process counted exactly the operations
//!    and revenue of the spans it consumed (the stopped one's last figures reach its OTLP backend at shutdown), so
//!    the two add up to the ground truth plus exactly what both consumed.
//!
//! A second test checks the **fleet figures** (`docs/fleet.md`): two, then three gateways in one group, one of them
//! SIGKILLed mid-stream during a payment outage; every surviving gateway's `business_impact/fleet` equals the
//! single-process ground truth exactly — distinct affected customers, revenue at risk, recovered and lost to the
//! cent — and has the single process's incidents (one per outage and operation).

mod common;
#[path = "common/kafka_gateways.rs"]
mod kafka_gateways;
#[path = "kafka_harness.rs"]
mod kafka_harness;
#[path = "common/shop_impact.rs"]
mod shop_impact;

use bizpilot_business::attrs;
use bizpilot_core::{Currency, Money};
use bizpilot_shopgen::truth::{OperationOutcome, revenue_at_risk};
use bizpilot_shopgen::{Emission, Shop, ShopConfig, Tier, Workload, pack_events, pack_traces, spans::names};
use common::{Bizpilot, Received, json_get, metric_sum};
use kafka_gateways::{Gateway, fleet_topic};
use kafka_harness::{Tansu, create_topics, read_topic, receiver_assignments};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use prost::Message;
use shop_impact::{Figures, impact_figures, post, start_sidecar, truth_figures};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SEC: u64 = 1_000_000_000;
/// W: the connector's `dedup_window` and the workload's `impact_window`.
const W: u64 = 3600 * SEC;
const PARTITIONS: i32 = 4;
const START: u64 = 1_735_689_600 * SEC;
const OPERATIONS: [&str; 2] = ["checkout", "payment"];

/// Test settings over the shipped gateway pipeline.
const GATEWAY_OVERLAY: &str = r#"
connectors:
  business_impact:
    # Minutes of shop go by in seconds here: nothing is late within the hour, and the figures are final once a
    # gateway saw no span for 20 s (longer than a rebalance pauses it: up to join.window for the spans held in the
    # join, plus the group's heartbeat and rejoin).
    allowed_lateness: 1h
    idle_timeout: 20s
    metrics_flush_interval: 200ms
# A SIGKILLed member stays in tansu's group until a rebalance it does not rejoin within its rebalance timeout
# (`max.poll.interval.ms`, 300 s by default; tansu does not expire it by `session.timeout.ms` alone): 15 s here, so
# the replacement's rebalance hands the dead member's partitions over (as in `gateway_durable_e2e`).
receivers:
  kafka/spans: {commit_interval: 200ms, librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/events: {commit_interval: 200ms, librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/logs: {librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/metrics: {librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
service:
  pipelines:
    # For the test's bookkeeping, the business events a gateway consumed and its business metrics also go to its
    # OTLP backend (the metrics of a stopped gateway: its last figures, flushed at shutdown).
    logs/events:
      exporters: [business_events, otlp/backend]
    metrics/business:
      exporters: [prometheus, otlp/backend]
"#;

fn workload(seed: u64, start: u64, duration: &str, outage: (&str, &str)) -> Workload {
    let cfg: ShopConfig = serde_yaml::from_str(&format!(
        r#"
seed: {seed}
start_unix_nano: {start}
duration: {duration}
orders_per_sec: 2
customers: 400
browse_traces: {{min: 0, max: 1}}
add_item_traces: false
impact_window: 1h
fulfilment: {{enabled: false}}
injections:
  payment_outages:
    - {{start: {}, end: {}, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 2s}}
  retries: {{probability: 0.7, delay: {{min: 10s, max: 2m}}, max_attempts: 3}}
  duplicates: {{probability: 0.03, max_delay: 5s}}
  late: {{probability: 0.02, delay: {{min: 1m, max: 3m}}}}
  out_of_order: {{probability: 0.1, max_delay: 10s}}
  events_after_spans: {{probability: 0.2, delay: {{min: 100ms, max: 10s}}}}
"#,
        outage.0, outage.1
    ))
    .unwrap();
    Shop::generate(&cfg).unwrap()
}

type SpanId = (Vec<u8>, Vec<u8>);

/// A business operation span of a workload: PlaceOrder (`checkout`) or Charge (`payment`).
#[derive(Debug, Clone)]
struct Op {
    operation: &'static str,
    customer: String,
    order: String,
    time: u64,
    success: bool,
    id: SpanId,
}

fn operation_of(span_name: &str) -> Option<&'static str> {
    match span_name {
        names::PLACE_ORDER => Some("checkout"),
        names::CHARGE => Some("payment"),
        _ => None,
    }
}

/// The operation spans of a workload, duplicates included.
fn operations(w: &Workload) -> Vec<Op> {
    let mut out = Vec::new();
    for t in w.traces() {
        for (_, s) in t.decode_spans() {
            let Some(operation) = operation_of(&s.name) else {
                continue;
            };
            let get = |k: &str| {
                attrs::get_string(&s.attributes, k)
                    .map(|v| v.into_owned())
                    .unwrap_or_default()
            };
            out.push(Op {
                operation,
                customer: get("user.id"),
                order: get("demo.order.id"),
                time: s.end_time_unix_nano,
                success: s.status.as_ref().is_none_or(|st| st.code != 2),
                id: (s.trace_id.clone(), s.span_id.clone()),
            });
        }
    }
    out
}

/// Every span id of a workload.
fn all_span_ids(w: &Workload) -> HashSet<SpanId> {
    w.traces()
        .flat_map(|t| t.decode_spans())
        .map(|(_, s)| (s.trace_id, s.span_id))
        .collect()
}

/// Every business event of a workload: (order id, type, time).
fn all_events(w: &Workload) -> HashSet<(String, String, u64)> {
    w.events()
        .map(|e| (e.order_id.clone(), e.event_type.as_str().to_string(), e.time_unix_nano))
        .collect()
}

/// Order id → order value (every event of an order carries it).
fn order_values(w: &Workload) -> HashMap<String, Money> {
    w.events().map(|e| (e.order_id.clone(), e.amount)).collect()
}

fn add(a: Money, b: Money) -> Money {
    a.checked_add(b).expect("USD amounts")
}

fn usd_zero() -> Money {
    Money::zero(Currency::USD)
}

impl Figures {
    fn plus(&self, o: &Figures) -> Figures {
        let mut affected = self.affected.clone();
        for (w, n) in &o.affected {
            *affected.entry(*w).or_default() += n;
        }
        Figures {
            operations: self.operations + o.operations,
            successful: self.successful + o.successful,
            failed: self.failed + o.failed,
            revenue: add(self.revenue, o.revenue),
            at_risk: add(self.at_risk, o.at_risk),
            recovered: add(self.recovered, o.recovered),
            lost: add(self.lost, o.lost),
            affected,
        }
    }

    /// What adds up across instances whatever the keys: operations by outcome, revenue.
    fn additive(&self) -> (u64, u64, u64, Money) {
        (self.operations, self.successful, self.failed, self.revenue)
    }
}

/// The ground truth's definitions (`bizpilot_shopgen::truth`) applied to `ops`: figures of one instance that sees
/// exactly these operations.
fn model(ops: &[&Op], values: &HashMap<String, Money>) -> Figures {
    let mut seen = HashSet::new();
    let unique: Vec<&Op> = ops.iter().copied().filter(|o| seen.insert(o.id.clone())).collect();
    let outcomes: Vec<OperationOutcome> = unique
        .iter()
        .map(|o| OperationOutcome {
            key: o.customer.clone(),
            time_unix_nano: o.time,
            success: o.success,
            value: values[&o.order],
            span: None,
        })
        .collect();
    let risk = revenue_at_risk(&outcomes, W, Currency::USD);
    let mut affected: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for o in unique.iter().filter(|o| !o.success) {
        affected.entry(o.time / W * W).or_default().insert(&o.customer);
    }
    let successful = unique.iter().filter(|o| o.success).count() as u64;
    Figures {
        operations: unique.len() as u64,
        successful,
        failed: unique.len() as u64 - successful,
        revenue: risk.revenue,
        at_risk: risk.at_risk,
        recovered: risk.recovered,
        lost: risk.lost,
        affected: affected.into_iter().map(|(w, c)| (w, c.len() as u64)).collect(),
    }
}

/// The figures of `operation` from a gateway's `/api/v1/impact` (its own `business_impact`).
fn api_figures(b: &Bizpilot, operation: &str) -> Figures {
    impact_figures(b, "business_impact", operation)
}

/// Sends emissions in arrival order to the sidecar, in chunks (each chunk's business events, then its traces),
/// pausing `pause` after each chunk.
fn send(addr: SocketAddr, emissions: &[Emission], pause: Duration) {
    for chunk in emissions.chunks(300) {
        for req in pack_events(chunk.iter().filter_map(Emission::as_event), 10_000) {
            post(addr, "/v1/logs", &req.encode_to_vec());
        }
        for req in pack_traces(chunk.iter().filter_map(Emission::as_trace), 10_000) {
            post(addr, "/v1/traces", &req.encode_to_vec());
        }
        std::thread::sleep(pause);
    }
}

/// A gateway process with its OTLP backend and business-metrics port.
fn start_gateway(rt: &tokio::runtime::Runtime, name: &'static str, group: &str, brokers: &str) -> Gateway {
    kafka_gateways::start_gateway(rt, name, group, brokers, GATEWAY_OVERLAY)
}

fn wait_aligned(gateways: &[&Gateway], timeout: Duration) -> Vec<BTreeSet<i32>> {
    kafka_gateways::wait_aligned(gateways, PARTITIONS, timeout)
}

/// How many assignments the two group receivers of a gateway logged so far (a rebalance adds to it).
fn assignments_so_far(g: &Gateway) -> usize {
    let a = receiver_assignments(&g.bp.logs());
    ["kafka/spans", "kafka/events"]
        .iter()
        .map(|r| a.get(*r).map_or(0, |(_, n)| *n))
        .sum()
}

fn scrape(addr: SocketAddr) -> String {
    common::http_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

/// `business_operations_total` of a scrape for `operation`, `outcome` and `tier` (`None`: all).
fn scraped_operations(text: &str, operation: &str, outcome: Option<&str>, tier: Option<Tier>) -> f64 {
    let op = format!("operation=\"{operation}\"");
    let out = outcome.map(|o| format!("outcome=\"{o}\""));
    let tier = tier.map(|t| format!("customer_tier=\"{}\"", t.as_str()));
    let filters: Vec<&str> = [Some(op.as_str()), out.as_deref(), tier.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    metric_sum(text, "business_operations_total", &filters)
}

/// Unique spans an OTLP backend received.
fn received_span_ids(r: &Received) -> HashSet<SpanId> {
    r.spans().into_iter().map(|s| (s.trace_id, s.span_id)).collect()
}

/// Unique operation spans an OTLP backend received: id → (operation, success, order id).
fn received_operations(r: &Received) -> HashMap<SpanId, (&'static str, bool, String)> {
    r.spans()
        .into_iter()
        .filter_map(|s| {
            let op = operation_of(&s.name)?;
            let order = attrs::get_string(&s.attributes, "business.order.id")?.into_owned();
            let ok = s.status.as_ref().is_none_or(|st| st.code != 2);
            Some(((s.trace_id, s.span_id), (op, ok, order)))
        })
        .collect()
}

/// Business events a gateway consumed from `shop.orders` (log records of the `kafka` receiver's business decoder),
/// as they reached its OTLP backend: (order id, type, time).
fn received_events(r: &Received) -> HashSet<(String, String, u64)> {
    let mapping = bizpilot_business::EventMapping::default();
    r.logs
        .iter()
        .flat_map(|l| &l.resource_logs)
        .flat_map(|l| &l.scope_logs)
        .filter(|s| s.scope.as_ref().is_some_and(|sc| sc.name == "bizpilot.kafka"))
        .flat_map(|s| &s.log_records)
        .filter_map(|l| mapping.parse(l).ok().flatten())
        .map(|e| (e.order_id.unwrap_or_default(), e.name.to_string(), e.time_unix_nano))
        .collect()
}

/// A metric series of one process: (start time, sorted attributes).
type Series = (u64, Vec<(String, String)>);

/// The latest value of every series of the OTLP metric `name` at a backend.
fn last_values(r: &Received, name: &str) -> BTreeMap<Series, f64> {
    let mut latest: BTreeMap<Series, (u64, f64)> = BTreeMap::new();
    for m in r
        .metrics
        .iter()
        .flat_map(|m| &m.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == name)
    {
        let Some(Data::Sum(sum)) = &m.data else { continue };
        for p in &sum.data_points {
            let mut labels: Vec<(String, String)> = p
                .attributes
                .iter()
                .map(|kv| {
                    let v = attrs::get_string(std::slice::from_ref(kv), &kv.key).unwrap_or_default();
                    (kv.key.clone(), v.into_owned())
                })
                .collect();
            labels.sort();
            let v = match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => continue,
            };
            let e = latest
                .entry((p.start_time_unix_nano, labels))
                .or_insert((p.time_unix_nano, v));
            if p.time_unix_nano >= e.0 {
                *e = (p.time_unix_nano, v);
            }
        }
    }
    latest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Sum of the latest values whose attributes include every `filter`; and how many processes (start times) reported.
fn otlp_sum(values: &BTreeMap<Series, f64>, filter: &[(&str, &str)]) -> (f64, usize) {
    let mut starts = BTreeSet::new();
    let mut sum = 0.0;
    for ((start, labels), v) in values {
        if filter
            .iter()
            .all(|(k, want)| labels.iter().any(|(lk, lv)| lk == k && lv == want))
        {
            starts.insert(*start);
            sum += v;
        }
    }
    (sum, starts.len())
}

/// Whether `seen` is the order id `raw` as the sidecar's redaction left it: equal, or with runs of digits, dashes
/// and spaces (which its `credit_card` pattern takes for a card number) replaced by `****`.
fn masked_eq(raw: &str, seen: &str) -> bool {
    fn go(raw: &str, parts: &[&str]) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return raw.is_empty();
        };
        let Some(after) = raw.strip_prefix(first) else {
            return false;
        };
        if rest.is_empty() {
            return after.is_empty();
        }
        let run = after
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-' || *b == b' ')
            .count();
        (1..=run).any(|n| go(&after[n..], rest))
    }
    let parts: Vec<&str> = seen.split("****").collect();
    go(raw, &parts)
}

fn cents(m: Money) -> i128 {
    m.to_minor_rounded()
}

/// The tests of this file run one at a time: each runs a broker and five or six `bizpilot` processes, and two such
/// runs at once on a small machine starve the broker (a consumer then reads only part of a topic in time).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn gateways_in_one_consumer_group_add_up_to_one_and_survive_a_handover() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let w1 = workload(41, START, "8m", ("1m", "6m"));
    let w2 = workload(42, START + 2 * W, "4m", ("1m", "3m"));
    let (t1, t2) = (&w1.truth, &w2.truth);
    let mut values = order_values(&w1);
    values.extend(order_values(&w2));
    let (ops1, ops2) = (operations(&w1), operations(&w2));
    // The model (the truth's definitions over the spans) reproduces the ground truth.
    for (ops, t) in [(&ops1, t1), (&ops2, t2)] {
        for name in OPERATIONS {
            let mine: Vec<&Op> = ops.iter().filter(|o| o.operation == name).collect();
            assert_eq!(model(&mine, &values), truth_figures(t, name), "model of {name}");
        }
    }

    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.spans", "shop.orders"], PARTITIONS);
    create_topics(&b, &["shop.metrics", "shop.logs"], 1);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Two gateways in group `scaleout`; each holds the same partition numbers of both topics.
    let gw0 = start_gateway(&rt, "gateway-0", "scaleout", &b);
    let mut gw1 = start_gateway(&rt, "gateway-1", "scaleout", &b);
    let held = wait_aligned(&[&gw0, &gw1], Duration::from_secs(60));
    eprintln!(
        "[{:?}] gateway-0 holds {:?}, gateway-1 {:?}",
        started.elapsed(),
        held[0],
        held[1]
    );
    // The single-instance reference, alone in its group, on the same topics.
    let reference = start_gateway(&rt, "reference", "reference", &b);
    wait_aligned(&[&reference], Duration::from_secs(60));
    let assigned = (assignments_so_far(&gw0), assignments_so_far(&gw1));

    let (sidecar, sidecar_http) = start_sidecar(&b);

    // ---- 1. Steady state ----------------------------------------------------------------------------------------
    send(sidecar_http, &w1.emissions, Duration::ZERO);
    eprintln!("[{:?}] workload 1 sent", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = OPERATIONS.iter().all(|op| {
            let total = truth_figures(t1, op).operations;
            api_figures(&reference.bp, op).operations == total
                && api_figures(&gw0.bp, op).operations + api_figures(&gw1.bp, op).operations == total
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "figures not final: {:?}\n{}\n{}",
            OPERATIONS
                .iter()
                .map(|op| (
                    api_figures(&reference.bp, op).operations,
                    api_figures(&gw0.bp, op).operations,
                    api_figures(&gw1.bp, op).operations
                ))
                .collect::<Vec<_>>(),
            [&gw0, &gw1, &reference].map(consumption).join("\n"),
            sidecar_export(&sidecar)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("[{:?}] workload 1 final at every gateway", started.elapsed());
    assert_eq!(
        (assignments_so_far(&gw0), assignments_so_far(&gw1)),
        assigned,
        "no rebalance during the steady state"
    );

    // Where each order went. The sidecar keys spans and events by order id (the same key in both topics even where
    // its `credit_card` pattern masked digits of an order id: one processor masks both alike), so every event of an
    // order is in one partition, and its spans are in that partition too.
    let n_events = w1.events().count();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    // It reads every partition to its end (high watermark), however slowly tansu serves it; the long limit is for a
    // loaded machine.
    let records = read_topic(
        &b,
        "shop.orders",
        n_events,
        Duration::from_millis(500),
        Duration::from_secs(150),
    );
    // What the reader got, per partition (count, lowest and highest offset), for the failure message.
    let mut read_per_partition: std::collections::BTreeMap<i32, (usize, i64, i64)> = Default::default();
    for r in &records {
        let e = read_per_partition.entry(r.partition).or_insert((0, i64::MAX, i64::MIN));
        *e = (e.0 + 1, e.1.min(r.offset), e.2.max(r.offset));
    }
    for r in records {
        let order = String::from_utf8(r.key.expect("events are keyed")).unwrap();
        let p = *partition_of.entry(order.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "every event of {order} in one partition");
    }
    assert_eq!(
        partition_of.len(),
        order_values(&w1).len(),
        "one key per order ({n_events} events; read back per partition (count, first, last offset): \
         {read_per_partition:?})\n{}",
        sidecar_export(&sidecar)
    );
    let span_messages = read_topic(&b, "shop.spans", 1, Duration::from_secs(1), Duration::from_secs(30));
    let keyed = span_messages.iter().filter(|r| r.key.is_some()).count();
    for r in span_messages.iter().filter(|r| r.key.is_some()) {
        let order = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(
            partition_of.get(&order),
            Some(&r.partition),
            "spans of {order} are in the partition of its events"
        );
    }
    eprintln!(
        "shop.spans: {} messages ({keyed} keyed by order id); shop.orders: {n_events}",
        span_messages.len()
    );
    // The sidecar's own counters agree with the topic: every event is counted as sent by its business JSON
    // exporter (the standard exporter counter), as delivered messages, and none as skipped.
    let events_filter = ["exporter=\"kafka/events\""];
    let sent_events = sidecar.metric_sum("bizpilot_exporter_sent_log_records_total", &events_filter);
    let delivered = sidecar.metric_sum("bizpilot_kafka_exporter_messages_total", &events_filter);
    eprintln!("sidecar kafka/events: sent {sent_events} log records, {delivered} messages delivered");
    assert_eq!(
        (sent_events, delivered),
        (n_events as f64, n_events as f64),
        "the sidecar's kafka/events counters (sent log records, delivered messages) against {n_events} events"
    );
    // Which gateway consumed each operation: exactly one, the owner of the order's partition, the same for every
    // operation of the order, and the one that consumed the order's business events.
    let consumed = [
        gw0.backend.received(received_operations),
        gw1.backend.received(received_operations),
    ];
    let events_at: Vec<HashSet<String>> = [&gw0, &gw1]
        .iter()
        .map(|g| {
            g.backend
                .received(received_events)
                .into_iter()
                .map(|(o, _, _)| o)
                .collect()
        })
        .collect();
    let mut owner_of: HashMap<SpanId, usize> = HashMap::new();
    let mut order_owner: HashMap<&str, usize> = HashMap::new();
    for o in &ops1 {
        let (g, (_, _, key)) = match (consumed[0].get(&o.id), consumed[1].get(&o.id)) {
            (Some(c), None) => (0, c),
            (None, Some(c)) => (1, c),
            (a, b) => panic!(
                "{} {:?} consumed by gateway-0: {a:?}, gateway-1: {b:?}",
                o.operation, o.id
            ),
        };
        assert!(
            held[g].contains(&partition_of[key]),
            "{key} consumed by its partition's owner"
        );
        assert!(
            events_at[g].contains(key),
            "the events of {key} went to the gateway of its spans"
        );
        assert_eq!(*order_owner.entry(&o.order).or_insert(g), g, "{key}: one gateway");
        owner_of.insert(o.id.clone(), g);
    }

    for name in OPERATIONS {
        let truth = truth_figures(t1, name);
        let r = api_figures(&reference.bp, name);
        let (g0, g1) = (api_figures(&gw0.bp, name), api_figures(&gw1.bp, name));
        let sum = g0.plus(&g1);
        // One instance: the ground truth, every figure.
        assert_eq!(r, truth, "{name}: the single gateway");
        // Two instances: what adds up does.
        assert_eq!(
            sum.additive(),
            r.additive(),
            "{name}: operations and revenue over both gateways"
        );
        // Each gateway: the definitions applied to the orders of its partitions.
        let share = |g: usize| -> Vec<&Op> {
            ops1.iter()
                .filter(|o| o.operation == name && owner_of[&o.id] == g)
                .collect()
        };
        let (m0, m1) = (model(&share(0), &values), model(&share(1), &values));
        assert_eq!(g0, m0, "{name}: gateway-0");
        assert_eq!(g1, m1, "{name}: gateway-1");
        // Customer-keyed figures: a customer with orders in partitions of both gateways counts in both.
        let split: BTreeSet<&str> = {
            let mut by_customer: HashMap<&str, BTreeSet<usize>> = HashMap::new();
            for o in ops1.iter().filter(|o| o.operation == name && !o.success) {
                by_customer
                    .entry(o.customer.as_str())
                    .or_default()
                    .insert(owner_of[&o.id]);
            }
            by_customer
                .into_iter()
                .filter(|(_, g)| g.len() > 1)
                .map(|(c, _)| c)
                .collect()
        };
        assert!(
            !split.is_empty(),
            "{name}: the workload has customers who failed on both gateways"
        );
        let over: u64 = sum.affected.values().sum::<u64>() - r.affected.values().sum::<u64>();
        assert_eq!(
            over,
            split.len() as u64,
            "{name}: affected customers over both gateways = single + customers who failed on both"
        );
        eprintln!(
            "{name}: single {} ops, at risk {}, recovered {}, lost {}, affected {:?}; \
             both gateways: at risk {}, recovered {}, lost {}, affected {:?} ({} customers failed on both)",
            r.operations,
            r.at_risk,
            r.recovered,
            r.lost,
            r.affected,
            sum.at_risk,
            sum.recovered,
            sum.lost,
            sum.affected,
            split.len()
        );
    }
    // Every failed checkout got its value from the business event in its own gateway; nothing was late.
    for g in [&gw0, &gw1, &reference] {
        let m = g.bp.metrics();
        let misses = metric_sum(&m, "bizpilot_processor_enrich_join_misses_total", &["source=\"order\""]);
        let missing = metric_sum(
            &m,
            "bizpilot_connector_business_impact_missing_total",
            &["connector=\"business_impact\"", "field=\"value\""],
        );
        let late = metric_sum(
            &m,
            "bizpilot_connector_business_impact_dropped_spans_total",
            &["connector=\"business_impact\"", "reason=\"late\""],
        );
        assert_eq!(
            (misses, missing, late),
            (0.0, 0.0, 0.0),
            "{}: join misses, missing values, late",
            g.name
        );
    }
    // Prometheus: by outcome and tier, the two gateways' series add up to the single gateway's and the truth.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrapes = loop {
        let s: Vec<String> = [&gw0, &gw1, &reference].iter().map(|g| scrape(g.prometheus)).collect();
        let complete = OPERATIONS.iter().all(|op| {
            let total = truth_figures(t1, op).operations as f64;
            scraped_operations(&s[2], op, None, None) == total
                && scraped_operations(&s[0], op, None, None) + scraped_operations(&s[1], op, None, None) == total
        });
        if complete {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the scrapes never got complete:\n{}",
            s.join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    for name in OPERATIONS {
        for (tier, counts) in &t1.operation(name).unwrap().by_tier {
            for (outcome, want) in [("success", counts.successful), ("failure", counts.failed)] {
                let got = |i: usize| scraped_operations(&scrapes[i], name, Some(outcome), Some(*tier));
                assert_eq!(got(2), want as f64, "{name} {outcome} {tier:?}: single");
                assert_eq!(got(0) + got(1), want as f64, "{name} {outcome} {tier:?}: both");
            }
        }
    }
    eprintln!("[{:?}] steady state checked", started.elapsed());

    // ---- 2. Handover: gateway-1 stops mid-stream, gateway-0 takes its partitions over ---------------------------
    let accepted = |g: &Gateway| {
        g.bp.metric_sum("bizpilot_receiver_accepted_spans_total", &["receiver=\"kafka/spans\""])
    };
    let before = accepted(&gw1);
    let sender = {
        let emissions = w2.emissions.clone();
        std::thread::spawn(move || send(sidecar_http, &emissions, Duration::from_millis(400)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&gw1) < before + 300.0 {
        assert!(Instant::now() < deadline, "gateway-1 got nothing of workload 2");
        std::thread::sleep(Duration::from_millis(50));
    }
    gw1.bp.signal("TERM");
    let stopped_at = Instant::now();
    let status = gw1.bp.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "gateway-1 exited with {status}\n{}", gw1.bp.logs());
    let exited_in = stopped_at.elapsed();
    let held = wait_aligned(&[&gw0], Duration::from_secs(60));
    assert_eq!(held[0].len(), PARTITIONS as usize);
    let taken_over_in = stopped_at.elapsed();
    sender.join().expect("sender");
    eprintln!(
        "[{:?}] gateway-1 exited {exited_in:?} after SIGTERM; gateway-0 held every partition after {taken_over_in:?}",
        started.elapsed()
    );

    // Nothing lost: every span and business event of both workloads was consumed by one gateway or the other.
    let mut all_ops: Vec<&Op> = ops1.iter().chain(&ops2).collect();
    all_ops.sort_by_key(|o| o.time);
    let mut want_spans = all_span_ids(&w1);
    want_spans.extend(all_span_ids(&w2));
    let mut want_events = all_events(&w1);
    want_events.extend(all_events(&w2));
    let truth_all: Vec<Figures> = OPERATIONS
        .iter()
        .map(|name| {
            let mine: Vec<&Op> = all_ops.iter().copied().filter(|o| o.operation == *name).collect();
            model(&mine, &values)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let spans: HashSet<SpanId> = gw0
            .backend
            .received(received_span_ids)
            .union(&gw1.backend.received(received_span_ids))
            .cloned()
            .collect();
        let ops0 = gw0.backend.received(received_operations);
        let counted_as_seen = OPERATIONS.iter().all(|name| {
            api_figures(&gw0.bp, name).operations == ops0.values().filter(|(o, _, _)| o == name).count() as u64
        });
        let reference_done = OPERATIONS
            .iter()
            .zip(&truth_all)
            .all(|(name, t)| api_figures(&reference.bp, name).operations == t.operations);
        if want_spans.is_subset(&spans) && counted_as_seen && reference_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the handover: {} of {} spans at the backends; gateway-0 counted what it consumed: \
             {counted_as_seen}; reference done: {reference_done}\n{}",
            want_spans.intersection(&spans).count(),
            want_spans.len(),
            gw0.bp.logs().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("[{:?}] workload 2 final", started.elapsed());
    let mut events: HashMap<(String, u64), Vec<String>> = HashMap::new();
    for g in [&gw0, &gw1] {
        for (order, kind, time) in g.backend.received(received_events) {
            events.entry((kind, time)).or_default().push(order);
        }
    }
    let missing_events: Vec<&(String, String, u64)> = want_events
        .iter()
        .filter(|(order, kind, time)| {
            !events
                .get(&(kind.clone(), *time))
                .is_some_and(|seen| seen.iter().any(|s| masked_eq(order, s)))
        })
        .collect();
    assert!(
        missing_events.is_empty(),
        "{} of {} business events were not consumed, e.g. {:?}",
        missing_events.len(),
        want_events.len(),
        &missing_events[..missing_events.len().min(5)]
    );
    let late = gw0.bp.metric_sum(
        "bizpilot_connector_business_impact_dropped_spans_total",
        &["connector=\"business_impact\"", "reason=\"late\""],
    );
    assert_eq!(late, 0.0, "no span of a moved partition was late at gateway-0");

    // Each process counted exactly the operations and revenue of what it consumed (gateway-1: its last figures,
    // flushed at shutdown); together: the truth plus what both consumed (read again after the handover).
    let op_by_id: HashMap<&SpanId, &Op> = all_ops.iter().map(|o| (&o.id, *o)).collect();
    let ops0 = gw0.backend.received(received_operations);
    let ops1_seen = gw1.backend.received(received_operations);
    let last1 = gw1.backend.received(|r| last_values(r, "business.operations"));
    let revenue1 = gw1.backend.received(|r| last_values(r, "business.revenue"));
    for (name, truth) in OPERATIONS.iter().zip(&truth_all) {
        let seen = |ops: &HashMap<SpanId, (&'static str, bool, String)>, ok: bool| -> (u64, Money) {
            ops.iter()
                .filter(|(_, (o, s, _))| o == name && *s == ok)
                .fold((0, usd_zero()), |(n, v), (id, _)| {
                    (n + 1, add(v, values[&op_by_id[id].order]))
                })
        };
        let both: Vec<&SpanId> = ops0
            .iter()
            .filter(|(id, (o, _, _))| o == name && ops1_seen.contains_key(*id))
            .map(|(id, _)| id)
            .collect();
        let g0 = api_figures(&gw0.bp, name);
        let (ok0, rev0) = seen(&ops0, true);
        let (failed0, _) = seen(&ops0, false);
        assert_eq!(
            (g0.successful, g0.failed, g0.revenue),
            (ok0, failed0, rev0),
            "{name}: gateway-0"
        );
        let (ok1, rev1) = seen(&ops1_seen, true);
        let (failed1, _) = seen(&ops1_seen, false);
        let got1 = |outcome: &str| otlp_sum(&last1, &[("operation", name), ("outcome", outcome)]);
        assert_eq!(got1("success"), (ok1 as f64, 1), "{name}: gateway-1's last successes");
        assert_eq!(
            got1("failure"),
            (failed1 as f64, 1),
            "{name}: gateway-1's last failures"
        );
        let (r1, _) = otlp_sum(&revenue1, &[("operation", name), ("currency", "USD")]);
        assert_eq!(
            (r1 * 100.0).round() as i128,
            cents(rev1),
            "{name}: gateway-1's last revenue"
        );
        let twice = both.len() as u64;
        let twice_value = both.iter().fold(usd_zero(), |v, id| {
            let op = op_by_id[*id];
            if op.success { add(v, values[&op.order]) } else { v }
        });
        assert_eq!(
            g0.operations + ok1 + failed1,
            truth.operations + twice,
            "{name}: both processes together"
        );
        assert_eq!(
            cents(g0.revenue) + (r1 * 100.0).round() as i128,
            cents(add(truth.revenue, twice_value)),
            "{name}: revenue of both processes together"
        );
        let r = api_figures(&reference.bp, name);
        assert_eq!(&r, truth, "{name}: the reference saw no handover");
        // Not exact across the handover (reported): the per-customer state stayed in the stopped gateway.
        let dollars = |m: Money| cents(m) as f64 / 100.0;
        let last = |metric: &str| {
            gw1.backend
                .received(|r| otlp_sum(&last_values(r, metric), &[("operation", name), ("currency", "USD")]).0)
        };
        eprintln!(
            "{name} across the handover: {twice} operations consumed by both; revenue at risk {:.2} + {:.2}, \
             recovered {:.2} + {:.2} (gateway-0 + gateway-1's last); the reference: {:.2}, {:.2}",
            dollars(g0.at_risk),
            last("business.revenue.at_risk"),
            dollars(g0.recovered),
            last("business.revenue.recovered"),
            dollars(r.at_risk),
            dollars(r.recovered)
        );
    }
    let m = gw0.bp.metrics();
    eprintln!(
        "gateway-0 after the takeover: {} join misses (orders whose events the other gateway had consumed), \
         {} operations without a value",
        metric_sum(&m, "bizpilot_processor_enrich_join_misses_total", &["source=\"order\""]),
        metric_sum(
            &m,
            "bizpilot_connector_business_impact_missing_total",
            &["connector=\"business_impact\"", "field=\"value\""]
        )
    );
    drop(sidecar);
    eprintln!("[{:?}] done", started.elapsed());
}

/// The fleet connector of the shipped gateway pipeline.
const FLEET: &str = "business_impact/fleet";

/// Test settings of the fleet stage (added to `GATEWAY_OVERLAY`'s connectors): as the local connector's, minutes
/// of shop in seconds.
const FLEET_CONNECTOR: &str = r#"  business_impact/fleet:
    allowed_lateness: 1h
    idle_timeout: 20s
    metrics_flush_interval: 200ms
"#;

/// `FLEET_E2E_UNMERGED=1` gives each gateway a fleet topic of its own: each fleet connector then sees one
/// gateway's spans only (the merge disabled), and the test must fail — the check that it can.
fn unmerged() -> bool {
    std::env::var_os("FLEET_E2E_UNMERGED").is_some_and(|v| v == "1")
}

/// The overlay that adds the fleet stage to the shipped gateway pipeline.
const FLEET_PIPELINE: &str = "pipelines/overlays/gateway-kafka-fleet.yaml";

/// A gateway of the fleet test: the shipped pipeline with the fleet overlay, publishing to and reading its group's
/// fleet topic (or, `unmerged`, one of its own).
fn start_fleet_gateway(rt: &tokio::runtime::Runtime, name: &'static str, group: &str, brokers: &str) -> Gateway {
    create_topics(brokers, &[fleet_topic(group).as_str()], 2);
    let mut overlay = GATEWAY_OVERLAY.replacen("connectors:\n", &format!("connectors:\n{FLEET_CONNECTOR}"), 1);
    // The fleet publisher is an idempotent producer too: the sidecar's 60 s timeout, for the same reason
    // (`shop_impact::SIDECAR_OVERLAY`).
    let mut publish = "timeout: 60s".to_string();
    if unmerged() {
        let own = format!("{name}.own.fleet");
        create_topics(brokers, &[own.as_str()], 2);
        overlay = overlay.replacen(
            "receivers:\n",
            &format!("receivers:\n  kafka/fleet: {{topics: [{own}]}}\n"),
            1,
        );
        publish.push_str(&format!(", traces_topic: {own}"));
    }
    overlay.push_str(&format!("exporters:\n  kafka/fleet_publish: {{{publish}}}\n"));
    kafka_gateways::start_gateway_with(rt, name, group, brokers, &[FLEET_PIPELINE], &overlay)
}

/// The fleet connector computes what the gateway's connector does: the overlay repeats its operations, trace
/// context, dimensions, windows and incident detection (YAML cannot refer across files).
#[test]
fn the_fleet_overlay_repeats_the_gateway_connector_settings() {
    let read = |p: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(common::workspace_root().join(p)).unwrap()).unwrap()
    };
    let gateway = read("pipelines/gateway-kafka.yaml");
    let overlay = read(FLEET_PIPELINE);
    let local = &gateway["connectors"]["business_impact"];
    let fleet = &overlay["connectors"]["business_impact/fleet"];
    for key in ["operations", "trace_context", "dimensions", "dedup_window", "incident"] {
        assert!(!local[key].is_null(), "{key} is set in the gateway pipeline");
        assert_eq!(fleet[key], local[key], "business_impact/fleet.{key}");
    }
    assert!(fleet["state"].is_null(), "the fleet connector has no local join state");
    assert_eq!(fleet["value"]["default_currency"], local["value"]["default_currency"]);
    // Its unit tests (not under pipelines/tests: an overlay does not validate alone).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizpilot"))
        .current_dir(common::workspace_root())
        .args([
            "test",
            "--config",
            "pipelines/gateway-kafka.yaml",
            "--config",
            FLEET_PIPELINE,
            "pipelines/overlays/tests/gateway-kafka-fleet.test.yaml",
        ])
        .output()
        .expect("bizpilot test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
}

/// What a gateway consumed, lags behind and dropped, from its self-telemetry: the lines a figure that falls short
/// of the ground truth is explained by.
fn consumption(g: &Gateway) -> String {
    const SHOWN: [&str; 8] = [
        "bizpilot_receiver_accepted_spans_total",
        "bizpilot_kafka_consumer_lag",
        "bizpilot_kafka_receiver_messages_total",
        "bizpilot_kafka_receiver_redeliveries_total",
        "bizpilot_kafka_receiver_bad_messages_total",
        "bizpilot_connector_business_impact_dropped_spans_total",
        "bizpilot_connector_business_impact_missing_total",
        "bizpilot_connector_business_impact_trace_context_total",
    ];
    let metrics = g.bp.metrics();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && SHOWN.iter().any(|m| l.starts_with(m)))
        .collect();
    format!("{}:\n  {}", g.name, lines.join("\n  "))
}

/// What the sidecar exported, failed and retried, from its self-telemetry, and its warnings: what a topic that
/// falls short of what was sent to it is explained by.
fn sidecar_export(sidecar: &Bizpilot) -> String {
    let metrics = sidecar.metrics();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && (l.starts_with("bizpilot_exporter_") || l.starts_with("bizpilot_kafka_")))
        .collect();
    let logs = sidecar.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect();
    format!(
        "sidecar:\n  {}\nsidecar warnings ({}, the last 20):\n  {}",
        lines.join("\n  "),
        warnings.len(),
        warnings[warnings.len().saturating_sub(20)..].join("\n  ")
    )
}

/// The incidents of `operation` at a gateway's `connector`, oldest first: (kind, start, failed operations,
/// affected customers).
fn incidents(b: &Bizpilot, connector: &str, operation: &str) -> Vec<(String, u64, u64, u64)> {
    let (status, body) = json_get(
        b.admin,
        &format!("/api/v1/incidents?connector={connector}&operation={operation}&limit=1000"),
    );
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, u64, u64, u64)> = body["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["kind"].as_str().unwrap_or_default().to_string(),
                i["start_unix_nano"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                i["failed_operations"].as_u64().unwrap_or(0),
                i["affected_customers"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_by_key(|i| i.1);
    out
}

#[test]
fn a_fleet_of_gateways_with_one_killed_and_one_added_counts_like_one_process() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let w = workload(43, START, "6m", ("1m", "4m"));
    let t = &w.truth;
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.spans", "shop.orders"], PARTITIONS);
    create_topics(&b, &["shop.metrics", "shop.logs"], 1);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Two gateways in group `fleet`, and the single-process reference alone in its group (its own fleet topic).
    let mut gw_a = start_fleet_gateway(&rt, "gw-a", "fleet", &b);
    let gw_b = start_fleet_gateway(&rt, "gw-b", "fleet", &b);
    wait_aligned(&[&gw_a, &gw_b], Duration::from_secs(60));
    let reference = start_fleet_gateway(&rt, "gw-reference", "fleet-reference", &b);
    wait_aligned(&[&reference], Duration::from_secs(60));
    eprintln!(
        "[{:?}] two gateways and the reference hold their partitions (fleet topics {} and {}; unmerged: {})",
        started.elapsed(),
        fleet_topic("fleet"),
        fleet_topic("fleet-reference"),
        unmerged()
    );

    let (sidecar, sidecar_http) = start_sidecar(&b);

    // A third of the workload (the outage starts in it) on two gateways; a third gateway joins; the rest streams
    // in while one of the first two is SIGKILLed.
    let third = w.emissions.len() / 3;
    send(sidecar_http, &w.emissions[..third], Duration::ZERO);
    let gw_c = start_fleet_gateway(&rt, "gw-c", "fleet", &b);
    let held = wait_aligned(&[&gw_a, &gw_b, &gw_c], Duration::from_secs(90));
    eprintln!("[{:?}] three gateways hold {held:?}", started.elapsed());
    let accepted = |g: &Gateway| {
        g.bp.metric_sum("bizpilot_receiver_accepted_spans_total", &["receiver=\"kafka/spans\""])
    };
    let before = accepted(&gw_a);
    let sender = {
        let rest = w.emissions[third..].to_vec();
        std::thread::spawn(move || send(sidecar_http, &rest, Duration::from_millis(150)))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while accepted(&gw_a) < before + 200.0 {
        assert!(
            Instant::now() < deadline,
            "gw-a got nothing of the rest of the workload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = accepted(&gw_a) - before;
    gw_a.bp.signal("KILL");
    let status = gw_a.bp.wait_exit(Duration::from_secs(10));
    let killed_at = Instant::now();
    eprintln!(
        "[{:?}] gw-a SIGKILLed ({status}) after it took {took} spans of the rest",
        started.elapsed()
    );
    // A replacement joins (as an orchestrator restarts a crashed pod, under another name): the group rebalances
    // over the survivors and the new member. (tansu does not expire a dead member by `session.timeout.ms` alone: a
    // rebalance that the dead member does not rejoin removes it.)
    let gw_d = start_fleet_gateway(&rt, "gw-d", "fleet", &b);
    let held = wait_aligned(&[&gw_b, &gw_c, &gw_d], Duration::from_secs(90));
    eprintln!(
        "[{:?}] gw-b, gw-c and gw-d hold {held:?}, {:?} after the kill",
        started.elapsed(),
        killed_at.elapsed()
    );
    sender.join().expect("sender");
    eprintln!("[{:?}] workload sent", started.elapsed());

    // The reference is the ground truth; the fleet figures of every surviving gateway are the same, exactly.
    let truth: Vec<Figures> = OPERATIONS.iter().map(|op| truth_figures(t, op)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reference_done = OPERATIONS
            .iter()
            .zip(&truth)
            .all(|(op, want)| api_figures(&reference.bp, op) == *want);
        let fleet_done = [&gw_b, &gw_c, &gw_d].iter().all(|g| {
            OPERATIONS
                .iter()
                .zip(&truth)
                .all(|(op, want)| impact_figures(&g.bp, FLEET, op) == *want)
        });
        if reference_done && fleet_done {
            break;
        }
        if Instant::now() >= deadline {
            // Every party's figures and what it consumed and dropped, before the first assertion stops the test.
            for (op, want) in OPERATIONS.iter().zip(&truth) {
                eprintln!("{op}: truth {want:?}");
                eprintln!("{op}: reference {:?}", api_figures(&reference.bp, op));
                for g in [&gw_b, &gw_c, &gw_d] {
                    eprintln!("{op}: fleet at {} {:?}", g.name, impact_figures(&g.bp, FLEET, op));
                }
            }
            for g in [&reference, &gw_b, &gw_c, &gw_d] {
                eprintln!("{}", consumption(g));
            }
            eprintln!("{}", sidecar_export(&sidecar));
            for (op, want) in OPERATIONS.iter().zip(&truth) {
                assert_eq!(&api_figures(&reference.bp, op), want, "{op}: the single process");
                for g in [&gw_b, &gw_c, &gw_d] {
                    assert_eq!(
                        &impact_figures(&g.bp, FLEET, op),
                        want,
                        "{op}: the fleet figures at {}",
                        g.name
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "[{:?}] fleet figures final and equal to the ground truth",
        started.elapsed()
    );
    for g in [&gw_b, &gw_c, &gw_d] {
        let spans = |d: &str| {
            g.bp.metric_sum(
                "bizpilot_connector_business_fleet_spans_total",
                &[&format!("decision=\"{d}\"")],
            )
        };
        eprintln!(
            "{}: business_fleet published {} spans, skipped {}",
            g.name,
            spans("kept"),
            spans("skipped")
        );
    }
    for (op, want) in OPERATIONS.iter().zip(&truth) {
        // What summing the local figures gives instead (customers counted on two gateways, split episodes).
        let local = [&gw_b, &gw_c, &gw_d]
            .iter()
            .map(|g| api_figures(&g.bp, op))
            .fold(None::<Figures>, |acc, f| Some(acc.map_or(f.clone(), |a| a.plus(&f))));
        eprintln!(
            "{op}: fleet = truth: {} operations, {} failed, at risk {}, recovered {}, lost {}, affected {:?}; \
             the survivors' local figures summed (gw-a's lost): {:?}",
            want.operations, want.failed, want.at_risk, want.recovered, want.lost, want.affected, local
        );
    }

    // Incidents: the fleet's are the single process's — one per outage and operation, same start, same counts.
    for op in OPERATIONS {
        let single = incidents(&reference.bp, "business_impact", op);
        let failures = single.iter().filter(|i| i.0 == "failures").count();
        assert_eq!(
            failures, 1,
            "{op}: the single process opens one incident for the outage: {single:?}"
        );
        for g in [&gw_b, &gw_c, &gw_d] {
            assert_eq!(
                incidents(&g.bp, FLEET, op),
                single,
                "{op}: the fleet's incidents at {} are the single process's",
                g.name
            );
        }
        eprintln!("{op}: incidents (kind, start, failed operations, affected customers): {single:?}");
    }
    // Prometheus: the fleet figures carry figures="fleet" and equal the truth.
    for g in [&gw_b, &gw_c, &gw_d] {
        let text = scrape(g.fleet_prometheus);
        for (op, want) in OPERATIONS.iter().zip(&truth) {
            let f = format!("operation=\"{op}\"");
            assert_eq!(
                metric_sum(&text, "business_operations_total", &[&f, "figures=\"fleet\""]),
                want.operations as f64,
                "{op}: fleet operations scraped at {}",
                g.name
            );
        }
    }
    eprintln!("[{:?}] done", started.elapsed());
}
