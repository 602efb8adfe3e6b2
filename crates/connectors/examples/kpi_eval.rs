//! Evaluation of the `order_kpi` connector's breach predictor against shopgen's ground truth.
//!
//! ```text
//! cargo run --release -p bizpilot-connectors --example kpi_eval                # a week, the default injections
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --days 2 --rate 0.02
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --record week.otlprec   # also record it
//! cargo run --release -p bizpilot-connectors --example kpi_eval -- --stress 2000000       # memory bound
//! ```
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
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
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
        attributes: vec![KeyValue {
            key: "order.id".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("o-{id}"))),
            }),
            ..Default::default()
        }],
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
