//! The simulation: sessions, checkout attempts, fulfilment, and arrival scheduling.
//!
//! Work (a session start, a retry, a customer becoming free) is processed in simulated-time order; everything a
//! piece of work emits has an arrival time at or after the work's time, so an emission can be released as soon
//! as no pending work is earlier than its arrival. Memory is bounded by what is in flight (sessions, retries,
//! pending fulfilment stages), not by the run's length.

use bizpilot_core::money::Money;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::{ConfigError, ShopConfig};
use crate::emission::{Emission, EmissionKind, TraceData};
use crate::event::{BusinessEvent, EventType, LineItem};
use crate::spans::{
    Built, CARD_TYPES, CheckoutInput, KeyKind, ServiceResource, Session, SpanFactory, between, trace_id, uuid,
};
use crate::truth::{AttemptRec, Cause, EnrichRef, GroundTruth, KpiRec, OrderRec, OutageInfo, TruthBuilder};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn ns(d: bizpilot_core::config::Duration) -> u64 {
    u64::try_from(d.get().as_nanos()).unwrap_or(u64::MAX / 4)
}

fn floor_ms(t: u64) -> u64 {
    t - t % MS
}

struct Keyed<T> {
    key: (u64, u64),
    item: T,
}

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.cmp(&o.key)
    }
}

/// One step of a session.
enum Step {
    Browse(usize),
    AddItem(usize),
    Checkout,
}

/// A session's cart and plan, shared by its steps and its order.
struct Cart {
    plan: Vec<Step>,
    customer: u32,
    session: Session,
    items: Arc<[LineItem]>,
    value: Money,
    shipping: Money,
    value_str: String,
    shipping_str: String,
    card_type: &'static str,
}

struct Order {
    idx: u32,
    id: String,
    customer: u32,
    cart: Arc<Cart>,
    value: Money,
    shipping: Money,
    items: Arc<[LineItem]>,
    attempts: u32,
    failures: u32,
    placed: u64,
    first_attempt: u64,
}

/// Simulated work, processed in time order. A session plans its steps at its start; each step's trace is built
/// when its time comes (and schedules the next step), so few traces wait for their arrival at any moment.
enum Work {
    Step(Arc<Cart>, usize),
    Attempt(Box<Order>),
    Release(u32),
}

struct Outage {
    start: u64,
    end: u64,
    probability: f64,
    message: String,
    timeout: u64,
}

/// The emissions of a workload in arrival order (see [`crate::Shop::stream`]). Memory is bounded by what is in
/// flight — open sessions, retries, fulfilment stages not yet due (see [`ShopStream::pending`]) — and, with truth,
/// by the truth accumulated so far.
pub struct ShopStream {
    cfg: ShopConfig,
    catalog: Arc<Catalog>,
    factory: SpanFactory,
    rng: StdRng,
    end: u64,
    horizon: u64,
    window: u64,
    next_session: Option<u64>,
    work: BinaryHeap<Reverse<Keyed<Work>>>,
    out: BinaryHeap<Reverse<Keyed<Box<Emission>>>>,
    seq: u64,
    busy: Vec<bool>,
    outages: Vec<Outage>,
    orders: u32,
    truth: Option<TruthBuilder>,
}

