//! The ground truth of a workload, computed from the generator's own record of what it did — never from what a
//! bizpilot component made of the emitted data.
//!
//! # Definitions
//!
//! Times are unix nanoseconds. Money is exact ([`Money`]) and serialized as a decimal string (`"123.45"`) in the
//! run's currency (`currency` at the top). "Unique" means duplicates of a span (same trace id and span id, see
//! `injections.duplicates`) count once: every figure below is over unique spans.
//!
//! **Order value** of a checkout = Σ quantity × unit price over its line items + shipping cost. It is
//! `demo.order.amount` (on success), `demo.payment.amount` and every business event's `amount`.
//!
//! ## Enrichment (`enrichment`)
//! One entry per unique span that carries a business key, keyed by (`trace_id`, `span_id`) in lower-case hex and
//! sorted by them ([`GroundTruth::enrichment_for`] looks one up):
//! - a span carrying an **order key** (`demo.order.id`: PlaceOrder, Charge, ShipOrder, SendOrderConfirmation) must
//!   get all six: `business.customer.id`, `business.customer.tier`, `business.order.id`, `business.order.value`,
//!   `business.currency`, `business.cart.items` (the number of line items);
//! - a span carrying only a **customer key** (`user.id`: frontend spans, GetCart, AddItem) must get
//!   `business.customer.id` and `business.customer.tier`, and `business.cart.items` only where the span itself has
//!   `demo.cart.items.count` (GetCart); the fields given as `null` are not determined by the span.
//! - spans without a key (GetProduct) have no entry.
//!
//! ## Impact (`impact`)
//! Two operations: `checkout` = PlaceOrder spans, `payment` = Charge spans. For each, an operation's **time** is
//! its span's end time, its **outcome** is failure iff the span status is ERROR, its **value** is the order
//! value, its **business key** is the customer id.
//! - `total`, `successful`, `failed`, and the same by customer tier (`by_tier`).
//! - `revenue` = Σ value of successful operations.
//! - **Episodes** (de-duplication by key within W = `window_secs`): operations are taken in time order. A failure
//!   of key K with no active episode of K opens an episode `[t0, t0 + W)` carrying that failure's value; a further
//!   failure of K at t < t0 + W adds nothing (it is counted in the episode's `failures`); a success of K at
//!   t < t0 + W ends the episode as **recovered**. An episode not recovered by t0 + W stays lost. After an episode
//!   ended (recovered or expired), the next failure of K opens a new one.
//!   `revenue_at_risk` = Σ episode values; `recovered_revenue` = Σ values of recovered episodes; `lost_revenue` =
//!   `revenue_at_risk − recovered_revenue`. (The generator keeps one active cart per customer, so a recovering
//!   success always has the episode's value.)
//! - `affected_customers` = distinct customers with ≥ 1 failed operation; `affected_customers_by_window` = the
//!   same per tumbling window of width W aligned to the unix epoch (`[k·W, (k+1)·W)`, by operation time), windows
//!   with none omitted.
//! - `impact_list` (checkout only): one record per (affected customer, outage window that caused the failure),
//!   describing the customer's first failed checkout in it: customer, tier, cart value (order value), line items,
//!   order id, the failed operation (`checkout`, PlaceOrder, its status message), the root cause (`payment`,
//!   Charge, its status message), trace id, time, and the number of failed checkouts of that customer in that
//!   window. Ordered by cart value descending, then customer id, then time.
//! - `incidents`: the injected payment outage windows `[start, end)` with the checkout attempts that started in
//!   each (by the start of the attempt's root span), how many failed, and how many distinct customers they
//!   affected.
//!
//! ## KPI (`kpi`)
//! Per order (a cart whose first checkout attempt happened): stage times as emitted in business events (millisecond
//! precision): `placed` (first attempt's PlaceOrder start), `paid` (successful Charge end), `shipped`,
//! `delivered`, `cancelled`; stages at or after the horizon are absent. `deadline` = placed + `deadline_secs`.
//! - `status`: `delivered`, `cancelled` (never delivered: payment abandoned or cancelled before shipping), or
//!   `open` (neither by the horizon).
//! - `eligible` (counted in compliance) = not cancelled, and delivered or deadline ≤ horizon.
//! - `breached` = eligible and not delivered by the deadline (delivered > deadline, or not delivered at all);
//!   delivered exactly at the deadline is in time.
//! - `cause`: the injection that added the most delay to the order: `payment_outage` (its delay = time from the
//!   first to the successful attempt's start; any order with a failed payment that never paid), `shipping_slowdown`
//!   (its delay = the extra shipping delay), or `none`. Ties go to `payment_outage`.
//! - `summary`: counts of the above; compliance = `fulfilled_in_time / eligible`.
//!
//! ## Counts (`counts`)
//! Sessions, orders, attempts, unique traces and spans (total and ERROR, by span name), emissions including
//! duplicates, events by type, and how many emissions each arrival injection touched.

