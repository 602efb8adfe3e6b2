//! `otlphttp` exporter against a hyper server.

use crate::common::*;
use bizpilot_core::Delivery;
use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::pdata::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
use bizpilot_exporters::OtlpHttpExporterFactory;
use prost::Message;
use std::time::Duration;

fn config(addr: std::net::SocketAddr, extra: &str) -> String {
    format!("endpoint: http://{addr}\nretry_on_failure: {{initial_interval: 20ms, max_interval: 100ms}}\n{extra}")
}

#[tokio::test]
async fn every_signal_arrives_intact_in_proto_and_json_with_each_compression() {
    for encoding in ["proto", "json"] {
        for compression in ["gzip", "zstd", "none"] {
            let server = HttpServer::start(HttpState::default()).await;
            let tag = format!("{encoding}_{compression}");
            let id = format!("otlphttp/{tag}");
            let h = start(
                OtlpHttpExporterFactory,
                &id,
                &config(
                    server.addr,
                    &format!("encoding: {encoding}\ncompression: {compression}"),
                ),
                8,
            );
            for b in all_signals(&tag) {
                h.tx.send(b).await.unwrap();
            }
            h.finish(Duration::from_secs(10)).await;
            let mut reqs = server.state.requests.lock().unwrap().clone();
            reqs.sort_by(|a, b| a.path.cmp(&b.path));
            let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
            assert_eq!(paths, ["/v1/logs", "/v1/metrics", "/v1/traces"]);
            for r in &reqs {
                let ct = if encoding == "json" {
                    "application/json"
                } else {
                    "application/x-protobuf"
                };
                assert_eq!(r.headers.get("content-type").unwrap(), ct);
                let ce = r.headers.get("content-encoding").map(|v| v.to_str().unwrap());
                assert_eq!(ce, (compression != "none").then_some(compression), "{tag}");
                assert!(
                    r.headers
                        .get("user-agent")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with("bizpilot/")
                );
            }
            let [l, m, t] = [&reqs[0].body, &reqs[1].body, &reqs[2].body];
            if encoding == "json" {
                assert_eq!(
                    serde_json::from_slice::<ExportLogsServiceRequest>(l).unwrap(),
                    logs(5, &tag)
                );
                assert_eq!(
                    serde_json::from_slice::<ExportMetricsServiceRequest>(m).unwrap(),
                    metrics(4, &tag)
                );
                assert_eq!(
                    serde_json::from_slice::<ExportTraceServiceRequest>(t).unwrap(),
                    traces(3, &tag)
                );
                // OTLP/JSON: hex ids.
                assert!(std::str::from_utf8(t).unwrap().contains("\"traceId\":\"01010101"));
            } else {
                assert_eq!(ExportLogsServiceRequest::decode(l.clone()).unwrap(), logs(5, &tag));
                assert_eq!(
                    ExportMetricsServiceRequest::decode(m.clone()).unwrap(),
                    metrics(4, &tag)
                );
                assert_eq!(ExportTraceServiceRequest::decode(t.clone()).unwrap(), traces(3, &tag));
            }
            assert_eq!(counter("bizpilot_exporter_sent_spans_total", &id), 3);
            assert_eq!(counter("bizpilot_exporter_sent_log_records_total", &id), 5);
        }
    }
}

#[tokio::test]
async fn headers_and_signal_endpoint_override() {
    let server = HttpServer::start(HttpState::default()).await;
    let h = start(
        OtlpHttpExporterFactory,
        "otlphttp/override",
        &format!(
            "endpoint: http://{0}/base\ntraces_endpoint: http://{0}/custom/traces\nheaders: {{authorization: Bearer abc}}",
            server.addr
        ),
        4,
    );
    for b in all_signals("o") {
        h.tx.send(b).await.unwrap();
    }
    h.finish(Duration::from_secs(5)).await;
    let reqs = server.state.requests.lock().unwrap();
    let mut paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/base/v1/logs", "/base/v1/metrics", "/custom/traces"]);
    assert!(
        reqs.iter()
            .all(|r| r.headers.get("authorization").unwrap() == "Bearer abc")
    );
}

#[tokio::test]
async fn retryable_statuses_are_retried_honouring_retry_after() {
    let server = HttpServer::start(HttpState::default()).await;
    {
        let mut s = server.state.script.lock().unwrap();
        s.push_back((503, vec![("retry-after", "1".into())], Vec::new()));
        s.push_back((429, vec![], Vec::new()));
        s.push_back((502, vec![], Vec::new()));
    }
    let id = "otlphttp/retry";
    let h = start(OtlpHttpExporterFactory, id, &config(server.addr, ""), 4);
    let started = std::time::Instant::now();
    let (b, ack) = trace_batch(2, "r");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    assert_eq!(server.state.requests.lock().unwrap().len(), 4);
    assert_eq!(counter("bizpilot_exporter_retries_total", id), 3);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 2);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let server = HttpServer::start(HttpState::default()).await;
    let status = bizpilot_core::rpc::Status::new(3, "span has no trace id");
    server.state.script.lock().unwrap().push_back((
        400,
        vec![("content-type", "application/x-protobuf".into())],
        status.encode_to_vec(),
    ));
    let id = "otlphttp/bad_request";
    let h = start(OtlpHttpExporterFactory, id, &config(server.addr, ""), 4);
    let (b, ack) = trace_batch(4, "bad");
    h.tx.send(b).await.unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Failed);
    assert_eq!(server.state.requests.lock().unwrap().len(), 1, "not retried");
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 4);
    assert_eq!(counter("bizpilot_exporter_retries_total", id), 0);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn json_partial_success_is_counted() {
    let server = HttpServer::start(HttpState::default()).await;
    *server.state.ok_body.lock().unwrap() = Some((
        "application/json",
        br#"{"partialSuccess":{"rejectedSpans":"1","errorMessage":"too old"}}"#.to_vec(),
    ));
    let id = "otlphttp/partial";
    let h = start(OtlpHttpExporterFactory, id, &config(server.addr, "encoding: json"), 4);
    let (b, ack) = trace_batch(3, "p");
    h.tx.send(b).await.unwrap();
    assert_eq!(ack.await.unwrap(), Delivery::Delivered);
    assert_eq!(counter("bizpilot_exporter_sent_spans_total", id), 2);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 1);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_server_is_up() {
    // A free port outside the ephemeral range, kept closed for a while.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
    let id = "otlphttp/refused";
    let h = start(OtlpHttpExporterFactory, id, &config(addr, ""), 4);
    let (b, ack) = trace_batch(1, "c");
    h.tx.send(b).await.unwrap();
    eventually("retries", Duration::from_secs(5), || {
        counter("bizpilot_exporter_retries_total", id) >= 2
    })
    .await;
    // Bring a server up on that port.
    let server = HttpServer::start_at(addr, HttpState::default()).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    assert_eq!(server.state.requests.lock().unwrap().len(), 1);
    h.finish(Duration::from_secs(5)).await;
}
