//! OTLP/HTTP exporter, type `otlphttp`.
//!
//! POSTs each batch to `<endpoint>/v1/traces`, `/v1/metrics` or `/v1/logs` as protobuf (the
//! batch's bytes as they are) or OTLP/JSON.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `endpoint` | | base URL, `http://host:port` or `https://host:port[/prefix]`; `/v1/<signal>` is appended |
//! | `traces_endpoint`, `metrics_endpoint`, `logs_endpoint` | | full URL for one signal, overriding `endpoint` |
//! | `encoding` | `proto` | `proto` (`application/x-protobuf`) or `json` (`application/json`) |
//! | `tls.*` | | as for the `otlp` exporter (used for `https://` URLs) |
//! | `headers` | `{}` | headers sent with every request |
//! | `compression` | `gzip` | `gzip`, `zstd` or `none` (`Content-Encoding`) |
//! | `compression_level` | `1` | gzip 1–9, zstd level |
//! | `timeout` | `5s` | limit of one attempt; `0` = none |
//! | `retry_on_failure` | | see [`crate::helper`] |
//! | `sending_queue` | | see [`crate::helper`] |
//!
//! Retryable: HTTP 429, 502, 503 and 504 (honouring `Retry-After`), connection errors and
//! timeouts; any other error status fails the batch, with the message of the
//! `google.rpc.Status` body in the log.
//!
//! ```yaml
//! exporters:
//!   otlphttp:
//!     endpoint: https://otlp.example.com
//!     headers: {authorization: "Bearer ${env:TOKEN}"}
//!     encoding: proto
//!     compression: zstd
//! ```

use bizpilot_core::config::Duration;
use bizpilot_core::rpc;
use bizpilot_core::tls::TlsClientSettings;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Exporter, ExporterContext,
    ExporterFactory, FieldError, Running, Signal, Stability,
};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use serde::Deserialize;
use std::collections::BTreeMap;

use super::common::{
    self, Compression, DEFAULT_COMPRESSION_LEVEL, ExportResponse, HttpClient, PartialSuccess, build_client, error_chain,
};
use super::grpc::validate_tls;
use crate::helper::{self, BatchSender, ExportError, HelperSettings, QueueSettings, RetrySettings, Sent};

/// `encoding` of the `otlphttp` exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Proto,
    Json,
}

/// Config of the `otlphttp` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpHttpExporterConfig {
    pub endpoint: String,
    pub traces_endpoint: String,
    pub metrics_endpoint: String,
    pub logs_endpoint: String,
    pub encoding: Encoding,
    pub tls: TlsClientSettings,
    pub headers: BTreeMap<String, String>,
    pub compression: Compression,
    pub compression_level: i32,
    pub timeout: Duration,
    pub retry_on_failure: RetrySettings,
    pub sending_queue: QueueSettings,
}

impl Default for OtlpHttpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            traces_endpoint: String::new(),
            metrics_endpoint: String::new(),
            logs_endpoint: String::new(),
            encoding: Encoding::Proto,
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

/// Parses an `http://` or `https://` URL with a host.
fn parse_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.trim().parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "unsupported scheme {other:?} in {s:?}: use http:// or https://"
            ));
        }
        None => return Err(format!("{s:?} needs a scheme: http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("invalid URL {s:?}: missing host"));
    }
    Ok(uri)
}

impl OtlpHttpExporterConfig {
    pub fn helper_settings(&self) -> HelperSettings {
        HelperSettings {
            timeout: self.timeout,
            retry_on_failure: self.retry_on_failure.clone(),
            sending_queue: self.sending_queue.clone(),
        }
    }

    fn signal_endpoint(&self, signal: Signal) -> (&'static str, &str) {
        match signal {
            Signal::Traces => ("traces_endpoint", &self.traces_endpoint),
            Signal::Metrics => ("metrics_endpoint", &self.metrics_endpoint),
            Signal::Logs => ("logs_endpoint", &self.logs_endpoint),
        }
    }

