//! Conformance with the real OpenTelemetry Demo: traffic shaped exactly as the demo's services emit it
//! (`tests/common/demo.rs`, pinned to demo 3.0.0 and, for the `app.*` names, 2.2.0) through a payment outage,
//! partial failures (the `paymentFailure` flag at 10 %, 100 %, 50 %) and retries, sent over OTLP/gRPC with a
//! real client to real `bizpilot run` processes — the embedded default pipeline, sidecar → gateway over OTLP, and
//! sidecar-kafka → gateway-kafka through a real Kafka-protocol broker (tansu; one gateway, and two gateways of one
//! consumer group with the spans keyed by trace id) — and compared with the fixture's ground truth, for the current
//! (3.0.0) and the `app.*` (2.2.0) names: checkout and payment operations by outcome and tier, revenue, revenue at
//! risk, recovered and lost per tier and currency (EUR stays EUR), distinct affected customers, and an impact
//! record for every affected customer with the cart value, tier and items of their first failure.

mod common;
#[path = "common/kafka_gateways.rs"]
mod kafka_gateways;
#[path = "kafka_harness.rs"]
mod kafka_harness;

use bizpilot_business::KeyedHasher;
use common::demo::{DemoConfig, DemoTraffic, Generation, OpTruth, cents};
use common::{Bizpilot, Downstream, free_addr, free_port, json_get, metric_sum, start_pipeline, workspace_root};
use kafka_gateways::{Gateway, start_gateway, wait_aligned};
use kafka_harness::{Tansu, create_topics};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Sends every request over OTLP/gRPC (tonic), retrying while the receiver pushes back.
fn send_grpc(port: u16, traffic: &DemoTraffic) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = loop {
            match TraceServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        for req in &traffic.requests {
            let mut tries = 0;
            loop {
                match client.export(req.clone()).await {
                    Ok(_) => break,
                    Err(e) if tries < 200 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("export failed: {e}"),
                }
            }
        }
    });
}

struct Run {
    bizpilot: Bizpilot,
    prometheus: SocketAddr,
    _others: Vec<Bizpilot>,
    grpc: u16,
    /// The gateway's OTLP backend (a real OTLP/gRPC server), and its runtime.
    _backend: Option<(tokio::runtime::Runtime, Downstream)>,
}

const HASH_KEY: &str = "a conformance key of some length";

/// The test replays 25 minutes of event time in seconds: everything is final once the input is idle for
/// `idle_timeout`, and the default pipeline's `enrich/join` (which holds spans with an order id up to
/// `join.window` of wall time for a business event that this traffic does not have) does not hold them, as a
/// wall-clock hold in a replay would make them late in event time.
const OVERLAY: &str = r#"
connectors:
  business_impact:
    idle_timeout: 3s
    metrics_flush_interval: 200ms
processors:
  enrich/join:
    join: {window: 0s}
"#;