use bizpilot_core::money::{Currency, Money};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::catalog::{Catalog, Tier, ser_amount, ser_opt_amount};
use crate::event::LineItem;
use crate::spans::{Service, hex, names};

/// Everything a correct bizpilot must reproduce from the workload (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub start_unix_nano: u64,
    /// Sessions start before this.
    pub end_unix_nano: u64,
    /// Nothing happens at or after this.
    pub horizon_unix_nano: u64,
    pub currency: Currency,
    pub counts: Counts,
    pub enrichment: Vec<ExpectedEnrichment>,
    pub impact: ImpactTruth,
    pub kpi: KpiTruth,
}

impl GroundTruth {
    /// The expected enrichment of span (`trace_id`, `span_id`) in lower-case hex.
    pub fn enrichment_for(&self, trace_id: &str, span_id: &str) -> Option<&ExpectedEnrichment> {
        self.enrichment
            .binary_search_by(|e| (e.trace_id.as_str(), e.span_id.as_str()).cmp(&(trace_id, span_id)))
            .ok()
            .map(|i| &self.enrichment[i])
    }

    /// The figures of operation `name` (`checkout` or `payment`).
    pub fn operation(&self, name: &str) -> Option<&OperationTruth> {
        self.impact.operations.iter().find(|o| o.operation == name)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Counts of what was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sessions: u64,
    /// Sessions dropped because no free customer was found (see `ShopConfig::customers`).
    pub sessions_skipped: u64,
    pub orders: u64,
    pub checkout_attempts: u64,
    pub failed_checkouts: u64,
    pub traces: u64,
    pub trace_emissions: u64,
    pub duplicate_trace_emissions: u64,
    pub spans: u64,
    pub span_emissions: u64,
    pub error_spans: u64,
    pub spans_by_name: BTreeMap<String, SpanCount>,
    pub events: u64,
    pub events_by_type: BTreeMap<String, u64>,
    pub late_emissions: u64,
    pub out_of_order_emissions: u64,
    pub events_after_spans: u64,
}

/// Unique spans of one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpanCount {
    pub total: u64,
    pub error: u64,
}

/// The business attributes one span must get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedEnrichment {
    pub trace_id: String,
    pub span_id: String,
    pub span_name: &'static str,
    /// `business.customer.id`.
    pub customer_id: String,
    /// `business.customer.tier`.
    pub customer_tier: Tier,
    /// `business.order.id`.
    pub order_id: Option<String>,
    /// `business.order.value`.
    #[serde(serialize_with = "ser_opt_amount")]
    pub order_value: Option<Money>,
    /// `business.currency`.
    pub currency: Option<Currency>,
    /// `business.cart.items`.
    pub cart_items: Option<u32>,
}

/// Business impact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImpactTruth {
    /// W.
    pub window_secs: u64,
    pub operations: Vec<OperationTruth>,
    pub impact_list: Vec<ImpactRecord>,
    pub incidents: Vec<IncidentWindow>,
}

/// The figures of one business operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationTruth {
    pub operation: &'static str,
    pub service: &'static str,
    pub span_name: &'static str,
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub by_tier: BTreeMap<Tier, OutcomeCounts>,
    #[serde(serialize_with = "ser_amount")]
    pub revenue: Money,
    #[serde(serialize_with = "ser_amount")]
    pub revenue_at_risk: Money,
    #[serde(serialize_with = "ser_amount")]
    pub recovered_revenue: Money,
    #[serde(serialize_with = "ser_amount")]
    pub lost_revenue: Money,
    pub episodes_total: u64,
    pub episodes_recovered: u64,
    pub affected_customers: u64,
    pub affected_customers_by_window: Vec<WindowCount>,
    pub episodes: Vec<Episode>,
}

