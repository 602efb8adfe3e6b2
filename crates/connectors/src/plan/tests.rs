use super::config::{CapacityPlannerConfig, Growth};
use super::model::{Model, Settings};
use super::planner::{self, Figure};
use super::*;
use bizpilot_business::attrs::kv_str;
use bizpilot_core::{ComponentConfig, Traces};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};

fn cfg(yaml: &str) -> CapacityPlannerConfig {
    serde_yaml::from_str(yaml).expect("config parses")
}

fn errors(yaml: &str) -> Vec<String> {
    cfg(yaml)
        .validate()
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

const STEPS: &str = "steps:\n  - {name: browse, service: frontend, span_name: GET /api/products}\n  - {name: checkout, span_name: oteldemo.CheckoutService/PlaceOrder}\n";

#[test]
fn growth_forms() {
    assert_eq!(Growth::Text("+50%".into()).multiplier(), Ok(1.5));
    assert_eq!(Growth::Text("20 %".into()).multiplier(), Ok(1.2));
    assert_eq!(Growth::Text("1.8x".into()).multiplier(), Ok(1.8));
    assert_eq!(Growth::Percent(50.0).multiplier(), Ok(1.5));
    assert!(
        Growth::Text("-10%".into())
            .multiplier()
            .unwrap_err()
            .contains("negative growth")
    );
    assert!(
        Growth::Percent(-10.0)
            .multiplier()
            .unwrap_err()
            .contains("negative growth")
    );
    assert!(
        Growth::Text("0.5x".into())
            .multiplier()
            .unwrap_err()
            .contains("negative growth")
    );
    assert!(Growth::Text("lots".into()).multiplier().is_err());
}

#[test]
fn bad_campaigns_name_the_path() {
    assert!(errors(STEPS).is_empty(), "{:?}", errors(STEPS));
    let e = errors(&format!(
        "{STEPS}campaigns:\n  - {{name: sale, traffic: \"-20%\", steps: {{chekout: \"+10%\"}}}}\n"
    ));
    assert!(
        e.iter()
            .any(|m| m.starts_with("campaigns[0].traffic:") && m.contains("negative growth")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("campaigns[0].steps.chekout:") && m.contains("unknown step")),
        "{e:?}"
    );
    let e = errors("steps:\n  - {name: browse, service: frontend}\ncampaigns:\n  - {name: sale, conversion: 20}\n");
    assert!(e.iter().any(|m| m.contains("need an orders step")), "{e:?}");
    let e = errors(&format!(
        "{STEPS}orders_step: chekout\nlimits:\n  payment: {{max_concurrency_per_replica: 0}}\n"
    ));
    assert!(
        e.iter()
            .any(|m| m.starts_with("orders_step:") && m.contains("unknown step")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("limits.payment.max_concurrency_per_replica")),
        "{e:?}"
    );
    assert!(errors("{}").iter().any(|m| m.starts_with("steps:")));
    let e = errors(&format!("{STEPS}campaigns:\n  - {{name: m, revenue_per_hour: lots}}\n"));
    assert!(
        e.iter().any(|m| m.starts_with("campaigns[0].revenue_per_hour:")),
        "{e:?}"
    );
    assert!(
        errors(&format!(
            "{STEPS}campaigns:\n  - {{name: m, revenue_per_hour: USD 1000000}}\n"
        ))
        .is_empty()
    );
}

fn span(trace: u8, id: u8, parent: u8, name: &str, start_s: u64, dur_ms: u64) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: (1000 + start_s) * 1_000_000_000,
        end_time_unix_nano: (1000 + start_s) * 1_000_000_000 + dur_ms * 1_000_000,
        ..Default::default()
    }
}

fn request(service: &str, replica: &str, spans: Vec<Span>) -> Traces {
    let r = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service), kv_str("service.instance.id", replica)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Traces::from_bytes(prost::Message::encode_to_vec(&r).into()).expect("valid")
}

