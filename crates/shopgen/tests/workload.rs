//! The workload against its ground truth, read back only through the emitted bytes.

use bizpilot_core::config::Duration;
use bizpilot_core::money::{Currency, Money};
use bizpilot_shopgen::config::{DurationRange, PaymentOutage, SlowShipping};
use bizpilot_shopgen::event::EventType;
use bizpilot_shopgen::spans::{hex, names};
use bizpilot_shopgen::truth::{Cause, OperationOutcome, revenue_at_risk};
use bizpilot_shopgen::{AttributePrefix, BusinessEvent, EmissionKind, MoneyAttributes, Shop, ShopConfig, Workload};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};

const MIN: u64 = 60_000_000_000;

/// A run with every injection on.
fn troubled() -> ShopConfig {
    let mut cfg = ShopConfig {
        seed: 7,
        orders_per_sec: 3.0,
        duration: Duration::from_secs(1800),
        customers: 2_000,
        ..Default::default()
    };
    let inj = &mut cfg.injections;
    inj.payment_outages = vec![
        PaymentOutage {
            start: Duration::from_secs(300),
            end: Duration::from_secs(600),
            failure_probability: 0.9,
            ..Default::default()
        },
        PaymentOutage {
            start: Duration::from_secs(1200),
            end: Duration::from_secs(1260),
            failure_probability: 1.0,
            status_message: "card processor unavailable".into(),
            timeout: Duration::from_secs(2),
        },
    ];
    inj.retries.probability = 0.7;
    inj.retries.delay = DurationRange::secs(20, 600);
    inj.duplicates.probability = 0.02;
    inj.late.probability = 0.01;
    inj.out_of_order.probability = 0.05;
    inj.events_after_spans.probability = 0.3;
    inj.slow_shipping = Some(SlowShipping {
        start: Duration::from_secs(900),
        end: Some(Duration::from_secs(1500)),
        ..Default::default()
    });
    cfg
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn attr_str<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key)? {
        Value::StringValue(v) => Some(v),
        _ => None,
    }
}

/// A money attribute, double or string, as exact money (a double through its shortest representation).
fn attr_money(s: &Span, key: &str) -> Option<Money> {
    let text = match attr(s, key)? {
        Value::DoubleValue(d) => format!("{d}"),
        Value::StringValue(v) => v.clone(),
        _ => return None,
    };
    Some(Money::parse_amount(&text, Currency::USD).expect("exact decimal"))
}

fn is_error(s: &Span) -> bool {
    s.status.as_ref().is_some_and(|st| st.code == 2)
}

/// Every emitted span (duplicates included), decoded from the packed, encoded requests.
fn emitted_spans(w: &Workload) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for bytes in w.trace_requests_encoded(512) {
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("valid protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .expect("service.name");
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }
    out
}

/// Unique spans (by trace id, span id).
fn unique_spans(w: &Workload) -> Vec<(String, Span)> {
    let mut seen = HashSet::new();
    emitted_spans(w)
        .into_iter()
        .filter(|(_, s)| seen.insert((s.trace_id.clone(), s.span_id.clone())))
        .collect()
}

fn events(w: &Workload) -> Vec<BusinessEvent> {
    w.events().cloned().collect()
}

fn fingerprint(w: &Workload) -> (Vec<Vec<u8>>, Vec<(u64, String)>, String) {
    let traces = w.trace_requests_encoded(512);
    let evs = w
        .emissions
        .iter()
        .filter_map(|e| e.as_event().map(|ev| (e.arrival_unix_nano, ev.to_json())))
        .collect();
    (traces, evs, w.truth.to_json())
}

#[test]
fn same_seed_same_bytes_and_truth() {
    let cfg = troubled();
    let a = Shop::generate(&cfg).unwrap();
    let b = Shop::generate(&cfg).unwrap();
    assert!(a.truth.counts.spans > 10_000, "{:?}", a.truth.counts.spans);
    assert_eq!(fingerprint(&a), fingerprint(&b));
    let arrivals = |w: &Workload| w.emissions.iter().map(|e| e.arrival_unix_nano).collect::<Vec<_>>();
    assert_eq!(arrivals(&a), arrivals(&b));
    let c = Shop::generate(&ShopConfig { seed: 8, ..cfg.clone() }).unwrap();
    assert_ne!(fingerprint(&a).0, fingerprint(&c).0);
    // The stream without truth yields the same emissions; the truth alone is the same truth.
    let streamed: Vec<_> = Shop::stream(&cfg).unwrap().collect();
    assert!(streamed == a.emissions);
    assert_eq!(Shop::truth(&cfg).unwrap(), a.truth);
}

