//! OTLP exporters: `otlp` (gRPC) and `otlphttp` (HTTP, protobuf or JSON).

mod common;
pub mod grpc;
pub mod http;

pub use common::{Compression, DEFAULT_COMPRESSION_LEVEL};
pub use grpc::{GrpcTarget, OtlpExporterConfig, OtlpExporterFactory, parse_grpc_endpoint};
pub use http::{Encoding, OtlpHttpExporterConfig, OtlpHttpExporterFactory};
