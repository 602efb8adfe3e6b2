//! The stage driver: the one run loop of every processor and connector (the
//! OpenTelemetry Collector's `processorhelper`, for both families).
//!
//! A processor or connector is a [`Stage`]: it says what to do with one batch, on
//! its timer, on its wake-up source and at the end, and puts what it hands on into an
//! [`Out`]. The driver ([`run_processor`], [`run_connector`]; the graph calls them
//! through [`Processor::start`](crate::Processor) and [`Connector::start`](crate::Connector))
//! owns everything around it:
//!
//! - reading the bounded input channel; timers ([`Stage::deadline`]) and wake-ups
//!   ([`Stage::wake`]) in the same loop;
//! - sending what the stage emitted, in order, waiting for room downstream (backpressure),
//!   routed by signal for connectors; wake-ups keep being served while a send waits;
//! - the end of the run: input closed → [`Stage::finish`] (awaited), [`Stage::on_drain`], and everything
//!   emitted is sent;
//!   drain deadline (`abort`) or a closed downstream → [`Stage::on_abort`], then whatever the
//!   stage still held or emitted is failed, and batches still queued at the input are failed
//!   unread (their sources are told, through [`Ack`](crate::Ack), and may resend);
//! - the standard counters, one label set for all stages (`processor` and `pipeline` for
//!   processors, `connector` for connectors): `bizpilot_<kind>_accepted_<items>_total`,
//!   `…_sent_<items>_total`, `…_consumed_<items>_total`, `…_dropped_<items>_total{reason}` and
//!   `…_refused_<items>_total{reason}`.
//!
//! For every stage, at the end of a run: `accepted = sent (same signal) + consumed + dropped`
//! plus what a stage still holds, and `refused` counts what was never accepted. The contract is
//! written up in `docs/instrumentation.md`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use metrics::{Counter, Label, counter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentError, ComponentKind, ConnectorContext, Output, ProcessorContext, Running};
use crate::pdata::{Batch, Signal};
use crate::telemetry::item_counter_name;

/// Why items were dropped or refused (the `reason` label).
pub mod reason {
    /// The drain deadline passed before the data could be handed on.
    pub const ABORTED: &str = "aborted";
    /// The next stage or pipeline has shut down.
    pub const DOWNSTREAM_CLOSED: &str = "downstream_closed";
    /// The stage does not handle this signal.
    pub const UNSUPPORTED_SIGNAL: &str = "unsupported_signal";
    /// The data could not be read or handled (a decode error, a split that failed).
    pub const ERROR: &str = "error";
    /// No pipeline receives this signal from the connector.
    pub const NO_ROUTE: &str = "no_route";
}

/// A stage's wake-up future (see [`Stage::wake`]).
pub type Wake<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the driver tells a stage when it starts.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// The component id (`batch`, `business_impact/eu`).
    pub id: String,
    pub kind: ComponentKind,
    /// A processor's pipeline (a processor runs once per pipeline it appears in).
    pub pipeline: Option<String>,
    /// The signals the stage can send: its pipeline's for a processor, the signals of the
    /// pipelines a connector feeds.
    pub outputs: BTreeSet<Signal>,
}

