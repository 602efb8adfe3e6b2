//! The `batch` processor: joins small batches into bigger ones (fewer, larger
//! exports) and splits oversized ones, with the OpenTelemetry Collector's semantics.
//!
//! Incoming batches are held as they are and joined only when a batch is sent,
//! with [`Batch::merge`]: encoded payloads are concatenated without decoding and
//! every source's acknowledgement travels with the joined batch. A payload is
//! split (and so decoded) only when it straddles `send_batch_max_size`.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `send_batch_size` | `8192` | items (spans, metric points, log records) that trigger a send regardless of `timeout`; `0` sends on every arrival |
//! | `timeout` | `200ms` | longest time an item waits before it is sent; `0` sends as soon as data arrives (after joining what is already queued) |
//! | `send_batch_max_size` | `0` | upper bound of items in one sent batch (larger data is split); `0` = no limit; when set, must be >= `send_batch_size` |
//!
//! ```yaml
//! processors:
//!   batch:
//!     send_batch_size: 8192
//!     timeout: 200ms
//!     send_batch_max_size: 10000
//! ```
//!
//! Metric points are split at metric boundaries, so a sent metrics batch can hold
//! slightly more than `send_batch_max_size` points when one metric has many.
//!
//! Self-telemetry (labels `processor`, `pipeline`):
//! `bizpilot_processor_batch_batch_send_size` (histogram of items per sent batch) and
//! `bizpilot_processor_batch_sends_total{trigger="size"|"timeout"|"shutdown"}`.

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};
use serde::Deserialize;
use std::collections::VecDeque;
use tokio::time::Instant;

use bizpilot_core::config::Duration;
use bizpilot_core::pdata::DataError;
use bizpilot_core::stage::reason;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, FieldError, Out, Payload,
    Processor, ProcessorFactory, Signal, Stability, Stage, StageInfo,
};

/// The component type name.
pub const TYPE: &str = "batch";

/// Name of the histogram of items per sent batch.
pub const SEND_SIZE_METRIC: &str = "bizpilot_processor_batch_batch_send_size";
/// Name of the counter of sent batches, labelled by `trigger`.
pub const SENDS_METRIC: &str = "bizpilot_processor_batch_sends_total";

/// `batch` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Items that trigger a send.
    pub send_batch_size: usize,
    /// Longest time an item waits; zero sends as soon as data arrives.
    pub timeout: Duration,
    /// Upper bound of items per sent batch; zero means no limit.
    pub send_batch_max_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            send_batch_size: 8192,
            timeout: Duration::from_millis(200),
            send_batch_max_size: 0,
        }
    }
}

impl ComponentConfig for BatchConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.send_batch_max_size > 0 && self.send_batch_max_size < self.send_batch_size {
            errors.push(FieldError::new(
                "send_batch_max_size",
                format!("must be >= send_batch_size ({})", self.send_batch_size),
            ));
        }
        errors
    }
}

/// Makes `batch` processors.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchProcessorFactory;

impl ProcessorFactory for BatchProcessorFactory {
    type Config = BatchConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Processor,
            stability: Stability::Beta,
            description: "Joins small batches and splits large ones, sending on size or timeout.",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(&self, config: BatchConfig, _ctx: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        Ok(Box::new(BatchProcessor { config }))
    }
}

/// A `batch` processor of one pipeline.
#[derive(Debug)]
pub struct BatchProcessor {
    config: BatchConfig,
}

impl BatchProcessor {
    pub fn new(config: BatchConfig) -> Self {
        Self { config }
    }
}

impl Processor for BatchProcessor {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        Box::new(Batcher::new(self.config))
    }
}

/// Why a batch was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Size,
    Timeout,
    Shutdown,
}

impl Trigger {
    const ALL: [Trigger; 3] = [Trigger::Size, Trigger::Timeout, Trigger::Shutdown];

    fn as_str(self) -> &'static str {
        match self {
            Trigger::Size => "size",
            Trigger::Timeout => "timeout",
            Trigger::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        match self {
            Trigger::Size => 0,
            Trigger::Timeout => 1,
            Trigger::Shutdown => 2,
        }
    }
}

