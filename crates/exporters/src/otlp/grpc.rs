//! OTLP/gRPC exporter, type `otlp`.
//!
//! Sends each batch's protobuf bytes as they are (no re-encoding) with a minimal unary gRPC
//! client on hyper's HTTP/2 client: h2c for plaintext, rustls with ALPN `h2` for TLS.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `endpoint` | (required) | `host:port` (TLS unless `tls.insecure: true`), `http://host:port` (plaintext) or `https://host:port` |
//! | `tls.insecure` | `false` | plaintext for an endpoint without scheme |
//! | `tls.ca_file` | system roots (Mozilla) | PEM CA bundle to verify the server with |
//! | `tls.cert_file`, `tls.key_file` | | client certificate (mTLS) |
//! | `tls.insecure_skip_verify` | `false` | do not verify the server certificate (testing only) |
//! | `tls.server_name_override` | | name to verify the server certificate against |
//! | `headers` | `{}` | metadata sent with every request |
//! | `compression` | `gzip` | `gzip`, `zstd` or `none` |
//! | `compression_level` | `1` | gzip 1–9, zstd level; higher levels cost much more CPU for little gain |
//! | `timeout` | `5s` | limit of one attempt (also sent as `grpc-timeout`); `0` = none |
//! | `retry_on_failure` | | see [`crate::helper`] |
//! | `sending_queue` | | see [`crate::helper`] |
//!
//! Retryable (per the OTLP spec): `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`,
//! `UNAVAILABLE`, `DATA_LOSS`, and `RESOURCE_EXHAUSTED` when the status carries a `RetryInfo`
//! (whose delay is honoured); connection errors and timeouts. Everything else fails the batch.
//! A partial success is logged and its rejected items are counted as `send_failed`.
//!
//! ```yaml
//! exporters:
//!   otlp:
//!     endpoint: collector.example.com:4317
//!     tls: {ca_file: /etc/ssl/collector-ca.pem}
//!     headers: {x-api-key: "${env:API_KEY}"}
//!     compression: zstd
//!     sending_queue: {num_consumers: 4}
//! ```

use base64::Engine;
use bizpilot_core::config::Duration;
use bizpilot_core::rpc;
use bizpilot_core::tls::TlsClientSettings;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Exporter, ExporterContext,
    ExporterFactory, FieldError, Running, Signal, Stability,
};
use bytes::{BufMut, Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde::Deserialize;
use std::collections::BTreeMap;

use super::common::{
    self, Compression, DEFAULT_COMPRESSION_LEVEL, ExportResponse, HttpClient, build_client, error_chain,
};
use crate::helper::{self, BatchSender, ExportError, HelperSettings, QueueSettings, RetrySettings, Sent};

/// Config of the `otlp` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExporterConfig {
    pub endpoint: String,
    pub tls: TlsClientSettings,
    pub headers: BTreeMap<String, String>,
    pub compression: Compression,
    pub compression_level: i32,
    pub timeout: Duration,
    pub retry_on_failure: RetrySettings,
    pub sending_queue: QueueSettings,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            tls: TlsClientSettings::default(),
            headers: BTreeMap::new(),
            compression: Compression::Gzip,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            timeout: helper::DEFAULT_TIMEOUT,
            retry_on_failure: RetrySettings::default(),
            sending_queue: QueueSettings::default(),
        }
    }
}

impl OtlpExporterConfig {
    pub fn helper_settings(&self) -> HelperSettings {
        HelperSettings {
            timeout: self.timeout,
            retry_on_failure: self.retry_on_failure.clone(),
            sending_queue: self.sending_queue.clone(),
        }
    }

    /// The scheme and authority requests go to, with whether TLS is used.
    pub fn target(&self) -> Result<GrpcTarget, String> {
        parse_grpc_endpoint(&self.endpoint, self.tls.insecure)
    }
}

impl ComponentConfig for OtlpExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if let Err(m) = self.target() {
            e.push(FieldError::new("endpoint", m));
        }
        e.extend(validate_tls(&self.tls));
        e.extend(common::validate_headers(&self.headers));
        e.extend(common::validate_compression(self.compression, self.compression_level));
        e.extend(self.helper_settings().validate());
        e
    }
}