    /// The URL `signal` is sent to: its own endpoint, else `endpoint` + `/v1/<signal>`.
    /// `Ok(None)` when neither is set.
    pub fn url(&self, signal: Signal) -> Result<Option<Uri>, String> {
        let (_, own) = self.signal_endpoint(signal);
        if !own.trim().is_empty() {
            return parse_url(own).map(Some);
        }
        if self.endpoint.trim().is_empty() {
            return Ok(None);
        }
        let base = parse_url(&self.endpoint)?;
        if base.query().is_some() {
            return Err(format!("{:?} must not have a query", self.endpoint));
        }
        let path = base.path().trim_end_matches('/');
        let joined = format!(
            "{}://{}{path}/v1/{}",
            base.scheme_str().unwrap_or("http"),
            base.authority().map(|a| a.as_str()).unwrap_or_default(),
            signal.as_str()
        );
        joined
            .parse()
            .map(Some)
            .map_err(|e| format!("invalid URL {joined:?}: {e}"))
    }
}

impl ComponentConfig for OtlpHttpExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if !self.endpoint.trim().is_empty()
            && let Err(m) = parse_url(&self.endpoint)
        {
            e.push(FieldError::new("endpoint", m));
        }
        for s in Signal::ALL {
            let (key, v) = self.signal_endpoint(s);
            if !v.trim().is_empty()
                && let Err(m) = parse_url(v)
            {
                e.push(FieldError::new(key, m));
            }
        }
        if self.endpoint.trim().is_empty() && Signal::ALL.iter().all(|s| self.signal_endpoint(*s).1.trim().is_empty()) {
            e.push(FieldError::new(
                "endpoint",
                "required (or traces_endpoint / metrics_endpoint / logs_endpoint)",
            ));
        }
        e.extend(validate_tls(&self.tls));
        e.extend(common::validate_headers(&self.headers));
        e.extend(common::validate_compression(self.compression, self.compression_level));
        e.extend(self.helper_settings().validate());
        e
    }
}

/// Creates `otlphttp` exporters.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpHttpExporterFactory;

impl ExporterFactory for OtlpHttpExporterFactory {
    type Config = OtlpHttpExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "otlphttp",
            kind: ComponentKind::Exporter,
            stability: Stability::Beta,
            description: "Sends traces, metrics and logs over OTLP/HTTP (protobuf or JSON).",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        let mut urls: [Option<Uri>; 3] = [None, None, None];
        for (slot, s) in urls.iter_mut().zip(Signal::ALL) {
            let url = config
                .url(s)
                .map_err(|m| ComponentError::Config(format!("{}: {m}", s.as_str())))?;
            if url.is_none() && ctx.signals.contains(&s) {
                return Err(ComponentError::Config(format!(
                    "used in a {s} pipeline but neither endpoint nor {} is set",
                    config.signal_endpoint(s).0
                )));
            }
            *slot = url;
        }
        let use_tls = urls.iter().flatten().any(|u| u.scheme_str() == Some("https"));
        let client = build_client(&config.tls, use_tls, false).map_err(|e| ComponentError::Config(e.to_string()))?;
        let mut headers = common::header_map(&config.headers);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(match config.encoding {
                Encoding::Proto => "application/x-protobuf",
                Encoding::Json => "application/json",
            }),
        );
        headers.insert(http::header::USER_AGENT, common::user_agent());
        if let Some(enc) = config.compression.encoding() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(enc));
        }
        let sender = HttpSender {
            exporter: ctx.id.to_string(),
            client,
            urls,
            headers,
            encoding: config.encoding,
            compression: config.compression,
            level: config.compression_level,
        };
        Ok(Box::new(OtlpHttpExporter {
            queue: helper::open_queue(&config.helper_settings(), ctx)?,
            settings: config.helper_settings(),
            sender,
        }))
    }
}

struct OtlpHttpExporter {
    settings: HelperSettings,
    queue: Option<std::sync::Arc<helper::PersistentQueue>>,
    sender: HttpSender,
}

