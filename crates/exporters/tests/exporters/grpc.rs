//! `otlp` exporter against a tonic server.

use crate::common::*;
use bizpilot_core::Delivery;
use bizpilot_exporters::OtlpExporterFactory;
use std::time::Duration;

fn config(addr: std::net::SocketAddr, extra: &str) -> String {
    format!("endpoint: http://{addr}\nretry_on_failure: {{initial_interval: 20ms, max_interval: 100ms}}\n{extra}")
}

#[tokio::test]
async fn every_signal_arrives_intact_with_each_compression() {
    for (i, compression) in ["gzip", "zstd", "none"].into_iter().enumerate() {
        let server = GrpcServer::start(GrpcState::default()).await;
        let id = format!("otlp/signals_{compression}");
        let h = start(
            OtlpExporterFactory,
            &id,
            &config(
                server.addr,
                &format!("compression: {compression}\ncompression_level: {}", 3 + i),
            ),
            8,
        );
        for b in all_signals(compression) {
            h.tx.send(b).await.unwrap();
        }
        h.finish(Duration::from_secs(10)).await;
        let st = &server.state;
        assert_eq!(*st.traces.lock().unwrap(), vec![traces(3, compression)]);
        assert_eq!(*st.metrics.lock().unwrap(), vec![metrics(4, compression)]);
        assert_eq!(*st.logs.lock().unwrap(), vec![logs(5, compression)]);
        let headers = st.headers.lock().unwrap();
        assert_eq!(headers.len(), 3);
        for h in headers.iter() {
            let enc = h.get("grpc-encoding").map(|v| v.to_str().unwrap().to_string());
            match compression {
                "none" => assert_eq!(enc, None),
                c => assert_eq!(enc.as_deref(), Some(c)),
            }
            assert_eq!(h.get("content-type").unwrap(), "application/grpc");
            assert!(h.contains_key("grpc-timeout"));
        }
        assert_eq!(counter("bizpilot_exporter_sent_spans_total", &id), 3);
        assert_eq!(counter("bizpilot_exporter_sent_metric_points_total", &id), 4);
        assert_eq!(counter("bizpilot_exporter_sent_log_records_total", &id), 5);
    }
}

#[tokio::test]
async fn headers_are_sent() {
    let server = GrpcServer::start(GrpcState::default()).await;
    let h = start(
        OtlpExporterFactory,
        "otlp/headers",
        &config(server.addr, "headers: {x-api-key: secret, x-tenant: shop}"),
        4,
    );
    let (b, ack) = trace_batch(2, "h");
    h.tx.send(b).await.unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Delivered);
    h.finish(Duration::from_secs(5)).await;
    let headers = server.state.headers.lock().unwrap();
    assert_eq!(headers[0].get("x-api-key").unwrap(), "secret");
    assert_eq!(headers[0].get("x-tenant").unwrap(), "shop");
}