#[test]
fn arrival_order_and_injected_disorder() {
    let w = Shop::generate(&troubled()).unwrap();
    let mut last = 0;
    let (mut late, mut behind) = (0, 0);
    let mut max_event = 0;
    for e in &w.emissions {
        assert!(e.arrival_unix_nano >= last, "arrival order");
        assert!(e.arrival_unix_nano >= e.event_unix_nano(), "arrives after it happened");
        last = e.arrival_unix_nano;
        if e.arrival_unix_nano - e.event_unix_nano() > 5 * MIN {
            late += 1;
        }
        if e.event_unix_nano() < max_event {
            behind += 1;
        }
        max_event = max_event.max(e.event_unix_nano());
    }
    let c = &w.truth.counts;
    assert!(c.late_emissions > 0 && late > 0, "late data: {late}");
    assert!(behind > 100, "out-of-order data: {behind}");
    assert!(c.duplicate_trace_emissions > 0);
    assert_eq!(
        w.traces().filter(|t| t.duplicate).count() as u64,
        c.duplicate_trace_emissions
    );

    // Without injections: events arrive before their trace, nothing is late or duplicated.
    let w = Shop::generate(&ShopConfig::default()).unwrap();
    let c = &w.truth.counts;
    assert_eq!(
        (c.late_emissions, c.duplicate_trace_emissions, c.out_of_order_emissions),
        (0, 0, 0)
    );
    assert_eq!(c.failed_checkouts, 0);
    let placed_arrival: HashMap<&str, u64> = w
        .emissions
        .iter()
        .filter_map(|e| {
            let ev = e.as_event()?;
            (ev.event_type == EventType::OrderPlaced).then_some((ev.order_id.as_str(), e.arrival_unix_nano))
        })
        .collect();
    let mut checked = 0;
    for e in &w.emissions {
        let Some(t) = e.as_trace() else { continue };
        for (_, s) in t.decode_spans() {
            if s.name == names::PLACE_ORDER {
                let id = attr_str(&s, "demo.order.id").unwrap();
                assert!(
                    placed_arrival[id] < e.arrival_unix_nano,
                    "order.placed arrives before its spans"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
}

#[test]
fn events_after_spans_injection() {
    let mut cfg = ShopConfig::default();
    cfg.injections.events_after_spans.probability = 1.0;
    let w = Shop::generate(&cfg).unwrap();
    let mut trace_arrival: HashMap<String, u64> = HashMap::new();
    for e in &w.emissions {
        if let Some(t) = e.as_trace() {
            for (_, s) in t.decode_spans() {
                if s.name == names::PLACE_ORDER {
                    trace_arrival.insert(attr_str(&s, "demo.order.id").unwrap().to_string(), e.arrival_unix_nano);
                }
            }
        }
    }
    let mut n = 0;
    for e in &w.emissions {
        if let Some(ev) = e.as_event()
            && matches!(ev.event_type, EventType::OrderPlaced | EventType::OrderPaid)
        {
            assert!(e.arrival_unix_nano > trace_arrival[&ev.order_id]);
            n += 1;
        }
    }
    assert!(n > 100);
}

#[test]
fn counts_match_the_emitted_spans() {
    let w = Shop::generate(&troubled()).unwrap();
    let t = &w.truth;
    let all = emitted_spans(&w);
    let unique = unique_spans(&w);
    assert_eq!(all.len() as u64, t.counts.span_emissions);
    assert_eq!(unique.len() as u64, t.counts.spans);
    let failed_po = unique
        .iter()
        .filter(|(_, s)| s.name == names::PLACE_ORDER && is_error(s))
        .count() as u64;
    let ok_po = unique
        .iter()
        .filter(|(_, s)| s.name == names::PLACE_ORDER && !is_error(s))
        .count() as u64;
    let failed_charge = unique
        .iter()
        .filter(|(_, s)| s.name == names::CHARGE && is_error(s))
        .count() as u64;
    let failed_po_emitted = all
        .iter()
        .filter(|(_, s)| s.name == names::PLACE_ORDER && is_error(s))
        .count() as u64;
    let checkout = t.operation("checkout").unwrap();
    let payment = t.operation("payment").unwrap();
    assert!(checkout.failed > 50, "{}", checkout.failed);
    assert!(failed_po_emitted > failed_po, "some failed spans were delivered twice");
    assert_eq!(checkout.failed, failed_po);
    assert_eq!(checkout.successful, ok_po);
    assert_eq!(payment.failed, failed_charge);
    assert_eq!(t.counts.failed_checkouts, failed_po);
    assert_eq!(
        t.counts.error_spans,
        unique.iter().filter(|(_, s)| is_error(s)).count() as u64
    );
    for (name, c) in &t.counts.spans_by_name {
        let n = unique.iter().filter(|(_, s)| &s.name == name).count() as u64;
        assert_eq!(c.total, n, "{name}");
    }
    let by_tier_failed: u64 = checkout.by_tier.values().map(|c| c.failed).sum();
    assert_eq!(by_tier_failed, checkout.failed);

    // Failures only inside outage windows, with the configured status messages.
    for (_, s) in unique.iter().filter(|(_, s)| s.name == names::CHARGE && is_error(s)) {
        let msg = &s.status.as_ref().unwrap().message;
        assert!(
            msg == "payment gateway timeout" || msg == "card processor unavailable",
            "{msg}"
        );
    }
    let incidents = &t.impact.incidents;
    assert_eq!(incidents.len(), 2);
    assert_eq!(
        incidents.iter().map(|i| i.failed_checkouts).sum::<u64>(),
        checkout.failed
    );
    assert_eq!(
        incidents[1].failed_checkouts, incidents[1].checkout_attempts,
        "probability 1"
    );

    // Events.
    let evs = events(&w);
    let by_type = |ty: EventType| evs.iter().filter(|e| e.event_type == ty).count() as u64;
    assert_eq!(by_type(EventType::PaymentFailed), checkout.failed);
    assert_eq!(by_type(EventType::OrderPaid), checkout.successful);
    assert_eq!(by_type(EventType::OrderPlaced), t.counts.orders);
    for ty in EventType::ALL {
        assert_eq!(
            t.counts.events_by_type.get(ty.as_str()).copied().unwrap_or(0),
            by_type(ty),
            "{ty}"
        );
    }
}

#[test]
fn money_is_exact_and_consistent() {
    let w = Shop::generate(&troubled()).unwrap();
    let t = &w.truth;
    let usd = |s: &str| Money::parse_amount(s, Currency::USD).unwrap();
    let evs = events(&w);
    let mut value_of: HashMap<&str, Money> = HashMap::new();
    for e in &evs {
        // amount = Σ quantity × unit price + shipping, exactly.
        let sum = e
            .items
            .iter()
            .fold(e.shipping, |a, i| a.checked_add(i.total().unwrap()).unwrap());
        assert_eq!(sum, e.amount, "{}", e.to_json());
        assert!((1..=5).contains(&e.items.len()));
        value_of.insert(&e.order_id, e.amount);
    }
    // Revenue = Σ demo.order.amount of successful PlaceOrder spans = Σ order.paid amounts.
    let unique = unique_spans(&w);
    let mut from_spans = Money::zero(Currency::USD);
    let mut outcomes = Vec::new();
    for (_, s) in unique.iter().filter(|(_, s)| s.name == names::PLACE_ORDER) {
        let order = attr_str(s, "demo.order.id").unwrap();
        if is_error(s) {
            assert!(attr(s, "demo.order.amount").is_none(), "no amount on failure");
        } else {
            let amount = attr_money(s, "demo.order.amount").unwrap();
            assert_eq!(amount, value_of[order]);
            from_spans = from_spans.checked_add(amount).unwrap();
        }
        outcomes.push(OperationOutcome {
            key: attr_str(s, "user.id").unwrap().to_string(),
            time_unix_nano: s.end_time_unix_nano,
            success: !is_error(s),
            value: value_of[order],
            span: None,
        });
    }
    for (_, s) in unique.iter().filter(|(_, s)| s.name == names::CHARGE) {
        let order = attr_str(s, "demo.order.id").unwrap();
        assert_eq!(usd(attr_str(s, "demo.payment.amount").unwrap()), value_of[order]);
    }
    let checkout = t.operation("checkout").unwrap();
    assert_eq!(checkout.revenue, from_spans);
    let paid = evs
        .iter()
        .filter(|e| e.event_type == EventType::OrderPaid)
        .fold(Money::zero(Currency::USD), |a, e| a.checked_add(e.amount).unwrap());
    assert_eq!(checkout.revenue, paid);
    // The truth's episodes, recomputed from what was emitted.
    let r = revenue_at_risk(&outcomes, 3600 * 1_000_000_000, Currency::USD);
    assert_eq!(
        (r.revenue, r.at_risk, r.recovered, r.lost),
        (
            checkout.revenue,
            checkout.revenue_at_risk,
            checkout.recovered_revenue,
            checkout.lost_revenue
        )
    );
    assert_eq!(r.episodes, checkout.episodes);
    let ep_sum = checkout
        .episodes
        .iter()
        .fold(Money::zero(Currency::USD), |a, e| a.checked_add(e.value).unwrap());
    assert_eq!(ep_sum, checkout.revenue_at_risk);
    assert!(checkout.recovered_revenue.nanos() > 0, "retries recover some carts");
    assert!(checkout.lost_revenue.nanos() > 0, "and some are lost");
    assert_eq!(
        checkout
            .revenue_at_risk
            .checked_sub(checkout.recovered_revenue)
            .unwrap(),
        checkout.lost_revenue
    );
    // Fewer episodes than failures: retries of one cart are one cart at risk.
    assert!(checkout.episodes_total < checkout.failed);
    // Every serialized amount is an exact decimal string.
    let json: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
    let c = &json["impact"]["operations"][0];
    assert_eq!(c["revenue"].as_str().unwrap(), checkout.revenue.amount_string());
    assert_eq!(usd(c["revenue_at_risk"].as_str().unwrap()), checkout.revenue_at_risk);
}

#[test]
fn revenue_at_risk_hand_built() {
    let usd = |s: &str| Money::parse_amount(s, Currency::USD).unwrap();
    let w = 3600 * 1_000_000_000u64;
    let t = |min: u64| 1_000 * w + min * MIN;
    let o = |key: &str, min: u64, success: bool, v: &str| OperationOutcome {
        key: key.into(),
        time_unix_nano: t(min),
        success,
        value: usd(v),
        span: None,
    };
    let outcomes = vec![
        // A: fails three times (one cart at risk), succeeds at 50 min: recovered.
        o("A", 0, false, "100.10"),
        o("A", 10, false, "100.10"),
        o("A", 20, false, "100.10"),
        o("A", 50, true, "100.10"),
        // B: fails at 5, succeeds only at 70 (after its episode [5, 65)): lost; the success is revenue.
        o("B", 70, true, "19.99"),
        o("B", 5, false, "19.99"),
        // C: fails at 0, again at 61 (a new episode), recovers at 62.
        o("C", 0, false, "0.01"),
        o("C", 61, false, "0.02"),
        o("C", 62, true, "0.02"),
        // D: only successes.
        o("D", 1, true, "5.00"),
        // A again after recovery: a new episode, lost.
        o("A", 55, false, "7.77"),
    ];
    let r = revenue_at_risk(&outcomes, w, Currency::USD);
    assert_eq!(r.revenue, usd("125.11")); // 100.10 + 19.99 + 0.02 + 5.00
    assert_eq!(r.at_risk, usd("127.89")); // 100.10 + 19.99 + 0.01 + 0.02 + 7.77
    assert_eq!(r.recovered, usd("100.12")); // A's 100.10 + C's second 0.02
    assert_eq!(r.lost, usd("27.77"));
    let summary: Vec<(&str, u64, u32, bool)> = r
        .episodes
        .iter()
        .map(|e| {
            (
                e.key.as_str(),
                (e.opened_unix_nano - t(0)) / MIN,
                e.failures,
                e.recovered_unix_nano.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("A", 0, 3, true),
            ("C", 0, 1, false),
            ("B", 5, 1, false),
            ("A", 55, 1, false),
            ("C", 61, 1, true),
        ]
    );
    // Duplicates of one span count once.
    let mut dup = vec![o("E", 0, false, "9.00"), o("E", 0, false, "9.00")];
    dup[0].span = Some(([1; 16], [1; 8]));
    dup[1].span = Some(([1; 16], [1; 8]));
    let r = revenue_at_risk(&dup, w, Currency::USD);
    assert_eq!(r.episodes[0].failures, 1);
    assert_eq!(r.at_risk, usd("9"));
}

#[test]
fn payload_shape() {
    let w = Shop::generate(&ShopConfig {
        duration: Duration::from_secs(1200),
        ..troubled()
    })
    .unwrap();
    let encoded = w.trace_requests_encoded(512);
    let spans: usize = w.traces().map(|t| t.spans.len()).sum();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    let per_span = bytes as f64 / spans as f64;
    let all = emitted_spans(&w);
    let attrs = all.iter().map(|(_, s)| s.attributes.len()).sum::<usize>() as f64 / all.len() as f64;
    eprintln!("{per_span:.0} bytes/span, {attrs:.1} attributes/span over {spans} spans");
    assert!((385.0..=715.0).contains(&per_span), "{per_span} bytes per span");
    assert!((13.5..=16.5).contains(&attrs), "{attrs} attributes per span");
    // 512 spans per request, decodable, and re-encoding gives the same bytes.
    for (i, b) in encoded.iter().enumerate() {
        let req = ExportTraceServiceRequest::decode(b.as_slice()).unwrap();
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if i + 1 < encoded.len() {
            assert_eq!(n, 512);
        }
        let again = req.encode_to_vec();
        if &again != b {
            let at = again
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .unwrap_or(again.len().min(b.len()));
            panic!(
                "re-encoding differs at byte {at} of {} / {}: prost {:?} vs ours {:?}",
                again.len(),
                b.len(),
                &again[at.saturating_sub(8)..(at + 16).min(again.len())],
                &b[at.saturating_sub(8)..(at + 16).min(b.len())]
            );
        }
    }
    // Resource attributes and span structure.
    let req = ExportTraceServiceRequest::decode(encoded[0].as_slice()).unwrap();
    let keys: HashSet<&str> = req.resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|a| a.key.as_str())
        .collect();
    for k in [
        "service.name",
        "service.version",
        "deployment.environment",
        "host.name",
        "telemetry.sdk.name",
        "telemetry.sdk.language",
        "telemetry.sdk.version",
    ] {
        assert!(keys.contains(k), "{k}");
    }
    let mut traces: HashMap<Vec<u8>, Vec<(String, Span)>> = HashMap::new();
    for (svc, s) in unique_spans(&w) {
        traces.entry(s.trace_id.clone()).or_default().push((svc, s));
    }
    let mut checkouts = 0;
    for spans in traces.values() {
        let roots: Vec<_> = spans.iter().filter(|(_, s)| s.parent_span_id.is_empty()).collect();
        assert_eq!(roots.len(), 1);
        let ids: HashSet<&Vec<u8>> = spans.iter().map(|(_, s)| &s.span_id).collect();
        for (_, s) in spans {
            assert!(s.start_time_unix_nano < s.end_time_unix_nano);
            assert!(s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id));
        }
        if roots[0].1.name == names::FRONTEND_CHECKOUT {
            checkouts += 1;
            let names: Vec<(&str, &str)> = spans.iter().map(|(svc, s)| (svc.as_str(), s.name.as_str())).collect();
            assert!(names.contains(&("checkout", names::PLACE_ORDER)));
            assert!(names.contains(&("cart", names::GET_CART)));
            assert!(names.contains(&("payment", names::CHARGE)));
            let failed = spans.iter().any(|(_, s)| is_error(s));
            assert_eq!(spans.len(), if failed { 5 } else { 7 });
            // As the demo's payment service (3.0.0 src/payment/charge.js): an internal `charge` span under the
            // gRPC server span carries the loyalty level; no other span of the trace does.
            let find = |n: &str| spans.iter().find(|(_, s)| s.name == n).map(|(_, s)| s).unwrap();
            let (server, internal, place) = (
                find(names::CHARGE),
                find(names::CHARGE_INTERNAL),
                find(names::PLACE_ORDER),
            );
            assert!(names.contains(&("payment", names::CHARGE_INTERNAL)));
            assert_eq!(internal.kind, 1, "INTERNAL");
            assert_eq!(internal.parent_span_id, server.span_id);
            assert_eq!(is_error(internal), failed);
            let customer = attr_str(place, "user.id").unwrap();
            let tier = w.catalog.customer(customer).unwrap().tier;
            assert_eq!(
                attr_str(internal, "demo.user_context.loyalty_level"),
                Some(tier.as_str())
            );
            for (_, s) in spans.iter().filter(|(_, s)| s.name != names::CHARGE_INTERNAL) {
                assert!(
                    attr_str(s, "demo.user_context.loyalty_level").is_none(),
                    "{}: the tier is on `charge` only",
                    s.name
                );
            }
            if !failed {
                assert!(names.contains(&("shipping", names::SHIP_ORDER)));
                assert!(names.contains(&("email", names::SEND_ORDER_CONFIRMATION)));
            }
        }
    }
    assert!(checkouts > 1000);
}

#[test]
fn encodings_carry_every_field() {
    let w = Shop::generate(&troubled()).unwrap();
    let evs = events(&w);
    let types: HashSet<EventType> = evs.iter().map(|e| e.event_type).collect();
    assert_eq!(types.len(), 6, "every event type occurs: {types:?}");
    for e in &evs {
        let json = e.to_json();
        assert_eq!(&BusinessEvent::from_json(&json).unwrap(), e, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for k in [
            "type",
            "time",
            "order_id",
            "customer_id",
            "amount",
            "currency",
            "shipping",
            "items",
        ] {
            assert!(!v[k].is_null(), "{k} in {json}");
        }
        assert_eq!(v["type"], e.event_type.as_str());
        assert_eq!(v["amount"], e.amount.amount_string());
        assert_eq!(v["items"].as_array().unwrap().len(), e.items.len());
        for k in ["sku", "quantity", "unit_price"] {
            assert!(!v["items"][0][k].is_null(), "{k}");
        }
        assert!(v["items"][0]["unit_price"].is_string() && v["items"][0]["quantity"].is_u64());

        let rec = e.to_log_record();
        assert_eq!(&BusinessEvent::from_log_record(&rec).unwrap(), e);
        assert_eq!(rec.event_name, e.event_type.as_str());
        assert_eq!(rec.time_unix_nano, e.time_unix_nano);
        let keys: Vec<&str> = rec.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "event.name",
                "order.id",
                "customer.id",
                "order.amount",
                "order.currency",
                "order.shipping.amount",
                "order.items.count",
                "order.items"
            ]
        );
    }
    let example = &evs[0];
    let json = example.to_json();
    assert!(
        json.starts_with(r#"{"type":""#) && json.contains(r#""currency":"USD""#),
        "{json}"
    );
    assert!(json.contains(r#"T"#) && json.contains(r#"Z","order_id""#), "{json}");

    let logs = w.log_requests(100);
    let n: usize = logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    assert_eq!(n, evs.len());
}

#[test]
fn enrichment_truth_matches_the_spans() {
    let w = Shop::generate(&troubled()).unwrap();
    let t = &w.truth;
    let unique = unique_spans(&w);
    let mut with_key = 0;
    for (_, s) in &unique {
        let (tid, sid) = (hex(&s.trace_id), hex(&s.span_id));
        let user = attr_str(s, "user.id");
        let order = attr_str(s, "demo.order.id");
        let Some(e) = t.enrichment_for(&tid, &sid) else {
            assert!(user.is_none() && order.is_none(), "{} has a key but no truth", s.name);
            continue;
        };
        with_key += 1;
        assert_eq!(e.span_name, s.name);
        if let Some(u) = user {
            assert_eq!(e.customer_id, u);
        }
        let tier = w.catalog.customer(&e.customer_id).unwrap().tier;
        assert_eq!(e.customer_tier, tier);
        if let Some(l) = attr_str(s, "demo.user_context.loyalty_level") {
            assert_eq!(l, tier.as_str());
        }
        match order {
            Some(o) => {
                assert_eq!(e.order_id.as_deref(), Some(o));
                assert_eq!(e.currency, Some(Currency::USD));
                if let Some(v) = attr_money(s, "demo.order.amount") {
                    assert_eq!(e.order_value, Some(v));
                }
                if let Some(v) = attr_str(s, "demo.payment.amount") {
                    assert_eq!(e.order_value.unwrap().amount_string(), v);
                }
                if let Some(Value::IntValue(n)) = attr(s, "demo.order.items.count") {
                    assert_eq!(e.cart_items, Some(*n as u32));
                }
            }
            None => {
                assert!(e.order_id.is_none() && e.order_value.is_none());
                let count = match attr(s, "demo.cart.items.count") {
                    Some(Value::IntValue(n)) => Some(*n as u32),
                    _ => None,
                };
                assert_eq!(e.cart_items, count);
            }
        }
    }
    assert_eq!(with_key, t.enrichment.len(), "one truth entry per keyed span");
    assert!(with_key > 10_000);
}

#[test]
fn impact_list_follows_the_definition() {
    let w = Shop::generate(&troubled()).unwrap();
    let t = &w.truth;
    let list = &t.impact.impact_list;
    let checkout = t.operation("checkout").unwrap();
    assert_eq!(
        list.iter()
            .map(|r| (&r.customer_id, r.incident))
            .collect::<HashSet<_>>()
            .len(),
        list.len()
    );
    let affected: HashSet<&str> = list.iter().map(|r| r.customer_id.as_str()).collect();
    assert_eq!(affected.len() as u64, checkout.affected_customers);
    assert_eq!(
        list.iter().map(|r| u64::from(r.failed_attempts)).sum::<u64>(),
        checkout.failed
    );
    for pair in list.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.cart_value.nanos() > b.cart_value.nanos()
                || (a.cart_value == b.cart_value && a.customer_id <= b.customer_id)
        );
    }
    for r in list {
        let inc = &t.impact.incidents[r.incident.unwrap()];
        assert_eq!(r.root_cause.status_message, inc.status_message);
        assert_eq!(
            r.failure.status_message,
            format!("failed to charge card: {}", inc.status_message)
        );
        assert_eq!((r.failure.service, r.root_cause.service), ("checkout", "payment"));
        assert_eq!(
            r.cart_value,
            r.items
                .iter()
                .fold(Money::zero(Currency::USD), |a, i| a
                    .checked_add(i.total().unwrap())
                    .unwrap())
                .checked_add(w.events().find(|e| e.order_id == r.order_id).unwrap().shipping)
                .unwrap()
        );
    }
    let per_incident: u64 = t.impact.incidents.iter().map(|i| i.affected_customers).sum();
    assert_eq!(per_incident, list.len() as u64);
    let windows: u64 = checkout
        .affected_customers_by_window
        .iter()
        .map(|w| w.affected_customers)
        .sum();
    assert!(windows >= checkout.affected_customers);
}

#[test]
fn kpi_breaches_under_slow_shipping_only() {
    let clean = Shop::truth(&ShopConfig::default()).unwrap();
    assert!(clean.kpi.summary.eligible > 500);
    assert_eq!(clean.kpi.summary.breached, 0);
    assert_eq!(clean.kpi.summary.compliance, 1.0);

    let mut cfg = ShopConfig::default();
    cfg.injections.slow_shipping = Some(SlowShipping {
        start: Duration::from_secs(300),
        ..Default::default()
    });
    let w = Shop::generate(&cfg).unwrap();
    let k = &w.truth.kpi;
    assert!(k.summary.breached > 50, "{:?}", k.summary);
    assert!(k.summary.fulfilled_in_time > 50);
    assert_eq!(
        k.summary.breached_by_cause.keys().collect::<Vec<_>>(),
        vec![&Cause::ShippingSlowdown]
    );
    // Stage times are the emitted events' times.
    let mut stages: HashMap<(&str, EventType), u64> = HashMap::new();
    for e in w.events() {
        stages.insert((e.order_id.as_str(), e.event_type), e.time_unix_nano);
    }
    let deadline = 24 * 3600 * 1_000_000_000u64;
    for o in &k.orders {
        let id = o.order_id.as_str();
        assert_eq!(Some(&o.placed_unix_nano), stages.get(&(id, EventType::OrderPlaced)));
        assert_eq!(o.paid_unix_nano.as_ref(), stages.get(&(id, EventType::OrderPaid)));
        assert_eq!(o.shipped_unix_nano.as_ref(), stages.get(&(id, EventType::OrderShipped)));
        assert_eq!(
            o.delivered_unix_nano.as_ref(),
            stages.get(&(id, EventType::OrderDelivered))
        );
        assert_eq!(
            o.cancelled_unix_nano.as_ref(),
            stages.get(&(id, EventType::OrderCancelled))
        );
        assert_eq!(o.deadline_unix_nano, o.placed_unix_nano + deadline);
        if let Some(d) = o.delivered_unix_nano {
            assert_eq!(o.breached, d > o.deadline_unix_nano);
        }
        if o.breached {
            assert_eq!(o.cause, Cause::ShippingSlowdown);
        }
    }

    // Payment outages with slow retries delay orders too.
    let t = Shop::truth(&troubled()).unwrap();
    let causes: HashSet<Cause> = t.kpi.orders.iter().map(|o| o.cause).collect();
    assert!(causes.contains(&Cause::PaymentOutage) && causes.contains(&Cause::ShippingSlowdown));
    assert!(
        t.kpi
            .orders
            .iter()
            .any(|o| o.payment_failures > 0 && o.paid_unix_nano.is_some())
    );
}

#[test]
fn horizon_leaves_orders_open() {
    let cfg = ShopConfig {
        tail: Duration::from_secs(6 * 3600),
        ..Default::default()
    };
    let t = Shop::truth(&cfg).unwrap();
    let s = &t.kpi.summary;
    assert!(s.open > 0 && s.delivered > 0, "{s:?}");
    assert_eq!(s.orders, s.open + s.delivered + s.cancelled);
    for o in &t.kpi.orders {
        for st in [
            o.paid_unix_nano,
            o.shipped_unix_nano,
            o.delivered_unix_nano,
            o.cancelled_unix_nano,
        ]
        .into_iter()
        .flatten()
        {
            assert!(st < t.horizon_unix_nano);
        }
        if o.delivered_unix_nano.is_none() && o.cancelled_unix_nano.is_none() {
            assert!(!o.eligible, "deadline after the horizon");
        }
    }
}

#[test]
fn app_prefix_and_string_money() {
    let cfg = ShopConfig {
        attribute_prefix: AttributePrefix::App,
        money_attributes: MoneyAttributes::String,
        duration: Duration::from_secs(60),
        ..Default::default()
    };
    let w = Shop::generate(&cfg).unwrap();
    let mut seen = 0;
    for t in w.traces() {
        for (_, s) in t.decode_spans() {
            assert!(
                !s.attributes
                    .iter()
                    .any(|a| a.key.starts_with("demo.") || a.key == "user.id")
            );
            if s.name == names::PLACE_ORDER {
                assert!(attr_str(&s, "app.user.id").is_some());
                let amount = attr_str(&s, "app.order.amount").expect("string amount");
                assert_eq!(
                    w.truth
                        .enrichment_for(&hex(&s.trace_id), &hex(&s.span_id))
                        .unwrap()
                        .order_value,
                    Some(Money::parse_amount(amount, Currency::USD).unwrap())
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 10);
}

#[test]
fn config_from_yaml() {
    let yaml = r#"
seed: 42
start_unix_nano: 1735689600000000000
duration: 1h
tail: 48h
orders_per_sec: 5.0
customers: 10000
products: 200
currency: USD
attribute_prefix: demo
money_attributes: double
browse_traces: { min: 1, max: 4 }
add_item_traces: true
business_events: true
trace_export_delay: 1s
event_delay: 100ms
impact_window: 1h
fulfilment:
  enabled: true
  deadline: 24h
  ship_delay: { min: 1h, max: 8h }
  delivery_delay: { min: 4h, max: 12h }
  cancel_probability: 0.01
  abandoned_cancel_after: 30m
injections:
  payment_outages:
    - { start: 10m, end: 20m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 5s }
  retries: { probability: 0.7, delay: { min: 30s, max: 15m }, max_attempts: 3 }
  duplicates: { probability: 0.01, max_delay: 5s }
  late: { probability: 0.005, delay: { min: 5m, max: 1h } }
  out_of_order: { probability: 0.05, max_delay: 10s }
  events_after_spans: { probability: 0.2, delay: { min: 100ms, max: 30s } }
  slow_shipping: { start: 30m, end: 50m, ship_latency: 4s, extra_delay: { min: 2h, max: 20h } }
"#;
    let cfg: ShopConfig = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(cfg.seed, 42);
    assert_eq!(cfg.injections.payment_outages[0].end, Duration::from_secs(1200));
    assert!(cfg.validate().is_ok(), "{:?}", cfg.problems());
    let empty: ShopConfig = serde_yaml::from_str("{}").unwrap();
    assert_eq!(empty, ShopConfig::default());
    assert!(
        serde_yaml::from_str::<ShopConfig>("sead: 1").is_err(),
        "unknown fields are rejected"
    );
    let back: ShopConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);

    let mut bad = cfg.clone();
    bad.orders_per_sec = 0.0;
    bad.injections.payment_outages.push(PaymentOutage {
        start: Duration::from_secs(900),
        end: Duration::from_secs(1500),
        ..Default::default()
    });
    bad.injections.late.probability = 2.0;
    let problems: Vec<String> = bad.problems().iter().map(|p| p.path.clone()).collect();
    assert_eq!(
        problems,
        [
            "orders_per_sec",
            "injections.late.probability",
            "injections.payment_outages[1]"
        ]
    );
    assert!(Shop::generate(&bad).is_err());
}

#[test]
fn catalog_reference_data() {
    let w = Shop::generate(&ShopConfig {
        duration: Duration::from_secs(30),
        ..Default::default()
    })
    .unwrap();
    let c = &w.catalog;
    assert_eq!(c.customers.len(), 10_000);
    assert_eq!(c.customers[41].id, "cust-000042");
    assert_eq!(c.products[0].sku, "SKU-0001");
    let csv = c.customers_csv();
    assert!(csv.starts_with("customer_id,tier,region,email\ncust-000001,"));
    assert_eq!(csv.lines().count(), 10_001);
    let mut tiers: BTreeMap<&str, usize> = BTreeMap::new();
    for cu in &c.customers {
        *tiers.entry(cu.tier.as_str()).or_default() += 1;
    }
    assert!(tiers["bronze"] > tiers["silver"] && tiers["silver"] > tiers["gold"] && tiers["gold"] > tiers["platinum"]);
    assert!(
        c.products.iter().any(|p| p.unit_price.nanos() % 1_000_000_000 != 0),
        "prices with cents"
    );
    assert!(c.products_csv().lines().nth(1).unwrap().ends_with(",USD"));
}

#[test]
fn streams_pack_without_holding_the_run() {
    // A stream's emissions go through the batcher one by one; only the batcher's pending spans are held.
    let cfg = ShopConfig {
        duration: Duration::from_secs(120),
        orders_per_sec: 20.0,
        ..Default::default()
    };
    let mut b = bizpilot_shopgen::TraceBatcher::new(100);
    let mut out = Vec::new();
    let mut spans = 0;
    for e in Shop::stream(&cfg).unwrap() {
        if let EmissionKind::Trace(t) = e.kind {
            spans += t.spans.len();
            b.push(&t, &mut out);
            assert!(b.pending() <= 100);
        }
    }
    out.extend(b.finish());
    assert_eq!(out.len(), spans.div_ceil(100));
}

#[test]
fn stream_memory_does_not_grow_with_duration() {
    let max_pending = |minutes: u64| {
        let mut cfg = ShopConfig {
            duration: Duration::from_secs(minutes * 60),
            orders_per_sec: 20.0,
            ..troubled()
        };
        cfg.fulfilment.enabled = false;
        let mut s = Shop::stream(&cfg).unwrap();
        let mut max = 0;
        while s.next().is_some() {
            max = max.max(s.pending());
        }
        max
    };
    let (short, long) = (max_pending(10), max_pending(40));
    assert!(
        long < short * 3 / 2,
        "in flight: {short} over 10 min, {long} over 40 min"
    );
}
