//! What the connector emits: cumulative OTLP metrics, and impact and incident records as OTLP log records.

use bizpilot_business::attrs::{self, AnyValue, ArrayValue, KeyValue, KeyValueList, Value};
use bizpilot_core::{Money, MoneyTotals};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::book::{ImpactRecord, Incident};
use super::engine::Engine;
use super::series::Series;
use crate::otlp_out::{Points, gauge, i64_of, sum};
pub use crate::otlp_out::{hex, rfc3339};

/// Instrumentation scope of everything the connector emits.
pub const SCOPE: &str = "bizpilot/business_impact";

/// Metric names (OpenTelemetry); the Prometheus names are in the module doc of [`super`].
pub mod names {
    pub const OPERATIONS: &str = "business.operations";
    pub const DURATION: &str = "business.operation.duration";
    pub const REVENUE: &str = "business.revenue";
    pub const AT_RISK: &str = "business.revenue.at_risk";
    pub const RECOVERED: &str = "business.revenue.recovered";
    pub const LOST: &str = "business.revenue.lost";
    pub const AFFECTED: &str = "business.affected_customers";
    pub const INCIDENT_OPEN: &str = "business.incident.open";
    pub const GOAL_ATTAINMENT: &str = "business.goal.attainment";
    pub const GOAL_PROJECTED: &str = "business.goal.projected_attainment";
    pub const GOAL_ACHIEVED: &str = "business.goal.achieved";
    pub const OVERFLOWED: &str = "business.metric.overflowed_points";
    pub const OPERATIONS_PROVISIONAL: &str = "business.operations.provisional";
    pub const REVENUE_PROVISIONAL: &str = "business.revenue.provisional";
    pub const AT_RISK_PROVISIONAL: &str = "business.revenue.at_risk.provisional";
    pub const AFFECTED_PROVISIONAL: &str = "business.affected_customers.provisional";
    pub const LATENCY_INCIDENT_OPEN: &str = "business.incident.latency.open";
}

fn kv_str(k: &str, v: impl Into<String>) -> KeyValue {
    attrs::kv_str(k, v)
}

fn kv_i64(k: &str, v: i64) -> KeyValue {
    attrs::kv_i64(k, v)
}

fn money_list(t: &MoneyTotals) -> Value {
    Value::ArrayValue(ArrayValue {
        values: t
            .iter()
            .map(|m| AnyValue {
                value: Some(Value::StringValue(m.to_string())),
            })
            .collect(),
    })
}

fn cause_kvs(prefix: &str, c: &super::book::Cause, out: &mut Vec<KeyValue>) {
    out.push(kv_str(&format!("{prefix}.service"), c.service.clone()));
    out.push(kv_str(&format!("{prefix}.span_name"), c.span_name.clone()));
    out.push(kv_str(&format!("{prefix}.status_message"), c.status_message.clone()));
}

