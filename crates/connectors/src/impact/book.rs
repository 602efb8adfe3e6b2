//! What the connector has found, shared with its HTTP API: impact records, incidents and per-operation totals.
//! The connector's task writes it; API requests read it. Both are bounded (`impact.max_records`,
//! `incident.max_retained`): the oldest go first.

use bizpilot_business::LineItem;
use bizpilot_core::{Money, MoneyTotals};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A failed span: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cause {
    pub service: String,
    pub span_name: String,
    pub status_message: String,
}

/// One affected customer in one incident, or in no incident yet (`incident_seq` 0, `incident_id` empty):
/// every customer with a failed operation has a record, whether or not an incident covers the failure.
#[derive(Debug, Clone, PartialEq)]
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

/// Open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    pub revenue_at_risk: MoneyTotals,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub start: u64,
    pub end: u64,
    pub customers: u64,
    pub exact: bool,
}

/// Totals of one operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationSummary {
    pub name: String,
    pub operations: u64,
    pub successful: u64,
    pub failed: u64,
    pub revenue: MoneyTotals,
    pub revenue_at_risk: MoneyTotals,
    pub recovered_revenue: MoneyTotals,
    pub lost_revenue: MoneyTotals,
    /// Revenue at risk neither recovered nor lost yet (episodes still open).
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provisional {
    pub operations: u64,
    pub failed: u64,
    pub revenue: MoneyTotals,
    pub revenue_at_risk: MoneyTotals,
    /// Distinct customers with a pending failure.
    pub affected_customers: u64,
    /// Event time of the newest pending operation.
    pub until: u64,
}

/// A goal's current period as of the watermark (for the API and the live board).
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Default)]
pub struct Book {
    pub operations: Vec<OperationSummary>,
    pub goals: Vec<GoalSummary>,
    /// Event time up to which everything is final.
    pub watermark: u64,
    records: BTreeMap<u64, ImpactRecord>,
    index: HashMap<(u64, Box<str>), u64>,
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

    pub fn record_mut(&mut self, id: u64) -> Option<&mut ImpactRecord> {
        self.records.get_mut(&id)
    }

    pub fn record(&self, id: u64) -> Option<&ImpactRecord> {
        self.records.get(&id)
    }

    /// Adds a record; the oldest go when more than `max_records` are held.
    pub fn insert_record(&mut self, r: ImpactRecord) {
        self.index
            .insert(Self::index_key(r.incident_seq, &r.operation, &r.key), r.id);
        self.records.insert(r.id, r);
        while self.records.len() > self.max_records {
            let Some((_, old)) = self.records.pop_first() else {
                break;
            };
            let k = Self::index_key(old.incident_seq, &old.operation, &old.key);
            if self.index.get(&k) == Some(&old.id) {
                self.index.remove(&k);
            }
            self.evicted_records += 1;
        }
    }

    /// Removes a record (merged into another).
    pub fn remove_record(&mut self, id: u64) -> Option<ImpactRecord> {
        let r = self.records.remove(&id)?;
        let k = Self::index_key(r.incident_seq, &r.operation, &r.key);
        if self.index.get(&k) == Some(&id) {
            self.index.remove(&k);
        }
        Some(r)
    }

    pub fn records(&self) -> impl Iterator<Item = &ImpactRecord> {
        self.records.values()
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
