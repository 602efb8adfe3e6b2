//! A short version of the incident evaluation (`crates/connectors/examples/incident_eval`, whose README table
//! is the full one) with looser floors: worlds generated independently of the detector, replayed through the
//! engine built from each shipped pipeline's `business_impact` config.

#[path = "../crates/connectors/examples/incident_eval/run.rs"]
mod run;
#[path = "../crates/connectors/examples/incident_eval/world.rs"]
mod world;

use run::{pipeline_config, replay, score};
use std::path::Path;
use world::{Fault, Injection, World, WorldSpec};

fn shipped() -> Vec<(String, bizpilot_connectors::impact::BusinessImpactConfig)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if p.extension().is_some_and(|x| x == "yaml") && text.contains("\n  business_impact:") {
            let cfg = pipeline_config(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.display().to_string(), cfg));
        }
    }
    assert!(out.len() >= 3, "the shipped pipelines with business_impact");
    out
}

fn injected(seed: u64, rate: f64, fault: Fault, len_s: f64) -> World {
    let mut spec = WorldSpec::healthy(seed, 600.0 + len_s + 120.0, rate);
    spec.injections.push(Injection {
        start_s: 600.0 + (seed as f64 * 3.7) % 10.0,
        len_s,
        fault,
    });
    World::generate(&spec)
}

#[test]
fn outages_are_caught_in_time_and_dated_within_an_interval() {
    for (name, cfg) in shipped() {
        let interval = cfg.incident.evaluation_interval.get().as_secs_f64();
        for (rate, fault, len, bar) in [
            (5.0, Fault::Failures(1.0), 10.0, 15.0),
            (20.0, Fault::Failures(1.0), 20.0, 15.0),
            (20.0, Fault::Failures(0.10), 240.0, 60.0),
            (20.0, Fault::Slow(10.0), 90.0, 30.0),
        ] {
            let world = injected(3, rate, fault, len);
            let s = score(&world, &replay(&cfg, &world));
            let d = s.detections[0].unwrap_or_else(|| panic!("{name}: {fault:?} {len} s at {rate}/s not detected"));
            assert!(
                d.ttd_s <= bar,
                "{name}: {fault:?} at {rate}/s detected after {} s",
                d.ttd_s
            );
            // Looser than the README's bar (one interval): the short test has one seed.
            assert!(d.start_err_s.abs() <= interval + 1.0, "{name}: start error {d:?}");
            let end = d.end_err_s.unwrap_or_else(|| panic!("{name}: {fault:?} still open"));
            assert!(end.abs() <= interval + 1.0, "{name}: end error {d:?}");
            assert_eq!(s.false_incidents, 0, "{name}: {fault:?}");
            assert!(
                s.list_equals_truth,
                "{name}: impact list: {} missing, {} extra",
                s.missing, s.extra
            );
        }
    }
}

#[test]
fn healthy_hours_raise_no_incident_and_list_every_failed_customer() {
    for (name, cfg) in shipped() {
        // 3 h at 20 checkouts/s (216,000 checkouts, ~1,000 failures in clusters of retries).
        let world = World::generate(&WorldSpec::healthy(77, 3.0 * 3600.0, 20.0));
        let s = score(&world, &replay(&cfg, &world));
        assert_eq!(s.false_incidents, 0, "{name}");
        assert!(s.list_equals_truth, "{name}: {} missing, {} extra", s.missing, s.extra);
        assert!(
            world.affected.len() > 500,
            "the world has failures: {}",
            world.affected.len()
        );
    }
}
