//! The pipeline graph: components created from a validated [`Config`], wired
//! with bounded channels, started in dependency order and drained on shutdown.
//!
//! ```text
//!  receiver ─┐                     ┌─► exporter
//!  receiver ─┼─► processor ─► ... ─┼─► exporter
//!  connector ┘   (one per pipeline)└─► connector ─► (receiver of another pipeline)
//! ```
//!
//! Start order: extensions, exporters and connectors, processors, receivers.
//! Shutdown: receivers stop accepting and drop their outputs; each channel then
//! closes once its senders are gone, so processors and exporters drain what was
//! accepted and end on their own. A deadline bounds the drain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::component::{
    Admission, ApiRegistry, Built, ComponentError, ComponentKind, ConnectorContext, CreateContext, ExporterContext,
    ExtensionContext, Extensions, Output, ProcessorContext, Readiness, ReceiverContext, ReceiverOutput, Registry,
    Running, Target,
};
use crate::config::{ComponentId, Config, PipelineId};
use crate::pdata::{Batch, Signal};

/// Capacity, in batches, of the channel in front of each processor and exporter.
pub const STAGE_CHANNEL_CAPACITY: usize = 4;

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{kind} {id}: {source}")]
    Component {
        kind: &'static str,
        id: String,
        #[source]
        source: ComponentError,
    },
    #[error("{0}")]
    Graph(String),
}

struct Started {
    kind: ComponentKind,
    id: String,
    running: Running,
}

/// A running pipeline graph.
pub struct RunningService {
    receivers: Vec<Started>,
    stages: Vec<Started>,
    extensions: Vec<Started>,
    receiver_shutdown: CancellationToken,
    abort: CancellationToken,
    extension_shutdown: CancellationToken,
    readiness: Readiness,
}

/// What happened during shutdown.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Components that did not finish draining before the deadline.
    pub timed_out: Vec<String>,
    /// Components that ended with an error.
    pub errors: Vec<String>,
}

impl ShutdownReport {
    pub fn is_clean(&self) -> bool {
        self.timed_out.is_empty() && self.errors.is_empty()
    }
}

fn start_err(kind: ComponentKind, id: &ComponentId, source: ComponentError) -> StartError {
    StartError::Component {
        kind: kind.as_str(),
        id: id.to_string(),
        source,
    }
}

fn build(
    registry: &Registry,
    config: &Config,
    kind: ComponentKind,
    id: &ComponentId,
    ctx: &CreateContext<'_>,
) -> Result<Built, StartError> {
    let raw = config
        .component(kind, id)
        .ok_or_else(|| StartError::Graph(format!("{} {id} is not defined", kind.as_str())))?;
    let factory = registry
        .get(kind, id.type_name())
        .ok_or_else(|| StartError::Graph(format!("unknown {} type {}", kind.as_str(), id.type_name())))?;
    factory.build(raw, ctx).map_err(|e| start_err(kind, id, e))
}

fn is_connector(config: &Config, id: &ComponentId) -> bool {
    config.component(ComponentKind::Connector, id).is_some()
}

impl RunningService {
    /// Creates and starts every component of `config`.
    pub async fn start(config: &Config, registry: &Registry) -> Result<RunningService, StartError> {
        Self::start_with_api(config, registry, ApiRegistry::default()).await
    }

    /// Like [`RunningService::start`], with components registering HTTP API handlers in `api`.
    pub async fn start_with_api(
        config: &Config,
        registry: &Registry,
        api: ApiRegistry,
    ) -> Result<RunningService, StartError> {
        let receiver_shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let extension_shutdown = CancellationToken::new();
        let mut svc = RunningService {
            receivers: Vec::new(),
            stages: Vec::new(),
            extensions: Vec::new(),
            receiver_shutdown: receiver_shutdown.clone(),
            abort: abort.clone(),
            extension_shutdown: extension_shutdown.clone(),
            readiness: Readiness::default(),
        };
        match svc.start_all(config, registry, api).await {
            Ok(()) => {
                svc.readiness.set_started(true);
                Ok(svc)
            }
            Err(e) => {
                // Stop whatever did start, quickly.
                svc.shutdown(Duration::from_secs(2)).await;
                Err(e)
            }
        }
    }

