//! The short version of `kpi_eval --world independent` (see `examples/kpi_eval_world/world.rs`): a smaller
//! week of the independent world, with looser floors than the evaluation's. The truth comes from the world's
//! own generator, never from the connector.

#[path = "../examples/kpi_eval_world/world.rs"]
#[allow(dead_code)]
mod world;

use std::collections::HashMap;

use bizpilot_connectors::kpi::{Compiled, Engine, OrderKpiConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use world::{Emission, HOUR, SEC, TrueCause};

fn attr<'a>(r: &'a opentelemetry_proto::tonic::logs::v1::LogRecord, k: &str) -> Option<&'a str> {
    r.attributes
        .iter()
        .find(|a| a.key == k)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

#[test]
fn independent_world_flags_stage_delays_early_and_blames_only_with_evidence() {
    let sc = world::Scenario::a(3, 5.5, 40.0);
    let w = world::generate(&sc);
    let cfg = OrderKpiConfig::default();
    let mut eng = Engine::new(Compiled::new(&cfg, |id| Err(format!("no extension {id}"))).expect("config"));
    eng.record_resolutions();
    let mut actions = (0u64, 0u64);
    let mut i = 0;
    while i < w.emissions.len() {
        let window = w.emissions[i].0 / (10 * SEC);
        let (mut logs, mut spans): (Vec<_>, HashMap<&str, Vec<_>>) = (Vec::new(), HashMap::new());
        while i < w.emissions.len() && w.emissions[i].0 / (10 * SEC) == window {
            match &w.emissions[i].1 {
                Emission::Event(r) => logs.push(r.clone()),
                Emission::Span(svc, s) => spans.entry(svc).or_default().push(s.clone()),
            }
            i += 1;
        }
        eng.ingest_traces(&ExportTraceServiceRequest {
            resource_spans: spans
                .into_iter()
                .map(|(svc, v)| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(svc.into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: v,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        });
        eng.ingest_logs(&ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: logs,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        eng.advance();
        for r in eng.take_logs() {
            actions.0 += 1;
            actions.1 += u64::from(attr(&r, "kpi.action").is_some_and(|a| !a.is_empty()));
        }
        let _ = eng.take_metrics();
    }
    eng.finish();
    let res: HashMap<String, _> = eng
        .take_resolutions()
        .into_iter()
        .map(|r| (r.order_id.to_string(), r))
        .collect();
    let eligible: Vec<_> = w
        .orders
        .iter()
        .filter(|o| !o.cancelled && o.delivered.is_some())
        .collect();
    let flag = |o: &world::OrderTruth| res.get(&o.id).and_then(|r| r.flagged_at).filter(|f| *f < o.deadline);
    let flagged: Vec<_> = eligible.iter().filter(|o| flag(o).is_some()).collect();
    let tp = flagged.iter().filter(|o| o.breached).count();
    let precision = tp as f64 / flagged.len().max(1) as f64;
    let carrier: Vec<_> = eligible
        .iter()
        .filter(|o| o.breached && o.cause == TrueCause::CarrierDelay)
        .collect();
    let carrier_1h = carrier
        .iter()
        .filter(|o| flag(o).is_some_and(|f| o.deadline - f >= HOUR))
        .count();
    let carrier_named = carrier
        .iter()
        .filter(|o| {
            res.get(&o.id)
                .is_some_and(|r| r.flag_cause_stage.as_deref() == Some("shipped") && r.flag_service.is_none())
        })
        .count();
    // Flags of orders the carrier stop delayed, and how many of those breached.
    let carrier_flags: Vec<_> = flagged
        .iter()
        .filter(|o| o.touched_by == Some(TrueCause::CarrierDelay))
        .collect();
    let carrier_precision =
        carrier_flags.iter().filter(|o| o.breached).count() as f64 / carrier_flags.len().max(1) as f64;
    let named: Vec<_> = flagged
        .iter()
        .filter_map(|o| Some((o, res.get(&o.id)?.flag_service.clone()?)))
        .collect();
    let unsupported = named
        .iter()
        .filter(|(o, svc)| {
            let f = flag(o).unwrap_or(0);
            let entry = o.stage_entry_at(f);
            !o.evidence_overlaps(svc, f) && !w.incidents.iter().any(|(s, a, b)| s == svc && *a <= f && *b >= entry)
        })
        .count();
    eprintln!(
        "flags {}, precision {precision:.3}; carrier breaches {}, ≥ 1 h ahead {carrier_1h}, cause shipped {carrier_named}, carrier flags {} of which breached {carrier_precision:.3}; services named {}, unsupported {unsupported}; at-risk records {} with an action {}",
        flagged.len(),
        carrier.len(),
        carrier_flags.len(),
        named.len(),
        actions.0,
        actions.1
    );
    assert!(
        carrier.len() >= 5,
        "the carrier delay breaches orders: {}",
        carrier.len()
    );
    assert!(precision >= 0.75, "precision {precision}");
    // Lead on a carrier stop nobody can see the end of: held parcels are flagged once the stop's expected
    // remaining length (from the slowdowns seen so far) outlasts their slack, at a probability that comes true
    // (the floor was 0.6 of the breaches ≥ 1 h ahead while stalled parcels were predicted from their real age and
    // the calibration learned the stop's breaches before its successes: flags that came true 58–80 % of the time,
    // see docs/kpi-prediction.md). What is held now: some are flagged an hour ahead, and the carrier's flags are
    // right.
    assert!(carrier_1h >= 1, "carrier ≥ 1 h ahead: {carrier_1h}");
    assert!(
        carrier_flags.len() >= carrier.len() / 2 && carrier_precision >= 0.8,
        "carrier flags {} of which breached {carrier_precision}",
        carrier_flags.len()
    );
    assert!(
        carrier_named as f64 >= 0.6 * carrier.len() as f64,
        "carrier cause: {carrier_named}"
    );
    assert!(
        unsupported as f64 <= 0.1 * named.len().max(1) as f64,
        "unsupported blame {unsupported}"
    );
    assert!(
        actions.0 > 0 && actions.0 == actions.1,
        "every at-risk order carries an action: {actions:?}"
    );
}
