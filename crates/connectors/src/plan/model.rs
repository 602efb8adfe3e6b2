//! The learned model of the business flow on IT: what the planner knows from the spans it saw.
//!
//! Spans are read through zero-copy views ([`bizpilot_core::Traces::for_each_span`]); per span the model
//! reads its kind, times, name, status and (only for calls and step matches) a few attributes. State is
//! bounded: buckets of `resolution` over the sliding `window` (older ones are dropped), at most
//! `max_routes` routes (calls to further routes are counted as dropped), `max_traces` traces waiting
//! for their funnel step (the oldest are attributed early beyond it), `max_replicas` replicas per service.

use regex::Regex;
use std::collections::{BTreeMap, HashMap, VecDeque};

use bizpilot_business::amount;
use bizpilot_core::view::{ResourceView, SpanView, ValueRef};
use bizpilot_core::{ComponentError, Currency, MoneyTotals, Traces};

use super::config::{CapacityPlannerConfig, kind_number};
use super::sketch::Sketch;

/// Index of the pseudo-step of traces that match no funnel step ("background").
pub const BACKGROUND: u16 = u16::MAX;

/// A funnel step, compiled.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    services: Vec<String>,
    span_names: Vec<String>,
    regex: Option<Regex>,
}

impl Step {
    fn matches(&self, service: &str, name: &str) -> bool {
        (self.services.is_empty() || self.services.iter().any(|s| s == service))
            && (self.span_names.is_empty() || self.span_names.iter().any(|n| n == name))
            && self.regex.as_ref().is_none_or(|r| r.is_match(name))
    }
}

/// The model's settings, resolved.
#[derive(Debug)]
pub struct Settings {
    pub steps: Vec<Step>,
    pub orders: Option<usize>,
    kinds: Vec<i32>,
    replica_attrs: Vec<String>,
    value_attr: String,
    currency_attr: String,
    pub resolution_ns: u64,
    pub window_ns: u64,
    trace_timeout_ns: u64,
    max_routes: usize,
    max_traces: usize,
    max_replicas: usize,
}

impl Settings {
    pub fn new(c: &CapacityPlannerConfig) -> Result<Self, ComponentError> {
        let mut steps = Vec::new();
        for (i, s) in c.steps.iter().enumerate() {
            let regex = match &s.span_name_regex {
                Some(r) => Some(
                    Regex::new(r).map_err(|e| ComponentError::Config(format!("steps[{i}].span_name_regex: {e}")))?,
                ),
                None => None,
            };
            steps.push(Step {
                name: s.name.clone(),
                services: s.service.as_ref().map(|x| x.to_vec()).unwrap_or_default(),
                span_names: s.span_name.as_ref().map(|x| x.to_vec()).unwrap_or_default(),
                regex,
            });
        }
        let orders = c
            .orders_step_name()
            .and_then(|o| c.steps.iter().position(|s| s.name == o));
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        Ok(Settings {
            steps,
            orders,
            kinds: c.span_kinds.iter().filter_map(|k| kind_number(k)).collect(),
            replica_attrs: c.replica_attributes.clone(),
            value_attr: c.value_attribute.clone(),
            currency_attr: c.currency_attribute.clone(),
            resolution_ns: ns(c.resolution.get()),
            window_ns: ns(c.window.get()),
            trace_timeout_ns: ns(c.trace_timeout.get()),
            max_routes: c.max_routes,
            max_traces: c.max_traces,
            max_replicas: c.max_replicas,
        })
    }
}

/// Calls of one route in one bucket.
#[derive(Debug, Clone, Default)]
pub struct RouteStats {
    pub calls: u64,
    pub errors: u64,
    /// Sum of call durations (ns): divided by the time observed, the mean concurrency (Little's law).
    pub busy_ns: u128,
    /// Sum of squared durations (s²), for the spread of the mean duration.
    pub sum_sq: f64,
    pub sketch: Sketch,
}

impl RouteStats {
    fn add(&mut self, dur_ns: u64, error: bool) {
        self.calls += 1;
        self.errors += u64::from(error);
        self.busy_ns += u128::from(dur_ns);
        let s = dur_ns as f64 / 1e9;
        self.sum_sq += s * s;
        self.sketch.add(s);
    }

    pub fn merge(&mut self, o: &RouteStats) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.busy_ns += o.busy_ns;
        self.sum_sq += o.sum_sq;
        self.sketch.merge(&o.sketch);
    }
}

