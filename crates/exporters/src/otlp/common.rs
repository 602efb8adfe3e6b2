//! Pieces shared by the OTLP gRPC and HTTP exporters: compression, headers, the HTTP
//! client, partial-success responses.

use bizpilot_core::FieldError;
use bizpilot_core::tls::TlsClientSettings;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::helper::ExportError;

/// The HTTP client both exporters use (HTTP/2 only for gRPC; TLS or plaintext per URL scheme).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// `compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    /// Also written `""`.
    #[serde(alias = "")]
    None,
}

impl Compression {
    /// The `grpc-encoding` / `content-encoding` value, if any.
    pub fn encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None => None,
        }
    }
}

/// Default `compression_level`: the fastest level. Measured on 1000-span batches
/// (`compression_cost` test, release build): gzip 1 ≈ 1.2 CPU-s per million spans at ratio 3.4,
/// gzip 6 ≈ 8.9 CPU-s at 3.7; zstd 1 ≈ 0.4 CPU-s at 3.65, zstd 3 ≈ 0.9 CPU-s at 3.6.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Checks `compression_level` against the chosen `compression`.
pub(crate) fn validate_compression(c: Compression, level: i32) -> Vec<FieldError> {
    let range = match c {
        Compression::Gzip => 1..=9,
        Compression::Zstd => zstd::compression_level_range(),
        Compression::None => return Vec::new(),
    };
    if range.contains(&level) {
        Vec::new()
    } else {
        vec![FieldError::new(
            "compression_level",
            format!(
                "{level} is out of range for {}: use {} to {}",
                c.encoding().unwrap_or("none"),
                range.start(),
                range.end()
            ),
        )]
    }
}

/// Payloads larger than this are compressed on the blocking pool rather than in the task.
const INLINE_COMPRESSION_LIMIT: usize = 64 * 1024;

fn compress_now(c: Compression, level: i32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match c {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let level = u32::try_from(level.clamp(1, 9)).unwrap_or(1);
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), flate2::Compression::new(level));
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd => zstd::bulk::compress(data, level),
    }
}

/// Compresses `data` as configured (a no-op for `none`).
pub(crate) async fn compress(c: Compression, level: i32, data: Bytes) -> Result<Bytes, ExportError> {
    if c == Compression::None {
        return Ok(data);
    }
    let out = if data.len() <= INLINE_COMPRESSION_LIMIT {
        compress_now(c, level, &data)
    } else {
        tokio::task::spawn_blocking(move || compress_now(c, level, &data))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    };
    out.map(Bytes::from)
        .map_err(|e| ExportError::permanent(format!("cannot compress the payload: {e}")))
}

/// Decompresses a response body by its encoding name.
pub(crate) fn decompress(encoding: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match encoding {
        "" | "identity" => Ok(data.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            let mut dec = flate2::write::GzDecoder::new(&mut out);
            dec.write_all(data)?;
            dec.finish()?;
            Ok(out)
        }
        "zstd" => {
            let mut out = Vec::new();
            zstd::stream::copy_decode(data, &mut out)?;
            Ok(out)
        }
        other => Err(std::io::Error::other(format!("unsupported encoding {other:?}"))),
    }
}

/// Checks `headers` names and values.
pub(crate) fn validate_headers(headers: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut e = Vec::new();
    for (k, v) in headers {
        if HeaderName::from_bytes(k.as_bytes()).is_err() {
            e.push(FieldError::new(format!("headers.{k}"), "invalid header name"));
        } else if HeaderValue::from_str(v).is_err() {
            e.push(FieldError::new(format!("headers.{k}"), "invalid header value"));
        }
    }
    e
}

pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            map.insert(k, v);
        }
    }
    map
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls: {0}")]
    Tls(#[from] bizpilot_core::tls::TlsError),
    #[error("tls.server_name_override: invalid name {0:?}")]
    ServerName(String),
}

