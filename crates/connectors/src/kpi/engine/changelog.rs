//! The engine's open orders as changelog records: what moves with a Kafka partition (`docs/partition-state.md`).
//!
//! An order's record is keyed by its id and holds everything the engine keeps of that order alone: the open order
//! (stage times, evidence, seen span ids, per-KPI flags), its span evidence while its events are unknown (orphan),
//! the time it closed (while `closed_memory` remembers it, so a straggling event does not reopen it on the new
//! owner), and its items still waiting for the watermark (events and spans of the order: their Kafka offsets may be
//! committed once a checkpoint holds them, so they move too). When none of these is left (the order was forgotten,
//! or dropped because its partition moved away) the record is a tombstone.
//!
//! Value encoding: a format byte ([`RECORD_FORMAT`]) then the record in `postcard` (the snapshot's encoding of the
//! same structures, `super::snapshot`), with the names of the services its evidence refers to (service ids are
//! interned per engine, in the order services were first seen, so the restoring engine maps them by name; the
//! series id is recomputed from the order's dimension values).
//!
//! What does not move: the learned model (stage durations, calibration), the stage flows and the services' health
//! are per engine, learned from what each replica saw; the cumulative KPI figures stay where the orders resolved
//! (the fleet's figures are the sum over the replicas).
//!
//! Changes are found without hooks in the engine: a [`ChangeTracker`] keeps the copy of the per-order maps it wrote
//! last ([`super::cow::CowMap`]: a shard written since is a new allocation, an untouched one is still shared), and
//! compares only the keys of the shards that differ, plus the ids whose waiting items changed; a key whose encoded
//! record is the same as before is not written again.

use std::collections::HashMap;

use bizpilot_business::changelog::{ChangelogRecord, partition_of};
use serde::{Deserialize, Serialize};

use super::cow::CowMap;
use super::snapshot::SnapshotError;
use super::{Engine, Item, Order, Orphan, span_hash, str_hash};

/// The format byte that starts every record's value.
pub const RECORD_FORMAT: u8 = 1;

type PendingKey = (u64, u16, u64, u64);

#[derive(Serialize, Deserialize)]
struct Record<O, P, I> {
    order: Option<O>,
    orphan: Option<P>,
    closed: Option<u64>,
    /// (event time, rank, item).
    pending: Vec<(u64, u16, I)>,
    /// The writer's service ids referred to, with their names.
    services: Vec<(u16, Box<str>)>,
}

/// One order's state as read from the changelog ([`decode_record`]), to apply with
/// [`Engine::apply_changelog`].
pub struct RestoredOrder(Record<Order, Orphan, Item>);

/// A cheap copy of the per-order state ([`Engine::change_copy`]), compared by a [`ChangeTracker`] off the stage's
/// thread.
pub struct ChangeCopy {
    orders: CowMap<Order>,
    orphans: CowMap<Orphan>,
    closed: CowMap<u64>,
    pending: HashMap<Box<str>, Vec<(PendingKey, Item)>>,
    services: Vec<Box<str>>,
}

fn order_of(item: &Item) -> Option<&str> {
    match item {
        Item::Event { order, .. } => Some(order),
        Item::Span(s) => s.order.as_deref(),
    }
}

