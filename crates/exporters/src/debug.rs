//! Debug exporter, type `debug`: writes what it receives to the log or stdout.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `verbosity` | `basic` | `basic`: one log line per batch (signal, item count); `normal`: one log line per span, log record or metric data point (name, ids, status); `detailed`: the batch as OTLP/JSON on stdout, one line per batch |
//!
//! ```yaml
//! exporters:
//!   debug:
//!     verbosity: normal
//! ```

use bizpilot_core::pdata::DataError;
use bizpilot_core::pdata::proto::common::v1::{AnyValue, KeyValue, any_value};
use bizpilot_core::pdata::proto::metrics::v1::{metric, number_data_point};
use bizpilot_core::pdata::proto::trace::v1::{span, status};
use bizpilot_core::telemetry::ExporterTelemetry;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Exporter, ExporterContext,
    ExporterFactory, Payload, Running, Signal, Stability,
};
use serde::Deserialize;
use std::fmt::Write as _;
use tokio::io::AsyncWriteExt;

/// How much the debug exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    #[default]
    Basic,
    Normal,
    Detailed,
}

/// Config of the `debug` exporter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugExporterConfig {
    pub verbosity: Verbosity,
}

impl ComponentConfig for DebugExporterConfig {}

/// Creates `debug` exporters.
#[derive(Debug, Clone, Copy, Default)]
pub struct DebugExporterFactory;

impl ExporterFactory for DebugExporterFactory {
    type Config = DebugExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "debug",
            kind: ComponentKind::Exporter,
            stability: Stability::Development,
            description: "Writes received data to the log (basic, normal) or stdout as OTLP/JSON (detailed).",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, _ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        Ok(Box::new(DebugExporter {
            verbosity: config.verbosity,
        }))
    }
}

struct DebugExporter {
    verbosity: Verbosity,
}

impl Exporter for DebugExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let ExporterContext { id, mut input, abort } = ctx;
        let exporter = id.to_string();
        let telemetry = ExporterTelemetry::new(&exporter);
        let verbosity = self.verbosity;
        Ok(Running::spawn(async move {
            let mut stdout = tokio::io::stdout();
            loop {
                let next = tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    b = input.recv() => b,
                };
                let Some(mut batch) = next else { break };
                let (signal, items) = (batch.signal(), batch.items());
                match write_batch(verbosity, &exporter, &mut batch, &mut stdout).await {
                    Ok(()) => telemetry.sent(signal, items),
                    Err(e) => {
                        tracing::warn!(exporter = %exporter, %signal, items, "dropping data: {e}");
                        batch.fail();
                        telemetry.failed(signal, items);
                    }
                }
            }
            input.close();
            while let Ok(b) = input.try_recv() {
                b.fail();
                telemetry.failed(b.signal(), b.items());
            }
            Ok(())
        }))
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("cannot write to stdout: {0}")]
    Io(#[from] std::io::Error),
}

