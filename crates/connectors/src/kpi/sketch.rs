//! Mergeable sketches of durations: a fixed log-bucket histogram ([`LogHistogram`]) and the Kaplan–Meier
//! survival estimate read from histograms of exits and censored observations ([`Survival`]).
//!
//! # Buckets
//!
//! A [`Scale`] fixes the buckets: bucket 0 holds `[0, base)`, bucket `k ≥ 1` holds `[base·γ^(k−1), base·γ^k)`,
//! and the last bucket also holds everything above. With `γ = 1.1` every bucket is 10 % wide, so a value is
//! known within ±5 % (the bucket's geometric middle is its representative). Two histograms on the same scale
//! merge by adding counts; counts are `f64` so that a histogram can be decayed (multiplied by a factor) to
//! forget old observations smoothly. Memory is fixed: one `f64` per bucket (200 buckets: 1.6 KiB).
//!
//! # Survival with censoring
//!
//! The time `T` an order spends in a stage is observed when the order leaves the stage (an *exit*); an order
//! still in the stage only tells `T > age` (a *censored* observation). [`Survival::estimate`] is the
//! Kaplan–Meier product-limit estimator over buckets: with `d_k` exits and `c_k` censored observations in
//! bucket `k`, `n_k = Σ_{j ≥ k} (d_j + c_j)` are at risk at bucket `k`, the hazard is `h_k = d_k / n_k` and
//! `S_k = Π_{j ≤ k} (1 − h_j)` is the survival after bucket `k`. Within a bucket the survival is interpolated
//! linearly in log-time. **Tail**: nothing is known beyond the last bucket holding an observation (`last`); the
//! estimator assumes the mass still surviving there leaves within that bucket (`S = 0` from its upper edge on).
//! This is the optimistic choice: a new, longer delay is only believed once orders have been seen to wait that
//! long (as censored or as exits), which keeps false alarms down when a new kind of trouble starts.

/// The bucket layout of a [`LogHistogram`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scale {
    base: f64,
    ln_gamma: f64,
    gamma: f64,
    buckets: usize,
}

impl Scale {
    /// `base` in nanoseconds, relative bucket width `gamma` (> 1), `buckets` ≥ 2.
    pub fn new(base_ns: u64, gamma: f64, buckets: usize) -> Scale {
        let gamma = if gamma.is_finite() && gamma > 1.0 { gamma } else { 1.1 };
        Scale {
            base: base_ns.max(1) as f64,
            ln_gamma: gamma.ln(),
            gamma,
            buckets: buckets.max(2),
        }
    }

    /// Stage durations: 1 s to about 6 years in 200 buckets of 10 %.
    pub fn durations() -> Scale {
        Scale::new(1_000_000_000, 1.1, 200)
    }

    /// Span latencies: 1 µs to about 6 hours in 240 buckets of 10 %.
    pub fn latencies() -> Scale {
        Scale::new(1_000, 1.1, 240)
    }

    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// Bucket of `x` (nanoseconds).
    pub fn index(&self, x: f64) -> usize {
        // NaN and everything below the base land in bucket 0.
        if x.is_nan() || x < self.base {
            return 0;
        }
        let k = ((x / self.base).ln() / self.ln_gamma).floor() as usize + 1;
        k.min(self.buckets - 1)
    }

    /// Lower edge of bucket `k`.
    pub fn lower(&self, k: usize) -> f64 {
        if k == 0 {
            0.0
        } else {
            self.base * self.gamma.powi(k as i32 - 1)
        }
    }

    /// Upper edge of bucket `k`.
    pub fn upper(&self, k: usize) -> f64 {
        self.base * self.gamma.powi(k as i32)
    }

    /// The representative of `[lo, hi]` inside one bucket: the geometric middle (arithmetic in bucket 0).
    fn middle(lo: f64, hi: f64) -> f64 {
        if lo <= 0.0 { hi / 2.0 } else { (lo * hi).sqrt() }
    }
}

/// A histogram of non-negative durations (nanoseconds) over log buckets. Mergeable, decayable, fixed size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogHistogram {
    scale: Scale,
    counts: Box<[f64]>,
    total: f64,
}

impl LogHistogram {
    pub fn new(scale: Scale) -> LogHistogram {
        LogHistogram {
            scale,
            counts: vec![0.0; scale.buckets].into_boxed_slice(),
            total: 0.0,
        }
    }

