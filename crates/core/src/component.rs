//! Component traits, factories and the contexts components run in.
//!
//! Every component family has a factory trait with a typed config
//! ([`ComponentConfig`]: serde defaults plus [`ComponentConfig::validate`]) and
//! a runtime trait. Receivers, exporters and extensions `start`: they bind what
//! they need, spawn their task and return a [`Running`] handle. Processors and
//! connectors have no loop of their own: they turn into a [`Stage`] that the
//! stage driver ([`crate::stage`]) runs, with the standard counters. Data moves between components over bounded
//! channels of [`Batch`]es; a full channel makes the sender wait, so
//! backpressure travels from the slowest exporter back to the receivers,
//! which then refuse with a retryable error.

use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ComponentId, PipelineId};
use crate::pdata::{Batch, Signal};
use crate::stage::Stage;

/// The five component families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    Receiver,
    Processor,
    Exporter,
    Connector,
    Extension,
}

impl ComponentKind {
    /// The config section holding components of this kind (`receivers`, …).
    pub fn section(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receivers",
            ComponentKind::Processor => "processors",
            ComponentKind::Exporter => "exporters",
            ComponentKind::Connector => "connectors",
            ComponentKind::Extension => "extensions",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receiver",
            ComponentKind::Processor => "processor",
            ComponentKind::Exporter => "exporter",
            ComponentKind::Connector => "connector",
            ComponentKind::Extension => "extension",
        }
    }
}

/// How settled a component is, as in the OpenTelemetry Collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    Development,
    Alpha,
    Beta,
    Stable,
}

impl fmt::Display for Stability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stability::Development => "development",
            Stability::Alpha => "alpha",
            Stability::Beta => "beta",
            Stability::Stable => "stable",
        })
    }
}

/// What a factory tells about its components.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub type_name: &'static str,
    pub kind: ComponentKind,
    pub stability: Stability,
    pub description: &'static str,
    /// Signals handled (receivers produce, processors and exporters consume).
    pub signals: &'static [Signal],
    /// For connectors: the (input, output) signal pairs supported.
    pub connects: &'static [(Signal, Signal)],
}

/// A problem in one field of a component's config, relative to the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path inside the component config, e.g. `protocols.grpc.endpoint`; empty for the whole.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A component's typed configuration.
pub trait ComponentConfig: DeserializeOwned + Default + Send + 'static {
    /// Checks that serde's types cannot express. Return every problem, not only the first.
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
}

/// Parses a component config from its YAML value; `null` (a bare `batch:`) gives the defaults.
pub fn parse_config<C: ComponentConfig>(raw: &serde_yaml::Value) -> Result<C, Vec<FieldError>> {
    let cfg: C = if raw.is_null() {
        C::default()
    } else {
        serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            vec![FieldError::new(path, e.into_inner().to_string())]
        })?
    };
    let errors = cfg.validate();
    if errors.is_empty() { Ok(cfg) } else { Err(errors) }
}

/// Errors creating, starting or running a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A started component's task.
#[derive(Debug)]
pub struct Running {
    handle: JoinHandle<Result<(), ComponentError>>,
}

impl Running {
    /// Spawns the component's main task.
    pub fn spawn<F>(fut: F) -> Self
    where
        F: Future<Output = Result<(), ComponentError>> + Send + 'static,
    {
        Running {
            handle: tokio::spawn(fut),
        }
    }

    /// A component with no task of its own.
    pub fn idle() -> Self {
        Running::spawn(async { Ok(()) })
    }

    pub fn abort(&self) {
        self.handle.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the task to end.
    pub async fn join(&mut self) -> Result<(), ComponentError> {
        match (&mut self.handle).await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(ComponentError::Other(format!("task panicked: {e}"))),
        }
    }
}

/// Why data was not accepted into a pipeline. All refusals are retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The pipeline's queue stayed full for the receiver's wait limit.
    #[error("pipeline {0} is full")]
    Full(String),
    /// A memory limiter is above its soft limit.
    #[error("memory limit reached ({0})")]
    MemoryLimit(String),
    /// The pipeline is shutting down.
    #[error("pipeline is shutting down")]
    ShuttingDown,
    /// The data entered the pipeline but was not confirmed delivered (a receiver that waits for
    /// delivery: an exporter gave up, or the wait timed out). Retrying may deliver it twice.
    #[error("not delivered: {0}")]
    NotDelivered(String),
}

impl Refusal {
    /// Short label for self-telemetry.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full(_) => "queue_full",
            Refusal::MemoryLimit(_) => "memory_limit",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::NotDelivered(_) => "not_delivered",
        }
    }
}

