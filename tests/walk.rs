//! "One walk per request" (issue #15), through the embedded default pipeline (`bizpilot run` without
//! `--config`: pipelines/opentelemetry-demo.yaml) in the real binary, fed shop traffic over OTLP/HTTP: business
//! events first (so that the join finds every order and holds nothing), then the traces, one request at a time;
//! and the other way round (traces first: the join holds every span whose order is unknown, kept encoded, and
//! releases them when the events arrive).
//! The process's self-telemetry `bizpilot_pdata_work_total{signal="traces", op}` counts what the stages did with
//! the spans (core::pdata::Work), and the test holds them to the budget of the pipeline
//! `memory_limiter ► redaction ► enrich/opentelemetry-demo ► enrich/join ► batch ► business_impact`:
//!
//! | op | budget | who |
//! |---|---|---|
//! | validate | 1 per request | the receiver |
//! | decode, encode | 0 | nobody: every stage reads and rewrites through views |
//! | walk | 3 per request + 1 per batch | redaction, the enrich rules, the join (holding spans in the same walk); business_impact once per batch |
//! | copy | at most 3 per request (+ 1 per release) | redaction, enrich, the join: each writes a new encoding only when it changed a span; the join's release writes the released spans' request |
//!
//! A stage that adds a walk, a copy, a decode or an encode per request fails it.

mod common;

use bizpilot_shopgen::{Shop, ShopConfig, pack_events, pack_traces_encoded};
use common::{Bizpilot, free_addr, free_port, post_accepted};
use prost::Message;
use std::time::{Duration, Instant};

const OPS: [&str; 5] = ["validate", "decode", "encode", "walk", "copy"];

/// The binary with the embedded default pipeline, and its OTLP/HTTP address.
fn start() -> (Bizpilot, std::net::SocketAddr) {
    let (grpc, http, admin, prom) = (free_port(), free_addr(), free_addr(), free_addr());
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT".to_string(), format!("127.0.0.1:{grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT".to_string(), http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT".to_string(), admin.to_string()),
        ("BIZPILOT_PROMETHEUS_ENDPOINT".to_string(), prom.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (
        Bizpilot::start_with(&[], admin, tempfile::tempdir().unwrap(), &env),
        http,
    )
}

fn work(b: &Bizpilot, op: &str) -> u64 {
    b.metric_sum(
        "bizpilot_pdata_work_total",
        &["signal=\"traces\"", &format!("op=\"{op}\"")],
    ) as u64
}

fn impact_spans(b: &Bizpilot) -> u64 {
    b.metric_sum(
        "bizpilot_connector_accepted_spans_total",
        &["connector=\"business_impact\""],
    ) as u64
}

#[test]
fn the_default_pipeline_walks_each_traces_request_within_its_budget() {
    let (b, http) = start();

    let shop: ShopConfig = serde_yaml::from_str("seed: 5\nduration: 2m\norders_per_sec: 2\ncustomers: 2000").unwrap();
    let workload = Shop::generate(&shop).unwrap();
    for req in pack_events(workload.events(), 1000) {
        post_accepted(http, "/v1/logs", &req.encode_to_vec());
    }
    let requests = pack_traces_encoded(workload.traces(), 512);
    assert!(requests.len() >= 5, "{} requests", requests.len());
    let before: Vec<u64> = OPS.iter().map(|op| work(&b, op)).collect();
    let mut spans = impact_spans(&b);
    let mut batches = 0u64;
    for (i, req) in requests.iter().enumerate() {
        let n = bizpilot_core::Traces::from_bytes(req.clone().into()).unwrap().items() as u64;
        post_accepted(http, "/v1/traces", req);
        // Each request reaches business_impact on its own (the batch processor's timeout passes before the next).
        let deadline = Instant::now() + Duration::from_secs(20);
        while impact_spans(&b) < spans + n {
            assert!(
                Instant::now() < deadline,
                "request {i} did not reach business_impact\n{}",
                b.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        spans += n;
        batches += 1;
    }
    let got: Vec<u64> = OPS.iter().zip(&before).map(|(op, b0)| work(&b, op) - b0).collect();
    let n = requests.len() as u64;
    eprintln!(
        "{n} requests, {batches} batches: validate {}, decode {}, encode {}, walk {}, copy {}",
        got[0], got[1], got[2], got[3], got[4]
    );
    assert_eq!(got[0], n, "one validating walk per request");
    assert_eq!((got[1], got[2]), (0, 0), "no decode, no encode");
    assert_eq!(got[3], 3 * n + batches, "walks");
    assert!(got[4] <= 3 * n, "copies: {}", got[4]);
}

/// Traces before their business events, as the load harness sends them (it sends no events at all): the join
/// holds every span whose order is unknown, on the encoding, and releases them when the events arrive. Nothing
/// is decoded nor encoded on the way: the held spans are kept encoded and the released ones written once.
#[test]
fn spans_held_for_their_orders_are_never_decoded() {
    let (b, http) = start();
    let shop: ShopConfig = serde_yaml::from_str("seed: 6\nduration: 1m\norders_per_sec: 2\ncustomers: 2000").unwrap();
    let workload = Shop::generate(&shop).unwrap();
    let requests = pack_traces_encoded(workload.traces(), 512);
    let total: u64 = requests
        .iter()
        .map(|r| bizpilot_core::Traces::from_bytes(r.clone().into()).unwrap().items() as u64)
        .sum();
    let before: Vec<u64> = OPS.iter().map(|op| work(&b, op)).collect();
    let spans0 = impact_spans(&b);
    for req in &requests {
        post_accepted(http, "/v1/traces", req);
    }
    // Spans of unknown orders wait (the window is 30 s): not all arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.metric_sum("bizpilot_processor_enrich_held_spans_total", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "nothing held\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    for req in pack_events(workload.events(), 1000) {
        post_accepted(http, "/v1/logs", &req.encode_to_vec());
    }
    let deadline = Instant::now() + Duration::from_secs(25);
    while impact_spans(&b) < spans0 + total {
        assert!(Instant::now() < deadline, "held spans were not released\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: Vec<u64> = OPS.iter().zip(&before).map(|(op, b0)| work(&b, op) - b0).collect();
    let n = requests.len() as u64;
    eprintln!(
        "{n} requests, {total} spans: validate {}, decode {}, encode {}, walk {}, copy {}",
        got[0], got[1], got[2], got[3], got[4]
    );
    assert_eq!(got[0], n, "one validating walk per request");
    assert_eq!((got[1], got[2]), (0, 0), "no decode, no encode");
}
