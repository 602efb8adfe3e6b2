//! Recorded OTLP data, as `bizpilot replay` reads it. Two formats, told apart by their first bytes:
//!
//! - **Binary** (`.otlprec` by convention): the 8-byte magic `BZPOTLP1`, then records, each a signal tag byte
//!   (`T` traces, `M` metrics, `L` logs), the length of the payload as an unsigned LEB128 varint, and the
//!   payload: a protobuf `ExportTraceServiceRequest`, `ExportMetricsServiceRequest` or
//!   `ExportLogsServiceRequest`, exactly as an OTLP client sends it.
//! - **JSON lines** (`.jsonl`): one OTLP/JSON export request per line (`{"resourceSpans": …}`,
//!   `{"resourceLogs": …}` or `{"resourceMetrics": …}`, the signal told by that key); blank lines and lines
//!   starting with `#` are skipped.
//!
//! [`Writer`] writes the binary format; `cargo run -p bizpilot-connectors --example kpi_eval -- --record
//! FILE` records a shopgen workload with it (in arrival order, one request per signal per second of arrival
//! time).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;
use std::io::Write;
use std::path::Path;

use bizpilot_core::{Signal, pb};

/// First bytes of a binary recording.
pub const MAGIC: &[u8; 8] = b"BZPOTLP1";

/// One recorded export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub signal: Signal,
    /// The request, protobuf-encoded.
    pub bytes: Vec<u8>,
    /// Its earliest event time (span end, log record time, data point time); 0 when it has no item.
    pub time: u64,
    /// Items (spans, log records, data points) in it.
    pub items: usize,
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what} {at}: {message}")]
    Format {
        path: String,
        /// `byte 1234` or `line 12`.
        what: &'static str,
        at: usize,
        message: String,
    },
}

fn tag(signal: Signal) -> u8 {
    match signal {
        Signal::Traces => b'T',
        Signal::Metrics => b'M',
        Signal::Logs => b'L',
    }
}

/// Writes a binary recording.
pub struct Writer<W: Write> {
    w: W,
    records: usize,
}

impl<W: Write> Writer<W> {
    /// Writes the magic.
    pub fn new(mut w: W) -> std::io::Result<Self> {
        w.write_all(MAGIC)?;
        Ok(Writer { w, records: 0 })
    }

    /// Appends one encoded request of `signal`.
    pub fn write(&mut self, signal: Signal, payload: &[u8]) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(11);
        head.push(tag(signal));
        pb::put_varint(&mut head, payload.len() as u64);
        self.w.write_all(&head)?;
        self.w.write_all(payload)?;
        self.records += 1;
        Ok(())
    }

    pub fn write_traces(&mut self, r: &ExportTraceServiceRequest) -> std::io::Result<()> {
        self.write(Signal::Traces, &r.encode_to_vec())
    }

    pub fn write_logs(&mut self, r: &ExportLogsServiceRequest) -> std::io::Result<()> {
        self.write(Signal::Logs, &r.encode_to_vec())
    }

    pub fn write_metrics(&mut self, r: &ExportMetricsServiceRequest) -> std::io::Result<()> {
        self.write(Signal::Metrics, &r.encode_to_vec())
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

fn min_some(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

/// Earliest event time and item count of an encoded request.
pub fn describe(signal: Signal, bytes: &[u8]) -> Result<(u64, usize), prost::DecodeError> {
    let mut t = 0u64;
    let mut n = 0usize;
    match signal {
        Signal::Traces => {
            let r = ExportTraceServiceRequest::decode(bytes)?;
            for s in r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                n += 1;
                let e = if s.end_time_unix_nano != 0 {
                    s.end_time_unix_nano
                } else {
                    s.start_time_unix_nano
                };
                t = min_some(t, e);
            }
        }
        Signal::Logs => {
            let r = ExportLogsServiceRequest::decode(bytes)?;
            for l in r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                n += 1;
                let e = if l.time_unix_nano != 0 {
                    l.time_unix_nano
                } else {
                    l.observed_time_unix_nano
                };
                t = min_some(t, e);
            }
        }
        Signal::Metrics => {
            let r = ExportMetricsServiceRequest::decode(bytes)?;
            for m in r
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                let times: Vec<u64> = match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    Some(Data::Sum(s)) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    Some(Data::Histogram(h)) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    Some(Data::Summary(s)) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    None => Vec::new(),
                };
                n += times.len();
                for x in times {
                    t = min_some(t, x);
                }
            }
        }
    }
    Ok((t, n))
}

fn recorded(
    signal: Signal,
    bytes: Vec<u8>,
    path: &str,
    what: &'static str,
    at: usize,
) -> Result<Recorded, RecordingError> {
    let (time, items) = describe(signal, &bytes).map_err(|e| RecordingError::Format {
        path: path.to_string(),
        what,
        at,
        message: format!("not a valid {signal} export request: {e}"),
    })?;
    Ok(Recorded {
        signal,
        bytes,
        time,
        items,
    })
}

