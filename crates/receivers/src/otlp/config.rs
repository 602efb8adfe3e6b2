//! Configuration of the OTLP receiver (see the module documentation for the table).

use bizpilot_core::config::{ByteSize, Duration};
use bizpilot_core::tls::TlsServerSettings;
use bizpilot_core::{ComponentConfig, FieldError};
use serde::{Deserialize, Deserializer};

/// Default gRPC endpoint.
pub const DEFAULT_GRPC_ENDPOINT: &str = "0.0.0.0:4317";
/// Default HTTP endpoint.
pub const DEFAULT_HTTP_ENDPOINT: &str = "0.0.0.0:4318";

/// `receivers.otlp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: Protocols,
    /// How long a request may wait for room in the pipeline before it is refused.
    pub backpressure_wait: Duration,
    /// Answer a request only once every component downstream confirmed it (delivered, stored in a
    /// persistent queue or journal), instead of once it entered the pipeline.
    pub wait_for_delivery: bool,
    /// With `wait_for_delivery`: how long to wait before answering with a retryable error.
    pub delivery_timeout: Duration,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            protocols: Protocols::default(),
            backpressure_wait: Duration::from_secs(1),
            wait_for_delivery: false,
            delivery_timeout: Duration::from_secs(10),
        }
    }
}

/// `protocols`: a protocol is enabled when its key is present, even with no value (`grpc:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocols {
    #[serde(deserialize_with = "present")]
    pub grpc: Option<GrpcConfig>,
    #[serde(deserialize_with = "present")]
    pub http: Option<HttpConfig>,
}

/// A key that is present enables its section: `null` gives the section's defaults.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// `protocols.grpc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `host:port` to listen on; port 0 picks a free port.
    pub endpoint: String,
    /// Largest accepted message, after decompression, in MiB.
    pub max_recv_msg_size_mib: u64,
    pub tls: Option<TlsServerSettings>,
    pub auth: Option<AuthConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_GRPC_ENDPOINT.into(),
            max_recv_msg_size_mib: 4,
            tls: None,
            auth: None,
        }
    }
}

impl GrpcConfig {
    /// The message size limit in bytes.
    pub fn max_recv_msg_size(&self) -> usize {
        usize::try_from(self.max_recv_msg_size_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

/// `protocols.http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on; port 0 picks a free port.
    pub endpoint: String,
    /// Largest accepted body, both as sent (compressed) and decompressed.
    pub max_request_body_size: ByteSize,
    pub traces_url_path: String,
    pub metrics_url_path: String,
    pub logs_url_path: String,
    pub tls: Option<TlsServerSettings>,
    pub auth: Option<AuthConfig>,
    pub cors: Option<CorsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_HTTP_ENDPOINT.into(),
            max_request_body_size: ByteSize::mib(20),
            traces_url_path: "/v1/traces".into(),
            metrics_url_path: "/v1/metrics".into(),
            logs_url_path: "/v1/logs".into(),
            tls: None,
            auth: None,
            cors: None,
        }
    }
}

/// `auth`: a static bearer token every request must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Requests must send `authorization: Bearer <bearer_token>`.
    pub bearer_token: String,
}

/// `protocols.http.cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to send data from a browser; `*` wildcards (`https://*.example.com`, `*`).
    pub allowed_origins: Vec<String>,
    /// Request headers allowed besides `Accept`, `Content-Type`, `Content-Encoding`, `X-Requested-With`; `*` for any.
    pub allowed_headers: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age: Option<u64>,
}

