//! What the connector has found, shared with its HTTP API: impact records, incidents and per-operation totals.
//! The connector's task writes it; API requests read it. Both are bounded (`impact.max_records`,
//! `incident.max_retained`): the oldest go first.
//!
//! Records are also kept **in the API's order** (highest cart value first, unknown values last, then customer,
//! time and id), one ordered index per operation, maintained as records come and go (O(log n) each). A page of
//! `GET /api/v1/impact` (the live board reads one every second) then costs O(offset + limit) under the lock,
//! not a sort of every record. The fields the order depends on (`cart_value`, `customer`, `time`,
//! `operation`) never change after insertion: [`Book::record_mut`] hands out a [`RecordMut`] that can only
//! change the others.

use bizpilot_business::LineItem;
use bizpilot_core::{Money, MoneyTotals};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque, btree_set};
use std::iter::Peekable;
use std::ops::Deref;

/// A failed span: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    pub service: String,
    pub span_name: String,
    pub status_message: String,
}

/// One affected customer in one incident, or in no incident yet (`incident_seq` 0, `incident_id` empty):
/// every customer with a failed operation has a record, whether or not an incident covers the failure.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImpactRecord {
    pub id: u64,
    pub operation: String,
    /// 0: no incident (yet).
    pub incident_seq: u64,
    pub incident_id: String,
    /// The revenue-at-risk episode of the customer's first failure (groups unattributed failures).
    pub episode: u64,
    /// The business key (never shown: `customer` is what leaves the process).
    pub key: Box<str>,
    /// The customer as shown (its keyed hash with `redact_customer`).
    pub customer: Option<String>,
    pub tier: Option<String>,
    pub cart_value: Option<Money>,
    pub items: Vec<LineItem>,
    pub item_count: Option<i64>,
    pub order_id: Option<String>,
    pub failure: Cause,
    pub root_cause: Option<Cause>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Event time of the customer's first failure in the incident.
    pub time: u64,
    pub failed_attempts: u32,
    /// Time of the success that recovered the sale, if any.
    pub recovered: Option<u64>,
}

/// A record's place in the API's order: highest cart value first (unknown values last), then customer, then
/// time, then id. (Values of different currencies compare by their nano-units, as the API always did.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Rank {
    unknown_value: bool,
    value: Reverse<i128>,
    customer: Option<String>,
    time: u64,
    id: u64,
}

impl Rank {
    fn of(r: &ImpactRecord) -> Rank {
        Rank {
            unknown_value: r.cart_value.is_none(),
            value: Reverse(r.cart_value.map_or(0, |m| m.nanos())),
            customer: r.customer.clone(),
            time: r.time,
            id: r.id,
        }
    }
}

/// A record open for the changes the engine makes after insertion (failed attempts, recovery, its incident
/// through [`Book::assign`]); everything else is read-only, so the API's order stays right.
pub struct RecordMut<'a>(&'a mut ImpactRecord);

impl Deref for RecordMut<'_> {
    type Target = ImpactRecord;
    fn deref(&self) -> &ImpactRecord {
        self.0
    }
}

impl RecordMut<'_> {
    pub fn add_failed_attempts(&mut self, n: u32) {
        self.0.failed_attempts = self.0.failed_attempts.saturating_add(n);
    }

    pub fn set_recovered(&mut self, time: u64) {
        self.0.recovered = Some(time);
    }
}

/// Records of several operations in the API's order: a merge of the operations' ordered indexes.
pub struct ByValue<'a> {
    records: &'a BTreeMap<u64, ImpactRecord>,
    heads: Vec<Peekable<btree_set::Iter<'a, Rank>>>,
}

impl<'a> Iterator for ByValue<'a> {
    type Item = &'a ImpactRecord;

    fn next(&mut self) -> Option<&'a ImpactRecord> {
        loop {
            let mut best: Option<(usize, &Rank)> = None;
            for (i, h) in self.heads.iter_mut().enumerate() {
                if let Some(r) = h.peek()
                    && best.is_none_or(|(_, b)| *r < b)
                {
                    best = Some((i, r));
                }
            }
            let (i, _) = best?;
            let rank = self.heads[i].next()?;
            // Always present (the index follows the records); skipped rather than trusted otherwise.
            if let Some(r) = self.records.get(&rank.id) {
                return Some(r);
            }
        }
    }
}

/// Open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IncidentState {
    Open,
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Closed => "closed",
        }
    }
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IncidentKind {
    /// The operation's failure rate is above normal.
    Failures,
    /// The operation succeeds but its share of slow operations is above normal.
    Latency,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Failures => "failures",
            IncidentKind::Latency => "latency",
        }
    }
}

