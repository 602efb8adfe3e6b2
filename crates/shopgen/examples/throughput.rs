//! Generation speed and payload shape: `cargo run --release -p bizpilot-shopgen --example throughput [orders/s] [secs]`.
//!
//! Streams a run without truth, packs traces into requests of 512 spans and encodes them, and reports spans per
//! second for generation alone and with packing into encoded requests, bytes and attributes per span.

use bizpilot_core::config::Duration;
use bizpilot_shopgen::{EmissionKind, Shop, ShopConfig, TraceBatcher};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000.0);
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut cfg = ShopConfig {
        orders_per_sec: rate,
        duration: Duration::from_secs(secs),
        customers: 200_000,
        ..Default::default()
    };
    cfg.fulfilment.enabled = false;

    let t = Instant::now();
    let (mut spans, mut events) = (0usize, 0usize);
    for e in Shop::stream(&cfg).expect("config") {
        match e.kind {
            EmissionKind::Trace(t) => spans += t.spans.len(),
            EmissionKind::Event(_) => events += 1,
        }
    }
    let gen_s = t.elapsed().as_secs_f64();
    println!(
        "generate: {spans} spans, {events} events in {gen_s:.2}s = {:.0} spans/s",
        spans as f64 / gen_s
    );

    let t = Instant::now();
    let mut batcher = TraceBatcher::new(512);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let (mut bytes, mut requests, mut n) = (0usize, 0usize, 0usize);
    let mut first = None;
    for e in Shop::stream(&cfg).expect("config") {
        if let EmissionKind::Trace(t) = e.kind {
            n += t.spans.len();
            batcher.push(&t, &mut out);
            for r in out.drain(..) {
                bytes += r.len();
                requests += 1;
                first.get_or_insert(r);
            }
        }
    }
    if let Some(r) = batcher.finish() {
        bytes += r.len();
        requests += 1;
    }
    let all_s = t.elapsed().as_secs_f64();
    let attrs = first.map(|r| {
        let req = ExportTraceServiceRequest::decode(r.as_slice()).expect("valid protobuf");
        let spans: Vec<_> = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        spans.iter().map(|s| s.attributes.len()).sum::<usize>() as f64 / spans.len() as f64
    });
    println!(
        "generate + pack into {requests} requests of 512 spans: {:.0} spans/s; {:.0} bytes/span, {:.1} attributes/span",
        n as f64 / all_s,
        bytes as f64 / n as f64,
        attrs.unwrap_or_default()
    );
}
