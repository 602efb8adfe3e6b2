//! End to end with the real binary and the OpenTelemetry SDK's OTLP/HTTP exporter: provisional figures of the
//! newest spans are in `GET /api/v1/impact` within seconds of the spans arriving (long before the watermark
//! makes them final), an outage opens an incident, every failed customer is in the impact list, and the
//! incident closes (`closed_reason: idle`) within `incident.idle_timeout` once traffic stops.

mod common;

use common::{Bizpilot, BlockingHttp, free_port, json_get};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const INCIDENT_IDLE_S: u64 = 3;

fn config(http: u16, admin: SocketAddr) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{http}
connectors:
  business_impact:
    operations:
      - name: checkout
        span_name: oteldemo.CheckoutService/PlaceOrder
    allowed_lateness: 30s
    idle_timeout: 2s
    incident:
      evaluation_interval: 5s
      idle_timeout: {INCIDENT_IDLE_S}s
exporters:
  debug: {{}}
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [business_impact]
    logs/impact:
      receivers: [business_impact]
      exporters: [debug]
"#
    )
}

/// (seconds before `now` the checkout ended, customer, failed)
type Checkout = (f64, String, bool);

/// Sends checkouts through the SDK (batch processor, OTLP/HTTP protobuf) and returns when they are delivered.
fn send(http: u16, now: SystemTime, checkouts: &[Checkout]) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://127.0.0.1:{http}/v1/traces"))
        .build()
        .expect("span exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("checkout").build())
        .build();
    let tracer = provider.tracer("incident_e2e");
    for (ago, customer, failed) in checkouts {
        let end = now - Duration::from_secs_f64(*ago);
        let mut span = tracer
            .span_builder("oteldemo.CheckoutService/PlaceOrder")
            .with_kind(SpanKind::Server)
            .with_start_time(end - Duration::from_millis(120))
            .with_attributes(vec![
                KeyValue::new("business.customer.id", customer.clone()),
                KeyValue::new("business.order.value", "25.00"),
                KeyValue::new("business.currency", "USD"),
            ])
            .start(&tracer);
        if *failed {
            span.set_status(Status::error("payment gateway timeout"));
        }
        span.end_with_timestamp(end);
    }
    provider.force_flush().expect("flush spans");
    provider.shutdown().expect("shutdown tracer provider");
}

fn summary(admin: SocketAddr) -> Json {
    let (status, body) = json_get(admin, "/api/v1/impact?limit=1000");
    assert_eq!(status, 200, "{body}");
    body
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

#[test]
fn provisional_figures_at_once_and_incidents_close_on_idle() {
    let (http, admin): (u16, SocketAddr) = (free_port(), format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let bp = Bizpilot::start(&config(http, admin), admin);

    // An outage: 3 minutes of healthy checkouts (5/s, none failing), then 40 s of failures of distinct
    // customers; all delivered at once, as an SDK would after a pause.
    let now = SystemTime::now();
    let mut checkouts: Vec<Checkout> = Vec::new();
    for k in 0..(220 * 5) {
        let ago = 220.0 - f64::from(k) / 5.0;
        let failing = ago <= 40.0;
        checkouts.push((ago, format!("c{k}"), failing));
    }
    let failed: BTreeSet<String> = checkouts.iter().filter(|c| c.2).map(|c| c.1.clone()).collect();
    send(http, now, &checkouts);
    let arrived = Instant::now();

    // Provisional figures: the last 30 s are newer than the watermark, and visible at once.
    let total = checkouts.len() as u64;
    let mut last = Json::Null;
    let waited = wait_for("provisional figures", Duration::from_secs(5), || {
        last = summary(admin);
        let s = &last["summary"][0];
        let (fin, prov) = (
            s["operations"].as_u64().unwrap_or(0),
            s["provisional"]["operations"].as_u64().unwrap_or(0),
        );
        prov > 0 && fin + prov == total
    });
    let p = &last["summary"][0]["provisional"];
    let pending = p["operations"].as_u64().unwrap_or(0);
    assert!((150..=151).contains(&pending), "30 s at 5/s are pending: {p}");
    assert_eq!(p["provisional"], true);
    assert_eq!(p["failed"].as_u64(), Some(pending), "the last 30 s all failed");
    assert_eq!(p["affected_customers"].as_u64(), Some(pending));
    assert_eq!(p["revenue_at_risk"][0]["amount"], format!("{}.00", 25 * pending), "{p}");
    println!("provisional figures visible {waited:?} after the spans arrived");

    // The outage opened an incident while its spans were still arriving in event time.
    let (_, inc) = json_get(admin, "/api/v1/incidents");
    assert_eq!(inc["total"], 1, "{inc}");
    assert_eq!(inc["incidents"][0]["state"], "open", "{inc}");

    // Traffic has stopped: within incident.idle_timeout (+ a tick) the incident closes, reason idle.
    let mut incident = Json::Null;
    wait_for("idle close", Duration::from_secs(INCIDENT_IDLE_S + 5), || {
        incident = json_get(admin, "/api/v1/incidents").1["incidents"][0].clone();
        incident["state"] == "closed"
    });
    let closed_after = arrived.elapsed();
    assert_eq!(incident["closed_reason"], "idle", "{incident}");
    assert!(
        closed_after <= Duration::from_secs(INCIDENT_IDLE_S + 2),
        "closed {closed_after:?} after traffic stopped"
    );
    println!("incident closed {closed_after:?} after traffic stopped (idle_timeout {INCIDENT_IDLE_S} s)");
    let start: u64 = incident["start_unix_nano"].as_str().unwrap_or("0").parse().unwrap_or(0);
    let truth = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 - 40_000_000_000;
    assert!(
        start.abs_diff(truth) <= 5_000_000_000,
        "start {start} vs {truth}: within one interval"
    );

    // Every failed customer is listed, and named with the incident.
    let body = summary(admin);
    let listed: BTreeSet<String> = body["customers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["customer"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, failed);
    assert!(
        body["customers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["incident"] == incident["id"]),
        "{body}"
    );
    assert_eq!(body["summary"][0]["provisional"]["operations"], 0, "all final now");
    drop(bp);
}
