//! Durable state of the `business_impact` connector (`storage:`): a write-ahead journal of its input, compacted
//! into snapshots of the engine ([`super::snapshot`], [`snapshot_if_due`]): a start loads the latest snapshot and
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
//! `business_impact/journal/2`; the configuration's
//! fingerprint (everything but `storage`, `checkpoint_interval` and `metrics_flush_interval`) is checked: a
//! journal of another configuration is discarded with a warning (its figures would not line up), one of
//! another format stops the start.

use std::time::{Duration, Instant};

use bizpilot_core::storage::{Journal, Replay, client_for};
use bizpilot_core::{ComponentError, CreateContext, Traces};

use super::config::BusinessImpactConfig;
use super::engine::Engine;
use crate::otlp_out::wall_ns;

/// The journal's format marker.
pub const FORMAT: &str = "business_impact/journal/2";
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

/// Writes a snapshot of `engine` and drops the journal it covers when the journal written since the last one is at
/// least `min_bytes` and twice the last snapshot: what is stored stays below about three snapshots plus
/// `min_bytes` (`docs/durable-state.md`). Returns whether it did. A snapshot that cannot be encoded is logged and
/// counted (`bizpilot_connector_business_impact_snapshot_errors_total`); the journal then keeps growing, and
/// nothing is lost.
pub fn snapshot_if_due(engine: &Engine, journal: &mut Journal, fingerprint: u64, min_bytes: u64) -> bool {
    let since = journal.since_snapshot();
    if since < min_bytes.max(journal.snapshot_bytes().saturating_mul(2)) {
        return false;
    }
    snapshot_now(engine, journal, fingerprint)
}

/// Writes a snapshot of `engine` now (see [`snapshot_if_due`]).
pub fn snapshot_now(engine: &Engine, journal: &mut Journal, fingerprint: u64) -> bool {
    let started = Instant::now();
    match engine.save(fingerprint) {
        Ok(state) => {
            journal.snapshot(&state);
            let connector = journal.owner().to_string();
            metrics::histogram!("bizpilot_connector_business_impact_snapshot_seconds", "connector" => connector.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("bizpilot_connector_business_impact_snapshot_bytes", "connector" => connector)
                .set(state.len() as f64);
            true
        }
        Err(e) => {
            let connector = journal.owner().to_string();
            tracing::error!(connector, error = %e, "snapshot not written; the journal keeps every record");
            metrics::counter!("bizpilot_connector_business_impact_snapshot_errors_total", "connector" => connector)
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
    let (journal, records) = Journal::open(
        client,
        id,
        FORMAT,
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