/// A gate that can refuse data before it enters a pipeline (the memory limiter).
pub trait Admission: Send + Sync + 'static {
    fn check(&self) -> Result<(), Refusal>;
}

/// One downstream channel.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub sender: mpsc::Sender<Batch>,
}

/// Where a component sends batches: one or more downstream channels, each
/// receiving its own copy, behind optional admission gates.
#[derive(Clone, Default)]
pub struct Output {
    targets: Vec<Target>,
    admission: Vec<Arc<dyn Admission>>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("targets", &self.targets.iter().map(|t| &t.name).collect::<Vec<_>>())
            .field("gates", &self.admission.len())
            .finish()
    }
}

impl Output {
    pub fn new(targets: Vec<Target>, admission: Vec<Arc<dyn Admission>>) -> Self {
        Self { targets, admission }
    }

    /// Adds the targets and gates of another output.
    pub fn extend(&mut self, other: Output) {
        self.targets.extend(other.targets);
        self.admission.extend(other.admission);
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Free slots in the fullest target.
    pub fn free_slots(&self) -> usize {
        self.targets.iter().map(|t| t.sender.capacity()).min().unwrap_or(0)
    }

    /// Checks the admission gates without sending.
    pub fn admit(&self) -> Result<(), Refusal> {
        for g in &self.admission {
            g.check()?;
        }
        Ok(())
    }

    /// Sends to every target, waiting for room (internal hand-off between components).
    /// Fails only when a target has shut down; the batch's acknowledgements are then failed.
    pub async fn send(&self, batch: Batch) -> Result<(), Refusal> {
        self.send_inner(batch, None).await
    }

    /// Sends to every target after the admission gates agree, waiting at most `wait`
    /// for room in each (receivers use this so a client is refused rather than held forever).
    /// On refusal the batch's acknowledgements are failed (its source may resend).
    pub async fn send_with_deadline(&self, batch: Batch, wait: Duration) -> Result<(), Refusal> {
        self.admit()?;
        self.send_inner(batch, Some(wait)).await
    }

    async fn send_inner(&self, batch: Batch, wait: Option<Duration>) -> Result<(), Refusal> {
        let n = self.targets.len();
        if n == 0 {
            return Ok(());
        }
        let mut batch = Some(batch);
        for (i, t) in self.targets.iter().enumerate() {
            let b = if i + 1 == n {
                match batch.take() {
                    Some(b) => b,
                    None => return Ok(()),
                }
            } else {
                match batch.as_ref() {
                    Some(b) => b.clone(),
                    None => return Ok(()),
                }
            };
            let sent = match wait {
                None => t.sender.send(b).await.map_err(|e| {
                    e.0.fail();
                    Refusal::ShuttingDown
                }),
                Some(w) => match t.sender.try_send(b) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Closed(b)) => {
                        b.fail();
                        Err(Refusal::ShuttingDown)
                    }
                    Err(mpsc::error::TrySendError::Full(b)) => match t.sender.send_timeout(b, w).await {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::SendTimeoutError::Timeout(b)) => {
                            b.fail();
                            Err(Refusal::Full(t.name.clone()))
                        }
                        Err(mpsc::error::SendTimeoutError::Closed(b)) => {
                            b.fail();
                            Err(Refusal::ShuttingDown)
                        }
                    },
                },
            };
            sent?;
        }
        Ok(())
    }
}

/// A receiver's outputs, one per signal it feeds.
#[derive(Clone, Default, Debug)]
pub struct ReceiverOutput {
    outputs: HashMap<Signal, Output>,
}

impl ReceiverOutput {
    pub fn new(outputs: HashMap<Signal, Output>) -> Self {
        Self { outputs }
    }
    /// The output for `signal`, if any pipeline of that signal uses this receiver.
    pub fn get(&self, signal: Signal) -> Option<&Output> {
        self.outputs.get(&signal)
    }
    pub fn signals(&self) -> BTreeSet<Signal> {
        self.outputs.keys().copied().collect()
    }
}

/// A JSON response of the HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiResponse {
    pub fn ok(body: serde_json::Value) -> Self {
        Self { status: 200, body }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
        }
    }
}

/// A read-only part of the HTTP API that a component serves on the admin server under `/api/v1/`.
pub trait ApiHandler: Send + Sync + 'static {
    /// Answers `path` (after `/api/v1/`, e.g. `impact`), or `None` when the path is not this handler's.
    fn handle(&self, path: &str, query: &[(String, String)]) -> Option<ApiResponse>;
}

