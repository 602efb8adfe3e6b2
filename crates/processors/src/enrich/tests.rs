use super::*;
use bizpilot_business::attrs::{self, KeyValue, kv_f64, kv_i64, kv_str};
use bizpilot_business::{BusinessEvent, BusinessState, Lookup, StateConfig};
use bizpilot_core::{Ack, ComponentId, Delivery, Output, PipelineId, ProcessorContext, Running, Target, Traces};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn span(name: &str, a: Vec<KeyValue>) -> Span {
    Span {
        name: name.into(),
        attributes: a,
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn spans(req: &ExportTraceServiceRequest) -> Vec<&Span> {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect()
}

/// Which path of the engine the synchronous tests take.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Decoded,
    Views,
}

thread_local! {
    static PATH: std::cell::Cell<Path> = const { std::cell::Cell::new(Path::Decoded) };
}

/// Runs a test body once per path.
fn both_paths(body: fn()) {
    for p in [Path::Decoded, Path::Views] {
        PATH.with(|c| c.set(p));
        body();
    }
}

/// Enriches `req` by the current path: in place ([`Engine::apply_traces`]), or on its encoding
/// ([`Engine::apply_encoded`]) and decoded back.
fn apply(e: &Engine, req: &mut ExportTraceServiceRequest) -> u64 {
    match PATH.with(|c| c.get()) {
        Path::Decoded => e.apply_traces(req),
        Path::Views => {
            let mut t = Traces::from_bytes(req.encode_to_vec().into()).unwrap();
            let n = e.apply_encoded(&mut t);
            assert!(t.decoded().is_none(), "the view path does not decode");
            *req = t.into_message().unwrap();
            n
        }
    }
}

fn s(sp: &Span, k: &str) -> Option<String> {
    attrs::get_string(&sp.attributes, k).map(|c| c.into_owned())
}

fn state_exts(cfg: StateConfig) -> (Extensions, Arc<BusinessState>) {
    let st = Arc::new(BusinessState::new("business_state", cfg));
    let mut e = Extensions::default();
    e.insert("business_state".parse().unwrap(), st.clone());
    (e, st)
}

fn order_event(order: &str, customer: &str, amount: &str, t: u64) -> BusinessEvent {
    let mut ev = BusinessEvent::new("order.placed", t);
    ev.order_id = Some(order.into());
    ev.customer_id = Some(customer.into());
    ev.amount = Some(bizpilot_core::Money::parse(amount, None).unwrap());
    ev.item_count = Some(3);
    ev
}

#[test]
fn rules_apply_in_order_with_conditions() {
    both_paths(rules_apply_in_order_with_conditions_on);
}

fn rules_apply_in_order_with_conditions_on() {
    let e = Engine::from_yaml(
        r#"
rules:
  - copy: {from: demo.order.id}
  - copy: {from: app.order.id}
  - copy: {from: user.id, to: business.customer.id}
  - rename: {from: demo.user_context.loyalty_level, to: business.customer.tier}
  - when: {service: checkout, span_name: oteldemo.CheckoutService/PlaceOrder}
    parse_money: {from: demo.order.amount, currency_from: demo.user_context.selected_currency, default_currency: USD}
  - when: {span_name_regex: '^oteldemo\.PaymentService/', exists: [demo.payment.amount]}
    parse_money: {from: demo.payment.amount, default_currency: USD, to: business.payment.value, currency_to: ""}
  - when: {attributes: {demo.payment.charged: true}}
    set: {key: business.charged, value: yes}
  - when: {resource: {service.name: payment}}
    set: {key: business.from_payment, value: 1}
  - classify:
      from: business.order.value
      to: business.order.size
      thresholds: [{min: 0, label: small}, {min: 100, label: medium}, {min: "1000.00", label: large}]
  - delete: [demo.payment.card_type, session.id]
"#,
        &Extensions::default(),
    )
    .unwrap();
    let mut req = request(
        "checkout",
        vec![
            span(
                "oteldemo.CheckoutService/PlaceOrder",
                vec![
                    kv_str("demo.order.id", "o-1"),
                    kv_str("user.id", "c-1"),
                    kv_str("demo.user_context.loyalty_level", "gold"),
                    kv_f64("demo.order.amount", 1234.5),
                    kv_str("demo.user_context.selected_currency", "EUR"),
                    kv_str("session.id", "s"),
                ],
            ),
            span("oteldemo.CartService/GetCart", vec![kv_str("app.order.id", "o-2")]),
            span("nothing", vec![kv_str("other", "x")]),
        ],
    );
    req.resource_spans.push(
        request(
            "payment",
            vec![span(
                "oteldemo.PaymentService/Charge",
                vec![
                    kv_str("demo.payment.amount", "19.99"),
                    attrs::kv("demo.payment.charged", attrs::Value::BoolValue(true)),
                    kv_str("demo.payment.card_type", "visa"),
                ],
            )],
        )
        .resource_spans
        .remove(0),
    );
    assert_eq!(apply(&e, &mut req), 3);
    let sp = spans(&req);
    let a = sp[0];
    assert_eq!(s(a, "business.order.id").as_deref(), Some("o-1"));
    assert_eq!(s(a, "business.customer.id").as_deref(), Some("c-1"));
    assert_eq!(s(a, "business.customer.tier").as_deref(), Some("gold"));
    assert!(s(a, "demo.user_context.loyalty_level").is_none(), "renamed");
    assert_eq!(s(a, "business.order.value").as_deref(), Some("1234.50"));
    assert_eq!(s(a, "business.currency").as_deref(), Some("EUR"));
    assert_eq!(s(a, "business.order.size").as_deref(), Some("large"));
    assert!(s(a, "session.id").is_none());
    assert!(s(a, "business.from_payment").is_none());
    assert_eq!(s(sp[1], "business.order.id").as_deref(), Some("o-2"));
    assert_eq!(sp[2].attributes.len(), 1, "untouched");
    let p = sp[3];
    assert_eq!(s(p, "business.payment.value").as_deref(), Some("19.99"));
    assert!(s(p, "business.currency").is_none(), "currency_to disabled");
    assert_eq!(s(p, "business.charged").as_deref(), Some("yes"));
    assert_eq!(s(p, "business.from_payment").as_deref(), Some("1"));
    assert!(s(p, "demo.payment.card_type").is_none());
    let st = e.stats();
    assert_eq!((st.items, st.enriched, st.parse_errors), (4, 3, 0));
}

#[test]
fn first_source_wins_and_parse_errors_count() {
    both_paths(first_source_wins_and_parse_errors_count_on);
}

fn first_source_wins_and_parse_errors_count_on() {
    let e = Engine::from_yaml(
        r#"
rules:
  - copy: {from: demo.order.id, to: business.order.id}
  - copy: {from: app.order.id, to: business.order.id}
  - parse_money: {from: bad}
  - parse_money: {units: u, nanos: n, default_currency: USD, to: v}
  - set: {key: business.order.id, value: constant}
  - set: {key: forced, value: 2.5}
  - set: {key: forced, value: 3, overwrite: true}
"#,
        &Extensions::default(),
    )
    .unwrap();
    let mut req = request(
        "x",
        vec![span(
            "s",
            vec![
                kv_str("app.order.id", "second"),
                kv_str("demo.order.id", "first"),
                kv_str("bad", "not money"),
                kv_i64("u", 12),
                kv_i64("n", 340_000_000),
            ],
        )],
    );
    apply(&e, &mut req);
    let a = spans(&req)[0];
    assert_eq!(s(a, "business.order.id").as_deref(), Some("first"));
    assert_eq!(s(a, "v").as_deref(), Some("12.34"));
    assert_eq!(attrs::get_i64(&a.attributes, "forced"), Some(3));
    assert_eq!(e.stats().parse_errors, 1);
}

#[test]
fn config_errors_name_the_path() {
    let bad = [
        ("rules: [{when: {service: x}}]", "rules[0]"),
        ("rules: [{copy: {from: a}, delete: [b]}]", "rules[0]"),
        (
            "rules: [{when: {span_name_regex: '('}, delete: x}]",
            "rules[0].when.span_name_regex",
        ),
        (
            "rules: [{classify: {from: a, to: b, thresholds: [{min: 5, label: x}, {min: 1, label: y}]}}]",
            "rules[0].classify.thresholds[1].min",
        ),
        ("rules: [{parse_money: {to: x}}]", "rules[0].parse_money.from"),
        ("join: {window: 1s}", "join.window"),
        ("lookups: [{key: a, attributes: {x: y}}]", "lookups[0].extension"),
        ("rules: [{copy: {from: a, too: b}}]", "rules[0].copy"),
    ];
    for (yaml, path) in bad {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let errs = bizpilot_core::parse_config::<EnrichConfig>(&raw).unwrap_err();
        assert!(errs.iter().any(|e| e.path.starts_with(path)), "{yaml}: {errs:?}");
    }
    let missing = Engine::from_yaml("join: {state: business_state}", &Extensions::default()).unwrap_err();
    assert!(missing.contains("join.state"), "{missing}");
}

#[test]
fn state_then_lookup_precedence() {
    both_paths(state_then_lookup_precedence_on);
}

fn state_then_lookup_precedence_on() {
    let (mut exts, st) = state_exts(StateConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customers.csv");
    std::fs::write(&path, "id,tier,segment\nc-1,bronze,retail\nc-2,silver,b2b\n").unwrap();
    exts.insert(
        "lookup/customers".parse().unwrap(),
        Arc::new(Lookup::open("lookup/customers", &path, None, "id").unwrap()),
    );
    let mut ev = order_event("o-1", "c-1", "USD 59.97", 1);
    ev.customer_tier = Some("gold".into());
    st.apply(&ev);
    let e = Engine::from_yaml(
        r#"
rules:
  - copy: {from: demo.order.id}
  - copy: {from: user.id, to: business.customer.id}
join:
  state: business_state
lookups:
  - extension: lookup/customers
    key: business.customer.id
    attributes: {tier: business.customer.tier, segment: business.customer.segment}
"#,
        &exts,
    )
    .unwrap();
    let mut req = request(
        "checkout",
        vec![
            // Order known: customer, value, items and tier from the state; segment from the lookup.
            span("a", vec![kv_str("demo.order.id", "o-1")]),
            // Own attribute beats the state.
            span(
                "b",
                vec![kv_str("demo.order.id", "o-1"), kv_str("business.order.value", "1.00")],
            ),
            // No state for c-2: the lookup gives tier and segment.
            span("c", vec![kv_str("user.id", "c-2")]),
            // Unknown order: a miss, nothing invented.
            span("d", vec![kv_str("demo.order.id", "o-404")]),
        ],
    );
    apply(&e, &mut req);
    let sp = spans(&req);
    assert_eq!(s(sp[0], "business.customer.id").as_deref(), Some("c-1"));
    assert_eq!(s(sp[0], "business.order.value").as_deref(), Some("59.97"));
    assert_eq!(s(sp[0], "business.currency").as_deref(), Some("USD"));
    assert_eq!(attrs::get_i64(&sp[0].attributes, "business.cart.items"), Some(3));
    assert_eq!(
        s(sp[0], "business.customer.tier").as_deref(),
        Some("gold"),
        "state beats lookup"
    );
    assert_eq!(s(sp[0], "business.customer.segment").as_deref(), Some("retail"));
    assert_eq!(
        s(sp[1], "business.order.value").as_deref(),
        Some("1.00"),
        "own attribute wins"
    );
    assert_eq!(s(sp[2], "business.customer.tier").as_deref(), Some("silver"));
    assert_eq!(s(sp[2], "business.customer.segment").as_deref(), Some("b2b"));
    assert_eq!(sp[3].attributes.len(), 2);
    let stats = e.stats();
    assert_eq!((stats.order_hits, stats.order_misses), (2, 1));
    assert_eq!((stats.lookup_hits, stats.lookup_misses), (3, 0));
    assert_eq!((stats.customer_hits, stats.customer_misses), (2, 1));
}

#[test]
fn logs_are_enriched_too() {
    let e = Engine::from_yaml(
        "rules: [{when: {span_name: order.placed}, set: {key: business.kind, value: order}}]",
        &Extensions::default(),
    )
    .unwrap();
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let mut req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        event_name: "order.placed".into(),
                        ..Default::default()
                    },
                    LogRecord::default(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(e.apply_logs(&mut req), 1);
}

struct Harness {
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
    running: Running,
    abort: CancellationToken,
    engine: Arc<Engine>,
}

fn harness(yaml: &str, exts: &Extensions) -> Harness {
    let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let cfg: EnrichConfig = bizpilot_core::parse_config(&raw).unwrap();
    let p = EnrichProcessor::new(&cfg, exts, "enrich", "traces").unwrap();
    let engine = p.engine();
    let (tx, in_rx) = mpsc::channel(16);
    let (out_tx, rx) = mpsc::channel(16);
    let abort = CancellationToken::new();
    let running = (Box::new(p) as Box<dyn Processor>)
        .start(ProcessorContext {
            id: ComponentId::new("enrich", None),
            pipeline: "traces".parse::<PipelineId>().unwrap(),
            input: in_rx,
            output: Output::new(
                vec![Target {
                    name: "out".into(),
                    sender: out_tx,
                }],
                Vec::new(),
            ),
            abort: abort.clone(),
        })
        .unwrap();
    Harness {
        tx,
        rx,
        running,
        abort,
        engine,
    }
}

/// A batch as the OTLP receivers hand it on: encoded.
fn batch(req: ExportTraceServiceRequest, ack: Ack) -> Batch {
    Batch::with_ack(
        Payload::Traces(Traces::from_bytes(req.encode_to_vec().into()).unwrap()),
        ack,
    )
}

fn out_spans(b: &mut Batch) -> Vec<Span> {
    let Payload::Traces(t) = &mut b.payload else {
        panic!("traces")
    };
    spans(t.message().unwrap()).into_iter().cloned().collect()
}

const WINDOW_YAML: &str = r#"
rules:
  - copy: {from: demo.order.id}
join:
  state: business_state
  window: 5s
  max_held_spans: 2
"#;

#[tokio::test(start_paused = true)]
async fn join_window_holds_until_the_event_or_the_deadline() {
    let (exts, st) = state_exts(StateConfig::default());
    let mut h = harness(WINDOW_YAML, &exts);
    let (ack, mut ack_rx) = Ack::channel();
    let req = request(
        "checkout",
        vec![
            span("early", vec![kv_str("demo.order.id", "o-1")]),
            span("late", vec![kv_str("demo.order.id", "o-2")]),
            span("plain", vec![]),
        ],
    );
    h.tx.send(batch(req, ack)).await.unwrap();
    // The span without an order key goes on at once; the two others wait.
    let mut b = h.rx.recv().await.unwrap();
    let got = out_spans(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "plain");
    drop(b);
    assert_eq!(h.engine.stats().held, 2);
    assert!(ack_rx.try_recv().is_err(), "the source's ack waits for the held spans");

    // o-1's event arrives within the window: its span is released, enriched.
    tokio::time::advance(Duration::from_secs(1)).await;
    st.apply(&order_event("o-1", "c-1", "USD 10", 1));
    let mut b = h.rx.recv().await.unwrap();
    let got = out_spans(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "early");
    assert_eq!(s(&got[0], "business.customer.id").as_deref(), Some("c-1"));
    assert_eq!(s(&got[0], "business.order.value").as_deref(), Some("10.00"));
    drop(b);
    assert!(ack_rx.try_recv().is_err());

    // o-2's never comes: released unenriched at the deadline, counted as a miss.
    tokio::time::advance(Duration::from_secs(5)).await;
    let mut b = h.rx.recv().await.unwrap();
    let got = out_spans(&mut b);
    assert_eq!(got[0].name, "late");
    assert!(s(&got[0], "business.customer.id").is_none());
    drop(b);
    assert_eq!(ack_rx.await.unwrap(), Delivery::Delivered);
    let stats = h.engine.stats();
    assert_eq!((stats.order_hits, stats.order_misses), (1, 1));
    assert_eq!((stats.released_on_arrival, stats.released_by_timeout), (1, 1));
    assert_eq!(stats.items, 3);

    drop(h.tx);
    h.running.join().await.unwrap();
    let _ = h.abort;
}

#[tokio::test(start_paused = true)]
async fn held_spans_are_bounded_and_released_at_shutdown() {
    let (exts, _st) = state_exts(StateConfig::default());
    let mut h = harness(WINDOW_YAML, &exts);
    let req = request(
        "checkout",
        (0..5)
            .map(|i| span(&format!("s{i}"), vec![kv_str("demo.order.id", format!("o-{i}"))]))
            .collect(),
    );
    h.tx.send(batch(req, Ack::new(|_| {}))).await.unwrap();
    let mut b = h.rx.recv().await.unwrap();
    assert_eq!(out_spans(&mut b).len(), 3, "max_held_spans = 2, the rest goes on");
    let stats = h.engine.stats();
    assert_eq!((stats.held, stats.hold_overflow, stats.order_misses), (2, 3, 3));
    drop(h.tx);
    let mut b = h.rx.recv().await.unwrap();
    assert_eq!(out_spans(&mut b).len(), 2, "released when the input closes");
    h.running.join().await.unwrap();
    assert_eq!(h.engine.stats().released_on_shutdown, 2);
}

#[tokio::test(start_paused = true)]
async fn abort_fails_what_is_held() {
    let (exts, _st) = state_exts(StateConfig::default());
    let mut h = harness(WINDOW_YAML, &exts);
    let (ack, ack_rx) = Ack::channel();
    let req = request("checkout", vec![span("s", vec![kv_str("demo.order.id", "o")])]);
    h.tx.send(batch(req, ack)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.abort.cancel();
    h.running.join().await.unwrap();
    assert_eq!(ack_rx.await.unwrap(), Delivery::Failed);
}

/// Overwrites, renames onto existing keys, deletes and value-less attributes: both paths give the
/// same attributes (the view path appends a replaced attribute of the span's own at the end, where
/// the decoded path replaces it in place: compared as sets, and the order is checked where it must
/// agree).
#[test]
fn overwrite_rename_delete_agree_on_both_paths() {
    let yaml = r#"
rules:
  - set: {key: own, value: replaced, overwrite: true}
  - set: {key: fresh, value: 1}
  - set: {key: fresh, value: 2, overwrite: true}
  - rename: {from: r.from, to: r.to, overwrite: true}
  - rename: {from: r.keep, to: kept}
  - rename: {from: novalue, to: moved}
  - copy: {from: novalue, to: never}
  - copy: {from: fresh, to: fresh.copy}
  - delete: [gone, fresh.copy]
  - set: {key: fresh.copy, value: again}
  - when: {exists: [moved], attributes: {fresh: 2}}
    set: {key: saw.earlier.rules, value: true}
  - parse_money: {units: u, nanos: n, currency_from: cur, to: money, currency_to: cur.out}
  - classify: {from: money, to: size, thresholds: [{min: 0, label: s}, {min: 10, label: l}]}
  - when: {attributes: {dup: first}}
    set: {key: first.wins, value: yes}
"#;
    let req = || {
        request(
            "svc",
            vec![span(
                "s",
                vec![
                    kv_str("own", "original"),
                    kv_str("r.from", "moved value"),
                    kv_str("r.to", "old"),
                    kv_str("r.keep", "k"),
                    kv_str("kept", "already"),
                    KeyValue {
                        key: "novalue".into(),
                        value: None,
                        ..Default::default()
                    },
                    kv_str("gone", "x"),
                    kv_str("gone", "y"),
                    kv_i64("u", 12),
                    kv_str("n", "500000000"),
                    kv_str("cur", "EUR"),
                    kv_str("dup", "first"),
                    kv_str("dup", "second"),
                    kv_str("other", "z"),
                ],
            )],
        )
    };
    let e1 = Engine::from_yaml(yaml, &Extensions::default()).unwrap();
    let e2 = Engine::from_yaml(yaml, &Extensions::default()).unwrap();
    let mut a = req();
    let na = e1.apply_traces(&mut a);
    let mut t = Traces::from_bytes(req().encode_to_vec().into()).unwrap();
    let nb = e2.apply_encoded(&mut t);
    let b = t.into_message().unwrap();
    assert_eq!((na, nb), (1, 1));
    let (x, y) = (spans(&a)[0], spans(&b)[0]);
    let sorted = |sp: &Span| {
        let mut v: Vec<String> = sp.attributes.iter().map(|kv| format!("{kv:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(x), sorted(y));
    assert_eq!(s(x, "own").as_deref(), Some("replaced"));
    assert_eq!(s(x, "r.to").as_deref(), Some("moved value"));
    assert_eq!(s(x, "kept").as_deref(), Some("already"));
    assert!(s(x, "r.keep").is_none() && s(x, "gone").is_none() && s(x, "never").is_none());
    assert!(attrs::contains(&x.attributes, "moved"));
    assert_eq!(s(x, "fresh").as_deref(), Some("2"));
    assert_eq!(s(x, "fresh.copy").as_deref(), Some("again"));
    assert_eq!(s(x, "saw.earlier.rules").as_deref(), Some("true"));
    assert_eq!(s(x, "money").as_deref(), Some("12.50"));
    assert_eq!(s(x, "cur.out").as_deref(), Some("EUR"));
    assert_eq!(s(x, "size").as_deref(), Some("l"));
    assert_eq!(s(x, "first.wins").as_deref(), Some("yes"));
    // Attributes the rules added (not replacing one of the span's own) come in the same order.
    let added = |sp: &Span| {
        sp.attributes
            .iter()
            .map(|kv| kv.key.clone())
            .filter(|k| ["fresh", "moved", "fresh.copy", "saw.earlier.rules", "money", "size"].contains(&k.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(added(x), added(y));
    assert_eq!(e1.stats(), e2.stats());
}

/// With a join window, every request stays encoded (the view path): one whose orders are all known, or
/// that carries no order key, and one with an unknown order, whose span waits (kept encoded).
#[tokio::test(start_paused = true)]
async fn requests_stay_encoded_when_a_span_must_wait() {
    let (exts, st) = state_exts(StateConfig::default());
    st.apply(&order_event("o-1", "c-1", "USD 10", 1));
    let mut h = harness(WINDOW_YAML, &exts);
    let known = request(
        "checkout",
        vec![
            span("known", vec![kv_str("demo.order.id", "o-1")]),
            span("plain", vec![]),
        ],
    );
    h.tx.send(batch(known, Ack::new(|_| {}))).await.unwrap();
    let mut b = h.rx.recv().await.unwrap();
    let Payload::Traces(t) = &b.payload else {
        panic!("traces")
    };
    assert!(t.decoded().is_none() && t.encoded_bytes().is_some(), "never decoded");
    let got = out_spans(&mut b);
    assert_eq!(s(&got[0], "business.customer.id").as_deref(), Some("c-1"));
    assert_eq!(h.engine.stats().held, 0);

    let unknown = request(
        "checkout",
        vec![
            span("known", vec![kv_str("demo.order.id", "o-1")]),
            span("unknown", vec![kv_str("demo.order.id", "o-2")]),
        ],
    );
    h.tx.send(batch(unknown, Ack::new(|_| {}))).await.unwrap();
    let mut b = h.rx.recv().await.unwrap();
    let Payload::Traces(t) = &b.payload else {
        panic!("traces")
    };
    assert!(t.decoded().is_none() && t.encoded_bytes().is_some(), "never decoded");
    assert_eq!(t.items(), 1, "the held span left the count");
    let got = out_spans(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "known");
    assert_eq!(s(&got[0], "business.customer.id").as_deref(), Some("c-1"));
    let stats = h.engine.stats();
    assert_eq!(
        (stats.held, stats.order_hits, stats.order_misses),
        (1, 2, 0),
        "counted once: {stats:?}"
    );
    assert_eq!(st.orders.stats().hits, 2, "the state is asked once per span");
    drop(h.tx);
    h.running.join().await.unwrap();
}

/// The embedded default pipeline's `enrich/opentelemetry-demo` rules, from pipelines/opentelemetry-demo.yaml.
fn preset_rules() -> String {
    let preset: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../../pipelines/opentelemetry-demo.yaml")).unwrap();
    serde_yaml::to_string(&preset["processors"]["enrich/opentelemetry-demo"]).unwrap()
}

/// Runs `yaml`'s rules on `bytes` both ways: decoded (`apply_traces`) and on the encoding
/// (`apply_encoded`). Asserts the same spans (attributes compared as sets: the view path appends an
/// attribute that replaces one of the span's own, the decoded path replaces it in place), the same
/// counts, and that the view path decoded and encoded nothing and walked the request once. Returns the
/// number of spans enriched.
fn assert_enrich_paths_agree(yaml: &str, bytes: &[u8], what: &str) -> u64 {
    use bizpilot_core::pdata::{Work, work_on_this_thread};
    let Ok(mut t) = Traces::from_bytes(bytes.to_vec().into()) else {
        return 0;
    };
    if t.encoded_bytes().is_none() {
        return 0; // non-canonical bytes are held decoded: there is only the decoded path
    }
    let e1 = Engine::from_yaml(yaml, &Extensions::default()).unwrap();
    let e2 = Engine::from_yaml(yaml, &Extensions::default()).unwrap();
    let mut want = ExportTraceServiceRequest::decode(bytes).expect("the walk accepted it");
    let na = e1.apply_traces(&mut want);
    let before = work_on_this_thread();
    let nb = e2.apply_encoded(&mut t);
    let work = work_on_this_thread().since(&before);
    assert!(t.decoded().is_none(), "{what}: the view path decoded the request");
    assert_eq!(
        [Work::Decode, Work::Encode, Work::Walk].map(|w| work.get(w)),
        [0, 0, 1],
        "{what}: one walk, no decode, no encode"
    );
    assert_eq!(
        work.get(Work::Copy),
        u64::from(nb > 0),
        "{what}: one copy iff a span changed"
    );
    let got = t.into_message().unwrap();
    assert_eq!((na, nb), (nb, na), "{what}: enriched");
    assert_eq!(e1.stats(), e2.stats(), "{what}: counts");
    let (a, b) = (spans(&want), spans(&got));
    assert_eq!(a.len(), b.len(), "{what}: spans");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let sorted = |sp: &Span| {
            let mut v: Vec<String> = sp.attributes.iter().map(|kv| format!("{kv:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(x), sorted(y), "{what}: span {i} attributes");
        let mut x = (*x).clone();
        let mut y = (*y).clone();
        x.attributes.clear();
        y.attributes.clear();
        assert_eq!(format!("{x:?}"), format!("{y:?}"), "{what}: span {i}");
    }
    nb
}

/// The preset's rules on shop traffic of both attribute generations (the OpenTelemetry Demo's span tree and
/// attributes, amounts as doubles and as strings) and on the fuzz seed corpora: the view path equals the
/// decoded path.
#[test]
fn preset_rules_give_the_same_on_views_and_decoded_for_shop_traffic_and_fuzz_corpora() {
    let rules = preset_rules();
    let mut enriched = 0;
    for (prefix, money) in [("demo", "double"), ("app", "string")] {
        let shop: bizpilot_shopgen::ShopConfig = serde_yaml::from_str(&format!(
            "seed: 3\nduration: 2m\norders_per_sec: 2\ncustomers: 500\nattribute_prefix: {prefix}\nmoney_attributes: {money}"
        ))
        .unwrap();
        let workload = bizpilot_shopgen::Shop::generate(&shop).unwrap();
        for (i, bytes) in workload.trace_requests_encoded(300).iter().enumerate() {
            enriched += assert_enrich_paths_agree(&rules, bytes, &format!("{prefix} request {i}"));
        }
    }
    assert!(enriched > 100, "{enriched} spans enriched");
    for target in ["otlp_protobuf", "view_equivalence", "view_walk"] {
        for (path, data) in bizpilot_core::fuzz::seed_corpus(target) {
            assert_enrich_paths_agree(&rules, &data, &path.display().to_string());
        }
    }
}

/// Property: random spans carrying the preset's source attributes (repeated keys, absent values, strings,
/// ints and doubles where amounts are read, targets already present) give the same on both paths.
#[test]
fn preset_rules_give_the_same_on_views_and_decoded_for_random_spans() {
    use bizpilot_business::attrs::{AnyValue, Value};
    let rules = preset_rules();
    const KEYS: &[&str] = &[
        "demo.order.id",
        "app.order.id",
        "user.id",
        "app.user.id",
        "demo.user_context.loyalty_level",
        "demo.user_context.selected_currency",
        "demo.order.amount",
        "demo.payment.amount",
        "app.payment.amount",
        "demo.shipping.amount",
        "demo.order.items.count",
        "demo.cart.items.count",
        "demo.product.id",
        "business.order.id",
        "business.order.value",
        "other",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut below = |n: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    };
    let mut enriched = 0;
    for round in 0..400 {
        let mut sp = Vec::new();
        for i in 0..below(6) {
            let mut a = Vec::new();
            for _ in 0..below(8) {
                let key = KEYS[below(KEYS.len() as u64) as usize];
                let value = match below(7) {
                    0 => None,
                    1 => Some(Value::IntValue(below(100_000) as i64)),
                    2 => Some(Value::DoubleValue(below(100_000) as f64 / 100.0)),
                    3 => Some(Value::StringValue(
                        ["EUR", "USD", "gold", "x"][below(4) as usize].into(),
                    )),
                    4 => Some(Value::BoolValue(true)),
                    _ => Some(Value::StringValue(format!("{}.{:02}", below(2000), below(100)))),
                };
                a.push(KeyValue {
                    key: key.into(),
                    value: (below(10) > 0).then_some(AnyValue { value }),
                    ..Default::default()
                });
            }
            sp.push(span(&format!("s{i}"), a));
        }
        let bytes = request("checkout", sp).encode_to_vec();
        enriched += assert_enrich_paths_agree(&rules, &bytes, &format!("round {round}"));
    }
    assert!(enriched > 200, "{enriched} spans enriched");
}

/// The join window on both paths: spans of unknown orders are taken out of their request (in the same pass
/// as the rules, on the encoding) and released enriched once their order arrives, or unenriched. Held
/// encoded (the view path: no decode, no encode) or decoded, the request that goes on and the request
/// the released spans form are the same: several resources and scopes, schema URLs, attributes changed
/// by the rules before the join.
#[test]
fn held_spans_give_the_same_requests_on_views_and_decoded() {
    use bizpilot_core::pdata::{Work, work_on_this_thread};
    let yaml = r#"
rules:
  - copy: {from: demo.order.id}
  - delete: secret
join:
  state: business_state
  window: 5s
  max_held_spans: 100
"#;
    let order = |name: &str, o: &str| {
        span(
            name,
            vec![kv_str("demo.order.id", o), kv_str("secret", "x"), kv_i64("n", 1)],
        )
    };
    let mut req = request(
        "checkout",
        vec![
            order("a", "o-1"),
            order("b", "o-2"),
            span("c", vec![]),
            order("d", "o-3"),
        ],
    );
    req.resource_spans[0].schema_url = "https://res".into();
    req.resource_spans[0].scope_spans[0].schema_url = "https://scope".into();
    req.resource_spans[0].scope_spans.push(ScopeSpans {
        spans: vec![order("e", "o-2")],
        ..Default::default()
    });
    req.resource_spans.push(
        request("cart", vec![order("f", "o-3"), span("g", vec![])])
            .resource_spans
            .remove(0),
    );

    let run = |encoded: bool| {
        // o-1 is known; o-2 arrives while its spans wait; o-3 never does.
        let (exts, st) = state_exts(StateConfig::default());
        st.apply(&order_event("o-1", "c-1", "USD 10", 1));
        let engine = Engine::from_yaml(yaml, &exts).unwrap();
        let mut holder = Holder::new(Duration::from_secs(5), 100);
        let acks: Vec<Ack> = Vec::new();
        let hold = Some(HoldCtx {
            holder: &mut holder,
            batch_acks: &acks,
            acks: None,
            now: tokio::time::Instant::now(),
        });
        let before = work_on_this_thread();
        let (rest, held) = if encoded {
            let mut t = Traces::from_bytes(req.encode_to_vec().into()).unwrap();
            let c = engine.process_encoded(&mut t, hold);
            (t, c.held)
        } else {
            let mut m = req.clone();
            let c = engine.process_traces(&mut m, hold);
            (Traces::from_message(m), c.held)
        };
        st.apply(&order_event("o-2", "c-2", "USD 20", 2));
        let mut released = holder.take_key("o-2");
        released.extend(holder.take_all());
        let out = engine.release(released, Release::Arrival).unwrap();
        let work = work_on_this_thread().since(&before);
        let Payload::Traces(out) = out.payload else {
            panic!("traces")
        };
        let (rest_items, out_items) = (rest.items(), out.items());
        let (rest, out) = (rest.into_message().unwrap(), out.into_message().unwrap());
        (held, rest_items, rest, out_items, out, work, engine.stats())
    };
    let views = run(true);
    let decoded = run(false);
    assert_eq!(views.0, 4, "b and e wait for o-2, d and f for o-3");
    assert_eq!((views.1, views.3), (3, 4), "a, c, g go on; the four come back");
    assert_eq!(
        (views.0, views.1, &views.2, views.3, &views.4),
        (decoded.0, decoded.1, &decoded.2, decoded.3, &decoded.4)
    );
    assert_eq!(views.6, decoded.6, "the same counts");
    let back = spans(&views.4);
    let names: Vec<&str> = back.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b", "d", "e", "f"], "grouped by resource and scope");
    assert_eq!(s(back[0], "business.customer.id").as_deref(), Some("c-2"));
    assert!(s(back[1], "business.customer.id").is_none());
    assert!(
        back.iter()
            .all(|sp| s(sp, "secret").is_none() && s(sp, "business.order.id").is_some())
    );
    assert_eq!(views.4.resource_spans[0].schema_url, "https://res");
    assert_eq!(views.4.resource_spans[0].scope_spans[0].schema_url, "https://scope");
    assert_eq!(
        (views.5.get(Work::Decode), views.5.get(Work::Encode)),
        (0, 0),
        "views: nothing decoded nor encoded"
    );
}
