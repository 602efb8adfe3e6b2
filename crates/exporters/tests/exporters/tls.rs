//! TLS with an rcgen self-signed certificate.

use crate::common::*;
use bizpilot_core::Delivery;
use bizpilot_exporters::{OtlpExporterFactory, OtlpHttpExporterFactory};
use std::path::PathBuf;
use std::time::Duration;

struct Certs {
    _dir: tempfile::TempDir,
    cert_pem: String,
    key_pem: String,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn certs(names: &[&str]) -> Certs {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = ck.cert.pem();
    let key_pem = ck.signing_key.serialize_pem();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    Certs {
        _dir: dir,
        cert_pem,
        key_pem,
        cert_file,
        key_file,
    }
}

#[tokio::test]
async fn grpc_over_tls_verified_with_ca_file() {
    let c = certs(&["localhost"]);
    let server = GrpcServer::start_tls(GrpcState::default(), &c.cert_pem, &c.key_pem).await;
    let port = server.addr.port();
    // No scheme: TLS (Collector semantics).
    let h = start(
        OtlpExporterFactory,
        "otlp/tls",
        &format!(
            "endpoint: localhost:{port}\ntls: {{ca_file: {}}}",
            c.cert_file.display()
        ),
        4,
    );
    let (b, ack) = trace_batch(2, "tls");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    assert_eq!(server.state.span_count(), 2);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn grpc_tls_server_name_override_and_skip_verify() {
    let c = certs(&["otlp.internal"]);
    let server = GrpcServer::start_tls(GrpcState::default(), &c.cert_pem, &c.key_pem).await;
    for (name, tls) in [
        (
            "override",
            format!(
                "{{ca_file: {}, server_name_override: otlp.internal}}",
                c.cert_file.display()
            ),
        ),
        ("skip_verify", "{insecure_skip_verify: true}".to_string()),
    ] {
        let h = start(
            OtlpExporterFactory,
            &format!("otlp/tls_{name}"),
            &format!("endpoint: https://{}\ntls: {tls}", server.addr),
            4,
        );
        let (b, ack) = trace_batch(1, name);
        h.tx.send(b).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), ack)
                .await
                .unwrap()
                .unwrap(),
            Delivery::Delivered,
            "{name}"
        );
        h.finish(Duration::from_secs(5)).await;
    }
    assert_eq!(server.state.span_count(), 2);
}

#[tokio::test]
async fn untrusted_certificate_is_not_accepted() {
    let c = certs(&["localhost"]);
    let server = GrpcServer::start_tls(GrpcState::default(), &c.cert_pem, &c.key_pem).await;
    let id = "otlp/tls_untrusted";
    let h = start(
        OtlpExporterFactory,
        id,
        &format!(
            "endpoint: localhost:{}\nretry_on_failure: {{enabled: false}}",
            server.addr.port()
        ),
        4,
    );
    let (b, ack) = trace_batch(1, "untrusted");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Failed
    );
    assert_eq!(server.state.span_count(), 0);
    assert_eq!(counter("bizpilot_exporter_send_failed_spans_total", id), 1);
    h.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn otlphttp_over_tls() {
    let c = certs(&["localhost"]);
    let server = HttpServer::start_tls(HttpState::default(), &c.cert_file, &c.key_file).await;
    let h = start(
        OtlpHttpExporterFactory,
        "otlphttp/tls",
        &format!(
            "endpoint: https://localhost:{}\ntls: {{ca_file: {}}}",
            server.addr.port(),
            c.cert_file.display()
        ),
        4,
    );
    let (b, ack) = trace_batch(2, "https");
    h.tx.send(b).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .unwrap()
            .unwrap(),
        Delivery::Delivered
    );
    let reqs = server.state.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/traces");
    h.finish(Duration::from_secs(5)).await;
}
