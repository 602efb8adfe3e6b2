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

// ---------------------------------------------------------------------------------------------------------------
// business_impact survives SIGKILL: the embedded default pipeline through a payment outage.

use common::demo::{DemoConfig, DemoTraffic, Generation};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

/// As `tests/demo_conformance.rs` runs the default pipeline on replayed demo traffic: the figures are final once
/// the input is idle for `idle_timeout` (10 s: longer than any pause of the sender, a kill and restart included,
/// since a pause that long would finalize everything in one run and not in the other), and the join does not hold spans for business events this traffic
/// does not have (a wall-clock hold in a replay would make them late in event time).
const DEMO_OVERLAY: &str = r#"
connectors:
  business_impact:
    # `storage: file_storage` and `checkpoint_interval: 200ms` are the default pipeline's own.
    # Small, so that the kill comes after several snapshots: the restart loads the latest and replays the tail.
    snapshot_min_journal: 64KiB
    idle_timeout: 10s
    metrics_flush_interval: 200ms
processors:
  enrich/join:
    join: {window: 0s}
"#;

struct Ports {
    grpc: u16,
    http: SocketAddr,
    admin: SocketAddr,
    prom: SocketAddr,
}

/// `bizpilot run` with the embedded default pipeline (`pipelines/opentelemetry-demo.yaml`, as `DEFAULT_PIPELINE`
/// embeds it) and its durable state in `storage`.
fn start_default(ports: &Ports, storage: &Path) -> Bizpilot {
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{}", ports.grpc)),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", ports.http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", ports.admin.to_string()),
        ("BIZPILOT_PROMETHEUS_ENDPOINT", ports.prom.to_string()),
        ("BIZPILOT_STORAGE_DIR", storage.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::start_pipeline("pipelines/opentelemetry-demo.yaml", DEMO_OVERLAY, ports.admin, &env)
}

/// Sends `requests` over OTLP/gRPC as an SDK's exporter does: a request that fails or is not answered
/// (connection refused or reset while the process restarts) is sent again, until it is accepted.
fn send_retrying(port: u16, requests: &[ExportTraceServiceRequest]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut client = None;
        for req in requests {
            loop {
                assert!(Instant::now() < deadline, "the collector never accepted the data");
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => match TraceServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                match c.export(req.clone()).await {
                    Ok(_) => break,
                    Err(_) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

fn spans_in(requests: &[ExportTraceServiceRequest]) -> usize {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Every figure of the impact API (both operations, all records) and of the incidents API.
fn figures(bp: &Bizpilot) -> serde_json::Value {
    let get = |path: &str| {
        let (status, body) = common::json_get(bp.admin, path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    serde_json::json!({
        "checkout": get("/api/v1/impact?operation=checkout&limit=1000"),
        "payment": get("/api/v1/impact?operation=payment&limit=1000"),
        "incidents": get("/api/v1/incidents"),
    })
}

/// Waits until `bp` has counted `want` operations of each operation and is idle (everything final).
fn final_figures(bp: &Bizpilot, want: &[(&str, u64)]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = figures(bp);
        if want
            .iter()
            .all(|(op, n)| f[*op]["summary"][0]["operations"].as_u64() == Some(*n))
        {
            // Idle for `idle_timeout` (10 s): everything is final.
            std::thread::sleep(Duration::from_secs(11));
            return figures(bp);
        }
        assert!(Instant::now() < deadline, "never reached {want:?}: {f}\n{}", bp.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the connector has consumed `spans` and its journal holds every one of them durably.
fn wait_journaled(bp: &Bizpilot, spans: usize) {
    wait_metric(
        bp,
        "bizpilot_connector_consumed_spans_total",
        &["connector=\"business_impact\""],
        spans as f64,
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while bp.metric_sum(
        "bizpilot_storage_journal_pending_records",
        &["owner=\"business_impact\""],
    ) > 0.0
    {
        assert!(Instant::now() < deadline, "journal never committed\n{}", bp.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn business_impact_killed_mid_outage_and_restarted_ends_with_the_figures_of_an_uninterrupted_run() {
    let traffic = DemoTraffic::generate(&DemoConfig::outage(Generation::Current, 17));
    let requests = &traffic.requests;
    let (checkout, payment) = (traffic.truth("checkout"), traffic.truth("payment"));
    let want = [
        ("checkout", checkout.successful + checkout.failed),
        ("payment", payment.successful + payment.failed),
    ];
    // The middle of the total outage (phases: 3 min healthy, 3 min at 10 %, 4 min at 100 %, …).
    let c = &traffic.config;
    let mid_outage = c.start_ns + (180 + 180 + 120) * 1_000_000_000;
    let newest = |r: &ExportTraceServiceRequest| {
        r.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.end_time_unix_nano)
            .max()
            .unwrap_or(0)
    };
    let kill_at = requests
        .iter()
        .position(|r| newest(r) >= mid_outage)
        .expect("outage in the traffic");
    assert!(
        kill_at > 50 && kill_at + 50 < requests.len(),
        "{kill_at} of {}",
        requests.len()
    );

    // 1. Uninterrupted.
    let dir = tempfile::tempdir().unwrap();
    let ports = || Ports {
        grpc: common::free_port(),
        http: free_addr(),
        admin: free_addr(),
        prom: free_addr(),
    };
    let p = ports();
    let mut bp = start_default(&p, &dir.path().join("a"));
    send_retrying(p.grpc, requests);
    let uninterrupted = final_figures(&bp, &want);
    let dup_a = bp.metric_sum(
        "bizpilot_connector_business_impact_dropped_spans_total",
        &["reason=\"duplicate\""],
    );
    bp.signal("TERM");
    bp.wait_exit(Duration::from_secs(20));
    let incidents = uninterrupted["incidents"]["incidents"].as_array().map_or(0, Vec::len);
    assert!(
        incidents >= 1,
        "the outage opens an incident: {}",
        uninterrupted["incidents"]
    );
    assert_eq!(
        uninterrupted["checkout"]["summary"][0]["failed"].as_u64(),
        Some(checkout.failed),
        "the uninterrupted run counts the truth"
    );

    // 2. The same traffic, SIGKILLed in the middle of the outage once the connector has journaled what it
    //    received, and restarted at once on the same storage while the sender retries: it sends again the last 20
    //    requests before the kill (as a client that got no answer would), which change nothing, then the rest.
    let p = ports();
    let storage = dir.path().join("b");
    let mut bp = start_default(&p, &storage);
    send_retrying(p.grpc, &requests[..kill_at]);
    wait_journaled(&bp, spans_in(&requests[..kill_at]));
    let before = figures(&bp);
    assert_eq!(
        before["incidents"]["incidents"][0]["state"], "open",
        "killed while an incident is open: {before}"
    );
    let journal_bytes = bp.metric_sum("bizpilot_storage_journal_bytes_total", &["owner=\"business_impact\""]);
    let snapshots = bp.metric_sum(
        "bizpilot_storage_journal_snapshots_total",
        &["owner=\"business_impact\""],
    );
    assert!(snapshots >= 1.0, "compacted before the kill\n{}", bp.logs());
    let stored: u64 = std::fs::read_dir(&storage)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let ops: u64 = ["checkout", "payment"]
        .iter()
        .map(|op| {
            let s = &before[*op]["summary"][0];
            s["operations"].as_u64().unwrap_or(0) + s["provisional"]["operations"].as_u64().unwrap_or(0)
        })
        .sum();
    let spans = spans_in(&requests[..kill_at]);
    eprintln!(
        "at the kill: {journal_bytes} bytes written (journal and {snapshots} snapshots) for {spans} spans ({:.0} \
         bytes/span), {ops} operations ({:.0} bytes/operation); storage directory {stored} bytes",
        journal_bytes / spans as f64,
        journal_bytes / ops.max(1) as f64
    );
    bp.signal("KILL");
    bp.wait_exit(Duration::from_secs(10));
    let resend: Vec<ExportTraceServiceRequest> = requests[kill_at - 20..kill_at].to_vec();
    let sender = {
        let port = p.grpc;
        std::thread::spawn(move || send_retrying(port, &resend))
    };
    let bp = start_default(&p, &storage);
    // From the latest snapshot and the journal after it (which may be empty when the kill came right after one).
    assert!(
        bp.metric_sum("bizpilot_connector_business_impact_restored_snapshot_bytes", &[])
            + bp.metric_sum("bizpilot_connector_business_impact_restored_requests", &[])
            > 0.0,
        "restored from the snapshot and journal\n{}",
        bp.logs()
    );
    eprintln!(
        "restored in {:.3} s",
        bp.metric_sum("bizpilot_connector_business_impact_restore_seconds", &[])
    );
    sender.join().expect("sender");
    wait_journaled(&bp, spans_in(&requests[kill_at - 20..kill_at]));
    assert_eq!(
        figures(&bp),
        before,
        "restored exactly; the re-sent requests counted nothing"
    );
    send_retrying(p.grpc, &requests[kill_at..]);
    let restarted = final_figures(&bp, &want);
    let dup_b = bp.metric_sum(
        "bizpilot_connector_business_impact_dropped_spans_total",
        &["reason=\"duplicate\""],
    );
    assert!(
        dup_b > dup_a,
        "the re-sent spans were recognized as duplicates ({dup_b} vs {dup_a})"
    );
    for part in ["checkout", "payment", "incidents"] {
        assert_eq!(
            restarted[part], uninterrupted[part],
            "{part}: after SIGKILL and restart vs uninterrupted"
        );
    }
}
