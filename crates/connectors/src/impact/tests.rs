//! The connector end to end in-process: a generated shop outage against its ground truth, and the task's
//! wiring (channels, metric start times, the HTTP API).

use super::*;
use crate::impact::book::ImpactRecord;
use bizpilot_business::attrs;
use bizpilot_business::{EventMapping, StateConfig};
use bizpilot_core::component::{ApiRegistry, Output, ReceiverOutput, Target, parse_config};
use bizpilot_core::{ComponentId, ConnectorContext, Currency, Extensions, Money, Traces};
use bizpilot_shopgen::{Shop, ShopConfig};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use std::collections::{BTreeMap, HashMap};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SEC: u64 = 1_000_000_000;

fn shop_config() -> ShopConfig {
    serde_yaml::from_str(
        r#"
seed: 11
duration: 30m
orders_per_sec: 3
customers: 20000
impact_window: 10m
injections:
  payment_outages:
    - {start: 8m, end: 12m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 2s}
    - {start: 20m, end: 22m, failure_probability: 0.8, status_message: "card processor unavailable", timeout: 1s}
  retries: {probability: 0.7, delay: {min: 30s, max: 5m}, max_attempts: 3}
  duplicates: {probability: 0.05, max_delay: 5s}
  late: {probability: 0.02, delay: {min: 1m, max: 10m}}
  out_of_order: {probability: 0.1, max_delay: 10s}
"#,
    )
    .unwrap()
}

/// The demo's raw attributes, the order value and items from the business state.
const IMPACT_CONFIG: &str = r#"
operations:
  - name: checkout
    service: checkout
    span_name: oteldemo.CheckoutService/PlaceOrder
  - name: payment
    span_name: grpc.oteldemo.PaymentService/Charge
business_key: user.id
tier_attribute: demo.user_context.loyalty_level
order_attribute: demo.order.id
items_attribute: demo.order.items.count
state: business_state
dimensions: [{name: customer.tier, attribute: demo.user_context.loyalty_level, default: unknown}]
# The tier is on the payment service's `charge` span (as in the demo): from the trace.
trace_context: {enabled: true}
dedup_window: 10m
allowed_lateness: 15m
# shopgen's truth dates incidents by the fixed-share rule.
incident: {detection: threshold, window: 1m, evaluation_interval: 10s, open_threshold: 0.5, close_threshold: 0.2, min_operations: 10}
"#;

fn tier_counts(e: &Engine, op: usize) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in e.series.iter().filter(|s| s.op == op) {
        let tier = s
            .dims
            .as_ref()
            .and_then(|d| d.first())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let c = m.entry(tier).or_default();
        c.0 += s.successful;
        c.1 += s.failed;
    }
    m
}

/// How the engine is fed in a test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// Decoded requests ([`Engine::ingest`]).
    Decoded,
    /// Encoded requests through views ([`Engine::ingest_traces`] on bytes).
    Views,
}

fn feed(e: &mut Engine, req: &ExportTraceServiceRequestT, path: Path) {
    match path {
        Path::Decoded => e.ingest(req),
        Path::Views => {
            let mut t = Traces::from_bytes(prost::Message::encode_to_vec(req).into()).unwrap();
            e.ingest_traces(&mut t);
            assert!(t.decoded().is_none(), "the view path does not decode");
        }
    }
}

type ExportTraceServiceRequestT = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// The engine after the generated outage workload, fed by `path`.
fn outage_engine(work: &bizpilot_shopgen::Workload, path: Path) -> Engine {
    // The business state knows every order (events applied first: the join itself is the enrich processor's).
    let state = Arc::new(BusinessState::new(
        "business_state",
        StateConfig {
            max_orders: 1_000_000,
            max_customers: 1_000_000,
            ttl: None,
            ..StateConfig::default()
        },
    ));
    let mapping = EventMapping::default();
    for ev in work.events() {
        if let Ok(Some(e)) = mapping.parse(&ev.to_log_record()) {
            state.apply(&e);
        }
    }
    let raw: serde_yaml::Value = serde_yaml::from_str(IMPACT_CONFIG).unwrap();
    let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
    let mut e = Engine::new(Compiled::new(&cfg, Some(state), None, None).unwrap(), "business_impact");
    for req in work.trace_requests(200) {
        feed(&mut e, &req, path);
    }
    e.flush();
    e
}

