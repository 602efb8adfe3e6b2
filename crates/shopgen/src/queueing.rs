//! A discrete-event queueing simulation of the OpenTelemetry Demo's services, for validating capacity plans
//! against measurement. Written independently of the planner: it knows nothing of funnels or multipliers, only
//! arrivals, replicas, slots and service times; it measures what happened.
//!
//! - **Workload**: user actions arrive as Poisson processes: browse (`browse_per_sec`), add to cart
//!   (`browse_per_sec × cart_per_browse`) and checkout (`browse_per_sec × checkout_per_browse`); each is one
//!   trace. Call trees follow the demo (tag 2.2.0, `src/checkout/main.go` `PlaceOrder`): browse = frontend
//!   `GET /api/products/[productId]` → product-catalog `GetProduct` → currency `Convert` ×2; cart = frontend
//!   `POST /api/cart` → cart `AddItem`; checkout = frontend `POST /api/checkout` → checkout `PlaceOrder` →
//!   cart `GetCart`, per item (1–3) product-catalog `GetProduct` + currency `Convert`, shipping
//!   `POST /get-quote`, currency `Convert`, payment `grpc.oteldemo.PaymentService/Charge` (fails with
//!   `payment_failure`; a failed charge is retried once), and when paid: shipping `POST /ship-order`, cart
//!   `EmptyCart`, email `POST /send_order_confirmation`.
//! - **Services**: `replicas` replicas of `slots` concurrent requests each; a call goes to the replica with
//!   the fewest calls in progress or waiting, waits FIFO for a slot, holds it for its own service time
//!   (log-normal with mean `service_time` and coefficient of variation `cv`) and then for its child calls,
//!   made one after the other. Its span runs from arrival to release (waiting included), as a server span
//!   measures it.
//! - **Measurement** ([`Measured`]): per service, over `[warmup, duration)` of simulated time: calls started,
//!   mean concurrency (Σ span time in the interval / interval), slot utilization (Σ slot-held time / (slots ×
//!   replicas × interval)) and mean wait for a slot.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A service of the simulation.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub replicas: usize,
    pub slots: usize,
    /// Mean own service time (s).
    pub service_time: f64,
    /// Coefficient of variation of the service time.
    pub cv: f64,
}

/// The workload and the services.
#[derive(Debug, Clone)]
pub struct QueueingConfig {
    pub seed: u64,
    pub start_unix_nano: u64,
    /// Simulated seconds (arrivals stop then; calls in flight finish).
    pub duration: f64,
    /// Seconds at the start not measured.
    pub warmup: f64,
    pub browse_per_sec: f64,
    pub cart_per_browse: f64,
    pub checkout_per_browse: f64,
    pub payment_failure: f64,
    pub services: Vec<ServiceSpec>,
    /// Keep spans (for the planner) or only measure.
    pub emit_spans: bool,
}

impl QueueingConfig {
    /// The demo's services with the sizes the validation uses.
    pub fn demo(seed: u64, browse_per_sec: f64, checkout_per_browse: f64) -> Self {
        let s = |name, replicas, slots, service_time, cv| ServiceSpec {
            name,
            replicas,
            slots,
            service_time,
            cv,
        };
        QueueingConfig {
            seed,
            start_unix_nano: 1_767_225_600_000_000_000, // 2026-01-01T00:00:00Z
            duration: 900.0,
            warmup: 30.0,
            browse_per_sec,
            cart_per_browse: 0.3,
            checkout_per_browse,
            payment_failure: 0.05,
            services: vec![
                s("frontend", 3, 32, 0.005, 0.5),
                s("product-catalog", 2, 4, 0.030, 0.5),
                s("currency", 1, 8, 0.002, 0.5),
                s("cart", 1, 4, 0.008, 0.5),
                s("checkout", 1, 32, 0.010, 0.5),
                s("payment", 2, 4, 0.450, 0.5),
                s("shipping", 1, 8, 0.006, 0.5),
                s("email", 1, 8, 0.005, 0.5),
            ],
            emit_spans: true,
        }
    }
}

/// What one service did in the measured interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceMeasure {
    pub calls: u64,
    pub rate: f64,
    pub concurrency: f64,
    pub utilization: f64,
    pub mean_wait: f64,
}

/// What the simulation measured, and the spans (when kept), in `ExportTraceServiceRequest`s of one
/// resource each holding what started in the same 5 s, ordered by time.
#[derive(Debug, Default)]
pub struct Measured {
    pub interval: f64,
    pub services: BTreeMap<String, ServiceMeasure>,
    pub requests: Vec<ExportTraceServiceRequest>,
    pub spans: u64,
}

