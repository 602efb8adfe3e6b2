//! Engine-level tests of the `order_kpi` connector: watermark and lateness, stage transitions (out of order,
//! duplicates, cancellations), deadlines, scoring, explanations, arrival-order independence, bounded state,
//! and the connector task.

use super::*;
use crate::kpi::config::{DimensionConfig, KpiConfig};
use crate::kpi::engine::Outcome;
use bizpilot_business::attrs::kv_str;
use bizpilot_core::config::Duration;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode};
use prost::Message;

const S: u64 = 1_000_000_000;
const M: u64 = 60 * S;
const H: u64 = 3600 * S;
/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600 * S;

fn cfg(deadline: Duration) -> OrderKpiConfig {
    OrderKpiConfig {
        kpis: vec![KpiConfig {
            name: "fulfilled".into(),
            from: None,
            to: None,
            deadline,
        }],
        allowed_lateness: Duration::from_secs(120),
        evaluation_interval: Duration::from_secs(60),
        metrics_interval: Duration::from_secs(600),
        ..Default::default()
    }
}

fn engine(c: &OrderKpiConfig) -> Engine {
    let mut e = Engine::new(Compiled::new(c, |id| Err(format!("no {id}"))).unwrap());
    e.record_resolutions();
    e
}

fn ev(name: &str, order: &str, t: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: t,
        event_name: name.into(),
        attributes: vec![kv_str("order.id", order), kv_str("customer.tier", "gold")],
        ..Default::default()
    }
}

fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn feed(e: &mut Engine, records: Vec<LogRecord>) {
    e.ingest_logs(&logs(records));
    e.advance();
}

