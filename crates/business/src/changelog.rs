//! State that moves with its partition: the [`BusinessState`] written to a compacted changelog
//! topic partitioned like its source, and read back by a partition's new owner (the Kafka Streams
//! pattern; `docs/partition-state.md`).
//!
//! **Routing.** The business events topic is keyed by order id (the gateway's co-partitioning
//! rule), so the partition an event came from is `murmur2(order id) mod partitions`, as the Java
//! client's default partitioner (and librdkafka's `murmur2_random`) compute it. A change is
//! produced to that partition number of the changelog, which must have as many partitions as the
//! events topic:
//!
//! | key | value | partition |
//! |---|---|---|
//! | `o/<order id>` | the checkpoint entry (`{"at_ms", "v"}`, [`crate::checkpoint`]) or a tombstone when the order was evicted or expired | `murmur2(order id)` |
//! | `c/<customer id>` | the entry, or a tombstone when removed (to every partition) | that of every order changed in the same checkpoint that names the customer (so each partition holding one of the customer's orders has the customer too); else `murmur2(customer id)` |
//! | `t/<trace id>` | the entry, or a tombstone when removed (to every partition) | `murmur2(order id of the link)`; else `murmur2(trace id)` |
//!
//! A customer's or trace link's removal (eviction, expiry) is produced as a tombstone to every
//! partition, since which ones hold it is not known once the value is gone; a sink that writes only
//! the partitions its replica owns (`bizpilot_kafka::changelog::KafkaChangelog::restrict_to_owned`)
//! drops the others. So compaction removes dead keys from the topic, and a restore does not bring
//! back a customer the previous owner had evicted.
//!
//! **Restore** ([`BusinessState::apply_changelog`], one partition at a time) is idempotent: within
//! a partition the last record of a key is its state (an order's tombstone removes the order; a
//! customer's or link's cancels the partition's earlier records of it but never removes what the
//! state holds, which may come from another partition); across partitions (a customer written to
//! several) a key the state already holds with a more recent update (`at_ms`) is kept. Applying the same records
//! twice gives the same state, so an at-least-once restore (a partition read again after a second
//! rebalance) is harmless.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bizpilot_core::storage::StorageOp;

use crate::checkpoint::{Entries, Entry, Restored, Taken, decode_entry, now_ms};
use crate::context::{OrderContext, TraceLink};
use crate::state::BusinessState;

/// One record of the changelog: `value` `None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Why the changelog could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangelogError {
    #[error("changelog topic {topic}: {reason}")]
    Produce { topic: String, reason: String },
    #[error("changelog topic {topic} partition {partition}: {reason}")]
    Restore {
        topic: String,
        partition: i32,
        reason: String,
    },
}

/// Where the changes go: a changelog topic (the Kafka one is `bizpilot_kafka::changelog`).
pub trait ChangelogSink: Send + Sync + std::fmt::Debug {
    /// Partitions of the changelog topic (as many as the source topic's).
    fn partitions(&self) -> i32;
    /// Writes `records`; returns once each is acknowledged by the broker (durable), or fails.
    fn send(&self, records: &[ChangelogRecord]) -> Result<(), ChangelogError>;
}

/// A record as read back from a changelog partition: key, and value or `None` for a tombstone.
pub type RawRecord = (Vec<u8>, Option<Vec<u8>>);

/// What one state made of a restored changelog partition ([`PartitionedState::restore_partition`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionRestored {
    /// Entries put back (orders, customers, links…).
    pub entries: usize,
    /// Records that could not be read (logged and skipped).
    pub unreadable: usize,
    /// What was put back, for the log (`orders=501 customers=258`).
    pub detail: String,
}