#[test]
fn a_generated_outage_yields_the_ground_truth() {
    outage_matches_truth(Path::Decoded);
}

#[test]
fn a_generated_outage_yields_the_ground_truth_through_views() {
    outage_matches_truth(Path::Views);
}

/// Both paths give identical figures, records and self-telemetry on the same workload.
#[test]
fn decoded_and_view_paths_agree_on_everything() {
    let work = Shop::generate(&shop_config()).unwrap();
    let mut a = outage_engine(&work, Path::Decoded);
    let mut b = outage_engine(&work, Path::Views);
    assert_eq!(a.metrics(1, 2), b.metrics(1, 2), "metrics");
    assert_eq!(a.take_logs(), b.take_logs(), "impact and incident records");
    let counts = |e: &Engine| {
        let s = e.stats();
        [
            &s.operations,
            &s.duplicates,
            &s.late,
            &s.forced,
            &s.missing_key,
            &s.missing_value,
            &s.invalid_value,
            &s.evicted_keys,
            &s.evicted_span_ids,
            &s.overflowed_points,
        ]
        .map(|c| c.get())
    };
    assert_eq!(counts(&a), counts(&b), "stats");
    let (ba, bb) = (a.book(), b.book());
    let (ba, bb) = (ba.lock().unwrap(), bb.lock().unwrap());
    assert_eq!(
        format!("{:?}", ba.operations),
        format!("{:?}", bb.operations),
        "summaries"
    );
    assert_eq!(
        format!("{:?}", ba.records().collect::<Vec<_>>()),
        format!("{:?}", bb.records().collect::<Vec<_>>()),
        "impact records"
    );
    assert_eq!(
        format!("{:?}", ba.incidents().collect::<Vec<_>>()),
        format!("{:?}", bb.incidents().collect::<Vec<_>>()),
        "incidents"
    );
    drop((ba, bb));
    assert_eq!(
        (a.watermark(), a.pending(), a.active_keys()),
        (b.watermark(), b.pending(), b.active_keys())
    );
}