/// The HTTP API handlers registered by running components.
#[derive(Clone, Default)]
pub struct ApiRegistry {
    handlers: Arc<std::sync::RwLock<Vec<Arc<dyn ApiHandler>>>>,
}

impl ApiRegistry {
    pub fn register(&self, handler: Arc<dyn ApiHandler>) {
        if let Ok(mut h) = self.handlers.write() {
            h.push(handler);
        }
    }

    /// The first handler's answer for `path`, if any handler knows it.
    pub fn dispatch(&self, path: &str, query: &[(String, String)]) -> Option<ApiResponse> {
        let handlers = self.handlers.read().ok()?.clone();
        handlers.iter().find_map(|h| h.handle(path, query))
    }
}

/// The service's readiness (what `/readyz` and the `health_check` extension report): ready once
/// every component started, until shutdown begins, and while no component holds it down with a
/// [`ReadinessHold`] (e.g. a receiver restoring the state of newly assigned partitions before it
/// consumes them). [`Readiness::flag`] is the published value, recomputed on every change.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    /// (started and not shutting down, holds).
    state: std::sync::Mutex<(bool, usize)>,
    flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// The published readiness: true when started and not held.
    pub fn flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.inner.flag.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.inner.flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every component started (`true`) or shutdown began (`false`).
    pub fn set_started(&self, started: bool) {
        self.update(|s| s.0 = started);
    }

    /// Holds readiness down until the returned guard is dropped.
    pub fn hold(&self) -> ReadinessHold {
        self.update(|s| s.1 += 1);
        ReadinessHold(self.clone())
    }

    fn update(&self, f: impl FnOnce(&mut (bool, usize))) {
        let mut s = self
            .inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s);
        self.inner
            .flag
            .store(s.0 && s.1 == 0, std::sync::atomic::Ordering::Release);
    }
}

/// Keeps the service not ready while it lives ([`Readiness::hold`]).
#[derive(Debug)]
pub struct ReadinessHold(Readiness);

impl Drop for ReadinessHold {
    fn drop(&mut self) {
        self.0.update(|s| s.1 = s.1.saturating_sub(1));
    }
}

/// Shared access to started extensions, by id, and to the HTTP API registry.
#[derive(Clone, Default)]
pub struct Extensions {
    items: HashMap<ComponentId, Arc<dyn Any + Send + Sync>>,
    api: ApiRegistry,
    readiness: Readiness,
    /// What components (not extensions) share with later ones, by the publisher's id ([`Extensions::publish`]).
    published: Arc<std::sync::Mutex<HashMap<ComponentId, Arc<dyn Any + Send + Sync>>>>,
}

impl Extensions {
    /// Extensions sharing an existing API registry (the admin server's).
    pub fn with_api(api: ApiRegistry) -> Self {
        Self {
            items: HashMap::new(),
            api,
            readiness: Readiness::default(),
            published: Default::default(),
        }
    }

    /// Shares `item` under the component `id` with the components created after it (every copy of these
    /// extensions sees it): e.g. a connector's partitioned state, which a receiver created later restores and
    /// writes to a changelog (`docs/partition-state.md`).
    pub fn publish(&self, id: ComponentId, item: Arc<dyn Any + Send + Sync>) {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, item);
    }

    /// What the component `id` published as type `T`, if anything.
    pub fn published<T: Any + Send + Sync>(&self, id: &ComponentId) -> Option<Arc<T>> {
        let any = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)?
            .clone();
        any.downcast::<T>().ok()
    }

    /// These extensions with the service's readiness (components hold it down with it).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The service's readiness: a component that must not be counted ready for a while (a restore)
    /// takes a [`Readiness::hold`].
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Where components register their HTTP API handlers.
    pub fn api(&self) -> &ApiRegistry {
        &self.api
    }

    pub fn insert(&mut self, id: ComponentId, ext: Arc<dyn Any + Send + Sync>) {
        self.items.insert(id, ext);
    }

    /// The extension `id` as type `T`, or a message saying why not.
    pub fn get<T: Any + Send + Sync>(&self, id: &ComponentId) -> Result<Arc<T>, String> {
        let any = self
            .items
            .get(id)
            .ok_or_else(|| format!("extension {id} is not defined or not enabled in service.extensions"))?;
        any.clone()
            .downcast::<T>()
            .map_err(|_| format!("extension {id} is not of the expected type"))
    }
}

