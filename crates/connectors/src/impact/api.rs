//! The connector's HTTP API, served by the admin server under `/api/v1/`:
//!
//! - `GET /api/v1/incidents[?operation=checkout&state=open|closed&limit=50&offset=0]`: incidents, newest first;
//! - `GET /api/v1/impact[?operation=checkout&incident=<id>&limit=50&offset=0]`: affected customers (one
//!   impact record per customer and incident), highest cart value first (then customer, then time), with their
//!   carts, a `total` count for paging, the operations' totals (`summary`) and the goals' current periods
//!   (`goals`: target, achieved, exact projection at the period's end at the pace so far, attainment).
//!
//! With several `business_impact` connectors, `connector=<id>` picks one (the first registered answers
//! otherwise). Money is `{"currency":"USD","amount":"123.45"}`; times are RFC 3339 (`time`) and Unix
//! nanoseconds as strings (`time_unix_nano`).

use bizpilot_core::{ApiHandler, ApiResponse, Money, MoneyTotals};
use serde_json::{Value as Json, json};
use std::sync::{Arc, Mutex, PoisonError};

use super::book::{Book, Cause, GoalSummary, ImpactRecord, Incident, OperationSummary, WindowCount};
use super::output::{hex, rfc3339};

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// The API of one connector.
pub struct ImpactApi {
    connector: String,
    book: Arc<Mutex<Book>>,
    top_causes: usize,
}

impl ImpactApi {
    pub fn new(connector: String, book: Arc<Mutex<Book>>, top_causes: usize) -> Self {
        ImpactApi {
            connector,
            book,
            top_causes,
        }
    }
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn number(q: &[(String, String)], k: &str, default: usize) -> Result<usize, ApiResponse> {
    match param(q, k) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiResponse::error(400, format!("{k} must be a non-negative integer, got {v:?}"))),
    }
}

fn time_json(t: u64) -> (Json, Json) {
    (json!(rfc3339(t)), json!(t.to_string()))
}

fn money(m: &Money) -> Json {
    serde_json::to_value(m).unwrap_or(Json::Null)
}

fn totals(t: &MoneyTotals) -> Json {
    Json::Array(t.iter().map(money).collect())
}

fn cause(c: &Cause) -> Json {
    json!({"service": c.service, "span_name": c.span_name, "status_message": c.status_message})
}

fn window(w: &WindowCount) -> Json {
    json!({
        "start": rfc3339(w.start),
        "end": rfc3339(w.end),
        "start_unix_nano": w.start.to_string(),
        "end_unix_nano": w.end.to_string(),
        "affected_customers": w.customers,
        "exact": w.exact,
    })
}

/// One impact record as JSON.
pub fn record_json(r: &ImpactRecord) -> Json {
    let (time, time_ns) = time_json(r.time);
    json!({
        "customer": r.customer,
        "tier": r.tier,
        "cart_value": r.cart_value.as_ref().map(money),
        "items": r.items.iter().map(|it| json!({
            "sku": it.sku,
            "quantity": it.quantity,
            "unit_price": it.unit_price.as_ref().map(money),
        })).collect::<Vec<_>>(),
        "item_count": r.item_count,
        "order_id": r.order_id,
        "operation": r.operation,
        "incident": (!r.incident_id.is_empty()).then_some(&r.incident_id),
        "failure": cause(&r.failure),
        "root_cause": r.root_cause.as_ref().map(cause),
        "trace_id": hex(&r.trace_id),
        "span_id": hex(&r.span_id),
        "time": time,
        "time_unix_nano": time_ns,
        "failed_attempts": r.failed_attempts,
        "recovered": r.recovered.is_some(),
        "recovered_time": r.recovered.map(rfc3339),
    })
}

/// One incident as JSON.
pub fn incident_json(i: &Incident, top: usize) -> Json {
    json!({
        "id": i.id,
        "operation": i.operation,
        "kind": i.kind.as_str(),
        "state": i.state.as_str(),
        "closed_reason": i.closed_reason.map(|r| r.as_str()),
        "baseline_rate": i.baseline_rate,
        "start": rfc3339(i.start),
        "start_unix_nano": i.start.to_string(),
        "end": i.end.map(rfc3339),
        "end_unix_nano": i.end.map(|e| e.to_string()),
        "detected": rfc3339(i.detected),
        "last_evaluated": rfc3339(i.last_evaluated),
        "evaluations": i.evaluations,
        "failure_rate": i.failure_rate,
        "peak_failure_rate": i.peak_failure_rate,
        "window": {"operations": i.window_operations, "failed": i.window_failed},
        "failed_operations": i.failed_operations,
        "affected_customers": i.affected_customers,
        "revenue_at_risk": totals(&i.revenue_at_risk),
        "recovered_revenue": totals(&i.recovered_revenue),
        "top_causes": i.top_causes(top).into_iter().map(|(s, m, c)| json!({
            "service": s, "status_message": m, "count": c,
        })).collect::<Vec<_>>(),
    })
}