fn outage_matches_truth(path: Path) {
    let work = Shop::generate(&shop_config()).unwrap();
    let truth = &work.truth;
    let e = outage_engine(&work, path);
    assert_eq!(e.stats().late.get(), 0, "allowed_lateness covers the injected lateness");
    assert!(
        e.stats().duplicates.get() > 0,
        "the workload has duplicate checkout spans"
    );
    // The workload exercises what it should: late and reordered data, retries that recover, carts that are lost.
    assert!(truth.counts.late_emissions > 0 && truth.counts.out_of_order_emissions > 0);
    assert_eq!(truth.impact.incidents.len(), 2);
    let checkout = truth.operation("checkout").unwrap();
    assert!(checkout.episodes_recovered > 0 && checkout.episodes_recovered < checkout.episodes_total);
    assert!(checkout.affected_customers_by_window.len() >= 2);
    assert!(
        truth.impact.impact_list.len() > 100,
        "{}",
        truth.impact.impact_list.len()
    );
    assert_eq!(e.stats().missing_value.get(), 0);

    let book = e.book();
    let b = book.lock().unwrap();
    for (i, name) in ["checkout", "payment"].into_iter().enumerate() {
        let t = truth.operation(name).unwrap();
        let s = &b.operations[i];
        assert_eq!(
            (s.operations, s.successful, s.failed),
            (t.total, t.successful, t.failed),
            "{name}: counts"
        );
        assert_eq!(s.revenue.get(Currency::USD), t.revenue, "{name}: revenue");
        assert_eq!(
            s.revenue_at_risk.get(Currency::USD),
            t.revenue_at_risk,
            "{name}: revenue at risk"
        );
        assert_eq!(
            s.recovered_revenue.get(Currency::USD),
            t.recovered_revenue,
            "{name}: recovered"
        );
        // Lost: ended episodes; those still open at the end of the data are lost in the truth too.
        let open = e.active_at_risk(i).get(Currency::USD);
        assert_eq!(
            s.open_at_risk.get(Currency::USD),
            open,
            "{name}: at risk = recovered + lost + open"
        );
        assert_eq!(
            s.lost_revenue.get(Currency::USD).checked_add(open).unwrap(),
            t.lost_revenue,
            "{name}: lost"
        );
        // By tier.
        let tiers = tier_counts(&e, i);
        for (tier, c) in &t.by_tier {
            let got = tiers.get(tier.as_str()).copied().unwrap_or_default();
            assert_eq!(got, (c.successful, c.failed), "{name}: tier {}", tier.as_str());
        }
        // Affected customers per window.
        let mut windows: Vec<(u64, u64)> = s.windows.iter().map(|w| (w.start, w.customers)).collect();
        if let Some(w) = s.current_window.filter(|w| w.customers > 0) {
            windows.push((w.start, w.customers));
        }
        let expected: Vec<(u64, u64)> = t
            .affected_customers_by_window
            .iter()
            .map(|w| (w.start_unix_nano, w.affected_customers))
            .collect();
        assert_eq!(windows, expected, "{name}: affected customers by window");
        assert!(s.windows.iter().all(|w| w.exact));
    }

    // Incidents of checkout: the two outages, within one evaluation interval.
    let incidents: Vec<&book::Incident> = b.incidents().filter(|i| i.operation == "checkout").collect();
    assert_eq!(incidents.len(), truth.impact.incidents.len(), "{incidents:#?}");
    let interval = 10 * SEC;
    let mut incident_of: HashMap<String, usize> = HashMap::new();
    for (got, want) in incidents.iter().zip(&truth.impact.incidents) {
        assert!(
            got.start.abs_diff(want.start_unix_nano) <= interval,
            "start {} vs {}",
            got.start,
            want.start_unix_nano
        );
        let end = got.end.expect("closed");
        assert!(
            end.abs_diff(want.end_unix_nano) <= interval,
            "end {end} vs {}",
            want.end_unix_nano
        );
        assert_eq!(got.failed_operations, want.failed_checkouts);
        assert_eq!(got.affected_customers, want.affected_customers);
        assert_eq!(
            got.top_causes(1)[0].1,
            want.status_message,
            "root cause: the payment service's message"
        );
        incident_of.insert(got.id.clone(), want.index);
    }
    // The impact list: complete, ordered by value, with carts.
    // Every customer with a failed checkout has a record; those an incident covers are shopgen's list.
    let failed_keys: std::collections::BTreeSet<&str> = b
        .records()
        .filter(|r| r.operation == "checkout")
        .map(|r| &*r.key)
        .collect();
    for want in &truth.impact.impact_list {
        assert!(
            failed_keys.contains(want.customer_id.as_str()),
            "{} listed",
            want.customer_id
        );
    }
    let mut list: Vec<&ImpactRecord> = b
        .records()
        .filter(|r| r.operation == "checkout" && r.incident_seq != 0)
        .collect();
    list.sort_by(|a, b| {
        b.cart_value
            .map(|m| m.nanos())
            .cmp(&a.cart_value.map(|m| m.nanos()))
            .then_with(|| a.customer.cmp(&b.customer))
            .then_with(|| a.time.cmp(&b.time))
    });
    assert_eq!(list.len(), truth.impact.impact_list.len());
    for (got, want) in list.iter().zip(&truth.impact.impact_list) {
        assert_eq!(got.customer.as_deref(), Some(want.customer_id.as_str()));
        assert_eq!(got.tier.as_deref(), Some(want.tier.as_str()));
        assert_eq!(got.cart_value, Some(want.cart_value));
        assert_eq!(got.order_id.as_deref(), Some(want.order_id.as_str()));
        let items: Vec<(String, i64, Option<Money>)> = got
            .items
            .iter()
            .map(|i| (i.sku.clone(), i.quantity, i.unit_price))
            .collect();
        let want_items: Vec<(String, i64, Option<Money>)> = want
            .items
            .iter()
            .map(|i| (i.sku.clone(), i64::from(i.quantity), Some(i.unit_price)))
            .collect();
        assert_eq!(items, want_items);
        assert_eq!(got.item_count, Some(want.items.len() as i64));
        assert_eq!(
            (
                got.failure.service.as_str(),
                got.failure.span_name.as_str(),
                got.failure.status_message.as_str()
            ),
            (
                want.failure.service,
                want.failure.span_name,
                want.failure.status_message.as_str()
            )
        );
        let root = got.root_cause.as_ref().unwrap();
        assert_eq!(
            (
                root.service.as_str(),
                root.span_name.as_str(),
                root.status_message.as_str()
            ),
            (
                want.root_cause.service,
                want.root_cause.span_name,
                want.root_cause.status_message.as_str()
            )
        );
        assert_eq!(output::hex(&got.trace_id), want.trace_id);
        assert_eq!(got.time, want.time_unix_nano);
        assert_eq!(got.failed_attempts, want.failed_attempts);
        assert_eq!(incident_of.get(&got.incident_id).copied(), want.incident);
    }
}