async fn write_batch(
    verbosity: Verbosity,
    exporter: &str,
    batch: &mut Batch,
    stdout: &mut tokio::io::Stdout,
) -> Result<(), WriteError> {
    match verbosity {
        Verbosity::Basic => {
            tracing::info!(exporter, signal = %batch.signal(), items = batch.items(), "{}", basic_line(&batch.payload));
        }
        Verbosity::Normal => {
            tracing::info!(exporter, signal = %batch.signal(), items = batch.items(), "{}", basic_line(&batch.payload));
            for line in normal_lines(&mut batch.payload)? {
                tracing::info!(exporter, "{line}");
            }
        }
        Verbosity::Detailed => {
            let mut json = batch.payload.to_json()?;
            json.push(b'\n');
            stdout.write_all(&json).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

/// `traces: 3 spans`.
pub fn basic_line(payload: &Payload) -> String {
    format!(
        "{}: {} {}",
        payload.signal(),
        payload.items(),
        payload.signal().item_name()
    )
}

/// One line per span, log record or metric data point.
pub fn normal_lines(payload: &mut Payload) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    match payload {
        Payload::Traces(t) => {
            for rs in &t.message()?.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        let kind = match span::SpanKind::try_from(s.kind) {
                            Ok(span::SpanKind::Internal) => "internal",
                            Ok(span::SpanKind::Server) => "server",
                            Ok(span::SpanKind::Client) => "client",
                            Ok(span::SpanKind::Producer) => "producer",
                            Ok(span::SpanKind::Consumer) => "consumer",
                            _ => "unspecified",
                        };
                        let mut line = format!(
                            "span {:?} trace_id={} span_id={} parent_span_id={} kind={kind}",
                            s.name,
                            hex(&s.trace_id),
                            hex(&s.span_id),
                            hex(&s.parent_span_id),
                        );
                        let st = s.status.as_ref();
                        let code = match st.map(|st| status::StatusCode::try_from(st.code)) {
                            Some(Ok(status::StatusCode::Ok)) => "ok",
                            Some(Ok(status::StatusCode::Error)) => "error",
                            _ => "unset",
                        };
                        let _ = write!(line, " status={code}");
                        if let Some(st) = st
                            && !st.message.is_empty()
                        {
                            let _ = write!(line, " status_message={:?}", st.message);
                        }
                        let dur = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
                        let _ = write!(line, " duration={:?}", std::time::Duration::from_nanos(dur));
                        push_attrs(&mut line, &s.attributes);
                        out.push(line);
                    }
                }
            }
        }
        Payload::Logs(l) => {
            for rl in &l.message()?.resource_logs {
                for sl in &rl.scope_logs {
                    for r in &sl.log_records {
                        let severity = if r.severity_text.is_empty() {
                            r.severity_number.to_string()
                        } else {
                            r.severity_text.clone()
                        };
                        let mut line = format!(
                            "log severity={severity} body={} trace_id={} span_id={}",
                            r.body.as_ref().map(any_value).unwrap_or_default(),
                            hex(&r.trace_id),
                            hex(&r.span_id),
                        );
                        push_attrs(&mut line, &r.attributes);
                        out.push(line);
                    }
                }
            }
        }
        Payload::Metrics(m) => {
            for rm in &m.message()?.resource_metrics {
                for sm in &rm.scope_metrics {
                    for metric in &sm.metrics {
                        metric_lines(metric, &mut out);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn metric_lines(m: &bizpilot_core::pdata::proto::metrics::v1::Metric, out: &mut Vec<String>) {
    let head = |kind: &str| format!("metric {:?} type={kind}", m.name);
    let number = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsDouble(d)) => d.to_string(),
        Some(number_data_point::Value::AsInt(i)) => i.to_string(),
        None => "none".into(),
    };
    match &m.data {
        Some(metric::Data::Gauge(g)) => {
            for p in &g.data_points {
                let mut line = format!("{} value={}", head("gauge"), number(&p.value));
                push_attrs(&mut line, &p.attributes);
                out.push(line);
            }
        }
        Some(metric::Data::Sum(s)) => {
            for p in &s.data_points {
                let mut line = format!("{} value={}", head("sum"), number(&p.value));
                push_attrs(&mut line, &p.attributes);
                out.push(line);
            }
        }
        Some(metric::Data::Histogram(h)) => {
            for p in &h.data_points {
                let mut line = format!(
                    "{} count={} sum={}",
                    head("histogram"),
                    p.count,
                    p.sum.unwrap_or_default()
                );
                push_attrs(&mut line, &p.attributes);
                out.push(line);
            }
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            for p in &h.data_points {
                let mut line = format!(
                    "{} count={} sum={}",
                    head("exponential_histogram"),
                    p.count,
                    p.sum.unwrap_or_default()
                );
                push_attrs(&mut line, &p.attributes);
                out.push(line);
            }
        }
        Some(metric::Data::Summary(s)) => {
            for p in &s.data_points {
                let mut line = format!("{} count={} sum={}", head("summary"), p.count, p.sum);
                push_attrs(&mut line, &p.attributes);
                out.push(line);
            }
        }
        None => {}
    }
}

fn push_attrs(line: &mut String, attrs: &[KeyValue]) {
    if attrs.is_empty() {
        return;
    }
    line.push_str(" attributes={");
    for (i, kv) in attrs.iter().enumerate() {
        if i > 0 {
            line.push_str(", ");
        }
        let _ = write!(
            line,
            "{}={}",
            kv.key,
            kv.value.as_ref().map(any_value).unwrap_or_default()
        );
    }
    line.push('}');
}

fn any_value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => format!("{s:?}"),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(any_value::Value::ArrayValue(a)) => {
            format!("[{}]", a.values.iter().map(any_value).collect::<Vec<_>>().join(", "))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let mut s = String::new();
            push_attrs(&mut s, &kv.values);
            s.trim_start_matches(" attributes=").to_string()
        }
        Some(any_value::Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        None => "null".into(),
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
    use bizpilot_core::pdata::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
    use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use bizpilot_core::pdata::proto::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use bizpilot_core::{Logs, Metrics, Traces};
    use prost::Message;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn span_lines() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "GET /cart".into(),
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 2_501_000,
                        status: Some(Status {
                            code: status::StatusCode::Error as i32,
                            message: "boom".into(),
                        }),
                        attributes: vec![kv("http.method", "GET")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // Encoded, as a receiver would hand it over.
        let mut p = Payload::Traces(Traces::from_bytes(req.encode_to_vec().into()).unwrap());
        assert_eq!(basic_line(&p), "traces: 1 spans");
        assert_eq!(
            normal_lines(&mut p).unwrap(),
            vec![format!(
                "span \"GET /cart\" trace_id={} span_id=0101010101010101 parent_span_id=- kind=server \
                 status=error status_message=\"boom\" duration=2.5ms attributes={{http.method=\"GET\"}}",
                "ab".repeat(16)
            )]
        );
    }

    #[test]
    fn log_and_metric_lines() {
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        severity_text: "WARN".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("disk full".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut p = Payload::Logs(Logs::from_message(logs));
        assert_eq!(basic_line(&p), "logs: 1 log_records");
        assert_eq!(
            normal_lines(&mut p).unwrap(),
            vec!["log severity=WARN body=\"disk full\" trace_id=- span_id=-"]
        );

        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "queue.depth".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![
                                NumberDataPoint {
                                    value: Some(number_data_point::Value::AsInt(7)),
                                    attributes: vec![kv("queue", "a")],
                                    ..Default::default()
                                },
                                NumberDataPoint {
                                    value: Some(number_data_point::Value::AsDouble(0.5)),
                                    ..Default::default()
                                },
                            ],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut p = Payload::Metrics(Metrics::from_message(metrics));
        assert_eq!(basic_line(&p), "metrics: 2 metric_points");
        assert_eq!(
            normal_lines(&mut p).unwrap(),
            vec![
                "metric \"queue.depth\" type=gauge value=7 attributes={queue=\"a\"}",
                "metric \"queue.depth\" type=gauge value=0.5",
            ]
        );
    }
}