/// What a processor or connector does; the driver runs it. Every method except
/// [`on_batch`](Stage::on_batch) has a default that does nothing.
pub trait Stage: Send + 'static {
    /// Called once, inside the runtime, before anything else (create timers here).
    fn start(&mut self, _info: &StageInfo) {}

    /// Handles one batch read from the input. The stage passes it on ([`Out::send`]),
    /// absorbs it ([`Out::consume`]), fails it ([`Out::fail`]) or keeps it for later.
    fn on_batch(&mut self, batch: Batch, out: &mut Out);

    /// While true after a batch, batches already queued at the input are handed to
    /// [`on_batch`](Stage::on_batch) before [`on_caught_up`](Stage::on_caught_up) (the batch
    /// processor with `timeout: 0` joins what is queued).
    fn read_more(&self) -> bool {
        false
    }

    /// Called after each batch (and the queued ones [`read_more`](Stage::read_more) asked for).
    fn on_caught_up(&mut self, _out: &mut Out) {}

    /// When [`on_timer`](Stage::on_timer) is next due, if ever. Asked before each wait.
    fn deadline(&mut self) -> Option<Instant> {
        None
    }

    /// The deadline has passed.
    fn on_timer(&mut self, _out: &mut Out) {}

    /// A source of wake-ups besides the input (a subscription, a measuring interval). It is
    /// polled while the stage waits for input and while its output waits for room, and
    /// dropped after each event, so it must be cancel-safe. When it completes,
    /// [`on_wake`](Stage::on_wake) runs.
    fn wake(&mut self) -> Wake<'_> {
        Box::pin(std::future::pending())
    }

    /// The wake-up future completed.
    fn on_wake(&mut self, _out: &mut Out) {}

    /// Asynchronous work to complete once the input has closed, before
    /// [`on_drain`](Stage::on_drain) (`order_kpi`'s final checkpoint). The driver awaits it; the drain
    /// deadline interrupts it.
    fn finish(&mut self) -> Wake<'_> {
        Box::pin(std::future::ready(()))
    }

    /// The input has closed (everything upstream stopped): emit what is still held.
    fn on_drain(&mut self, _out: &mut Out) {}

    /// The run ends early (drain deadline, or a closed downstream): hand over what is held;
    /// the driver fails all of it.
    fn on_abort(&mut self, _out: &mut Out) {}
}

/// A stage that transforms one batch at a time: `f` returns the batch to pass on, or
/// `None` when it keeps nothing (items removed are counted as consumed).
pub fn map<F>(f: F) -> Box<dyn Stage>
where
    F: FnMut(Batch) -> Option<Batch> + Send + 'static,
{
    Box::new(Map(f))
}

struct Map<F>(F);

impl<F> Stage for Map<F>
where
    F: FnMut(Batch) -> Option<Batch> + Send + 'static,
{
    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        let (signal, before) = (batch.signal(), batch.items());
        match (self.0)(batch) {
            Some(b) => {
                if b.signal() == signal && b.items() < before {
                    out.consumed_items(signal, before - b.items());
                }
                out.send(b);
            }
            None => out.consumed_items(signal, before),
        }
    }
}

/// The standard counters of one stage, resolved once.
#[derive(Clone)]
struct Telemetry {
    kind: &'static str,
    labels: Vec<Label>,
    accepted: [Counter; 3],
    sent: [Counter; 3],
    consumed: [Counter; 3],
    /// `dropped` and `refused` by (signal, reason), resolved on first use (rare paths).
    by_reason: HashMap<(&'static str, Signal, &'static str), Counter>,
}

fn idx(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

impl Telemetry {
    fn new(kind: ComponentKind, labels: Vec<Label>) -> Self {
        let kind = kind.as_str();
        let make = |what: &str| Signal::ALL.map(|s| counter!(item_counter_name(kind, what, s), labels.clone()));
        Self {
            kind,
            accepted: make("accepted"),
            sent: make("sent"),
            consumed: make("consumed"),
            labels,
            by_reason: HashMap::new(),
        }
    }

    fn with_reason(&mut self, what: &'static str, signal: Signal, reason: &'static str, items: usize) {
        let (kind, labels) = (self.kind, &self.labels);
        self.by_reason
            .entry((what, signal, reason))
            .or_insert_with(|| {
                let mut l = labels.clone();
                l.push(Label::new("reason", reason));
                counter!(item_counter_name(kind, what, signal), l)
            })
            .increment(items as u64);
    }
}

/// Where a stage puts what it hands on, and how it accounts for what it does not.
pub struct Out {
    queue: VecDeque<Batch>,
    telemetry: Telemetry,
}

impl Out {
    /// Passes `batch` on (to the next stage; for a connector, to the pipelines of its signal).
    pub fn send(&mut self, batch: Batch) {
        self.queue.push_back(batch);
    }

    /// Absorbs `batch` (aggregated, or filtered out on purpose): it counts as delivered.
    pub fn consume(&mut self, batch: Batch) {
        self.consumed_items(batch.signal(), batch.items());
    }

    /// Counts `items` of `signal` as absorbed, for a stage that removed them from a batch.
    pub fn consumed_items(&mut self, signal: Signal, items: usize) {
        self.telemetry.consumed[idx(signal)].increment(items as u64);
    }

    /// Counts `items` of `signal` as dropped, for a stage that lost them from a batch (and
    /// failed the batch's acknowledgements).
    pub fn dropped_items(&mut self, signal: Signal, items: usize, reason: &'static str) {
        self.telemetry.with_reason("dropped", signal, reason, items);
    }

    /// Gives `batch` up: its acknowledgements are failed and its items counted as dropped.
    pub fn fail(&mut self, batch: Batch, reason: &'static str) {
        batch.fail();
        self.telemetry
            .with_reason("dropped", batch.signal(), reason, batch.items());
    }

    /// Batches emitted and not sent yet.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn accepted(&mut self, batch: &Batch) {
        self.telemetry.accepted[idx(batch.signal())].increment(batch.items() as u64);
    }

    fn fail_all(&mut self, reason: &'static str) {
        while let Some(b) = self.queue.pop_front() {
            self.fail(b, reason);
        }
    }
}