fn channel(cap: usize) -> (Output, mpsc::Receiver<Batch>) {
    let (tx, rx) = mpsc::channel(cap);
    (
        Output::new(
            vec![Target {
                name: "t".into(),
                sender: tx,
            }],
            Vec::new(),
        ),
        rx,
    )
}

fn sum_value(req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest, name: &str) -> f64 {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == name)
        .filter_map(|m| match &m.data {
            Some(Data::Sum(s)) => Some(&s.data_points),
            _ => None,
        })
        .flatten()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn the_connector_emits_cumulative_metrics_and_records_and_serves_its_api() {
    let work = Shop::generate(&ShopConfig {
        duration: bizpilot_core::config::Duration::from_secs(300),
        injections: serde_yaml::from_str(
            "payment_outages: [{start: 1m, end: 3m, failure_probability: 1.0, timeout: 1s}]",
        )
        .unwrap(),
        ..shop_config()
    })
    .unwrap();
    let yaml = r#"
operations:
  - {name: payment, span_name: grpc.oteldemo.PaymentService/Charge}
business_key: user.id
tier_attribute: demo.user_context.loyalty_level
trace_context: {enabled: true}
value: {attribute: demo.payment.amount, default_currency: USD}
metrics_flush_interval: 50ms
allowed_lateness: 1s
idle_timeout: 100ms
"#;
    let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
    let api = ApiRegistry::default();
    let exts = Extensions::with_api(api.clone());
    let id: ComponentId = "business_impact".parse().unwrap();
    let ctx = |signals: &[Signal], out: &[Signal]| CreateContext {
        id: &id,
        pipeline: None,
        signals: signals.iter().copied().collect(),
        output_signals: out.iter().copied().collect(),
        extensions: &exts,
    };
    assert!(
        BusinessImpactConnectorFactory
            .create(cfg.clone(), &ctx(&[Signal::Logs], &[Signal::Metrics]))
            .is_err()
    );
    assert!(
        BusinessImpactConnectorFactory
            .create(cfg.clone(), &ctx(&[Signal::Traces], &[Signal::Traces]))
            .is_err()
    );
    let mut redacting = cfg.clone();
    redacting.redact_customer = true;
    redacting.hash_key_env = "BIZPILOT_TEST_SURELY_UNSET_HASH_KEY".into();
    let Err(err) = BusinessImpactConnectorFactory.create(redacting, &ctx(&[Signal::Traces], &[Signal::Logs])) else {
        panic!("redact_customer without a key must not start");
    };
    assert!(err.to_string().contains("BIZPILOT_TEST_SURELY_UNSET_HASH_KEY"), "{err}");
    let conn = BusinessImpactConnectorFactory
        .create(cfg, &ctx(&[Signal::Traces], &[Signal::Metrics, Signal::Logs]))
        .unwrap();
    let (m_out, mut m_rx) = channel(1024);
    let (l_out, mut l_rx) = channel(1024);
    let (tx, rx) = mpsc::channel(4);
    let mut running = conn
        .start(ConnectorContext {
            id: id.clone(),
            input: rx,
            output: ReceiverOutput::new(HashMap::from([(Signal::Metrics, m_out), (Signal::Logs, l_out)])),
            abort: CancellationToken::new(),
        })
        .unwrap();
    // Charge spans carry their value as `demo.payment.amount` (a string): no state needed.
    for req in work.trace_requests(500) {
        let (ack, done) = bizpilot_core::Ack::channel();
        tx.send(Batch::with_ack(Payload::Traces(Traces::from_message(req)), ack))
            .await
            .unwrap();
        assert_eq!(
            done.await.unwrap(),
            bizpilot_core::Delivery::Delivered,
            "aggregated = delivered"
        );
    }
    // Idle: everything becomes final without closing the input, and the metrics say so.
    let t = work.truth.operation("payment").unwrap();
    let mut first_start = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = tokio::time::timeout(Duration::from_secs(5), m_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Payload::Metrics(mut m) = b.payload else { panic!() };
        let req = m.message().unwrap().clone();
        let start = req.resource_metrics[0].scope_metrics[0].metrics[0]
            .data
            .as_ref()
            .map(|d| match d {
                Data::Sum(s) => s.data_points[0].start_time_unix_nano,
                Data::Gauge(g) => g.data_points[0].start_time_unix_nano,
                _ => 0,
            });
        assert_eq!(*first_start.get_or_insert(start), start, "one start time per process");
        if sum_value(&req, "business.operations") as u64 == t.total {
            break;
        }
        assert!(Instant::now() < deadline, "metrics never reached the total");
    }
    // The API answers through the registry the admin server uses.
    let r = api
        .dispatch(
            "impact",
            &[("operation".into(), "payment".into()), ("limit".into(), "5".into())],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"], work.truth.impact.impact_list.len());
    assert_eq!(r.body["summary"][0]["failed"], t.failed);
    assert_eq!(
        serde_json::from_value::<Money>(r.body["summary"][0]["revenue_at_risk"][0].clone()).unwrap(),
        t.revenue_at_risk
    );
    let values: Vec<Money> = r.body["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["cart_value"].clone()).unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0].nanos() >= w[1].nanos()),
        "highest cart value first"
    );
    let r = api.dispatch("incidents", &[]).unwrap();
    assert_eq!(r.body["total"], 1);
    // Closing the input flushes and ends the task; logs carried the records.
    drop(tx);
    running.join().await.unwrap();
    let mut impact = std::collections::BTreeSet::new();
    let mut incident_states = Vec::new();
    while let Ok(b) = l_rx.try_recv() {
        let Payload::Logs(mut l) = b.payload else { panic!() };
        for r in l
            .message()
            .unwrap()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            match r.event_name.as_str() {
                "business.impact" => {
                    // A record is logged when created and again when an incident names it.
                    impact.insert((r.trace_id.clone(), r.span_id.clone()));
                }
                "business.incident" => incident_states.push(
                    attrs::get_str(&r.attributes, "business.incident.state")
                        .unwrap_or("")
                        .to_string(),
                ),
                other => panic!("unexpected record {other}"),
            }
        }
    }
    assert_eq!(impact.len(), work.truth.impact.impact_list.len());
    assert_eq!(incident_states.first().map(String::as_str), Some("open"));
    assert_eq!(incident_states.last().map(String::as_str), Some("closed"));
}

