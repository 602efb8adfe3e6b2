//! Sending queue, retries and timeout for exporters that push batches to a destination.
//!
//! An exporter implements [`BatchSender`] (one attempt to deliver one batch) and calls
//! [`start_exporter`] from its `start`; the helper does the rest:
//!
//! - reads `ctx.input` only while the sending queue has room, so a full queue backs pressure
//!   up the pipeline (receivers then refuse with a retryable error); nothing is dropped
//!   because the queue is full;
//! - runs `num_consumers` concurrent senders, each attempt limited by `timeout`;
//! - retries [`ExportError::Retryable`] errors with exponential backoff and jitter, waiting at
//!   least the delay the server asked for; permanent errors and exhausted retries fail the
//!   batch (`Batch::fail`), count its items as `send_failed` and log once with the reason;
//! - on success counts the items as sent and drops the batch (its acks report `Delivered`);
//! - when `ctx.input` closes, sends what is queued (retrying as usual) and returns; when
//!   `ctx.abort` is cancelled, fails whatever is left (in flight, queued, or still in the
//!   input channel), counts it, and returns at once.
//!
//! Config keys (top level of the exporter's config), as in the OpenTelemetry Collector:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `timeout` | `5s` | limit of one send attempt; `0` = none |
//! | `retry_on_failure.enabled` | `true` | retry retryable errors |
//! | `retry_on_failure.initial_interval` | `5s` | first wait |
//! | `retry_on_failure.randomization_factor` | `0.5` | each wait is randomised by ± this fraction |
//! | `retry_on_failure.multiplier` | `1.5` | growth of the wait per retry |
//! | `retry_on_failure.max_interval` | `30s` | longest wait |
//! | `retry_on_failure.max_elapsed_time` | `300s` | give up after this long; `0` = retry forever |
//! | `sending_queue.enabled` | `true` | without a queue, one batch is sent at a time |
//! | `sending_queue.num_consumers` | `10` | concurrent senders |
//! | `sending_queue.queue_size` | `1000` | queue capacity, in batches (requests, the Collector's default sizer), in memory or on disk |
//! | `sending_queue.storage` | | id of a storage extension (`file_storage`): the queue is kept on disk, survives restarts and `SIGKILL`; none: in memory |
//!
//! ```yaml
//! timeout: 10s
//! retry_on_failure: {enabled: true, initial_interval: 1s, max_elapsed_time: 0}
//! sending_queue: {num_consumers: 4, queue_size: 200}
//! ```
//!
//! **Persistent queue** (`sending_queue.storage`, as in the Collector's exporterhelper): each batch is written
//! to the storage extension (namespace `exporter/<exporter id>`, one durable commit) before it is acknowledged
//! upstream, sent by `num_consumers` senders in arrival order, and removed once the destination accepted it or
//! it failed for good (counted as `send_failed` and logged). At the shutdown deadline, or after a crash, what is
//! left stays on disk and is sent by the next start (at least once: a batch sent but not yet removed when the
//! process died is sent again). At start the queue is counted reading 64 entries at a time, and senders read it
//! in chunks of 64, so neither recovery nor a long queue is held in memory. At most `queue_size` batches are
//! stored; a full queue stops reading the input, so receivers refuse new data with a retryable error
//! (`bizpilot_receiver_refused_<items>_total{reason="queue_full"}`) and a Kafka receiver stops consuming:
//! nothing is dropped. A batch that cannot be written is refused upstream
//! (`bizpilot_exporter_enqueue_failed_<items>_total`); a stored batch that cannot be read back is logged,
//! counted (`bizpilot_exporter_queue_corrupt_batches_total`) and removed. `bizpilot_exporter_queue_size` is
//! then the number of batches stored (waiting or being sent). See `docs/durable-state.md`.
//!
//! ```yaml
//! extensions:
//!   file_storage: {directory: /var/lib/bizpilot}
//! exporters:
//!   otlp:
//!     endpoint: collector:4317
//!     sending_queue: {queue_size: 5000, storage: file_storage}
//! service:
//!   extensions: [file_storage]
//! ```

mod backoff;
pub mod persistent;
mod settings;

pub use backoff::Backoff;
pub use persistent::{PersistentQueue, QueueError, Recovered};
pub use settings::{DEFAULT_TIMEOUT, HelperSettings, QueueSettings, RetrySettings};

