//! The `enrich` processor over a generated shop workload (bizpilot-shopgen), with the
//! shipped pipeline files' rules: every enriched attribute on every span must equal
//! the generator's ground truth, whatever the arrival order of spans and events.
//!
//! Every workload runs twice: traces sent encoded (as the OTLP receivers hand them on; the
//! processor's view path, falling back to the decoded path for requests with spans to hold)
//! and decoded (as the OTLP/JSON receiver hands them on; the decoded path).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bizpilot_business::attrs;
use bizpilot_business::{BusinessEvent, BusinessState, EventMapping, Lookup, StateConfig};
use bizpilot_core::config::Duration as CfgDuration;
use bizpilot_core::{
    Batch, ComponentId, Currency, Extensions, Money, Output, Payload, PipelineId, Processor, ProcessorContext, Running,
    Target, Traces,
};
use bizpilot_processors::enrich::{Engine, EnrichConfig, EnrichProcessor};
use bizpilot_shopgen::config::{Duplicates, DurationRange, EventsAfterSpans, Late, OutOfOrder, PaymentOutage, Retries};
use bizpilot_shopgen::{AttributePrefix, EmissionKind, GroundTruth, MoneyAttributes, Shop, ShopConfig, Workload};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How traces reach the processor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// Protobuf bytes (OTLP/gRPC and OTLP/HTTP protobuf receivers): the view path.
    Encoded,
    /// Decoded structs (the OTLP/JSON receiver): the decoded path.
    Decoded,
}

const FORMS: [Form; 2] = [Form::Encoded, Form::Decoded];

fn traces(req: ExportTraceServiceRequest, form: Form) -> Traces {
    match form {
        Form::Encoded => Traces::from_bytes(req.encode_to_vec().into()).unwrap(),
        Form::Decoded => Traces::from_message(req),
    }
}

fn pipeline_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../pipelines")
        .join(name)
}

/// The config of processor `id` in a shipped pipeline file.
fn shipped_enrich_config(file: &str, id: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(pipeline_file(file)).unwrap();
    let root: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    root["processors"][id].clone()
}

fn parse(raw: &serde_yaml::Value) -> EnrichConfig {
    bizpilot_core::parse_config(raw).unwrap_or_else(|e| panic!("{e:?}"))
}

fn shop(prefix: AttributePrefix, money: MoneyAttributes, seed: u64) -> ShopConfig {
    let mut c = ShopConfig {
        seed,
        duration: CfgDuration::from_secs(90),
        orders_per_sec: 2.0,
        customers: 3000,
        attribute_prefix: prefix,
        money_attributes: money,
        ..Default::default()
    };
    let inj = &mut c.injections;
    inj.duplicates = Duplicates {
        probability: 0.1,
        max_delay: CfgDuration::from_secs(5),
    };
    inj.out_of_order = OutOfOrder {
        probability: 0.2,
        max_delay: CfgDuration::from_secs(10),
    };
    inj.events_after_spans = EventsAfterSpans {
        probability: 0.4,
        delay: DurationRange::millis(100, 5_000),
    };
    inj.late = Late {
        probability: 0.05,
        delay: DurationRange::millis(500, 3_000),
    };
    inj.payment_outages = vec![PaymentOutage {
        start: CfgDuration::from_secs(20),
        end: CfgDuration::from_secs(40),
        failure_probability: 0.6,
        ..Default::default()
    }];
    inj.retries = Retries {
        probability: 0.8,
        delay: DurationRange::secs(5, 20),
        max_attempts: 3,
    };
    c
}

struct Run {
    tx: mpsc::Sender<Batch>,
    collector: JoinHandle<Vec<Span>>,
    running: Running,
    engine: Arc<Engine>,
}

fn start(cfg: &EnrichConfig, exts: &Extensions) -> Run {
    let p = EnrichProcessor::new(cfg, exts, "enrich", "traces").unwrap();
    let engine = p.engine();
    let (tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Batch>(16);
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
            abort: CancellationToken::new(),
        })
        .unwrap();
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(b) = out_rx.recv().await {
            let Payload::Traces(t) = b.payload else {
                panic!("traces expected")
            };
            let m = t.into_message().unwrap();
            out.extend(
                m.resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans),
            );
        }
        out
    });
    Run {
        tx,
        collector,
        running,
        engine,
    }
}

