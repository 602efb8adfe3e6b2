//! End to end: real OpenTelemetry SDK exporters and raw OTLP requests → the
//! `bizpilot` binary → a real downstream OTLP/gRPC server.

mod common;

use common::{Bizpilot, BlockingHttp, Downstream, free_port, http_request_full};
use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as PKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use opentelemetry_sdk::Resource as SdkResource;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

struct Ports {
    grpc: u16,
    http: u16,
    admin: SocketAddr,
}

impl Ports {
    fn new() -> Self {
        Ports {
            grpc: free_port(),
            http: free_port(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        }
    }
    fn http_addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.http).parse().unwrap()
    }
}

/// OTLP in (gRPC + HTTP) → batch → OTLP/gRPC out to `downstream`, for all three signals.
/// `receiver_extra`, `batch` and `exporter_extra` are YAML lines indented for their place.
fn forward_config(
    p: &Ports,
    downstream: SocketAddr,
    receiver_extra: &str,
    batch: &str,
    exporter_extra: &str,
) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
{receiver_extra}
processors:
  batch:
{batch}
exporters:
  otlp:
    endpoint: http://{downstream}
    compression: gzip
{exporter_extra}
service:
  shutdown_timeout: 20s
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
    logs:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
"#,
        grpc = p.grpc,
        http = p.http,
        admin = p.admin,
    )
}

fn resource(service: &str) -> SdkResource {
    SdkResource::builder().with_service_name(service.to_string()).build()
}

