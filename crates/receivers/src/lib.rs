//! bizpilot receivers: components that bring data into pipelines.
//!
//! - [`otlp`]: OTLP traces, metrics and logs over gRPC and HTTP.
#![forbid(unsafe_code)]

pub mod otlp;

pub use otlp::{OtlpReceiver, OtlpReceiverConfig, OtlpReceiverFactory};

/// Adds every receiver of this crate to `registry`.
pub fn register(registry: &mut bizpilot_core::Registry) {
    registry.receiver(OtlpReceiverFactory);
}
