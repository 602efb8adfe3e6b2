//! Snapshots of an [`Engine`]'s state, for checkpoints in a storage extension (`docs/durable-state.md`).
//!
//! What is kept: open, orphaned and recently closed orders (with their stage times, evidence, seen span ids and
//! per-KPI flags), the items still pending for `allowed_lateness`, the learned model (survival sketches), the stage
//! flows, the services' health windows, the cumulative KPI figures and series, the engine's counters and clocks.
//! What is not: the configuration (the restoring engine's own; a snapshot taken under another configuration is
//! refused, see [`SnapshotError::Config`]) and outputs not yet taken (a snapshot is taken between batches, after the
//! outputs were sent).
//!
//! Encoding: CBOR (`ciborium`), because the state has maps with non-string keys (the pending queue is keyed by
//! `(time, rank, seq, hash)`), which JSON cannot carry; versioned by [`FORMAT`].
//!
//! Taking a snapshot is two steps, so that the stage's thread is held only for the first: [`Engine::snapshot_copy`]
//! copies the state cheaply (the per-order maps are copy-on-write, see [`super::cow`]: their copy shares every
//! shard; the model, the services' health and the KPI figures — small and bounded — are captured as CBOR values),
//! and [`SnapshotCopy::encode`] encodes it, on any thread, while the engine goes on.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use super::cow::CowMap;
use super::{Engine, Health, Item, KpiFigures, Model, Order, Orphan, StageFlow, Stats};

/// The snapshot format written and read by this build.
pub const FORMAT: u32 = 1;

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("encoding the order_kpi snapshot: {0}")]
    Encode(String),
    #[error("the order_kpi snapshot cannot be read: {0}")]
    Decode(String),
    #[error("order_kpi snapshot format {found}, this build reads {FORMAT}")]
    Format { found: u32 },
    /// The snapshot was taken under another configuration (stages, KPIs, dimensions, bounds…): its state would not
    /// line up with this one's.
    #[error("the order_kpi snapshot was taken under another configuration")]
    Config,
}

/// A copy of an engine's state taken for a snapshot ([`Engine::snapshot_copy`]), encoded by
/// [`SnapshotCopy::encode`] on any thread. Its fields are the snapshot's (`In` reads them back).
#[derive(Serialize)]
pub struct SnapshotCopy {
    format: u32,
    fingerprint: u64,
    health: ciborium::Value,
    model: ciborium::Value,
    flows: Vec<StageFlow>,
    orders: CowMap<Order>,
    orphans: CowMap<Orphan>,
    orphan_queue: VecDeque<(u64, Box<str>)>,
    closed: CowMap<u64>,
    closed_queue: VecDeque<(u64, Box<str>)>,
    pending: BTreeMap<(u64, u16, u64, u64), Item>,
    seq: u64,
    max_time: u64,
    first_time: Option<u64>,
    last_tick: Option<u64>,
    first_tick: Option<u64>,
    figures: ciborium::Value,
    series: Vec<Box<[Box<str>]>>,
    series_overflowed: u64,
    stats: Stats,
    peak_open: usize,
}

/// `v` as a CBOR value: written as `v` itself would be.
fn value<T: Serialize + ?Sized>(v: &T) -> Result<ciborium::Value, SnapshotError> {
    ciborium::Value::serialized(v).map_err(|e| SnapshotError::Encode(e.to_string()))
}

impl SnapshotCopy {
    /// The snapshot's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = Vec::new();
        ciborium::into_writer(self, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(buf)
    }
}

#[derive(Deserialize)]
struct Head {
    format: u32,
    fingerprint: u64,
}