use bizpilot_core::telemetry::{ExporterTelemetry, item_counter_name};
use bizpilot_core::{Batch, ComponentError, CreateContext, ExporterContext, Running, Signal};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why one send attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Worth trying again (destination unavailable, throttled, timed out, connection lost).
    #[error("{reason}")]
    Retryable {
        reason: String,
        /// A delay the destination asked for (gRPC `RetryInfo`, HTTP `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (rejected as invalid, unauthorised, too large, …).
    #[error("{reason}")]
    Permanent { reason: String },
}

impl ExportError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        ExportError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn retryable_after(reason: impl Into<String>, retry_after: Option<Duration>) -> Self {
        ExportError::Retryable {
            reason: reason.into(),
            retry_after,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        ExportError::Permanent { reason: reason.into() }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ExportError::Retryable { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            ExportError::Retryable { reason, .. } | ExportError::Permanent { reason } => reason,
        }
    }
}

/// A successful send. `rejected` items were refused by the destination for good (OTLP partial
/// success): they are counted as `send_failed`, the rest as sent, and the batch is not failed
/// (the destination accepted the request; retrying would not help).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub rejected: usize,
}

impl Sent {
    /// Everything was accepted.
    pub const ALL: Sent = Sent { rejected: 0 };
}

/// One attempt to deliver one batch. Called again for the same batch on retryable errors,
/// so it must not consume the batch; it may cache in it (e.g. `batch.payload.encoded()`).
/// The helper applies the `timeout` around each call and cancels the future on abort.
pub trait BatchSender: Send + Sync + 'static {
    fn send(&self, batch: &mut Batch) -> impl Future<Output = Result<Sent, ExportError>> + Send;
}

/// A shared sender (keep a handle to it, e.g. to flush a producer on shutdown).
impl<S: BatchSender> BatchSender for Arc<S> {
    fn send(&self, batch: &mut Batch) -> impl Future<Output = Result<Sent, ExportError>> + Send {
        (**self).send(batch)
    }
}

/// Spawns the exporter's task: reads `ctx.input` into the sending queue and sends with
/// `sender`, as described in the module documentation. A queue in storage is
/// [`start_exporter_with`]'s.
pub fn start_exporter<S: BatchSender>(ctx: ExporterContext, settings: &HelperSettings, sender: S) -> Running {
    start_exporter_with(ctx, settings, None, sender)
}

/// The namespace of an exporter's persistent queue in its storage extension.
pub fn queue_owner(exporter: &str) -> String {
    format!("exporter/{exporter}")
}

/// Opens the persistent sending queue when `sending_queue.storage` names a storage extension (call it from the
/// factory's `create`, so a queue that cannot be opened stops the start and `/readyz` waits for the recovery).
pub fn open_queue(
    settings: &HelperSettings,
    ctx: &CreateContext<'_>,
) -> Result<Option<Arc<PersistentQueue>>, ComponentError> {
    let q = &settings.sending_queue;
    let Some(storage) = q.storage.as_deref().filter(|_| q.enabled) else {
        return Ok(None);
    };
    let exporter = ctx.id.to_string();
    let client = bizpilot_core::storage::client_for(ctx.extensions, storage, &queue_owner(&exporter))?;
    let (queue, recovered) = PersistentQueue::open(client, q.queue_size)
        .map_err(|e| ComponentError::Other(format!("sending_queue.storage {storage}: {e}")))?;
    if recovered.batches > 0 {
        tracing::info!(
            exporter = %exporter,
            storage,
            batches = recovered.batches,
            bytes = recovered.bytes,
            "persistent sending queue: resuming batches left by the previous run"
        );
    }
    Ok(Some(Arc::new(queue)))
}

