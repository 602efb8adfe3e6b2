//! The connector's HTTP API, served by the admin server under `/api/v1/`:
//!
//! - `GET /api/v1/kpi`: every KPI with its figures (compliance, open and at-risk orders, prediction scores);
//! - `GET /api/v1/kpi/{name}`: one KPI's figures, with the causes of the orders at risk;
//! - `GET /api/v1/kpi/{name}/at-risk[?limit=50&offset=0&stage=paid&cause=shipping%20latency]`: the open orders
//!   at risk of missing the deadline, **highest probability first** (then earliest deadline, then order id),
//!   each with its explanation: the stage it is stuck in (and for how long, against the typical healthy
//!   duration), the services whose failures or slowness touched it (span, error and slow counts, example trace
//!   ids), the current health of the services serving its stage, and its cause; `summary` gives the share of
//!   at-risk orders each cause accounts for and a one-line `headline` ("shipping latency is behind 80 % of
//!   the orders at risk"). `total` counts every order at risk; at most `api.max_at_risk` are listed.
//!
//! Figures are as of the last evaluation (`as_of`: event time, not wall time). With several `order_kpi`
//! connectors, `connector=<id>` picks one. Times are RFC 3339 and Unix nanoseconds as strings; durations
//! are seconds.

use bizpilot_core::{ApiHandler, ApiResponse};
use serde_json::{Value as Json, json};
use std::sync::{Arc, Mutex, PoisonError};

use super::health::ServiceStatus;
use super::output::rfc3339;

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// Spans of one service that touched an order.
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceView {
    pub service: String,
    pub spans: u32,
    pub errors: u32,
    pub slow: u32,
    pub trace_ids: Vec<String>,
}

/// One order at risk, with its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRiskView {
    pub order_id: String,
    pub probability: f64,
    pub stage: String,
    pub stage_entered: u64,
    pub stage_age_ns: u64,
    /// When the KPI's start stage was reached.
    pub placed: u64,
    pub deadline: u64,
    pub time_left_ns: u64,
    pub flagged_at: Option<u64>,
    /// `healthy` or `degraded`: which learned stage duration applied.
    pub condition: &'static str,
    pub cause: String,
    pub cause_service: Option<String>,
    pub cause_issue: Option<&'static str>,
    pub cause_from_order_spans: bool,
    pub dims: Vec<(String, String)>,
    pub evidence: Vec<EvidenceView>,
    pub stage_services: Vec<ServiceStatus>,
    /// Median stage duration of healthy orders (ns), if learned.
    pub typical_stage_ns: Option<f64>,
    /// The slowed stage named as (part of) the cause.
    pub cause_stage: Option<String>,
    /// The cause in words: "backlog in stage paid: 1,840 orders, throughput 35 % of normal since 03:10; no
    /// IT cause found".
    pub cause_text: String,
    /// What to do about this order: "expedite: must leave stage paid by 2026-01-05T14:20:00Z (…)".
    pub action: String,
    /// The order's value, when its events stated one.
    pub value: Option<bizpilot_core::Money>,
}

/// The flow of one stage and, when it is slowed, what to do about it (see the `flow` module).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageView {
    pub stage: String,
    /// Orders in the stage now.
    pub backlog: u64,
    /// Speed of the stage relative to normal (`1` normal).
    pub rate: f64,
    /// Exits per hour over the test window: what the orders in it normally do, and what they did.
    pub normal_per_hour: f64,
    pub observed_per_hour: f64,
    pub slowed_since: Option<u64>,
    /// The cause in words, when slowed.
    pub cause_text: Option<String>,
    pub action: Option<StageAction>,
}

/// An order to expedite.
#[derive(Debug, Clone, PartialEq)]
pub struct Expedite {
    pub order_id: String,
    /// Its value, when its events stated one.
    pub value: Option<bizpilot_core::Money>,
    /// The latest time it can leave the stage and still make its deadline at the usual pace afterwards.
    pub leave_by: u64,
}