pub(crate) fn validate_tls(tls: &TlsClientSettings) -> Vec<FieldError> {
    let mut e = Vec::new();
    if tls.cert_file.is_empty() != tls.key_file.is_empty() {
        let missing = if tls.cert_file.is_empty() {
            "cert_file"
        } else {
            "key_file"
        };
        e.push(FieldError::new(
            format!("tls.{missing}"),
            "cert_file and key_file must be given together",
        ));
    }
    e
}

/// Where a gRPC exporter connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    pub tls: bool,
    pub authority: Authority,
}

/// Parses a gRPC `endpoint` with the Collector's rules: `http://` is plaintext, `https://` is
/// TLS, no scheme is TLS unless `insecure`.
pub fn parse_grpc_endpoint(endpoint: &str, insecure: bool) -> Result<GrpcTarget, String> {
    let ep = endpoint.trim();
    if ep.is_empty() {
        return Err("required (e.g. \"collector:4317\")".into());
    }
    let (tls, rest) = if let Some(r) = ep.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = ep.strip_prefix("https://") {
        (true, r)
    } else if let Some((scheme, _)) = ep.split_once("://") {
        return Err(format!(
            "unsupported scheme {scheme:?} in {ep:?}: use host:port, http:// or https://"
        ));
    } else {
        (!insecure, ep)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') {
        return Err(format!("{ep:?} must not have a path: give host:port"));
    }
    let authority: Authority = rest
        .parse()
        .map_err(|_| format!("invalid endpoint {ep:?}: expected host:port"))?;
    if authority.host().is_empty() {
        return Err(format!("invalid endpoint {ep:?}: missing host"));
    }
    if authority.port_u16().is_none() {
        return Err(format!("invalid endpoint {ep:?}: missing port (e.g. {rest}:4317)"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("invalid endpoint {ep:?}: user info is not supported"));
    }
    Ok(GrpcTarget { tls, authority })
}

/// Creates `otlp` exporters.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpExporterFactory;

impl ExporterFactory for OtlpExporterFactory {
    type Config = OtlpExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "otlp",
            kind: ComponentKind::Exporter,
            stability: Stability::Beta,
            description: "Sends traces, metrics and logs over OTLP/gRPC.",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        let sender = GrpcSender::new(&config, &ctx.id.to_string())?;
        Ok(Box::new(OtlpExporter {
            queue: helper::open_queue(&config.helper_settings(), ctx)?,
            settings: config.helper_settings(),
            sender,
        }))
    }
}

struct OtlpExporter {
    settings: HelperSettings,
    queue: Option<std::sync::Arc<helper::PersistentQueue>>,
    sender: GrpcSender,
}

impl Exporter for OtlpExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let this = *self;
        Ok(helper::start_exporter_with(
            ctx,
            &this.settings,
            this.queue,
            this.sender,
        ))
    }
}

/// gRPC method paths.
fn method_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// A unary gRPC client for the three OTLP Export methods.
pub(crate) struct GrpcSender {
    exporter: String,
    client: HttpClient,
    uris: [Uri; 3],
    headers: HeaderMap,
    compression: Compression,
    level: i32,
    timeout: Option<HeaderValue>,
}

impl GrpcSender {
    pub(crate) fn new(config: &OtlpExporterConfig, exporter: &str) -> Result<Self, ComponentError> {
        let target = config
            .target()
            .map_err(|m| ComponentError::Config(format!("endpoint: {m}")))?;
        let client = build_client(&config.tls, target.tls, true).map_err(|e| ComponentError::Config(e.to_string()))?;
        let scheme = if target.tls { Scheme::HTTPS } else { Scheme::HTTP };
        let uri = |s: Signal| {
            Uri::builder()
                .scheme(scheme.clone())
                .authority(target.authority.clone())
                .path_and_query(PathAndQuery::from_static(method_path(s)))
                .build()
                .map_err(|e| ComponentError::Config(format!("endpoint: {e}")))
        };
        let uris = [uri(Signal::Traces)?, uri(Signal::Metrics)?, uri(Signal::Logs)?];
        let mut headers = common::header_map(&config.headers);
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(http::header::USER_AGENT, common::user_agent());
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity,gzip,zstd"));
        if let Some(enc) = config.compression.encoding() {
            headers.insert("grpc-encoding", HeaderValue::from_static(enc));
        }
        let timeout = (!config.timeout.is_zero()).then(|| grpc_timeout(config.timeout.get()));
        Ok(Self {
            exporter: exporter.to_string(),
            client,
            uris,
            headers,
            compression: config.compression,
            level: config.compression_level,
            timeout,
        })
    }