/// Where emitted batches go.
enum Route {
    /// A processor's next stage.
    Next(Output),
    /// A connector's pipelines, by signal.
    BySignal(HashMap<Signal, Output>),
}

impl Route {
    fn get(&self, signal: Signal) -> Option<&Output> {
        match self {
            Route::Next(o) => Some(o),
            Route::BySignal(m) => m.get(&signal),
        }
    }
}

/// How a run ended early.
#[derive(Clone, Copy)]
enum Stop {
    Aborted,
    Closed,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::Aborted => reason::ABORTED,
            Stop::Closed => reason::DOWNSTREAM_CLOSED,
        }
    }
}

/// Runs a processor's stage until its input closes (or the drain deadline passes).
pub fn run_processor(ctx: ProcessorContext, stage: Box<dyn Stage>) -> Running {
    let ProcessorContext {
        id,
        pipeline,
        input,
        output,
        abort,
    } = ctx;
    let info = StageInfo {
        id: id.to_string(),
        kind: ComponentKind::Processor,
        pipeline: Some(pipeline.to_string()),
        outputs: BTreeSet::from([pipeline.signal]),
    };
    let labels = vec![
        Label::new("processor", id.to_string()),
        Label::new("pipeline", pipeline.to_string()),
    ];
    Running::spawn(drive(stage, info, labels, input, Route::Next(output), abort))
}

/// Runs a connector's stage until its input closes (or the drain deadline passes).
pub fn run_connector(ctx: ConnectorContext, stage: Box<dyn Stage>) -> Running {
    let ConnectorContext {
        id,
        input,
        output,
        abort,
    } = ctx;
    let routes: HashMap<Signal, Output> = output
        .signals()
        .into_iter()
        .filter_map(|s| output.get(s).map(|o| (s, o.clone())))
        .collect();
    let info = StageInfo {
        id: id.to_string(),
        kind: ComponentKind::Connector,
        pipeline: None,
        outputs: routes.keys().copied().collect(),
    };
    let labels = vec![Label::new("connector", id.to_string())];
    Running::spawn(drive(stage, info, labels, input, Route::BySignal(routes), abort))
}

