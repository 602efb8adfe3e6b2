//! `order_kpi`'s open orders move with their Kafka partition (`docs/partition-state.md`).
//!
//! [`KpiPartitions`] is the connector's [`PartitionedState`], published under the connector's id
//! ([`bizpilot_core::Extensions::publish`]) so that the `kafka` receiver of the business events can name it in its
//! `changelog.state` and:
//!
//! - attach the changelog topic: from then on every checkpoint (`storage` is required) also writes the orders that
//!   changed since the last one (records keyed `kpi[<connector id>]/<order id>`, tombstones when an order left the
//!   state, see [`super::engine::changelog`]) after the local snapshot and before the checkpoint counts, so the
//!   acknowledgements of the batches it holds (and so their Kafka offsets) wait until their changes are in the
//!   changelog too;
//! - restore a newly assigned partition's records before any record of that partition is consumed: they are decoded
//!   in the rebalance callback and queued; the connector's stage applies the queue before it ingests its next batch
//!   (no batch of the partition can come earlier) and before its final evaluation;
//! - say which partitions this replica owns after each rebalance: the stage drops the open orders of the others
//!   (their new owner restored them), without counting them, so the replicas' figures add up.
//!
//! The engine is owned by the stage's thread; this handle shares only the queue and the changelog sink.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bizpilot_business::changelog::{ChangelogSink, PartitionRestored, PartitionedState, RawRecord, partition_of};

use super::engine::Engine;
use super::engine::changelog::{RestoredOrder, decode_record};

/// What the rebalance callback asks of the stage.
enum Change {
    /// One changelog partition's records, decoded, in write order.
    Restore(i32, Vec<(Box<str>, Option<RestoredOrder>)>),
    /// The source partitions owned now, of so many.
    Own(BTreeSet<i32>, i32),
}

/// An `order_kpi` connector's state as a [`PartitionedState`] (see the module).
pub struct KpiPartitions {
    connector: String,
    prefix: String,
    /// Whether the connector checkpoints (`storage`): a changelog needs its acknowledgement hold.
    checkpointed: bool,
    sink: OnceLock<Arc<dyn ChangelogSink>>,
    queue: Mutex<Vec<Change>>,
    queued: AtomicBool,
    /// Set by a rebalance: the next checkpoint writes every order again (see [`KpiPartitions::take_rewrite`]).
    rewrite: AtomicBool,
    restored: metrics::Counter,
    dropped: metrics::Counter,
}

impl std::fmt::Debug for KpiPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KpiPartitions")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl KpiPartitions {
    pub fn new(connector: &str, checkpointed: bool) -> Self {
        KpiPartitions {
            connector: connector.to_string(),
            prefix: format!("kpi[{connector}]/"),
            checkpointed,
            sink: OnceLock::new(),
            queue: Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            rewrite: AtomicBool::new(false),
            restored: metrics::counter!("bizpilot_connector_order_kpi_changelog_restored_orders_total",
                "connector" => connector.to_string()),
            dropped: metrics::counter!("bizpilot_connector_order_kpi_changelog_dropped_orders_total",
                "connector" => connector.to_string()),
        }
    }

    /// The key prefix of this connector's changelog records.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The attached changelog, if any.
    pub fn sink(&self) -> Option<&Arc<dyn ChangelogSink>> {
        self.sink.get()
    }

    /// Whether a rebalance happened since the last call: then the next checkpoint writes every order of the owned
    /// partitions, not only the changed ones. The changelog writes owned partitions only, and between a revocation
    /// and the next assignment (an eager rebalance revokes everything first) a checkpoint's changes of a partition
    /// kept may have been skipped.
    pub fn take_rewrite(&self) -> bool {
        self.rewrite.swap(false, Ordering::AcqRel)
    }

    fn push(&self, c: Change) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(c);
        self.queued.store(true, Ordering::Release);
    }

    /// Applies what the rebalance callbacks queued (restored partitions, partitions that moved away) to `engine`.
    /// Cheap when nothing is queued.
    pub fn apply(&self, engine: &mut Engine) {
        if !self.queued.swap(false, Ordering::Acquire) {
            return;
        }
        let changes = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        for c in changes {
            match c {
                Change::Restore(p, records) => {
                    let n = records.len();
                    let started = std::time::Instant::now();
                    let applied = engine.apply_changelog(records);
                    self.restored.increment(applied as u64);
                    tracing::info!(connector = %self.connector, partition = p, records = n, orders = applied,
                        open_orders = engine.open_orders(), seconds = started.elapsed().as_secs_f64(),
                        "order_kpi partition restored from the changelog");
                }
                Change::Own(owned, partitions) => {
                    let dropped = engine.retain_orders(|id| owned.contains(&partition_of(id, partitions)));
                    self.dropped.increment(dropped as u64);
                    if dropped > 0 {
                        tracing::info!(connector = %self.connector, dropped, open_orders = engine.open_orders(),
                            owned = %owned.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                            "order_kpi dropped the open orders of partitions another replica owns now");
                    }
                }
            }
        }
    }
}