/// What every factory's `create` gets.
pub struct CreateContext<'a> {
    pub id: &'a ComponentId,
    /// For processors: the pipeline the instance serves.
    pub pipeline: Option<&'a PipelineId>,
    /// Signals the component is used with (inputs for processors, exporters and connectors).
    pub signals: BTreeSet<Signal>,
    /// For connectors: signals of the pipelines it feeds.
    pub output_signals: BTreeSet<Signal>,
    pub extensions: &'a Extensions,
}

/// A running receiver's context.
pub struct ReceiverContext {
    pub id: ComponentId,
    pub output: ReceiverOutput,
    /// Cancelled when the receiver must stop accepting data.
    pub shutdown: CancellationToken,
}

/// A running processor's context. The processor reads `input` until it is closed
/// (everything upstream has stopped), sends what it still holds, and returns.
pub struct ProcessorContext {
    pub id: ComponentId,
    pub pipeline: PipelineId,
    pub input: mpsc::Receiver<Batch>,
    pub output: Output,
    /// Cancelled when the drain deadline has passed: stop waiting and return.
    pub abort: CancellationToken,
}

/// A running exporter's context. The exporter reads `input` until it is closed,
/// delivers what it holds, and returns.
pub struct ExporterContext {
    pub id: ComponentId,
    pub input: mpsc::Receiver<Batch>,
    /// Cancelled when the drain deadline has passed: give up retries and return.
    pub abort: CancellationToken,
}

/// A running connector's context: an exporter of some pipelines and a receiver of others.
pub struct ConnectorContext {
    pub id: ComponentId,
    pub input: mpsc::Receiver<Batch>,
    pub output: ReceiverOutput,
    pub abort: CancellationToken,
}

/// A running extension's context.
pub struct ExtensionContext {
    pub id: ComponentId,
    pub shutdown: CancellationToken,
    /// The service's readiness: false while components start and once shutdown begins, true in
    /// between (what the `health_check` extension reports).
    pub ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub trait Receiver: Send + 'static {
    /// Binds listeners or connects, spawns the receiving task and returns. Must stop
    /// accepting new data when `ctx.shutdown` is cancelled and then return, dropping its outputs.
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError>;
}

pub trait Processor: Send + 'static {
    /// A gate checked by receivers before they hand data to this processor's pipeline.
    fn admission(&self) -> Option<Arc<dyn Admission>> {
        None
    }
    /// The stage the core driver runs for this processor ([`crate::stage`]): a processor
    /// has no run loop of its own.
    fn into_stage(self: Box<Self>) -> Box<dyn Stage>;
}

impl dyn Processor {
    /// Starts the processor: the stage driver runs its stage until the input closes.
    pub fn start(self: Box<Self>, ctx: ProcessorContext) -> Result<Running, ComponentError> {
        Ok(crate::stage::run_processor(ctx, self.into_stage()))
    }
}

pub trait Exporter: Send + 'static {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError>;
}

pub trait Connector: Send + 'static {
    /// The stage the core driver runs for this connector ([`crate::stage`]): a connector
    /// has no run loop of its own.
    fn into_stage(self: Box<Self>) -> Box<dyn Stage>;
}

impl dyn Connector {
    /// Starts the connector: the stage driver runs its stage until the input closes.
    pub fn start(self: Box<Self>, ctx: ConnectorContext) -> Result<Running, ComponentError> {
        Ok(crate::stage::run_connector(ctx, self.into_stage()))
    }
}

pub trait Extension: Send + Sync + 'static {
    /// Starts background work, if any.
    fn start(self: Arc<Self>, ctx: ExtensionContext) -> Result<Running, ComponentError>;
    /// The handle other components look up (usually `self`).
    fn shared(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

pub trait ReceiverFactory: Send + Sync + 'static {
    type Config: ComponentConfig;
    fn info(&self) -> ComponentInfo;
    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Receiver>, ComponentError>;
}

pub trait ProcessorFactory: Send + Sync + 'static {
    type Config: ComponentConfig;
    fn info(&self) -> ComponentInfo;
    /// Called once per pipeline the processor appears in.
    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError>;
}

pub trait ExporterFactory: Send + Sync + 'static {
    type Config: ComponentConfig;
    fn info(&self) -> ComponentInfo;
    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError>;
}

pub trait ConnectorFactory: Send + Sync + 'static {
    type Config: ComponentConfig;
    fn info(&self) -> ComponentInfo;
    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Connector>, ComponentError>;
}

pub trait ExtensionFactory: Send + Sync + 'static {
    type Config: ComponentConfig;
    fn info(&self) -> ComponentInfo;
    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Arc<dyn Extension>, ComponentError>;
}