enum Event {
    Batch(Batch),
    Closed,
    Timer,
    Wake,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn drive(
    mut stage: Box<dyn Stage>,
    info: StageInfo,
    labels: Vec<Label>,
    mut input: mpsc::Receiver<Batch>,
    route: Route,
    abort: CancellationToken,
) -> Result<(), ComponentError> {
    let mut out = Out {
        queue: VecDeque::new(),
        telemetry: Telemetry::new(info.kind, labels),
    };
    stage.start(&info);
    let stop = loop {
        let deadline = stage.deadline();
        let event = tokio::select! {
            biased;
            _ = abort.cancelled() => break Stop::Aborted,
            _ = stage.wake() => Event::Wake,
            _ = sleep_until(deadline), if deadline.is_some() => Event::Timer,
            b = input.recv() => b.map_or(Event::Closed, Event::Batch),
        };
        let closed = matches!(event, Event::Closed);
        match event {
            Event::Batch(b) => {
                out.accepted(&b);
                stage.on_batch(b, &mut out);
                while stage.read_more() {
                    let Ok(b) = input.try_recv() else { break };
                    out.accepted(&b);
                    stage.on_batch(b, &mut out);
                }
                stage.on_caught_up(&mut out);
            }
            Event::Closed => {
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => break Stop::Aborted,
                    _ = stage.finish() => {}
                }
                stage.on_drain(&mut out);
            }
            Event::Timer => stage.on_timer(&mut out),
            Event::Wake => stage.on_wake(&mut out),
        }
        if let Err(stop) = flush(stage.as_mut(), &mut out, &route, &abort, &info.id).await {
            break stop;
        }
        if closed {
            return Ok(());
        }
    };
    // The run ends early: fail what the stage holds, what it emitted, and what is queued.
    stage.on_abort(&mut out);
    out.fail_all(stop.reason());
    input.close();
    while let Ok(b) = input.try_recv() {
        b.fail();
        out.telemetry
            .with_reason("refused", b.signal(), stop.reason(), b.items());
    }
    match stop {
        Stop::Aborted => {
            tracing::warn!(component = %info.id, "drain deadline passed; undelivered data failed");
            Ok(())
        }
        Stop::Closed => Err(ComponentError::Other(format!(
            "the stage after {} has shut down",
            info.id
        ))),
    }
}

