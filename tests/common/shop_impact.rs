//! A shopgen workload through the shipped Kafka topology (`pipelines/sidecar-kafka.yaml` → broker →
//! `pipelines/gateway-kafka.yaml`): the sidecar as a test process, and the business figures of an operation as the
//! ground truth states them and `/api/v1/impact` serves them, comparable with `==`. Include with `#[path]` (with
//! `common`); `tests/scaleout_e2e.rs` and `tests/gateway_durable_e2e.rs` use it.
#![allow(dead_code)]

use crate::common::{Bizpilot, free_addr, json_get, otlp_post, start_pipeline};
use bizpilot_core::{Currency, Money};
use bizpilot_shopgen::GroundTruth;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The sidecar's test settings, as `tests/scaleout_e2e.rs` has them: one record per batch (tansu answers a fetch only with batches that start at or after
/// the requested offset), spans keyed by order id (co-partitioned with the events: failed checkouts get their value
/// from their order event).
///
/// `timeout: 60s` (the pipeline has 5 s): tansu, the test broker, stores an idempotent producer's epoch when it hands
/// out the producer id and answers any other epoch with `ProducerFenced`. librdkafka bumps the epoch of an idempotent
/// (not transactional) producer itself when a message times out while in flight (`rd_kafka_idemp_drain_epoch_bump`);
/// a Kafka broker accepts the higher epoch. On a loaded machine tansu answers slowly, messages timed out at 5 s, and
/// the sidecar's producers were fenced over and over (`bizpilot_kafka_exporter_delivery_failures_total
/// {reason="ProducerFenced"}` 11,460 for kafka/events in one run, with 302 of 2,021 events delivered after 150 s).
/// With a 60 s timeout no message times out in flight, so no epoch is bumped.
pub const SIDECAR_OVERLAY: &str = r#"
exporters:
  kafka/spans: {partition_traces_by_id: false, partition_by: attribute:business.order.id, timeout: 60s, librdkafka: {batch.num.messages: 1}}
  kafka/events: {timeout: 60s, librdkafka: {batch.num.messages: 1}}
  kafka/telemetry: {timeout: 60s, librdkafka: {batch.num.messages: 1}}
"#;

/// The figures of one operation, as the ground truth states them and `/api/v1/impact` serves them.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub operations: u64,
    pub successful: u64,
    pub failed: u64,
    pub revenue: Money,
    pub at_risk: Money,
    pub recovered: Money,
    /// Episodes that ended unrecovered plus those still open.
    pub lost: Money,
    /// Window start → distinct affected customers.
    pub affected: BTreeMap<u64, u64>,
}

/// `operation`'s figures in the ground truth.
pub fn truth_figures(t: &GroundTruth, operation: &str) -> Figures {
    let o = t.operation(operation).unwrap();
    Figures {
        operations: o.total,
        successful: o.successful,
        failed: o.failed,
        revenue: o.revenue,
        at_risk: o.revenue_at_risk,
        recovered: o.recovered_revenue,
        lost: o.lost_revenue,
        affected: o
            .affected_customers_by_window
            .iter()
            .map(|w| (w.start_unix_nano, w.affected_customers))
            .collect(),
    }
}

fn usd(list: &Json) -> Money {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|v| serde_json::from_value::<Money>(v.clone()).unwrap_or_else(|e| panic!("not money: {v} ({e})")))
        .find(|m| m.currency() == Currency::USD)
        .unwrap_or_else(|| Money::zero(Currency::USD))
}

/// `operation`'s figures of the `business_impact` connector `connector` at `/api/v1/impact`.
pub fn impact_figures(b: &Bizpilot, connector: &str, operation: &str) -> Figures {
    let (status, body) = json_get(
        b.admin,
        &format!("/api/v1/impact?connector={connector}&operation={operation}&limit=0"),
    );
    assert_eq!(status, 200, "{body}\n{}", b.logs());
    let s = &body["summary"][0];
    let a = &s["affected_customers"];
    let affected = a["closed_windows"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(a["current_window"].as_object().map(|_| &a["current_window"]))
        .filter_map(|w| {
            let start = w["start_unix_nano"].as_str()?.parse().ok()?;
            Some((start, w["affected_customers"].as_u64()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let lost = usd(&s["lost_revenue"])
        .checked_add(usd(&s["open_at_risk"]))
        .expect("USD amounts");
    Figures {
        operations: s["operations"].as_u64().unwrap_or(0),
        successful: s["successful"].as_u64().unwrap_or(0),
        failed: s["failed"].as_u64().unwrap_or(0),
        revenue: usd(&s["revenue"]),
        at_risk: usd(&s["revenue_at_risk"]),
        recovered: usd(&s["recovered_revenue"]),
        lost,
        affected,
    }
}

/// Polls the `business_impact` figures of every operation of `operations` at a gateway under test and at an
/// uninterrupted reference (`(name, process)` each) until both equal `truth` (one per operation, in order), for at
/// most `timeout`. On timeout it logs each one's dropped-span counters and returns the last figures read,
/// `(gateway, reference)` per operation, for [`assert_impact_figures`].
pub fn wait_impact_figures(
    gateway: (&str, &Bizpilot),
    reference: (&str, &Bizpilot),
    operations: &[&str],
    truth: &[Figures],
    timeout: Duration,
) -> Result<(), Vec<(Figures, Figures)>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now: Vec<(Figures, Figures)> = operations
            .iter()
            .map(|op| {
                (
                    impact_figures(gateway.1, "business_impact", op),
                    impact_figures(reference.1, "business_impact", op),
                )
            })
            .collect();
        if now.iter().zip(truth).all(|((g, r), t)| g == t && r == t) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            for (name, b) in [gateway, reference] {
                eprintln!(
                    "{name}: dropped spans {}",
                    b.metrics()
                        .lines()
                        .filter(|l| l.starts_with("bizpilot_connector_business_impact_dropped_spans_total"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Asserts figures [`wait_impact_figures`] returned: the reference's, then the gateway's, against the truth.
pub fn assert_impact_figures(operations: &[&str], now: &[(Figures, Figures)], truth: &[Figures]) {
    for ((op, (g, r)), t) in operations.iter().zip(now).zip(truth) {
        assert_eq!(r, t, "{op}: the uninterrupted reference against the ground truth");
        assert_eq!(g, t, "{op}: gw, SIGKILLed and restarted, against the ground truth");
    }
}

/// POSTs OTLP/HTTP, retrying refusals (429, 503, no connection).
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) {
    for attempt in 0..100 {
        match otlp_post(addr, path, body) {
            200 => return,
            s if attempt < 99 && (s == 429 || s == 503 || s == 0) => std::thread::sleep(Duration::from_millis(50)),
            s => panic!("POST {path} answered {s}"),
        }
    }
}

/// The sidecar (`pipelines/sidecar-kafka.yaml`, [`SIDECAR_OVERLAY`]) writing to `brokers`, and its OTLP/HTTP address.
pub fn start_sidecar(brokers: &str) -> (Bizpilot, SocketAddr) {
    let (http, admin) = (free_addr(), free_addr());
    let env = [
        ("BIZPILOT_HASH_KEY", "shop-impact-e2e-key".to_string()),
        ("BIZPILOT_KAFKA_BROKERS", brokers.to_string()),
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", free_addr().to_string()),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (
        start_pipeline("pipelines/sidecar-kafka.yaml", SIDECAR_OVERLAY, admin, &env),
        http,
    )
}
