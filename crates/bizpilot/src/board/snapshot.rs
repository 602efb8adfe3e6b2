//! One snapshot of the board's figures per tick, built from the same HTTP API handlers `/api/v1/*` answers
//! with (so the page and the API agree to the cent) and from the process's own metrics registry, plus the
//! bounded ring of chart points (one per tick, one hour at one tick per second).

use bizpilot_core::time::parse_rfc3339;
use bizpilot_core::{ApiRegistry, Currency, Money};
use serde::Serialize;
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, VecDeque};

/// Customers listed on the page (the CSV export has them all).
pub const CUSTOMERS_SHOWN: usize = 50;
/// Incidents listed on the page.
pub const INCIDENTS_SHOWN: usize = 8;
/// Orders at risk listed per KPI.
pub const AT_RISK_SHOWN: usize = 10;

/// What one tick read.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Wall time of the tick (Unix ms).
    pub wall_ms: u64,
    /// The operation the board is about (the first goal's, else `checkout`, else the first one).
    pub operation: Option<String>,
    /// `GET /api/v1/impact?operation=<operation>&limit=CUSTOMERS_SHOWN`.
    pub impact: Option<Json>,
    /// `GET /api/v1/incidents?limit=INCIDENTS_SHOWN`.
    pub incidents: Option<Json>,
    /// `GET /api/v1/incidents?state=open&limit=0` total.
    pub open_incidents: u64,
    /// Per KPI: its figures (`GET /api/v1/kpi`) and its orders at risk (`GET /api/v1/kpi/<name>/at-risk`).
    pub kpis: Vec<(Json, Option<Json>)>,
    /// `GET /api/v1/plan`, where a capacity planner answers.
    pub plan: Option<Json>,
    pub health: Health,
}

/// One API answer, when it is a success.
pub fn get(api: &ApiRegistry, path: &str, query: &[(&str, String)]) -> Option<Json> {
    let q: Vec<(String, String)> = query.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
    api.dispatch(path, &q).filter(|r| r.status == 200).map(|r| r.body)
}

