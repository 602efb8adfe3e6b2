//! End to end: the business join's state survives a `SIGKILL`. The shipped `pipelines/business-join.yaml` runs in
//! the real binary with its `business_state` checkpointed into a `file_storage` extension (a redb file in a
//! temporary directory). A shop's business events arrive over OTLP and build the state; the process is killed with
//! `SIGKILL` once a checkpoint has been written; a new process on the same directory restores the state before it
//! reports ready, and the shop's spans — which only then arrive — are enriched from the restored state alone
//! (the events are not sent again), checked span by span against the workload's ground truth at a real OTLP/gRPC
//! server downstream. A third start, after a graceful stop, restores the same state again.

mod common;

use bizpilot_core::{Currency, Money};
use bizpilot_shopgen::{Shop, ShopConfig};
use common::{Bizpilot, Downstream, free_addr, hex, post_accepted, span_attr, start_pipeline};
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_metric(bp: &Bizpilot, name: &str, filter: &[&str], at_least: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = bp.metric_sum(name, filter);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{filter:?} = {v}, expected ≥ {at_least}\n{}",
            bp.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(storage: &Path, downstream: SocketAddr, http: SocketAddr, admin: SocketAddr, customers: &Path) -> Bizpilot {
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", free_addr().to_string()),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
        ("BIZPILOT_CUSTOMERS_FILE", customers.display().to_string()),
        ("BIZPILOT_STORAGE_DIR", storage.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let overlay = format!(
        r#"
extensions:
  business_state:
    checkpoint_interval: 200ms
processors:
  enrich:
    join:
      window: 1s
exporters:
  otlp:
    endpoint: http://{downstream}
service:
  pipelines:
    traces:
      exporters: [otlp]
"#
    );
    start_pipeline("pipelines/business-join.yaml", &overlay, admin, &env)
}

#[test]
fn the_join_state_survives_sigkill_and_enriches_spans_that_arrive_after_the_restart() {
    let started = Instant::now();
    let cfg: ShopConfig = serde_yaml::from_str(
        r#"
seed: 23
duration: 1m
orders_per_sec: 3
customers: 500
fulfilment: {ship_delay: {min: 1s, max: 10s}, delivery_delay: {min: 1s, max: 10s}}
"#,
    )
    .unwrap();
    let work = Shop::generate(&cfg).unwrap();
    let truth = &work.truth;
    let orders: std::collections::BTreeSet<_> = work.events().map(|e| e.order_id.clone()).collect();
    let customers_n: std::collections::BTreeSet<_> = work.events().map(|e| e.customer_id.clone()).collect();
    assert!(orders.len() > 100, "{} orders", orders.len());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let downstream = rt.block_on(Downstream::start());
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let customers = dir.path().join("customers.csv");
    std::fs::write(&customers, work.catalog.customers_csv()).unwrap();
    let (http, admin) = (free_addr(), free_addr());

    // 1. Events only; then SIGKILL once a checkpoint holds them all.
    let mut bp = start(&storage, downstream.addr, http, admin, &customers);
    for req in work.log_requests(500) {
        post_accepted(http, "/v1/logs", &req.encode_to_vec());
    }
    let want = (orders.len() + customers_n.len()) as f64;
    wait_metric(
        &bp,
        "bizpilot_business_state_entries",
        &["store=\"orders\""],
        orders.len() as f64,
        Duration::from_secs(30),
    );
    wait_metric(
        &bp,
        "bizpilot_business_state_checkpointed_keys_total",
        &[],
        want,
        Duration::from_secs(30),
    );
    bp.signal("KILL");
    bp.wait_exit(Duration::from_secs(10));
    eprintln!(
        "[{:?}] {} orders, {} customers checkpointed; killed",
        started.elapsed(),
        orders.len(),
        customers_n.len()
    );

    // 2. A new process on the same storage: restored before ready; the spans come now, the events never again.
    let mut bp = start(&storage, downstream.addr, http, admin, &customers);
    let restored = bp.metric_sum("bizpilot_business_state_restored_entries", &[]);
    assert!(
        restored >= want,
        "restored {restored} entries, {want} checkpointed\n{}",
        bp.logs()
    );
    let mut spans_sent = 0;
    for req in work.trace_requests(2_000) {
        spans_sent += req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
        post_accepted(http, "/v1/traces", &req.encode_to_vec());
    }
    rt.block_on(downstream.wait_for(Duration::from_secs(60), "every span", |r| r.span_count() >= spans_sent));
    let spans = downstream.received(|r| r.spans());
    assert_eq!(spans.len(), spans_sent);

    // Every span with an order key carries what only the state knows: its order's customer, value and currency.
    let (mut with_order, mut from_state_alone) = (0, 0);
    for sp in &spans {
        let Some(exp) = truth.enrichment_for(&hex(&sp.trace_id), &hex(&sp.span_id)) else {
            continue;
        };
        let ctx = format!("{} {}", sp.name, hex(&sp.trace_id));
        assert_eq!(
            span_attr(sp, "business.customer.id").as_deref(),
            Some(exp.customer_id.as_str()),
            "{ctx}"
        );
        if let (Some(v), Some(c)) = (exp.order_value, exp.currency) {
            with_order += 1;
            let cur = span_attr(sp, "business.currency").unwrap_or_else(|| panic!("{ctx}: no currency"));
            assert_eq!(cur, c.as_str(), "{ctx}");
            let value = span_attr(sp, "business.order.value").unwrap_or_else(|| panic!("{ctx}: no order value"));
            assert_eq!(
                Money::parse_amount(&value, Currency::new(&cur).unwrap()).unwrap(),
                v,
                "{ctx}"
            );
        }
        if sp.name == bizpilot_shopgen::spans::names::SHIP_ORDER {
            from_state_alone += 1;
        }
    }
    assert!(
        with_order > 100 && from_state_alone > 50,
        "{with_order} spans with an order value, {from_state_alone} ShipOrder"
    );
    eprintln!(
        "[{:?}] {spans_sent} spans after the restart; {with_order} valued from the restored state, {from_state_alone} ShipOrder spans enriched from it alone",
        started.elapsed()
    );

    // 3. A graceful stop checkpoints once more; the next start restores the same keys.
    bp.signal("TERM");
    assert!(bp.wait_exit(Duration::from_secs(20)).success(), "{}", bp.logs());
    let bp = start(&storage, downstream.addr, http, admin, &customers);
    let again = bp.metric_sum("bizpilot_business_state_restored_entries", &[]);
    assert!(again >= want, "restored {again} after a graceful stop");
    drop(bp);
}
