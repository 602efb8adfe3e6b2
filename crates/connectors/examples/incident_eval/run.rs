//! Feeds a [`World`] to the `business_impact` engine built from a pipeline's config and measures the
//! incidents it opens against the world's truth.

use std::collections::BTreeSet;

use bizpilot_business::attrs::kv_str;
use bizpilot_connectors::impact::book::IncidentKind;
use bizpilot_connectors::impact::{BusinessImpactConfig, Compiled, Engine};
use bizpilot_core::component::parse_config;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};

use super::world::{Fault, SEC, World};

/// The `business_impact` config of a pipeline file (`connectors.business_impact`), with `state` and `prices`
/// removed (the evaluation's spans carry their value).
pub fn pipeline_config(yaml: &str) -> Result<BusinessImpactConfig, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let mut node = doc
        .get("connectors")
        .and_then(|c| c.get("business_impact"))
        .cloned()
        .ok_or("no connectors.business_impact")?;
    if let Some(m) = node.as_mapping_mut() {
        m.remove("state");
        m.remove("prices");
    }
    parse_config(&node).map_err(|e| format!("{e:?}"))
}

/// The checkout span of the OpenTelemetry Demo (service `checkout`, `oteldemo.CheckoutService/PlaceOrder`),
/// with the business attributes the enrich processor would have joined.
fn span(c: &super::world::Checkout, n: u64) -> Span {
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&n.to_be_bytes());
    trace_id[8..].copy_from_slice(&c.customer.to_be_bytes());
    Span {
        trace_id,
        span_id: n.to_be_bytes().to_vec(),
        name: "oteldemo.CheckoutService/PlaceOrder".into(),
        kind: 2,
        start_time_unix_nano: c.end - c.duration,
        end_time_unix_nano: c.end,
        attributes: vec![
            kv_str("business.customer.id", format!("c{}", c.customer)),
            kv_str(
                "business.order.value",
                format!("{}.{:02}", c.cents / 100, c.cents % 100),
            ),
            kv_str("business.currency", "USD"),
            kv_str("business.customer.tier", "gold"),
        ],
        status: Some(Status {
            code: if c.failed {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Ok as i32
            },
            message: if c.failed {
                "payment gateway timeout".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An incident as the engine reported it (seconds relative to the world's start).
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: IncidentKind,
    pub start: u64,
    pub end: Option<u64>,
    pub detected: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub found: Vec<Found>,
    /// Customers listed by `GET /api/v1/impact` for checkout.
    pub listed: BTreeSet<u64>,
    pub interval_ns: u64,
}

/// Replays `world` through an engine built from `cfg`, one request per second of event time (in order), then
/// flushes it.
pub fn replay(cfg: &BusinessImpactConfig, world: &World) -> Outcome {
    let compiled = Compiled::new(cfg, None, None, None).expect("config compiles");
    let mut engine = Engine::new(compiled, "incident_eval");
    let mut batch = Vec::new();
    let mut second = world.checkouts.first().map(|c| c.end / SEC).unwrap_or(0);
    for (n, c) in world.checkouts.iter().enumerate() {
        if c.end / SEC != second && !batch.is_empty() {
            engine.ingest(&request(std::mem::take(&mut batch)));
            second = c.end / SEC;
        }
        batch.push(span(c, n as u64 + 1));
    }
    if !batch.is_empty() {
        engine.ingest(&request(batch));
    }
    engine.flush();
    let book = engine.book();
    let book = book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let found = book
        .incidents()
        .filter(|i| i.operation == "checkout")
        .map(|i| Found {
            kind: i.kind,
            start: i.start,
            end: i.end,
            detected: i.detected,
        })
        .collect();
    let listed = book
        .records()
        .filter(|r| r.operation == "checkout")
        .filter_map(|r| r.customer.as_deref()?.strip_prefix('c')?.parse().ok())
        .collect();
    Outcome {
        found,
        listed,
        interval_ns: u64::try_from(cfg.incident.evaluation_interval.get().as_nanos()).unwrap_or(u64::MAX),
    }
}

/// How one injected incident was detected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Seconds from the first affected checkout to the incident's open (event time).
    pub ttd_s: f64,
    /// Incident start − true start, incident end − true end (seconds; end None while open). The true end is
    /// the later of the injection's end and the end time of the last checkout it affected (a 2-second
    /// checkout that started inside a slowdown ends after it, and event time is the spans' end).
    pub start_err_s: f64,
    pub end_err_s: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Scored {
    pub detections: Vec<Option<Detection>>,
    /// Incidents matching no injected one.
    pub false_incidents: usize,
    pub list_equals_truth: bool,
    pub missing: usize,
    pub extra: usize,
}

/// Matches found incidents to the truth: an incident of the right kind overlapping `[start, end + slack)`.
pub fn score(world: &World, out: &Outcome) -> Scored {
    let slack = 3 * out.interval_ns;
    let mut used = vec![false; out.found.len()];
    let mut detections = Vec::new();
    for t in &world.incidents {
        let kind = match t.fault {
            Fault::Failures(_) => IncidentKind::Failures,
            Fault::Slow(_) => IncidentKind::Latency,
        };
        let hit = out.found.iter().enumerate().find(|(k, f)| {
            !used[*k] && f.kind == kind && f.start < t.end + slack && f.end.is_none_or(|e| e + slack > t.start)
        });
        detections.push(hit.map(|(k, f)| {
            used[k] = true;
            let s = |ns: i128| ns as f64 / 1e9;
            Detection {
                ttd_s: s(f.detected as i128 - t.first_hit.unwrap_or(t.start) as i128),
                start_err_s: s(f.start as i128 - t.start as i128),
                end_err_s: f.end.map(|e| s(e as i128 - t.end.max(t.last_hit.unwrap_or(0)) as i128)),
            }
        }));
    }
    let missing = world.affected.difference(&out.listed).count();
    let extra = out.listed.difference(&world.affected).count();
    Scored {
        detections,
        false_incidents: used.iter().filter(|u| !**u).count(),
        list_equals_truth: missing == 0 && extra == 0,
        missing,
        extra,
    }
}