/// The log record of a new impact record (`event.name` = `business.impact`).
pub fn impact_log(r: &ImpactRecord, now: u64) -> LogRecord {
    let mut a = vec![
        kv_str("event.name", "business.impact"),
        kv_str("business.operation", r.operation.clone()),
        kv_str("business.incident.id", r.incident_id.clone()),
    ];
    if let Some(c) = &r.customer {
        a.push(kv_str("business.customer.id", c.clone()));
    }
    if let Some(t) = &r.tier {
        a.push(kv_str("business.customer.tier", t.clone()));
    }
    if let Some(o) = &r.order_id {
        a.push(kv_str("business.order.id", o.clone()));
    }
    if let Some(v) = &r.cart_value {
        a.push(kv_str("business.cart.value", v.amount_string()));
        a.push(kv_str("business.currency", v.currency().as_str()));
    }
    if let Some(n) = r.item_count {
        a.push(kv_i64("business.cart.items", n));
    }
    if !r.items.is_empty() {
        let items = r
            .items
            .iter()
            .map(|it| {
                let mut values = vec![kv_str("sku", it.sku.clone()), kv_i64("quantity", it.quantity)];
                if let Some(p) = it.unit_price {
                    values.push(kv_str("unit_price", p.amount_string()));
                    values.push(kv_str("currency", p.currency().as_str()));
                }
                AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList { values })),
                }
            })
            .collect();
        a.push(attrs::kv(
            "business.cart.line_items",
            Value::ArrayValue(ArrayValue { values: items }),
        ));
    }
    cause_kvs("business.failure", &r.failure, &mut a);
    if let Some(c) = &r.root_cause {
        cause_kvs("business.root_cause", c, &mut a);
    }
    a.push(kv_i64("business.impact.failed_attempts", i64::from(r.failed_attempts)));
    let body = format!(
        "{} failed for customer {} ({}), cart {}: {}",
        r.operation,
        r.customer.as_deref().unwrap_or("unknown"),
        r.tier.as_deref().unwrap_or("unknown tier"),
        r.cart_value
            .map(|v| v.to_string())
            .unwrap_or_else(|| "of unknown value".into()),
        r.root_cause.as_ref().unwrap_or(&r.failure).status_message
    );
    LogRecord {
        time_unix_nano: r.time,
        observed_time_unix_nano: now,
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(body)),
        }),
        attributes: a,
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        event_name: "business.impact".into(),
        ..Default::default()
    }
}

/// The log record of an incident transition (`event.name` = `business.incident`, `business.incident.state` =
/// `open`, `update` or `closed`).
pub fn incident_log(i: &Incident, state: &str, top: usize, now: u64) -> LogRecord {
    let mut a = vec![
        kv_str("event.name", "business.incident"),
        kv_str("business.incident.id", i.id.clone()),
        kv_str("business.incident.state", state),
        kv_str("business.incident.kind", i.kind.as_str()),
        kv_str("business.operation", i.operation.clone()),
        attrs::kv_f64("business.incident.baseline_rate", i.baseline_rate),
        kv_i64("business.incident.start", i64_of(i.start)),
        attrs::kv_f64("business.incident.failure_rate", i.failure_rate),
        attrs::kv_f64("business.incident.peak_failure_rate", i.peak_failure_rate),
        kv_i64("business.incident.window.operations", i64_of(i.window_operations)),
        kv_i64("business.incident.window.failed", i64_of(i.window_failed)),
        kv_i64("business.incident.failed_operations", i64_of(i.failed_operations)),
        kv_i64("business.incident.affected_customers", i64_of(i.affected_customers)),
        attrs::kv("business.incident.revenue_at_risk", money_list(&i.revenue_at_risk)),
        attrs::kv("business.incident.recovered_revenue", money_list(&i.recovered_revenue)),
    ];
    if let Some(end) = i.end {
        a.push(kv_i64("business.incident.end", i64_of(end)));
    }
    if let Some(r) = i.closed_reason {
        a.push(kv_str("business.incident.closed_reason", r.as_str()));
    }
    let causes = i
        .top_causes(top)
        .into_iter()
        .map(|(service, message, count)| AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    kv_str("service", service),
                    kv_str("status_message", message),
                    kv_i64("count", i64_of(count)),
                ],
            })),
        })
        .collect();
    a.push(attrs::kv(
        "business.incident.top_causes",
        Value::ArrayValue(ArrayValue { values: causes }),
    ));
    let (severity, text) = match state {
        "open" => (SeverityNumber::Error, "ERROR"),
        "closed" => (SeverityNumber::Info, "INFO"),
        _ => (SeverityNumber::Warn, "WARN"),
    };
    let body = format!(
        "incident {} of {} {}: failure rate {:.1} %, {} failed operations, {} affected customers",
        i.id,
        i.operation,
        state,
        i.failure_rate * 100.0,
        i.failed_operations,
        i.affected_customers
    );
    LogRecord {
        time_unix_nano: i.last_evaluated,
        observed_time_unix_nano: now,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(body)),
        }),
        attributes: a,
        event_name: "business.incident".into(),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Log records as one request.