#[derive(Debug, Default)]
struct Bucket {
    routes: HashMap<u32, RouteStats>,
    /// Occurrences of each step (spans matching it) and their errors.
    steps: Vec<(u64, u64)>,
    /// Value of the orders step's occurrences (exact) and how many carried one.
    order_value: MoneyTotals,
    valued_orders: u64,
    /// Calls of finalized traces that started in this bucket, by (entry step or BACKGROUND, route).
    attributed: HashMap<(u16, u32), u64>,
    /// Finalized traces by entry step (BACKGROUND last).
    traces: HashMap<u16, u64>,
    /// Calls and busy time by service and replica.
    replicas: HashMap<u32, HashMap<String, (u64, u128)>>,
}

#[derive(Debug, Default)]
struct Pending {
    first_ns: u64,
    entry: Option<u16>,
    calls: Vec<(u32, u32)>,
}

/// What the model counted about itself (for self-telemetry and the plan's `observed` section).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub spans: u64,
    pub calls: u64,
    pub late_spans: u64,
    pub no_time_spans: u64,
    pub dropped_routes: u64,
    pub forced_traces: u64,
    pub evicted_replicas: u64,
    pub invalid_values: u64,
}

/// The learned model.
pub struct Model {
    pub settings: Settings,
    services: Vec<String>,
    routes: Vec<(u32, String)>,
    route_index: HashMap<String, (u32, HashMap<String, u32>)>,
    buckets: BTreeMap<u64, Bucket>,
    pending: HashMap<[u8; 16], Pending>,
    order: VecDeque<([u8; 16], u64)>,
    min_event: u64,
    max_event: u64,
    pub counters: Counters,
}

/// Per service index: (calls, busy ns, errors) in one bucket.
pub type ServiceLoad = HashMap<u32, (u64, u128, u64)>;

/// Everything the model holds over its window, summed: the planner's input.
#[derive(Debug, Default)]
pub struct Observed {
    pub from_ns: u64,
    pub to_ns: u64,
    pub seconds: f64,
    pub services: Vec<String>,
    /// (service index, route name, totals).
    pub routes: Vec<(u32, String, RouteStats)>,
    /// Per step: (occurrences, errors).
    pub steps: Vec<(u64, u64)>,
    pub order_value: MoneyTotals,
    pub valued_orders: u64,
    /// Attributed calls: (entry step or BACKGROUND, route index in `routes`) → calls.
    pub attributed: HashMap<(u16, u32), u64>,
    pub traces: HashMap<u16, u64>,
    /// Distinct replicas per service index, with (calls, busy ns) each.
    pub replicas: HashMap<u32, Vec<(String, u64, u128)>>,
    /// Per full bucket: (bucket seconds, per service index: (calls, busy ns, errors)).
    pub points: Vec<(f64, ServiceLoad)>,
    /// Per full bucket, calls per route index (for peaks).
    pub route_points: Vec<HashMap<u32, u64>>,
    pub counters: Counters,
    pub pending_traces: usize,
}

fn id16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let n = b.len().min(16);
    a[..n].copy_from_slice(&b[..n]);
    a
}

fn res_attr<'a>(res: &ResourceView<'a>, key: &str) -> Option<ValueRef<'a>> {
    res.attributes().get_raw(key).and_then(ValueRef::from_encoded)
}

fn span_attr<'a>(span: &SpanView<'a>, key: &str) -> Option<ValueRef<'a>> {
    span.attributes().get_raw(key).and_then(ValueRef::from_encoded)
}

impl Model {
    pub fn new(settings: Settings) -> Self {
        Model {
            settings,
            services: Vec::new(),
            routes: Vec::new(),
            route_index: HashMap::new(),
            buckets: BTreeMap::new(),
            pending: HashMap::new(),
            order: VecDeque::new(),
            min_event: u64::MAX,
            max_event: 0,
            counters: Counters::default(),
        }
    }

    /// Traces waiting for attribution.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Newest span start seen (event time).
    pub fn newest(&self) -> u64 {
        self.max_event
    }

    /// Reads every span of `t` through views over its encoding.
    pub fn ingest(&mut self, t: &mut Traces) {
        let mut last_res: Option<((usize, usize), &str, Option<&str>)> = None;
        t.for_each_span(|res, span| {
            let id = (res.as_bytes().as_ptr() as usize, res.as_bytes().len());
            let (service, replica) = match last_res {
                Some((k, s, r)) if k == id => (s, r),
                _ => {
                    let s = res.service_name();
                    let r = self.settings.replica_attrs.iter().find_map(|k| match res_attr(res, k) {
                        Some(ValueRef::Str(v)) if !v.is_empty() => Some(v),
                        _ => None,
                    });
                    last_res = Some((id, s, r));
                    (s, r)
                }
            };
            self.observe(span, service, replica);
        });
        self.advance();
    }

