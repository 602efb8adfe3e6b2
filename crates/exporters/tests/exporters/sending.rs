//! Sending queue, backpressure, drain and abort, against the gRPC server; and the helper
//! with a custom `BatchSender`.

use crate::common::*;
use bizpilot_core::config::Duration as CfgDuration;
use bizpilot_core::{Batch, ComponentId, Delivery, ExporterContext};
use bizpilot_exporters::OtlpExporterFactory;
use bizpilot_exporters::helper::{
    BatchSender, ExportError, HelperSettings, QueueSettings, RetrySettings, Sent, start_exporter,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn cfg(addr: std::net::SocketAddr, consumers: usize, queue: usize) -> String {
    format!(
        "endpoint: http://{addr}\ntimeout: 0\nretry_on_failure: {{initial_interval: 20ms, max_interval: 100ms}}\n\
         sending_queue: {{num_consumers: {consumers}, queue_size: {queue}}}"
    )
}

#[tokio::test]
async fn full_queue_stops_reading_the_input_and_drops_nothing() {
    let server = GrpcServer::start(GrpcState::gated()).await;
    let id = "otlp/backpressure";
    let h = start(OtlpExporterFactory, id, &cfg(server.addr, 1, 2), 1);
    let mut acks = Vec::new();
    // 1 in flight + 2 queued + 1 waiting in the input channel.
    for i in 0..4 {
        let (b, ack) = trace_batch(1, &format!("bp{i}"));
        tokio::time::timeout(Duration::from_secs(5), h.tx.send(b))
            .await
            .expect("room expected")
            .unwrap();
        acks.push(ack);
    }
    eventually("one call in flight", Duration::from_secs(5), || {
        server.state.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("queue gauge", Duration::from_secs(5), || {
        gauge("bizpilot_exporter_queue_size", id) == 2.0
    })
    .await;
    assert_eq!(gauge("bizpilot_exporter_queue_capacity", id), 2.0);
    // The input stays full: the exporter does not read while its queue is full.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (b, _ack) = trace_batch(1, "extra");
        assert!(
            matches!(h.tx.try_send(b), Err(mpsc::error::TrySendError::Full(_))),
            "input channel must stay full"
        );
    }
    assert_eq!(h.tx.capacity(), 0);
    // Release: everything is delivered, nothing was dropped.
    server.state.release();
    let (b, ack) = trace_batch(1, "last");
    h.tx.send(b).await.unwrap();
    acks.push(ack);
    for a in acks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), a).await.unwrap().unwrap(),
            Delivery::Delivered
        );
    }
    assert_eq!(server.state.span_count(), 5);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 0);
    h.finish(Duration::from_secs(5)).await;
    assert_eq!(gauge("bizpilot_exporter_queue_size", id), 0.0);
}

#[tokio::test]
async fn closed_input_drains_the_queue_then_the_task_ends() {
    let server = GrpcServer::start(GrpcState::gated()).await;
    let id = "otlp/drain";
    let h = start(OtlpExporterFactory, id, &cfg(server.addr, 2, 10), 16);
    let mut acks = Vec::new();
    for i in 0..8 {
        let (b, ack) = trace_batch(2, &format!("dr{i}"));
        h.tx.send(b).await.unwrap();
        acks.push(ack);
    }
    // A server error on the way: drained batches are still retried.
    server.state.push_error(tonic::Status::unavailable("blip"));
    let crate::common::Harness { tx, mut running, .. } = h;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!running.is_finished(), "must wait for the queue to drain");
    server.state.release();
    tokio::time::timeout(Duration::from_secs(10), running.join())
        .await
        .expect("task ends once the queue is empty")
        .unwrap();
    for a in acks {
        assert_eq!(a.await.unwrap(), Delivery::Delivered);
    }
    assert_eq!(server.state.span_count(), 16);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 16);
    assert_eq!(counter("bizpilot_exporter_retries_total", id), 1);
}

#[tokio::test]
async fn abort_fails_in_flight_queued_and_input_batches_promptly() {
    let server = GrpcServer::start(GrpcState::gated()).await;
    let id = "otlp/abort";
    let h = start(OtlpExporterFactory, id, &cfg(server.addr, 1, 3), 2);
    let mut acks = Vec::new();
    // 1 in flight + 3 queued + 2 in the input channel.
    for i in 0..6 {
        let (b, ack) = trace_batch(3, &format!("ab{i}"));
        tokio::time::timeout(Duration::from_secs(5), h.tx.send(b))
            .await
            .unwrap()
            .unwrap();
        acks.push(ack);
    }
    eventually("one call in flight", Duration::from_secs(5), || {
        server.state.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    let crate::common::Harness {
        tx, mut running, abort, ..
    } = h;
    let started = std::time::Instant::now();
    abort.cancel();
    tokio::time::timeout(Duration::from_secs(2), running.join())
        .await
        .expect("abort must end the task promptly")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(tx.is_closed(), "the input is closed on abort");
    for a in acks {
        assert_eq!(a.await.unwrap(), Delivery::Failed);
    }
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 18);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 0);
    assert_eq!(server.state.span_count(), 0);
}

