//! End to end: `bizpilot replay` of a recorded shopgen workload (a time-compressed day: 2 h deadline, a payment
//! outage and a shipping slowdown, duplicated and reordered data) through an `order_kpi` pipeline gives
//! identical outputs every time, and the same KPI outputs as the live run (`bizpilot run` fed the same requests
//! over OTLP/HTTP); the at-risk HTTP API during the live run; OTLP/JSON-lines input; bad input.

mod common;

use bizpilot_connectors::kpi::recording;
use common::kpi_shop::KpiShop;
use common::{Bizpilot, free_port, json_get, kpi_debug_output, kpi_post_records, kpi_record_shop, kpi_run_replay};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The KPI shop (six hours of orders) with 5,000 customers and 20 % of the events after their spans.
fn shop(seed: u64) -> bizpilot_shopgen::ShopConfig {
    KpiShop {
        seed,
        customers: 5000,
        events_after_spans: true,
        ..KpiShop::default()
    }
    .config()
}

/// Writes the customers table and the pipeline config (metrics also to a `prometheus` exporter on `prom`);
/// returns the config's path.
/// With `storage`, the connector checkpoints into a `file_storage` extension there every 300 ms.
fn write_config(
    dir: &Path,
    customers: &str,
    http: SocketAddr,
    admin: SocketAddr,
    prom: SocketAddr,
    storage: Option<&Path>,
) -> PathBuf {
    let csv = dir.join("customers.csv");
    std::fs::write(&csv, customers).unwrap();
    let mut cfg = format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{endpoint: "{http}"}}
extensions:
  lookup/customers: {{file: "{csv}", key: customer_id, reload_interval: 0s}}
connectors:
  order_kpi:
    kpis: [{{name: fulfilled_2h, from: placed, to: delivered, deadline: 2h}}]
    allowed_lateness: 2m
    evaluation_interval: 1m
    metrics_interval: 30m
    age_buckets: [30m, 1h, 2h]
    dimensions:
      - {{name: customer.tier, lookup: {{extension: lookup/customers, key_attribute: customer.id, column: tier}}}}
      - {{name: region, lookup: {{extension: lookup/customers}}}}
exporters:
  debug: {{verbosity: detailed}}
  prometheus: {{endpoint: "{prom}"}}
service:
  extensions: [lookup/customers]
  shutdown_timeout: 60s
  telemetry: {{metrics: {{address: "{admin}"}}}}
  pipelines:
    logs/events: {{receivers: [otlp], exporters: [order_kpi]}}
    traces: {{receivers: [otlp], exporters: [order_kpi]}}
    metrics/kpi: {{receivers: [order_kpi], exporters: [debug, prometheus]}}
    logs/kpi: {{receivers: [order_kpi], exporters: [debug]}}
"#,
        csv = csv.display()
    );
    if let Some(storage) = storage {
        cfg = cfg.replace(
            "  extensions: [lookup/customers]\n",
            "  extensions: [file_storage, lookup/customers]\n",
        );
        cfg = cfg.replace(
            "extensions:\n  lookup/customers:",
            &format!(
                "extensions:\n  file_storage: {{directory: \"{}\"}}\n  lookup/customers:",
                storage.display()
            ),
        );
        cfg = cfg.replace(
            "    allowed_lateness: 2m\n",
            "    allowed_lateness: 2m\n    storage: file_storage\n    checkpoint_interval: 300ms\n",
        );
    }
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// At-risk records as sorted JSON strings, and the last metrics request (the end-of-input snapshot).
fn outputs(stdout: &str) -> (Vec<String>, serde_json::Value) {
    let (records, metrics) = kpi_debug_output(stdout);
    let mut r: Vec<String> = records.iter().map(|v| v.to_string()).collect();
    r.sort();
    (r, metrics.last().cloned().expect("a final metrics snapshot"))
}