/// Reads the figures of one tick. `operation` is the board's operation once known (kept between ticks).
pub fn read(api: &ApiRegistry, metrics_text: &str, operation: &mut Option<String>, wall_ms: u64) -> Figures {
    if operation.is_none()
        && let Some(all) = get(api, "impact", &[("limit", "0".into())])
    {
        *operation = pick_operation(&all);
    }
    let impact = operation.as_ref().and_then(|op| {
        get(
            api,
            "impact",
            &[("operation", op.clone()), ("limit", CUSTOMERS_SHOWN.to_string())],
        )
    });
    let incidents = get(api, "incidents", &[("limit", INCIDENTS_SHOWN.to_string())]);
    let open_incidents = get(api, "incidents", &[("state", "open".into()), ("limit", "0".into())])
        .and_then(|j| j["total"].as_u64())
        .unwrap_or(0);
    let kpis = get(api, "kpi", &[])
        .and_then(|j| j["kpis"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|k| {
            let name = k["name"].as_str().unwrap_or_default().to_string();
            let at_risk = get(
                api,
                &format!("kpi/{name}/at-risk"),
                &[("limit", AT_RISK_SHOWN.to_string())],
            );
            (k, at_risk)
        })
        .collect();
    Figures {
        wall_ms,
        operation: operation.clone(),
        impact,
        incidents,
        open_incidents,
        kpis,
        plan: get(api, "plan", &[]),
        health: Health::parse(metrics_text),
    }
}

fn pick_operation(all: &Json) -> Option<String> {
    let goal = all["goals"].get(0).and_then(|g| g["operation"].as_str());
    let names: Vec<&str> = all["summary"]
        .as_array()
        .map(|s| s.iter().filter_map(|o| o["operation"].as_str()).collect())
        .unwrap_or_default();
    goal.or_else(|| names.iter().copied().find(|n| *n == "checkout"))
        .or_else(|| names.first().copied())
        .map(str::to_string)
}

/// A money list of the API (`[{"currency":"USD","amount":"1.5"}, …]`) as exact amounts.
pub fn money_list(v: &Json) -> Vec<Money> {
    v.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|m| serde_json::from_value(m.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One money value of the API.
pub fn money(v: &Json) -> Option<Money> {
    serde_json::from_value(v.clone()).ok()
}

/// The amount in `currency` of a money list (zero when absent).
pub fn amount_in(v: &Json, currency: Currency) -> Money {
    money_list(v)
        .into_iter()
        .find(|m| m.currency() == currency)
        .unwrap_or_else(|| Money::zero(currency))
}

impl Figures {
    /// The summary of the board's operation.
    pub fn summary(&self) -> Option<&Json> {
        self.impact.as_ref()?["summary"].get(0)
    }

    /// The first goal of the board's operation.
    pub fn goal(&self) -> Option<&Json> {
        let op = self.operation.as_deref()?;
        self.impact.as_ref()?["goals"]
            .as_array()?
            .iter()
            .find(|g| g["operation"].as_str() == Some(op))
    }

    /// The currency charts are drawn in: the goal's, else the first of the revenue.
    pub fn chart_currency(&self) -> Currency {
        self.goal()
            .and_then(|g| money(&g["target"]))
            .map(|m| m.currency())
            .or_else(|| {
                self.summary()
                    .and_then(|s| money_list(&s["revenue"]).first().map(|m| m.currency()))
            })
            .unwrap_or(Currency::USD)
    }

    /// Event time of the figures (the impact watermark), Unix ms.
    pub fn event_ms(&self) -> Option<u64> {
        let wm = self.impact.as_ref()?["watermark"].as_str()?;
        parse_rfc3339(wm).map(|ns| ns / 1_000_000).filter(|ms| *ms > 0)
    }
}

/// Accepted, refused, sent and failed items of one component, from the self-telemetry counters
/// `bizpilot_<kind>_<what>_<items>_total{<kind>="<id>"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComponentHealth {
    pub kind: String,
    pub id: String,
    pub accepted: f64,
    pub refused: f64,
    pub sent: f64,
    pub failed: f64,
    pub dropped: f64,
}

/// An exporter's sending queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueHealth {
    pub exporter: String,
    pub size: f64,
    pub capacity: f64,
}

/// A memory limiter's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryHealth {
    pub processor: String,
    pub usage: f64,
    pub soft_limit: f64,
    pub hard_limit: f64,
    pub refusals: f64,
}

impl MemoryHealth {
    /// `ok`, `soft` (refusing new data) or `hard` (at the hard limit).
    pub fn state(&self) -> &'static str {
        if self.hard_limit > 0.0 && self.usage >= self.hard_limit {
            "hard"
        } else if self.soft_limit > 0.0 && self.usage >= self.soft_limit {
            "soft"
        } else {
            "ok"
        }
    }
}

/// Pipeline health from the metrics registry's Prometheus text.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    pub components: Vec<ComponentHealth>,
    pub queues: Vec<QueueHealth>,
    pub memory: Vec<MemoryHealth>,
}

/// One sample line of the Prometheus text: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.trim_start_matches(','), v.trim_end_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

fn label<'a>(labels: &[(&str, &'a str)], k: &str) -> Option<&'a str> {
    labels.iter().find(|(a, _)| *a == k).map(|(_, v)| *v)
}

