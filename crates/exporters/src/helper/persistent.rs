//! The persistent sending queue (`sending_queue.storage`): batches kept in a storage extension's namespace
//! (`crate::helper` module docs say how the exporter uses it).
//!
//! Layout of the namespace (owner `exporter/<exporter id>`), versioned:
//! - `_format` = `exporter_queue/1`; a namespace with another marker stops the start.
//! - `q` + the batch's sequence number (u64, big-endian, so key order is arrival order) = one batch:
//!   `[1: entry version = 1][1: signal: 0 traces, 1 metrics, 2 logs][4: items, u32 little-endian][OTLP protobuf
//!   export request]`.
//!
//! One producer appends (each append one atomic, durable commit); consumers take entries in sequence order, read
//! from storage in chunks of [`CHUNK`] entries (so neither recovery nor a long queue is held in memory), and remove
//! each one once it is delivered or failed for good. Entries still in storage at a crash are read again at start:
//! delivery is at least once.

use bizpilot_core::storage::{StorageClient, StorageError, StorageOp};
use bizpilot_core::{Batch, Payload, Signal};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::{Mutex, Notify, Semaphore};

/// The format marker's key and value.
pub const FORMAT_KEY: &[u8] = b"_format";
pub const FORMAT: &[u8] = b"exporter_queue/1";
/// Entries read from storage at once (at start and while sending).
pub const CHUNK: usize = 64;
const ENTRY_VERSION: u8 = 1;
const HEADER: usize = 6;

/// Why the queue could not take or give a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// `queue_size` batches are stored already.
    #[error("sending queue is full ({capacity} batches stored, the downstream is not keeping up)")]
    Full { capacity: usize },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The namespace holds another format (or a key this format does not know).
    #[error("persistent sending queue: {0}")]
    Format(String),
}

