//! `bizpilot plan` offline from a recording, `GET /api/v1/plan` and the `business_capacity_*` gauges live, and
//! config errors for bad campaigns — on the shipped `pipelines/capacity-plan.yaml`, with spans in the
//! OpenTelemetry Demo's shapes from the queueing simulation (`bizpilot_shopgen::queueing`).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bizpilot_connectors::kpi::recording::Writer;
use bizpilot_shopgen::queueing::{Measured, QueueingConfig, simulate};

fn workload() -> Measured {
    let mut cfg = QueueingConfig::demo(21, 10.0, 0.1);
    cfg.duration = 240.0;
    cfg.warmup = 0.0;
    simulate(&cfg)
}

fn record(m: &Measured, path: &Path) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create recording"));
    let mut w = Writer::new(file).expect("recording");
    for r in &m.requests {
        w.write_traces(r).expect("write");
    }
    w.finish().expect("flush");
}

fn plan_cmd(configs: &[&Path], input: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("plan");
    for c in configs {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--input").arg(input).args(extra);
    let out = cmd.output().expect("run bizpilot plan");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn service<'a>(campaign: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    campaign["services"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["service"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {campaign}"))
}

#[test]
fn offline_plan_from_a_recording_and_bad_campaigns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("sim.otlp");
    let m = workload();
    record(&m, &rec);
    let pipeline = workspace_root().join("pipelines/capacity-plan.yaml");

    let (code, out, err) = plan_cmd(&[&pipeline], &rec, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("JSON plan");
    let steps: Vec<&str> = plan["funnel"]
        .as_array()
        .expect("funnel")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(steps, ["browse", "cart", "checkout", "payment", "shipping"]);
    for s in plan["funnel"].as_array().expect("funnel") {
        assert!(s["occurrences"].as_u64().unwrap_or(0) > 0, "{s}");
    }
    let sale = &plan["campaigns"][0];
    assert_eq!(sale["name"], "spring_sale");
    // Payment is caused by checkouts only: ×1.5 traffic × 1.2 conversion.
    let pay = service(sale, "payment");
    let ratio = pay["rate_planned"]["value"].as_f64().unwrap_or(0.0) / pay["rate_now"]["value"].as_f64().unwrap_or(1.0);
    assert!((ratio - 1.8).abs() < 1e-9, "{ratio}");
    assert_eq!(pay["routes"][0]["route"], "grpc.oteldemo.PaymentService/Charge");
    // Product catalog serves browsing (×1.5) and checkouts (×1.8): in between.
    let pc = service(sale, "product-catalog");
    let r = pc["rate_planned"]["value"].as_f64().unwrap_or(0.0) / pc["rate_now"]["value"].as_f64().unwrap_or(1.0);
    assert!(r > 1.5 && r < 1.8, "{r}");
    // Frontend routes as the demo names them (method + http.route).
    let fe = service(sale, "frontend");
    let routes: Vec<&str> = fe["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["route"].as_str().unwrap_or(""))
        .collect();
    assert!(routes.contains(&"GET /api/products/[productId]"), "{routes:?}");
    assert!(routes.contains(&"POST /api/checkout"), "{routes:?}");
    // Payment has limits in the pipeline: replicas and a saturation sentence; frontend has none: it says so.
    assert_eq!(pay["replicas_now"], 1);
    assert!(pay["required_replicas"]["value"].as_f64().is_some(), "{pay}");
    assert!(
        fe["capacity_per_replica"]["insufficient_data"]
            .as_str()
            .is_some_and(|s| s.contains("no per-replica limit")),
        "{}",
        fe["capacity_per_replica"]
    );
    assert_eq!(sale["first_to_saturate"], "payment");
    assert!(
        sale["summary"]
            .as_str()
            .unwrap_or("")
            .starts_with("payment saturates at"),
        "{}",
        sale["summary"]
    );
    // Fulfilment staff for the 24-hour KPI.
    assert!(sale["fulfilment"][0]["staff_needed"]["value"].as_f64().unwrap_or(0.0) >= 1.0);
    // The revenue campaign: the simulation carries no order values, so it says what is missing.
    let million = &plan["campaigns"][1];
    assert!(
        million["problems"][0].as_str().unwrap_or("").contains("no order value"),
        "{million}"
    );

    // The readable table.
    let (code, out, err) = plan_cmd(&[&pipeline], &rec, &["--campaign", "spring_sale"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Campaign \"spring_sale\""), "{out}");
    assert!(out.contains("payment saturates at"), "{out}");
    assert!(!out.contains("million_an_hour"), "{out}");

    // Bad campaigns: config errors with their paths, nothing computed.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "connectors:\n  capacity_planner:\n    campaigns:\n      - {name: sale, traffic: \"-10%\", steps: {chekout: \"+5%\"}}\n",
    )
    .expect("write");
    let (code, out, err) = plan_cmd(&[&pipeline, &bad], &rec, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("campaigns[0].traffic") && err.contains("negative growth"),
        "{err}"
    );
    assert!(
        err.contains("campaigns[0].steps.chekout") && err.contains("unknown step"),
        "{err}"
    );
}

#[test]
fn live_plan_api_and_gauges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = workload();
    let (admin, http, prom) = (free_addr(), free_addr(), free_addr());
    let b = start_pipeline(
        "pipelines/capacity-plan.yaml",
        "connectors:\n  capacity_planner:\n    metrics_flush_interval: 1s\n    trace_timeout: 1s\n",
        admin,
        &[
            ("BIZPILOT_ADMIN_ENDPOINT", &admin.to_string()),
            ("BIZPILOT_OTLP_HTTP_ENDPOINT", &http.to_string()),
            ("BIZPILOT_OTLP_GRPC_ENDPOINT", &free_addr().to_string()),
            ("BIZPILOT_PROMETHEUS_ENDPOINT", &prom.to_string()),
        ],
    );
    drop(dir);
    for r in &m.requests {
        let body = prost::Message::encode_to_vec(r);
        let mut tries = 0;
        while otlp_post(http, "/v1/traces", &body) != 200 {
            tries += 1;
            assert!(tries < 200, "OTLP/HTTP refused traces");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let plan = loop {
        let (status, plan) = json_get(admin, "/api/v1/plan?campaign=spring_sale");
        assert_eq!(status, 200, "{plan}");
        let pay = plan["campaigns"][0]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["service"] == "payment").cloned());
        if pay.is_some_and(|p| p["routes"][0]["fan_out"]["checkout"].as_f64().is_some()) {
            break plan;
        }
        assert!(Instant::now() < deadline, "no plan with payment: {plan}\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(plan["campaigns"].as_array().map(|c| c.len()), Some(1));
    assert_eq!(plan["campaigns"][0]["first_to_saturate"], "payment");
    let (status, _) = json_get(admin, "/api/v1/plan?campaign=nope");
    assert_eq!(status, 404);
    // The gauges, through the prometheus exporter: every capacity metric the Grafana dashboard charts.
    let dash =
        std::fs::read_to_string(workspace_root().join("deploy/grafana/bizpilot-dashboard.json")).expect("dashboard");
    let mut charted: Vec<String> = dash
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("business_capacity_"))
        .map(str::to_string)
        .collect();
    charted.sort();
    charted.dedup();
    assert!(charted.len() >= 4, "{charted:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(prom, "/metrics").unwrap_or((0, String::new()));
        if charted.iter().all(|m| text.contains(&format!("{m}{{")))
            && text.contains("business_capacity_required_replicas{")
            && text.contains("service=\"payment\"")
        {
            let (ok, msg) = promtool_check_metrics(&text);
            assert!(ok, "{msg}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every charted gauge {charted:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