/// [`start_exporter`] with the persistent queue [`open_queue`] gave (`None`: the queue in memory).
pub fn start_exporter_with<S: BatchSender>(
    ctx: ExporterContext,
    settings: &HelperSettings,
    persistent: Option<Arc<PersistentQueue>>,
    sender: S,
) -> Running {
    let exporter = ctx.id.to_string();
    let telemetry = ExporterTelemetry::new(&exporter);
    let capacity = if settings.sending_queue.enabled {
        settings.sending_queue.queue_size.max(1)
    } else {
        0
    };
    let persistent = persistent.filter(|_| settings.sending_queue.enabled);
    let (size, capacity) = match &persistent {
        Some(q) => (q.len(), q.capacity()),
        None => (0, capacity),
    };
    telemetry.queue(size, capacity);
    let worker = Arc::new(Worker::new(
        exporter,
        sender,
        settings,
        telemetry,
        ctx.abort.clone(),
        capacity,
    ));
    if let Some(queue) = persistent {
        let consumers = settings.sending_queue.num_consumers.max(1);
        return Running::spawn(async move {
            run_persistent(ctx, worker, consumers, queue).await;
            Ok(())
        });
    }
    let queue = settings.sending_queue.clone();
    Running::spawn(async move {
        if queue.enabled {
            run_queued(ctx, worker, queue.num_consumers.max(1), capacity).await;
        } else {
            run_direct(ctx, worker).await;
        }
        Ok(())
    })
}

struct Worker<S> {
    exporter: String,
    sender: S,
    timeout: Option<Duration>,
    retry: RetrySettings,
    telemetry: ExporterTelemetry,
    abort: CancellationToken,
    queued: AtomicUsize,
    capacity: usize,
    aborted_batches: AtomicUsize,
    aborted_items: AtomicUsize,
}

impl<S> Worker<S> {
    fn new(
        exporter: String,
        sender: S,
        settings: &HelperSettings,
        telemetry: ExporterTelemetry,
        abort: CancellationToken,
        capacity: usize,
    ) -> Self {
        Worker {
            exporter,
            sender,
            timeout: (!settings.timeout.is_zero()).then(|| settings.timeout.get()),
            retry: settings.retry_on_failure.clone(),
            telemetry,
            abort,
            queued: AtomicUsize::new(0),
            capacity,
            aborted_batches: AtomicUsize::new(0),
            aborted_items: AtomicUsize::new(0),
        }
    }
}

/// How sending one batch ended.
enum Outcome {
    /// Accepted by the destination (counted as sent, rejected items as failed).
    Sent,
    /// Failed for good, with the reason.
    Failed(String),
    /// The drain deadline passed first.
    Aborted,
}

/// With the queue in storage: the input is read only while fewer than `queue_size` batches are stored (a full
/// queue backs pressure up the pipeline: receivers refuse with a retryable error, counted as
/// `receiver_refused{reason="queue_full"}`); each batch is appended durably before it is acknowledged upstream
/// (its acks are dropped as delivered), or refused when storage fails (its acks fail, counted as
/// `enqueue_failed`); consumers send in sequence order and remove each batch once it is delivered or failed for
/// good. At abort, what is left stays stored for the next start.
async fn run_persistent<S: BatchSender>(
    ctx: ExporterContext,
    worker: Arc<Worker<S>>,
    consumers: usize,
    queue: Arc<PersistentQueue>,
) {
    let ExporterContext { mut input, abort, .. } = ctx;
    let enqueue_failed =
        Signal::ALL.map(|s| metrics::counter!(item_counter_name("exporter", "enqueue_failed", s), "exporter" => worker.exporter.clone()));
    let mut tasks = JoinSet::new();
    for _ in 0..consumers {
        tasks.spawn(consume_persistent(worker.clone(), queue.clone()));
    }
    let mut refused_since_log = 0usize;
    loop {
        // Read the input only while there is room: backpressure, as with the queue in memory.
        tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            _ = queue.wait_for_room() => {}
        }
        let next = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            b = input.recv() => b,
        };
        let Some(batch) = next else { break };
        // What else is waiting and fits goes into the same commit.
        let mut group = vec![batch];
        while group.len() < APPEND_GROUP
            && queue.len() + group.len() < queue.capacity()
            && let Ok(b) = input.try_recv()
        {
            group.push(b);
        }
        match queue.push_all(&mut group).await {
            Ok(_) => {
                worker.telemetry.queue(queue.len(), queue.capacity());
                // Stored: dropping the batches acknowledges them upstream.
            }
            Err(e) => {
                for batch in group {
                    let signal = batch.signal();
                    let items = batch.items();
                    batch.fail();
                    enqueue_failed[signal_index(signal)].increment(items as u64);
                    // A storage that fails keeps failing: log the first and then every 1000th refusal, the
                    // counter has them all.
                    if refused_since_log == 0 {
                        tracing::warn!(exporter = %worker.exporter, %signal, items, "refusing data: {e}");
                    }
                    refused_since_log = (refused_since_log + 1) % 1000;
                }
            }
        }
    }
    queue.close(consumers);
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(exporter = %worker.exporter, "exporter sender task panicked: {e}");
        }
    }
    worker.telemetry.queue(queue.len(), queue.capacity());
    // Not stored: fail what is still waiting in the input (only after an abort).
    worker.fail_input(&mut input);
    worker.report_aborted();
    if !queue.is_empty() {
        tracing::info!(
            exporter = %worker.exporter,
            batches = queue.len(),
            "persistent sending queue: batches kept in storage for the next start"
        );
    }
}

