//! The `forward` connector: joins pipelines of the same signal. It is the
//! exporter of one or more pipelines and the receiver of others, and passes
//! every batch on unchanged (traces → traces, metrics → metrics, logs → logs),
//! to every pipeline of that signal that lists it as a receiver.
//!
//! It has no settings.
//!
//! ```yaml
//! connectors:
//!   forward:
//! service:
//!   pipelines:
//!     traces/in:
//!       receivers: [otlp]
//!       processors: [memory_limiter]
//!       exporters: [forward]
//!     traces/out:
//!       receivers: [forward]
//!       processors: [batch]
//!       exporters: [otlp]
//! ```

use serde::Deserialize;
use std::collections::BTreeSet;

use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, Connector, ConnectorFactory, CreateContext,
    Out, Signal, Stability, Stage,
};

/// The component type name.
pub const TYPE: &str = "forward";

/// `forward` has no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {}

impl ComponentConfig for ForwardConfig {}

/// Makes `forward` connectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardConnectorFactory;

impl ConnectorFactory for ForwardConnectorFactory {
    type Config = ForwardConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Connector,
            stability: Stability::Beta,
            description: "Passes data from pipelines to other pipelines of the same signal.",
            signals: &Signal::ALL,
            connects: &[
                (Signal::Traces, Signal::Traces),
                (Signal::Metrics, Signal::Metrics),
                (Signal::Logs, Signal::Logs),
            ],
        }
    }

    fn create(&self, _config: ForwardConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Connector>, ComponentError> {
        let unmatched: BTreeSet<Signal> = ctx.signals.difference(&ctx.output_signals).copied().collect();
        if !unmatched.is_empty() {
            return Err(ComponentError::Config(format!(
                "forward connects a signal only to itself; no pipeline receives {} from it",
                unmatched.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Box::new(ForwardConnector))
    }
}

/// A `forward` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardConnector;

impl Connector for ForwardConnector {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        self
    }
}

/// Passes every batch to the pipelines of its signal (the driver routes by signal).
impl Stage for ForwardConnector {
    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        out.send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::ack::{Ack, Delivery};
    use bizpilot_core::component::{Output, Target, parse_config};
    use bizpilot_core::{ConnectorContext, Extensions, Logs, Payload, ReceiverOutput, Running, Traces};
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn target(name: &str, cap: usize) -> (Output, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Output::new(
                vec![Target {
                    name: name.into(),
                    sender: tx,
                }],
                Vec::new(),
            ),
            rx,
        )
    }

    fn traces() -> Batch {
        Batch::new(Payload::Traces(Traces::default()))
    }

    struct Harness {
        input: mpsc::Sender<Batch>,
        abort: CancellationToken,
        running: Running,
    }

    fn start(outputs: HashMap<Signal, Output>) -> Harness {
        let (tx, rx) = mpsc::channel(4);
        let abort = CancellationToken::new();
        let connector: Box<dyn Connector> = Box::new(ForwardConnector);
        let running = connector
            .start(ConnectorContext {
                id: "forward".parse().unwrap(),
                input: rx,
                output: ReceiverOutput::new(outputs),
                abort: abort.clone(),
            })
            .unwrap();
        Harness {
            input: tx,
            abort,
            running,
        }
    }

    #[test]
    fn config_and_info() {
        assert!(parse_config::<ForwardConfig>(&serde_yaml::Value::Null).is_ok());
        let raw: serde_yaml::Value = serde_yaml::from_str("x: 1").unwrap();
        assert_eq!(parse_config::<ForwardConfig>(&raw).unwrap_err()[0].path, "x");
        let info = ForwardConnectorFactory.info();
        assert_eq!(info.kind, ComponentKind::Connector);
        assert!(info.connects.contains(&(Signal::Logs, Signal::Logs)));
        assert!(!info.connects.contains(&(Signal::Logs, Signal::Traces)));
    }

    #[test]
    fn create_refuses_a_signal_nobody_receives() {
        let id = "forward".parse().unwrap();
        let ext = Extensions::default();
        let ctx = |signals: &[Signal], out: &[Signal]| CreateContext {
            id: &id,
            pipeline: None,
            signals: signals.iter().copied().collect(),
            output_signals: out.iter().copied().collect(),
            extensions: &ext,
        };
        assert!(
            ForwardConnectorFactory
                .create(
                    ForwardConfig::default(),
                    &ctx(&[Signal::Traces], &[Signal::Traces, Signal::Logs])
                )
                .is_ok()
        );
        assert!(
            ForwardConnectorFactory
                .create(
                    ForwardConfig::default(),
                    &ctx(&[Signal::Traces, Signal::Logs], &[Signal::Traces])
                )
                .is_err()
        );
    }

    #[tokio::test]
    async fn passes_each_signal_to_its_pipelines_and_ends_when_input_closes() {
        let (t1, mut rt1) = target("traces/a", 4);
        let (t2, mut rt2) = target("traces/b", 4);
        let (l, mut rl) = target("logs", 4);
        let mut traces_out = t1;
        traces_out.extend(t2);
        let mut h = start(HashMap::from([(Signal::Traces, traces_out), (Signal::Logs, l)]));
        let (ack, done) = Ack::channel();
        h.input
            .send(Batch::with_ack(Payload::Traces(Traces::default()), ack))
            .await
            .unwrap();
        h.input.send(Batch::new(Payload::Logs(Logs::default()))).await.unwrap();
        let a = rt1.recv().await.unwrap();
        let b = rt2.recv().await.unwrap();
        assert_eq!((a.signal(), b.signal()), (Signal::Traces, Signal::Traces));
        assert_eq!(rl.recv().await.unwrap().signal(), Signal::Logs);
        drop(a);
        drop(b);
        assert_eq!(done.await.unwrap(), Delivery::Delivered);
        drop(h.input);
        h.running.join().await.unwrap();
        assert!(
            rt1.recv().await.is_none(),
            "outputs are dropped when the connector ends"
        );
    }

    #[tokio::test]
    async fn a_signal_without_pipeline_is_failed() {
        let (t, _rt) = target("traces", 4);
        let mut h = start(HashMap::from([(Signal::Traces, t)]));
        let (ack, done) = Ack::channel();
        h.input
            .send(Batch::with_ack(Payload::Logs(Logs::default()), ack))
            .await
            .unwrap();
        assert_eq!(done.await.unwrap(), Delivery::Failed);
        drop(h.input);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_room_and_fails_on_abort() {
        let (t, mut rt) = target("traces", 1);
        let mut h = start(HashMap::from([(Signal::Traces, t)]));
        let mut dones = Vec::new();
        for _ in 0..3 {
            let (ack, done) = Ack::channel();
            let mut b = traces();
            b.acks.push(ack);
            h.input.send(b).await.unwrap();
            dones.push(done);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!h.running.is_finished(), "blocked on a full pipeline, not dropping");
        h.abort.cancel();
        h.running.join().await.unwrap();
        let first = rt.recv().await.unwrap();
        drop(first);
        let mut outcomes = Vec::new();
        for d in dones {
            outcomes.push(d.await.unwrap());
        }
        assert_eq!(outcomes, [Delivery::Delivered, Delivery::Failed, Delivery::Failed]);
    }

    #[tokio::test]
    async fn closed_pipeline_fails_and_errors() {
        let (t, mut rt) = target("traces", 1);
        rt.close();
        let mut h = start(HashMap::from([(Signal::Traces, t)]));
        let (ack, done) = Ack::channel();
        h.input
            .send(Batch::with_ack(Payload::Traces(Traces::default()), ack))
            .await
            .unwrap();
        assert_eq!(done.await.unwrap(), Delivery::Failed);
        assert!(h.running.join().await.is_err());
    }
}
