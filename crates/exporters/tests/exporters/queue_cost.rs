//! What the persistent sending queue costs: the helper's throughput with the queue in memory versus in a
//! `file_storage` file (redb, a durable commit per append and per removal), against a destination that accepts
//! at once (so the figure is the exporter's own cost), and the disk bytes per stored span. A measurement, not a
//! check: run it on purpose, in release,
//!
//! `cargo test --release -p bizpilot-exporters --test exporters queue_cost -- --ignored --nocapture`

use crate::common::kv;
use bizpilot_core::config::Duration as CfgDuration;
use bizpilot_core::storage::Storage;
use bizpilot_core::{Batch, ComponentId, ExporterContext, Payload, Traces};
use bizpilot_exporters::helper::{
    BatchSender, ExportError, HelperSettings, PersistentQueue, QueueSettings, RetrySettings, Sent, queue_owner,
    start_exporter_with,
};
use bizpilot_extensions::file_storage::FileStorage;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SPANS_PER_BATCH: usize = 100;

/// A batch of checkout-like spans (resource and span attributes as the shop workload carries them).
fn batch(b: usize) -> Batch {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout"), kv("deployment.environment", "prod")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..SPANS_PER_BATCH)
                    .map(|i| Span {
                        name: "POST /checkout".into(),
                        trace_id: [(b as u64).to_be_bytes(), (i as u64).to_be_bytes()].concat(),
                        span_id: ((b * SPANS_PER_BATCH + i) as u64).to_be_bytes().to_vec(),
                        start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                        end_time_unix_nano: 1_700_000_000_100_000_000 + i as u64,
                        attributes: vec![
                            kv("http.route", "/checkout"),
                            kv("http.response.status_code", "200"),
                            kv("business.order.id", &format!("ord-{b}-{i}")),
                            kv("business.customer.id", &format!("cust-{}", i * 7)),
                            kv("business.order.value", "129.90"),
                            kv("business.currency", "EUR"),
                        ],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch::new(Payload::Traces(
        Traces::from_bytes(req.encode_to_vec().into()).expect("valid"),
    ))
}

#[derive(Default)]
struct Sink {
    down: AtomicBool,
    items: AtomicUsize,
}

impl BatchSender for Sink {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(ExportError::retryable("down"));
        }
        self.items.fetch_add(batch.items(), Ordering::Relaxed);
        Ok(Sent::ALL)
    }
}

fn settings() -> HelperSettings {
    HelperSettings {
        timeout: CfgDuration::from_secs(5),
        retry_on_failure: RetrySettings {
            initial_interval: CfgDuration::from_millis(50),
            max_elapsed_time: CfgDuration::from_secs(0),
            ..Default::default()
        },
        sending_queue: QueueSettings {
            num_consumers: 10,
            queue_size: 100_000,
            ..Default::default()
        },
    }
}

/// Pushes `n` batches through the helper and waits until it finished; spans per second.
async fn run(id: &str, n: usize, queue: Option<Arc<PersistentQueue>>, sink: Arc<Sink>) -> f64 {
    let batches: Vec<Batch> = (0..n).map(batch).collect();
    let (tx, rx) = mpsc::channel(4);
    let started = Instant::now();
    let mut running = start_exporter_with(
        ExporterContext {
            id: id.parse::<ComponentId>().unwrap(),
            input: rx,
            abort: CancellationToken::new(),
        },
        &settings(),
        queue,
        sink.clone(),
    );
    for b in batches {
        tx.send(b).await.unwrap();
    }
    drop(tx);
    running.join().await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(sink.items.load(Ordering::Relaxed), n * SPANS_PER_BATCH);
    (n * SPANS_PER_BATCH) as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
async fn queue_cost() {
    let n = 2000;
    let payload = batch(0).payload.encoded_len() as f64 / SPANS_PER_BATCH as f64;
    println!("workload: {n} batches of {SPANS_PER_BATCH} spans, {payload:.0} protobuf bytes per span");

    let memory = run("otlp/memory", n, None, Arc::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(&dir.path().join("q.redb"), false, "file_storage").unwrap();
    let (queue, _) = PersistentQueue::open(storage.client(&queue_owner("otlp/disk")).unwrap(), 100_000).unwrap();
    let disk = run("otlp/disk", n, Some(Arc::new(queue)), Arc::default()).await;
    println!(
        "throughput, destination accepting at once, 10 consumers: memory {memory:.0} spans/s, \
         file_storage {disk:.0} spans/s ({:.1}% of memory; {:.0} batches/s)",
        100.0 * disk / memory,
        disk / SPANS_PER_BATCH as f64
    );

    // Disk per span: the destination down, everything stays stored.
    let file = dir.path().join("q.redb");
    let before = std::fs::metadata(&file).unwrap().len();
    let (queue, _) = PersistentQueue::open(storage.client(&queue_owner("otlp/down")).unwrap(), 100_000).unwrap();
    let queue = Arc::new(queue);
    let sink = Arc::new(Sink::default());
    sink.down.store(true, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(4);
    let abort = CancellationToken::new();
    let mut running = start_exporter_with(
        ExporterContext {
            id: "otlp/down".parse::<ComponentId>().unwrap(),
            input: rx,
            abort: abort.clone(),
        },
        &settings(),
        Some(queue.clone()),
        sink,
    );
    let stored = 1000;
    let started = Instant::now();
    for b in 0..stored {
        tx.send(batch(b)).await.unwrap();
    }
    while queue.len() < stored {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fill = started.elapsed().as_secs_f64();
    abort.cancel();
    running.join().await.unwrap();
    let after = std::fs::metadata(&file).unwrap().len();
    let per_span = (after.saturating_sub(before)) as f64 / (stored * SPANS_PER_BATCH) as f64;
    println!(
        "disk: {stored} batches ({} spans) stored grow the file by {} bytes: {per_span:.0} bytes per span \
         ({payload:.0} of them the span's protobuf); appends alone (destination down): {:.0} spans/s",
        stored * SPANS_PER_BATCH,
        after.saturating_sub(before),
        (stored * SPANS_PER_BATCH) as f64 / fill
    );
}
