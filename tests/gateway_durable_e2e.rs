//! End to end: the shipped Kafka gateway (`pipelines/gateway-kafka.yaml`, durable state on by default) SIGKILLed in
//! the middle of a payment outage and restarted at once on the same storage directory ends with every figure of the
//! ground truth — nothing lost, nothing counted twice — and with the incidents of an uninterrupted run.
//!
//! Real processes and a real Kafka-protocol broker (tansu, `kafka_harness.rs`): a sidecar
//! (`pipelines/sidecar-kafka.yaml`, order-affinity variant, as `tests/scaleout_e2e.rs` runs it) receives a generated
//! shop workload (`bizpilot_shopgen`: a 9-minute payment outage with retries, duplicates, late and reordered spans)
//! over OTLP/HTTP and writes `shop.spans` and `shop.orders`. Two gateways read them, each alone in its consumer
//! group: `gw`, which is killed and restarted, and `reference`, which runs uninterrupted.
//!
//! `gw` is SIGKILLed while the second half of the workload streams in (the outage is open), and a new process with
//! the same name starts at once on the same `BIZPILOT_STORAGE_DIR`: `business_state` restores the join's orders and
//! `business_impact` its snapshot and journal tail. Kafka then delivers again what was consumed after the last
//! committed offset (at least once); the connector recognises those spans by their span ids. After the run, `gw`'s
//! operations, failures, revenue, revenue at risk, recovered and lost revenue (to the cent) and distinct affected
//! customers per window equal the workload's ground truth, and its incidents equal the reference's.
//!
//! `GATEWAY_DURABLE_E2E_FRESH=1` restarts `gw` on an empty storage directory instead (what a gateway without
//! durable state does): the test must then fail — the check that it can.
//!
//!     cargo test -p bizpilot --test gateway_durable_e2e -- --nocapture

mod common;
#[path = "common/kafka_gateways.rs"]
mod kafka_gateways;
#[path = "kafka_harness.rs"]
mod kafka_harness;
#[path = "common/shop_impact.rs"]
mod shop_impact;