/// What the engine holds per operation waiting for the watermark, on the generated shop (demo attributes,
/// customer ids of 36 characters): everything pending (lateness longer than the run), then everything final.
/// Prints the figures `docs/impact-memory.md` quotes (`-- --nocapture`).
#[test]
fn pending_operations_and_remembered_ids_are_compact() {
    let work = Shop::generate(&shop_config()).unwrap();
    for trace_context in [false, true] {
        let mut raw: serde_yaml::Value = serde_yaml::from_str(IMPACT_CONFIG).unwrap();
        raw["allowed_lateness"] = serde_yaml::from_str("2h").unwrap();
        raw["dedup_window"] = serde_yaml::from_str("2h").unwrap();
        if trace_context {
            raw["trace_context"] = serde_yaml::from_str("{enabled: true}").unwrap();
        }
        let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
        let mut e = Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "business_impact");
        for req in work.trace_requests(200) {
            feed(&mut e, &req, Path::Views);
        }
        let (n, bytes) = (e.pending(), e.pending_bytes());
        assert!(n > 5_000, "{n} operations pending");
        let per_op = bytes as f64 / n as f64;
        println!(
            "trace_context {trace_context}: {n} operations pending, {per_op:.1} bytes each (fixed part 80), {} ids \
             remembered",
            e.remembered_span_ids()
        );
        // The fixed part, two 36-character ids (customer, order), an amount and the lengths.
        assert!(per_op < 200.0, "{per_op} bytes per pending operation");
        assert_eq!(e.remembered_span_ids(), n);
        e.flush();
        assert_eq!((e.pending(), e.pending_bytes()), (0, 0));
        assert_eq!(
            e.remembered_span_ids(),
            n,
            "finalized ids stay remembered for dedup_window"
        );
    }
}

/// Everything the API shows of an engine (operations, goals, watermark, records, incidents), as text.
fn book_figures(e: &Engine) -> String {
    let book = e.book();
    let b = book.lock().unwrap();
    format!(
        "{:?}\n{:?}\n{}\n{:?}\n{:?}",
        b.operations,
        b.goals,
        b.watermark,
        b.records().collect::<Vec<_>>(),
        b.incidents().collect::<Vec<_>>()
    )
}

