//! The pipeline graph end to end, with small test components: configs are YAML
//! text, validated against a registry, started as a `RunningService` and fed
//! through channel-driven receivers into collecting exporters.

use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

use bizpilot_core::config::{self, Diagnostic, Severity, Source};
use bizpilot_core::graph::STAGE_CHANNEL_CAPACITY;
use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use bizpilot_core::{
    Ack, Admission, Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, Config, CreateContext,
    Delivery, Exporter, ExporterContext, ExporterFactory, FieldError, Logs, Payload, Processor, ProcessorFactory,
    Receiver, ReceiverContext, ReceiverFactory, Refusal, Registry, Running, RunningService, Signal, Stability, Traces,
};

// ---------------------------------------------------------------------------
// Test components
// ---------------------------------------------------------------------------

/// One request to a `chan` receiver: send `batch`, waiting at most `wait` for room.
struct Cmd {
    batch: Batch,
    wait: Duration,
    reply: oneshot::Sender<Result<(), Refusal>>,
}

/// The test's handle on a `chan` receiver.
#[derive(Clone)]
struct Feed(mpsc::Sender<Cmd>);

impl Feed {
    /// Hands `batch` to the receiver, which pushes it into its pipelines with `send_with_deadline`.
    async fn send(&self, batch: Batch, wait: Duration) -> Result<(), Refusal> {
        let (reply, rx) = oneshot::channel();
        if self.0.send(Cmd { batch, wait, reply }).await.is_err() {
            return Err(Refusal::ShuttingDown);
        }
        rx.await.unwrap_or(Err(Refusal::ShuttingDown))
    }
}

type Shared<T> = Arc<Mutex<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NoConfig {}
impl ComponentConfig for NoConfig {}

/// `chan`: a receiver fed by the test through a [`Feed`].
struct ChanReceiverFactory {
    feeds: Shared<HashMap<String, mpsc::Receiver<Cmd>>>,
}

struct ChanReceiver {
    rx: mpsc::Receiver<Cmd>,
}

impl ReceiverFactory for ChanReceiverFactory {
    type Config = NoConfig;
    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "chan",
            kind: ComponentKind::Receiver,
            stability: Stability::Development,
            description: "test receiver fed through a channel",
            signals: &Signal::ALL,
            connects: &[],
        }
    }
    fn create(&self, _: NoConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Receiver>, ComponentError> {
        let rx = self
            .feeds
            .lock()
            .unwrap()
            .remove(&ctx.id.to_string())
            .ok_or_else(|| ComponentError::Other(format!("no feed for {}", ctx.id)))?;
        Ok(Box::new(ChanReceiver { rx }))
    }
}

impl Receiver for ChanReceiver {
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError> {
        let mut rx = self.rx;
        let ReceiverContext { output, shutdown, .. } = ctx;
        Ok(Running::spawn(async move {
            loop {
                let cmd = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = rx.recv() => match c { Some(c) => c, None => break },
                };
                let r = match output.get(cmd.batch.signal()) {
                    Some(out) => out.send_with_deadline(cmd.batch, cmd.wait).await,
                    None => Err(Refusal::ShuttingDown),
                };
                let _ = cmd.reply.send(r);
            }
            // Returning drops `output`: the pipelines drain and end.
            Ok(())
        }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CollectConfig {
    /// Mark every batch as failed (a permanent export failure).
    fail: bool,
}
impl ComponentConfig for CollectConfig {}

/// `collect`: an exporter that hands every batch to the test (which decides when it
/// is dropped, and so when acknowledgements fire). A gate, when the test set one,
/// stalls it before it takes the next batch.
struct CollectExporterFactory {
    sink: mpsc::UnboundedSender<(String, Batch)>,
    gates: Shared<HashMap<String, watch::Receiver<bool>>>,
}

struct CollectExporter {
    fail: bool,
    sink: mpsc::UnboundedSender<(String, Batch)>,
    gate: Option<watch::Receiver<bool>>,
}

impl ExporterFactory for CollectExporterFactory {
    type Config = CollectConfig;
    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "collect",
            kind: ComponentKind::Exporter,
            stability: Stability::Development,
            description: "test exporter handing batches to the test",
            signals: &Signal::ALL,
            connects: &[],
        }
    }
    fn create(&self, cfg: CollectConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        Ok(Box::new(CollectExporter {
            fail: cfg.fail,
            sink: self.sink.clone(),
            gate: self.gates.lock().unwrap().get(&ctx.id.to_string()).cloned(),
        }))
    }
}

impl Exporter for CollectExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let CollectExporter { fail, sink, mut gate } = *self;
        let ExporterContext { id, mut input, .. } = ctx;
        let id = id.to_string();
        Ok(Running::spawn(async move {
            loop {
                if let Some(g) = gate.as_mut() {
                    let _ = g.wait_for(|open| *open).await;
                }
                let Some(batch) = input.recv().await else { break };
                if fail {
                    batch.fail();
                }
                let _ = sink.send((id.clone(), batch));
            }
            Ok(())
        }))
    }
}

