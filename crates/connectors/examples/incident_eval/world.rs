//! A shop's checkout traffic with known incidents: the ground truth of the incident evaluation.
//!
//! Written independently of the detector: its own random numbers, its own notion of an outage (configured
//! start and end), its own list of affected customers (everyone with at least one failed checkout). The
//! detector's parameters appear nowhere here.
//!
//! Traffic: Poisson arrivals at `rate` per second, modulated by `1 + amplitude · sin(2π t / period)` (thinning);
//! each arrival is a customer (drawn from a large pool) checking out a cart of 10–500 USD, lasting a log-normal
//! 80–500 ms. In healthy time a checkout fails with probability `baseline`; a customer whose checkout failed
//! retries after 2–10 s with probability `retry`, at most twice, and a retry fails again with probability
//! `retry_fail` (a card that keeps being declined): errors come in clusters of 2–3. During an outage a
//! checkout (retries included) fails with the outage's probability; during a latency degradation checkouts
//! succeed but take `factor` times longer.

use std::collections::BTreeSet;

pub const SEC: u64 = 1_000_000_000;

/// splitmix64: a small, well-known generator, independent of every crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Exponential with mean `1 / rate`.
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// What goes wrong, when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Checkouts fail with this probability.
    Failures(f64),
    /// Checkouts succeed but take this many times longer.
    Slow(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injection {
    /// Seconds after the world's start.
    pub start_s: f64,
    pub len_s: f64,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub seed: u64,
    /// Unix seconds of the world's start.
    pub epoch_s: u64,
    pub duration_s: f64,
    pub rate: f64,
    pub amplitude: f64,
    pub period_s: f64,
    pub baseline: f64,
    pub retry: f64,
    pub retry_fail: f64,
    pub customers: u64,
    pub injections: Vec<Injection>,
}

impl WorldSpec {
    /// Healthy traffic: 0.5 % failures, clusters of retries, ±50 % rate swings over 6 h.
    pub fn healthy(seed: u64, duration_s: f64, rate: f64) -> Self {
        WorldSpec {
            seed,
            epoch_s: 1_767_225_600,
            duration_s,
            rate,
            amplitude: 0.5,
            period_s: 6.0 * 3600.0,
            baseline: 0.005,
            retry: 0.7,
            retry_fail: 0.5,
            customers: 5_000_000,
            injections: Vec::new(),
        }
    }
}

/// One checkout.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkout {
    /// End time, Unix ns (the span's end).
    pub end: u64,
    pub duration: u64,
    pub customer: u64,
    pub failed: bool,
    /// Cart value in cents.
    pub cents: u64,
    pub attempt: u32,
}

/// An injected incident as the world knows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrueIncident {
    pub start: u64,
    pub end: u64,
    pub fault: Fault,
    /// End times of the first and the last checkout it failed or slowed (None: none fell in it).
    pub first_hit: Option<u64>,
    pub last_hit: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct World {
    /// In end-time order.
    pub checkouts: Vec<Checkout>,
    pub incidents: Vec<TrueIncident>,
    /// Customers with at least one failed checkout.
    pub affected: BTreeSet<u64>,
}

impl World {
    pub fn generate(spec: &WorldSpec) -> World {
        let mut rng = Rng::new(spec.seed);
        let start = spec.epoch_s * SEC;
        let at = |s: f64| start + (s * 1e9) as u64;
        let fault_at = |s: f64| {
            spec.injections
                .iter()
                .find(|i| s >= i.start_s && s < i.start_s + i.len_s)
                .map(|i| i.fault)
        };
        let peak = spec.rate * (1.0 + spec.amplitude.abs());
        let mut out = Vec::new();
        // (start second, customer, cart, attempt) of retries still to come, unordered.
        let mut retries: Vec<(f64, u64, u64, u32)> = Vec::new();
        let mut t = 0.0;
        loop {
            t += rng.exp(peak);
            if t >= spec.duration_s {
                break;
            }
            let lambda = spec.rate * (1.0 + spec.amplitude * (2.0 * std::f64::consts::PI * t / spec.period_s).sin());
            if rng.unit() * peak > lambda {
                continue;
            }
            let customer = rng.next_u64() % spec.customers;
            let cents = 1_000 + rng.next_u64() % 49_000;
            retries.push((t, customer, cents, 1));
            // Run every attempt that starts before the next arrival could (keeps memory small).
            retries.sort_by(|a, b| b.0.total_cmp(&a.0));
            while retries.last().is_some_and(|r| r.0 <= t) {
                let Some((s, c, v, attempt)) = retries.pop() else { break };
                let mut dur = (0.2 * (0.4 * rng.normal()).exp()).clamp(0.08, 0.5);
                let (p_fail, slow) = match fault_at(s) {
                    Some(Fault::Failures(p)) => (p, 1.0),
                    Some(Fault::Slow(f)) => (spec.baseline, f),
                    None if attempt > 1 => (spec.retry_fail, 1.0),
                    None => (spec.baseline, 1.0),
                };
                dur *= slow;
                let failed = rng.unit() < p_fail;
                if s + dur < spec.duration_s {
                    out.push(Checkout {
                        end: at(s + dur),
                        duration: (dur * 1e9) as u64,
                        customer: c,
                        failed,
                        cents: v,
                        attempt,
                    });
                }
                if failed && attempt < 3 && rng.unit() < spec.retry {
                    retries.push((s + dur + rng.range(2.0, 10.0), c, v, attempt + 1));
                }
            }
        }
        out.sort_by_key(|c| c.end);
        let affected = out.iter().filter(|c| c.failed).map(|c| c.customer).collect();
        let incidents = spec
            .injections
            .iter()
            .map(|i| {
                let (s, e) = (at(i.start_s), at(i.start_s + i.len_s));
                // Affected: started inside the injection and failed (or, slowed: every one).
                let hits = || {
                    out.iter()
                        .filter(move |c| (s..e).contains(&(c.end - c.duration)))
                        .filter(|c| match i.fault {
                            Fault::Failures(_) => c.failed,
                            Fault::Slow(_) => true,
                        })
                };
                TrueIncident {
                    start: s,
                    end: e,
                    fault: i.fault,
                    first_hit: hits().map(|c| c.end).min(),
                    last_hit: hits().map(|c| c.end).max(),
                }
            })
            .collect();
        World {
            checkouts: out,
            incidents,
            affected,
        }
    }
}
