//! A conformance fixture for the real OpenTelemetry Demo ("Astronomy Shop", repository
//! `open-telemetry/opentelemetry-demo`): OTLP trace traffic with exactly the span tree and the attribute names
//! the demo's services emit on checkout, through partial and total payment failures (the demo's
//! `paymentFailure` feature flag) and customer retries, with a ground truth computed here from what was
//! generated — never from bizpilot's code.
//!
//! Two generations, each pinned to a release whose source was read (read it with
//! `git -C <demo repo> show <tag>:<file>`):
//! - [`Generation::Current`]: demo **3.0.0** (`demo.*` attributes and `user.id`);
//! - [`Generation::App`]: demo **2.2.0**, the last release of the `app.*` generation (1.x through 2.2.0 named
//!   the attributes `app.*`; 1.x kept the same names under `src/*service/` directories).
//!
//! One checkout trace (arrows are parent → child; `S` server, `C` client, `I` internal, `P` producer):
//! ```text
//! frontend       S  POST /api/checkout                             src/frontend/pages/api/checkout.ts
//! frontend       C  grpc.oteldemo.CheckoutService/PlaceOrder       (@opentelemetry/instrumentation-grpc)
//! checkout       S  oteldemo.CheckoutService/PlaceOrder            src/checkout/main.go PlaceOrder (otelgrpc)
//!   checkout     I  prepareOrderItemsAndShippingQuoteFromCart      src/checkout/main.go
//!     checkout   C  oteldemo.CartService/GetCart → cart S oteldemo.CartService/GetCart   src/cart/src/services/CartService.cs
//!     checkout   C  oteldemo.ProductCatalogService/GetProduct (per line item) → product-catalog S
//!     checkout   C  oteldemo.CurrencyService/Convert (per line item, and the shipping quote) → currency S Convert
//!     checkout   C  HTTP POST → shipping S POST /get-quote         src/shipping/src/shipping_service{,/quote}.rs
//!   checkout     C  oteldemo.PaymentService/Charge                 chargeCard (otelgrpc client)
//!     payment    S  grpc.oteldemo.PaymentService/Charge            src/payment/index.js chargeServiceHandler
//!       payment  I  charge                                         src/payment/charge.js
//!   (on success)
//!   checkout     C  HTTP POST → shipping S POST /ship-order
//!   checkout     C  oteldemo.CartService/EmptyCart → cart S
//!   checkout     C  HTTP POST → email S POST /send_order_confirmation → I send_email   src/email/email_server.rb
//!   checkout     P  orders publish                                 src/checkout/kafka/producer.go createProducerSpan
//! ```
//! Attributes, as the pinned sources set them (current name / `app.*` name):
//! - PlaceOrder: `user.id` / `app.user.id`, `demo.user_context.selected_currency` / `app.user.currency`; on
//!   success only `demo.order.id`, `demo.shipping.amount`, `demo.order.amount` (float64, user's currency, shipping
//!   included), `demo.order.items.count` (line items) and `demo.shipping.tracking.id`. A failed PlaceOrder has
//!   status ERROR `failed to charge card: …` and **no amount**.
//! - prepareOrderItemsAndShippingQuoteFromCart: `demo.shipping.amount`, `demo.cart.items.count` (Σ quantities),
//!   `demo.order.items.count` (line items).
//! - payment server span: `demo.payment.amount`, `(units + nanos/1e9).toFixed(2)` in 3.0.0; in 2.2.0
//!   `parseFloat(\`${units}.${nanos}\`).toFixed(2)`, which misreads nanos below 0.1 (e.g. 12.05 → "12.50"): the
//!   fixture keeps `App` totals away from 1–9 cents so the demo's own bug does not decide the figures.
//! - `charge`: `demo.payment.card_type`, `demo.payment.card_valid`, `demo.user_context.loyalty_level` (random
//!   per charge among platinum/gold/silver/bronze), `demo.payment.charged`; with `paymentFailure` = f > 0 a
//!   charge fails with probability f *before* that, with `demo.user_context.loyalty_level=gold` and status ERROR
//!   `Payment request failed. Invalid token. demo.user_context.loyalty_level=gold` (2.2.0: `app.loyalty.level`).
//! - shipping `POST /get-quote`: `demo.shipping.cost.total` = `format!("{}.{}", dollars, cents)` (no zero
//!   padding: "8.5" is 8 dollars 5 cents), always USD.
//!
//! **Ground truth** ([`DemoTraffic::truth`]), per operation (`checkout` = the PlaceOrder server span, `payment` =
//! the payment server span), following docs/business-semantics.md §3: operations by outcome and tier; revenue of
//! successes; revenue at risk: a failure of a customer with no active episode opens one `[t, t + W)` worth its
//! cart; a success of that customer inside it ends it as recovered; an episode that reaches its end is lost;
//! money and counts per (tier, currency), the tier of an episode being the failure's (the `charge` span's
//! loyalty level); affected customers: distinct customers with a failure per W-aligned window.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status};