impl ShopStream {
    pub(crate) fn new(cfg: &ShopConfig, with_truth: bool) -> Result<ShopStream, ConfigError> {
        cfg.validate()?;
        let catalog = Arc::new(Catalog::new(cfg));
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let factory = SpanFactory::new(cfg, &catalog, &mut rng);
        let start = cfg.start_unix_nano;
        let end = start + ns(cfg.duration);
        let horizon = end + ns(cfg.tail);
        let outages: Vec<Outage> = cfg
            .injections
            .payment_outages
            .iter()
            .map(|o| Outage {
                start: start + ns(o.start),
                end: start + ns(o.end),
                probability: o.failure_probability,
                message: o.status_message.clone(),
                timeout: ns(o.timeout),
            })
            .collect();
        let truth = with_truth.then(|| TruthBuilder {
            catalog: catalog.clone(),
            seed: cfg.seed,
            start,
            end,
            horizon,
            window_ns: ns(cfg.impact_window),
            deadline_ns: ns(cfg.fulfilment.deadline),
            outages: outages
                .iter()
                .map(|o| OutageInfo {
                    start: o.start,
                    end: o.end,
                    probability: o.probability,
                    message: o.message.clone(),
                })
                .collect(),
            counts: Default::default(),
            enrich: Vec::new(),
            orders: Vec::new(),
            attempts: Vec::new(),
            kpi: Vec::new(),
        });
        let mut s = ShopStream {
            cfg: cfg.clone(),
            busy: vec![false; catalog.customers.len()],
            catalog,
            factory,
            rng,
            end,
            horizon,
            window: ns(cfg.impact_window),
            next_session: None,
            work: BinaryHeap::new(),
            out: BinaryHeap::new(),
            seq: 0,
            outages,
            orders: 0,
            truth,
        };
        s.next_session = s.advance_session(start);
        Ok(s)
    }

    /// The run's customers and products.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Every service instance's resource, indexed by [`ServiceResource::id`].
    pub fn resources(&self) -> &[Arc<ServiceResource>] {
        self.factory.resources()
    }

    /// Work items and emissions held, waiting for their time: what the stream's memory is proportional to.
    pub fn pending(&self) -> usize {
        self.work.len() + self.out.len()
    }

    /// The ground truth of everything generated. Drains the remaining emissions first, so the truth covers the
    /// whole run; `None` when the stream was created without truth.
    pub fn into_truth(mut self) -> Option<GroundTruth> {
        self.truth.as_ref()?;
        for _ in self.by_ref() {}
        self.truth.take().map(TruthBuilder::finish)
    }