impl Health {
    pub fn parse(text: &str) -> Health {
        let mut comps: BTreeMap<(String, String), ComponentHealth> = BTreeMap::new();
        let mut queues: BTreeMap<String, QueueHealth> = BTreeMap::new();
        let mut memory: BTreeMap<String, MemoryHealth> = BTreeMap::new();
        for (name, labels, v) in text.lines().filter_map(sample) {
            if let Some(which) = name.strip_prefix("bizpilot_processor_memory_limiter_") {
                let id = label(&labels, "processor").unwrap_or("memory_limiter").to_string();
                let m = memory.entry(id.clone()).or_insert_with(|| MemoryHealth {
                    processor: id,
                    ..Default::default()
                });
                match which {
                    "usage_bytes" => m.usage = v,
                    "soft_limit_bytes" => m.soft_limit = v,
                    "hard_limit_bytes" => m.hard_limit = v,
                    "refusals_total" => m.refusals += v,
                    _ => {}
                }
                continue;
            }
            if let Some(which) = name.strip_prefix("bizpilot_exporter_queue_") {
                let id = label(&labels, "exporter").unwrap_or_default().to_string();
                let q = queues.entry(id.clone()).or_insert_with(|| QueueHealth {
                    exporter: id,
                    ..Default::default()
                });
                match which {
                    "size" => q.size += v,
                    "capacity" => q.capacity += v,
                    _ => {}
                }
                continue;
            }
            let Some(rest) = name.strip_prefix("bizpilot_").and_then(|n| n.strip_suffix("_total")) else {
                continue;
            };
            let Some((kind, rest)) = rest.split_once('_') else {
                continue;
            };
            if !matches!(kind, "receiver" | "processor" | "exporter" | "connector") {
                continue;
            }
            let Some(id) = label(&labels, kind) else { continue };
            let what = ["accepted", "refused", "sent", "send_failed", "failed", "dropped"]
                .into_iter()
                .find(|w| {
                    rest.strip_prefix(w)
                        .is_some_and(|r| matches!(r, "_spans" | "_metric_points" | "_log_records"))
                });
            let Some(what) = what else { continue };
            let c = comps
                .entry((kind.to_string(), id.to_string()))
                .or_insert_with(|| ComponentHealth {
                    kind: kind.to_string(),
                    id: id.to_string(),
                    ..Default::default()
                });
            match what {
                "accepted" => c.accepted += v,
                "refused" => c.refused += v,
                "sent" => c.sent += v,
                "dropped" => c.dropped += v,
                _ => c.failed += v,
            }
        }
        let order = |k: &str| match k {
            "receiver" => 0,
            "processor" => 1,
            "connector" => 2,
            _ => 3,
        };
        let mut components: Vec<ComponentHealth> = comps.into_values().collect();
        components.sort_by(|a, b| order(&a.kind).cmp(&order(&b.kind)).then_with(|| a.id.cmp(&b.id)));
        Health {
            components,
            queues: queues.into_values().collect(),
            memory: memory.into_values().collect(),
        }
    }
}

/// One chart point: cumulative figures of the board's operation at one tick, and the rates derived from
/// the ring. Chart values are `f64` (drawing only); displayed totals are exact and come from the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Wall time, Unix ms.
    pub t: u64,
    /// Event time (the impact watermark), Unix ms; 0 before any data.
    pub et: u64,
    pub currency: String,
    /// Cumulative revenue, revenue at risk and recovered revenue, in `currency`.
    pub revenue: f64,
    pub at_risk: f64,
    pub recovered: f64,
    pub operations: u64,
    pub failed: u64,
    /// Over the last minute of event time (or what the ring holds of it).
    pub failed_per_min: f64,
    pub revenue_per_min: f64,
    #[serde(skip)]
    revenue_nanos: i128,
}

/// Chart points of the last hour, one per tick; the oldest is dropped when full.
#[derive(Debug)]
pub struct Ring {
    points: VecDeque<Point>,
    capacity: usize,
    /// Points dropped because the ring was full.
    pub evicted: u64,
}

fn to_f64(m: Money) -> f64 {
    // Drawing only: an exact amount rounded to a float.
    m.nanos() as f64 / 1e9
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            points: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(2),
            evicted: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// Adds the point of `f` and returns it.
    pub fn push(&mut self, f: &Figures) -> Point {
        let currency = f.chart_currency();
        let s = f.summary();
        let field = |k: &str| {
            s.map(|s| amount_in(&s[k], currency))
                .unwrap_or_else(|| Money::zero(currency))
        };
        let revenue = field("revenue");
        let count = |k: &str| s.and_then(|s| s[k].as_u64()).unwrap_or(0);
        let et = f.event_ms().unwrap_or(0);
        let (failed, operations) = (count("failed"), count("operations"));
        // The latest point at least a minute of event time older, else the oldest.
        let base = self
            .points
            .iter()
            .rev()
            .find(|p| p.et + 60_000 <= et && p.currency == currency.as_str())
            .or_else(|| self.points.iter().find(|p| p.currency == currency.as_str()));
        let (failed_per_min, revenue_per_min) = match base {
            Some(b) if et > b.et => {
                let minutes = (et - b.et) as f64 / 60_000.0;
                (
                    failed.saturating_sub(b.failed) as f64 / minutes,
                    (revenue.nanos() - b.revenue_nanos) as f64 / 1e9 / minutes,
                )
            }
            _ => (0.0, 0.0),
        };
        let p = Point {
            t: f.wall_ms,
            et,
            currency: currency.as_str().to_string(),
            revenue: to_f64(revenue),
            at_risk: to_f64(field("revenue_at_risk")),
            recovered: to_f64(field("recovered_revenue")),
            operations,
            failed,
            failed_per_min,
            revenue_per_min,
            revenue_nanos: revenue.nanos(),
        };
        if self.points.len() >= self.capacity {
            self.points.pop_front();
            self.evicted += 1;
        }
        self.points.push_back(p.clone());
        p
    }
}

