//! `order_kpi` with `storage`: the acknowledgement of a batch it ingested is released only once a snapshot that
//! includes the batch is written (issue #17), so a source that waits for it (the Kafka receiver, before committing
//! an offset) never moves past data a `SIGKILL` would lose. The connector runs as the pipeline runs it, on a storage
//! whose writes can be made to fail; every snapshot written is kept and read back.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bizpilot_connectors::kpi::{Compiled, Engine, OrderKpiConfig, OrderKpiConnectorFactory};
use bizpilot_core::storage::{Entries, MemoryStorage, Storage, StorageClient, StorageError, StorageHandle, StorageOp};
use bizpilot_core::{
    Ack, Batch, ComponentId, ConnectorContext, ConnectorFactory, CreateContext, Delivery, Extensions, Logs, Output,
    Payload, ReceiverOutput, Running, Signal, Target,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokio::sync::mpsc;

const T0: u64 = 1_700_000_000_000_000_000;

/// What the storage saw: whether writes fail, how many were tried, and every snapshot written.
#[derive(Default)]
struct Disk {
    fail: AtomicBool,
    attempts: AtomicUsize,
    written: Mutex<Vec<Vec<u8>>>,
}

impl Disk {
    fn written(&self) -> usize {
        self.written.lock().unwrap().len()
    }
}

struct Flaky {
    inner: MemoryStorage,
    disk: Arc<Disk>,
}

struct FlakyClient {
    inner: Arc<dyn StorageClient>,
    disk: Arc<Disk>,
}

impl Storage for Flaky {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        Ok(Arc::new(FlakyClient {
            inner: self.inner.client(owner)?,
            disk: self.disk.clone(),
        }))
    }
}

impl StorageClient for FlakyClient {
    fn load_all(&self) -> Result<Entries, StorageError> {
        self.inner.load_all()
    }

    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
        self.disk.attempts.fetch_add(1, Ordering::SeqCst);
        if self.disk.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                path: "test".into(),
                reason: "disk full".into(),
            });
        }
        self.inner.apply(ops)?;
        let mut w = self.disk.written.lock().unwrap();
        for op in ops {
            if let StorageOp::Put(_, v) = op {
                w.push(v.clone());
            }
        }
        Ok(())
    }
}

fn config(checkpoint: Duration) -> OrderKpiConfig {
    OrderKpiConfig {
        storage: Some("file_storage".into()),
        checkpoint_interval: bizpilot_core::config::Duration(checkpoint),
        ..Default::default()
    }
}

/// One `order.placed` event of order `o{i}`.
fn placed(i: usize) -> Payload {
    let s = |v: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        })
    };
    let rec = LogRecord {
        time_unix_nano: T0 + i as u64 * 1_000_000_000,
        event_name: "order.placed".into(),
        attributes: vec![KeyValue {
            key: "order.id".into(),
            value: s(&format!("o{i}")),
            ..Default::default()
        }],
        ..Default::default()
    };
    Payload::Logs(Logs::from_message(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![rec],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }))
}

/// Per batch: its outcome and the number of snapshots written when it was acknowledged.
type Outcomes = Arc<Mutex<HashMap<usize, (Delivery, usize)>>>;

struct Run {
    tx: Option<mpsc::Sender<Batch>>,
    running: Running,
    disk: Arc<Disk>,
    outcomes: Outcomes,
    _metrics: mpsc::Receiver<Batch>,
}

impl Run {
    fn start(cfg: OrderKpiConfig, storage: bool) -> Run {
        let id: ComponentId = "order_kpi".parse().unwrap();
        let disk = Arc::new(Disk::default());
        let mut ext = Extensions::default();
        if storage {
            let flaky = Flaky {
                inner: MemoryStorage::default(),
                disk: disk.clone(),
            };
            ext.insert(
                "file_storage".parse().unwrap(),
                Arc::new(StorageHandle(Arc::new(flaky))),
            );
        }
        let ctx = CreateContext {
            id: &id,
            pipeline: None,
            signals: BTreeSet::from([Signal::Logs]),
            output_signals: BTreeSet::from([Signal::Metrics]),
            extensions: &ext,
        };
        let conn = OrderKpiConnectorFactory.create(cfg, &ctx).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (mtx, mrx) = mpsc::channel(1 << 14);
        let output = Output::new(
            vec![Target {
                name: "m".into(),
                sender: mtx,
            }],
            Vec::new(),
        );
        let running = conn
            .start(ConnectorContext {
                id,
                input: rx,
                output: ReceiverOutput::new(HashMap::from([(Signal::Metrics, output)])),
                abort: tokio_util::sync::CancellationToken::new(),
            })
            .unwrap();
        Run {
            tx: Some(tx),
            running,
            disk,
            outcomes: Arc::default(),
            _metrics: mrx,
        }
    }

