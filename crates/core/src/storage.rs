//! Durable key-value storage for component state, in the shape of the OpenTelemetry
//! Collector's storage API (`extension/xextension/storage`): a *storage extension* (such as
//! `file_storage`) hands each stateful component its own namespace, a [`StorageClient`], in
//! which the component writes checkpoints and from which it restores them at start.
//!
//! A component finds its storage by the extension id its config names:
//! `ctx.extensions.get::<StorageHandle>(&id)?.client(&ctx.id.to_string())`. Storage
//! extensions are started before every other extension, so a component that restores its
//! state in `create` finds them whatever the order of `service.extensions`.
//!
//! Keys and values are bytes; what they mean (and their format version) is the component's
//! business. Writes are applied in batches, atomically: after a crash a namespace holds the
//! state of some complete batch, never half of one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Why storage could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The file could not be opened, read or written.
    #[error("storage file {path}: {reason}")]
    Io { path: String, reason: String },
    /// The file exists but is not a storage file of this format (corrupt, foreign or from a
    /// newer version).
    #[error(
        "storage file {path} is not usable: {reason} (move it away, or set `recreate: true` on the storage \
         extension to start from empty state, keeping the old file beside it)"
    )]
    Unusable { path: String, reason: String },
    /// A component's stored state could not be read back.
    #[error("stored state of {owner}: {reason}")]
    Decode { owner: String, reason: String },
    /// A journal record longer than its 4-byte length can frame: not written.
    #[error("journal of {owner}: a record of {len} bytes is longer than the {max} a record can hold; not journaled")]
    RecordTooLarge { owner: String, len: usize, max: usize },
}

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A component's own namespace in a storage extension.
pub trait StorageClient: Send + Sync {
    /// Every key and value of the namespace, in key order.
    fn load_all(&self) -> Result<Entries, StorageError>;
    /// Applies `ops` in order, atomically and durably (when this returns `Ok`, a crash keeps them).
    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError>;
    /// At most `limit` entries whose key is at least `from`, in key order: reading a large namespace in bounded
    /// chunks. The default reads the whole namespace; stores override it with a range read.
    fn scan(&self, from: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let mut all = self.load_all()?;
        all.retain(|(k, _)| k.as_slice() >= from);
        all.truncate(limit);
        Ok(all)
    }
}

/// A storage extension: namespaces by owner (the component id).
pub trait Storage: Send + Sync {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError>;
}

/// What a storage extension shares with other components (through `Extensions::get`).
#[derive(Clone)]
pub struct StorageHandle(pub Arc<dyn Storage>);

impl std::fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageHandle")
    }
}

impl StorageHandle {
    pub fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        self.0.client(owner)
    }
}

/// The namespace of component `owner` in the storage extension whose id a component's config names (its
/// `storage:` key): the one way components resolve their storage. A bad id or a missing extension is a config
/// error; storage that cannot be opened is reported as is.
pub fn client_for(
    extensions: &crate::Extensions,
    storage: &str,
    owner: &str,
) -> Result<Arc<dyn StorageClient>, crate::ComponentError> {
    let id: crate::ComponentId = storage
        .parse()
        .map_err(|e| crate::ComponentError::Config(format!("storage: {e}")))?;
    let handle = extensions
        .get::<StorageHandle>(&id)
        .map_err(|e| crate::ComponentError::Config(format!("storage: {e}")))?;
    handle
        .client(owner)
        .map_err(|e| crate::ComponentError::Other(e.to_string()))
}

/// The checks of a stateful component's `storage` and `checkpoint_interval` keys, the same for every component.
pub fn validate_config(storage: Option<&str>, checkpoint_interval: crate::config::Duration) -> Vec<crate::FieldError> {
    let mut e = Vec::new();
    if checkpoint_interval.is_zero() {
        e.push(crate::FieldError::new("checkpoint_interval", "must be greater than 0"));
    }
    if storage.is_some_and(|s| s.parse::<crate::ComponentId>().is_err()) {
        e.push(crate::FieldError::new(
            "storage",
            "must be a component id such as file_storage",
        ));
    }
    e
}