#[derive(Debug, Clone)]
struct Node {
    service: usize,
    name: &'static str,
    route: Option<&'static str>,
    error: bool,
    children: Vec<Node>,
}

#[derive(Debug)]
struct Call {
    node_path: Vec<usize>,
    trace: usize,
    span_id: [u8; 8],
    parent: Option<usize>,
    arrive: f64,
    acquired: f64,
    replica: usize,
    next_child: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Ev {
    /// A call arrives at its service.
    Arrive(usize),
    /// A call's own work is done.
    Worked(usize),
}

struct Replica {
    busy: usize,
    queue: VecDeque<usize>,
}

fn ln_normal(rng: &mut StdRng, mean: f64, cv: f64) -> f64 {
    let s2 = (1.0 + cv * cv).ln();
    let mu = mean.ln() - s2 / 2.0;
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mu + s2.sqrt() * z).exp()
}

use crate::spans::s as kv;

struct Sim<'a> {
    cfg: &'a QueueingConfig,
    rng: StdRng,
    trees: Vec<Node>,
    trace_ids: Vec<[u8; 16]>,
    calls: Vec<Call>,
    replicas: Vec<Vec<Replica>>,
    events: BinaryHeap<Reverse<(u64, u64, usize, u8)>>,
    seq: u64,
    spans: Vec<Vec<Span>>,
    span_replicas: Vec<Vec<usize>>,
    // Per service: calls started in the interval, span time, slot time, wait time.
    acc: Vec<(u64, f64, f64, f64)>,
}

const NS: f64 = 1e9;

