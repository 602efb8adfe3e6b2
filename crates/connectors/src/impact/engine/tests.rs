use super::*;
use crate::impact::api::ImpactApi;
use crate::impact::config::BusinessImpactConfig;
use bizpilot_business::attrs::Value;
use bizpilot_business::attrs::{kv_i64, kv_str};
use bizpilot_core::component::parse_config;
use bizpilot_core::{ApiHandler, Currency};
use bizpilot_shopgen::truth::{OperationOutcome, revenue_at_risk};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode};

const S: u64 = 1_000_000_000;

/// How the tests feed the engine: decoded requests, or their encoding through views.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Decoded,
    Views,
}

thread_local! {
    static PATH: std::cell::Cell<Path> = const { std::cell::Cell::new(Path::Decoded) };
}

/// Runs a test body once per path ([`Engine::ingest`] and [`Engine::ingest_traces`] on bytes).
fn both_paths(body: fn()) {
    for p in [Path::Decoded, Path::Views] {
        PATH.with(|c| c.set(p));
        body();
    }
}

fn feed(e: &mut Engine, req: &ExportTraceServiceRequest) {
    match PATH.with(|c| c.get()) {
        Path::Decoded => e.ingest(req),
        Path::Views => {
            let mut t =
                bizpilot_core::Traces::from_bytes(prost::Message::encode_to_vec(req).into()).expect("valid request");
            e.ingest_traces(&mut t);
        }
    }
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone)]
struct Sp {
    trace: u128,
    span: u64,
    parent: u64,
    name: &'static str,
    service: &'static str,
    end: u64,
    duration: u64,
    error: bool,
    message: String,
    attrs: Vec<KeyValue>,
}

fn op_span(trace: u128, end: u64, customer: &str, ok: bool, value: &str) -> Sp {
    Sp {
        trace,
        span: trace as u64 | 1,
        parent: 0,
        name: "PlaceOrder",
        service: "checkout",
        end,
        duration: S / 10,
        error: !ok,
        message: if ok { String::new() } else { "payment declined".into() },
        attrs: vec![
            kv_str("customer", customer),
            kv_str("value", value),
            kv_str("tier", "gold"),
        ],
    }
}

