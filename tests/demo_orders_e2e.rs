//! End to end: the OpenTelemetry Demo's Kafka orders through the shipped Kafka topology, all real `bizpilot`
//! processes against a real Kafka-protocol broker (tansu, see `kafka_harness.rs`).
//!
//! A sidecar (`pipelines/sidecar-kafka.yaml`) receives demo-shaped traces over OTLP/HTTP and writes them to
//! `shop.spans`; a gateway (`pipelines/gateway-kafka.yaml` with the shipped overlay
//! `pipelines/overlays/opentelemetry-demo-orders.yaml`) consumes them and the demo's `orders` topic, on which the
//! test publishes `oteldemo.OrderResult` messages as the demo's checkout does (protobuf, no key, W3C `traceparent`
//! of the `orders publish` span). Span shapes from demo 3.0.0: `src/checkout/main.go` (PlaceOrder: `user.id`,
//! `demo.user_context.selected_currency`, on success `demo.order.id`, `demo.order.amount`, ...;
//! `orders publish` producer span), `src/payment/charge.js` (`charge` with `demo.user_context.loyalty_level`, and
//! `gold` on a failed charge), `src/email/email_server.rb` (`POST /send_order_confirmation` with `demo.order.id`).
//!
//! 1. **Span first**: a trace's PlaceOrder and charge spans reach the gateway, then its OrderResult.
//! 2. **Event first**: the OrderResult reaches the gateway, then the trace's spans.
//! 3. **Payment outage**: failed checkouts (no OrderResult: the demo publishes only successful orders).
//!
//! Then every order's email span, which carries only the order id, comes out of the gateway with the order as the
//! OrderResult made it — the exact value Σ cost × quantity + shipping (computed here the demo's way, money.go), its
//! currency (EUR stays EUR), its number of lines — and the customer and tier of its trace. The OrderResult's value
//! truncated to cents equals what the sidecar read from the same order's `demo.order.amount`, for every order
//! (EUR and USD, sub-cent nanos). The gateway counts the joins by which side came first, and the checkout
//! operation's counts equal the traffic's.

mod common;
#[path = "common/demo_orders.rs"]
mod demo_orders;
#[path = "kafka_harness.rs"]
mod kafka_harness;

use bizpilot_business::attrs;
use bizpilot_core::{Currency, Money};
use common::{Bizpilot, Downstream, free_addr, json_get, otlp_post, start_pipeline};
use demo_orders::{DemoMoney, DemoOrder, Line, traceparent};
use kafka_harness::{Msg, Tansu, create_topics, produce};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SIDECAR_OVERLAY: &str = r#"
exporters:
  kafka/spans: {librdkafka: {batch.num.messages: 1}}
  kafka/events: {librdkafka: {batch.num.messages: 1}}
  kafka/telemetry: {librdkafka: {batch.num.messages: 1}}
"#;

const PLACE_ORDER: &str = "oteldemo.CheckoutService/PlaceOrder";
const CHARGE_SERVER: &str = "grpc.oteldemo.PaymentService/Charge";
const EMAIL: &str = "POST /send_order_confirmation";

/// A small deterministic generator (no dependency on the code under test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8 | 1).collect()
    }
}

