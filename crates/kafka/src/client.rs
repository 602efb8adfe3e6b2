//! Settings shared by the receiver and the exporter: brokers, client id, TLS, SASL and raw
//! librdkafka properties, turned into an rdkafka `ClientConfig`.

use bizpilot_core::FieldError;
use bizpilot_core::tls::TlsClientSettings;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

/// `sasl`: SASL authentication (over TLS when `tls` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslSettings {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A librdkafka property value: YAML strings, numbers and booleans are all accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyValue(pub String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The connection settings of a Kafka client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings<'a> {
    pub brokers: &'a [String],
    pub client_id: &'a str,
    pub tls: Option<&'a TlsClientSettings>,
    pub sasl: Option<&'a SaslSettings>,
    pub librdkafka: &'a BTreeMap<String, PropertyValue>,
}

/// librdkafka properties set from typed keys; setting them in `librdkafka` too is an error.
const MANAGED: [&str; 12] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "security.protocol",
    "sasl.mechanisms",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "enable.ssl.certificate.verification",
];

impl ClientSettings<'_> {
    /// Problems, with paths relative to the component. `reserved` are librdkafka properties the
    /// component sets itself for its guarantees (e.g. `enable.auto.offset.store`).
    pub fn validate(&self, reserved: &[&str]) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.brokers.is_empty() {
            e.push(FieldError::new(
                "brokers",
                "at least one broker (host:port) is required",
            ));
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let b = b.trim();
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                e.push(FieldError::new(
                    format!("brokers[{i}]"),
                    format!("{b:?} is not host:port"),
                ));
            }
        }
        if let Some(tls) = self.tls {
            if tls.insecure {
                e.push(FieldError::new(
                    "tls.insecure",
                    "not used by kafka: leave `tls` out for a plaintext connection",
                ));
            }
            if !tls.server_name_override.is_empty() {
                e.push(FieldError::new(
                    "tls.server_name_override",
                    "not supported by the kafka client (librdkafka verifies the broker's advertised name)",
                ));
            }
            if tls.cert_file.is_empty() != tls.key_file.is_empty() {
                e.push(FieldError::new(
                    "tls.key_file",
                    "cert_file and key_file must be given together",
                ));
            }
        }
        if let Some(sasl) = self.sasl {
            if !MECHANISMS.contains(&sasl.mechanism.as_str()) {
                e.push(FieldError::new(
                    "sasl.mechanism",
                    format!(
                        "{:?} is not supported: use one of {}",
                        sasl.mechanism,
                        MECHANISMS.join(", ")
                    ),
                ));
            }
            if sasl.username.is_empty() {
                e.push(FieldError::new("sasl.username", "required with sasl"));
            }
            if sasl.password.is_empty() {
                e.push(FieldError::new("sasl.password", "required with sasl"));
            }
        }
        for k in self.librdkafka.keys() {
            if MANAGED.contains(&k.as_str()) {
                e.push(FieldError::new(
                    format!("librdkafka.{k}"),
                    "set by the component's own keys (brokers, client_id, tls, sasl): use those",
                ));
            } else if reserved.contains(&k.as_str()) {
                e.push(FieldError::new(
                    format!("librdkafka.{k}"),
                    "set by the component for its delivery guarantees and cannot be changed",
                ));
            }
        }
        e
    }

    /// The base client config: connection, security, then the `librdkafka` pass-through.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        let brokers: Vec<&str> = self.brokers.iter().map(|b| b.trim()).collect();
        c.set("bootstrap.servers", brokers.join(","));
        c.set("client.id", self.client_id);
        let protocol = match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(tls) = self.tls {
            if !tls.ca_file.is_empty() {
                c.set("ssl.ca.location", &tls.ca_file);
            }
            if !tls.cert_file.is_empty() {
                c.set("ssl.certificate.location", &tls.cert_file);
                c.set("ssl.key.location", &tls.key_file);
            }
            if tls.insecure_skip_verify {
                c.set("enable.ssl.certificate.verification", "false");
                c.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        if let Some(sasl) = self.sasl {
            c.set("sasl.mechanisms", &sasl.mechanism);
            c.set("sasl.username", &sasl.username);
            c.set("sasl.password", &sasl.password);
        }
        for (k, v) in self.librdkafka {
            c.set(k, &v.0);
        }
        c
    }
}

/// librdkafka's log level: debug when `librdkafka.debug` asks for debug contexts, else warnings.
pub fn log_level(librdkafka: &BTreeMap<String, PropertyValue>) -> rdkafka::config::RDKafkaLogLevel {
    if librdkafka.contains_key("debug") {
        rdkafka::config::RDKafkaLogLevel::Debug
    } else {
        rdkafka::config::RDKafkaLogLevel::Warning
    }
}

/// A short, stable label for a client error (`BrokerTransportFailure`, `AllBrokersDown`, …).
pub fn error_kind(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => {
            let s = format!("{e:?}");
            s.split(['(', ' ', '{']).next().unwrap_or("Other").to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_security_settings() {
        let brokers = vec!["k1:9092".to_string(), " k2:9093".to_string()];
        let tls = TlsClientSettings {
            ca_file: "/ca.pem".into(),
            ..Default::default()
        };
        let sasl = SaslSettings {
            mechanism: "SCRAM-SHA-512".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let extra: BTreeMap<String, PropertyValue> = [("fetch.min.bytes".to_string(), PropertyValue("1".into()))]
            .into_iter()
            .collect();
        let s = ClientSettings {
            brokers: &brokers,
            client_id: "bp",
            tls: Some(&tls),
            sasl: Some(&sasl),
            librdkafka: &extra,
        };
        assert!(s.validate(&[]).is_empty(), "{:?}", s.validate(&[]));
        let c = s.client_config();
        assert_eq!(c.get("bootstrap.servers"), Some("k1:9092,k2:9093"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("fetch.min.bytes"), Some("1"));
    }

    #[test]
    fn reports_every_problem() {
        let brokers = vec!["nohost".to_string(), ":1".to_string()];
        let tls = TlsClientSettings {
            insecure: true,
            cert_file: "c.pem".into(),
            server_name_override: "x".into(),
            ..Default::default()
        };
        let sasl = SaslSettings {
            mechanism: "GSSAPI".into(),
            ..Default::default()
        };
        let extra: BTreeMap<String, PropertyValue> = [
            ("client.id".to_string(), PropertyValue("x".into())),
            ("enable.auto.offset.store".to_string(), PropertyValue("true".into())),
        ]
        .into_iter()
        .collect();
        let s = ClientSettings {
            brokers: &brokers,
            client_id: "bp",
            tls: Some(&tls),
            sasl: Some(&sasl),
            librdkafka: &extra,
        };
        let paths: Vec<String> = s
            .validate(&["enable.auto.offset.store"])
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "brokers[0]",
                "brokers[1]",
                "tls.insecure",
                "tls.server_name_override",
                "tls.key_file",
                "sasl.mechanism",
                "sasl.username",
                "sasl.password",
                "librdkafka.client.id",
                "librdkafka.enable.auto.offset.store"
            ]
        );
    }
}
