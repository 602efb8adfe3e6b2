//! A watermark per input: business events (logs) and spans (traces) each have their own; the engine's is the
//! oldest of the active inputs', and an input silent for `idle_timeout` (wall time) stops holding it back.

use super::*;
use std::time::Instant;

/// A shipping span of `order` ending at `end`.
fn ship(order: &str, end: u64, id: u64) -> ExportTraceServiceRequest {
    span("shipping", "ShipOrder", Some(order), end, 20_000_000, false, id)
}

/// Spans hours ahead of the events (as after a restart, when the events are read again from the last committed
/// offset while the spans are fresh), then the events' tail: nothing is late, the order is in time. With one
/// watermark for both inputs, the spans moved it past the tail: the delivery came late and the order was declared
/// breached.
#[test]
fn events_trailing_spans_by_more_than_the_lateness_are_not_late() {
    let mut e = engine(&cfg(Duration::from_secs(2 * 3600)));
    feed(
        &mut e,
        vec![ev("order.placed", "o1", T0), ev("order.paid", "o1", T0 + 10 * M)],
    );
    assert_eq!(e.watermark(), T0 + 8 * M);
    // Spans up to 5 h ahead: they wait for the events.
    for (i, h) in (1..=5).enumerate() {
        e.ingest_traces(&ship("o1", T0 + h * H, i as u64));
        e.advance();
    }
    assert_eq!(e.watermark(), T0 + 8 * M, "the trailing events hold the watermark");
    assert_eq!(e.now(), Some(T0 + 8 * M));
    assert_eq!(e.pending(), 5 + 1, "the spans and the payment wait");
    // The events' tail: shipped and delivered 30 and 40 minutes in, 4 h 20 behind the spans.
    feed(&mut e, vec![ev("order.shipped", "o1", T0 + 30 * M)]);
    feed(&mut e, vec![ev("order.delivered", "o1", T0 + 40 * M)]);
    feed(&mut e, vec![ev("order.placed", "o2", T0 + 50 * M)]);
    let s = e.stats();
    assert_eq!((s.events_late, s.spans_late), (0, 0), "{s:?}");
    assert_eq!(resolutions(&mut e), vec![("o1".to_string(), Outcome::InTime)]);
    let inputs = e.inputs();
    assert_eq!(inputs[0].watermark, Some(T0 + 48 * M));
    assert_eq!(inputs[1].watermark, Some(T0 + 5 * H - 2 * M));
    assert!(inputs.iter().all(|i| i.active && i.late == 0), "{inputs:?}");
    assert_eq!(e.watermark(), T0 + 48 * M);
}

/// The events stop; the spans go on. While the events input is active it holds the watermark; once it has been
/// silent for `idle_timeout` the spans move it, and an order whose deadline passed is declared breached at the
/// evaluation after it, in event time, as if the events had kept up. When the events resume with old data, it is
/// late, counted on their input, and the watermark does not go back.
#[test]
fn an_input_silent_for_the_idle_timeout_stops_holding_the_watermark() {
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.idle_timeout = Duration::from_secs(300);
    let mut e = engine(&c);
    let w0 = Instant::now();
    let sec = std::time::Duration::from_secs(1);
    e.ingest_logs_at(
        &logs(vec![ev("order.placed", "o1", T0), ev("order.placed", "o2", T0 + 5 * M)]),
        w0,
    );
    e.advance_at(w0);
    assert_eq!(e.idle_deadline(), None, "no input is ahead of another");
    // Spans an hour ahead, 4 minutes of wall time later: still held.
    e.ingest_traces_at(&ship("o2", T0 + H, 1), w0 + 240 * sec);
    e.advance_at(w0 + 240 * sec);
    assert_eq!(e.watermark(), T0 + 3 * M);
    assert_eq!(
        e.idle_deadline(),
        Some(w0 + 300 * sec),
        "the events go idle 5 minutes after they last sent"
    );
    assert!(resolutions(&mut e).is_empty());
    // 5 minutes after the events' last batch: idle. The spans' watermark rules.
    e.advance_at(w0 + 300 * sec);
    assert_eq!(e.watermark(), T0 + H - 2 * M);
    assert_eq!(e.idle_deadline(), None);
    let inputs = e.inputs();
    assert!(!inputs[0].active && inputs[1].active, "{inputs:?}");
    // Later spans, 3 h in event time: both orders' 2 h deadlines passed, breached at the next evaluation.
    e.ingest_traces_at(&ship("o2", T0 + 3 * H, 2), w0 + 400 * sec);
    e.advance_at(w0 + 400 * sec);
    let res = e.take_resolutions();
    let got: Vec<_> = res
        .iter()
        .map(|r| (r.order_id.to_string(), r.outcome, r.time))
        .collect();
    assert_eq!(
        got,
        vec![
            ("o1".to_string(), Outcome::Breached, T0 + 2 * H + M),
            ("o2".to_string(), Outcome::Breached, T0 + 2 * H + 6 * M),
        ]
    );
    // The events resume with a delivery of o2 from before the watermark: late, on the events input.
    let now = e.now();
    e.ingest_logs_at(&logs(vec![ev("order.delivered", "o2", T0 + 20 * M)]), w0 + 500 * sec);
    e.advance_at(w0 + 500 * sec);
    assert_eq!(e.stats().events_late, 1);
    let inputs = e.inputs();
    assert_eq!((inputs[0].late, inputs[1].late), (1, 0));
    assert!(inputs[0].active, "sending again, the events hold the watermark again");
    assert_eq!(e.now(), now, "the watermark does not go back");
}