impl ChangeCopy {
    fn services_of(&self, order: Option<&Order>, orphan: Option<&Orphan>, pending: &[(PendingKey, Item)]) -> Vec<u16> {
        let mut ids: Vec<u16> = Vec::new();
        if let Some(o) = order {
            ids.extend(o.evidence.iter().map(|e| e.service));
            for k in o.kpis.iter() {
                ids.extend(k.flag_services.iter().copied());
                ids.extend(k.flag_cause.and_then(|c| c.service));
                ids.extend(k.cause.and_then(|c| c.service));
            }
        }
        if let Some(o) = orphan {
            ids.extend(o.evidence.iter().map(|e| e.service));
        }
        for (_, item) in pending {
            if let Item::Span(s) = item {
                ids.push(s.service);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The encoded record of `id`, or `None` when the copy holds nothing of it (a tombstone).
    fn record(&self, id: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        let order = self.orders.get(id);
        let orphan = self.orphans.get(id);
        let closed = self.closed.get(id).copied();
        let pending: &[(PendingKey, Item)] = self.pending.get(id).map_or(&[], |v| v.as_slice());
        if order.is_none() && orphan.is_none() && closed.is_none() && pending.is_empty() {
            return Ok(None);
        }
        let services = self
            .services_of(order, orphan, pending)
            .into_iter()
            .map(|s| {
                (
                    s,
                    self.services
                        .get(usize::from(s))
                        .cloned()
                        .unwrap_or_else(|| "unknown".into()),
                )
            })
            .collect();
        let rec = Record {
            order,
            orphan,
            closed,
            pending: pending.iter().map(|((t, r, _, _), i)| (*t, *r, i)).collect(),
            services,
        };
        let mut buf = vec![RECORD_FORMAT];
        postcard::to_io(&rec, &mut buf).map_err(|e| SnapshotError::Encode(e.to_string()))?;
        Ok(Some(buf))
    }
}

/// Finds the orders changed since the last changelog write ([`ChangeTracker::records`]).
#[derive(Default)]
pub struct ChangeTracker {
    /// The copy the changelog holds (as of the last successful write); none yet: everything is written.
    written: Option<ChangeCopy>,
    /// The copy being written.
    next: Option<ChangeCopy>,
}

impl ChangeTracker {
    /// The changelog records of what changed between the last written copy and `now` (every order the first time),
    /// keyed `<prefix><order id>`, on partition `murmur2(order id) mod partitions`. Call [`ChangeTracker::written`]
    /// once they are durable; until then the next call compares with the same earlier copy again.
    pub fn records(
        &mut self,
        now: ChangeCopy,
        prefix: &str,
        partitions: i32,
    ) -> Result<Vec<ChangelogRecord>, SnapshotError> {
        let mut ids: Vec<&Box<str>> = match &self.written {
            None => now
                .orders
                .iter()
                .map(|(k, _)| k)
                .chain(now.orphans.iter().map(|(k, _)| k))
                .chain(now.closed.iter().map(|(k, _)| k))
                .chain(now.pending.keys())
                .collect(),
            Some(w) => now
                .orders
                .keys_changed_since(&w.orders)
                .chain(now.orphans.keys_changed_since(&w.orphans))
                .chain(now.closed.keys_changed_since(&w.closed))
                .chain(
                    now.pending
                        .iter()
                        .filter(|(k, v)| {
                            w.pending.get(*k).is_none_or(|old| {
                                old.len() != v.len() || old.iter().zip(v.iter()).any(|(a, b)| a.0 != b.0)
                            })
                        })
                        .map(|(k, _)| k),
                )
                .chain(w.pending.keys().filter(|k| !now.pending.contains_key(*k)))
                .collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            let value = now.record(id)?;
            if let Some(w) = &self.written
                && w.record(id)? == value
            {
                continue;
            }
            out.push(ChangelogRecord {
                partition: partition_of(id, partitions),
                key: format!("{prefix}{id}").into_bytes(),
                value,
            });
        }
        self.next = Some(now);
        Ok(out)
    }

    /// Forgets what was written: the next [`ChangeTracker::records`] gives every order again (after a rebalance,
    /// since the changelog skipped the partitions this replica did not own meanwhile).
    pub fn reset(&mut self) {
        self.written = None;
        self.next = None;
    }

    /// The records of the last [`ChangeTracker::records`] are durable: the next compare with that copy.
    pub fn written(&mut self) {
        if let Some(n) = self.next.take() {
            self.written = Some(n);
        }
    }
}

/// Decodes a record's value (as [`ChangeTracker::records`] wrote it).
pub fn decode_record(bytes: &[u8]) -> Result<RestoredOrder, SnapshotError> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest)
            .map(RestoredOrder)
            .map_err(|e| SnapshotError::Decode(e.to_string())),
        Some((&f, _)) => Err(SnapshotError::Format { found: u32::from(f) }),
        None => Err(SnapshotError::Decode("empty record".into())),
    }
}

impl Engine {
    /// A cheap copy of the per-order state for a [`ChangeTracker`] (the maps are shared copy-on-write; the waiting
    /// items of orders are copied, bounded by `max_pending`).
    pub fn change_copy(&self) -> ChangeCopy {
        let mut pending: HashMap<Box<str>, Vec<(PendingKey, Item)>> = HashMap::new();
        for (k, item) in &self.pending {
            if let Some(id) = order_of(item) {
                pending.entry(id.into()).or_default().push((*k, item.clone()));
            }
        }
        ChangeCopy {
            orders: self.orders.clone(),
            orphans: self.orphans.clone(),
            closed: self.closed.clone(),
            pending,
            services: (0..self.health.len())
                .map(|i| self.health.name(i as u16).into())
                .collect(),
        }
    }

