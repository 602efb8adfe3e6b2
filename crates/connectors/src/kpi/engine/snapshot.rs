//! Snapshots of an [`Engine`]'s state, for checkpoints in a storage extension (`docs/durable-state.md`).
//!
//! What is kept: open, orphaned and recently closed orders (with their stage times, evidence, seen span ids and
//! per-KPI flags), the items still pending for `allowed_lateness`, the learned model (survival sketches), the stage
//! flows, the services' health windows, the cumulative KPI figures and series, the engine's counters and clocks.
//! What is not: the configuration (the restoring engine's own; a snapshot taken under another configuration is
//! refused, see [`SnapshotError::Config`]) and outputs not yet taken (a snapshot is taken between batches, after the
//! outputs were sent).
//!
//! Encoding, format 2 ([`FORMAT`]): a CBOR head `{format, fingerprint}` (`ciborium`), then the state in
//! `postcard` (serde's fields in order, integers as varints, no field names): at 96k open orders 38 % of format 1's
//! bytes, encoded about twice and decoded about 7 times as fast (`docs/durable-state.md`, "order_kpi's checkpoint
//! cost"; the command is in `crates/connectors/examples/kpi_snapshot.rs`). Format 1 (the whole state as one CBOR map, the
//! format of earlier builds) is still read. An older build refuses a format-2 snapshot with a clear error, as the
//! head is CBOR in both.
//!
//! Taking a snapshot is two steps, so that the stage's thread is held only for the first: [`Engine::snapshot_copy`]
//! copies the state cheaply (the per-order maps are copy-on-write, see [`super::cow`]: their copy shares every
//! shard; the model, the services' health and the KPI figures — small and bounded — are encoded at once), and
//! [`SnapshotCopy::encode`] encodes the rest, on any thread, while the engine goes on.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use super::cow::CowMap;
use super::{Engine, Health, Item, KpiFigures, Model, Order, Orphan, StageFlow, Stats};

/// The snapshot format written by this build; format 1 ([`FORMAT_1`]) is read too.
pub const FORMAT: u32 = 2;

/// The format of earlier builds: the whole state as one CBOR map.
pub const FORMAT_1: u32 = 1;

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("encoding the order_kpi snapshot: {0}")]
    Encode(String),
    #[error("the order_kpi snapshot cannot be read: {0}")]
    Decode(String),
    #[error("order_kpi snapshot format {found}, this build reads {FORMAT_1} and {FORMAT}")]
    Format { found: u32 },
    /// The snapshot was taken under another configuration (stages, KPIs, dimensions, bounds…): its state would not
    /// line up with this one's.
    #[error("the order_kpi snapshot was taken under another configuration")]
    Config,
}

/// The state in a snapshot: `H`, `M` and `F` are the services' health, the model and the KPI figures, or (format 2)
/// their encoding. Format 1 has `format` and `fingerprint` among these fields (ignored here, read by [`Head`]).
#[derive(Serialize, Deserialize)]
struct State<H, M, F> {
    health: H,
    model: M,
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
    figures: F,
    series: Vec<Box<[Box<str>]>>,
    series_overflowed: u64,
    stats: Stats,
    peak_open: usize,
}

/// What format 2 stores after its head.
type Stored = State<Vec<u8>, Vec<u8>, Vec<u8>>;

/// What format 2 stores after the state since builds with a watermark per input (`Engine::inputs`): each input's
/// newest event time. A snapshot of an earlier build ends before it; an earlier build reading this one ignores it
/// (postcard reads a value and leaves what follows).
#[derive(Serialize, Deserialize)]
struct Inputs {
    newest: [u64; 2],
}

/// A copy of an engine's state taken for a snapshot ([`Engine::snapshot_copy`]), encoded by
/// [`SnapshotCopy::encode`] on any thread.
pub struct SnapshotCopy {
    fingerprint: u64,
    state: Stored,
    inputs: Inputs,
}

/// `v` in postcard.
fn postcard<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SnapshotError> {
    postcard::to_allocvec(v).map_err(|e| SnapshotError::Encode(e.to_string()))
}