#[tokio::test]
async fn abort_interrupts_a_retry_wait() {
    let server = GrpcServer::start(GrpcState::default()).await;
    for _ in 0..10 {
        server.state.push_error(tonic::Status::unavailable("down"));
    }
    let id = "otlp/abort_backoff";
    let h = start(
        OtlpExporterFactory,
        id,
        &format!(
            "endpoint: http://{}\nretry_on_failure: {{initial_interval: 30s, max_interval: 60s}}",
            server.addr
        ),
        4,
    );
    let (b, ack) = trace_batch(2, "wait");
    h.tx.send(b).await.unwrap();
    eventually("first retry scheduled", Duration::from_secs(5), || {
        counter("bizpilot_exporter_retries_total", id) == 1
    })
    .await;
    let crate::common::Harness {
        tx, mut running, abort, ..
    } = h;
    drop(tx);
    abort.cancel();
    tokio::time::timeout(Duration::from_secs(2), running.join())
        .await
        .expect("abort must end the retry wait")
        .unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Failed);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 2);
}

#[tokio::test]
async fn without_queue_batches_go_one_at_a_time_in_order() {
    let server = GrpcServer::start(GrpcState::default()).await;
    let id = "otlp/no_queue";
    let h = start(
        OtlpExporterFactory,
        id,
        &format!("endpoint: http://{}\nsending_queue: {{enabled: false}}", server.addr),
        1,
    );
    let mut acks = Vec::new();
    for i in 0..5 {
        let (b, ack) = trace_batch(1, &format!("seq{i}"));
        h.tx.send(b).await.unwrap();
        acks.push(ack);
    }
    for a in acks {
        assert_eq!(a.await.unwrap(), Delivery::Delivered);
    }
    let names: Vec<String> = server
        .state
        .traces
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.resource_spans[0].scope_spans[0].spans[0].name.clone())
        .collect();
    assert_eq!(names, (0..5).map(|i| format!("seq{i}-span-0")).collect::<Vec<_>>());
    assert_eq!(gauge("bizpilot_exporter_queue_capacity", id), 0.0);
    h.finish(Duration::from_secs(5)).await;
}

/// A custom sender, as the Kafka exporter will write one: fails the first `fail_first`
/// attempts, tracks concurrency.
struct FlakySender {
    fail_first: usize,
    attempts: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl BatchSender for FlakySender {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(ExportError::retryable_after(
                "broker busy",
                Some(Duration::from_millis(5)),
            ));
        }
        if batch.items() == 13 {
            return Err(ExportError::permanent("message too large"));
        }
        Ok(Sent::ALL)
    }
}

#[tokio::test]
async fn helper_with_a_custom_sender() {
    init();
    let sender = Arc::new(FlakySender {
        fail_first: 2,
        attempts: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        max_active: AtomicUsize::new(0),
    });
    let settings = HelperSettings {
        timeout: CfgDuration::from_secs(1),
        retry_on_failure: RetrySettings {
            initial_interval: CfgDuration::from_millis(10),
            ..Default::default()
        },
        sending_queue: QueueSettings {
            enabled: true,
            num_consumers: 3,
            queue_size: 4,
            storage: None,
        },
    };
    let (tx, rx) = mpsc::channel(2);
    let id: ComponentId = "kafka/helper_test".parse().unwrap();
    let mut running = start_exporter(
        ExporterContext {
            id,
            input: rx,
            abort: CancellationToken::new(),
        },
        &settings,
        sender.clone(),
    );
    let mut acks = Vec::new();
    for i in 0..12 {
        let (b, ack) = trace_batch(if i == 5 { 13 } else { 1 }, &format!("k{i}"));
        tx.send(b).await.unwrap();
        acks.push(ack);
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), running.join())
        .await
        .unwrap()
        .unwrap();
    for (i, a) in acks.into_iter().enumerate() {
        let want = if i == 5 { Delivery::Failed } else { Delivery::Delivered };
        assert_eq!(a.await.unwrap(), want, "batch {i}");
    }
    assert_eq!(
        sender.max_active.load(Ordering::SeqCst),
        3,
        "num_consumers senders at once"
    );
    assert_eq!(counter("bizpilot_exporter_retries_total", "kafka/helper_test"), 2);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", "kafka/helper_test"), 11);
    assert_eq!(
        counter("bizpilot_exporter_send_failed_spans_total", "kafka/helper_test"),
        13
    );
}
