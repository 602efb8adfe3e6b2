//! End to end: the business join fed from Kafka. The shipped `pipelines/business-join.yaml` runs in the real
//! binary with one change: its business events come from a Kafka topic (a `kafka` receiver, `encoding:
//! business_json`, on a tansu broker) instead of OTLP. The `logs/events` pipeline's `business_events` exporter writes
//! them into the `business_state`; spans of a generated shop workload arrive over OTLP/HTTP and the `enrich`
//! processor joins the state onto them (`join.state`). Every span is checked, at a real OTLP/gRPC server downstream,
//! against the workload's ground truth for the enriched attributes — including spans that arrived before their
//! order's event was even produced, which waited in the join until it came through Kafka.

mod common;
#[path = "kafka_harness.rs"]
mod kafka_harness;

use bizpilot_business::attrs;
use bizpilot_core::{Currency, Money};
use bizpilot_shopgen::{Emission, Shop, ShopConfig, pack_traces};
use common::{Downstream, free_addr, hex, post_accepted, span_attr, start_pipeline};
use kafka_harness::{Msg, Tansu, create_topics, produce};
use prost::Message;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn business_events_from_kafka_enrich_spans_from_otlp_as_the_ground_truth_says() {
    let started = Instant::now();
    let cfg: ShopConfig = serde_yaml::from_str(
        r#"
seed: 17
duration: 3m
orders_per_sec: 2
customers: 3000
fulfilment: {ship_delay: {min: 10s, max: 1m}, delivery_delay: {min: 10s, max: 1m}}
injections:
  payment_outages:
    - {start: 40s, end: 100s, failure_probability: 0.6, status_message: "payment gateway timeout", timeout: 2s}
  retries: {probability: 0.8, delay: {min: 5s, max: 20s}, max_attempts: 3}
  duplicates: {probability: 0.05, max_delay: 5s}
  out_of_order: {probability: 0.2, max_delay: 10s}
  late: {probability: 0.05, delay: {min: 1s, max: 5s}}
  events_after_spans: {probability: 0.4, delay: {min: 1s, max: 20s}}
"#,
    )
    .unwrap();
    let work = Shop::generate(&cfg).unwrap();
    let truth = &work.truth;
    assert!(truth.counts.events_after_spans > 0 && truth.counts.duplicate_trace_emissions > 0);

    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.orders"], 4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let downstream = rt.block_on(Downstream::start());
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.csv");
    std::fs::write(&customers, work.catalog.customers_csv()).unwrap();
    let (bp, http) = start_join(&b, "business-join", downstream.addr, &customers, None, "");

    // The shop publishes its business events to Kafka, keyed by order id, as they happen; its services export
    // spans over OTLP. In arrival order, chunk by chunk: a span whose event comes later is sent before that event
    // is even produced.
    let mut events_sent = 0;
    let mut spans_sent = 0;
    for chunk in work.emissions.chunks(200) {
        let events: Vec<Msg> = chunk
            .iter()
            .filter_map(Emission::as_event)
            .map(|e| Msg::keyed(e.order_id.as_str(), e.to_json()))
            .collect();
        events_sent += events.len();
        produce(&b, "shop.orders", &events);
        for req in pack_traces(chunk.iter().filter_map(Emission::as_trace), 5_000) {
            spans_sent += req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>();
            post_accepted(http, "/v1/traces", &req.encode_to_vec());
        }
    }
    assert_eq!(spans_sent as u64, truth.counts.span_emissions);
    eprintln!(
        "[{:?}] {events_sent} events produced, {spans_sent} spans sent",
        started.elapsed()
    );
    rt.block_on(downstream.wait_for(Duration::from_secs(90), "every span", |r| r.span_count() >= spans_sent));
    eprintln!("[{:?}] every span downstream", started.elapsed());
    let spans = downstream.received(|r| r.spans());
    assert_eq!(spans.len(), spans_sent, "no span lost or invented");

    // Every span against the ground truth: with an order key, all six business attributes (customer, tier, order,
    // value and currency, line items), most of them only the state can give; with a customer key, the customer and
    // its tier; without a key, nothing.
    let mut compared = 0;
    let mut seen = HashSet::new();
    for sp in &spans {
        let (tid, sid) = (hex(&sp.trace_id), hex(&sp.span_id));
        let ctx = format!("{} {tid}/{sid}", sp.name);
        let Some(exp) = truth.enrichment_for(&tid, &sid) else {
            for k in ["business.customer.id", "business.order.id", "business.order.value"] {
                assert!(span_attr(sp, k).is_none(), "{ctx}: no business key, yet {k} is set");
            }
            continue;
        };
        seen.insert((tid.clone(), sid.clone()));
        assert_eq!(
            span_attr(sp, "business.customer.id").as_deref(),
            Some(exp.customer_id.as_str()),
            "{ctx}"
        );
        assert_eq!(
            span_attr(sp, "business.customer.tier").as_deref(),
            Some(exp.customer_tier.as_str()),
            "{ctx}"
        );
        compared += 2;
        if let Some(o) = &exp.order_id {
            assert_eq!(span_attr(sp, "business.order.id").as_deref(), Some(o.as_str()), "{ctx}");
            compared += 1;
        }
        if let (Some(v), Some(c)) = (exp.order_value, exp.currency) {
            let cur = span_attr(sp, "business.currency").unwrap_or_else(|| panic!("{ctx}: no currency"));
            assert_eq!(cur, c.as_str(), "{ctx}");
            let value = span_attr(sp, "business.order.value").unwrap_or_else(|| panic!("{ctx}: no order value"));
            let got = Money::parse_amount(&value, Currency::new(&cur).unwrap()).unwrap();
            assert_eq!(got, v, "{ctx}: order value {value}");
            compared += 2;
        }
        if let Some(n) = exp.cart_items {
            assert_eq!(
                attrs::get_i64(&sp.attributes, "business.cart.items"),
                Some(i64::from(n)),
                "{ctx}"
            );
            compared += 1;
        }
    }
    assert_eq!(
        seen.len(),
        truth.enrichment.len(),
        "every span with a business key came out"
    );
    // Spans that carry nothing but the order id get everything from the state the Kafka events built.
    let ship_orders = spans
        .iter()
        .filter(|s| s.name == bizpilot_shopgen::spans::names::SHIP_ORDER)
        .count();
    assert!(ship_orders > 0);
    eprintln!(
        "[{:?}] {compared} enriched attribute values equal the ground truth ({} spans with a business key, \
         {ship_orders} ShipOrder spans enriched from the state alone)",
        started.elapsed(),
        seen.len()
    );

    // Self-telemetry: every event reached the state through Kafka, no order was missed, and the spans that came
    // before their event waited for it and were released by its arrival.
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = bp.metrics();
        let applied = common::metric_sum(&m, "bizpilot_exporter_business_events_total", &["outcome=\"applied\""]);
        if applied >= events_sent as f64 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "{applied} of {events_sent} events applied\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let sum = |name: &str, labels: &[&str]| common::metric_sum(&m, name, labels);
    assert_eq!(
        sum(
            "bizpilot_receiver_accepted_log_records_total",
            &["receiver=\"kafka/orders\""]
        ),
        events_sent as f64,
        "{m}"
    );
    assert_eq!(
        sum("bizpilot_exporter_business_events_total", &["outcome=\"applied\""]),
        events_sent as f64
    );
    assert_eq!(
        sum("bizpilot_processor_enrich_join_misses_total", &["source=\"order\""]),
        0.0
    );
    let held = sum("bizpilot_processor_enrich_held_spans_total", &[]);
    assert!(held > 0.0, "some spans came before their event: {m}");
    assert_eq!(
        sum(
            "bizpilot_processor_enrich_released_spans_total",
            &["reason=\"arrival\""]
        ),
        held,
        "and were released by its arrival"
    );
    eprintln!(
        "[{:?}] {held} spans waited for their event from Kafka",
        started.elapsed()
    );
}

