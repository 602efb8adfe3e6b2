//! OTLP/HTTP: `POST /v1/{traces,metrics,logs}` with protobuf or JSON bodies,
//! optionally compressed, plus CORS for browser clients.

use bizpilot_core::rpc::{self, code};
use bizpilot_core::{Payload, Refusal, Signal};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use prost::Message;
use std::io::Read;
use std::sync::Arc;
use tonic::body::Body;

use super::config::{CorsConfig, HttpConfig};
use super::ingest::{BearerAuth, Ingest, RETRY_DELAY};

/// `google.rpc.Code.NOT_FOUND`.
const NOT_FOUND: i32 = 5;
/// `google.rpc.Code.UNIMPLEMENTED`.
const UNIMPLEMENTED: i32 = 12;

/// Bodies larger than this are decompressed on the blocking pool.
const INLINE_DECOMPRESS_MAX: usize = 64 * 1024;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// State of the HTTP server.
pub(crate) struct HttpState {
    pub(crate) ingest: Ingest,
    pub(crate) auth: Option<BearerAuth>,
    pub(crate) cors: Option<Cors>,
    pub(crate) max_body: usize,
    paths: [(String, Signal); 3],
}

impl HttpState {
    pub(crate) fn new(ingest: Ingest, cfg: &HttpConfig) -> Self {
        Self {
            ingest,
            auth: cfg.auth.as_ref().map(|a| BearerAuth::new(&a.bearer_token)),
            cors: cfg.cors.as_ref().and_then(Cors::new),
            max_body: cfg.max_request_body_size.as_usize(),
            paths: [
                (cfg.traces_url_path.clone(), Signal::Traces),
                (cfg.metrics_url_path.clone(), Signal::Metrics),
                (cfg.logs_url_path.clone(), Signal::Logs),
            ],
        }
    }

    fn signal_of(&self, path: &str) -> Option<Signal> {
        self.paths.iter().find(|(p, _)| p == path).map(|(_, s)| *s)
    }
}

/// The encoding of a request body and of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        })
    }
}

/// The body format named by `Content-Type`, ignoring parameters such as `charset`.
fn request_format(headers: &HeaderMap) -> Result<Format, String> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err("missing Content-Type: use application/x-protobuf or application/json".into());
    };
    let raw = v.to_str().unwrap_or("");
    let media = raw.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(format!(
            "unsupported Content-Type {raw:?}: use application/x-protobuf or application/json"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let raw = v.to_str().unwrap_or("").trim();
    match raw.to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(format!(
            "unsupported Content-Encoding {raw:?}: use gzip, deflate, zstd or none"
        )),
    }
}

fn response(status: StatusCode, format: Format, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(if body.is_empty() {
        Body::empty()
    } else {
        Body::new(Full::new(body))
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, format.content_type());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// An error response with a `google.rpc.Status` body in the request's format.
fn error(format: Format, status: StatusCode, status_code: i32, message: impl Into<String>) -> Response<Body> {
    error_with(format, status, rpc::Status::new(status_code, message))
}

fn error_with(format: Format, status: StatusCode, s: rpc::Status) -> Response<Body> {
    let body = match format {
        Format::Protobuf => s.encode_to_vec(),
        Format::Json => s.to_json(),
    };
    response(status, format, Bytes::from(body))
}

fn refusal_response(format: Format, r: &Refusal) -> Response<Body> {
    let (status, grpc_code) = match r {
        Refusal::MemoryLimit(_) => (StatusCode::TOO_MANY_REQUESTS, code::RESOURCE_EXHAUSTED),
        Refusal::Full(_) | Refusal::ShuttingDown | Refusal::NotDelivered(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE)
        }
    };
    let s = rpc::Status::new(grpc_code, r.to_string()).with_retry_delay(RETRY_DELAY);
    let mut resp = error_with(format, status, s);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_DELAY.as_secs().max(1)));
    resp
}