#[test]
fn an_engine_replayed_from_its_journal_continues_exactly_as_the_uninterrupted_one() {
    for trace_context in [false, true] {
        replayed_from_the_journal(trace_context);
    }
}

/// The connector's journal in `storage` (commits only when the test asks), and what it holds.
fn open_journal(
    storage: &bizpilot_core::storage::MemoryStorage,
    cfg: &BusinessImpactConfig,
) -> (bizpilot_core::storage::Journal, bizpilot_core::storage::Replay) {
    use bizpilot_core::storage::Storage;
    bizpilot_core::storage::Journal::open(
        storage.client("business_impact").unwrap(),
        "business_impact",
        durable::FORMAT,
        cfg.fingerprint(),
        std::time::Duration::from_secs(3600),
    )
    .unwrap()
}

/// The journal holds what the engine read of each request (not the request); replayed, it gives the engine that
/// was killed, which then continues exactly as the uninterrupted one.
fn replayed_from_the_journal(trace_context: bool) {
    use bizpilot_core::storage::{MemoryStorage, Storage};
    let work = Shop::generate(&shop_config()).unwrap();
    let requests = work.trace_requests(200);
    let half = requests.len() / 2;
    let mut raw: serde_yaml::Value = serde_yaml::from_str(IMPACT_CONFIG).unwrap();
    // IMPACT_CONFIG reads the tier from the trace.
    raw["trace_context"]["enabled"] = serde_yaml::Value::Bool(trace_context);
    let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
    assert_eq!(cfg.trace_context.enabled, trace_context);
    let state = || {
        let state = Arc::new(BusinessState::new("business_state", StateConfig::default()));
        let mapping = EventMapping::default();
        for ev in work.events() {
            if let Ok(Some(e)) = mapping.parse(&ev.to_log_record()) {
                state.apply(&e);
            }
        }
        state
    };
    let engine = || {
        Engine::new(
            Compiled::new(&cfg, Some(state()), None, None).unwrap(),
            "business_impact",
        )
    };

    // The uninterrupted run; the input goes idle once after the first quarter (everything seen is final, incidents
    // close as idle), a wall-clock decision the journal carries as a record.
    let quarter = requests.len() / 4;
    let idle = |e: &mut Engine| {
        e.idle(std::time::Duration::MAX, std::time::Duration::ZERO);
        e.idle_close(std::time::Duration::MAX, std::time::Duration::ZERO);
    };
    let mut a = engine();
    for (i, r) in requests.iter().enumerate() {
        if i == quarter {
            idle(&mut a);
        }
        feed(&mut a, r, Path::Views);
    }
    a.flush();

    // The first half journaled (both ways of reading a request), then the process is gone without a flush.
    let storage = MemoryStorage::default();
    let open = || open_journal(&storage, &cfg);
    let (mut j, replay) = open();
    assert!(replay.records.is_empty());
    let mut b = engine();
    b.capture_input();
    let (mut spans, mut request_bytes, mut record_bytes) = (0usize, 0usize, 0usize);
    // Compaction: a snapshot once 64 KiB of journal (and twice the last snapshot) is written; what is stored
    // stays below the last snapshot plus the journal allowed after it (plus one commit in flight).
    let min_journal = 64u64 << 10;
    let stored = || -> u64 {
        let c = storage.client("business_impact").unwrap();
        c.load_all()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    };
    let (mut snapshots, mut max_stored, mut max_snapshot) = (0u32, 0u64, 0u64);
    let mut snaps = durable::Snapshots::new(cfg.fingerprint(), min_journal);
    for (i, r) in requests[..half].iter().enumerate() {
        if i == quarter {
            idle(&mut b);
            j.append(durable::TAG_IDLE, &[]).unwrap();
            j.append(durable::TAG_IDLE_CLOSE, &[]).unwrap();
        }
        feed(&mut b, r, if i % 3 == 0 { Path::Decoded } else { Path::Views });
        spans += r
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>();
        request_bytes += prost::Message::encoded_len(r);
        if let Some(rec) = b.captured() {
            record_bytes += rec.len() + 5;
            j.append(durable::TAG_SPANS, rec).unwrap();
        }
        // Encoded off this thread while the next requests are fed; waited for every 8 requests to check the bound.
        if snaps.if_due(&b, &mut j) {
            snapshots += 1;
        }
        if i % 8 == 0 {
            snaps.wait();
            max_snapshot = max_snapshot.max(j.snapshot_bytes());
            j.commit();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let bound = max_snapshot + min_journal.max(2 * max_snapshot) + 64 * 1024;
            let now = stored();
            max_stored = max_stored.max(now);
            assert!(now <= bound, "stored {now} B > bound {bound} B after request {i}");
        }
    }
    snaps.wait();
    j.close(std::time::Duration::from_secs(5));
    println!(
        "trace_context {trace_context}: {snapshots} snapshots (largest {max_snapshot} B), at most {max_stored} B \
         stored, journal written {record_bytes} B"
    );
    assert!(snapshots >= 2, "compaction ran ({snapshots} snapshots)");
    println!(
        "trace_context {trace_context}: {spans} spans, requests {:.1} B/span, journal records {:.1} B/span",
        request_bytes as f64 / spans as f64,
        record_bytes as f64 / spans as f64
    );
    assert!(
        record_bytes * 3 < request_bytes,
        "records ({record_bytes} B) are a fraction of the requests ({request_bytes} B)"
    );
    let before = book_figures(&b);
    assert!(b.pending() > 0, "killed with operations pending");
    drop(b);

    // Restored: the same state, and the rest (with the last requests before the kill sent again) ends where the
    // uninterrupted run ends.
    let (mut j, replay) = open();
    let mut c = engine();
    let snapshot = replay.snapshot.as_ref().expect("a snapshot was written");
    c.load(cfg.fingerprint(), snapshot).unwrap();
    let done = durable::replay(&mut c, &replay, "business_impact");
    assert_eq!(done.unreadable, 0);
    assert!(
        done.requests > 0 && done.requests < half as u64,
        "the tail only: {done:?}"
    );
    assert_eq!(book_figures(&c), before, "restored exactly (snapshot + journal tail)");
    // A snapshot of the restored engine alone restores it too.
    assert!(durable::Snapshots::new(cfg.fingerprint(), min_journal).now(&c, &mut j));
    j.close(std::time::Duration::from_secs(5));
    let (_j, replay) = open();
    assert!(replay.records.is_empty());
    let mut c = engine();
    c.load(cfg.fingerprint(), replay.snapshot.as_ref().unwrap()).unwrap();
    assert_eq!(book_figures(&c), before, "restored exactly (snapshot alone)");
    assert!(
        c.load(cfg.fingerprint() ^ 1, replay.snapshot.as_ref().unwrap())
            .is_err(),
        "another configuration's snapshot is refused"
    );
    let dup = c.stats().duplicates.get();
    for r in &requests[half - 10..] {
        feed(&mut c, r, Path::Views);
    }
    assert!(c.stats().duplicates.get() > dup, "re-sent spans are duplicates");
    c.flush();
    assert_eq!(book_figures(&c), book_figures(&a));
    assert_eq!(tier_counts(&c, 0), tier_counts(&a, 0));
    assert_eq!(tier_counts(&c, 1), tier_counts(&a, 1));

    // Without the journal the second half alone gives other figures (the test can fail).
    let mut d = engine();
    for r in &requests[half..] {
        feed(&mut d, r, Path::Views);
    }
    d.flush();
    assert_ne!(book_figures(&d), book_figures(&a));
}