/// The recommended action for a slowed stage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageAction {
    /// Completions per hour the stage must reach so that every order that still can leaves it in time for its
    /// deadline (served closest deadline first), and how many more than now that is.
    pub needed_per_hour: f64,
    pub extra_per_hour: f64,
    /// Orders already too late to make their deadline however fast the stage works.
    pub already_late: u64,
    /// The ids of [`StageAction::expedite`], in its order.
    pub expedite_first: Vec<String>,
    /// Orders to expedite first (at most 10): among the orders that would miss their deadline at the stage's
    /// current pace but can still make it, the highest value first (orders without a known value last), then the
    /// closest deadline.
    pub expedite: Vec<Expedite>,
    /// How many orders of the stage would miss their deadline at its current pace but can still make it.
    pub behind: u64,
    /// Expected compliance of the orders in the stage without the action (`1 − mean P(miss)`) and with it
    /// (the share that can still make it).
    pub compliance_without: f64,
    pub compliance_with: f64,
    /// In words.
    pub text: String,
}

/// One KPI's figures as of the last evaluation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KpiView {
    pub name: String,
    pub from: String,
    pub to: String,
    pub deadline_ns: u64,
    pub threshold: f64,
    pub in_time: u64,
    pub breached: u64,
    pub cancelled: u64,
    pub compliance: Option<f64>,
    pub open: u64,
    pub open_by_stage: Vec<(String, u64)>,
    pub at_risk_total: usize,
    pub at_risk: Vec<AtRiskView>,
    /// (cause label, at-risk orders), most first.
    pub causes: Vec<(String, u64)>,
    /// True positives, false positives, false negatives, true negatives.
    pub scores: [u64; 4],
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub lead_median_s: Option<f64>,
    pub breaches_by_cause: Vec<(String, u64)>,
    /// The flow of each stage of the KPI (from its start stage to the one before its goal).
    pub stages: Vec<StageView>,
}

/// What the API serves, refreshed by the engine at every evaluation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Book {
    pub as_of: Option<u64>,
    pub kpis: Vec<KpiView>,
}

/// "shipping latency is behind 80 % of the orders at risk".
pub fn headline(causes: &[(String, u64)], total: usize) -> Option<String> {
    let (cause, n) = causes.first()?;
    let pct = 100.0 * *n as f64 / total.max(1) as f64;
    Some(if cause == "none" {
        format!("{pct:.0} % of the orders at risk show no IT signal (slow in their stage)")
    } else {
        format!("{cause} is behind {pct:.0} % of the orders at risk")
    })
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn time(t: u64) -> (Json, Json) {
    (json!(rfc3339(t)), json!(t.to_string()))
}

fn causes_json(v: &KpiView) -> Json {
    json!({
        "at_risk": v.at_risk_total,
        "headline": headline(&v.causes, v.at_risk_total),
        "causes": v.causes.iter().map(|(c, n)| json!({
            "cause": c,
            "orders": n,
            "share": *n as f64 / v.at_risk_total.max(1) as f64,
        })).collect::<Vec<_>>(),
    })
}

/// One at-risk order as JSON.
pub fn at_risk_json(a: &AtRiskView) -> Json {
    let (deadline, deadline_ns) = time(a.deadline);
    let (entered, entered_ns) = time(a.stage_entered);
    json!({
        "order_id": a.order_id,
        "probability": a.probability,
        "stage": a.stage,
        "stage_entered": entered,
        "stage_entered_unix_nano": entered_ns,
        "placed": rfc3339(a.placed),
        "deadline": deadline,
        "deadline_unix_nano": deadline_ns,
        "time_left_s": secs(a.time_left_ns),
        "flagged_at": a.flagged_at.map(rfc3339),
        "dimensions": a.dims.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "cause": {
            "label": a.cause,
            "service": a.cause_service,
            "issue": a.cause_issue,
            "from_order_spans": a.cause_from_order_spans,
            "stage": a.cause_stage,
            "text": a.cause_text,
        },
        "action": a.action,
        "value": a.value.map(|m| m.amount_string()),
        "currency": a.value.map(|m| m.currency().to_string()),
        "explanation": {
            "stage": a.stage,
            "stuck_for_s": secs(a.stage_age_ns),
            "typical_stage_s": a.typical_stage_ns.map(|n| n / 1e9),
            "condition": a.condition,
            "services": a.evidence.iter().map(|e| json!({
                "service": e.service,
                "spans": e.spans,
                "errors": e.errors,
                "slow": e.slow,
                "trace_ids": e.trace_ids,
            })).collect::<Vec<_>>(),
            "stage_services": a.stage_services.iter().map(|s| json!({
                "service": s.service,
                "spans": s.window.spans,
                "errors": s.window.errors,
                "slow": s.window.slow,
                "error_rate": s.error_rate,
                "slow_rate": s.slow_rate,
                "issue": s.issue.map(|i| i.as_str()),
            })).collect::<Vec<_>>(),
        },
    })
}

/// One stage's flow and action as JSON.
pub fn stage_json(s: &StageView) -> Json {
    json!({
        "stage": s.stage,
        "backlog": s.backlog,
        "throughput_ratio": s.rate,
        "normal_per_hour": s.normal_per_hour,
        "observed_per_hour": s.observed_per_hour,
        "slowed_since": s.slowed_since.map(rfc3339),
        "cause": s.cause_text,
        "action": s.action.as_ref().map(|a| json!({
            "needed_per_hour": a.needed_per_hour,
            "extra_per_hour": a.extra_per_hour,
            "already_late": a.already_late,
            "expedite_first": a.expedite_first,
            "behind": a.behind,
            "expedite": a.expedite.iter().map(|e| json!({
                "order_id": e.order_id,
                "value": e.value.map(|m| m.amount_string()),
                "currency": e.value.map(|m| m.currency().to_string()),
                "leave_by": rfc3339(e.leave_by),
            })).collect::<Vec<_>>(),
            "compliance_without": a.compliance_without,
            "compliance_with": a.compliance_with,
            "text": a.text,
        })),
    })
}

/// One KPI's figures as JSON (without its at-risk list).
pub fn kpi_json(v: &KpiView) -> Json {
    let [tp, fp, fneg, tn] = v.scores;
    json!({
        "name": v.name,
        "from": v.from,
        "to": v.to,
        "deadline_s": secs(v.deadline_ns),
        "resolved": {"in_time": v.in_time, "breached": v.breached, "cancelled": v.cancelled},
        "compliance": v.compliance,
        "open": v.open,
        "open_by_stage": v.open_by_stage.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "at_risk": causes_json(v),
        "breaches_by_cause": v.breaches_by_cause.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "stages": v.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "prediction": {
            "threshold": v.threshold,
            "true_positives": tp,
            "false_positives": fp,
            "false_negatives": fneg,
            "true_negatives": tn,
            "precision": v.precision,
            "recall": v.recall,
            "median_lead_time_s": v.lead_median_s,
        },
    })
}

/// The API of one connector.
pub struct KpiApi {
    connector: String,
    book: Arc<Mutex<Book>>,
}

impl KpiApi {
    pub fn new(connector: String, book: Arc<Mutex<Book>>) -> Self {
        KpiApi { connector, book }
    }
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn number(q: &[(String, String)], k: &str, default: usize) -> Result<usize, ApiResponse> {
    match param(q, k) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiResponse::error(400, format!("{k} must be a non-negative integer, got {v:?}"))),
    }
}