fn request(spans: &[Sp]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: spans
            .iter()
            .map(|s| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", s.service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: s.trace.to_be_bytes().to_vec(),
                        span_id: s.span.to_be_bytes().to_vec(),
                        parent_span_id: if s.parent == 0 {
                            Vec::new()
                        } else {
                            s.parent.to_be_bytes().to_vec()
                        },
                        name: s.name.into(),
                        start_time_unix_nano: s.end - s.duration,
                        end_time_unix_nano: s.end,
                        attributes: s.attrs.clone(),
                        status: Some(Status {
                            code: if s.error {
                                StatusCode::Error as i32
                            } else {
                                StatusCode::Unset as i32
                            },
                            message: s.message.clone(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

const BASE: &str = r#"
operations:
  - name: checkout
    span_name: PlaceOrder
value: {attribute: value, default_currency: USD, from_state: false}
business_key: customer
tier_attribute: tier
dimensions: [{name: customer.tier, attribute: tier, default: unknown}]
incident: {detection: threshold, window: 30s, evaluation_interval: 10s, open_threshold: 0.5, close_threshold: 0.2, min_operations: 5}
"#;

fn config(extra: &str) -> BusinessImpactConfig {
    let mut base: serde_yaml::Value = serde_yaml::from_str(BASE).unwrap();
    let extra: serde_yaml::Value = serde_yaml::from_str(extra).unwrap();
    if let (Some(b), Some(e)) = (base.as_mapping_mut(), extra.as_mapping()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    parse_config(&base).unwrap()
}

fn engine(extra: &str) -> Engine {
    Engine::new(Compiled::new(&config(extra), None, None, None).unwrap(), "test")
}

fn usd(s: &str) -> Money {
    Money::parse_amount(s, Currency::USD).unwrap()
}

/// Random outcomes, fed in an arrival order shuffled within `lateness`, with duplicates: the figures equal
/// shopgen's oracle exactly.
#[test]
fn episodes_match_the_ground_truth_definition_in_any_arrival_order() {
    both_paths(episodes_match_the_ground_truth_definition_in_any_arrival_order_on);
}

fn episodes_match_the_ground_truth_definition_in_any_arrival_order_on() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let window = 300 * S;
        let lateness = 120 * S;
        let mut spans = Vec::new();
        let mut outcomes = Vec::new();
        let mut t = 1_000 * S;
        for i in 0..3000u64 {
            t += 1 + rng.below(2 * S);
            let key = format!("c{}", rng.below(40));
            let ok = rng.below(100) < 55;
            // Mostly one value per key, sometimes another cart.
            let cents = 1000 + (rng.below(40) * 37) + if rng.below(10) == 0 { rng.below(5000) } else { 0 };
            let value = Money::from_minor(cents as i64, Currency::USD);
            spans.push(op_span(
                u128::from(i + 1) << 64 | u128::from(seed),
                t,
                &key,
                ok,
                &value.amount_string(),
            ));
            outcomes.push(OperationOutcome {
                key,
                time_unix_nano: t,
                success: ok,
                value,
                span: None,
            });
        }
        let truth = revenue_at_risk(&outcomes, window, Currency::USD);
        // Arrival: event time + up to `lateness`; 5 % arrive twice.
        let mut arrivals: Vec<(u64, Sp)> = Vec::new();
        for s in &spans {
            arrivals.push((s.end + rng.below(lateness), s.clone()));
            if rng.below(20) == 0 {
                arrivals.push((s.end + rng.below(lateness), s.clone()));
            }
        }
        arrivals.sort_by_key(|a| a.0);
        let mut e = engine("{dedup_window: 300s, allowed_lateness: 120s}");
        for chunk in arrivals.chunks(1 + (seed as usize % 7)) {
            let batch: Vec<Sp> = chunk.iter().map(|(_, s)| s.clone()).collect();
            feed(&mut e, &request(&batch));
        }
        e.flush();
        let st = &e.ops[0];
        assert_eq!(e.stats().late.get(), 0, "seed {seed}");
        assert_eq!(
            e.stats().duplicates.get() as usize,
            arrivals.len() - spans.len(),
            "seed {seed}"
        );
        assert_eq!(st.operations, 3000);
        assert_eq!(st.revenue.get(Currency::USD), truth.revenue, "seed {seed}: revenue");
        assert_eq!(st.at_risk.get(Currency::USD), truth.at_risk, "seed {seed}: at risk");
        assert_eq!(
            st.recovered.get(Currency::USD),
            truth.recovered,
            "seed {seed}: recovered"
        );
        // Lost: episodes already ended are counted; the rest are still active at the end of the data.
        let active: Money = st
            .episodes
            .values()
            .filter_map(|ep| ep.value)
            .fold(Money::zero(Currency::USD), |a, v| a.checked_add(v).unwrap());
        assert_eq!(
            st.lost.get(Currency::USD).checked_add(active).unwrap(),
            truth.lost,
            "seed {seed}: lost"
        );
        // The series carry the same totals.
        let series_at_risk = e.series.iter().fold(Money::zero(Currency::USD), |a, s| {
            a.checked_add(s.at_risk.get(Currency::USD)).unwrap()
        });
        assert_eq!(series_at_risk, truth.at_risk);
    }
}

#[test]
fn late_spans_are_dropped_and_duplicates_forgotten_in_bounded_time() {
    both_paths(late_spans_are_dropped_and_duplicates_forgotten_in_bounded_time_on);
}

fn late_spans_are_dropped_and_duplicates_forgotten_in_bounded_time_on() {
    let mut e = engine("{dedup_window: 100s, allowed_lateness: 50s}");
    feed(&mut e, &request(&[op_span(1, 1000 * S, "a", true, "10")]));
    feed(&mut e, &request(&[op_span(2, 1100 * S, "b", true, "10")]));
    assert_eq!(e.watermark(), 1050 * S);
    assert_eq!(e.ops[0].operations, 1, "the first is final, the second waits");
    // Older than the watermark: late.
    feed(&mut e, &request(&[op_span(3, 1040 * S, "c", true, "10")]));
    assert_eq!(e.stats().late.get(), 1);
    // Within the lateness: counted where it belongs.
    feed(&mut e, &request(&[op_span(4, 1060 * S, "d", true, "10")]));
    assert_eq!(e.stats().late.get(), 1);
    // The same span again: a duplicate, also after it was finalized.
    feed(&mut e, &request(&[op_span(1, 1000 * S, "a", true, "10")]));
    assert_eq!(e.stats().duplicates.get(), 1);
    // Span ids are forgotten once `dedup_window` behind the watermark.
    assert_eq!(e.remembered_span_ids(), 3);
    feed(&mut e, &request(&[op_span(5, 1500 * S, "e", true, "10")]));
    assert_eq!(e.watermark(), 1450 * S);
    assert_eq!(e.remembered_span_ids(), 1, "only the pending one");
    e.flush();
    assert_eq!(e.ops[0].operations, 4);
    assert_eq!(e.ops[0].revenue.get(Currency::USD), usd("40"));
    assert_eq!(e.pending(), 0);
}

#[test]
fn idle_input_finalizes_and_max_pending_forces() {
    both_paths(idle_input_finalizes_and_max_pending_forces_on);
}

fn idle_input_finalizes_and_max_pending_forces_on() {
    let mut e = engine("{allowed_lateness: 1h}");
    feed(&mut e, &request(&[op_span(1, 1000 * S, "a", true, "10")]));
    assert_eq!(e.pending(), 1);
    e.idle(std::time::Duration::from_secs(1), std::time::Duration::from_secs(2));
    assert_eq!(e.pending(), 1);
    e.idle(std::time::Duration::from_secs(3), std::time::Duration::from_secs(2));
    assert_eq!(e.pending(), 0);
    assert_eq!(e.watermark(), 1000 * S + 1, "just past the newest span");
    e.idle(std::time::Duration::from_secs(60), std::time::Duration::from_secs(2));
    assert_eq!(e.watermark(), 1000 * S + 1, "not following the wall clock");
    feed(&mut e, &request(&[op_span(2, 1000 * S + 2, "b", true, "10")]));
    assert_eq!(e.stats().late.get(), 0, "the next span is not late");

    let mut e = engine("{allowed_lateness: 1h, max_pending_spans: 10}");
    let spans: Vec<Sp> = (0..25u64)
        .map(|i| op_span(u128::from(i + 1), (1000 + i) * S, "a", true, "1"))
        .collect();
    feed(&mut e, &request(&spans));
    assert_eq!(e.pending(), 10);
    assert_eq!(e.stats().forced.get(), 15);
}

#[test]
fn failure_conditions_and_matchers() {
    both_paths(failure_conditions_and_matchers_on);
}

fn failure_conditions_and_matchers_on() {
    let mut e = engine(
        r#"
operations:
  - name: api
    service: frontend
    span_name_regex: "^POST "
    attributes: {http.request.method: POST}
    failure: {on_status_error: false, when: ["http.response.status_code >= 500"]}
"#,
    );
    let mk = |i: u128, name: &'static str, service: &'static str, status: i64, error: bool| Sp {
        trace: i,
        span: i as u64,
        parent: 0,
        name,
        service,
        end: 1000 * S + i as u64,
        duration: S,
        error,
        message: String::new(),
        attrs: vec![
            kv_str("http.request.method", "POST"),
            kv_i64("http.response.status_code", status),
            kv_str("customer", "c"),
        ],
    };
    feed(
        &mut e,
        &request(&[
            mk(1, "POST /api/checkout", "frontend", 500, false),
            mk(2, "POST /api/checkout", "frontend", 200, true),
            mk(3, "POST /api/cart", "frontend", 503, false),
            mk(4, "GET /api/cart", "frontend", 500, false),
            mk(5, "POST /api/cart", "cart", 500, false),
        ]),
    );
    e.flush();
    let st = &e.ops[0];
    assert_eq!(
        (st.operations, st.failed),
        (3, 2),
        "ERROR status ignored, 5xx is a failure"
    );
}

fn outage(e: &mut Engine, customers: u64, from: u64, to: u64, fail_every: u64) -> Vec<Sp> {
    // One operation per second per customer round robin; in [from, to) `fail_every`-th... all but every nth fail.
    let mut all = Vec::new();
    let mut trace = 10_000u128;
    for t in 0..400u64 {
        let time = 1000 * S + t * S;
        let c = format!("cust-{:03}", t % customers);
        let failing = (from..to).contains(&t) && t % fail_every != 0;
        trace += 1;
        let value = format!("{}.50", 10 + t % customers);
        all.push(op_span(trace, time, &c, !failing, &value));
    }
    for chunk in all.chunks(20) {
        feed(e, &request(chunk));
    }
    e.flush();
    all
}

#[test]
fn incidents_open_close_and_list_each_affected_customer_once() {
    both_paths(incidents_open_close_and_list_each_affected_customer_once_on);
}

fn incidents_open_close_and_list_each_affected_customer_once_on() {
    let mut e = engine("{allowed_lateness: 5s, dedup_window: 1h}");
    e.set_now(42);
    // Failures from 1100 s to 1200 s (every 10th succeeds), 7 customers.
    outage(&mut e, 7, 100, 200, 10);
    let book = e.book();
    let b = book.lock().unwrap();
    let incidents: Vec<&Incident> = b.incidents().collect();
    assert_eq!(incidents.len(), 1);
    let inc = incidents[0];
    assert_eq!(inc.state, IncidentState::Closed);
    assert_eq!(inc.start, 1100 * S, "dated back to the first bad interval");
    assert_eq!(inc.end, Some(1200 * S));
    assert_eq!(inc.failed_operations, 90);
    assert_eq!(inc.affected_customers, 7);
    assert_eq!(
        inc.top_causes(3),
        vec![("checkout".into(), "payment declined".into(), 90)]
    );
    let mut records: Vec<&ImpactRecord> = b.records().collect();
    assert_eq!(records.len(), 7);
    records.sort_by_key(|r| std::cmp::Reverse(r.cart_value.unwrap().nanos()));
    assert_eq!(records[0].customer.as_deref(), Some("cust-006"));
    assert_eq!(records[0].cart_value, Some(usd("16.50")));
    assert!(
        records.iter().all(|r| r.failed_attempts >= 12 && r.recovered.is_some()),
        "each retried, then succeeded"
    );
    let attempts: u32 = records.iter().map(|r| r.failed_attempts).sum();
    assert_eq!(attempts, 90);
    drop(b);
    // Logs: one impact record per customer, one open, updates, one closed.
    let logs = e.take_logs();
    // Created at the first failure (before the incident was detected), logged again when it named them.
    let logged: std::collections::BTreeSet<&str> = logs
        .iter()
        .filter(|l| l.event_name == "business.impact")
        .filter_map(|l| attrs::get_str(&l.attributes, "business.customer.id"))
        .collect();
    assert_eq!(logged.len(), 7);
    let states: Vec<String> = logs
        .iter()
        .filter(|l| l.event_name == "business.incident")
        .filter_map(|l| attrs::get_str(&l.attributes, "business.incident.state").map(str::to_string))
        .collect();
    assert_eq!(states.first().map(String::as_str), Some("open"));
    assert_eq!(states.last().map(String::as_str), Some("closed"));
    assert!(states.iter().filter(|s| *s == "update").count() >= 9, "{states:?}");
    assert!(logs.iter().all(|l| l.observed_time_unix_nano == 42));
    // The API lists them by value with a total, and the incident newest first.
    let api = ImpactApi::new("business_impact".into(), e.book(), 5);
    let q = |s: &[(&str, &str)]| {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let r = api
        .handle(
            "impact",
            &q(&[("operation", "checkout"), ("limit", "3"), ("offset", "1")]),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"], 7);
    let customers = r.body["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 3);
    assert_eq!(customers[0]["customer"], "cust-005");
    assert_eq!(
        customers[0]["cart_value"],
        serde_json::json!({"currency": "USD", "amount": "15.50"})
    );
    assert_eq!(customers[0]["recovered"], true);
    assert_eq!(r.body["summary"][0]["failed"], 90);
    let r = api.handle("incidents", &[]).unwrap();
    assert_eq!(r.body["incidents"][0]["state"], "closed");
    assert_eq!(r.body["incidents"][0]["start"], "1970-01-01T00:18:20Z");
    assert_eq!(r.body["incidents"][0]["affected_customers"], 7);
    assert!(api.handle("impact", &q(&[("limit", "x")])).unwrap().status == 400);
    assert!(api.handle("impact", &q(&[("operation", "nope")])).unwrap().status == 404);
    assert!(api.handle("impact", &q(&[("connector", "other")])).is_none());
    assert!(api.handle("nothing", &[]).is_none());
}

#[test]
fn redacted_customers_are_hashed_like_the_redaction_processor() {
    both_paths(redacted_customers_are_hashed_like_the_redaction_processor_on);
}

fn redacted_customers_are_hashed_like_the_redaction_processor_on() {
    let h = KeyedHasher::new(b"secret").unwrap();
    let mut e = Engine::new(
        Compiled::new(&config("{allowed_lateness: 5s}"), None, None, Some(h.clone())).unwrap(),
        "t",
    );
    outage(&mut e, 3, 100, 150, 10);
    let b = e.book();
    let b = b.lock().unwrap();
    let shown: HashSet<String> = b.records().filter_map(|r| r.customer.clone()).collect();
    let expected: HashSet<String> = (0..3).map(|i| h.hash_hex(format!("cust-{i:03}").as_bytes())).collect();
    assert_eq!(shown, expected);
    drop(b);
    let logs = e.take_logs();
    assert!(
        logs.iter()
            .flat_map(|l| &l.attributes)
            .filter_map(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()))
            .all(|v| !matches!(v, Value::StringValue(s) if s.starts_with("cust-")))
    );
}

#[test]
fn a_hundred_thousand_dimension_values_stay_bounded() {
    both_paths(a_hundred_thousand_dimension_values_stay_bounded_on);
}

fn a_hundred_thousand_dimension_values_stay_bounded_on() {
    let mut e = engine(
        r#"{allowed_lateness: 1s, max_series: 50, dedup_window: 10s, dimensions: [{name: region, attribute: region}]}"#,
    );
    let mut batch = Vec::new();
    for i in 0..100_000u64 {
        let mut s = op_span(
            u128::from(i + 1),
            1000 * S + i * (S / 100),
            &format!("c{}", i % 1000),
            i % 10 != 0,
            "1",
        );
        s.attrs.push(kv_str("region", format!("r{i}")));
        batch.push(s);
        if batch.len() == 1000 {
            feed(&mut e, &request(&batch));
            batch.clear();
        }
    }
    e.flush();
    assert_eq!(e.series.len(), 50);
    assert_eq!(e.series.iter().count(), 51, "plus one overflow series");
    assert_eq!(e.series.overflowed(), &[99_950]);
    assert_eq!(e.stats().overflowed_points.get(), 99_950);
    assert!(
        e.remembered_span_ids() <= 1_200,
        "ids expire: {}",
        e.remembered_span_ids()
    );
    assert!(e.active_keys() <= 1000);
    let m = e.metrics(1, 2);
    let metrics = &m.resource_metrics[0].scope_metrics[0].metrics;
    let ops = metrics.iter().find(|m| m.name == "business.operations").unwrap();
    let Some(Data::Sum(s)) = &ops.data else { panic!() };
    assert!(s.data_points.len() <= 102, "{}", s.data_points.len());
    let overflow: u64 = s
        .data_points
        .iter()
        .filter(|p| attrs::contains(&p.attributes, "otel.metric.overflow"))
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => v as u64,
            _ => 0,
        })
        .sum();
    assert_eq!(overflow, 99_950);
    let counted = metrics
        .iter()
        .find(|m| m.name == "business.metric.overflowed_points")
        .unwrap();
    let Some(Data::Sum(s)) = &counted.data else { panic!() };
    assert!(matches!(
        s.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(99_950))
    ));
    assert!(
        s.data_points
            .iter()
            .all(|p| p.start_time_unix_nano == 1 && p.time_unix_nano == 2)
    );
}

#[test]
fn goals_report_attainment_and_projection() {
    both_paths(goals_report_attainment_and_projection_on);
}

fn goals_report_attainment_and_projection_on() {
    let g = GoalState {
        name: "sales".into(),
        op: 0,
        target: usd("1000"),
        period: 3600 * S,
        period_start: Some(0),
        achieved: usd("250"),
    };
    assert_eq!(
        g.attainment(900 * S),
        (0.25, 1.0),
        "a quarter in a quarter of the hour: on track"
    );
    assert_eq!(g.attainment(1800 * S), (0.25, 0.5));
    assert_eq!(g.attainment(7200 * S), (0.25, 0.25), "elapsed is capped at the period");
    assert_eq!(g.attainment(0), (0.25, 0.25));

    let mut e = engine(
        r#"{allowed_lateness: 1s, goals: [{name: sales_per_hour, operation: checkout, target: "USD 100", period: 1h}]}"#,
    );
    // 3600 s = 1 h: period [3600 s, 7200 s); 30 successes of 2.00 by 3600+900 s.
    let spans: Vec<Sp> = (0..30u64)
        .map(|i| op_span(u128::from(i + 1), 3600 * S + i * 30 * S, "c", true, "2.00"))
        .collect();
    feed(&mut e, &request(&spans));
    e.flush();
    let g = &e.goals[0];
    assert_eq!(g.achieved, usd("60"));
    let (so_far, projected) = g.attainment(e.watermark());
    assert!((so_far - 0.6).abs() < 1e-12);
    assert!((projected - 0.6 * 3600.0 / 870.0).abs() < 1e-6, "{projected}");
    // A new period starts from zero.
    feed(&mut e, &request(&[op_span(99, 7300 * S, "c", true, "5")]));
    e.flush();
    assert_eq!(e.goals[0].achieved, usd("5"));
    assert_eq!(e.goals[0].period_start, Some(7200 * S));
}

#[test]
fn affected_customers_per_window_exact_then_estimated() {
    both_paths(affected_customers_per_window_exact_then_estimated_on);
}

fn affected_customers_per_window_exact_then_estimated_on() {
    let mut e = engine("{allowed_lateness: 1s, dedup_window: 100s, distinct_exact_limit: 100}");
    // Window [1000, 1100): 50 customers; [1100, 1200): 5000 customers.
    let mut spans = Vec::new();
    for i in 0..50u64 {
        spans.push(op_span(
            u128::from(i + 1),
            1000 * S + i * S,
            &format!("a{i}"),
            false,
            "1",
        ));
    }
    for i in 0..5000u64 {
        spans.push(op_span(
            u128::from(i + 100),
            1100 * S + i * (S / 100),
            &format!("b{i}"),
            false,
            "1",
        ));
    }
    feed(&mut e, &request(&spans));
    e.flush();
    let b = e.book();
    let b = b.lock().unwrap();
    let sum = &b.operations[0];
    assert_eq!(sum.windows.len(), 1);
    assert_eq!(
        (sum.windows[0].start, sum.windows[0].customers, sum.windows[0].exact),
        (1000 * S, 50, true)
    );
    let cur = sum.current_window.unwrap();
    assert!(!cur.exact);
    let err = (cur.customers as f64 - 5000.0).abs() / 5000.0;
    assert!(
        err < 3.0 * crate::impact::sketch::relative_standard_error(),
        "{}",
        cur.customers
    );
    drop(b);
    let ((c, exact), (p, pexact)) = e.affected_windows(0);
    assert_eq!((p, pexact), (50, true));
    assert!(!exact && c > 4800);
}

#[test]
fn a_cart_without_a_value_is_priced_from_its_line_items() {
    both_paths(a_cart_without_a_value_is_priced_from_its_line_items_on);
}

fn a_cart_without_a_value_is_priced_from_its_line_items_on() {
    use bizpilot_business::{BusinessEvent, BusinessState, StateConfig, TableFormat};
    let state = Arc::new(BusinessState::new(
        "business_state",
        StateConfig {
            max_orders: 100,
            max_customers: 100,
            ttl: None,
            ..StateConfig::default()
        },
    ));
    // The order's event has line items but neither an amount nor prices for every item.
    let mut ev = BusinessEvent::new("cart.updated", 1);
    ev.order_id = Some("o-1".into());
    ev.items = vec![
        LineItem {
            sku: "SKU-1".into(),
            quantity: 3,
            unit_price: None,
        },
        LineItem {
            sku: "SKU-2".into(),
            quantity: 1,
            unit_price: Some(usd("0.10")),
        },
    ];
    state.apply(&ev);
    let path = std::env::temp_dir().join(format!("bizpilot-impact-prices-{}.csv", std::process::id()));
    std::fs::write(&path, "sku,price\nSKU-1,19.99\nSKU-2,99\n").unwrap();
    let prices = Arc::new(Lookup::open("lookup/prices", &path, Some(TableFormat::Csv), "sku").unwrap());
    let _ = std::fs::remove_file(&path);
    let cfg = config(
        r#"{allowed_lateness: 1s, value: {attribute: absent, default_currency: USD}, order_attribute: order,
            prices: {extension: lookup/prices, column: price},
            incident: {detection: threshold, window: 10s, evaluation_interval: 10s, open_threshold: 0.5, close_threshold: 0.2, min_operations: 1}}"#,
    );
    let mut e = Engine::new(Compiled::new(&cfg, Some(state), Some(prices), None).unwrap(), "t");
    let mut s = op_span(1, 1000 * S, "c1", false, "ignored");
    s.attrs.push(kv_str("order", "o-1"));
    feed(&mut e, &request(&[s]));
    feed(&mut e, &request(&[op_span(2, 1030 * S, "c2", true, "1")]));
    e.flush();
    // 3 × 19.99 (priced by the table) + 1 × 0.10 (its own price).
    assert_eq!(e.ops[0].at_risk.get(Currency::USD), usd("60.07"));
    let b = e.book();
    let b = b.lock().unwrap();
    let r = b.records().next().expect("an impact record");
    assert_eq!(r.cart_value, Some(usd("60.07")));
    let items: Vec<(&str, i64, Option<Money>)> = r
        .items
        .iter()
        .map(|i| (i.sku.as_str(), i.quantity, i.unit_price))
        .collect();
    assert_eq!(
        items,
        vec![("SKU-1", 3, Some(usd("19.99"))), ("SKU-2", 1, Some(usd("0.10")))]
    );
}

/// Baseline detection (the default): `n` customers per second, one checkout each, failing when `fail(t)`.
fn baseline_engine(extra: &str) -> Engine {
    let mut cfg = config(extra);
    cfg.incident = crate::impact::config::IncidentConfig::default();
    Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "test")
}

fn traffic(e: &mut Engine, seconds: std::ops::Range<u64>, per_second: u64, fail: impl Fn(u64, u64) -> bool) {
    for t in seconds {
        let spans: Vec<Sp> = (0..per_second)
            .map(|k| {
                let time = 1000 * S + t * S + k * (S / per_second);
                op_span(
                    u128::from(t) << 32 | u128::from(k),
                    time,
                    &format!("c{t}-{k}"),
                    !fail(t, k),
                    "10.00",
                )
            })
            .collect();
        feed(e, &request(&spans));
    }
}

#[test]
fn a_short_total_outage_opens_an_incident_naming_every_failed_customer() {
    let mut e = baseline_engine("{allowed_lateness: 2s}");
    // 10 min healthy at 5/s with one failure a minute, then 10 s of total outage, then 2 min healthy.
    traffic(&mut e, 0..600, 5, |t, k| k == 0 && t % 60 == 7);
    traffic(&mut e, 600..610, 5, |_, _| true);
    traffic(&mut e, 610..730, 5, |_, _| false);
    e.flush();
    let b = e.book();
    let b = b.lock().unwrap();
    let incidents: Vec<&Incident> = b.incidents().collect();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let inc = incidents[0];
    assert_eq!(inc.kind, IncidentKind::Failures);
    assert_eq!(inc.start, 1600 * S, "dated to the first bad interval");
    assert_eq!(inc.end, Some(1610 * S));
    assert!(
        inc.detected <= 1610 * S,
        "detected at the first boundary after 10 failures: {}",
        inc.detected
    );
    assert_eq!(inc.closed_reason, Some(CloseReason::Recovered));
    assert_eq!(inc.affected_customers, 50);
    assert!(
        inc.baseline_rate < 0.01,
        "learned near the 0.3 % of the healthy traffic: {}",
        inc.baseline_rate
    );
    // Every failed customer is listed: the 10 healthy-time failures without an incident, the 50 in it.
    let records: Vec<&ImpactRecord> = b.records().collect();
    assert_eq!(records.len(), 60);
    assert_eq!(records.iter().filter(|r| r.incident_id == inc.id).count(), 50);
    assert!(
        records
            .iter()
            .filter(|r| r.incident_seq == 0)
            .all(|r| r.time < 1600 * S)
    );
}

#[test]
fn retries_of_one_customer_and_ordinary_noise_open_nothing() {
    let mut e = baseline_engine("{allowed_lateness: 2s}");
    // 1 h at 20/s with 0.5 % failures spread evenly, and one customer failing 40 times in a minute.
    traffic(&mut e, 0..3600, 20, |t, k| (t * 20 + k) % 200 == 13);
    let spans: Vec<Sp> = (0..40u64)
        .map(|i| {
            op_span(
                9_000_000 + u128::from(i),
                4600 * S + i * S + 1,
                "stubborn",
                false,
                "99.00",
            )
        })
        .collect();
    feed(&mut e, &request(&spans));
    traffic(&mut e, 3660..3700, 20, |t, k| (t * 20 + k) % 200 == 13);
    e.flush();
    let b = e.book();
    let b = b.lock().unwrap();
    assert_eq!(b.incidents().count(), 0, "{:#?}", b.incidents().collect::<Vec<_>>());
    let stubborn: Vec<&ImpactRecord> = b.records().filter(|r| &*r.key == "stubborn").collect();
    assert_eq!(stubborn.len(), 1);
    assert_eq!(stubborn[0].failed_attempts, 40);
}

#[test]
fn provisional_figures_cover_what_the_watermark_holds_back() {
    let mut e = baseline_engine("{allowed_lateness: 30s}");
    traffic(&mut e, 0..60, 2, |t, k| t >= 50 && k == 0);
    // Newest at 1059.5 s: the watermark 1029.5 s holds back 1029.5 s … 1059.5 s (61 operations, 10 failures).
    let p = e.provisional(0).unwrap();
    assert_eq!((p.operations, p.failed, p.affected_customers()), (61, 10, 10));
    assert_eq!(p.revenue.get(Currency::USD), usd("510.00"));
    assert_eq!(p.at_risk.get(Currency::USD), usd("100.00"));
    assert_eq!(
        e.ops[0].operations + p.operations,
        120,
        "final + provisional = everything"
    );
    let s = e.book().lock().unwrap().operations[0].provisional.clone();
    assert_eq!((s.operations, s.failed, s.affected_customers), (61, 10, 10));
    // Separate gauges in the metrics; the final counters count only what is final.
    let m = e.metrics(1, 2);
    let metrics = &m.resource_metrics[0].scope_metrics[0].metrics;
    let gauge_sum = |name: &str| -> f64 {
        metrics
            .iter()
            .filter(|x| x.name == name)
            .flat_map(|x| match &x.data {
                Some(Data::Gauge(g)) => g.data_points.clone(),
                _ => Vec::new(),
            })
            .map(|p| match p.value {
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => i as f64,
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d)) => d,
                None => 0.0,
            })
            .sum()
    };
    assert_eq!(gauge_sum("business.operations.provisional"), 61.0);
    assert_eq!(gauge_sum("business.affected_customers.provisional"), 10.0);
    assert_eq!(gauge_sum("business.revenue.at_risk.provisional"), 100.0);
    assert_eq!(gauge_sum("business.revenue.provisional"), 510.0);
    e.flush();
    let p = e.provisional(0).unwrap();
    assert_eq!((p.operations, p.failed, p.affected_customers()), (0, 0, 0));
    assert!(p.revenue.iter().all(|m| m.nanos() == 0) && p.at_risk.iter().all(|m| m.nanos() == 0));
    assert_eq!(
        e.ops[0].at_risk.get(Currency::USD),
        usd("100.00"),
        "final figures as before"
    );
}

