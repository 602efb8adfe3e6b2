//! bizpilot connectors: components that are the exporter of some pipelines and
//! the receiver of others. Each module documents its config keys.

pub mod fleet;
pub mod forward;
pub mod impact;
pub mod kpi;
pub mod plan;
pub mod stats;

mod otlp_out;
mod tick;

use bizpilot_core::Registry;

/// Registers every connector of this crate.
pub fn register(registry: &mut Registry) {
    registry.connector(fleet::BusinessFleetConnectorFactory);
    registry.connector(forward::ForwardConnectorFactory);
    registry.connector(impact::BusinessImpactConnectorFactory);
    registry.connector(kpi::OrderKpiConnectorFactory);
    registry.connector(plan::CapacityPlannerConnectorFactory);
}