    fn uri(&self, signal: Signal) -> &Uri {
        let [t, m, l] = &self.uris;
        match signal {
            Signal::Traces => t,
            Signal::Metrics => m,
            Signal::Logs => l,
        }
    }
}

impl BatchSender for GrpcSender {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        let signal = batch.signal();
        let message = batch.payload.encoded();
        let compressed = self.compression != Compression::None;
        let message = common::compress(self.compression, self.level, message).await?;
        let len = u32::try_from(message.len())
            .map_err(|_| ExportError::permanent(format!("message of {} bytes is too large for gRPC", message.len())))?;
        let mut frame = BytesMut::with_capacity(message.len() + 5);
        frame.put_u8(u8::from(compressed));
        frame.put_u32(len);
        frame.extend_from_slice(&message);
        drop(message);

        let uri = self.uri(signal);
        let mut req = Request::new(Full::new(frame.freeze()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Some(t) = &self.timeout {
            req.headers_mut().insert("grpc-timeout", t.clone());
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ExportError::retryable(format!("cannot send to {uri}: {}", error_chain(&e))))?;
        let (parts, body) = resp.into_parts();
        // Trailers-only response: the status is in the headers.
        if parts.headers.contains_key("grpc-status") {
            return match status_from(&parts.headers) {
                GrpcStatus::Ok => Ok(Sent::ALL),
                GrpcStatus::Error(e) => Err(e),
            };
        }
        if parts.status != StatusCode::OK {
            return Err(http_status_error(parts.status));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| ExportError::retryable(format!("reading the response from {uri}: {}", error_chain(&e))))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        if !trailers.contains_key("grpc-status") {
            return Err(ExportError::permanent(format!(
                "response from {uri} has no grpc-status (is it a gRPC server?)"
            )));
        }
        match status_from(&trailers) {
            GrpcStatus::Error(e) => Err(e),
            GrpcStatus::Ok => {
                let encoding = parts
                    .headers
                    .get("grpc-encoding")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("identity");
                let ps = match decode_response(&data, encoding) {
                    Ok(r) => r.partial_success,
                    Err(reason) => {
                        tracing::debug!(exporter = %self.exporter, "ignoring unreadable export response: {reason}");
                        None
                    }
                };
                Ok(common::partial_success(&self.exporter, signal, ps))
            }
        }
    }
}

/// `grpc-timeout` value: at most 8 digits and a unit.
fn grpc_timeout(d: std::time::Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let ms = d.as_millis().max(1);
    let v = if ms <= MAX {
        format!("{ms}m")
    } else if d.as_secs() as u128 <= MAX {
        format!("{}S", d.as_secs())
    } else {
        format!("{}M", (d.as_secs() / 60).min(MAX as u64))
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("99999999S"))
}

enum GrpcStatus {
    Ok,
    Error(ExportError),
}

/// gRPC status codes.
mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INTERNAL: i32 = 13;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAVAILABLE: i32 = 14;
    pub const DATA_LOSS: i32 = 15;
    pub const UNAUTHENTICATED: i32 = 16;
    pub const PERMISSION_DENIED: i32 = 7;
}

fn code_name(c: i32) -> &'static str {
    match c {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// Reads `grpc-status`, `grpc-message` and `grpc-status-details-bin`.
fn status_from(h: &HeaderMap) -> GrpcStatus {
    let code = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(code::UNKNOWN);
    if code == code::OK {
        return GrpcStatus::Ok;
    }
    let mut message = h
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let details = h.get("grpc-status-details-bin").and_then(|v| {
        let b = v.as_bytes();
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b.strip_suffix(b"==").or_else(|| b.strip_suffix(b"=")).unwrap_or(b))
            .ok()
            .and_then(|raw| rpc::Status::decode(raw.as_slice()).ok())
    });
    if message.is_empty()
        && let Some(d) = &details
    {
        message.clone_from(&d.message);
    }
    let retry_after = details.as_ref().and_then(rpc::Status::retry_delay);
    GrpcStatus::Error(classify(code, &message, retry_after))
}

/// OTLP's retry rules for a gRPC status.
fn classify(code: i32, message: &str, retry_after: Option<std::time::Duration>) -> ExportError {
    let reason = if message.is_empty() {
        format!("gRPC status {}", code_name(code))
    } else {
        format!("gRPC status {}: {message}", code_name(code))
    };
    match code {
        code::CANCELLED
        | code::DEADLINE_EXCEEDED
        | code::ABORTED
        | code::OUT_OF_RANGE
        | code::UNAVAILABLE
        | code::DATA_LOSS => ExportError::retryable_after(reason, retry_after),
        code::RESOURCE_EXHAUSTED if retry_after.is_some() => ExportError::retryable_after(reason, retry_after),
        _ => ExportError::permanent(reason),
    }
}