#[test]
fn open_incidents_close_when_the_input_goes_idle() {
    let mut e = baseline_engine("{allowed_lateness: 5s}");
    traffic(&mut e, 0..300, 5, |_, _| false);
    // Traffic stops in the middle of an outage.
    traffic(&mut e, 300..330, 5, |_, _| true);
    assert!(e.any_open());
    e.idle_close(std::time::Duration::from_secs(5), std::time::Duration::from_secs(60));
    assert!(e.any_open(), "not idle long enough");
    e.idle_close(std::time::Duration::from_secs(60), std::time::Duration::from_secs(60));
    assert!(!e.any_open());
    let b = e.book();
    let b = b.lock().unwrap();
    let inc = b.incidents().next().unwrap();
    assert_eq!(inc.closed_reason, Some(CloseReason::Idle));
    assert_eq!(inc.start, 1300 * S);
    assert_eq!(inc.end, Some(1330 * S), "the end of its last bad interval");
    assert_eq!(inc.affected_customers, 150, "every failure, the last seconds included");
}

#[test]
fn a_latency_degradation_opens_a_latency_incident() {
    let mut e = baseline_engine("{allowed_lateness: 2s}");
    let span = |t: u64, k: u64, slow: bool| {
        let end = 1000 * S + t * S + k * (S / 10);
        let mut s = op_span(
            u128::from(t) << 32 | u128::from(k),
            end,
            &format!("c{t}-{k}"),
            true,
            "5.00",
        );
        s.duration = if slow {
            2 * S
        } else {
            150_000_000 + (k % 3) * 20_000_000
        };
        s
    };
    for t in 0..400u64 {
        let slow = (300..360).contains(&t);
        let spans: Vec<Sp> = (0..10).map(|k| span(t, k, slow)).collect();
        feed(&mut e, &request(&spans));
    }
    e.flush();
    let b = e.book();
    let b = b.lock().unwrap();
    let incidents: Vec<&Incident> = b.incidents().collect();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0].kind, IncidentKind::Latency);
    assert_eq!(incidents[0].start, 1300 * S);
    assert_eq!(incidents[0].end, Some(1360 * S));
    assert_eq!(b.records().count(), 0, "nobody failed");
}