/// A snapshot is a copy of the engine taken between two requests and encoded on another thread while requests
/// keep arriving (and are journaled after its ticket): restored from it and the journal tail, the engine has the
/// figures of the one that went on, and of an engine that never snapshotted. The pause (the copy) is a fraction of
/// the encoding it takes off the connector's thread.
#[test]
fn a_snapshot_taken_while_requests_keep_arriving_restores_to_the_same_figures() {
    use bizpilot_core::storage::{Journal, MemoryStorage};
    let work = Shop::generate(&shop_config()).unwrap();
    let requests = work.trace_requests(200);
    let raw: serde_yaml::Value = serde_yaml::from_str(IMPACT_CONFIG).unwrap();
    let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
    let engine = || Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "business_impact");
    let storage = MemoryStorage::default();
    let open = || open_journal(&storage, &cfg);
    let (mut j, _) = open();
    let mut a = engine();
    a.capture_input();
    let mut plain = engine();
    let (third, two_thirds) = (requests.len() / 3, 2 * requests.len() / 3);
    let journal_one = |e: &mut Engine, j: &mut Journal, r: &ExportTraceServiceRequestT| {
        feed(e, r, Path::Views);
        if let Some(rec) = e.captured() {
            j.append(durable::TAG_SPANS, rec).unwrap();
        }
    };
    for r in &requests[..third] {
        journal_one(&mut a, &mut j, r);
        feed(&mut plain, r, Path::Views);
    }
    // The copy, then the encoding on a thread of its own while the next third arrives.
    let ticket = j.begin_snapshot().expect("no snapshot out");
    let paused = std::time::Instant::now();
    let state = a.state();
    let pause = paused.elapsed();
    let before_copy = book_figures(&a);
    for (part, took, bytes) in a.state_breakdown() {
        println!("  {part}: copied in {took:?}, {bytes} B encoded");
    }
    let again = std::time::Instant::now();
    drop(a.state());
    println!("a second copy (memory the first freed): {:?}", again.elapsed());
    let fp = cfg.fingerprint();
    let encoder = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let bytes = state.encode(fp).unwrap();
        let took = t.elapsed();
        ticket.write(&bytes);
        (took, bytes.len())
    });
    for (i, r) in requests[third..two_thirds].iter().enumerate() {
        journal_one(&mut a, &mut j, r);
        feed(&mut plain, r, Path::Views);
        if i % 16 == 0 {
            j.commit();
        }
    }
    let (encode, len) = encoder.join().unwrap();
    assert_ne!(
        book_figures(&a),
        before_copy,
        "the engine moved on while its copy was encoded"
    );
    println!(
        "snapshot of {len} B: the connector paused {pause:?} for the copy; encoding took {encode:?} on another thread"
    );
    assert!(
        pause < encode,
        "the copy ({pause:?}) is cheaper than the encoding ({encode:?})"
    );
    j.close(std::time::Duration::from_secs(5));
    let figures = book_figures(&a);
    assert_eq!(figures, book_figures(&plain), "journaling and snapshots change nothing");
    drop(a);

    // Killed: restored from that snapshot and the tail journaled while it was encoded.
    let (_j, replay) = open();
    let snapshot = replay.snapshot.as_ref().expect("the snapshot was written");
    assert!(!replay.records.is_empty(), "a tail follows the snapshot");
    let mut b = engine();
    b.load(cfg.fingerprint(), snapshot).unwrap();
    assert_eq!(book_figures(&b), before_copy, "the snapshot is the engine at its copy");
    let done = durable::replay(&mut b, &replay, "business_impact");
    assert_eq!(done.unreadable, 0);
    assert_eq!(book_figures(&b), figures, "snapshot + tail = the engine that went on");
    for r in &requests[two_thirds..] {
        feed(&mut b, r, Path::Views);
        feed(&mut plain, r, Path::Views);
    }
    b.flush();
    plain.flush();
    assert_eq!(book_figures(&b), book_figures(&plain));
    assert_eq!(tier_counts(&b, 0), tier_counts(&plain, 0));
}

/// A snapshot of format 1 (the positional tuple) still restores, to the same figures; the format is named in
/// the snapshot, so a format-2 reader takes both.
#[test]
fn a_snapshot_of_format_1_still_restores() {
    let work = Shop::generate(&shop_config()).unwrap();
    let raw: serde_yaml::Value = serde_yaml::from_str(IMPACT_CONFIG).unwrap();
    let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
    let engine = || Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "business_impact");
    let mut a = engine();
    for r in work.trace_requests(200).iter().take(60) {
        feed(&mut a, r, Path::Views);
    }
    let v1 = a.save_v1(cfg.fingerprint()).unwrap();
    assert!(v1[1..].starts_with(snapshot::FORMAT_V1.as_bytes()));
    let mut b = engine();
    b.load(cfg.fingerprint(), &v1).unwrap();
    assert_eq!(book_figures(&b), book_figures(&a));
    assert_eq!(b.pending(), a.pending());
    let v2 = a.save(cfg.fingerprint()).unwrap();
    assert!(v2[1..].starts_with(snapshot::FORMAT.as_bytes()));
    let mut c = engine();
    c.load(cfg.fingerprint(), &v2).unwrap();
    assert_eq!(book_figures(&c), book_figures(&a));
}
