//! Durable state of the `business_impact` connector (`storage:`): a write-ahead journal of its input, compacted
//! into snapshots of the engine ([`super::snapshot`], [`Snapshots`], encoded off the connector's thread): a start loads the latest snapshot and
//! replays the journal after it.
//!
//! The engine's state is a deterministic function of what it was fed — the traces, in arrival order, and the
//! two decisions the wall clock takes (the input went idle: everything seen is final; open incidents close as
//! `idle`) — since everything else it does follows event time. So the connector journals exactly that, through
//! [`bizpilot_core::storage::Journal`] (group commit every `checkpoint_interval`; the acknowledgements of the
//! data are released only once its commit is written), and at start re-feeds the journal to a fresh engine
//! before any pipeline runs. The restored engine is the one that was killed: pending operations, the span-id
//! dedup set (consistent with the figures by construction: both come from the same records), open episodes,
//! affected-customer windows, incidents with their detectors' baselines, goals.
//!
//! Records: `TAG_SPANS` (what the engine read of a traces request: its newest event time and the spans that
//! matter to it — ERROR spans, operations, every span with `trace_context` — with only the fields and attributes
//! it reads, [`super::compact`]; replaying them gives the identical engine), `TAG_IDLE`, `TAG_IDLE_CLOSE`
//! (empty); `TAG_TRACES` (a whole OTLP request, as format 1 journaled) is still replayed. Format marker
//! `business_impact/journal/3` (`/2`, the snapshot stored as one value, is still read); the configuration's
//! fingerprint (everything but `storage`, `checkpoint_interval` and `metrics_flush_interval`) is checked: a
//! journal of another configuration is discarded with a warning (its figures would not line up), one of
//! another format stops the start.

use std::time::{Duration, Instant};

use bizpilot_core::storage::{Journal, Replay, SnapshotTicket, client_for};
use bizpilot_core::{ComponentError, CreateContext, Traces};

use super::config::BusinessImpactConfig;
use super::engine::{Engine, State};
use crate::otlp_out::wall_ns;

/// The journal's format marker: the snapshot stored in parts ([`bizpilot_core::storage::SnapshotParts`]).
pub const FORMAT: &str = "business_impact/journal/3";
/// The previous marker (the snapshot as one value): still read; its snapshot is replaced by parts at the next one.
pub const FORMAT_V2: &str = "business_impact/journal/2";
/// An OTLP traces request, protobuf, whole (replayed; no longer written: [`TAG_SPANS`] replaced it).
pub const TAG_TRACES: u8 = 1;
/// `Engine::idle` took effect (the input was idle for `idle_timeout`).
pub const TAG_IDLE: u8 = 2;
/// `Engine::idle_close` took effect (the input was idle for `incident.idle_timeout`).
pub const TAG_IDLE_CLOSE: u8 = 3;
/// What the engine read of a traces request ([`super::compact`]): its newest event time and the spans it read,
/// with the attributes its configuration names.
pub const TAG_SPANS: u8 = 4;

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub requests: u64,
    pub idle: u64,
    /// Records that could not be read (logged, counted, skipped).
    pub unreadable: u64,
}

/// Feeds `records` to `engine` (a fresh one); the logs they produce were emitted before and are dropped.
pub fn replay(engine: &mut Engine, journal: &Replay, owner: &str) -> Replayed {
    let mut r = Replayed::default();
    let keys = engine.read_keys();
    for (tag, data) in &journal.records {
        match *tag {
            TAG_SPANS => match engine.ingest_record(data, &keys) {
                Ok(()) => r.requests += 1,
                Err(e) => {
                    tracing::warn!(connector = owner, error = %e, "journaled spans unreadable, skipped");
                    r.unreadable += 1;
                }
            },
            TAG_TRACES => match Traces::from_bytes(data.clone()) {
                Ok(mut t) => {
                    engine.ingest_traces(&mut t);
                    r.requests += 1;
                }
                Err(e) => {
                    tracing::warn!(connector = owner, error = %e, "journaled traces unreadable, skipped");
                    r.unreadable += 1;
                }
            },
            TAG_IDLE => {
                engine.idle(Duration::MAX, Duration::ZERO);
                r.idle += 1;
            }
            TAG_IDLE_CLOSE => {
                engine.idle_close(Duration::MAX, Duration::ZERO);
                r.idle += 1;
            }
            other => {
                tracing::warn!(
                    connector = owner,
                    tag = other,
                    "journal record of unknown kind, skipped"
                );
                r.unreadable += 1;
            }
        }
    }
    drop(engine.take_logs());
    r
}

/// Journal bytes written since the last snapshot that make the next one due, at least: below this, the cost of
/// a snapshot is not worth it. Beyond it, a snapshot is due once the journal since the last one is twice that
/// snapshot's size, so the time spent writing snapshots stays proportional to the input.
pub const SNAPSHOT_MIN_JOURNAL_BYTES: u64 = 16 << 20;

/// The connector's snapshots: when one is due, the engine's state is copied on the connector's thread
/// ([`Engine::state`], the only pause: `bizpilot_connector_business_impact_snapshot_pause_seconds`) and encoded and
/// handed to the journal's writer on a thread of its own (`bizpilot_connector_business_impact_snapshot_seconds`),
/// while the connector goes on; the snapshot covers exactly the records journaled before the copy
/// ([`Journal::begin_snapshot`]). One at a time.
#[derive(Debug)]
pub struct Snapshots {
    fingerprint: u64,
    min_bytes: u64,
    running: Option<std::thread::JoinHandle<bool>>,
}

impl Snapshots {
    /// Snapshots of the configuration of `fingerprint`, due every `min_bytes` of journal at least
    /// ([`Snapshots::if_due`]).
    pub fn new(fingerprint: u64, min_bytes: u64) -> Self {
        Snapshots {
            fingerprint,
            min_bytes,
            running: None,
        }
    }

