//! The metric series of the connector: one per (operation, dimension values), at most `max_series` of them;
//! beyond the limit, measurements go to one overflow series per operation (attribute
//! `otel.metric.overflow=true`, as the OpenTelemetry SDK's cardinality limit does) and are counted.
//!
//! Money is accumulated exactly ([`MoneyTotals`], one total per currency); floats appear only when the series
//! are exported.

use bizpilot_core::{Money, MoneyTotals};
use std::collections::HashMap;

/// A fixed-bucket histogram of durations in seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// One count per bound plus the overflow bucket.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Histogram {
    pub fn new(bounds: usize) -> Self {
        Histogram {
            counts: vec![0; bounds + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds `v` (seconds); buckets are upper-inclusive as in OTLP (`(b[i-1], b[i]]`).
    pub fn record(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// What one series holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Series {
    pub op: usize,
    /// Dimension values in configured order; `None` for the overflow series.
    pub dims: Option<Box<[Box<str>]>>,
    pub successful: u64,
    pub failed: u64,
    pub duration_ok: Histogram,
    pub duration_failed: Histogram,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub at_risk: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub recovered: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub lost: MoneyTotals,
}

impl Series {
    fn new(op: usize, dims: Option<Box<[Box<str>]>>, bounds: usize) -> Self {
        Series {
            op,
            dims,
            successful: 0,
            failed: 0,
            duration_ok: Histogram::new(bounds),
            duration_failed: Histogram::new(bounds),
            revenue: MoneyTotals::default(),
            at_risk: MoneyTotals::default(),
            recovered: MoneyTotals::default(),
            lost: MoneyTotals::default(),
        }
    }

    pub fn is_overflow(&self) -> bool {
        self.dims.is_none()
    }
}

/// Which money total of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyKind {
    Revenue,
    AtRisk,
    Recovered,
    Lost,
}

/// Dimension values in configured order.
pub type DimValues = Box<[Box<str>]>;

/// The series of all operations, bounded by `max_series`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeriesTable {
    max: usize,
    bounds: Vec<f64>,
    index: HashMap<(usize, DimValues), u32>,
    series: Vec<Series>,
    overflow: Vec<Option<u32>>,
    /// Measurements that went to an overflow series, per operation.
    overflowed: Vec<u64>,
}

impl SeriesTable {
    pub fn new(operations: usize, max: usize, bounds: Vec<f64>) -> Self {
        SeriesTable {
            max,
            bounds,
            index: HashMap::new(),
            series: Vec::new(),
            overflow: vec![None; operations],
            overflowed: vec![0; operations],
        }
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The series of `op` with `dims`, created if the limit allows, else the operation's overflow series.
    pub fn resolve(&mut self, op: usize, dims: Box<[Box<str>]>) -> u32 {
        let key = (op, dims);
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        if self.index.len() < self.max {
            let i = self.series.len() as u32;
            self.series
                .push(Series::new(op, Some(key.1.clone()), self.bounds.len()));
            self.index.insert(key, i);
            return i;
        }
        if let Some(Some(i)) = self.overflow.get(op) {
            return *i;
        }
        let i = self.series.len() as u32;
        self.series.push(Series::new(op, None, self.bounds.len()));
        if let Some(slot) = self.overflow.get_mut(op) {
            *slot = Some(i);
        }
        i
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Series> {
        self.series.get_mut(id as usize)
    }

    /// Counts one operation in series `id`; a measurement in an overflow series is counted as overflowed.
    pub fn count(&mut self, id: u32, success: bool, duration_s: f64) {
        let bounds = std::mem::take(&mut self.bounds);
        let mut overflow_op = None;
        if let Some(s) = self.get_mut(id) {
            if success {
                s.successful += 1;
                s.duration_ok.record(&bounds, duration_s);
            } else {
                s.failed += 1;
                s.duration_failed.record(&bounds, duration_s);
            }
            if s.is_overflow() {
                overflow_op = Some(s.op);
            }
        }
        self.bounds = bounds;
        if let Some(op) = overflow_op
            && let Some(n) = self.overflowed.get_mut(op)
        {
            *n += 1;
        }
    }

    /// Adds money to a total of series `id`.
    pub fn add_money(&mut self, id: u32, kind: MoneyKind, m: Money) {
        if let Some(s) = self.get_mut(id) {
            let t = match kind {
                MoneyKind::Revenue => &mut s.revenue,
                MoneyKind::AtRisk => &mut s.at_risk,
                MoneyKind::Recovered => &mut s.recovered,
                MoneyKind::Lost => &mut s.lost,
            };
            if t.add(m).is_err() {
                tracing::warn!("a money total of the business_impact connector overflowed; value dropped");
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Series> {
        self.series.iter()
    }

    /// Series with dimension values (the overflow series excluded).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Measurements counted in overflow series, per operation.
    pub fn overflowed(&self) -> &[u64] {
        &self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::Currency;

    fn dims(v: &str) -> Box<[Box<str>]> {
        vec![Box::<str>::from(v)].into_boxed_slice()
    }

    #[test]
    fn the_limit_holds_and_overflow_is_counted() {
        let mut t = SeriesTable::new(2, 10, vec![0.1, 1.0]);
        for i in 0..100_000 {
            let id = t.resolve(i % 2, dims(&format!("v{i}")));
            t.count(id, true, 0.05);
            t.add_money(id, MoneyKind::Revenue, Money::from_minor(100, Currency::USD));
        }
        assert_eq!(t.len(), 10);
        assert_eq!(t.iter().count(), 12, "10 series + one overflow series per operation");
        assert_eq!(t.overflowed(), &[49_995, 49_995]);
        let total: u64 = t.iter().map(|s| s.successful).sum();
        assert_eq!(total, 100_000, "nothing is lost, only folded");
        let over: Vec<&Series> = t.iter().filter(|s| s.is_overflow()).collect();
        assert_eq!(
            over[0].revenue.get(Currency::USD),
            Money::from_minor(4_999_500, Currency::USD)
        );
        // An existing series is still found after the limit.
        let again = t.resolve(0, dims("v0"));
        assert!(!t.iter().nth(again as usize).unwrap().is_overflow());
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let b = [0.1, 1.0];
        let mut h = Histogram::new(2);
        for v in [0.05, 0.1, 0.5, 1.0, 3.0] {
            h.record(&b, v);
        }
        assert_eq!(h.counts, vec![2, 2, 1]);
        assert_eq!((h.count, h.min, h.max), (5, 0.05, 3.0));
    }
}