    fn advance_session(&mut self, from: u64) -> Option<u64> {
        // Exponential inter-arrival times: a Poisson process of rate orders_per_sec.
        let u: f64 = self.rng.random();
        let gap = (-(1.0 - u).ln() / self.cfg.orders_per_sec * SEC as f64).round();
        let t = from.saturating_add(gap.min(u64::MAX as f64 / 4.0) as u64);
        (t < self.end).then_some(t)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn schedule(&mut self, at: u64, w: Work) {
        let seq = self.next_seq();
        self.work.push(Reverse(Keyed {
            key: (at, seq),
            item: w,
        }));
    }

    fn emit(&mut self, arrival: u64, kind: EmissionKind) {
        let seq = self.next_seq();
        self.out.push(Reverse(Keyed {
            key: (arrival, seq),
            item: Box::new(Emission {
                arrival_unix_nano: arrival,
                kind,
            }),
        }));
    }

    /// Arrival after the arrival injections.
    fn inject_arrival(&mut self, base: u64) -> u64 {
        let inj = &self.cfg.injections;
        let (ooo, late) = (inj.out_of_order.clone(), inj.late.clone());
        let mut t = base;
        if ooo.probability > 0.0 && self.rng.random_bool(ooo.probability) {
            t += between(&mut self.rng, 0, ns(ooo.max_delay));
            if let Some(tr) = &mut self.truth {
                tr.counts.out_of_order_emissions += 1;
            }
        }
        if late.probability > 0.0 && self.rng.random_bool(late.probability) {
            t += between(&mut self.rng, ns(late.delay.min), ns(late.delay.max));
            if let Some(tr) = &mut self.truth {
                tr.counts.late_emissions += 1;
            }
        }
        t
    }

    /// Emits a trace (and maybe its duplicate) and records its expected enrichment; returns the original's
    /// arrival.
    fn emit_trace(&mut self, trace_id: [u8; 16], start: u64, built: Built, customer: u32, order: u32) -> u64 {
        let arrival = self.inject_arrival(built.end + ns(self.cfg.trace_export_delay));
        let dup = &self.cfg.injections.duplicates;
        let dup_at = (dup.probability > 0.0 && self.rng.random_bool(dup.probability)).then(|| {
            let d = ns(dup.max_delay);
            arrival + between(&mut self.rng, 0, d)
        });
        if let Some(tr) = &mut self.truth {
            let n = built.spans.len() as u64;
            let c = &mut tr.counts;
            c.traces += 1;
            c.trace_emissions += 1;
            c.spans += n;
            c.span_emissions += n;
            if dup_at.is_some() {
                c.trace_emissions += 1;
                c.duplicate_trace_emissions += 1;
                c.span_emissions += n;
            }
            for m in &built.meta {
                let e = c.spans_by_name.entry(m.name.to_string()).or_default();
                e.total += 1;
                if m.error {
                    e.error += 1;
                    c.error_spans += 1;
                }
                let r = match m.key {
                    KeyKind::None => continue,
                    KeyKind::Customer { cart_items } => EnrichRef::Customer { customer, cart_items },
                    KeyKind::Order => EnrichRef::Order(order),
                };
                tr.enrich.push((trace_id, m.span_id, m.name, r));
            }
        }
        let data = TraceData {
            trace_id,
            event_unix_nano: start,
            duplicate: false,
            spans: built.spans,
        };
        let copy = dup_at.map(|at| {
            let mut c = data.clone();
            c.duplicate = true;
            (at, c)
        });
        self.emit(arrival, EmissionKind::Trace(data));
        if let Some((at, c)) = copy {
            self.emit(at, EmissionKind::Trace(c));
        }
        arrival
    }

    /// Emits a business event of `order` at `time` (if before the horizon). `trace_arrival`: the arrival of the
    /// trace that produced it, for the events-after-spans injection.
    fn emit_event(&mut self, ty: EventType, time: u64, order: &Order, trace_arrival: Option<u64>) {
        if !self.cfg.business_events || time >= self.horizon {
            return;
        }
        let mut base = time + ns(self.cfg.event_delay);
        let eas = self.cfg.injections.events_after_spans.clone();
        if let Some(ta) = trace_arrival
            && eas.probability > 0.0
            && self.rng.random_bool(eas.probability)
        {
            base = base.max(ta + between(&mut self.rng, ns(eas.delay.min), ns(eas.delay.max)));
            if let Some(tr) = &mut self.truth {
                tr.counts.events_after_spans += 1;
            }
        }
        let arrival = self.inject_arrival(base);
        if let Some(tr) = &mut self.truth {
            tr.counts.events += 1;
            *tr.counts.events_by_type.entry(ty.as_str().to_string()).or_default() += 1;
        }
        let ev = BusinessEvent {
            event_type: ty,
            time_unix_nano: time,
            order_id: order.id.clone(),
            customer_id: self.catalog.customers[order.customer as usize].id.clone(),
            amount: order.value,
            shipping: order.shipping,
            items: order.items.to_vec(),
        };
        self.emit(arrival, EmissionKind::Event(ev));
    }

    fn session(&mut self, s: u64) {
        self.next_session = self.advance_session(s);
        if let Some(tr) = &mut self.truth {
            tr.counts.sessions += 1;
        }
        let n = self.catalog.customers.len();
        let mut customer = None;
        for _ in 0..32 {
            let c = self.rng.random_range(0..n);
            if !self.busy[c] {
                customer = Some(c as u32);
                break;
            }
        }
        let Some(customer) = customer else {
            if let Some(tr) = &mut self.truth {
                tr.counts.sessions_skipped += 1;
            }
            return;
        };
        self.busy[customer as usize] = true;
        let catalog = self.catalog.clone();
        let rng = &mut self.rng;
        let session = Session {
            id: uuid(rng),
            client_address: format!(
                "10.{}.{}.{}",
                rng.random_range(1..255u8),
                rng.random::<u8>(),
                rng.random_range(1..255u8)
            ),
            user_agent: rng.random_range(0..4),
        };
        // Cart: 1–5 distinct products, quantities mostly 1.
        let lines = match rng.random_range(0..100u32) {
            0..35 => 1,
            35..65 => 2,
            65..83 => 3,
            83..93 => 4,
            _ => 5,
        };
        let mut picked: Vec<usize> = Vec::with_capacity(lines);
        while picked.len() < lines {
            let p = rng.random_range(0..catalog.products.len());
            if !picked.contains(&p) {
                picked.push(p);
            }
        }
        let items: Arc<[LineItem]> = picked
            .iter()
            .map(|&p| {
                let quantity = match rng.random_range(0..100u32) {
                    0..70 => 1,
                    70..90 => 2,
                    90..97 => 3,
                    _ => rng.random_range(4..=10),
                };
                LineItem {
                    sku: catalog.products[p].sku.clone(),
                    quantity,
                    unit_price: catalog.products[p].unit_price,
                }
            })
            .collect();
        let currency = catalog.currency;
        let subtotal = items.iter().fold(Money::zero(currency), |a, i| {
            a.checked_add(i.total().expect("small amounts")).expect("one currency")
        });
        // Shipping: free from 100.00, else 5.99 + 1.50 per additional line item.
        let shipping = if subtotal.nanos() >= Money::from_minor(10_000, currency).nanos() {
            Money::zero(currency)
        } else {
            Money::from_minor(599, currency)
                .checked_add(
                    Money::from_minor(150, currency)
                        .checked_mul(lines as i64 - 1)
                        .expect("small"),
                )
                .expect("one currency")
        };
        let value = subtotal.checked_add(shipping).expect("one currency");
        let card_type = CARD_TYPES[match rng.random_range(0..10u32) {
            0..5 => 0,
            5..8 => 1,
            _ => 2,
        }];
        let cart = Cart {
            plan: Vec::new(),
            customer,
            session,
            value_str: value.amount_string(),
            shipping_str: shipping.amount_string(),
            items,
            value,
            shipping,
            card_type,
        };

        // Plan: browse, add to cart, then check out; one step at a time.
        let browse = between(
            rng,
            u64::from(self.cfg.browse_traces.min),
            u64::from(self.cfg.browse_traces.max),
        );
        let mut plan = Vec::with_capacity(browse as usize + lines + 1);
        for _ in 0..browse {
            let product = if self.rng.random_bool(0.5) {
                picked[self.rng.random_range(0..picked.len())]
            } else {
                self.rng.random_range(0..catalog.products.len())
            };
            plan.push(Step::Browse(product));
        }
        if self.cfg.add_item_traces {
            plan.extend((0..lines).map(Step::AddItem));
        }
        plan.push(Step::Checkout);
        let cart = Arc::new(Cart { plan, ..cart });
        self.step(s, cart, 0);
    }

    /// Runs step `i` of a session's plan at `t` and schedules the next.
    fn step(&mut self, t: u64, cart: Arc<Cart>, i: usize) {
        let gap = match cart.plan.get(i) {
            Some(&Step::Browse(product)) => {
                self.browse(t, &cart, product);
                between(&mut self.rng, SEC, 8 * SEC)
            }
            Some(&Step::AddItem(item)) => {
                self.add_item(t, &cart, item);
                between(&mut self.rng, SEC, 5 * SEC)
            }
            Some(Step::Checkout) | None => {
                if t < self.horizon {
                    self.checkout(t, cart);
                } else {
                    self.busy[cart.customer as usize] = false;
                }
                return;
            }
        };
        self.schedule(t + gap, Work::Step(cart, i + 1));
    }

    fn browse(&mut self, t: u64, cart: &Cart, product: usize) {
        if t >= self.horizon {
            return;
        }
        let catalog = self.catalog.clone();
        let cust = &catalog.customers[cart.customer as usize];
        let tid = trace_id(&mut self.rng);
        let built = self
            .factory
            .browse(tid, t, cust, &cart.session, product, &catalog, &mut self.rng);
        self.emit_trace(tid, t, built, cart.customer, 0);
    }

    fn add_item(&mut self, t: u64, cart: &Cart, i: usize) {
        if t >= self.horizon {
            return;
        }
        let catalog = self.catalog.clone();
        let cust = &catalog.customers[cart.customer as usize];
        let item = &cart.items[i];
        let tid = trace_id(&mut self.rng);
        let built = self
            .factory
            .add_item(tid, t, cust, &cart.session, &item.sku, item.quantity, &mut self.rng);
        self.emit_trace(tid, t, built, cart.customer, 0);
    }

    fn checkout(&mut self, t: u64, cart: Arc<Cart>) {
        let idx = self.orders;
        self.orders += 1;
        let order = Order {
            idx,
            id: uuid(&mut self.rng),
            customer: cart.customer,
            value: cart.value,
            shipping: cart.shipping,
            items: cart.items.clone(),
            cart,
            attempts: 0,
            failures: 0,
            placed: 0,
            first_attempt: t,
        };
        if let Some(tr) = &mut self.truth {
            tr.counts.orders += 1;
            tr.orders.push(OrderRec {
                id: order.id.clone(),
                customer: order.customer,
                value: order.value,
                items: order.items.clone(),
            });
        }
        self.attempt(Box::new(order), t);
    }

    fn finalize(&mut self, k: KpiRec) {
        if let Some(tr) = &mut self.truth {
            tr.kpi.push(k);
        }
    }

    fn attempt(&mut self, mut o: Box<Order>, a: u64) {
        if a >= self.horizon {
            // The retry would come after the end of observation: the order stays open.
            let k = KpiRec {
                order: o.idx,
                placed: o.placed,
                paid: None,
                shipped: None,
                delivered: None,
                cancelled: None,
                payment_failures: o.failures,
                cause: Cause::PaymentOutage,
            };
            self.finalize(k);
            self.busy[o.customer as usize] = false;
            return;
        }
        let outage = self.outages.iter().position(|w| w.start <= a && a < w.end);
        let failure = outage.and_then(|i| {
            let w = &self.outages[i];
            self.rng.random_bool(w.probability).then_some(i)
        });
        let slow = self.cfg.injections.slow_shipping.clone().filter(|s| {
            let st = self.cfg.start_unix_nano;
            a >= st + ns(s.start) && s.end.is_none_or(|e| a < st + ns(e))
        });
        let catalog = self.catalog.clone();
        let tid = trace_id(&mut self.rng);
        let fail_info = failure.map(|i| (self.outages[i].message.clone(), self.outages[i].timeout));
        let inp = CheckoutInput {
            start_ns: a,
            customer: &catalog.customers[o.customer as usize],
            session: &o.cart.session,
            order_id: &o.id,
            line_items: o.items.len() as u32,
            value_str: &o.cart.value_str,
            shipping_str: &o.cart.shipping_str,
            card_type: o.cart.card_type,
            failure: fail_info.as_ref().map(|(m, t)| (m.as_str(), *t)),
            slow_ship_ns: slow.as_ref().map(|s| ns(s.ship_latency)),
        };
        let (built, times) = self.factory.checkout(tid, &inp, &mut self.rng);
        let root_end = built.end;
        o.attempts += 1;
        if o.attempts == 1 {
            o.placed = floor_ms(times.place_order.0);
        }
        let success = failure.is_none();
        if let Some(tr) = &mut self.truth {
            tr.counts.checkout_attempts += 1;
            tr.counts.failed_checkouts += u64::from(!success);
            let msg = fail_info.as_ref().map(|(m, _)| m.as_str()).unwrap_or_default();
            tr.attempts.push(AttemptRec {
                order: o.idx,
                trace_id: tid,
                place_order: (built.meta[1].span_id, times.place_order.1),
                charge: (built.meta[3].span_id, times.charge.1),
                success,
                outage,
                place_order_message: if success {
                    String::new()
                } else {
                    format!("failed to charge card: {msg}")
                },
                charge_message: msg.to_string(),
            });
        }
        let trace_arrival = self.emit_trace(tid, a, built, o.customer, o.idx);
        if o.attempts == 1 {
            self.emit_event(EventType::OrderPlaced, o.placed, &o, Some(trace_arrival));
        }
        let charged = floor_ms(times.charge.1);
        let fl = self.cfg.fulfilment.clone();
        if !success {
            o.failures += 1;
            self.emit_event(EventType::PaymentFailed, charged, &o, Some(trace_arrival));
            let r = self.cfg.injections.retries.clone();
            let po_end = times.place_order.1;
            if o.attempts < r.max_attempts && r.probability > 0.0 && self.rng.random_bool(r.probability) {
                let next = po_end + between(&mut self.rng, ns(r.delay.min), ns(r.delay.max));
                self.schedule(next, Work::Attempt(o));
            } else {
                // Abandoned: cancelled later; the customer stays busy for W so that no other cart of theirs can
                // touch this failure's revenue-at-risk episode.
                let cancel = floor_ms(po_end + ns(fl.abandoned_cancel_after));
                let cancelled = (fl.enabled && self.cfg.business_events && cancel < self.horizon).then_some(cancel);
                if cancelled.is_some() {
                    self.emit_event(EventType::OrderCancelled, cancel, &o, None);
                }
                let k = KpiRec {
                    order: o.idx,
                    placed: o.placed,
                    paid: None,
                    shipped: None,
                    delivered: None,
                    cancelled,
                    payment_failures: o.failures,
                    cause: Cause::PaymentOutage,
                };
                self.finalize(k);
                self.schedule(po_end + self.window, Work::Release(o.customer));
            }
            return;
        }
        self.emit_event(EventType::OrderPaid, charged, &o, Some(trace_arrival));
        self.schedule(root_end, Work::Release(o.customer));
        let payment_delay = if o.failures > 0 { a - o.first_attempt } else { 0 };
        let mut k = KpiRec {
            order: o.idx,
            placed: o.placed,
            paid: Some(charged),
            shipped: None,
            delivered: None,
            cancelled: None,
            payment_failures: o.failures,
            cause: if o.failures > 0 {
                Cause::PaymentOutage
            } else {
                Cause::None
            },
        };
        if fl.enabled {
            if fl.cancel_probability > 0.0 && self.rng.random_bool(fl.cancel_probability) {
                let c = floor_ms(charged + between(&mut self.rng, 300 * SEC, 3600 * SEC));
                if c < self.horizon {
                    k.cancelled = Some(c);
                    self.emit_event(EventType::OrderCancelled, c, &o, None);
                }
            } else {
                let extra = slow
                    .as_ref()
                    .map(|s| between(&mut self.rng, ns(s.extra_delay.min), ns(s.extra_delay.max)))
                    .unwrap_or(0);
                if extra > payment_delay {
                    k.cause = Cause::ShippingSlowdown;
                }
                let shipped =
                    floor_ms(charged + between(&mut self.rng, ns(fl.ship_delay.min), ns(fl.ship_delay.max)) + extra);
                let delivered =
                    floor_ms(shipped + between(&mut self.rng, ns(fl.delivery_delay.min), ns(fl.delivery_delay.max)));
                if shipped < self.horizon {
                    k.shipped = Some(shipped);
                    self.emit_event(EventType::OrderShipped, shipped, &o, None);
                }
                if delivered < self.horizon {
                    k.delivered = Some(delivered);
                    self.emit_event(EventType::OrderDelivered, delivered, &o, None);
                }
            }
        }
        self.finalize(k);
    }
}

impl Iterator for ShopStream {
    type Item = Emission;