impl Exporter for OtlpHttpExporter {
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

/// Largest response body read.
const MAX_RESPONSE: usize = 1 << 20;

pub(crate) struct HttpSender {
    exporter: String,
    client: HttpClient,
    urls: [Option<Uri>; 3],
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
    level: i32,
}

impl HttpSender {
    fn url(&self, signal: Signal) -> Option<&Uri> {
        let [t, m, l] = &self.urls;
        match signal {
            Signal::Traces => t.as_ref(),
            Signal::Metrics => m.as_ref(),
            Signal::Logs => l.as_ref(),
        }
    }
}

impl BatchSender for HttpSender {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        let signal = batch.signal();
        let Some(uri) = self.url(signal) else {
            return Err(ExportError::permanent(format!("no endpoint configured for {signal}")));
        };
        let body = match self.encoding {
            Encoding::Proto => batch.payload.encoded(),
            Encoding::Json => Bytes::from(
                batch
                    .payload
                    .to_json()
                    .map_err(|e| ExportError::permanent(format!("cannot encode OTLP/JSON: {e}")))?,
            ),
        };
        let body = common::compress(self.compression, self.level, body).await?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = self.headers.clone();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ExportError::retryable(format!("cannot send to {uri}: {}", error_chain(&e))))?;
        let (parts, body) = resp.into_parts();
        let status = parts.status;
        let body = Limited::new(body, MAX_RESPONSE).collect().await.map(|c| c.to_bytes());
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if status.is_success() {
            let ps = match body {
                Ok(b) if b.is_empty() => None,
                Ok(b) if is_json => PartialSuccess::from_json(&b),
                Ok(b) => ExportResponse::decode(b).ok().and_then(|r| r.partial_success),
                Err(e) => {
                    tracing::debug!(exporter = %self.exporter, "ignoring unreadable export response: {e}");
                    None
                }
            };
            return Ok(common::partial_success(&self.exporter, signal, ps));
        }
        let message = body.ok().map(|b| error_message(&b, is_json)).unwrap_or_default();
        let reason = if message.is_empty() {
            format!("HTTP {status} from {uri}")
        } else {
            format!("HTTP {status} from {uri}: {message}")
        };
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(ExportError::retryable_after(reason, retry_after(&parts.headers))),
            _ => Err(ExportError::permanent(reason)),
        }
    }
}

/// The message of an error body: a `google.rpc.Status` (protobuf or JSON), else the text.
fn error_message(body: &[u8], is_json: bool) -> String {
    if body.is_empty() {
        return String::new();
    }
    if is_json {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
            && let Some(m) = v.get("message").and_then(|m| m.as_str())
        {
            return m.to_string();
        }
    } else if let Ok(st) = rpc::Status::decode(body)
        && !st.message.is_empty()
    {
        return st.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(256) {
        Some((i, _)) => format!("{}…", text.get(..i).unwrap_or_default()),
        None => text.to_string(),
    }
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<std::time::Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> OtlpHttpExporterConfig {
        OtlpHttpExporterConfig {
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls_are_joined_or_overridden() {
        let c = cfg("http://localhost:4318");
        assert_eq!(
            c.url(Signal::Traces).unwrap().unwrap(),
            "http://localhost:4318/v1/traces"
        );
        let c = cfg("https://x.example/otlp/");
        assert_eq!(c.url(Signal::Logs).unwrap().unwrap(), "https://x.example/otlp/v1/logs");
        let c = OtlpHttpExporterConfig {
            metrics_endpoint: "http://m:1/custom".into(),
            ..cfg("http://localhost:4318")
        };
        assert_eq!(c.url(Signal::Metrics).unwrap().unwrap(), "http://m:1/custom");
        assert_eq!(cfg("").url(Signal::Traces).unwrap(), None);
        assert!(cfg("localhost:4318").url(Signal::Traces).is_err());
    }

    #[test]
    fn error_bodies_and_retry_after() {
        let st = rpc::Status::new(3, "bad span");
        assert_eq!(error_message(&st.encode_to_vec(), false), "bad span");
        assert_eq!(error_message(&st.to_json(), true), "bad span");
        assert_eq!(error_message(b"oops", false), "oops");
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(std::time::Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > std::time::Duration::from_secs(55) && d <= std::time::Duration::from_secs(60));
    }
}