/// Reads a recording held in memory; `name` labels errors.
pub fn parse(data: &[u8], name: &str) -> Result<Vec<Recorded>, RecordingError> {
    let bad = |what: &'static str, at: usize, message: String| RecordingError::Format {
        path: name.to_string(),
        what,
        at,
        message,
    };
    let mut out = Vec::new();
    if let Some(mut rest) = data.strip_prefix(MAGIC.as_slice()) {
        let mut at = MAGIC.len();
        while !rest.is_empty() {
            let signal = match rest[0] {
                b'T' => Signal::Traces,
                b'M' => Signal::Metrics,
                b'L' => Signal::Logs,
                other => return Err(bad("byte", at, format!("unknown signal tag {other:#04x}"))),
            };
            let mut i = 1;
            let Some(len) = pb::read_varint(rest, &mut i, rest.len()) else {
                let why = if i >= rest.len() {
                    "truncated length"
                } else {
                    "length varint too long"
                };
                return Err(bad("byte", at, why.into()));
            };
            let len = usize::try_from(len).map_err(|_| bad("byte", at, "length out of range".into()))?;
            let Some(payload) = i.checked_add(len).and_then(|end| rest.get(i..end)) else {
                return Err(bad("byte", at, format!("truncated record: {len} bytes announced")));
            };
            out.push(recorded(signal, payload.to_vec(), name, "byte", at)?);
            rest = &rest[i + len..];
            at += i + len;
        }
        return Ok(out);
    }
    let text = std::str::from_utf8(data).map_err(|e| {
        bad(
            "byte",
            e.valid_up_to(),
            "neither a binary recording (BZPOTLP1) nor UTF-8 JSON lines".into(),
        )
    })?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let head: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad("line", i + 1, format!("invalid JSON: {e}")))?;
        let signal = match head.as_object() {
            Some(o) if o.contains_key("resourceSpans") || o.contains_key("resource_spans") => Signal::Traces,
            Some(o) if o.contains_key("resourceLogs") || o.contains_key("resource_logs") => Signal::Logs,
            Some(o) if o.contains_key("resourceMetrics") || o.contains_key("resource_metrics") => Signal::Metrics,
            _ => {
                return Err(bad(
                    "line",
                    i + 1,
                    "expected an OTLP/JSON export request (resourceSpans, resourceLogs or resourceMetrics)".into(),
                ));
            }
        };
        let payload = bizpilot_core::Payload::from_json(signal, line.as_bytes())
            .map_err(|e| bad("line", i + 1, e.to_string()))?;
        let bytes = match payload {
            bizpilot_core::Payload::Traces(t) => t.to_bytes(),
            bizpilot_core::Payload::Metrics(m) => m.to_bytes(),
            bizpilot_core::Payload::Logs(l) => l.to_bytes(),
        };
        out.push(recorded(signal, bytes.to_vec(), name, "line", i + 1)?);
    }
    Ok(out)
}

/// Reads a recording file.
pub fn read(path: &Path) -> Result<Vec<Recorded>, RecordingError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| RecordingError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&data, &name)
}

/// Orders recorded requests by their earliest event time (stable: equal times keep their order).
pub fn sort_by_event_time(records: &mut [Recorded]) {
    records.sort_by_key(|r| r.time);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn traces(t: u64) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "s".into(),
                        start_time_unix_nano: t - 5,
                        end_time_unix_nano: t,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs(t: u64) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: t,
                        event_name: "order.placed".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn binary_round_trip_and_event_time_order() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.write_traces(&traces(300)).unwrap();
        w.write_logs(&logs(100)).unwrap();
        let big = logs(200);
        w.write_logs(&big).unwrap();
        assert_eq!(w.records(), 3);
        let data = w.finish().unwrap();
        let mut recs = parse(&data, "mem").unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].signal, Signal::Traces);
        assert_eq!(recs[0].time, 300);
        assert_eq!(recs[2].bytes, big.encode_to_vec());
        sort_by_event_time(&mut recs);
        assert_eq!(recs.iter().map(|r| r.time).collect::<Vec<_>>(), vec![100, 200, 300]);
        let e = parse(&data[..data.len() - 3], "mem").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn json_lines() {
        let text = r#"
# a comment
{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"42","eventName":"order.paid"}]}]}]}
{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"7"}]}]}]}
"#;
        let recs = parse(text.as_bytes(), "mem.jsonl").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].signal, recs[0].time, recs[0].items), (Signal::Logs, 42, 1));
        assert_eq!((recs[1].signal, recs[1].time), (Signal::Traces, 7));
        let e = parse(b"{\"nope\": 1}", "x.jsonl").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