    fn next(&mut self) -> Option<Emission> {
        loop {
            let next_work = match (self.next_session, self.work.peek()) {
                (Some(s), Some(Reverse(w))) => Some(s.min(w.key.0)),
                (Some(s), None) => Some(s),
                (None, Some(Reverse(w))) => Some(w.key.0),
                (None, None) => None,
            };
            let ready = match (self.out.peek(), next_work) {
                (Some(Reverse(e)), Some(t)) => e.key.0 <= t,
                (Some(_), None) => true,
                (None, None) => return None,
                (None, Some(_)) => false,
            };
            if ready {
                return self.out.pop().map(|Reverse(k)| *k.item);
            }
            // Work: a session starting at the same time as a queued item goes first (it was drawn earlier).
            let session_first = match (self.next_session, self.work.peek()) {
                (Some(s), Some(Reverse(w))) => s <= w.key.0,
                (Some(_), None) => true,
                _ => false,
            };
            if session_first {
                if let Some(s) = self.next_session {
                    self.session(s);
                }
            } else if let Some(Reverse(w)) = self.work.pop() {
                let t = w.key.0;
                match w.item {
                    Work::Step(cart, i) => self.step(t, cart, i),
                    Work::Attempt(o) => self.attempt(o, t),
                    Work::Release(c) => self.busy[c as usize] = false,
                }
            }
        }
    }
}