impl Sim<'_> {
    fn svc(&self, name: &str) -> usize {
        self.cfg.services.iter().position(|s| s.name == name).unwrap_or(0)
    }

    fn node(&self, svc: &str, name: &'static str, route: Option<&'static str>, children: Vec<Node>) -> Node {
        Node {
            service: self.svc(svc),
            name,
            route,
            error: false,
            children,
        }
    }

    fn checkout_tree(&mut self) -> Node {
        let items = self.rng.random_range(1..=3);
        let mut ch = vec![self.node("cart", "oteldemo.CartService/GetCart", None, vec![])];
        for _ in 0..items {
            ch.push(self.node(
                "product-catalog",
                "oteldemo.ProductCatalogService/GetProduct",
                None,
                vec![],
            ));
            ch.push(self.node("currency", "oteldemo.CurrencyService/Convert", None, vec![]));
        }
        ch.push(self.node("shipping", "POST /get-quote", None, vec![]));
        ch.push(self.node("currency", "oteldemo.CurrencyService/Convert", None, vec![]));
        let mut paid = false;
        for _ in 0..2 {
            let mut c = self.node("payment", "grpc.oteldemo.PaymentService/Charge", None, vec![]);
            c.error = self.rng.random_bool(self.cfg.payment_failure);
            paid = !c.error;
            ch.push(c);
            if paid {
                break;
            }
        }
        if paid {
            ch.push(self.node("shipping", "POST /ship-order", None, vec![]));
            ch.push(self.node("cart", "oteldemo.CartService/EmptyCart", None, vec![]));
            ch.push(self.node("email", "POST /send_order_confirmation", None, vec![]));
        }
        let mut place = self.node("checkout", "oteldemo.CheckoutService/PlaceOrder", None, ch);
        place.error = !paid;
        let mut root = self.node("frontend", "POST", Some("/api/checkout"), vec![place]);
        root.error = !paid;
        root
    }

    fn push(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        let (kind, id) = match ev {
            Ev::Arrive(i) => (0, i),
            Ev::Worked(i) => (1, i),
        };
        self.events.push(Reverse(((t * NS) as u64, self.seq, id, kind)));
    }

    fn node_of(&self, call: usize) -> Option<&Node> {
        let c = self.calls.get(call)?;
        let mut n = self.trees.get(c.trace)?;
        for i in &c.node_path {
            n = n.children.get(*i)?;
        }
        Some(n)
    }

    fn start_call(&mut self, t: f64, trace: usize, node_path: Vec<usize>, parent: Option<usize>) {
        let id = self.calls.len();
        let mut span_id = [0u8; 8];
        self.rng.fill(&mut span_id);
        self.calls.push(Call {
            node_path,
            trace,
            span_id,
            parent,
            arrive: t,
            acquired: t,
            replica: 0,
            next_child: 0,
        });
        self.push(t, Ev::Arrive(id));
    }

    fn acquire(&mut self, t: f64, call: usize) {
        let Some(svc) = self.node_of(call).map(|n| n.service) else {
            return;
        };
        let spec = self.cfg.services[svc].clone();
        if let Some(c) = self.calls.get_mut(call) {
            c.acquired = t;
        }
        let work = ln_normal(&mut self.rng, spec.service_time, spec.cv);
        self.push(t + work, Ev::Worked(call));
    }

    fn arrive(&mut self, t: f64, call: usize) {
        let Some(svc) = self.node_of(call).map(|n| n.service) else {
            return;
        };
        let slots = self.cfg.services[svc].slots;
        let reps = &mut self.replicas[svc];
        let r = (0..reps.len())
            .min_by_key(|i| (reps[*i].busy + reps[*i].queue.len(), *i))
            .unwrap_or(0);
        self.calls[call].replica = r;
        if reps[r].busy < slots {
            reps[r].busy += 1;
            self.acquire(t, call);
        } else {
            reps[r].queue.push_back(call);
        }
    }

    /// The call's own work or its last child is done: next child, or finish.
    fn proceed(&mut self, t: f64, call: usize) {
        let Some(n) = self.node_of(call) else { return };
        let next = self.calls[call].next_child;
        if next < n.children.len() {
            self.calls[call].next_child += 1;
            let mut path = self.calls[call].node_path.clone();
            path.push(next);
            let trace = self.calls[call].trace;
            self.start_call(t, trace, path, Some(call));
            return;
        }
        self.finish(t, call);
    }

    fn finish(&mut self, t: f64, call: usize) {
        let Some(n) = self.node_of(call).cloned() else { return };
        let svc = n.service;
        let c = &self.calls[call];
        let (arrive, acquired, replica, parent, trace) = (c.arrive, c.acquired, c.replica, c.parent, c.trace);
        // Measurement: the part of the call inside the interval.
        let (lo, hi) = (self.cfg.warmup, self.cfg.duration);
        let clip = |a: f64, b: f64| (b.min(hi) - a.max(lo)).max(0.0);
        let acc = &mut self.acc[svc];
        if arrive >= lo && arrive < hi {
            acc.0 += 1;
            acc.3 += acquired - arrive;
        }
        acc.1 += clip(arrive, t);
        acc.2 += clip(acquired, t);
        if self.cfg.emit_spans {
            let tid = self.trace_ids[trace];
            let parent_id = parent.map(|p| self.calls[p].span_id.to_vec()).unwrap_or_default();
            let mut attributes = Vec::new();
            if let Some(r) = n.route {
                attributes.push(kv("http.route", r));
                attributes.push(kv("http.request.method", n.name));
            }
            let start = self.cfg.start_unix_nano + (arrive * NS) as u64;
            let end = self.cfg.start_unix_nano + (t * NS) as u64;
            self.spans[svc].push(Span {
                trace_id: tid.to_vec(),
                span_id: self.calls[call].span_id.to_vec(),
                parent_span_id: parent_id,
                name: n.name.into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: n.error.then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: "payment declined".into(),
                }),
                ..Default::default()
            });
            self.span_replicas[svc].push(replica);
        }
        // Release the slot; the next waiting call takes it.
        let next = self.replicas[svc][replica].queue.pop_front();
        match next {
            Some(w) => self.acquire(t, w),
            None => {
                let r = &mut self.replicas[svc][replica];
                r.busy = r.busy.saturating_sub(1);
            }
        }
        if let Some(p) = parent {
            self.proceed(t, p);
        }
    }
}