    pub fn scale(&self) -> &Scale {
        &self.scale
    }

    /// Adds `weight` observations of `x` nanoseconds.
    pub fn add(&mut self, x: u64, weight: f64) {
        let k = self.scale.index(x as f64);
        if let Some(c) = self.counts.get_mut(k) {
            *c += weight;
            self.total += weight;
        }
    }

    /// Total weight.
    pub fn total(&self) -> f64 {
        self.total
    }

    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    /// Adds another histogram on the same scale (a different scale is ignored and `false` returned).
    pub fn merge(&mut self, other: &LogHistogram) -> bool {
        if other.scale != self.scale {
            return false;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        true
    }

    /// Multiplies every count by `factor` (exponential forgetting).
    pub fn decay(&mut self, factor: f64) {
        if !(0.0..1.0).contains(&factor) {
            return;
        }
        for c in self.counts.iter_mut() {
            *c *= factor;
        }
        self.total *= factor;
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0.0);
        self.total = 0.0;
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) in nanoseconds, interpolated inside its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total <= 0.0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for (k, &c) in self.counts.iter().enumerate() {
            if c <= 0.0 {
                continue;
            }
            if acc + c >= target {
                let f = ((target - acc) / c).clamp(0.0, 1.0);
                let (lo, hi) = (self.scale.lower(k), self.scale.upper(k));
                return Some(if lo <= 0.0 { hi * f } else { lo * (hi / lo).powf(f) });
            }
            acc += c;
        }
        Some(self.scale.upper(self.scale.buckets - 1))
    }
}

/// A Kaplan–Meier survival function over log buckets (see the module documentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Survival {
    scale: Scale,
    /// Survival after bucket `k`, for `k ≤ last`; `after[last]` is 0 (the optimistic tail).
    after: Vec<f64>,
    /// Upper edge of bucket `k`, for `k ≤ last`.
    edges: Vec<f64>,
    last: usize,
    /// Exits + censored observations.
    weight: f64,
}

impl Survival {
    /// The estimate from `exits` and the `censored` histograms (same scale); `None` without any observation.
    pub fn estimate(exits: &LogHistogram, censored: &[&LogHistogram]) -> Option<Survival> {
        let scale = exits.scale;
        let n = scale.buckets;
        let mut obs = exits.counts.to_vec();
        for c in censored {
            if c.scale != scale {
                continue;
            }
            for (o, x) in obs.iter_mut().zip(c.counts.iter()) {
                *o += x;
            }
        }
        let weight: f64 = obs.iter().sum();
        if weight <= 0.0 {
            return None;
        }
        let last = obs.iter().rposition(|&o| o > 0.0)?;
        let mut at_risk = vec![0.0; n];
        let mut acc = 0.0;
        for k in (0..n).rev() {
            acc += obs[k];
            at_risk[k] = acc;
        }
        let mut after = Vec::with_capacity(last + 1);
        let mut s = 1.0;
        for (n_k, d_k) in at_risk.iter().zip(exits.counts.iter()).take(last + 1) {
            if *n_k > 0.0 {
                s *= 1.0 - (d_k / n_k).clamp(0.0, 1.0);
            }
            after.push(s);
        }
        if let Some(t) = after.last_mut() {
            *t = 0.0;
        }
        let edges = (0..=last).map(|k| scale.upper(k)).collect();
        Some(Survival {
            scale,
            after,
            edges,
            last,
            weight,
        })
    }

    /// Exits + censored observations behind the estimate.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Upper edge of the last bucket with an observation: `S(x) = 0` from there on.
    pub fn support_end(&self) -> f64 {
        self.edges.get(self.last).copied().unwrap_or(0.0)
    }

    /// `S(x) = P(T > x)`, `x` in nanoseconds.
    pub fn at(&self, x: f64) -> f64 {
        if x.is_nan() || x <= 0.0 {
            return 1.0;
        }
        let k = self.scale.index(x);
        if k > self.last || x >= self.support_end() {
            return 0.0;
        }
        let (Some(&hi), Some(&after)) = (self.edges.get(k), self.after.get(k)) else {
            return 0.0;
        };
        let (lo, before) = match k.checked_sub(1) {
            Some(j) => (
                self.edges.get(j).copied().unwrap_or(0.0),
                self.after.get(j).copied().unwrap_or(1.0),
            ),
            None => (0.0, 1.0),
        };
        let f = if k == 0 {
            x / hi
        } else {
            (x / lo).ln() / self.scale.ln_gamma
        };
        before + (after - before) * f.clamp(0.0, 1.0)
    }