    async fn start_all(&mut self, config: &Config, registry: &Registry, api: ApiRegistry) -> Result<(), StartError> {
        // 1. Extensions.
        let mut extensions = Extensions::with_api(api).with_readiness(self.readiness.clone());
        // Storage extensions first: other extensions restore their state from them in `create`.
        let mut order: Vec<&ComponentId> = config.extensions.iter().collect();
        order.sort_by_key(|id| !crate::storage::STORAGE_EXTENSION_TYPES.contains(&id.type_name()));
        for id in order {
            let ctx = CreateContext {
                id,
                pipeline: None,
                signals: BTreeSet::new(),
                output_signals: BTreeSet::new(),
                extensions: &extensions,
            };
            let Built::Extension(ext) = build(registry, config, ComponentKind::Extension, id, &ctx)? else {
                return Err(StartError::Graph(format!("{id} is not an extension")));
            };
            let running = ext
                .clone()
                .start(ExtensionContext {
                    id: id.clone(),
                    shutdown: self.extension_shutdown.clone(),
                    ready: self.readiness.flag(),
                })
                .map_err(|e| start_err(ComponentKind::Extension, id, e))?;
            extensions.insert(id.clone(), ext.shared());
            self.extensions.push(Started {
                kind: ComponentKind::Extension,
                id: id.to_string(),
                running,
            });
        }

        // Which signals each exporter/connector consumes, and connectors produce.
        let mut exporter_signals: HashMap<ComponentId, BTreeSet<Signal>> = HashMap::new();
        let mut connector_out: HashMap<ComponentId, BTreeSet<Signal>> = HashMap::new();
        let mut receiver_signals: HashMap<ComponentId, BTreeSet<Signal>> = HashMap::new();
        for (pid, pc) in &config.pipelines {
            for e in &pc.exporters {
                exporter_signals.entry(e.clone()).or_default().insert(pid.signal);
            }
            for r in &pc.receivers {
                if is_connector(config, r) {
                    connector_out.entry(r.clone()).or_default().insert(pid.signal);
                } else {
                    receiver_signals.entry(r.clone()).or_default().insert(pid.signal);
                }
            }
        }

        // 2. Channels into exporters and connectors (created first so pipelines can target them).
        let mut sink_senders: HashMap<ComponentId, mpsc::Sender<Batch>> = HashMap::new();
        let mut exporter_inputs: Vec<(ComponentId, mpsc::Receiver<Batch>)> = Vec::new();
        let mut connector_inputs: Vec<(ComponentId, mpsc::Receiver<Batch>)> = Vec::new();
        let mut ids: Vec<&ComponentId> = exporter_signals.keys().collect();
        ids.sort();
        for id in ids {
            let (tx, rx) = mpsc::channel(STAGE_CHANNEL_CAPACITY);
            sink_senders.insert(id.clone(), tx);
            if is_connector(config, id) {
                connector_inputs.push((id.clone(), rx));
            } else {
                exporter_inputs.push((id.clone(), rx));
            }
        }

        // 3. Exporters.
        for (id, rx) in exporter_inputs {
            let ctx = CreateContext {
                id: &id,
                pipeline: None,
                signals: exporter_signals.get(&id).cloned().unwrap_or_default(),
                output_signals: BTreeSet::new(),
                extensions: &extensions,
            };
            let Built::Exporter(exp) = build(registry, config, ComponentKind::Exporter, &id, &ctx)? else {
                return Err(StartError::Graph(format!("{id} is not an exporter")));
            };
            let running = exp
                .start(ExporterContext {
                    id: id.clone(),
                    input: rx,
                    abort: self.abort.clone(),
                })
                .map_err(|e| start_err(ComponentKind::Exporter, &id, e))?;
            self.stages.push(Started {
                kind: ComponentKind::Exporter,
                id: id.to_string(),
                running,
            });
        }

        // 4. Pipelines: processors back to front; the entry is what receivers send to.
        let mut entries: HashMap<PipelineId, Output> = HashMap::new();
        for (pid, pc) in &config.pipelines {
            let targets: Vec<Target> = pc
                .exporters
                .iter()
                .filter_map(|e| {
                    sink_senders.get(e).map(|s| Target {
                        name: format!("{pid}→{e}"),
                        sender: s.clone(),
                    })
                })
                .collect();
            let mut next = Output::new(targets, Vec::new());
            let mut gates: Vec<Arc<dyn Admission>> = Vec::new();
            for pid_proc in pc.processors.iter().rev() {
                let ctx = CreateContext {
                    id: pid_proc,
                    pipeline: Some(pid),
                    signals: BTreeSet::from([pid.signal]),
                    output_signals: BTreeSet::new(),
                    extensions: &extensions,
                };
                let Built::Processor(proc_) = build(registry, config, ComponentKind::Processor, pid_proc, &ctx)? else {
                    return Err(StartError::Graph(format!("{pid_proc} is not a processor")));
                };
                if let Some(g) = proc_.admission() {
                    gates.push(g);
                }
                let (tx, rx) = mpsc::channel(STAGE_CHANNEL_CAPACITY);
                let running = proc_
                    .start(ProcessorContext {
                        id: pid_proc.clone(),
                        pipeline: pid.clone(),
                        input: rx,
                        output: next,
                        abort: self.abort.clone(),
                    })
                    .map_err(|e| start_err(ComponentKind::Processor, pid_proc, e))?;
                self.stages.push(Started {
                    kind: ComponentKind::Processor,
                    id: format!("{pid_proc} in {pid}"),
                    running,
                });
                next = Output::new(
                    vec![Target {
                        name: format!("{pid}→{pid_proc}"),
                        sender: tx,
                    }],
                    Vec::new(),
                );
            }
            gates.reverse();
            let mut entry = Output::new(Vec::new(), gates);
            entry.extend(next);
            entries.insert(pid.clone(), entry);
        }
        drop(sink_senders);

        let output_for = |id: &ComponentId| -> ReceiverOutput {
            let mut by_signal: HashMap<Signal, Output> = HashMap::new();
            for (pid, pc) in &config.pipelines {
                if pc.receivers.contains(id)
                    && let Some(entry) = entries.get(pid)
                {
                    by_signal.entry(pid.signal).or_default().extend(entry.clone());
                }
            }
            ReceiverOutput::new(by_signal)
        };

        // 5. Connectors.
        for (id, rx) in connector_inputs {
            let ctx = CreateContext {
                id: &id,
                pipeline: None,
                signals: exporter_signals.get(&id).cloned().unwrap_or_default(),
                output_signals: connector_out.get(&id).cloned().unwrap_or_default(),
                extensions: &extensions,
            };
            let Built::Connector(conn) = build(registry, config, ComponentKind::Connector, &id, &ctx)? else {
                return Err(StartError::Graph(format!("{id} is not a connector")));
            };
            let running = conn
                .start(ConnectorContext {
                    id: id.clone(),
                    input: rx,
                    output: output_for(&id),
                    abort: self.abort.clone(),
                })
                .map_err(|e| start_err(ComponentKind::Connector, &id, e))?;
            self.stages.push(Started {
                kind: ComponentKind::Connector,
                id: id.to_string(),
                running,
            });
        }

        // 6. Receivers, last: data flows only once everything downstream runs.
        let mut rids: Vec<&ComponentId> = receiver_signals.keys().collect();
        rids.sort();
        for id in rids {
            let ctx = CreateContext {
                id,
                pipeline: None,
                signals: receiver_signals.get(id).cloned().unwrap_or_default(),
                output_signals: BTreeSet::new(),
                extensions: &extensions,
            };
            let Built::Receiver(recv) = build(registry, config, ComponentKind::Receiver, id, &ctx)? else {
                return Err(StartError::Graph(format!("{id} is not a receiver")));
            };
            let running = recv
                .start(ReceiverContext {
                    id: id.clone(),
                    output: output_for(id),
                    shutdown: self.receiver_shutdown.clone(),
                })
                .map_err(|e| start_err(ComponentKind::Receiver, id, e))?;
            self.receivers.push(Started {
                kind: ComponentKind::Receiver,
                id: id.to_string(),
                running,
            });
        }
        Ok(())
    }