/// Runs the simulation.
pub fn simulate(cfg: &QueueingConfig) -> Measured {
    let n = cfg.services.len();
    let mut sim = Sim {
        cfg,
        rng: StdRng::seed_from_u64(cfg.seed),
        trees: Vec::new(),
        trace_ids: Vec::new(),
        calls: Vec::new(),
        replicas: cfg
            .services
            .iter()
            .map(|s| {
                (0..s.replicas.max(1))
                    .map(|_| Replica {
                        busy: 0,
                        queue: VecDeque::new(),
                    })
                    .collect()
            })
            .collect(),
        events: BinaryHeap::new(),
        seq: 0,
        spans: vec![Vec::new(); n],
        span_replicas: vec![Vec::new(); n],
        acc: vec![(0, 0.0, 0.0, 0.0); n],
    };
    // Arrivals: one merged Poisson process, each arrival a browse, cart or checkout action.
    let total = cfg.browse_per_sec * (1.0 + cfg.cart_per_browse + cfg.checkout_per_browse);
    let mut t = 0.0;
    let mut arrivals = Vec::new();
    while total > 0.0 && t < cfg.duration {
        let u: f64 = sim.rng.random::<f64>().max(1e-12);
        t += -u.ln() / total;
        if t >= cfg.duration {
            break;
        }
        let x: f64 = sim.rng.random::<f64>() * (1.0 + cfg.cart_per_browse + cfg.checkout_per_browse);
        arrivals.push((t, x));
    }
    for (t, x) in arrivals {
        let tree = if x < 1.0 {
            let cur = || sim.node("currency", "oteldemo.CurrencyService/Convert", None, vec![]);
            let kids = vec![
                sim.node(
                    "product-catalog",
                    "oteldemo.ProductCatalogService/GetProduct",
                    None,
                    vec![],
                ),
                cur(),
                cur(),
            ];
            sim.node("frontend", "GET", Some("/api/products/[productId]"), kids)
        } else if x < 1.0 + cfg.cart_per_browse {
            let kids = vec![sim.node("cart", "oteldemo.CartService/AddItem", None, vec![])];
            sim.node("frontend", "POST", Some("/api/cart"), kids)
        } else {
            sim.checkout_tree()
        };
        let trace = sim.trees.len();
        sim.trees.push(tree);
        let mut tid = [0u8; 16];
        sim.rng.fill(&mut tid);
        sim.trace_ids.push(tid);
        sim.start_call(t, trace, Vec::new(), None);
    }
    while let Some(Reverse((tn, _, id, kind))) = sim.events.pop() {
        let t = tn as f64 / NS;
        if kind == 0 {
            sim.arrive(t, id);
        } else {
            sim.proceed(t, id);
        }
    }
    let interval = (cfg.duration - cfg.warmup).max(1e-9);
    let mut m = Measured {
        interval,
        ..Default::default()
    };
    for (i, s) in cfg.services.iter().enumerate() {
        let (calls, span_t, slot_t, wait_t) = sim.acc[i];
        m.services.insert(
            s.name.to_string(),
            ServiceMeasure {
                calls,
                rate: calls as f64 / interval,
                concurrency: span_t / interval,
                utilization: slot_t / (interval * (s.replicas * s.slots) as f64),
                mean_wait: if calls > 0 { wait_t / calls as f64 } else { 0.0 },
            },
        );
    }
    if cfg.emit_spans {
        // Requests per service and replica, spans in time order.
        for (i, s) in cfg.services.iter().enumerate() {
            let mut by_rep: BTreeMap<usize, Vec<Span>> = BTreeMap::new();
            for (span, r) in std::mem::take(&mut sim.spans[i])
                .into_iter()
                .zip(sim.span_replicas[i].iter())
            {
                by_rep.entry(*r).or_default().push(span);
            }
            for (r, mut spans) in by_rep {
                spans.sort_by_key(|s| s.start_time_unix_nano);
                m.spans += spans.len() as u64;
                // As an SDK's batch exporter sends them: what started in the same 5 s.
                for chunk in spans
                    .chunk_by(|a, b| a.start_time_unix_nano / 5_000_000_000 == b.start_time_unix_nano / 5_000_000_000)
                {
                    m.requests.push(ExportTraceServiceRequest {
                        resource_spans: vec![ResourceSpans {
                            resource: Some(Resource {
                                attributes: vec![
                                    kv("service.name", s.name),
                                    kv("service.instance.id", &format!("{}-{r}", s.name)),
                                ],
                                ..Default::default()
                            }),
                            scope_spans: vec![ScopeSpans {
                                scope: Some(InstrumentationScope {
                                    name: "queueing-sim".into(),
                                    ..Default::default()
                                }),
                                spans: chunk.to_vec(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                    });
                }
            }
        }
        // Interleave by time so a consumer sees them roughly as they happened.
        m.requests.sort_by_key(|r| {
            r.resource_spans
                .first()
                .and_then(|rs| rs.scope_spans.first())
                .and_then(|ss| ss.spans.first())
                .map(|s| s.start_time_unix_nano)
                .unwrap_or(0)
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One service, M/M/1-like: utilization and Little's law hold in what the simulation measures.
    #[test]
    fn measures_match_queueing_laws() {
        let mut cfg = QueueingConfig::demo(7, 20.0, 0.1);
        cfg.duration = 300.0;
        cfg.emit_spans = false;
        let m = simulate(&cfg);
        let pc = &m.services["product-catalog"];
        // Browse 20/s × 1 + checkout 2/s × 2 items on average: 24/s.
        assert!((pc.rate - 24.0).abs() / 24.0 < 0.05, "{pc:?}");
        // Utilization law: U = λS / slots.
        let u = pc.rate * 0.030 / 8.0;
        assert!((pc.utilization - u).abs() / u < 0.06, "{pc:?} vs {u}");
        let pay = &m.services["payment"];
        assert!(pay.concurrency >= pay.utilization * 8.0 * 0.99, "{pay:?}");
    }
}