/// A pooled client: plaintext for `http://` URLs, rustls for `https://`.
/// `http2_only` gives prior-knowledge HTTP/2 (h2c) on plaintext and ALPN `h2` on TLS (gRPC);
/// otherwise HTTP/1.1 on plaintext and ALPN `h2`/`http/1.1` on TLS.
pub(crate) fn build_client(
    tls: &TlsClientSettings,
    use_tls: bool,
    http2_only: bool,
) -> Result<HttpClient, ClientError> {
    // The TLS material is loaded only when some URL uses TLS.
    let tls_settings = if use_tls {
        tls.clone()
    } else {
        TlsClientSettings::default()
    };
    let config = std::sync::Arc::unwrap_or_clone(tls_settings.client_config(&[])?);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let builder = HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    let builder = if use_tls && !tls.server_name_override.is_empty() {
        let name = rustls::pki_types::ServerName::try_from(tls.server_name_override.clone())
            .map_err(|_| ClientError::ServerName(tls.server_name_override.clone()))?;
        builder.with_server_name_resolver(FixedServerNameResolver::new(name))
    } else {
        builder
    };
    let connector = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2_only);
    if http2_only {
        b.http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_adaptive_window(true);
    }
    Ok(b.build(connector))
}

/// Describes a client error with its causes (hyper's top-level message is terse).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// `Export{Trace,Metrics,Logs}ServiceResponse`: the three share one layout
/// (`partial_success` = field 1 holding `rejected_<items>` = 1 and `error_message` = 2).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

impl PartialSuccess {
    /// Reads the OTLP/JSON form (`{"partialSuccess":{"rejectedSpans":"3","errorMessage":".."}}`).
    pub fn from_json(body: &[u8]) -> Option<PartialSuccess> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let ps = v.get("partialSuccess").or_else(|| v.get("partial_success"))?;
        let obj = ps.as_object()?;
        let rejected = obj
            .iter()
            .find(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.starts_with("rejected")
            })
            .and_then(|(_, v)| match v {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .unwrap_or(0);
        let error_message = obj
            .get("errorMessage")
            .or_else(|| obj.get("error_message"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        Some(PartialSuccess {
            rejected,
            error_message,
        })
    }
}

/// Turns a partial success into the helper's result, logging it when not empty.
pub(crate) fn partial_success(
    exporter: &str,
    signal: bizpilot_core::Signal,
    ps: Option<PartialSuccess>,
) -> crate::helper::Sent {
    let Some(ps) = ps else {
        return crate::helper::Sent::ALL;
    };
    let rejected = usize::try_from(ps.rejected.max(0)).unwrap_or(usize::MAX);
    if rejected > 0 || !ps.error_message.is_empty() {
        tracing::warn!(
            exporter,
            %signal,
            rejected,
            message = %ps.error_message,
            "partial success: the destination rejected {rejected} {}",
            signal.item_name()
        );
    }
    crate::helper::Sent { rejected }
}

pub(crate) fn user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("bizpilot/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compression_round_trips() {
        let data = Bytes::from(vec![7u8; 200_000]);
        for c in [Compression::Gzip, Compression::Zstd] {
            let z = compress(c, 1, data.clone()).await.unwrap();
            assert!(z.len() < data.len() / 10);
            let back = decompress(c.encoding().unwrap(), &z).unwrap();
            assert_eq!(back, data);
        }
        assert_eq!(compress(Compression::None, 1, data.clone()).await.unwrap(), data);
    }

    #[test]
    fn levels_are_checked_per_algorithm() {
        assert!(validate_compression(Compression::Gzip, 9).is_empty());
        assert_eq!(validate_compression(Compression::Gzip, 10)[0].path, "compression_level");
        assert!(validate_compression(Compression::Zstd, 19).is_empty());
        assert!(validate_compression(Compression::None, 100).is_empty());
    }

    #[test]
    fn partial_success_json_accepts_string_and_number_counts() {
        let p = PartialSuccess::from_json(br#"{"partialSuccess":{"rejectedSpans":"3","errorMessage":"bad"}}"#);
        assert_eq!(
            p,
            Some(PartialSuccess {
                rejected: 3,
                error_message: "bad".into()
            })
        );
        let p = PartialSuccess::from_json(br#"{"partialSuccess":{"rejectedLogRecords":2}}"#);
        assert_eq!(p.map(|p| p.rejected), Some(2));
        assert_eq!(PartialSuccess::from_json(b"{}"), None);
    }
}