use bizpilot_shopgen::{Emission, Shop, ShopConfig, Workload, pack_events, pack_traces};
use common::{Bizpilot, json_get};
use kafka_gateways::Gateway;
use kafka_harness::{Tansu, create_topics};
use prost::Message;
use serde_json::Value as Json;
use shop_impact::{
    Figures, assert_impact_figures, impact_figures, post, start_sidecar, truth_figures, wait_impact_figures,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SEC: u64 = 1_000_000_000;
const PARTITIONS: i32 = 4;
const START: u64 = 1_767_225_600 * SEC;
const OPERATIONS: [&str; 2] = ["checkout", "payment"];

/// Test settings over the shipped gateway pipeline (its `storage` and `checkpoint_interval` are the shipped ones).
const GATEWAY_OVERLAY: &str = r#"
connectors:
  business_impact:
    # Above the workload's late spans (up to 2 minutes, plus 10 s out of order) and the skew between partitions:
    # every span counts, as in the ground truth; and small enough that the outage's incident is open (decided
    # behind the watermark) at the kill.
    allowed_lateness: 4m
    # Figures are final once a gateway saw no span for idle_timeout: longer than the kill, the restart and the
    # consumer group's rejoin, which would otherwise finalize (close the incident) in one run and not in the other.
    idle_timeout: 45s
    metrics_flush_interval: 200ms
    # Small, so that the kill comes after several snapshots: the restart loads the latest and replays the tail.
    snapshot_min_journal: 64KiB
  # The gateway's order_kpi holds the spans' and events' acknowledgements until its snapshot (shipped: every 10 s), so
  # the uncommitted tail Kafka delivers again after the kill is that long; at 25 times real time 10 s is four minutes
  # of event time, and the restarted gateway read it unevenly across partitions: 8 spans (4 operations) dropped as
  # later than allowed_lateness. At real speed 10 s is within the shipped 30 s.
  order_kpi:
    checkpoint_interval: 200ms
# A dead member leaves tansu's group only in a rebalance it does not rejoin within its rebalance timeout
# (`max.poll.interval.ms`, 300 s by default; tansu does not expire it by `session.timeout.ms` alone): the restarted
# gateway would wait that long for the killed one's partitions (once in three runs it did, past the test's 120 s).
receivers:
  kafka/spans: {commit_interval: 200ms, librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/events: {commit_interval: 200ms, librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/logs: {librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
  kafka/metrics: {librdkafka: {session.timeout.ms: 6000, max.poll.interval.ms: 15000}}
"#;

/// 12 minutes of shop, a payment outage from minute 1 to minute 10 (90 % of charges fail), retries, duplicates, late
/// and reordered spans, events after their spans.
fn workload() -> Workload {
    let cfg: ShopConfig = serde_yaml::from_str(&format!(
        r#"
seed: 71
start_unix_nano: {START}
duration: 12m
orders_per_sec: 2
customers: 2000
browse_traces: {{min: 0, max: 1}}
add_item_traces: false
impact_window: 1h
fulfilment: {{enabled: false}}
injections:
  payment_outages:
    - {{start: 1m, end: 8m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 2s}}
  retries: {{probability: 0.7, delay: {{min: 10s, max: 2m}}, max_attempts: 3}}
  duplicates: {{probability: 0.03, max_delay: 5s}}
  late: {{probability: 0.02, delay: {{min: 1m, max: 2m}}}}
  out_of_order: {{probability: 0.1, max_delay: 10s}}
  events_after_spans: {{probability: 0.2, delay: {{min: 100ms, max: 10s}}}}
"#
    ))
    .unwrap();
    Shop::generate(&cfg).unwrap()
}

/// `operation`'s incidents at a gateway, oldest first: (kind, state, start, failed operations, affected customers).
fn incidents(b: &Bizpilot, operation: &str) -> Vec<(String, String, u64, u64, u64)> {
    let (status, body) = json_get(b.admin, &format!("/api/v1/incidents?operation={operation}&limit=1000"));
    assert_eq!(status, 200, "{body}");
    let text = |v: &Json| v.as_str().unwrap_or_default().to_string();
    let mut out: Vec<_> = body["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                text(&i["kind"]),
                text(&i["state"]),
                i["start_unix_nano"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                i["failed_operations"].as_u64().unwrap_or(0),
                i["affected_customers"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_by_key(|i| i.2);
    out
}

/// Emissions per chunk and the pause after each: the 12 minutes of shop arrive in about half a minute, about 25
/// times faster than they happened.
const CHUNK: usize = 25;
const PAUSE: Duration = Duration::from_millis(100);

/// Sends emissions in arrival order to the sidecar in chunks (each chunk's events, then its traces), pausing after
/// each chunk, and while `hold` is set.
fn send(addr: SocketAddr, emissions: &[Emission], hold: &AtomicBool) {
    for chunk in emissions.chunks(CHUNK) {
        while hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for req in pack_events(chunk.iter().filter_map(Emission::as_event), 10_000) {
            post(addr, "/v1/logs", &req.encode_to_vec());
        }
        for req in pack_traces(chunk.iter().filter_map(Emission::as_trace), 10_000) {
            post(addr, "/v1/traces", &req.encode_to_vec());
        }
        std::thread::sleep(PAUSE);
    }
}

/// The shipped Kafka gateway named `name`, alone in consumer group `group`, its durable state in `storage`.
fn start_gateway(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    storage: &Path,
) -> Gateway {
    let storage = storage.display().to_string();
    let g = kafka_gateways::start_gateway_env(
        rt,
        name,
        group,
        brokers,
        &[],
        GATEWAY_OVERLAY,
        &[("BIZPILOT_STORAGE_DIR", storage.as_str())],
    );
    kafka_gateways::wait_aligned(&[&g], PARTITIONS, Duration::from_secs(120));
    g
}

fn accepted_spans(g: &Gateway) -> f64 {
    g.bp.metric_sum("bizpilot_receiver_accepted_spans_total", &["receiver=\"kafka/spans\""])
}

fn duplicates(g: &Gateway) -> f64 {
    g.bp.metric_sum(
        "bizpilot_connector_business_impact_dropped_spans_total",
        &["reason=\"duplicate\""],
    )
}

fn fresh() -> bool {
    std::env::var_os("GATEWAY_DURABLE_E2E_FRESH").is_some_and(|v| v == "1")
}

#[test]
fn the_kafka_gateway_killed_mid_outage_and_restarted_ends_with_the_ground_truth() {
    let started = Instant::now();
    let w = workload();
    let truth: Vec<Figures> = OPERATIONS.iter().map(|op| truth_figures(&w.truth, op)).collect();
    // The kill comes while the second half (from minute 6 on) streams in: in the outage (minutes 1 to 10 of 12),
    // with the watermark (4 minutes behind) past its start.
    let half = w
        .emissions
        .iter()
        .position(|e| e.event_unix_nano() >= START + 360 * SEC)
        .expect("12 minutes of emissions");
    assert!(
        half > 500 && half + 300 < w.emissions.len(),
        "{half} of {}",
        w.emissions.len()
    );

    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.spans", "shop.orders"], PARTITIONS);
    create_topics(&b, &["shop.metrics", "shop.logs"], 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("gw");

    let gw = start_gateway(&rt, "gw", "durable", &b, &storage);
    let reference = start_gateway(&rt, "reference", "reference", &b, &dir.path().join("reference"));
    let (_sidecar, sidecar_http) = start_sidecar(&b);
    eprintln!("[{:?}] gw and the reference hold every partition", started.elapsed());

    // 1. The first half; then the rest streams in and gw is SIGKILLed once it has taken part of it.
    let hold = Arc::new(AtomicBool::new(false));
    send(sidecar_http, &w.emissions[..half], &hold);
    // gw has taken the first half once its receiver has been quiet for a second; then the kill comes once it has
    // taken 200 spans of the second half.
    let mut first_half_spans = accepted_spans(&gw);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = accepted_spans(&gw);
        if now == first_half_spans && now > 0.0 {
            break;
        }
        first_half_spans = now;
        assert!(
            Instant::now() < deadline,
            "gw never took the first half\n{}",
            gw.bp.logs()
        );
    }
    let sender = {
        let (rest, hold) = (w.emissions[half..].to_vec(), hold.clone());
        std::thread::spawn(move || send(sidecar_http, &rest, &hold))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted_spans(&gw) < first_half_spans + 200.0 {
        assert!(Instant::now() < deadline, "gw got nothing of the second half");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<Figures> = OPERATIONS
        .iter()
        .map(|op| impact_figures(&gw.bp, "business_impact", op))
        .collect();
    let open: Vec<_> = OPERATIONS.iter().flat_map(|op| incidents(&gw.bp, op)).collect();
    assert!(
        open.iter().any(|i| i.0 == "failures" && i.1 == "open"),
        "killed while the outage's incident is open: {open:?}"
    );
    let snapshots = gw.bp.metric_sum(
        "bizpilot_storage_journal_snapshots_total",
        &["owner=\"business_impact\""],
    );
    assert!(
        snapshots >= 1.0 || fresh(),
        "business_impact compacted its journal before the kill\n{}",
        gw.bp.logs()
    );
    let consumed_before = accepted_spans(&gw);
    let dup_before = duplicates(&gw);
    let mut gw = gw;
    // The sender holds while gw is down: with the shop 25 times faster than real time, the restart's pause (seconds)
    // would otherwise become minutes of event time that the restarted consumer reads unevenly across partitions,
    // beyond allowed_lateness; at real speed such a pause is within the shipped 30 s. What gw took but had not
    // committed is delivered again all the same.
    hold.store(true, Ordering::SeqCst);
    gw.bp.signal("KILL");
    gw.bp.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    eprintln!(
        "[{:?}] gw SIGKILLed after {consumed_before} spans, {snapshots} snapshots, with {open:?} incidents; \
         figures {before:?}",
        started.elapsed()
    );

    // 2. Restarted at once on the same storage (or, FRESH, on an empty one), under the same name.
    let storage2 = if fresh() {
        dir.path().join("fresh")
    } else {
        storage.clone()
    };
    let gw = start_gateway(&rt, "gw", "durable", &b, &storage2);
    hold.store(false, Ordering::SeqCst);
    let restored_from = gw
        .bp
        .metric_sum("bizpilot_connector_business_impact_restored_snapshot_bytes", &[])
        + gw.bp
            .metric_sum("bizpilot_connector_business_impact_restored_requests", &[]);
    eprintln!(
        "[{:?}] gw restarted and holds every partition {:?} after the kill; business_impact restored in {:.3} s \
         ({restored_from} snapshot bytes + journal requests), business_state {} entries",
        started.elapsed(),
        killed.elapsed(),
        gw.bp
            .metric_sum("bizpilot_connector_business_impact_restore_seconds", &[]),
        gw.bp.metric_sum("bizpilot_business_state_restored_entries", &[]),
    );
    sender.join().expect("sender");
    eprintln!("[{:?}] workload sent", started.elapsed());

    // 3. Final figures: gw's and the reference's equal the ground truth.
    if let Err(now) = wait_impact_figures(
        (gw.name, &gw.bp),
        (reference.name, &reference.bp),
        &OPERATIONS,
        &truth,
        Duration::from_secs(180),
    ) {
        assert_impact_figures(&OPERATIONS, &now, &truth);
    }
    eprintln!("[{:?}] gw's figures equal the ground truth", started.elapsed());
    for (op, t) in OPERATIONS.iter().zip(&truth) {
        eprintln!(
            "{op}: {} operations, {} failed, revenue {}, at risk {}, recovered {}, lost {}, affected {:?}",
            t.operations, t.failed, t.revenue, t.at_risk, t.recovered, t.lost, t.affected
        );
    }

    // Kafka delivered again what gw had consumed after its last committed offset, and none of it counted twice.
    let reference_spans = accepted_spans(&reference);
    let consumed_after = accepted_spans(&gw);
    let replayed = consumed_before + consumed_after - reference_spans;
    eprintln!(
        "spans: reference {reference_spans}, gw {consumed_before} before the kill + {consumed_after} after it: \
         {replayed} delivered again; duplicates dropped by business_impact: {dup_before} before, {} after",
        duplicates(&gw)
    );
    if !fresh() {
        assert!(
            restored_from > 0.0,
            "business_impact restored from its snapshot and journal\n{}",
            gw.bp.logs()
        );
    }
    assert!(
        replayed > 0.0,
        "the restart replayed nothing: the kill came between commits, and the test shows no at-least-once replay"
    );

    // Incidents: gw's (once final) are the uninterrupted run's — one per outage and operation, same start and counts.
    let deadline = Instant::now() + Duration::from_secs(120);
    for op in OPERATIONS {
        loop {
            let (g, r) = (incidents(&gw.bp, op), incidents(&reference.bp, op));
            if g == r && r.iter().all(|i| i.1 != "open") {
                assert_eq!(
                    r.iter().filter(|i| i.0 == "failures").count(),
                    1,
                    "{op}: one incident for the outage: {r:?}"
                );
                eprintln!("{op}: incidents (kind, state, start, failed operations, affected customers): {r:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{op}: incidents of gw {g:?}, of the uninterrupted reference {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("[{:?}] done", started.elapsed());
}
