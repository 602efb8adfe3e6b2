//! Exporters against real peers: a tonic OTLP/gRPC server and a hyper OTLP/HTTP server.

mod common;
mod config;
mod debug;
mod grpc;
mod http_exporter;
mod persistent;
// A port kept closed for a while and bound later must not be one the kernel may hand to another socket meanwhile.
#[allow(dead_code)]
#[path = "../../../../tests/common/ports.rs"]
mod ports;
mod queue_cost;
mod sending;
mod tls;