/// The embedded default pipeline (pipelines/opentelemetry-demo.yaml), ports moved by its environment variables.
fn start_default() -> Run {
    let (grpc, http, admin, prom) = (free_port(), free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let over = dir.path().join("overlay.yaml");
    std::fs::write(&over, OVERLAY).unwrap();
    let preset = workspace_root().join("pipelines/opentelemetry-demo.yaml");
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT".to_string(), format!("127.0.0.1:{grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT".to_string(), http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT".to_string(), admin.to_string()),
        ("BIZPILOT_PROMETHEUS_ENDPOINT".to_string(), prom.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Bizpilot::start_with(&[preset.as_path(), over.as_path()], admin, dir, &env);
    Run {
        bizpilot: b,
        prometheus: prom,
        _others: vec![],
        grpc,
        _backend: None,
    }
}

/// sidecar.yaml → gateway.yaml over OTLP/gRPC; the gateway forwards to a real OTLP/gRPC server.
fn start_sidecar_gateway() -> Run {
    let (g_grpc, g_http, g_admin, g_prom) = (free_port(), free_addr(), free_addr(), free_addr());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let downstream = rt.block_on(Downstream::start());
    let backend = downstream.addr;
    let gdir = tempfile::tempdir().unwrap();
    let gover = gdir.path().join("overlay.yaml");
    std::fs::write(&gover, OVERLAY).unwrap();
    let gateway_yaml = workspace_root().join("pipelines/gateway.yaml");
    let genv = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT".to_string(), format!("127.0.0.1:{g_grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT".to_string(), g_http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT".to_string(), g_admin.to_string()),
        ("BIZPILOT_PROMETHEUS_ENDPOINT".to_string(), g_prom.to_string()),
        (
            "BIZPILOT_OTLP_BACKEND_ENDPOINT".to_string(),
            format!("http://{backend}"),
        ),
    ];
    let genv: Vec<(&str, &str)> = genv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gateway = Bizpilot::start_with(&[gateway_yaml.as_path(), gover.as_path()], g_admin, gdir, &genv);

    let (s_grpc, s_http, s_admin) = (free_port(), free_addr(), free_addr());
    let sdir = tempfile::tempdir().unwrap();
    let sidecar_yaml = workspace_root().join("pipelines/sidecar.yaml");
    let senv = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT".to_string(), format!("127.0.0.1:{s_grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT".to_string(), s_http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT".to_string(), s_admin.to_string()),
        (
            "BIZPILOT_GATEWAY_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{g_grpc}"),
        ),
        ("BIZPILOT_HASH_KEY".to_string(), HASH_KEY.to_string()),
    ];
    let senv: Vec<(&str, &str)> = senv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sidecar = Bizpilot::start_with(&[sidecar_yaml.as_path()], s_admin, sdir, &senv);
    Run {
        bizpilot: gateway,
        prometheus: g_prom,
        _others: vec![sidecar],
        grpc: s_grpc,
        _backend: Some((rt, downstream)),
    }
}

fn wait_summary(b: &Bizpilot, operation: &str, want: u64) -> Json {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = json_get(b.admin, &format!("/api/v1/impact?operation={operation}&limit=1000"));
        if status == 200 && body["summary"][0]["operations"].as_u64() == Some(want) {
            // Wait for the final state (the tick checkout ends every episode; idle makes it final).
            std::thread::sleep(Duration::from_secs(4));
            let (_, body) = json_get(b.admin, &format!("/api/v1/impact?operation={operation}&limit=1000"));
            return body;
        }
        if Instant::now() > deadline {
            let telemetry: Vec<String> = b
                .metrics()
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("business_impact")
                            || l.contains("refused")
                            || l.contains("dropped")
                            || l.contains("redaction")
                            || l.contains("enrich"))
                })
                .map(String::from)
                .collect();
            panic!(
                "{operation}: never reached {want} operations: {status} {}\n{}\n{}",
                body["summary"],
                telemetry.join("\n"),
                b.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Money totals of the summary for `currency`, in cents.
fn summary_cents(list: &Json, currency: &str) -> i64 {
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["currency"] == currency)
        .map(|m| {
            let a = m["amount"].as_str().unwrap_or("0");
            let (u, c) = a.split_once('.').unwrap_or((a, "0"));
            let c = format!("{c:0<2}");
            u.parse::<i64>().unwrap() * 100 + c[..2].parse::<i64>().unwrap()
        })
        .sum()
}