/// State partitioned like a source topic (the business events, keyed by order id) that moves with its
/// partitions: its changes go to a changelog topic ([`ChangelogSink`]) and a partition's new owner restores
/// them before it consumes the partition (`docs/partition-state.md`). The `kafka` receiver's `changelog`
/// option names the states it carries: the `business_state` extension ([`BusinessState`]), `order_kpi`
/// connectors (published under their id, `bizpilot_core::Extensions::publish`). Several states share one
/// changelog topic; each owns the records whose keys it wrote ([`PartitionedState::owns_key`]).
pub trait PartitionedState: Send + Sync {
    /// Whether a changelog record with this key is this state's.
    fn owns_key(&self, key: &[u8]) -> bool;
    /// Makes the state's checkpoints write their changes to `sink` too, and count as durable only once
    /// `sink` acknowledged them. An error says why not (already attached, no checkpoint to hold the acks).
    fn attach_changelog(&self, sink: std::sync::Arc<dyn ChangelogSink>) -> Result<(), String>;
    /// Applies the records of one changelog partition (this state's keys only, in write order; `None` is a
    /// tombstone), before any record of the source partition is processed. Idempotent.
    fn restore_partition(&self, partition: i32, records: Vec<RawRecord>) -> PartitionRestored;
    /// The source partitions this replica owns now (after a rebalance), of `partitions`. A state whose
    /// entries belong to one partition each drops the others (their new owner has restored them); one with
    /// shared entries may keep them.
    fn owned(&self, owned: &BTreeSet<i32>, partitions: i32);
}

impl PartitionedState for BusinessState {
    fn owns_key(&self, key: &[u8]) -> bool {
        matches!(key.get(..2), Some(b"o/" | b"c/" | b"t/"))
    }

    fn attach_changelog(&self, sink: std::sync::Arc<dyn ChangelogSink>) -> Result<(), String> {
        if BusinessState::attach_changelog(self, sink) {
            Ok(())
        } else {
            Err("already has a changelog (one receiver per business_state carries it)".into())
        }
    }

    fn restore_partition(&self, _partition: i32, records: Vec<RawRecord>) -> PartitionRestored {
        let r = self.apply_changelog(records);
        PartitionRestored {
            entries: r.orders + r.customers + r.traces,
            unreadable: r.unreadable,
            detail: format!("orders={} customers={} traces={}", r.orders, r.customers, r.traces),
        }
    }

    /// Kept: customers are shared between partitions (dropping them is not safe without reference counting),
    /// and no span of a moved order reaches this replica any more; the store's bound and TTL remove them.
    fn owned(&self, _owned: &BTreeSet<i32>, _partitions: i32) {}
}

/// Kafka's murmur2 hash of `data`, as the Java client's default partitioner computes it.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of a message keyed by `key` among `partitions`, as Kafka's default partitioner
/// chooses it (`toPositive(murmur2(key)) % partitions`).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % n) as i32
}

/// The changelog records of a checkpoint's `ops` (without the format marker), routed as the
/// module documentation says. `orders` and `traces` are the checkpoint's taken keys.
pub(crate) fn route(
    ops: &[StorageOp],
    orders: &[Taken<OrderContext>],
    traces: &[Taken<TraceLink>],
    partitions: i32,
) -> Vec<ChangelogRecord> {
    let mut customer_parts: HashMap<&str, BTreeSet<i32>> = HashMap::new();
    for (id, v) in orders {
        if let Some(c) = v.as_deref().and_then(OrderContext::customer_id) {
            customer_parts
                .entry(c)
                .or_default()
                .insert(partition_of(id, partitions));
        }
    }
    let link_order: HashMap<&str, &str> = traces
        .iter()
        .filter_map(|(id, v)| Some((&**id, v.as_deref()?.order_id.as_deref()?)))
        .collect();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let (key, value) = match op {
            StorageOp::Put(k, v) => (k, Some(v)),
            StorageOp::Delete(k) => (k, None),
        };
        let Ok(text) = std::str::from_utf8(key) else { continue };
        let mut push = |partition: i32| {
            out.push(ChangelogRecord {
                partition,
                key: key.clone(),
                value: value.cloned(),
            })
        };
        match text.split_at_checked(2) {
            Some(("o/", id)) => push(partition_of(id, partitions)),
            // A removed customer or trace link: which partitions hold it is not known once its value
            // is gone, so the tombstone goes to every partition (a sink restricted to the partitions it
            // owns writes only those: a replica speaks for its own partitions).
            Some(("c/" | "t/", _)) if value.is_none() => (0..partitions.max(1)).for_each(&mut push),
            Some(("c/", id)) => match customer_parts.get(id) {
                Some(parts) => parts.iter().for_each(|p| push(*p)),
                None => push(partition_of(id, partitions)),
            },
            Some(("t/", id)) => push(partition_of(link_order.get(id).copied().unwrap_or(id), partitions)),
            _ => {}
        }
    }
    out
}

