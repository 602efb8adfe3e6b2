//! The "independent" world of `kpi_eval`: a week of orders written separately from the `order_kpi` model — its
//! own random generator, arrival process, warehouse queue and carrier, and its own ground truth — so that the
//! predictor is judged on data whose shape it was not built around.
//!
//! - **Arrivals**: a Poisson process whose rate follows the day (busy afternoons, quiet nights, +20 % at the
//!   weekend), mean `rate` orders per hour.
//! - **Payment**: a `payment` `Charge` span per attempt; 2 % of cards are declined and retried 1–3 minutes
//!   later (a decline that does not delay anything). During the **payment brown-out** 60 % of attempts fail:
//!   of those customers 65 % come back 3–14 h later, 15 % retry within minutes, 20 % give up (cancelled 1–2 h
//!   later).
//! - **Warehouse** (`paid` → `shipped`): each order needs a log-normal picking time (median 2.5 h) and then
//!   waits for a dispatch slot: a FIFO gate that is normally wide open; during the **warehouse backlog** it lets
//!   out only `backlog_capacity` × the mean order rate per hour, afterwards 1.5 × until the queue is empty.
//!   A `shipping` `ShipOrder` span at payment: slow (2–6 s) for only 30 % of the orders paid during the
//!   backlog (partial observability), and slow by chance for 1 % of all orders (noise).
//! - **Carrier** (`shipped` → `delivered`): log-normal transit (median 9 h). During the **carrier delay**
//!   nothing is delivered: parcels due then arrive 0–2 h after it ends. No IT signal at all.
//! - **Long tails**: 0.7 % of picks and 0.8 % of transits take 10–30 h more (lost, re-routed): the natural
//!   breaches.
//! - **Arrival noise**: events reach the collector 0–20 s late, 0.3 % by 1–4 min, 1 % twice; spans 1–5 s.
//!
//! Truth per order: its deadline (placed + 24 h), whether it breached, and why: the counterfactual delivery
//! time without any injection is computed alongside; a breach that would not have happened without an
//! injection is that injection's (the one that delayed it most), else it is natural.

use bizpilot_business::attrs::kv_str;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status::StatusCode};

pub const SEC: u64 = 1_000_000_000;
pub const HOUR: u64 = 3600 * SEC;
/// 2026-01-05T00:00:00Z, a Monday.
pub const START: u64 = 1_767_571_200 * SEC;

/// xoshiro256** seeded by splitmix64: the world's own generator.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    pub fn u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f()
    }
    pub fn normal(&mut self) -> f64 {
        let u = self.f().max(1e-300);
        let v = self.f();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f()).ln()
    }
}

/// When and how the incidents happen (hours from the start).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub days: f64,
    /// Mean orders per hour.
    pub rate: f64,
    pub backlog_start: f64,
    pub backlog_hours: f64,
    pub backlog_capacity: f64,
    pub carrier_start: f64,
    pub carrier_hours: f64,
    pub brownout_start: f64,
    pub brownout_minutes: f64,
    /// Picking time: log-normal median (h) and sigma; share of picks with a long tail (10–30 h more).
    pub pick_median: f64,
    pub pick_sigma: f64,
    pub pick_tail: f64,
    /// Transit: log-normal median (h) and sigma; share with a long tail (10–30 h more).
    pub transit_median: f64,
    pub transit_sigma: f64,
    pub transit_tail: f64,
}

