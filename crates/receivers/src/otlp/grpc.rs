//! OTLP/gRPC: the three `Export` methods, served by tonic's unary machinery with a
//! codec that hands over the message bytes undecoded.

use bizpilot_core::rpc;
use bizpilot_core::{Payload, Refusal, Signal};
use bytes::{Buf, BufMut, Bytes};
use hyper::body::Incoming;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use super::ingest::{BearerAuth, Ingest, RETRY_DELAY};

pub(crate) const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub(crate) const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
pub(crate) const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Passes message bytes through untouched in both directions: requests are
/// validated by `Payload::from_bytes`, responses are encoded by the handler.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
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

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // Splits the message off tonic's buffer without copying.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// State of the gRPC server.
pub(crate) struct GrpcState {
    pub(crate) ingest: Ingest,
    pub(crate) auth: Option<BearerAuth>,
    pub(crate) max_message_size: usize,
}

fn signal_of(path: &str) -> Option<Signal> {
    match path {
        TRACES_PATH => Some(Signal::Traces),
        METRICS_PATH => Some(Signal::Metrics),
        LOGS_PATH => Some(Signal::Logs),
        _ => None,
    }
}

/// A retryable refusal as a gRPC status with a `RetryInfo` detail.
pub(crate) fn refusal_status(r: &Refusal) -> Status {
    let code = match r {
        Refusal::MemoryLimit(_) => Code::ResourceExhausted,
        Refusal::Full(_) | Refusal::ShuttingDown | Refusal::NotDelivered(_) => Code::Unavailable,
    };
    let message = r.to_string();
    let details = rpc::Status::new(code as i32, message.clone())
        .with_retry_delay(RETRY_DELAY)
        .encode_to_vec();
    Status::with_details(code, message, Bytes::from(details))
}

/// Handles one gRPC request.
pub(crate) async fn handle(state: Arc<GrpcState>, req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    let path = req.uri().path();
    let Some(signal) = signal_of(path) else {
        return Status::unimplemented(format!("unknown method {path}")).into_http();
    };
    if let Some(auth) = &state.auth
        && !auth.check(req.headers())
    {
        state
            .ingest
            .bad_request("unauthenticated", &"missing or wrong bearer token");
        return Status::unauthenticated("missing or invalid bearer token").into_http();
    }
    let ingest = &state.ingest;
    let Some(output) = ingest.output(signal) else {
        return Status::unimplemented(format!("this receiver is not used by any {signal} pipeline")).into_http();
    };

    let called = AtomicBool::new(false);
    let service = tower::service_fn(|request: tonic::Request<Bytes>| {
        called.store(true, Ordering::Relaxed);
        async move {
            let payload = match Payload::from_bytes(signal, request.into_inner()) {
                Ok(p) => p,
                Err(e) => {
                    ingest.bad_request("malformed", &e);
                    return Err(Status::invalid_argument(e.to_string()));
                }
            };
            match ingest.push(output, payload).await {
                // An empty Export*ServiceResponse: no partial success to report.
                Ok(()) => Ok(tonic::Response::new(Bytes::new())),
                Err(r) => Err(refusal_status(&r)),
            }
        }
    });
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(state.max_message_size);
    let response = grpc.unary(service, req).await;
    if called.load(Ordering::Relaxed) {
        return response;
    }
    // Tonic refused the request before the message reached us.
    let Some(status) = response.extensions().get::<Status>() else {
        return response;
    };
    match status.code() {
        // Tonic says OUT_OF_RANGE for a message over the limit, which OTLP clients retry
        // forever; RESOURCE_EXHAUSTED without RetryInfo tells them not to.
        Code::OutOfRange | Code::ResourceExhausted => {
            let message = status.message().to_string();
            ingest.bad_request("too_large", &message);
            Status::resource_exhausted(message).into_http()
        }
        Code::Unimplemented => {
            ingest.bad_request("unsupported_media_type", &status.message());
            response
        }
        // The client went away.
        Code::Cancelled => response,
        _ => {
            ingest.bad_request("malformed", &status.message());
            response
        }
    }
}