/// One checkout of the traffic.
struct Checkout {
    trace: Vec<u8>,
    place_order: Vec<u8>,
    publish: Vec<u8>,
    user: String,
    tier: &'static str,
    currency: &'static str,
    /// `None`: the charge failed (payment outage).
    order: Option<DemoOrder>,
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(k: &str, v: &str) -> KeyValue {
    kv(k, Value::StringValue(v.into()))
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn span(trace: &[u8], id: &[u8], parent: &[u8], name: &str, kind: SpanKind, attrs: Vec<KeyValue>, ok: bool) -> Span {
    let t = now_ns();
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.to_vec(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: t - 50_000_000,
        end_time_unix_nano: t,
        attributes: attrs,
        status: Some(Status {
            code: if ok { 0 } else { 2 },
            message: if ok {
                String::new()
            } else {
                "Payment request failed. Invalid token. demo.user_context.loyalty_level=gold".into()
            },
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Checkout {
    fn new(rng: &mut Lcg, i: usize, fail: bool) -> Checkout {
        let currency = if i.is_multiple_of(2) { "EUR" } else { "USD" };
        let tier = ["platinum", "gold", "silver", "bronze"][rng.below(4) as usize];
        let order = (!fail).then(|| {
            let lines = (0..1 + rng.below(3))
                .map(|l| Line {
                    product: format!("PRODUCT{i:03}{l}"),
                    quantity: 1 + rng.below(4) as u32,
                    // Converted prices (the currency service): sub-cent nanos in EUR, whole cents in USD.
                    cost: DemoMoney::new(
                        currency,
                        rng.below(300) as i64,
                        if currency == "EUR" {
                            rng.below(1_000_000_000) as i32
                        } else {
                            rng.below(100) as i32 * 10_000_000
                        },
                    ),
                })
                .collect();
            DemoOrder {
                order_id: format!("{:08x}-9f1e-11ef-8f7a-{:012x}", rng.next(), i),
                tracking_id: format!("track-{i}"),
                shipping: DemoMoney::new(currency, 5 + rng.below(10) as i64, rng.below(100) as i32 * 10_000_000),
                lines,
            }
        });
        Checkout {
            trace: rng.bytes(16),
            place_order: rng.bytes(8),
            publish: rng.bytes(8),
            user: format!("user-{i:04}-{:x}", rng.next()),
            tier: if fail { "gold" } else { tier },
            currency,
            order,
        }
    }

    /// PlaceOrder (checkout), Charge (payment) → charge, and on success `orders publish`.
    fn spans(&self, rng: &mut Lcg) -> Vec<ResourceSpans> {
        let ok = self.order.is_some();
        let mut po = vec![
            s("user.id", &self.user),
            s("demo.user_context.selected_currency", self.currency),
        ];
        if let Some(o) = &self.order {
            let total = o.total();
            po.push(s("demo.order.id", &o.order_id));
            po.push(kv("demo.order.amount", Value::DoubleValue(total.span_amount())));
            po.push(kv("demo.shipping.amount", Value::DoubleValue(o.shipping.span_amount())));
            po.push(kv("demo.order.items.count", Value::IntValue(o.lines.len() as i64)));
            po.push(s("demo.shipping.tracking.id", &o.tracking_id));
        }
        let mut checkout = vec![span(
            &self.trace,
            &self.place_order,
            &[],
            PLACE_ORDER,
            SpanKind::Server,
            po,
            ok,
        )];
        if ok {
            checkout.push(span(
                &self.trace,
                &self.publish,
                &self.place_order,
                "orders publish",
                SpanKind::Producer,
                vec![
                    s("messaging.system", "kafka"),
                    s("messaging.destination.name", "orders"),
                ],
                true,
            ));
        }
        let charge_server = rng.bytes(8);
        let amount = self
            .order
            .as_ref()
            .map(|o| format!("{:.2}", o.total().span_amount()))
            .unwrap_or_else(|| "42.00".into());
        let payment = vec![
            span(
                &self.trace,
                &charge_server,
                &self.place_order,
                CHARGE_SERVER,
                SpanKind::Server,
                vec![s("demo.payment.amount", &amount)],
                ok,
            ),
            span(
                &self.trace,
                &rng.bytes(8),
                &charge_server,
                "charge",
                SpanKind::Internal,
                vec![
                    s("demo.user_context.loyalty_level", self.tier),
                    s("demo.payment.card_type", "visa"),
                    kv("demo.payment.charged", Value::BoolValue(ok)),
                ],
                ok,
            ),
        ];
        vec![request("checkout", checkout), request("payment", payment)]
    }

    fn email(&self, rng: &mut Lcg) -> Option<ResourceSpans> {
        let o = self.order.as_ref()?;
        Some(request(
            "email",
            vec![span(
                &self.trace,
                &rng.bytes(8),
                &self.place_order,
                EMAIL,
                SpanKind::Server,
                vec![s("demo.order.id", &o.order_id)],
                true,
            )],
        ))
    }

    fn order_result(&self) -> Option<Msg> {
        let o = self.order.as_ref()?;
        Some(Msg {
            key: None,
            value: o.encode(),
            headers: vec![(
                "traceparent".into(),
                traceparent(&self.trace, &self.publish).into_bytes(),
            )],
        })
    }
}

fn post(addr: SocketAddr, rs: Vec<ResourceSpans>) {
    let body = ExportTraceServiceRequest { resource_spans: rs }.encode_to_vec();
    for attempt in 0..100 {
        match otlp_post(addr, "/v1/traces", &body) {
            200 => return,
            s if attempt < 99 && (s == 429 || s == 503 || s == 0) => std::thread::sleep(Duration::from_millis(50)),
            s => panic!("POST /v1/traces answered {s}"),
        }
    }
}

fn wait_metric(bp: &Bizpilot, name: &str, filter: &[&str], want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = bp.metric_sum(name, filter);
        if got >= want {
            assert_eq!(got, want, "{what}: {name}{filter:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name}{filter:?} = {got}, want {want}\n{}",
            bp.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(sp: &Span, k: &str) -> Option<String> {
    attrs::get_string(&sp.attributes, k).map(|v| v.into_owned())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn demo_order_results_join_their_traces_through_sidecar_kafka_and_gateway_kafka() {
    let started = Instant::now();
    let mut rng = Lcg(2026);
    const PER_PHASE: usize = 12;
    const FAILED: usize = 8;
    let span_first: Vec<Checkout> = (0..PER_PHASE).map(|i| Checkout::new(&mut rng, i, false)).collect();
    let event_first: Vec<Checkout> = (PER_PHASE..2 * PER_PHASE)
        .map(|i| Checkout::new(&mut rng, i, false))
        .collect();
    let failed: Vec<Checkout> = (2 * PER_PHASE..2 * PER_PHASE + FAILED)
        .map(|i| Checkout::new(&mut rng, i, true))
        .collect();
    // The traffic has what the test is about: EUR with sub-cent nanos that the span's amount truncates.
    assert!(span_first.iter().chain(&event_first).any(|c| {
        let t = c.order.as_ref().unwrap().total();
        t.currency == "EUR" && t.nanos % 10_000_000 != 0
    }));

    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["shop.spans", "shop.orders"], 2);
    create_topics(&b, &["shop.logs", "shop.metrics", "orders"], 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Downstream::start());

    let (gw_admin, gw_prom) = (free_addr(), free_addr());
    let gw_env = [
        ("HOSTNAME", "gw-demo".to_string()),
        ("BIZPILOT_KAFKA_BROKERS", b.clone()),
        ("BIZPILOT_DEMO_KAFKA_BROKERS", b.clone()),
        ("BIZPILOT_OTLP_BACKEND_ENDPOINT", format!("http://{}", backend.addr)),
        ("BIZPILOT_PROMETHEUS_ENDPOINT", gw_prom.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", gw_admin.to_string()),
    ];
    let gw_env: Vec<(&str, &str)> = gw_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let overlay =
        std::fs::read_to_string(common::workspace_root().join("pipelines/overlays/opentelemetry-demo-orders.yaml"))
            .expect("the shipped overlay");
    let gateway = start_pipeline("pipelines/gateway-kafka.yaml", &overlay, gw_admin, &gw_env);

    let (sc_http, sc_admin) = (free_addr(), free_addr());
    let sc_env = [
        ("BIZPILOT_HASH_KEY", "demo-orders-e2e-key".to_string()),
        ("BIZPILOT_KAFKA_BROKERS", b.clone()),
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", free_addr().to_string()),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", sc_http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", sc_admin.to_string()),
    ];
    let sc_env: Vec<(&str, &str)> = sc_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _sidecar = start_pipeline("pipelines/sidecar-kafka.yaml", SIDECAR_OVERLAY, sc_admin, &sc_env);
    eprintln!("[{:?}] broker, sidecar and gateway up", started.elapsed());

    let traces_store = ["store=\"traces\""];
    let applied = ["outcome=\"applied\""];
    // ---- 1. Span first ----
    for c in &span_first {
        post(sc_http, c.spans(&mut rng));
    }
    wait_metric(
        &gateway,
        "bizpilot_business_state_entries",
        &traces_store,
        PER_PHASE as f64,
        "span-first traces linked",
    );
    let msgs: Vec<Msg> = span_first.iter().filter_map(Checkout::order_result).collect();
    produce(&b, "orders", &msgs);
    wait_metric(
        &gateway,
        "bizpilot_business_state_trace_joins_total",
        &["first=\"span\""],
        PER_PHASE as f64,
        "span-first joins",
    );
    eprintln!("[{:?}] span-first orders joined", started.elapsed());

    // ---- 2. Event first ----
    let msgs: Vec<Msg> = event_first.iter().filter_map(Checkout::order_result).collect();
    produce(&b, "orders", &msgs);
    wait_metric(
        &gateway,
        "bizpilot_exporter_business_events_total",
        &applied,
        (2 * PER_PHASE) as f64,
        "OrderResults applied",
    );
    for c in &event_first {
        post(sc_http, c.spans(&mut rng));
    }
    wait_metric(
        &gateway,
        "bizpilot_business_state_trace_joins_total",
        &["first=\"event\""],
        PER_PHASE as f64,
        "event-first joins",
    );
    eprintln!("[{:?}] event-first orders joined", started.elapsed());

    // ---- 3. Payment outage ----
    for c in &failed {
        post(sc_http, c.spans(&mut rng));
    }
    // ---- Every order's confirmation e-mail ----
    for c in span_first.iter().chain(&event_first) {
        post(sc_http, vec![c.email(&mut rng).unwrap()]);
    }
    let want_spans = (span_first.len() + event_first.len()) * 5 + failed.len() * 3;
    rt.block_on(
        backend.wait_for(Duration::from_secs(90), "every span at the backend", |r| {
            r.span_count() >= want_spans
        }),
    );
    let spans = backend.received(|r| r.spans());
    let by_trace_name: HashMap<(String, String), &Span> = spans
        .iter()
        .map(|sp| ((hex(&sp.trace_id), sp.name.clone()), sp))
        .collect();
    let mut eur_sub_cent = 0;
    for c in span_first.iter().chain(&event_first) {
        let o = c.order.as_ref().unwrap();
        let t = hex(&c.trace);
        let email = by_trace_name[&(t.clone(), EMAIL.to_string())];
        let place_order = by_trace_name[&(t.clone(), PLACE_ORDER.to_string())];
        let total = o.total();
        // The OrderResult's value, exactly, in the order's currency.
        let nanos = |v: Option<String>| {
            Money::parse_amount(&v.expect("a value"), Currency::USD)
                .expect("an exact decimal")
                .nanos()
        };
        let exact = total.nanos();
        assert_eq!(nanos(get(email, "business.order.value")), exact, "{}", o.order_id);
        assert_eq!(
            get(email, "business.currency").as_deref(),
            Some(c.currency),
            "{}",
            o.order_id
        );
        assert_eq!(
            attrs::get_i64(&email.attributes, "business.cart.items"),
            Some(o.lines.len() as i64)
        );
        // The customer of its trace (hashed by the sidecar, as on PlaceOrder) and the tier of its charge span.
        let customer = get(place_order, "business.customer.id").expect("PlaceOrder's customer");
        assert_ne!(customer, c.user, "the sidecar hashed the customer id");
        assert_eq!(get(email, "business.customer.id"), Some(customer), "{}", o.order_id);
        assert_eq!(
            get(email, "business.customer.tier").as_deref(),
            Some(c.tier),
            "{}",
            o.order_id
        );
        // The same order value as the span's `demo.order.amount`, which the checkout truncates to cents.
        let from_span = nanos(get(place_order, "business.order.value"));
        assert_eq!(exact - exact.rem_euclid(10_000_000), from_span, "{}", o.order_id);
        if c.currency == "EUR" && exact % 10_000_000 != 0 {
            eur_sub_cent += 1;
        }
    }
    assert!(eur_sub_cent > 0);
    assert_eq!(
        gateway.metric_sum("bizpilot_kafka_receiver_bad_messages_total", &[]),
        0.0,
        "every OrderResult was read"
    );

    // The checkout operation: every checkout counted, the outage's failures as failures.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = json_get(gw_admin, "/api/v1/impact?operation=checkout&limit=0");
        assert_eq!(status, 200, "{body}");
        let sum = &body["summary"][0];
        let (ops, failed_ops) = (
            sum["operations"].as_u64().unwrap_or(0),
            sum["failed"].as_u64().unwrap_or(0),
        );
        if ops as usize == 2 * PER_PHASE + FAILED {
            assert_eq!(failed_ops as usize, FAILED, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "checkout figures not final: {body}");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("[{:?}] done", started.elapsed());
}