impl Scenario {
    /// The variant used while developing the model.
    pub fn a(seed: u64, days: f64, rate: f64) -> Scenario {
        Scenario {
            seed,
            days,
            rate,
            backlog_start: 54.0,
            backlog_hours: 10.0,
            backlog_capacity: 0.35,
            carrier_start: 109.0,
            carrier_hours: 6.0,
            brownout_start: 82.0,
            brownout_minutes: 20.0,
            pick_median: 2.5,
            pick_sigma: 0.45,
            pick_tail: 0.007,
            transit_median: 9.0,
            transit_sigma: 0.3,
            transit_tail: 0.008,
        }
    }
    /// The held-out variant: other times, lengths and severities.
    pub fn b(seed: u64, days: f64, rate: f64) -> Scenario {
        Scenario {
            seed,
            days,
            rate,
            backlog_start: 74.0,
            backlog_hours: 12.0,
            backlog_capacity: 0.25,
            carrier_start: 140.0,
            carrier_hours: 7.0,
            brownout_start: 39.0,
            brownout_minutes: 30.0,
            ..Scenario::a(seed, days, rate)
        }
    }
    /// A second held-out variant with another shape of world: slower picking and faster, wider transit, more
    /// long tails, a harsher and earlier backlog, a longer carrier stop, a longer brown-out.
    pub fn c(seed: u64, days: f64, rate: f64) -> Scenario {
        Scenario {
            seed,
            days,
            rate,
            backlog_start: 40.0,
            backlog_hours: 8.0,
            backlog_capacity: 0.15,
            carrier_start: 125.0,
            carrier_hours: 9.0,
            brownout_start: 100.0,
            brownout_minutes: 45.0,
            pick_median: 4.0,
            pick_sigma: 0.5,
            pick_tail: 0.01,
            transit_median: 7.0,
            transit_sigma: 0.4,
            transit_tail: 0.01,
        }
    }
    /// A third held-out variant, added after the model was last changed and never tuned on: wider picking and
    /// slower transit, fewer long tails, a long mild backlog, a short carrier stop early in the week and a short
    /// brown-out late in it.
    pub fn d(seed: u64, days: f64, rate: f64) -> Scenario {
        Scenario {
            seed,
            days,
            rate,
            backlog_start: 90.0,
            backlog_hours: 14.0,
            backlog_capacity: 0.45,
            carrier_start: 60.0,
            carrier_hours: 5.0,
            brownout_start: 122.0,
            brownout_minutes: 15.0,
            pick_median: 3.0,
            pick_sigma: 0.6,
            pick_tail: 0.005,
            transit_median: 10.0,
            transit_sigma: 0.35,
            transit_tail: 0.005,
        }
    }
    /// The time `h` hours after the start.
    pub fn at(&self, h: f64) -> u64 {
        START + (h * HOUR as f64) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrueCause {
    Natural,
    PaymentBrownout,
    WarehouseBacklog,
    CarrierDelay,
}

impl TrueCause {
    /// The stage the order was delayed in, and the service involved.
    pub fn stage(self) -> Option<&'static str> {
        match self {
            TrueCause::Natural => None,
            TrueCause::PaymentBrownout => Some("placed"),
            TrueCause::WarehouseBacklog => Some("paid"),
            TrueCause::CarrierDelay => Some("shipped"),
        }
    }
    pub fn service(self) -> Option<&'static str> {
        match self {
            TrueCause::PaymentBrownout => Some("payment"),
            TrueCause::WarehouseBacklog => Some("shipping"),
            _ => None,
        }
    }
}

