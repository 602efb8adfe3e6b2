//! bizpilot processors: components that sit inside a pipeline, between its
//! receivers and its exporters. Each module documents its config keys.

pub mod batch;
pub mod enrich;
pub mod memory_limiter;
pub mod redaction;

use bizpilot_core::Registry;

/// Registers every processor of this crate.
pub fn register(registry: &mut Registry) {
    registry.processor(batch::BatchProcessorFactory);
    registry.processor(enrich::EnrichProcessorFactory);
    registry.processor(memory_limiter::MemoryLimiterProcessorFactory::default());
    registry.processor(redaction::RedactionProcessorFactory);
}