/// Handles one HTTP request.
pub(crate) async fn handle(state: Arc<HttpState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let resp = match &state.cors {
        None => serve(&state, &parts, &mut body).await,
        Some(cors) => {
            let origin = cors.allowed_origin(&parts.headers);
            if parts.method == Method::OPTIONS && parts.headers.contains_key(header::ORIGIN) {
                cors.preflight(origin, &parts.headers)
            } else {
                let mut resp = serve(&state, &parts, &mut body).await;
                let h = resp.headers_mut();
                if let Some(o) = origin {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                }
                h.append(header::VARY, HeaderValue::from_static("Origin"));
                resp
            }
        }
    };
    if !body.is_end_stream() && parts.version < http::Version::HTTP_2 {
        // Refused before the body was read: read the rest in the background so the
        // connection stays usable and the client is not reset while still sending.
        tokio::spawn(drain(body));
    }
    resp
}

/// Most of an unread body that is read and discarded to keep an HTTP/1 connection.
const DRAIN_MAX: usize = 4 << 20;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut read = 0usize;
        while read <= DRAIN_MAX {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    })
    .await;
}

enum ReadError {
    TooLarge,
    Failed(hyper::Error),
}

/// Reads the whole body, refusing more than `limit` bytes. A body that arrives in one
/// frame is kept as is; otherwise the frames are joined once.
async fn read_body(body: &mut Incoming, limit: usize, declared: Option<u64>) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Failed)?.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some(j) = joined.as_mut() {
            j.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let hint = declared.and_then(|d| usize::try_from(d).ok()).unwrap_or(total);
            let mut j = BytesMut::with_capacity(hint.max(total).min(limit));
            j.extend_from_slice(&f);
            j.extend_from_slice(&data);
            joined = Some(j);
        } else {
            first = Some(data);
        }
    }
    Ok(match (joined, first) {
        (Some(j), _) => j.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}

async fn serve(state: &HttpState, parts: &http::request::Parts, body: &mut Incoming) -> Response<Body> {
    let ingest = &state.ingest;
    let headers = &parts.headers;
    let format = request_format(headers);
    let reply = format.as_ref().copied().unwrap_or(Format::Protobuf);
    let path = parts.uri.path();
    let Some(signal) = state.signal_of(path) else {
        return error(reply, StatusCode::NOT_FOUND, NOT_FOUND, format!("unknown path {path}"));
    };
    if parts.method != Method::POST {
        let mut r = error(
            reply,
            StatusCode::METHOD_NOT_ALLOWED,
            UNIMPLEMENTED,
            format!("method {} is not allowed: use POST", parts.method),
        );
        let allow = if state.cors.is_some() { "POST, OPTIONS" } else { "POST" };
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    if let Some(auth) = &state.auth
        && !auth.check(headers)
    {
        ingest.bad_request("unauthenticated", &"missing or wrong bearer token");
        let mut r = error(
            reply,
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            "missing or invalid bearer token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let Some(output) = ingest.output(signal) else {
        return error(
            reply,
            StatusCode::NOT_FOUND,
            UNIMPLEMENTED,
            format!("this receiver is not used by any {signal} pipeline"),
        );
    };
    let format = match format {
        Ok(f) => f,
        Err(msg) => {
            ingest.bad_request("unsupported_media_type", &msg);
            return error(reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, code::INVALID_ARGUMENT, msg);
        }
    };
    let encoding = match content_encoding(headers) {
        Ok(e) => e,
        Err(msg) => {
            ingest.bad_request("unsupported_media_type", &msg);
            return error(format, StatusCode::UNSUPPORTED_MEDIA_TYPE, code::INVALID_ARGUMENT, msg);
        }
    };
    let max = state.max_body;
    let too_large = |what: &str| {
        let msg = format!("{what} is larger than max_request_body_size ({max} bytes)");
        ingest.bad_request("too_large", &msg);
        error(format, StatusCode::PAYLOAD_TOO_LARGE, code::INVALID_ARGUMENT, msg)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large("request body");
    }

    let body = match read_body(body, max, declared).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return too_large("request body"),
        Err(ReadError::Failed(e)) => {
            tracing::debug!(receiver = %ingest.id, error = %e, "cannot read request body");
            return error(
                format,
                StatusCode::BAD_REQUEST,
                code::INVALID_ARGUMENT,
                format!("cannot read the request body: {e}"),
            );
        }
    };
    let body = match decompress(encoding, body, max).await {
        Ok(b) => b,
        Err(DecompressError::TooLarge) => return too_large("decompressed request body"),
        Err(DecompressError::Corrupt(e)) => {
            let msg = format!("cannot decompress the request body: {e}");
            ingest.bad_request("malformed", &msg);
            return error(format, StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT, msg);
        }
    };

    let parsed = match format {
        Format::Protobuf => Payload::from_bytes(signal, body).map_err(|e| e.to_string()),
        Format::Json => Payload::from_json(signal, &body).map_err(|e| e.to_string()),
    };
    let payload = match parsed {
        Ok(p) => p,
        Err(msg) => {
            ingest.bad_request("malformed", &msg);
            return error(format, StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT, msg);
        }
    };
    match ingest.push(output, payload).await {
        // An empty Export*ServiceResponse: no partial success to report.
        Ok(()) => response(
            StatusCode::OK,
            format,
            match format {
                Format::Protobuf => Bytes::new(),
                Format::Json => Bytes::from_static(b"{}"),
            },
        ),
        Err(r) => refusal_response(format, &r),
    }
}

#[derive(Debug)]
enum DecompressError {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Decompresses `body`, refusing output larger than `limit`. Large bodies are
/// decompressed on the blocking pool so a big request does not stall other connections.
async fn decompress(encoding: Encoding, body: Bytes, limit: usize) -> Result<Bytes, DecompressError> {
    if encoding == Encoding::Identity {
        return Ok(body);
    }
    if body.len() <= INLINE_DECOMPRESS_MAX {
        return decompress_sync(encoding, &body, limit);
    }
    match tokio::task::spawn_blocking(move || decompress_sync(encoding, &body, limit)).await {
        Ok(r) => r,
        Err(e) => Err(DecompressError::Corrupt(std::io::Error::other(e.to_string()))),
    }
}

fn decompress_sync(encoding: Encoding, body: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let max = (limit as u64).saturating_add(1);
    let read = match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Encoding::Gzip => flate2::read::MultiGzDecoder::new(body).take(max).read_to_end(&mut out),
        Encoding::Deflate => flate2::read::ZlibDecoder::new(body).take(max).read_to_end(&mut out),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(body).map_err(DecompressError::Corrupt)?;
            // Bound the window a request can make us allocate: at least 8 MiB (what common
            // compressors use), more only as far as the body limit needs.
            let window_log = (usize::BITS - limit.max(1).leading_zeros()).clamp(23, 27);
            d.window_log_max(window_log).map_err(DecompressError::Corrupt)?;
            d.take(max).read_to_end(&mut out)
        }
    };
    read.map_err(DecompressError::Corrupt)?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge);
    }
    Ok(Bytes::from(out))
}

