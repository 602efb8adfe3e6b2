//! Fixtures shared by the criterion benches in the top-level `benches/` folder: the shop payload (shopgen, in the
//! OpenTelemetry Demo's conventions, 512 spans per request) and the shipped pipelines' component configs, read
//! from `pipelines/` so that the benches measure what ships.

use bizpilot_core::config::Duration;
use bizpilot_shopgen::{EmissionKind, Shop, ShopConfig, TraceBatcher};
use bytes::Bytes;

/// Spans per export request, as the load generator sends by default.
pub const SPANS_PER_REQUEST: usize = 512;

const DEMO_PIPELINE: &str = include_str!("../../../pipelines/opentelemetry-demo.yaml");

/// `n` encoded `ExportTraceServiceRequest`s of exactly [`SPANS_PER_REQUEST`] spans each, in arrival order.
pub fn shop_requests(n: usize) -> Vec<Bytes> {
    let mut cfg = ShopConfig {
        orders_per_sec: 20.0,
        customers: 50_000,
        duration: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    cfg.fulfilment.enabled = false;
    let mut b = TraceBatcher::new(SPANS_PER_REQUEST);
    let mut out = Vec::new();
    for e in Shop::stream(&cfg).expect("valid shop config") {
        if let EmissionKind::Trace(t) = &e.kind {
            b.push(t, &mut out);
            if out.len() >= n {
                break;
            }
        }
    }
    out.truncate(n);
    out.into_iter().map(Bytes::from).collect()
}

fn section(pipeline: &str, kind: &str, id: &str, drop: &[&str]) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(pipeline).expect("pipeline YAML");
    let mut v = doc[kind][id].clone();
    if let Some(m) = v.as_mapping_mut() {
        for k in drop {
            m.remove(*k);
        }
    }
    serde_yaml::to_string(&v).expect("YAML")
}

/// The `enrich/opentelemetry-demo` processor config of `pipelines/opentelemetry-demo.yaml` (the demo preset).
pub fn demo_enrich_yaml() -> String {
    section(DEMO_PIPELINE, "processors", "enrich/opentelemetry-demo", &[])
}

/// The `business_impact` connector config of `pipelines/opentelemetry-demo.yaml`, without the `business_state`
/// extension (the value of a failed checkout then comes from the span alone).
pub fn impact_yaml() -> serde_yaml::Value {
    let s = section(DEMO_PIPELINE, "connectors", "business_impact", &["state"]);
    serde_yaml::from_str(&s).expect("YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_load() {
        let r = shop_requests(2);
        assert_eq!(r.len(), 2);
        let t = bizpilot_core::Traces::from_bytes(r[0].clone()).unwrap();
        assert_eq!(t.items(), SPANS_PER_REQUEST);
        assert!(demo_enrich_yaml().contains("rules"));
        assert!(impact_yaml()["operations"].is_sequence());
    }
}
