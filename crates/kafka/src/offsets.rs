//! Per-partition offset tracking for at-least-once consumption.
//!
//! Every message handed to the pipeline is *in flight* until its acknowledgement arrives.
//! The offset that may be committed for a partition (the next offset to read after a
//! restart) is the contiguous low-water mark: the lowest offset still in flight or failed,
//! or one past the highest offset seen when nothing is outstanding. A message acknowledged
//! out of order never moves the mark past an earlier one that is still in flight, and a
//! failed message holds the mark until it is consumed again and delivered.
//!
//! A failure is resolved by a *rewind*: every entry at or after the failed offset is
//! forgotten (those messages will be read again from Kafka) and the mark stays at the
//! failed offset. Each tracked message carries a ticket number, so the late outcome of a
//! forgotten entry (or of an entry from before a revocation) is recognised and ignored.
//!
//! Offsets between tracked ones (transaction markers, compacted records) count as done.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Identifies one tracked message; its outcome is reported with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub tp: TopicPartition,
    pub offset: i64,
    pub(crate) number: u64,
}

/// What an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The entry was resolved (the commit mark may have moved).
    Recorded,
    /// The delivery failed: the partition needs a rewind to the returned offset.
    Failed(i64),
    /// The ticket was no longer tracked (rewound past, revoked, or reported twice).
    Stale,
}