/// The storage key of batch `seq`.
pub fn key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'q');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    match key {
        [b'q', rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

fn signal_code(s: Signal) -> u8 {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

/// A stored entry of `batch` (its payload's protobuf bytes, cached in the batch).
pub fn encode_entry(batch: &mut Batch) -> Vec<u8> {
    let items = u32::try_from(batch.items()).unwrap_or(u32::MAX);
    let signal = signal_code(batch.signal());
    let body = batch.payload.encoded();
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.push(ENTRY_VERSION);
    v.push(signal);
    v.extend_from_slice(&items.to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// The batch of a stored entry, checked: version, signal, protobuf and item count.
pub fn decode_entry(v: Vec<u8>) -> Result<Batch, String> {
    if v.len() < HEADER {
        return Err(format!("entry of {} bytes is shorter than its header", v.len()));
    }
    if v[0] != ENTRY_VERSION {
        return Err(format!("entry version {} (this build reads {ENTRY_VERSION})", v[0]));
    }
    let signal = match v[1] {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        2 => Signal::Logs,
        s => return Err(format!("unknown signal code {s}")),
    };
    let items = u32::from_le_bytes([v[2], v[3], v[4], v[5]]) as usize;
    let body = Bytes::from(v).slice(HEADER..);
    let payload = Payload::from_bytes(signal, body).map_err(|e| format!("{signal} payload: {e}"))?;
    if payload.items() != items {
        return Err(format!(
            "{signal} payload holds {} items, its header says {items}",
            payload.items()
        ));
    }
    Ok(Batch::new(payload))
}

/// What [`PersistentQueue::open`] found in storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches waiting from a previous run.
    pub batches: usize,
    /// Their stored bytes.
    pub bytes: usize,
}

/// A batch taken from the queue: remove it with [`PersistentQueue::remove`] once it is delivered or failed.
#[derive(Debug)]
pub struct Taken {
    pub seq: u64,
    /// The batch, or why its entry could not be read (a corrupt entry: remove it too).
    pub batch: Result<Batch, String>,
}

struct Reader {
    /// Next sequence number not yet read from storage.
    cursor: u64,
    buf: VecDeque<(u64, Vec<u8>)>,
}

/// A bounded queue of batches in a storage namespace (see the module docs).
pub struct PersistentQueue {
    client: Arc<dyn StorageClient>,
    capacity: usize,
    /// Next sequence number to write; appends are serialised by this lock.
    writer: Mutex<u64>,
    /// Entries stored (waiting or being sent).
    len: AtomicUsize,
    reader: Mutex<Reader>,
    /// One permit per stored entry not yet taken (plus one per consumer after `close`).
    available: Semaphore,
    closed: AtomicBool,
    /// Signalled when a batch is removed (room for the producer).
    room: Notify,
    /// Removals waiting for the next commit, and whether one is running.
    removals: std::sync::Mutex<Vec<u64>>,
    removing: AtomicBool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::Io {
            path: "persistent sending queue".into(),
            reason: format!("storage task failed: {e}"),
        })
    })
}

impl PersistentQueue {
    /// Opens the queue in `client`'s namespace: checks the format marker, then counts what a previous run left,
    /// reading [`CHUNK`] entries at a time (nothing is kept in memory). Blocking: call it from `create`.
    pub fn open(client: Arc<dyn StorageClient>, capacity: usize) -> Result<(PersistentQueue, Recovered), QueueError> {
        let capacity = capacity.max(1);
        match client.scan(FORMAT_KEY, 1)?.first() {
            Some((k, v)) if k.as_slice() == FORMAT_KEY => {
                if v.as_slice() != FORMAT {
                    return Err(QueueError::Format(format!(
                        "stored format {:?}, this build reads {:?}",
                        String::from_utf8_lossy(v),
                        String::from_utf8_lossy(FORMAT)
                    )));
                }
            }
            _ => client.apply(&[StorageOp::Put(FORMAT_KEY.to_vec(), FORMAT.to_vec())])?,
        }
        let mut recovered = Recovered::default();
        let mut first = None;
        let mut next = 0u64;
        let mut from = key(0);
        loop {
            let chunk = client.scan(&from, CHUNK)?;
            let Some((last, _)) = chunk.last() else { break };
            let last = last.clone();
            for (k, v) in &chunk {
                let seq = seq_of(k).ok_or_else(|| {
                    QueueError::Format(format!(
                        "unknown key {:?} in the queue's namespace",
                        String::from_utf8_lossy(k)
                    ))
                })?;
                first.get_or_insert(seq);
                next = seq.saturating_add(1);
                recovered.batches += 1;
                recovered.bytes += v.len();
            }
            if chunk.len() < CHUNK {
                break;
            }
            from = last;
            from.push(0);
        }
        let queue = PersistentQueue {
            client,
            capacity,
            writer: Mutex::new(next),
            len: AtomicUsize::new(recovered.batches),
            reader: Mutex::new(Reader {
                cursor: first.unwrap_or(next),
                buf: VecDeque::new(),
            }),
            available: Semaphore::new(recovered.batches),
            closed: AtomicBool::new(false),
            room: Notify::new(),
            removals: std::sync::Mutex::new(Vec::new()),
            removing: AtomicBool::new(false),
        };
        Ok((queue, recovered))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries stored (waiting or being sent).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `batch` durably (when this returns `Ok`, a crash keeps it); refuses it when `queue_size` batches are
    /// stored. The caller acknowledges the batch upstream only after `Ok`.
    pub async fn push(&self, batch: &mut Batch) -> Result<u64, QueueError> {
        self.push_all(std::slice::from_mut(batch)).await
    }

    /// Appends `batches` in one durable commit, all or none; refuses them when they do not fit in `queue_size`.
    /// Returns the first one's sequence number.
    pub async fn push_all(&self, batches: &mut [Batch]) -> Result<u64, QueueError> {
        let mut next = self.writer.lock().await;
        if self.len() + batches.len() > self.capacity {
            return Err(QueueError::Full {
                capacity: self.capacity,
            });
        }
        let first = *next;
        let ops: Vec<StorageOp> = batches
            .iter_mut()
            .zip(first..)
            .map(|(b, seq)| StorageOp::Put(key(seq), encode_entry(b)))
            .collect();
        let n = ops.len();
        let client = self.client.clone();
        blocking(move || client.apply(&ops)).await?;
        *next = first.saturating_add(n as u64);
        self.len.fetch_add(n, Ordering::AcqRel);
        self.available.add_permits(n);
        Ok(first)
    }

    /// Waits for the next stored batch, in sequence order. `None` once the queue is closed and nothing is left
    /// to take.
    pub async fn take(&self) -> Option<Result<Taken, QueueError>> {
        match self.available.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return None,
        }
        let mut reader = self.reader.lock().await;
        if reader.buf.is_empty() {
            let written = *self.writer.lock().await;
            if reader.cursor >= written {
                // Only a closing permit is left for this consumer.
                return None;
            }
            let client = self.client.clone();
            let from = key(reader.cursor);
            let chunk = match blocking(move || client.scan(&from, CHUNK)).await {
                Ok(c) => c,
                Err(e) => {
                    // Give the permit back: the entry is still there.
                    self.available.add_permits(1);
                    return Some(Err(e.into()));
                }
            };
            for (k, v) in chunk {
                if let Some(seq) = seq_of(&k) {
                    reader.cursor = seq.saturating_add(1);
                    reader.buf.push_back((seq, v));
                }
            }
        }
        let (seq, v) = reader.buf.pop_front()?;
        drop(reader);
        Some(Ok(Taken {
            seq,
            batch: decode_entry(v),
        }))
    }

    /// Removes batch `seq` (delivered, or failed for good). Removals that arrive while one is being committed are
    /// committed together next (one commit for many senders); the caller that commits them reports an error.
    pub async fn remove(&self, seq: u64) -> Result<(), QueueError> {
        {
            let mut pending = self.removals.lock().unwrap_or_else(|e| e.into_inner());
            pending.push(seq);
            if self.removing.swap(true, Ordering::AcqRel) {
                // Another caller is committing: it takes this one too.
                return Ok(());
            }
        }
        loop {
            let seqs = {
                let mut pending = self.removals.lock().unwrap_or_else(|e| e.into_inner());
                if pending.is_empty() {
                    self.removing.store(false, Ordering::Release);
                    return Ok(());
                }
                std::mem::take(&mut *pending)
            };
            let n = seqs.len();
            let client = self.client.clone();
            let ops: Vec<StorageOp> = seqs.into_iter().map(|s| StorageOp::Delete(key(s))).collect();
            if let Err(e) = blocking(move || client.apply(&ops)).await {
                let pending = self.removals.lock().unwrap_or_else(|e| e.into_inner());
                if pending.is_empty() {
                    self.removing.store(false, Ordering::Release);
                    return Err(e.into());
                }
                drop(pending);
                // Later removals are still waiting: keep committing them, report this one's error.
                tracing::error!(
                    "persistent sending queue: cannot remove {n} finished batches (sent again at the next start): {e}"
                );
                continue;
            }
            self.len.fetch_sub(n, Ordering::AcqRel);
            self.room.notify_one();
        }
    }

    /// Waits until fewer than `queue_size` batches are stored (for the single producer: a wakeup is kept until
    /// it waits).
    pub async fn wait_for_room(&self) {
        while self.len() >= self.capacity {
            self.room.notified().await;
        }
    }

    /// No more pushes: each of `consumers` takers gets `None` once the stored batches are taken.
    pub fn close(&self, consumers: usize) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.available.add_permits(consumers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::storage::{MemoryStorage, Storage};
    use bizpilot_core::{Ack, Delivery, Traces};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn spans(tag: u8, n: usize) -> Batch {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            trace_id: vec![tag; 16],
                            span_id: vec![tag, i as u8, 0, 0, 0, 0, 0, 1],
                            name: format!("s{tag}-{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let t = Traces::from_bytes(Bytes::from(req.encode_to_vec())).unwrap();
        Batch::new(Payload::Traces(t))
    }

    fn tag(b: &mut Batch) -> u8 {
        let Payload::Traces(t) = &mut b.payload else {
            panic!("not traces")
        };
        let req = ExportTraceServiceRequest::decode(t.encoded()).unwrap();
        req.resource_spans[0].scope_spans[0].spans[0].trace_id[0]
    }

    fn client(s: &MemoryStorage) -> Arc<dyn StorageClient> {
        s.client("exporter/otlp").unwrap()
    }

    async fn take_ok(q: &PersistentQueue) -> (u64, Batch) {
        let t = q.take().await.unwrap().unwrap();
        (t.seq, t.batch.unwrap())
    }

    #[tokio::test]
    async fn batches_come_out_in_order_and_are_gone_once_removed() {
        let s = MemoryStorage::default();
        let (q, rec) = PersistentQueue::open(client(&s), 200).unwrap();
        assert_eq!(rec, Recovered::default());
        // More than a chunk, so the reader refills.
        let n = CHUNK as u8 + 6;
        for i in 0..n {
            q.push(&mut spans(i, 2)).await.unwrap();
        }
        assert_eq!(q.len(), n as usize);
        for i in 0..n {
            let (seq, mut b) = take_ok(&q).await;
            assert_eq!(seq, u64::from(i));
            assert_eq!(tag(&mut b), i);
            assert_eq!(b.items(), 2);
            q.remove(seq).await.unwrap();
        }
        assert!(q.is_empty());
        // Only the format marker is left.
        assert_eq!(client(&s).load_all().unwrap().len(), 1);
        q.close(1);
        assert!(q.take().await.is_none());
    }

    #[tokio::test]
    async fn a_reopened_queue_resumes_with_what_was_not_removed_in_order() {
        let s = MemoryStorage::default();
        {
            let (q, _) = PersistentQueue::open(client(&s), 500).unwrap();
            for i in 0..150u8 {
                q.push(&mut spans(i, 1)).await.unwrap();
            }
            // Taken but not removed (a crash while sending): stays.
            let (seq0, _) = take_ok(&q).await;
            assert_eq!(seq0, 0);
            let (seq1, _) = take_ok(&q).await;
            q.remove(seq1).await.unwrap();
        }
        let (q, rec) = PersistentQueue::open(client(&s), 500).unwrap();
        assert_eq!(rec.batches, 149);
        assert!(rec.bytes > 149 * HEADER);
        assert_eq!(q.len(), 149);
        let mut order = Vec::new();
        for _ in 0..149 {
            let (seq, mut b) = take_ok(&q).await;
            order.push((seq, tag(&mut b)));
            q.remove(seq).await.unwrap();
        }
        let expected: Vec<(u64, u8)> = std::iter::once((0, 0))
            .chain((2..150u8).map(|i| (u64::from(i), i)))
            .collect();
        assert_eq!(order, expected);
        // New batches continue the sequence after the recovered ones.
        assert_eq!(q.push(&mut spans(7, 1)).await.unwrap(), 150);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_takes_again_after_a_removal() {
        let s = MemoryStorage::default();
        let (q, _) = PersistentQueue::open(client(&s), 3).unwrap();
        for i in 0..3 {
            q.push(&mut spans(i, 1)).await.unwrap();
        }
        let err = q.push(&mut spans(9, 1)).await.unwrap_err();
        assert_eq!(err, QueueError::Full { capacity: 3 });
        // Taking does not free room: the batch is still stored until it is removed.
        let (seq, _) = take_ok(&q).await;
        assert!(matches!(q.push(&mut spans(9, 1)).await, Err(QueueError::Full { .. })));
        // The producer waits for room and is woken by the removal.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), q.wait_for_room()).await;
        assert!(waiting.is_err(), "no room while 3 batches are stored");
        q.remove(seq).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), q.wait_for_room())
            .await
            .unwrap();
        q.push(&mut spans(9, 1)).await.unwrap();
        // The bound holds across a restart too.
        let (q2, rec) = PersistentQueue::open(client(&s), 3).unwrap();
        assert_eq!(rec.batches, 3);
        assert!(matches!(q2.push(&mut spans(10, 1)).await, Err(QueueError::Full { .. })));
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_reported_and_the_rest_flows() {
        let s = MemoryStorage::default();
        let (q, _) = PersistentQueue::open(client(&s), 10).unwrap();
        for i in 0..3 {
            q.push(&mut spans(i, 1)).await.unwrap();
        }
        drop(q);
        // Damage entry 1 (bad protobuf) and entry 2's header (item count).
        let c = client(&s);
        c.apply(&[StorageOp::Put(key(1), vec![ENTRY_VERSION, 0, 1, 0, 0, 0, 0xff, 0xff])])
            .unwrap();
        let mut e2 = c.scan(&key(2), 1).unwrap().remove(0).1;
        e2[2] = 5;
        c.apply(&[StorageOp::Put(key(2), e2)]).unwrap();
        let (q, rec) = PersistentQueue::open(c, 10).unwrap();
        assert_eq!(rec.batches, 3);
        let t0 = q.take().await.unwrap().unwrap();
        assert!(t0.batch.is_ok());
        let t1 = q.take().await.unwrap().unwrap();
        assert_eq!(t1.seq, 1);
        assert!(t1.batch.unwrap_err().contains("traces payload"));
        let t2 = q.take().await.unwrap().unwrap();
        assert!(
            t2.batch.unwrap_err().contains("header says 5"),
            "item count mismatch detected"
        );
        for seq in [0, 1, 2] {
            q.remove(seq).await.unwrap();
        }
        assert!(q.is_empty());
        // A short entry and an unknown version are refused too, not panicked on.
        assert!(decode_entry(vec![1, 0]).is_err());
        assert!(decode_entry(vec![9, 0, 0, 0, 0, 0]).unwrap_err().contains("version 9"));
        assert!(
            decode_entry(vec![1, 7, 0, 0, 0, 0])
                .unwrap_err()
                .contains("signal code 7")
        );
    }

    #[test]
    fn a_namespace_of_another_format_is_refused() {
        let s = MemoryStorage::default();
        let c = client(&s);
        c.apply(&[StorageOp::Put(FORMAT_KEY.to_vec(), b"exporter_queue/9".to_vec())])
            .unwrap();
        let err = PersistentQueue::open(c, 10).err().unwrap().to_string();
        assert!(err.contains("exporter_queue/9"), "{err}");
        let c = s.client("other").unwrap();
        c.apply(&[StorageOp::Put(b"zzz".to_vec(), b"x".to_vec())]).unwrap();
        let err = PersistentQueue::open(c, 10).err().unwrap().to_string();
        assert!(err.contains("unknown key"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_appends_are_all_or_none_and_concurrent_removals_all_commit() {
        let s = MemoryStorage::default();
        let q = Arc::new(PersistentQueue::open(client(&s), 8).unwrap().0);
        let mut group: Vec<Batch> = (0..6).map(|i| spans(i, 1)).collect();
        assert_eq!(q.push_all(&mut group).await.unwrap(), 0);
        let mut too_many: Vec<Batch> = (6..9).map(|i| spans(i, 1)).collect();
        assert!(matches!(q.push_all(&mut too_many).await, Err(QueueError::Full { .. })));
        assert_eq!(q.len(), 6, "a refused group stores nothing");
        let mut seqs = Vec::new();
        for _ in 0..6 {
            seqs.push(take_ok(&q).await.0);
        }
        assert_eq!(seqs, (0..6).collect::<Vec<u64>>());
        let removals: Vec<_> = seqs
            .into_iter()
            .map(|seq| {
                let q = q.clone();
                tokio::spawn(async move { q.remove(seq).await })
            })
            .collect();
        for r in removals {
            r.await.unwrap().unwrap();
        }
        // Every removal is committed once all callers returned.
        assert!(q.is_empty());
        assert_eq!(client(&s).load_all().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn closing_ends_each_taker_once_everything_is_taken() {
        let s = MemoryStorage::default();
        let (q, _) = PersistentQueue::open(client(&s), 10).unwrap();
        q.push(&mut spans(1, 1)).await.unwrap();
        q.close(2);
        assert!(q.take().await.unwrap().is_ok());
        assert!(q.take().await.is_none());
        assert!(q.take().await.is_none());
        // Acks of a stored batch are the caller's: push leaves them untouched.
        let (ack, rx) = Ack::channel();
        let mut b = spans(2, 1);
        b.acks.push(ack);
        let (q, _) = PersistentQueue::open(s.client("x").unwrap(), 10).unwrap();
        q.push(&mut b).await.unwrap();
        drop(b);
        assert_eq!(rx.await.unwrap(), Delivery::Delivered);
    }
}