/// CORS for browser clients.
pub(crate) struct Cors {
    /// Lower-cased origin patterns with `*` wildcards.
    origins: Vec<String>,
    /// Lower-cased allowed request headers.
    headers: Vec<String>,
    any_header: bool,
    max_age: Option<HeaderValue>,
}

const DEFAULT_ALLOWED_HEADERS: [&str; 5] = [
    "accept",
    "content-type",
    "content-encoding",
    "x-requested-with",
    "origin",
];

impl Cors {
    /// `None` when no origin is allowed (CORS off).
    pub(crate) fn new(c: &CorsConfig) -> Option<Self> {
        if c.allowed_origins.is_empty() {
            return None;
        }
        let mut headers: Vec<String> = DEFAULT_ALLOWED_HEADERS.iter().map(|h| h.to_string()).collect();
        headers.extend(c.allowed_headers.iter().map(|h| h.trim().to_ascii_lowercase()));
        Some(Self {
            origins: c
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_ascii_lowercase())
                .collect(),
            any_header: headers.iter().any(|h| h == "*"),
            headers,
            max_age: c.max_age.map(HeaderValue::from),
        })
    }

    /// The request's `Origin`, if it is allowed.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let v = headers.get(header::ORIGIN)?;
        let o = v.to_str().ok()?;
        self.origins
            .iter()
            .any(|p| wildcard_match(p.as_bytes(), o.as_bytes()))
            .then(|| v.clone())
    }

    /// Answers a preflight `OPTIONS`. A refused preflight gets no CORS headers, which the browser reports.
    fn preflight(&self, origin: Option<HeaderValue>, headers: &HeaderMap) -> Response<Body> {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.append(header::VARY, HeaderValue::from_static("Access-Control-Request-Method"));
        h.append(header::VARY, HeaderValue::from_static("Access-Control-Request-Headers"));
        let Some(origin) = origin else {
            return r;
        };
        if let Some(m) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)
            && m.as_bytes() != b"POST"
        {
            return r;
        }
        let requested = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>();
        if !self.any_header && !requested.iter().all(|h| self.headers.contains(h)) {
            return r;
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
        if !requested.is_empty()
            && let Ok(v) = HeaderValue::from_str(&requested.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(age) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        r
    }
}