/// Successes and failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub successful: u64,
    pub failed: u64,
}

/// Distinct affected customers in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowCount {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub affected_customers: u64,
}

/// A revenue-at-risk episode of one business key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Episode {
    /// The business key (customer id).
    pub key: String,
    pub opened_unix_nano: u64,
    /// `opened + W` (exclusive).
    pub window_end_unix_nano: u64,
    /// The value of the failure that opened it.
    #[serde(serialize_with = "ser_amount")]
    pub value: Money,
    /// Failures inside the episode, the opening one included.
    pub failures: u32,
    /// Time of the success that recovered it.
    pub recovered_unix_nano: Option<u64>,
}

/// A failed span in an impact record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureInfo {
    pub service: &'static str,
    pub span_name: &'static str,
    pub status_message: String,
}

/// One affected customer in one outage window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImpactRecord {
    pub customer_id: String,
    pub tier: Tier,
    #[serde(serialize_with = "ser_amount")]
    pub cart_value: Money,
    pub items: Vec<LineItem>,
    pub order_id: String,
    pub failure: FailureInfo,
    pub root_cause: FailureInfo,
    pub trace_id: String,
    pub time_unix_nano: u64,
    /// Index into `incidents` (`None` for a failure outside every outage window, which the generator never makes).
    pub incident: Option<usize>,
    pub failed_attempts: u32,
}

/// An injected payment outage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentWindow {
    pub index: usize,
    pub operation: &'static str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub failure_probability: f64,
    pub status_message: String,
    pub checkout_attempts: u64,
    pub failed_checkouts: u64,
    pub affected_customers: u64,
}

/// Order fulfilment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiTruth {
    pub deadline_secs: u64,
    pub horizon_unix_nano: u64,
    pub summary: KpiSummary,
    /// Sorted by placed time, then order id.
    pub orders: Vec<OrderKpi>,
}

/// KPI totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KpiSummary {
    pub orders: u64,
    pub delivered: u64,
    pub cancelled: u64,
    pub open: u64,
    pub eligible: u64,
    pub fulfilled_in_time: u64,
    pub breached: u64,
    pub breached_by_cause: BTreeMap<Cause, u64>,
    /// `fulfilled_in_time / eligible` (1 when nothing is eligible).
    pub compliance: f64,
}

/// Where an order stands at the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Delivered,
    Cancelled,
    Open,
}

/// The injected trouble that delayed an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    None,
    PaymentOutage,
    ShippingSlowdown,
}

/// One order's fulfilment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderKpi {
    pub order_id: String,
    pub customer_id: String,
    pub placed_unix_nano: u64,
    pub paid_unix_nano: Option<u64>,
    pub shipped_unix_nano: Option<u64>,
    pub delivered_unix_nano: Option<u64>,
    pub cancelled_unix_nano: Option<u64>,
    pub payment_failures: u32,
    pub status: OrderStatus,
    pub deadline_unix_nano: u64,
    pub eligible: bool,
    pub breached: bool,
    pub cause: Cause,
}

/// One operation for [`revenue_at_risk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    /// The business key (customer id).
    pub key: String,
    pub time_unix_nano: u64,
    pub success: bool,
    pub value: Money,
    /// (trace id, span id): outcomes with the same `Some` id count once (the first given).
    pub span: Option<([u8; 16], [u8; 8])>,
}

/// The result of [`revenue_at_risk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskSummary {
    pub revenue: Money,
    pub at_risk: Money,
    pub recovered: Money,
    pub lost: Money,
    /// Sorted by opening time, then key.
    pub episodes: Vec<Episode>,
}

fn add(a: Money, b: Money) -> Money {
    a.checked_add(b).expect("amounts of one currency, far from overflow")
}