impl KpiApi {
    fn answer(&self, rest: &str, q: &[(String, String)]) -> ApiResponse {
        let guard = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let book: &Book = &guard;
        let as_of = book.as_of.map(rfc3339);
        let as_of_ns = book.as_of.map(|t| t.to_string());
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [] => ApiResponse::ok(json!({
                "connector": self.connector,
                "as_of": as_of,
                "as_of_unix_nano": as_of_ns,
                "kpis": book.kpis.iter().map(kpi_json).collect::<Vec<_>>(),
            })),
            [name, tail @ ..] => {
                let Some(v) = book.kpis.iter().find(|k| k.name == *name) else {
                    return ApiResponse::error(404, format!("no KPI {name:?} in connector {}", self.connector));
                };
                match tail {
                    [] => {
                        let mut j = kpi_json(v);
                        if let Some(m) = j.as_object_mut() {
                            m.insert("connector".into(), json!(self.connector));
                            m.insert("as_of".into(), json!(as_of));
                            m.insert("as_of_unix_nano".into(), json!(as_of_ns));
                        }
                        ApiResponse::ok(j)
                    }
                    ["at-risk"] => {
                        let limit = match number(q, "limit", DEFAULT_LIMIT) {
                            Ok(l) => l.min(MAX_LIMIT),
                            Err(e) => return e,
                        };
                        let offset = match number(q, "offset", 0) {
                            Ok(o) => o,
                            Err(e) => return e,
                        };
                        let stage = param(q, "stage");
                        let cause = param(q, "cause");
                        let filtered: Vec<&AtRiskView> = v
                            .at_risk
                            .iter()
                            .filter(|a| stage.is_none_or(|s| a.stage == s))
                            .filter(|a| cause.is_none_or(|c| a.cause == c || a.cause_service.as_deref() == Some(c)))
                            .collect();
                        let total = if stage.is_none() && cause.is_none() {
                            v.at_risk_total
                        } else {
                            filtered.len()
                        };
                        ApiResponse::ok(json!({
                            "connector": self.connector,
                            "kpi": v.name,
                            "as_of": as_of,
                            "as_of_unix_nano": as_of_ns,
                            "threshold": v.threshold,
                            "total": total,
                            "listed": v.at_risk.len(),
                            "offset": offset,
                            "limit": limit,
                            "summary": causes_json(v),
                            "orders": filtered.iter().skip(offset).take(limit).map(|a| at_risk_json(a)).collect::<Vec<_>>(),
                        }))
                    }
                    _ => ApiResponse::error(404, format!("unknown path kpi/{rest}")),
                }
            }
        }
    }
}