impl SnapshotCopy {
    /// The snapshot's bytes (format 2).
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = Vec::new();
        let head = Head {
            format: FORMAT,
            fingerprint: self.fingerprint,
        };
        ciborium::into_writer(&head, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        postcard::to_io(&self.state, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        postcard::to_io(&self.inputs, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(buf)
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    format: u32,
    fingerprint: u64,
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
        // Nor `idle_timeout`, which came after format 2: left out of the text too, so that snapshots of earlier
        // builds still match.
        bizpilot_core::storage::fingerprint(&without_field(&format!("{cfg:?}"), "idle_timeout"))
    }

    /// The engine's state, encoded. Take it between batches, after the outputs were taken.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        self.snapshot_copy()?.encode()
    }

    /// A copy of the engine's state to encode ([`SnapshotCopy::encode`]), cheap to take: the per-order maps are
    /// shared copy-on-write, the rest is small. Take it between batches, after the outputs were taken.
    pub fn snapshot_copy(&self) -> Result<SnapshotCopy, SnapshotError> {
        Ok(SnapshotCopy {
            fingerprint: self.fingerprint(),
            state: State {
                health: postcard(&self.health)?,
                model: postcard(&self.model)?,
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
                figures: postcard(&self.figures[..])?,
                series: self.series.values.clone(),
                series_overflowed: self.series.overflowed,
                stats: self.stats.clone(),
                peak_open: self.peak_open,
            },
            inputs: Inputs {
                newest: self.input_time,
            },
        })
    }

    /// The state in format 1, as builds before format 2 wrote it: for the test that such snapshots still restore,
    /// and for `examples/kpi_snapshot.rs`, which compares both formats' cost.
    #[doc(hidden)]
    pub fn snapshot_format_1(&self) -> Result<Vec<u8>, SnapshotError> {
        #[derive(Serialize)]
        struct V1<'a> {
            format: u32,
            fingerprint: u64,
            #[serde(flatten)]
            state: State<&'a Health, &'a Model, &'a [KpiFigures]>,
        }
        let c = self.snapshot_copy()?.state;
        let v1 = V1 {
            format: FORMAT_1,
            fingerprint: self.fingerprint(),
            state: State {
                health: &self.health,
                model: &self.model,
                flows: c.flows,
                orders: c.orders,
                orphans: c.orphans,
                orphan_queue: c.orphan_queue,
                closed: c.closed,
                closed_queue: c.closed_queue,
                pending: c.pending,
                seq: c.seq,
                max_time: c.max_time,
                first_time: c.first_time,
                last_tick: c.last_tick,
                first_tick: c.first_tick,
                figures: &self.figures,
                series: c.series,
                series_overflowed: c.series_overflowed,
                stats: c.stats,
                peak_open: c.peak_open,
            },
        };
        let mut buf = Vec::new();
        ciborium::into_writer(&v1, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(buf)
    }

    /// Replaces the state with a snapshot's. On an error the engine is unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let decode = |e: &dyn std::fmt::Display| SnapshotError::Decode(e.to_string());
        let mut rest = bytes;
        let head: Head = ciborium::from_reader(&mut rest).map_err(|e| decode(&e))?;
        if head.format != FORMAT && head.format != FORMAT_1 {
            return Err(SnapshotError::Format { found: head.format });
        }
        if head.fingerprint != self.fingerprint() {
            return Err(SnapshotError::Config);
        }
        let mut inputs = None;
        let s: State<Health, Model, Vec<KpiFigures>> = if head.format == FORMAT_1 {
            ciborium::from_reader(bytes).map_err(|e| decode(&e))?
        } else {
            let (s, tail): (Stored, &[u8]) = postcard::take_from_bytes(rest).map_err(|e| decode(&e))?;
            if !tail.is_empty() {
                inputs = Some(postcard::from_bytes::<Inputs>(tail).map_err(|e| decode(&e))?.newest);
            }
            State {
                health: postcard::from_bytes(&s.health).map_err(|e| decode(&e))?,
                model: postcard::from_bytes(&s.model).map_err(|e| decode(&e))?,
                flows: s.flows,
                orders: s.orders,
                orphans: s.orphans,
                orphan_queue: s.orphan_queue,
                closed: s.closed,
                closed_queue: s.closed_queue,
                pending: s.pending,
                seq: s.seq,
                max_time: s.max_time,
                first_time: s.first_time,
                last_tick: s.last_tick,
                first_tick: s.first_tick,
                figures: postcard::from_bytes(&s.figures).map_err(|e| decode(&e))?,
                series: s.series,
                series_overflowed: s.series_overflowed,
                stats: s.stats,
                peak_open: s.peak_open,
            }
        };
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
        self.restore_inputs(inputs);
        // The API shows the restored state at once, not only after the next evaluation.
        if let Some(b) = self.last_tick {
            self.refresh_book(b);
        }
        Ok(())
    }
}

