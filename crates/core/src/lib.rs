//! bizpilot core: the pipeline data model, component traits and factories,
//! the configuration model and the pipeline graph every component plugs into.
#![forbid(unsafe_code)]

pub mod ack;
pub mod auth;
pub mod component;
pub mod config;
pub mod fuzz;
pub mod graph;
pub mod money;
pub mod pb;
pub mod pdata;
pub mod rpc;
pub mod span;
pub mod stage;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod view;
pub mod wire;

pub use ack::{Ack, Delivery};
pub use component::*;
pub use config::{ComponentId, Config, Diagnostic, PipelineId, Severity, Source};
pub use graph::{RunningService, ShutdownReport, StartError};
pub use money::{Currency, Money, MoneyError, MoneyTotals};
pub use pdata::{Batch, Logs, Metrics, Payload, Signal, Traces};
pub use stage::{Out, Stage, StageInfo};
pub use storage::{StorageClient, StorageError, StorageHandle, StorageOp};
pub use wire::WireError;
