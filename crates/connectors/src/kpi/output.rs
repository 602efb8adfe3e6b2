//! What the connector emits: cumulative OTLP metrics and `kpi.at_risk` log records. Every timestamp is event
//! time (the evaluation's), never the wall clock, so a replay gives identical outputs.

use bizpilot_business::attrs::{self, AnyValue, ArrayValue, KeyValue, KeyValueList, Value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::collections::BTreeMap;

use super::api::AtRiskView;
use super::engine::{Engine, LEAD_BOUNDS, OVERFLOW};
use crate::otlp_out::{Points, gauge, i64_of, sum};
pub use crate::otlp_out::{hex, rfc3339};

/// Instrumentation scope of everything the connector emits.
pub const SCOPE: &str = "bizpilot/order_kpi";

/// `event.name` of the at-risk log records.
pub const AT_RISK_EVENT: &str = "kpi.at_risk";

/// Metric names (OpenTelemetry); the Prometheus names are in the module doc of [`super`].
pub mod names {
    pub const RESOLVED: &str = "kpi.orders.resolved";
    pub const EXCLUDED: &str = "kpi.orders.excluded";
    pub const COMPLIANCE: &str = "kpi.compliance";
    pub const OPEN: &str = "kpi.orders.open";
    pub const AT_RISK: &str = "kpi.orders.at_risk";
    pub const AT_RISK_SHARE: &str = "kpi.at_risk.share";
    pub const BREACHES: &str = "kpi.breaches";
    pub const PREDICTIONS: &str = "kpi.predictions";
    pub const PRECISION: &str = "kpi.prediction.precision";
    pub const RECALL: &str = "kpi.prediction.recall";
    pub const LEAD_TIME: &str = "kpi.prediction.lead_time";
    pub const LEAD_TIME_MEDIAN: &str = "kpi.prediction.lead_time.median";
    pub const OVERFLOWED: &str = "kpi.metric.overflowed_points";
    pub const STAGE_THROUGHPUT: &str = "kpi.stage.throughput.ratio";
    pub const STAGE_BACKLOG: &str = "kpi.stage.backlog";
    pub const STAGE_EXTRA: &str = "kpi.stage.action.extra_per_hour";
}

/// `1h30m` style, for messages.
pub fn human(ns: u64) -> String {
    let m = ns / 60_000_000_000;
    match (m / 60, m % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m:02}m"),
    }
}

fn kv_str(k: &str, v: impl Into<String>) -> KeyValue {
    attrs::kv_str(k, v)
}

fn str_array(v: impl IntoIterator<Item = String>) -> Value {
    Value::ArrayValue(ArrayValue {
        values: v
            .into_iter()
            .map(|s| AnyValue {
                value: Some(Value::StringValue(s)),
            })
            .collect(),
    })
}