pub const SEC: u64 = 1_000_000_000;
pub const MS: u64 = 1_000_000;

/// Which attribute generation the services emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// demo 3.0.0: `demo.*`, `user.id`.
    Current,
    /// demo 2.2.0 (and 1.x): `app.*`.
    App,
}

impl Generation {
    /// The attribute name in this generation, from the current one.
    fn name(self, current: &str) -> String {
        match self {
            Generation::Current => current.to_string(),
            Generation::App => match current {
                "user.id" => "app.user.id".into(),
                "demo.user_context.selected_currency" => "app.user.currency".into(),
                "demo.user_context.loyalty_level" => "app.loyalty.level".into(),
                other => other.replacen("demo.", "app.", 1),
            },
        }
    }
}

/// A stretch of traffic with the `paymentFailure` flag at `failure` (0.0 – 1.0).
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub seconds: u64,
    pub failure: f64,
}

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub generation: Generation,
    pub seed: u64,
    /// Event time of the first checkout (align it to `window` to keep one affected-customer window).
    pub start_ns: u64,
    /// One new checkout every this many nanoseconds.
    pub every_ns: u64,
    pub phases: Vec<Phase>,
    /// Share of customers who shop in EUR (the rest in USD).
    pub eur_share: f64,
    /// Probability that a customer whose checkout failed tries the same cart again, after 20 s – 3 min.
    pub retry_probability: f64,
    pub max_attempts: u32,
    /// The de-duplication window W (the connector's `dedup_window`).
    pub window_ns: u64,
    /// Spans of one service are exported together per this much event time (as an SDK's batch processor).
    pub export_every_ns: u64,
}

impl DemoConfig {
    /// A payment outage story: healthy, 10 % failures, a total outage, 50 %, healthy again; then, one window
    /// later, a single healthy checkout that ends every remaining episode (so lost revenue is measured).
    pub fn outage(generation: Generation, seed: u64) -> Self {
        DemoConfig {
            generation,
            seed,
            // 2026-01-05T10:00:00Z, aligned to the hour.
            start_ns: 1_767_607_200 * SEC,
            every_ns: 2 * SEC,
            phases: vec![
                Phase {
                    seconds: 180,
                    failure: 0.0,
                },
                Phase {
                    seconds: 180,
                    failure: 0.1,
                },
                Phase {
                    seconds: 240,
                    failure: 1.0,
                },
                Phase {
                    seconds: 180,
                    failure: 0.5,
                },
                Phase {
                    seconds: 180,
                    failure: 0.0,
                },
            ],
            eur_share: 0.3,
            retry_probability: 0.7,
            max_attempts: 3,
            window_ns: 3600 * SEC,
            export_every_ns: 5 * SEC,
        }
    }
}

