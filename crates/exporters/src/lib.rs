//! bizpilot exporters: `otlp` (gRPC), `otlphttp`, `debug`, `prometheus` and `business_events`, and [`helper`], the sending
//! queue / retry / timeout machinery shared by exporters that push batches to a destination.
#![forbid(unsafe_code)]

pub mod business_events;
pub mod debug;
pub mod helper;
pub mod otlp;
pub mod prometheus;

pub use debug::{DebugExporterConfig, DebugExporterFactory, Verbosity};
pub use otlp::{OtlpExporterConfig, OtlpExporterFactory, OtlpHttpExporterConfig, OtlpHttpExporterFactory};

/// Adds every exporter of this crate to `registry`.
pub fn register(registry: &mut bizpilot_core::Registry) {
    registry
        .exporter(OtlpExporterFactory)
        .exporter(OtlpHttpExporterFactory)
        .exporter(DebugExporterFactory)
        .exporter(prometheus::PrometheusExporterFactory)
        .exporter(business_events::BusinessEventsExporterFactory);
}