/// Sends `n` spans, `n` log records and one counter through the SDK's OTLP exporters.
/// Returns the (trace id, span id) of every span created.
fn send_with_sdk(grpc: bool, endpoint_base: &str, service: &str, n: usize) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    // Traces.
    let exporter = if grpc {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint_base)
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .build()
    } else {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint_base}/v1/traces"))
            .build()
    }
    .expect("span exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service))
        .build();
    let tracer = provider.tracer("e2e");
    for i in 0..n {
        let mut span = tracer.start(format!("op-{i}"));
        span.set_attribute(KeyValue::new("i", i as i64));
        span.set_attribute(KeyValue::new("order.value", "123.45"));
        let ctx = span.span_context().clone();
        ids.push((ctx.trace_id().to_string(), ctx.span_id().to_string()));
        span.end();
    }
    provider.force_flush().expect("flush spans");
    provider.shutdown().expect("shutdown tracer provider");

    // Logs.
    let exporter = if grpc {
        opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint_base)
            .build()
    } else {
        opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint_base}/v1/logs"))
            .build()
    }
    .expect("log exporter");
    let lp = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service))
        .build();
    let logger = lp.logger("e2e");
    for i in 0..n {
        let mut rec = logger.create_log_record();
        rec.set_body(format!("log-{i}").into());
        rec.add_attribute("i", i as i64);
        logger.emit(rec);
    }
    lp.force_flush().expect("flush logs");
    lp.shutdown().expect("shutdown logger provider");

    // Metrics.
    let exporter = if grpc {
        opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint_base)
            .build()
    } else {
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint_base}/v1/metrics"))
            .build()
    }
    .expect("metric exporter");
    let mp = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource(service))
        .build();
    let counter = mp.meter("e2e").u64_counter("e2e.orders").build();
    counter.add(n as u64, &[KeyValue::new("service", service.to_string())]);
    mp.force_flush().expect("flush metrics");
    mp.shutdown().expect("shutdown meter provider");
    ids
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn service_of(r: &ResourceSpans) -> String {
    r.resource
        .as_ref()
        .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_exporters_over_grpc_and_http_reach_downstream_intact() {
    let downstream = Downstream::start().await;
    let p = Ports::new();
    let cfg = forward_config(&p, downstream.addr, "", "    timeout: 100ms", "");
    let bp = Bizpilot::start(&cfg, p.admin);

    const N: usize = 40;
    let grpc_base = format!("http://127.0.0.1:{}", p.grpc);
    let http_base = format!("http://127.0.0.1:{}", p.http);
    // The SDK's batch processors run their own threads; the tonic exporter needs this runtime's handle.
    let grpc_ids = {
        let base = grpc_base.clone();
        tokio::task::spawn_blocking(move || send_with_sdk(true, &base, "e2e-grpc", N))
            .await
            .unwrap()
    };
    let http_ids = tokio::task::spawn_blocking(move || send_with_sdk(false, &http_base, "e2e-http", N))
        .await
        .unwrap();

    downstream
        .wait_for(Duration::from_secs(20), "all spans, logs and metrics", |r| {
            r.span_count() >= 2 * N && r.log_count() >= 2 * N && counter_totals(r).len() >= 2
        })
        .await;
    // Let anything duplicated arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    downstream.received(|r| {
        assert_eq!(r.span_count(), 2 * N, "every span exactly once");
        assert_eq!(r.log_count(), 2 * N, "every log record exactly once");
        let mut seen: HashMap<(String, String), (String, Span)> = HashMap::new();
        for req in &r.traces {
            for rs in &req.resource_spans {
                let svc = service_of(rs);
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        let key = (hex(&s.trace_id), hex(&s.span_id));
                        assert!(seen.insert(key, (svc.clone(), s.clone())).is_none(), "duplicate span");
                    }
                }
            }
        }
        for (svc, ids) in [("e2e-grpc", &grpc_ids), ("e2e-http", &http_ids)] {
            for (i, id) in ids.iter().enumerate() {
                let (got_svc, span) = seen.get(id).unwrap_or_else(|| panic!("span {id:?} of {svc} missing"));
                assert_eq!(got_svc, svc);
                assert_eq!(span.name, format!("op-{i}"));
                let attr = |k: &str| {
                    span.attributes
                        .iter()
                        .find(|kv| kv.key == k)
                        .and_then(|kv| kv.value.clone())
                };
                assert_eq!(
                    attr("i").and_then(|v| v.value),
                    Some(any_value::Value::IntValue(i as i64))
                );
                assert_eq!(
                    attr("order.value").and_then(|v| v.value),
                    Some(any_value::Value::StringValue("123.45".into()))
                );
            }
        }
        // Metrics: the counter from each SDK, with its value.
        let totals = counter_totals(r);
        assert_eq!(totals.get("e2e-grpc"), Some(&(N as i64)), "{totals:?}");
        assert_eq!(totals.get("e2e-http"), Some(&(N as i64)), "{totals:?}");
    });

    // Self-telemetry counted what went through.
    let accepted = bp.metric_sum("bizpilot_receiver_accepted_spans_total", &[]);
    let sent = bp.metric_sum("bizpilot_exporter_sent_spans_total", &[]);
    assert_eq!(accepted, (2 * N) as f64, "{}", bp.metrics());
    assert_eq!(sent, (2 * N) as f64);
}

/// Latest value of the SDK counter `e2e.orders`, by its `service` attribute.
fn counter_totals(r: &common::Received) -> HashMap<String, i64> {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
    let mut totals: HashMap<String, i64> = HashMap::new();
    for req in &r.metrics {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == "e2e.orders") {
                    let Some(Data::Sum(s)) = &m.data else { continue };
                    for dp in &s.data_points {
                        let svc = dp
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "service")
                            .and_then(|kv| kv.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        if let Some(Value::AsInt(v)) = dp.value {
                            totals.insert(svc, v);
                        }
                    }
                }
            }
        }
    }
    totals
}