/// Why an incident closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CloseReason {
    /// Event time showed the rate back to normal.
    Recovered,
    /// No spans arrived for `incident.idle_timeout` (wall clock).
    Idle,
    /// The connector stopped.
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Recovered => "recovered",
            CloseReason::Idle => "idle",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// An incident of one operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    pub seq: u64,
    pub id: String,
    pub operation: String,
    pub kind: IncidentKind,
    pub state: IncidentState,
    pub closed_reason: Option<CloseReason>,
    /// The operation's normal rate (of failures, or of slow operations) when the incident opened.
    pub baseline_rate: f64,
    /// Event time the failures began (dated back, see [`super::incident`]).
    pub start: u64,
    pub end: Option<u64>,
    /// The evaluation that opened it.
    pub detected: u64,
    pub last_evaluated: u64,
    pub evaluations: u64,
    pub failure_rate: f64,
    pub peak_failure_rate: f64,
    pub window_operations: u64,
    pub window_failed: u64,
    pub failed_operations: u64,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue_at_risk: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub recovered_revenue: MoneyTotals,
    pub affected_customers: u64,
    /// (service, status message) → failed operations.
    pub causes: HashMap<(String, String), u64>,
}

impl Incident {
    /// The `n` most frequent causes: (service, status message, count), most frequent first.
    pub fn top_causes(&self, n: usize) -> Vec<(String, String, u64)> {
        let mut v: Vec<(String, String, u64)> = self
            .causes
            .iter()
            .map(|((s, m), c)| (s.clone(), m.clone(), *c))
            .collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        v.truncate(n);
        v
    }
}

/// Distinct affected customers of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowCount {
    pub start: u64,
    pub end: u64,
    pub customers: u64,
    pub exact: bool,
}

/// Totals of one operation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperationSummary {
    pub name: String,
    pub operations: u64,
    pub successful: u64,
    pub failed: u64,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue_at_risk: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub recovered_revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub lost_revenue: MoneyTotals,
    /// Revenue at risk neither recovered nor lost yet (episodes still open).
    #[serde(with = "super::snapshot::money_totals")]
    pub open_at_risk: MoneyTotals,
    /// The window holding the watermark.
    pub current_window: Option<WindowCount>,
    /// Closed windows with affected customers, oldest first.
    pub windows: VecDeque<WindowCount>,
    pub open_incident: Option<String>,
    /// Operations seen but not final yet (newer than the watermark).
    pub provisional: Provisional,
}

/// Figures of the operations not final yet: published at once, replaced by the final figures when the
/// watermark passes them. `revenue_at_risk` counts a customer's first pending failure unless an episode of
/// theirs is already at risk (the final figure also ends episodes and recovers sales, so it may differ).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Provisional {
    pub operations: u64,
    pub failed: u64,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue_at_risk: MoneyTotals,
    /// Distinct customers with a pending failure.
    pub affected_customers: u64,
    /// Event time of the newest pending operation.
    pub until: u64,
}

/// A goal's current period as of the watermark (for the API and the live board).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GoalSummary {
    pub name: String,
    pub operation: String,
    pub target: Money,
    pub period: u64,
    pub period_start: Option<u64>,
    /// Revenue of the goal's operation so far in the current period.
    pub achieved: Money,
    /// Revenue projected at the period's end at the pace so far (exact: achieved × period ÷ elapsed).
    pub projected: Money,
    pub attainment: f64,
    pub projected_attainment: f64,
}

/// The shared findings.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Book {
    pub operations: Vec<OperationSummary>,
    pub goals: Vec<GoalSummary>,
    /// Event time up to which everything is final.
    pub watermark: u64,
    records: BTreeMap<u64, ImpactRecord>,
    index: HashMap<(u64, Box<str>), u64>,
    /// Per operation: its records in the API's order.
    by_value: HashMap<String, BTreeSet<Rank>>,
    incidents: BTreeMap<u64, Incident>,
    max_records: usize,
    max_incidents: usize,
    pub evicted_records: u64,
}

impl Book {
    pub fn new(operations: Vec<String>, max_records: usize, max_incidents: usize) -> Self {
        Book {
            operations: operations
                .into_iter()
                .map(|name| OperationSummary {
                    name,
                    ..Default::default()
                })
                .collect(),
            max_records: max_records.max(1),
            max_incidents: max_incidents.max(1),
            ..Default::default()
        }
    }

    fn index_key(incident_seq: u64, operation: &str, key: &str) -> (u64, Box<str>) {
        if incident_seq == 0 {
            (0, format!("{operation}\u{1}{key}").into())
        } else {
            (incident_seq, Box::from(key))
        }
    }

    /// The record of `key` in incident `seq`.
    pub fn record_of(&self, incident_seq: u64, key: &str) -> Option<u64> {
        self.index.get(&(incident_seq, Box::<str>::from(key))).copied()
    }