/// FNV-1a over `text`: a configuration's fingerprint (feed it the `Debug` form of the part of the config that
/// shapes the state; stable within a build).
pub fn fingerprint(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const JOURNAL_FORMAT_KEY: &[u8] = b"_format";
const JOURNAL_FINGERPRINT_KEY: &[u8] = b"_fingerprint";
const JOURNAL_PREFIX: &[u8] = b"j/";
/// The snapshot as one value (`covered (8 bytes, big-endian), the state`): the first layout, still read; deleted by
/// the next snapshot written.
const JOURNAL_SNAPSHOT_KEY: &[u8] = b"_snapshot";
/// The snapshot in parts: `covered (8 bytes, big-endian), parts (4), state length (8)`, the state in
/// `_snapshot/<part number, 4 bytes big-endian>`.
const JOURNAL_SNAPSHOT_PARTS_KEY: &[u8] = b"_snapshot.parts";
const JOURNAL_SNAPSHOT_PART_PREFIX: &[u8] = b"_snapshot/";

/// Bytes per stored part of a snapshot ([`SnapshotParts`]). A snapshot written as one value of a few MB cost the
/// storage's write about twice that in page buffers at once (redb gives a value larger than its page cache a page
/// of its own, dirty until the commit, and reads the previous one back to free it: 8.4 MB of heap for a 4 MB
/// snapshot at 50k spans/s, `docs/impact-memory.md`); in parts under redb's page size orders (128 KiB pages) the
/// write streams through its bounded cache.
pub const SNAPSHOT_PART_BYTES: usize = 127 << 10;

fn snapshot_part_key(part: u64) -> Vec<u8> {
    let mut key = JOURNAL_SNAPSHOT_PART_PREFIX.to_vec();
    key.extend_from_slice(&(part as u32).to_be_bytes());
    key
}

/// A snapshot being encoded, in parts of at most [`SNAPSHOT_PART_BYTES`] (an [`std::io::Write`]): no buffer is
/// regrown or copied, and each part is stored as its own value ([`SnapshotTicket::write_parts`]).
#[derive(Debug, Default)]
pub struct SnapshotParts {
    parts: Vec<Vec<u8>>,
    len: usize,
}

impl SnapshotParts {
    pub fn new() -> Self {
        SnapshotParts::default()
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`, starting a new part whenever the last one is full.
    pub fn extend_from_slice(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let part = match self.parts.last_mut() {
                Some(p) if p.len() < SNAPSHOT_PART_BYTES => p,
                _ => {
                    self.parts
                        .push(Vec::with_capacity(SNAPSHOT_PART_BYTES.min(data.len().max(4096))));
                    let Some(p) = self.parts.last_mut() else { return };
                    p
                }
            };
            let n = (SNAPSHOT_PART_BYTES - part.len()).min(data.len());
            if part.capacity() - part.len() < n {
                // A part started small (a short first write) grows once to the full part size, never beyond.
                part.reserve_exact(SNAPSHOT_PART_BYTES - part.len());
            }
            part.extend_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
    }

    /// The parts, in order (each at most [`SNAPSHOT_PART_BYTES`]).
    pub fn parts(&self) -> &[Vec<u8>] {
        &self.parts
    }
}

impl std::io::Write for SnapshotParts {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What [`Journal::open`] found in the namespace.
#[derive(Debug, Default)]
pub struct Replay {
    /// The component's latest snapshot ([`Journal::snapshot`]): its state after every record before
    /// [`Replay::records`].
    pub snapshot: Option<bytes::Bytes>,
    /// The records of every commit after the snapshot, in the order they were appended: (tag, bytes).
    pub records: Vec<(u8, bytes::Bytes)>,
    /// Commits read.
    pub commits: u64,
    /// Bytes of the records read (framing included).
    pub bytes: u64,
    /// The namespace held a journal of another configuration: it was discarded (the reason), and the
    /// component starts empty.
    pub discarded: Option<String>,
}

/// One group of records with the acknowledgements of the data they carry.
struct Group {
    ops: Vec<StorageOp>,
    acks: Vec<crate::Ack>,
    records: u64,
}

/// A write-ahead journal in a component's storage namespace, committed in groups: the component appends compact
/// records of what changed its state (tag + bytes) and holds the acknowledgements of the data they came from;
/// every `interval` (or on [`Journal::commit`]) the records appended since the last commit are written in one
/// atomic batch by a writer thread, and only then are the held acknowledgements released (so a source that waits
/// for them — the Kafka receiver committing offsets — never moves past data that is not durable). Commits are
/// written in order, one at a time; a failed commit is retried (every 500 ms, logged and counted in
/// `bizpilot_storage_journal_errors_total`) before any later one, so the journal never has a gap: while the
/// store cannot be written the component's input backs up instead of being acknowledged. At start,
/// [`Journal::open`] returns every record, for the component to re-apply (its state is a function of them).
///
/// **Compaction**: [`Journal::snapshot`] writes the component's state (its own encoding) and deletes the commits
/// it covers, in one atomic batch applied in order with the commits, so a crash leaves either the old snapshot and
/// every commit after it or the new one and every commit after it; at start the component loads the snapshot and
/// re-applies the commits after it. What is stored is therefore bounded by the snapshot plus the journal written
/// since (the component decides when to snapshot, [`Journal::since_snapshot`]).
///
/// Layout: `_format` (the component's format marker), `_fingerprint` (8 bytes, big-endian: its configuration's
/// [`fingerprint`]), `_snapshot` → `first commit number not covered (8 bytes, big-endian), the state`,
/// `j/<commit number, 8 bytes big-endian>` → records framed as `tag (1 byte), length (4 bytes, little-endian),
/// bytes`.
pub struct Journal {
    owner: String,
    buf: Vec<u8>,
    records: u64,
    acks: Vec<crate::Ack>,
    next_seq: u64,
    /// The first commit the latest snapshot written does not cover (shared with a [`SnapshotTicket`] in flight,
    /// which moves it when its snapshot is handed to the writer).
    first_live: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of records appended since the latest snapshot began (framing included).
    since_snapshot: u64,
    /// Size of the latest snapshot written (set by its [`SnapshotTicket`]).
    snapshot_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Parts of the latest snapshot stored (deleted beyond the next one's count when it is written).
    snapshot_parts: Arc<std::sync::atomic::AtomicU64>,
    /// A [`SnapshotTicket`] is out (taken and not yet written or dropped): at most one at a time.
    snapshot_busy: Arc<std::sync::atomic::AtomicBool>,
    /// Records appended and not yet durable (`bizpilot_storage_journal_pending_records`).
    pending: metrics::Gauge,
    /// Records refused (`bizpilot_storage_journal_rejected_records_total`).
    rejected: metrics::Counter,
    /// Snapshots written (`bizpilot_storage_journal_snapshots_total`).
    snapshots: metrics::Counter,
    interval: std::time::Duration,
    last_commit: std::time::Instant,
    tx: Option<std::sync::mpsc::SyncSender<Group>>,
    writer: Option<std::thread::JoinHandle<()>>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("owner", &self.owner)
            .field("next_seq", &self.next_seq)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

fn decode_err(owner: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Decode {
        owner: owner.to_string(),
        reason: reason.into(),
    }
}

/// Splits a commit's value into its records.
fn frames(owner: &str, value: &bytes::Bytes, out: &mut Vec<(u8, bytes::Bytes)>) -> Result<(), StorageError> {
    let mut at = 0usize;
    while at < value.len() {
        let head = value
            .get(at..at + 5)
            .ok_or_else(|| decode_err(owner, "journal record cut short (header)"))?;
        let tag = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let start = at + 5;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= value.len())
            .ok_or_else(|| decode_err(owner, "journal record cut short (body)"))?;
        out.push((tag, value.slice(start..end)));
        at = end;
    }
    Ok(())
}

impl Journal {
    /// Opens the journal of `owner` in `client`: reads every record (a journal written under another
    /// `fingerprint` is deleted and reported in [`Replay::discarded`]; one of another `format`, or one that
    /// cannot be read, is an error: nothing is changed), and starts the writer.
    pub fn open(
        client: Arc<dyn StorageClient>,
        owner: &str,
        format: &str,
        fingerprint: u64,
        interval: std::time::Duration,
    ) -> Result<(Journal, Replay), StorageError> {
        Journal::open_reading(client, owner, format, &[], fingerprint, interval)
    }

    /// [`Journal::open`] that also reads a journal marked with one of the component's `older` formats (their
    /// records mean what they meant; the marker is rewritten to `format`, so a build that reads only an older
    /// format refuses the namespace from then on instead of misreading it).
    pub fn open_reading(
        client: Arc<dyn StorageClient>,
        owner: &str,
        format: &str,
        older: &[&str],
        fingerprint: u64,
        interval: std::time::Duration,
    ) -> Result<(Journal, Replay), StorageError> {
        let entries = client.load_all()?;
        let mut replay = Replay::default();
        let mut next_seq = 0u64;
        let mut snapshot_parts = 0u64;
        let mut reset = Vec::new();
        if !entries.is_empty() {
            match entries.iter().find(|(k, _)| k == JOURNAL_FORMAT_KEY) {
                Some((_, v)) if v == format.as_bytes() || older.iter().any(|o| v == o.as_bytes()) => {}
                Some((_, v)) => {
                    return Err(decode_err(
                        owner,
                        format!("format {:?}, this build reads {format:?}", String::from_utf8_lossy(v)),
                    ));
                }
                None => return Err(decode_err(owner, format!("no format marker: not a {format} journal"))),
            }
            let stored = entries
                .iter()
                .find(|(k, _)| k == JOURNAL_FINGERPRINT_KEY)
                .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            if stored != Some(fingerprint) {
                replay.discarded = Some(format!(
                    "written under another configuration (fingerprint {stored:x?}, now {fingerprint:x})"
                ));
                reset = entries.iter().map(|(k, _)| StorageOp::Delete(k.clone())).collect();
            } else {
                if let Some((_, v)) = entries.iter().find(|(k, _)| k == JOURNAL_SNAPSHOT_PARTS_KEY) {
                    let (covered, parts, state) = read_parts(owner, v, &entries)?;
                    next_seq = covered;
                    snapshot_parts = parts;
                    replay.snapshot = Some(bytes::Bytes::from(state));
                } else if let Some((_, v)) = entries.iter().find(|(k, _)| k == JOURNAL_SNAPSHOT_KEY) {
                    let covered = v
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| decode_err(owner, "snapshot cut short (header)"))?;
                    next_seq = covered;
                    replay.snapshot = Some(bytes::Bytes::copy_from_slice(&v[8..]));
                }
                for (k, v) in entries {
                    let Some(seq) = k.strip_prefix(JOURNAL_PREFIX) else {
                        continue;
                    };
                    let seq = <[u8; 8]>::try_from(seq)
                        .map(u64::from_be_bytes)
                        .map_err(|_| decode_err(owner, "journal key is not a commit number"))?;
                    if seq < next_seq && replay.commits == 0 && replay.snapshot.is_some() {
                        // Covered by the snapshot (it is deleted with the snapshot's write; cannot be here, but harmless).
                        reset.push(StorageOp::Delete(k));
                        continue;
                    }
                    if seq != next_seq {
                        return Err(decode_err(
                            owner,
                            format!("journal commit {next_seq} missing (found {seq})"),
                        ));
                    }
                    next_seq += 1;
                    replay.commits += 1;
                    replay.bytes += v.len() as u64;
                    frames(owner, &bytes::Bytes::from(v), &mut replay.records)?;
                }
            }
        }
        let first_live = replay.snapshot.as_ref().map_or(0, |_| next_seq - replay.commits);
        let snapshot_bytes = replay.snapshot.as_ref().map_or(0, |s| s.len() as u64);
        let mut ops = reset;
        ops.push(StorageOp::Put(JOURNAL_FORMAT_KEY.to_vec(), format.as_bytes().to_vec()));
        ops.push(StorageOp::Put(
            JOURNAL_FINGERPRINT_KEY.to_vec(),
            fingerprint.to_be_bytes().to_vec(),
        ));
        client.apply(&ops)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Group>(64);
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let name = owner.to_string();
            let closing = closing.clone();
            std::thread::Builder::new()
                .name("bizpilot-journal".into())
                .spawn(move || write_groups(&*client, &name, &rx, &closing))
                .map_err(|e| StorageError::Io {
                    path: owner.to_string(),
                    reason: format!("cannot start the journal writer: {e}"),
                })?
        };
        Ok((
            Journal {
                owner: owner.to_string(),
                buf: Vec::new(),
                records: 0,
                acks: Vec::new(),
                next_seq,
                first_live: Arc::new(std::sync::atomic::AtomicU64::new(first_live)),
                since_snapshot: replay.bytes,
                snapshot_bytes: Arc::new(std::sync::atomic::AtomicU64::new(snapshot_bytes)),
                snapshot_parts: Arc::new(std::sync::atomic::AtomicU64::new(snapshot_parts)),
                snapshot_busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                pending: metrics::gauge!("bizpilot_storage_journal_pending_records", "owner" => owner.to_string()),
                rejected: metrics::counter!("bizpilot_storage_journal_rejected_records_total", "owner" => owner.to_string()),
                snapshots: metrics::counter!("bizpilot_storage_journal_snapshots_total", "owner" => owner.to_string()),
                interval,
                last_commit: std::time::Instant::now(),
                tx: Some(tx),
                writer: Some(writer),
                closing,
            },
            replay,
        ))
    }

    /// Appends a record (written at the next commit). A record longer than `u32::MAX` bytes cannot be framed: it
    /// is refused with [`StorageError::RecordTooLarge`] and counted
    /// (`bizpilot_storage_journal_rejected_records_total`), and the journal is unchanged.
    pub fn append(&mut self, tag: u8, data: &[u8]) -> Result<(), StorageError> {
        self.append_limited(tag, data, u32::MAX as usize)
    }

    /// [`Journal::append`] with a smaller limit than the framing's (so the refusal can be tested without 4 GiB).
    fn append_limited(&mut self, tag: u8, data: &[u8], max: usize) -> Result<(), StorageError> {
        let len = match u32::try_from(data.len()) {
            Ok(len) if data.len() <= max => len,
            _ => {
                self.rejected.increment(1);
                return Err(StorageError::RecordTooLarge {
                    owner: self.owner.clone(),
                    len: data.len(),
                    max,
                });
            }
        };
        self.buf.push(tag);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(data);
        self.since_snapshot += 5 + u64::from(len);
        self.records += 1;
        self.pending.increment(1.0);
        Ok(())
    }

    /// Holds acknowledgements until the records appended so far are committed.
    pub fn hold(&mut self, acks: impl IntoIterator<Item = crate::Ack>) {
        self.acks.extend(acks);
    }

    /// How often commits are due.
    pub fn interval(&self) -> std::time::Duration {
        self.interval
    }

    /// Bytes appended and not yet handed to the writer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// When the next commit is due (`None`: nothing to commit).
    pub fn due(&self) -> Option<std::time::Instant> {
        (!self.buf.is_empty() || !self.acks.is_empty()).then(|| self.last_commit + self.interval)
    }

    /// Commits if `interval` has passed since the last commit.
    pub fn commit_if_due(&mut self) {
        if self.due().is_some_and(|d| d <= std::time::Instant::now()) {
            self.commit();
        }
    }

    /// Hands the records appended since the last commit to the writer (and the acknowledgements held with them).
    pub fn commit(&mut self) {
        self.last_commit = std::time::Instant::now();
        if self.buf.is_empty() && self.acks.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        if !self.buf.is_empty() {
            let mut key = JOURNAL_PREFIX.to_vec();
            key.extend_from_slice(&self.next_seq.to_be_bytes());
            self.next_seq += 1;
            ops.push(StorageOp::Put(key, std::mem::take(&mut self.buf)));
        }
        let group = Group {
            ops,
            acks: std::mem::take(&mut self.acks),
            records: std::mem::take(&mut self.records),
        };
        self.send(group);
    }

    fn send(&mut self, group: Group) {
        if let Some(tx) = &self.tx
            && let Err(e) = tx.send(group)
        {
            // The writer is gone (it cannot be, short of a panic): the data is not durable.
            tracing::error!(owner = %self.owner, "journal writer stopped; commit not written");
            for a in &e.0.acks {
                a.fail();
            }
        }
    }

    /// The component whose journal this is.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Bytes of records appended since the latest snapshot (or since the journal began).
    pub fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Size of the latest snapshot written (0: none).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Compaction: `state` is the component's state after every record appended so far ([`Journal::begin_snapshot`]
    /// and [`SnapshotTicket::write`] at once). Does nothing while another ticket is out.
    pub fn snapshot(&mut self, state: &[u8]) {
        if let Some(ticket) = self.begin_snapshot() {
            ticket.write(state);
        }
    }

    /// Compaction, in two steps so that the state can be encoded off the component's thread: commits the records
    /// appended so far and returns the ticket of a snapshot that covers them; the component takes its state as it
    /// is now (after every record appended so far), encodes it wherever it likes and hands it to
    /// [`SnapshotTicket::write`], which writes it and deletes the commits it covers in one atomic batch queued after
    /// them (the writer applies batches in order), while the component goes on appending: after a crash the
    /// namespace holds either the previous snapshot and every commit after it, or this one and the commits after
    /// it. `None` while another ticket is out (one snapshot at a time). A ticket dropped unwritten (the state could
    /// not be encoded) changes nothing stored: the journal keeps every commit since the previous snapshot.
    pub fn begin_snapshot(&mut self) -> Option<SnapshotTicket> {
        use std::sync::atomic::Ordering;
        if self.snapshot_busy.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.commit();
        self.since_snapshot = 0;
        Some(SnapshotTicket {
            covered: self.next_seq,
            first_live: self.first_live.clone(),
            snapshot_bytes: self.snapshot_bytes.clone(),
            snapshot_parts: self.snapshot_parts.clone(),
            busy: self.snapshot_busy.clone(),
            snapshots: self.snapshots.clone(),
            tx: self.tx.clone(),
            owner: self.owner.clone(),
        })
    }

    /// Whether a [`SnapshotTicket`] is out.
    pub fn snapshot_in_flight(&self) -> bool {
        self.snapshot_busy.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Commits what is left and waits until everything is written (at shutdown). While the store cannot be
    /// written, the writer keeps retrying for at most `give_up`, then fails the acknowledgements it holds.
    pub fn close(&mut self, give_up: std::time::Duration) {
        self.commit();
        self.tx = None;
        let deadline = std::time::Instant::now() + give_up;
        if let Some(w) = self.writer.take() {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.closing.store(true, std::sync::atomic::Ordering::Release);
            if w.join().is_err() {
                tracing::error!(owner = %self.owner, "journal writer panicked");
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.close(std::time::Duration::from_secs(5));
        }
    }
}

/// A snapshot begun by [`Journal::begin_snapshot`]: it covers every commit before `covered`. Send it to the thread
/// that encodes the state and [`SnapshotTicket::write`] it there.
pub struct SnapshotTicket {
    covered: u64,
    first_live: Arc<std::sync::atomic::AtomicU64>,
    snapshot_bytes: Arc<std::sync::atomic::AtomicU64>,
    snapshot_parts: Arc<std::sync::atomic::AtomicU64>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    snapshots: metrics::Counter,
    tx: Option<std::sync::mpsc::SyncSender<Group>>,
    owner: String,
}

impl std::fmt::Debug for SnapshotTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTicket")
            .field("owner", &self.owner)
            .field("covered", &self.covered)
            .finish()
    }
}

impl SnapshotTicket {
    /// The first commit this snapshot does not cover.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Writes `state` (the component's state when the ticket was taken) as the snapshot and deletes every commit
    /// it covers, in one atomic batch, queued after those commits.
    pub fn write(self, state: &[u8]) {
        let mut parts = SnapshotParts::new();
        parts.extend_from_slice(state);
        self.write_parts(parts);
    }

    /// [`SnapshotTicket::write`] of a state encoded into [`SnapshotParts`]: each part is stored as a value of its
    /// own (`_snapshot/<n>`) under a header (`_snapshot.parts`); parts of the previous snapshot beyond this one's
    /// count, the first layout's single value (`_snapshot`) and the covered commits are deleted in the same batch.
    pub fn write_parts(self, state: SnapshotParts) {
        use std::sync::atomic::Ordering;
        let state_len = state.len;
        let count = state.parts.len() as u64;
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(&self.covered.to_be_bytes());
        header.extend_from_slice(&(count as u32).to_be_bytes());
        header.extend_from_slice(&(state_len as u64).to_be_bytes());
        let previous = self.snapshot_parts.load(Ordering::Acquire);
        let mut ops = Vec::with_capacity(state.parts.len() + 3);
        ops.push(StorageOp::Put(JOURNAL_SNAPSHOT_PARTS_KEY.to_vec(), header));
        for (n, part) in (0u64..).zip(state.parts) {
            ops.push(StorageOp::Put(snapshot_part_key(n), part));
        }
        for n in count..previous {
            ops.push(StorageOp::Delete(snapshot_part_key(n)));
        }
        ops.push(StorageOp::Delete(JOURNAL_SNAPSHOT_KEY.to_vec()));
        for seq in self.first_live.load(Ordering::Acquire)..self.covered {
            let mut key = JOURNAL_PREFIX.to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            ops.push(StorageOp::Delete(key));
        }
        let group = Group {
            ops,
            acks: Vec::new(),
            records: 0,
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(group).is_ok());
        if sent {
            self.first_live.store(self.covered, Ordering::Release);
            self.snapshot_bytes.store(state_len as u64, Ordering::Release);
            // The next snapshot's batch, queued after this one, deletes this one's parts beyond its own count.
            self.snapshot_parts.store(count, Ordering::Release);
            self.snapshots.increment(1);
        } else {
            tracing::error!(owner = %self.owner, "journal writer stopped; snapshot not written");
        }
        // Dropping the ticket frees the journal for the next one.
    }
}

/// Reads a snapshot stored in parts: its header's (covered, parts) and the state, joined.
fn read_parts(owner: &str, header: &[u8], entries: &Entries) -> Result<(u64, u64, Vec<u8>), StorageError> {
    let short = || decode_err(owner, "snapshot header cut short");
    let covered = header
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(short)?;
    let parts = header
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(short)?;
    let len = header
        .get(12..20)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(short)?;
    let total: usize = entries
        .iter()
        .filter(|(k, _)| k.starts_with(JOURNAL_SNAPSHOT_PART_PREFIX))
        .map(|(_, v)| v.len())
        .sum();
    if total < len {
        return Err(decode_err(
            owner,
            format!("snapshot of {len} bytes, its parts hold {total}"),
        ));
    }
    let mut state = Vec::with_capacity(len);
    for n in 0..u64::from(parts) {
        let key = snapshot_part_key(n);
        let part = entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(&key))
            .map_err(|_| decode_err(owner, format!("snapshot part {n} of {parts} missing")))?;
        state.extend_from_slice(&entries[part].1);
    }
    if state.len() != len {
        return Err(decode_err(
            owner,
            format!("snapshot of {len} bytes, its {parts} parts hold {}", state.len()),
        ));
    }
    Ok((covered, u64::from(parts), state))
}

impl Drop for SnapshotTicket {
    fn drop(&mut self) {
        self.busy.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The writer thread: applies groups in order; a group that fails is retried before the next one.
fn write_groups(
    client: &dyn StorageClient,
    owner: &str,
    rx: &std::sync::mpsc::Receiver<Group>,
    closing: &std::sync::atomic::AtomicBool,
) {
    let commits = metrics::counter!("bizpilot_storage_journal_commits_total", "owner" => owner.to_string());
    let written = metrics::counter!("bizpilot_storage_journal_bytes_total", "owner" => owner.to_string());
    let errors = metrics::counter!("bizpilot_storage_journal_errors_total", "owner" => owner.to_string());
    let seconds = metrics::histogram!("bizpilot_storage_journal_commit_seconds", "owner" => owner.to_string());
    let pending = metrics::gauge!("bizpilot_storage_journal_pending_records", "owner" => owner.to_string());
    while let Ok(group) = rx.recv() {
        let bytes: usize = group
            .ops
            .iter()
            .map(|o| match o {
                StorageOp::Put(k, v) => k.len() + v.len(),
                StorageOp::Delete(k) => k.len(),
            })
            .sum();
        loop {
            if group.ops.is_empty() {
                break;
            }
            let t = std::time::Instant::now();
            match client.apply(&group.ops) {
                Ok(()) => {
                    seconds.record(t.elapsed().as_secs_f64());
                    commits.increment(1);
                    written.increment(bytes as u64);
                    break;
                }
                Err(e) => {
                    errors.increment(1);
                    if closing.load(std::sync::atomic::Ordering::Acquire) {
                        tracing::error!(owner, error = %e, "journal commit failed at shutdown; its data is not durable");
                        for a in &group.acks {
                            a.fail();
                        }
                        break;
                    }
                    tracing::error!(owner, error = %e, "journal commit failed; retrying in 500ms (input is not acknowledged meanwhile)");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        }
        pending.decrement(group.records as f64);
        // Dropping the acknowledgements releases them (delivered, unless failed above).
        drop(group);
    }
}

/// Extension types that provide storage: started before the other extensions.
pub const STORAGE_EXTENSION_TYPES: &[&str] = &["file_storage"];

/// Storage in memory, for tests: survives as long as the value (clones share it).
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    spaces: Arc<Mutex<BTreeMap<String, Arc<MemoryClient>>>>,
}

/// A namespace of [`MemoryStorage`].
#[derive(Debug, Default)]
pub struct MemoryClient {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Storage for MemoryStorage {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(spaces.entry(owner.to_string()).or_default().clone())
    }
}

impl StorageClient for MemoryClient {
    fn load_all(&self) -> Result<Entries, StorageError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                StorageOp::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                StorageOp::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, from: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .range(from.to_vec()..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_keeps_namespaces_apart_and_applies_in_order() {
        let s = StorageHandle(Arc::new(MemoryStorage::default()));
        let a = s.client("a").unwrap();
        let b = s.client("b").unwrap();
        a.apply(&[
            StorageOp::Put(b"k".to_vec(), b"1".to_vec()),
            StorageOp::Put(b"j".to_vec(), b"2".to_vec()),
            StorageOp::Delete(b"k".to_vec()),
        ])
        .unwrap();
        assert_eq!(a.load_all().unwrap(), vec![(b"j".to_vec(), b"2".to_vec())]);
        assert!(b.load_all().unwrap().is_empty());
        // A second client of the same owner sees the same namespace.
        assert_eq!(s.client("a").unwrap().load_all().unwrap().len(), 1);
    }

    fn journal(s: &MemoryStorage, fp: u64) -> Result<(Journal, Replay), StorageError> {
        Journal::open(
            s.client("c").unwrap(),
            "c",
            "test/journal/1",
            fp,
            std::time::Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_journal_gives_back_its_records_in_order_and_releases_acks_only_after_their_commit() {
        let s = MemoryStorage::default();
        let (mut j, r) = journal(&s, 7).unwrap();
        assert!(r.records.is_empty() && r.discarded.is_none());
        let (ack, mut rx) = crate::Ack::channel();
        j.append(1, b"first").unwrap();
        j.append(2, b"").unwrap();
        j.hold([ack]);
        assert!(j.due().is_some(), "records wait for a commit");
        // Not committed yet: the acknowledgement is held.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "released before its commit");
        j.commit();
        j.append(1, b"second").unwrap();
        j.close(std::time::Duration::from_secs(5));
        assert_eq!(rx.try_recv().unwrap(), crate::Delivery::Delivered);

        let (_j2, r) = journal(&s, 7).unwrap();
        let got: Vec<(u8, &[u8])> = r.records.iter().map(|(t, b)| (*t, &b[..])).collect();
        assert_eq!(got, vec![(1, &b"first"[..]), (2, &b""[..]), (1, &b"second"[..])]);
        assert_eq!(r.commits, 2);
    }

    #[test]
    fn a_journal_of_another_configuration_is_discarded_and_a_foreign_one_refused() {
        let s = MemoryStorage::default();
        let (mut j, _) = journal(&s, 7).unwrap();
        j.append(1, b"x").unwrap();
        j.close(std::time::Duration::from_secs(5));
        let (_j, r) = journal(&s, 8).unwrap();
        assert!(r.records.is_empty());
        assert!(
            r.discarded
                .as_deref()
                .is_some_and(|d| d.contains("another configuration")),
            "{r:?}"
        );
        // Discarded for good: the old records are gone.
        let (_j, r) = journal(&s, 8).unwrap();
        assert!(r.records.is_empty() && r.discarded.is_none());

        let other = MemoryStorage::default();
        other
            .client("c")
            .unwrap()
            .apply(&[StorageOp::Put(b"_format".to_vec(), b"business_state/1".to_vec())])
            .unwrap();
        let err = journal(&other, 7).unwrap_err().to_string();
        assert!(
            err.contains("business_state/1") && err.contains("test/journal/1"),
            "{err}"
        );

        // A commit cut short is an error, not a silent half-replay.
        let torn = MemoryStorage::default();
        let (mut j, _) = journal(&torn, 7).unwrap();
        j.close(std::time::Duration::from_secs(5));
        torn.client("c")
            .unwrap()
            .apply(&[StorageOp::Put(
                b"j/\0\0\0\0\0\0\0\0".to_vec(),
                vec![1, 9, 0, 0, 0, b'a'],
            )])
            .unwrap();
        let err = journal(&torn, 7).unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
    }

    #[test]
    fn a_snapshot_replaces_the_commits_it_covers_and_the_tail_follows_it() {
        let s = MemoryStorage::default();
        let (mut j, _) = journal(&s, 7).unwrap();
        j.append(1, b"a").unwrap();
        j.commit();
        j.append(1, b"b").unwrap();
        assert_eq!(j.since_snapshot(), 12);
        j.snapshot(b"state after a, b");
        assert_eq!((j.since_snapshot(), j.snapshot_bytes()), (0, 16));
        j.append(1, b"c").unwrap();
        j.commit();
        j.close(std::time::Duration::from_secs(5));
        let stored = s.client("c").unwrap().load_all().unwrap();
        let commits = stored.iter().filter(|(k, _)| k.starts_with(b"j/")).count();
        assert_eq!(commits, 1, "the covered commits are gone: {stored:?}");
        let (mut j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state after a, b"[..]));
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"c"[..]], "only the tail");
        assert_eq!(j.since_snapshot(), 6);
        // A second snapshot after a restart covers the tail; commits continue after it.
        j.snapshot(b"state after c");
        j.append(1, b"d").unwrap();
        j.close(std::time::Duration::from_secs(5));
        let (_j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state after c"[..]));
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"d"[..]]);
        // Another configuration discards the snapshot too.
        let (_j, r) = journal(&s, 8).unwrap();
        assert!(r.snapshot.is_none() && r.records.is_empty() && r.discarded.is_some());
    }

    #[test]
    fn a_snapshot_encoded_while_records_keep_coming_covers_exactly_what_preceded_its_ticket() {
        let s = MemoryStorage::default();
        let (mut j, _) = journal(&s, 7).unwrap();
        j.append(1, b"a").unwrap();
        let ticket = j.begin_snapshot().expect("no ticket out");
        assert!(j.begin_snapshot().is_none(), "one snapshot at a time");
        assert!(j.snapshot_in_flight());
        // Records keep coming and are committed while the state is encoded elsewhere.
        j.append(1, b"b").unwrap();
        j.commit();
        j.append(1, b"c").unwrap();
        let encoder = std::thread::spawn(move || ticket.write(b"state after a"));
        encoder.join().unwrap();
        assert!(!j.snapshot_in_flight());
        assert_eq!(j.snapshot_bytes(), 13);
        j.close(std::time::Duration::from_secs(5));
        let (mut j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state after a"[..]));
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(
            got,
            vec![&b"b"[..], &b"c"[..]],
            "the tail after the ticket, nothing it covered"
        );
        // A ticket dropped unwritten (encoding failed) changes nothing stored.
        drop(j.begin_snapshot().expect("no ticket out"));
        j.append(1, b"d").unwrap();
        j.close(std::time::Duration::from_secs(5));
        let (_j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state after a"[..]));
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"b"[..], &b"c"[..], &b"d"[..]]);
    }

    #[test]
    fn a_large_snapshot_is_stored_in_parts_and_a_smaller_one_leaves_none_behind() {
        let s = MemoryStorage::default();
        let (mut j, _) = journal(&s, 7).unwrap();
        // 2.5 parts of state, not a multiple of anything: every byte must come back in order.
        let big: Vec<u8> = (0..SNAPSHOT_PART_BYTES * 5 / 2)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        j.append(1, b"a").unwrap();
        j.snapshot(&big);
        assert_eq!(j.snapshot_bytes(), big.len() as u64);
        j.append(1, b"b").unwrap();
        j.close(std::time::Duration::from_secs(5));
        let stored = s.client("c").unwrap().load_all().unwrap();
        let parts: Vec<usize> = stored
            .iter()
            .filter(|(k, _)| k.starts_with(JOURNAL_SNAPSHOT_PART_PREFIX))
            .map(|(_, v)| v.len())
            .collect();
        assert_eq!(
            parts,
            [SNAPSHOT_PART_BYTES, SNAPSHOT_PART_BYTES, SNAPSHOT_PART_BYTES / 2]
        );
        let (mut j, r) = journal(&s, 7).unwrap();
        assert!(r.snapshot.as_deref() == Some(&big[..]), "the state comes back whole");
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"b"[..]]);
        // A smaller snapshot deletes the parts it does not use.
        j.snapshot(b"small");
        j.close(std::time::Duration::from_secs(5));
        let stored = s.client("c").unwrap().load_all().unwrap();
        let parts = stored
            .iter()
            .filter(|(k, _)| k.starts_with(JOURNAL_SNAPSHOT_PART_PREFIX))
            .count();
        assert_eq!(parts, 1, "{:?}", stored.iter().map(|(k, _)| k).collect::<Vec<_>>());
        let (_j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"small"[..]));
        assert!(r.records.is_empty());
        // A missing part is an error, not a shorter state.
        s.client("c")
            .unwrap()
            .apply(&[StorageOp::Delete(snapshot_part_key(0))])
            .unwrap();
        let err = journal(&s, 7).expect_err("a snapshot without its part");
        assert!(err.to_string().contains("parts hold 0"), "{err}");
    }

    #[test]
    fn a_snapshot_stored_as_one_value_is_still_read_and_replaced_by_parts() {
        let s = MemoryStorage::default();
        let (j, _) = journal(&s, 7).unwrap();
        drop(j);
        // The first layout: `_snapshot` = covered commit number + the state, commits after it (under an older
        // format marker of the component).
        let mut old = 2u64.to_be_bytes().to_vec();
        old.extend_from_slice(b"state v1");
        let mut commit = b"j/".to_vec();
        commit.extend_from_slice(&2u64.to_be_bytes());
        s.client("c")
            .unwrap()
            .apply(&[
                StorageOp::Put(JOURNAL_SNAPSHOT_KEY.to_vec(), old),
                StorageOp::Put(commit, vec![1, 1, 0, 0, 0, b'x']),
                StorageOp::Put(JOURNAL_FORMAT_KEY.to_vec(), b"test/journal/0".to_vec()),
            ])
            .unwrap();
        let err = journal(&s, 7).expect_err("an older format is read only when named");
        assert!(err.to_string().contains("test/journal/0"), "{err}");
        let older = |s: &MemoryStorage| {
            let hour = std::time::Duration::from_secs(3600);
            Journal::open_reading(
                s.client("c").unwrap(),
                "c",
                "test/journal/1",
                &["test/journal/0"],
                7,
                hour,
            )
        };
        let (mut j, r) = older(&s).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state v1"[..]));
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"x"[..]]);
        j.snapshot(b"state v2");
        j.close(std::time::Duration::from_secs(5));
        let stored = s.client("c").unwrap().load_all().unwrap();
        assert!(
            !stored
                .iter()
                .any(|(k, _)| k == JOURNAL_SNAPSHOT_KEY || k.starts_with(JOURNAL_PREFIX)),
            "the single value and the covered commit are gone"
        );
        let (_j, r) = journal(&s, 7).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"state v2"[..]));
        assert!(r.records.is_empty());
    }

    #[test]
    fn a_record_too_long_to_frame_is_refused_not_cut() {
        let s = MemoryStorage::default();
        let (mut j, _) = journal(&s, 7).unwrap();
        j.append(1, b"kept").unwrap();
        let err = j.append_limited(1, b"too long", 7).unwrap_err();
        assert_eq!(
            err,
            StorageError::RecordTooLarge {
                owner: "c".into(),
                len: 8,
                max: 7
            }
        );
        assert!(err.to_string().contains("8 bytes"), "{err}");
        j.append_limited(1, b"fits", 7).unwrap();
        j.close(std::time::Duration::from_secs(5));
        let (_j, r) = journal(&s, 7).unwrap();
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"kept"[..], &b"fits"[..]], "nothing of the refused record");
    }

    /// Fails its first `n` writes of records.
    struct Flaky {
        inner: Arc<dyn StorageClient>,
        fail: std::sync::atomic::AtomicU32,
    }

    impl StorageClient for Flaky {
        fn load_all(&self) -> Result<Entries, StorageError> {
            self.inner.load_all()
        }
        fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
            let records = ops
                .iter()
                .any(|o| matches!(o, StorageOp::Put(k, _) if k.starts_with(b"j/")));
            if records
                && self
                    .fail
                    .fetch_update(
                        std::sync::atomic::Ordering::AcqRel,
                        std::sync::atomic::Ordering::Acquire,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
            {
                return Err(StorageError::Io {
                    path: "flaky".into(),
                    reason: "disk full".into(),
                });
            }
            self.inner.apply(ops)
        }
    }

    #[test]
    fn a_failed_commit_is_retried_before_later_ones_and_its_acks_wait() {
        let s = MemoryStorage::default();
        let flaky = Arc::new(Flaky {
            inner: s.client("c").unwrap(),
            fail: std::sync::atomic::AtomicU32::new(2),
        });
        let (mut j, _) = Journal::open(flaky, "c", "test/journal/1", 1, std::time::Duration::from_secs(3600)).unwrap();
        let (ack, mut rx) = crate::Ack::channel();
        j.append(1, b"a").unwrap();
        j.hold([ack]);
        j.commit();
        j.append(1, b"b").unwrap();
        j.commit();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "acknowledged while its commit had failed");
        j.close(std::time::Duration::from_secs(5));
        assert_eq!(rx.try_recv().unwrap(), crate::Delivery::Delivered);
        let (_j, r) = journal(&s, 1).unwrap();
        let got: Vec<&[u8]> = r.records.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, vec![&b"a"[..], &b"b"[..]], "in order, no gap");
    }
}