/// One generated PlaceOrder attempt, as the fixture knows it (the truth's input).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub customer: String,
    pub currency: &'static str,
    /// The order total in minor units (cents) of `currency`, shipping included.
    pub total_cents: i64,
    pub line_items: i64,
    pub quantity: i64,
    pub tier: &'static str,
    pub success: bool,
    pub order_id: Option<String>,
    pub trace_id: [u8; 16],
    pub place_order_end: u64,
    pub charge_end: u64,
    /// The `paymentFailure` fraction in force.
    pub failure_rate: f64,
}

/// A deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
    fn uuid(&mut self) -> String {
        let b: [u8; 16] = self.bytes();
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

const TIERS: [&str; 4] = ["platinum", "gold", "silver", "bronze"];

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}
fn s(k: &str, v: impl Into<String>) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}
fn i(k: &str, v: i64) -> KeyValue {
    kv(k, any_value::Value::IntValue(v))
}
fn f(k: &str, v: f64) -> KeyValue {
    kv(k, any_value::Value::DoubleValue(v))
}
fn b(k: &str, v: bool) -> KeyValue {
    kv(k, any_value::Value::BoolValue(v))
}

/// `units.nanos` of `cents` as the demo's payment service prints it.
fn payment_amount(g: Generation, cents: i64) -> String {
    let (units, nanos) = (cents / 100, (cents % 100) * 10_000_000);
    match g {
        // (Number(amount.units) + amount.nanos / 1000000000).toFixed(2)
        Generation::Current => format!("{:.2}", units as f64 + nanos as f64 / 1e9),
        // parseFloat(`${amount.units}.${amount.nanos}`).toFixed(2)
        Generation::App => {
            let v: f64 = format!("{units}.{nanos}").parse().unwrap_or(0.0);
            format!("{v:.2}")
        }
    }
}

/// The spans of one trace, by service.
#[derive(Default)]
struct TraceSpans {
    by_service: Vec<(&'static str, Span)>,
}

struct SpanSpec<'a> {
    name: &'a str,
    kind: SpanKind,
    parent: [u8; 8],
    start: u64,
    end: u64,
    attrs: Vec<KeyValue>,
    error: Option<String>,
}

impl TraceSpans {
    fn add(&mut self, rng: &mut Rng, trace: [u8; 16], service: &'static str, spec: SpanSpec<'_>) -> [u8; 8] {
        let id: [u8; 8] = rng.bytes();
        self.by_service.push((
            service,
            Span {
                trace_id: trace.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: if spec.parent == [0; 8] {
                    vec![]
                } else {
                    spec.parent.to_vec()
                },
                name: spec.name.to_string(),
                kind: spec.kind as i32,
                start_time_unix_nano: spec.start,
                end_time_unix_nano: spec.end,
                attributes: spec.attrs,
                status: spec.error.map(|m| Status {
                    code: status::StatusCode::Error as i32,
                    message: m,
                }),
                ..Default::default()
            },
        ));
        id
    }
}

/// The generated traffic: OTLP requests in arrival order, and what was generated.
pub struct DemoTraffic {
    pub config: DemoConfig,
    pub attempts: Vec<Attempt>,
    /// One request per service per export interval, in the order the services' SDKs would send them.
    pub requests: Vec<ExportTraceServiceRequest>,
}

/// The truth of one operation, per (tier, currency) where it is money.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpTruth {
    pub successful: u64,
    pub failed: u64,
    /// (outcome, tier) → operations.
    pub operations: BTreeMap<(String, String), u64>,
    /// (tier, currency) → cents.
    pub revenue: BTreeMap<(String, String), i64>,
    pub at_risk: BTreeMap<(String, String), i64>,
    pub recovered: BTreeMap<(String, String), i64>,
    pub lost: BTreeMap<(String, String), i64>,
    /// W-window start → distinct customers with a failure in it.
    pub affected: BTreeMap<u64, BTreeSet<String>>,
    /// Customer → (time of its first failure, its cart in cents, currency, tier, line items).
    pub first_failure: BTreeMap<String, (u64, i64, String, String, i64)>,
}