/// A request of `n` spans whose names start with `prefix`.
fn trace_request(prefix: &str, n: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![PKeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("raw".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: vec![7; 16],
                        span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
                        name: format!("{prefix}-{i}"),
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_100_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_request_full(addr, "POST", path, &[("Content-Type", content_type)], body).expect("http request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_accepted_and_bad_requests_rejected_while_a_healthy_stream_loses_nothing() {
    let downstream = Downstream::start().await;
    let p = Ports::new();
    let cfg = forward_config(
        &p,
        downstream.addr,
        "        max_request_body_size: 64KiB",
        "    timeout: 50ms",
        "",
    );
    let _bp = Bizpilot::start(&cfg, p.admin);
    let http = p.http_addr();

    // A healthy stream beside the bad requests.
    const HEALTHY: usize = 100;
    let healthy = tokio::task::spawn_blocking(move || {
        for i in 0..HEALTHY {
            let body = trace_request(&format!("healthy{i}"), 5).encode_to_vec();
            let (status, _, _) = post(http, "/v1/traces", "application/x-protobuf", &body);
            assert_eq!(status, 200, "healthy request {i}");
        }
    });

    let bad = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            // Malformed protobuf → 400 with a google.rpc.Status (protobuf) body.
            let (status, headers, body) = post(
                http,
                "/v1/traces",
                "application/x-protobuf",
                b"\x0a\xff\xff\xff garbage",
            );
            assert_eq!(status, 400);
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "content-type" && v.contains("protobuf"))
            );
            let st = bizpilot_status(&body);
            assert_eq!(st.0, 3, "INVALID_ARGUMENT code in the Status body");
            assert!(!st.1.is_empty());
            // Malformed JSON → 400 with a JSON Status body.
            let (status, _, body) = post(http, "/v1/traces", "application/json", b"{\"resourceSpans\": [");
            assert_eq!(status, 400);
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON status body");
            assert!(v.get("message").is_some(), "{v}");
            // Wrong content type → 415.
            let (status, _, _) = post(http, "/v1/traces", "text/plain", b"hello");
            assert_eq!(status, 415);
            // Oversized → 413.
            let big = trace_request("big", 2000).encode_to_vec();
            assert!(big.len() > 64 * 1024);
            let (status, _, _) = post(http, "/v1/traces", "application/x-protobuf", &big);
            assert_eq!(status, 413);
        }
    });
    bad.await.unwrap();
    healthy.await.unwrap();

    // OTLP/JSON: hex ids, enum as integer, 64-bit integers as strings.
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-client"}}]},
      "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"json-span","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000500000000",
      "attributes":[{"key":"cart.items","value":{"intValue":"3"}},{"key":"big","value":{"intValue":"9007199254740993"}}],
      "status":{"code":2,"message":"boom"}}]}]}]}"#;
    let (status, headers, body) = post(http, "/v1/traces", "application/json", json);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.contains("json")));

    downstream
        .wait_for(Duration::from_secs(20), "healthy stream and JSON span", |r| {
            r.span_count() > HEALTHY * 5
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    downstream.received(|r| {
        assert_eq!(r.span_count(), HEALTHY * 5 + 1, "nothing lost, nothing extra");
        let names: HashSet<String> = r.spans().into_iter().map(|s| s.name).collect();
        for i in 0..HEALTHY {
            for j in 0..5 {
                assert!(names.contains(&format!("healthy{i}-{j}")));
            }
        }
        let js = r
            .spans()
            .into_iter()
            .find(|s| s.name == "json-span")
            .expect("JSON span arrived");
        assert_eq!(hex(&js.trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(hex(&js.span_id), "eee19b7ec3c1b174");
        assert_eq!(js.kind, 2);
        assert_eq!(js.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(js.status.as_ref().map(|s| s.code), Some(2));
        let big = js
            .attributes
            .iter()
            .find(|kv| kv.key == "big")
            .and_then(|kv| kv.value.clone());
        assert_eq!(
            big.and_then(|v| v.value),
            Some(any_value::Value::IntValue(9_007_199_254_740_993))
        );
    });
}

/// (code, message) of a protobuf `google.rpc.Status`.
fn bizpilot_status(body: &[u8]) -> (i32, String) {
    #[derive(Clone, PartialEq, prost::Message)]
    struct St {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let s = St::decode(body).expect("google.rpc.Status body");
    (s.code, s.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downstream_outage_loses_nothing_accepted_and_refuses_beyond_capacity() {
    let mut downstream = Downstream::start().await;
    let p = Ports::new();
    let cfg = forward_config(
        &p,
        downstream.addr,
        "    backpressure_wait: 100ms",
        "    timeout: 20ms\n    send_batch_size: 50",
        "    timeout: 1s\n    retry_on_failure:\n      initial_interval: 100ms\n      max_interval: 500ms\n      max_elapsed_time: 0\n    sending_queue:\n      num_consumers: 1\n      queue_size: 4",
    );
    let bp = Bizpilot::start(&cfg, p.admin);
    let http = p.http_addr();

    downstream.down().await;
    // Send for 10 s while the downstream is away.
    let sender = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let (mut accepted, mut refused, mut i) = (Vec::new(), 0usize, 0usize);
        while start.elapsed() < Duration::from_secs(10) {
            let name = format!("outage{i}");
            let body = trace_request(&name, 10).encode_to_vec();
            let (status, headers, _) = post(http, "/v1/traces", "application/x-protobuf", &body);
            match status {
                200 => accepted.push(name),
                429 | 503 => {
                    assert!(
                        headers.iter().any(|(k, _)| k == "retry-after"),
                        "retryable refusal has Retry-After"
                    );
                    refused += 1;
                }
                other => panic!("unexpected status {other}"),
            }
            i += 1;
        }
        (accepted, refused)
    });
    let (accepted, refused) = sender.await.unwrap();
    assert!(!accepted.is_empty(), "the queue had room for some data");
    assert!(refused > 0, "beyond the queue's capacity the client is refused");
    let refused_counted = bp.metric_sum("bizpilot_receiver_refused_spans_total", &[]);
    assert_eq!(refused_counted, (refused * 10) as f64, "refusals are counted");

    downstream.up().await;
    let want = accepted.len() * 10;
    downstream
        .wait_for(Duration::from_secs(30), "everything accepted during the outage", |r| {
            r.span_count() >= want
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    downstream.received(|r| {
        let names: HashSet<String> = r.spans().into_iter().map(|s| s.name).collect();
        for a in &accepted {
            for j in 0..10 {
                assert!(
                    names.contains(&format!("{a}-{j}")),
                    "{a}-{j} was accepted and must arrive"
                );
            }
        }
        assert_eq!(r.span_count(), want, "nothing refused arrives, nothing accepted twice");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_everything_accepted_then_exits_zero() {
    let downstream = Downstream::start().await;
    let p = Ports::new();
    // A long batch timeout: the data is still inside bizpilot when SIGTERM arrives.
    let cfg = forward_config(
        &p,
        downstream.addr,
        "",
        "    timeout: 30s\n    send_batch_size: 100000",
        "",
    );
    let mut bp = Bizpilot::start(&cfg, p.admin);
    let http = p.http_addr();
    let sent = tokio::task::spawn_blocking(move || {
        for i in 0..50 {
            let body = trace_request(&format!("term{i}"), 20).encode_to_vec();
            let (status, _, _) = post(http, "/v1/traces", "application/x-protobuf", &body);
            assert_eq!(status, 200);
        }
        50 * 20
    })
    .await
    .unwrap();
    assert_eq!(
        downstream.received(|r| r.span_count()),
        0,
        "still batched inside bizpilot"
    );
    bp.signal("TERM");
    let status = bp.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}\n{}", bp.logs());
    assert_eq!(downstream.received(|r| r.span_count()), sent, "{}", bp.logs());
}

/// Every processor and connector the binary registers runs on the core stage driver and reports its standard
/// counters (docs/instrumentation.md): the test runs one pipeline chain holding every registered processor and
/// connector type (from `bizpilot components`, so a new type fails it until it is added), sends spans over OTLP,
/// and checks on `/metrics` that each stage accepted them all and passed them on (processors, `forward`) or
/// absorbed them (the aggregating connectors), with nothing dropped or refused.
#[test]
fn every_processor_and_connector_reports_the_stage_counters() {
    let listed = std::process::Command::new(common::bin())
        .arg("components")
        .output()
        .expect("bizpilot components");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let types = |kind: &str| -> Vec<String> {
        listed
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(kind)).then(|| w.next().unwrap_or_default().to_string())
            })
            .collect()
    };
    let (processors, connectors) = (types("processor"), types("connector"));
    let in_chain = ["memory_limiter", "redaction", "enrich", "batch"];
    // `business_fleet` passes on the spans that carry business context: the chain's enrich rule gives every span one.
    let passing = ["forward", "business_fleet"];
    let absorbing = ["business_impact", "order_kpi", "capacity_planner"];
    let mut want_p: Vec<&str> = in_chain.to_vec();
    want_p.sort_unstable();
    let mut want_c: Vec<&str> = passing.iter().chain(&absorbing).copied().collect();
    want_c.sort_unstable();
    assert_eq!(
        processors, want_p,
        "a processor type is missing from this test's pipeline"
    );
    assert_eq!(
        connectors, want_c,
        "a connector type is missing from this test's pipeline"
    );

    let http = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  memory_limiter: {{check_interval: 1s, limit_mib: 8192}}
  redaction: {{}}
  enrich:
    rules:
      - set: {{key: business.channel, value: web}}
  batch: {{timeout: 50ms}}
connectors:
  forward:
  business_fleet: {{}}
  business_impact:
    operations:
      - {{name: checkout, span_name: stage-0}}
  order_kpi:
    stages:
      - {{name: placed, events: [order.placed]}}
      - {{name: paid, events: [order.paid]}}
      - {{name: shipped, events: [order.shipped]}}
      - {{name: delivered, events: [order.delivered]}}
    kpis:
      - {{name: fulfilled_24h, from: placed, to: delivered, deadline: 24h}}
  capacity_planner:
    steps:
      - {{name: checkout, service: raw, span_name: stage-0}}
    orders_step: checkout
exporters:
  debug: {{}}
service:
  telemetry: {{metrics: {{address: "{admin}"}}}}
  pipelines:
    traces/in: {{receivers: [otlp], processors: [{chain}], exporters: [forward]}}
    traces/out: {{receivers: [forward], exporters: [business_impact, order_kpi, capacity_planner, business_fleet, debug]}}
    traces/fleet: {{receivers: [business_fleet], exporters: [debug]}}
    metrics/out: {{receivers: [business_impact, order_kpi, capacity_planner], exporters: [debug]}}
"#,
        chain = in_chain.join(", ")
    );
    let bp = Bizpilot::start(&cfg, admin);
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    let mut sent = 0;
    for (i, n) in [1usize, 50, 7, 120].into_iter().enumerate() {
        let body = trace_request(&format!("stage{i}"), n).encode_to_vec();
        assert_eq!(common::otlp_post(addr, "/v1/traces", &body), 200);
        sent += n;
    }
    let sent = sent as f64;
    let get = |m: &str, labels: &[&str]| bp.metric_sum(m, labels);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = absorbing.iter().all(|c| {
            get(
                "bizpilot_connector_consumed_spans_total",
                &[&format!("connector=\"{c}\"")],
            ) >= sent
        }) && passing
            .iter()
            .all(|c| get("bizpilot_connector_sent_spans_total", &[&format!("connector=\"{c}\"")]) >= sent);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans did not reach every connector\n{}",
            bp.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = bp.metrics();
    for p in in_chain {
        let l = [format!("processor=\"{p}\""), "pipeline=\"traces/in\"".to_string()];
        let l: Vec<&str> = l.iter().map(String::as_str).collect();
        for (what, want) in [
            ("accepted", sent),
            ("sent", sent),
            ("consumed", 0.0),
            ("dropped", 0.0),
            ("refused", 0.0),
        ] {
            let name = format!("bizpilot_processor_{what}_spans_total");
            assert_eq!(common::metric_sum(&metrics, &name, &l), want, "{p} {what}\n{metrics}");
        }
    }
    for c in passing.iter().chain(&absorbing) {
        let l = format!("connector=\"{c}\"");
        let (passed, absorbed) = if passing.contains(c) { (sent, 0.0) } else { (0.0, sent) };
        for (what, want) in [
            ("accepted", sent),
            ("sent", passed),
            ("consumed", absorbed),
            ("dropped", 0.0),
            ("refused", 0.0),
        ] {
            let name = format!("bizpilot_connector_{what}_spans_total");
            assert_eq!(
                common::metric_sum(&metrics, &name, &[&l]),
                want,
                "{c} {what}\n{metrics}"
            );
        }
    }
}