    /// The median of `T`, in nanoseconds.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// The `q`-quantile of `T` (`S(x) = 1 − q`), in nanoseconds.
    pub fn quantile(&self, q: f64) -> f64 {
        let target = 1.0 - q.clamp(0.0, 1.0);
        let mut lo = 0.0;
        let mut hi = self.support_end();
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if self.at(mid) > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

/// A change of a stage's clock: the stage works at `rate` × its normal speed for the next `span` ns, then at
/// its normal speed again. A residual of `τ` ns of normal (clock) time takes `real(τ)` ns of real time:
/// `τ / rate` while `τ < rate·span`, else `span + τ − rate·span`. With `hold` (a stalled stage: nothing leaves
/// it, but its orders' own work goes on, like parcels travelling while deliveries are held) it is
/// `max(span, τ)`: an order leaves at the later of the stall's end and its own normal exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeChange {
    pub rate: f64,
    pub span: f64,
    pub hold: bool,
}

impl TimeChange {
    /// The stage works normally.
    pub const NORMAL: TimeChange = TimeChange {
        rate: 1.0,
        span: 0.0,
        hold: false,
    };

    /// A stall that has ended (its orders leave again): the hold rule with no stall left, `max(0, τ)`; with
    /// [`TimeChange::held_for`] the time an order was held counts towards its own work.
    pub const RELEASED: TimeChange = TimeChange {
        rate: 1.0,
        span: 0.0,
        hold: true,
    };

    /// Real time needed for `tau` ns of clock time.
    pub fn real(&self, tau: f64) -> f64 {
        if self.hold {
            return self.span.max(tau);
        }
        let r = self.rate.max(0.0);
        if tau < r * self.span {
            tau / r
        } else {
            self.span + tau - r * self.span
        }
    }

    /// The clock change and time left (ns) for an order that a stall (`hold`) has held for `held` ns, predicted
    /// from its clock age (its age when the stall began, its clock stood still since): its own residual `τ` from
    /// then ends `τ − held` from now — its own work may have ended while it was held — and it leaves at the later
    /// of that and the stall's end `W`: `max(W, τ − held) = max(W + held, τ) − held`, the hold rule with the
    /// stall's span and the time left both lengthened by `held`. Any other change is returned as it is.
    pub fn held_for(self, left: u64, held: u64) -> (TimeChange, u64) {
        if !self.hold || held == 0 {
            return (self, left);
        }
        (
            TimeChange {
                span: self.span + held as f64,
                ..self
            },
            left.saturating_add(held),
        )
    }