/// `batch` stand-in with the real processor's keys: passes data through unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StandInBatchConfig {
    #[allow(dead_code)]
    timeout: config::Duration,
    #[allow(dead_code)]
    send_batch_size: usize,
}
impl Default for StandInBatchConfig {
    fn default() -> Self {
        Self {
            timeout: config::Duration::from_millis(200),
            send_batch_size: 8192,
        }
    }
}
impl ComponentConfig for StandInBatchConfig {
    fn validate(&self) -> Vec<FieldError> {
        if self.send_batch_size == 0 {
            vec![FieldError::new("send_batch_size", "must be > 0")]
        } else {
            Vec::new()
        }
    }
}

struct StandInBatchFactory;
struct PassThrough(Option<Arc<dyn Admission>>);

impl ProcessorFactory for StandInBatchFactory {
    type Config = StandInBatchConfig;
    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "batch",
            kind: ComponentKind::Processor,
            stability: Stability::Development,
            description: "test stand-in: passes data through",
            signals: &Signal::ALL,
            connects: &[],
        }
    }
    fn create(&self, _: StandInBatchConfig, _: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        Ok(Box::new(PassThrough(None)))
    }
}

impl Processor for PassThrough {
    fn admission(&self) -> Option<Arc<dyn Admission>> {
        self.0.clone()
    }
    fn into_stage(self: Box<Self>) -> Box<dyn bizpilot_core::Stage> {
        bizpilot_core::stage::map(Some)
    }
}

/// `gate`: a pass-through processor whose admission gate the test opens and closes.
struct GateFactory {
    closed: Arc<std::sync::atomic::AtomicBool>,
}
struct TestGate(Arc<std::sync::atomic::AtomicBool>);

impl Admission for TestGate {
    fn check(&self) -> Result<(), Refusal> {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Err(Refusal::MemoryLimit("test gate closed".into()))
        } else {
            Ok(())
        }
    }
}