impl BusinessState {
    /// Makes every checkpoint from now on also write to `sink` (and be durable only once `sink`
    /// acknowledged it); starts tracking changes. Returns false if a changelog was attached already.
    pub fn attach_changelog(&self, sink: std::sync::Arc<dyn ChangelogSink>) -> bool {
        self.track_changes();
        self.changelog.set(sink).is_ok()
    }

    /// The attached changelog, if any.
    pub fn changelog(&self) -> Option<&std::sync::Arc<dyn ChangelogSink>> {
        self.changelog.get()
    }

    /// Applies the records of one changelog partition (key, value or `None` for a tombstone), in
    /// the order they were written: the last record of a key is its state. A key the state already
    /// holds with a more recent update (from another partition, or a local event) is kept; an order's
    /// tombstone removes the order (it lives on this partition only), a customer's or trace link's
    /// only cancels the partition's earlier records of it (another partition may hold it, newer).
    /// See the module documentation for why this is idempotent. Returns what was put back.
    pub fn apply_changelog(&self, records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) -> Restored {
        let mut restored = Restored::default();
        // The records of one partition are in write order: the last one of a key is its state.
        // Each value is decoded once, here.
        let mut latest: HashMap<String, Option<(u64, Entry)>> = HashMap::new();
        for (key, value) in records {
            let key = match String::from_utf8(key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(e.as_bytes()), "changelog key not UTF-8, skipped");
                    restored.unreadable += 1;
                    continue;
                }
            };
            let entry = match value {
                None if matches!(key.split_at_checked(2), Some(("o/" | "c/" | "t/", _))) => None,
                None => {
                    warn_unreadable(&key, "unknown key", &mut restored);
                    continue;
                }
                Some(v) => match decode_entry(&key, &v) {
                    Ok((_, at, e)) => Some((at, e)),
                    Err(e) => {
                        warn_unreadable(&key, &e, &mut restored);
                        continue;
                    }
                },
            };
            latest.insert(key, entry);
        }
        let now = now_ms();
        let mut entries = Entries::default();
        for (key, entry) in latest {
            let Some((prefix, id)) = key.split_at_checked(2) else {
                continue;
            };
            match entry {
                None => {
                    if prefix == "o/" {
                        self.orders.remove(id);
                    }
                }
                Some((at, e)) => {
                    let age = Duration::from_millis(now.saturating_sub(at));
                    let held = match &e {
                        Entry::Order(_) => self.orders.age(id),
                        Entry::Customer(_) => self.customers.age(id),
                        Entry::Trace(_) => self.traces.age(id),
                    };
                    if held.is_none_or(|held| held >= age) {
                        entries.push(id, at, e);
                    }
                }
            }
        }
        // A running state: spans waiting in the enrich join for these orders go on at once.
        let announce: Vec<String> = entries.orders.iter().map(|(_, id, _)| id.clone()).collect();
        self.put_back_all(entries, now, &mut restored);
        for id in &announce {
            self.orders.announce(id);
        }
        restored
    }
}

fn warn_unreadable(key: &str, e: &str, restored: &mut Restored) {
    tracing::warn!(key = %key, error = %e, "changelog entry unreadable, skipped");
    restored.unreadable += 1;
}

/// A [`ChangelogSink`] in memory (tests, and a reference for the Kafka one).
#[derive(Debug, Default)]
pub struct MemoryChangelog {
    pub partitions: i32,
    /// Records per partition, in write order.
    pub log: std::sync::Mutex<HashMap<i32, Vec<ChangelogRecord>>>,
    /// When set, every send fails.
    pub fail: std::sync::atomic::AtomicBool,
}

impl MemoryChangelog {
    pub fn new(partitions: i32) -> Self {
        MemoryChangelog {
            partitions,
            ..Default::default()
        }
    }

    /// The records of `partition`, as a restore reads them.
    pub fn read(&self, partition: i32) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.get(&partition)
            .map(|r| r.iter().map(|r| (r.key.clone(), r.value.clone())).collect())
            .unwrap_or_default()
    }
}