/// Batches appended in one commit at most (those already waiting in the input).
const APPEND_GROUP: usize = 16;

fn signal_index(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

async fn consume_persistent<S: BatchSender>(worker: Arc<Worker<S>>, queue: Arc<PersistentQueue>) {
    let corrupt =
        metrics::counter!("bizpilot_exporter_queue_corrupt_batches_total", "exporter" => worker.exporter.clone());
    loop {
        let next = tokio::select! {
            biased;
            _ = worker.abort.cancelled() => return,
            t = queue.take() => t,
        };
        let taken = match next {
            None => return,
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::error!(exporter = %worker.exporter, "persistent sending queue: cannot read: {e}");
                tokio::select! {
                    biased;
                    _ = worker.abort.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        match taken.batch {
            Ok(mut batch) => match worker.deliver(&mut batch).await {
                Outcome::Sent => {}
                Outcome::Failed(reason) => worker.fail(batch, &reason),
                // Still stored: sent again at the next start.
                Outcome::Aborted => return,
            },
            Err(reason) => {
                corrupt.increment(1);
                tracing::error!(
                    exporter = %worker.exporter,
                    seq = taken.seq,
                    "persistent sending queue: dropping an unreadable batch: {reason}"
                );
            }
        }
        if let Err(e) = queue.remove(taken.seq).await {
            tracing::error!(
                exporter = %worker.exporter,
                seq = taken.seq,
                "persistent sending queue: cannot remove a finished batch (it will be sent again at the next start): {e}"
            );
        }
        worker.telemetry.queue(queue.len(), queue.capacity());
    }
}

/// Without a queue: one batch at a time, in the exporter's task.
async fn run_direct<S: BatchSender>(ctx: ExporterContext, worker: Arc<Worker<S>>) {
    let ExporterContext { mut input, abort, .. } = ctx;
    loop {
        let next = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            b = input.recv() => b,
        };
        match next {
            Some(b) => worker.export(b).await,
            None => break,
        }
    }
    worker.fail_input(&mut input);
    worker.report_aborted();
}

async fn run_queued<S: BatchSender>(ctx: ExporterContext, worker: Arc<Worker<S>>, consumers: usize, capacity: usize) {
    let ExporterContext { mut input, abort, .. } = ctx;
    let (queue_tx, queue_rx) = mpsc::channel::<Batch>(capacity);
    let queue_rx = Arc::new(Mutex::new(queue_rx));
    let mut tasks = JoinSet::new();
    for _ in 0..consumers {
        tasks.spawn(consume(worker.clone(), queue_rx.clone()));
    }
    loop {
        // Take a slot first: the input is read only while the queue has room.
        let permit = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            p = queue_tx.reserve() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            b = input.recv() => b,
        };
        let Some(batch) = next else { break };
        let n = worker.queued.fetch_add(1, Ordering::Relaxed) + 1;
        worker.telemetry.queue(n, worker.capacity);
        permit.send(batch);
    }
    // Input closed (or abort): consumers empty the queue, then see it closed.
    drop(queue_tx);
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(exporter = %worker.exporter, "exporter sender task panicked: {e}");
        }
    }
    // Left only after an abort: fail what is still queued or waiting in the input.
    {
        let mut rx = queue_rx.lock().await;
        rx.close();
        while let Ok(b) = rx.try_recv() {
            worker.queued.fetch_sub(1, Ordering::Relaxed);
            worker.give_up_aborted(b);
        }
    }
    worker.telemetry.queue(0, worker.capacity);
    worker.fail_input(&mut input);
    worker.report_aborted();
}