/// A non-200 HTTP status without gRPC status, mapped as the gRPC spec says.
fn http_status_error(status: StatusCode) -> ExportError {
    let code = match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    };
    classify(code, &format!("HTTP status {status}"), None)
}

/// Decodes the length-prefixed `Export*ServiceResponse`.
fn decode_response(data: &Bytes, encoding: &str) -> Result<ExportResponse, String> {
    if data.is_empty() {
        return Ok(ExportResponse::default());
    }
    let header = data.get(..5).ok_or("truncated gRPC frame")?;
    let compressed = header.first().copied().unwrap_or(0) == 1;
    let len = u32::from_be_bytes([
        header.get(1).copied().unwrap_or(0),
        header.get(2).copied().unwrap_or(0),
        header.get(3).copied().unwrap_or(0),
        header.get(4).copied().unwrap_or(0),
    ]) as usize;
    let body = data
        .get(5..5usize.saturating_add(len))
        .ok_or("truncated gRPC message")?;
    let decoded;
    let body = if compressed {
        decoded = common::decompress(encoding, body).map_err(|e| e.to_string())?;
        decoded.as_slice()
    } else {
        body
    };
    ExportResponse::decode(body).map_err(|e| e.to_string())
}

/// Decodes a percent-encoded `grpc-message`.
fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|x| (*x as char).to_digit(16)),
                b.get(i + 2).and_then(|x| (*x as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_collector_rules() {
        let t = parse_grpc_endpoint("localhost:4317", false).unwrap();
        assert!(t.tls);
        assert_eq!(t.authority.as_str(), "localhost:4317");
        assert!(!parse_grpc_endpoint("localhost:4317", true).unwrap().tls);
        assert!(!parse_grpc_endpoint("http://localhost:4317", false).unwrap().tls);
        assert!(parse_grpc_endpoint("https://localhost:4317/", true).unwrap().tls);
        assert!(parse_grpc_endpoint("", false).is_err());
        assert!(parse_grpc_endpoint("localhost", false).is_err());
        assert!(parse_grpc_endpoint("ftp://x:1", false).is_err());
        assert!(parse_grpc_endpoint("http://x:1/v1/traces", false).is_err());
        assert!(parse_grpc_endpoint("[::1]:4317", false).is_ok());
    }

    #[test]
    fn retryable_codes() {
        for c in [1, 4, 10, 11, 14, 15] {
            assert!(classify(c, "", None).is_retryable(), "{c}");
        }
        for c in [2, 3, 5, 6, 7, 8, 9, 12, 13, 16] {
            assert!(!classify(c, "", None).is_retryable(), "{c}");
        }
        let d = Some(std::time::Duration::from_secs(2));
        assert_eq!(
            classify(8, "slow down", d),
            ExportError::Retryable {
                reason: "gRPC status RESOURCE_EXHAUSTED: slow down".into(),
                retry_after: d
            }
        );
        assert!(http_status_error(StatusCode::SERVICE_UNAVAILABLE).is_retryable());
        assert!(!http_status_error(StatusCode::NOT_FOUND).is_retryable());
    }

    #[test]
    fn status_details_and_message_are_read() {
        let st = rpc::Status::new(8, "quota").with_retry_delay(std::time::Duration::from_millis(1500));
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert("grpc-message", HeaderValue::from_static("over%20quota%21"));
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(st.encode_to_vec());
        h.insert("grpc-status-details-bin", HeaderValue::from_str(&b64).unwrap());
        match status_from(&h) {
            GrpcStatus::Error(ExportError::Retryable { reason, retry_after }) => {
                assert_eq!(reason, "gRPC status RESOURCE_EXHAUSTED: over quota!");
                assert_eq!(retry_after, Some(std::time::Duration::from_millis(1500)));
            }
            _ => panic!("expected retryable"),
        }
    }

    #[test]
    fn timeouts_fit_grpc_format() {
        assert_eq!(grpc_timeout(std::time::Duration::from_secs(5)), "5000m");
        assert_eq!(grpc_timeout(std::time::Duration::from_secs(200_000)), "200000S");
    }
}