/// Revenue, revenue at risk and recovered revenue of `outcomes` with window `window_ns`, exactly as defined in
/// the module documentation. Outcomes may come in any order; equal times keep their given order.
pub fn revenue_at_risk(outcomes: &[OperationOutcome], window_ns: u64, currency: Currency) -> RiskSummary {
    let mut seen = HashSet::new();
    let mut order: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].span.is_none_or(|id| seen.insert(id)))
        .collect();
    order.sort_by_key(|&i| outcomes[i].time_unix_nano);
    let zero = Money::zero(currency);
    let mut revenue = zero;
    let mut episodes: Vec<Episode> = Vec::new();
    let mut active: HashMap<&str, usize> = HashMap::new();
    for i in order {
        let o = &outcomes[i];
        let current = active
            .get(o.key.as_str())
            .copied()
            .filter(|&e| o.time_unix_nano < episodes[e].window_end_unix_nano);
        if o.success {
            revenue = add(revenue, o.value);
            if let Some(e) = current {
                episodes[e].recovered_unix_nano = Some(o.time_unix_nano);
                active.remove(o.key.as_str());
            }
        } else if let Some(e) = current {
            episodes[e].failures += 1;
        } else {
            active.insert(o.key.as_str(), episodes.len());
            episodes.push(Episode {
                key: o.key.clone(),
                opened_unix_nano: o.time_unix_nano,
                window_end_unix_nano: o.time_unix_nano.saturating_add(window_ns),
                value: o.value,
                failures: 1,
                recovered_unix_nano: None,
            });
        }
    }
    let at_risk = episodes.iter().fold(zero, |a, e| add(a, e.value));
    let recovered = episodes
        .iter()
        .filter(|e| e.recovered_unix_nano.is_some())
        .fold(zero, |a, e| add(a, e.value));
    let lost = at_risk.checked_sub(recovered).expect("same currency");
    episodes.sort_by(|a, b| (a.opened_unix_nano, &a.key).cmp(&(b.opened_unix_nano, &b.key)));
    RiskSummary {
        revenue,
        at_risk,
        recovered,
        lost,
        episodes,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Accumulation while generating.

/// What a span's expected enrichment is derived from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EnrichRef {
    Customer { customer: u32, cart_items: Option<u32> },
    Order(u32),
}

pub(crate) struct OrderRec {
    pub id: String,
    pub customer: u32,
    pub value: Money,
    pub items: Arc<[LineItem]>,
}

pub(crate) struct AttemptRec {
    pub order: u32,
    pub trace_id: [u8; 16],
    pub place_order: ([u8; 8], u64),
    pub charge: ([u8; 8], u64),
    pub success: bool,
    /// The outage window the attempt started in.
    pub outage: Option<usize>,
    pub place_order_message: String,
    pub charge_message: String,
}

pub(crate) struct KpiRec {
    pub order: u32,
    pub placed: u64,
    pub paid: Option<u64>,
    pub shipped: Option<u64>,
    pub delivered: Option<u64>,
    pub cancelled: Option<u64>,
    pub payment_failures: u32,
    pub cause: Cause,
}

pub(crate) struct OutageInfo {
    pub start: u64,
    pub end: u64,
    pub probability: f64,
    pub message: String,
}

