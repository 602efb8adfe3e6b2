//! Exporters against real peers: a tonic OTLP/gRPC server and a hyper OTLP/HTTP server.

mod common;
mod config;
mod debug;
mod grpc;
mod http_exporter;
mod persistent;
mod queue_cost;
mod sending;
mod tls;