/// A created component of any family.
pub enum Built {
    Receiver(Box<dyn Receiver>),
    Processor(Box<dyn Processor>),
    Exporter(Box<dyn Exporter>),
    Connector(Box<dyn Connector>),
    Extension(Arc<dyn Extension>),
}

/// A factory with its config type erased, as the registry keeps it.
pub trait DynFactory: Send + Sync + 'static {
    fn info(&self) -> ComponentInfo;
    /// Parses and validates a config without creating anything.
    fn check(&self, raw: &serde_yaml::Value) -> Result<(), Vec<FieldError>>;
    fn build(&self, raw: &serde_yaml::Value, ctx: &CreateContext<'_>) -> Result<Built, ComponentError>;
}

fn config_error(errors: Vec<FieldError>) -> ComponentError {
    ComponentError::Config(
        errors
            .into_iter()
            .map(|e| {
                if e.path.is_empty() {
                    e.message
                } else {
                    format!("{}: {}", e.path, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

macro_rules! erase {
    ($wrapper:ident, $factory:ident, $variant:ident) => {
        pub(crate) struct $wrapper<F>(pub F);
        impl<F: $factory> DynFactory for $wrapper<F> {
            fn info(&self) -> ComponentInfo {
                self.0.info()
            }
            fn check(&self, raw: &serde_yaml::Value) -> Result<(), Vec<FieldError>> {
                parse_config::<F::Config>(raw).map(|_| ())
            }
            fn build(&self, raw: &serde_yaml::Value, ctx: &CreateContext<'_>) -> Result<Built, ComponentError> {
                let cfg = parse_config::<F::Config>(raw).map_err(config_error)?;
                self.0.create(cfg, ctx).map(Built::$variant)
            }
        }
    };
}

erase!(ErasedReceiver, ReceiverFactory, Receiver);
erase!(ErasedProcessor, ProcessorFactory, Processor);
erase!(ErasedExporter, ExporterFactory, Exporter);
erase!(ErasedConnector, ConnectorFactory, Connector);
erase!(ErasedExtension, ExtensionFactory, Extension);

/// Every component type the binary knows, by family and type name.
#[derive(Default, Clone)]
pub struct Registry {
    factories: HashMap<(ComponentKind, &'static str), Arc<dyn DynFactory>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn receiver(&mut self, f: impl ReceiverFactory) -> &mut Self {
        self.insert(Arc::new(ErasedReceiver(f)))
    }
    pub fn processor(&mut self, f: impl ProcessorFactory) -> &mut Self {
        self.insert(Arc::new(ErasedProcessor(f)))
    }
    pub fn exporter(&mut self, f: impl ExporterFactory) -> &mut Self {
        self.insert(Arc::new(ErasedExporter(f)))
    }
    pub fn connector(&mut self, f: impl ConnectorFactory) -> &mut Self {
        self.insert(Arc::new(ErasedConnector(f)))
    }
    pub fn extension(&mut self, f: impl ExtensionFactory) -> &mut Self {
        self.insert(Arc::new(ErasedExtension(f)))
    }
    fn insert(&mut self, f: Arc<dyn DynFactory>) -> &mut Self {
        let info = f.info();
        self.factories.insert((info.kind, info.type_name), f);
        self
    }
    pub fn get(&self, kind: ComponentKind, type_name: &str) -> Option<&Arc<dyn DynFactory>> {
        self.factories
            .iter()
            .find(|((k, t), _)| *k == kind && *t == type_name)
            .map(|(_, f)| f)
    }
    /// Every registered component, sorted by family and type.
    pub fn list(&self) -> Vec<ComponentInfo> {
        let mut v: Vec<ComponentInfo> = self.factories.values().map(|f| f.info()).collect();
        v.sort_by(|a, b| (a.kind, a.type_name).cmp(&(b.kind, b.type_name)));
        v
    }
    /// Type names registered for `kind`.
    pub fn types(&self, kind: ComponentKind) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .factories
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| *t)
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::Readiness;

    #[test]
    fn ready_only_when_started_and_not_held() {
        let r = Readiness::default();
        let flag = r.flag();
        let load = || flag.load(std::sync::atomic::Ordering::Acquire);
        assert!(!load(), "not ready before the start");
        let early = r.hold();
        r.set_started(true);
        assert!(!load(), "held since before the start");
        let second = r.hold();
        drop(early);
        assert!(!load(), "one hold left");
        drop(second);
        assert!(load() && r.is_ready(), "started, no holds");
        let h = r.hold();
        assert!(!load(), "a hold after the start lowers it");
        r.set_started(false);
        drop(h);
        assert!(!load(), "shutdown began: a released hold does not make it ready");
    }
}