/// One order's truth.
#[derive(Debug, Clone)]
pub struct OrderTruth {
    pub id: String,
    pub placed: u64,
    pub deadline: u64,
    pub paid: Option<u64>,
    pub shipped: Option<u64>,
    /// When its picking was done and it waited for a dispatch slot.
    pub ready: Option<u64>,
    pub delivered: Option<u64>,
    pub cancelled: bool,
    pub breached: bool,
    pub cause: TrueCause,
    /// Delayed (or failed) by any injection, whether it breached or not.
    pub touched: bool,
    /// The injection that delayed it most, whether it breached or not.
    pub touched_by: Option<TrueCause>,
    /// Failed or slow spans: (service, end time).
    pub bad_spans: Vec<(&'static str, u64)>,
    /// The delay (ns) the injection that delayed it most (`touched_by`) added to its delivery.
    pub incident_delay: u64,
}

impl OrderTruth {
    /// When the order entered the stage it was in at `t`.
    pub fn stage_entry_at(&self, t: u64) -> u64 {
        [self.shipped, self.paid]
            .into_iter()
            .flatten()
            .find(|x| *x <= t)
            .unwrap_or(self.placed)
    }
}

impl OrderTruth {
    /// Whether a failed or slow span of `service` overlaps the order's delay as of `flag`: it ended at most
    /// 1 h before the order entered its stage at `flag` (or later), or it was followed by a wait of at least
    /// 1 h before the order's next stage (the failure held the order up).
    pub fn evidence_overlaps(&self, service: &str, flag: u64) -> bool {
        let entry = self.stage_entry_at(flag);
        self.bad_spans.iter().any(|(s, t)| {
            let next = [self.paid, self.shipped, self.delivered]
                .into_iter()
                .flatten()
                .find(|x| *x > *t)
                .unwrap_or(flag)
                .min(flag);
            *s == service && *t <= flag && (*t + HOUR >= entry || next.saturating_sub(*t) >= HOUR)
        })
    }
}

impl OrderTruth {
    /// Whether the incidents, as they truly went, had made this order's breach certain `lead` ns before its
    /// deadline: at `t = deadline − lead`, with what the order had done by then and its own work not yet done
    /// taking a short time (the 10th percentile of the world's picking and transit — 90 % of orders take longer
    /// — or no more once it has run past it), it still breaches. An order waiting for a dispatch slot at `t` keeps the slot it truly got (the gate's queue
    /// ahead of it is known then); one still picking gets its own typical ready time and no gate wait; a parcel
    /// whose typical arrival falls in the carrier stop arrives when the stop ends. This does not look at any
    /// prediction: it is the set of breaches a predictor that knew the incidents could flag `lead` ahead.
    pub fn determined(&self, sc: &Scenario, lead: u64) -> bool {
        let (Some(paid), Some(shipped), Some(ready)) = (self.paid, self.shipped, self.ready) else {
            return false;
        };
        let t = self.deadline.saturating_sub(lead);
        let hf = |h: f64| (h * HOUR as f64) as u64;
        // The 10th percentile of a log-normal: median · exp(−1.2816 σ).
        let short = |median: f64, sigma: f64| hf(median * (-1.2816 * sigma).exp());
        let (pick, transit) = (
            short(sc.pick_median, sc.pick_sigma),
            short(sc.transit_median, sc.transit_sigma),
        );
        let ship = if shipped <= t || ready <= t {
            shipped
        } else {
            (paid + pick).max(t.max(paid))
        };
        let due = (ship + transit).max(t);
        let (cd0, cd1) = (sc.at(sc.carrier_start), sc.at(sc.carrier_start + sc.carrier_hours));
        let delivered = if due >= cd0 && due < cd1 { cd1 } else { due };
        self.breached && delivered > self.deadline
    }
}

/// Windows in which a service was in trouble (truth): (service, start, end).
pub type Incidents = Vec<(&'static str, u64, u64)>;

/// One emission: a business event or a span, with the time it reaches the collector.
pub enum Emission {
    Event(LogRecord),
    Span(&'static str, Span),
}

pub struct World {
    pub orders: Vec<OrderTruth>,
    pub incidents: Incidents,
    /// (arrival time, emission), in arrival order.
    pub emissions: Vec<(u64, Emission)>,
}

fn event(name: &str, id: &str, t: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: t,
        event_name: name.into(),
        attributes: vec![kv_str("order.id", id)],
        ..Default::default()
    }
}

fn span(rng: &mut Rng, name: &str, id: &str, start: u64, dur: u64, error: bool) -> Span {
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&rng.u64().to_be_bytes());
    trace[8..].copy_from_slice(&rng.u64().to_be_bytes());
    Span {
        trace_id: trace.to_vec(),
        span_id: rng.u64().to_be_bytes().to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur,
        attributes: vec![kv_str("app.order.id", id)],
        status: Some(Status {
            code: if error {
                StatusCode::Error as i32
            } else {
                StatusCode::Ok as i32
            },
            message: if error { "card declined".into() } else { String::new() },
        }),
        ..Default::default()
    }
}

/// Generates the world.
pub fn generate(sc: &Scenario) -> World {
    let mut rng = Rng::new(sc.seed ^ 0x005e_ed0f_1d3e);
    let end = START + (sc.days * 24.0 * HOUR as f64) as u64;
    let (bl0, bl1) = (sc.at(sc.backlog_start), sc.at(sc.backlog_start + sc.backlog_hours));
    let (cd0, cd1) = (sc.at(sc.carrier_start), sc.at(sc.carrier_start + sc.carrier_hours));
    let (bo0, bo1) = (
        sc.at(sc.brownout_start),
        sc.at(sc.brownout_start + sc.brownout_minutes / 60.0),
    );
    let hf = |h: f64| (h * HOUR as f64) as u64;
    // Arrivals: thinning of a Poisson process at the peak rate.
    let shape = |t: u64| {
        let h = ((t - START) / SEC) as f64 / 3600.0;
        let day = (h / 24.0).floor() as u64 % 7;
        let weekend = if day >= 5 { 1.2 } else { 1.0 };
        weekend * (1.0 + 0.6 * (std::f64::consts::TAU * (h % 24.0 - 9.0) / 24.0).sin())
    };
    let peak = sc.rate * 1.6 * 1.2;
    let mut arrivals = Vec::new();
    let mut t = START as f64;
    loop {
        t += rng.exp(3600.0 / peak) * SEC as f64;
        if t as u64 >= end {
            break;
        }
        if rng.chance(shape(t as u64) / (1.6 * 1.2)) {
            arrivals.push(t as u64);
        }
    }
    struct Plan {
        placed: u64,
        paid: Option<u64>,
        natural_paid: u64,
        ready: u64,
        natural_ready: u64,
        transit: u64,
        cancelled: Option<u64>,
        payment_delayed: bool,
        spans: Vec<(&'static str, Span)>,
        bad: Vec<(&'static str, u64)>,
    }
    let mut plans = Vec::with_capacity(arrivals.len());
    for (i, &t0) in arrivals.iter().enumerate() {
        let id = format!("w-{:06}", i);
        let mut spans = Vec::new();
        let mut bad = Vec::new();
        let dur = hf(rng.between(0.1, 0.4) / 3600.0);
        spans.push((
            "checkout",
            span(&mut rng, "oteldemo.CheckoutService/PlaceOrder", &id, t0, dur, false),
        ));
        // Payment attempts.
        let mut at = t0 + SEC / 5;
        let mut paid = None;
        let mut cancelled = None;
        let mut payment_delayed = false;
        for _attempt in 0..4 {
            let in_brownout = at >= bo0 && at < bo1;
            let fail = if in_brownout { rng.chance(0.6) } else { rng.chance(0.02) };
            let dur = hf(rng.between(0.05, 0.3) / 3600.0);
            spans.push((
                "payment",
                span(&mut rng, "oteldemo.PaymentService/Charge", &id, at, dur, fail),
            ));
            if !fail {
                paid = Some(at + dur + hf(rng.between(1.0, 5.0) / 3600.0));
                break;
            }
            bad.push(("payment", at + dur));
            if in_brownout {
                payment_delayed = true;
                let u = rng.f();
                if u < 0.65 {
                    at += hf(rng.between(3.0, 14.0));
                } else if u < 0.80 {
                    at += hf(rng.between(1.0, 3.0) / 60.0);
                } else {
                    cancelled = Some(at + hf(rng.between(1.0, 2.0)));
                    break;
                }
            } else {
                at += hf(rng.between(1.0, 3.0) / 60.0);
            }
        }
        if paid.is_none() && cancelled.is_none() {
            cancelled = Some(at + HOUR);
        }
        let natural_paid = t0 + SEC / 5 + hf(rng.between(1.5, 5.5) / 3600.0);
        let mut pick = rng.lognormal(sc.pick_median, sc.pick_sigma).min(14.0);
        if rng.chance(sc.pick_tail) {
            pick += rng.between(10.0, 30.0);
        }
        let mut transit = rng.lognormal(sc.transit_median, sc.transit_sigma).min(20.0);
        if rng.chance(sc.transit_tail) {
            transit += rng.between(10.0, 30.0);
        }
        let p = paid.unwrap_or(natural_paid);
        // ShipOrder at payment.
        if let Some(p) = paid {
            let slow = (p >= bl0 && p < bl1 && rng.chance(0.30)) || rng.chance(0.01);
            let dur = if slow {
                hf(rng.between(2.0, 6.0) / 3600.0)
            } else {
                hf(rng.between(0.02, 0.06) / 3600.0)
            };
            spans.push((
                "shipping",
                span(&mut rng, "oteldemo.ShippingService/ShipOrder", &id, p, dur, false),
            ));
            if slow {
                bad.push(("shipping", p + dur));
            }
        }
        plans.push(Plan {
            placed: t0,
            paid,
            natural_paid,
            ready: p + hf(pick),
            natural_ready: natural_paid + hf(pick),
            transit: hf(transit),
            cancelled,
            payment_delayed,
            spans,
            bad,
        });
    }
    // The warehouse dispatch gate (FIFO by ready time).
    let mean_per_hour = sc.rate;
    let mut order_idx: Vec<usize> = (0..plans.len()).filter(|i| plans[*i].paid.is_some()).collect();
    order_idx.sort_by_key(|i| (plans[*i].ready, *i));
    let mut shipped = vec![0u64; plans.len()];
    let mut next_free = 0u64;
    for i in order_idx {
        let r = plans[i].ready;
        let cap_at = |t: u64| -> Option<f64> {
            if t >= bl0 && t < bl1 {
                Some(mean_per_hour * sc.backlog_capacity)
            } else {
                None
            }
        };
        let s = if r >= bl0 && r < bl1 || next_free > r {
            let t = next_free.max(r);
            let cap = cap_at(t).unwrap_or(mean_per_hour * 1.5);
            let s = t;
            next_free = t + (HOUR as f64 / cap) as u64;
            s
        } else {
            r
        };
        shipped[i] = s;
    }
    let mut world = World {
        orders: Vec::with_capacity(plans.len()),
        incidents: vec![("shipping", bl0, bl1), ("payment", bo0, bo1)],
        emissions: Vec::new(),
    };
    let emit_event = |rng: &mut Rng, em: &mut Vec<(u64, Emission)>, name: &str, id: &str, t: u64| {
        let mut delay = hf(rng.between(0.0, 20.0) / 3600.0);
        if rng.chance(0.003) {
            delay = hf(rng.between(1.0, 4.0) / 60.0);
        }
        em.push((t + delay, Emission::Event(event(name, id, t))));
        if rng.chance(0.01) {
            em.push((
                t + delay + hf(rng.between(1.0, 10.0) / 3600.0),
                Emission::Event(event(name, id, t)),
            ));
        }
    };
    for (i, p) in plans.into_iter().enumerate() {
        let id = format!("w-{:06}", i);
        let deadline = p.placed + 24 * HOUR;
        emit_event(&mut rng, &mut world.emissions, "order.placed", &id, p.placed);
        for (svc, s) in p.spans {
            let arrive = s.end_time_unix_nano + hf(rng.between(1.0, 5.0) / 3600.0);
            world.emissions.push((arrive, Emission::Span(svc, s)));
        }
        let mut truth = OrderTruth {
            id: id.clone(),
            placed: p.placed,
            deadline,
            paid: p.paid,
            shipped: None,
            ready: None,
            delivered: None,
            cancelled: false,
            breached: false,
            cause: TrueCause::Natural,
            touched: p.payment_delayed,
            touched_by: p.payment_delayed.then_some(TrueCause::PaymentBrownout),
            bad_spans: p.bad,
            incident_delay: 0,
        };
        match (p.paid, p.cancelled) {
            (None, Some(c)) => {
                truth.cancelled = true;
                emit_event(&mut rng, &mut world.emissions, "order.cancelled", &id, c);
            }
            (Some(paid), _) => {
                emit_event(&mut rng, &mut world.emissions, "order.paid", &id, paid);
                let s = shipped[i];
                emit_event(&mut rng, &mut world.emissions, "order.shipped", &id, s);
                let due = s + p.transit;
                let delivered = if due >= cd0 && due < cd1 {
                    cd1 + hf(rng.between(0.0, 2.0))
                } else {
                    due
                };
                emit_event(&mut rng, &mut world.emissions, "order.delivered", &id, delivered);
                truth.shipped = Some(s);
                truth.ready = Some(p.ready);
                truth.delivered = Some(delivered);
                truth.breached = delivered > deadline;
                let natural = p.natural_ready + p.transit;
                let payment_delay = paid.saturating_sub(p.natural_paid);
                let gate_delay = s.saturating_sub(p.ready);
                let carrier_delay = delivered - due;
                truth.touched |= gate_delay > 0 || carrier_delay > 0;
                let mut c = [
                    (payment_delay * u64::from(p.payment_delayed), TrueCause::PaymentBrownout),
                    (gate_delay, TrueCause::WarehouseBacklog),
                    (carrier_delay, TrueCause::CarrierDelay),
                ];
                c.sort_by_key(|x| std::cmp::Reverse(x.0));
                if c[0].0 > 0 {
                    truth.touched_by = Some(c[0].1);
                    truth.incident_delay = c[0].0;
                }
                if truth.breached && natural <= deadline {
                    truth.cause = if c[0].0 > 0 { c[0].1 } else { TrueCause::Natural };
                }
            }
            (None, None) => {}
        }
        world.orders.push(truth);
    }
    world.emissions.sort_by_key(|e| e.0);
    world
}