/// Checks the figures of `b` (its API and its Prometheus endpoint `prometheus`) against `truth` per operation.
/// `hasher`: the key the sidecar hashes customer ids with (impact records show the hash); `min_inside`: how many
/// customers at least failed inside the total outage (each must have its impact record). Returns each
/// operation's API summary.
fn check(
    b: &Bizpilot,
    prometheus: SocketAddr,
    traffic: &DemoTraffic,
    truth: &dyn Fn(&str) -> OpTruth,
    hasher: Option<&KeyedHasher>,
    min_inside: usize,
) -> Vec<Json> {
    let prom = || {
        common::http_get(prometheus, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let mut summaries = Vec::new();
    for op in ["checkout", "payment"] {
        let t: OpTruth = truth(op);
        assert!(
            t.failed > 20 && t.successful > 20,
            "{op}: the workload has both outcomes"
        );
        let body = wait_summary(b, op, t.successful + t.failed);
        let s = &body["summary"][0];
        assert_eq!(
            (s["successful"].as_u64(), s["failed"].as_u64()),
            (Some(t.successful), Some(t.failed)),
            "{op}"
        );
        for cur in ["USD", "EUR"] {
            for (what, key, truth) in [
                ("revenue", "revenue", &t.revenue),
                ("revenue at risk", "revenue_at_risk", &t.at_risk),
                ("recovered", "recovered_revenue", &t.recovered),
                ("lost", "lost_revenue", &t.lost),
            ] {
                assert_eq!(
                    cents(summary_cents(&s[key], cur)),
                    cents(OpTruth::sum(truth, cur)),
                    "{op}: {what} in {cur}"
                );
            }
        }
        // Affected customers: the window of the traffic (closed once the tick moved past it).
        let windows: Vec<u64> = s["affected_customers"]["closed_windows"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                s["affected_customers"]["current_window"]
                    .as_object()
                    .map(|_| &s["affected_customers"]["current_window"]),
            )
            .filter(|w| w["affected_customers"].as_u64().unwrap_or(0) > 0)
            .filter_map(|w| w["affected_customers"].as_u64())
            .collect();
        let want: Vec<u64> = t.affected.values().map(|c| c.len() as u64).collect();
        assert_eq!(windows, want, "{op}: distinct affected customers per window");

        // Per tier and currency, from the Prometheus endpoint.
        let text = prom();
        for ((outcome, tier), n) in &t.operations {
            let got = metric_sum(
                &text,
                "business_operations_total",
                &[
                    &format!("operation=\"{op}\""),
                    &format!("outcome=\"{outcome}\""),
                    &format!("customer_tier=\"{tier}\""),
                ],
            );
            assert_eq!(got as u64, *n, "{op}: {outcome} operations of tier {tier}");
        }
        for (metric, truth) in [
            ("business_revenue_total", &t.revenue),
            ("business_revenue_at_risk_total", &t.at_risk),
            ("business_revenue_recovered_total", &t.recovered),
            ("business_revenue_lost_total", &t.lost),
        ] {
            for ((tier, cur), v) in truth {
                let got = metric_sum(
                    &text,
                    metric,
                    &[
                        &format!("operation=\"{op}\""),
                        &format!("currency=\"{cur}\""),
                        &format!("customer_tier=\"{tier}\""),
                    ],
                );
                assert!(
                    (got - *v as f64 / 100.0).abs() < 0.005,
                    "{op}: {metric} {tier} {cur}: {got} != {}",
                    cents(*v)
                );
            }
        }
        assert_eq!(
            metric_sum(
                &text,
                "business_operations_total",
                &[&format!("operation=\"{op}\""), "customer_tier=\"unknown\""]
            ),
            0.0,
            "{op}: every operation has its tier"
        );

        // Impact records: one per customer and incident; every customer who failed well inside the total
        // outage is listed, with the cart value, tier and line items of the fixture.
        let records: Vec<&Json> = body["customers"].as_array().into_iter().flatten().collect();
        assert!(!records.is_empty(), "{op}: impact records");
        let outage_start = traffic.config.start_ns
            + (traffic.config.phases[0].seconds + traffic.config.phases[1].seconds + 60) * common::demo::SEC;
        let outage_end = outage_start + (traffic.config.phases[2].seconds - 60) * common::demo::SEC;
        let shown = |c: &str| match hasher {
            Some(h) => h.hash_hex(c.as_bytes()),
            None => c.to_string(),
        };
        let listed: BTreeSet<String> = records
            .iter()
            .map(|r| r["customer"].as_str().unwrap_or("").to_string())
            .collect();
        let all: BTreeSet<String> = t.all_affected().iter().map(|c| shown(c)).collect();
        assert!(
            listed.is_subset(&all),
            "{op}: records only for affected customers (as shown)"
        );
        // Every affected customer has a record (inside an incident or not), one of which describes their first
        // failure: its cart value, tier and line items.
        assert_eq!(
            listed, all,
            "{op}: an impact record for every affected customer (as shown)"
        );
        let mut checked = 0;
        for (customer, (time, value, cur, tier, items)) in &t.first_failure {
            if *time >= outage_start && *time < outage_end {
                checked += 1;
            }
            let id = shown(customer);
            let theirs: Vec<&&Json> = records.iter().filter(|r| r["customer"] == id.as_str()).collect();
            assert!(
                theirs.iter().any(|r| r["cart_value"]["currency"] == cur.as_str()
                    && r["cart_value"]["amount"] == cents(*value)
                    && r["tier"] == tier.as_str()
                    && r["item_count"].as_i64() == Some(*items)),
                "{op}: {customer} ({id}): no record of {} {cur}, {tier}, {items} items in {theirs:?}",
                cents(*value)
            );
        }
        assert!(checked > min_inside, "{op}: customers inside the outage");
        summaries.push(s.clone());
    }
    summaries
}

fn conformance(generation: Generation, seed: u64, topology: &str) {
    let traffic = DemoTraffic::generate(&DemoConfig::outage(generation, seed));
    let run = match topology {
        "default" => start_default(),
        _ => start_sidecar_gateway(),
    };
    send_grpc(run.grpc, &traffic);
    let hasher = (topology != "default").then(|| KeyedHasher::new(HASH_KEY.as_bytes()).unwrap());
    check(
        &run.bizpilot,
        run.prometheus,
        &traffic,
        &|op| traffic.truth(op),
        hasher.as_ref(),
        20,
    );
}

#[test]
fn the_default_pipeline_gives_the_truth_of_demo_3_0_0_traffic() {
    conformance(Generation::Current, 18, "default");
}

#[test]
fn the_default_pipeline_gives_the_truth_of_demo_2_2_0_app_traffic() {
    conformance(Generation::App, 19, "default");
}

#[test]
fn sidecar_to_gateway_gives_the_truth_of_demo_traffic() {
    conformance(Generation::Current, 20, "sidecar");
}

#[test]
fn sidecar_to_gateway_gives_the_truth_of_demo_2_2_0_app_traffic() {
    conformance(Generation::App, 23, "sidecar");
}

// ---- sidecar-kafka → gateway-kafka, through a real Kafka-protocol broker (tansu) ----------------------------------

/// Test settings over the shipped pipelines/gateway-kafka.yaml. The replay sends 25 minutes of event time (and a
/// checkout one window later) in seconds, and a gateway consumes its partitions in whatever order the fetches
/// return: `allowed_lateness` above the whole replay makes nothing late whatever the skew between partitions, and
/// the figures are final once a gateway is idle for `idle_timeout`. The join's wall-clock hold (`join.window`,
/// for business events this traffic does not have) would make held spans late in a replay.
const KAFKA_OVERLAY: &str = r#"
connectors:
  business_impact:
    allowed_lateness: 2h
    idle_timeout: 3s
    metrics_flush_interval: 200ms
processors:
  enrich/gateway:
    join: {window: 0s}
"#;

/// A broker with the shipped topics (`partitions` for the keyed ones) and the shipped sidecar writing to it; the
/// sidecar's OTLP/gRPC port.
fn start_kafka_sidecar(partitions: i32) -> (Tansu, Bizpilot, u16) {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.spans", "shop.orders"], partitions);
    create_topics(&b, &["shop.logs", "shop.metrics"], 1);
    let (grpc, admin) = (free_port(), free_addr());
    let env = [
        ("BIZPILOT_HASH_KEY", HASH_KEY.to_string()),
        ("BIZPILOT_KAFKA_BROKERS", b),
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", free_addr().to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sidecar = start_pipeline("pipelines/sidecar-kafka.yaml", "", admin, &env);
    (broker, sidecar, grpc)
}

fn span_count(traffic: &DemoTraffic) -> usize {
    traffic
        .requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// The trace ids whose spans reached each gateway's backend (every span a gateway consumed goes there), once all
/// `want` spans arrived; asserts that no trace was split between gateways.
fn traces_per_gateway(rt: &tokio::runtime::Runtime, gateways: &[&Gateway], want: usize) -> Vec<BTreeSet<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: usize = gateways.iter().map(|g| g.backend.received(|r| r.span_count())).sum();
        if got >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {want} spans at the gateways' backends"
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(250)));
    }
    let shares: Vec<BTreeSet<Vec<u8>>> = gateways
        .iter()
        .map(|g| {
            g.backend
                .received(|r| r.spans().into_iter().map(|s| s.trace_id).collect())
        })
        .collect();
    let total: usize = shares.iter().map(BTreeSet::len).sum();
    let all: BTreeSet<&Vec<u8>> = shares.iter().flatten().collect();
    assert_eq!(total, all.len(), "every trace's spans at one gateway only");
    shares
}