/// Self-telemetry handles, resolved once.
struct Telemetry {
    send_size: Histogram,
    sends: [Counter; 3],
}

impl Telemetry {
    fn new(processor: &str, pipeline: &str) -> Self {
        describe_histogram!(
            SEND_SIZE_METRIC,
            Unit::Count,
            "Number of items in each batch sent by the batch processor."
        );
        describe_counter!(
            SENDS_METRIC,
            Unit::Count,
            "Batches sent by the batch processor, by what triggered the send (size, timeout, shutdown)."
        );
        let labels = [("processor", processor.to_string()), ("pipeline", pipeline.to_string())];
        Self {
            send_size: histogram!(SEND_SIZE_METRIC, &labels),
            sends: Trigger::ALL.map(|t| {
                counter!(SENDS_METRIC, "processor" => processor.to_string(), "pipeline" => pipeline.to_string(), "trigger" => t.as_str())
            }),
        }
    }
}

/// The batching state of one processor instance.
struct Batcher {
    send_batch_size: usize,
    /// `send_batch_max_size`, with zero turned into "no limit".
    max: usize,
    timeout: std::time::Duration,
    /// Batches waiting, in arrival order, as they came (not joined yet).
    pending: VecDeque<Batch>,
    /// Items in `pending`.
    items: usize,
    /// When the oldest pending item must be sent.
    deadline: Option<Instant>,
    telemetry: Option<Telemetry>,
}

impl Stage for Batcher {
    fn start(&mut self, info: &StageInfo) {
        self.telemetry = Some(Telemetry::new(&info.id, info.pipeline.as_deref().unwrap_or_default()));
    }

    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        self.push(batch);
        if !self.timeout.is_zero() {
            self.send_full(out);
            if self.pending.is_empty() {
                self.deadline = None;
            } else if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.timeout);
            }
        }
    }

    /// With `timeout: 0`, what is already queued is joined (up to the trigger size) and sent
    /// at once.
    fn read_more(&self) -> bool {
        self.timeout.is_zero() && self.items < self.send_batch_size
    }

    fn on_caught_up(&mut self, out: &mut Out) {
        if self.timeout.is_zero() {
            self.send_full(out);
            self.flush(Trigger::Timeout, out);
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        self.deadline
    }

    fn on_timer(&mut self, out: &mut Out) {
        self.flush(Trigger::Timeout, out);
    }

    /// Everything upstream has stopped: send what is held.
    fn on_drain(&mut self, out: &mut Out) {
        self.flush(Trigger::Shutdown, out);
    }

    /// Nothing more can be delivered: the driver fails what is held.
    fn on_abort(&mut self, out: &mut Out) {
        for b in self.pending.drain(..) {
            out.send(b);
        }
        self.items = 0;
        self.deadline = None;
    }
}

impl Batcher {
    fn new(config: BatchConfig) -> Self {
        Self {
            send_batch_size: config.send_batch_size,
            max: if config.send_batch_max_size == 0 {
                usize::MAX
            } else {
                config.send_batch_max_size
            },
            timeout: config.timeout.get(),
            pending: VecDeque::new(),
            items: 0,
            deadline: None,
            telemetry: None,
        }
    }

    fn push(&mut self, batch: Batch) {
        self.items += batch.items();
        self.pending.push_back(batch);
    }

    /// Sends while the held items reach `send_batch_size`.
    fn send_full(&mut self, out: &mut Out) {
        while !self.pending.is_empty() && self.items >= self.send_batch_size {
            self.send_chunk(Trigger::Size, out);
        }
    }

    /// Sends everything held, in chunks of at most `send_batch_max_size`.
    fn flush(&mut self, trigger: Trigger, out: &mut Out) {
        while !self.pending.is_empty() {
            self.send_chunk(trigger, out);
        }
        self.deadline = None;
    }