impl Point {
    /// `[t, et, revenue, at_risk, recovered, failed, operations, failed_per_min, revenue_per_min]`: the
    /// compact form the page's charts read (an hour of points is ~300 KB).
    pub fn compact(&self) -> Json {
        json!([
            self.t,
            self.et,
            self.revenue,
            self.at_risk,
            self.recovered,
            self.failed,
            self.operations,
            self.failed_per_min,
            self.revenue_per_min
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE bizpilot_receiver_accepted_spans_total counter
bizpilot_receiver_accepted_spans_total{receiver="otlp",transport="grpc"} 10
bizpilot_receiver_accepted_spans_total{receiver="otlp",transport="http"} 5
bizpilot_receiver_refused_spans_total{receiver="otlp",transport="http"} 2
bizpilot_exporter_sent_log_records_total{exporter="debug"} 7
bizpilot_exporter_send_failed_log_records_total{exporter="debug"} 1
bizpilot_exporter_queue_size{exporter="otlp"} 3
bizpilot_exporter_queue_capacity{exporter="otlp"} 1000
bizpilot_processor_memory_limiter_usage_bytes{processor="memory_limiter"} 900
bizpilot_processor_memory_limiter_soft_limit_bytes{processor="memory_limiter"} 800
bizpilot_processor_memory_limiter_hard_limit_bytes{processor="memory_limiter"} 1000
bizpilot_kafka_consumer_lag{topic="a"} 4
"#;

    #[test]
    fn health_sums_counters_per_component() {
        let h = Health::parse(METRICS);
        let otlp = h.components.iter().find(|c| c.id == "otlp").unwrap();
        assert_eq!(
            (otlp.kind.as_str(), otlp.accepted, otlp.refused),
            ("receiver", 15.0, 2.0)
        );
        let debug = h.components.iter().find(|c| c.id == "debug").unwrap();
        assert_eq!((debug.sent, debug.failed), (7.0, 1.0));
        assert_eq!(h.components.len(), 2);
        assert_eq!(h.queues[0].size, 3.0);
        assert_eq!(h.queues[0].capacity, 1000.0);
        assert_eq!(h.memory[0].state(), "soft");
    }

    fn figures(et_s: u64, failed: u64, revenue: &str) -> Figures {
        Figures {
            wall_ms: et_s * 1000,
            operation: Some("checkout".into()),
            impact: Some(json!({
                "watermark": bizpilot_core::time::rfc3339(et_s * 1_000_000_000),
                "summary": [{"operation": "checkout", "failed": failed, "operations": failed * 2,
                             "revenue": [{"currency": "EUR", "amount": revenue}]}],
                "goals": [],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_over_a_minute_of_event_time_and_the_ring_is_bounded() {
        let mut r = Ring::new(3);
        r.push(&figures(1000, 0, "0"));
        let p = r.push(&figures(1030, 5, "10.5"));
        // Only 30 s in the ring: the rate is over what it holds.
        assert_eq!(
            (p.failed_per_min, p.revenue_per_min, p.currency.as_str()),
            (10.0, 21.0, "EUR")
        );
        let p = r.push(&figures(1060, 8, "20.5"));
        assert_eq!(p.failed_per_min, 8.0);
        let p = r.push(&figures(1120, 20, "20.5"));
        assert_eq!((r.len(), r.evicted), (3, 1));
        // Base: the point at 1060 (the latest a minute older).
        assert_eq!((p.failed_per_min, p.revenue_per_min), (12.0, 0.0));
    }
}
