//! Evaluation of the `order_kpi` connector's breach predictor against shopgen's ground truth.
//!
//! ```text
//! cargo run --release -p bizpilot-connectors --example kpi_eval                # a week, the default injections
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --days 2 --rate 0.02
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --record week.otlprec   # also record it
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --stress 2000000       # memory bound
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --world independent --variant b --seed 11
//! ```
//!
//! `--world independent` runs the world of `kpi_eval_world/world.rs` instead (its own generator and truth,
//! see there; `--variant a` is the one the model was developed on, `b` and `c` are held out — `c` also changes the
//! stage-duration distributions), and reports lead-time
//! recall per true cause, precision inside and outside incidents, calibration (ECE, Brier, reliability table)
//! of hourly predictions, cause accuracy, and services named without overlapping evidence.
//!
//! The workload: `--days` of checkout sessions at `--rate` orders per second (Poisson), fulfilment as shopgen's
//! default (paid → shipped 1–8 h, shipped → delivered 4–12 h, 1 % cancelled; deadline 24 h after placing), then
//! 48 h of tail so that every order resolves, with
//! - a **shipping slowdown** from hour `--slow-start` to the end: orders paid from then on have a slow
//!   ShipOrder span (about 4 s instead of 5–40 ms) and ship `--slow-extra` later (default 10–20 h);
//! - a **payment outage** of `--outage-len` minutes from hour `--outage-start`: 90 % of checkout attempts fail
//!   (Charge ERROR); 80 % of those customers retry the same order 6–16 h later (the others give up and the
//!   order is cancelled);
//! - arrival noise: 1 % duplicate traces, 5 % of emissions out of order by up to 10 s, 20 % of events after
//!   their spans by up to 30 s, 0.2 % late by 1–4 min (all within `allowed_lateness: 5m`).
//!
//! Emissions are fed in arrival order, one OTLP request per signal per second of arrival time (what an SDK's
//! batch exporter sends), straight into the connector's engine. The figures compare the engine's flags with
//! the ground truth: precision and recall of breach predictions over the orders the truth counts (eligible),
//! median lead time (deadline − first flag) of the true positives, and how often the explanation names the
//! injected service (`shipping` for `shipping_slowdown` breaches, `payment` for `payment_outage` ones).

#[path = "kpi_eval_world/world.rs"]
mod world;

use std::collections::HashMap;
use std::time::Instant;

use bizpilot_connectors::kpi::recording::Writer;
use bizpilot_connectors::kpi::{Compiled, Engine, OrderKpiConfig, Outcome, Resolution};
use bizpilot_core::Signal;
use bizpilot_core::config::Duration;
use bizpilot_shopgen::config::{DurationRange, PaymentOutage, SlowShipping};
use bizpilot_shopgen::truth::{Cause, OrderKpi};
use bizpilot_shopgen::{LogBatcher, Shop, ShopConfig, TraceBatcher};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

const H: u64 = 3600;
const SEC: u64 = 1_000_000_000;