/// ASCII-case-insensitive match where `*` in `pattern` stands for any sequence.
fn wildcard_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        match (pattern.get(p), s.get(i)) {
            (Some(b'*'), _) => {
                star = Some((p, i));
                p += 1;
            }
            (Some(pc), Some(sc)) if pc.eq_ignore_ascii_case(sc) => {
                p += 1;
                i += 1;
            }
            (None, None) => return true,
            (_, Some(_)) => match star {
                // Let the last `*` swallow one more byte and retry.
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
            (Some(_), None) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn wildcards() {
        let m = |p: &str, s: &str| wildcard_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", "https://a.example.com"));
        assert!(m("https://*.example.com", "https://shop.example.com"));
        assert!(m("https://*.example.com", "https://a.b.example.com"));
        assert!(m("https://*.example.com", "HTTPS://Shop.Example.com"));
        assert!(!m("https://*.example.com", "https://example.com"));
        assert!(!m("https://*.example.com", "https://shop.example.com.evil.org"));
        assert!(!m("https://*.example.com", "http://shop.example.com"));
        assert!(m("https://*.example.*", "https://a.example.org"));
        assert!(m("https://example.com", "https://example.com"));
        assert!(!m("https://example.com", "https://example.co"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn content_types_and_encodings() {
        let mut h = HeaderMap::new();
        assert!(request_format(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(request_format(&h), Ok(Format::Json));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("Application/X-Protobuf"));
        assert_eq!(request_format(&h), Ok(Format::Protobuf));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(request_format(&h).is_err());
        assert_eq!(content_encoding(&h), Ok(Encoding::Identity));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(content_encoding(&h), Ok(Encoding::Gzip));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(content_encoding(&h).is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decompression_is_bounded() {
        let data = vec![7u8; 10_000];
        let gz = gzip(&data);
        assert_eq!(decompress_sync(Encoding::Gzip, &gz, 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            decompress_sync(Encoding::Gzip, &gz, 9_999),
            Err(DecompressError::TooLarge)
        ));
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(decompress_sync(Encoding::Zstd, &z, 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            decompress_sync(Encoding::Zstd, &z, 100),
            Err(DecompressError::TooLarge)
        ));
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zl.write_all(&data).unwrap();
        let zl = zl.finish().unwrap();
        assert_eq!(decompress_sync(Encoding::Deflate, &zl, 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            decompress_sync(Encoding::Gzip, b"not gzip", 100),
            Err(DecompressError::Corrupt(_))
        ));
    }
}