/// `debug` (a struct's `{:?}`) without its field `field` (a value without parentheses inside, as
/// `Duration(5m)`).
fn without_field(debug: &str, field: &str) -> String {
    let key = format!(", {field}: ");
    match debug.find(&key) {
        Some(i) => {
            let rest = &debug[i + key.len()..];
            let end = rest.find(')').map_or(rest.len(), |j| j + 1);
            format!("{}{}", &debug[..i], &rest[end..])
        }
        None => debug.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kpi::{Compiled, OrderKpiConfig};
    use bizpilot_business::attrs::kv_str;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn engine() -> Engine {
        Engine::new(Compiled::new(&OrderKpiConfig::default(), |_| Err(String::new())).unwrap())
    }

    /// 300 orders placed a minute apart, two in three paid, one in three of those delivered; an hour of tail.
    fn fed() -> Engine {
        let mut e = engine();
        let t0 = 1_767_225_600_000_000_000u64;
        let min = 60_000_000_000u64;
        let ev = |name: &str, i: u64, t: u64| LogRecord {
            time_unix_nano: t,
            event_name: name.into(),
            attributes: vec![
                kv_str("order.id", format!("o-{i}")),
                kv_str("order.amount", format!("USD {}.{:02}", 10 + i, i % 100)),
            ],
            ..Default::default()
        };
        let mut recs = Vec::new();
        for i in 0..300 {
            recs.push(ev("order.placed", i, t0 + i * min));
            if i % 3 != 0 {
                recs.push(ev("order.paid", i, t0 + i * min + 10 * min));
            }
            if i % 9 == 1 {
                recs.push(ev("order.delivered", i, t0 + i * min + 20 * min));
            }
        }
        recs.sort_by_key(|r| r.time_unix_nano);
        for chunk in recs.chunks(50) {
            e.ingest_logs(&ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            });
            e.advance();
        }
        e
    }

    /// The observable state of an engine, for comparisons.
    fn view(e: &Engine) -> (usize, usize, (usize, usize), Stats, Option<u64>, u64) {
        (
            e.open_orders(),
            e.pending(),
            e.remembered(),
            e.stats().clone(),
            e.now(),
            e.watermark(),
        )
    }

    #[test]
    fn format_2_restores_what_was_copied_and_format_1_snapshots_of_earlier_builds_still_restore() {
        let a = fed();
        assert!(
            a.open_orders() > 100 && a.remembered().0 > 0 && a.pending() > 0,
            "{:?}",
            view(&a)
        );

        let v2 = a.snapshot().unwrap();
        let mut b = engine();
        b.restore(&v2).unwrap();
        assert_eq!(view(&b), view(&a));
        assert_eq!(b.at_risk(), a.at_risk());

        // Format 1: the whole state as one CBOR map with its head's fields, as earlier builds wrote it.
        let bytes = a.snapshot_format_1().unwrap();
        let mut d = engine();
        d.restore(&bytes).unwrap();
        assert_eq!(view(&d), view(&a));
        assert_eq!(d.at_risk(), a.at_risk());
        assert!(
            v2.len() < bytes.len(),
            "format 2 ({} B) is smaller than format 1 ({} B)",
            v2.len(),
            bytes.len()
        );

        // Another format: refused, naming it; a cut snapshot: refused; the engine unchanged.
        let mut other = Vec::new();
        ciborium::into_writer(
            &Head {
                format: 3,
                fingerprint: a.fingerprint(),
            },
            &mut other,
        )
        .unwrap();
        let mut e = engine();
        assert!(matches!(e.restore(&other), Err(SnapshotError::Format { found: 3 })));
        assert!(matches!(e.restore(&v2[..v2.len() / 2]), Err(SnapshotError::Decode(_))));
        assert_eq!(e.open_orders(), 0);
    }

    /// A format-2 snapshot of a build before the watermark per input (it ends after the state) still restores: each
    /// input that had sent holds the watermark where the single one was. And `idle_timeout`, which shapes no state, is
    /// left out of the configuration's fingerprint.
    #[test]
    fn a_format_2_snapshot_without_the_inputs_restores_and_idle_timeout_is_not_in_the_fingerprint() {
        let a = fed();
        let v2 = a.snapshot().unwrap();
        let tail = postcard(&Inputs { newest: a.input_time }).unwrap();
        assert!(v2.ends_with(&tail));
        let earlier = &v2[..v2.len() - tail.len()];
        let mut b = engine();
        b.restore(earlier).unwrap();
        assert_eq!(view(&b), view(&a));
        assert_eq!(
            b.input_time,
            [a.input_time[0], 0],
            "events only: the spans input holds nothing"
        );
        assert_eq!(b.at_risk(), a.at_risk());

        let c = OrderKpiConfig {
            idle_timeout: bizpilot_core::config::Duration::from_secs(17),
            ..Default::default()
        };
        let mut d = Engine::new(Compiled::new(&c, |_| Err(String::new())).unwrap());
        assert_eq!(d.fingerprint(), a.fingerprint());
        d.restore(&v2).unwrap();
        assert_eq!(view(&d), view(&a));
        let text = format!("{c:?}");
        assert!(text.contains("idle_timeout: Duration(17s)"), "{text}");
        assert_eq!(
            without_field(&text, "idle_timeout"),
            text.replace(", idle_timeout: Duration(17s)", "")
        );
    }
}