/// A span of `service` carrying `order` (if any), ending at `end`.
fn span(
    service: &str,
    name: &str,
    order: Option<&str>,
    end: u64,
    dur: u64,
    error: bool,
    id: u64,
) -> ExportTraceServiceRequest {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&id.to_be_bytes());
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: id.to_be_bytes().to_vec(),
                    name: name.into(),
                    start_time_unix_nano: end - dur,
                    end_time_unix_nano: end,
                    attributes: order.map(|o| vec![kv_str("demo.order.id", o)]).unwrap_or_default(),
                    status: error.then(|| Status {
                        code: StatusCode::Error as i32,
                        message: "gateway timeout".into(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn resolutions(e: &mut Engine) -> Vec<(String, Outcome)> {
    let mut v: Vec<(String, Outcome)> = e
        .take_resolutions()
        .into_iter()
        .map(|r| (r.order_id.to_string(), r.outcome))
        .collect();
    v.sort();
    v
}

fn attr<'a>(r: &'a LogRecord, k: &str) -> Option<&'a Value> {
    r.attributes
        .iter()
        .find(|a| a.key == k)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

#[test]
fn events_wait_for_the_watermark_and_are_applied_in_event_time_order() {
    let mut e = engine(&cfg(Duration::from_secs(3600)));
    // The whole lifecycle arrives backwards, in one request.
    feed(
        &mut e,
        vec![
            ev("order.delivered", "o1", T0 + 3 * M),
            ev("order.shipped", "o1", T0 + 2 * M),
            ev("order.paid", "o1", T0 + M),
            ev("order.placed", "o1", T0),
        ],
    );
    // Watermark = T0+3m − 2m: evaluated up to T0+1m; delivery still waits.
    assert_eq!(e.now(), Some(T0 + M));
    assert_eq!(e.watermark(), T0 + M);
    assert_eq!(e.pending(), 2);
    assert_eq!(e.open_orders(), 1);
    assert!(resolutions(&mut e).is_empty());
    // Newer data moves the watermark past the delivery.
    feed(&mut e, vec![ev("order.placed", "o2", T0 + 10 * M)]);
    assert_eq!(e.now(), Some(T0 + 8 * M));
    assert_eq!(resolutions(&mut e), vec![("o1".to_string(), Outcome::InTime)]);
    let s = e.stats();
    assert_eq!((s.events_out_of_order, s.events_late, s.events_duplicate), (0, 0, 0));
    assert_eq!(
        (e.open_orders(), e.pending()),
        (0, 1),
        "o1 closed, o2 waits for the watermark"
    );
}

#[test]
fn late_events_are_applied_at_once_and_counted() {
    let mut e = engine(&cfg(Duration::from_secs(3600)));
    feed(
        &mut e,
        vec![ev("order.placed", "o1", T0), ev("order.placed", "x", T0 + 30 * M)],
    );
    assert_eq!(e.now(), Some(T0 + 28 * M));
    // 25 minutes late: behind the last evaluation.
    feed(&mut e, vec![ev("order.delivered", "o1", T0 + 5 * M)]);
    assert_eq!(e.stats().events_late, 1);
    assert_eq!(resolutions(&mut e), vec![("o1".to_string(), Outcome::InTime)]);
    // A straggler of a closed order does not reopen it.
    feed(&mut e, vec![ev("order.shipped", "o1", T0 + 4 * M)]);
    assert_eq!(e.stats().events_after_close, 1);
    assert_eq!((e.open_orders(), e.pending()), (0, 1));
}

mod watermark;

#[test]
fn duplicates_out_of_order_stages_skips_and_cancellations() {
    let mut e = engine(&cfg(Duration::from_secs(3600)));
    feed(
        &mut e,
        vec![
            ev("order.placed", "a", T0),
            ev("order.placed", "a", T0),
            ev("order.shipped", "a", T0 + M),
            ev("order.placed", "b", T0),
            ev("order.cancelled", "b", T0 + M),
            ev("order.paid", "b", T0 + 2 * M),
            ev("order.placed", "c", T0 + 10 * M),
        ],
    );
    assert_eq!(e.stats().events_duplicate, 1);
    assert_eq!(e.stats().events_after_close, 1, "b's paid after its cancellation");
    // `paid` arrives long after `shipped` (beyond the lateness): recorded, the order does not move back.
    feed(&mut e, vec![ev("order.paid", "a", T0 + 30 * S)]);
    assert_eq!(e.stats().events_out_of_order, 1);
    feed(
        &mut e,
        vec![
            ev("order.delivered", "a", T0 + 20 * M),
            ev("order.placed", "z", T0 + 40 * M),
        ],
    );
    assert_eq!(
        resolutions(&mut e),
        vec![
            ("a".to_string(), Outcome::InTime),
            ("b".to_string(), Outcome::Cancelled)
        ]
    );
    let book = e.book();
    let b = book.lock().unwrap();
    assert_eq!((b.kpis[0].in_time, b.kpis[0].breached, b.kpis[0].cancelled), (1, 0, 1));
}

#[test]
fn deadline_exactly_met_is_in_time_and_a_missed_one_breaches_at_the_next_evaluation() {
    let mut e = engine(&cfg(Duration::from_secs(3600)));
    feed(
        &mut e,
        vec![
            ev("order.placed", "on-time", T0),
            ev("order.placed", "late", T0),
            ev("order.delivered", "on-time", T0 + H),
        ],
    );
    feed(&mut e, vec![ev("order.placed", "tick", T0 + H + 4 * M)]);
    let r = e.take_resolutions();
    let late = r.iter().find(|r| &*r.order_id == "late").unwrap();
    assert_eq!(late.outcome, Outcome::Breached);
    assert_eq!(late.time, T0 + H + M, "the first evaluation after the deadline");
    assert_eq!(late.deadline, Some(T0 + H));
    assert_eq!(
        r.iter().find(|r| &*r.order_id == "on-time").unwrap().outcome,
        Outcome::InTime
    );
    // A breached order stays open (to learn its duration) until delivered, then counts once.
    assert_eq!(e.open_orders(), 1);
    feed(
        &mut e,
        vec![
            ev("order.delivered", "late", T0 + 2 * H),
            ev("order.placed", "t2", T0 + 3 * H),
        ],
    );
    assert!(e.take_resolutions().iter().all(|r| &*r.order_id != "late"));
    let book = e.book();
    // "tick" breached too by then: 1 in time, 2 breached.
    assert_eq!(book.lock().unwrap().kpis[0].compliance, Some(1.0 / 3.0));
}

/// Something to feed at a given event time.
enum Due {
    Log(LogRecord),
    Trace(ExportTraceServiceRequest),
}

/// Feeds `due` in event-time order, one batch per minute of event time.
fn feed_due(e: &mut Engine, due: std::collections::BTreeMap<u64, Vec<Due>>) {
    let mut batch_logs = Vec::new();
    let mut minute = None;
    for (t, items) in due {
        if minute.is_some_and(|m| m != t / M) && !batch_logs.is_empty() {
            feed(e, std::mem::take(&mut batch_logs));
        }
        minute = Some(t / M);
        for it in items {
            match it {
                Due::Log(l) => batch_logs.push(l),
                Due::Trace(tr) => {
                    e.ingest_traces(&tr);
                    e.advance();
                }
            }
        }
    }
    feed(e, batch_logs);
}

/// Healthy orders ship in 10–40 min; orders whose ShipOrder span failed ship after 3 h. Deadline 2 h. Returns
/// the time of the last event fed.
fn shipping_scenario(e: &mut Engine, orders: u64, start: u64, degraded_every: u64) -> u64 {
    let mut due: std::collections::BTreeMap<u64, Vec<Due>> = Default::default();
    let mut t = start;
    for i in 0..orders {
        let id = format!("o{i:05}-{start}");
        let degraded = degraded_every > 0 && i % degraded_every == 0;
        let ship = if degraded {
            3 * H + (i % 7) * M
        } else {
            10 * M + (i % 30) * M
        };
        let mut at = |when: u64, d: Due| due.entry(when).or_default().push(d);
        at(t, Due::Log(ev("order.placed", &id, t)));
        at(t + S, Due::Log(ev("order.paid", &id, t + S)));
        at(
            t + S,
            Due::Trace(span(
                "payment",
                "Charge",
                Some(&id),
                t + S,
                50_000_000,
                false,
                i * 4 + start,
            )),
        );
        at(
            t + 2 * S,
            Due::Trace(span(
                "shipping",
                "ShipOrder",
                Some(&id),
                t + 2 * S,
                20_000_000,
                degraded,
                i * 4 + 1 + start,
            )),
        );
        at(t + S + ship, Due::Log(ev("order.shipped", &id, t + S + ship)));
        at(
            t + S + ship + 10 * M,
            Due::Log(ev("order.delivered", &id, t + S + ship + 10 * M)),
        );
        t += 2 * M;
    }
    let last = due.keys().next_back().copied().unwrap_or(start);
    feed_due(e, due);
    last
}

#[test]
fn predictions_are_scored_and_explained() {
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.prediction.min_samples = 10.0;
    c.prediction.half_life = Duration::default();
    let mut e = engine(&c);
    // Learning period, then the same mix: degraded orders breach, healthy ones do not.
    let t = shipping_scenario(&mut e, 200, T0, 4);
    let _ = e.take_logs();
    let _ = e.take_resolutions();
    let t = shipping_scenario(&mut e, 100, t + H, 4);
    feed(&mut e, vec![ev("order.placed", "end", t + 6 * H)]);
    let r = e.take_resolutions();
    let breached: Vec<_> = r.iter().filter(|r| r.outcome == Outcome::Breached).collect();
    assert_eq!(breached.len(), 25);
    assert!(
        breached.iter().all(|r| r.flagged_at.is_some()),
        "every breach flagged: {breached:#?}"
    );
    assert!(
        breached
            .iter()
            .all(|r| r.deadline.unwrap() - r.flagged_at.unwrap() >= H),
        "flagged at least an hour ahead"
    );
    assert!(breached.iter().all(|r| r.flag_service.as_deref() == Some("shipping")));
    assert!(
        r.iter()
            .filter(|r| r.outcome == Outcome::InTime)
            .all(|r| r.flagged_at.is_none())
    );
    let logs = e.take_logs();
    assert_eq!(logs.len(), 25);
    let l = &logs[0];
    assert_eq!(l.event_name, "kpi.at_risk");
    assert_eq!(
        attr(l, "kpi.cause"),
        Some(&Value::StringValue("shipping errors".into()))
    );
    assert_eq!(attr(l, "kpi.stage"), Some(&Value::StringValue("paid".into())));
    assert_eq!(l.trace_id.len(), 16, "an example trace of the cause");
    let book = e.book();
    let b = book.lock().unwrap();
    let k = &b.kpis[0];
    // Both periods are scored: 50 + 25 breaches, all flagged (the first ones once the model had learned).
    assert!(k.scores[0] >= 60, "{:?}", k.scores);
    assert_eq!(k.scores[1], 0, "no false alarm: {:?}", k.scores);
    assert_eq!(k.precision, Some(1.0));
}

#[test]
fn the_api_lists_at_risk_orders_with_explanations() {
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.prediction.min_samples = 10.0;
    let mut e = engine(&c);
    let t = shipping_scenario(&mut e, 120, T0, 4);
    // Two new orders with failed shipping spans, not yet shipped.
    for (i, id) in ["n1", "n2"].iter().enumerate() {
        feed(
            &mut e,
            vec![ev("order.placed", id, t + i as u64 * S), ev("order.paid", id, t + S)],
        );
        e.ingest_traces(&span(
            "shipping",
            "ShipOrder",
            Some(id),
            t + 2 * S,
            20_000_000,
            true,
            90_000 + i as u64,
        ));
    }
    // The events go on; the spans have been silent longer than `idle_timeout`: they hold the watermark no more.
    let later = std::time::Instant::now() + c.idle_timeout.get();
    e.ingest_logs_at(&logs(vec![ev("order.placed", "tick", t + 10 * M)]), later);
    e.advance_at(later);
    let api = api::KpiApi::new("order_kpi".into(), e.book());
    let r = bizpilot_core::ApiHandler::handle(&api, "kpi/fulfilled/at-risk", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let orders = r.body["orders"].as_array().unwrap();
    let ids: Vec<&str> = orders.iter().map(|o| o["order_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"n1") && ids.contains(&"n2"), "{ids:?}");
    let n1 = orders.iter().find(|o| o["order_id"] == "n1").unwrap();
    assert_eq!(n1["explanation"]["stage"], "paid");
    assert_eq!(n1["explanation"]["services"][0]["service"], "shipping");
    assert_eq!(n1["explanation"]["services"][0]["errors"], 1);
    assert_eq!(n1["cause"]["label"], "shipping errors");
    let probs: Vec<f64> = orders.iter().map(|o| o["probability"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "highest probability first");
    // Every at-risk order carries a recommended action; one with failed shipping spans is told to fix them.
    for o in orders {
        assert!(
            o["action"].as_str().is_some_and(|a| !a.trim().is_empty()),
            "no action: {o}"
        );
    }
    assert!(
        n1["action"].as_str().unwrap().starts_with("fix shipping errors; "),
        "{}",
        n1["action"]
    );
    assert!(
        r.body["summary"]["headline"]
            .as_str()
            .unwrap()
            .starts_with("shipping errors is behind")
    );
}

/// When shipping stops, the stage `paid` slows down for everybody; its action names the orders to expedite: those
/// that would miss their deadline at the current pace, highest order value first (orders without a stated value
/// last), and the at-risk list carries each order's value.
#[test]
fn a_slowed_stage_names_the_orders_to_expedite_highest_value_first() {
    let mut c = cfg(Duration::from_secs(8 * 3600));
    // Low enough for the stopped stage's oldest orders to be listed at risk within the test's hours.
    c.prediction.threshold = 0.3;
    let mut e = engine(&c);
    let value = |i: u64| (!i.is_multiple_of(5)).then(|| format!("USD {}.{:02}", 10 + (i * 37) % 190, i % 100));
    let placed = |i: u64, t: u64| {
        let mut r = ev("order.placed", &format!("o{i}"), t);
        if let Some(v) = value(i) {
            r.attributes.push(kv_str("order.amount", v));
        }
        r
    };
    // Six hours of normal flow (an order every 2 minutes: paid after 1 min, shipped 20 min later, delivered 1 h
    // after that), then shipping stops: orders are still placed and paid, none leaves `paid`.
    let stop = T0 + 6 * H;
    let mut i = 0;
    let mut t = T0;
    while t < T0 + 11 * H {
        let mut batch = vec![placed(i, t), ev("order.paid", &format!("o{i}"), t + M)];
        if t + 21 * M < stop {
            batch.push(ev("order.shipped", &format!("o{i}"), t + 21 * M));
            batch.push(ev("order.delivered", &format!("o{i}"), t + 81 * M));
        }
        feed(&mut e, batch);
        i += 1;
        t += 2 * M;
    }
    let book = e.book();
    let book = book.lock().unwrap();
    let k = &book.kpis[0];
    let paid = k.stages.iter().find(|s| s.stage == "paid").expect("stage paid");
    let action = paid
        .action
        .as_ref()
        .expect("the stopped stage is slowed and has an action");
    assert!(action.behind > 10, "{action:?}");
    assert_eq!(action.expedite.len(), 10);
    assert_eq!(action.expedite_first.len(), 10);
    // Highest value first among the orders that are behind.
    let values: Vec<i128> = action
        .expedite
        .iter()
        .map(|x| x.value.expect("valued orders first").nanos())
        .collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    // They are the most valuable of the stage's orders that can still make it but would not at this pace.
    for x in &action.expedite {
        assert!(x.leave_by > book.as_of.unwrap());
        let n: u64 = x.order_id[1..].parse().unwrap();
        assert_eq!(
            x.value.map(|m| m.to_string()),
            value(n).map(|v| bizpilot_core::Money::parse(&v, None).unwrap().to_string())
        );
    }
    // The at-risk list carries the order value, exactly as the event stated it.
    let valued = k
        .at_risk
        .iter()
        .find(|a| a.value.is_some())
        .expect("a valued order at risk");
    let n: u64 = valued.order_id[1..].parse().unwrap();
    assert_eq!(
        valued.value.unwrap().to_string(),
        bizpilot_core::Money::parse(&value(n).unwrap(), None)
            .unwrap()
            .to_string()
    );
    assert!(
        k.at_risk.iter().any(|a| a.value.is_none()),
        "orders without a stated value have none"
    );
}

#[test]
fn dimensions_and_the_cardinality_limit() {
    let mut c = cfg(Duration::from_secs(3600));
    c.dimensions = vec![DimensionConfig::Attribute("region".into())];
    c.max_series = 2;
    let mut e = engine(&c);
    let with_region = |n: &str, o: &str, t: u64, region: &str| {
        let mut r = ev(n, o, t);
        r.attributes.push(kv_str("region", region));
        r
    };
    let mut recs = Vec::new();
    for (i, region) in ["eu", "us", "apac", "eu"].iter().enumerate() {
        let o = format!("o{i}");
        recs.push(with_region("order.placed", &o, T0, region));
        recs.push(with_region("order.delivered", &o, T0 + M, region));
    }
    recs.push(ev("order.placed", "tick", T0 + 20 * M));
    feed(&mut e, recs);
    let m = e.take_metrics().or_else(|| {
        e.finish();
        e.take_metrics()
    });
    let m = m.unwrap();
    let resolved = m.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "kpi.orders.resolved")
        .unwrap();
    let Some(Data::Sum(sum)) = &resolved.data else { panic!() };
    let mut seen: Vec<(String, i64)> = sum
        .data_points
        .iter()
        .filter(|p| {
            p.attributes.iter().any(|a| {
                a.key == "outcome"
                    && a.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&Value::StringValue("in_time".into()))
            })
        })
        .map(|p| {
            let label = p
                .attributes
                .iter()
                .find(|a| a.key == "region" || a.key == "otel.metric.overflow")
                .map(|a| format!("{}={:?}", a.key, a.value.as_ref().and_then(|v| v.value.clone())))
                .unwrap();
            let Some(number_data_point::Value::AsInt(n)) = p.value else {
                panic!()
            };
            (label, n)
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().any(|(l, n)| l.contains("eu") && *n == 2), "{seen:?}");
    assert!(seen.iter().any(|(l, n)| l.contains("overflow") && *n == 1), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Shopgen: arrival-order independence.

fn small_shop(seed: u64) -> bizpilot_shopgen::ShopConfig {
    use bizpilot_shopgen::config::{DurationRange, PaymentOutage, SlowShipping};
    let mut cfg = bizpilot_shopgen::ShopConfig {
        seed,
        duration: Duration::from_secs(4 * 3600),
        tail: Duration::from_secs(4 * 3600),
        orders_per_sec: 0.1,
        customers: 5000,
        ..Default::default()
    };
    let f = &mut cfg.fulfilment;
    f.deadline = Duration::from_secs(2 * 3600);
    f.ship_delay = DurationRange::secs(5 * 60, 40 * 60);
    f.delivery_delay = DurationRange::secs(20 * 60, 60 * 60);
    f.abandoned_cancel_after = Duration::from_secs(600);
    let inj = &mut cfg.injections;
    inj.payment_outages = vec![PaymentOutage {
        start: Duration::from_secs(3600),
        end: Duration::from_secs(3600 + 600),
        failure_probability: 0.9,
        ..Default::default()
    }];
    inj.retries.probability = 0.8;
    inj.retries.max_attempts = 2;
    inj.retries.delay = DurationRange::secs(30 * 60, 80 * 60);
    inj.slow_shipping = Some(SlowShipping {
        start: Duration::from_secs(2 * 3600),
        end: None,
        ship_latency: Duration::from_secs(4),
        extra_delay: DurationRange::secs(50 * 60, 100 * 60),
    });
    inj.duplicates.probability = 0.01;
    inj.out_of_order.probability = 0.05;
    inj.events_after_spans.probability = 0.2;
    cfg
}

fn small_kpi_config() -> OrderKpiConfig {
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.age_buckets = vec![Duration::from_secs(1800), Duration::from_secs(3600)];
    c
}

enum Req {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
}

/// The workload as requests, one per signal per second of arrival time.
fn requests(shop: &bizpilot_shopgen::ShopConfig) -> Vec<Req> {
    let mut out = Vec::new();
    let mut tb = bizpilot_shopgen::TraceBatcher::new(512);
    let mut lb = bizpilot_shopgen::LogBatcher::new(512);
    let (mut enc, mut lr) = (Vec::new(), Vec::new());
    let mut window = None;
    let flush = |tb: &mut bizpilot_shopgen::TraceBatcher,
                 lb: &mut bizpilot_shopgen::LogBatcher,
                 enc: &mut Vec<Vec<u8>>,
                 lr: &mut Vec<ExportLogsServiceRequest>,
                 out: &mut Vec<Req>| {
        enc.extend(tb.finish());
        lr.extend(lb.finish());
        out.extend(
            enc.drain(..)
                .map(|b| Req::Traces(ExportTraceServiceRequest::decode(b.as_slice()).unwrap())),
        );
        out.extend(lr.drain(..).map(Req::Logs));
    };
    for em in bizpilot_shopgen::Shop::stream(shop).unwrap() {
        let w = em.arrival_unix_nano / S;
        if window.is_some_and(|x| x != w) {
            flush(&mut tb, &mut lb, &mut enc, &mut lr, &mut out);
        }
        window = Some(w);
        if let Some(t) = em.as_trace() {
            tb.push(t, &mut enc);
        } else if let Some(ev) = em.as_event() {
            lb.push(ev, &mut lr);
        }
    }
    flush(&mut tb, &mut lb, &mut enc, &mut lr, &mut out);
    out
}

/// Resolutions of a run: (order, outcome, first flag).
type Outcomes = Vec<(String, Outcome, Option<u64>)>;

fn run(reqs: &[&Req]) -> (Vec<LogRecord>, ExportMetricsServiceRequest, Outcomes) {
    let (l, m, r, _) = run_stats(reqs);
    (l, m, r)
}

/// Feeds one request, advances, keeps the records and drops the metrics.
fn step(e: &mut Engine, r: &Req, logs: &mut Vec<LogRecord>) {
    match r {
        Req::Traces(t) => e.ingest_traces(t),
        Req::Logs(l) => e.ingest_logs(l),
    }
    e.advance();
    logs.extend(e.take_logs());
    let _ = e.take_metrics();
}

fn run_stats(reqs: &[&Req]) -> (Vec<LogRecord>, ExportMetricsServiceRequest, Outcomes, engine::Stats) {
    let mut e = engine(&small_kpi_config());
    let mut logs = Vec::new();
    for r in reqs {
        step(&mut e, r, &mut logs);
    }
    e.finish();
    logs.extend(e.take_logs());
    let mut res: Vec<_> = e
        .take_resolutions()
        .into_iter()
        .map(|r| (r.order_id.to_string(), r.outcome, r.flagged_at))
        .collect();
    res.sort();
    (logs, e.take_metrics().unwrap(), res, e.stats().clone())
}

/// A run interrupted half way — its state snapshotted, the engine dropped, a new engine restored from the snapshot —
/// gives exactly what the uninterrupted run gives: every record, the final metrics, every resolution, every counter.
#[test]
fn a_restored_snapshot_continues_exactly_as_the_uninterrupted_run() {
    let reqs = requests(&small_shop(5));
    let all: Vec<&Req> = reqs.iter().collect();
    let (want_logs, want_metrics, want_res, want_stats) = run_stats(&all);

    let (first, second) = all.split_at(all.len() / 2);
    let mut logs = Vec::new();
    let mut a = engine(&small_kpi_config());
    for r in first {
        step(&mut a, r, &mut logs);
    }
    assert!(a.open_orders() > 0, "the snapshot holds open orders");
    let mut res = a.take_resolutions();
    let bytes = a.snapshot().unwrap();
    drop(a);

    let mut b = engine(&small_kpi_config());
    b.restore(&bytes).unwrap();
    for r in second {
        step(&mut b, r, &mut logs);
    }
    b.finish();
    logs.extend(b.take_logs());
    res.extend(b.take_resolutions());
    let mut res: Vec<_> = res
        .into_iter()
        .map(|r| (r.order_id.to_string(), r.outcome, r.flagged_at))
        .collect();
    res.sort();
    assert_eq!(res.len(), want_res.len());
    assert_eq!(res, want_res);
    assert_eq!(logs.len(), want_logs.len());
    assert_eq!(logs, want_logs);
    assert_eq!(b.take_metrics().unwrap(), want_metrics);
    assert_eq!(*b.stats(), want_stats);

    // Another configuration, another format or garbage: refused, the engine unchanged.
    let mut other = small_kpi_config();
    other.allowed_lateness = Duration::from_secs(300);
    let mut c = engine(&other);
    assert!(matches!(c.restore(&bytes), Err(engine::SnapshotError::Config)));
    assert!(matches!(c.restore(b"not cbor"), Err(engine::SnapshotError::Decode(_))));
    assert_eq!(c.open_orders(), 0);
}

#[test]
fn results_do_not_depend_on_arrival_order_within_the_lateness() {
    let reqs = requests(&small_shop(3));
    let in_order: Vec<&Req> = reqs.iter().collect();
    // Shuffle requests inside blocks spanning at most 30 s of event time (the data is at most ~40 s late,
    // the lateness allowed is 2 min): a deterministic permutation.
    let first_time = |r: &Req| -> u64 {
        match r {
            Req::Traces(t) => t
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.end_time_unix_nano)
                .min(),
            Req::Logs(l) => l
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .map(|s| s.time_unix_nano)
                .min(),
        }
        .unwrap_or(0)
    };
    let mut blocks: Vec<Vec<&Req>> = Vec::new();
    let mut block_start = 0u64;
    for r in &reqs {
        let t = first_time(r);
        match blocks.last_mut() {
            Some(b) if t < block_start + 30 * S && b.len() < 20 => b.push(r),
            _ => {
                block_start = t;
                blocks.push(vec![r]);
            }
        }
    }
    let mut shuffled: Vec<&Req> = Vec::with_capacity(reqs.len());
    let mut x: u64 = 42;
    for mut b in blocks {
        for i in (1..b.len()).rev() {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            b.swap(i, (x >> 33) as usize % (i + 1));
        }
        shuffled.extend(b);
    }
    let (a0, a1, a2, sa) = run_stats(&in_order);
    let (b0, b1, b2, sb) = run_stats(&shuffled);
    let (a, b) = ((a0, a1, a2), (b0, b1, b2));
    assert_eq!((sa.events_late, sa.spans_late), (0, 0), "{sa:?}");
    assert_eq!((sb.events_late, sb.spans_late), (0, 0), "{sb:?}");
    assert!(!a.0.is_empty(), "the workload produces at-risk orders");
    assert!(a.2.iter().any(|r| r.1 == Outcome::Breached));
    if let Some(i) = (0..a.2.len().min(b.2.len())).find(|&i| a.2[i] != b.2[i]) {
        panic!("resolutions differ at {i}: {:?} vs {:?}", a.2[i], b.2[i]);
    }
    assert_eq!(a.2.len(), b.2.len());
    assert_eq!(a.0, b.0, "same at-risk records, in the same order");
    assert_eq!(a.1, b.1, "same final metrics");
    // And a second run is identical.
    assert_eq!(run(&in_order).1, a.1);
}

#[test]
fn state_stays_bounded_with_many_short_orders() {
    let mut c = cfg(Duration::from_secs(600));
    c.evaluation_interval = Duration::from_secs(10);
    c.metrics_interval = Duration::from_secs(60);
    c.allowed_lateness = Duration::from_secs(5);
    c.max_order_age = Duration::from_secs(900);
    c.closed_memory = Duration::from_secs(60);
    let mut e = engine(&c);
    let _ = e.take_resolutions();
    let mut resolutions_off = Engine::new(Compiled::new(&c, |_| Err(String::new())).unwrap());
    let model = e.model_bytes();
    let n: u64 = 60_000;
    let step = 20_000_000; // 50 orders/s
    let mut peak = (0, 0, 0);
    let mut batch = Vec::new();
    let mut due: std::collections::BTreeMap<u64, Vec<LogRecord>> = Default::default();
    for i in 0..n {
        let t = T0 + i * step;
        let o = format!("o{i}");
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        due.entry(t).or_default().push(ev("order.placed", &o, t));
        let paid = t + (5 + h % 30) * S;
        due.entry(paid).or_default().push(ev("order.paid", &o, paid));
        if h % 50 != 0 {
            let delivered = paid + (60 + h % 600) * S;
            due.entry(delivered)
                .or_default()
                .push(ev("order.delivered", &o, delivered));
        }
        if i % 50 == 49 {
            let ready: Vec<u64> = due.range(..=t).map(|(k, _)| *k).collect();
            for k in ready {
                batch.extend(due.remove(&k).unwrap_or_default());
            }
            let req = logs(std::mem::take(&mut batch));
            resolutions_off.ingest_logs(&req);
            resolutions_off.advance();
            let _ = resolutions_off.take_logs();
            let _ = resolutions_off.take_metrics();
            let (closed, orphans) = resolutions_off.remembered();
            peak = (
                peak.0.max(resolutions_off.open_orders()),
                peak.1.max(resolutions_off.pending()),
                peak.2.max(closed + orphans),
            );
        }
    }
    let rest: Vec<LogRecord> = due.into_values().flatten().collect();
    resolutions_off.ingest_logs(&logs(rest));
    resolutions_off.finish();
    // 50 orders/s living up to ~11 min (the 2 % that never deliver leave after max_order_age = 15 min):
    // about 50 × 660 + 1 × 900 open at most, whatever the number of orders streamed.
    assert!(peak.0 < 40_000, "open orders {}", peak.0);
    assert!(peak.1 < 5_000, "pending items {}", peak.1);
    assert!(peak.2 < 10_000, "closed ids remembered {}", peak.2);
    assert_eq!(resolutions_off.model_bytes(), model, "sketches do not grow");
    assert!(resolutions_off.stats().orders_expired > 0);
    let book = resolutions_off.book();
    let b = book.lock().unwrap();
    assert_eq!(b.kpis[0].in_time + b.kpis[0].breached, n, "every order resolved once");
}

// ---------------------------------------------------------------------------------------------------------------
// The connector task.

#[tokio::test]
async fn the_connector_emits_metrics_and_at_risk_logs_and_drains_on_close() {
    use bizpilot_core::{
        Batch, ConnectorContext, ConnectorFactory, CreateContext, Extensions, Output, ReceiverOutput, Signal, Target,
    };
    use std::collections::{BTreeSet, HashMap};
    use tokio::sync::mpsc;
    let id: bizpilot_core::ComponentId = "order_kpi".parse().unwrap();
    let ext = Extensions::default();
    let ctx = CreateContext {
        id: &id,
        pipeline: None,
        signals: BTreeSet::from([Signal::Logs, Signal::Traces]),
        output_signals: BTreeSet::from([Signal::Metrics, Signal::Logs]),
        extensions: &ext,
    };
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.prediction.min_samples = 10.0;
    let conn = OrderKpiConnectorFactory.create(c, &ctx).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (mtx, mut mrx) = mpsc::channel(1024);
    let (ltx, mut lrx) = mpsc::channel(1024);
    let out = |name: &str, sender| {
        Output::new(
            vec![Target {
                name: name.into(),
                sender,
            }],
            Vec::new(),
        )
    };
    let mut running = conn
        .start(ConnectorContext {
            id: id.clone(),
            input: rx,
            output: ReceiverOutput::new(HashMap::from([
                (Signal::Metrics, out("m", mtx)),
                (Signal::Logs, out("l", ltx)),
            ])),
            abort: tokio_util::sync::CancellationToken::new(),
        })
        .unwrap();
    // The shipping scenario's data, through the channel in event-time order (a batch per minute).
    let mut due: std::collections::BTreeMap<u64, Vec<Payload>> = Default::default();
    let mut t = T0;
    for i in 0..80u64 {
        let o = format!("o{i}");
        let degraded = i % 4 == 0;
        let ship = if degraded { 3 * H } else { 15 * M };
        let mut at = |when: u64, p: Payload| due.entry(when / M).or_default().push(p);
        let log = |n: &str, w: u64| Payload::Logs(Logs::from_message(logs(vec![ev(n, &o, w)])));
        at(t, log("order.placed", t));
        at(t + S, log("order.paid", t + S));
        let tr = span("shipping", "ShipOrder", Some(&o), t + 2 * S, 20_000_000, degraded, i);
        at(t + 2 * S, Payload::Traces(bizpilot_core::Traces::from_message(tr)));
        at(t + S + ship, log("order.shipped", t + S + ship));
        at(t + S + ship + 10 * M, log("order.delivered", t + S + ship + 10 * M));
        t += 2 * M;
    }
    for (_, payloads) in due {
        for p in payloads {
            tx.send(Batch::new(p)).await.unwrap();
        }
    }
    drop(tx);
    running.join().await.unwrap();
    let mut metrics = Vec::new();
    while let Ok(b) = mrx.try_recv() {
        metrics.push(b);
    }
    let mut at_risk = 0;
    while let Ok(mut b) = lrx.try_recv() {
        let Payload::Logs(l) = &mut b.payload else { panic!() };
        at_risk += l.message().unwrap().resource_logs[0].scope_logs[0].log_records.len();
    }
    assert!(!metrics.is_empty(), "metrics emitted, the last one at the end of input");
    assert!(at_risk > 0, "at-risk records emitted");
    let Payload::Metrics(m) = &mut metrics.last_mut().unwrap().payload else {
        panic!()
    };
    let names: Vec<String> = m.message().unwrap().resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.clone())
        .collect();
    for n in [
        "kpi.orders.resolved",
        "kpi.compliance",
        "kpi.predictions",
        "kpi.prediction.lead_time",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

#[test]
fn the_factory_refuses_wrong_signals() {
    use bizpilot_core::{ConnectorFactory, CreateContext, Extensions, Signal};
    use std::collections::BTreeSet;
    let id: bizpilot_core::ComponentId = "order_kpi".parse().unwrap();
    let ext = Extensions::default();
    let ctx = CreateContext {
        id: &id,
        pipeline: None,
        signals: BTreeSet::from([Signal::Metrics]),
        output_signals: BTreeSet::from([Signal::Logs]),
        extensions: &ext,
    };
    assert!(
        OrderKpiConnectorFactory
            .create(OrderKpiConfig::default(), &ctx)
            .is_err()
    );
    let ctx = CreateContext {
        signals: BTreeSet::from([Signal::Logs]),
        output_signals: BTreeSet::from([Signal::Traces]),
        ..ctx
    };
    assert!(
        OrderKpiConnectorFactory
            .create(OrderKpiConfig::default(), &ctx)
            .is_err()
    );
    let c = OrderKpiConfig {
        dimensions: vec![DimensionConfig::Full {
            name: "tier".into(),
            attribute: None,
            lookup: Some(config::LookupDimension {
                extension: "lookup/customers".parse().unwrap(),
                key_attribute: "customer.id".into(),
                column: None,
            }),
            default: None,
        }],
        ..Default::default()
    };
    let ctx = CreateContext {
        signals: BTreeSet::from([Signal::Logs]),
        output_signals: BTreeSet::from([Signal::Metrics]),
        ..ctx
    };
    let Err(e) = OrderKpiConnectorFactory.create(c, &ctx) else {
        panic!()
    };
    assert!(e.to_string().contains("dimensions[0].lookup.extension"), "{e}");
}