    /// Applies one changelog partition's records (order id, record or `None` for a tombstone), in write order: the
    /// last record of an order is its state, replacing what this engine holds of it (span evidence this engine
    /// gathered for it meanwhile is kept). Applying the same records again gives the same state. Returns the orders
    /// put back (open, closed or waiting).
    pub fn apply_changelog(&mut self, records: Vec<(Box<str>, Option<RestoredOrder>)>) -> usize {
        let mut latest: HashMap<Box<str>, Option<RestoredOrder>> = HashMap::new();
        for (id, r) in records {
            latest.insert(id, r);
        }
        // What this engine holds of these orders is replaced: their waiting items go (one pass, not one per order).
        self.pending
            .retain(|_, item| order_of(item).is_none_or(|o| !latest.contains_key(o)));
        let mut applied = 0;
        for (id, r) in latest {
            let orphan_here = self.orphans.remove(&id);
            self.orders.remove(&id);
            self.closed.remove(&id);
            let Some(RestoredOrder(rec)) = r else {
                if let Some(o) = orphan_here {
                    self.orphans.insert(id, o);
                }
                continue;
            };
            applied += 1;
            let map: HashMap<u16, Option<u16>> = rec
                .services
                .iter()
                .map(|(old, name)| (*old, self.health.intern(name)))
                .collect();
            let remap = |s: u16| map.get(&s).copied().flatten();
            if let Some(t) = rec.closed
                && self.closed.insert(id.clone(), t).is_none()
            {
                self.closed_queue.push_back((t, id.clone()));
            }
            let mut orphan = rec.orphan.map(|mut o| {
                remap_evidence(&mut o.evidence, remap);
                o
            });
            if let Some(here) = orphan_here {
                // Spans of this order that reached this engine before its record: keep their evidence.
                let o = orphan.get_or_insert_with(|| Orphan {
                    created: here.created,
                    ..Default::default()
                });
                merge_evidence(&mut o.evidence, &mut o.seen, here);
            }
            if let Some(mut o) = rec.order {
                remap_evidence(&mut o.evidence, remap);
                for k in o.kpis.iter_mut() {
                    k.flag_services = k.flag_services.iter().filter_map(|s| remap(*s)).collect();
                    for c in [&mut k.flag_cause, &mut k.cause].into_iter().flatten() {
                        c.service = c.service.and_then(remap);
                    }
                }
                if let Some(extra) = orphan.take() {
                    merge_evidence(&mut o.evidence, &mut o.seen_spans, extra);
                }
                o.sid = self.series.id(self.dims_values(&o));
                self.orders.insert(id.clone(), o);
                self.peak_open = self.peak_open.max(self.orders.len());
            }
            if let Some(o) = orphan {
                self.orphan_queue.push_back((o.created, id.clone()));
                self.orphans.insert(id.clone(), o);
            }
            for (time, rank, mut item) in rec.pending {
                if let Item::Span(s) = &mut item {
                    match remap(s.service) {
                        Some(n) => s.service = n,
                        None => continue,
                    }
                }
                if self.last_tick.is_some_and(|t| time <= t) {
                    // Behind this engine's last evaluation: applied at once, as a late item is.
                    self.apply(time, item);
                    continue;
                }
                let h = match &item {
                    Item::Event { order, .. } => str_hash(order),
                    Item::Span(s) => span_hash(&s.trace_id, &s.span_id),
                };
                self.seq += 1;
                self.max_time = self.max_time.max(time);
                self.pending.insert((time, rank, h, self.seq), item);
            }
        }
        applied
    }

    /// Drops every order `keep` refuses (open or closed, and its events waiting for the watermark), without counting
    /// it anywhere: its partition moved to another replica, which restored it. Span evidence of orders not seen
    /// (orphans) and waiting spans are kept: spans are keyed by trace id by default, not by order, so they are not
    /// the partition's (they still count towards service health here, and orphans expire after `closed_memory`).
    /// Returns the open orders dropped.
    pub fn retain_orders(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let orders: Vec<Box<str>> = self
            .orders
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        let closed: Vec<Box<str>> = self
            .closed
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for k in &orders {
            self.orders.remove(k);
        }
        for k in &closed {
            self.closed.remove(k);
        }
        self.pending.retain(|_, item| match item {
            Item::Event { order, .. } => keep(order),
            Item::Span(_) => true,
        });
        orders.len()
    }
}

fn remap_evidence(evidence: &mut Vec<super::Evidence>, remap: impl Fn(u16) -> Option<u16>) {
    evidence.retain_mut(|e| match remap(e.service) {
        Some(s) => {
            e.service = s;
            true
        }
        None => false,
    });
}

/// Adds `extra`'s spans not seen yet (by span id) to `evidence`, per service.
fn merge_evidence(evidence: &mut Vec<super::Evidence>, seen: &mut Vec<u64>, extra: Orphan) {
    if extra.seen.iter().all(|h| seen.contains(h)) {
        return;
    }
    for h in extra.seen {
        if !seen.contains(&h) && seen.len() < super::MAX_SEEN_SPANS {
            seen.push(h);
        }
    }
    for e in extra.evidence {
        match evidence.iter().position(|x| x.service == e.service) {
            Some(i) => {
                let x = &mut evidence[i];
                x.spans += e.spans;
                x.errors += e.errors;
                x.slow += e.slow;
                x.last_bad = x.last_bad.max(e.last_bad);
                for t in e.traces {
                    if x.traces.len() < super::MAX_EXAMPLE_TRACES && !x.traces.contains(&t) {
                        x.traces.push(t);
                    }
                }
            }
            None if evidence.len() < super::MAX_EVIDENCE_SERVICES => evidence.push(e),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
