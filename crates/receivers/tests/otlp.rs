//! The OTLP receiver against real clients: tonic's generated OTLP clients for gRPC,
//! hyper for HTTP, rustls for TLS.

use bizpilot_core::pdata::proto;
use bizpilot_core::{
    Admission, Batch, ComponentError, ComponentId, Output, Payload, ReceiverOutput, Refusal, Running, Signal, Target,
    parse_config, rpc,
};
use bizpilot_core::{Receiver, ReceiverContext};
use bizpilot_receivers::otlp::{Addresses, OtlpReceiver, OtlpReceiverConfig};
use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

// ---------------------------------------------------------------- data

fn kv_str(k: &str, v: &str) -> proto::common::v1::KeyValue {
    proto::common::v1::KeyValue {
        key: k.into(),
        value: Some(proto::common::v1::AnyValue {
            value: Some(proto::common::v1::any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn resource() -> Option<proto::resource::v1::Resource> {
    Some(proto::resource::v1::Resource {
        attributes: vec![kv_str("service.name", "checkout")],
        ..Default::default()
    })
}

fn traces(n: usize, name: &str) -> ExportTraceServiceRequest {
    use proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: vec![1; 16],
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        name: format!("{name}-{i}"),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_100_000_000,
                        attributes: vec![kv_str("http.route", "/cart")],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics(n: usize) -> ExportMetricsServiceRequest {
    use proto::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: (0..n)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: 1_700_000_000_000_000_000,
                                value: Some(number_data_point::Value::AsInt(i as i64)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs(n: usize) -> ExportLogsServiceRequest {
    use proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000,
                        severity_number: 9,
                        body: Some(proto::common::v1::AnyValue {
                            value: Some(proto::common::v1::any_value::Value::StringValue(format!("line {i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A length-delimited field claiming 5 bytes where only 1 follows.
const MALFORMED: &[u8] = &[0x0a, 0x05, 0x01];

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------- harness

struct Refuse;

impl Admission for Refuse {
    fn check(&self) -> Result<(), Refusal> {
        Err(Refusal::MemoryLimit("test limit".into()))
    }
}

struct Opts {
    capacity: usize,
    signals: Vec<Signal>,
    gates: Vec<Arc<dyn Admission>>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            capacity: 64,
            signals: Signal::ALL.to_vec(),
            gates: Vec::new(),
        }
    }
}

struct Harness {
    addrs: Addresses,
    shutdown: CancellationToken,
    running: Running,
    rx: HashMap<Signal, mpsc::Receiver<Batch>>,
}

impl Harness {
    fn grpc(&self) -> SocketAddr {
        self.addrs.grpc.expect("grpc enabled")
    }
    fn http(&self) -> SocketAddr {
        self.addrs.http.expect("http enabled")
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http())
    }
    fn rx(&mut self, s: Signal) -> &mut mpsc::Receiver<Batch> {
        self.rx.get_mut(&s).expect("signal wired")
    }
    /// The next batch of `s`, failing after 5 s.
    async fn next(&mut self, s: Signal) -> Batch {
        tokio::time::timeout(Duration::from_secs(5), self.rx(s).recv())
            .await
            .expect("a batch within 5s")
            .expect("channel open")
    }
    fn assert_empty(&mut self, s: Signal) {
        assert!(self.rx(s).try_recv().is_err(), "no {s} batch expected");
    }
    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running.join())
            .await
            .expect("receiver stops")
            .expect("clean stop");
    }
}

const BOTH: &str = "protocols:\n  grpc:\n    endpoint: 127.0.0.1:0\n  http:\n    endpoint: 127.0.0.1:0\n";

fn config(yaml: &str) -> OtlpReceiverConfig {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
    parse_config(&v).unwrap_or_else(|e| panic!("config: {e:?}"))
}

fn try_start(yaml: &str, opts: Opts) -> Result<Harness, ComponentError> {
    let receiver = OtlpReceiver::new(config(yaml))?;
    let bound = receiver.bound_addresses();
    assert!(bound.get().is_none(), "nothing is bound before start");
    let mut outputs = HashMap::new();
    let mut rx = HashMap::new();
    for s in opts.signals {
        let (tx, r) = mpsc::channel(opts.capacity);
        outputs.insert(
            s,
            Output::new(
                vec![Target {
                    name: format!("{s}"),
                    sender: tx,
                }],
                opts.gates.clone(),
            ),
        );
        rx.insert(s, r);
    }
    let shutdown = CancellationToken::new();
    let running = Box::new(receiver).start(ReceiverContext {
        id: "otlp/test".parse::<ComponentId>().expect("id"),
        output: ReceiverOutput::new(outputs),
        shutdown: shutdown.clone(),
    })?;
    Ok(Harness {
        addrs: bound.get().expect("addresses are published by start"),
        shutdown,
        running,
        rx,
    })
}

fn start(yaml: &str) -> Harness {
    try_start(yaml, Opts::default()).expect("start")
}

fn start_with(yaml: &str, opts: Opts) -> Harness {
    try_start(yaml, opts).expect("start")
}

// ---------------------------------------------------------------- clients

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Sends arbitrary bytes as a gRPC message.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

async fn grpc_raw(addr: SocketAddr, path: &'static str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let mut g = tonic::client::Grpc::new(channel(addr).await);
    g.ready().await.expect("ready");
    g.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `google.rpc.Status` of an error reply, in the reply's format.
    fn status_body(&self) -> rpc::Status {
        match self.header("content-type") {
            Some("application/json") => {
                let v: serde_json::Value = serde_json::from_slice(&self.body).expect("json status");
                rpc::Status::new(
                    v["code"].as_i64().expect("code") as i32,
                    v["message"].as_str().expect("message"),
                )
            }
            Some("application/x-protobuf") => rpc::Status::decode(self.body.clone()).expect("protobuf status"),
            other => panic!("unexpected content type {other:?}"),
        }
    }
}

async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, url: &str, ct: &str, body: impl Into<Bytes>) -> Reply {
    send(client, Method::POST, url, &[("content-type", ct)], body).await
}

const PB: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn decoded_traces(b: Batch) -> ExportTraceServiceRequest {
    match b.payload {
        Payload::Traces(t) => t.into_message().expect("decodes"),
        other => panic!("expected traces, got {:?}", other.signal()),
    }
}

// ---------------------------------------------------------------- gRPC

#[tokio::test]
async fn grpc_exports_every_signal_without_decoding() {
    let mut h = start(BOTH);
    let ch = channel(h.grpc()).await;

    let req = traces(3, "a");
    TraceServiceClient::new(ch.clone())
        .export(req.clone())
        .await
        .expect("traces");
    let mut b = h.next(Signal::Traces).await;
    assert_eq!(b.items(), 3);
    // Forwarded as received: the encoded bytes are the request's.
    assert_eq!(b.payload.encoded(), Bytes::from(req.encode_to_vec()));

    MetricsServiceClient::new(ch.clone())
        .export(metrics(4))
        .await
        .expect("metrics");
    assert_eq!(h.next(Signal::Metrics).await.items(), 4);

    let resp = LogsServiceClient::new(ch.clone()).export(logs(5)).await.expect("logs");
    assert!(resp.into_inner().partial_success.is_none());
    assert_eq!(h.next(Signal::Logs).await.items(), 5);
    h.stop().await;
}

#[tokio::test]
async fn grpc_accepts_gzip_and_zstd_messages() {
    let mut h = start(BOTH);
    let ch = channel(h.grpc()).await;
    for enc in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let req = traces(7, "z");
        TraceServiceClient::new(ch.clone())
            .send_compressed(enc)
            .export(req.clone())
            .await
            .unwrap_or_else(|e| panic!("{enc:?}: {e}"));
        assert_eq!(decoded_traces(h.next(Signal::Traces).await), req);
    }
    h.stop().await;
}

#[tokio::test]
async fn grpc_empty_request_is_accepted_and_not_forwarded() {
    let mut h = start(BOTH);
    TraceServiceClient::new(channel(h.grpc()).await)
        .export(ExportTraceServiceRequest::default())
        .await
        .expect("empty export");
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

#[tokio::test]
async fn grpc_malformed_is_invalid_argument() {
    let mut h = start(BOTH);
    let e = grpc_raw(h.grpc(), TRACE_EXPORT, Bytes::from_static(MALFORMED))
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("invalid protobuf"), "{}", e.message());
    h.assert_empty(Signal::Traces);
    // A valid message through the raw path works and the response is an empty ExportTraceServiceResponse.
    let ok = grpc_raw(h.grpc(), TRACE_EXPORT, traces(1, "x").encode_to_vec().into())
        .await
        .expect("valid");
    assert_eq!(
        ExportTraceServiceResponse::decode(ok).expect("response"),
        ExportTraceServiceResponse::default()
    );
    assert_eq!(h.next(Signal::Traces).await.items(), 1);
    h.stop().await;
}

#[tokio::test]
async fn grpc_unknown_method_and_unused_signal_are_unimplemented() {
    let mut h = start_with(
        BOTH,
        Opts {
            signals: vec![Signal::Traces],
            ..Opts::default()
        },
    );
    let e = MetricsServiceClient::new(channel(h.grpc()).await)
        .export(metrics(1))
        .await
        .expect_err("no metrics pipeline");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    let e = grpc_raw(h.grpc(), "/some.Service/Method", Bytes::new())
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

#[tokio::test]
async fn grpc_oversized_message_is_resource_exhausted() {
    let mut h = start("protocols:\n  grpc:\n    endpoint: 127.0.0.1:0\n    max_recv_msg_size_mib: 1\n");
    let mut big = traces(1, "big");
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(1_100_000);
    let e = TraceServiceClient::new(channel(h.grpc()).await)
        .export(big.clone())
        .await
        .expect_err("too large");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // The limit applies after decompression too.
    let e = TraceServiceClient::new(channel(h.grpc()).await)
        .send_compressed(CompressionEncoding::Gzip)
        .export(big)
        .await
        .expect_err("too large once decompressed");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn http_protobuf_for_every_signal() {
    let mut h = start(BOTH);
    let c = http_client();
    let req = traces(2, "h");
    let r = post(&c, &h.url("/v1/traces"), PB, req.encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(PB));
    assert_eq!(
        ExportTraceServiceResponse::decode(r.body).expect("response"),
        ExportTraceServiceResponse::default()
    );
    let mut b = h.next(Signal::Traces).await;
    assert_eq!(b.payload.encoded(), Bytes::from(req.encode_to_vec()));

    let r = post(&c, &h.url("/v1/metrics"), PB, metrics(3).encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Metrics).await.items(), 3);
    let r = post(
        &c,
        &h.url("/v1/logs"),
        "application/x-protobuf; charset=binary",
        logs(4).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Logs).await.items(), 4);
    h.stop().await;
}

#[tokio::test]
async fn http_json_with_hex_ids_and_string_ints() {
    let mut h = start(BOTH);
    let c = http_client();
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"GET /cart","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
        "attributes":[{"key":"http.status_code","value":{"intValue":"42"}}]}]}]}]}"#;
    let r = post(&c, &h.url("/v1/traces"), "application/json; charset=utf-8", json).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some(JSON));
    assert_eq!(&r.body[..], b"{}");
    let msg = decoded_traces(h.next(Signal::Traces).await);
    let span = &msg.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(hex(&span.trace_id), "5b8efff798038103d269b633813fc60c");
    assert_eq!(hex(&span.span_id), "eee19b7ec3c1b174");
    assert_eq!(span.kind, 2);
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(
        span.attributes[0].value.as_ref().and_then(|v| v.value.clone()),
        Some(proto::common::v1::any_value::Value::IntValue(42))
    );

    let r = post(&c, &h.url("/v1/logs"), JSON, r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":1544712660000000000,"severityNumber":9,"body":{"stringValue":"hi"}}]}]}]}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Logs).await.items(), 1);
    h.stop().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn http_compressed_bodies() {
    let mut h = start(BOTH);
    let c = http_client();
    let req = traces(5, "gz");
    let raw = req.encode_to_vec();
    let bodies = [
        ("gzip", gzip(&raw)),
        ("deflate", deflate(&raw)),
        ("zstd", zstd::encode_all(&raw[..], 3).expect("zstd")),
    ];
    for (enc, body) in bodies {
        let r = send(
            &c,
            Method::POST,
            &h.url("/v1/traces"),
            &[("content-type", PB), ("content-encoding", enc)],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{enc}");
        assert_eq!(decoded_traces(h.next(Signal::Traces).await), req, "{enc}");
    }
    // Compressed JSON.
    let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"j","kind":1}]}]}]}"#;
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", JSON), ("content-encoding", "gzip")],
        gzip(json),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Traces).await.items(), 1);
    // A body that is not what it claims to be.
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", PB), ("content-encoding", "gzip")],
        raw.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // An unknown encoding.
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", PB), ("content-encoding", "br")],
        raw,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    h.stop().await;
}