impl ApiHandler for KpiApi {
    fn handle(&self, path: &str, query: &[(String, String)]) -> Option<ApiResponse> {
        let rest = match path.strip_prefix("kpi") {
            Some("") => "",
            Some(r) => r.strip_prefix('/')?,
            None => return None,
        };
        if let Some(c) = param(query, "connector")
            && c != self.connector
        {
            return None;
        }
        Some(self.answer(rest, query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Arc<Mutex<Book>> {
        let order = |id: &str, p: f64, stage: &str, cause: &str| AtRiskView {
            order_id: id.into(),
            probability: p,
            stage: stage.into(),
            stage_entered: 1_735_689_600_000_000_000,
            stage_age_ns: 3_600_000_000_000,
            placed: 1_735_689_600_000_000_000,
            deadline: 1_735_776_000_000_000_000,
            time_left_ns: 0,
            flagged_at: Some(1_735_689_600_000_000_000),
            condition: "degraded",
            cause: cause.into(),
            cause_service: cause.split(' ').next().map(Into::into),
            cause_issue: Some("latency"),
            cause_from_order_spans: true,
            dims: vec![("customer.tier".into(), "gold".into())],
            evidence: vec![EvidenceView {
                service: "shipping".into(),
                spans: 1,
                errors: 0,
                slow: 1,
                trace_ids: vec!["0af7651916cd43dd8448eb211c80319c".into()],
            }],
            stage_services: Vec::new(),
            typical_stage_ns: Some(1e12),
            cause_stage: None,
            cause_text: "shipping latency".into(),
            action: "expedite".into(),
            value: None,
        };
        Arc::new(Mutex::new(Book {
            as_of: Some(1_735_700_000_000_000_000),
            kpis: vec![KpiView {
                name: "fulfilled_24h".into(),
                at_risk_total: 3,
                at_risk: vec![
                    order("a", 0.99, "paid", "shipping latency"),
                    order("b", 0.95, "paid", "shipping latency"),
                    order("c", 0.91, "placed", "payment errors"),
                ],
                causes: vec![("shipping latency".into(), 2), ("payment errors".into(), 1)],
                ..Default::default()
            }],
        }))
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn at_risk_pages_filters_and_explains() {
        let api = KpiApi::new("order_kpi".into(), book());
        let r = api.handle("kpi/fulfilled_24h/at-risk", &q(&[("limit", "2")])).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body["total"], 3);
        let ids: Vec<&str> = r.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            r.body["summary"]["headline"],
            "shipping latency is behind 67 % of the orders at risk"
        );
        assert_eq!(r.body["orders"][0]["explanation"]["services"][0]["slow"], 1);
        let r = api.handle("kpi/fulfilled_24h/at-risk", &q(&[("offset", "2")])).unwrap();
        assert_eq!(r.body["orders"][0]["order_id"], "c");
        let r = api
            .handle("kpi/fulfilled_24h/at-risk", &q(&[("cause", "payment")]))
            .unwrap();
        assert_eq!(r.body["total"], 1);
        assert_eq!(api.handle("kpi/nope/at-risk", &[]).unwrap().status, 404);
        assert_eq!(
            api.handle("kpi/fulfilled_24h/at-risk", &q(&[("limit", "x")]))
                .unwrap()
                .status,
            400
        );
        assert!(api.handle("impact", &[]).is_none());
        assert!(api.handle("kpis", &[]).is_none());
        assert!(api.handle("kpi", &q(&[("connector", "other")])).is_none());
        assert_eq!(api.handle("kpi", &[]).unwrap().body["kpis"][0]["name"], "fulfilled_24h");
    }
}