/// Splits `host:port` (`[v6]:port`, `:port` for all interfaces) into the address to bind.
pub(crate) fn bind_address(endpoint: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid endpoint {endpoint:?}: {why} (expected host:port, e.g. \"0.0.0.0:4317\")");
    let e = endpoint.trim();
    if e.contains("://") {
        return Err(bad("must not have a scheme"));
    }
    let (host, port) = e.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    if host.starts_with('[') != host.ends_with(']') {
        return Err(bad("unbalanced brackets around the IPv6 address"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        if !host.starts_with('[') {
            return Err(bad("an IPv6 address must be in brackets"));
        }
        bare.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("invalid IPv6 address"))?;
    } else if bare.is_empty()
        || bare
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'))
    {
        return Err(bad("invalid host"));
    }
    Ok(format!("{host}:{port}"))
}

fn check_auth(auth: &Option<AuthConfig>, prefix: &str, errors: &mut Vec<FieldError>) {
    if let Some(a) = auth
        && a.bearer_token.trim().is_empty()
    {
        errors.push(FieldError::new(
            format!("{prefix}.auth.bearer_token"),
            "required when auth is set",
        ));
    }
}

fn check_tls(tls: &Option<TlsServerSettings>, prefix: &str, errors: &mut Vec<FieldError>) {
    if let Some(t) = tls {
        errors.extend(t.validate(&format!("{prefix}.tls")));
    }
}

impl ComponentConfig for OtlpReceiverConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let p = &self.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errors.push(FieldError::new(
                "protocols",
                "enable at least one protocol: grpc or http (an empty `grpc:` uses the defaults)",
            ));
        }
        if let Some(g) = &p.grpc {
            let prefix = "protocols.grpc";
            if let Err(e) = bind_address(&g.endpoint) {
                errors.push(FieldError::new(format!("{prefix}.endpoint"), e));
            }
            if g.max_recv_msg_size_mib == 0 || g.max_recv_msg_size_mib > 4095 {
                errors.push(FieldError::new(
                    format!("{prefix}.max_recv_msg_size_mib"),
                    "must be between 1 and 4095",
                ));
            }
            check_tls(&g.tls, prefix, &mut errors);
            check_auth(&g.auth, prefix, &mut errors);
        }
        if let Some(h) = &p.http {
            let prefix = "protocols.http";
            if let Err(e) = bind_address(&h.endpoint) {
                errors.push(FieldError::new(format!("{prefix}.endpoint"), e));
            }
            if h.max_request_body_size.bytes() == 0 {
                errors.push(FieldError::new(
                    format!("{prefix}.max_request_body_size"),
                    "must be greater than 0",
                ));
            }
            let paths = [
                ("traces_url_path", &h.traces_url_path),
                ("metrics_url_path", &h.metrics_url_path),
                ("logs_url_path", &h.logs_url_path),
            ];
            for (i, (key, path)) in paths.iter().enumerate() {
                if !path.starts_with('/') {
                    errors.push(FieldError::new(format!("{prefix}.{key}"), "must start with '/'"));
                } else if let Some((other, _)) = paths.iter().take(i).find(|(_, p)| p == path) {
                    errors.push(FieldError::new(
                        format!("{prefix}.{key}"),
                        format!("same path as {other} ({path})"),
                    ));
                }
            }
            check_tls(&h.tls, prefix, &mut errors);
            check_auth(&h.auth, prefix, &mut errors);
            if let Some(c) = &h.cors {
                for (i, o) in c.allowed_origins.iter().enumerate() {
                    if o.trim().is_empty() {
                        errors.push(FieldError::new(
                            format!("{prefix}.cors.allowed_origins[{i}]"),
                            "must not be empty",
                        ));
                    }
                }
            }
        }
        if let (Some(g), Some(h)) = (&p.grpc, &p.http)
            && let (Ok(a), Ok(b)) = (bind_address(&g.endpoint), bind_address(&h.endpoint))
            && a == b
            && !a.ends_with(":0")
        {
            errors.push(FieldError::new(
                "protocols.http.endpoint",
                format!("same endpoint as protocols.grpc.endpoint ({a})"),
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::parse_config;

    fn parse(yaml: &str) -> Result<OtlpReceiverConfig, Vec<FieldError>> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        parse_config(&v)
    }

    #[test]
    fn present_keys_enable_protocols_with_defaults() {
        let c = parse("protocols:\n  grpc:\n  http:\n").unwrap();
        assert_eq!(c.protocols.grpc, Some(GrpcConfig::default()));
        assert_eq!(c.protocols.http, Some(HttpConfig::default()));
        assert_eq!(c.backpressure_wait, Duration::from_secs(1));
        let g = c.protocols.grpc.unwrap();
        assert_eq!(g.endpoint, "0.0.0.0:4317");
        assert_eq!(g.max_recv_msg_size(), 4 << 20);
        let h = c.protocols.http.unwrap();
        assert_eq!(h.endpoint, "0.0.0.0:4318");
        assert_eq!(h.max_request_body_size, ByteSize::mib(20));
        assert_eq!(h.traces_url_path, "/v1/traces");
        assert_eq!(h.metrics_url_path, "/v1/metrics");
        assert_eq!(h.logs_url_path, "/v1/logs");

        let only_http = parse("protocols:\n  http: {}\n").unwrap();
        assert!(only_http.protocols.grpc.is_none());
        assert!(only_http.protocols.http.is_some());
    }

    #[test]
    fn no_protocol_is_an_error() {
        let e = parse("protocols: {}").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "protocols");
        let bare = parse_config::<OtlpReceiverConfig>(&serde_yaml::Value::Null).unwrap_err();
        assert_eq!(bare[0].path, "protocols");
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
protocols:
  grpc:
    endpoint: 127.0.0.1:0
    max_recv_msg_size_mib: 16
    tls: {cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem}
    auth: {bearer_token: secret}
  http:
    endpoint: "[::1]:4318"
    max_request_body_size: 1MiB
    traces_url_path: /t
    metrics_url_path: /m
    logs_url_path: /l
    cors:
      allowed_origins: ["https://*.example.com"]
      allowed_headers: [x-custom]
      max_age: 7200
backpressure_wait: 250ms
"#,
        )
        .unwrap();
        let g = c.protocols.grpc.unwrap();
        assert_eq!(g.max_recv_msg_size(), 16 << 20);
        assert_eq!(g.tls.unwrap().client_ca_file, "ca.pem");
        assert_eq!(g.auth.unwrap().bearer_token, "secret");
        let h = c.protocols.http.unwrap();
        assert_eq!(h.max_request_body_size, ByteSize::mib(1));
        assert_eq!(h.cors.unwrap().max_age, Some(7200));
        assert_eq!(c.backpressure_wait, Duration::from_millis(250));
    }

    #[test]
    fn unknown_key_is_reported_with_its_path() {
        let e = parse("protocols:\n  grpc:\n    endpoit: 1.2.3.4:5\n").unwrap_err();
        assert_eq!(e[0].path, "protocols.grpc.endpoit");
        assert!(e[0].message.contains("unknown field `endpoit`"), "{}", e[0].message);
        let e = parse("protocols:\n  grpc:\n  thrift:\n").unwrap_err();
        assert_eq!(e[0].path, "protocols.thrift");
        assert!(e[0].message.contains("unknown field `thrift`"), "{}", e[0].message);
        let e = parse("protocols:\n  http:\n    cors: {allowed_origin: [x]}\n").unwrap_err();
        assert_eq!(e[0].path, "protocols.http.cors.allowed_origin");
    }

    #[test]
    fn every_problem_is_reported() {
        let e = parse(
            r#"
protocols:
  grpc:
    endpoint: "localhost"
    max_recv_msg_size_mib: 0
    tls: {cert_file: c.pem}
    auth: {}
  http:
    endpoint: "http://0.0.0.0:4318"
    max_request_body_size: 0
    traces_url_path: v1/traces
    logs_url_path: /v1/metrics
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "protocols.grpc.endpoint",
                "protocols.grpc.max_recv_msg_size_mib",
                "protocols.grpc.tls.key_file",
                "protocols.grpc.auth.bearer_token",
                "protocols.http.endpoint",
                "protocols.http.max_request_body_size",
                "protocols.http.traces_url_path",
                "protocols.http.logs_url_path",
            ]
        );
        assert!(
            e[0].message.contains("invalid endpoint \"localhost\""),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(bind_address("0.0.0.0:4317").unwrap(), "0.0.0.0:4317");
        assert_eq!(bind_address(":4317").unwrap(), "0.0.0.0:4317");
        assert_eq!(bind_address("localhost:0").unwrap(), "localhost:0");
        assert_eq!(bind_address("[::]:4317").unwrap(), "[::]:4317");
        assert!(bind_address("::1:4317").is_err());
        assert!(bind_address("host:99999").is_err());
        assert!(bind_address("host:").is_err());
        assert!(bind_address("ho st:1").is_err());
        assert!(bind_address("[::1:1").is_err());
    }

    #[test]
    fn same_endpoint_twice_is_an_error() {
        let e =
            parse("protocols:\n  grpc: {endpoint: '0.0.0.0:5000'}\n  http: {endpoint: '0.0.0.0:5000'}\n").unwrap_err();
        assert_eq!(e[0].path, "protocols.http.endpoint");
        assert!(parse("protocols:\n  grpc: {endpoint: '127.0.0.1:0'}\n  http: {endpoint: '127.0.0.1:0'}\n").is_ok());
    }
}