    /// Starts a snapshot of `engine` (encoded off this thread) and drops the journal it covers when the journal
    /// written since the last one is at least `min_bytes` and twice the last snapshot: what is stored stays below
    /// about three snapshots plus `min_bytes` (`docs/durable-state.md`). Returns whether it started one. A snapshot
    /// that cannot be encoded is logged and counted (`bizpilot_connector_business_impact_snapshot_errors_total`);
    /// the journal then keeps growing, and nothing is lost.
    pub fn if_due(&mut self, engine: &Engine, journal: &mut Journal) -> bool {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return false;
        }
        self.wait();
        let since = journal.since_snapshot();
        if since < self.min_bytes.max(journal.snapshot_bytes().saturating_mul(2)) {
            return false;
        }
        let Some(ticket) = journal.begin_snapshot() else {
            return false;
        };
        let paused = Instant::now();
        let state = engine.state();
        let connector = journal.owner().to_string();
        metrics::histogram!("bizpilot_connector_business_impact_snapshot_pause_seconds", "connector" => connector.clone())
            .record(paused.elapsed().as_secs_f64());
        let fingerprint = self.fingerprint;
        let job = move || write(state, ticket, fingerprint, &connector);
        match std::thread::Builder::new().name("bizpilot-snapshot".into()).spawn(job) {
            Ok(h) => {
                self.running = Some(h);
                true
            }
            Err(e) => {
                // No thread to spare: the next due check tries again; the journal keeps every record meanwhile.
                tracing::warn!(connector = journal.owner(), error = %e, "snapshot thread not started; will retry");
                false
            }
        }
    }

    /// Waits for the snapshot being written, if any; returns whether it was written.
    pub fn wait(&mut self) -> bool {
        match self.running.take().map(std::thread::JoinHandle::join) {
            Some(Ok(written)) => written,
            Some(Err(_)) => {
                tracing::error!("snapshot thread panicked; the journal keeps every record");
                false
            }
            None => false,
        }
    }

    /// Writes a snapshot of `engine` now, on this thread (at a graceful stop), once the one being written is.
    pub fn now(&mut self, engine: &Engine, journal: &mut Journal) -> bool {
        self.wait();
        let Some(ticket) = journal.begin_snapshot() else {
            return false;
        };
        let connector = journal.owner().to_string();
        write(engine.state(), ticket, self.fingerprint, &connector)
    }
}

/// Encodes `state` (in the journal's snapshot parts, [`bizpilot_core::storage::SnapshotParts`]: stored part by
/// part, so the storage's write stays within its page cache) and writes it with `ticket`; the copy of the state is
/// freed before the write.
fn write(state: State, ticket: SnapshotTicket, fingerprint: u64, connector: &str) -> bool {
    let started = Instant::now();
    let encoded = state.encode_parts(fingerprint);
    drop(state);
    match encoded {
        Ok(parts) => {
            let len = parts.len();
            ticket.write_parts(parts);
            metrics::histogram!("bizpilot_connector_business_impact_snapshot_seconds", "connector" => connector.to_string())
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("bizpilot_connector_business_impact_snapshot_bytes", "connector" => connector.to_string())
                .set(len as f64);
            true
        }
        Err(e) => {
            tracing::error!(connector, error = %e, "snapshot not written; the journal keeps every record");
            metrics::counter!("bizpilot_connector_business_impact_snapshot_errors_total", "connector" => connector.to_string())
                .increment(1);
            false
        }
    }
}

/// Opens the connector's journal in `storage` and restores `engine` from it.
pub fn open(
    engine: &mut Engine,
    ctx: &CreateContext<'_>,
    storage: &str,
    id: &str,
    config: &BusinessImpactConfig,
) -> Result<Journal, ComponentError> {
    let client = client_for(ctx.extensions, storage, id)?;
    let started = Instant::now();
    let (journal, records) = Journal::open_reading(
        client,
        id,
        FORMAT,
        &[FORMAT_V2],
        config.fingerprint(),
        config.checkpoint_interval.get(),
    )
    .map_err(|e| ComponentError::Other(format!("{id}: {e} (storage {storage})")))?;
    if let Some(why) = &records.discarded {
        tracing::warn!(connector = id, storage, "stored state not used, starting empty: {why}");
    }
    engine.set_now(wall_ns());
    let fingerprint = config.fingerprint();
    let snapshot_bytes = records.snapshot.as_ref().map_or(0, |s| s.len());
    if let Some(snapshot) = &records.snapshot {
        engine.load(fingerprint, snapshot).map_err(|e| {
            ComponentError::Other(format!(
                "{id}: {e} (storage {storage}; move its file away, or set `recreate: true` on it to start empty)"
            ))
        })?;
    }
    let r = replay(engine, &records, id);
    engine.capture_input();
    let secs = started.elapsed().as_secs_f64();
    metrics::gauge!("bizpilot_connector_business_impact_restore_seconds", "connector" => id.to_string()).set(secs);
    metrics::gauge!("bizpilot_connector_business_impact_restored_requests", "connector" => id.to_string())
        .set(r.requests as f64);
    metrics::gauge!("bizpilot_connector_business_impact_restored_snapshot_bytes", "connector" => id.to_string())
        .set(snapshot_bytes as f64);
    tracing::info!(
        connector = id,
        storage,
        snapshot_bytes,
        commits = records.commits,
        bytes = records.bytes,
        requests = r.requests,
        idle = r.idle,
        unreadable = r.unreadable,
        pending = engine.pending(),
        seconds = secs,
        "business_impact state restored from its journal"
    );
    Ok(journal)
}