/// Sends what the stage emitted, in order, serving its wake-ups while a send waits.
async fn flush(
    stage: &mut dyn Stage,
    out: &mut Out,
    route: &Route,
    abort: &CancellationToken,
    id: &str,
) -> Result<(), Stop> {
    while let Some(batch) = out.queue.pop_front() {
        let (signal, items) = (batch.signal(), batch.items());
        let Some(next) = route.get(signal) else {
            tracing::warn!(component = id, %signal, items, "no pipeline receives this signal from the connector; dropping");
            out.fail(batch, reason::NO_ROUTE);
            continue;
        };
        // Kept to report failure if the batch cannot be handed on.
        let acks = batch.acks.clone();
        let send = next.send(batch);
        tokio::pin!(send);
        let sent = loop {
            tokio::select! {
                biased;
                _ = abort.cancelled() => break Err(Stop::Aborted),
                r = &mut send => break r.map_err(|_| Stop::Closed),
                _ = stage.wake() => stage.on_wake(out),
            }
        };
        match sent {
            Ok(()) => out.telemetry.sent[idx(signal)].increment(items as u64),
            Err(stop) => {
                for a in &acks {
                    a.fail();
                }
                out.telemetry.with_reason("dropped", signal, stop.reason(), items);
                return Err(stop);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{Ack, Delivery};
    use crate::component::{ReceiverOutput, Target};
    use crate::pdata::{Logs, Payload, Traces};
    use metrics::{Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Counters kept by `name{label=value,…}`, to read what the driver counted.
    #[derive(Default)]
    struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

    impl Counters {
        /// The sum of every counter named `name` carrying all of `labels`.
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            let map = self.0.lock().unwrap();
            map.iter()
                .filter(|(k, _)| {
                    let (n, ls) = k.split_once('{').unwrap_or((k, ""));
                    n == name
                        && labels
                            .iter()
                            .all(|(l, v)| ls.split(',').any(|kv| kv == format!("{l}={v}")))
                })
                .map(|(_, c)| c.load(Ordering::Relaxed))
                .sum()
        }
    }

    impl Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut name = format!("{}{{", key.name());
            for l in key.labels() {
                name.push_str(&format!("{}={},", l.key(), l.value()));
            }
            name.push('}');
            let c = self.0.lock().unwrap().entry(name).or_default().clone();
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Runs `f` on a current-thread runtime with `counters` recording.
    fn with_counters<F: Future<Output = ()>>(counters: &Counters, f: impl FnOnce() -> F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        metrics::with_local_recorder(counters, || rt.block_on(f()));
    }

    fn spans(n: usize) -> Payload {
        Payload::Traces(Traces::from_message(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }))
    }

    /// A batch of `n` spans whose outcome arrives on the returned receiver.
    fn acked(n: usize) -> (Batch, oneshot::Receiver<Delivery>) {
        let (ack, rx) = Ack::channel();
        (Batch::with_ack(spans(n), ack), rx)
    }

    fn output(cap: usize) -> (Output, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(cap);
        let target = Target {
            name: "next".into(),
            sender: tx,
        };
        (Output::new(vec![target], Vec::new()), rx)
    }

    fn processor(
        stage: Box<dyn Stage>,
        input: mpsc::Receiver<Batch>,
        out: Output,
        abort: &CancellationToken,
    ) -> Running {
        run_processor(
            ProcessorContext {
                id: "test".parse().unwrap(),
                pipeline: "traces".parse().unwrap(),
                input,
                output: out,
                abort: abort.clone(),
            },
            stage,
        )
    }

    /// Batch `i` is passed on, absorbed, failed or held until the end, by `i % 4`.
    #[derive(Default)]
    struct Sorter {
        seen: usize,
        held: Vec<Batch>,
    }

    impl Stage for Sorter {
        fn on_batch(&mut self, batch: Batch, out: &mut Out) {
            self.seen += 1;
            match (self.seen - 1) % 4 {
                0 => out.send(batch),
                1 => out.consume(batch),
                2 => out.fail(batch, reason::ERROR),
                _ => self.held.push(batch),
            }
        }
        fn on_drain(&mut self, out: &mut Out) {
            for b in self.held.drain(..) {
                out.send(b);
            }
        }
        fn on_abort(&mut self, out: &mut Out) {
            self.on_drain(out);
        }
    }

    const P: &[(&str, &str)] = &[("processor", "test"), ("pipeline", "traces")];

    #[test]
    fn drain_delivers_everything_held_and_the_counters_add_up() {
        let counters = Counters::default();
        with_counters(&counters, || async {
            let (tx, rx) = mpsc::channel(4);
            let (out, mut next) = output(4);
            let abort = CancellationToken::new();
            let mut running = processor(Box::<Sorter>::default(), rx, out, &abort);
            let reader = tokio::spawn(async move {
                let mut items = 0;
                while let Some(b) = next.recv().await {
                    items += b.items();
                }
                items
            });
            let mut outcomes = Vec::new();
            for i in 0..12 {
                let (b, done) = acked(i + 1);
                tx.send(b).await.unwrap();
                outcomes.push(done);
            }
            drop(tx);
            running.join().await.unwrap();
            let passed = reader.await.unwrap();
            let mut by_class = [0u64; 4];
            for (i, done) in outcomes.into_iter().enumerate() {
                let want = if i % 4 == 2 {
                    Delivery::Failed
                } else {
                    Delivery::Delivered
                };
                assert_eq!(done.await.unwrap(), want, "batch {i}");
                by_class[i % 4] += i as u64 + 1;
            }
            assert_eq!(
                passed as u64,
                by_class[0] + by_class[3],
                "held batches are sent at the end"
            );
            let get = |what: &str| counters.get(&format!("bizpilot_processor_{what}_spans_total"), P);
            assert_eq!(get("accepted"), (1..=12).sum::<u64>());
            assert_eq!(get("sent"), by_class[0] + by_class[3]);
            assert_eq!(get("consumed"), by_class[1]);
            assert_eq!(get("dropped"), by_class[2]);
            assert_eq!(get("accepted"), get("sent") + get("consumed") + get("dropped"));
            assert_eq!(get("refused"), 0);
        });
    }

    #[test]
    fn abort_fails_what_is_held_sent_and_queued() {
        let counters = Counters::default();
        with_counters(&counters, || async {
            let (tx, rx) = mpsc::channel(8);
            // Room for one batch, never read: the second send waits.
            let (out, mut next) = output(1);
            let abort = CancellationToken::new();
            let mut running = processor(Box::<Sorter>::default(), rx, out, &abort);
            // 0 is sent (fills the output), 1 absorbed, 2 failed, 3 held, 4 waits for room,
            // 5 and 6 stay queued at the input.
            let mut outcomes = Vec::new();
            for i in 0..7 {
                let (b, done) = acked(i + 1);
                tx.send(b).await.unwrap();
                outcomes.push(done);
            }
            // The stage has taken five batches once the input has room for six.
            let waited = tokio::time::timeout(Duration::from_secs(30), async {
                while tx.capacity() < 6 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            assert!(waited.is_ok(), "the stage did not read its input");
            assert!(!running.is_finished());
            abort.cancel();
            running.join().await.unwrap();
            let first = next.try_recv().unwrap();
            assert_eq!(first.items(), 1);
            drop(first);
            let mut got = Vec::new();
            for done in outcomes {
                got.push(done.await.unwrap());
            }
            use Delivery::{Delivered as D, Failed as F};
            assert_eq!(got, [D, D, F, F, F, F, F]);
            let get = |what: &str, r: Option<&str>| {
                let mut l = P.to_vec();
                if let Some(r) = r {
                    l.push(("reason", r));
                }
                counters.get(&format!("bizpilot_processor_{what}_spans_total"), &l)
            };
            assert_eq!(get("accepted", None), 1 + 2 + 3 + 4 + 5);
            assert_eq!(get("sent", None), 1);
            assert_eq!(get("consumed", None), 2);
            assert_eq!(get("dropped", Some(reason::ERROR)), 3);
            assert_eq!(get("dropped", Some(reason::ABORTED)), 4 + 5, "held and waiting");
            assert_eq!(get("refused", Some(reason::ABORTED)), 6 + 7, "queued, never read");
            assert_eq!(
                get("accepted", None),
                get("sent", None) + get("consumed", None) + get("dropped", None)
            );
        });
    }

    /// Passes everything on; counts wake-ups from its own channel.
    struct Waker {
        events: mpsc::Receiver<()>,
        woken: Arc<AtomicUsize>,
    }

    impl Stage for Waker {
        fn on_batch(&mut self, batch: Batch, out: &mut Out) {
            out.send(batch);
        }
        fn wake(&mut self) -> Wake<'_> {
            Box::pin(async {
                let _ = self.events.recv().await;
            })
        }
        fn on_wake(&mut self, _: &mut Out) {
            self.woken.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_closed_downstream_ends_the_run_with_an_error_and_wakeups_go_on_while_a_send_waits() {
        let counters = Counters::default();
        with_counters(&counters, || async {
            let (tx, rx) = mpsc::channel(8);
            let (out, mut next) = output(1);
            let (wake_tx, wake_rx) = mpsc::channel(8);
            let woken = Arc::new(AtomicUsize::new(0));
            let stage = Waker {
                events: wake_rx,
                woken: woken.clone(),
            };
            let abort = CancellationToken::new();
            let mut running = processor(Box::new(stage), rx, out, &abort);
            let mut outcomes = Vec::new();
            for i in 0..4 {
                let (b, done) = acked(i + 1);
                tx.send(b).await.unwrap();
                outcomes.push(done);
            }
            // The second batch waits for room; wake-ups are still served.
            while tx.capacity() < 6 {
                tokio::task::yield_now().await;
            }
            for _ in 0..3 {
                wake_tx.send(()).await.unwrap();
            }
            let served = tokio::time::timeout(Duration::from_secs(30), async {
                while woken.load(Ordering::Relaxed) < 3 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            assert!(served.is_ok(), "wake-ups not served while a send waits");
            // The next stage goes away with the first batch unread.
            next.close();
            drop(next);
            assert!(running.join().await.is_err(), "a closed downstream is an error");
            let mut got = Vec::new();
            for done in outcomes {
                got.push(done.await.unwrap());
            }
            assert_eq!(
                got,
                [
                    Delivery::Delivered,
                    Delivery::Failed,
                    Delivery::Failed,
                    Delivery::Failed
                ]
            );
            let get = |what: &str| counters.get(&format!("bizpilot_processor_{what}_spans_total"), P);
            assert_eq!(get("accepted"), 1 + 2);
            assert_eq!(get("sent"), 1);
            assert_eq!(get("dropped"), 2);
            assert_eq!(get("refused"), 3 + 4);
        });
    }

    #[test]
    fn a_connector_routes_by_signal_and_drops_what_no_pipeline_receives() {
        let counters = Counters::default();
        with_counters(&counters, || async {
            let (tx, rx) = mpsc::channel(4);
            let (out, mut next) = output(4);
            let abort = CancellationToken::new();
            let mut running = run_connector(
                ConnectorContext {
                    id: "join".parse().unwrap(),
                    input: rx,
                    output: ReceiverOutput::new(HashMap::from([(Signal::Traces, out)])),
                    abort,
                },
                map(Some),
            );
            let (traces, t_done) = acked(3);
            let (ack, l_done) = Ack::channel();
            tx.send(traces).await.unwrap();
            let logs = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![LogRecord::default(); 2],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let logs = Payload::Logs(Logs::from_message(logs));
            tx.send(Batch::with_ack(logs, ack)).await.unwrap();
            drop(tx);
            running.join().await.unwrap();
            assert_eq!(next.recv().await.map(|b| b.items()), Some(3));
            assert!(next.recv().await.is_none());
            assert_eq!(t_done.await.unwrap(), Delivery::Delivered);
            assert_eq!(l_done.await.unwrap(), Delivery::Failed);
            let c = [("connector", "join")];
            assert_eq!(counters.get("bizpilot_connector_accepted_spans_total", &c), 3);
            assert_eq!(counters.get("bizpilot_connector_sent_spans_total", &c), 3);
            let no_route = [("connector", "join"), ("reason", reason::NO_ROUTE)];
            assert_eq!(
                counters.get("bizpilot_connector_dropped_log_records_total", &no_route),
                2
            );
            assert_eq!(counters.get("bizpilot_connector_accepted_log_records_total", &c), 2);
            assert_eq!(counters.get("bizpilot_connector_sent_log_records_total", &c), 0);
        });
    }

    /// Its `finish` waits for the test; `on_drain` then emits one span.
    struct Finisher {
        go: Option<oneshot::Receiver<()>>,
        finished: bool,
    }

    impl Stage for Finisher {
        fn on_batch(&mut self, batch: Batch, out: &mut Out) {
            out.consume(batch);
        }
        fn finish(&mut self) -> Wake<'_> {
            Box::pin(async {
                if let Some(go) = self.go.take() {
                    let _ = go.await;
                }
                self.finished = true;
            })
        }
        fn on_drain(&mut self, out: &mut Out) {
            assert!(self.finished, "on_drain before finish completed");
            out.send(Batch::new(spans(1)));
        }
    }

    #[test]
    fn finish_is_awaited_before_the_drain() {
        let counters = Counters::default();
        with_counters(&counters, || async {
            let (tx, rx) = mpsc::channel(4);
            let (out, mut next) = output(4);
            let (go_tx, go_rx) = oneshot::channel();
            let stage = Finisher {
                go: Some(go_rx),
                finished: false,
            };
            let abort = CancellationToken::new();
            let mut running = processor(Box::new(stage), rx, out, &abort);
            tx.send(acked(2).0).await.unwrap();
            drop(tx);
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert!(!running.is_finished(), "the run waits for finish");
            assert!(next.try_recv().is_err(), "nothing drained yet");
            go_tx.send(()).unwrap();
            running.join().await.unwrap();
            assert_eq!(next.recv().await.map(|b| b.items()), Some(1));
            assert_eq!(counters.get("bizpilot_processor_consumed_spans_total", P), 2);
            assert_eq!(counters.get("bizpilot_processor_sent_spans_total", P), 1);
        });
    }
}
