//! Trace-aware operations (`trace_context`): an operation takes the business context its own span lacks —
//! order value, currency, customer, tier, order id, items, dimension values — from any other span of the
//! same trace (parent, child or sibling). In the OpenTelemetry Demo a failed `PlaceOrder` carries no amount
//! (the payment server span has it), the payment server span carries no customer and no currency (the checkout
//! span has them), and the customer tier sits on the payment service's internal child span `charge`.
//!
//! # How
//!
//! - **Compact records, not spans.** For every span, the configured `attributes` are looked up through the
//!   span's zero-copy view (nothing is decoded); when one is present, its value is kept in the trace's record
//!   (a few dozen bytes per attribute). Only the attributes are kept, never the span. When several spans of
//!   a trace carry the same attribute, the one that *started first* wins (then the smaller span id), so the
//!   result does not depend on arrival order: the outermost span's view of the business context.
//! - **When.** An operation already waits for the watermark (`allowed_lateness` behind the newest span) before
//!   it is counted; its missing fields are filled from its trace's record then, at finalization. So the
//!   context of every span that arrived within `allowed_lateness` of the operation is used — the analogue of the
//!   Collector's `groupbytrace` `wait_duration` / `tailsampling` `decision_wait`, measured in event time. An
//!   operation finalized before its trace's root span (a span without parent) was seen is counted as
//!   *released incomplete* (`bizpilot_connector_business_impact_trace_context_total{event="incomplete"}`): its
//!   context may lack what the rest of the trace would have brought.
//! - **Bounded.** A trace's record is kept until its newest span is `wait` behind the watermark (then no
//!   operation of it can still be finalized: later spans of it are late), and at most `max_traces` records are
//!   held; beyond, the oldest are evicted (`event="evicted"`). A span with context that arrives after an
//!   operation of its trace was finalized is counted (`event="late"`), as the connector counts late spans.
//! - **Precedence.** The operation's own span (and resource) first, then the trace. The money value and its
//!   currency are resolved together at finalization: the value from the span or else the trace, the currency
//!   from the span, else the trace, else `value.default_currency`.
//!
//! Pitfalls of the Collector's processors this avoids (their issue trackers): memory that grows with whole
//! spans held per trace (here: only the configured attributes); decisions that depend on which span arrived
//! first (here: earliest start wins); late spans silently re-opening a trace (here: counted). Like theirs,
//! it needs every span of a trace in one process: behind a load balancer, route by trace id (the Collector's
//! `loadbalancing` exporter with `routing_key: traceID`) or scale out over Kafka keyed by trace or order.
//!
//! # Config (`trace_context:` in the connector)
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `enabled` | `false` | fill operations' missing fields from their trace |
//! | `wait` | `30s` | how long (event time, behind the watermark) a trace's record is kept after its newest span |
//! | `max_traces` | `100000` | most trace records held; the oldest are evicted beyond |
//! | `attributes` | the attributes the connector reads | which attributes a trace's record keeps: by default `business_key`, `customer_attribute`, `tier_attribute`, `order_attribute`, `items_attribute`, every operation's `value.attribute` and `value.currency_attribute`, and the dimensions' attributes |
//!
//! ```yaml
//! connectors:
//!   business_impact:
//!     trace_context: {enabled: true, wait: 30s, max_traces: 100000}
//! ```

use std::collections::{HashMap, VecDeque};

use bizpilot_core::config::Duration;
use bizpilot_core::view::{AnyValueKind, ValueRef};
use metrics::{Counter, counter};
use serde::Deserialize;

use super::engine::{id8, id16};
use super::read::SpanRead;

/// Config of trace-aware operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    pub enabled: bool,
    pub wait: Duration,
    pub max_traces: usize,
    /// Attributes kept per trace; empty: the attributes the connector reads.
    pub attributes: Vec<String>,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        TraceContextConfig {
            enabled: false,
            wait: Duration::from_secs(30),
            max_traces: 100_000,
            attributes: Vec::new(),
        }
    }
}

/// One attribute found in a trace: the value of the earliest-starting span that carries it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Found {
    start: u64,
    span: [u8; 8],
    #[serde(with = "super::snapshot::any_value")]
    value: AnyValueKind,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Rec {
    /// The attributes found, by their index in `keys` (only those found: a trace seen only through spans
    /// without them, such as its root, costs no allocation).
    #[serde(with = "super::snapshot::shared_or_empty")]
    vals: Option<std::sync::Arc<[(u16, Found)]>>,
    root: bool,
    newest: u64,
    finalized: bool,
}