    async fn send(&self, range: std::ops::Range<usize>) {
        for i in range {
            let (outcomes, disk) = (self.outcomes.clone(), self.disk.clone());
            let ack = Ack::new(move |d| {
                outcomes.lock().unwrap().insert(i, (d, disk.written()));
            });
            let tx = self.tx.as_ref().expect("input open");
            tx.send(Batch::with_ack(placed(i), ack)).await.unwrap();
        }
    }

    fn acked(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events ingested by the engine a written snapshot holds (the `k`-th written, from 1).
fn events_in(snapshot: &[u8]) -> u64 {
    let cfg = config(Duration::from_secs(1));
    let mut e = Engine::new(Compiled::new(&cfg, |id| Err(format!("no extension {id}"))).unwrap());
    e.restore(snapshot).unwrap();
    e.stats().events
}

/// Every delivered batch was acknowledged after a snapshot holding it was written.
fn check_durable_before_acked(run: &Run) {
    let written = run.disk.written.lock().unwrap().clone();
    let mut held_by: HashMap<usize, u64> = HashMap::new();
    for (&i, &(d, k)) in run.outcomes.lock().unwrap().iter() {
        assert_eq!(d, Delivery::Delivered, "batch {i}");
        assert!(k >= 1, "batch {i} acknowledged before any snapshot was written");
        let held = *held_by.entry(k).or_insert_with(|| events_in(&written[k - 1]));
        assert!(
            held > i as u64,
            "batch {i} acknowledged when the latest snapshot written held only {held} events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_wait_for_the_snapshot_that_holds_their_batch_and_survive_failed_checkpoints() {
    let mut run = Run::start(config(Duration::from_millis(200)), true);
    // The store cannot be written: checkpoints fail, and nothing is acknowledged.
    run.disk.fail.store(true, Ordering::SeqCst);
    run.send(0..3).await;
    until("two checkpoints were tried", || {
        run.disk.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(run.acked(), 0, "acknowledged although no checkpoint holds the batches");
    // The store recovers: the next checkpoint holds all three, and only then are they acknowledged.
    run.disk.fail.store(false, Ordering::SeqCst);
    until("the three batches were acknowledged", || run.acked() == 3).await;
    check_durable_before_acked(&run);
    // More input, then the end of input: the final checkpoint releases the rest.
    run.send(3..5).await;
    run.tx = None;
    run.running.join().await.unwrap();
    assert_eq!(run.outcomes.lock().unwrap().len(), 5);
    check_durable_before_acked(&run);
    let last = run.disk.written.lock().unwrap().last().cloned().unwrap();
    assert_eq!(events_in(&last), 5, "the final checkpoint holds every batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_not_covered_by_the_final_checkpoint_fail() {
    let mut run = Run::start(config(Duration::from_secs(3600)), true);
    run.disk.fail.store(true, Ordering::SeqCst);
    run.send(0..3).await;
    run.tx = None;
    run.running.join().await.unwrap();
    let outcomes = run.outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 3);
    for (i, (d, _)) in outcomes {
        assert_eq!(d, Delivery::Failed, "batch {i}: the source must send it again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_held_acks_start_a_checkpoint_before_the_interval() {
    // An interval the test never reaches: only the bound on held acknowledgements can start a checkpoint.
    let run = Run::start(config(Duration::from_secs(3600)), true);
    let n = 500 + 8;
    run.send(0..n).await;
    until("the held batches were acknowledged", || run.acked() >= 500).await;
    check_durable_before_acked(&run);
    assert!(run.disk.written() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_storage_a_batch_is_acknowledged_once_ingested() {
    let run = Run::start(
        OrderKpiConfig {
            storage: None,
            ..Default::default()
        },
        false,
    );
    run.send(0..3).await;
    until("the three batches were acknowledged", || run.acked() == 3).await;
    assert!(
        run.outcomes
            .lock()
            .unwrap()
            .values()
            .all(|&(d, _)| d == Delivery::Delivered)
    );
}
