//! TLS settings shared by servers (receivers) and clients (exporters), built on rustls.
//!
//! | key | meaning |
//! |---|---|
//! | `cert_file` | PEM certificate chain presented by this side |
//! | `key_file` | PEM private key for `cert_file` |
//! | `ca_file` | PEM CA bundle: servers verify client certificates with it (mTLS); clients verify the server with it instead of the system roots |
//! | `client_ca_file` | servers only: same as `ca_file` (the Collector's name) |
//! | `insecure_skip_verify` | clients only: do not verify the server certificate (testing only) |
//! | `server_name_override` | clients only: name to verify the server certificate against |

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use std::sync::Arc;

use crate::component::FieldError;

/// TLS settings of a server endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsServerSettings {
    pub cert_file: String,
    pub key_file: String,
    /// Require and verify client certificates signed by this CA.
    pub client_ca_file: String,
    /// Alias of `client_ca_file`.
    pub ca_file: String,
}

/// TLS settings of a client connection.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientSettings {
    /// Plaintext for endpoints without a scheme (the Collector's `insecure`); `https://` endpoints still use TLS.
    pub insecure: bool,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub insecure_skip_verify: bool,
    pub server_name_override: String,
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Read {
        what: "certificate file",
        path: path.to_string(),
        reason,
    };
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if v.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(v)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "key file",
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn roots(path: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(TlsError::Rustls)?;
    }
    Ok(store)
}

impl TlsServerSettings {
    /// Checks that both halves of the key pair are given.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.cert_file.is_empty() {
            e.push(FieldError::new(
                format!("{prefix}.cert_file"),
                "required when tls is set",
            ));
        }
        if self.key_file.is_empty() {
            e.push(FieldError::new(
                format!("{prefix}.key_file"),
                "required when tls is set",
            ));
        }
        e
    }

    /// A rustls server config offering `alpn` protocols (e.g. `h2`, `http/1.1`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let ca = if self.client_ca_file.is_empty() {
            &self.ca_file
        } else {
            &self.client_ca_file
        };
        let builder = if ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut cfg = builder.with_single_cert(certs(&self.cert_file)?, key(&self.key_file)?)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsClientSettings {
    /// Whether any TLS setting is present.
    pub fn is_configured(&self) -> bool {
        *self != TlsClientSettings::default()
    }

    /// A rustls client config. Without `ca_file`, the Mozilla roots (webpki-roots) are trusted.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
        } else if !self.ca_file.is_empty() {
            builder.with_root_certificates(roots(&self.ca_file)?)
        } else {
            builder.with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        };
        let mut cfg = if !self.cert_file.is_empty() {
            builder.with_client_auth_cert(certs(&self.cert_file)?, key(&self.key_file)?)?
        } else {
            builder.with_no_client_auth()
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}