/// Counters of the trace context.
#[derive(Debug, Clone)]
pub struct TraceStats {
    pub incomplete: u64,
    pub evicted: u64,
    pub late: u64,
    incomplete_m: Counter,
    evicted_m: Counter,
    late_m: Counter,
}

/// The records of the traces in flight.
#[derive(Debug)]
pub struct TraceContext {
    keys: Vec<String>,
    traces: HashMap<[u8; 16], Rec>,
    /// Traces in the order they were first seen, with their newest time then (re-checked on expiry).
    order: VecDeque<([u8; 16], u64)>,
    wait: u64,
    max: usize,
    pub stats: TraceStats,
}

/// What an operation read from its own span, to be completed from its trace at finalization.
#[derive(Debug)]
pub struct Unresolved {
    pub trace: [u8; 16],
    /// The raw value of `value.attribute` on the span.
    pub value: Option<AnyValueKind>,
    /// The currency code on the span (`value.currency_attribute`).
    pub currency: Option<Box<str>>,
    /// The dimension values on the span (`None`: absent).
    pub dims: Box<[Option<Box<str>>]>,
}

/// What a snapshot keeps of a [`TraceContext`]: the records in flight, their order, the counters.
pub(super) type Saved = (HashMap<[u8; 16], Rec>, Order, [u64; 3]);
/// Traces in the order they were first seen, with their newest time then.
type Order = VecDeque<([u8; 16], u64)>;

impl TraceContext {
    /// The state a snapshot keeps (a copy, encoded off the connector's thread).
    pub(super) fn save(&self) -> Saved {
        let s = &self.stats;
        (
            self.traces.clone(),
            self.order.clone(),
            [s.incomplete, s.evicted, s.late],
        )
    }

    /// Takes the state of a snapshot (the counters are added, to the self-telemetry too).
    pub(super) fn load(&mut self, (traces, order, counts): Saved) {
        self.traces = traces;
        self.order = order;
        let s = &mut self.stats;
        s.incomplete += counts[0];
        s.evicted += counts[1];
        s.late += counts[2];
        s.incomplete_m.increment(counts[0]);
        s.evicted_m.increment(counts[1]);
        s.late_m.increment(counts[2]);
    }
    /// `keys`: the attributes to keep (deduplicated here).
    pub fn new(cfg: &TraceContextConfig, keys: Vec<String>, connector: &str) -> Self {
        let mut uniq: Vec<String> = Vec::new();
        for k in keys {
            if !k.is_empty() && !uniq.contains(&k) {
                uniq.push(k);
            }
        }
        let name = "bizpilot_connector_business_impact_trace_context_total";
        let c = |event: &'static str| counter!(name, "connector" => connector.to_string(), "event" => event);
        TraceContext {
            keys: uniq,
            traces: HashMap::new(),
            order: VecDeque::new(),
            wait: u64::try_from(cfg.wait.get().as_nanos()).unwrap_or(u64::MAX / 4),
            max: cfg.max_traces.max(1),
            stats: TraceStats {
                incomplete: 0,
                evicted: 0,
                late: 0,
                incomplete_m: c("incomplete"),
                evicted_m: c("evicted"),
                late_m: c("late"),
            },
        }
    }

    /// Traces held.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Records what `span` (ending at event time `t`) tells about its trace.
    pub(crate) fn observe<S: SpanRead + ?Sized>(&mut self, span: &S, t: u64) {
        self.observe_seen(span, t, |_, _| {});
    }