impl OpTruth {
    pub fn sum(m: &BTreeMap<(String, String), i64>, currency: &str) -> i64 {
        m.iter().filter(|((_, c), _)| c == currency).map(|(_, v)| v).sum()
    }
    pub fn all_affected(&self) -> BTreeSet<String> {
        self.affected.values().flatten().cloned().collect()
    }
}

/// A planned attempt before its spans are made.
struct Plan {
    at: u64,
    customer: usize,
    attempt: u32,
}

struct Customer {
    id: String,
    currency: &'static str,
    /// Line items: (product id, quantity, unit price in cents of the customer's currency).
    cart: Vec<(String, i64, i64)>,
    shipping_usd_cents: i64,
    shipping_cents: i64,
}

const PRODUCTS: [&str; 10] = [
    "OLJCESPC7Z",
    "66VCHSJNUP",
    "1YMWWN1N4O",
    "L9ECAV7KIM",
    "2ZYFJ3GM2N",
    "0PUK6V6EV0",
    "LS4PSXUNUM",
    "9SIQT8TOJO",
    "6E92ZMYYFZ",
    "HQTGWGPNH4",
];

impl DemoTraffic {
    pub fn generate(config: &DemoConfig) -> DemoTraffic {
        let g = config.generation;
        let mut rng = Rng(config.seed);
        let mut customers: Vec<Customer> = Vec::new();
        let mut plans: Vec<Plan> = Vec::new();
        let total: u64 = config.phases.iter().map(|p| p.seconds * SEC).sum();
        let mut t = config.start_ns;
        while t < config.start_ns + total {
            let currency = if rng.unit() < config.eur_share { "EUR" } else { "USD" };
            let lines = rng.range(1, 4) as usize;
            let mut cart = Vec::new();
            for _ in 0..lines {
                let p = PRODUCTS[rng.range(0, PRODUCTS.len() as u64 - 1) as usize].to_string();
                if cart.iter().any(|(q, _, _): &(String, i64, i64)| *q == p) {
                    continue;
                }
                cart.push((p, rng.range(1, 3) as i64, rng.range(199, 34_999) as i64));
            }
            let shipping_usd_cents = rng.range(500, 2_500) as i64;
            let mut shipping_cents = if currency == "EUR" {
                shipping_usd_cents * 92 / 100
            } else {
                shipping_usd_cents
            };
            let items: i64 = cart.iter().map(|(_, q, p)| q * p).sum();
            if g == Generation::App && (1..=9).contains(&((items + shipping_cents) % 100)) {
                // See the module docs: 2.2.0's payment amount misreads these; keep clear of the demo's bug.
                shipping_cents += 10;
            }
            customers.push(Customer {
                id: rng.uuid(),
                currency,
                cart,
                shipping_usd_cents,
                shipping_cents,
            });
            plans.push(Plan {
                at: t,
                customer: customers.len() - 1,
                attempt: 1,
            });
            t += config.every_ns;
        }
        let failure_at = |t: u64| -> f64 {
            let mut edge = config.start_ns;
            for p in &config.phases {
                edge += p.seconds * SEC;
                if t < edge {
                    return p.failure;
                }
            }
            0.0
        };

        let mut attempts = Vec::new();
        let mut spans: Vec<(&'static str, Span)> = Vec::new();
        let mut k = 0;
        while k < plans.len() {
            plans[k..].sort_by_key(|p| p.at);
            let (at, ci, attempt) = (plans[k].at, plans[k].customer, plans[k].attempt);
            k += 1;
            let rate = failure_at(at);
            let failed = rate > 0.0 && rng.unit() < rate;
            let a = Self::trace(g, &mut rng, &customers[ci], at, failed, rate, &mut spans);
            if failed && attempt < config.max_attempts && rng.unit() < config.retry_probability {
                plans.push(Plan {
                    at: at + rng.range(20, 180) * SEC,
                    customer: ci,
                    attempt: attempt + 1,
                });
            }
            attempts.push(a);
        }
        // One window after the last checkout: a healthy checkout that moves event time past every episode.
        let last = attempts
            .iter()
            .map(|a| a.place_order_end)
            .max()
            .unwrap_or(config.start_ns);
        let tick = Customer {
            id: rng.uuid(),
            currency: "USD",
            cart: vec![(PRODUCTS[0].to_string(), 1, 10_000)],
            shipping_usd_cents: 500,
            shipping_cents: 500,
        };
        attempts.push(Self::trace(
            g,
            &mut rng,
            &tick,
            last + config.window_ns + 60 * SEC,
            false,
            0.0,
            &mut spans,
        ));

        // Export: per service, per export interval, in time order of the interval; services interleaved.
        let mut slots: BTreeMap<(u64, &'static str), Vec<Span>> = BTreeMap::new();
        for (svc, sp) in spans {
            slots
                .entry((sp.end_time_unix_nano / config.export_every_ns, svc))
                .or_default()
                .push(sp);
        }
        let requests = slots
            .into_iter()
            .map(|((_, svc), spans)| ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            s("service.name", svc),
                            s("service.namespace", "opentelemetry-demo"),
                            s("telemetry.sdk.language", language(svc)),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: scope(svc).to_string(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
            .collect();
        DemoTraffic {
            config: config.clone(),
            attempts,
            requests,
        }
    }

    /// The spans of one checkout attempt starting at `t0`.
    fn trace(
        g: Generation,
        rng: &mut Rng,
        c: &Customer,
        t0: u64,
        failed: bool,
        rate: f64,
        out: &mut Vec<(&'static str, Span)>,
    ) -> Attempt {
        let n = |x: &str| g.name(x);
        let trace: [u8; 16] = rng.bytes();
        let mut ts = TraceSpans::default();
        let items_cents: i64 = c.cart.iter().map(|(_, q, p)| q * p).sum();
        let total = items_cents + c.shipping_cents;
        let quantity: i64 = c.cart.iter().map(|(_, q, _)| q).sum();
        let lines = c.cart.len() as i64;
        let tier = if failed {
            "gold"
        } else {
            TIERS[rng.range(0, 3) as usize]
        };
        let order_id = (!failed).then(|| rng.uuid());
        let charge_msg = format!(
            "Payment request failed. Invalid token. {}=gold",
            n("demo.user_context.loyalty_level")
        );
        let place_order_err =
            format!("failed to charge card: could not charge the card: rpc error: code = Unknown desc = {charge_msg}");
        let place_end = t0 + if failed { 180 } else { 420 } * MS;
        let root = ts.add(
            rng,
            trace,
            "frontend",
            SpanSpec {
                name: "POST /api/checkout",
                kind: SpanKind::Server,
                parent: [0; 8],
                start: t0,
                end: place_end + 15 * MS,
                attrs: vec![
                    s("http.method", "POST"),
                    s("http.target", "/api/checkout"),
                    i("http.status_code", if failed { 500 } else { 200 }),
                ],
                error: failed.then(|| place_order_err.clone()),
            },
        );
        let fe_client = ts.add(
            rng,
            trace,
            "frontend",
            SpanSpec {
                name: "grpc.oteldemo.CheckoutService/PlaceOrder",
                kind: SpanKind::Client,
                parent: root,
                start: t0 + 5 * MS,
                end: place_end + 10 * MS,
                attrs: vec![s("rpc.system", "grpc"), s("rpc.service", "oteldemo.CheckoutService")],
                error: failed.then(|| place_order_err.clone()),
            },
        );
        let mut po_attrs = vec![
            s("rpc.system", "grpc"),
            s("rpc.service", "oteldemo.CheckoutService"),
            s("rpc.method", "PlaceOrder"),
            s(&n("user.id"), c.id.clone()),
            s(&n("demo.user_context.selected_currency"), c.currency),
        ];
        if g == Generation::Current {
            // Personal data the demo puts on PlaceOrder (src/checkout/main.go after 3.0.0, on main).
            po_attrs.push(s("user.email", format!("{}@example.com", &c.id[..8])));
            po_attrs.push(s("demo.payment.card_number", "4432-8015-6152-0454"));
            po_attrs.push(i("demo.payment.card_cvv", 672));
        }
        let po_start = t0 + 10 * MS;
        // Prepared below, attributes added on success.
        let po_index = ts.by_service.len();
        let po = ts.add(
            rng,
            trace,
            "checkout",
            SpanSpec {
                name: "oteldemo.CheckoutService/PlaceOrder",
                kind: SpanKind::Server,
                parent: fe_client,
                start: po_start,
                end: place_end,
                attrs: po_attrs,
                error: failed.then(|| place_order_err.clone()),
            },
        );
        // prepareOrderItemsAndShippingQuoteFromCart and its calls.
        let prep = ts.add(
            rng,
            trace,
            "checkout",
            SpanSpec {
                name: "prepareOrderItemsAndShippingQuoteFromCart",
                kind: SpanKind::Internal,
                parent: po,
                start: po_start + MS,
                end: po_start + 90 * MS,
                attrs: vec![
                    f(&n("demo.shipping.amount"), c.shipping_cents as f64 / 100.0),
                    i(&n("demo.cart.items.count"), quantity),
                    i(&n("demo.order.items.count"), lines),
                ],
                error: None,
            },
        );
        let mut clock = po_start + 2 * MS;
        let call = |ts: &mut TraceSpans,
                    rng: &mut Rng,
                    client: &str,
                    server_svc: &'static str,
                    server: &str,
                    attrs: Vec<KeyValue>,
                    parent: [u8; 8],
                    clock: &mut u64| {
            let cl = ts.add(
                rng,
                trace,
                "checkout",
                SpanSpec {
                    name: client,
                    kind: SpanKind::Client,
                    parent,
                    start: *clock,
                    end: *clock + 8 * MS,
                    attrs: vec![],
                    error: None,
                },
            );
            ts.add(
                rng,
                trace,
                server_svc,
                SpanSpec {
                    name: server,
                    kind: SpanKind::Server,
                    parent: cl,
                    start: *clock + MS,
                    end: *clock + 7 * MS,
                    attrs,
                    error: None,
                },
            );
            *clock += 9 * MS;
        };
        call(
            &mut ts,
            rng,
            "oteldemo.CartService/GetCart",
            "cart",
            "oteldemo.CartService/GetCart",
            vec![s(&n("user.id"), c.id.clone()), i(&n("demo.cart.items.count"), lines)],
            prep,
            &mut clock,
        );
        for (p, _, _) in &c.cart {
            call(
                &mut ts,
                rng,
                "oteldemo.ProductCatalogService/GetProduct",
                "product-catalog",
                "oteldemo.ProductCatalogService/GetProduct",
                vec![s(&n("demo.product.id"), p.clone())],
                prep,
                &mut clock,
            );
            if c.currency != "USD" {
                call(
                    &mut ts,
                    rng,
                    "oteldemo.CurrencyService/Convert",
                    "currency",
                    "Convert",
                    vec![
                        s(&n("demo.currency.conversion.from"), "USD"),
                        s(&n("demo.currency.conversion.to"), c.currency),
                    ],
                    prep,
                    &mut clock,
                );
            }
        }
        // Shipping quote over HTTP (otelhttp client "POST"; actix server "POST /get-quote").
        call(
            &mut ts,
            rng,
            "POST",
            "shipping",
            "POST /get-quote",
            vec![
                s("http.request.method", "POST"),
                s("http.route", "/get-quote"),
                s(
                    &n("demo.shipping.cost.total"),
                    format!("{}.{}", c.shipping_usd_cents / 100, c.shipping_usd_cents % 100),
                ),
            ],
            prep,
            &mut clock,
        );
        // Charge.
        let charge_start = po_start + 100 * MS;
        let charge_end = charge_start + 40 * MS;
        let pay_client = ts.add(
            rng,
            trace,
            "checkout",
            SpanSpec {
                name: "oteldemo.PaymentService/Charge",
                kind: SpanKind::Client,
                parent: po,
                start: charge_start,
                end: charge_end + 2 * MS,
                attrs: vec![s("rpc.system", "grpc")],
                error: failed.then(|| charge_msg.clone()),
            },
        );
        let pay_server = ts.add(
            rng,
            trace,
            "payment",
            SpanSpec {
                name: "grpc.oteldemo.PaymentService/Charge",
                kind: SpanKind::Server,
                parent: pay_client,
                start: charge_start + MS,
                end: charge_end,
                attrs: vec![
                    s("rpc.system", "grpc"),
                    s("rpc.service", "oteldemo.PaymentService"),
                    s(&n("demo.payment.amount"), payment_amount(g, total)),
                ],
                error: failed.then(|| charge_msg.clone()),
            },
        );
        let mut charge_attrs = vec![s(&n("demo.user_context.loyalty_level"), tier)];
        if !failed {
            charge_attrs.push(s(&n("demo.payment.card_type"), "visa"));
            charge_attrs.push(b(&n("demo.payment.card_valid"), true));
            charge_attrs.push(b(&n("demo.payment.charged"), true));
        }
        ts.add(
            rng,
            trace,
            "payment",
            SpanSpec {
                name: "charge",
                kind: SpanKind::Internal,
                parent: pay_server,
                start: charge_start + 2 * MS,
                end: charge_end - MS,
                attrs: charge_attrs,
                error: failed.then(|| charge_msg.clone()),
            },
        );
        if let Some(order) = &order_id {
            let mut clock = charge_end + 5 * MS;
            call(
                &mut ts,
                rng,
                "POST",
                "shipping",
                "POST /ship-order",
                vec![s("http.request.method", "POST"), s("http.route", "/ship-order")],
                po,
                &mut clock,
            );
            call(
                &mut ts,
                rng,
                "oteldemo.CartService/EmptyCart",
                "cart",
                "oteldemo.CartService/EmptyCart",
                vec![s(&n("user.id"), c.id.clone())],
                po,
                &mut clock,
            );
            let email_order = if g == Generation::Current {
                s("demo.order.id", order.clone())
            } else {
                s("app.email.recipient", format!("{}@example.com", &c.id[..8]))
            };
            call(
                &mut ts,
                rng,
                "POST",
                "email",
                "POST /send_order_confirmation",
                vec![s("http.request.method", "POST"), email_order],
                po,
                &mut clock,
            );
            ts.add(
                rng,
                trace,
                "checkout",
                SpanSpec {
                    name: "orders publish",
                    kind: SpanKind::Producer,
                    parent: po,
                    start: clock,
                    end: clock + 3 * MS,
                    attrs: vec![
                        s("peer.service", "kafka"),
                        s("messaging.system", "kafka"),
                        s("messaging.destination.name", "orders"),
                        s("messaging.operation", "publish"),
                        b("messaging.kafka.producer.success", true),
                    ],
                    error: None,
                },
            );
            // The order's attributes, set at the end of a successful PlaceOrder.
            let po_span = &mut ts.by_service[po_index].1;
            po_span.attributes.extend([
                s(&n("demo.order.id"), order.clone()),
                f(&n("demo.shipping.amount"), c.shipping_cents as f64 / 100.0),
                f(&n("demo.order.amount"), total as f64 / 100.0),
                i(&n("demo.order.items.count"), lines),
                s(&n("demo.shipping.tracking.id"), rng.uuid()),
            ]);
        }
        out.extend(ts.by_service);
        Attempt {
            customer: c.id.clone(),
            currency: c.currency,
            total_cents: total,
            line_items: lines,
            quantity,
            tier,
            success: !failed,
            order_id,
            trace_id: trace,
            place_order_end: place_end,
            charge_end,
            failure_rate: rate,
        }
    }

    /// The ground truth of `operation` (`checkout` or `payment`), from the attempts alone.
    pub fn truth(&self, operation: &str) -> OpTruth {
        self.truth_of(operation, |_| true)
    }

    /// The ground truth of `operation` over the attempts that `keep` selects (e.g. the traces one of several
    /// gateways consumed): the same definitions applied to that share alone.
    pub fn truth_of(&self, operation: &str, keep: impl Fn(&Attempt) -> bool) -> OpTruth {
        let w = self.config.window_ns;
        let time = |a: &Attempt| {
            if operation == "payment" {
                a.charge_end
            } else {
                a.place_order_end
            }
        };
        let mut ops: Vec<&Attempt> = self.attempts.iter().filter(|a| keep(a)).collect();
        ops.sort_by_key(|a| time(a));
        let mut t = OpTruth::default();
        // customer → (episode end, cents, tier, currency)
        let mut episodes: HashMap<String, (u64, i64, String, String)> = HashMap::new();
        let end_expired = |t: &mut OpTruth, episodes: &mut HashMap<String, (u64, i64, String, String)>, now: u64| {
            let expired: Vec<String> = episodes
                .iter()
                .filter(|(_, (end, ..))| *end <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                if let Some((_, v, tier, cur)) = episodes.remove(&k) {
                    *t.lost.entry((tier, cur)).or_default() += v;
                }
            }
        };
        for a in ops {
            let at = time(a);
            end_expired(&mut t, &mut episodes, at);
            let tier = a.tier.to_string();
            let cur = a.currency.to_string();
            let outcome = if a.success { "success" } else { "failure" };
            *t.operations.entry((outcome.into(), tier.clone())).or_default() += 1;
            if a.success {
                t.successful += 1;
                *t.revenue.entry((tier.clone(), cur.clone())).or_default() += a.total_cents;
                if let Some((_, v, etier, ecur)) = episodes.remove(&a.customer) {
                    *t.recovered.entry((etier, ecur)).or_default() += v;
                }
            } else {
                t.failed += 1;
                t.affected.entry(at - at % w).or_default().insert(a.customer.clone());
                t.first_failure.entry(a.customer.clone()).or_insert((
                    at,
                    a.total_cents,
                    cur.clone(),
                    tier.clone(),
                    a.line_items,
                ));
                if !episodes.contains_key(&a.customer) {
                    *t.at_risk.entry((tier.clone(), cur.clone())).or_default() += a.total_cents;
                    episodes.insert(a.customer.clone(), (at + w, a.total_cents, tier, cur));
                }
            }
        }
        t
    }
}

fn language(svc: &str) -> &'static str {
    match svc {
        "frontend" | "payment" => "nodejs",
        "checkout" | "product-catalog" => "go",
        "cart" => "dotnet",
        "currency" => "cpp",
        "shipping" => "rust",
        "email" => "ruby",
        _ => "unknown",
    }
}

fn scope(svc: &str) -> &'static str {
    match svc {
        "frontend" => "@opentelemetry/instrumentation-grpc",
        "checkout" => "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc",
        "payment" => "payment",
        "shipping" => "opentelemetry-instrumentation-actix-web",
        "email" => "OpenTelemetry::Instrumentation::Sinatra",
        "cart" => "Microsoft.AspNetCore",
        _ => "demo",
    }
}

/// Cents as a decimal string ("123.45").
pub fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}