/// Fan-out, Little's law and multipliers on a hand-made workload whose answers are counted by hand.
#[test]
fn model_counts_fan_out_and_concurrency() {
    let c = cfg(&format!(
        "{STEPS}campaigns:\n  - {{name: sale, traffic: \"+50%\", conversion: \"+20%\"}}\nmin_calls: 10\ntrace_timeout: 1h\nlimits:\n  payment: {{replicas: 2, max_concurrency_per_replica: 1}}\n"
    ));
    let mut m = Model::new(Settings::new(&c).expect("settings"));
    // 100 s: 100 browse traces (frontend only) and 20 checkout traces: frontend → checkout → payment ×2
    // (one retry); each payment call takes 500 ms.
    let mut fe = Vec::new();
    let mut co = Vec::new();
    let mut pay = Vec::new();
    for i in 0..100u8 {
        fe.push(span(i + 1, 1, 0, "GET /api/products", u64::from(i), 10));
    }
    for i in 0..20u8 {
        let t = 101 + i;
        let s = u64::from(i) * 5;
        fe.push(span(t, 1, 0, "POST /api/checkout", s, 1200));
        co.push(span(t, 2, 1, "oteldemo.CheckoutService/PlaceOrder", s, 1100));
        pay.push(span(t, 3, 2, "grpc.oteldemo.PaymentService/Charge", s, 500));
        pay.push(span(t, 4, 2, "grpc.oteldemo.PaymentService/Charge", s + 1, 500));
    }
    // Spans of a trace arrive in different requests, as from different services.
    m.ingest(&mut request("payment", "payment-0", pay));
    m.ingest(&mut request("checkout", "checkout-0", co));
    m.ingest(&mut request("frontend", "frontend-0", fe));
    m.flush();
    let o = m.observed();
    assert_eq!(o.seconds, 99.0);
    let plan = planner::plan("p", &c, &o);
    let camp = &plan.campaigns[0];
    assert_eq!(camp.step_multipliers["browse"], 1.5);
    assert!((camp.step_multipliers["checkout"] - 1.8).abs() < 1e-12);
    let svc = |n: &str| camp.services.iter().find(|s| s.service == n).expect("service");
    let p = svc("payment");
    // 40 calls in 99 s; fan-out 2 per checkout trace; ×1.8.
    assert_eq!(p.routes[0].fan_out["checkout"], 2.0);
    assert!((p.rate_now.value().unwrap_or(0.0) - 40.0 / 99.0).abs() < 1e-9);
    assert!((p.rate_planned.value().unwrap_or(0.0) - 1.8 * 40.0 / 99.0).abs() < 1e-9);
    // Little's law: 40 × 0.5 s / 99 s.
    assert!((p.concurrency_now.value().unwrap_or(0.0) - 20.0 / 99.0).abs() < 1e-9);
    // Capacity 1 / 0.5 s per replica × 2 replicas = 4 /s; planned 0.727 /s at 0.7 → ⌈0.727 / 1.4⌉ = 1.
    assert_eq!(p.required_replicas.value(), Some(1.0));
    assert_eq!(p.replicas_seen.len(), 1);
    // Frontend: browse ×1.5, checkout ×1.8, mixed by calls.
    let f = svc("frontend");
    let want = (100.0 * 1.5 + 20.0 * 1.8) / 120.0;
    assert!((f.routes.iter().map(|r| r.multiplier * r.calls as f64).sum::<f64>() / 120.0 - want).abs() < 1e-9);
    // Frontend has no limit and too few points for a saturation fit: it says so.
    match &f.capacity_per_replica {
        Figure::Insufficient { insufficient_data } => assert!(insufficient_data.contains("no per-replica limit")),
        other => panic!("{other:?}"),
    }
    assert_eq!(camp.first_to_saturate.as_deref(), Some("payment"));
    // The gauges.
    let req = plan_metrics(&plan, 1, 2);
    let names: Vec<&str> = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert!(names.contains(&"business.capacity.required_replicas"), "{names:?}");
    assert!(names.contains(&"business.capacity.headroom"), "{names:?}");
    // The API answers with the same plan.
    let api = api::PlanApi::new(
        "p".into(),
        std::sync::Arc::new(c.clone()),
        std::sync::Arc::new(std::sync::Mutex::new(m)),
    );
    let r = bizpilot_core::ApiHandler::handle(&api, "plan", &[]).expect("answers");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["campaigns"][0]["first_to_saturate"], "payment");
    let r = bizpilot_core::ApiHandler::handle(&api, "plan", &[("campaign".into(), "nope".into())]).expect("answers");
    assert_eq!(r.status, 404);
    assert!(bizpilot_core::ApiHandler::handle(&api, "impact", &[]).is_none());
}

/// Without limits, capacity comes from observed saturation: latency growing with load as in an M/M/1
/// queue (W = 1/(μ − λ), μ = 20/s) gives back μ from the fit of 1/W against the rate.
#[test]
fn capacity_from_observed_saturation() {
    let c = cfg(&format!(
        "{STEPS}campaigns:\n  - {{name: sale, traffic: \"+50%\"}}\ntrace_timeout: 1h\n"
    ));
    let mut m = Model::new(Settings::new(&c).expect("settings"));
    let base = 60_000u64 * 1_000_000_000;
    let mut spans = Vec::new();
    let mut n: u32 = 0;
    for minute in 0..8u64 {
        let rate = 2 * (minute + 1); // 2, 4, … 16 calls/s
        let w = 1.0 / (20.0 - rate as f64);
        for i in 0..rate * 60 {
            n += 1;
            let start = base + minute * 60_000_000_000 + i * 60_000_000_000 / (rate * 60);
            spans.push(Span {
                trace_id: n.to_be_bytes().repeat(4),
                span_id: n.to_be_bytes().repeat(2),
                name: "GET /api/products".into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + (w * 1e9) as u64,
                ..Default::default()
            });
        }
    }
    // One more span to close the last minute.
    let mut last = spans.last().cloned().expect("spans");
    last.start_time_unix_nano = base + 8 * 60_000_000_000;
    last.end_time_unix_nano = last.start_time_unix_nano + 1_000_000;
    last.trace_id = vec![9; 16];
    spans.push(last);
    m.ingest(&mut request("frontend", "frontend-0", spans));
    m.flush();
    let plan = planner::plan("p", &c, &m.observed());
    let f = &plan.campaigns[0].services[0];
    assert_eq!(f.replicas_now, Some(1));
    let cap = f.capacity_per_replica.value().expect("a capacity");
    assert!((cap - 20.0).abs() < 0.5, "{cap} {:?}", f.capacity_per_replica);
    assert!(
        f.capacity_source.starts_with("observed saturation"),
        "{}",
        f.capacity_source
    );
    assert_eq!(f.load.points.len(), 8);
}
