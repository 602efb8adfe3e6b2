//! `order_kpi`'s open orders move with their partition, end to end (issue #17 item 2, `docs/partition-state.md`): two
//! gateways of the shipped Kafka topology (`pipelines/gateway-kafka.yaml` +
//! `pipelines/overlays/gateway-kafka-changelog.yaml`, which names `order_kpi` in `changelog.state`) in one consumer
//! group on a real broker (tansu), 4 partitions.
//!
//! 1. Gateway A alone consumes `order.placed` of every order (keyed by order id); the events' offsets are committed
//!    only once `order_kpi`'s checkpoint holds them, in its local snapshot and in the changelog.
//! 2. Gateway B joins: the partitions are split, B restores its half, A drops it.
//! 3. A is stopped gracefully (SIGTERM; tansu does not rebalance away a SIGKILLed member, docs/fleet.md): B takes
//!    every partition and restores A's half.
//! 4. Only now the resolutions arrive: a third of the orders delivered in time (1 h), a third delivered late (25 h),
//!    a third never (breached at their 24 h deadline), and a last order 30 h later that moves the watermark past
//!    every deadline. B can only know the orders from the changelog.
//!
//! Ground truth: the outcome of each order as its events say. B's in-time and breached counts and its open orders
//! (the breached, never delivered ones stay open) must equal it.
//!
//! `KPI_PARTITION_E2E_NO_CHANGELOG=1` runs the same without the changelog overlay: the test must fail (B sees
//! deliveries of orders it never saw placed).
//!
//! `cargo test -p bizpilot --test kpi_partition_e2e -- --nocapture` (needs tansu: `bash .ci/prereq-kafka.sh`).

mod common;
#[path = "common/kafka_gateways.rs"]
mod kafka_gateways;
#[path = "kafka_harness.rs"]
mod kafka_harness;