    /// The attributes the records keep, in the order of the indexes [`TraceContext::observe_seen`] reports.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// [`TraceContext::observe`], telling `seen` every attribute it read of the span (its index in
    /// [`TraceContext::keys`], its value): the journal records them without reading them again.
    pub(crate) fn observe_seen<S: SpanRead + ?Sized>(
        &mut self,
        span: &S,
        t: u64,
        mut seen: impl FnMut(usize, &ValueRef<'_>),
    ) {
        if span.trace_id().is_empty() {
            return;
        }
        let trace = id16(span.trace_id());
        let root = span.parent_span_id().is_empty();
        let mut found: Vec<(usize, AnyValueKind)> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(v) = span.attr(k) {
                seen(i, &v);
                found.push((i, v.to_value()));
            }
        }
        if !root && found.is_empty() && !self.traces.contains_key(&trace) {
            // Nothing to keep, and no record to date.
            return;
        }
        if !self.traces.contains_key(&trace) {
            while self.traces.len() >= self.max {
                let Some((old, _)) = self.order.pop_front() else { break };
                if self.traces.remove(&old).is_some() {
                    self.stats.evicted += 1;
                    self.stats.evicted_m.increment(1);
                }
            }
            self.order.push_back((trace, t));
        }
        let rec = self.traces.entry(trace).or_insert_with(|| Rec {
            vals: None,
            root: false,
            newest: 0,
            finalized: false,
        });
        rec.newest = rec.newest.max(t);
        rec.root |= root;
        if rec.finalized && !found.is_empty() {
            self.stats.late += 1;
            self.stats.late_m.increment(1);
        }
        let start = span.start_time();
        let sid = id8(span.span_id());
        for (i, v) in found {
            let Ok(i) = u16::try_from(i) else { continue };
            let new = Found {
                start,
                span: sid,
                value: v,
            };
            let vals = rec.vals.as_deref().unwrap_or_default();
            let changed = match vals.iter().position(|(k, _)| *k == i) {
                Some(at) if (start, sid) < (vals[at].1.start, vals[at].1.span) => {
                    let mut v = vals.to_vec();
                    v[at].1 = new;
                    v
                }
                Some(_) => continue,
                None => {
                    let mut v = Vec::with_capacity(vals.len() + 1);
                    v.extend_from_slice(vals);
                    v.push((i, new));
                    v
                }
            };
            rec.vals = Some(std::sync::Arc::from(changed));
        }
    }

