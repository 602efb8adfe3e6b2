//! Conformance with the real OpenTelemetry Demo: traffic shaped exactly as the demo's services emit it
//! (`tests/common/demo.rs`, pinned to demo 3.0.0 and, for the `app.*` names, 2.2.0) through a payment outage,
//! partial failures (the `paymentFailure` flag at 10 %, 100 %, 50 %) and retries, sent over OTLP/gRPC with a
//! real client to real `bizpilot run` processes — the embedded default pipeline, and sidecar → gateway over
//! OTLP — and compared with the fixture's ground truth: checkout and payment operations by outcome and tier,
//! revenue, revenue at risk, recovered and lost per tier and currency (EUR stays EUR), distinct affected
//! customers, and impact records with cart value, tier and items.

mod common;

use bizpilot_business::KeyedHasher;
use common::demo::{DemoConfig, DemoTraffic, Generation, OpTruth, cents};
use common::{Bizpilot, Downstream, free_addr, free_port, json_get, metric_sum, workspace_root};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::Value as Json;
use std::collections::BTreeSet;
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

/// `hasher`: the key the sidecar hashes customer ids with (impact records show the hash).
fn check(run: &Run, traffic: &DemoTraffic, hasher: Option<KeyedHasher>) {
    let prom = || {
        common::http_get(run.prometheus, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    for op in ["checkout", "payment"] {
        let t: OpTruth = traffic.truth(op);
        assert!(
            t.failed > 50 && t.successful > 50,
            "{op}: the workload has both outcomes"
        );
        let body = wait_summary(&run.bizpilot, op, t.successful + t.failed);
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
        let shown = |c: &str| match &hasher {
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
        let mut checked = 0;
        for (customer, (time, value, cur, tier, items)) in &t.first_failure {
            if *time < outage_start || *time >= outage_end {
                continue;
            }
            checked += 1;
            let id = shown(customer);
            let r = records
                .iter()
                .find(|r| r["customer"] == id.as_str())
                .unwrap_or_else(|| panic!("{op}: no impact record for {customer} ({id})"));
            assert_eq!(r["cart_value"]["currency"], cur.as_str(), "{op}: {customer}");
            assert_eq!(r["cart_value"]["amount"], cents(*value), "{op}: {customer}");
            assert_eq!(r["tier"], tier.as_str(), "{op}: {customer}");
            assert_eq!(r["item_count"].as_i64(), Some(*items), "{op}: {customer}");
        }
        assert!(checked > 20, "{op}: customers inside the outage");
    }
}

fn conformance(generation: Generation, seed: u64, topology: &str) {
    let traffic = DemoTraffic::generate(&DemoConfig::outage(generation, seed));
    let run = match topology {
        "default" => start_default(),
        _ => start_sidecar_gateway(),
    };
    send_grpc(run.grpc, &traffic);
    let hasher = (topology != "default").then(|| KeyedHasher::new(HASH_KEY.as_bytes()).unwrap());
    check(&run, &traffic, hasher);
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