impl PartitionedState for KpiPartitions {
    fn owns_key(&self, key: &[u8]) -> bool {
        key.starts_with(self.prefix.as_bytes())
    }

    fn attach_changelog(&self, sink: Arc<dyn ChangelogSink>) -> Result<(), String> {
        if !self.checkpointed {
            return Err(format!(
                "{} needs `storage`: its checkpoint holds the acknowledgements until the changelog has the changes",
                self.connector
            ));
        }
        self.sink
            .set(sink)
            .map_err(|_| format!("{} already has a changelog", self.connector))
    }

    fn restore_partition(&self, partition: i32, records: Vec<RawRecord>) -> PartitionRestored {
        let mut out = PartitionRestored::default();
        let mut decoded = Vec::with_capacity(records.len());
        let mut live = std::collections::HashMap::new();
        for (key, value) in records {
            let Some(id) = key
                .strip_prefix(self.prefix.as_bytes())
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                out.unreadable += 1;
                continue;
            };
            let id: Box<str> = id.into();
            let r = match value {
                None => None,
                Some(v) => match decode_record(&v) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(connector = %self.connector, partition, order = %id, error = %e,
                            "order_kpi changelog record unreadable, skipped");
                        out.unreadable += 1;
                        continue;
                    }
                },
            };
            live.insert(id.clone(), r.is_some());
            decoded.push((id, r));
        }
        out.entries = live.values().filter(|l| **l).count();
        out.detail = format!("orders={}", out.entries);
        self.push(Change::Restore(partition, decoded));
        out
    }

    fn owned(&self, owned: &BTreeSet<i32>, partitions: i32) {
        self.push(Change::Own(owned.clone(), partitions));
        self.rewrite.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::changelog::MemoryChangelog;

    #[test]
    fn a_changelog_needs_storage_and_only_one_is_attached() {
        let memory = KpiPartitions::new("order_kpi", false);
        let err = memory.attach_changelog(Arc::new(MemoryChangelog::new(4))).unwrap_err();
        assert!(err.contains("needs `storage`"), "{err}");
        let durable = KpiPartitions::new("order_kpi/b", true);
        durable.attach_changelog(Arc::new(MemoryChangelog::new(4))).unwrap();
        assert!(durable.attach_changelog(Arc::new(MemoryChangelog::new(4))).is_err());
        assert_eq!(durable.sink().map(|s| s.partitions()), Some(4));
    }

    #[test]
    fn keys_are_told_apart_from_the_join_state_and_other_connectors() {
        let a = KpiPartitions::new("order_kpi", true);
        let b = KpiPartitions::new("order_kpi/b", true);
        assert!(a.owns_key(b"kpi[order_kpi]/o-1"));
        assert!(!a.owns_key(b"kpi[order_kpi/b]/o-1") && b.owns_key(b"kpi[order_kpi/b]/o-1"));
        assert!(!a.owns_key(b"o/o-1") && !a.owns_key(b"c/c-1"));
        // A record of another state's or an unreadable value: counted, not applied.
        let r = a.restore_partition(
            0,
            vec![
                (b"o/o-1".to_vec(), None),
                (b"kpi[order_kpi]/o-2".to_vec(), Some(vec![9, 9])),
                (b"kpi[order_kpi]/o-3".to_vec(), None),
            ],
        );
        assert_eq!((r.entries, r.unreadable), (0, 2));
    }

    #[test]
    fn a_rebalance_asks_for_a_full_write() {
        let a = KpiPartitions::new("order_kpi", true);
        assert!(!a.take_rewrite());
        a.owned(&BTreeSet::from([1]), 4);
        assert!(a.take_rewrite());
        assert!(!a.take_rewrite(), "once");
    }
}