#[tokio::test]
async fn http_malformed_bodies_are_400_with_a_status_in_the_request_format() {
    let mut h = start(BOTH);
    let c = http_client();
    let r = post(&c, &h.url("/v1/traces"), PB, MALFORMED).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-type"), Some(PB));
    let s = r.status_body();
    assert_eq!(s.code, rpc::code::INVALID_ARGUMENT);
    assert!(s.message.contains("invalid protobuf"), "{}", s.message);

    let r = post(
        &c,
        &h.url("/v1/traces"),
        JSON,
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-type"), Some(JSON));
    let s = r.status_body();
    assert_eq!(s.code, rpc::code::INVALID_ARGUMENT);
    assert!(s.message.contains("invalid OTLP/JSON"), "{}", s.message);

    let r = post(
        &c,
        &h.url("/v1/traces"),
        JSON,
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"nothex"}]}]}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

#[tokio::test]
async fn http_wrong_content_type_method_and_path() {
    let mut h = start_with(
        BOTH,
        Opts {
            signals: vec![Signal::Traces, Signal::Logs],
            ..Opts::default()
        },
    );
    let c = http_client();
    let body = traces(1, "x").encode_to_vec();
    let r = post(&c, &h.url("/v1/traces"), "text/plain", body.clone()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.status_body().code, rpc::code::INVALID_ARGUMENT);
    let r = send(&c, Method::POST, &h.url("/v1/traces"), &[], body.clone()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let r = send(&c, Method::GET, &h.url("/v1/traces"), &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(
        &c,
        Method::PUT,
        &h.url("/v1/logs"),
        &[("content-type", PB)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let r = post(&c, &h.url("/v1/spans"), PB, body.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // No metrics pipeline uses this receiver.
    let r = post(&c, &h.url("/v1/metrics"), PB, metrics(1).encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

#[tokio::test]
async fn http_oversized_bodies_are_413() {
    let mut h = start("protocols:\n  http:\n    endpoint: 127.0.0.1:0\n    max_request_body_size: 64KiB\n");
    let c = http_client();
    let mut big = traces(1, "big");
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(100_000);
    let raw = big.encode_to_vec();
    let r = post(&c, &h.url("/v1/traces"), PB, raw.clone()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.status_body().code, rpc::code::INVALID_ARGUMENT);
    // Small when compressed, too large once decompressed.
    let gz = gzip(&raw);
    assert!(gz.len() < 64 * 1024);
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", PB), ("content-encoding", "gzip")],
        gz,
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked (no Content-Length) bodies are limited while reading.
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let client: Client<HttpConnector, http_body_util::channel::Channel<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(h.url("/v1/traces"))
        .header("content-type", PB)
        .body(body)
        .expect("request");
    let feeder = tokio::spawn(async move {
        for chunk in raw.chunks(16 * 1024) {
            if tx.send_data(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
    });
    let resp = client.request(request).await.expect("response");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    feeder.abort();
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

#[tokio::test]
async fn http2_cleartext_prior_knowledge() {
    let mut h = start(BOTH);
    let c: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let r = post(&c, &h.url("/v1/traces"), PB, traces(2, "h2").encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Traces).await.items(), 2);
    h.stop().await;
}

// ---------------------------------------------------------------- backpressure

#[tokio::test]
async fn full_pipeline_is_503_and_unavailable_after_backpressure_wait() {
    let mut h = start_with(
        &format!("{BOTH}backpressure_wait: 300ms\n"),
        Opts {
            capacity: 1,
            ..Opts::default()
        },
    );
    let c = http_client();
    let body = traces(1, "x").encode_to_vec();
    // Fills the only slot; nobody reads.
    assert_eq!(
        post(&c, &h.url("/v1/traces"), PB, body.clone()).await.status,
        StatusCode::OK
    );

    let t = Instant::now();
    let r = post(&c, &h.url("/v1/traces"), PB, body.clone()).await;
    let waited = t.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.status_body().code, rpc::code::UNAVAILABLE);
    assert!(waited >= Duration::from_millis(250), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");

    let t = Instant::now();
    let e = TraceServiceClient::new(channel(h.grpc()).await)
        .export(traces(1, "g"))
        .await
        .expect_err("full");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));

    // Once there is room again, data flows.
    assert_eq!(h.next(Signal::Traces).await.items(), 1);
    assert_eq!(post(&c, &h.url("/v1/traces"), PB, body).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn memory_limit_refusal_is_429_and_resource_exhausted_with_retry_info() {
    let mut h = start_with(
        BOTH,
        Opts {
            gates: vec![Arc::new(Refuse)],
            ..Opts::default()
        },
    );
    let c = http_client();
    let r = post(&c, &h.url("/v1/traces"), PB, traces(1, "x").encode_to_vec()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("1"));
    let s = r.status_body();
    assert_eq!(s.code, rpc::code::RESOURCE_EXHAUSTED);
    assert_eq!(s.retry_delay(), Some(Duration::from_secs(1)));

    let e = TraceServiceClient::new(channel(h.grpc()).await)
        .export(traces(1, "g"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    let details = rpc::Status::decode(e.details()).expect("google.rpc.Status details");
    assert_eq!(details.retry_delay(), Some(Duration::from_secs(1)));
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

// ---------------------------------------------------------------- auth and CORS

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let mut h = start(
        "protocols:\n  grpc:\n    endpoint: 127.0.0.1:0\n    auth: {bearer_token: s3cret}\n  http:\n    endpoint: 127.0.0.1:0\n    auth: {bearer_token: s3cret}\n",
    );
    let c = http_client();
    let body = traces(1, "x").encode_to_vec();
    let r = post(&c, &h.url("/v1/traces"), PB, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.status_body().code, rpc::code::UNAUTHENTICATED);
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", PB), ("authorization", "Bearer wrong")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &c,
        Method::POST,
        &h.url("/v1/traces"),
        &[("content-type", PB), ("authorization", "Bearer s3cret")],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.next(Signal::Traces).await.items(), 1);

    let mut client = TraceServiceClient::new(channel(h.grpc()).await);
    let e = client.export(traces(1, "g")).await.expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let mut req = tonic::Request::new(traces(2, "g"));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("metadata"));
    client.export(req).await.expect("with token");
    assert_eq!(h.next(Signal::Traces).await.items(), 2);
    h.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_responses() {
    let mut h = start(
        "protocols:\n  http:\n    endpoint: 127.0.0.1:0\n    cors:\n      allowed_origins: ['https://*.example.com']\n      allowed_headers: [x-tenant]\n      max_age: 7200\n",
    );
    let c = http_client();
    let url = h.url("/v1/traces");
    let pre = |origin: &'static str, headers: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move {
            send(
                &c,
                Method::OPTIONS,
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", headers),
                ],
                Bytes::new(),
            )
            .await
        }
    };
    let r = pre("https://shop.example.com", "content-type, X-Tenant").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("content-type, x-tenant"));
    assert_eq!(r.header("access-control-max-age"), Some("7200"));

    let r = pre("https://evil.org", "content-type").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = pre("https://shop.example.com", "x-not-allowed").await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    let body = traces(1, "x").encode_to_vec();
    let r = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", PB), ("origin", "https://shop.example.com")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(h.next(Signal::Traces).await.items(), 1);
    // Errors carry the header too, so the browser can read them.
    let r = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", PB), ("origin", "https://shop.example.com")],
        MALFORMED,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    let r = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", PB), ("origin", "https://evil.org")],
        body,
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    h.stop().await;
}

// ---------------------------------------------------------------- robustness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_stream_loses_nothing_next_to_bad_requests() {
    let mut h = start_with(
        &format!("{BOTH}backpressure_wait: 10s\n"),
        Opts {
            capacity: 4,
            ..Opts::default()
        },
    );
    const REQUESTS: usize = 60;
    const SPANS: usize = 50;
    let grpc_addr = h.grpc();
    let url = h.url("/v1/traces");
    let mut rx = h.rx.remove(&Signal::Traces).expect("traces");
    let reader = tokio::spawn(async move {
        let mut spans = 0;
        while spans < 2 * REQUESTS * SPANS {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(b)) => spans += b.items(),
                _ => break,
            }
        }
        spans
    });
    let grpc_good = tokio::spawn(async move {
        let mut client = TraceServiceClient::new(channel(grpc_addr).await);
        for i in 0..REQUESTS {
            client
                .export(traces(SPANS, &format!("g{i}")))
                .await
                .expect("good gRPC export");
        }
    });
    let http_good = {
        let url = url.clone();
        tokio::spawn(async move {
            let c = http_client();
            for _ in 0..REQUESTS {
                let r = post(&c, &url, PB, traces(SPANS, "h").encode_to_vec()).await;
                assert_eq!(r.status, StatusCode::OK);
            }
        })
    };
    let bad = tokio::spawn(async move {
        let c = http_client();
        for i in 0..REQUESTS {
            let r = match i % 3 {
                0 => post(&c, &url, PB, MALFORMED).await,
                1 => post(&c, &url, JSON, "{not json").await,
                _ => post(&c, &url, "text/plain", "hello").await,
            };
            assert!(r.status.is_client_error(), "{}", r.status);
            let e = grpc_raw(grpc_addr, TRACE_EXPORT, Bytes::from_static(MALFORMED))
                .await
                .expect_err("malformed");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
    });
    grpc_good.await.expect("gRPC sender");
    http_good.await.expect("HTTP sender");
    bad.await.expect("bad sender");
    assert_eq!(reader.await.expect("reader"), 2 * REQUESTS * SPANS);
    h.stop().await;
}

// ---------------------------------------------------------------- TLS

struct Certs {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    pem: String,
}

fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("self-signed cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let pem = ck.cert.pem();
    std::fs::write(&cert, &pem).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    Certs {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        pem,
        _dir: dir,
    }
}

#[tokio::test]
async fn tls_for_grpc_and_http() {
    let certs = certs();
    let tls = format!("{{cert_file: '{}', key_file: '{}'}}", certs.cert, certs.key);
    let mut h = start(&format!(
        "protocols:\n  grpc:\n    endpoint: 127.0.0.1:0\n    tls: {tls}\n  http:\n    endpoint: 127.0.0.1:0\n    tls: {tls}\n"
    ));

    // gRPC over TLS (ALPN h2).
    let ch = Channel::from_shared(format!("https://127.0.0.1:{}", h.grpc().port()))
        .expect("uri")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&certs.pem))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connect");
    TraceServiceClient::new(ch)
        .export(traces(3, "tls"))
        .await
        .expect("export over TLS");
    assert_eq!(h.next(Signal::Traces).await.items(), 3);
    // Plaintext to the TLS port fails.
    assert!(
        TraceServiceClient::new(channel(h.grpc()).await)
            .export(traces(1, "plain"))
            .await
            .is_err()
    );

    // HTTP over TLS, HTTP/1.1 and HTTP/2 (ALPN).
    let client_tls = bizpilot_core::tls::TlsClientSettings {
        ca_file: certs.cert.clone(),
        ..Default::default()
    }
    .client_config(&[])
    .expect("client config");
    for h2 in [false, true] {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*client_tls).clone())
            .https_only()
            .enable_all_versions()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(h2).build(connector);
        let url = format!("https://127.0.0.1:{}/v1/logs", h.http().port());
        let r = send(
            &client,
            Method::POST,
            &url,
            &[("content-type", PB)],
            logs(2).encode_to_vec(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "h2={h2}");
        assert_eq!(h.next(Signal::Logs).await.items(), 2);
    }
    h.stop().await;
}

#[tokio::test]
async fn tls_with_missing_files_fails_to_create() {
    let v: serde_yaml::Value = serde_yaml::from_str(
        "protocols:\n  grpc:\n    endpoint: 127.0.0.1:0\n    tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n",
    )
    .expect("yaml");
    let cfg: OtlpReceiverConfig = parse_config(&v).expect("valid config");
    let e = OtlpReceiver::new(cfg).expect_err("missing files");
    assert!(e.to_string().contains("protocols.grpc.tls"), "{e}");
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn port_in_use_is_a_start_error() {
    let h = start(BOTH);
    let taken = h.grpc();
    let e = try_start(
        &format!("protocols:\n  grpc:\n    endpoint: {taken}\n"),
        Opts::default(),
    )
    .err()
    .expect("port taken");
    assert!(matches!(e, ComponentError::Bind { .. }), "{e}");
    assert!(e.to_string().contains(&taken.to_string()), "{e}");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drops_the_outputs() {
    let mut h = start(BOTH);
    let c = http_client();
    // A keep-alive connection is open when shutdown begins.
    assert_eq!(
        post(&c, &h.url("/v1/traces"), PB, traces(1, "x").encode_to_vec())
            .await
            .status,
        StatusCode::OK
    );
    let ch = channel(h.grpc()).await;
    TraceServiceClient::new(ch.clone())
        .export(traces(1, "y"))
        .await
        .expect("export");
    let (grpc, http) = (h.grpc(), h.http());
    let mut rx = h.rx.remove(&Signal::Traces).expect("traces");
    let t = Instant::now();
    h.stop().await;
    assert!(t.elapsed() < Duration::from_secs(3), "stopped in {:?}", t.elapsed());
    assert!(tokio::net::TcpStream::connect(grpc).await.is_err(), "gRPC port closed");
    assert!(tokio::net::TcpStream::connect(http).await.is_err(), "HTTP port closed");
    // Both batches are there, then the channel closes: the receiver dropped its outputs.
    assert_eq!(rx.recv().await.map(|b| b.items()), Some(1));
    assert_eq!(rx.recv().await.map(|b| b.items()), Some(1));
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut h = start_with(
        &format!("{BOTH}backpressure_wait: 5s\n"),
        Opts {
            capacity: 1,
            ..Opts::default()
        },
    );
    let c = http_client();
    let url = h.url("/v1/traces");
    assert_eq!(
        post(&c, &url, PB, traces(1, "first").encode_to_vec()).await.status,
        StatusCode::OK
    );
    // This one waits for room.
    let in_flight = tokio::spawn(async move { post(&c, &url, PB, traces(2, "second").encode_to_vec()).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!in_flight.is_finished());
    // Make room: the waiting request is accepted and answered.
    assert_eq!(h.next(Signal::Traces).await.items(), 1);
    assert_eq!(in_flight.await.expect("request"), StatusCode::OK);
    assert_eq!(h.next(Signal::Traces).await.items(), 2);
    tokio::time::timeout(Duration::from_secs(5), h.running.join())
        .await
        .expect("stops")
        .expect("clean");
}

#[test]
fn factory_and_registry() {
    use bizpilot_core::{ComponentKind, ReceiverFactory, Stability};
    let info = bizpilot_receivers::OtlpReceiverFactory.info();
    assert_eq!(info.type_name, "otlp");
    assert_eq!(info.stability, Stability::Beta);
    assert_eq!(info.signals, &[Signal::Traces, Signal::Metrics, Signal::Logs]);
    let mut r = bizpilot_core::Registry::new();
    bizpilot_receivers::register(&mut r);
    let f = r.get(ComponentKind::Receiver, "otlp").expect("registered");
    let ok: serde_yaml::Value = serde_yaml::from_str("protocols: {grpc: }").expect("yaml");
    assert!(f.check(&ok).is_ok());
    let bad: serde_yaml::Value = serde_yaml::from_str("protocols: {grpc: {endpoint: nope}}").expect("yaml");
    let errs = f.check(&bad).expect_err("invalid endpoint");
    assert_eq!(errs[0].path, "protocols.grpc.endpoint");
    let unknown: serde_yaml::Value = serde_yaml::from_str("protocols: {grpc: }\nfoo: 1").expect("yaml");
    let errs = f.check(&unknown).expect_err("unknown key");
    assert!(errs[0].message.contains("foo"), "{:?}", errs);
}

#[tokio::test]
async fn shutdown_refuses_requests_still_waiting_after_the_grace_period() {
    let mut h = start_with(
        &format!("{BOTH}backpressure_wait: 60s\n"),
        Opts {
            capacity: 1,
            ..Opts::default()
        },
    );
    let c = http_client();
    let url = h.url("/v1/traces");
    assert_eq!(
        post(&c, &url, PB, traces(1, "first").encode_to_vec()).await.status,
        StatusCode::OK
    );
    let waiting_http = tokio::spawn(async move { post(&c, &url, PB, traces(1, "second").encode_to_vec()).await });
    let grpc = h.grpc();
    let waiting_grpc = tokio::spawn(async move {
        TraceServiceClient::new(channel(grpc).await)
            .export(traces(1, "third"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rx = h.rx.remove(&Signal::Traces).expect("traces");
    let t = Instant::now();
    h.stop().await;
    // Grace is min(backpressure_wait, 5s) + 2s, then waiting requests are refused.
    assert!(t.elapsed() < Duration::from_secs(10), "stopped after {:?}", t.elapsed());
    let r = waiting_http.await.expect("http request");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let e = waiting_grpc.await.expect("grpc request").expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert_eq!(rx.recv().await.map(|b| b.items()), Some(1));
    assert!(rx.recv().await.is_none(), "outputs dropped");
}

/// A plain HTTP/1.1 client that writes the whole request, then reads to EOF.
fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_do_not_reset_a_client_still_sending() {
    let mut h = start("protocols:\n  http:\n    endpoint: 127.0.0.1:0\n    max_request_body_size: 64KiB\n");
    let addr = h.http();
    let cases = [
        ("application/x-protobuf", 2 << 20, "413"),
        ("text/plain", 1 << 20, "415"),
        ("application/x-protobuf", 60 << 10, "400"),
    ];
    for (ct, len, want) in cases {
        let reply = tokio::task::spawn_blocking(move || {
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {len}\r\n\r\n"
            );
            raw_http(addr, &head, &vec![0xffu8; len])
        })
        .await
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{want}: {e}"));
        assert!(reply.starts_with(&format!("HTTP/1.1 {want}")), "{want}: {reply:.80}");
    }
    h.assert_empty(Signal::Traces);
    h.stop().await;
}

/// An `AnyValue` nested `levels` deep through kvlists (level 1 is the value itself).
fn nested_value(levels: usize) -> proto::common::v1::AnyValue {
    use proto::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
    let mut v = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 1..levels {
        v = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(v),
                    ..Default::default()
                }],
            })),
        };
    }
    v
}

/// Ids of the wrong length (a 15- or 17-byte trace id, 30 or 34 hex characters in JSON; a 7- or
/// 9-byte span id) and AnyValues one level deeper than the limit are refused whole, with 400 /
/// INVALID_ARGUMENT naming the field, over HTTP (protobuf and JSON) and gRPC; nothing is forwarded.
/// At the limit and with the right lengths the same requests pass.
#[tokio::test]
async fn ids_of_the_wrong_length_and_too_deep_values_are_refused_on_every_transport() {
    let mut h = start(BOTH);
    let c = http_client();
    let limit = bizpilot_core::wire::MAX_ANY_VALUE_DEPTH;
    let with = |edit: &dyn Fn(&mut proto::trace::v1::Span)| {
        let mut r = traces(1, "checkout");
        edit(&mut r.resource_spans[0].scope_spans[0].spans[0]);
        r
    };
    let deep = |levels: usize| {
        move |s: &mut proto::trace::v1::Span| {
            s.attributes.push(proto::common::v1::KeyValue {
                key: "deep".into(),
                value: Some(nested_value(levels)),
                ..Default::default()
            })
        }
    };
    let bad: Vec<(ExportTraceServiceRequest, &str)> = vec![
        (with(&|s| s.trace_id = vec![7; 15]), "Span.trace_id"),
        (with(&|s| s.trace_id = vec![7; 17]), "Span.trace_id"),
        (with(&|s| s.span_id = vec![7; 7]), "Span.span_id"),
        (with(&|s| s.parent_span_id = vec![7; 9]), "Span.parent_span_id"),
        (with(&deep(limit + 1)), "AnyValue nested deeper than"),
    ];
    for (req, field) in &bad {
        let pb = req.encode_to_vec();
        let r = post(&c, &h.url("/v1/traces"), PB, pb.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}");
        let s = r.status_body();
        assert_eq!(s.code, rpc::code::INVALID_ARGUMENT);
        assert!(s.message.contains(field), "protobuf {field}: {}", s.message);

        let json = serde_json::to_vec(req).unwrap();
        if field.starts_with("Span.trace_id") {
            let hex_len = if req.resource_spans[0].scope_spans[0].spans[0].trace_id.len() == 15 {
                30
            } else {
                34
            };
            assert!(
                String::from_utf8_lossy(&json).contains(&format!("\"{}\"", "07".repeat(hex_len / 2))),
                "the JSON carries a {hex_len}-character trace id"
            );
        }
        let r = post(&c, &h.url("/v1/traces"), JSON, json).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}");
        let s = r.status_body();
        assert_eq!(s.code, rpc::code::INVALID_ARGUMENT);
        assert!(s.message.contains(field), "JSON {field}: {}", s.message);

        let e = grpc_raw(h.grpc(), TRACE_EXPORT, pb.into()).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(field), "gRPC {field}: {}", e.message());
    }
    h.assert_empty(Signal::Traces);

    // The same requests with valid ids, and values exactly at the limit, pass on every transport.
    let good = [with(&|s| s.parent_span_id = vec![]), with(&deep(limit))];
    for req in &good {
        let r = post(&c, &h.url("/v1/traces"), PB, req.encode_to_vec()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(decoded_traces(h.next(Signal::Traces).await), *req);
        let r = post(&c, &h.url("/v1/traces"), JSON, serde_json::to_vec(req).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(decoded_traces(h.next(Signal::Traces).await), *req);
        grpc_raw(h.grpc(), TRACE_EXPORT, req.encode_to_vec().into())
            .await
            .expect("accepted");
        assert_eq!(decoded_traces(h.next(Signal::Traces).await), *req);
    }
    h.stop().await;
}

/// `wait_for_delivery`: the client is answered only once the pipeline let go of the batch — OK when delivered,
/// a retryable error when a consumer failed it or it was not confirmed within `delivery_timeout`.
#[tokio::test]
async fn wait_for_delivery_answers_after_the_acknowledgement() {
    let yaml = format!("{BOTH}wait_for_delivery: true\ndelivery_timeout: 500ms\n");
    let mut h = start(&yaml);
    let client = http_client();
    let url = h.url("/v1/traces");
    let body = traces(2, "a").encode_to_vec();

    // Delivered: no answer while the batch is held downstream, 200 once it is released.
    let pending = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { post(&client, &url, "application/x-protobuf", body).await }
    });
    let held = h.next(Signal::Traces).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!pending.is_finished(), "answered before the batch was delivered");
    drop(held);
    let reply = pending.await.expect("request task");
    assert_eq!(reply.status, 200);

    // Failed downstream: retryable 503.
    let pending = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { post(&client, &url, "application/x-protobuf", body).await }
    });
    let failed = h.next(Signal::Traces).await;
    failed.fail();
    drop(failed);
    assert_eq!(pending.await.expect("request task").status, 503);

    // Never confirmed within delivery_timeout: retryable 503 over gRPC too (UNAVAILABLE).
    let ch = channel(h.grpc()).await;
    let started = std::time::Instant::now();
    let err = TraceServiceClient::new(ch)
        .export(traces(1, "b"))
        .await
        .expect_err("not confirmed in time");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    let _kept = h.next(Signal::Traces).await;
    h.stop().await;
}

/// Without `wait_for_delivery` (the default) the answer does not wait for the pipeline.
#[tokio::test]
async fn by_default_the_answer_does_not_wait_for_delivery() {
    let mut h = start(BOTH);
    let reply = post(
        &http_client(),
        &h.url("/v1/traces"),
        "application/x-protobuf",
        traces(1, "a").encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let _held = h.next(Signal::Traces).await;
    h.stop().await;
}
