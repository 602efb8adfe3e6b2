//! A deterministic shop workload in the OpenTelemetry Demo ("Astronomy Shop") conventions, with its ground truth.
//!
//! It feeds the correctness tests of enrichment, business impact and the order-fulfilment KPI, and the load
//! generator. Same [`ShopConfig`] (seed included) → byte-identical emissions and truth.
//!
//! # Model
//! - **Catalog** ([`Catalog`]): customers `cust-000042` with a skewed tier, a region and an email; products
//!   `SKU-0001` with names and exact unit prices. Available as CSV reference data.
//! - **Sessions** start as a Poisson process (`orders_per_sec`) in `[start, start + duration)`. A session picks a
//!   free customer (one active cart per customer), browses products (browse traces), adds 1–5 line items (one
//!   AddItem trace each) and checks out: an **order** (a UUID order id) whose value is Σ quantity × unit price +
//!   shipping (free from 100.00, else 5.99 + 1.50 per further line item).
//! - **Checkout attempts** of an order are traces (see [`spans`]); the first one emits `order.placed`; a failed
//!   one `payment.failed`; a successful one `order.paid`, then `order.shipped` and `order.delivered` (or, rarely,
//!   `order.cancelled`). A customer who gives up after failures has the order cancelled.
//! - **Injections** (all off by default, see [`config`]): payment outages, retries of the same cart (same order
//!   id, possibly succeeding after the outage), duplicate traces, late and out-of-order arrival, events arriving
//!   after their spans, slow shipping.
//! - Every emission has an *event* time and an *arrival* time; [`Shop::stream`] yields them in arrival order
//!   with memory bounded by what is in flight.
//!
//! # API
//! - [`Shop::generate`]: the whole [`Workload`] in memory (emissions + [`GroundTruth`] + catalog), for tests.
//! - [`Shop::stream`]: an iterator of [`Emission`]s for long runs (the load generator); [`Shop::stream_with_truth`]
//!   accumulates the truth alongside ([`ShopStream::into_truth`]); [`Shop::truth`] computes only the truth.
//! - Spans are held protobuf-encoded ([`ServiceSpan::encoded`], [`ServiceSpan::decode`]). [`TraceBatcher`] /
//!   [`pack_traces_encoded`] pack traces into encoded `ExportTraceServiceRequest`s of N spans (what a client
//!   sends; `bizpilot_core::Traces::from_bytes` takes them as they are), [`pack_traces`] into decoded ones;
//!   [`LogBatcher`] / [`pack_events`] pack events into `ExportLogsServiceRequest`s.
//! - [`BusinessEvent::to_json`] / [`BusinessEvent::to_log_record`] (and their inverses) — see [`event`] for the
//!   JSON field mapping and the log-record attributes.
//! - The ground-truth definitions are in [`truth`].
#![forbid(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod emission;
pub mod event;
mod pb;
pub mod queueing;
mod sim;
pub mod spans;
pub mod truth;

pub use catalog::{Catalog, Customer, Product, Tier};
pub use config::{AttributePrefix, ConfigError, MoneyAttributes, ShopConfig};
pub use emission::{
    Emission, EmissionKind, LogBatcher, TraceBatcher, TraceData, pack_events, pack_traces, pack_traces_encoded,
};
pub use event::{BusinessEvent, EventError, EventType, LineItem};
pub use sim::ShopStream;
pub use spans::{Service, ServiceResource, ServiceSpan};
pub use truth::GroundTruth;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::Arc;

/// Entry points.
pub struct Shop;

impl Shop {
    /// Generates the whole workload in memory.
    pub fn generate(cfg: &ShopConfig) -> Result<Workload, ConfigError> {
        let mut stream = ShopStream::new(cfg, true)?;
        let emissions: Vec<Emission> = stream.by_ref().collect();
        let catalog = stream.catalog().clone();
        let truth = stream.into_truth().ok_or_else(|| ConfigError {
            path: String::new(),
            message: "no truth".into(),
        })?;
        Ok(Workload {
            emissions,
            truth,
            catalog,
        })
    }

    /// The emissions in arrival order, without keeping them or the truth.
    pub fn stream(cfg: &ShopConfig) -> Result<ShopStream, ConfigError> {
        ShopStream::new(cfg, false)
    }

    /// The emissions in arrival order, accumulating the ground truth (which grows with the run).
    pub fn stream_with_truth(cfg: &ShopConfig) -> Result<ShopStream, ConfigError> {
        ShopStream::new(cfg, true)
    }

    /// Only the ground truth (the emissions are generated and dropped).
    pub fn truth(cfg: &ShopConfig) -> Result<GroundTruth, ConfigError> {
        let s = ShopStream::new(cfg, true)?;
        s.into_truth().ok_or_else(|| ConfigError {
            path: String::new(),
            message: "no truth".into(),
        })
    }
}

/// A generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// In arrival order.
    pub emissions: Vec<Emission>,
    pub truth: GroundTruth,
    pub catalog: Arc<Catalog>,
}

impl Workload {
    /// The traces, in arrival order (duplicates included).
    pub fn traces(&self) -> impl Iterator<Item = &TraceData> {
        self.emissions.iter().filter_map(Emission::as_trace)
    }

    /// The business events, in arrival order.
    pub fn events(&self) -> impl Iterator<Item = &BusinessEvent> {
        self.emissions.iter().filter_map(Emission::as_event)
    }

    /// All traces packed into requests of `max_spans` spans, in arrival order.
    pub fn trace_requests(&self, max_spans: usize) -> Vec<ExportTraceServiceRequest> {
        pack_traces(self.traces(), max_spans)
    }

    /// The same, protobuf-encoded (what a client would send).
    pub fn trace_requests_encoded(&self, max_spans: usize) -> Vec<Vec<u8>> {
        pack_traces_encoded(self.traces(), max_spans)
    }

    /// All events packed into log requests of `max_records` records, in arrival order.
    pub fn log_requests(&self, max_records: usize) -> Vec<ExportLogsServiceRequest> {
        pack_events(self.events(), max_records)
    }
}
