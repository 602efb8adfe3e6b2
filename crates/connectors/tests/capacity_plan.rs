//! Validation of the capacity plan against measurement (issue #13): a discrete-event queueing simulation
//! of the demo's services (`bizpilot_shopgen::queueing`, written independently of the planner) runs at load L;
//! its spans go through the `capacity_planner` model; the plan for +50 % traffic and +20 % conversion is
//! computed; the simulation then runs at the campaign's load and per service the predicted rate and
//! concurrency are compared with what it measured; finally the campaign's load is raised step by step until a
//! service saturates, and that must be the service the plan said saturates first.
//!
//! `cargo test -p bizpilot-connectors --test capacity_plan -- --nocapture` prints the table in README.md.

use bizpilot_connectors::plan::config::CapacityPlannerConfig;
use bizpilot_connectors::plan::planner::{self, Plan};
use bizpilot_connectors::plan::{Model, Settings};
use bizpilot_core::Traces;
use bizpilot_shopgen::queueing::{Measured, QueueingConfig, simulate};

const CONFIG: &str = r#"
steps:
  - {name: browse, service: frontend, span_name: GET}
  - {name: cart, service: cart, span_name: oteldemo.CartService/AddItem}
  - {name: checkout, service: checkout, span_name: oteldemo.CheckoutService/PlaceOrder}
  - {name: payment, service: payment, span_name: grpc.oteldemo.PaymentService/Charge}
  - {name: shipping, service: shipping, span_name: POST /ship-order}
campaigns:
  - {name: spring_sale, traffic: "+50%", conversion: "+20%"}
limits:
  frontend: {replicas: 3, max_concurrency_per_replica: 32}
  product-catalog: {replicas: 2, max_concurrency_per_replica: 4}
  currency: {replicas: 1, max_concurrency_per_replica: 8}
  cart: {replicas: 1, max_concurrency_per_replica: 4}
  checkout: {replicas: 1, max_concurrency_per_replica: 32}
  payment: {replicas: 2, max_concurrency_per_replica: 4}
  shipping: {replicas: 1, max_concurrency_per_replica: 8}
  email: {replicas: 1, max_concurrency_per_replica: 8}
window: 2h
resolution: 1m
"#;

const BROWSE: f64 = 40.0;
const CHECKOUT: f64 = 0.1;

fn plan_from(m: &Measured, cfg: &CapacityPlannerConfig) -> Plan {
    let mut model = Model::new(Settings::new(cfg).expect("settings"));
    for r in &m.requests {
        let mut t = Traces::from_bytes(prost::Message::encode_to_vec(r).into()).expect("valid request");
        model.ingest(&mut t);
    }
    model.flush();
    planner::plan("capacity_planner", cfg, &model.observed())
}

#[test]
fn plan_predicts_the_campaign_measured_by_simulation() {
    let cfg: CapacityPlannerConfig = serde_yaml::from_str(CONFIG).expect("config");
    assert!(bizpilot_core::ComponentConfig::validate(&cfg).is_empty());

    // 1. Today's load, with spans.
    let mut base = QueueingConfig::demo(11, BROWSE, CHECKOUT);
    base.duration = 600.0;
    let base = simulate(&base);
    let plan = plan_from(&base, &cfg);
    let c = &plan.campaigns[0];

    // 2. The campaign's load, measured (a different seed: not the same random draws).
    let mut at = QueueingConfig::demo(12, BROWSE * 1.5, CHECKOUT * 1.2);
    at.emit_spans = false;
    at.duration = 600.0;
    let measured = simulate(&at);

    println!(
        "| service | replicas × slots | rate now /s | predicted rate /s [95 %] | measured rate /s | error | predicted concurrency | measured concurrency | error | predicted utilization | measured utilization |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut worst: f64 = 0.0;
    for s in &c.services {
        let m = &measured.services[&s.service];
        let spec = at.services.iter().find(|x| x.name == s.service).expect("service");
        let (Some(rate), Some(conc)) = (s.rate_planned.value(), s.concurrency_planned.value()) else {
            panic!("{}: no prediction: {:?}", s.service, s.rate_planned);
        };
        let (lo, hi) = match &s.rate_planned {
            planner::Figure::Value { low, high, .. } => (*low, *high),
            _ => (0.0, 0.0),
        };
        let er = (rate - m.rate) / m.rate;
        let ec = (conc - m.concurrency) / m.concurrency;
        worst = worst.max(er.abs()).max(ec.abs());
        println!(
            "| {} | {} × {} | {:.2} | {:.2} [{:.2}–{:.2}] | {:.2} | {:+.1} % | {:.3} | {:.3} | {:+.1} % | {:.2} | {:.2} |",
            s.service,
            spec.replicas,
            spec.slots,
            s.rate_now.value().unwrap_or(0.0),
            rate,
            lo,
            hi,
            m.rate,
            er * 100.0,
            conc,
            m.concurrency,
            ec * 100.0,
            s.utilization_planned.value().unwrap_or(f64::NAN),
            m.utilization
        );
        assert!(
            er.abs() <= 0.10,
            "{}: predicted rate {rate:.3}, measured {:.3}",
            s.service,
            m.rate
        );
        assert!(
            ec.abs() <= 0.10,
            "{}: predicted concurrency {conc:.3}, measured {:.3}",
            s.service,
            m.concurrency
        );
    }
    println!("\nworst relative error: {:.1} %", worst * 100.0);
    println!("plan: {}", c.summary);

    // 3. Which service saturates first as the campaign's load grows: raise it until a service's measured
    //    slot utilization reaches 0.85.
    let predicted = c.first_to_saturate.clone().expect("a first to saturate");
    let predicted_at = c.services[0]
        .saturation
        .as_ref()
        .map(|s| s.fraction_of_campaign)
        .unwrap_or(0.0);
    let mut g = 1.0;
    let measured_first = loop {
        let mut run = QueueingConfig::demo(13, BROWSE * 1.5 * g, CHECKOUT * 1.2);
        run.emit_spans = false;
        run.duration = 150.0;
        let m = simulate(&run);
        let hot: Vec<(&String, f64)> = m
            .services
            .iter()
            .filter(|(_, s)| s.utilization >= 0.85)
            .map(|(n, s)| (n, s.utilization))
            .collect();
        if let Some((name, u)) = hot.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            println!(
                "measured: {name} reaches utilization {u:.2} first, at {g:.2}× the campaign (predicted: {predicted} saturates at {predicted_at:.2}×)"
            );
            break (*name).clone();
        }
        g += 0.2;
        assert!(g < 5.0, "nothing saturated");
    };
    assert_eq!(measured_first, predicted);
}

#[test]
fn too_little_data_says_so() {
    let cfg: CapacityPlannerConfig = serde_yaml::from_str(CONFIG).expect("config");
    let mut run = QueueingConfig::demo(5, 2.0, CHECKOUT);
    run.duration = 20.0;
    run.warmup = 0.0;
    let m = simulate(&run);
    let plan = plan_from(&m, &cfg);
    let c = &plan.campaigns[0];
    let pay = c
        .services
        .iter()
        .find(|s| s.service == "payment")
        .expect("payment seen");
    match &pay.required_replicas {
        planner::Figure::Insufficient { insufficient_data } => {
            assert!(insufficient_data.contains("min_calls"), "{insufficient_data}")
        }
        other => panic!(
            "a figure from {} calls: {other:?}",
            pay.routes.iter().map(|r| r.calls).sum::<u64>()
        ),
    }
    assert!(c.first_to_saturate.is_none() || c.first_to_saturate.as_deref() != Some("payment"));
}
