//! Evaluation of the `business_impact` connector's incident detection against worlds with known incidents.
//!
//! ```text
//! cargo run --release -p bizpilot-connectors --example incident_eval                 # every shipped pipeline
//! cargo run --release -p bizpilot-connectors --example incident_eval -- --seeds 5 --healthy-hours 24
//! cargo run --release -p bizpilot-connectors --example incident_eval -- --pipeline pipelines/gateway.yaml
//! ```
//!
//! The worlds ([`world`], written independently of the detector) are checkout traffic of the OpenTelemetry
//! Demo's shape: Poisson arrivals with a ±50 % rate swing, a 0.5 % failure baseline with clusters of 2–3
//! retries, and after 20 minutes of healthy traffic one injected incident (its start offset random within
//! an evaluation interval): a total outage of 10 s, 20 s or 60 s at 5 and 20 checkouts/s; a partial failure of
//! 10 %, 25 % or 50 % for 5 minutes at 20 checkouts/s (and 10 % at 5/s); checkouts 10× slower for 2 minutes;
//! then 5 minutes of healthy traffic. Plus `--healthy-hours` of healthy traffic at 20 checkouts/s. Each world
//! is replayed at full speed, one OTLP request per second of event time, through the engine built from each
//! shipped pipeline's `business_impact` config.
//!
//! Figures: time to detect (event time from the first affected checkout to the incident's open), start and end
//! error against the truth, false incidents (matching no injection), and whether the impact list equals the
//! set of customers with a failed checkout exactly. Wall-clock figures (provisional figures' delay, closing
//! on idle input) are measured end to end in `tests/incident_e2e.rs`.

mod run;
mod world;

use std::time::Instant;

use run::{Scored, pipeline_config, replay, score};
use world::{Fault, Injection, World, WorldSpec};

struct Scenario {
    name: String,
    rate: f64,
    fault: Fault,
    len_s: f64,
}

fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for rate in [5.0, 20.0] {
        for len in [10.0, 20.0, 60.0] {
            v.push(Scenario {
                name: format!("total outage {len:.0} s at {rate:.0}/s"),
                rate,
                fault: Fault::Failures(1.0),
                len_s: len,
            });
        }
    }
    for (p, rate) in [(0.10, 20.0), (0.25, 20.0), (0.50, 20.0), (0.10, 5.0)] {
        v.push(Scenario {
            name: format!("{:.0} % failures 5 min at {rate:.0}/s", p * 100.0),
            rate,
            fault: Fault::Failures(p),
            len_s: 300.0,
        });
    }
    for rate in [20.0, 5.0] {
        v.push(Scenario {
            name: format!("10× slower 2 min at {rate:.0}/s"),
            rate,
            fault: Fault::Slow(10.0),
            len_s: 120.0,
        });
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let seeds: u64 = arg("--seeds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let healthy_hours: f64 = arg("--healthy-hours").and_then(|s| s.parse().ok()).unwrap_or(24.0);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pipelines: Vec<String> = match arg("--pipeline") {
        Some(p) => vec![p],
        None => {
            let mut v: Vec<String> = std::fs::read_dir(root.join("pipelines"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\n  business_impact:")))
                        .map(|p| format!("pipelines/{}", p.file_name().unwrap_or_default().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }
    };
    println!(
        "| pipeline | world | detected | time to detect (median / max) | start error (max) | end error (max) | false incidents | impact list = affected |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let began = Instant::now();
    for p in &pipelines {
        let text = match std::fs::read_to_string(root.join(p)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{p}: {e}");
                continue;
            }
        };
        let cfg = match pipeline_config(&text) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{p}: {e}");
                continue;
            }
        };
        for sc in scenarios() {
            let mut all: Vec<Scored> = Vec::new();
            for seed in 0..seeds {
                let mut spec = WorldSpec::healthy(seed * 7919 + 1, 1200.0 + sc.len_s + 300.0, sc.rate);
                let offset = (seed as f64 * 3.7) % 10.0;
                spec.injections.push(Injection {
                    start_s: 1200.0 + offset,
                    len_s: sc.len_s,
                    fault: sc.fault,
                });
                let world = World::generate(&spec);
                all.push(score(&world, &replay(&cfg, &world)));
            }
            print_row(p, &sc.name, &all);
        }
        let spec = WorldSpec::healthy(424_242, healthy_hours * 3600.0, 20.0);
        let world = World::generate(&spec);
        let s = score(&world, &replay(&cfg, &world));
        println!(
            "| {p} | {healthy_hours} h healthy at 20/s ({} checkouts, {} failed customers) | – | – | – | – | {} | {} |",
            world.checkouts.len(),
            world.affected.len(),
            s.false_incidents,
            yes(s.list_equals_truth, &s)
        );
    }
    eprintln!("evaluated in {:.1} s", began.elapsed().as_secs_f64());
}

fn yes(ok: bool, s: &Scored) -> String {
    if ok {
        "yes".into()
    } else {
        format!("no ({} missing, {} extra)", s.missing, s.extra)
    }
}

fn print_row(pipeline: &str, name: &str, all: &[Scored]) {
    let dets: Vec<_> = all
        .iter()
        .filter_map(|s| s.detections.first().copied().flatten())
        .collect();
    let mut ttd: Vec<f64> = dets.iter().map(|d| d.ttd_s).collect();
    ttd.sort_by(f64::total_cmp);
    let med = ttd.get(ttd.len() / 2).copied();
    let max = ttd.last().copied();
    let start = dets
        .iter()
        .map(|d| d.start_err_s.abs())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let open = dets.iter().filter(|d| d.end_err_s.is_none()).count();
    let end = dets
        .iter()
        .filter_map(|d| d.end_err_s.map(f64::abs))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let fals: usize = all.iter().map(|s| s.false_incidents).sum();
    let list = all.iter().all(|s| s.list_equals_truth);
    let f = |x: Option<f64>| x.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "–".into());
    println!(
        "| {pipeline} | {name} | {}/{} | {} / {} | {} | {}{} | {fals} | {} |",
        dets.len(),
        all.len(),
        f(med),
        f(max),
        f(start),
        f(end),
        if open > 0 {
            format!(" ({open} still open)")
        } else {
            String::new()
        },
        if list {
            "yes".to_string()
        } else {
            let (m, e): (usize, usize) = all.iter().fold((0, 0), |a, s| (a.0 + s.missing, a.1 + s.extra));
            format!("no ({m} missing, {e} extra)")
        }
    );
}
