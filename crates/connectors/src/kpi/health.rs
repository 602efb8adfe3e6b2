//! The health of the IT services, from spans: per service, the error rate and the share of slow spans over a
//! trailing window; per operation (service + span name), a baseline latency against which a span is judged
//! slow.
//!
//! - A span is **slow** when it lasts more than `health.slow_factor` × its operation's baseline latency, or
//!   more than `health.latency_thresholds[service]` when one is configured. The baseline is the *lowest* median
//!   latency over the last `baseline_windows` windows of `baseline_window` (aligned to the Unix epoch) that saw
//!   at least `min_baseline_spans` spans of the operation: a slowdown shorter than the retained windows does
//!   not become the new normal. Baselines are refreshed at every evaluation, so a span is judged against the
//!   baseline of the previous evaluation (no baseline yet: not slow).
//! - A service is **unhealthy** when at least `min_spans` of its spans ended in the trailing `health.window`
//!   and their error rate reached `error_rate_threshold` (kind `errors`) or their share of slow spans reached
//!   `slow_rate_threshold` (kind `latency`).

use std::collections::{HashMap, VecDeque};

use super::config::HealthConfig;
use super::sketch::{LogHistogram, Scale};

/// Most services tracked; spans of further services are ignored.
pub const MAX_SERVICES: usize = 1024;
/// Most operations (span names) with a baseline per service.
pub const MAX_OPERATIONS: usize = 256;

/// What is wrong with a service or a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Issue {
    Errors,
    Latency,
}

impl Issue {
    pub fn as_str(self) -> &'static str {
        match self {
            Issue::Errors => "errors",
            Issue::Latency => "latency",
        }
    }
}

/// Span counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub spans: u64,
    pub errors: u64,
    pub slow: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.spans += o.spans;
        self.errors += o.errors;
        self.slow += o.slow;
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Operation {
    /// (window index, latencies) per retained window.
    windows: Vec<(u64, LogHistogram)>,
    /// Slow above this (ns), refreshed at each evaluation.
    threshold: Option<f64>,
    baseline: Option<f64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Service {
    current: Counts,
    ring: VecDeque<Counts>,
    absolute: Option<f64>,
    operations: HashMap<Box<str>, Operation>,
}

/// Health of every service seen.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// Not part of a snapshot: the restoring engine's config (the same, checked by its fingerprint).
    #[serde(skip)]
    cfg: HealthConfig,
    slots: usize,
    window_ns: u64,
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
    services: Vec<Service>,
}

/// The current state of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub service: String,
    pub window: Counts,
    pub error_rate: f64,
    pub slow_rate: f64,
    pub issue: Option<Issue>,
}

impl Health {
    /// `evaluation_ns`: the step at which [`Health::rotate`] is called.
    pub fn new(cfg: &HealthConfig, evaluation_ns: u64) -> Health {
        let window = u64::try_from(cfg.window.get().as_nanos()).unwrap_or(u64::MAX);
        let slots = (window / evaluation_ns.max(1)).max(1) as usize;
        Health {
            cfg: cfg.clone(),
            slots,
            window_ns: u64::try_from(cfg.baseline_window.get().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            names: Vec::new(),
            index: HashMap::new(),
            services: Vec::new(),
        }
    }

    /// Sets the config after a restore from a snapshot (which does not carry it).
    pub(super) fn set_config(&mut self, cfg: &HealthConfig) {
        self.cfg = cfg.clone();
    }

    /// The id of service `name`, registering it (`None` beyond [`MAX_SERVICES`]).
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(&i) = self.index.get(name) {
            return Some(i);
        }
        if self.names.len() >= MAX_SERVICES {
            return None;
        }
        let id = self.names.len() as u16;
        self.names.push(name.into());
        self.index.insert(name.into(), id);
        let absolute = self.cfg.latency_thresholds.get(name).map(|d| d.get().as_nanos() as f64);
        self.services.push(Service {
            current: Counts::default(),
            ring: VecDeque::new(),
            absolute,
            operations: HashMap::new(),
        });
        Some(id)
    }

