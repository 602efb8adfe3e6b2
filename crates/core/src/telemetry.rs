//! Self-telemetry: counters and gauges every component reports through the
//! `metrics` crate, with fixed names in the OpenTelemetry Collector's style
//! (`bizpilot_receiver_accepted_spans_total{receiver="otlp",transport="grpc"}`).
//!
//! Handles are resolved once per component, so the hot path only adds to an
//! atomic.

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

use crate::component::Refusal;
use crate::pdata::Signal;

fn idx(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

/// `bizpilot_<kind>_<what>_<items>_total`, e.g. `bizpilot_exporter_sent_spans_total`.
pub fn item_counter_name(kind: &str, what: &str, signal: Signal) -> String {
    format!("bizpilot_{kind}_{what}_{}_total", signal.item_name())
}

/// Counters of a receiver (per transport).
#[derive(Clone)]
pub struct ReceiverTelemetry {
    receiver: String,
    transport: &'static str,
    accepted: [Counter; 3],
}

impl ReceiverTelemetry {
    pub fn new(receiver: &str, transport: &'static str) -> Self {
        let accepted = Signal::ALL.map(|s| {
            counter!(item_counter_name("receiver", "accepted", s), "receiver" => receiver.to_string(), "transport" => transport)
        });
        Self {
            receiver: receiver.to_string(),
            transport,
            accepted,
        }
    }

    pub fn accepted(&self, signal: Signal, items: usize) {
        self.accepted[idx(signal)].increment(items as u64);
    }

    pub fn refused(&self, signal: Signal, items: usize, reason: &'static str) {
        counter!(
            item_counter_name("receiver", "refused", signal),
            "receiver" => self.receiver.clone(),
            "transport" => self.transport,
            "reason" => reason
        )
        .increment(items as u64);
    }

    pub fn refusal(&self, signal: Signal, items: usize, r: &Refusal) {
        self.refused(signal, items, r.reason());
    }

    /// A request that could not be read at all (malformed, too large, wrong type).
    pub fn bad_request(&self, reason: &'static str) {
        counter!(
            "bizpilot_receiver_bad_requests_total",
            "receiver" => self.receiver.clone(),
            "transport" => self.transport,
            "reason" => reason
        )
        .increment(1);
    }
}

/// Counters and gauges of an exporter.
#[derive(Clone)]
pub struct ExporterTelemetry {
    exporter: String,
    sent: [Counter; 3],
    failed: [Counter; 3],
    queue_size: Gauge,
    queue_capacity: Gauge,
}

impl ExporterTelemetry {
    pub fn new(exporter: &str) -> Self {
        let sent =
            Signal::ALL.map(|s| counter!(item_counter_name("exporter", "sent", s), "exporter" => exporter.to_string()));
        let failed = Signal::ALL
            .map(|s| counter!(item_counter_name("exporter", "send_failed", s), "exporter" => exporter.to_string()));
        Self {
            exporter: exporter.to_string(),
            sent,
            failed,
            queue_size: gauge!("bizpilot_exporter_queue_size", "exporter" => exporter.to_string()),
            queue_capacity: gauge!("bizpilot_exporter_queue_capacity", "exporter" => exporter.to_string()),
        }
    }
    pub fn sent(&self, signal: Signal, items: usize) {
        self.sent[idx(signal)].increment(items as u64);
    }
    pub fn failed(&self, signal: Signal, items: usize) {
        self.failed[idx(signal)].increment(items as u64);
    }
    pub fn queue(&self, size: usize, capacity: usize) {
        self.queue_size.set(size as f64);
        self.queue_capacity.set(capacity as f64);
    }
    /// A retry of a failed export attempt.
    pub fn retry(&self, signal: Signal) {
        counter!("bizpilot_exporter_retries_total", "exporter" => self.exporter.clone(), "signal" => signal.as_str())
            .increment(1);
    }
}

/// Registers HELP text for the fixed self-telemetry names.
pub fn describe() {
    for s in Signal::ALL {
        let items = s.item_name();
        describe_counter!(
            item_counter_name("receiver", "accepted", s),
            Unit::Count,
            format!("Number of {items} successfully pushed into the pipeline.")
        );
        describe_counter!(
            item_counter_name("receiver", "refused", s),
            Unit::Count,
            format!(
                "Number of {items} refused (retryable) because the pipeline was full, over its memory limit or stopping."
            )
        );
        describe_counter!(
            item_counter_name("exporter", "sent", s),
            Unit::Count,
            format!("Number of {items} successfully sent to the destination.")
        );
        describe_counter!(
            item_counter_name("exporter", "send_failed", s),
            Unit::Count,
            format!("Number of {items} that could not be sent (dropped after retries or rejected permanently).")
        );
        for kind in ["processor", "connector"] {
            for (what, help) in [
                ("accepted", "read from the stage's input"),
                ("sent", "handed to the next stage or pipeline"),
                ("consumed", "absorbed on purpose (aggregated, filtered; delivered)"),
                ("dropped", "given up by the stage (their sources are told they failed)"),
                ("refused", "left unread at the stage's input when its run ended early"),
            ] {
                describe_counter!(
                    item_counter_name(kind, what, s),
                    Unit::Count,
                    format!("Number of {items} {help}; see docs/instrumentation.md.")
                );
            }
        }
    }
    describe_counter!(
        "bizpilot_receiver_bad_requests_total",
        Unit::Count,
        "Requests rejected as malformed, too large or of an unsupported type."
    );
    describe_counter!(
        "bizpilot_exporter_retries_total",
        Unit::Count,
        "Export attempts retried after a retryable error."
    );
    describe_gauge!(
        "bizpilot_exporter_queue_size",
        Unit::Count,
        "Batches waiting in the exporter's sending queue."
    );
    describe_gauge!(
        "bizpilot_exporter_queue_capacity",
        Unit::Count,
        "Capacity of the exporter's sending queue, in batches."
    );
}