async fn consume<S: BatchSender>(worker: Arc<Worker<S>>, queue: Arc<Mutex<mpsc::Receiver<Batch>>>) {
    loop {
        let next = {
            let mut rx = tokio::select! {
                biased;
                _ = worker.abort.cancelled() => return,
                g = queue.lock() => g,
            };
            tokio::select! {
                biased;
                _ = worker.abort.cancelled() => return,
                b = rx.recv() => b,
            }
        };
        let Some(batch) = next else { return };
        let n = worker.queued.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        worker.telemetry.queue(n, worker.capacity);
        worker.export(batch).await;
    }
}

impl<S: BatchSender> Worker<S> {
    /// Sends one batch, retrying as configured, until it is delivered, fails, or abort.
    async fn export(&self, mut batch: Batch) {
        match self.deliver(&mut batch).await {
            Outcome::Sent => {}
            Outcome::Failed(reason) => self.fail(batch, &reason),
            Outcome::Aborted => self.give_up_aborted(batch),
        }
    }

    /// Sends one batch, retrying as configured; counts what was sent.
    async fn deliver(&self, batch: &mut Batch) -> Outcome {
        let signal = batch.signal();
        let items = batch.items();
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        let mut attempts: u32 = 0;
        loop {
            attempts = attempts.saturating_add(1);
            let result = tokio::select! {
                biased;
                _ = self.abort.cancelled() => None,
                r = self.attempt(batch) => Some(r),
            };
            let Some(result) = result else {
                return Outcome::Aborted;
            };
            let (reason, server_delay) = match result {
                Ok(sent) => {
                    let rejected = sent.rejected.min(items);
                    self.telemetry.sent(signal, items - rejected);
                    if rejected > 0 {
                        self.telemetry.failed(signal, rejected);
                    }
                    return Outcome::Sent;
                }
                Err(ExportError::Permanent { reason }) => {
                    return Outcome::Failed(format!("not retryable: {reason}"));
                }
                Err(ExportError::Retryable { reason, retry_after }) => (reason, retry_after),
            };
            if !self.retry.enabled {
                return Outcome::Failed(format!("{reason} (retry_on_failure is disabled)"));
            }
            let elapsed = started.elapsed();
            let Some(delay) = backoff.next(elapsed, server_delay) else {
                return Outcome::Failed(format!(
                    "{reason} (giving up after {attempts} attempts in {:.1}s: max_elapsed_time reached)",
                    elapsed.as_secs_f64()
                ));
            };
            self.telemetry.retry(signal);
            tracing::debug!(
                exporter = %self.exporter,
                %signal,
                items,
                attempt = attempts,
                error = %reason,
                "export failed, retrying in {delay:?}"
            );
            let slept = tokio::select! {
                biased;
                _ = self.abort.cancelled() => false,
                _ = tokio::time::sleep(delay) => true,
            };
            if !slept {
                return Outcome::Aborted;
            }
        }
    }

    async fn attempt(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        match self.timeout {
            None => self.sender.send(batch).await,
            Some(t) => match tokio::time::timeout(t, self.sender.send(batch)).await {
                Ok(r) => r,
                Err(_) => Err(ExportError::retryable(format!("request timed out after {t:?}"))),
            },
        }
    }

    fn fail(&self, batch: Batch, reason: &str) {
        let signal = batch.signal();
        let items = batch.items();
        batch.fail();
        self.telemetry.failed(signal, items);
        tracing::warn!(exporter = %self.exporter, %signal, items, "dropping data: {reason}");
    }

    /// Fails a batch because the drain deadline passed; logged once in total by `report_aborted`.
    fn give_up_aborted(&self, batch: Batch) {
        batch.fail();
        self.telemetry.failed(batch.signal(), batch.items());
        self.aborted_batches.fetch_add(1, Ordering::Relaxed);
        self.aborted_items.fetch_add(batch.items(), Ordering::Relaxed);
    }

    /// Fails what is still in the input channel (only after an abort; empty otherwise).
    fn fail_input(&self, input: &mut mpsc::Receiver<Batch>) {
        input.close();
        while let Ok(b) = input.try_recv() {
            self.give_up_aborted(b);
        }
    }

    fn report_aborted(&self) {
        let batches = self.aborted_batches.load(Ordering::Relaxed);
        if batches > 0 {
            tracing::warn!(
                exporter = %self.exporter,
                batches,
                items = self.aborted_items.load(Ordering::Relaxed),
                "dropping data: shutdown deadline passed before it could be sent"
            );
        }
    }
}