impl Run {
    async fn finish(mut self) -> (Vec<Span>, Arc<Engine>) {
        drop(self.tx);
        self.running.join().await.unwrap();
        (self.collector.await.unwrap(), self.engine)
    }
}

fn event_of(e: &bizpilot_shopgen::BusinessEvent) -> BusinessEvent {
    EventMapping::default()
        .parse(&e.to_log_record())
        .unwrap()
        .expect("a business event")
}

/// Replays the workload in arrival order on a paused clock: events go into the state
/// (what the `business_events` exporter does), traces through the processor.
async fn replay(w: &Workload, run: &Run, state: Option<&BusinessState>, form: Form) -> usize {
    let t0 = w.emissions.first().map(|e| e.arrival_unix_nano).unwrap_or(0);
    let base = tokio::time::Instant::now();
    let mut spans_in = 0;
    for e in &w.emissions {
        tokio::time::sleep_until(base + Duration::from_nanos(e.arrival_unix_nano - t0)).await;
        match &e.kind {
            EmissionKind::Event(ev) => {
                if let Some(st) = state {
                    st.apply(&event_of(ev));
                }
            }
            EmissionKind::Trace(t) => {
                spans_in += t.spans.len();
                let b = Batch::new(Payload::Traces(traces(t.to_request(), form)));
                run.tx.send(b).await.unwrap();
            }
        }
    }
    spans_in
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn get(sp: &Span, k: &str) -> Option<String> {
    attrs::get_string(&sp.attributes, k).map(|s| s.into_owned())
}

/// Checks every span against the truth; returns the number of attribute values compared.
fn check_against_truth(truth: &GroundTruth, spans: &[Span], full: bool) -> usize {
    let mut compared = 0;
    let mut seen = HashSet::new();
    for sp in spans {
        let (tid, sid) = (hex(&sp.trace_id), hex(&sp.span_id));
        let ctx = format!("{} {tid}/{sid}", sp.name);
        let Some(exp) = truth.enrichment_for(&tid, &sid) else {
            for k in ["business.customer.id", "business.order.id", "business.order.value"] {
                assert!(get(sp, k).is_none(), "{ctx}: no business key, yet {k} is set");
            }
            continue;
        };
        seen.insert((tid.clone(), sid.clone()));
        if full || get(sp, "business.customer.id").is_some() {
            assert_eq!(
                get(sp, "business.customer.id").as_deref(),
                Some(exp.customer_id.as_str()),
                "{ctx}"
            );
            compared += 1;
        }
        if full || get(sp, "business.customer.tier").is_some() {
            assert_eq!(
                get(sp, "business.customer.tier").as_deref(),
                Some(exp.customer_tier.as_str()),
                "{ctx}"
            );
            compared += 1;
        }
        if let Some(o) = &exp.order_id
            && (full || get(sp, "business.order.id").is_some())
        {
            assert_eq!(get(sp, "business.order.id").as_deref(), Some(o.as_str()), "{ctx}");
            compared += 1;
        }
        if let (Some(v), Some(c)) = (exp.order_value, exp.currency)
            && (full || get(sp, "business.order.value").is_some())
        {
            // The demo's payment server span carries the charged amount but no currency (src/payment/charge.js):
            // enrich values it without one, and `business_impact`'s trace context takes the currency from the
            // PlaceOrder span of the same trace. Every other valued span names its currency.
            let cur = match get(sp, "business.currency") {
                Some(cur) => cur,
                None if sp.name == "grpc.oteldemo.PaymentService/Charge" => c.as_str().to_string(),
                None => panic!("{ctx}: no currency"),
            };
            assert_eq!(cur, c.as_str(), "{ctx}");
            let value = get(sp, "business.order.value").unwrap_or_else(|| panic!("{ctx}: no order value"));
            let got = Money::parse_amount(&value, Currency::new(&cur).unwrap()).unwrap();
            assert_eq!(got, v, "{ctx}: order value {value}");
            compared += 2;
        }
        if let Some(n) = exp.cart_items
            && (full || get(sp, "business.cart.items").is_some())
        {
            assert_eq!(
                attrs::get_i64(&sp.attributes, "business.cart.items"),
                Some(i64::from(n)),
                "{ctx}"
            );
            compared += 1;
        }
    }
    if full {
        assert_eq!(
            seen.len(),
            truth.enrichment.len(),
            "every span with a business key came out"
        );
    }
    compared
}

fn join_setup(w: &Workload, ttl: Duration) -> (Extensions, Arc<BusinessState>, tempfile::TempDir) {
    let state = Arc::new(BusinessState::new(
        "business_state",
        StateConfig {
            max_orders: 100_000,
            max_customers: 100_000,
            ttl: Some(ttl),
            ..StateConfig::default()
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customers.csv");
    std::fs::write(&path, w.catalog.customers_csv()).unwrap();
    let lookup = Lookup::open("lookup/customers", &path, None, "customer_id").unwrap();
    let mut exts = Extensions::default();
    exts.insert("business_state".parse().unwrap(), state.clone());
    exts.insert("lookup/customers".parse().unwrap(), Arc::new(lookup));
    (exts, state, dir)
}

async fn join_matches_truth(prefix: AttributePrefix, money: MoneyAttributes, seed: u64) {
    for form in FORMS {
        join_matches_truth_in(prefix, money, seed, form).await;
    }
}

async fn join_matches_truth_in(prefix: AttributePrefix, money: MoneyAttributes, seed: u64, form: Form) {
    let w = Shop::generate(&shop(prefix, money, seed)).unwrap();
    assert!(w.truth.counts.events_after_spans > 0 && w.truth.counts.duplicate_trace_emissions > 0);
    let (exts, state, _dir) = join_setup(&w, Duration::from_secs(7200));
    let cfg = parse(&shipped_enrich_config("business-join.yaml", "enrich"));
    let run = start(&cfg, &exts);
    let spans_in = replay(&w, &run, Some(&state), form).await;
    let (spans, engine) = run.finish().await;
    assert_eq!(spans.len(), spans_in, "no span lost or invented");
    assert_eq!(spans_in as u64, w.truth.counts.span_emissions);
    let compared = check_against_truth(&w.truth, &spans, true);
    assert!(compared > 5_000, "compared {compared}");
    let st = engine.stats();
    assert!(st.held > 0, "some spans arrived before their events: {st:?}");
    assert_eq!(st.released_on_arrival, st.held, "{st:?}");
    assert_eq!(
        (st.order_misses, st.released_by_timeout, st.hold_overflow),
        (0, 0, 0),
        "{st:?}"
    );
    assert_eq!(st.items as usize, spans_in);
}

#[tokio::test(start_paused = true)]
async fn join_matches_ground_truth_demo_attributes() {
    join_matches_truth(AttributePrefix::Demo, MoneyAttributes::Double, 7).await;
}

#[tokio::test(start_paused = true)]
async fn join_matches_ground_truth_older_app_attributes() {
    join_matches_truth(AttributePrefix::App, MoneyAttributes::String, 11).await;
}

/// The span-only preset (no events, no reference data): whatever it sets is right, and
/// spans that carry the attributes get them.
#[tokio::test(start_paused = true)]
async fn opentelemetry_demo_preset_sets_only_true_values() {
    for form in FORMS {
        demo_preset_in(form).await;
    }
}

async fn demo_preset_in(form: Form) {
    let w = Shop::generate(&shop(AttributePrefix::Demo, MoneyAttributes::Double, 3)).unwrap();
    let cfg = parse(&shipped_enrich_config(
        "opentelemetry-demo.yaml",
        "enrich/opentelemetry-demo",
    ));
    let run = start(&cfg, &Extensions::default());
    let spans_in = replay(&w, &run, None, form).await;
    let (spans, _) = run.finish().await;
    assert_eq!(spans.len(), spans_in);
    let compared = check_against_truth(&w.truth, &spans, false);
    assert!(compared > 3_000, "compared {compared}");
    let place_orders = spans.iter().filter(|s| s.name == "oteldemo.CheckoutService/PlaceOrder");
    // The tier is on the payment service's `charge` span only (as in the demo): the preset maps it there, and the
    // business_impact connector's trace_context brings it to the operations.
    let charges: Vec<_> = spans.iter().filter(|s| s.name == "charge").collect();
    assert!(!charges.is_empty());
    assert!(charges.iter().all(|s| get(s, "business.customer.tier").is_some()));
    for s in place_orders {
        assert!(get(s, "business.order.id").is_some());
        assert!(get(s, "business.customer.tier").is_none(), "no tier on PlaceOrder");
        assert!(get(s, "business.cart.items").is_some());
        let ok = s.status.as_ref().is_none_or(|st| st.code != 2);
        assert_eq!(
            get(s, "business.order.value").is_some(),
            ok,
            "the amount is set on success only"
        );
        assert_eq!(get(s, "business.order.size").is_some(), ok);
    }
}

/// Without any business event, every order span waits the window, then goes on unenriched
/// and counts a miss; the bound on held spans holds; nothing is lost.
#[tokio::test(start_paused = true)]
async fn without_events_spans_wait_the_window_then_count_misses() {
    for form in FORMS {
        without_events_in(form).await;
    }
}

async fn without_events_in(form: Form) {
    let w = Shop::generate(&shop(AttributePrefix::Demo, MoneyAttributes::Double, 5)).unwrap();
    let (exts, _state, _dir) = join_setup(&w, Duration::from_secs(7200));
    let mut raw = shipped_enrich_config("business-join.yaml", "enrich");
    raw["join"]["window"] = "2s".into();
    raw["join"]["max_held_spans"] = 10.into();
    let run = start(&parse(&raw), &exts);
    let spans_in = replay(&w, &run, None, form).await;
    let (spans, engine) = run.finish().await;
    assert_eq!(spans.len(), spans_in);
    let order_spans = spans.iter().filter(|s| get(s, "business.order.id").is_some()).count() as u64;
    let st = engine.stats();
    assert_eq!(st.order_misses, order_spans, "{st:?}");
    assert_eq!(st.order_hits, 0);
    assert!(st.hold_overflow > 0, "more than 10 spans waited at once: {st:?}");
    assert_eq!(st.held + st.hold_overflow, order_spans, "{st:?}");
    assert_eq!(st.released_by_timeout + st.released_on_shutdown, st.held, "{st:?}");
    for s in spans.iter().filter(|s| s.name == "oteldemo.ShippingService/ShipOrder") {
        assert!(
            get(s, "business.customer.id").is_none(),
            "nothing invented without the state"
        );
    }
}

fn order_span(order: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attrs::kv_str("service.name", "shipping")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: "oteldemo.ShippingService/ShipOrder".into(),
                    attributes: vec![attrs::kv_str("demo.order.id", order)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(start_paused = true)]
async fn after_the_ttl_an_order_is_gone() {
    for form in FORMS {
        after_the_ttl_in(form).await;
    }
}

async fn after_the_ttl_in(form: Form) {
    let state = Arc::new(BusinessState::new(
        "business_state",
        StateConfig {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    ));
    let mut exts = Extensions::default();
    exts.insert("business_state".parse().unwrap(), state.clone());
    let mut raw = shipped_enrich_config("business-join.yaml", "enrich");
    raw["lookups"] = serde_yaml::Value::Sequence(Vec::new());
    raw["join"]["window"] = "0s".into();
    let run = start(&parse(&raw), &exts);
    let mut ev = BusinessEvent::new("order.placed", 1);
    ev.order_id = Some("o-1".into());
    ev.customer_id = Some("c-1".into());
    state.apply(&ev);
    let send = |r| Batch::new(Payload::Traces(traces(r, form)));
    run.tx.send(send(order_span("o-1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    run.tx.send(send(order_span("o-1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.tx.send(send(order_span("o-1"))).await.unwrap();
    let (spans, engine) = run.finish().await;
    let customers: Vec<Option<String>> = spans.iter().map(|s| get(s, "business.customer.id")).collect();
    assert_eq!(customers, [Some("c-1".into()), Some("c-1".into()), None]);
    assert_eq!((engine.stats().order_hits, engine.stats().order_misses), (2, 1));
    assert_eq!(state.purge_expired(), 2, "the order and its customer");
    assert!(state.orders.is_empty());
}

#[test]
fn far_more_keys_than_the_bound_never_exceed_it() {
    let w = Shop::generate(&ShopConfig {
        duration: CfgDuration::from_secs(300),
        orders_per_sec: 5.0,
        ..Default::default()
    })
    .unwrap();
    let state = BusinessState::new(
        "s",
        StateConfig {
            max_orders: 100,
            max_customers: 50,
            ttl: None,
            ..StateConfig::default()
        },
    );
    let mut orders = HashSet::new();
    for e in w.events() {
        state.apply(&event_of(e));
        orders.insert(e.order_id.clone());
        assert!(state.orders.len() <= 100 && state.customers.len() <= 50);
    }
    assert!(orders.len() > 1000, "{} distinct orders", orders.len());
    let s = state.orders.stats();
    assert_eq!(s.entries, 100);
    assert!(s.evictions as usize >= orders.len() - 100, "{s:?}");
    // The most recently updated orders are the ones kept.
    let last = w.events().last().unwrap();
    assert!(state.order(&last.order_id).is_some());
}

/// Log lines of this test binary (the reload test checks what was logged).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct W;
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| W)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn customer_spans(n: usize, round: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            name: "POST /api/cart".into(),
            span_id: ((round * n + i) as u64).to_be_bytes().to_vec(),
            attributes: vec![attrs::kv_str("user.id", format!("cust-{:06}", i % 5 + 1))],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn segment(sp: &Span) -> Option<String> {
    get(sp, "business.customer.segment")
}

#[tokio::test]
async fn lookup_reload_keeps_the_old_table_on_errors_and_loses_no_span() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customers.csv");
    let table = |seg: &str| {
        let mut s = String::from("customer_id,segment\n");
        for i in 1..=5 {
            s.push_str(&format!("cust-{i:06},{seg}\n"));
        }
        s
    };
    std::fs::write(&path, table("v1")).unwrap();
    let lookup = Arc::new(Lookup::open("lookup/customers", &path, None, "customer_id").unwrap());
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(lookup.clone().watch(Duration::from_millis(50), stop.clone()));
    let mut exts = Extensions::default();
    exts.insert("lookup/customers".parse().unwrap(), lookup.clone());
    let cfg = parse(
        &serde_yaml::from_str(
            r#"
rules: [{copy: {from: user.id, to: business.customer.id}}]
lookups:
  - {extension: lookup/customers, key: business.customer.id, attributes: {segment: business.customer.segment}}
"#,
        )
        .unwrap(),
    );
    let run = start(&cfg, &exts);
    let mut sent = 0;
    let mut round = 0;
    let mut send_some = async |n: usize| {
        for _ in 0..n {
            run.tx
                .send(Batch::new(Payload::Traces(traces(
                    customer_spans(10, round),
                    if round % 2 == 0 { Form::Encoded } else { Form::Decoded },
                ))))
                .await
                .unwrap();
            round += 1;
            sent += 10;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    send_some(10).await;
    // A malformed version (line 4 has an extra field): rejected, the old table stays.
    std::fs::write(
        &path,
        "customer_id,segment\ncust-000001,v2\ncust-000002,v2\ncust-000003,v2,oops\n",
    )
    .unwrap();
    let t = tokio::time::Instant::now();
    while lookup.stats().reload_errors == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the error is noticed");
        send_some(1).await;
    }
    send_some(10).await;
    // A valid version afterwards is live within seconds.
    std::fs::write(&path, table("v2")).unwrap();
    let t = tokio::time::Instant::now();
    while lookup.stats().reloads == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the new version goes live");
        send_some(1).await;
    }
    let live_after = t.elapsed();
    send_some(10).await;
    let (spans, engine) = run.finish().await;
    stop.cancel();
    watcher.await.unwrap();

    assert_eq!(spans.len(), sent, "no span lost across the reloads");
    assert!(
        spans.iter().all(|s| segment(s).is_some()),
        "every span enriched, from one table or the other"
    );
    let segs: Vec<String> = spans.iter().filter_map(segment).collect();
    let first_v2 = segs.iter().position(|s| s == "v2").expect("v2 went live");
    assert!(segs[..first_v2].iter().all(|s| s == "v1"));
    assert!(
        segs[first_v2..].iter().all(|s| s == "v2"),
        "the table swaps atomically, once"
    );
    assert!(first_v2 >= 200, "the malformed version was never used");
    assert!(live_after < Duration::from_secs(3), "{live_after:?}");
    assert_eq!(engine.stats().lookup_misses, 0);
    assert_eq!(lookup.stats().reload_errors, 1);
    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_else(|| panic!("no error logged: {logs}"));
    assert!(line.contains("customers.csv:4"), "file and line: {line}");
    assert!(line.contains("lookup/customers"), "{line}");
}

/// A span's attributes sorted by key (the paths may order them differently: see
/// `enrich::target`), rendered for comparison.
fn sorted_attributes(sp: &Span) -> Vec<String> {
    let mut a: Vec<String> = sp
        .attributes
        .iter()
        .map(|kv| format!("{} = {:?}", kv.key, kv.value))
        .collect();
    a.sort();
    a
}

/// Spans of a request, in order.
fn spans_of(req: &ExportTraceServiceRequest) -> Vec<&Span> {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect()
}

/// The same workload through both paths of the engine gives the same spans, span by span: every
/// field equal, attributes equal as sets (with this config also in the same order: nothing is
/// overwritten), and the same counts.
#[test]
fn view_and_decoded_paths_agree_span_by_span() {
    for (prefix, money, seed) in [
        (AttributePrefix::Demo, MoneyAttributes::Double, 21),
        (AttributePrefix::App, MoneyAttributes::String, 22),
    ] {
        let w = Shop::generate(&shop(prefix, money, seed)).unwrap();
        let (exts, state, _dir) = join_setup(&w, Duration::from_secs(7200));
        // Half of the orders known to the state: hits and misses, customer joins, lookups.
        for (i, e) in w.events().enumerate() {
            if i % 2 == 0 {
                state.apply(&event_of(e));
            }
        }
        // The two shipped enrich stages in one engine: the demo preset's rules, then the join.
        let mut raw = shipped_enrich_config("opentelemetry-demo.yaml", "enrich/opentelemetry-demo");
        let join = shipped_enrich_config("business-join.yaml", "enrich");
        raw["join"] = join["join"].clone();
        raw["join"]["window"] = "0s".into();
        raw["lookups"] = join["lookups"].clone();
        if let Some(rules) = join["rules"].as_sequence() {
            let mine = raw["rules"].as_sequence_mut().unwrap();
            mine.extend(rules.iter().cloned());
        }
        let cfg = parse(&raw);
        let decoded_engine = EnrichProcessor::new(&cfg, &exts, "a", "traces").unwrap().engine();
        let view_engine = EnrichProcessor::new(&cfg, &exts, "b", "traces").unwrap().engine();
        let mut compared = 0;
        for t in w.traces() {
            let req = t.to_request();
            let mut a = req.clone();
            let changed_a = decoded_engine.apply_traces(&mut a);
            let mut enc = Traces::from_bytes(req.encode_to_vec().into()).unwrap();
            let changed_b = view_engine.apply_encoded(&mut enc);
            assert!(enc.decoded().is_none(), "the view path does not decode");
            assert_eq!(changed_a, changed_b);
            let b = enc.into_message().unwrap();
            let (sa, sb) = (spans_of(&a), spans_of(&b));
            assert_eq!(sa.len(), sb.len());
            for (x, y) in sa.iter().zip(&sb) {
                let ctx = format!("{} {}", x.name, hex(&x.span_id));
                assert_eq!(sorted_attributes(x), sorted_attributes(y), "{ctx}");
                assert_eq!(x.attributes, y.attributes, "{ctx}: same order too");
                let strip = |s: &Span| Span {
                    attributes: Vec::new(),
                    ..s.clone()
                };
                assert_eq!(strip(x), strip(y), "{ctx}");
                compared += 1;
            }
            // Resources and scopes untouched.
            assert_eq!(a.resource_spans.len(), b.resource_spans.len());
        }
        assert!(compared > 1_000, "{compared}");
        let (sa, sb) = (decoded_engine.stats(), view_engine.stats());
        assert_eq!(sa, sb, "counts");
        assert!(
            sa.order_hits > 0 && sa.order_misses > 0 && sa.lookup_hits > 0 && sa.enriched > 0,
            "{sa:?}"
        );
    }
}