    fn bucket_mut(&mut self, t: u64) -> Option<&mut Bucket> {
        let idx = t / self.settings.resolution_ns;
        let oldest_kept = self.max_event.saturating_sub(self.settings.window_ns) / self.settings.resolution_ns;
        if self.max_event > 0 && idx < oldest_kept {
            return None;
        }
        let n = self.settings.steps.len();
        Some(self.buckets.entry(idx).or_insert_with(|| Bucket {
            steps: vec![(0, 0); n],
            ..Default::default()
        }))
    }

    fn route_id(&mut self, service: &str, route: &str) -> Option<u32> {
        if let Some((_, m)) = self.route_index.get(service)
            && let Some(r) = m.get(route)
        {
            return Some(*r);
        }
        if self.routes.len() >= self.settings.max_routes {
            return None;
        }
        let svc = match self.route_index.get(service) {
            Some((s, _)) => *s,
            None => {
                let s = u32::try_from(self.services.len()).ok()?;
                self.services.push(service.to_string());
                self.route_index.insert(service.to_string(), (s, HashMap::new()));
                s
            }
        };
        let r = u32::try_from(self.routes.len()).ok()?;
        self.routes.push((svc, route.to_string()));
        if let Some((_, m)) = self.route_index.get_mut(service) {
            m.insert(route.to_string(), r);
        }
        Some(r)
    }

