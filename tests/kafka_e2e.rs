//! End to end: the `bizpilot` binary with the `kafka` receiver and exporter against a real
//! Kafka-protocol broker (tansu, started per test on a free loopback port and stopped by PID)
//! and, for the broker outage, librdkafka's mock cluster (brokers taken down and up at will).
//!
//! `tansu` is installed by `.ci/prereq-kafka.sh`.

mod common;
#[path = "kafka_harness.rs"]
mod kafka_harness;

use bizpilot_business::attrs::kv_str;
use bizpilot_core::Money;
use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
use bizpilot_core::pdata::proto::common::v1::{AnyValue, any_value};
use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use bizpilot_shopgen::{BusinessEvent, EventType, LineItem};
use common::{Bizpilot, Downstream, free_port, metric_sum};
use kafka_harness::{Msg, Record, Tansu, create_topics, produce, read_topic};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn admin_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// One OTLP log request holding one record whose body is `id`.
fn log_request(id: &str) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(id.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Log record bodies of OTLP log requests (protobuf).
fn bodies(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .flat_map(|r| {
            ExportLogsServiceRequest::decode(r.value.as_slice())
                .expect("an OTLP logs request")
                .resource_logs
        })
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .filter_map(|l| match l.body.and_then(|b| b.value) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect()
}

/// Reads `topic` until `want` distinct ids (as extracted by `ids`) were seen, or panics after `timeout`.
fn wait_for_ids(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
    ids: impl Fn(&[Record]) -> Vec<String>,
    bp: Option<&Bizpilot>,
) -> (Vec<Record>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let recs = read_topic(
            bootstrap,
            topic,
            want,
            Duration::from_millis(300),
            Duration::from_secs(5),
        );
        let got = ids(&recs);
        let distinct: BTreeSet<&String> = got.iter().collect();
        if distinct.len() >= want {
            return (recs, got);
        }
        if Instant::now() > deadline {
            panic!(
                "{topic}: {} of {want} distinct ids after {timeout:?}\n{}\n{}",
                distinct.len(),
                bp.map(|b| b.logs()).unwrap_or_default(),
                bp.map(|b| b.metrics())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("kafka") || l.contains("exporter"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_mid_stream_loses_nothing() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["in", "out"], 2);
    let n = 3000usize;
    let admin = admin_addr();
    let config = format!(
        r#"
receivers:
  kafka:
    brokers: [{b}]
    topics: [in]
    group_id: kill-test
    initial_offset: earliest
    encoding: otlp_proto
    signal: logs
    commit_interval: 200ms
    max_in_flight: 200
processors:
  batch:
    timeout: 50ms
    send_batch_size: 100
exporters:
  kafka:
    brokers: [{b}]
    logs_topic: out
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [kafka]
      processors: [batch]
      exporters: [kafka]
"#
    );
    // A stream: the producer keeps writing while bizpilot is killed and restarted.
    let producer = {
        let b = b.clone();
        std::thread::spawn(move || {
            for chunk in 0..30 {
                let msgs: Vec<Msg> = (chunk * 100..(chunk + 1) * 100)
                    .map(|i| Msg::keyed(format!("k{i}"), log_request(&format!("m-{i}"))))
                    .collect();
                produce(&b, "in", &msgs);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut bp = Bizpilot::start(&config, admin);
    let sent = |bp: &Bizpilot| bp.metric_sum("bizpilot_exporter_sent_log_records_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent(&bp) < 500.0 {
        assert!(Instant::now() < deadline, "nothing exported\n{}", bp.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_kill = sent(&bp);
    bp.signal("KILL");
    bp.wait_exit(Duration::from_secs(10));
    drop(bp);
    std::thread::sleep(Duration::from_millis(500));
    let bp = Bizpilot::start(&config, admin);
    producer.join().expect("producer");
    let (_, got) = wait_for_ids(&b, "out", n, Duration::from_secs(120), bodies, Some(&bp));
    let distinct: BTreeSet<&String> = got.iter().collect();
    let expected: BTreeSet<String> = (0..n).map(|i| format!("m-{i}")).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every message, none skipped"
    );
    let duplicates = got.len() - n;
    eprintln!("killed after {before_kill} exported records; {duplicates} duplicates of {n} messages");
    // Duplicates are what was consumed but not yet committed at the kill: at most what was in
    // flight (2 partitions × max_in_flight 200) plus one commit interval of progress.
    assert!(
        duplicates <= 1500,
        "{duplicates} duplicates: more than was in flight at the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_counted_and_dead_lettered() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["orders", "orders-out", "orders-dlq"], 2);
    // Five kinds of bad message, each made unique by its index.
    let garbage = |i: usize| -> Vec<u8> {
        match (i / 20) % 5 {
            0 => format!("{{not json {i}").into_bytes(),
            1 => format!(r#"{{"order_id":"no-type-{i}"}}"#).into_bytes(),
            2 => format!(r#"{{"type":"order.paid","order_id":"x-{i}","amount":"twelve"}}"#).into_bytes(),
            3 => [&b"\xff\xfe"[..], i.to_string().as_bytes()].concat(),
            _ => format!("[{i},2,3]").into_bytes(),
        }
    };
    let mut bad = BTreeSet::new();
    let msgs: Vec<Msg> = (0..1000)
        .map(|i| {
            if i % 20 == 7 {
                let v = garbage(i);
                bad.insert(v.clone());
                let mut m = Msg::keyed(format!("k{i}"), v);
                m.headers.push(("origin".into(), b"test".to_vec()));
                m
            } else {
                Msg::keyed(
                    format!("o-{i}"),
                    format!(r#"{{"type":"order.placed","order_id":"o-{i}","amount":"{i}.50","currency":"EUR"}}"#),
                )
            }
        })
        .collect();
    assert_eq!(bad.len(), 50);
    produce(&b, "orders", &msgs);
    let admin = admin_addr();
    let config = format!(
        r#"
receivers:
  kafka:
    brokers: [{b}]
    topics: [orders]
    group_id: dlq-test
    initial_offset: earliest
    encoding: business_json
    dead_letter_topic: orders-dlq
exporters:
  kafka:
    brokers: [{b}]
    logs_topic: orders-out
    encoding: business_json
    partition_by: attribute:order.id
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [kafka]
      exporters: [kafka]
"#
    );
    let bp = Bizpilot::start(&config, admin);
    let order_ids = |recs: &[Record]| -> Vec<String> {
        recs.iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).expect("business JSON");
                v["order_id"].as_str().expect("order_id").to_string()
            })
            .collect()
    };
    let (out, _) = wait_for_ids(&b, "orders-out", 950, Duration::from_secs(60), order_ids, Some(&bp));
    for r in &out {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(
            r.key.as_deref(),
            v["order_id"].as_str().map(str::as_bytes),
            "keyed by order id"
        );
        assert_eq!(v["type"], "order.placed");
        assert_eq!(v["currency"], "EUR");
    }
    let dlq = read_topic(
        &b,
        "orders-dlq",
        50,
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let values: BTreeSet<Vec<u8>> = dlq.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values, bad,
        "every bad message is in the dead-letter topic, bytes unchanged"
    );
    for r in &dlq {
        let err = r.header("bizpilot.error").expect("bizpilot.error header");
        assert!(!err.is_empty());
        assert_eq!(r.header("bizpilot.source.topic").as_deref(), Some("orders"));
        let p: i32 = r.header("bizpilot.source.partition").unwrap().parse().unwrap();
        let o: i64 = r.header("bizpilot.source.offset").unwrap().parse().unwrap();
        assert!((0..2).contains(&p) && o >= 0);
        assert_eq!(r.header("origin").as_deref(), Some("test"), "original headers are kept");
        assert!(
            r.key.as_deref().is_some_and(|k| k.starts_with(b"k")),
            "original key is kept"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = bp.metrics();
        let counted = metric_sum(&m, "bizpilot_kafka_receiver_bad_messages_total", &["topic=\"orders\""]);
        let dead = metric_sum(&m, "bizpilot_kafka_receiver_dead_lettered_total", &["topic=\"orders\""]);
        if counted == 50.0 && dead == 50.0 {
            assert!(
                metric_sum(
                    &m,
                    "bizpilot_kafka_receiver_bad_messages_total",
                    &["reason=\"invalid_json\""]
                ) > 0.0
            );
            assert!(
                metric_sum(
                    &m,
                    "bizpilot_kafka_receiver_bad_messages_total",
                    &["reason=\"invalid_event\""]
                ) > 0.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "bad={counted} dead-lettered={dead}\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(bp.logs().contains("bad message"), "bad messages are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_of_20s_loses_nothing() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let b = cluster.bootstrap_servers();
    cluster.create_topic("in", 2, 1).unwrap();
    cluster.create_topic("out", 2, 1).unwrap();
    let first: Vec<Msg> = (0..300).map(|i| Msg::value(log_request(&format!("m-{i}")))).collect();
    produce(&b, "in", &first);
    let admin = admin_addr();
    let config = format!(
        r#"
receivers:
  kafka:
    brokers: [{b}]
    topics: [in]
    group_id: outage-test
    initial_offset: earliest
    encoding: otlp_proto
    statistics_interval: 1s
exporters:
  kafka:
    brokers: [{b}]
    logs_topic: out
    timeout: 3s
    retry_on_failure: {{initial_interval: 500ms, max_interval: 2s, max_elapsed_time: 0}}
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [kafka]
      exporters: [kafka]
"#
    );
    let bp = Bizpilot::start(&config, admin);
    wait_for_ids(&b, "out", 300, Duration::from_secs(60), bodies, Some(&bp));
    // More data arrives while the broker goes away (the test producer buffers it meanwhile).
    let producer = {
        let b = b.clone();
        std::thread::spawn(move || {
            let second: Vec<Msg> = (300..600).map(|i| Msg::value(log_request(&format!("m-{i}")))).collect();
            produce(&b, "in", &second);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    cluster.broker_down(1).unwrap();
    let down_at = Instant::now();
    let mut errors_seen = 0.0;
    while down_at.elapsed() < Duration::from_secs(20) {
        errors_seen = bp.metric_sum("bizpilot_kafka_client_errors_total", &[]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        errors_seen > 0.0,
        "the outage is visible in self-telemetry\n{}",
        bp.metrics()
    );
    cluster.broker_up(1).unwrap();
    producer.join().expect("producer");
    let (_, got) = wait_for_ids(&b, "out", 600, Duration::from_secs(90), bodies, Some(&bp));
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 600, "nothing lost");
    // The consumer lag goes back to zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = bp.metrics();
        let lag = metric_sum(&m, "bizpilot_kafka_consumer_lag", &["topic=\"in\""]);
        let reported = m.lines().any(|l| l.starts_with("bizpilot_kafka_consumer_lag{"));
        if reported && lag == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "lag {lag} did not recover\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = bp.metrics();
    assert!(
        metric_sum(&m, "bizpilot_kafka_client_errors_total", &["error=\"AllBrokersDown\""]) > 0.0
            || metric_sum(
                &m,
                "bizpilot_kafka_client_errors_total",
                &["error=\"BrokerTransportFailure\""]
            ) > 0.0,
        "{m}"
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_and_spans_keyed_by_order_share_partitions() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["order-events", "order-spans"], 4);
    let orders: Vec<String> = (0..24).map(|i| format!("order-{i:03}")).collect();
    // The shop's order service keys its events by order id (Java-compatible murmur2 partitioner).
    let events: Vec<Msg> = orders
        .iter()
        .map(|o| Msg::keyed(o.as_str(), format!(r#"{{"type":"order.placed","order_id":"{o}"}}"#)))
        .collect();
    produce(&b, "order-events", &events);
    let admin = admin_addr();
    let grpc = free_port();
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
exporters:
  kafka:
    brokers: [{b}]
    traces_topic: order-spans
    partition_by: attribute:business.order.id
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [kafka]
"#
    );
    let bp = Bizpilot::start(&config, admin);
    // One request mixing spans of every order, over two resources, plus a span without an order.
    let span = |o: &str, n: usize| Span {
        trace_id: vec![(n % 250) as u8 + 1; 16],
        span_id: vec![1; 8],
        name: format!("checkout {o}"),
        attributes: vec![kv_str("business.order.id", o)],
        ..Default::default()
    };
    let resource = |svc: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(bizpilot_core::pdata::proto::resource::v1::Resource {
            attributes: vec![kv_str("service.name", svc)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut front: Vec<Span> = orders.iter().enumerate().map(|(i, o)| span(o, i)).collect();
    front.push(Span {
        name: "no order".into(),
        ..Default::default()
    });
    let back: Vec<Span> = orders.iter().enumerate().map(|(i, o)| span(o, i + 100)).collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource("frontend", front), resource("checkout", back)],
    };
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect");
    client.export(req).await.expect("export");
    let span_orders = |recs: &[Record]| -> Vec<String> {
        recs.iter()
            .filter_map(|r| r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()))
            .collect()
    };
    let (spans, _) = wait_for_ids(
        &b,
        "order-spans",
        orders.len(),
        Duration::from_secs(60),
        span_orders,
        Some(&bp),
    );
    let event_partition: HashMap<String, i32> = read_topic(
        &b,
        "order-events",
        orders.len(),
        Duration::from_millis(300),
        Duration::from_secs(20),
    )
    .into_iter()
    .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), r.partition))
    .collect();
    assert_eq!(event_partition.len(), orders.len());
    let mut partitions_used = BTreeSet::new();
    let mut spans_per_order: BTreeMap<String, usize> = BTreeMap::new();
    for r in &spans {
        let req = ExportTraceServiceRequest::decode(r.value.as_slice()).unwrap();
        let in_msg: BTreeSet<String> = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| {
                s.attributes
                    .iter()
                    .find(|a| a.key == "business.order.id")
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(in_msg.len(), 1, "one message per key group");
        let Some(key) = &r.key else {
            assert_eq!(
                in_msg.first().map(String::as_str),
                Some(""),
                "unkeyed: the span without an order"
            );
            continue;
        };
        let order = String::from_utf8(key.clone()).unwrap();
        assert_eq!(in_msg.first(), Some(&order));
        assert_eq!(
            Some(&r.partition),
            event_partition.get(&order),
            "spans of {order} are in the partition of its events"
        );
        partitions_used.insert(r.partition);
        *spans_per_order.entry(order).or_default() += req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>();
    }
    assert!(spans_per_order.values().all(|n| *n == 2), "{spans_per_order:?}");
    assert!(partitions_used.len() > 1, "keys spread over partitions");
}

fn shop_event(i: usize) -> BusinessEvent {
    let usd = bizpilot_core::Currency::USD;
    let items = vec![
        LineItem {
            sku: format!("SKU-{i:04}"),
            quantity: 2,
            unit_price: Money::parse_amount("19.99", usd).unwrap(),
        },
        LineItem {
            sku: "SKU-0001".into(),
            quantity: 1,
            unit_price: Money::parse_amount("5.25", usd).unwrap(),
        },
    ];
    BusinessEvent {
        event_type: [EventType::OrderPlaced, EventType::OrderPaid, EventType::OrderShipped][i % 3],
        time_unix_nano: 1_735_689_600_000_000_000 + i as u64 * 1_000_000,
        order_id: format!("order-{i}"),
        customer_id: format!("cust-{:06}", i % 7),
        amount: Money::parse_amount("51.22", usd).unwrap(),
        shipping: Money::parse_amount("5.99", usd).unwrap(),
        items,
    }
}

fn money_pb(m: &Money) -> bizpilot_kafka::pb::v1::Money {
    let n = m.nanos();
    bizpilot_kafka::pb::v1::Money {
        currency_code: m.currency().as_str().into(),
        units: (n / 1_000_000_000) as i64,
        nanos: (n % 1_000_000_000) as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_events_from_kafka_become_log_records_bizpilot_business_reads() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop-json", "shop-proto"], 1);
    let events: Vec<BusinessEvent> = (0..12).map(shop_event).collect();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let json: Vec<Msg> = events
        .iter()
        .map(|e| {
            let mut m = Msg::keyed(e.order_id.as_str(), e.to_json());
            m.headers.push(("traceparent".into(), traceparent.as_bytes().to_vec()));
            m
        })
        .collect();
    produce(&b, "shop-json", &json);
    let proto: Vec<Msg> = events
        .iter()
        .map(|e| {
            let pb = bizpilot_kafka::pb::v1::BusinessEvent {
                r#type: e.event_type.as_str().into(),
                time_unix_nano: e.time_unix_nano,
                order_id: e.order_id.clone(),
                customer_id: e.customer_id.clone(),
                amount: Some(money_pb(&e.amount)),
                shipping: Some(money_pb(&e.shipping)),
                items: e
                    .items
                    .iter()
                    .map(|it| bizpilot_kafka::pb::v1::LineItem {
                        sku: it.sku.clone(),
                        quantity: i64::from(it.quantity),
                        unit_price: Some(money_pb(&it.unit_price)),
                    })
                    .collect(),
                ..Default::default()
            };
            Msg::keyed(e.order_id.as_str(), pb.encode_to_vec())
        })
        .collect();
    produce(&b, "shop-proto", &proto);
    let downstream = Downstream::start().await;
    let admin = admin_addr();
    let config = format!(
        r#"
receivers:
  kafka/json:
    brokers: [{b}]
    topics: [shop-json]
    group_id: events-json
    initial_offset: earliest
    encoding: business_json
  kafka/proto:
    brokers: [{b}]
    topics: [shop-proto]
    group_id: events-proto
    initial_offset: earliest
    encoding: business_proto
exporters:
  otlp:
    endpoint: http://{downstream}
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [kafka/json, kafka/proto]
      exporters: [otlp]
"#,
        downstream = downstream.addr
    );
    let bp = Bizpilot::start(&config, admin);
    downstream
        .wait_for(Duration::from_secs(60), "24 event records", |r| r.log_count() >= 24)
        .await;
    let records: Vec<LogRecord> = downstream.received(|r| {
        r.logs
            .iter()
            .flat_map(|req| &req.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| sl.log_records.clone())
            .collect()
    });
    assert_eq!(records.len(), 24, "{}", bp.logs());
    let mapping = bizpilot_business::EventMapping::default();
    let by_order: HashMap<&str, &BusinessEvent> = events.iter().map(|e| (e.order_id.as_str(), e)).collect();
    let mut with_trace = 0;
    for rec in &records {
        let ev = mapping
            .parse(rec)
            .expect("a readable event")
            .expect("the record names an event");
        let sent = by_order[ev.order_id.as_deref().unwrap()];
        assert_eq!(ev.name, sent.event_type.as_str());
        assert_eq!(ev.time_unix_nano, sent.time_unix_nano);
        assert_eq!(ev.customer_id.as_deref(), Some(sent.customer_id.as_str()));
        assert_eq!(ev.amount.unwrap().to_string(), sent.amount.to_string());
        assert_eq!(ev.items.len(), sent.items.len());
        assert_eq!(ev.items_count(), Some(2));
        for (got, want) in ev.items.iter().zip(&sent.items) {
            assert_eq!(got.sku, want.sku);
            assert_eq!(got.quantity, i64::from(want.quantity));
            assert_eq!(got.unit_price.map(|p| p.to_string()), Some(want.unit_price.to_string()));
        }
        if !rec.trace_id.is_empty() {
            assert_eq!(rec.trace_id[0], 0x4b, "trace context from the traceparent header");
            with_trace += 1;
        }
    }
    assert_eq!(with_trace, 12, "the JSON messages carried a traceparent header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_consumed_again() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["flaky"], 2);
    let n = 200;
    let msgs: Vec<Msg> = (0..n).map(|i| Msg::value(log_request(&format!("f-{i}")))).collect();
    let downstream = Downstream::start().await;
    downstream.set_unavailable(true);
    produce(&b, "flaky", &msgs);
    let admin = admin_addr();
    let config = format!(
        r#"
receivers:
  kafka:
    brokers: [{b}]
    topics: [flaky]
    group_id: flaky-test
    initial_offset: earliest
    encoding: otlp_proto
    redelivery: {{initial_interval: 200ms, max_interval: 1s}}
exporters:
  otlp:
    endpoint: http://{downstream}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 500ms}}
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [kafka]
      exporters: [otlp]
"#,
        downstream = downstream.addr
    );
    let bp = Bizpilot::start(&config, admin);
    // Exports fail and are given up: the receiver sees failed acknowledgements and rewinds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bp.metric_sum("bizpilot_kafka_receiver_redeliveries_total", &[]) < 2.0 {
        assert!(Instant::now() < deadline, "no redelivery\n{}", bp.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    downstream.set_unavailable(false);
    downstream
        .wait_for(Duration::from_secs(60), "every message", |r| {
            let ids: BTreeSet<String> = r
                .logs
                .iter()
                .flat_map(|req| &req.resource_logs)
                .flat_map(|rl| &rl.scope_logs)
                .flat_map(|sl| &sl.log_records)
                .filter_map(|l| match l.body.as_ref()?.value.as_ref()? {
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            ids.len() == n
        })
        .await;
    assert!(bp.logs().contains("delivery failed"), "{}", bp.logs());
}

/// The kafka exporter's producer is idempotent. When a message times out while its request is in flight, librdkafka
/// bumps the producer's epoch itself (a Kafka broker accepts the higher epoch); tansu refuses it with
/// `ProducerFenced`, and librdkafka keeps the refused epoch: every later delivery of that producer fails the same way.
/// The exporter replaces a refused producer (a new producer id), so delivery resumes. The broker is paused
/// (SIGSTOP) for longer than the exporter's timeout while a record is in flight, then resumed.
#[test]
fn a_producer_the_broker_refuses_is_replaced_and_delivery_resumes() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["fenced"], 1);
    let (admin, http) = (admin_addr(), admin_addr());
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{endpoint: "{http}"}}
exporters:
  kafka:
    brokers: [{b}]
    logs_topic: fenced
    timeout: 2s
    retry_on_failure: {{initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 0}}
service:
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [kafka]
"#
    );
    let bp = Bizpilot::start(&config, admin);
    let send = |id: &str| assert_eq!(common::otlp_post(http, "/v1/logs", &log_request(id)), 200);
    send("before");
    wait_for_ids(&b, "fenced", 1, Duration::from_secs(60), bodies, Some(&bp));

    broker.signal("STOP");
    send("while-paused");
    // The record's request is in flight; its message times out (2 s less a tenth) and the epoch is bumped.
    std::thread::sleep(Duration::from_secs(4));
    broker.signal("CONT");
    send("after");
    let (_, got) = wait_for_ids(&b, "fenced", 3, Duration::from_secs(60), bodies, Some(&bp));
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 3, "{got:?}");
    let m = bp.metrics();
    let fenced = metric_sum(
        &m,
        "bizpilot_kafka_exporter_delivery_failures_total",
        &["reason=\"ProducerFenced\""],
    );
    let replaced = metric_sum(
        &m,
        "bizpilot_kafka_exporter_producer_recreations_total",
        &["reason=\"fenced\""],
    );
    eprintln!("deliveries refused with ProducerFenced: {fenced}; producers replaced: {replaced}");
    assert!(
        fenced >= 1.0,
        "the pause led to a refused epoch (else the test shows nothing)\n{m}"
    );
    assert!(replaced >= 1.0, "{m}");
}