impl ProcessorFactory for GateFactory {
    type Config = NoConfig;
    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "gate",
            kind: ComponentKind::Processor,
            stability: Stability::Development,
            description: "test processor with an admission gate",
            signals: &Signal::ALL,
            connects: &[],
        }
    }
    fn create(&self, _: NoConfig, _: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        Ok(Box::new(PassThrough(Some(Arc::new(TestGate(self.closed.clone()))))))
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Harness {
    registry: Registry,
    feeds: HashMap<String, Feed>,
    gates: HashMap<String, watch::Sender<bool>>,
    sink: mpsc::UnboundedReceiver<(String, Batch)>,
    gate_closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Harness {
    /// Test components, with feeds for the `chan` receivers in `receivers` and gates
    /// (initially open) for the `collect` exporters in `gated`.
    fn new(receivers: &[&str], gated: &[&str]) -> Self {
        let mut feed_rx = HashMap::new();
        let mut feeds = HashMap::new();
        for r in receivers {
            let (tx, rx) = mpsc::channel(1);
            feed_rx.insert(r.to_string(), rx);
            feeds.insert(r.to_string(), Feed(tx));
        }
        let mut gate_rx = HashMap::new();
        let mut gates = HashMap::new();
        for e in gated {
            let (tx, rx) = watch::channel(true);
            gate_rx.insert(e.to_string(), rx);
            gates.insert(e.to_string(), tx);
        }
        let (sink_tx, sink) = mpsc::unbounded_channel();
        let gate_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut registry = Registry::new();
        registry
            .receiver(ChanReceiverFactory {
                feeds: Arc::new(Mutex::new(feed_rx)),
            })
            .exporter(CollectExporterFactory {
                sink: sink_tx,
                gates: Arc::new(Mutex::new(gate_rx)),
            })
            .processor(StandInBatchFactory)
            .processor(GateFactory {
                closed: gate_closed.clone(),
            });
        bizpilot_connectors::register(&mut registry);
        Self {
            registry,
            feeds,
            gates,
            sink,
            gate_closed,
        }
    }

    fn feed(&self, id: &str) -> Feed {
        self.feeds[id].clone()
    }

    fn stall(&self, exporter: &str) {
        self.gates[exporter].send_replace(false);
    }

    fn resume(&self, exporter: &str) {
        self.gates[exporter].send_replace(true);
    }

    async fn start(&self, yaml: &str) -> RunningService {
        let cfg = valid(yaml, &self.registry);
        RunningService::start(&cfg, &self.registry)
            .await
            .expect("service starts")
    }

    /// The next batch an exporter handled.
    async fn next(&mut self) -> (String, Batch) {
        tokio::time::timeout(Duration::from_secs(5), self.sink.recv())
            .await
            .expect("an exporter got a batch in time")
            .expect("sink open")
    }

    /// Collects batches until `items` items have arrived, then checks nothing more comes.
    async fn collect_items(&mut self, items: usize) -> Vec<(String, Batch)> {
        let mut got = Vec::new();
        let mut n = 0;
        while n < items {
            let (id, b) = self.next().await;
            n += b.items();
            got.push((id, b));
        }
        assert_eq!(n, items, "no more than expected");
        got
    }

    fn assert_sink_empty(&mut self) {
        assert!(self.sink.try_recv().is_err(), "no further batch expected");
    }
}

fn load(yaml: &str) -> config::RawConfig {
    let src = Source::Text {
        name: "test.yaml".into(),
        text: yaml.into(),
    };
    let (raw, diags) = config::load(&[src], &HashMap::<String, String>::new());
    assert!(diags.is_empty(), "{diags:?}");
    raw
}

fn validate(yaml: &str, registry: &Registry) -> (Option<Config>, Vec<Diagnostic>) {
    config::validate(&load(yaml), registry)
}

fn valid(yaml: &str, registry: &Registry) -> Config {
    let (cfg, diags) = validate(yaml, registry);
    assert!(diags.is_empty(), "unexpected diagnostics: {diags:#?}");
    cfg.expect("valid config")
}

fn spans(n: usize, prefix: &str) -> Batch {
    Batch::new(Payload::Traces(Traces::from_message(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("{prefix}-{i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })))
}

fn logs(n: usize) -> Batch {
    Batch::new(Payload::Logs(Logs::from_message(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })))
}

fn span_names(batch: &Batch) -> Vec<String> {
    let Payload::Traces(t) = &batch.payload else {
        panic!("not traces")
    };
    let mut t = t.clone();
    t.message()
        .unwrap()
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect()
}

const WAIT: Duration = Duration::from_secs(2);

async fn stop(svc: RunningService) {
    let report = svc.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}

// ---------------------------------------------------------------------------
// Topologies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn several_receivers_feed_one_pipeline() {
    let mut h = Harness::new(&["chan/a", "chan/b"], &[]);
    let svc = h
        .start(
            "receivers:\n  chan/a:\n  chan/b:\nprocessors:\n  batch:\nexporters:\n  collect:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan/a, chan/b]\n      processors: [batch]\n      exporters: [collect]\n",
        )
        .await;
    h.feed("chan/a").send(spans(3, "a"), WAIT).await.unwrap();
    h.feed("chan/b").send(spans(2, "b"), WAIT).await.unwrap();
    let got = h.collect_items(5).await;
    let names: BTreeSet<String> = got.iter().flat_map(|(_, b)| span_names(b)).collect();
    assert_eq!(names, ["a-0", "a-1", "a-2", "b-0", "b-1"].map(String::from).into());
    assert!(got.iter().all(|(id, _)| id == "collect"));
    stop(svc).await;
}

#[tokio::test]
async fn one_pipeline_fans_out_to_every_exporter() {
    let mut h = Harness::new(&["chan"], &[]);
    let svc = h
        .start(
            "receivers:\n  chan:\nexporters:\n  collect/x:\n  collect/y:\n  collect/z:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      exporters: [collect/x, collect/y, collect/z]\n",
        )
        .await;
    for i in 0..4 {
        h.feed("chan").send(spans(2, &format!("s{i}")), WAIT).await.unwrap();
    }
    let got = h.collect_items(3 * 8).await;
    let mut per: HashMap<String, Vec<String>> = HashMap::new();
    for (id, b) in &got {
        per.entry(id.clone()).or_default().extend(span_names(b));
    }
    let want: Vec<String> = (0..4).flat_map(|i| [format!("s{i}-0"), format!("s{i}-1")]).collect();
    for e in ["collect/x", "collect/y", "collect/z"] {
        assert_eq!(per.get(e), Some(&want), "{e} gets every item, in order");
    }
    stop(svc).await;
}

/// One `forward` id per signal: core's validation requires every (exporter signal,
/// receiver signal) pair of a connector id to be supported, and forward only links a signal to itself.
#[tokio::test]
async fn forward_connector_joins_pipelines_per_signal() {
    let mut h = Harness::new(&["chan"], &[]);
    let svc = h
        .start(
            "receivers:\n  chan:\nprocessors:\n  batch:\nexporters:\n  collect/x:\n  collect/y:\n  collect/logs:\nconnectors:\n  forward:\n  forward/logs:\nservice:\n  pipelines:\n    traces/in:\n      receivers: [chan]\n      exporters: [forward]\n    traces/out1:\n      receivers: [forward]\n      processors: [batch]\n      exporters: [collect/x]\n    traces/out2:\n      receivers: [forward]\n      exporters: [collect/y]\n    logs/in:\n      receivers: [chan]\n      exporters: [forward/logs]\n    logs/out:\n      receivers: [forward/logs]\n      exporters: [collect/logs]\n",
        )
        .await;
    h.feed("chan").send(spans(3, "t"), WAIT).await.unwrap();
    h.feed("chan").send(logs(4), WAIT).await.unwrap();
    let got = h.collect_items(3 + 3 + 4).await;
    let mut per: HashMap<String, (Signal, usize)> = HashMap::new();
    for (id, b) in &got {
        let e = per.entry(id.clone()).or_insert((b.signal(), 0));
        assert_eq!(e.0, b.signal());
        e.1 += b.items();
    }
    assert_eq!(per["collect/x"], (Signal::Traces, 3));
    assert_eq!(per["collect/y"], (Signal::Traces, 3));
    assert_eq!(per["collect/logs"], (Signal::Logs, 4));
    h.assert_sink_empty();
    stop(svc).await;
}

// ---------------------------------------------------------------------------
// Backpressure, admission, acknowledgements, shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_exporter_makes_the_receiver_refuse_and_nothing_accepted_is_lost() {
    let mut h = Harness::new(&["chan"], &["collect/slow"]);
    h.stall("collect/slow");
    let svc = h
        .start(
            "receivers:\n  chan:\nexporters:\n  collect/slow:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      exporters: [collect/slow]\n",
        )
        .await;
    let feed = h.feed("chan");
    let mut accepted = Vec::new();
    let refusal = loop {
        let name = format!("b{}", accepted.len());
        match feed.send(spans(2, &name), Duration::from_millis(50)).await {
            Ok(()) => accepted.push(name),
            Err(r) => break r,
        }
        assert!(accepted.len() <= 100, "backpressure never reached the receiver");
    };
    assert!(
        matches!(&refusal, Refusal::Full(t) if t.contains("collect/slow")),
        "{refusal:?}"
    );
    assert_eq!(refusal.reason(), "queue_full");
    assert_eq!(accepted.len(), STAGE_CHANNEL_CAPACITY, "the exporter's queue is full");
    h.assert_sink_empty();

    h.resume("collect/slow");
    let got = h.collect_items(accepted.len() * 2).await;
    let names: Vec<String> = got.iter().flat_map(|(_, b)| span_names(b)).collect();
    let want: Vec<String> = accepted
        .iter()
        .flat_map(|a| [format!("{a}-0"), format!("{a}-1")])
        .collect();
    assert_eq!(
        names, want,
        "everything accepted arrives once, in order; the refused batch never does"
    );
    // With room again, the receiver accepts.
    feed.send(spans(1, "after"), WAIT).await.unwrap();
    assert_eq!(span_names(&h.next().await.1), ["after-0"]);
    stop(svc).await;
}

#[tokio::test]
async fn admission_gates_refuse_before_data_enters_the_pipeline() {
    let mut h = Harness::new(&["chan"], &[]);
    let svc = h
        .start(
            "receivers:\n  chan:\nprocessors:\n  gate:\n  batch:\nexporters:\n  collect:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      processors: [batch, gate]\n      exporters: [collect]\n",
        )
        .await;
    h.gate_closed.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = h.feed("chan").send(spans(1, "x"), WAIT).await;
    assert!(matches!(r, Err(Refusal::MemoryLimit(_))), "{r:?}");
    h.gate_closed.store(false, std::sync::atomic::Ordering::Relaxed);
    h.feed("chan").send(spans(1, "y"), WAIT).await.unwrap();
    assert_eq!(span_names(&h.next().await.1), ["y-0"]);
    h.assert_sink_empty();
    stop(svc).await;
}

const FAN_OUT: &str = "receivers:\n  chan:\nexporters:\n  collect/a:\n  collect/b:\n    fail: BFAIL\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      exporters: [collect/a, collect/b]\n";

#[tokio::test]
async fn fanned_out_batch_is_delivered_only_after_every_exporter_handled_it() {
    let mut h = Harness::new(&["chan"], &[]);
    let svc = h.start(&FAN_OUT.replace("BFAIL", "false")).await;
    let (ack, mut outcome) = Ack::channel();
    let mut b = spans(2, "acked");
    b.acks.push(ack);
    h.feed("chan").send(b, WAIT).await.unwrap();
    let (first_id, first) = h.next().await;
    let (second_id, second) = h.next().await;
    assert_ne!(first_id, second_id);
    drop(first);
    tokio::task::yield_now().await;
    assert!(outcome.try_recv().is_err(), "one exporter still holds the data");
    drop(second);
    assert_eq!(outcome.await.unwrap(), Delivery::Delivered);
    stop(svc).await;
}

#[tokio::test]
async fn fanned_out_batch_fails_if_one_exporter_fails() {
    let mut h = Harness::new(&["chan"], &[]);
    let svc = h.start(&FAN_OUT.replace("BFAIL", "true")).await;
    let (ack, mut outcome) = Ack::channel();
    let mut b = spans(2, "acked");
    b.acks.push(ack);
    h.feed("chan").send(b, WAIT).await.unwrap();
    let (_, first) = h.next().await;
    let (_, second) = h.next().await;
    drop(first);
    assert!(outcome.try_recv().is_err());
    drop(second);
    assert_eq!(outcome.await.unwrap(), Delivery::Failed);
    stop(svc).await;
}

#[tokio::test]
async fn shutdown_drains_everything_accepted_through_connected_pipelines() {
    let mut h = Harness::new(&["chan"], &["collect"]);
    h.stall("collect");
    let svc = h
        .start(
            "receivers:\n  chan:\nprocessors:\n  batch:\nexporters:\n  collect:\nconnectors:\n  forward:\nservice:\n  pipelines:\n    traces/in:\n      receivers: [chan]\n      processors: [batch]\n      exporters: [forward]\n    traces/out:\n      receivers: [forward]\n      processors: [batch]\n      exporters: [collect]\n",
        )
        .await;
    let feed = h.feed("chan");
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let (ack, rx) = Ack::channel();
        let mut b = spans(3, &format!("d{i}"));
        b.acks.push(ack);
        feed.send(b, WAIT).await.unwrap();
        outcomes.push(rx);
    }
    let shutdown = tokio::spawn(svc.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for accepted data to be exported"
    );
    assert_eq!(
        feed.send(spans(1, "late"), WAIT).await,
        Err(Refusal::ShuttingDown),
        "receivers stopped accepting"
    );
    h.assert_sink_empty();
    h.resume("collect");
    let report = shutdown.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    // Everything the exporter handled is in the sink by now.
    let mut names = Vec::new();
    while let Ok((_, b)) = h.sink.try_recv() {
        names.extend(span_names(&b));
    }
    let want: Vec<String> = (0..10).flat_map(|i| (0..3).map(move |j| format!("d{i}-{j}"))).collect();
    assert_eq!(names, want);
    for rx in outcomes {
        assert_eq!(rx.await.unwrap(), Delivery::Delivered);
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn find<'a>(diags: &'a [Diagnostic], path: &str) -> &'a Diagnostic {
    diags
        .iter()
        .find(|d| d.path == path)
        .unwrap_or_else(|| panic!("no diagnostic at {path}: {diags:#?}"))
}

#[test]
fn validation_reports_every_problem_at_once_with_paths_and_lines() {
    let h = Harness::new(&[], &[]);
    let yaml = "\
receivers:
  chan:
processors:
  batch:
    timout: 1s
  batch/slow:
    timeout: 5x
exporters:
  collect:
  collect/unused:
connectors:
  forward/1:
  forward/2:
service:
  pipelines:
    traces:
      receivers: [chan]
      processors: [batch, batch/slow]
      exporters: [collect, collect/missing]
    traces/a:
      receivers: [forward/1]
      exporters: [forward/2]
    traces/b:
      receivers: [forward/2]
      exporters: [forward/1]
";
    let (cfg, diags) = validate(yaml, &h.registry);
    assert!(cfg.is_none(), "errors mean no config");

    let unknown = find(&diags, "processors.batch.timout");
    assert_eq!(unknown.severity, Severity::Error);
    assert!(unknown.message.contains("unknown field `timout`"), "{unknown}");
    assert_eq!(
        unknown.location.as_ref().map(|l| (l.file.as_str(), l.line)),
        Some(("test.yaml", 5))
    );

    let bad = find(&diags, "processors.batch/slow.timeout");
    assert!(
        bad.to_string()
            .starts_with("error: processors.batch/slow.timeout: invalid duration \"5x\""),
        "{bad}"
    );
    assert_eq!(bad.location.as_ref().map(|l| l.line), Some(7));

    let missing = find(&diags, "service.pipelines.traces.exporters[1]");
    assert_eq!(missing.severity, Severity::Error);
    assert!(
        missing.message.contains("exporter collect/missing is not defined"),
        "{missing}"
    );
    assert_eq!(missing.location.as_ref().map(|l| l.line), Some(19));

    let unused = find(&diags, "exporters.collect/unused");
    assert_eq!(unused.severity, Severity::Warning);
    assert!(unused.message.contains("not used"), "{unused}");
    assert_eq!(unused.location.as_ref().map(|l| l.line), Some(10));

    let cycle = diags
        .iter()
        .find(|d| d.message.contains("cycle"))
        .unwrap_or_else(|| panic!("no cycle reported: {diags:#?}"));
    assert_eq!(cycle.path, "service.pipelines");
    assert!(
        cycle.message.contains("traces/a") && cycle.message.contains("traces/b"),
        "{cycle}"
    );
}

#[test]
fn bad_duration_in_the_real_shape() {
    let h = Harness::new(&[], &[]);
    let yaml = "receivers:\n  chan:\nprocessors:\n  batch:\n    timeout: 5x\nexporters:\n  collect:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      processors: [batch]\n      exporters: [collect]\n";
    let (cfg, diags) = validate(yaml, &h.registry);
    assert!(cfg.is_none());
    let errors: Vec<String> = diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("processors.batch.timeout: invalid duration \"5x\"")
            && errors[0].ends_with("(at test.yaml:5)"),
        "{}",
        errors[0]
    );
}

#[test]
fn warnings_alone_still_give_a_config() {
    let h = Harness::new(&[], &[]);
    let yaml = "receivers:\n  chan:\nprocessors:\n  batch:\nexporters:\n  collect:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      exporters: [collect]\n";
    let (cfg, diags) = validate(yaml, &h.registry);
    assert!(cfg.is_some());
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].severity, Severity::Warning);
    assert_eq!(diags[0].path, "processors.batch");
}

#[test]
fn connectors_must_link_matching_signals() {
    let h = Harness::new(&[], &[]);
    let yaml = "receivers:\n  chan:\nexporters:\n  collect:\nconnectors:\n  forward:\nservice:\n  pipelines:\n    traces:\n      receivers: [chan]\n      exporters: [forward]\n    logs:\n      receivers: [forward]\n      exporters: [collect]\n";
    let (cfg, diags) = validate(yaml, &h.registry);
    assert!(cfg.is_none());
    let d = find(&diags, "connectors.forward");
    assert!(d.message.contains("consumes traces but feeds no pipeline"), "{d}");
    // One forward connector may carry several signals, each to its own kind of pipeline.
    let yaml = "receivers:
  chan:
exporters:
  collect:
connectors:
  forward:
service:
  pipelines:
    traces/in:
      receivers: [chan]
      exporters: [forward]
    logs/in:
      receivers: [chan]
      exporters: [forward]
    traces/out:
      receivers: [forward]
      exporters: [collect]
    logs/out:
      receivers: [forward]
      exporters: [collect]
";
    let (cfg, diags) = validate(yaml, &h.registry);
    assert!(cfg.is_some(), "{diags:#?}");
}