    /// The newest record of `key` of `operation` that no incident covers.
    pub fn unattributed_of(&self, operation: &str, key: &str) -> Option<u64> {
        self.index.get(&Self::index_key(0, operation, key)).copied()
    }

    /// Names incident `seq` on an unattributed record (it then counts as the customer's record in it).
    pub fn assign(&mut self, id: u64, incident_seq: u64, incident_id: &str) -> Option<&ImpactRecord> {
        let r = self.records.get_mut(&id)?;
        if r.incident_seq != 0 {
            return Some(r);
        }
        let old = Self::index_key(0, &r.operation, &r.key);
        if self.index.get(&old) == Some(&id) {
            self.index.remove(&old);
        }
        r.incident_seq = incident_seq;
        r.incident_id = incident_id.to_string();
        self.index
            .insert(Self::index_key(incident_seq, &r.operation, &r.key), id);
        Some(r)
    }

    pub fn record_mut(&mut self, id: u64) -> Option<RecordMut<'_>> {
        self.records.get_mut(&id).map(RecordMut)
    }

    pub fn record(&self, id: u64) -> Option<&ImpactRecord> {
        self.records.get(&id)
    }

    /// Adds a record; the oldest go when more than `max_records` are held.
    pub fn insert_record(&mut self, r: ImpactRecord) {
        self.index
            .insert(Self::index_key(r.incident_seq, &r.operation, &r.key), r.id);
        let rank = Rank::of(&r);
        let operation = r.operation.clone();
        if let Some(old) = self.records.insert(r.id, r) {
            // An id is never reused; should it be, the replaced record leaves the order.
            self.unrank(&old);
        }
        self.by_value.entry(operation).or_default().insert(rank);
        while self.records.len() > self.max_records {
            let Some((_, old)) = self.records.pop_first() else {
                break;
            };
            self.unindex(&old);
            self.evicted_records += 1;
        }
    }

    fn unrank(&mut self, r: &ImpactRecord) {
        if let Some(set) = self.by_value.get_mut(&r.operation) {
            set.remove(&Rank::of(r));
        }
    }

    fn unindex(&mut self, r: &ImpactRecord) {
        let k = Self::index_key(r.incident_seq, &r.operation, &r.key);
        if self.index.get(&k) == Some(&r.id) {
            self.index.remove(&k);
        }
        self.unrank(r);
    }

    /// Removes a record (merged into another).
    pub fn remove_record(&mut self, id: u64) -> Option<ImpactRecord> {
        let r = self.records.remove(&id)?;
        self.unindex(&r);
        Some(r)
    }

    /// Every record, oldest first.
    /// Impact records and incidents held (bounded by `impact.max_records` and the incidents' bound).
    pub fn held(&self) -> (usize, usize) {
        (self.records.len(), self.incidents.len())
    }

    pub fn records(&self) -> impl Iterator<Item = &ImpactRecord> {
        self.records.values()
    }

    /// The records of `operation` (of every operation when `None`) in the API's order — highest cart value
    /// first, unknown values last, then customer, time and id — and how many there are. Lazy: taking a page
    /// costs O(offset + limit) steps (times the number of operations when `None`), whatever the total.
    pub fn by_value(&self, operation: Option<&str>) -> (usize, ByValue<'_>) {
        let sets: Vec<&BTreeSet<Rank>> = match operation {
            Some(o) => self.by_value.get(o).into_iter().collect(),
            None => self.by_value.values().collect(),
        };
        let total = sets.iter().map(|s| s.len()).sum();
        let heads = sets.into_iter().map(|s| s.iter().peekable()).collect();
        (
            total,
            ByValue {
                records: &self.records,
                heads,
            },
        )
    }

    pub fn incident_mut(&mut self, seq: u64) -> Option<&mut Incident> {
        self.incidents.get_mut(&seq)
    }

    pub fn incident(&self, seq: u64) -> Option<&Incident> {
        self.incidents.get(&seq)
    }

    /// Adds an incident; the oldest closed ones go beyond `max_retained`.
    pub fn insert_incident(&mut self, i: Incident) {
        self.incidents.insert(i.seq, i);
        while self.incidents.len() > self.max_incidents {
            let oldest_closed = self
                .incidents
                .iter()
                .find(|(_, i)| i.state == IncidentState::Closed)
                .map(|(k, _)| *k);
            match oldest_closed {
                Some(k) => {
                    self.incidents.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Incidents, oldest first.
    pub fn incidents(&self) -> impl DoubleEndedIterator<Item = &Incident> {
        self.incidents.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, incident: u64, key: &str) -> ImpactRecord {
        ImpactRecord {
            id,
            operation: "checkout".into(),
            incident_seq: incident,
            incident_id: format!("i{incident}"),
            episode: 0,
            key: key.into(),
            customer: Some(key.into()),
            tier: None,
            cart_value: None,
            items: Vec::new(),
            item_count: None,
            order_id: None,
            failure: Cause {
                service: "checkout".into(),
                span_name: "x".into(),
                status_message: "boom".into(),
            },
            root_cause: None,
            trace_id: [1; 16],
            span_id: [2; 8],
            time: id,
            failed_attempts: 1,
            recovered: None,
        }
    }

    #[test]
    fn records_are_bounded_and_indexed() {
        let mut b = Book::new(vec!["checkout".into()], 3, 2);
        for i in 0..5 {
            b.insert_record(record(i, 1, &format!("c{i}")));
        }
        assert_eq!(b.records().count(), 3);
        assert_eq!(b.evicted_records, 2);
        assert_eq!(b.record_of(1, "c0"), None);
        assert_eq!(b.record_of(1, "c4"), Some(4));
    }

    /// The API's order, written out independently of `Rank`: known values before unknown ones, higher
    /// values first, then customer (none first), time, id.
    fn expected_order(b: &Book, operation: Option<&str>) -> Vec<u64> {
        let mut v: Vec<&ImpactRecord> = b
            .records()
            .filter(|r| operation.is_none_or(|o| r.operation == o))
            .collect();
        v.sort_by(|a, b| {
            let key = |r: &ImpactRecord| match r.cart_value {
                Some(m) => (0u8, -m.nanos()),
                None => (1, 0),
            };
            key(a)
                .cmp(&key(b))
                .then_with(|| a.customer.cmp(&b.customer))
                .then_with(|| a.time.cmp(&b.time))
                .then_with(|| a.id.cmp(&b.id))
        });
        v.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn records_stay_in_value_order_through_inserts_merges_evictions_and_updates() {
        let usd = bizpilot_core::Currency::USD;
        let mut b = Book::new(vec!["checkout".into(), "payment".into()], 300, 10);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for id in 0..2000u64 {
            let mut r = record(id, next(3), &format!("c{}", next(50)));
            r.operation = if next(4) == 0 { "payment" } else { "checkout" }.into();
            // Few distinct values, so ties fall through to customer, time and id.
            r.cart_value = (next(5) != 0).then(|| Money::from_minor(next(20) as i64 * 250, usd));
            r.customer = (next(10) != 0).then(|| r.key.to_string());
            r.time = next(100);
            b.insert_record(r);
            match next(6) {
                0 => {
                    let victim = id.saturating_sub(next(200));
                    b.remove_record(victim);
                }
                1 => {
                    if let Some(mut r) = b.record_mut(id.saturating_sub(next(100))) {
                        r.add_failed_attempts(2);
                        r.set_recovered(7);
                    }
                }
                2 => {
                    b.assign(id, 9, "i9");
                }
                _ => {}
            }
        }
        assert!(b.evicted_records > 0, "the bound was exercised");
        for op in [None, Some("checkout"), Some("payment"), Some("nope")] {
            let want = expected_order(&b, op);
            let (total, it) = b.by_value(op);
            let got: Vec<u64> = it.map(|r| r.id).collect();
            assert_eq!(total, want.len(), "{op:?}");
            assert_eq!(got, want, "{op:?}");
            let (_, it) = b.by_value(op);
            let page: Vec<u64> = it.skip(10).take(5).map(|r| r.id).collect();
            assert_eq!(page, want.iter().skip(10).take(5).copied().collect::<Vec<_>>());
        }
        let index_len: usize = b.by_value.values().map(BTreeSet::len).sum();
        assert_eq!(index_len, b.records().count(), "no stale entry in the order");
    }

    #[test]
    fn closed_incidents_are_dropped_first() {
        let mut b = Book::new(vec!["checkout".into()], 3, 2);
        let inc = |seq: u64, state| Incident {
            seq,
            id: format!("i{seq}"),
            operation: "checkout".into(),
            kind: IncidentKind::Failures,
            state,
            closed_reason: None,
            baseline_rate: 0.0,
            start: 0,
            end: None,
            detected: 0,
            last_evaluated: 0,
            evaluations: 0,
            failure_rate: 0.0,
            peak_failure_rate: 0.0,
            window_operations: 0,
            window_failed: 0,
            failed_operations: 0,
            revenue_at_risk: MoneyTotals::default(),
            recovered_revenue: MoneyTotals::default(),
            affected_customers: 0,
            causes: HashMap::from([
                (("payment".into(), "timeout".into()), 3),
                (("cart".into(), "x".into()), 5),
            ]),
        };
        b.insert_incident(inc(1, IncidentState::Open));
        b.insert_incident(inc(2, IncidentState::Closed));
        b.insert_incident(inc(3, IncidentState::Closed));
        let seqs: Vec<u64> = b.incidents().map(|i| i.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(
            b.incident(1).unwrap().top_causes(1),
            vec![("cart".into(), "x".into(), 5)]
        );
    }
}
