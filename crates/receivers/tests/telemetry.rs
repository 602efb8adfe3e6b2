//! The OTLP receiver's self-telemetry, read through a recording `metrics` recorder.
//! In its own test binary: the recorder is process-wide.

use bizpilot_core::{
    Admission, ComponentId, Output, Receiver, ReceiverContext, ReceiverOutput, Refusal, Signal, Target, parse_config,
};
use bizpilot_receivers::otlp::{OtlpReceiver, OtlpReceiverConfig};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recording(Mutex<HashMap<String, Arc<AtomicU64>>>);

fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recording {
    fn get(&self, key: &str) -> u64 {
        self.0.lock().unwrap().get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

struct Shared(Arc<Recording>);

impl Recorder for Shared {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self.0.0.lock().unwrap().entry(key_string(key)).or_default().clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

struct Refuse;

impl Admission for Refuse {
    fn check(&self) -> Result<(), Refusal> {
        Err(Refusal::MemoryLimit("test".into()))
    }
}

fn traces(n: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("s{i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> StatusCode {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/traces"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    c.request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn counters_for_accepted_refused_and_bad_requests() {
    let rec = Arc::new(Recording::default());
    metrics::set_global_recorder(Shared(rec.clone())).expect("first recorder");

    let start = |id: &str, gates: Vec<Arc<dyn Admission>>| {
        let v: serde_yaml::Value = serde_yaml::from_str(
            "protocols:\n  grpc: {endpoint: '127.0.0.1:0'}\n  http:\n    endpoint: 127.0.0.1:0\n    max_request_body_size: 1KiB\n    auth: {bearer_token: t0ken}\n",
        )
        .unwrap();
        let cfg: OtlpReceiverConfig = parse_config(&v).unwrap();
        let r = OtlpReceiver::new(cfg).unwrap();
        let bound = r.bound_addresses();
        let (tx, rx) = mpsc::channel(16);
        let out = Output::new(
            vec![Target {
                name: "t".into(),
                sender: tx,
            }],
            gates,
        );
        let shutdown = CancellationToken::new();
        let running = Box::new(r)
            .start(ReceiverContext {
                id: id.parse::<ComponentId>().unwrap(),
                output: ReceiverOutput::new(HashMap::from([(Signal::Traces, out)])),
                shutdown: shutdown.clone(),
            })
            .unwrap();
        (bound.get().unwrap(), rx, shutdown, running)
    };

    let (addrs, _rx, stop, mut running) = start("otlp/a", Vec::new());
    let http = addrs.http.unwrap();
    let auth = ("authorization", "Bearer t0ken");
    let pb = ("content-type", "application/x-protobuf");
    assert_eq!(post(http, &[pb, auth], traces(3).encode_to_vec()).await, StatusCode::OK);
    assert_eq!(post(http, &[pb, auth], vec![0x0a, 0x05]).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(http, &[pb, auth], traces(1000).encode_to_vec()).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        post(http, &[("content-type", "text/plain"), auth], b"x".to_vec()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        post(http, &[pb], traces(1).encode_to_vec()).await,
        StatusCode::UNAUTHORIZED
    );
    let mut grpc = TraceServiceClient::connect(format!("http://{}", addrs.grpc.unwrap()))
        .await
        .unwrap();
    grpc.export(traces(2)).await.unwrap();
    stop.cancel();
    running.join().await.unwrap();

    let (addrs, _rx, stop, mut running) = start("otlp/b", vec![Arc::new(Refuse)]);
    let mut grpc = TraceServiceClient::connect(format!("http://{}", addrs.grpc.unwrap()))
        .await
        .unwrap();
    assert!(grpc.export(traces(4)).await.is_err());
    stop.cancel();
    running.join().await.unwrap();

    let accepted = "bizpilot_receiver_accepted_spans_total";
    assert_eq!(rec.get(&format!("{accepted}{{receiver=otlp/a,transport=http}}")), 3);
    assert_eq!(rec.get(&format!("{accepted}{{receiver=otlp/a,transport=grpc}}")), 2);
    let bad = "bizpilot_receiver_bad_requests_total";
    for reason in ["malformed", "too_large", "unsupported_media_type", "unauthenticated"] {
        assert_eq!(
            rec.get(&format!("{bad}{{reason={reason},receiver=otlp/a,transport=http}}")),
            1,
            "{reason}"
        );
    }
    assert_eq!(
        rec.get("bizpilot_receiver_refused_spans_total{reason=memory_limit,receiver=otlp/b,transport=grpc}"),
        4
    );
}
