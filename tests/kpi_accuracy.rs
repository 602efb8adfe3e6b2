//! End to end: the `order_kpi` breach predictor in the real binary (`bizpilot replay`) on a time-compressed
//! week of shopgen orders (every duration ÷ 12: a 2 h deadline, a shipping slowdown from "day 2.5" on and a
//! payment outage on "day 1.25"), scored against the workload's ground truth from the connector's
//! `kpi.at_risk` records alone: recall and precision of breach predictions at least 0.8, median lead time at
//! least 20 min (4 h ÷ 12), explanations naming the injected service; and the KPI counts exactly the truth's.
//! `cargo run --release -p bizpilot-connectors --example kpi_eval` runs the full-size week.

mod common;

use bizpilot_shopgen::truth::Cause;
use common::kpi_shop::KpiShop;
use common::{free_port, kpi_debug_output, kpi_record_shop, kpi_run_replay};
use std::collections::HashMap;
use std::time::Duration;

const MIN: u64 = 60_000_000_000;

/// The KPI shop as a week ÷ 12: 14 h of orders and 4 h of tail, 20,000 customers, the outage at 2 h 30 min, the
/// slowdown from 5 h, 20 % of the events after their spans.
fn week_divided_by_12() -> bizpilot_shopgen::ShopConfig {
    KpiShop {
        seed: 11,
        duration: "14h",
        tail: "4h",
        customers: 20000,
        payment_outage: ("2h30m", "2h40m"),
        slow_shipping_from: "5h",
        events_after_spans: true,
        impact_window: None,
    }
    .config()
}

fn attr_str<'a>(r: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    r["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
}

fn u64_of(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        n => n.as_u64().unwrap(),
    }
}

#[test]
fn breach_predictions_meet_the_floor_against_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("week.otlprec");
    let (truth, _) = kpi_record_shop(&week_divided_by_12(), Duration::from_secs(5), &rec);
    let cfg = dir.path().join("pipeline.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
receivers:
  otlp: {{protocols: {{http: {{endpoint: "127.0.0.1:{}"}}}}}}
connectors:
  order_kpi:
    kpis: [{{name: fulfilled_2h, deadline: 2h}}]
    allowed_lateness: 2m
    evaluation_interval: 30s
    metrics_interval: 1h
    health: {{window: 2m, baseline_window: 2h}}
exporters:
  debug: {{verbosity: detailed}}
service:
  pipelines:
    logs/events: {{receivers: [otlp], exporters: [order_kpi]}}
    traces: {{receivers: [otlp], exporters: [order_kpi]}}
    metrics/kpi: {{receivers: [order_kpi], exporters: [debug]}}
    logs/kpi: {{receivers: [order_kpi], exporters: [debug]}}
"#,
            free_port()
        ),
    )
    .unwrap();
    let (st, out, err) = kpi_run_replay(&cfg, &[&rec], &["--no-progress"]);
    assert!(st.success(), "{err}");
    let (records, metrics) = kpi_debug_output(&out);

    // First flag (time, named service) per order, from the kpi.at_risk records.
    let mut flags: HashMap<&str, (u64, Option<&str>)> = HashMap::new();
    for r in &records {
        assert_eq!(attr_str(r, "event.name"), Some("kpi.at_risk"));
        let id = attr_str(r, "order.id").unwrap();
        let t = u64_of(&r["timeUnixNano"]);
        let e = flags.entry(id).or_insert((t, attr_str(r, "kpi.cause.service")));
        assert_eq!(e.0, t, "one record per order: {id}");
    }
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    let mut leads = Vec::new();
    let mut named: HashMap<Cause, (u64, u64)> = HashMap::new();
    for o in truth.kpi.orders.iter().filter(|o| o.eligible) {
        let flag = flags
            .get(o.order_id.as_str())
            .filter(|(t, _)| *t < o.deadline_unix_nano);
        match (flag, o.breached) {
            (Some((t, service)), true) => {
                tp += 1;
                leads.push(o.deadline_unix_nano - t);
                let expected = match o.cause {
                    Cause::ShippingSlowdown => "shipping",
                    Cause::PaymentOutage => "payment",
                    Cause::None => continue,
                };
                let e = named.entry(o.cause).or_default();
                e.0 += 1;
                e.1 += u64::from(*service == Some(expected));
            }
            (Some(_), false) => fp += 1,
            (None, true) => fneg += 1,
            (None, false) => {}
        }
    }
    leads.sort_unstable();
    let recall = tp as f64 / (tp + fneg) as f64;
    let precision = tp as f64 / (tp + fp) as f64;
    let lead = leads.get(leads.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "breaches {}: recall {recall:.3}, precision {precision:.3} (fp {fp}), median lead {} min, named {named:?}",
        tp + fneg,
        lead / MIN
    );
    assert!(tp + fneg > 1000, "the workload breaches: {}", tp + fneg);
    assert!(recall >= 0.8, "recall {recall}");
    assert!(precision >= 0.8, "precision {precision}");
    assert!(lead >= 20 * MIN, "median lead {} min", lead / MIN);
    for (cause, (n, ok)) in &named {
        assert!(
            *ok as f64 >= 0.8 * *n as f64,
            "{cause:?}: the injected service named for {ok} of {n}"
        );
    }
    assert!(
        named.get(&Cause::PaymentOutage).is_some_and(|(n, _)| *n > 0),
        "{named:?}"
    );

    // The connector's own scoring agrees in kind, and the KPI counts are exact.
    let last = metrics.last().unwrap();
    let gauge = |name: &str| -> f64 {
        last["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["gauge"]["dataPoints"][0]["asDouble"].as_f64().unwrap())
            .unwrap_or(f64::NAN)
    };
    assert!(gauge("kpi.prediction.precision") >= 0.8);
    assert!(gauge("kpi.prediction.recall") >= 0.8);
    let compliance = gauge("kpi.compliance");
    assert!(
        (compliance - truth.kpi.summary.compliance).abs() < 1e-12,
        "compliance {compliance} vs {}",
        truth.kpi.summary.compliance
    );
}