/// A committed Kafka offset is never lost to a `SIGKILL`: the `business_events` exporter acknowledges a batch of
/// events (so the receiver may commit its offsets) only once the `business_state` checkpoint holding them is
/// committed to the `file_storage` file. The checkpoint interval is 10 s here, the receiver's commit interval 1 s:
/// acknowledged at once, the offsets would be committed seconds before the state is written. The test waits until
/// the group's committed offset covers every event, kills the process at that moment, starts a new one on the same
/// storage directory — which reads nothing more from the topic, every offset being committed — and sends the shop's
/// spans: each span with an order key must come out with the customer and the value that only the events gave.
#[test]
fn an_event_whose_offset_is_committed_survives_a_sigkill_right_after_the_commit() {
    let started = Instant::now();
    let cfg: ShopConfig = serde_yaml::from_str(
        r#"
seed: 23
duration: 40s
orders_per_sec: 2
customers: 500
fulfilment: {ship_delay: {min: 5s, max: 10s}, delivery_delay: {min: 5s, max: 10s}}
"#,
    )
    .unwrap();
    let work = Shop::generate(&cfg).unwrap();
    let truth = &work.truth;

    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.orders"], 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let downstream = rt.block_on(Downstream::start());
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let customers = dir.path().join("customers.csv");
    std::fs::write(&customers, work.catalog.customers_csv()).unwrap();
    // The state is checkpointed every 10 s; the receiver commits every 1 s.
    let start = || {
        start_join(
            &b,
            "durable-join",
            downstream.addr,
            &customers,
            Some(&storage),
            "extensions:\n  business_state: {checkpoint_interval: 10s}\n",
        )
    };

    // Every business event to Kafka; the process applies them and the group commits their offsets.
    let (mut first, _) = start();
    let events: Vec<Msg> = work
        .emissions
        .iter()
        .filter_map(Emission::as_event)
        .map(|e| Msg::keyed(e.order_id.as_str(), e.to_json()))
        .collect();
    produce(&b, "shop.orders", &events);
    kafka_harness::wait_committed(
        &b,
        "durable-join",
        "shop.orders",
        events.len(),
        Duration::from_secs(60),
        || first.logs(),
    );
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    eprintln!(
        "[{:?}] {} events committed, then SIGKILL",
        started.elapsed(),
        events.len()
    );

    // A new process on the same storage: nothing left to read from Kafka, the state comes from the checkpoint.
    let (second, http) = start();
    let mut spans_sent = 0;
    for req in pack_traces(work.emissions.iter().filter_map(Emission::as_trace), 5_000) {
        spans_sent += req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
        post_accepted(http, "/v1/traces", &req.encode_to_vec());
    }
    rt.block_on(downstream.wait_for(Duration::from_secs(90), "every span", |r| r.span_count() >= spans_sent));
    let spans = downstream.received(|r| r.spans());
    let mut from_state = 0;
    for sp in &spans {
        let (tid, sid) = (hex(&sp.trace_id), hex(&sp.span_id));
        let Some(exp) = truth.enrichment_for(&tid, &sid) else {
            continue;
        };
        let Some(order) = &exp.order_id else {
            continue;
        };
        let ctx = format!("{} {tid}/{sid} (order {order})", sp.name);
        assert_eq!(
            span_attr(sp, "business.customer.id").as_deref(),
            Some(exp.customer_id.as_str()),
            "{ctx}: the customer only the committed events gave\n{}",
            second.logs()
        );
        if let (Some(v), Some(c)) = (exp.order_value, exp.currency) {
            let value = span_attr(sp, "business.order.value").unwrap_or_else(|| panic!("{ctx}: no order value"));
            assert_eq!(Money::parse_amount(&value, c).unwrap(), v, "{ctx}");
        }
        from_state += 1;
    }
    assert!(from_state > 50, "only {from_state} spans with an order key");
    let applied = second.metric_sum("bizpilot_exporter_business_events_total", &["outcome=\"applied\""]);
    assert_eq!(
        applied, 0.0,
        "the restarted process read events again: the test proves nothing"
    );
    eprintln!(
        "[{:?}] {from_state} spans with an order key enriched from the restored state alone",
        started.elapsed()
    );
}