struct Args {
    days: f64,
    rate: f64,
    seed: u64,
    threshold: f64,
    slow_start: f64,
    slow_extra: (f64, f64),
    outage_start: f64,
    outage_len: f64,
    record: Option<String>,
    stress: Option<u64>,
    world: String,
    variant: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        days: 7.0,
        rate: 0.05,
        seed: 7,
        threshold: OrderKpiConfig::default().prediction.threshold,
        slow_start: 60.0,
        slow_extra: (10.0, 20.0),
        outage_start: 30.0,
        outage_len: 120.0,
        record: None,
        stress: None,
        world: "shopgen".into(),
        variant: "a".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let num = |s: Option<&String>, name: &str| -> f64 {
        s.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number"))
    };
    while i < args.len() {
        let v = args.get(i + 1);
        match args[i].as_str() {
            "--days" => a.days = num(v, "--days"),
            "--rate" => a.rate = num(v, "--rate"),
            "--seed" => a.seed = num(v, "--seed") as u64,
            "--threshold" => a.threshold = num(v, "--threshold"),
            "--slow-start" => a.slow_start = num(v, "--slow-start"),
            "--outage-start" => a.outage_start = num(v, "--outage-start"),
            "--outage-len" => a.outage_len = num(v, "--outage-len"),
            "--slow-extra" => {
                let s = v.cloned().unwrap_or_default();
                let (lo, hi) = s.split_once(',').expect("--slow-extra MIN,MAX (hours)");
                a.slow_extra = (lo.parse().expect("hours"), hi.parse().expect("hours"));
            }
            "--record" => a.record = v.cloned(),
            "--world" => a.world = v.cloned().unwrap_or_default(),
            "--variant" => a.variant = v.cloned().unwrap_or_default(),
            "--stress" => a.stress = Some(num(v, "--stress") as u64),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn secs(s: f64) -> Duration {
    Duration(std::time::Duration::from_secs_f64(s))
}

/// The evaluation workload (see the file's doc).
fn workload(a: &Args) -> ShopConfig {
    let mut cfg = ShopConfig {
        seed: a.seed,
        duration: secs(a.days * 86_400.0),
        tail: secs(48.0 * 3600.0),
        orders_per_sec: a.rate,
        customers: 50_000,
        ..Default::default()
    };
    let inj = &mut cfg.injections;
    inj.payment_outages = vec![PaymentOutage {
        start: secs(a.outage_start * 3600.0),
        end: secs(a.outage_start * 3600.0 + a.outage_len * 60.0),
        failure_probability: 0.9,
        ..Default::default()
    }];
    inj.retries.probability = 0.8;
    inj.retries.max_attempts = 2;
    inj.retries.delay = DurationRange::secs(6 * H, 16 * H);
    inj.slow_shipping = Some(SlowShipping {
        start: secs(a.slow_start * 3600.0),
        end: None,
        ship_latency: Duration::from_secs(4),
        extra_delay: DurationRange {
            min: secs(a.slow_extra.0 * 3600.0),
            max: secs(a.slow_extra.1 * 3600.0),
        },
    });
    inj.duplicates.probability = 0.01;
    inj.out_of_order.probability = 0.05;
    inj.events_after_spans.probability = 0.2;
    inj.late.probability = 0.002;
    inj.late.delay = DurationRange::secs(60, 240);
    cfg
}

fn engine(threshold: f64) -> Engine {
    let mut cfg = OrderKpiConfig::default();
    cfg.prediction.threshold = threshold;
    let compiled = Compiled::new(&cfg, |id| Err(format!("no extension {id}"))).expect("valid config");
    let mut e = Engine::new(compiled);
    e.record_resolutions();
    e
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * n as f64 / d as f64)
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { f64::NAN } else { n as f64 / d as f64 }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = parse_args();
    if let Some(n) = a.stress {
        stress(n);
        return;
    }
    if a.world == "independent" {
        independent(&a);
        return;
    }
    let cfg = workload(&a);
    println!("# order_kpi evaluation");
    println!(
        "workload: {} days at {}/s (seed {}), shipping slowdown from hour {} (+{}–{} h), payment outage at hour {} for {} min; threshold {}",
        a.days, a.rate, a.seed, a.slow_start, a.slow_extra.0, a.slow_extra.1, a.outage_start, a.outage_len, a.threshold
    );
    let started = Instant::now();
    let mut stream = Shop::stream_with_truth(&cfg).expect("valid workload");
    let mut eng = engine(a.threshold);
    let mut recorder = a.record.as_ref().map(|p| {
        Writer::new(std::io::BufWriter::new(
            std::fs::File::create(p).expect("create the recording"),
        ))
        .expect("write the recording")
    });
    let mut traces = TraceBatcher::new(512);
    let mut logs = LogBatcher::new(512);
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let mut log_reqs = Vec::new();
    let mut window: Option<u64> = None;
    let (mut spans, mut events, mut at_risk_logs) = (0u64, 0u64, 0u64);
    let mut flush = |eng: &mut Engine,
                     traces: &mut TraceBatcher,
                     logs: &mut LogBatcher,
                     encoded: &mut Vec<Vec<u8>>,
                     log_reqs: &mut Vec<_>,
                     at_risk_logs: &mut u64| {
        encoded.extend(traces.finish());
        log_reqs.extend(logs.finish());
        for b in encoded.drain(..) {
            if let Some(w) = recorder.as_mut() {
                w.write(Signal::Traces, &b).expect("write");
            }
            let req = ExportTraceServiceRequest::decode(b.as_slice()).expect("shopgen encodes valid requests");
            eng.ingest_traces(&req);
            eng.advance();
        }
        for r in log_reqs.drain(..) {
            if let Some(w) = recorder.as_mut() {
                w.write_logs(&r).expect("write");
            }
            eng.ingest_logs(&r);
            eng.advance();
        }
        *at_risk_logs += eng.take_logs().len() as u64;
        let _ = eng.take_metrics();
    };
    for em in stream.by_ref() {
        let w = em.arrival_unix_nano / SEC;
        if window.is_some_and(|x| x != w) {
            flush(
                &mut eng,
                &mut traces,
                &mut logs,
                &mut encoded,
                &mut log_reqs,
                &mut at_risk_logs,
            );
        }
        window = Some(w);
        if let Some(t) = em.as_trace() {
            spans += t.spans.len() as u64;
            traces.push(t, &mut encoded);
        } else if let Some(e) = em.as_event() {
            events += 1;
            logs.push(e, &mut log_reqs);
        }
    }
    flush(
        &mut eng,
        &mut traces,
        &mut logs,
        &mut encoded,
        &mut log_reqs,
        &mut at_risk_logs,
    );
    eng.finish();
    at_risk_logs += eng.take_logs().len() as u64;
    let elapsed = started.elapsed();
    let truth = stream.into_truth().expect("truth");
    if let Some(w) = recorder {
        let n = w.records();
        w.finish().expect("flush the recording");
        println!("recorded {n} requests to {}", a.record.as_deref().unwrap_or(""));
    }

    let res: HashMap<&str, &Resolution> = Vec::leak(eng.take_resolutions())
        .iter()
        .map(|r| (&*r.order_id, r))
        .collect();
    let kpi = &truth.kpi;
    println!(
        "\nprocessed {} spans and {} events ({} orders) in {:.1} s ({:.0} spans/s incl. generation); peak open orders {}, model sketches {} KiB, at-risk records {}",
        spans,
        events,
        kpi.summary.orders,
        elapsed.as_secs_f64(),
        spans as f64 / elapsed.as_secs_f64(),
        eng.peak_open_orders(),
        eng.model_bytes() / 1024,
        at_risk_logs
    );

    // KPI figures against the truth.
    let (mut agree, mut disagree, mut unresolved) = (0u64, 0u64, 0u64);
    for o in kpi.orders.iter().filter(|o| o.eligible) {
        match res.get(o.order_id.as_str()).map(|r| r.outcome) {
            Some(Outcome::InTime) if !o.breached => agree += 1,
            Some(Outcome::Breached) if o.breached => agree += 1,
            Some(Outcome::InTime | Outcome::Breached) => disagree += 1,
            _ => unresolved += 1,
        }
    }
    let (ok, bad) = res.values().fold((0u64, 0u64), |(a, b), r| match r.outcome {
        Outcome::InTime => (a + 1, b),
        Outcome::Breached => (a, b + 1),
        _ => (a, b),
    });
    println!("\n## KPI fulfilled_24h");
    println!("| figure | truth | order_kpi |");
    println!("|---|---|---|");
    println!(
        "| orders counted (eligible) | {} | {} |",
        kpi.summary.eligible,
        ok + bad
    );
    println!("| fulfilled in time | {} | {} |", kpi.summary.fulfilled_in_time, ok);
    println!("| breached | {} | {} |", kpi.summary.breached, bad);
    println!(
        "| compliance | {:.4} | {:.4} |",
        kpi.summary.compliance,
        ratio(ok, ok + bad)
    );
    println!("| breached by cause | {:?} | |", kpi.summary.breached_by_cause);
    println!("per-order outcome agreement: {agree} agree, {disagree} disagree, {unresolved} unresolved");

    // Predictions against the truth.
    let flagged = |o: &OrderKpi| {
        res.get(o.order_id.as_str())
            .and_then(|r| r.flagged_at)
            .filter(|&f| f < o.deadline_unix_nano)
    };
    let (mut tp, mut fp, mut fneg, mut tn) = (0u64, 0u64, 0u64, 0u64);
    let mut leads = Vec::new();
    let mut by_cause: HashMap<Cause, (u64, u64, u64, Vec<f64>, u64)> = HashMap::new();
    let mut fp_diag: std::collections::BTreeMap<(String, u64, u64), u64> = Default::default();
    let mut fp_by_cause: HashMap<String, u64> = HashMap::new();
    for o in kpi.orders.iter().filter(|o| o.eligible) {
        let f = flagged(o);
        let e = by_cause.entry(o.cause).or_default();
        match (f, o.breached) {
            (Some(f), true) => {
                tp += 1;
                let lead = (o.deadline_unix_nano - f) as f64 / 3.6e12;
                leads.push(lead);
                e.0 += 1;
                e.3.push(lead);
                let r = res.get(o.order_id.as_str());
                let expected = match o.cause {
                    Cause::ShippingSlowdown => Some("shipping"),
                    Cause::PaymentOutage => Some("payment"),
                    Cause::None => None,
                };
                if let (Some(x), Some(r)) = (expected, r) {
                    if r.flag_service.as_deref() == Some(x) {
                        e.2 += 1;
                    }
                    if r.flag_services.iter().any(|s| s == x) {
                        e.4 += 1;
                    }
                }
            }
            (Some(_), false) => {
                fp += 1;
                let c = res
                    .get(o.order_id.as_str())
                    .and_then(|r| r.flag_cause.clone())
                    .unwrap_or_default();
                *fp_by_cause
                    .entry(format!("{c} (truth cause {:?})", o.cause))
                    .or_default() += 1;
                if let Some(r) = res.get(o.order_id.as_str()) {
                    let day = (r.flagged_at.unwrap_or(0).saturating_sub(truth.start_unix_nano)) / (86_400 * SEC);
                    let p = (r.flag_probability.unwrap_or(0.0) * 100.0) as u64;
                    *fp_diag
                        .entry((r.flag_stage.clone().unwrap_or_default(), day, p))
                        .or_default() += 1;
                }
            }
            (None, true) => {
                fneg += 1;
                e.1 += 1;
            }
            (None, false) => tn += 1,
        }
    }
    println!("\n## Breach predictions (threshold {})", a.threshold);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| breaches flagged (recall) | {tp} / {} = {:.3} |",
        tp + fneg,
        ratio(tp, tp + fneg)
    );
    println!(
        "| flags that breached (precision) | {tp} / {} = {:.3} |",
        tp + fp,
        ratio(tp, tp + fp)
    );
    println!("| false alarms | {fp} ({}) |", pct(fp, tp + fp));
    println!(
        "| median lead time (deadline − first flag) | {:.2} h |",
        median(&mut leads)
    );
    println!("| true negatives | {tn} |");
    println!(
        "\n| truth cause | breaches | flagged | missed | median lead | primary cause is the injected service | explanation lists it |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut causes: Vec<_> = by_cause.into_iter().collect();
    causes.sort_by_key(|(c, _)| *c);
    for (c, (t, m, named, mut l, listed)) in causes {
        if t + m == 0 {
            continue;
        }
        let (named, listed) = match c {
            Cause::None => ("-".to_string(), "-".to_string()),
            _ => (
                format!("{named} / {t} = {}", pct(named, t)),
                format!("{listed} / {t} = {}", pct(listed, t)),
            ),
        };
        println!(
            "| {c:?} | {} | {t} | {m} | {:.2} h | {named} | {listed} |",
            t + m,
            median(&mut l)
        );
    }
    if std::env::var_os("KPI_EVAL_DIAG").is_some() {
        println!("false alarms by (stage at flag, day, probability %): {fp_diag:?}");
    }
    if !fp_by_cause.is_empty() {
        let mut v: Vec<_> = fp_by_cause.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        println!("\nfalse alarms by named cause: {v:?}");
    }
    let book = eng.book();
    let b = book.lock().expect("book");
    if let Some(v) = b.kpis.first() {
        println!(
            "\nconnector's own scoring (kpi.prediction.*): precision {:?}, recall {:?}, median lead {:?} s, scores (tp, fp, fn, tn) {:?}",
            v.precision, v.recall, v.lead_median_s, v.scores
        );
    }
    let s = eng.stats();
    println!(
        "engine: events {} (late {}, duplicate {}, out of order {}, after close {}), spans {} (late {}, duplicate {}), expired orders {}",
        s.events,
        s.events_late,
        s.events_duplicate,
        s.events_out_of_order,
        s.events_after_close,
        s.spans,
        s.spans_late,
        s.spans_duplicate,
        s.orders_expired
    );
}

/// Streams `n` synthetic orders with a 10-minute deadline and reports the state held.
fn stress(n: u64) {
    use bizpilot_business::attrs::kv_str;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let mut cfg = OrderKpiConfig::default();
    cfg.kpis[0].deadline = Duration::from_secs(600);
    cfg.evaluation_interval = Duration::from_secs(10);
    cfg.metrics_interval = Duration::from_secs(60);
    cfg.allowed_lateness = Duration::from_secs(5);
    cfg.max_order_age = Duration::from_secs(3600);
    cfg.closed_memory = Duration::from_secs(60);
    let mut e = Engine::new(Compiled::new(&cfg, |_| Err(String::new())).expect("config"));
    let ev = |name: &str, id: u64, t: u64| LogRecord {
        time_unix_nano: t,
        event_name: name.into(),
        attributes: vec![kv_str("order.id", format!("o-{id}"))],
        ..Default::default()
    };
    let start = 1_735_689_600 * SEC;
    let started = Instant::now();
    let mut peak = (0usize, 0usize, 0usize, 0usize);
    let mut pending: std::collections::BTreeMap<u64, Vec<LogRecord>> = Default::default();
    let step = 10_000_000; // an order every 10 ms: 100 orders/s
    for i in 0..n {
        let t = start + i * step;
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        pending.entry(t).or_default().push(ev("order.placed", i, t));
        let paid = t + 5 * SEC + h % 60 * SEC;
        pending.entry(paid).or_default().push(ev("order.paid", i, paid));
        if h % 50 != 0 {
            // 2 % never progress (expire after max_order_age).
            let shipped = paid + 60 * SEC + h % 240 * SEC;
            pending
                .entry(shipped)
                .or_default()
                .push(ev("order.shipped", i, shipped));
            let delivered = shipped + 60 * SEC + h % 300 * SEC;
            pending
                .entry(delivered)
                .or_default()
                .push(ev("order.delivered", i, delivered));
        }
        // Release everything due by now, one request per second of event time.
        if i % 100 == 99 {
            let due: Vec<u64> = pending.range(..=t).map(|(k, _)| *k).collect();
            let mut recs = Vec::new();
            for k in due {
                recs.extend(pending.remove(&k).unwrap_or_default());
            }
            e.ingest_logs(&ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: recs,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            });
            e.advance();
            let _ = e.take_logs();
            let _ = e.take_metrics();
            let (closed, orphans) = e.remembered();
            peak = (
                peak.0.max(e.open_orders()),
                peak.1.max(e.pending()),
                peak.2.max(closed),
                peak.3.max(orphans),
            );
        }
    }
    e.finish();
    println!(
        "streamed {n} orders ({:.1} M events) in {:.1} s: peak open orders {}, peak pending items {}, peak closed ids {}, peak orphan entries {}, model sketches {} KiB (fixed)",
        (n as f64 * 3.92) / 1e6,
        started.elapsed().as_secs_f64(),
        peak.0,
        peak.1,
        peak.2,
        peak.3,
        e.model_bytes() / 1024
    );
}

/// The independent world (see `kpi_eval_world/world.rs`): generation, feeding, figures against its truth.
fn independent(a: &Args) {
    use bizpilot_business::attrs::kv_str;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use world::{Emission, HOUR, TrueCause};

    let sc = match a.variant.as_str() {
        "a" => world::Scenario::a(a.seed, a.days, a.rate * 3600.0),
        "b" => world::Scenario::b(a.seed, a.days, a.rate * 3600.0),
        "c" => world::Scenario::c(a.seed, a.days, a.rate * 3600.0),
        "d" => world::Scenario::d(a.seed, a.days, a.rate * 3600.0),
        v => panic!("--variant a, b, c or d, got {v}"),
    };
    println!("# order_kpi evaluation: independent world, variant {}", a.variant);
    println!("scenario: {sc:?}; threshold {}", a.threshold);
    let started = Instant::now();
    let w = world::generate(&sc);
    let mut eng = engine(a.threshold);
    eng.record_predictions();
    let mut predictions = Vec::new();
    let step = 10 * SEC;
    let mut i = 0;
    let diag = std::env::var_os("KPI_EVAL_DIAG").is_some();
    let mut last_hour = 0;
    // At-risk records (one per order when first flagged) and how many of them carry a recommended action.
    let mut actions = (0u64, 0u64);
    let service_resource = |svc: &str| Resource {
        attributes: vec![kv_str("service.name", svc)],
        ..Default::default()
    };
    while i < w.emissions.len() {
        let window = w.emissions[i].0 / step;
        let mut logs = Vec::new();
        let mut spans: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
        while i < w.emissions.len() && w.emissions[i].0 / step == window {
            match &w.emissions[i].1 {
                Emission::Event(r) => logs.push(r.clone()),
                Emission::Span(svc, s) => spans.entry(svc).or_default().push(s.clone()),
            }
            i += 1;
        }
        if !spans.is_empty() {
            eng.ingest_traces(&ExportTraceServiceRequest {
                resource_spans: spans
                    .into_iter()
                    .map(|(svc, v)| ResourceSpans {
                        resource: Some(service_resource(svc)),
                        scope_spans: vec![ScopeSpans {
                            spans: v,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
            });
        }
        if !logs.is_empty() {
            eng.ingest_logs(&ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: logs,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            });
        }
        eng.advance();
        count_actions(&eng.take_logs(), &mut actions);
        let _ = eng.take_metrics();
        predictions.extend(eng.take_predictions());
        let hour = eng.watermark() / HOUR;
        if diag && hour != last_hour {
            last_hour = hour;
            let book = eng.book();
            let b = book.lock().expect("book");
            for v in b.kpis.iter().flat_map(|k| &k.stages) {
                if (v.rate - 1.0).abs() > 1e-9 {
                    println!(
                        "h{:.0} {} backlog {} rate {:.2} normal/h {:.1} observed/h {:.1} {:?}",
                        (hour * HOUR).saturating_sub(world::START) as f64 / HOUR as f64,
                        v.stage,
                        v.backlog,
                        v.rate,
                        v.normal_per_hour,
                        v.observed_per_hour,
                        v.action.as_ref().map(|a| &a.text)
                    );
                }
            }
        }
    }
    eng.finish();
    count_actions(&eng.take_logs(), &mut actions);
    predictions.extend(eng.take_predictions());
    let res: HashMap<String, Resolution> = eng
        .take_resolutions()
        .into_iter()
        .map(|r| (r.order_id.to_string(), r))
        .collect();
    let eligible: Vec<&world::OrderTruth> = w
        .orders
        .iter()
        .filter(|o| !o.cancelled && o.delivered.is_some())
        .collect();
    let breaches = eligible.iter().filter(|o| o.breached).count();
    println!(
        "\n{} orders ({} eligible), {} breached ({:.2} %), generated and processed in {:.1} s",
        w.orders.len(),
        eligible.len(),
        breaches,
        100.0 * breaches as f64 / eligible.len().max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    let flag = |o: &world::OrderTruth| res.get(&o.id).and_then(|r| r.flagged_at).filter(|f| *f < o.deadline);
    // Recall with lead time, by cause.
    println!("\n## Breaches flagged ahead of the deadline (lead-time recall)");
    println!("| truth cause | breaches | flagged | ≥ 1 h ahead | ≥ 4 h ahead | median lead |");
    println!("|---|---|---|---|---|---|");
    let causes = [
        TrueCause::Natural,
        TrueCause::PaymentBrownout,
        TrueCause::WarehouseBacklog,
        TrueCause::CarrierDelay,
    ];
    let row = |label: &str, set: &[&&world::OrderTruth]| {
        let n = set.len() as u64;
        let mut leads: Vec<f64> = set
            .iter()
            .filter_map(|o| flag(o).map(|f| (o.deadline - f) as f64 / HOUR as f64))
            .collect();
        let f = leads.len() as u64;
        let h1 = leads.iter().filter(|l| **l >= 1.0).count() as u64;
        let h4 = leads.iter().filter(|l| **l >= 4.0).count() as u64;
        println!(
            "| {label} | {n} | {} | {} | {} | {:.2} h |",
            frac(f, n),
            frac(h1, n),
            frac(h4, n),
            median(&mut leads)
        );
    };
    for c in causes {
        let set: Vec<_> = eligible.iter().filter(|o| o.breached && o.cause == c).collect();
        row(&format!("{c:?}"), &set);
    }
    let stage_level: Vec<_> = eligible
        .iter()
        .filter(|o| o.breached && matches!(o.cause, TrueCause::WarehouseBacklog | TrueCause::CarrierDelay))
        .collect();
    row("stage-level (backlog + carrier)", &stage_level);
    // Which of them the incident alone explains: an order with the world's median picking and transit times
    // (and the typical few minutes of payment) would have breached with the same delay. The others are
    // compound: the incident breached them only because they also drew a long pick or transit, which nobody
    // can know before it happens.
    let typical = ((sc.pick_median + sc.transit_median + 3.5 / 60.0) * HOUR as f64) as u64;
    let alone = |o: &&&world::OrderTruth| typical + o.incident_delay > o.deadline - o.placed;
    let (by_incident, compound): (Vec<_>, Vec<_>) = stage_level.iter().copied().partition(alone);
    row("— the incident's delay alone breaches a typical order", &by_incident);
    row("— compound (also a long pick or transit)", &compound);
    // The breaches the incidents, as they truly went, had made certain 1 h / 4 h ahead (see
    // `OrderTruth::determined`): the sets on which the ≥ 1 h and ≥ 4 h columns measure lead, not luck.
    for (label, lead) in [("1 h", HOUR), ("4 h", 4 * HOUR)] {
        let set: Vec<_> = stage_level
            .iter()
            .copied()
            .filter(|o| o.determined(&sc, lead))
            .collect();
        row(
            &format!("— certain {label} ahead given the incidents (short own work from then on)"),
            &set,
        );
        for c in [TrueCause::WarehouseBacklog, TrueCause::CarrierDelay] {
            let of: Vec<_> = set.iter().copied().filter(|o| o.cause == c).collect();
            row(&format!("  — of them {c:?}"), &of);
        }
    }
    let all: Vec<_> = eligible.iter().filter(|o| o.breached).collect();
    row("all", &all);

    // Precision inside and outside incidents.
    println!("\n## Precision at the threshold {}", a.threshold);
    println!("| orders | flagged | of which breached (precision) |");
    println!("|---|---|---|");
    for (label, inside) in [("touched by an incident", true), ("no incident", false)] {
        let flagged: Vec<_> = eligible
            .iter()
            .filter(|o| o.touched == inside && flag(o).is_some())
            .collect();
        let tp = flagged.iter().filter(|o| o.breached).count() as u64;
        println!("| {label} | {} | {} |", flagged.len(), frac(tp, flagged.len() as u64));
    }
    for c in &causes[1..] {
        let flagged: Vec<_> = eligible
            .iter()
            .filter(|o| o.touched_by == Some(*c) && flag(o).is_some())
            .collect();
        let tp = flagged.iter().filter(|o| o.breached).count() as u64;
        println!(
            "| touched by {c:?} | {} | {} |",
            flagged.len(),
            frac(tp, flagged.len() as u64)
        );
    }
    if diag {
        for o in eligible
            .iter()
            .filter(|o| !o.breached && flag(o).is_some())
            .step_by(10)
            .take(10)
            .chain(
                eligible
                    .iter()
                    .filter(|o| o.breached && o.cause == TrueCause::WarehouseBacklog),
            )
        {
            let r = &res[&o.id];
            println!(
                "FP touched {:?} {}; cause {:?}/{:?}",
                o.touched_by,
                timeline(o, r),
                r.flag_cause_stage,
                r.flag_service
            );
        }
    }
    if std::env::var_os("KPI_EVAL_CARRIER_FP").is_some() {
        for o in eligible
            .iter()
            .filter(|o| !o.breached && o.touched_by == Some(TrueCause::CarrierDelay) && flag(o).is_some())
        {
            println!("CFP {}", timeline(o, &res[&o.id]));
        }
    }
    let flagged_all = eligible.iter().filter(|o| flag(o).is_some()).count() as u64;
    let tp_all = eligible.iter().filter(|o| flag(o).is_some() && o.breached).count() as u64;
    println!("| all | {flagged_all} | {} |", frac(tp_all, flagged_all));

    // Calibration of the hourly predictions.
    let truth: HashMap<&str, bool> = eligible.iter().map(|o| (o.id.as_str(), o.breached)).collect();
    let mut bins = [(0u64, 0f64, 0u64); 10];
    let (mut brier, mut n) = (0.0, 0u64);
    for p in &predictions {
        let Some(&b) = truth.get(&*p.order_id) else { continue };
        let x = f64::from(p.probability);
        let k = ((x * 10.0) as usize).min(9);
        bins[k].0 += 1;
        bins[k].1 += x;
        bins[k].2 += u64::from(b);
        brier += (x - f64::from(u8::from(b))).powi(2);
        n += 1;
    }
    let ece: f64 = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|b| b.0 as f64 / n.max(1) as f64 * (b.1 / b.0 as f64 - b.2 as f64 / b.0 as f64).abs())
        .sum();
    // The reliability table of a set of predictions: per tenth of the predicted probability, how many, their
    // mean, their mean raw (uncalibrated) value and the share that breached.
    let table = |label: String, keep: &dyn Fn(&bizpilot_connectors::kpi::engine::Prediction) -> bool| {
        let mut rb = [(0u64, 0f64, 0f64, 0u64); 10];
        for p in predictions.iter().filter(|p| keep(p)) {
            let Some(&b) = truth.get(&*p.order_id) else { continue };
            let x = f64::from(p.probability);
            let k = ((x * 10.0) as usize).min(9);
            rb[k].0 += 1;
            rb[k].1 += x;
            rb[k].2 += f64::from(p.raw);
            rb[k].3 += u64::from(b);
        }
        println!("\n{label}");
        println!("| predicted | predictions | mean predicted | mean raw | breached |");
        println!("|---|---|---|---|---|");
        for (k, b) in rb.iter().enumerate().filter(|(_, b)| b.0 > 0) {
            println!(
                "| {:.1}–{:.1} | {} | {:.3} | {:.3} | {:.3} |",
                k as f64 / 10.0,
                (k + 1) as f64 / 10.0,
                b.0,
                b.1 / b.0 as f64,
                b.2 / b.0 as f64,
                b.3 as f64 / b.0 as f64
            );
        }
    };
    table(
        format!("## Calibration ({n} hourly predictions of open orders)"),
        &|_| true,
    );
    // The same, split by whether a stage on the order's way was slowed (the connector's calibration regimes).
    table("without a stage on the way slowed:".into(), &|p| !p.slowed);
    for stage in 0u8..3 {
        table(
            format!("with a stage on the way slowed, order in stage {stage}:"),
            &|p| p.slowed && p.stage == stage,
        );
    }
    let upper: Vec<_> = bins.iter().skip(1).filter(|b| b.0 > 0).collect();
    let n_upper: u64 = upper.iter().map(|b| b.0).sum();
    let ece_upper: f64 = upper
        .iter()
        .map(|b| b.0 as f64 / n_upper.max(1) as f64 * (b.1 / b.0 as f64 - b.2 as f64 / b.0 as f64).abs())
        .sum();
    println!(
        "expected calibration error (ECE) {ece:.4}, Brier score {:.4}; ECE of the {n_upper} predictions ≥ 0.1: {ece_upper:.4}",
        brier / n.max(1) as f64
    );

    // Causes: the one named at the first flag, and the one named at the latest evaluation while the order was at
    // risk (the connector re-evaluates it at every evaluation; the at-risk API shows the latest).
    for (title, latest) in [
        ("at the first flag", false),
        ("at the deadline (latest while at risk)", true),
    ] {
        fn pick(r: &Resolution, latest: bool) -> (Option<&str>, Option<&str>) {
            if latest {
                (r.last_cause_stage.as_deref(), r.last_service.as_deref())
            } else {
                (r.flag_cause_stage.as_deref(), r.flag_service.as_deref())
            }
        }
        println!("\n## Causes named for the true positives, {title}");
        println!("| truth cause | true positives | cause correct | stage and service both correct |");
        println!("|---|---|---|---|");
        let (mut all_tp, mut all_ok) = (0u64, 0u64);
        let mut confusion: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for c in causes {
            let (mut tp, mut ok, mut full) = (0u64, 0u64, 0u64);
            for o in eligible
                .iter()
                .filter(|o| o.breached && o.cause == c && flag(o).is_some())
            {
                let Some(r) = res.get(&o.id) else { continue };
                tp += 1;
                let (stage, service) = pick(r, latest);
                // The payment brown-out is a service cause (its orders are spread over hours, no stage slows);
                // the others are stage causes, with the service involved if any (and no other).
                let correct = match c {
                    TrueCause::Natural => stage.is_none() && service.is_none(),
                    TrueCause::PaymentBrownout => service == c.service(),
                    _ => stage == c.stage() && service.is_none_or(|s| Some(s) == c.service()),
                };
                ok += u64::from(correct);
                if diag && !correct {
                    println!("WRONG {c:?} {}: stage {stage:?} service {service:?}", timeline(o, r));
                }
                let both = correct && c.service().is_none_or(|s| service == Some(s));
                full += u64::from(both);
                let label = format!("stage {} / service {}", stage.unwrap_or("-"), service.unwrap_or("-"));
                *confusion.entry((format!("{c:?}"), label)).or_default() += 1;
            }
            all_tp += tp;
            all_ok += ok;
            println!("| {c:?} | {tp} | {} | {} |", frac(ok, tp), frac(full, tp));
        }
        println!("| all | {all_tp} | {} | |", frac(all_ok, all_tp));
        // Which causes are named for which true causes.
        println!("\ncauses named {title} (true positives): truth → named stage / service → orders");
        println!("| truth cause | named | orders |");
        println!("|---|---|---|");
        for ((t, n), k) in confusion {
            println!("| {t} | {n} | {k} |");
        }
    }
    // The stage-cause decision: the probability of a miss with the time slowdowns cost the order given back
    // (a stage is named below 0.5), against the truth.
    let mut decision: std::collections::BTreeMap<u8, [u64; 4]> = Default::default();
    for o in eligible.iter().filter(|o| o.breached && flag(o).is_some()) {
        let Some(r) = res.get(&o.id) else { continue };
        let Some(p0) = r.flag_without_slowdowns else { continue };
        let k = ((p0 * 10.0) as u8).min(9);
        let i = causes.iter().position(|c| *c == o.cause).unwrap_or(0);
        decision.entry(k).or_default()[i] += 1;
    }
    println!(
        "\nstage-cause decision (true positives that lost time to slowdowns): P(miss) with that time given back → truth"
    );
    println!("| P without slowdowns | natural | payment | backlog | carrier |");
    println!("|---|---|---|---|---|");
    for (k, n) in decision {
        println!(
            "| {:.1}–{:.1} | {} | {} | {} | {} |",
            f64::from(k) / 10.0,
            f64::from(k + 1) / 10.0,
            n[0],
            n[1],
            n[2],
            n[3]
        );
    }
    // Services named without evidence overlapping the order's delay.
    let (mut named, mut unsupported) = (0u64, 0u64);
    let mut examples = Vec::new();
    for o in &eligible {
        let Some(r) = res.get(&o.id) else { continue };
        let (Some(f), Some(svc)) = (flag(o), r.flag_service.as_deref()) else {
            continue;
        };
        named += 1;
        let entry = o.stage_entry_at(f);
        let own = o.evidence_overlaps(svc, f);
        let incident = w
            .incidents
            .iter()
            .any(|(s, a0, a1)| *s == svc && *a0 <= f && *a1 >= entry);
        if !own && !incident {
            unsupported += 1;
            if examples.len() < 3 {
                examples.push(format!("{} ({svc}, cause {:?})", o.id, o.cause));
            }
        }
    }
    println!(
        "\nservice named: {named} flags; without evidence overlapping the order's delay: {} {examples:?}",
        frac(unsupported, named)
    );
    println!(
        "\nat-risk records (kpi.at_risk): {}; with a recommended action (kpi.action): {}",
        actions.0,
        frac(actions.1, actions.0)
    );
    let book = eng.book();
    let b = book.lock().expect("book");
    if let Some(v) = b.kpis.first() {
        println!(
            "\nconnector's own scoring (kpi.prediction.*): precision {:?}, recall {:?}, median lead {:?} s, scores (tp, fp, fn, tn) {:?}",
            v.precision, v.recall, v.lead_median_s, v.scores
        );
        println!(
            "evaluation's: precision {}, recall {}",
            frac(tp_all, flagged_all),
            frac(
                all.iter().filter(|o| flag(o).is_some()).count() as u64,
                all.len() as u64
            )
        );
    }
}

/// Counts the `kpi.at_risk` records among `logs` (`n.0`) and those with a non-empty `kpi.action` (`n.1`).
fn count_actions(logs: &[opentelemetry_proto::tonic::logs::v1::LogRecord], n: &mut (u64, u64)) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    for r in logs
        .iter()
        .filter(|r| r.event_name == bizpilot_connectors::kpi::output::AT_RISK_EVENT)
    {
        n.0 += 1;
        let action = r.attributes.iter().find(|a| a.key == "kpi.action").and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s),
                _ => None,
            }
        });
        n.1 += u64::from(action.is_some_and(|a| !a.trim().is_empty()));
    }
}

/// An order's way through the independent world (hours from its start) and its first flag.
fn timeline(o: &world::OrderTruth, r: &Resolution) -> String {
    let h = |t: u64| (t.saturating_sub(world::START)) as f64 / world::HOUR as f64;
    format!(
        "{} placed h{:.1} paid h{:.1} shipped h{:.1} delivered h{:.1} deadline h{:.1}; flagged h{:.1} in {:?} p {:?} p0 {:?}",
        o.id,
        h(o.placed),
        h(o.paid.unwrap_or(0)),
        h(o.shipped.unwrap_or(0)),
        h(o.delivered.unwrap_or(0)),
        h(o.deadline),
        h(r.flagged_at.unwrap_or(0)),
        r.flag_stage,
        r.flag_probability,
        r.flag_without_slowdowns
    )
}

fn frac(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{n} = {:.3}", n as f64 / d as f64)
    }
}