    /// Clock time done in `y` ns of real time (the inverse of [`TimeChange::real`]; with `hold`, none can be
    /// used to leave before the stall ends: `0` before `span`, `y` after).
    pub fn clock(&self, y: f64) -> f64 {
        if self.hold {
            return if y < self.span { 0.0 } else { y };
        }
        let r = self.rate.max(0.0);
        if y < self.span {
            y * r
        } else {
            r * self.span + (y - self.span)
        }
    }
}

/// `P(T − age + R > left | T > age)`: the probability that an order that has been `age` in its stage (stage
/// duration `t`) and has `left` until its deadline misses it, when the rest of its way takes `R` (`rest`;
/// `None` when the next stage is the goal, `R = 0`). `T` and `R` are taken independent (a semi-Markov
/// model). When `S_T(age) = 0` (the order is older than anything seen), its residual time is taken as 0.
pub fn miss_probability(t: &Survival, age: f64, left: f64, rest: Option<&Survival>) -> f64 {
    miss_probability_changed(t, age, left, rest, TimeChange::NORMAL)
}

/// [`miss_probability`] with the stage's clock changed by `tc`: `age` is the clock age; a residual `τ` of the
/// stage duration takes `tc.real(τ)` of real time.
pub fn miss_probability_changed(t: &Survival, age: f64, left: f64, rest: Option<&Survival>, tc: TimeChange) -> f64 {
    if left.is_nan() || left <= 0.0 {
        return 1.0;
    }
    let sa = t.at(age);
    let r_at = |y: f64| rest.map_or(if y < 0.0 { 1.0 } else { 0.0 }, |r| r.at(y));
    if sa <= 1e-12 {
        return r_at(left - tc.real(0.0));
    }
    let Some(r) = rest else {
        return (t.at(age + tc.clock(left)) / sa).clamp(0.0, 1.0);
    };
    let mut acc = 0.0;
    let mut lo = age.max(0.0);
    let mut s_lo = sa;
    let mut k = t.scale.index(lo);
    while k <= t.last {
        let (Some(&hi), Some(&s_hi)) = (t.edges.get(k), t.after.get(k)) else {
            break;
        };
        let mass = (s_lo - s_hi).max(0.0);
        if mass > 0.0 {
            let y = left - tc.real(Scale::middle(lo, hi) - age);
            if y <= 0.0 {
                // From here on every exit comes after the deadline.
                acc += s_lo;
                break;
            }
            acc += mass * r.at(y);
        }
        lo = hi;
        s_lo = s_hi;
        k += 1;
    }
    (acc / sa).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: f64 = 3_600e9;

    fn hist(values_h: &[f64]) -> LogHistogram {
        let mut h = LogHistogram::new(Scale::durations());
        for v in values_h {
            h.add((v * H) as u64, 1.0);
        }
        h
    }

    #[test]
    fn buckets_are_ten_percent_wide_and_cover_the_range() {
        let s = Scale::durations();
        assert_eq!(s.index(0.0), 0);
        assert_eq!(s.index(0.5e9), 0);
        assert_eq!(s.index(1e9), 1);
        let k = s.index(3_600e9);
        assert!(s.lower(k) <= 3_600e9 && 3_600e9 < s.upper(k));
        assert!((s.upper(k) / s.lower(k) - 1.1).abs() < 1e-9);
        assert_eq!(s.index(1e30), s.buckets() - 1);
    }

    #[test]
    fn quantiles_within_five_percent_and_merge_adds() {
        let mut a = hist(&(1..=100).map(f64::from).collect::<Vec<_>>());
        let b = hist(&(101..=200).map(f64::from).collect::<Vec<_>>());
        let m = a.quantile(0.5).unwrap() / H;
        assert!((m - 50.0).abs() / 50.0 < 0.06, "median {m}");
        assert!(a.merge(&b));
        assert_eq!(a.total(), 200.0);
        let m = a.quantile(0.5).unwrap() / H;
        assert!((m - 100.0).abs() / 100.0 < 0.06, "median {m}");
        let other = LogHistogram::new(Scale::latencies());
        assert!(!a.merge(&other), "scales must match");
        a.decay(0.5);
        assert_eq!(a.total(), 100.0);
        assert!(LogHistogram::new(Scale::durations()).quantile(0.5).is_none());
    }

    #[test]
    fn kaplan_meier_without_censoring_is_the_empirical_survival() {
        let exits = hist(&[1.0, 2.0, 3.0, 4.0]);
        let s = Survival::estimate(&exits, &[]).unwrap();
        assert_eq!(s.at(0.0), 1.0);
        assert!((s.at(1.5 * H) - 0.75).abs() < 0.01);
        assert!((s.at(2.5 * H) - 0.5).abs() < 0.01);
        assert!((s.at(3.5 * H) - 0.25).abs() < 0.01);
        assert_eq!(s.at(10.0 * H), 0.0, "optimistic tail");
        let m = s.median() / H;
        assert!((1.9..=3.0).contains(&m), "{m}");
    }

    #[test]
    fn censoring_keeps_the_at_risk_set_honest() {
        // Half the orders left after 1 h; the other half are still there after 5 h: S(3 h) = 0.5, not 0.
        let exits = hist(&[1.0; 10]);
        let censored = hist(&[5.0; 10]);
        let s = Survival::estimate(&exits, &[&censored]).unwrap();
        assert!((s.at(3.0 * H) - 0.5).abs() < 1e-9);
        let naive = Survival::estimate(&exits, &[]).unwrap();
        assert_eq!(naive.at(3.0 * H), 0.0);
        assert!(Survival::estimate(&LogHistogram::new(Scale::durations()), &[]).is_none());
    }

    #[test]
    fn miss_probability_conditions_on_age_and_convolves_the_rest() {
        // T uniform-ish on 1..=10 h; no rest: P(T > age + left | T > age).
        let t = Survival::estimate(&hist(&(1..=10).map(f64::from).collect::<Vec<_>>()), &[]).unwrap();
        let p = miss_probability(&t, 0.0, 5.5 * H, None);
        assert!((p - 0.5).abs() < 0.05, "{p}");
        let p = miss_probability(&t, 5.5 * H, 2.0 * H, None);
        assert!((p - 0.6).abs() < 0.06, "{p}");
        // R fixed at 3 h: missing 5.5 h from now means T − age > 2.5 h.
        let r = Survival::estimate(&hist(&[3.0; 5]), &[]).unwrap();
        let p = miss_probability(&t, 0.0, 5.5 * H, Some(&r));
        assert!((0.7..=0.85).contains(&p), "{p}");
        // Older than anything seen: the residual is 0 and only R counts.
        let p = miss_probability(&t, 20.0 * H, 2.0 * H, Some(&r));
        assert!(p > 0.99, "{p}");
        let p = miss_probability(&t, 20.0 * H, 4.0 * H, Some(&r));
        assert!(p < 0.01, "{p}");
        assert_eq!(miss_probability(&t, 0.0, 0.0, None), 1.0);
    }

    #[test]
    fn a_held_order_leaves_at_the_later_of_the_stalls_end_and_its_own_exit() {
        let hold = TimeChange {
            rate: 0.0,
            span: 3.0 * H,
            hold: true,
        };
        assert_eq!(hold.real(1.0 * H), 3.0 * H);
        assert_eq!(hold.real(5.0 * H), 5.0 * H);
        // T uniform-ish on 1..=10 h, age 0, no rest: the stall (3 h) is all that matters before 3 h.
        let t = Survival::estimate(&hist(&(1..=10).map(f64::from).collect::<Vec<_>>()), &[]).unwrap();
        assert_eq!(miss_probability_changed(&t, 0.0, 2.0 * H, None, hold), 1.0);
        let normal = miss_probability(&t, 0.0, 5.5 * H, None);
        let held = miss_probability_changed(&t, 0.0, 5.5 * H, None, hold);
        assert!((held - normal).abs() < 1e-9, "{held} {normal}");
        // A pause of the same length costs every order the full 3 h instead.
        let pause = TimeChange { hold: false, ..hold };
        let paused = miss_probability_changed(&t, 0.0, 5.5 * H, None, pause);
        assert!(paused > held + 0.2, "{paused} {held}");
    }

    #[test]
    fn an_order_held_by_a_stall_is_not_taken_for_a_straggler() {
        // Half the orders take 2 h, half 10 h. An order 1 h into the stage when the stall began has been held
        // 3 h (4 h old in real time); the stall has 0.5 h left and the order 2 h to its deadline.
        let t = Survival::estimate(&hist(&[2.0, 2.0, 2.0, 2.0, 10.0, 10.0, 10.0, 10.0]), &[]).unwrap();
        let stall = TimeChange {
            rate: 0.0,
            span: 0.5 * H,
            hold: true,
        };
        let (tc, left) = stall.held_for((2.0 * H) as u64, (3.0 * H) as u64);
        // From its clock age (1 h): a 2 h order's own work ended while it was held, it leaves when the stall
        // ends (in time); a 10 h order leaves 6 h from now (late): P(miss) = 1/2.
        let p = miss_probability_changed(&t, 1.0 * H, left as f64, None, tc);
        assert!((p - 0.5).abs() < 1e-6, "{p}");
        // Conditioning on its real age (4 h) instead would leave only the 10 h orders: a sure miss.
        let real_age = miss_probability_changed(&t, 4.0 * H, 2.0 * H, None, stall);
        assert!(real_age > 0.99, "{real_age}");
        // A stall that outlasts the time left is a sure miss either way; no hold, no change.
        let long = TimeChange { span: 3.0 * H, ..stall };
        let (tc, left) = long.held_for((2.0 * H) as u64, (3.0 * H) as u64);
        assert_eq!(miss_probability_changed(&t, 1.0 * H, left as f64, None, tc), 1.0);
        assert_eq!(TimeChange::NORMAL.held_for(5, 7), (TimeChange::NORMAL, 5));
    }
}