use common::{free_addr, http_get};
use kafka_gateways::{Gateway, start_changelog_gateway, wait_aligned, wait_until};
use kafka_harness::{Msg, Tansu, committed, create_topics, held_partitions, produce};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
/// Orders in the run (`KPI_PARTITION_E2E_ORDERS` to measure restores of more).
fn orders() -> usize {
    std::env::var("KPI_PARTITION_E2E_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}
const EVENTS: &str = "shop.orders";
const CHANGELOG: &str = "shop.orders.business-state";

/// Offsets committed quickly, checkpoints often, and the changelog producer writes one record per batch (tansu skips
/// the rest of a batch when a read resumes inside it; see docs/partition-state.md).
const OVERLAY: &str = r#"
receivers:
  kafka/spans: {commit_interval: 200ms}
  kafka/events:
    commit_interval: 200ms
    changelog: {librdkafka: {batch.num.messages: 1}}
connectors:
  order_kpi: {checkpoint_interval: 1s}
"#;

const OVERLAY_WITHOUT_CHANGELOG: &str = r#"
receivers:
  kafka/spans: {commit_interval: 200ms}
  kafka/events: {commit_interval: 200ms}
connectors:
  order_kpi: {checkpoint_interval: 1s}
"#;

fn no_changelog() -> bool {
    std::env::var("KPI_PARTITION_E2E_NO_CHANGELOG").is_ok_and(|v| v == "1")
}

fn start(rt: &tokio::runtime::Runtime, name: &'static str, group: &str, brokers: &str) -> Gateway {
    let changelog = !no_changelog();
    start_changelog_gateway(
        rt,
        name,
        group,
        brokers,
        free_addr(),
        changelog,
        OVERLAY,
        OVERLAY_WITHOUT_CHANGELOG,
    )
}

/// RFC 3339 of 2026-01-01T00:00:00Z + `secs` (under 28 days).
fn at(secs: u64) -> String {
    format!(
        "2026-01-{:02}T{:02}:{:02}:{:02}Z",
        1 + secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn event(kind: &str, order: &str, secs: u64) -> Msg {
    Msg::keyed(
        order.to_string(),
        format!(
            r#"{{"type":"{kind}","time":"{}","order_id":"{order}","customer_id":"c-{order}"}}"#,
            at(secs)
        ),
    )
}

fn id(i: usize) -> String {
    format!("o-{i:05}")
}

/// The orders are placed over the first 40 minutes.
fn placed(i: usize) -> u64 {
    (i * 2400 / orders()) as u64
}

const H: u64 = 3600;

/// The resolutions: `i % 3 == 0` delivered after 1 h (in time), `1` after 25 h (breached), `2` never (breached at
/// the deadline); then one order placed 30 h after the first, which moves the watermark past every deadline.
fn resolutions() -> [Vec<Msg>; 3] {
    let (mut in_time, mut late) = (Vec::new(), Vec::new());
    for i in 0..orders() {
        match i % 3 {
            0 => in_time.push(event("order.delivered", &id(i), placed(i) + H)),
            1 => late.push(event("order.delivered", &id(i), placed(i) + 25 * H)),
            _ => {}
        }
    }
    [in_time, late, vec![event("order.placed", "o-last", 30 * H)]]
}

/// (in time, breached, open) by the ground truth. Open: the breached orders never delivered (a breached order stays
/// open until delivered); the last order still waits for the watermark (`allowed_lateness`), so it is not counted.
fn truth() -> (u64, u64, u64) {
    let in_time = (0..orders()).filter(|i| i % 3 == 0).count() as u64;
    let never = (0..orders()).filter(|i| i % 3 == 2).count() as u64;
    (in_time, orders() as u64 - in_time, never)
}

/// B's figures of `fulfilled_24h` from its admin API: (in time, breached, open).
fn figures(g: &Gateway) -> Option<(u64, u64, u64)> {
    let (code, body) = http_get(g.bp.admin, "/api/v1/kpi/fulfilled_24h").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let v = if v.get("resolved").is_some() {
        v
    } else {
        v.get("kpi")?.clone()
    };
    Some((
        v["resolved"]["in_time"].as_u64()?,
        v["resolved"]["breached"].as_u64()?,
        v["open"].as_u64()?,
    ))
}

/// The receiver's restores that put back `order_kpi` orders (its log line "state restored from the changelog"):
/// (partitions, records read of both states, what each put back, seconds).
fn receiver_restores(g: &Gateway) -> Vec<(String, u64, String, f64)> {
    g.bp.logs()
        .lines()
        .filter(|l| l.contains("state restored from the changelog") && l.contains("order_kpi="))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let f = &v["fields"];
            (
                f["partitions"].as_str().unwrap_or("").to_string(),
                f["records"].as_u64().unwrap_or(0),
                f["restored"].as_str().unwrap_or("").to_string(),
                f["seconds"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

/// `order_kpi`'s restore log lines of a gateway: (partition, orders, seconds).
fn kpi_restores(g: &Gateway) -> Vec<(i64, u64, f64)> {
    g.bp.logs()
        .lines()
        .filter(|l| l.contains("order_kpi partition restored from the changelog"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let f = &v["fields"];
            (
                f["partition"].as_i64().unwrap_or(-1),
                f["orders"].as_u64().unwrap_or(0),
                f["seconds"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

#[test]
fn the_kpi_counts_after_a_handover_equal_the_truth() {
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap,
        &[EVENTS, "shop.spans", "shop.metrics", "shop.logs", CHANGELOG],
        PARTITIONS,
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let brokers = broker.bootstrap.clone();
    let group = "kpi-partition-e2e";
    let slow = Duration::from_secs(180);

    // 1. A alone consumes every order.placed.
    let mut a = start(&rt, "gw-a", group, &brokers);
    wait_aligned(&[&a], PARTITIONS, Duration::from_secs(60));
    let placed_msgs: Vec<Msg> = (0..orders())
        .map(|i| event("order.placed", &id(i), placed(i)))
        .collect();
    produce(&brokers, EVENTS, &placed_msgs);
    let took = wait_until("A commits every event", slow, || {
        committed(&brokers, group, EVENTS)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == orders() as i64
    });
    eprintln!("A consumed and committed {} order.placed in {took:?}", orders());

    // 2. B joins and restores its half; A drops it.
    let b = start(&rt, "gw-b", group, &brokers);
    let split = wait_aligned(&[&a, &b], PARTITIONS, Duration::from_secs(90));
    eprintln!("split: A {:?}, B {:?}", split[0], split[1]);

    // 3. A leaves; B takes every partition and restores A's half.
    a.bp.signal("TERM");
    a.bp.wait_exit(Duration::from_secs(60));
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let took = wait_until("B holds every partition", Duration::from_secs(90), || {
        held_partitions(&b.bp.logs(), "kafka/events") == all
    });
    eprintln!("B held every partition {took:?} after A exited");
    if !no_changelog() {
        wait_until("B's receiver restored both halves", slow, || {
            receiver_restores(&b).len() >= 2
        });
    }

    // 4. The resolutions, after the handover, in three steps: the deliveries in time, the late ones, then the last
    //    order (30 h later), each once the previous is consumed, so that the watermark (the newest event time of
    //    any partition) does not pass an order's deadline before its in-time delivery is read.
    let mut n = orders() as i64;
    for step in resolutions() {
        produce(&brokers, EVENTS, &step);
        n += step.len() as i64;
        wait_until("B commits the step", slow, || {
            committed(&brokers, group, EVENTS)
                .iter()
                .map(|o| (*o).max(0))
                .sum::<i64>()
                == n
        });
    }
    let want = truth();
    // Until B's figures equal the truth (without the changelog they never do: give up after a while).
    let started = Instant::now();
    let limit = if no_changelog() { Duration::from_secs(60) } else { slow };
    while figures(&b) != Some(want) && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = started.elapsed();
    let got = figures(&b);
    let restored = kpi_restores(&b);
    eprintln!(
        "B's fulfilled_24h (in time, breached, open): {got:?}, truth {want:?} ({waited:?} after the resolutions); \
         B's order_kpi restores (partition, orders, seconds): {restored:?}; the receiver's restores (partitions, \
         records, restored, seconds): {:?}",
        receiver_restores(&b)
    );
    assert_eq!(got, Some(want), "B's KPI after the handover equals the ground truth");
    let moved: u64 = restored.iter().map(|(_, n, _)| n).sum();
    assert!(
        moved >= orders() as u64,
        "every open order restored (B's half, then A's): {moved}"
    );
    assert!(
        b.bp.metric_sum("bizpilot_connector_order_kpi_changelog_restored_orders_total", &[]) >= orders() as f64,
        "restored orders counted"
    );
}