pub(crate) struct TruthBuilder {
    pub catalog: Arc<Catalog>,
    pub seed: u64,
    pub start: u64,
    pub end: u64,
    pub horizon: u64,
    pub window_ns: u64,
    pub deadline_ns: u64,
    pub outages: Vec<OutageInfo>,
    pub counts: Counts,
    pub enrich: Vec<([u8; 16], [u8; 8], &'static str, EnrichRef)>,
    pub orders: Vec<OrderRec>,
    pub attempts: Vec<AttemptRec>,
    pub kpi: Vec<KpiRec>,
}

impl TruthBuilder {
    pub fn finish(mut self) -> GroundTruth {
        let cat = self.catalog.clone();
        let currency = cat.currency;

        // Enrichment.
        self.enrich.sort_by_key(|a| (a.0, a.1));
        self.enrich.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let orders = &self.orders;
        let enrichment = self
            .enrich
            .iter()
            .map(|&(t, s, name, r)| match r {
                EnrichRef::Customer { customer, cart_items } => {
                    let c = &cat.customers[customer as usize];
                    ExpectedEnrichment {
                        trace_id: hex(&t),
                        span_id: hex(&s),
                        span_name: name,
                        customer_id: c.id.clone(),
                        customer_tier: c.tier,
                        order_id: None,
                        order_value: None,
                        currency: None,
                        cart_items,
                    }
                }
                EnrichRef::Order(o) => {
                    let o = &orders[o as usize];
                    let c = &cat.customers[o.customer as usize];
                    ExpectedEnrichment {
                        trace_id: hex(&t),
                        span_id: hex(&s),
                        span_name: name,
                        customer_id: c.id.clone(),
                        customer_tier: c.tier,
                        order_id: Some(o.id.clone()),
                        order_value: Some(o.value),
                        currency: Some(currency),
                        cart_items: Some(o.items.len() as u32),
                    }
                }
            })
            .collect();

        // Impact.
        self.attempts.sort_by_key(|a| (a.place_order.1, a.trace_id));
        let mut operations = Vec::new();
        for (op, service, span_name) in [
            ("checkout", Service::Checkout, names::PLACE_ORDER),
            ("payment", Service::Payment, names::CHARGE),
        ] {
            let pick = |a: &AttemptRec| if op == "checkout" { a.place_order } else { a.charge };
            let outcomes: Vec<OperationOutcome> = self
                .attempts
                .iter()
                .map(|a| {
                    let o = &orders[a.order as usize];
                    let (span, time) = pick(a);
                    OperationOutcome {
                        key: cat.customers[o.customer as usize].id.clone(),
                        time_unix_nano: time,
                        success: a.success,
                        value: o.value,
                        span: Some((a.trace_id, span)),
                    }
                })
                .collect();
            let risk = revenue_at_risk(&outcomes, self.window_ns, currency);
            let mut by_tier: BTreeMap<Tier, OutcomeCounts> =
                Tier::ALL.iter().map(|&t| (t, Default::default())).collect();
            let mut affected = HashSet::new();
            let mut by_window: BTreeMap<u64, HashSet<u32>> = BTreeMap::new();
            let (mut ok, mut failed) = (0, 0);
            for a in &self.attempts {
                let cust = orders[a.order as usize].customer;
                let e = by_tier.entry(cat.customers[cust as usize].tier).or_default();
                if a.success {
                    ok += 1;
                    e.successful += 1;
                } else {
                    failed += 1;
                    e.failed += 1;
                    affected.insert(cust);
                    let t = pick(a).1;
                    by_window.entry(t - t % self.window_ns).or_default().insert(cust);
                }
            }
            operations.push(OperationTruth {
                operation: op,
                service: service.name(),
                span_name,
                total: ok + failed,
                successful: ok,
                failed,
                by_tier,
                revenue: risk.revenue,
                revenue_at_risk: risk.at_risk,
                recovered_revenue: risk.recovered,
                lost_revenue: risk.lost,
                episodes_total: risk.episodes.len() as u64,
                episodes_recovered: risk.episodes.iter().filter(|e| e.recovered_unix_nano.is_some()).count() as u64,
                affected_customers: affected.len() as u64,
                affected_customers_by_window: by_window
                    .into_iter()
                    .map(|(s, c)| WindowCount {
                        start_unix_nano: s,
                        end_unix_nano: s + self.window_ns,
                        affected_customers: c.len() as u64,
                    })
                    .collect(),
                episodes: risk.episodes,
            });
        }

        // Impact list and incidents (checkout).
        let mut list: Vec<ImpactRecord> = Vec::new();
        let mut index: HashMap<(u32, Option<usize>), usize> = HashMap::new();
        let mut incidents: Vec<IncidentWindow> = self
            .outages
            .iter()
            .enumerate()
            .map(|(i, o)| IncidentWindow {
                index: i,
                operation: "checkout",
                start_unix_nano: o.start,
                end_unix_nano: o.end,
                failure_probability: o.probability,
                status_message: o.message.clone(),
                checkout_attempts: 0,
                failed_checkouts: 0,
                affected_customers: 0,
            })
            .collect();
        for a in &self.attempts {
            if let Some(w) = a.outage.and_then(|w| incidents.get_mut(w)) {
                w.checkout_attempts += 1;
                w.failed_checkouts += u64::from(!a.success);
            }
            if a.success {
                continue;
            }
            let o = &orders[a.order as usize];
            let slot = *index.entry((o.customer, a.outage)).or_insert_with(|| {
                let c = &cat.customers[o.customer as usize];
                list.push(ImpactRecord {
                    customer_id: c.id.clone(),
                    tier: c.tier,
                    cart_value: o.value,
                    items: o.items.to_vec(),
                    order_id: o.id.clone(),
                    failure: FailureInfo {
                        service: Service::Checkout.name(),
                        span_name: names::PLACE_ORDER,
                        status_message: a.place_order_message.clone(),
                    },
                    // The deepest failing span: the payment service's internal `charge` (demo 3.0.0
                    // src/payment/charge.js records the error there first).
                    root_cause: FailureInfo {
                        service: Service::Payment.name(),
                        span_name: names::CHARGE_INTERNAL,
                        status_message: a.charge_message.clone(),
                    },
                    trace_id: hex(&a.trace_id),
                    time_unix_nano: a.place_order.1,
                    incident: a.outage,
                    failed_attempts: 0,
                });
                list.len() - 1
            });
            list[slot].failed_attempts += 1;
        }
        for r in &list {
            if let Some(w) = r.incident.and_then(|w| incidents.get_mut(w)) {
                w.affected_customers += 1;
            }
        }
        list.sort_by(|a, b| {
            b.cart_value
                .nanos()
                .cmp(&a.cart_value.nanos())
                .then_with(|| a.customer_id.cmp(&b.customer_id))
                .then_with(|| a.time_unix_nano.cmp(&b.time_unix_nano))
        });

        // KPI.
        let mut summary = KpiSummary::default();
        let mut kpi_orders: Vec<OrderKpi> = self
            .kpi
            .iter()
            .map(|k| {
                let o = &orders[k.order as usize];
                let deadline = k.placed + self.deadline_ns;
                let status = match (k.delivered, k.cancelled) {
                    (Some(_), _) => OrderStatus::Delivered,
                    (None, Some(_)) => OrderStatus::Cancelled,
                    (None, None) => OrderStatus::Open,
                };
                let eligible = status != OrderStatus::Cancelled && (k.delivered.is_some() || deadline <= self.horizon);
                let in_time = k.delivered.is_some_and(|d| d <= deadline);
                let breached = eligible && !in_time;
                summary.orders += 1;
                match status {
                    OrderStatus::Delivered => summary.delivered += 1,
                    OrderStatus::Cancelled => summary.cancelled += 1,
                    OrderStatus::Open => summary.open += 1,
                }
                summary.eligible += u64::from(eligible);
                summary.fulfilled_in_time += u64::from(eligible && in_time);
                if breached {
                    summary.breached += 1;
                    *summary.breached_by_cause.entry(k.cause).or_default() += 1;
                }
                OrderKpi {
                    order_id: o.id.clone(),
                    customer_id: cat.customers[o.customer as usize].id.clone(),
                    placed_unix_nano: k.placed,
                    paid_unix_nano: k.paid,
                    shipped_unix_nano: k.shipped,
                    delivered_unix_nano: k.delivered,
                    cancelled_unix_nano: k.cancelled,
                    payment_failures: k.payment_failures,
                    status,
                    deadline_unix_nano: deadline,
                    eligible,
                    breached,
                    cause: k.cause,
                }
            })
            .collect();
        summary.compliance = if summary.eligible == 0 {
            1.0
        } else {
            summary.fulfilled_in_time as f64 / summary.eligible as f64
        };
        kpi_orders.sort_by(|a, b| (a.placed_unix_nano, &a.order_id).cmp(&(b.placed_unix_nano, &b.order_id)));

        GroundTruth {
            seed: self.seed,
            start_unix_nano: self.start,
            end_unix_nano: self.end,
            horizon_unix_nano: self.horizon,
            currency,
            counts: self.counts,
            enrichment,
            impact: ImpactTruth {
                window_secs: self.window_ns / 1_000_000_000,
                operations,
                impact_list: list,
                incidents,
            },
            kpi: KpiTruth {
                deadline_secs: self.deadline_ns / 1_000_000_000,
                horizon_unix_nano: self.horizon,
                summary,
                orders: kpi_orders,
            },
        }
    }
}