    /// Takes up to `max` items from the front, joins them and sends them.
    fn send_chunk(&mut self, trigger: Trigger, out: &mut Out) {
        let parts = self.take_chunk(out);
        let signal = parts.first().map(Batch::signal);
        let (joined, lost) = join(parts);
        if let (Some(signal), true) = (signal, lost > 0) {
            out.dropped_items(signal, lost, reason::ERROR);
        }
        if let Some(batch) = joined {
            if let Some(t) = &self.telemetry {
                t.send_size.record(batch.items() as f64);
                if let Some(c) = t.sends.get(trigger.index()) {
                    c.increment(1);
                }
            }
            out.send(batch);
        }
    }

    /// Removes whole batches from the front while they fit in `max` items, splitting
    /// the one that straddles the bound (the only payload that gets decoded).
    fn take_chunk(&mut self, out: &mut Out) -> Vec<Batch> {
        let mut parts = Vec::new();
        let mut taken = 0usize;
        while let Some(front) = self.pending.front() {
            let n = front.items();
            if taken.saturating_add(n) <= self.max {
                if let Some(b) = self.pending.pop_front() {
                    self.items -= n;
                    taken += n;
                    parts.push(b);
                }
                continue;
            }
            if taken >= self.max {
                break;
            }
            let Some(mut b) = self.pending.pop_front() else { break };
            self.items -= n;
            match split_payload(&mut b.payload, self.max - taken) {
                Ok(rest) => {
                    if rest.items() > 0 || rest.encoded_len() > 0 {
                        self.items += rest.items();
                        self.pending.push_front(Batch {
                            payload: rest,
                            acks: b.acks.clone(),
                        });
                    }
                    parts.push(b);
                }
                Err(e) => {
                    tracing::error!(error = %e, items = n, "batch processor: cannot split data; dropping it");
                    out.fail(b, reason::ERROR);
                }
            }
            break;
        }
        parts
    }
}

/// Splits off everything after the first `n` items, keeping item counts exact
/// (metrics split at metric boundaries, so the first part may hold more than `n`).
fn split_payload(payload: &mut Payload, n: usize) -> Result<Payload, DataError> {
    let mut rest = payload.split_off(n)?;
    if let (Payload::Metrics(head), Payload::Metrics(tail)) = (&mut *payload, &mut rest) {
        head.recount();
        tail.recount();
    }
    Ok(rest)
}

/// Joins batches in order. When any part is encoded (what the OTLP receivers hand on), the parts are
/// concatenated once into a buffer of the exact size ([`Payload::concat`]): every byte is copied once, and
/// each part is freed once copied, so the peak is the result plus one part (not the batch held twice). Parts all held decoded are merged pairwise, level by level (moving
/// owned structs, not copying bytes). Also returns the items lost in merges that failed.
fn join(parts: Vec<Batch>) -> (Option<Batch>, usize) {
    let one_signal = parts
        .windows(2)
        .all(|w| w.first().map(Batch::signal) == w.get(1).map(Batch::signal));
    if parts.len() > 1 && one_signal && parts.iter().any(|b| b.payload.is_encoded()) {
        let mut acks = Vec::new();
        let mut payloads = Vec::with_capacity(parts.len());
        for b in parts {
            let Batch { payload, acks: mut a } = b;
            acks.append(&mut a);
            payloads.push(payload);
        }
        return match Payload::concat(payloads) {
            Ok(payload) => (Some(Batch { payload, acks }), 0),
            // Not reached: the parts were checked to be of one signal.
            Err(payloads) => {
                let lost = payloads.iter().map(Payload::items).sum();
                tracing::error!(
                    items = lost,
                    "batch processor: cannot join parts of mixed signals; dropping them"
                );
                for a in &acks {
                    a.fail();
                }
                (None, lost)
            }
        };
    }
    join_pairwise(parts)
}