    /// True once every component started, until shutdown begins, except while a component holds
    /// it down ([`crate::component::Readiness::hold`]).
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.readiness.flag()
    }

    /// Stops accepting data, drains what was accepted to the exporters within
    /// `deadline`, then stops the extensions.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.readiness.set_started(false);
        let mut report = ShutdownReport::default();
        let until = tokio::time::Instant::now() + deadline;
        self.receiver_shutdown.cancel();
        let groups = [self.receivers, self.stages];
        for group in groups {
            for mut s in group {
                let id = format!("{} {}", s.kind.as_str(), s.id);
                let remaining = until.saturating_duration_since(tokio::time::Instant::now());
                let joined = match tokio::time::timeout(remaining, s.running.join()).await {
                    Ok(r) => Some(r),
                    Err(_) => {
                        // Deadline passed: tell everyone to stop retrying, give a moment, then abort.
                        self.abort.cancel();
                        match tokio::time::timeout(Duration::from_millis(500), s.running.join()).await {
                            Ok(r) => Some(r),
                            Err(_) => {
                                s.running.abort();
                                None
                            }
                        }
                    }
                };
                match joined {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::error!(component = %id, error = %e, "component ended with an error");
                        report.errors.push(format!("{id}: {e}"));
                    }
                    None => {
                        tracing::warn!(component = %id, "did not drain before the shutdown deadline");
                        report.timed_out.push(id);
                    }
                }
            }
        }
        self.abort.cancel();
        self.extension_shutdown.cancel();
        for mut s in self.extensions {
            if tokio::time::timeout(Duration::from_secs(2), s.running.join())
                .await
                .is_err()
            {
                s.running.abort();
            }
        }
        report
    }
}