    pub fn id(&self, name: &str) -> Option<u16> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: u16) -> &str {
        self.names.get(usize::from(id)).map(|s| &**s).unwrap_or("unknown")
    }

    /// Records one span ending at `end` that lasted `duration` ns; returns whether it was slow.
    pub fn observe(&mut self, service: u16, span_name: &str, end: u64, duration: u64, error: bool) -> bool {
        let window_ns = self.window_ns;
        let keep = self.cfg.baseline_windows as u64;
        let Some(s) = self.services.get_mut(usize::from(service)) else {
            return false;
        };
        let d = duration as f64;
        let can_add = s.operations.len() < MAX_OPERATIONS;
        let op = match s.operations.get_mut(span_name) {
            Some(op) => Some(op),
            None if can_add => Some(s.operations.entry(span_name.into()).or_insert(Operation {
                windows: Vec::new(),
                threshold: None,
                baseline: None,
            })),
            None => None,
        };
        let slow = match (s.absolute, op.as_ref().and_then(|o| o.threshold)) {
            (Some(t), _) => d > t,
            (None, Some(t)) => d > t,
            (None, None) => false,
        };
        if let Some(op) = op {
            let idx = end / window_ns;
            match op.windows.iter_mut().find(|(i, _)| *i == idx) {
                Some((_, h)) => h.add(duration, 1.0),
                None => {
                    let mut h = LogHistogram::new(Scale::latencies());
                    h.add(duration, 1.0);
                    op.windows.push((idx, h));
                    // Keep the newest `keep` windows.
                    op.windows.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
                    op.windows.truncate(keep as usize);
                }
            }
        }
        s.current.spans += 1;
        s.current.errors += u64::from(error);
        s.current.slow += u64::from(slow);
        slow
    }

    /// Ends an evaluation step at `now`: the step's counts join the trailing window, baselines are refreshed.
    pub fn rotate(&mut self, now: u64) {
        let now_idx = now / self.window_ns;
        let keep = self.cfg.baseline_windows as u64;
        let min = self.cfg.min_baseline_spans as f64;
        let factor = self.cfg.slow_factor;
        for s in &mut self.services {
            let c = std::mem::take(&mut s.current);
            s.ring.push_back(c);
            while s.ring.len() >= self.slots {
                s.ring.pop_front();
            }
            for op in s.operations.values_mut() {
                op.windows.retain(|(i, _)| i + keep > now_idx);
                op.baseline = op
                    .windows
                    .iter()
                    .filter(|(_, h)| h.total() >= min)
                    .filter_map(|(_, h)| h.quantile(0.5))
                    .reduce(f64::min);
                op.threshold = op.baseline.map(|b| b * factor);
            }
        }
    }

    /// Counts over the trailing window (the current step included).
    pub fn window(&self, service: u16) -> Counts {
        let mut c = Counts::default();
        if let Some(s) = self.services.get(usize::from(service)) {
            c.add(&s.current);
            for r in &s.ring {
                c.add(r);
            }
        }
        c
    }

    /// What is wrong with `service` now, if anything (errors first).
    pub fn issue(&self, service: u16) -> Option<Issue> {
        let c = self.window(service);
        if c.spans == 0 || c.spans < self.cfg.min_spans {
            return None;
        }
        let n = c.spans as f64;
        if c.errors as f64 / n >= self.cfg.error_rate_threshold {
            Some(Issue::Errors)
        } else if c.slow as f64 / n >= self.cfg.slow_rate_threshold {
            Some(Issue::Latency)
        } else {
            None
        }
    }

    /// The state of `service` for the API.
    pub fn status(&self, service: u16) -> ServiceStatus {
        let w = self.window(service);
        let n = w.spans.max(1) as f64;
        ServiceStatus {
            service: self.name(service).to_string(),
            window: w,
            error_rate: w.errors as f64 / n,
            slow_rate: w.slow as f64 / n,
            issue: self.issue(service),
        }
    }

    /// Baseline latency (ns) of an operation, if known.
    pub fn baseline(&self, service: u16, span_name: &str) -> Option<f64> {
        self.services
            .get(usize::from(service))?
            .operations
            .get(span_name)?
            .baseline
    }

    /// Number of services tracked.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::config::Duration;

    const MS: u64 = 1_000_000;
    const MIN: u64 = 60_000_000_000;

    fn health() -> Health {
        let cfg = HealthConfig {
            window: Duration::from_secs(300),
            min_spans: 5,
            min_baseline_spans: 10,
            ..Default::default()
        };
        Health::new(&cfg, MIN)
    }

    #[test]
    fn slow_spans_are_judged_against_the_lowest_recent_median() {
        let mut h = health();
        let s = h.intern("shipping").unwrap();
        assert_eq!(h.intern("shipping"), Some(s));
        // No baseline yet: nothing is slow.
        assert!(!h.observe(s, "ShipOrder", MIN, 4_000 * MS, false));
        for i in 0..50 {
            h.observe(s, "ShipOrder", MIN + i, 20 * MS, false);
        }
        h.rotate(2 * MIN);
        let b = h.baseline(s, "ShipOrder").unwrap();
        assert!((b / MS as f64 - 20.0).abs() < 2.0, "{b}");
        assert!(!h.observe(s, "ShipOrder", 2 * MIN, 60 * MS, false));
        assert!(h.observe(s, "ShipOrder", 2 * MIN, 4_000 * MS, false));
        // A day of slow spans does not raise the baseline: the earlier day's median is lower.
        let day = 24 * 60 * MIN;
        for i in 0..100 {
            h.observe(s, "ShipOrder", day + i, 4_000 * MS, false);
        }
        h.rotate(day + MIN);
        assert!(h.observe(s, "ShipOrder", day + MIN, 4_000 * MS, false));
    }

    #[test]
    fn error_rate_over_the_trailing_window() {
        let mut h = health();
        let p = h.intern("payment").unwrap();
        for i in 0..10 {
            h.observe(p, "Charge", MIN, 50 * MS, i < 5);
        }
        assert_eq!(h.issue(p), Some(Issue::Errors));
        assert_eq!(h.status(p).error_rate, 0.5);
        // Five quiet steps later the failures have left the 5-minute window.
        for step in 1..=5 {
            for _ in 0..10 {
                h.observe(p, "Charge", step * MIN, 50 * MS, false);
            }
            h.rotate(step * MIN);
        }
        assert_eq!(h.issue(p), None);
        assert_eq!(h.window(p).spans, 40, "4 steps + the current one (empty)");
    }

    #[test]
    fn absolute_thresholds_win() {
        let mut cfg = HealthConfig::default();
        cfg.latency_thresholds.insert("shipping".into(), Duration::from_secs(1));
        let mut h = Health::new(&cfg, MIN);
        let s = h.intern("shipping").unwrap();
        assert!(h.observe(s, "ShipOrder", 1, 2_000 * MS, false));
        assert!(!h.observe(s, "ShipOrder", 1, 500 * MS, false));
    }
}
