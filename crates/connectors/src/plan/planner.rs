//! From the model ([`super::model::Observed`]) and the campaigns to the plan. The formulas are in
//! `docs/capacity-planning.md`; every figure carries its derivation and a 95 % band, or says why it has none
//! (`insufficient_data`).

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use bizpilot_core::{Currency, Money};

use super::config::{CampaignConfig, CapacityPlannerConfig, LimitConfig, StageConfig};
use super::model::{BACKGROUND, Observed, RouteStats};
use crate::otlp_out::rfc3339;

/// z of a two-sided 95 % normal interval.
const Z: f64 = 1.96;

/// A number with its 95 % band and derivation, or why it cannot be given.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Figure {
    Value {
        value: f64,
        low: f64,
        high: f64,
        derivation: String,
    },
    Insufficient {
        insufficient_data: String,
    },
}

impl Figure {
    fn new(value: f64, rel: f64, derivation: String) -> Figure {
        let rel = if rel.is_finite() { rel.max(0.0) } else { 0.0 };
        Figure::Value {
            value,
            low: (value * (1.0 - rel)).max(0.0),
            high: value * (1.0 + rel),
            derivation,
        }
    }
    fn missing(why: impl Into<String>) -> Figure {
        Figure::Insufficient {
            insufficient_data: why.into(),
        }
    }
    pub fn value(&self) -> Option<f64> {
        match self {
            Figure::Value { value, .. } => Some(*value),
            Figure::Insufficient { .. } => None,
        }
    }
    fn band(&self) -> Option<(f64, f64)> {
        match self {
            Figure::Value { low, high, .. } => Some((*low, *high)),
            Figure::Insufficient { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub step: String,
    pub occurrences: u64,
    pub errors: u64,
    pub rate_per_s: Figure,
    /// Occurrences of this step per occurrence of the previous one.
    pub conversion_from_previous: Option<Figure>,
    pub multiplier: f64,
    pub planned_rate_per_s: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutePlan {
    pub route: String,
    pub calls: u64,
    pub error_rate: Option<f64>,
    /// Calls of this route per trace entering at each step (retries included).
    pub fan_out: BTreeMap<String, f64>,
    pub multiplier: f64,
    pub rate_now: Figure,
    pub latency_mean_s: Figure,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    pub concurrency_now: Figure,
    pub rate_planned: Figure,
    pub peak_rate_planned: Figure,
    pub concurrency_planned: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadFit {
    /// Per full bucket: (calls/s, mean latency s, error rate).
    pub points: Vec<(f64, f64, f64)>,
    /// Least squares of 1/latency against rate (M/M/1-like: 1/W = μ/… falls to 0 at saturation).
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    pub r2: Option<f64>,
    /// Error rate per extra call/s (least squares), over the observed range.
    pub error_slope: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    /// Load of this service at saturation, as a multiple of today's (today's mix).
    pub multiple_of_today: f64,
    /// The campaign's load at saturation, as a fraction of the campaign (< 1: saturates during it).
    pub fraction_of_campaign: f64,
    /// The funnel step driving most of the service's calls, and its rate per hour at saturation.
    pub step: Option<String>,
    pub step_per_hour_at_saturation: Option<f64>,
    pub sentence: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub service: String,
    pub replicas_now: Option<u32>,
    pub replicas_source: String,
    /// Calls, calls/s and busy share per replica seen.
    pub replicas_seen: Vec<ReplicaSeen>,
    pub rate_now: Figure,
    pub concurrency_now: Figure,
    pub rate_planned: Figure,
    pub peak_rate_planned: Figure,
    pub concurrency_planned: Figure,
    pub capacity_per_replica: Figure,
    pub capacity_source: String,
    pub utilization_now: Figure,
    pub headroom_ratio: Figure,
    pub utilization_planned: Figure,
    pub required_replicas: Figure,
    pub saturation: Option<Saturation>,
    pub load: LoadFit,
    pub routes: Vec<RoutePlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSeen {
    pub replica: String,
    pub calls: u64,
    pub rate_per_s: f64,
    pub concurrency: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: String,
    pub orders_per_hour_now: Figure,
    pub orders_per_hour_planned: Figure,
    pub staff_now: Option<u32>,
    pub staff_needed: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignPlan {
    pub name: String,
    pub window_start: Option<String>,
    pub window_seconds: Option<f64>,
    pub step_multipliers: BTreeMap<String, f64>,
    pub background_multiplier: f64,
    pub orders_per_hour_now: Figure,
    pub orders_per_hour_planned: Figure,
    pub orders_in_window: Option<Figure>,
    pub average_order_value: Option<Money>,
    pub revenue_per_hour_planned: Option<Money>,
    pub services: Vec<ServicePlan>,
    pub first_to_saturate: Option<String>,
    pub summary: String,
    pub fulfilment: Vec<StagePlan>,
    /// Problems with the campaign itself (e.g. no orders observed for a revenue target).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObservedSummary {
    pub from: String,
    pub to: String,
    pub seconds: f64,
    pub spans: u64,
    pub calls: u64,
    pub traces_attributed: u64,
    pub traces_pending: usize,
    pub late_spans: u64,
    pub dropped_routes: u64,
}

/// The plan: what `GET /api/v1/plan` returns and `bizpilot plan --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub connector: String,
    pub target_utilization: f64,
    pub observed: ObservedSummary,
    pub funnel: Vec<StepPlan>,
    pub campaigns: Vec<CampaignPlan>,
}

/// Least squares y = a + b x; (a, b, r²).
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let r2 = if syy > 0.0 { (sxy * sxy) / (sxx * syy) } else { 0.0 };
    Some((a, b, r2))
}

/// Relative half-width of the 95 % band of a mean of `n` durations (their coefficient of variation `cv`).
fn mean_rel(n: u64, cv: f64) -> f64 {
    Z * cv / (n as f64).sqrt()
}

/// Relative half-width of a Poisson count of `n`.
fn count_rel(n: u64) -> f64 {
    Z / (n.max(1) as f64).sqrt()
}

fn cv_of(s: &RouteStats) -> f64 {
    if s.calls == 0 {
        return 0.0;
    }
    let n = s.calls as f64;
    let mean = s.busy_ns as f64 / 1e9 / n;
    let var = (s.sum_sq / n - mean * mean).max(0.0);
    if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
}

struct Multipliers {
    steps: Vec<f64>,
    background: f64,
    problems: Vec<String>,
    aov: Option<Money>,
}

fn multipliers(c: &CampaignConfig, cfg: &CapacityPlannerConfig, o: &Observed, orders: Option<usize>) -> Multipliers {
    let n = cfg.steps.len();
    let mut problems = Vec::new();
    let t = c.traffic.as_ref().and_then(|g| g.multiplier().ok()).unwrap_or(1.0);
    let mut m = vec![t; n];
    let mut bg = t;
    if let (Some(g), Some(oi)) = (&c.conversion, orders) {
        let x = g.multiplier().unwrap_or(1.0);
        for v in m.iter_mut().skip(oi) {
            *v *= x;
        }
    }
    for (name, g) in &c.steps {
        if let Some(i) = cfg.steps.iter().position(|s| &s.name == name) {
            let x = g.multiplier().unwrap_or(1.0);
            for v in m.iter_mut().skip(i) {
                *v *= x;
            }
        }
    }
    let mut aov = None;
    let per_hour_now = |i: usize| {
        o.steps
            .get(i)
            .map(|s| s.0 as f64 / o.seconds.max(1e-9) * 3600.0)
            .unwrap_or(0.0)
    };
    let revenue = c.revenue().and_then(Result::ok);
    let target = match (c.orders_per_hour, &revenue, orders) {
        (Some(x), _, Some(_)) => Some(x),
        (None, Some(r), Some(_)) => {
            let total = o.order_value.get(r.currency());
            if o.valued_orders == 0 || total.is_zero() {
                problems.push(format!(
                    "revenue_per_hour: no order value in {} observed on the orders step (attribute {}); cannot turn revenue into orders",
                    r.currency(),
                    cfg.value_attribute
                ));
                None
            } else {
                let avg = total.nanos() / i128::from(o.valued_orders);
                aov = bizpilot_business::amount::money_from_nanos(avg, r.currency()).ok();
                Some(r.nanos() as f64 / avg as f64)
            }
        }
        _ => None,
    };
    if let (Some(target), Some(oi)) = (target, orders) {
        let now = per_hour_now(oi);
        let cur = m.get(oi).copied().unwrap_or(1.0) * now;
        if now <= 0.0 {
            problems.push(format!(
                "no occurrences of the orders step {:?} observed: an orders or revenue target cannot be scaled from today",
                cfg.steps.get(oi).map(|s| s.name.as_str()).unwrap_or("")
            ));
        } else {
            let r = target / cur;
            if c.traffic.is_some() {
                for v in m.iter_mut().skip(oi) {
                    *v *= r;
                }
            } else {
                for v in m.iter_mut() {
                    *v *= r;
                }
                bg *= r;
            }
        }
    }
    Multipliers {
        steps: m,
        background: bg,
        problems,
        aov,
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// Computes the plan.
pub fn plan(connector: &str, cfg: &CapacityPlannerConfig, o: &Observed) -> Plan {
    let secs = o.seconds;
    let enough_time = secs >= 1.0;
    let orders = cfg
        .orders_step_name()
        .and_then(|n| cfg.steps.iter().position(|s| s.name == n));
    let step_name = |e: u16| -> String {
        if e == BACKGROUND {
            "(no step)".into()
        } else {
            cfg.steps
                .get(usize::from(e))
                .map(|s| s.name.clone())
                .unwrap_or_default()
        }
    };
    let observed = ObservedSummary {
        from: rfc3339(o.from_ns),
        to: rfc3339(o.to_ns),
        seconds: secs,
        spans: o.counters.spans,
        calls: o.counters.calls,
        traces_attributed: o.traces.values().sum(),
        traces_pending: o.pending_traces,
        late_spans: o.counters.late_spans,
        dropped_routes: o.counters.dropped_routes,
    };
    let too_short = || Figure::missing(format!("observed only {secs:.1} s of spans (need at least 1 s)"));
    let rate_fig = |n: u64, what: &str| -> Figure {
        if !enough_time {
            too_short()
        } else if n < cfg.min_calls {
            Figure::missing(format!("only {n} {what} observed (min_calls = {})", cfg.min_calls))
        } else {
            Figure::new(
                n as f64 / secs,
                count_rel(n),
                format!("{n} {what} in {secs:.1} s; ±1.96/√n (Poisson)"),
            )
        }
    };

    // Route multipliers are per campaign; everything else about a route is shared.
    let mut route_share: Vec<Vec<(u16, u64)>> = vec![Vec::new(); o.routes.len()];
    for ((e, r), n) in &o.attributed {
        if let Some(v) = route_share.get_mut(*r as usize) {
            v.push((*e, *n));
        }
    }
    for v in &mut route_share {
        v.sort();
    }

    let mut campaigns = Vec::new();
    let mut funnel_mult = vec![1.0; cfg.steps.len()];
    for (ci, c) in cfg.campaigns.iter().enumerate() {
        let mm = multipliers(c, cfg, o, orders);
        if ci == 0 {
            funnel_mult = mm.steps.clone();
        }
        let mult_of = |e: u16| -> f64 {
            if e == BACKGROUND {
                mm.background
            } else {
                mm.steps.get(usize::from(e)).copied().unwrap_or(mm.background)
            }
        };
        // Per service: its routes.
        let mut services: Vec<ServicePlan> = Vec::new();
        let mut by_svc: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (svc, _, _)) in o.routes.iter().enumerate() {
            if let Some(name) = o.services.get(*svc as usize) {
                by_svc.entry(name.as_str()).or_default().push(i);
            }
        }
        for (svc_name, idxs) in &by_svc {
            let svc_idx = o.services.iter().position(|s| s == svc_name).unwrap_or(0) as u32;
            let mut total = RouteStats::default();
            let mut planned_rate = 0.0;
            let mut planned_busy = 0.0;
            let mut routes = Vec::new();
            let mut step_calls: HashMap<u16, u64> = HashMap::new();
            for &i in idxs {
                let Some((_, rname, s)) = o.routes.get(i) else { continue };
                total.merge(s);
                let shares = route_share.get(i).cloned().unwrap_or_default();
                let attributed: u64 = shares.iter().map(|x| x.1).sum();
                let mult = if attributed == 0 {
                    mm.background
                } else {
                    shares.iter().map(|(e, n)| mult_of(*e) * *n as f64).sum::<f64>() / attributed as f64
                };
                for (e, n) in &shares {
                    *step_calls.entry(*e).or_insert(0) += n;
                }
                planned_rate += mult * s.calls as f64;
                planned_busy += mult * s.busy_ns as f64;
                let fan_out: BTreeMap<String, f64> = shares
                    .iter()
                    .filter_map(|(e, n)| {
                        let traces = o.traces.get(e).copied().unwrap_or(0);
                        (traces > 0).then(|| (step_name(*e), *n as f64 / traces as f64))
                    })
                    .collect();
                let rate_now = rate_fig(s.calls, &format!("calls of {svc_name} {rname}"));
                let mean_w = if s.calls > 0 {
                    s.busy_ns as f64 / 1e9 / s.calls as f64
                } else {
                    0.0
                };
                let cv = cv_of(s);
                let lat = match &rate_now {
                    Figure::Value { .. } => Figure::new(
                        mean_w,
                        mean_rel(s.calls, cv),
                        format!("mean of {} call durations; ±1.96·sd/√n", s.calls),
                    ),
                    Figure::Insufficient { insufficient_data } => Figure::missing(insufficient_data.clone()),
                };
                let l_rel = (count_rel(s.calls).powi(2) + mean_rel(s.calls, cv).powi(2)).sqrt();
                let conc_now = match &rate_now {
                    Figure::Value { value, .. } => Figure::new(
                        s.busy_ns as f64 / 1e9 / secs,
                        l_rel,
                        format!(
                            "Little's law L = λW = {} /s × {:.4} s (sum of call durations / time observed)",
                            fmt_rate(*value),
                            mean_w
                        ),
                    ),
                    Figure::Insufficient { insufficient_data } => Figure::missing(insufficient_data.clone()),
                };
                let share_txt = shares
                    .iter()
                    .map(|(e, n)| format!("{}: {n} calls ×{:.3}", step_name(*e), mult_of(*e)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let scaled = |f: &Figure, what: &str| -> Figure {
                    match f {
                        Figure::Value { value, low, high, .. } => Figure::Value {
                            value: value * mult,
                            low: low * mult,
                            high: high * mult,
                            derivation: format!(
                                "{what} now × {mult:.3} (calls by entry step: {})",
                                if share_txt.is_empty() {
                                    "none attributed yet; background multiplier".to_string()
                                } else {
                                    share_txt.clone()
                                }
                            ),
                        },
                        other => other.clone(),
                    }
                };
                let peak = o
                    .route_points
                    .iter()
                    .zip(o.points.iter())
                    .filter_map(|(rp, (w, _))| rp.get(&(i as u32)).map(|n| *n as f64 / w))
                    .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
                let peak_fig = match (&rate_now, peak) {
                    (Figure::Value { .. }, Some(p)) => Figure::new(
                        p * mult,
                        count_rel(s.calls),
                        format!(
                            "busiest full {:.0} s bucket: {} /s × {mult:.3}",
                            cfg.resolution.get().as_secs_f64(),
                            fmt_rate(p)
                        ),
                    ),
                    (Figure::Value { .. }, None) => Figure::missing(format!(
                        "no full {:.0} s bucket observed yet for a peak",
                        cfg.resolution.get().as_secs_f64()
                    )),
                    (other, _) => other.clone(),
                };
                routes.push(RoutePlan {
                    route: rname.clone(),
                    calls: s.calls,
                    error_rate: (s.calls > 0).then(|| s.errors as f64 / s.calls as f64),
                    fan_out,
                    multiplier: mult,
                    rate_planned: scaled(&rate_now, "rate"),
                    concurrency_planned: scaled(&conc_now, "concurrency"),
                    peak_rate_planned: peak_fig,
                    rate_now,
                    latency_mean_s: lat,
                    latency_p50_s: s.sketch.quantile(0.5),
                    latency_p95_s: s.sketch.quantile(0.95),
                    latency_p99_s: s.sketch.quantile(0.99),
                    concurrency_now: conc_now,
                });
            }
            routes.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.route.cmp(&b.route)));
            services.push(service_plan(
                cfg,
                o,
                svc_name,
                svc_idx,
                &total,
                planned_rate,
                planned_busy,
                routes,
                &step_calls,
                &mm,
                orders,
                &step_name,
            ));
        }
        // First to saturate under the campaign's mix: the smallest fraction of the campaign at saturation.
        let first = services
            .iter()
            .filter_map(|s| s.saturation.as_ref().map(|x| (x.fraction_of_campaign, s)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let summary = match first {
            Some((_, s)) => s.saturation.as_ref().map(|x| x.sentence.clone()).unwrap_or_default(),
            None => "no service has a capacity figure: configure limits (max_concurrency_per_replica or max_rate_per_replica) or observe a wider range of load".into(),
        };
        let first_to_saturate = first.map(|(_, s)| s.service.clone());
        services.sort_by(|a, b| {
            let f = |s: &ServicePlan| s.saturation.as_ref().map_or(f64::INFINITY, |x| x.fraction_of_campaign);
            f(a).total_cmp(&f(b)).then_with(|| a.service.cmp(&b.service))
        });
        // Orders and fulfilment.
        let (orders_now, orders_planned) = match orders {
            Some(oi) => {
                let n = o.steps.get(oi).map(|s| s.0).unwrap_or(0);
                let now = rate_fig(n, "orders").scaled_by(3600.0, "per hour");
                let m = mm.steps.get(oi).copied().unwrap_or(1.0);
                let planned = now.scaled_by(m, &format!("× campaign multiplier {m:.3}"));
                (now, planned)
            }
            None => (
                Figure::missing("no orders step configured (orders_step)"),
                Figure::missing("no orders step configured (orders_step)"),
            ),
        };
        let window_seconds = c.window.duration.map(|d| d.get().as_secs_f64());
        let orders_in_window = window_seconds
            .map(|w| orders_planned.scaled_by(w / 3600.0, &format!("over the campaign window of {:.1} h", w / 3600.0)));
        let revenue_per_hour_planned = match (mm.aov, orders_planned.value()) {
            (Some(a), Some(x)) => {
                bizpilot_business::amount::money_from_nanos((a.nanos() as f64 * x).round() as i128, a.currency()).ok()
            }
            _ => None,
        };
        let fulfilment = cfg
            .fulfilment
            .stages
            .iter()
            .map(|st| stage_plan(st, &orders_now, &orders_planned))
            .collect();
        campaigns.push(CampaignPlan {
            name: c.name.clone(),
            window_start: c.window.start.clone(),
            window_seconds,
            step_multipliers: cfg
                .steps
                .iter()
                .zip(mm.steps.iter())
                .map(|(s, m)| (s.name.clone(), *m))
                .collect(),
            background_multiplier: mm.background,
            orders_per_hour_now: orders_now,
            orders_per_hour_planned: orders_planned,
            orders_in_window,
            average_order_value: mm.aov,
            revenue_per_hour_planned,
            services,
            first_to_saturate,
            summary,
            fulfilment,
            problems: mm.problems,
        });
    }

    let funnel = cfg
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (n, err) = o.steps.get(i).copied().unwrap_or((0, 0));
            let rate = rate_fig(n, &format!("occurrences of {}", s.name));
            let conversion = if i == 0 {
                None
            } else {
                let prev = o.steps.get(i - 1).map(|x| x.0).unwrap_or(0);
                Some(if prev < cfg.min_calls {
                    Figure::missing(format!(
                        "only {prev} occurrences of {} observed (min_calls = {})",
                        cfg.steps.get(i - 1).map(|x| x.name.as_str()).unwrap_or(""),
                        cfg.min_calls
                    ))
                } else {
                    let p = n as f64 / prev as f64;
                    let half = Z * (p * (1.0 - p).max(0.0) / prev as f64).sqrt();
                    Figure::Value {
                        value: p,
                        low: (p - half).max(0.0),
                        high: p + half,
                        derivation: format!("{n} / {prev}; ±1.96·√(p(1−p)/n)"),
                    }
                })
            };
            let m = funnel_mult.get(i).copied().unwrap_or(1.0);
            StepPlan {
                step: s.name.clone(),
                occurrences: n,
                errors: err,
                planned_rate_per_s: rate.scaled_by(m, &format!("× first campaign's multiplier {m:.3}")),
                rate_per_s: rate,
                conversion_from_previous: conversion,
                multiplier: m,
            }
        })
        .collect();
    Plan {
        connector: connector.to_string(),
        target_utilization: cfg.target_utilization,
        observed,
        funnel,
        campaigns,
    }
}

impl Figure {
    fn scaled_by(&self, k: f64, what: &str) -> Figure {
        match self {
            Figure::Value {
                value,
                low,
                high,
                derivation,
            } => Figure::Value {
                value: value * k,
                low: low * k,
                high: high * k,
                derivation: format!("{derivation}; {what}"),
            },
            other => other.clone(),
        }
    }
}

fn stage_plan(st: &StageConfig, now: &Figure, planned: &Figure) -> StagePlan {
    let hours = st.hours_per_day.unwrap_or(24.0);
    let per_staff_day = st.orders_per_staff_hour * hours;
    let staff_needed = match planned {
        Figure::Value { value, low, high, .. } => {
            let need = |x: f64| (x * 24.0 / per_staff_day).ceil().max(1.0);
            Figure::Value {
                value: need(*value),
                low: need(*low),
                high: need(*high),
                derivation: format!(
                    "⌈{:.0} orders/h × 24 h / ({} orders per staff-hour × {hours} h)⌉: each day's orders handled within the 24-hour KPI",
                    value, st.orders_per_staff_hour
                ),
            }
        }
        other => other.clone(),
    };
    StagePlan {
        stage: st.name.clone(),
        orders_per_hour_now: now.clone(),
        orders_per_hour_planned: planned.clone(),
        staff_now: st.staff,
        staff_needed,
    }
}

#[allow(clippy::too_many_arguments)]
fn service_plan(
    cfg: &CapacityPlannerConfig,
    o: &Observed,
    svc: &str,
    svc_idx: u32,
    total: &RouteStats,
    planned_calls: f64,
    planned_busy_ns: f64,
    routes: Vec<RoutePlan>,
    step_calls: &HashMap<u16, u64>,
    mm: &Multipliers,
    orders: Option<usize>,
    step_name: &dyn Fn(u16) -> String,
) -> ServicePlan {
    let secs = o.seconds;
    let n = total.calls;
    let enough = secs >= 1.0 && n >= cfg.min_calls;
    let why = if secs < 1.0 {
        format!("observed only {secs:.1} s of spans (need at least 1 s)")
    } else {
        format!("only {n} calls of {svc} observed (min_calls = {})", cfg.min_calls)
    };
    let limit: LimitConfig = cfg.limits.get(svc).cloned().unwrap_or_default();
    let seen: Vec<ReplicaSeen> = o
        .replicas
        .get(&svc_idx)
        .map(|v| {
            v.iter()
                .map(|(name, c, busy)| ReplicaSeen {
                    replica: name.clone(),
                    calls: *c,
                    rate_per_s: if secs > 0.0 { *c as f64 / secs } else { 0.0 },
                    concurrency: if secs > 0.0 { *busy as f64 / 1e9 / secs } else { 0.0 },
                })
                .collect()
        })
        .unwrap_or_default();
    let (replicas_now, replicas_source) = match limit.replicas {
        Some(r) => (Some(r), "configured (limits.replicas)".to_string()),
        None if !seen.is_empty() => (
            u32::try_from(seen.len()).ok(),
            "distinct service.instance.id / k8s.pod.name seen".to_string(),
        ),
        None => (
            None,
            "unknown: no limits.replicas and no replica attribute on the spans".to_string(),
        ),
    };
    let cv = cv_of(total);
    let rate_rel = count_rel(n);
    let l_rel = (rate_rel.powi(2) + mean_rel(n, cv).powi(2)).sqrt();
    let mean_w = if n > 0 {
        total.busy_ns as f64 / 1e9 / n as f64
    } else {
        0.0
    };
    let lambda = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let lambda_p = if secs > 0.0 { planned_calls / secs } else { 0.0 };
    let conc = if secs > 0.0 {
        total.busy_ns as f64 / 1e9 / secs
    } else {
        0.0
    };
    let conc_p = if secs > 0.0 { planned_busy_ns / 1e9 / secs } else { 0.0 };
    let mult = if n > 0 { planned_calls / n as f64 } else { mm.background };
    let fig = |v: f64, rel: f64, d: String| {
        if enough {
            Figure::new(v, rel, d)
        } else {
            Figure::missing(why.clone())
        }
    };
    let rate_now = fig(
        lambda,
        rate_rel,
        format!("{n} calls over {} routes in {secs:.1} s; ±1.96/√n", routes.len()),
    );
    let concurrency_now = fig(
        conc,
        l_rel,
        format!("Little's law: Σ call durations / time = {lambda:.3} /s × {mean_w:.4} s"),
    );
    let rate_planned = fig(
        lambda_p,
        rate_rel,
        format!("Σ over routes of rate now × route multiplier (effective ×{mult:.3})"),
    );
    let concurrency_planned = fig(
        conc_p,
        l_rel,
        format!("Σ over routes of concurrency now × route multiplier (effective ×{mult:.3}); latency as observed"),
    );
    // Peak: busiest full bucket of the service, scaled.
    let peak = o
        .points
        .iter()
        .filter_map(|(w, m)| m.get(&svc_idx).map(|x| x.0 as f64 / w))
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let peak_rate_planned = match peak {
        Some(p) if enough => Figure::new(
            p * mult,
            rate_rel,
            format!("busiest full bucket {} /s × {mult:.3}", fmt_rate(p)),
        ),
        _ if !enough => Figure::missing(why.clone()),
        _ => Figure::missing("no full bucket observed yet for a peak"),
    };
    // Load points and the fit of 1/latency against rate.
    let mut pts = Vec::new();
    for (w, m) in &o.points {
        if let Some((c, busy, err)) = m.get(&svc_idx)
            && *c >= 10
        {
            let r = *c as f64 / w;
            let lat = *busy as f64 / 1e9 / *c as f64;
            pts.push((r, lat, *err as f64 / *c as f64));
        }
    }
    let inv: Vec<(f64, f64)> = pts.iter().filter(|p| p.1 > 0.0).map(|p| (p.0, 1.0 / p.1)).collect();
    let f = fit(&inv);
    let ef = fit(&pts.iter().map(|p| (p.0, p.2)).collect::<Vec<_>>());
    let load = LoadFit {
        points: pts.iter().rev().take(120).rev().copied().collect(),
        slope: f.map(|x| x.1),
        intercept: f.map(|x| x.0),
        r2: f.map(|x| x.2),
        error_slope: ef.map(|x| x.1),
    };
    // Capacity per replica.
    let (cap, capacity_source): (Figure, String) = match (limit.max_concurrency_per_replica, limit.max_rate_per_replica)
    {
        (c, r) if (c.is_some() || r.is_some()) && enough => {
            let by_c = c.map(|c| (c / mean_w, mean_rel(n, cv)));
            let mut best = None;
            let mut src = String::new();
            if let Some((x, rel)) = by_c {
                best = Some((x, rel));
                src = format!(
                    "max_concurrency_per_replica {} / mean latency {mean_w:.4} s",
                    c.unwrap_or(0.0)
                );
            }
            if let Some(r) = r
                && best.is_none_or(|b| r < b.0)
            {
                best = Some((r, 0.0));
                src = format!("max_rate_per_replica {r}");
            }
            match best {
                Some((x, rel)) if x.is_finite() => (Figure::new(x, rel, src.clone()), src),
                _ => (Figure::missing("latency of 0 s observed"), "none".into()),
            }
        }
        (c, r) if c.is_some() || r.is_some() => (Figure::missing(why.clone()), "limits".into()),
        _ => {
            let range = (
                pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
                pts.iter().map(|p| p.0).fold(0.0, f64::max),
            );
            match (f, replicas_now) {
                (Some((a, b, r2)), Some(rep)) if b < 0.0 && r2 >= 0.5 && pts.len() >= 5 && range.1 >= 1.3 * range.0 => {
                    let mu = -a / b;
                    let src = format!(
                        "observed saturation: 1/latency fell linearly with load (r² {r2:.2}, {} points, {:.2}–{:.2} /s), reaching 0 at {mu:.2} /s over {rep} replicas",
                        pts.len(),
                        range.0,
                        range.1
                    );
                    (Figure::new(mu / f64::from(rep), 0.25, src.clone()), src)
                }
                (_, None) => (
                    Figure::missing(format!(
                        "no per-replica limit configured for {svc} and its replica count is unknown"
                    )),
                    "none".into(),
                ),
                _ => (
                    Figure::missing(format!(
                        "no per-replica limit configured for {svc} (limits.{svc}.max_concurrency_per_replica or max_rate_per_replica) and latency did not grow with load over the observed range ({} full buckets, {:.2}–{:.2} calls/s)",
                        pts.len(),
                        if range.0.is_finite() { range.0 } else { 0.0 },
                        range.1
                    )),
                    "none".into(),
                ),
            }
        }
    };
    let u = cfg.target_utilization;
    let (utilization_now, headroom_ratio, utilization_planned, required_replicas, saturation) =
        match (&cap, replicas_now, enough) {
            (Figure::Value { value: per, .. }, Some(rep), true) => {
                let capacity = per * f64::from(rep);
                let cap_rel = match &cap {
                    Figure::Value { value, high, .. } if *value > 0.0 => high / value - 1.0,
                    _ => 0.0,
                };
                let rel = (rate_rel.powi(2) + cap_rel.powi(2)).sqrt();
                let util_now = lambda / capacity;
                let util_p = lambda_p / capacity;
                let d = format!("{lambda:.3} /s ÷ ({per:.3} /s per replica × {rep} replicas)");
                let need = |x: f64| (x / (per * u)).ceil().max(1.0);
                let rp = Figure::Value {
                    value: need(lambda_p),
                    low: need(lambda_p * (1.0 - rel).max(0.0)),
                    high: need(lambda_p * (1.0 + rel)),
                    derivation: format!(
                        "⌈{lambda_p:.3} /s planned ÷ ({per:.3} /s per replica × target utilization {u})⌉"
                    ),
                };
                let k = if lambda > 0.0 { capacity / lambda } else { f64::INFINITY };
                let frac = if lambda_p > 0.0 {
                    capacity / lambda_p
                } else {
                    f64::INFINITY
                };
                let main_step = step_calls
                    .iter()
                    .filter(|(e, _)| **e != BACKGROUND)
                    .max_by_key(|(e, n)| (**n, std::cmp::Reverse(**e)))
                    .map(|(e, _)| *e);
                let step = main_step.map(step_name);
                let step_rate = main_step
                    .and_then(|e| o.steps.get(usize::from(e)))
                    .map(|s| s.0 as f64 / secs * 3600.0);
                let needed = rp.value().unwrap_or(0.0);
                let what = match (&step, orders) {
                    (Some(s), _) => format!("today's {s} volume"),
                    (None, _) => "today's load".into(),
                };
                let sentence = format!(
                    "{svc} saturates at {k:.2}× {what}{}: {}",
                    step_rate
                        .map(|r| format!(" ({:.0} per hour)", r * k))
                        .unwrap_or_default(),
                    if needed > f64::from(rep) {
                        format!("needs {needed:.0} replicas instead of {rep} for the campaign")
                    } else {
                        format!("{rep} replicas suffice for the campaign (needs {needed:.0})")
                    }
                );
                (
                    Figure::new(util_now, rel, d.clone()),
                    Figure::Value {
                        value: 1.0 - util_now,
                        low: 1.0 - util_now * (1.0 + rel),
                        high: 1.0 - util_now * (1.0 - rel).max(0.0),
                        derivation: format!("1 − utilization now ({d})"),
                    },
                    Figure::new(
                        util_p,
                        rel,
                        format!("{lambda_p:.3} /s planned ÷ ({per:.3} /s per replica × {rep} replicas)"),
                    ),
                    rp,
                    Some(Saturation {
                        multiple_of_today: k,
                        fraction_of_campaign: frac,
                        step_per_hour_at_saturation: step_rate.map(|r| r * k),
                        step,
                        sentence,
                    }),
                )
            }
            (Figure::Value { .. }, None, true) => {
                let m = Figure::missing(format!(
                    "replica count of {svc} unknown: set limits.{svc}.replicas or put service.instance.id on its spans"
                ));
                (m.clone(), m.clone(), m.clone(), m, None)
            }
            _ => {
                let m = match &cap {
                    Figure::Insufficient { insufficient_data } => Figure::missing(insufficient_data.clone()),
                    _ => Figure::missing(why.clone()),
                };
                (m.clone(), m.clone(), m.clone(), m, None)
            }
        };
    ServicePlan {
        service: svc.to_string(),
        replicas_now,
        replicas_source,
        replicas_seen: seen,
        rate_now,
        concurrency_now,
        rate_planned,
        peak_rate_planned,
        concurrency_planned,
        capacity_per_replica: cap,
        capacity_source,
        utilization_now,
        headroom_ratio,
        utilization_planned,
        required_replicas,
        saturation,
        load,
        routes,
    }
}

fn cell(f: &Figure, digits: usize) -> String {
    match f.band() {
        Some((lo, hi)) => {
            let v = f.value().unwrap_or(0.0);
            if (hi - lo).abs() < 1e-12 {
                format!("{v:.digits$}")
            } else {
                format!("{v:.digits$} [{lo:.digits$}–{hi:.digits$}]")
            }
        }
        None => "n/a".into(),
    }
}

/// A readable rendering of the plan (what `bizpilot plan` prints without `--json`).
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let o = &p.observed;
    let _ = writeln!(
        s,
        "Observed {:.0} s ({} … {}): {} spans, {} calls, {} traces attributed to funnel steps",
        o.seconds, o.from, o.to, o.spans, o.calls, o.traces_attributed
    );
    let _ = writeln!(s, "\nFunnel");
    let _ = writeln!(
        s,
        "  {:<14} {:>10} {:>26} {:>22}",
        "step", "count", "rate /s [95 %]", "conversion"
    );
    for f in &p.funnel {
        let _ = writeln!(
            s,
            "  {:<14} {:>10} {:>26} {:>22}",
            f.step,
            f.occurrences,
            cell(&f.rate_per_s, 3),
            f.conversion_from_previous
                .as_ref()
                .map(|c| cell(c, 3))
                .unwrap_or_else(|| "-".into())
        );
    }
    for c in &p.campaigns {
        let _ = writeln!(s, "\nCampaign {:?}", c.name);
        let mults = c
            .step_multipliers
            .iter()
            .map(|(k, v)| format!("{k} ×{v:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "  step multipliers: {mults}; other traffic ×{:.3}",
            c.background_multiplier
        );
        let _ = writeln!(
            s,
            "  orders per hour: now {}, planned {}",
            cell(&c.orders_per_hour_now, 0),
            cell(&c.orders_per_hour_planned, 0)
        );
        for pr in &c.problems {
            let _ = writeln!(s, "  problem: {pr}");
        }
        let _ = writeln!(
            s,
            "\n  {:<22} {:>4} {:>22} {:>22} {:>20} {:>10} {:>9} {:>9} {:>8}",
            "service",
            "repl",
            "rate /s now",
            "rate /s planned",
            "concurrency planned",
            "cap/repl",
            "util now",
            "util plan",
            "needed"
        );
        for sv in &c.services {
            let _ = writeln!(
                s,
                "  {:<22} {:>4} {:>22} {:>22} {:>20} {:>10} {:>9} {:>9} {:>8}",
                sv.service,
                sv.replicas_now.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                cell(&sv.rate_now, 2),
                cell(&sv.rate_planned, 2),
                cell(&sv.concurrency_planned, 2),
                sv.capacity_per_replica
                    .value()
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
                sv.utilization_now
                    .value()
                    .map(|v| format!("{:.0} %", v * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                sv.utilization_planned
                    .value()
                    .map(|v| format!("{:.0} %", v * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                sv.required_replicas
                    .value()
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        let _ = writeln!(s, "\n  {}", c.summary);
        let missing: Vec<String> = c
            .services
            .iter()
            .filter_map(|sv| match &sv.capacity_per_replica {
                Figure::Insufficient { insufficient_data } => Some(format!("  {}: {insufficient_data}", sv.service)),
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(s, "\n  Without a capacity figure:");
            for m in missing {
                let _ = writeln!(s, "  {m}");
            }
        }
        if !c.fulfilment.is_empty() {
            let _ = writeln!(
                s,
                "\n  {:<16} {:>24} {:>10} {:>16}",
                "fulfilment stage", "orders/h planned", "staff now", "staff needed"
            );
            for st in &c.fulfilment {
                let _ = writeln!(
                    s,
                    "  {:<16} {:>24} {:>10} {:>16}",
                    st.stage,
                    cell(&st.orders_per_hour_planned, 0),
                    st.staff_now.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                    cell(&st.staff_needed, 0)
                );
            }
        }
    }
    s
}

/// Today's average order value in `currency`, exact (for callers that show it).
pub fn average_order_value(o: &Observed, currency: Currency) -> Option<Money> {
    let t = o.order_value.get(currency);
    if o.valued_orders == 0 || t.is_zero() {
        return None;
    }
    bizpilot_business::amount::money_from_nanos(t.nanos() / i128::from(o.valued_orders), currency).ok()
}