    /// The value of `key` in `trace`'s record.
    pub fn get(&self, trace: &[u8; 16], key: &str) -> Option<ValueRef<'_>> {
        let i = u16::try_from(self.keys.iter().position(|k| k == key)?).ok()?;
        self.traces
            .get(trace)?
            .vals
            .as_deref()?
            .iter()
            .find(|(k, _)| *k == i)
            .map(|(_, f)| ValueRef::from_value(&f.value))
    }

    /// The text of `key` in `trace`'s record.
    pub fn text(&self, trace: &[u8; 16], key: &str) -> Option<Box<str>> {
        self.get(trace, key)
            .and_then(|v| v.as_text().map(|c| Box::from(c.as_ref())))
    }

    /// An operation of `trace` is being finalized: counts it as incomplete when the root was not seen.
    pub fn finalizing(&mut self, trace: &[u8; 16]) {
        let root = match self.traces.get_mut(trace) {
            Some(r) => {
                r.finalized = true;
                r.root
            }
            None => false,
        };
        if !root {
            self.stats.incomplete += 1;
            self.stats.incomplete_m.increment(1);
        }
    }

    /// Forgets the traces whose newest span is more than `wait` behind `watermark`.
    pub fn expire(&mut self, watermark: u64) {
        let horizon = watermark.saturating_sub(self.wait);
        while let Some(&(trace, t)) = self.order.front() {
            if t >= horizon {
                break;
            }
            self.order.pop_front();
            match self.traces.get(&trace) {
                Some(r) if r.newest >= horizon => self.order.push_back((trace, r.newest)),
                Some(_) => {
                    self.traces.remove(&trace);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::attrs;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(trace: u8, id: u8, parent: u8, start: u64, kv: Vec<attrs::KeyValue>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            attributes: kv,
            ..Default::default()
        }
    }

    fn ctx(max: usize) -> TraceContext {
        let cfg = TraceContextConfig {
            enabled: true,
            wait: Duration::from_secs(1),
            max_traces: max,
            attributes: vec![],
        };
        TraceContext::new(&cfg, vec!["a".into(), "b".into(), "a".into()], "t")
    }

    #[test]
    fn the_earliest_started_span_wins_whatever_the_arrival_order() {
        let early = span(1, 2, 1, 100, vec![attrs::kv_str("a", "outer")]);
        let late = span(1, 3, 2, 200, vec![attrs::kv_str("a", "inner"), attrs::kv_str("b", "x")]);
        for order in [[&early, &late], [&late, &early]] {
            let mut c = ctx(10);
            for s in order {
                c.observe(s, s.end_time_unix_nano);
            }
            assert_eq!(c.text(&[1; 16], "a").as_deref(), Some("outer"));
            assert_eq!(c.text(&[1; 16], "b").as_deref(), Some("x"));
            assert_eq!(c.text(&[2; 16], "a"), None);
        }
    }

    /// The demo's failed checkout: PlaceOrder (customer, currency, ERROR, no amount) → payment server span
    /// (amount) → `charge` (tier), spans of each service in their own request, children first. Both operations
    /// get the value in EUR, the customer and the tier, on the decoded path and through views alike.
    #[test]
    fn operations_take_value_currency_customer_and_tier_from_their_trace() {
        use super::super::config::BusinessImpactConfig;
        use super::super::engine::{Compiled, Engine};
        use bizpilot_core::component::parse_config;
        use bizpilot_core::{Currency, Money, Traces};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

        let raw: serde_yaml::Value = serde_yaml::from_str(
            r#"
operations:
  - {name: checkout, span_name: PlaceOrder}
  - {name: payment, span_name: Charge}
dimensions: [{name: customer.tier, attribute: business.customer.tier, default: unknown}]
allowed_lateness: 10s
trace_context: {enabled: true}
"#,
        )
        .unwrap();
        let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
        let err = Some(Status {
            code: 2,
            message: "declined".into(),
        });
        let mut place = span(5, 1, 0, 1_000, vec![attrs::kv_str("business.customer.id", "c-1")]);
        place.attributes.push(attrs::kv_str("business.currency", "EUR"));
        place.status = err.clone();
        let mut charge_server = span(5, 2, 1, 2_000, vec![attrs::kv_str("business.order.value", "12.34")]);
        charge_server.name = "Charge".into();
        charge_server.status = err.clone();
        let mut charge = span(5, 3, 2, 3_000, vec![attrs::kv_str("business.customer.tier", "gold")]);
        charge.name = "charge".into();
        charge.status = err;
        place.name = "PlaceOrder".into();
        place.end_time_unix_nano = 10_000;
        let req = |spans: Vec<Span>| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let requests = [req(vec![charge, charge_server]), req(vec![place])];
        for views in [false, true] {
            let mut e = Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "t");
            for r in &requests {
                if views {
                    let mut t = Traces::from_bytes(prost::Message::encode_to_vec(r).into()).unwrap();
                    e.ingest_traces(&mut t);
                    assert!(t.decoded().is_none());
                } else {
                    e.ingest(r);
                }
            }
            e.flush();
            let eur = Money::parse_amount("12.34", Currency::EUR).unwrap();
            for op in 0..2 {
                assert_eq!(e.ops[op].failed, 1, "views {views} op {op}");
                assert_eq!(e.ops[op].at_risk.get(Currency::EUR), eur, "views {views} op {op}");
                let tiers: Vec<String> = e
                    .series
                    .iter()
                    .filter(|s| s.op == op && s.failed > 0)
                    .filter_map(|s| s.dims.as_ref().and_then(|d| d.first()).map(|t| t.to_string()))
                    .collect();
                assert_eq!(tiers, ["gold"], "views {views} op {op}");
            }
            let stats = e.trace_stats().unwrap();
            assert_eq!((stats.incomplete, stats.evicted, stats.late), (0, 0, 0));
        }
    }

    #[test]
    fn bounded_counted_and_expired() {
        let mut c = ctx(2);
        for t in 1..=3u8 {
            c.observe(
                &span(t, 1, 9, u64::from(t), vec![attrs::kv_str("a", "v")]),
                u64::from(t),
            );
        }
        assert_eq!((c.len(), c.stats.evicted), (2, 1));
        // A span without the attributes of an unknown trace keeps nothing.
        c.observe(&span(7, 1, 9, 5, vec![attrs::kv_str("z", "v")]), 5);
        assert_eq!(c.len(), 2);
        // No root seen: incomplete; then a late context span is counted.
        c.finalizing(&[3; 16]);
        c.observe(&span(3, 4, 9, 4, vec![attrs::kv_str("b", "v")]), 4);
        assert_eq!((c.stats.incomplete, c.stats.late), (1, 1));
        c.observe(&span(3, 5, 0, 1, vec![]), 6);
        c.finalizing(&[3; 16]);
        assert_eq!(c.stats.incomplete, 1, "the root was seen");
        c.expire(6 + 1_000_000_000);
        assert_eq!(c.len(), 1, "trace 3's newest span is 6, not more than wait behind");
        c.expire(7 + 1_000_000_000);
        assert_eq!(c.len(), 0);
    }
}