fn summary_json(s: &OperationSummary) -> Json {
    json!({
        "operation": s.name,
        "operations": s.operations,
        "successful": s.successful,
        "failed": s.failed,
        "revenue": totals(&s.revenue),
        "revenue_at_risk": totals(&s.revenue_at_risk),
        "recovered_revenue": totals(&s.recovered_revenue),
        "lost_revenue": totals(&s.lost_revenue),
        "open_at_risk": totals(&s.open_at_risk),
        "affected_customers": {
            "current_window": s.current_window.as_ref().map(window),
            "closed_windows": s.windows.iter().map(window).collect::<Vec<_>>(),
        },
        "open_incident": s.open_incident,
        "provisional": {
            "provisional": true,
            "operations": s.provisional.operations,
            "failed": s.provisional.failed,
            "revenue": totals(&s.provisional.revenue),
            "revenue_at_risk": totals(&s.provisional.revenue_at_risk),
            "affected_customers": s.provisional.affected_customers,
            "until": (s.provisional.until > 0).then(|| rfc3339(s.provisional.until)),
        },
    })
}

fn goal_json(g: &GoalSummary) -> Json {
    json!({
        "name": g.name,
        "operation": g.operation,
        "target": money(&g.target),
        "period_s": g.period / 1_000_000_000,
        "period_start": g.period_start.map(rfc3339),
        "achieved": money(&g.achieved),
        "projected": money(&g.projected),
        "attainment": g.attainment,
        "projected_attainment": g.projected_attainment,
    })
}

impl ImpactApi {
    fn incidents(&self, q: &[(String, String)]) -> ApiResponse {
        let (limit, offset) = match (number(q, "limit", DEFAULT_LIMIT), number(q, "offset", 0)) {
            (Ok(l), Ok(o)) => (l.min(MAX_LIMIT), o),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let operation = param(q, "operation");
        let state = param(q, "state");
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let matching: Vec<&Incident> = book
            .incidents()
            .rev()
            .filter(|i| operation.is_none_or(|o| i.operation == o))
            .filter(|i| state.is_none_or(|s| i.state.as_str() == s))
            .collect();
        let page: Vec<Json> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|i| incident_json(i, self.top_causes))
            .collect();
        ApiResponse::ok(json!({
            "connector": self.connector,
            "total": matching.len(),
            "offset": offset,
            "limit": limit,
            "incidents": page,
        }))
    }

    fn impact(&self, q: &[(String, String)]) -> ApiResponse {
        let (limit, offset) = match (number(q, "limit", DEFAULT_LIMIT), number(q, "offset", 0)) {
            (Ok(l), Ok(o)) => (l.min(MAX_LIMIT), o),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let operation = param(q, "operation");
        let incident = param(q, "incident");
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(o) = operation
            && !book.operations.iter().any(|s| s.name == o)
        {
            return ApiResponse::error(404, format!("no operation {o:?}"));
        }
        // In order already (the book keeps records ordered by value): a page costs O(offset + limit), except
        // with an incident filter, which walks the operation's records once to count them (no sort either).
        let (all, ranked) = book.by_value(operation);
        let (total, page): (usize, Vec<Json>) = match incident {
            None => (all, ranked.skip(offset).take(limit).map(record_json).collect()),
            Some(i) => {
                let mut total = 0;
                let mut page = Vec::new();
                for r in ranked.filter(|r| r.incident_id == i) {
                    if total >= offset && page.len() < limit {
                        page.push(record_json(r));
                    }
                    total += 1;
                }
                (total, page)
            }
        };
        let summary: Vec<Json> = book
            .operations
            .iter()
            .filter(|s| operation.is_none_or(|o| s.name == o))
            .map(summary_json)
            .collect();
        ApiResponse::ok(json!({
            "connector": self.connector,
            "operation": operation,
            "total": total,
            "offset": offset,
            "limit": limit,
            "customers": page,
            "summary": summary,
            "goals": book.goals.iter().map(goal_json).collect::<Vec<_>>(),
            "watermark": rfc3339(book.watermark),
            "evicted_records": book.evicted_records,
        }))
    }
}

impl ApiHandler for ImpactApi {
    fn handle(&self, path: &str, query: &[(String, String)]) -> Option<ApiResponse> {
        if param(query, "connector").is_some_and(|c| c != self.connector) {
            return None;
        }
        match path.trim_matches('/') {
            "incidents" => Some(self.incidents(query)),
            "impact" => Some(self.impact(query)),
            _ => None,
        }
    }
}