/// [`join`] by pairwise merges, level by level.
fn join_pairwise(mut parts: Vec<Batch>) -> (Option<Batch>, usize) {
    let mut lost_items = 0;
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                let lost = b.items();
                if let Err(e) = a.merge(b) {
                    lost_items += lost;
                    // `merge` has already marked the lost part's sources as failed.
                    tracing::error!(error = %e, items = lost, "batch processor: cannot join data; dropping part of it");
                }
            }
            next.push(a);
        }
        parts = next;
    }
    (parts.pop(), lost_items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::ack::{Ack, Delivery};
    use bizpilot_core::component::{Target, parse_config};
    use bizpilot_core::pdata::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
    use bizpilot_core::pdata::proto::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use bizpilot_core::{Metrics, Output, ProcessorContext, Running, Traces};
    use prost::Message;
    use std::time::Duration as StdDuration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn spans(n: usize, prefix: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
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
        }
    }

    /// An encoded (wire) traces batch, as a receiver makes it.
    fn encoded(n: usize, prefix: &str) -> Batch {
        let bytes = spans(n, prefix).encode_to_vec();
        Batch::new(Payload::Traces(Traces::from_bytes(bytes.into()).unwrap()))
    }

    fn span_names(b: &Batch) -> Vec<String> {
        let Payload::Traces(t) = &b.payload else {
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

    fn is_encoded_only(b: &Batch) -> bool {
        format!("{:?}", b.payload).contains("decoded: false")
    }

    struct Harness {
        input: mpsc::Sender<Batch>,
        out: mpsc::Receiver<Batch>,
        abort: CancellationToken,
        running: Running,
    }

    fn start(config: BatchConfig, out_capacity: usize) -> Harness {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(out_capacity);
        let abort = CancellationToken::new();
        let ctx = ProcessorContext {
            id: "batch".parse().unwrap(),
            pipeline: "traces".parse().unwrap(),
            input: in_rx,
            output: Output::new(
                vec![Target {
                    name: "out".into(),
                    sender: out_tx,
                }],
                Vec::new(),
            ),
            abort: abort.clone(),
        };
        let proc_: Box<dyn Processor> = Box::new(BatchProcessor::new(config));
        let running = proc_.start(ctx).unwrap();
        Harness {
            input: in_tx,
            out: out_rx,
            abort,
            running,
        }
    }

    fn cfg(size: usize, timeout_ms: u64, max: usize) -> BatchConfig {
        BatchConfig {
            send_batch_size: size,
            timeout: Duration::from_millis(timeout_ms),
            send_batch_max_size: max,
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: BatchConfig = parse_config(&serde_yaml::Value::Null).unwrap();
        assert_eq!(c, BatchConfig::default());
        assert_eq!(c.send_batch_size, 8192);
        assert_eq!(c.timeout.get(), StdDuration::from_millis(200));

        let raw: serde_yaml::Value = serde_yaml::from_str("send_batch_size: 100\nsend_batch_max_size: 10").unwrap();
        let errs = parse_config::<BatchConfig>(&raw).unwrap_err();
        assert_eq!(
            errs,
            vec![FieldError::new(
                "send_batch_max_size",
                "must be >= send_batch_size (100)"
            )]
        );

        let raw: serde_yaml::Value = serde_yaml::from_str("timeout: 5x").unwrap();
        let errs = parse_config::<BatchConfig>(&raw).unwrap_err();
        assert_eq!(errs[0].path, "timeout");
        assert!(errs[0].message.contains("invalid duration \"5x\""), "{errs:?}");

        let raw: serde_yaml::Value = serde_yaml::from_str("timout: 1s").unwrap();
        assert!(parse_config::<BatchConfig>(&raw).is_err());

        let raw: serde_yaml::Value =
            serde_yaml::from_str("send_batch_size: 10\nsend_batch_max_size: 10\ntimeout: 0").unwrap();
        let c: BatchConfig = parse_config(&raw).unwrap();
        assert!(c.timeout.is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn sends_on_size_joining_encoded_payloads_without_decoding() {
        let mut h = start(cfg(10, 60_000, 0), 16);
        for i in 0..4 {
            h.input.send(encoded(3, &format!("b{i}"))).await.unwrap();
        }
        // 12 items >= 10: one batch with everything, still encoded.
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 12);
        assert!(is_encoded_only(&got), "{:?}", got.payload);
        let names = span_names(&got);
        assert_eq!(names.first().map(String::as_str), Some("b0-0"));
        assert_eq!(names.last().map(String::as_str), Some("b3-2"));
        drop(h.input);
        h.running.join().await.unwrap();
        assert!(h.out.recv().await.is_none());
    }

    fn assert_close(elapsed: StdDuration, ms: u64) {
        let want = StdDuration::from_millis(ms);
        assert!(
            elapsed >= want && elapsed <= want + StdDuration::from_millis(2),
            "{elapsed:?}, want {want:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sends_on_timeout() {
        let mut h = start(cfg(100, 200, 0), 16);
        let t0 = Instant::now();
        h.input.send(encoded(2, "a")).await.unwrap();
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        h.input.send(encoded(2, "b")).await.unwrap();
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 4);
        // The oldest item waited the timeout, not longer.
        assert_close(t0.elapsed(), 200);
        // A new item starts a new timer.
        h.input.send(encoded(1, "c")).await.unwrap();
        let t1 = Instant::now();
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 1);
        assert_close(t1.elapsed(), 200);
        drop(h.input);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeout_sends_immediately() {
        let mut h = start(cfg(1000, 0, 0), 16);
        let t0 = Instant::now();
        h.input.send(encoded(1, "a")).await.unwrap();
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 1);
        assert_eq!(t0.elapsed(), StdDuration::ZERO);
        drop(h.input);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn splits_above_max_size_in_order() {
        let mut h = start(cfg(4, 60_000, 4), 16);
        h.input.send(encoded(3, "a")).await.unwrap();
        h.input.send(encoded(7, "b")).await.unwrap();
        // 10 items: two sends of 4 on size; 2 remain until shutdown.
        let first = h.out.recv().await.unwrap();
        let second = h.out.recv().await.unwrap();
        assert_eq!(span_names(&first), ["a-0", "a-1", "a-2", "b-0"]);
        assert_eq!(span_names(&second), ["b-1", "b-2", "b-3", "b-4"]);
        drop(h.input);
        let last = h.out.recv().await.unwrap();
        assert_eq!(span_names(&last), ["b-5", "b-6"]);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_batch_is_split_into_max_size_chunks() {
        let mut h = start(cfg(10, 60_000, 10), 16);
        h.input.send(encoded(35, "x")).await.unwrap();
        let mut sizes = Vec::new();
        for _ in 0..3 {
            sizes.push(h.out.recv().await.unwrap().items());
        }
        drop(h.input);
        sizes.push(h.out.recv().await.unwrap().items());
        assert_eq!(sizes, [10, 10, 10, 5]);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn whole_batches_within_max_stay_encoded() {
        let mut h = start(cfg(6, 60_000, 6), 16);
        for i in 0..4 {
            h.input.send(encoded(2, &format!("b{i}"))).await.unwrap();
        }
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 6);
        assert!(is_encoded_only(&got), "no split needed, no decode");
        drop(h.input);
        assert_eq!(h.out.recv().await.unwrap().items(), 2);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_split_keeps_counts_exact() {
        let metric = |name: &str, points: usize| Metric {
            name: name.into(),
            data: Some(bizpilot_core::pdata::proto::metrics::v1::metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); points],
            })),
            ..Default::default()
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![metric("a", 3), metric("b", 3), metric("c", 3)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut h = start(cfg(4, 60_000, 4), 16);
        h.input
            .send(Batch::new(Payload::Metrics(Metrics::from_message(req))))
            .await
            .unwrap();
        drop(h.input);
        let mut total = 0;
        while let Some(b) = h.out.recv().await {
            let Payload::Metrics(m) = &b.payload else { panic!() };
            let mut m = m.clone();
            let actual: usize = m.message().unwrap().resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(bizpilot_core::pdata::metric_points)
                .sum();
            assert_eq!(b.items(), actual, "item count matches content");
            total += actual;
        }
        assert_eq!(total, 9);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_everything_held() {
        let mut h = start(cfg(1000, 60_000, 0), 16);
        for i in 0..5 {
            h.input.send(encoded(10, &format!("s{i}"))).await.unwrap();
        }
        drop(h.input);
        let got = h.out.recv().await.unwrap();
        assert_eq!(got.items(), 50);
        assert!(h.out.recv().await.is_none());
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn acks_follow_the_data_through_merge_and_split() {
        let mut h = start(cfg(4, 60_000, 4), 16);
        let (a1, r1) = Ack::channel();
        let (a2, mut r2) = Ack::channel();
        let mut b1 = encoded(3, "a");
        b1.acks.push(a1);
        let mut b2 = encoded(3, "b");
        b2.acks.push(a2);
        h.input.send(b1).await.unwrap();
        h.input.send(b2).await.unwrap();
        let first = h.out.recv().await.unwrap(); // a0..a2 + b0
        drop(h.input);
        let second = h.out.recv().await.unwrap(); // b1, b2
        assert_eq!((first.items(), second.items()), (4, 2));
        drop(first);
        assert_eq!(r1.await.unwrap(), Delivery::Delivered);
        assert!(r2.try_recv().is_err(), "part of b is still in flight");
        second.fail();
        drop(second);
        assert_eq!(r2.await.unwrap(), Delivery::Failed);
        h.running.join().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn backpressure_bounds_what_is_read() {
        // Output channel of 1, nobody reading it: the processor blocks on send and stops reading input.
        let h = start(cfg(1, 0, 0), 1);
        let mut accepted = 0;
        for i in 0..100 {
            match tokio::time::timeout(StdDuration::from_millis(10), h.input.send(encoded(1, &format!("{i}")))).await {
                Ok(Ok(())) => accepted += 1,
                _ => break,
            }
        }
        // 16 queued in the input, 1 in the output, 1 being sent (plus what was joined with it).
        assert!(accepted < 40, "accepted {accepted}");
        drop(h);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_fails_what_is_held_and_queued() {
        let mut h = start(cfg(1, 0, 0), 1);
        let mut rxs = Vec::new();
        for i in 0..5 {
            let (ack, rx) = Ack::channel();
            let mut b = encoded(1, &format!("{i}"));
            b.acks.push(ack);
            let _ = tokio::time::timeout(StdDuration::from_millis(10), h.input.send(b)).await;
            rxs.push(rx);
        }
        // Let the processor take the first batch into the output and block sending the second.
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        h.abort.cancel();
        h.running.join().await.unwrap();
        // The one batch that made it into the output channel is still in flight; drop it as delivered.
        let delivered = h.out.recv().await.unwrap();
        drop(delivered);
        let mut outcomes = Vec::new();
        for rx in rxs {
            outcomes.push(rx.await.unwrap());
        }
        assert_eq!(outcomes[0], Delivery::Delivered);
        assert!(outcomes[1..].iter().all(|d| *d == Delivery::Failed), "{outcomes:?}");
    }

    #[tokio::test]
    async fn closed_output_fails_the_batch_and_ends_with_an_error() {
        let mut h = start(cfg(1, 0, 0), 1);
        h.out.close();
        let (ack, rx) = Ack::channel();
        let mut b = encoded(1, "x");
        b.acks.push(ack);
        h.input.send(b).await.unwrap();
        assert_eq!(rx.await.unwrap(), Delivery::Failed);
        assert!(h.running.join().await.is_err());
    }

    #[test]
    fn join_keeps_order_and_all_acks() {
        let mut rxs = Vec::new();
        let parts: Vec<Batch> = (0..7)
            .map(|i| {
                let (ack, rx) = Ack::channel();
                rxs.push(rx);
                let mut b = encoded(1, &format!("p{i}"));
                b.acks.push(ack);
                b
            })
            .collect();
        let joined = join(parts).0.unwrap();
        assert_eq!(joined.acks.len(), 7);
        assert_eq!(
            span_names(&joined),
            ["p0-0", "p1-0", "p2-0", "p3-0", "p4-0", "p5-0", "p6-0"]
        );
        assert!(join(Vec::new()).0.is_none());
    }

    #[test]
    fn factory_info() {
        let info = BatchProcessorFactory.info();
        assert_eq!(info.type_name, "batch");
        assert_eq!(info.kind, ComponentKind::Processor);
        assert_eq!(info.signals, &Signal::ALL);
    }
}
