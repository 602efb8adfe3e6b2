//! End to end: the persistent sending queue (`sending_queue.storage: file_storage`) with real processes. The
//! `bizpilot` binary receives spans over OTLP/HTTP and exports them over OTLP/gRPC to a real OTLP server (tonic)
//! on a free loopback port, which is down for 60 s; meanwhile bizpilot is killed with `SIGKILL` and restarted on the
//! same storage directory. Every span the sender got acknowledged (HTTP 200) is counted at the sink once it is back:
//! none may be missing; duplicates (at-least-once) are counted and reported. A second test fills the queue's bound
//! and checks that beyond it data is refused to the sender (counted), never accepted and lost.
//!
//! What "acknowledged" covers: the OTLP receiver answers once a batch is in the pipeline's channel, a moment before
//! the exporter has stored it; the tests wait until the exporter's `bizpilot_exporter_queue_size` shows every
//! acknowledged batch stored before they kill (see docs/durable-state.md, "Persistent sending queue").

mod common;

use common::{Bizpilot, Downstream, free_addr, otlp_post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(storage: &Path, http: SocketAddr, admin: SocketAddr, downstream: SocketAddr, queue_size: usize) -> String {
    format!(
        r#"
extensions:
  file_storage:
    directory: {storage}
receivers:
  otlp:
    protocols:
      http:
        endpoint: {http}
    backpressure_wait: 200ms
exporters:
  otlp:
    endpoint: http://{downstream}
    timeout: 1s
    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0}}
    sending_queue: {{num_consumers: 2, queue_size: {queue_size}, storage: file_storage}}
service:
  extensions: [file_storage]
  shutdown_timeout: 2s
  telemetry:
    metrics:
      address: {admin}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [otlp]
"#,
        storage = storage.display()
    )
}