fn metric_points<'a>(m: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    m["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == name)
        .flat_map(|x| {
            ["sum", "gauge"]
                .iter()
                .filter_map(|k| x[k]["dataPoints"].as_array())
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn int(v: &serde_json::Value) -> i64 {
    match &v["asInt"] {
        serde_json::Value::String(s) => s.parse().unwrap(),
        n => n.as_i64().unwrap(),
    }
}

fn attr<'a>(p: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    p["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// Waits until the connector has evaluated everything posted (its `as_of` stops moving).
/// The sum of the `kpi.orders.resolved` points of `outcome`.
fn resolved_count(resolved: &[&serde_json::Value], outcome: &str) -> i64 {
    resolved
        .iter()
        .filter(|p| attr(p, "outcome").and_then(|v| v["stringValue"].as_str()) == Some(outcome))
        .map(|p| int(p))
        .sum()
}

fn settle(admin: SocketAddr) {
    let mut last = serde_json::Value::Null;
    let mut same = 0;
    for _ in 0..600 {
        let (_, v) = json_get(admin, "/api/v1/kpi");
        if v["as_of_unix_nano"] == last && !last.is_null() {
            same += 1;
            if same == 5 {
                return;
            }
        } else {
            same = 0;
            last = v["as_of_unix_nano"].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the connector did not settle");
}

#[test]
fn replays_are_identical_and_agree_with_the_live_run() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("shop.otlprec");
    let (truth, customers) = kpi_record_shop(&shop(5), Duration::from_secs(5), &rec);
    let (http, admin, prom) = (addr(), addr(), addr());
    let cfg = write_config(dir.path(), &customers, http, admin, prom, None);

    // Two replays: byte-identical outputs.
    let (st, out1, err1) = kpi_run_replay(&cfg, &[&rec], &[]);
    assert!(st.success(), "replay failed: {err1}");
    assert!(
        err1.contains("replay [") && err1.contains("100.0 %"),
        "progress bar on stderr: {err1}"
    );
    let (st, out2, err2) = kpi_run_replay(&cfg, &[&rec], &["--no-progress"]);
    assert!(st.success(), "{err2}");
    assert!(!err2.contains("replay ["), "no progress bar: {err2}");
    assert_eq!(out1, out2, "two replays of the same recording give identical outputs");
    let (replayed_records, replayed_final) = outputs(&out1);
    assert!(
        replayed_records.len() > 50,
        "at-risk records: {}",
        replayed_records.len()
    );

    // The KPI figures are the ground truth's, exactly.
    let resolved = metric_points(&replayed_final, "kpi.orders.resolved");
    let count = |outcome: &str| resolved_count(&resolved, outcome);
    let k = &truth.kpi.summary;
    assert_eq!(count("in_time") as u64, k.fulfilled_in_time);
    assert_eq!(count("breached") as u64, k.breached);
    assert!(k.breached > 100, "the workload breaches: {k:?}");
    assert!(
        resolved
            .iter()
            .all(|p| attr(p, "customer.tier").is_some() && attr(p, "region").is_some()),
        "dimensions from the lookup table"
    );

    // The live run, fed the same requests in recorded (arrival) order.
    let all = recording::read(&rec).unwrap();
    let mut live = Bizpilot::start_with(&[cfg.as_path()], admin, tempfile::tempdir().unwrap(), &[]);
    // Up to the middle of the slowdown: orders are at risk, the API lists and explains them.
    let cut = all.partition_point(|r| r.time < truth.start_unix_nano + 4 * 3_600_000_000_000);
    kpi_post_records(http, &all[..cut]);
    settle(admin);
    let (status, body) = json_get(admin, "/api/v1/kpi/fulfilled_2h/at-risk?limit=20");
    assert_eq!(status, 200, "{body}");
    let orders = body["orders"].as_array().unwrap();
    assert!(!orders.is_empty(), "{body}");
    let p: Vec<f64> = orders.iter().map(|o| o["probability"].as_f64().unwrap()).collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]), "highest probability first: {p:?}");
    assert!(p.iter().all(|x| *x >= 0.93));
    let first = &orders[0];
    assert!(first["explanation"]["stage"].is_string());
    assert!(first["deadline"].is_string() && first["dimensions"]["customer.tier"].is_string());
    assert!(
        body["summary"]["headline"]
            .as_str()
            .unwrap()
            .contains("% of the orders at risk"),
        "{}",
        body["summary"]
    );
    let shipping = orders
        .iter()
        .find(|o| o["cause"]["service"] == "shipping")
        .expect("shipping behind some orders at risk");
    let services = shipping["explanation"]["services"].as_array().unwrap();
    assert!(
        services
            .iter()
            .any(|s| s["service"] == "shipping" && s["slow"].as_u64().unwrap() > 0)
    );
    assert_eq!(
        services[0]["trace_ids"][0].as_str().unwrap().len(),
        32,
        "an example trace id"
    );
    let (status, page2) = json_get(admin, "/api/v1/kpi/fulfilled_2h/at-risk?limit=20&offset=20");
    assert_eq!(status, 200);
    assert_eq!(page2["total"], body["total"]);
    // The figures reach Prometheus under their documented names.
    let (_, scrape) = common::http_get(prom, "/metrics").unwrap();
    for name in [
        "kpi_orders_resolved_total{",
        "kpi_compliance_ratio{",
        "kpi_orders_open{",
        "kpi_orders_at_risk{",
        "kpi_at_risk_share_ratio{",
        "kpi_predictions_total{",
        "kpi_prediction_lead_time_seconds_bucket{",
    ] {
        assert!(scrape.contains(name), "{name} missing from the scrape:\n{scrape}");
    }
    assert!(
        scrape.contains(r#"stage="paid""#) && scrape.contains(r#"region=""#),
        "{scrape}"
    );
    kpi_post_records(http, &all[cut..]);
    live.signal("TERM");
    assert!(live.wait_exit(Duration::from_secs(120)).success(), "{}", live.logs());
    let stdout = std::fs::read_to_string(live.dir.path().join("stdout.log")).unwrap();
    let (live_records, live_final) = outputs(&stdout);
    assert_eq!(
        live_records.len(),
        replayed_records.len(),
        "as many at-risk records live as replayed"
    );
    assert_eq!(
        live_records, replayed_records,
        "the same at-risk records, explanations included"
    );
    assert_eq!(live_final, replayed_final, "the same final metrics");
}

/// The live run of the test above, killed with `SIGKILL` half way (after a checkpoint) and started again on the same
/// storage: the second process restores the open orders and the learned model and, fed the rest, ends with exactly
/// the ground truth's KPI figures — as if the kill had not happened.
#[test]
fn a_live_run_killed_half_way_and_restarted_ends_with_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("shop.otlprec");
    let (truth, customers) = kpi_record_shop(&shop(7), Duration::from_secs(5), &rec);
    let (http, admin, prom) = (addr(), addr(), addr());
    let storage = dir.path().join("storage");
    let cfg = write_config(dir.path(), &customers, http, admin, prom, Some(&storage));
    let all = recording::read(&rec).unwrap();
    let cut = all.partition_point(|r| r.time < truth.start_unix_nano + 4 * 3_600_000_000_000);

    let mut first = Bizpilot::start_with(&[cfg.as_path()], admin, tempfile::tempdir().unwrap(), &[]);
    kpi_post_records(http, &all[..cut]);
    settle(admin);
    let (_, before) = json_get(admin, "/api/v1/kpi/fulfilled_2h/at-risk?limit=1");
    // Two checkpoints after the connector settled: the second holds everything posted.
    let n = first.metric_sum("bizpilot_connector_order_kpi_checkpoints_total", &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while first.metric_sum("bizpilot_connector_order_kpi_checkpoints_total", &[]) < n + 2.0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint\n{}", first.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    let mut second = Bizpilot::start_with(&[cfg.as_path()], admin, tempfile::tempdir().unwrap(), &[]);
    let restored = second.metric_sum("bizpilot_connector_order_kpi_restored_orders", &[]);
    assert!(restored > 10.0, "restored {restored} open orders\n{}", second.logs());
    let (_, after) = json_get(admin, "/api/v1/kpi/fulfilled_2h/at-risk?limit=1");
    assert_eq!(
        after["total"], before["total"],
        "the same orders at risk right after the restart"
    );
    kpi_post_records(http, &all[cut..]);
    second.signal("TERM");
    assert!(
        second.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        second.logs()
    );
    let stdout = std::fs::read_to_string(second.dir.path().join("stdout.log")).unwrap();
    let (_, last) = outputs(&stdout);
    let resolved = metric_points(&last, "kpi.orders.resolved");
    let count = |outcome: &str| resolved_count(&resolved, outcome);
    let k = &truth.kpi.summary;
    assert!(k.breached > 50, "{k:?}");
    assert_eq!(count("in_time") as u64, k.fulfilled_in_time);
    assert_eq!(count("breached") as u64, k.breached);
}

#[test]
fn json_lines_recordings_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "customer_id,tier,region\n", addr(), addr(), addr(), None);
    // One order, placed and delivered late, as OTLP/JSON lines (delivered line first: replay sorts them).
    let jsonl = dir.path().join("events.jsonl");
    let ev = |name: &str, t: u64| {
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{t}","eventName":"{name}","attributes":[{{"key":"order.id","value":{{"stringValue":"o-1"}}}}]}}]}}]}}]}}"#
        )
    };
    let h = 3_600_000_000_000u64;
    let t0 = 1_735_689_600_000_000_000u64;
    std::fs::write(
        &jsonl,
        [ev("order.delivered", t0 + 3 * h), ev("order.placed", t0)].join("\n"),
    )
    .unwrap();
    let (st, out, err) = kpi_run_replay(&cfg, &[&jsonl], &["--no-progress"]);
    assert!(st.success(), "{err}");
    let (_, metrics) = kpi_debug_output(&out);
    let last = metrics.last().expect("final metrics");
    let breached: i64 = metric_points(last, "kpi.orders.resolved")
        .iter()
        .filter(|p| attr(p, "outcome").and_then(|v| v["stringValue"].as_str()) == Some("breached"))
        .map(|p| int(p))
        .sum();
    assert_eq!(breached, 1, "placed, then delivered 3 h later: breached ({out})");
    // In file order the delivery comes first: the connector still applies both in event-time order.
    let (st, out_file_order, err) = kpi_run_replay(&cfg, &[&jsonl], &["--no-progress", "--order", "file"]);
    assert!(st.success(), "{err}");
    assert_eq!(
        out_file_order, out,
        "same outputs whatever the order within the lateness"
    );

    let bad = dir.path().join("bad.otlprec");
    std::fs::write(&bad, b"BZPOTLP1X\x05hello").unwrap();
    let (st, _, err) = kpi_run_replay(&cfg, &[&bad], &[]);
    assert!(!st.success());
    assert!(err.contains("unknown signal tag"), "{err}");
    let (st, _, err) = kpi_run_replay(&cfg, &[&dir.path().join("missing.otlprec")], &[]);
    assert!(!st.success());
    assert!(err.contains("missing.otlprec"), "{err}");
}