/// `idle_timeout: 0`: an input never goes idle; the trailing events hold the watermark however long they are
/// silent.
#[test]
fn with_idle_timeout_0_an_input_never_goes_idle() {
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.idle_timeout = Duration::from_secs(0);
    let mut e = engine(&c);
    let w0 = Instant::now();
    e.ingest_logs_at(&logs(vec![ev("order.placed", "o1", T0)]), w0);
    e.ingest_traces_at(&ship("o1", T0 + 5 * H, 1), w0);
    e.advance_at(w0 + std::time::Duration::from_secs(24 * 3600));
    assert_eq!(e.idle_deadline(), None);
    assert_eq!(e.watermark(), T0 - 2 * M);
    assert_eq!(e.now(), None);
}

/// Interrupted and restored between the inputs' batches: each input's watermark is in the snapshot, so the
/// restored engine holds the spans for the trailing events as the uninterrupted one does.
#[test]
fn a_restored_engine_keeps_each_inputs_watermark() {
    let c = cfg(Duration::from_secs(2 * 3600));
    let mut a = engine(&c);
    feed(
        &mut a,
        vec![ev("order.placed", "o1", T0), ev("order.paid", "o1", T0 + 10 * M)],
    );
    a.ingest_traces(&ship("o1", T0 + 11 * M, 1));
    a.advance();
    let bytes = a.snapshot().unwrap();
    let mut b = engine(&c);
    b.restore(&bytes).unwrap();
    assert_eq!(b.inputs(), a.inputs());
    assert_eq!(b.watermark(), T0 + 8 * M);
    // After the restart: the spans come back first, hours ahead; then the events' tail.
    for h in 1..=4 {
        b.ingest_traces(&ship("o1", T0 + h * H, 1 + h));
        b.advance();
    }
    assert_eq!(
        b.watermark(),
        T0 + 8 * M,
        "the restored events input holds the watermark"
    );
    feed(&mut b, vec![ev("order.delivered", "o1", T0 + 50 * M)]);
    feed(&mut b, vec![ev("order.placed", "o2", T0 + 60 * M)]);
    let s = b.stats();
    assert_eq!((s.events_late, s.spans_late), (0, 0), "{s:?}");
    assert_eq!(resolutions(&mut b), vec![("o1".to_string(), Outcome::InTime)]);
}

/// The connector: spans keep coming after the events stopped; without any further batch, the idle timer moves the
/// watermark on (the stage's deadline) and the breach is emitted while the pipeline runs, not at shutdown.
#[tokio::test(start_paused = true)]
async fn the_connector_advances_when_an_input_goes_idle() {
    use bizpilot_core::{
        Batch, ConnectorContext, ConnectorFactory, CreateContext, Extensions, Output, ReceiverOutput, Signal, Target,
    };
    use std::collections::{BTreeSet, HashMap};
    use tokio::sync::mpsc;
    let id: bizpilot_core::ComponentId = "order_kpi".parse().unwrap();
    let ext = Extensions::default();
    let ctx = CreateContext {
        id: &id,
        pipeline: None,
        signals: BTreeSet::from([Signal::Logs, Signal::Traces]),
        output_signals: BTreeSet::from([Signal::Metrics]),
        extensions: &ext,
    };
    let mut c = cfg(Duration::from_secs(2 * 3600));
    c.idle_timeout = Duration::from_secs(60);
    c.metrics_interval = Duration::from_secs(60);
    let conn = OrderKpiConnectorFactory.create(c, &ctx).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (mtx, mut mrx) = mpsc::channel(4096);
    let mut running = conn
        .start(ConnectorContext {
            id: id.clone(),
            input: rx,
            output: ReceiverOutput::new(HashMap::from([(
                Signal::Metrics,
                Output::new(
                    vec![Target {
                        name: "m".into(),
                        sender: mtx,
                    }],
                    Vec::new(),
                ),
            )])),
            abort: tokio_util::sync::CancellationToken::new(),
        })
        .unwrap();
    let send = |p: Payload| {
        let tx = tx.clone();
        async move { tx.send(Batch::new(p)).await.unwrap() }
    };
    send(Payload::Logs(Logs::from_message(logs(vec![ev(
        "order.placed",
        "o1",
        T0,
    )]))))
    .await;
    send(Payload::Traces(bizpilot_core::Traces::from_message(ship(
        "o1",
        T0 + 3 * H,
        1,
    ))))
    .await;
    // The breach of o1 (2 h deadline), as the latest `kpi.orders.resolved` point says.
    let breached = |mrx: &mut mpsc::Receiver<Batch>| {
        let mut n = None;
        while let Ok(mut b) = mrx.try_recv() {
            let Payload::Metrics(m) = &mut b.payload else { panic!() };
            for m in &m.message().unwrap().resource_metrics[0].scope_metrics[0].metrics {
                if m.name != "kpi.orders.resolved" {
                    continue;
                }
                let Some(Data::Sum(s)) = &m.data else { panic!() };
                n = Some(
                    s.data_points
                        .iter()
                        .filter(|p| {
                            p.attributes
                                .iter()
                                .any(|a| a.key == "outcome" && attr_str(a) == Some("breached"))
                        })
                        .map(|p| match p.value {
                            Some(number_data_point::Value::AsInt(v)) => v,
                            _ => 0,
                        })
                        .sum::<i64>(),
                );
            }
        }
        n
    };
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    assert_eq!(breached(&mut mrx), None, "held by the events: nothing evaluated yet");
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    assert_eq!(breached(&mut mrx), Some(1), "the events went idle: o1 breached");
    drop(tx);
    running.join().await.unwrap();
}

fn attr_str(a: &opentelemetry_proto::tonic::common::v1::KeyValue) -> Option<&str> {
    match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}