/// sidecar-kafka → gateway-kafka, one gateway: exactly the fixture's truth, demo 2.2.0 (`app.*`) names.
#[test]
fn sidecar_kafka_to_gateway_kafka_gives_the_truth_of_demo_2_2_0_app_traffic() {
    let traffic = DemoTraffic::generate(&DemoConfig::outage(Generation::App, 22));
    let (broker, _sidecar, grpc) = start_kafka_sidecar(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = start_gateway(&rt, "gw-app", "demo-app", &broker.bootstrap, KAFKA_OVERLAY);
    wait_aligned(&[&gw], 2, Duration::from_secs(60));
    send_grpc(grpc, &traffic);
    let hasher = KeyedHasher::new(HASH_KEY.as_bytes()).unwrap();
    check(
        &gw.bp,
        gw.prometheus,
        &traffic,
        &|op| traffic.truth(op),
        Some(&hasher),
        20,
    );
}

/// sidecar-kafka → gateway-kafka with demo 3.0.0 names: a single gateway (alone in its group) gives exactly the
/// truth; two gateways of one group over 4 partitions keyed by trace id each see whole traces and give exactly the
/// truth of their share of the traces. Summed over the two: operations, failed operations and revenue are the
/// truth's; revenue at risk, recovered and lost are the sums of the shares' truths (an episode is per customer,
/// and a customer's retry is a new trace that may land on the other gateway: a failure on one and the successful
/// retry on the other is at risk and lost on the first, plain revenue on the second); distinct affected customers
/// summed over the gateways count a customer who failed on both twice (issue #17's fleet problem).
#[test]
fn sidecar_kafka_to_gateway_kafka_gives_the_truth_of_demo_3_0_0_traffic_on_one_and_two_gateways() {
    let traffic = DemoTraffic::generate(&DemoConfig::outage(Generation::Current, 21));
    const PARTITIONS: i32 = 4;
    let (broker, _sidecar, grpc) = start_kafka_sidecar(PARTITIONS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = broker.bootstrap.clone();
    let reference = start_gateway(&rt, "gw-reference", "demo-reference", &b, KAFKA_OVERLAY);
    let gw0 = start_gateway(&rt, "gw-fleet-0", "demo-fleet", &b, KAFKA_OVERLAY);
    let gw1 = start_gateway(&rt, "gw-fleet-1", "demo-fleet", &b, KAFKA_OVERLAY);
    wait_aligned(&[&reference], PARTITIONS, Duration::from_secs(60));
    wait_aligned(&[&gw0, &gw1], PARTITIONS, Duration::from_secs(60));
    send_grpc(grpc, &traffic);
    let hasher = KeyedHasher::new(HASH_KEY.as_bytes()).unwrap();
    check(
        &reference.bp,
        reference.prometheus,
        &traffic,
        &|op| traffic.truth(op),
        Some(&hasher),
        20,
    );

    let shares = traces_per_gateway(&rt, &[&gw0, &gw1], span_count(&traffic));
    let share_truth = |i: usize, op: &str| traffic.truth_of(op, |a| shares[i].contains(a.trace_id.as_slice()));
    let summaries: Vec<Vec<Json>> = [&gw0, &gw1]
        .iter()
        .enumerate()
        .map(|(i, g)| {
            check(
                &g.bp,
                g.prometheus,
                &traffic,
                &|op| share_truth(i, op),
                Some(&hasher),
                5,
            )
        })
        .collect();
    for (k, op) in ["checkout", "payment"].into_iter().enumerate() {
        let whole = traffic.truth(op);
        let parts = [share_truth(0, op), share_truth(1, op)];
        let api = |key: &str| -> u64 { summaries.iter().map(|s| s[k][key].as_u64().unwrap_or(0)).sum() };
        assert_eq!(
            (api("successful"), api("failed")),
            (whole.successful, whole.failed),
            "{op}: operations over the fleet"
        );
        for cur in ["USD", "EUR"] {
            let money = |key: &str| -> i64 { summaries.iter().map(|s| summary_cents(&s[k][key], cur)).sum() };
            assert_eq!(
                money("revenue"),
                OpTruth::sum(&whole.revenue, cur),
                "{op}: fleet revenue {cur}"
            );
            for key in ["revenue_at_risk", "recovered_revenue", "lost_revenue"] {
                let of = |t: &OpTruth| -> i64 {
                    let m: &BTreeMap<(String, String), i64> = match key {
                        "revenue_at_risk" => &t.at_risk,
                        "recovered_revenue" => &t.recovered,
                        _ => &t.lost,
                    };
                    OpTruth::sum(m, cur)
                };
                let want: i64 = parts.iter().map(of).sum();
                assert_eq!(money(key), want, "{op}: fleet {key} {cur} = sum of the shares' truths");
            }
        }
        // Distinct affected customers: the fleet's sum counts a customer who failed on both gateways twice.
        let both: usize = whole
            .affected
            .keys()
            .map(|w| {
                let on = |i: usize| parts[i].affected.get(w).cloned().unwrap_or_default();
                on(0).intersection(&on(1)).count()
            })
            .sum();
        let summed: usize = parts
            .iter()
            .map(|t| t.affected.values().map(BTreeSet::len).sum::<usize>())
            .sum();
        let single: usize = whole.affected.values().map(BTreeSet::len).sum();
        assert_eq!(summed, single + both, "{op}: affected customers summed over the fleet");
        eprintln!(
            "{op}: fleet of 2 over {PARTITIONS} partitions: {} + {} traces; at risk USD {} (single gateway {}), \
             lost USD {} (single {}); affected customers summed {summed} = single {single} + {both} who failed on both",
            shares[0].len(),
            shares[1].len(),
            cents(parts.iter().map(|t| OpTruth::sum(&t.at_risk, "USD")).sum()),
            cents(OpTruth::sum(&whole.at_risk, "USD")),
            cents(parts.iter().map(|t| OpTruth::sum(&t.lost, "USD")).sum()),
            cents(OpTruth::sum(&whole.lost, "USD")),
        );
    }
}

/// The fixture itself: the truth is consistent and the traffic has the demo's shapes.
#[test]
fn the_fixture_has_the_demo_shapes_and_a_consistent_truth() {
    for g in [Generation::Current, Generation::App] {
        let traffic = DemoTraffic::generate(&DemoConfig::outage(g, 7));
        let names: BTreeSet<String> = traffic
            .requests
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter())
            .map(|s| s.name.clone())
            .collect();
        for n in [
            "oteldemo.CheckoutService/PlaceOrder",
            "prepareOrderItemsAndShippingQuoteFromCart",
            "grpc.oteldemo.PaymentService/Charge",
            "oteldemo.PaymentService/Charge",
            "charge",
            "POST /get-quote",
            "POST /ship-order",
            "POST /send_order_confirmation",
            "orders publish",
        ] {
            assert!(names.contains(n), "{g:?}: span {n}");
        }
        for op in ["checkout", "payment"] {
            let t = traffic.truth(op);
            let rec = OpTruth::sum(&t.recovered, "USD") + OpTruth::sum(&t.lost, "USD");
            assert_eq!(
                rec,
                OpTruth::sum(&t.at_risk, "USD"),
                "{g:?} {op}: at risk = recovered + lost (USD)"
            );
            let rec = OpTruth::sum(&t.recovered, "EUR") + OpTruth::sum(&t.lost, "EUR");
            assert_eq!(
                rec,
                OpTruth::sum(&t.at_risk, "EUR"),
                "{g:?} {op}: at risk = recovered + lost (EUR)"
            );
            assert!(OpTruth::sum(&t.at_risk, "EUR") > 0 && OpTruth::sum(&t.recovered, "USD") > 0);
            assert!(t.failed > t.all_affected().len() as u64, "{g:?}: retries fail again");
        }
        assert_eq!(traffic.truth("checkout").at_risk, traffic.truth("payment").at_risk);
    }
}
