//! The persistent sending queue through the helper: batches are acknowledged once stored (the destination
//! down), stay stored across an abort, and a new exporter on the same storage sends them in order; permanent
//! failures and unreadable entries are removed and counted; a full queue stops reading the input.

use crate::common::*;
use bizpilot_core::config::Duration as CfgDuration;
use bizpilot_core::storage::{MemoryStorage, Storage, StorageClient, StorageOp};
use bizpilot_core::{Batch, ComponentId, Delivery, ExporterContext, Running};
use bizpilot_exporters::helper::{
    BatchSender, ExportError, HelperSettings, PersistentQueue, QueueSettings, RetrySettings, Sent, persistent,
    queue_owner, start_exporter_with,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records the first span's name of each batch it accepts; refuses (retryable) while `down`; rejects batches
/// of 13 spans for good.
#[derive(Default)]
struct Destination {
    down: AtomicBool,
    got: Mutex<Vec<String>>,
}

impl BatchSender for Destination {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ExportError::retryable("destination down"));
        }
        if batch.items() == 13 {
            return Err(ExportError::permanent("too large"));
        }
        let bizpilot_core::Payload::Traces(t) = &mut batch.payload else {
            return Err(ExportError::permanent("not traces"));
        };
        let req = ExportTraceServiceRequest::decode(t.encoded()).map_err(|e| ExportError::permanent(e.to_string()))?;
        let name = req.resource_spans[0].scope_spans[0].spans[0].name.clone();
        self.got.lock().unwrap().push(name);
        Ok(Sent::ALL)
    }
}

fn settings(queue_size: usize) -> HelperSettings {
    HelperSettings {
        timeout: CfgDuration::from_secs(1),
        retry_on_failure: RetrySettings {
            initial_interval: CfgDuration::from_millis(10),
            max_interval: CfgDuration::from_millis(20),
            max_elapsed_time: CfgDuration::from_secs(0),
            ..Default::default()
        },
        sending_queue: QueueSettings {
            enabled: true,
            num_consumers: 1,
            queue_size,
            storage: Some("file_storage".into()),
        },
    }
}

struct Run {
    tx: mpsc::Sender<Batch>,
    abort: CancellationToken,
    running: Running,
}

fn run(id: &str, storage: &MemoryStorage, queue_size: usize, dest: Arc<Destination>) -> (Run, usize) {
    let client = storage.client(&queue_owner(id)).unwrap();
    let (queue, recovered) = PersistentQueue::open(client, queue_size).unwrap();
    let (tx, rx) = mpsc::channel(1);
    let abort = CancellationToken::new();
    let running = start_exporter_with(
        ExporterContext {
            id: id.parse::<ComponentId>().unwrap(),
            input: rx,
            abort: abort.clone(),
        },
        &settings(queue_size),
        Some(Arc::new(queue)),
        dest,
    );
    (Run { tx, abort, running }, recovered.batches)
}

impl Run {
    /// Closes the input (or, with `abort`, passes the drain deadline) and waits for the exporter to return.
    async fn finish(self, abort: bool) {
        if abort {
            self.abort.cancel();
        }
        drop(self.tx);
        let mut running = self.running;
        tokio::time::timeout(Duration::from_secs(10), running.join())
            .await
            .unwrap()
            .unwrap();
    }
}

fn stored(storage: &MemoryStorage, id: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c: Arc<dyn StorageClient> = storage.client(&queue_owner(id)).unwrap();
    c.scan(&persistent::key(0), usize::MAX).unwrap()
}

#[tokio::test]
async fn stored_batches_are_acknowledged_survive_an_abort_and_are_sent_in_order_by_the_next_run() {
    init();
    let id = "otlp/persistent";
    let storage = MemoryStorage::default();
    let dest = Arc::new(Destination::default());
    dest.down.store(true, Ordering::SeqCst);
    let (r, recovered) = run(id, &storage, 100, dest.clone());
    assert_eq!(recovered, 0);
    // The destination is down, yet each batch is acknowledged once it is stored.
    for i in 0..10 {
        let (b, ack) = trace_batch(if i == 4 { 13 } else { 2 }, &format!("p{i}"));
        r.tx.send(b).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d, Delivery::Delivered, "batch {i}");
    }
    eventually("queue gauge", Duration::from_secs(5), || {
        gauge("bizpilot_exporter_queue_size", id) == 10.0
    })
    .await;
    assert_eq!(gauge("bizpilot_exporter_queue_capacity", id), 100.0);
    // Drain deadline passes with the destination still down: everything stays stored, nothing is counted failed.
    r.finish(true).await;
    assert!(dest.got.lock().unwrap().is_empty());
    assert_eq!(stored(&storage, id).len(), 10);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 0);

    // A new run on the same storage, destination up: everything in order, the 13-span batch failed and removed.
    dest.down.store(false, Ordering::SeqCst);
    let (r, recovered) = run(id, &storage, 100, dest.clone());
    assert_eq!(recovered, 10);
    r.finish(false).await;
    let want: Vec<String> = (0..10).filter(|i| *i != 4).map(|i| format!("p{i}-span-0")).collect();
    assert_eq!(*dest.got.lock().unwrap(), want);
    assert!(
        stored(&storage, id).is_empty(),
        "delivered and failed batches are removed"
    );
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 18);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 13);
    assert_eq!(gauge("bizpilot_exporter_queue_size", id), 0.0);
}

#[tokio::test]
async fn a_full_persistent_queue_stops_reading_the_input_and_an_unreadable_entry_is_counted() {
    init();
    let id = "otlp/persistent_full";
    let storage = MemoryStorage::default();
    let dest = Arc::new(Destination::default());
    dest.down.store(true, Ordering::SeqCst);
    let (r, _) = run(id, &storage, 3, dest.clone());
    let mut acks = Vec::new();
    for i in 0..3 {
        let (b, ack) = trace_batch(1, &format!("f{i}"));
        r.tx.send(b).await.unwrap();
        acks.push(ack);
    }
    eventually("3 stored", Duration::from_secs(5), || stored(&storage, id).len() == 3).await;
    // Queue full: the exporter reads no more; one batch fits the input channel, the next does not.
    let (b, late_ack) = trace_batch(1, "f3");
    r.tx.send(b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (b, _) = trace_batch(1, "f4");
    assert!(matches!(r.tx.try_send(b), Err(mpsc::error::TrySendError::Full(_))));
    assert_eq!(stored(&storage, id).len(), 3, "never more than queue_size stored");
    for a in acks {
        assert_eq!(a.await.unwrap(), Delivery::Delivered);
    }
    // Deadline: the stored batches stay, the one left unread in the input is failed (its source is told).
    r.finish(true).await;
    assert_eq!(late_ack.await.unwrap(), Delivery::Failed);
    assert_eq!(stored(&storage, id).len(), 3);
    // Damage the oldest entry: the next run counts and removes it, the rest flows.
    storage
        .client(&queue_owner(id))
        .unwrap()
        .apply(&[StorageOp::Put(persistent::key(0), vec![1, 0, 1, 0, 0, 0, 0xff])])
        .unwrap();
    dest.down.store(false, Ordering::SeqCst);
    let (r, recovered) = run(id, &storage, 3, dest.clone());
    assert_eq!(recovered, 3);
    r.finish(false).await;
    assert_eq!(*dest.got.lock().unwrap(), vec!["f1-span-0", "f2-span-0"]);
    assert_eq!(counter("bizpilot_exporter_queue_corrupt_batches_total", id), 1);
    assert!(stored(&storage, id).is_empty());
}