/// A request of `n` spans whose ids say which request they belong to.
fn request(req: u32, n: u32) -> (Vec<u8>, Vec<u64>) {
    let ids: Vec<u64> = (0..n)
        .map(|i| (u64::from(req) << 20) | u64::from(i) | 1 << 63)
        .collect();
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: ids
                    .iter()
                    .map(|id| Span {
                        trace_id: [req.to_be_bytes().as_slice(), &[7u8; 12]].concat(),
                        span_id: id.to_be_bytes().to_vec(),
                        name: "checkout".into(),
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_100_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (body.encode_to_vec(), ids)
}

/// Sends requests `range` of `spans` spans each; returns the span ids of the acknowledged ones and how many
/// requests were refused.
fn send(http: SocketAddr, range: std::ops::Range<u32>, spans: u32) -> (Vec<u64>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    for r in range {
        let (body, ids) = request(r, spans);
        match otlp_post(http, "/v1/traces", &body) {
            200 => acked.extend(ids),
            _ => refused += 1,
        }
    }
    (acked, refused)
}

fn wait_gauge(bp: &Bizpilot, name: &str, want: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let v = bp.metric_sum(name, &["exporter=\"otlp\""]);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, expected {want}\n{}",
            bp.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Span ids at the sink, with how many times each arrived.
fn at_sink(d: &Downstream) -> BTreeMap<u64, usize> {
    d.received(|r| {
        let mut m = BTreeMap::new();
        for s in r.spans() {
            let id = u64::from_be_bytes(s.span_id.as_slice().try_into().unwrap_or([0; 8]));
            *m.entry(id).or_insert(0) += 1;
        }
        m
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seconds_down_and_a_sigkill_lose_no_acknowledged_span() {
    let data = tempfile::tempdir().unwrap();
    let mut sink = Downstream::start().await;
    sink.down().await;
    let outage = Instant::now();

    // First process: 40 requests of 25 spans are acknowledged and stored while the sink is down.
    let (http, admin) = (free_addr(), free_addr());
    let mut first = Bizpilot::start(&config(data.path(), http, admin, sink.addr, 1000), admin);
    let (mut acked, refused) = send(http, 0..40, 25);
    assert_eq!(refused, 0, "the queue is far from full");
    wait_gauge(&first, "bizpilot_exporter_queue_size", 40.0, Duration::from_secs(10));
    assert_eq!(
        first.metric_sum("bizpilot_exporter_queue_capacity", &["exporter=\"otlp\""]),
        1000.0
    );
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    // Second process on the same storage: it resumes the 40 stored batches and takes 40 more.
    let (http, admin) = (free_addr(), free_addr());
    let mut second = Bizpilot::start(&config(data.path(), http, admin, sink.addr, 1000), admin);
    wait_gauge(&second, "bizpilot_exporter_queue_size", 40.0, Duration::from_secs(10));
    let (more, refused) = send(http, 40..80, 25);
    assert_eq!(refused, 0);
    acked.extend(more);
    wait_gauge(&second, "bizpilot_exporter_queue_size", 80.0, Duration::from_secs(10));
    assert!(at_sink(&sink).is_empty());

    // The sink comes back after 60 s.
    let down_for = Duration::from_secs(60);
    tokio::time::sleep(down_for.saturating_sub(outage.elapsed())).await;
    sink.up().await;
    let want: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(want.len(), 2000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = at_sink(&sink);
        if want.iter().all(|id| got.contains_key(id)) {
            break;
        }
        let missing = want.iter().filter(|id| !got.contains_key(id)).count();
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged spans missing at the sink\n{}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_gauge(&second, "bizpilot_exporter_queue_size", 0.0, Duration::from_secs(10));
    let got = at_sink(&sink);
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    let unknown = got.keys().filter(|id| !want.contains(id)).count();
    println!(
        "acknowledged {} spans; at the sink {} distinct, 0 missing, {duplicates} duplicates, outage {:.1}s",
        want.len(),
        got.len(),
        outage.elapsed().as_secs_f64()
    );
    assert_eq!(unknown, 0, "only what was sent arrives");
    // Killed while the sink was down, nothing had been delivered: a duplicate here would be a bug.
    assert_eq!(duplicates, 0);
    assert_eq!(
        second.metric_sum("bizpilot_exporter_sent_spans_total", &["exporter=\"otlp\""]),
        2000.0
    );
    second.signal("TERM");
    second.wait_exit(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_data_is_refused_to_the_sender_and_counted_never_lost() {
    let data = tempfile::tempdir().unwrap();
    let mut sink = Downstream::start().await;
    sink.down().await;
    let (http, admin) = (free_addr(), free_addr());
    let mut bp = Bizpilot::start(&config(data.path(), http, admin, sink.addr, 5), admin);
    let (acked, refused) = send(http, 0..30, 10);
    // 5 batches stored; the pipeline's input channel holds a few more; the rest is refused.
    assert!(refused > 0, "beyond the bound the sender is refused");
    wait_gauge(&bp, "bizpilot_exporter_queue_size", 5.0, Duration::from_secs(10));
    let refused_spans = bp.metric_sum("bizpilot_receiver_refused_spans_total", &[]);
    assert_eq!(refused_spans, (refused * 10) as f64, "every refused span is counted");
    assert_eq!(acked.len() + refused * 10, 300);
    println!(
        "queue_size 5: {} requests acknowledged, {refused} refused (counted {refused_spans} spans)",
        acked.len() / 10
    );
    // Nothing more than the bound is stored, however long the sink stays down.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        bp.metric_sum("bizpilot_exporter_queue_size", &["exporter=\"otlp\""]),
        5.0
    );

    // The sink comes back: exactly what was acknowledged arrives, nothing that was refused.
    sink.up().await;
    let want: BTreeSet<u64> = acked.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = at_sink(&sink);
        if want.iter().all(|id| got.contains_key(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "acknowledged spans missing\n{}", bp.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_gauge(&bp, "bizpilot_exporter_queue_size", 0.0, Duration::from_secs(10));
    let got: BTreeSet<u64> = at_sink(&sink).into_keys().collect();
    assert_eq!(got, want);
    // After the outage the refused data can be sent again and is accepted.
    let (again, refused) = send(http, 100..105, 10);
    assert_eq!((again.len(), refused), (50, 0));
    bp.signal("TERM");
    bp.wait_exit(Duration::from_secs(20));
}
