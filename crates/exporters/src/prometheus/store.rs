//! The series the Prometheus exporter serves: the latest value of every series,
//! converted from OTLP metrics, with expiry of series not updated for a while.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, NumberDataPoint, metric::Data, number_data_point,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::naming::{self, Kind};

/// How resource attributes appear on the scrape.
#[derive(Debug, Clone, Default)]
pub struct Conversion {
    pub namespace: String,
    pub const_labels: Vec<(String, String)>,
    /// Promote every resource attribute to a label on every series (else they go to `target_info`).
    pub resource_to_labels: bool,
    pub add_metric_suffixes: bool,
    pub send_timestamps: bool,
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Histogram {
        bounds: Vec<f64>,
        /// Per-bucket (not cumulative) counts; `bounds.len() + 1` entries.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    Summary {
        quantiles: Vec<(f64, f64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Series {
    value: Value,
    /// OTLP start time, to tell a restarted cumulative stream from a continuing one.
    start_ns: u64,
    time_ms: i64,
    updated: Instant,
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: String,
    unit: String,
    series: HashMap<Labels, Series>,
}

/// Counts of what could not be converted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Points of a metric whose name is already used with another type.
    pub type_conflicts: u64,
    /// Exponential histograms (not representable in the classic text format).
    pub unsupported: u64,
}

/// Every series currently served.
#[derive(Debug, Default)]
pub struct Store {
    families: BTreeMap<String, Family>,
    /// target_info series per (job, instance): their labels.
    targets: HashMap<Labels, (Labels, Instant)>,
}

fn any_to_string(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let parts: Vec<String> = a.values.iter().map(any_to_string).collect();
            format!("[{}]", parts.join(","))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let parts: Vec<String> = kv
                .values
                .iter()
                .map(|k| format!("{}={}", k.key, k.value.as_ref().map(any_to_string).unwrap_or_default()))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Some(any_value::Value::StringValueStrindex(_)) | None => String::new(),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}

/// Adds `attrs` as sanitised labels; values of keys that collide after sanitising are joined with `;`.
fn push_labels(labels: &mut Labels, attrs: &[KeyValue]) {
    for kv in attrs {
        let k = naming::sanitize_label_name(&kv.key);
        let v = kv.value.as_ref().map(any_to_string).unwrap_or_default();
        match labels.iter_mut().find(|(lk, _)| *lk == k) {
            Some((_, existing)) => {
                existing.push(';');
                existing.push_str(&v);
            }
            None => labels.push((k, v)),
        }
    }
}

fn number(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

impl Store {
    /// Folds a metrics request into the store.
    pub fn ingest(&mut self, req: &ExportMetricsServiceRequest, conv: &Conversion, now: Instant) -> Dropped {
        let mut dropped = Dropped::default();
        for rm in &req.resource_metrics {
            let res_attrs: &[KeyValue] = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
            let service = attr(res_attrs, "service.name").map(any_to_string);
            let ns = attr(res_attrs, "service.namespace").map(any_to_string);
            let job = match (ns, service) {
                (Some(ns), Some(s)) if !ns.is_empty() => format!("{ns}/{s}"),
                (_, Some(s)) => s,
                _ => String::new(),
            };
            let instance = attr(res_attrs, "service.instance.id")
                .map(any_to_string)
                .unwrap_or_default();
            let mut base: Labels = conv.const_labels.clone();
            if !job.is_empty() {
                base.push(("job".into(), job.clone()));
            }
            if !instance.is_empty() {
                base.push(("instance".into(), instance.clone()));
            }
            if conv.resource_to_labels {
                let extra: Vec<KeyValue> = res_attrs
                    .iter()
                    .filter(|kv| {
                        !matches!(
                            kv.key.as_str(),
                            "service.name" | "service.namespace" | "service.instance.id"
                        )
                    })
                    .cloned()
                    .collect();
                push_labels(&mut base, &extra);
            } else if !job.is_empty() || !instance.is_empty() {
                let mut ti: Labels = Vec::new();
                let extra: Vec<KeyValue> = res_attrs
                    .iter()
                    .filter(|kv| {
                        !matches!(
                            kv.key.as_str(),
                            "service.name" | "service.namespace" | "service.instance.id"
                        )
                    })
                    .cloned()
                    .collect();
                push_labels(&mut ti, &extra);
                let mut key: Labels = Vec::new();
                if !job.is_empty() {
                    key.push(("job".into(), job.clone()));
                }
                if !instance.is_empty() {
                    key.push(("instance".into(), instance.clone()));
                }
                self.targets.insert(key, (ti, now));
            }
            for sm in &rm.scope_metrics {
                let mut scope_labels = base.clone();
                if let Some(scope) = &sm.scope {
                    if !scope.name.is_empty() {
                        scope_labels.push(("otel_scope_name".into(), scope.name.clone()));
                    }
                    if !scope.version.is_empty() {
                        scope_labels.push(("otel_scope_version".into(), scope.version.clone()));
                    }
                }
                for m in &sm.metrics {
                    self.ingest_metric(m, &scope_labels, conv, now, &mut dropped);
                }
            }
        }
        dropped
    }

    fn family(&mut self, name: String, kind: Kind, help: &str, unit: &str) -> Option<&mut Family> {
        let f = self.families.entry(name).or_insert_with(|| Family {
            kind,
            help: help.to_string(),
            unit: unit.to_string(),
            series: HashMap::new(),
        });
        if f.kind != kind {
            return None;
        }
        if f.help.is_empty() && !help.is_empty() {
            f.help = help.to_string();
        }
        Some(f)
    }

    fn ingest_metric(
        &mut self,
        m: &opentelemetry_proto::tonic::metrics::v1::Metric,
        base: &Labels,
        conv: &Conversion,
        now: Instant,
        dropped: &mut Dropped,
    ) {
        let labels_of = |attrs: &[KeyValue]| {
            let mut l = base.clone();
            push_labels(&mut l, attrs);
            l.sort();
            l
        };
        let time_ms = |t: u64| i64::try_from(t / 1_000_000).unwrap_or(i64::MAX);
        match &m.data {
            Some(Data::Gauge(g)) => {
                let name =
                    naming::metric_name(&conv.namespace, &m.name, &m.unit, Kind::Gauge, conv.add_metric_suffixes);
                let Some(f) = self.family(name, Kind::Gauge, &m.description, &m.unit) else {
                    dropped.type_conflicts += g.data_points.len() as u64;
                    return;
                };
                for p in &g.data_points {
                    f.series.insert(
                        labels_of(&p.attributes),
                        Series {
                            value: Value::Number(number(p)),
                            start_ns: p.start_time_unix_nano,
                            time_ms: time_ms(p.time_unix_nano),
                            updated: now,
                        },
                    );
                }
            }
            Some(Data::Sum(s)) => {
                let kind = if s.is_monotonic { Kind::Counter } else { Kind::Gauge };
                let delta = s.aggregation_temporality == AggregationTemporality::Delta as i32;
                let name = naming::metric_name(&conv.namespace, &m.name, &m.unit, kind, conv.add_metric_suffixes);
                let Some(f) = self.family(name, kind, &m.description, &m.unit) else {
                    dropped.type_conflicts += s.data_points.len() as u64;
                    return;
                };
                for p in &s.data_points {
                    let labels = labels_of(&p.attributes);
                    let v = number(p);
                    match f.series.get_mut(&labels) {
                        // Deltas of a counter accumulate into a cumulative series.
                        Some(existing) if delta && kind == Kind::Counter => {
                            if let Value::Number(cur) = &mut existing.value {
                                *cur += v;
                            }
                            existing.time_ms = time_ms(p.time_unix_nano);
                            existing.updated = now;
                        }
                        _ => {
                            f.series.insert(
                                labels,
                                Series {
                                    value: Value::Number(v),
                                    start_ns: p.start_time_unix_nano,
                                    time_ms: time_ms(p.time_unix_nano),
                                    updated: now,
                                },
                            );
                        }
                    }
                }
            }
            Some(Data::Histogram(h)) => {
                let delta = h.aggregation_temporality == AggregationTemporality::Delta as i32;
                let name = naming::metric_name(
                    &conv.namespace,
                    &m.name,
                    &m.unit,
                    Kind::Histogram,
                    conv.add_metric_suffixes,
                );
                let Some(f) = self.family(name, Kind::Histogram, &m.description, &m.unit) else {
                    dropped.type_conflicts += h.data_points.len() as u64;
                    return;
                };
                for p in &h.data_points {
                    let labels = labels_of(&p.attributes);
                    let incoming = histogram_value(p);
                    let merged = match (f.series.get(&labels), delta) {
                        (Some(existing), true) => merge_histograms(&existing.value, &incoming),
                        _ => None,
                    };
                    f.series.insert(
                        labels,
                        Series {
                            value: merged.unwrap_or(incoming),
                            start_ns: p.start_time_unix_nano,
                            time_ms: time_ms(p.time_unix_nano),
                            updated: now,
                        },
                    );
                }
            }
            Some(Data::Summary(s)) => {
                let name = naming::metric_name(
                    &conv.namespace,
                    &m.name,
                    &m.unit,
                    Kind::Summary,
                    conv.add_metric_suffixes,
                );
                let Some(f) = self.family(name, Kind::Summary, &m.description, &m.unit) else {
                    dropped.type_conflicts += s.data_points.len() as u64;
                    return;
                };
                for p in &s.data_points {
                    f.series.insert(
                        labels_of(&p.attributes),
                        Series {
                            value: Value::Summary {
                                quantiles: p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect(),
                                sum: p.sum,
                                count: p.count,
                            },
                            start_ns: p.start_time_unix_nano,
                            time_ms: time_ms(p.time_unix_nano),
                            updated: now,
                        },
                    );
                }
            }
            Some(Data::ExponentialHistogram(e)) => dropped.unsupported += e.data_points.len() as u64,
            None => {}
        }
    }

    /// Removes series not updated within `ttl`; returns how many were removed.
    pub fn expire(&mut self, ttl: Duration, now: Instant) -> usize {
        let mut removed = 0;
        for f in self.families.values_mut() {
            let before = f.series.len();
            f.series.retain(|_, s| now.duration_since(s.updated) <= ttl);
            removed += before - f.series.len();
        }
        self.families.retain(|_, f| !f.series.is_empty());
        self.targets.retain(|_, (_, t)| now.duration_since(*t) <= ttl);
        removed
    }

    /// Number of series held.
    pub fn series_count(&self) -> usize {
        self.families.values().map(|f| f.series.len()).sum::<usize>() + self.targets.len()
    }

    /// Renders the Prometheus text exposition format (0.0.4), or OpenMetrics 1.0 when `open_metrics`.
    pub fn render(&self, open_metrics: bool, send_timestamps: bool) -> String {
        let mut out = String::with_capacity(4096);
        if !self.targets.is_empty() {
            out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
            let mut keys: Vec<&Labels> = self.targets.keys().collect();
            keys.sort();
            for k in keys {
                let mut labels = k.clone();
                if let Some((extra, _)) = self.targets.get(k) {
                    labels.extend(extra.iter().cloned());
                }
                labels.sort();
                sample(&mut out, "target_info", &labels, None, 1.0, None);
            }
        }
        for (name, f) in &self.families {
            let family_name = if open_metrics && f.kind == Kind::Counter {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name.as_str()
            };
            if !f.help.is_empty() {
                let _ = writeln!(out, "# HELP {family_name} {}", naming::escape_help(&f.help));
            }
            let _ = writeln!(out, "# TYPE {family_name} {}", f.kind.as_str());
            if open_metrics {
                let unit = naming::unit_suffix(&f.unit, f.kind == Kind::Gauge);
                if !unit.is_empty() && family_name.ends_with(&unit) {
                    let _ = writeln!(out, "# UNIT {family_name} {unit}");
                }
            }
            let mut series: Vec<(&Labels, &Series)> = f.series.iter().collect();
            series.sort_by(|a, b| a.0.cmp(b.0));
            for (labels, s) in series {
                let ts = send_timestamps.then_some(s.time_ms);
                let ts = if open_metrics { None } else { ts };
                match &s.value {
                    Value::Number(v) => sample(&mut out, name, labels, None, *v, ts),
                    Value::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        let bucket = format!("{name}_bucket");
                        let mut cum = 0u64;
                        for (i, b) in bounds.iter().enumerate() {
                            cum += counts.get(i).copied().unwrap_or(0);
                            sample(&mut out, &bucket, labels, Some(("le", fmt_f64(*b))), cum as f64, ts);
                        }
                        sample(
                            &mut out,
                            &bucket,
                            labels,
                            Some(("le", "+Inf".into())),
                            *count as f64,
                            ts,
                        );
                        sample(&mut out, &format!("{name}_sum"), labels, None, *sum, ts);
                        sample(&mut out, &format!("{name}_count"), labels, None, *count as f64, ts);
                    }
                    Value::Summary { quantiles, sum, count } => {
                        for (q, v) in quantiles {
                            sample(&mut out, name, labels, Some(("quantile", fmt_f64(*q))), *v, ts);
                        }
                        sample(&mut out, &format!("{name}_sum"), labels, None, *sum, ts);
                        sample(&mut out, &format!("{name}_count"), labels, None, *count as f64, ts);
                    }
                }
                let _ = s.start_ns;
            }
        }
        if open_metrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

fn histogram_value(p: &HistogramDataPoint) -> Value {
    let mut counts = p.bucket_counts.clone();
    counts.resize(p.explicit_bounds.len() + 1, 0);
    Value::Histogram {
        bounds: p.explicit_bounds.clone(),
        counts,
        sum: p.sum.unwrap_or(0.0),
        count: p.count,
    }
}

fn merge_histograms(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (
            Value::Histogram {
                bounds: ba,
                counts: ca,
                sum: sa,
                count: na,
            },
            Value::Histogram {
                bounds: bb,
                counts: cb,
                sum: sb,
                count: nb,
            },
        ) if ba == bb => Some(Value::Histogram {
            bounds: ba.clone(),
            counts: ca.iter().zip(cb).map(|(x, y)| x + y).collect(),
            sum: sa + sb,
            count: na + nb,
        }),
        _ => None,
    }
}

/// Formats a float the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`).
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn sample(out: &mut String, name: &str, labels: &Labels, extra: Option<(&str, String)>, v: f64, ts: Option<i64>) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for (k, val) in labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.as_ref().map(|(k, v)| (*k, v.as_str())))
        {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            naming::escape_label_value(val, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&fmt_f64(v));
    if let Some(t) = ts {
        let _ = write!(out, " {t}");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::attrs::kv_str;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv_str("service.name", "shop"),
                        kv_str("service.instance.id", "i-1"),
                        kv_str("region", "eu"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn counter(name: &str, unit: &str, v: f64, temporality: AggregationTemporality) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            description: "Revenue of successful checkouts.".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv_str("operation", "checkout"), kv_str("customer.tier", "gold")],
                    value: Some(number_data_point::Value::AsDouble(v)),
                    time_unix_nano: 1_700_000_000_000_000_000,
                    ..Default::default()
                }],
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn renders_counters_gauges_histograms_and_target_info() {
        let mut s = Store::default();
        let conv = Conversion {
            add_metric_suffixes: true,
            ..Default::default()
        };
        let hist = Metric {
            name: "checkout.duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 3,
                    sum: Some(1.5),
                    bucket_counts: vec![1, 2, 0],
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let gauge = Metric {
            name: "incidents.open".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsInt(2)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        s.ingest(
            &request(vec![
                counter("business.revenue", "USD", 10.5, AggregationTemporality::Cumulative),
                hist,
                gauge,
            ]),
            &conv,
            Instant::now(),
        );
        let text = s.render(false, false);
        assert!(text.contains("# TYPE business_revenue_USD_total counter"), "{text}");
        assert!(text.contains(
            "business_revenue_USD_total{customer_tier=\"gold\",instance=\"i-1\",job=\"shop\",operation=\"checkout\"} 10.5"
        ));
        assert!(text.contains("checkout_duration_seconds_bucket{instance=\"i-1\",job=\"shop\",le=\"0.1\"} 1"));
        assert!(text.contains("checkout_duration_seconds_bucket{instance=\"i-1\",job=\"shop\",le=\"1\"} 3"));
        assert!(text.contains("checkout_duration_seconds_bucket{instance=\"i-1\",job=\"shop\",le=\"+Inf\"} 3"));
        assert!(text.contains("incidents_open{instance=\"i-1\",job=\"shop\"} 2"));
        assert!(text.contains("target_info{instance=\"i-1\",job=\"shop\",region=\"eu\"} 1"));
        let om = s.render(true, false);
        assert!(om.contains("# TYPE business_revenue_USD counter"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn deltas_accumulate_and_cumulatives_replace() {
        let mut s = Store::default();
        let conv = Conversion::default();
        let now = Instant::now();
        for _ in 0..3 {
            s.ingest(
                &request(vec![counter("d", "", 2.0, AggregationTemporality::Delta)]),
                &conv,
                now,
            );
            s.ingest(
                &request(vec![counter("c", "", 2.0, AggregationTemporality::Cumulative)]),
                &conv,
                now,
            );
        }
        let text = s.render(false, false);
        assert!(
            text.contains("d{customer_tier=\"gold\",instance=\"i-1\",job=\"shop\",operation=\"checkout\"} 6"),
            "{text}"
        );
        assert!(text.contains("c{customer_tier=\"gold\",instance=\"i-1\",job=\"shop\",operation=\"checkout\"} 2"));
    }

    #[test]
    fn stale_series_expire() {
        let mut s = Store::default();
        let t0 = Instant::now();
        s.ingest(
            &request(vec![counter("x", "", 1.0, AggregationTemporality::Cumulative)]),
            &Conversion::default(),
            t0,
        );
        assert_eq!(s.expire(Duration::from_secs(60), t0 + Duration::from_secs(30)), 0);
        assert!(s.expire(Duration::from_secs(60), t0 + Duration::from_secs(61)) >= 1);
        assert_eq!(s.series_count(), 0);
    }
}
