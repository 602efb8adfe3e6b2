//! bizpilot's Kafka components: the `kafka` receiver ([`receiver`]) and the `kafka` exporter
//! ([`exporter`]), built on librdkafka (rdkafka, compiled from source).
//!
//! - The receiver consumes OTLP data (`otlp_proto`, `otlp_json`) or business events
//!   (`business_json`, `business_proto` = [`pb::v1::BusinessEvent`], user `protobuf` schemas
//!   read by reflection, the OpenTelemetry Demo's `oteldemo.OrderResult` ([`otel_demo`])) at least once: offsets are committed only up to the contiguous
//!   low-water mark of acknowledged messages ([`offsets`]), failed deliveries are consumed
//!   again, bad messages go to a dead-letter topic, backpressure pauses partitions.
//! - The exporter produces OTLP data or business events as JSON, keyed by trace id or by an
//!   attribute (one message per key group), with an idempotent producer and the exporters'
//!   sending queue and retries.
//!
//! Business events become OTLP log records that `bizpilot-business` reads ([`business`]).
#![forbid(unsafe_code)]

pub mod business;
pub mod changelog;
pub mod client;
pub mod codec;
pub mod exporter;
pub mod fuzz;
pub mod offsets;
pub mod otel_demo;
pub mod pb;
pub mod receiver;
pub mod traceparent;

pub use exporter::{KafkaExporterConfig, KafkaExporterFactory};
pub use receiver::{KafkaReceiverConfig, KafkaReceiverFactory};

/// Adds the `kafka` receiver and exporter to `registry`.
pub fn register(registry: &mut bizpilot_core::Registry) {
    registry.receiver(KafkaReceiverFactory).exporter(KafkaExporterFactory);
}