#[test]
fn a_failed_operation_lists_the_order_a_business_event_of_its_trace_names() {
    both_paths(a_failed_operation_lists_the_order_a_business_event_of_its_trace_names_on);
}

fn a_failed_operation_lists_the_order_a_business_event_of_its_trace_names_on() {
    use bizpilot_business::{BusinessEvent, BusinessState, StateConfig, trace_key};
    let state = Arc::new(BusinessState::new("business_state", StateConfig::default()));
    // A business event published with the failed checkout's `traceparent` names its order and cart.
    let trace: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
    let mut ev = BusinessEvent::new("payment.failed", 1);
    ev.order_id = Some("o-9".into());
    ev.amount = Some(usd("25.50"));
    ev.items = vec![LineItem {
        sku: "SKU-9".into(),
        quantity: 2,
        unit_price: Some(usd("12.75")),
    }];
    state.apply_traced(&mut ev, &trace_key(&trace.to_be_bytes()).unwrap());
    // The failed span itself names no order and no value (as the demo's failed PlaceOrder).
    let cfg = config(
        r#"{allowed_lateness: 1s, value: {attribute: absent, default_currency: USD, from_state: false},
            incident: {window: 10s, evaluation_interval: 10s, open_threshold: 0.5, close_threshold: 0.2, min_operations: 1}}"#,
    );
    let mut e = Engine::new(Compiled::new(&cfg, Some(state), None, None).unwrap(), "t");
    feed(&mut e, &request(&[op_span(trace, 1000 * S, "c1", false, "")]));
    // Another trace without any event: its record has no order.
    feed(&mut e, &request(&[op_span(7, 1001 * S, "c2", false, "")]));
    feed(&mut e, &request(&[op_span(8, 1030 * S, "c3", true, "")]));
    e.flush();
    let b = e.book();
    let b = b.lock().unwrap();
    let by_customer: HashMap<&str, &ImpactRecord> =
        b.records().map(|r| (r.customer.as_deref().unwrap_or(""), r)).collect();
    let r = by_customer["c1"];
    assert_eq!(r.order_id.as_deref(), Some("o-9"));
    assert_eq!(r.cart_value, Some(usd("25.50")));
    let items: Vec<(&str, i64, Option<Money>)> = r
        .items
        .iter()
        .map(|i| (i.sku.as_str(), i.quantity, i.unit_price))
        .collect();
    assert_eq!(items, vec![("SKU-9", 2, Some(usd("12.75")))]);
    assert_eq!(r.item_count, Some(1));
    let other = by_customer["c2"];
    assert_eq!((other.order_id.as_deref(), other.cart_value), (None, None));
    assert!(other.items.is_empty());
}
