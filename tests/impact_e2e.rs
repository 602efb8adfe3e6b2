//! End to end: the shipped `pipelines/opentelemetry-demo.yaml` in the real binary, fed a generated shop outage
//! over OTLP/HTTP (traces and business events, in arrival order, with retries, duplicates, late and reordered
//! data), against the workload's ground truth; a real Prometheus server scraping the `prometheus` exporter;
//! a restart mid-stream; and a dimension with 100,000 distinct values.

mod common;

use bizpilot_core::{Currency, Money};
use bizpilot_shopgen::{Emission, Shop, ShopConfig, Workload, pack_events, pack_traces, spans::names};
use common::{
    Bizpilot, Downstream, Prometheus, free_port, json_get, metric_sum, post_accepted, promtool_check_metrics, rss_kib,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value as Json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SEC: u64 = 1_000_000_000;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Ports of one bizpilot run, passed to the shipped preset through its environment variables.
struct Ports {
    grpc: u16,
    http: SocketAddr,
    admin: SocketAddr,
    prometheus: SocketAddr,
}

impl Ports {
    fn new() -> Self {
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        Ports {
            grpc: free_port(),
            http: addr(),
            admin: addr(),
            prometheus: addr(),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BIZPILOT_OTLP_GRPC_ENDPOINT".into(), format!("127.0.0.1:{}", self.grpc)),
            ("BIZPILOT_OTLP_HTTP_ENDPOINT".into(), self.http.to_string()),
            ("BIZPILOT_ADMIN_ENDPOINT".into(), self.admin.to_string()),
            ("BIZPILOT_PROMETHEUS_ENDPOINT".into(), self.prometheus.to_string()),
        ]
    }
}

/// Runs the shipped preset with `overlay` merged over it.
///
/// The overlays set `idle_timeout` well above any pause of the sender and keep the enrich processor's join
/// window short: once the input is idle, everything seen is final, and a span that then arrives with an older end
/// time is late; a replay also runs event time much faster than the wall clock the join window is measured in.
fn start(ports: &Ports, overlay: &str) -> Bizpilot {
    start_env(ports, overlay, &[])
}

/// [`start`] with more environment variables for the process.
fn start_env(ports: &Ports, overlay: &str, extra: &[(&str, &str)]) -> Bizpilot {
    let dir = tempfile::tempdir().unwrap();
    let over = dir.path().join("overlay.yaml");
    std::fs::write(&over, overlay).unwrap();
    let preset = workspace_root().join("pipelines/opentelemetry-demo.yaml");
    let env = ports.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    Bizpilot::start_with(&[preset.as_path(), over.as_path()], ports.admin, dir, &env)
}

/// Sends emissions in arrival order, in chunks: each chunk's business events, then its traces.
fn send(addr: SocketAddr, emissions: &[Emission]) {
    for chunk in emissions.chunks(300) {
        for req in pack_events(chunk.iter().filter_map(Emission::as_event), 10_000) {
            post_accepted(addr, "/v1/logs", &req.encode_to_vec());
        }
        for req in pack_traces(chunk.iter().filter_map(Emission::as_trace), 10_000) {
            post_accepted(addr, "/v1/traces", &req.encode_to_vec());
        }
    }
}

fn outage_workload() -> Workload {
    let cfg: ShopConfig = serde_yaml::from_str(
        r#"
seed: 23
duration: 20m
orders_per_sec: 2
customers: 20000
browse_traces: {min: 0, max: 1}
add_item_traces: false
impact_window: 1h
fulfilment: {enabled: false}
injections:
  payment_outages:
    - {start: 5m, end: 9m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 2s}
  retries: {probability: 0.7, delay: {min: 30s, max: 4m}, max_attempts: 3}
  duplicates: {probability: 0.03, max_delay: 5s}
  late: {probability: 0.02, delay: {min: 1m, max: 5m}}
  out_of_order: {probability: 0.1, max_delay: 10s}
  events_after_spans: {probability: 0.2, delay: {min: 100ms, max: 10s}}
"#,
    )
    .unwrap();
    Shop::generate(&cfg).unwrap()
}

fn money(v: &Json) -> Money {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not money: {v} ({e})"))
}

fn usd_of(list: &Json) -> Money {
    list.as_array()
        .and_then(|l| l.iter().map(money).find(|m| m.currency() == Currency::USD))
        .unwrap_or_else(|| Money::zero(Currency::USD))
}

/// Polls the impact API until `done` holds for the summary of `operation`.
fn wait_summary(b: &Bizpilot, operation: &str, timeout: Duration, done: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = json_get(b.admin, &format!("/api/v1/impact?operation={operation}&limit=0"));
        if status == 200 && done(&body["summary"][0]) {
            return body["summary"][0].clone();
        }
        if Instant::now() > deadline {
            panic!("impact API never got there: {status} {body}\n{}", b.logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scrape(addr: SocketAddr) -> String {
    common::http_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

#[test]
fn a_generated_outage_through_the_binary_matches_the_ground_truth_and_reaches_prometheus() {
    let work = outage_workload();
    let truth = &work.truth;
    let ports = Ports::new();
    // Impact and incident records also go to a real OTLP/gRPC server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let downstream = rt.block_on(Downstream::start());
    let b = start(
        &ports,
        &format!(
            r#"
connectors:
  business_impact:
    allowed_lateness: 10m
    idle_timeout: 5s
    metrics_flush_interval: 200ms
processors:
  enrich/join:
    join: {{window: 2s}}
exporters:
  otlp:
    endpoint: http://{}
service:
  pipelines:
    logs/impact:
      receivers: [business_impact]
      exporters: [debug, otlp]
"#,
            downstream.addr
        ),
    );
    let prom = Prometheus::start(&[ports.prometheus]);
    send(ports.http, &work.emissions);

    for name in ["checkout", "payment"] {
        let t = truth.operation(name).unwrap();
        let s = wait_summary(&b, name, Duration::from_secs(120), |s| s["operations"] == t.total);
        assert_eq!(
            (s["successful"].as_u64(), s["failed"].as_u64()),
            (Some(t.successful), Some(t.failed)),
            "{name}"
        );
        assert_eq!(usd_of(&s["revenue"]), t.revenue, "{name}: revenue");
        assert_eq!(
            usd_of(&s["revenue_at_risk"]),
            t.revenue_at_risk,
            "{name}: revenue at risk"
        );
        assert_eq!(
            usd_of(&s["recovered_revenue"]),
            t.recovered_revenue,
            "{name}: recovered"
        );
        let lost = usd_of(&s["lost_revenue"])
            .checked_add(usd_of(&s["open_at_risk"]))
            .unwrap();
        assert_eq!(lost, t.lost_revenue, "{name}: lost (ended + still open)");
        let mut windows: Vec<(String, u64)> = s["affected_customers"]["closed_windows"]
            .as_array()
            .unwrap()
            .iter()
            .chain(
                s["affected_customers"]["current_window"]
                    .as_object()
                    .map(|_| &s["affected_customers"]["current_window"]),
            )
            .map(|w| {
                (
                    w["start_unix_nano"].as_str().unwrap().to_string(),
                    w["affected_customers"].as_u64().unwrap(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        windows.dedup();
        let expected: Vec<(String, u64)> = t
            .affected_customers_by_window
            .iter()
            .map(|w| (w.start_unix_nano.to_string(), w.affected_customers))
            .collect();
        assert_eq!(windows, expected, "{name}: affected customers");
    }
    assert!(
        b.metric_sum(
            "bizpilot_connector_business_impact_dropped_spans_total",
            &["reason=\"duplicate\""]
        ) > 0.0,
        "duplicates were sent and dropped"
    );
    assert_eq!(
        b.metric_sum(
            "bizpilot_connector_business_impact_dropped_spans_total",
            &["reason=\"late\""]
        ),
        0.0
    );

    // Incidents: the outage, within one evaluation interval (10 s).
    let (_, inc) = json_get(b.admin, "/api/v1/incidents?operation=checkout");
    let incidents = inc["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), truth.impact.incidents.len(), "{inc}");
    for (got, want) in incidents.iter().rev().zip(&truth.impact.incidents) {
        let start: u64 = got["start_unix_nano"].as_str().unwrap().parse().unwrap();
        let end: u64 = got["end_unix_nano"].as_str().expect("closed").parse().unwrap();
        assert!(start.abs_diff(want.start_unix_nano) <= 10 * SEC, "{got}");
        assert!(end.abs_diff(want.end_unix_nano) <= 10 * SEC, "{got}");
        assert_eq!(got["failed_operations"], want.failed_checkouts);
        assert_eq!(got["affected_customers"], want.affected_customers);
        assert_eq!(got["top_causes"][0]["status_message"], want.status_message.as_str());
    }

    // The impact list: complete and ordered by cart value, with carts, page by page.
    let mut list: Vec<Json> = Vec::new();
    loop {
        let (_, page) = json_get(
            b.admin,
            &format!("/api/v1/impact?operation=checkout&limit=100&offset={}", list.len()),
        );
        assert_eq!(page["total"], truth.impact.impact_list.len());
        let customers = page["customers"].as_array().unwrap().clone();
        if customers.is_empty() {
            break;
        }
        list.extend(customers);
    }
    assert_eq!(list.len(), truth.impact.impact_list.len());
    for (got, want) in list.iter().zip(&truth.impact.impact_list) {
        assert_eq!(got["customer"], want.customer_id.as_str());
        assert_eq!(got["tier"], want.tier.as_str());
        assert_eq!(money(&got["cart_value"]), want.cart_value);
        assert_eq!(got["order_id"], want.order_id.as_str());
        assert_eq!(got["trace_id"], want.trace_id.as_str());
        assert_eq!(got["time_unix_nano"], want.time_unix_nano.to_string());
        assert_eq!(got["failed_attempts"], want.failed_attempts);
        assert_eq!(got["failure"]["span_name"], want.failure.span_name);
        assert_eq!(
            got["root_cause"]["status_message"],
            want.root_cause.status_message.as_str()
        );
        let items: Vec<(String, i64, Money)> = got["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["sku"].as_str().unwrap().to_string(),
                    i["quantity"].as_i64().unwrap(),
                    money(&i["unit_price"]),
                )
            })
            .collect();
        let want_items: Vec<(String, i64, Money)> = want
            .items
            .iter()
            .map(|i| (i.sku.clone(), i64::from(i.quantity), i.unit_price))
            .collect();
        assert_eq!(items, want_items);
    }

    // The same records as OTLP log records: a `business.impact` for every listed customer (logged when the customer
    // fails, and logged again naming the incident once one covers the failure), the incident's transitions.
    let checkout_records = |r: &common::Received| -> Vec<(String, String, String)> {
        r.logs
            .iter()
            .flat_map(|l| &l.resource_logs)
            .flat_map(|l| &l.scope_logs)
            .flat_map(|s| &s.log_records)
            .filter(|l| {
                l.attributes.iter().any(|kv| {
                    kv.key == "business.operation"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(any_value::Value::StringValue(s)) if s == "checkout")
                })
            })
            .map(|l| {
                let state = l
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "business.incident.state")
                    .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()))
                    .map(|v| match v {
                        any_value::Value::StringValue(s) => s.clone(),
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                let customer = l
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "business.customer.id")
                    .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()))
                    .map(|v| match v {
                        any_value::Value::StringValue(s) => s.clone(),
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                (l.event_name.clone(), state, customer)
            })
            .collect()
    };
    let n = truth.impact.impact_list.len();
    rt.block_on(downstream.wait_for(Duration::from_secs(30), "impact records", |r| {
        checkout_records(r)
            .iter()
            .filter(|(e, _, _)| e == "business.impact")
            .map(|(_, _, c)| c.clone())
            .collect::<HashSet<_>>()
            .len()
            >= n
    }));
    let records = downstream.received(checkout_records);
    let logged: Vec<&str> = records
        .iter()
        .filter(|(e, _, _)| e == "business.impact")
        .map(|(_, _, c)| c.as_str())
        .collect();
    let logged_customers: HashSet<&str> = logged.iter().copied().collect();
    let listed: HashSet<&str> = truth
        .impact
        .impact_list
        .iter()
        .map(|r| r.customer_id.as_str())
        .collect();
    assert_eq!(logged_customers, listed, "the customers of the logged impact records");
    assert!(logged.len() <= 2 * n, "{} records for {n} customers", logged.len());
    let states: Vec<&str> = records
        .iter()
        .filter(|(e, _, _)| e == "business.incident")
        .map(|(_, s, _)| s.as_str())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "open").count(),
        truth.impact.incidents.len()
    );
    assert_eq!(
        states.iter().filter(|s| **s == "closed").count(),
        truth.impact.incidents.len()
    );
    assert!(states.iter().filter(|s| **s == "update").count() >= 10, "{states:?}");

    // Prometheus scrapes the exporter; PromQL gives the revenue at risk to the cent.
    let want_cents = truth.operation("checkout").unwrap().revenue_at_risk.to_minor_rounded();
    prom.wait_for(
        r#"sum(business_revenue_at_risk_total{operation="checkout",currency="USD"})"#,
        Duration::from_secs(60),
        |v| (v * 100.0).round() as i128 == want_cents,
    );
    let failed = truth.operation("checkout").unwrap().failed as f64;
    prom.wait_for(
        r#"sum(business_operations_total{operation="checkout",outcome="failure"})"#,
        Duration::from_secs(30),
        |v| v == failed,
    );
    prom.wait_for(
        r#"max(business_incident_open{operation="checkout"})"#,
        Duration::from_secs(30),
        |v| v == 0.0,
    );
    let text = scrape(ports.prometheus);
    assert!(text.contains("# TYPE business_revenue_at_risk_total counter"), "{text}");
    assert!(text.contains("# TYPE business_operation_duration_seconds histogram"));
    assert!(text.contains("business_goal_attainment_ratio{"));
    let (ok, out) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{out}\n--- scrape ---\n{text}");
}

/// Unique PlaceOrder spans of some emissions.
fn place_orders(emissions: &[Emission]) -> u64 {
    let mut seen = HashSet::new();
    for t in emissions.iter().filter_map(Emission::as_trace) {
        for (_, s) in t.decode_spans() {
            if s.name == names::PLACE_ORDER {
                seen.insert((s.trace_id.clone(), s.span_id.clone()));
            }
        }
    }
    seen.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_starts_the_counters_again_with_a_new_start_time() {
    let work = tokio::task::spawn_blocking(|| {
        let mut cfg: ShopConfig = ShopConfig {
            duration: bizpilot_core::config::Duration::from_secs(240),
            ..Default::default()
        };
        cfg.fulfilment.enabled = false;
        Shop::generate(&cfg).unwrap()
    })
    .await
    .unwrap();
    let cut = work.emissions.len() * 6 / 10;
    let (first, second) = work.emissions.split_at(cut);
    let (want1, want2) = (place_orders(first), place_orders(second));
    assert!(want2 < want1 && want2 > 0);
    let downstream = Downstream::start().await;
    let ports = Ports::new();
    let overlay = format!(
        r#"
connectors:
  business_impact:
    allowed_lateness: 30s
    idle_timeout: 5s
    metrics_flush_interval: 200ms
processors:
  enrich/join:
    # After the restart the state lacks the orders of the first half: spans go on without waiting for them.
    join: {{window: 0s}}
exporters:
  otlp:
    endpoint: http://{}
service:
  pipelines:
    metrics/impact:
      receivers: [business_impact]
      exporters: [prometheus, otlp]
"#,
        downstream.addr
    );
    let prom = Prometheus::start(&[ports.prometheus]);
    let query = r#"sum(business_operations_total{operation="checkout"})"#;

    let run = |emissions: Vec<Emission>, want: u64| {
        let ports_env = Ports {
            grpc: ports.grpc,
            http: ports.http,
            admin: ports.admin,
            prometheus: ports.prometheus,
        };
        let overlay = overlay.clone();
        tokio::task::spawn_blocking(move || {
            let b = start(&ports_env, &overlay);
            send(ports_env.http, &emissions);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let v = metric_sum(
                    &scrape(ports_env.prometheus),
                    "business_operations_total",
                    &["operation=\"checkout\""],
                );
                assert!(v <= want as f64, "never more than this process saw: {v} > {want}");
                if v == want as f64 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "scrape stuck at {v}, want {want}\n{}\n{}",
                    b.metrics()
                        .lines()
                        .filter(|l| l.contains("business_impact") || l.contains("enrich"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    b.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            b
        })
    };
    let mut b1 = run(first.to_vec(), want1).await.unwrap();
    let prom_wait = |want: u64| {
        prom.wait_for(query, Duration::from_secs(30), move |v| v == want as f64);
    };
    prom_wait(want1);
    b1.signal("TERM");
    let status = tokio::task::spawn_blocking(move || b1.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success());
    let b2 = run(second.to_vec(), want2).await.unwrap();
    // Prometheus sees the counters start again (a reset), not a continuation: no double counting.
    prom_wait(want2);
    prom.wait_for(
        r#"sum(resets(business_operations_total{operation="checkout"}[10m]))"#,
        Duration::from_secs(30),
        |v| v >= 1.0,
    );
    drop(b2);
    // OTLP: one start time per process, the second later; the second process's values start from zero.
    let starts: Vec<(u64, i64)> = downstream.received(|r| {
        r.metrics
            .iter()
            .flat_map(|m| &m.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == "business.operations")
            .filter_map(|m| match &m.data {
                Some(Data::Sum(s)) => Some(s.data_points.iter().map(|p| {
                    let v = match p.value {
                        Some(number_data_point::Value::AsInt(i)) => i,
                        _ => 0,
                    };
                    (p.start_time_unix_nano, v)
                })),
                _ => None,
            })
            .flatten()
            .collect()
    });
    let distinct: Vec<u64> = {
        let mut v: Vec<u64> = starts.iter().map(|(s, _)| *s).collect();
        v.dedup();
        v.sort_unstable();
        v.dedup();
        v
    };
    assert_eq!(distinct.len(), 2, "two processes, two start times: {distinct:?}");
    let second_max: i64 = starts
        .iter()
        .filter(|(s, _)| *s == distinct[1])
        .map(|(_, v)| *v)
        .max()
        .unwrap();
    assert!(second_max as u64 <= want2, "the second process counts only what it saw");
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// `n` PlaceOrder spans from `from`, each with its own `demo.region`, one customer in 1000.
fn region_spans(from: u64, n: u64) -> ExportTraceServiceRequest {
    let base = 1_735_689_600 * SEC;
    let spans = (from..from + n)
        .map(|i| Span {
            trace_id: (u128::from(i) + 1).to_be_bytes().to_vec(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: names::PLACE_ORDER.into(),
            start_time_unix_nano: base + i * SEC / 100,
            end_time_unix_nano: base + i * SEC / 100 + 1_000_000,
            attributes: vec![
                kv(
                    "user.id",
                    any_value::Value::StringValue(format!("cust-{:06}", i % 1000)),
                ),
                kv(
                    "demo.user_context.loyalty_level",
                    any_value::Value::StringValue("gold".into()),
                ),
                kv("demo.order.amount", any_value::Value::DoubleValue(12.5)),
                kv("demo.region", any_value::Value::StringValue(format!("region-{i}"))),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", any_value::Value::StringValue("checkout".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn a_hundred_thousand_distinct_dimension_values_stay_bounded_and_are_counted() {
    let ports = Ports::new();
    // One malloc arena, so that the resident size follows what the process holds rather than which of glibc's
    // per-thread arenas the worker handling the second half allocated from. Without it the second half
    // sometimes grew RSS by ~48 MiB (1 of 3 runs, and once in CI); with it 6 of 6 runs passed.
    let b = start_env(
        &ports,
        r#"
connectors:
  business_impact:
    dimensions:
      - {name: customer.tier, attribute: business.customer.tier, default: unknown}
      - {name: region, attribute: demo.region}
    max_series: 100
    allowed_lateness: 1s
    idle_timeout: 500ms
    dedup_window: 10s
    metrics_flush_interval: 200ms
"#,
        &[("MALLOC_ARENA_MAX", "1")],
    );
    let send_range = |from: u64, to: u64| {
        for start in (from..to).step_by(1000) {
            post_accepted(ports.http, "/v1/traces", &region_spans(start, 1000).encode_to_vec());
        }
    };
    let wait_total = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = scrape(ports.prometheus);
            if metric_sum(&text, "business_operations_total", &["operation=\"checkout\""]) == want {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "stuck at {}\n{}\n{:?}\n{}",
                metric_sum(&text, "business_operations_total", &["operation=\"checkout\""]),
                text,
                json_get(b.admin, "/api/v1/impact?operation=checkout&limit=0"),
                b.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    send_range(0, 50_000);
    wait_total(50_000.0);
    let rss_half = rss_kib(b.pid());
    send_range(50_000, 100_000);
    let text = wait_total(100_000.0);
    let rss_full = rss_kib(b.pid());
    let series = text
        .lines()
        .filter(|l| l.starts_with("business_operations_total{"))
        .count();
    assert_eq!(series, 101, "100 series and the overflow series");
    assert_eq!(
        metric_sum(&text, "business_operations_total", &["otel_metric_overflow=\"true\""]),
        99_900.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "business_metric_overflowed_points_total",
            &["operation=\"checkout\""]
        ),
        99_900.0
    );
    assert!(
        b.metric_sum("bizpilot_connector_business_impact_overflowed_points_total", &[]) == 99_900.0,
        "{}",
        b.metrics()
    );
    // Twice the distinct values, not twice the memory: the second 50,000 add little.
    assert!(
        rss_full < rss_half + 32 * 1024,
        "resident memory grew from {rss_half} KiB to {rss_full} KiB"
    );
}

/// A non-loopback IPv4 address of this machine (the `host LOCAL` entries of `/proc/net/fib_trie`).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|w| {
        let ip: std::net::Ipv4Addr = w[0].trim().trim_start_matches("|-- ").parse().ok()?;
        (w[1].contains("host LOCAL") && !ip.is_loopback()).then_some(std::net::IpAddr::V4(ip))
    })
}

/// With the embedded default pipeline nothing that names a customer is reachable from another host
/// without credentials, while the probes answer from anywhere.
#[test]
fn default_pipeline_keeps_the_data_api_off_the_network_and_probes_answer() {
    use common::{http_get, http_request};
    use std::net::ToSocketAddrs;

    // 1. The default: the embedded pipeline's admin address, with nothing in the environment, binds
    //    loopback only; its health_check listens everywhere.
    let out = std::process::Command::new(common::bin())
        .arg("default-config")
        .output()
        .unwrap();
    let cfg: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let address = cfg["service"]["telemetry"]["metrics"]["address"].as_str().unwrap();
    let default = address
        .strip_prefix("${env:BIZPILOT_ADMIN_ENDPOINT:-")
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or_else(|| panic!("admin address {address}"));
    let resolved: Vec<SocketAddr> = default.to_socket_addrs().unwrap().collect();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()),
        "the default admin address {default} resolves to {resolved:?}"
    );
    let exts: Vec<&str> = cfg["service"]["extensions"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(exts.contains(&"health_check"), "{exts:?}");

    // 2. Live, in the worst case: the admin server moved to every interface by the environment (as the
    //    Kubernetes manifests do for Prometheus to scrape /metrics), asked from a non-loopback address.
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("no non-loopback IPv4 address on this machine: the live half of this test cannot run");
        return;
    };
    let (admin_port, health_port) = (free_port(), free_port());
    let local_admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let remote_admin = SocketAddr::new(ip, admin_port);
    let remote_health = SocketAddr::new(ip, health_port);
    let ports = Ports::new();
    let mut env = ports.env();
    env.retain(|(k, _)| k != "BIZPILOT_ADMIN_ENDPOINT");
    env.push(("BIZPILOT_ADMIN_ENDPOINT".into(), format!("0.0.0.0:{admin_port}")));
    env.push(("BIZPILOT_HEALTH_ENDPOINT".into(), format!("0.0.0.0:{health_port}")));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    {
        // No --config: the embedded default pipeline.
        let bp = Bizpilot::start_with(&[], local_admin, tempfile::tempdir().unwrap(), &env_refs);
        for path in ["/api/v1/impact?operation=checkout", "/api/v1/incidents"] {
            let (status, body) = http_get(remote_admin, path).unwrap();
            assert_eq!(status, 403, "{path} from {ip}: {body}\n{}", bp.logs());
            assert!(body.contains("loopback"), "{body}");
            let (status, body) = http_get(local_admin, path).unwrap();
            assert_eq!(status, 200, "{path} from loopback: {body}");
        }
        let (status, body) = http_get(remote_admin, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("bizpilot_admin_refused_total"),
            "the refusals are counted"
        );
        let (status, body) = http_get(remote_health, "/").unwrap();
        assert_eq!(status, 200, "health_check from {ip}: {body}");
        assert!(body.contains("Server available"), "{body}");
    }

    // 3. With credentials configured, other hosts read the data API with the token, and only with it.
    let dir = tempfile::tempdir().unwrap();
    let over = dir.path().join("auth.yaml");
    std::fs::write(
        &over,
        "service:\n  telemetry:\n    metrics:\n      auth:\n        bearer_token: ${env:TEST_ADMIN_TOKEN}\n",
    )
    .unwrap();
    let preset = workspace_root().join("pipelines/opentelemetry-demo.yaml");
    // Fresh ports for the second process.
    let admin_port = free_port();
    let local_admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let remote_admin = SocketAddr::new(ip, admin_port);
    let mut env = Ports::new().env();
    env.retain(|(k, _)| k != "BIZPILOT_ADMIN_ENDPOINT");
    env.push(("BIZPILOT_ADMIN_ENDPOINT".into(), format!("0.0.0.0:{admin_port}")));
    env.push(("TEST_ADMIN_TOKEN".into(), "s3cret-admin".into()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bp = Bizpilot::start_with(&[preset.as_path(), over.as_path()], local_admin, dir, &env_refs);
    let path = "/api/v1/impact?operation=checkout";
    let (status, _) = http_get(remote_admin, path).unwrap();
    assert_eq!(status, 401, "{}", bp.logs());
    let (status, _) = http_request(remote_admin, "GET", path, &[("authorization", "Bearer wrong")], &[]).unwrap();
    assert_eq!(status, 401);
    let (status, body) = http_request(
        remote_admin,
        "GET",
        path,
        &[("authorization", "Bearer s3cret-admin")],
        &[],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}