/// The log record of an order that became at risk (`event.name` = `kpi.at_risk`).
pub fn at_risk_log(a: &AtRiskView, kpi: &str, threshold: f64, now: u64) -> LogRecord {
    let mut at = vec![
        kv_str("event.name", AT_RISK_EVENT),
        kv_str("kpi.name", kpi),
        kv_str("order.id", a.order_id.clone()),
        attrs::kv_f64("kpi.probability", a.probability),
        attrs::kv_f64("kpi.threshold", threshold),
        kv_str("kpi.stage", a.stage.clone()),
        attrs::kv_i64("kpi.stage.entered_unix_nano", i64_of(a.stage_entered)),
        attrs::kv_f64("kpi.stage.age_s", a.stage_age_ns as f64 / 1e9),
        attrs::kv_i64("kpi.deadline_unix_nano", i64_of(a.deadline)),
        attrs::kv_f64("kpi.time_left_s", a.time_left_ns as f64 / 1e9),
        kv_str("kpi.condition", a.condition),
        kv_str("kpi.cause", a.cause.clone()),
    ];
    if let Some(s) = &a.cause_service {
        at.push(kv_str("kpi.cause.service", s.clone()));
    }
    if let Some(i) = a.cause_issue {
        at.push(kv_str("kpi.cause.issue", i));
    }
    if let Some(s) = &a.cause_stage {
        at.push(kv_str("kpi.cause.stage", s.clone()));
    }
    at.push(kv_str("kpi.cause.text", a.cause_text.clone()));
    at.push(kv_str("kpi.action", a.action.clone()));
    if let Some(v) = a.value {
        at.push(kv_str("kpi.order.value", v.amount_string()));
        at.push(kv_str("kpi.order.currency", v.currency().to_string()));
    }
    for (k, v) in &a.dims {
        at.push(kv_str(k, v.clone()));
    }
    let evidence = a
        .evidence
        .iter()
        .map(|e| AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    kv_str("service", e.service.clone()),
                    attrs::kv_i64("spans", i64::from(e.spans)),
                    attrs::kv_i64("errors", i64::from(e.errors)),
                    attrs::kv_i64("slow", i64::from(e.slow)),
                    attrs::kv("trace_ids", str_array(e.trace_ids.iter().cloned())),
                ],
            })),
        })
        .collect();
    at.push(attrs::kv(
        "kpi.evidence",
        Value::ArrayValue(ArrayValue { values: evidence }),
    ));
    let touched = match a.evidence.first() {
        Some(e) => format!(
            "; {} touched it ({} spans, {} failed, {} slow, trace {})",
            e.service,
            e.spans,
            e.errors,
            e.slow,
            e.trace_ids.first().map(String::as_str).unwrap_or("-")
        ),
        None => String::new(),
    };
    let body = format!(
        "order {} may miss {kpi} (p = {:.2}): in stage {} for {}, {} left, cause: {}{touched}",
        a.order_id,
        a.probability,
        a.stage,
        human(a.stage_age_ns),
        human(a.time_left_ns),
        a.cause,
    );
    let trace_id = a
        .evidence
        .iter()
        .find(|e| Some(&e.service) == a.cause_service.as_ref())
        .and_then(|e| e.trace_ids.first())
        .and_then(|t| {
            (0..16)
                .map(|i| u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .unwrap_or_default();
    LogRecord {
        time_unix_nano: now,
        observed_time_unix_nano: now,
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(body)),
        }),
        attributes: at,
        trace_id,
        event_name: AT_RISK_EVENT.into(),
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

fn resource() -> Resource {
    Resource {
        attributes: vec![kv_str("service.name", "bizpilot")],
        ..Default::default()
    }
}

/// Log records as one request.
pub fn logs_request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Age-bucket labels: `<1h`, `1h-4h`, …, `>=24h`.
pub fn age_labels(bounds: &[u64]) -> Vec<String> {
    let d = |n: u64| {
        let secs = n / 1_000_000_000;
        if secs > 0 && secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs > 0 && secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else if n.is_multiple_of(1_000_000_000) {
            format!("{secs}s")
        } else {
            format!("{}ms", n / 1_000_000)
        }
    };
    let mut v = Vec::with_capacity(bounds.len() + 1);
    for (i, b) in bounds.iter().enumerate() {
        v.push(match i {
            0 => format!("<{}", d(*b)),
            _ => format!("{}-{}", d(bounds[i - 1]), d(*b)),
        });
    }
    v.push(match bounds.last() {
        Some(b) => format!(">={}", d(*b)),
        None => "all".into(),
    });
    v
}

impl Engine {
    fn series_attrs(&self, kpi: &str, sid: u32) -> Vec<KeyValue> {
        let mut a = vec![kv_str("kpi", kpi)];
        match self.series.values.get(sid as usize) {
            Some(values) if sid != OVERFLOW => {
                for (name, v) in self.c.dimension_names().zip(values.iter()) {
                    a.push(kv_str(name, v.to_string()));
                }
            }
            _ => {
                if self.c.dimension_names().next().is_some() {
                    a.push(attrs::kv("otel.metric.overflow", Value::BoolValue(true)));
                }
            }
        }
        a
    }

    /// Every metric, cumulative since the first evaluation, stamped `now` (event time).
    pub(super) fn metrics_request(&self, now: u64) -> ExportMetricsServiceRequest {
        let p = Points {
            start: self.first_tick.unwrap_or(now),
            now,
        };
        let ages = age_labels(&self.c.age_bounds);
        let counts = self.open_counts(now);
        let (mut resolved, mut excluded, mut compliance, mut breaches, mut predictions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut precision, mut recall, mut lead, mut lead_median, mut share) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, kp) in self.c.kpis.iter().enumerate() {
            let f = &self.figures[k];
            let name = kp.name.as_str();
            let kattr = || vec![kv_str("kpi", name)];
            for (sid, v) in &f.by_series {
                for (outcome, n) in [("in_time", v[0]), ("breached", v[1])] {
                    let mut a = self.series_attrs(name, *sid);
                    a.push(kv_str("outcome", outcome));
                    resolved.push(p.int(a, n));
                }
            }
            for (reason, n) in [
                ("cancelled", f.cancelled),
                ("expired", f.expired),
                ("no_start", f.no_start),
            ] {
                let mut a = kattr();
                a.push(kv_str("reason", reason));
                excluded.push(p.int(a, n));
            }
            if let Some(c) = f.compliance() {
                compliance.push(p.double(kattr(), c));
            }
            for (cause, n) in &f.breaches_by_cause {
                let mut a = kattr();
                a.push(kv_str("cause", cause.clone()));
                breaches.push(p.int(a, *n));
            }
            for (outcome, n) in ["true_positive", "false_positive", "false_negative", "true_negative"]
                .iter()
                .zip(f.scores)
            {
                let mut a = kattr();
                a.push(kv_str("outcome", *outcome));
                predictions.push(p.int(a, n));
            }
            if let Some(v) = f.precision() {
                precision.push(p.double(kattr(), v));
            }
            if let Some(v) = f.recall() {
                recall.push(p.double(kattr(), v));
            }
            if let Some(v) = f.lead_median() {
                lead_median.push(p.double(kattr(), v));
            }
            lead.push(HistogramDataPoint {
                attributes: kattr(),
                start_time_unix_nano: p.start,
                time_unix_nano: now,
                count: f.lead_buckets.iter().sum(),
                sum: Some(f.lead_sum),
                bucket_counts: f.lead_buckets.clone(),
                explicit_bounds: LEAD_BOUNDS.to_vec(),
                ..Default::default()
            });
            let mut by_cause: BTreeMap<&str, u64> = BTreeMap::new();
            let mut total = 0u64;
            for ((kk, _, _, cause), n) in &counts.risk {
                if *kk == k {
                    *by_cause.entry(cause.as_str()).or_default() += n;
                    total += n;
                }
            }
            for (cause, n) in by_cause {
                let mut a = kattr();
                a.push(kv_str("cause", cause));
                share.push(p.double(a, n as f64 / total.max(1) as f64));
            }
        }
        let mut open = Vec::new();
        for ((k, sid, stage, bucket), n) in &counts.open {
            let mut a = self.series_attrs(&self.c.kpis[*k].name, *sid);
            a.push(kv_str("stage", self.c.stages[*stage].clone()));
            a.push(kv_str("age", ages.get(*bucket).cloned().unwrap_or_default()));
            open.push(p.int(a, *n));
        }
        let mut risk = Vec::new();
        for ((k, sid, stage, cause), n) in &counts.risk {
            let mut a = self.series_attrs(&self.c.kpis[*k].name, *sid);
            a.push(kv_str("stage", self.c.stages[*stage].clone()));
            a.push(kv_str("cause", cause.clone()));
            risk.push(p.int(a, *n));
        }
        let (mut flow_ratio, mut flow_backlog, mut flow_extra) = (Vec::new(), Vec::new(), Vec::new());
        let last = self.c.stages.len().saturating_sub(1);
        for (s, f) in self.flows.iter().enumerate().take(last) {
            let a = || vec![kv_str("stage", self.c.stages[s].clone())];
            flow_ratio.push(p.double(a(), f.rate));
            flow_backlog.push(p.int(a(), f.backlog));
        }
        for (k, kp) in self.c.kpis.iter().enumerate() {
            for v in self.stage_views(k, now) {
                if let Some(act) = v.action {
                    let a = vec![kv_str("kpi", kp.name.as_str()), kv_str("stage", v.stage)];
                    flow_extra.push(p.double(a, act.extra_per_hour));
                }
            }
        }
        let mut metrics = Vec::new();
        let mut add = |m: Metric, empty: bool| {
            if !empty {
                metrics.push(m);
            }
        };
        let e = resolved.is_empty();
        add(
            sum(
                names::RESOLVED,
                "Orders whose KPI ended: goal reached in time, or deadline passed first.",
                "{order}",
                resolved,
            ),
            e,
        );
        add(
            sum(
                names::EXCLUDED,
                "Orders left out of compliance: cancelled, expired, or start never seen.",
                "{order}",
                excluded,
            ),
            false,
        );
        let e = compliance.is_empty();
        add(
            gauge(
                names::COMPLIANCE,
                "Orders in time / orders resolved (in time + breached).",
                "1",
                compliance,
            ),
            e,
        );
        let e = open.is_empty();
        add(
            gauge(
                names::OPEN,
                "Open orders by stage and age since the KPI's start.",
                "{order}",
                open,
            ),
            e,
        );
        let e = risk.is_empty();
        add(
            gauge(
                names::AT_RISK,
                "Open orders predicted to miss the deadline, by stage and cause.",
                "{order}",
                risk,
            ),
            e,
        );
        let e = share.is_empty();
        add(
            gauge(
                names::AT_RISK_SHARE,
                "Share of the at-risk orders each cause accounts for.",
                "1",
                share,
            ),
            e,
        );
        let e = breaches.is_empty();
        add(
            sum(
                names::BREACHES,
                "Breached orders by cause (as named when flagged, else at the breach).",
                "{order}",
                breaches,
            ),
            e,
        );
        add(
            sum(
                names::PREDICTIONS,
                "Resolved orders by prediction outcome (flagged before the deadline or not × breached or not).",
                "{order}",
                predictions,
            ),
            false,
        );
        let e = precision.is_empty();
        add(
            gauge(
                names::PRECISION,
                "Breached / flagged, over resolved orders.",
                "1",
                precision,
            ),
            e,
        );
        let e = recall.is_empty();
        add(
            gauge(names::RECALL, "Flagged / breached, over resolved orders.", "1", recall),
            e,
        );
        add(
            Metric {
                name: names::LEAD_TIME.into(),
                description: "Deadline − first flag, of correctly flagged breaches.".into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: lead,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            },
            false,
        );
        let e = lead_median.is_empty();
        add(
            gauge(
                names::LEAD_TIME_MEDIAN,
                "Median lead time of correctly flagged breaches.",
                "s",
                lead_median,
            ),
            e,
        );
        let e = flow_ratio.is_empty();
        add(
            gauge(
                names::STAGE_THROUGHPUT,
                "Speed of each stage relative to what its orders normally do (1 normal, below: slowed).",
                "1",
                flow_ratio,
            ),
            e,
        );
        let e = flow_backlog.is_empty();
        add(
            gauge(
                names::STAGE_BACKLOG,
                "Open orders in each stage.",
                "{order}",
                flow_backlog,
            ),
            e,
        );
        let e = flow_extra.is_empty();
        add(
            gauge(
                names::STAGE_EXTRA,
                "Recommended action for a slowed stage: more completions per hour needed to clear its backlog before the deadlines.",
                "{order}/h",
                flow_extra,
            ),
            e,
        );
        let over = vec![p.int(Vec::new(), self.series.overflowed)];
        add(
            sum(
                names::OVERFLOWED,
                "Orders counted in the overflow series (beyond max_series).",
                "{order}",
                over,
            ),
            self.series.overflowed == 0,
        );
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_times() {
        let h = 3_600_000_000_000;
        assert_eq!(age_labels(&[h, 4 * h]), vec!["<1h", "1h-4h", ">=4h"]);
        assert_eq!(rfc3339(1_735_689_600_000_000_000), "2025-01-01T00:00:00Z");
        assert_eq!(human(90 * 60_000_000_000), "1h30m");
        assert_eq!(hex(&[0, 255]), "00ff");
    }
}