pub fn logs_request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource::default()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

impl Engine {
    fn series_attrs(&self, s: &Series) -> Vec<KeyValue> {
        let mut a = vec![kv_str("operation", self.operation_name(s.op))];
        match &s.dims {
            Some(values) => {
                for (name, v) in self.compiled().dimension_names().zip(values.iter()) {
                    a.push(kv_str(name, v.to_string()));
                }
            }
            None => a.push(attrs::kv("otel.metric.overflow", Value::BoolValue(true))),
        }
        a
    }

    /// Every metric, cumulative since `start` (the process's start), stamped `now` (wall clock, Unix ns).
    /// Money is exported as doubles here, and only here.
    pub fn metrics(&self, start: u64, now: u64) -> ExportMetricsServiceRequest {
        let p = Points { start, now };
        let (mut ops, mut revenue, mut at_risk, mut recovered, mut lost, mut hist) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let bounds = self.series.bounds().to_vec();
        for s in self.series.iter() {
            let base = self.series_attrs(s);
            for (outcome, n, h) in [
                ("success", s.successful, &s.duration_ok),
                ("failure", s.failed, &s.duration_failed),
            ] {
                if n == 0 {
                    continue;
                }
                let mut a = base.clone();
                a.push(kv_str("outcome", outcome));
                ops.push(p.int(a.clone(), n));
                hist.push(HistogramDataPoint {
                    attributes: a,
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.counts.clone(),
                    explicit_bounds: bounds.clone(),
                    min: h.min.is_finite().then_some(h.min),
                    max: h.max.is_finite().then_some(h.max),
                    ..Default::default()
                });
            }
            for (totals, out) in [
                (&s.revenue, &mut revenue),
                (&s.at_risk, &mut at_risk),
                (&s.recovered, &mut recovered),
                (&s.lost, &mut lost),
            ] {
                for m in totals.iter() {
                    let mut a = base.clone();
                    a.push(kv_str("currency", m.currency().as_str()));
                    out.push(p.double(a, money_f64(m)));
                }
            }
        }
        let mut metrics = Vec::new();
        let mut push_sum = |name: &str, desc: &str, unit: &str, pts: Vec<NumberDataPoint>| {
            if !pts.is_empty() {
                metrics.push(sum(name, desc, unit, pts));
            }
        };
        push_sum(
            names::OPERATIONS,
            "Business operations by outcome (success or failure).",
            "{operation}",
            ops,
        );
        push_sum(names::REVENUE, "Value of successful business operations.", "", revenue);
        push_sum(
            names::AT_RISK,
            "Value of failed business operations, counted once per business key within the de-duplication window.",
            "",
            at_risk,
        );
        push_sum(
            names::RECOVERED,
            "Revenue at risk recovered by a later success of the same business key within the window.",
            "",
            recovered,
        );
        push_sum(
            names::LOST,
            "Revenue at risk not recovered within the window.",
            "",
            lost,
        );
        let overflowed: Vec<NumberDataPoint> = self
            .series
            .overflowed()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| p.int(vec![kv_str("operation", self.operation_name(i))], *n))
            .collect();
        push_sum(
            names::OVERFLOWED,
            "Measurements folded into the overflow series (otel.metric.overflow=true) because max_series was reached.",
            "{point}",
            overflowed,
        );
        if !hist.is_empty() {
            metrics.push(Metric {
                name: names::DURATION.into(),
                description: "Duration of business operations.".into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: hist,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
        }
        let n_ops = self.ops.len();
        let mut affected = Vec::new();
        let mut open = Vec::new();
        let (mut p_ops, mut p_rev, mut p_risk, mut p_aff, mut lat_open) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n_ops {
            let name = self.operation_name(i).to_string();
            if let Some(pv) = self.provisional(i) {
                let op = || vec![kv_str("operation", name.clone())];
                for (outcome, n) in [
                    ("success", pv.operations - pv.failed.min(pv.operations)),
                    ("failure", pv.failed),
                ] {
                    let mut a = op();
                    a.push(kv_str("outcome", outcome));
                    p_ops.push(p.int(a, n));
                }
                for (totals, out) in [(&pv.revenue, &mut p_rev), (&pv.at_risk, &mut p_risk)] {
                    for m in totals.iter() {
                        let mut a = op();
                        a.push(kv_str("currency", m.currency().as_str()));
                        out.push(p.double(a, money_f64(m)));
                    }
                }
                p_aff.push(p.double(op(), pv.affected_customers() as f64));
            }
            lat_open.push(p.int(
                vec![kv_str("operation", name.clone())],
                u64::from(self.latency_incident_open(i)),
            ));
            let (cur, prev) = self.affected_windows(i);
            affected.push(p.double(
                vec![kv_str("operation", name.clone()), kv_str("window", "current")],
                cur.0 as f64,
            ));
            affected.push(p.double(
                vec![kv_str("operation", name.clone()), kv_str("window", "previous")],
                prev.0 as f64,
            ));
            open.push(p.int(vec![kv_str("operation", name)], u64::from(self.incident_open(i))));
        }
        if n_ops > 0 {
            metrics.push(gauge(
                names::AFFECTED,
                "Distinct customers with a failed operation in the current and the previous window (exact up to distinct_exact_limit, then estimated).",
                "{customer}",
                affected,
            ));
            metrics.push(gauge(
                names::INCIDENT_OPEN,
                "1 while an incident of the operation is open.",
                "",
                open,
            ));
            metrics.push(gauge(
                names::LATENCY_INCIDENT_OPEN,
                "1 while a latency incident of the operation is open (a share of slow operations above normal).",
                "",
                lat_open,
            ));
            metrics.push(gauge(
                names::OPERATIONS_PROVISIONAL,
                "Operations seen but not final yet (newer than the watermark); add to business_operations_total for a live view.",
                "{operation}",
                p_ops,
            ));
            metrics.push(gauge(
                names::AFFECTED_PROVISIONAL,
                "Distinct customers with a failed operation not final yet.",
                "{customer}",
                p_aff,
            ));
            for (name, desc, pts) in [
                (
                    names::REVENUE_PROVISIONAL,
                    "Value of successful operations not final yet.",
                    p_rev,
                ),
                (
                    names::AT_RISK_PROVISIONAL,
                    "Value of failed operations not final yet (a customer's first, unless already at risk).",
                    p_risk,
                ),
            ] {
                if !pts.is_empty() {
                    metrics.push(gauge(name, desc, "", pts));
                }
            }
        }
        if !self.goals.is_empty() {
            let wm = self.watermark();
            let (mut att, mut proj, mut ach) = (Vec::new(), Vec::new(), Vec::new());
            for g in &self.goals {
                let a = vec![
                    kv_str("goal", g.name.clone()),
                    kv_str("operation", self.operation_name(g.op)),
                ];
                let (so_far, projected) = g.attainment(wm);
                att.push(p.double(a.clone(), so_far));
                proj.push(p.double(a.clone(), projected));
                let mut a = a;
                a.push(kv_str("currency", g.target.currency().as_str()));
                ach.push(p.double(a, money_f64(&g.achieved)));
            }
            metrics.push(gauge(
                names::GOAL_ATTAINMENT,
                "Share of the goal's target reached so far in the current period.",
                "1",
                att,
            ));
            metrics.push(gauge(
                names::GOAL_PROJECTED,
                "Share of the goal's target projected at the end of the current period at the pace so far.",
                "1",
                proj,
            ));
            metrics.push(gauge(
                names::GOAL_ACHIEVED,
                "Revenue of the goal's operation so far in the current period.",
                "",
                ach,
            ));
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource::default()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn money_f64(m: &Money) -> f64 {
    m.to_f64_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600_000_000_000), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_690_200_250_000_000), "2025-01-01T00:10:00.25Z");
        assert_eq!(rfc3339(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(hex(&[0, 171, 255]), "00abff");
    }
}
