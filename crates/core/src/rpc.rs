//! `google.rpc.Status` and `google.rpc.RetryInfo`, which OTLP uses for error
//! details (HTTP error bodies, gRPC `grpc-status-details-bin`).

use prost::Message;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// gRPC status codes used here.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Adds a `RetryInfo` detail telling the client how long to wait.
    pub fn with_retry_delay(mut self, delay: std::time::Duration) -> Self {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        self.details.push(Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        });
        self
    }

    /// The retry delay of a `RetryInfo` detail, if present.
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        self.details
            .iter()
            .find(|d| d.type_url.ends_with("google.rpc.RetryInfo"))
            .and_then(|d| RetryInfo::decode(d.value.as_slice()).ok())
            .and_then(|r| r.retry_delay)
            .map(|d| std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
    }

    /// JSON form, as OTLP/HTTP returns it for JSON requests.
    pub fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({"code": self.code, "message": self.message});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}