/// The shipped `pipelines/business-join.yaml` with its business events from Kafka (`brokers`, topic `shop.orders`,
/// consumer group `group`) instead of OTLP, spans on to a real OTLP server at `downstream`, and `extra` YAML
/// merged over it. Returns the process and its OTLP/HTTP address.
fn start_join(
    brokers: &str,
    group: &str,
    downstream: std::net::SocketAddr,
    customers: &std::path::Path,
    storage: Option<&std::path::Path>,
    extra: &str,
) -> (common::Bizpilot, std::net::SocketAddr) {
    let (http, admin) = (free_addr(), free_addr());
    let mut env = vec![
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", free_addr().to_string()),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
        ("BIZPILOT_CUSTOMERS_FILE", customers.display().to_string()),
    ];
    if let Some(dir) = storage {
        env.push(("BIZPILOT_STORAGE_DIR", dir.display().to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let overlay = format!(
        r#"
receivers:
  kafka/orders:
    brokers: [{brokers}]
    topics: [shop.orders]
    group_id: {group}
    initial_offset: earliest
    encoding: business_json
    commit_interval: 1s
exporters:
  otlp:
    endpoint: http://{downstream}
service:
  pipelines:
    logs/events:
      receivers: [kafka/orders]
    traces:
      exporters: [otlp]
{extra}"#
    );
    (
        start_pipeline("pipelines/business-join.yaml", &overlay, admin, &env),
        http,
    )
}