impl ChangelogSink for MemoryChangelog {
    fn partitions(&self) -> i32 {
        self.partitions
    }

    fn send(&self, records: &[ChangelogRecord]) -> Result<(), ChangelogError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ChangelogError::Produce {
                topic: "memory".into(),
                reason: "failing on purpose".into(),
            });
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            log.entry(r.partition).or_default().push(r.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::event;
    use crate::state::StateConfig;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest.testMurmur2 (org.apache.kafka.common.utils).
        for (s, want) in [
            ("21", -973_932_308_i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(s.as_bytes()) as i32, want, "{s}");
        }
    }

    const P: i32 = 4;

    /// An owner that applies events of orders o0..o19 (customers c0..c4) and checkpoints them to
    /// a memory changelog.
    fn owner(log: &MemoryChangelog) -> BusinessState {
        let a = BusinessState::new("a", StateConfig::default());
        a.track_changes();
        for i in 0..20 {
            let (o, c, amount) = (format!("o{i}"), format!("c{}", i % 5), format!("EUR {i}.25"));
            a.apply(&event("order.placed", 10 + i, &o, Some(&c), Some(&amount)));
        }
        assert!(a.checkpoint_with(None, Some(log)).unwrap() > 0);
        a
    }

    #[tokio::test]
    async fn a_new_owner_of_a_partition_gets_exactly_its_orders_with_their_customers() {
        let log = MemoryChangelog::new(P);
        let a = owner(&log);
        for p in 0..P {
            let b = BusinessState::new("b", StateConfig::default());
            let r = b.apply_changelog(log.read(p));
            let mine: Vec<String> = (0..20)
                .map(|i| format!("o{i}"))
                .filter(|o| partition_of(o, P) == p)
                .collect();
            assert_eq!(r.orders, mine.len(), "partition {p}");
            for i in 0..20 {
                let o = format!("o{i}");
                assert_eq!(b.orders.peek(&o).is_some(), mine.contains(&o), "{o} on partition {p}");
            }
            for o in &mine {
                assert_eq!(b.orders.peek(o), a.orders.peek(o), "{o}");
                // The order's customer came with it: the join works on the new owner.
                let c = a.orders.peek(o).unwrap().customer_id().unwrap().to_string();
                assert_eq!(b.customers.peek(&c), a.customers.peek(&c), "{c} of {o}");
            }
        }
    }

    #[tokio::test]
    async fn restore_is_idempotent_and_a_tombstone_removes_an_evicted_order() {
        let log = MemoryChangelog::new(P);
        let a = owner(&log);
        // An update, then a removal.
        a.apply(&event("order.paid", 100, "o3", None, None));
        a.orders.remove("o7");
        assert_eq!(a.checkpoint_with(None, Some(&log)).unwrap(), 2);
        let p3 = partition_of("o3", P);
        let p7 = partition_of("o7", P);
        assert!(
            log.read(p7).iter().any(|(k, v)| k == b"o/o7" && v.is_none()),
            "a tombstone for o7"
        );

        let b = BusinessState::new("b", StateConfig::default());
        let once = b.apply_changelog(log.read(p3));
        b.apply_changelog(log.read(p7));
        let snapshot: Vec<_> = (0..20).map(|i| b.orders.peek(&format!("o{i}"))).collect();
        // At-least-once: the same partitions read again change nothing.
        let twice = b.apply_changelog(log.read(p3));
        b.apply_changelog(log.read(p7));
        let again: Vec<_> = (0..20).map(|i| b.orders.peek(&format!("o{i}"))).collect();
        assert_eq!(snapshot, again);
        assert!(once.orders > 0 && once.unreadable == 0 && twice.unreadable == 0);
        assert_eq!(b.orders.peek("o3"), a.orders.peek("o3"), "the update won");
        assert!(b.orders.peek("o7").is_none(), "the tombstone won");
    }

    #[tokio::test]
    async fn a_removed_customer_or_link_is_tombstoned_on_every_partition_and_not_restored() {
        let log = MemoryChangelog::new(P);
        let a = owner(&log);
        let link = "0102030405060708090a0b0c0d0e0f10";
        a.link_span(link, Some("c1"), Some("gold"));
        assert_eq!(a.checkpoint_with(None, Some(&log)).unwrap(), 1);
        let holders: Vec<i32> = (0..P)
            .filter(|p| log.read(*p).iter().any(|(k, v)| k == b"c/c1" && v.is_some()))
            .collect();
        assert!(!holders.is_empty());
        a.customers.remove("c1");
        a.traces.remove(link);
        assert_eq!(a.checkpoint_with(None, Some(&log)).unwrap(), 2);
        for p in 0..P {
            let recs = log.read(p);
            for key in [b"c/c1".to_vec(), format!("t/{link}").into_bytes()] {
                assert_eq!(
                    recs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.is_none()),
                    Some(true),
                    "{} tombstoned on partition {p}",
                    String::from_utf8_lossy(&key)
                );
            }
        }
        // A new owner of those partitions does not get them back.
        let b = BusinessState::new("b", StateConfig::default());
        for p in 0..P {
            let r = b.apply_changelog(log.read(p));
            assert_eq!(r.unreadable, 0);
        }
        assert!(b.customers.peek("c1").is_none() && b.traces.peek(link).is_none());
        assert!(b.customers.peek("c2").is_some(), "other customers restored");
        // A tombstone never removes a customer the state holds from elsewhere (another partition's event).
        let c = BusinessState::new("c", StateConfig::default());
        c.apply(&event("order.placed", 500, "o-elsewhere", Some("c1"), Some("USD 3.00")));
        let held = c.customers.peek("c1");
        for p in holders {
            c.apply_changelog(log.read(p));
        }
        assert_eq!(c.customers.peek("c1"), held);
    }

    #[tokio::test]
    async fn restored_orders_are_announced_to_waiters() {
        let log = MemoryChangelog::new(P);
        owner(&log);
        let b = BusinessState::new("b", StateConfig::default());
        let mut sub = b.orders.subscribe();
        let p = partition_of("o3", P);
        let r = b.apply_changelog(log.read(p));
        let mut seen = BTreeSet::new();
        while let Ok(k) = sub.try_recv() {
            seen.insert(k.to_string());
        }
        let want: BTreeSet<String> = (0..20)
            .map(|i| format!("o{i}"))
            .filter(|o| partition_of(o, P) == p)
            .collect();
        assert_eq!(r.orders, want.len());
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn a_failed_produce_commits_no_epoch_and_the_next_checkpoint_carries_the_changes() {
        let log = MemoryChangelog::new(P);
        let a = BusinessState::new("a", StateConfig::default());
        a.track_changes();
        a.apply(&event("order.placed", 1, "o1", Some("c1"), Some("USD 1.00")));
        let epoch = a.change_epoch();
        log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(a.checkpoint_with(None, Some(&log)).is_err());
        assert!(a.durable_epoch() < epoch, "not durable while the produce failed");
        log.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(a.checkpoint_with(None, Some(&log)).unwrap(), 2);
        assert!(a.durable_epoch() >= epoch);
        let b = BusinessState::new("b", StateConfig::default());
        b.apply_changelog(log.read(partition_of("o1", P)));
        assert_eq!(b.orders.peek("o1"), a.orders.peek("o1"));
    }

    #[tokio::test]
    async fn a_held_key_updated_later_than_the_changelog_entry_is_kept() {
        let log = MemoryChangelog::new(1);
        let a = BusinessState::new("a", StateConfig::default());
        a.track_changes();
        a.apply(&event("order.placed", 1, "o1", Some("c1"), Some("USD 1.00")));
        a.checkpoint_with(None, Some(&log)).unwrap();
        // Make the changelog entry look an hour old.
        let mut recs = log.read(0);
        for (k, v) in &mut recs {
            if k == b"o/o1" {
                let mut j: serde_json::Value = serde_json::from_slice(v.as_ref().unwrap()).unwrap();
                j["at_ms"] = serde_json::json!(now_ms() - 3_600_000 + 1000);
                *v = Some(serde_json::to_vec(&j).unwrap());
            }
        }
        let b = BusinessState::new("b", StateConfig::default());
        b.apply(&event("order.placed", 1, "o1", Some("c2"), Some("USD 2.00")));
        b.apply_changelog(recs);
        assert_eq!(b.orders.peek("o1").unwrap().customer_id(), Some("c2"));
    }
}