#[derive(Deserialize)]
struct In {
    health: Health,
    model: Model,
    flows: Vec<StageFlow>,
    orders: CowMap<Order>,
    orphans: CowMap<Orphan>,
    orphan_queue: VecDeque<(u64, Box<str>)>,
    closed: CowMap<u64>,
    closed_queue: VecDeque<(u64, Box<str>)>,
    pending: BTreeMap<(u64, u16, u64, u64), Item>,
    seq: u64,
    max_time: u64,
    first_time: Option<u64>,
    last_tick: Option<u64>,
    first_tick: Option<u64>,
    figures: Vec<KpiFigures>,
    series: Vec<Box<[Box<str>]>>,
    series_overflowed: u64,
    stats: Stats,
    peak_open: usize,
}

impl Engine {
    /// A fingerprint of the configuration: [`bizpilot_core::storage::fingerprint`] (FNV-1a) of its debug form
    /// (stable within a build), as `business_impact`'s journal does.
    fn fingerprint(&self) -> u64 {
        // What does not shape the state is left out: where and how often it is checkpointed, the API.
        let mut cfg = self.c.cfg.clone();
        cfg.storage = None;
        cfg.checkpoint_interval = Default::default();
        cfg.api = Default::default();
        bizpilot_core::storage::fingerprint(&format!("{cfg:?}"))
    }

    /// The engine's state, encoded. Take it between batches, after the outputs were taken.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        self.snapshot_copy()?.encode()
    }

    /// A copy of the engine's state to encode ([`SnapshotCopy::encode`]), cheap to take: the per-order maps are
    /// shared copy-on-write, the rest is small. Take it between batches, after the outputs were taken.
    pub fn snapshot_copy(&self) -> Result<SnapshotCopy, SnapshotError> {
        Ok(SnapshotCopy {
            format: FORMAT,
            fingerprint: self.fingerprint(),
            health: value(&self.health)?,
            model: value(&self.model)?,
            flows: self.flows.clone(),
            orders: self.orders.clone(),
            orphans: self.orphans.clone(),
            orphan_queue: self.orphan_queue.clone(),
            closed: self.closed.clone(),
            closed_queue: self.closed_queue.clone(),
            pending: self.pending.clone(),
            seq: self.seq,
            max_time: self.max_time,
            first_time: self.first_time,
            last_tick: self.last_tick,
            first_tick: self.first_tick,
            figures: value(&self.figures[..])?,
            series: self.series.values.clone(),
            series_overflowed: self.series.overflowed,
            stats: self.stats.clone(),
            peak_open: self.peak_open,
        })
    }

    /// Replaces the state with a snapshot's. On an error the engine is unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let head: Head = ciborium::from_reader(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if head.format != FORMAT {
            return Err(SnapshotError::Format { found: head.format });
        }
        if head.fingerprint != self.fingerprint() {
            return Err(SnapshotError::Config);
        }
        let s: In = ciborium::from_reader(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if s.flows.len() != self.flows.len() || s.figures.len() != self.figures.len() {
            return Err(SnapshotError::Config);
        }
        let mut health = s.health;
        health.set_config(&self.c.cfg.health);
        self.stage_service_ids = self
            .c
            .stage_services
            .iter()
            .map(|names| names.iter().filter_map(|n| health.intern(n)).collect())
            .collect();
        self.health = health;
        self.model = s.model;
        self.flows = s.flows;
        self.orders = s.orders;
        self.orphans = s.orphans;
        self.orphan_queue = s.orphan_queue;
        self.closed = s.closed;
        self.closed_queue = s.closed_queue;
        self.pending = s.pending;
        self.seq = s.seq;
        self.max_time = s.max_time;
        self.first_time = s.first_time;
        self.last_tick = s.last_tick;
        self.first_tick = s.first_tick;
        self.figures = s.figures;
        self.series.index = s
            .series
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        self.series.values = s.series;
        self.series.overflowed = s.series_overflowed;
        self.stats = s.stats;
        self.peak_open = s.peak_open;
        // The API shows the restored state at once, not only after the next evaluation.
        if let Some(b) = self.last_tick {
            self.refresh_book(b);
        }
        Ok(())
    }
}