/// One partition's outstanding offsets.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    /// In-flight offset → ticket number.
    in_flight: BTreeMap<i64, u64>,
    /// Lowest offset whose delivery failed and that was not rewound yet.
    failed: Option<i64>,
    /// Highest offset tracked (after a rewind to X: X - 1).
    high: Option<i64>,
    /// Last offset handed to the consumer's offset store.
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// Starts tracking `offset` under ticket `number` (unique for the tracker's lifetime).
    pub fn track(&mut self, offset: i64, number: u64) {
        self.in_flight.insert(offset, number);
        self.high = Some(self.high.map_or(offset, |h| h.max(offset)));
    }

    /// Records the outcome of ticket `number` for `offset`.
    pub fn resolve(&mut self, offset: i64, number: u64, delivered: bool) -> Outcome {
        if self.in_flight.get(&offset) != Some(&number) {
            return Outcome::Stale;
        }
        self.in_flight.remove(&offset);
        if delivered {
            Outcome::Recorded
        } else {
            let f = self.failed.map_or(offset, |f| f.min(offset));
            self.failed = Some(f);
            Outcome::Failed(f)
        }
    }

    /// The failed offset waiting for a rewind, if any.
    pub fn failed(&self) -> Option<i64> {
        self.failed
    }

    /// Forgets everything at or after the failed offset, which becomes the commit mark and the
    /// position to read again from. Returns that offset, or `None` when nothing failed.
    pub fn rewind(&mut self) -> Option<i64> {
        let at = self.failed.take()?;
        self.rewind_to(at);
        Some(at)
    }

    /// Forgets everything at or after `offset` (a message that could not be handed to the
    /// pipeline at all): reading starts again there.
    pub fn rewind_to(&mut self, offset: i64) {
        self.in_flight.retain(|&o, _| o < offset);
        if self.failed.is_some_and(|f| f >= offset) {
            self.failed = None;
        }
        self.high = Some(offset - 1);
    }

    /// The contiguous low-water mark: the next offset to read after a restart.
    pub fn committable(&self) -> Option<i64> {
        let first = self.in_flight.keys().next().copied();
        [first, self.failed, self.high.map(|h| h + 1)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The mark when it moved past what was last stored.
    pub fn to_store(&self) -> Option<i64> {
        let c = self.committable()?;
        match self.stored {
            Some(s) if c <= s => None,
            _ => Some(c),
        }
    }

    /// Records that `offset` was stored.
    pub fn set_stored(&mut self, offset: i64) {
        self.stored = Some(self.stored.map_or(offset, |s| s.max(offset)));
    }

    /// Messages whose outcome is still unknown.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing in flight and no failure pending.
    pub fn is_settled(&self) -> bool {
        self.in_flight.is_empty() && self.failed.is_none()
    }
}

/// The offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<TopicPartition, PartitionOffsets>,
    /// Ticket numbers are never reused, so an outcome from before a revocation or rewind is stale.
    next_ticket: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a partition (on assignment); a partition already tracked is kept.
    pub fn assign(&mut self, tp: TopicPartition) {
        self.parts.entry(tp).or_default();
    }

    /// Stops tracking a partition (after revocation); its outstanding tickets become stale.
    pub fn remove(&mut self, tp: &TopicPartition) -> Option<PartitionOffsets> {
        self.parts.remove(tp)
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionOffsets> {
        self.parts.get(tp)
    }

    pub fn get_mut(&mut self, tp: &TopicPartition) -> Option<&mut PartitionOffsets> {
        self.parts.get_mut(tp)
    }

    /// Tracks a message of an assigned partition (assigning it if needed).
    pub fn track(&mut self, tp: &TopicPartition, offset: i64) -> Ticket {
        self.next_ticket += 1;
        let number = self.next_ticket;
        self.parts.entry(tp.clone()).or_default().track(offset, number);
        Ticket {
            tp: tp.clone(),
            offset,
            number,
        }
    }

    /// Records a ticket's outcome.
    pub fn resolve(&mut self, ticket: &Ticket, delivered: bool) -> Outcome {
        match self.parts.get_mut(&ticket.tp) {
            Some(p) => p.resolve(ticket.offset, ticket.number, delivered),
            None => Outcome::Stale,
        }
    }

    pub fn partitions(&self) -> impl Iterator<Item = (&TopicPartition, &PartitionOffsets)> {
        self.parts.iter()
    }

    pub fn partitions_mut(&mut self) -> impl Iterator<Item = (&TopicPartition, &mut PartitionOffsets)> {
        self.parts.iter_mut()
    }

    /// Messages in flight over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(PartitionOffsets::in_flight).sum()
    }

    /// Partitions whose mark moved past what was stored, with the mark.
    pub fn to_store(&self) -> Vec<(TopicPartition, i64)> {
        let mut v: Vec<_> = self
            .parts
            .iter()
            .filter_map(|(tp, p)| p.to_store().map(|o| (tp.clone(), o)))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        let tickets: Vec<Ticket> = (100..105).map(|o| t.track(&tp(0), o)).collect();
        let p = |t: &OffsetTracker| t.get(&tp(0)).unwrap().committable();
        assert_eq!(p(&t), Some(100));
        assert_eq!(t.resolve(&tickets[2], true), Outcome::Recorded);
        assert_eq!(t.resolve(&tickets[4], true), Outcome::Recorded);
        assert_eq!(p(&t), Some(100), "102 and 104 done, 100 still in flight");
        t.resolve(&tickets[0], true);
        assert_eq!(p(&t), Some(101));
        t.resolve(&tickets[1], true);
        assert_eq!(p(&t), Some(103), "102 was already done");
        t.resolve(&tickets[3], true);
        assert_eq!(p(&t), Some(105), "everything done: one past the highest");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_failure_holds_the_mark_until_rewound_and_redelivered() {
        let mut t = OffsetTracker::new();
        let k: Vec<Ticket> = (10..15).map(|o| t.track(&tp(1), o)).collect();
        t.resolve(&k[0], true);
        assert_eq!(t.resolve(&k[2], false), Outcome::Failed(12));
        // Later successes do not move the mark past the failure.
        t.resolve(&k[3], true);
        t.resolve(&k[4], true);
        t.resolve(&k[1], true);
        let part = t.get_mut(&tp(1)).unwrap();
        assert_eq!(part.committable(), Some(12));
        assert_eq!(part.failed(), Some(12));
        assert_eq!(part.rewind(), Some(12));
        assert_eq!(part.rewind(), None, "a rewind happens once");
        assert_eq!(
            part.committable(),
            Some(12),
            "reading starts again at the failed offset"
        );
        // Re-consumed: 12, 13, 14 come again and are delivered.
        let again: Vec<Ticket> = (12..15).map(|o| t.track(&tp(1), o)).collect();
        for a in &again {
            t.resolve(a, true);
        }
        assert_eq!(t.get(&tp(1)).unwrap().committable(), Some(15));
    }

    #[test]
    fn a_rewind_keeps_earlier_in_flight_entries_and_ignores_stale_outcomes() {
        let mut t = OffsetTracker::new();
        let k: Vec<Ticket> = (0..6).map(|o| t.track(&tp(0), o)).collect();
        t.resolve(&k[3], false);
        t.get_mut(&tp(0)).unwrap().rewind();
        // 0..2 are still in flight: their acks count.
        assert_eq!(t.get(&tp(0)).unwrap().in_flight(), 3);
        // 4 and 5 were forgotten: their late outcomes are stale, even failures.
        assert_eq!(t.resolve(&k[4], true), Outcome::Stale);
        assert_eq!(t.resolve(&k[5], false), Outcome::Stale);
        // 3 is read again with a new ticket; the old ticket's outcome is stale.
        let k3 = t.track(&tp(0), 3);
        assert_eq!(t.resolve(&k[3], true), Outcome::Stale);
        for x in &k[0..3] {
            assert_eq!(t.resolve(x, true), Outcome::Recorded);
        }
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(3));
        t.resolve(&k3, true);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(4));
        assert_eq!(t.resolve(&k3, true), Outcome::Stale, "reported twice");
    }

    #[test]
    fn two_failures_rewind_to_the_lowest() {
        let mut t = OffsetTracker::new();
        let k: Vec<Ticket> = (0..4).map(|o| t.track(&tp(0), o)).collect();
        assert_eq!(t.resolve(&k[2], false), Outcome::Failed(2));
        assert_eq!(t.resolve(&k[1], false), Outcome::Failed(1));
        t.resolve(&k[0], true);
        assert_eq!(t.get_mut(&tp(0)).unwrap().rewind(), Some(1));
        assert_eq!(t.resolve(&k[3], true), Outcome::Stale);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(1));
    }

    #[test]
    fn refused_message_rewinds_without_a_failure() {
        let mut t = OffsetTracker::new();
        let k: Vec<Ticket> = (0..3).map(|o| t.track(&tp(0), o)).collect();
        // 2 could not enter the pipeline: reading restarts there.
        t.get_mut(&tp(0)).unwrap().rewind_to(2);
        assert_eq!(t.resolve(&k[2], false), Outcome::Stale);
        t.resolve(&k[0], true);
        t.resolve(&k[1], true);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(2));
        assert!(t.get(&tp(0)).unwrap().is_settled());
    }

    #[test]
    fn gaps_between_offsets_count_as_done() {
        let mut t = OffsetTracker::new();
        let a = t.track(&tp(0), 5);
        let b = t.track(&tp(0), 9);
        t.resolve(&b, true);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(5));
        t.resolve(&a, true);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), Some(10));
    }

    #[test]
    fn stores_only_forward_moves() {
        let mut t = OffsetTracker::new();
        assert!(t.to_store().is_empty(), "nothing tracked: nothing to store");
        let a = t.track(&tp(0), 0);
        let b = t.track(&tp(1), 7);
        assert_eq!(t.to_store(), vec![(tp(0), 0), (tp(1), 7)]);
        t.get_mut(&tp(0)).unwrap().set_stored(0);
        t.get_mut(&tp(1)).unwrap().set_stored(7);
        assert!(t.to_store().is_empty());
        t.resolve(&a, true);
        assert_eq!(t.to_store(), vec![(tp(0), 1)]);
        t.resolve(&b, true);
        assert_eq!(t.to_store(), vec![(tp(0), 1), (tp(1), 8)]);
    }

    #[test]
    fn revocation_makes_outstanding_tickets_stale() {
        let mut t = OffsetTracker::new();
        let a = t.track(&tp(0), 0);
        let b = t.track(&tp(0), 1);
        t.resolve(&a, true);
        let gone = t.remove(&tp(0)).unwrap();
        assert_eq!(gone.committable(), Some(1), "what is done is committed at revocation");
        assert_eq!(t.resolve(&b, true), Outcome::Stale);
        // Assigned again later: a fresh start, old tickets still stale.
        t.assign(tp(0));
        assert_eq!(t.resolve(&b, true), Outcome::Stale);
        assert_eq!(t.get(&tp(0)).unwrap().committable(), None);
    }
}