#[tokio::test]
async fn unavailable_is_retried_and_delivered_once() {
    let server = GrpcServer::start(GrpcState::default()).await;
    server.state.push_error(tonic::Status::unavailable("warming up"));
    server.state.push_error(tonic::Status::unavailable("still warming up"));
    let id = "otlp/unavailable";
    let h = start(OtlpExporterFactory, id, &config(server.addr, ""), 4);
    let (b, ack) = trace_batch(4, "u");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    assert_eq!(server.state.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(server.state.traces.lock().unwrap().len(), 1, "delivered exactly once");
    assert_eq!(counter("bizpilot_exporter_retries_total", id), 2);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 4);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 0);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn resource_exhausted_with_retry_info_waits_the_server_delay() {
    use prost::Message;
    let server = GrpcServer::start(GrpcState::default()).await;
    let details = bizpilot_core::rpc::Status::new(8, "slow down").with_retry_delay(Duration::from_millis(400));
    server.state.push_error(tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        "slow down",
        details.encode_to_vec().into(),
    ));
    let id = "otlp/retry_info";
    let h = start(OtlpExporterFactory, id, &config(server.addr, ""), 4);
    let started = std::time::Instant::now();
    let (b, ack) = trace_batch(1, "r");
    h.tx.send(b).await.unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Delivered);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counter("bizpilot_exporter_retries_total", id), 1);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn resource_exhausted_without_retry_info_and_invalid_argument_are_permanent() {
    for (code, name) in [
        (tonic::Code::InvalidArgument, "invalid"),
        (tonic::Code::ResourceExhausted, "exhausted"),
    ] {
        let server = GrpcServer::start(GrpcState::default()).await;
        server.state.push_error(tonic::Status::new(code, "no"));
        let id = format!("otlp/permanent_{name}");
        let h = start(OtlpExporterFactory, &id, &config(server.addr, ""), 4);
        let (b, ack) = trace_batch(3, name);
        h.tx.send(b).await.unwrap();
        assert_eq!(ack.await.unwrap(), Delivery::Failed);
        assert_eq!(
            server.state.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not retried"
        );
        assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", &id), 3);
        assert_eq!(counter("bizpilot_exporter_sent_spans_total", &id), 0);
        assert_eq!(counter("bizpilot_exporter_retries_total", &id), 0);
        // The exporter goes on with the next batch.
        let (b, ack) = trace_batch(1, name);
        h.tx.send(b).await.unwrap();
        assert_eq!(ack.await.unwrap(), Delivery::Delivered);
        h.finish(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn partial_success_counts_rejected_items() {
    let server = GrpcServer::start(GrpcState::default()).await;
    server.state.reject.store(2, std::sync::atomic::Ordering::SeqCst);
    let id = "otlp/partial";
    let h = start(OtlpExporterFactory, id, &config(server.addr, ""), 4);
    let (b, ack) = trace_batch(5, "p");
    h.tx.send(b).await.unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Delivered);
    assert_eq!(
        server.state.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not retried"
    );
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 3);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 2);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn server_down_then_up_is_delivered() {
    // A free port outside the ephemeral range, kept closed for a while.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
    let id = "otlp/down_then_up";
    let h = start(OtlpExporterFactory, id, &config(addr, "timeout: 1s"), 4);
    let (b, ack) = trace_batch(2, "d");
    h.tx.send(b).await.unwrap();
    eventually("a few retries", Duration::from_secs(5), || {
        counter("bizpilot_exporter_retries_total", id) >= 3
    })
    .await;
    let state = std::sync::Arc::new(GrpcState::default());
    let _server = GrpcServer::start_at(addr, state.clone()).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    assert_eq!(state.span_count(), 2);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 0);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn slow_server_times_out_and_is_retried() {
    let server = GrpcServer::start(GrpcState::gated()).await;
    let id = "otlp/timeout";
    let h = start(OtlpExporterFactory, id, &config(server.addr, "timeout: 100ms"), 4);
    let (b, ack) = trace_batch(1, "t");
    h.tx.send(b).await.unwrap();
    eventually("a timeout and a retry", Duration::from_secs(5), || {
        counter("bizpilot_exporter_retries_total", id) >= 1
    })
    .await;
    server.state.release();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn retries_give_up_after_max_elapsed_time() {
    let server = GrpcServer::start(GrpcState::default()).await;
    for _ in 0..100 {
        server.state.push_error(tonic::Status::unavailable("down"));
    }
    let id = "otlp/exhausted";
    let h = start(
        OtlpExporterFactory,
        id,
        &format!(
            "endpoint: http://{}\nretry_on_failure: {{initial_interval: 20ms, max_interval: 50ms, max_elapsed_time: 300ms}}",
            server.addr
        ),
        4,
    );
    let (b, ack) = trace_batch(2, "x");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Failed
    );
    assert!(counter("bizpilot_exporter_retries_total", id) >= 2);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 2);
    h.finish(Duration::from_secs(5)).await;
}