    fn observe(&mut self, span: &SpanView<'_>, service: &str, replica: Option<&str>) {
        self.counters.spans += 1;
        let start = span.start_time_unix_nano;
        if start == 0 {
            self.counters.no_time_spans += 1;
            return;
        }
        let dur = span.end_time_unix_nano.saturating_sub(start);
        self.min_event = self.min_event.min(start);
        self.max_event = self.max_event.max(start);
        let matched: Option<u16> = self
            .settings
            .steps
            .iter()
            .position(|s| s.matches(service, span.name))
            .and_then(|i| u16::try_from(i).ok());
        let is_call = self.settings.kinds.contains(&span.kind);
        if matched.is_none() && !is_call {
            return;
        }
        let route = if is_call {
            let name = match span_attr(span, "http.route").and_then(|v| v.as_text().map(|c| c.into_owned())) {
                Some(r) if !span.name.contains(r.as_str()) => {
                    let method = span_attr(span, "http.request.method")
                        .or_else(|| span_attr(span, "http.method"))
                        .and_then(|v| v.as_text().map(|c| c.into_owned()));
                    match method {
                        Some(m) => format!("{m} {r}"),
                        None => r,
                    }
                }
                _ => span.name.to_string(),
            };
            match self.route_id(service, &name) {
                Some(r) => Some(r),
                None => {
                    self.counters.dropped_routes += 1;
                    None
                }
            }
        } else {
            None
        };
        let svc = route.and_then(|r| self.routes.get(r as usize).map(|x| x.0));
        let orders = self.settings.orders;
        let value = match (matched, orders) {
            (Some(m), Some(o)) if usize::from(m) == o => {
                let cur = span_attr(span, &self.settings.currency_attr)
                    .and_then(|v| v.as_text().and_then(|c| Currency::new(c.trim()).ok()));
                match span_attr(span, &self.settings.value_attr) {
                    Some(v) => match amount::money_from_ref(&v, cur) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            self.counters.invalid_values += 1;
                            None
                        }
                    },
                    None => None,
                }
            }
            _ => None,
        };
        let error = span.is_error();
        let max_replicas = self.settings.max_replicas;
        let Some(b) = self.bucket_mut(start) else {
            self.counters.late_spans += 1;
            return;
        };
        if let Some(m) = matched
            && let Some(s) = b.steps.get_mut(usize::from(m))
        {
            s.0 += 1;
            s.1 += u64::from(error);
        }
        if let Some(v) = value
            && b.order_value.add(v).is_ok()
        {
            b.valued_orders += 1;
        }
        let mut evicted = false;
        if let Some(r) = route {
            b.routes.entry(r).or_default().add(dur, error);
            if let (Some(svc), Some(rep)) = (svc, replica) {
                let m = b.replicas.entry(svc).or_default();
                if let Some(e) = m.get_mut(rep) {
                    e.0 += 1;
                    e.1 += u128::from(dur);
                } else if m.len() < max_replicas {
                    m.insert(rep.to_string(), (1, u128::from(dur)));
                } else {
                    evicted = true;
                }
            }
            self.counters.calls += 1;
        }
        if evicted {
            self.counters.evicted_replicas += 1;
        }
        // Fan-out attribution: remember the trace's calls until its entry step is known.
        let tid = id16(span.trace_id);
        if !self.pending.contains_key(&tid) {
            if self.pending.len() >= self.settings.max_traces {
                self.counters.forced_traces += 1;
                self.finalize_oldest();
            }
            self.order.push_back((tid, start));
        }
        let p = self.pending.entry(tid).or_insert_with(|| Pending {
            first_ns: start,
            ..Default::default()
        });
        p.first_ns = p.first_ns.min(start);
        if let Some(m) = matched {
            p.entry = Some(p.entry.map_or(m, |e| e.min(m)));
        }
        if let Some(r) = route {
            match p.calls.iter_mut().find(|(x, _)| *x == r) {
                Some(c) => c.1 = c.1.saturating_add(1),
                None => p.calls.push((r, 1)),
            }
        }
    }

    fn finalize_oldest(&mut self) {
        while let Some((tid, _)) = self.order.pop_front() {
            if let Some(p) = self.pending.remove(&tid) {
                self.attribute(p);
                return;
            }
        }
    }

    fn attribute(&mut self, p: Pending) {
        let entry = p.entry.unwrap_or(BACKGROUND);
        let Some(b) = self.bucket_mut(p.first_ns) else {
            return;
        };
        *b.traces.entry(entry).or_insert(0) += 1;
        for (r, n) in p.calls {
            *b.attributed.entry((entry, r)).or_insert(0) += u64::from(n);
        }
    }

    /// Attributes traces whose time is up and drops buckets that left the window.
    fn advance(&mut self) {
        let horizon = self.max_event.saturating_sub(self.settings.trace_timeout_ns);
        while let Some((tid, first)) = self.order.front().copied() {
            if first > horizon {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.remove(&tid) {
                self.attribute(p);
            }
        }
        let oldest_kept = self.max_event.saturating_sub(self.settings.window_ns) / self.settings.resolution_ns;
        while let Some((&k, _)) = self.buckets.first_key_value() {
            if k >= oldest_kept {
                break;
            }
            self.buckets.remove(&k);
        }
    }

    /// Attributes every waiting trace (end of input, or no data for a while).
    pub fn flush(&mut self) {
        while !self.order.is_empty() {
            self.finalize_oldest();
        }
        self.pending.clear();
    }

    /// The model over its window.
    pub fn observed(&self) -> Observed {
        let res = self.settings.resolution_ns;
        let first_kept = self.buckets.first_key_value().map(|(k, _)| k * res).unwrap_or(0);
        let from = self.min_event.max(first_kept);
        let to = self.max_event;
        let mut o = Observed {
            from_ns: if to >= from { from } else { to },
            to_ns: to,
            seconds: to.saturating_sub(from) as f64 / 1e9,
            services: self.services.clone(),
            steps: vec![(0, 0); self.settings.steps.len()],
            counters: self.counters.clone(),
            pending_traces: self.pending.len(),
            ..Default::default()
        };
        let mut routes: Vec<RouteStats> = vec![RouteStats::default(); self.routes.len()];
        let mut reps: HashMap<(u32, String), (u64, u128)> = HashMap::new();
        for (k, b) in &self.buckets {
            for (r, s) in &b.routes {
                if let Some(t) = routes.get_mut(*r as usize) {
                    t.merge(s);
                }
            }
            for (i, s) in b.steps.iter().enumerate() {
                if let Some(t) = o.steps.get_mut(i) {
                    t.0 += s.0;
                    t.1 += s.1;
                }
            }
            for m in b.order_value.iter() {
                let _ = o.order_value.add(*m);
            }
            o.valued_orders += b.valued_orders;
            for (key, n) in &b.attributed {
                *o.attributed.entry(*key).or_insert(0) += n;
            }
            for (key, n) in &b.traces {
                *o.traces.entry(*key).or_insert(0) += n;
            }
            for (svc, m) in &b.replicas {
                for (name, (n, busy)) in m {
                    let e = reps.entry((*svc, name.clone())).or_insert((0, 0));
                    e.0 += n;
                    e.1 += busy;
                }
            }
            // A full bucket: entirely inside the observed span of time.
            let (bs, be) = (k * res, (k + 1) * res);
            if bs >= self.min_event && be <= self.max_event {
                let mut per_svc: ServiceLoad = HashMap::new();
                let mut per_route = HashMap::new();
                for (r, s) in &b.routes {
                    if let Some((svc, _)) = self.routes.get(*r as usize) {
                        let e = per_svc.entry(*svc).or_insert((0, 0, 0));
                        e.0 += s.calls;
                        e.1 += s.busy_ns;
                        e.2 += s.errors;
                    }
                    per_route.insert(*r, s.calls);
                }
                o.points.push((res as f64 / 1e9, per_svc));
                o.route_points.push(per_route);
            }
        }
        for ((svc, name), (n, busy)) in reps {
            o.replicas.entry(svc).or_default().push((name, n, busy));
        }
        for v in o.replicas.values_mut() {
            v.sort();
        }
        o.routes = self
            .routes
            .iter()
            .zip(routes)
            .map(|((svc, name), s)| (*svc, name.clone(), s))
            .collect();
        o
    }
}
