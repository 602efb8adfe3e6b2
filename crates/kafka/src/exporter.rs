//! The `kafka` exporter: produces pipeline data to Kafka topics with an idempotent producer
//! (`acks=all`), through the exporters' sending queue and retries
//! ([`bizpilot_exporters::helper`]).
//!
//! A batch becomes one or more messages:
//!
//! - `otlp_proto` / `otlp_json`: the OTLP export request (as the Collector's kafka exporter
//!   writes it). Without `partition_by` and `topic_from_attribute` the batch is one message
//!   (its bytes are forwarded without decoding); with them, the batch is split into one
//!   message per (topic, key) group, each keeping its resource and scope.
//! - `business_json` (logs only): one message per log record that names a business event,
//!   written with the `business` field mapping — the JSON the `kafka` receiver reads. Records
//!   naming no event are skipped (`bizpilot_kafka_exporter_skipped_log_records_total`). A record's
//!   trace context is sent as a W3C `traceparent` header.
//!
//! A message larger than `max_message_bytes` is split in halves (by items) until it fits.
//! A batch counts as sent only when every message was acknowledged by the brokers; a failed
//! delivery is retried (only the messages that failed) as configured in `retry_on_failure`,
//! and when the exporter gives up the batch fails, so upstream acknowledgements (the `kafka`
//! receiver's offset commits) stay truthful. Delivery failures are counted in
//! `bizpilot_kafka_exporter_delivery_failures_total{exporter,topic,reason}`, successes in
//! `bizpilot_kafka_exporter_messages_total{exporter,topic}`, client errors (broker down…) in
//! `bizpilot_kafka_client_errors_total{component,error}`. A producer the broker no longer accepts
//! (a fatal error, or a delivery refused with `ProducerFenced`/`InvalidProducerEpoch`) is replaced
//! by a new one (a new producer id) before the next send, counted in
//! `bizpilot_kafka_exporter_producer_recreations_total{exporter,reason}`.
//!
//! Keys: `partition_traces_by_id: true` (the Collector kafka exporter's setting, same meaning)
//! puts all spans of a trace in one message keyed by its trace id (lower-case hex), so a trace
//! never splits across partitions (and thus across the consumers of a group): a request is split
//! per trace id on its encoded bytes (`bizpilot_core::view::split_by_trace_id`: headers and spans
//! copied, nothing decoded), a request of a single trace is forwarded as it is, spans without a
//! trace id go unkeyed; `partition_by` then keys only logs and metrics. `partition_by: trace_id`
//! keys each message by its trace id (spans as above; logs by their record's trace id; data
//! without one, and metrics, get no key); `partition_by: attribute:<key>` by that attribute of
//! the span or log record, else of its resource (metrics: of the resource). The default
//! partitioner is `murmur2_random`, the Java client's, so the same key lands in the same
//! partition number as records keyed by other Kafka clients (for topics with the same number
//! of partitions): spans keyed `attribute:business.order.id` co-partition with order events
//! keyed by order id.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `brokers` | `[localhost:9092]` | bootstrap brokers |
//! | `client_id` | `bizpilot` | client id |
//! | `topic` | — | topic of every signal (overrides the defaults below) |
//! | `traces_topic` / `metrics_topic` / `logs_topic` | `otlp_spans` / `otlp_metrics` / `otlp_logs` | topic per signal (over `topic`) |
//! | `topic_from_attribute` | — | take the topic from this attribute of the record, else of its resource |
//! | `encoding` | `otlp_proto` | `otlp_proto`, `otlp_json`, `business_json` (logs) |
//! | `partition_by` | — | message key: `trace_id` or `attribute:<key>`; empty = no key |
//! | `partition_traces_by_id` | `false` | spans: one message per trace, keyed by trace id (overrides `partition_by` for traces) |
//! | `partitioner` | `murmur2_random` | librdkafka partitioner (`murmur2_random` is Java-compatible; `consistent_random` is librdkafka's default) |
//! | `compression` | `none` | `none`, `gzip`, `snappy`, `lz4`, `zstd` |
//! | `max_message_bytes` | `1MB` | largest message; bigger batches are split |
//! | `business.*` | see the receiver | JSON field names of `business_json` |
//! | `timeout` | `5s` | limit of one send attempt, also librdkafka's `message.timeout.ms` |
//! | `retry_on_failure.*`, `sending_queue.*` | | as in [`bizpilot_exporters::helper`] |
//! | `tls.*`, `sasl.*` | — | as in the receiver |
//! | `librdkafka` | `{}` | further librdkafka producer properties (e.g. `linger.ms: 20`) |
//!
//! ```yaml
//! exporters:
//!   kafka/spans:
//!     brokers: [kafka-1:9092]
//!     traces_topic: shop.spans
//!     partition_traces_by_id: true
//!     compression: zstd
//!   kafka/events:
//!     brokers: [kafka-1:9092]
//!     logs_topic: shop.orders
//!     encoding: business_json
//!     partition_by: attribute:order.id
//!     retry_on_failure: {max_elapsed_time: 0}
//! ```

use bizpilot_core::config::{ByteSize, Duration};
use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::pdata::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
use bizpilot_core::pdata::proto::common::v1::KeyValue;
use bizpilot_core::pdata::proto::common::v1::any_value::Value;
use bizpilot_core::pdata::proto::logs::v1::{ResourceLogs, ScopeLogs};
use bizpilot_core::pdata::proto::resource::v1::Resource;
use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans};
use bizpilot_core::tls::TlsClientSettings;
use bizpilot_core::view::TraceSplit;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Exporter, ExporterContext,
    ExporterFactory, FieldError, Logs, Metrics, Payload, Running, Signal, Stability, Traces,
};
use bizpilot_exporters::helper::{
    BatchSender, DEFAULT_TIMEOUT, ExportError, HelperSettings, PersistentQueue, QueueSettings, RetrySettings, Sent,
    open_queue, start_exporter_with,
};
use bytes::Bytes;
use metrics::counter;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::business::BusinessMapping;
use crate::client::{ClientSettings, PropertyValue, SaslSettings, error_kind};
use crate::codec::ExporterEncoding;
use crate::receiver::ProducerCallbacks;
use crate::traceparent::{TraceParent, hex};

/// `compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Config of the `kafka` exporter (see the module documentation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaExporterConfig {
    pub brokers: Vec<String>,
    pub client_id: String,
    pub topic: String,
    pub traces_topic: String,
    pub metrics_topic: String,
    pub logs_topic: String,
    pub topic_from_attribute: String,
    pub encoding: ExporterEncoding,
    pub partition_by: String,
    pub partition_traces_by_id: bool,
    pub partitioner: String,
    pub compression: Compression,
    pub max_message_bytes: ByteSize,
    pub business: BusinessMapping,
    pub tls: Option<TlsClientSettings>,
    pub sasl: Option<SaslSettings>,
    pub librdkafka: BTreeMap<String, PropertyValue>,
    pub timeout: Duration,
    pub retry_on_failure: RetrySettings,
    pub sending_queue: QueueSettings,
}

impl Default for KafkaExporterConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["localhost:9092".into()],
            client_id: "bizpilot".into(),
            topic: String::new(),
            traces_topic: String::new(),
            metrics_topic: String::new(),
            logs_topic: String::new(),
            topic_from_attribute: String::new(),
            encoding: ExporterEncoding::default(),
            partition_by: String::new(),
            partition_traces_by_id: false,
            partitioner: "murmur2_random".into(),
            compression: Compression::default(),
            max_message_bytes: ByteSize(1_000_000),
            business: BusinessMapping::default(),
            tls: None,
            sasl: None,
            librdkafka: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            retry_on_failure: RetrySettings::default(),
            sending_queue: QueueSettings::default(),
        }
    }
}

/// `partition_by`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionBy {
    None,
    TraceId,
    Attribute(String),
}

impl PartitionBy {
    pub fn parse(s: &str) -> Result<PartitionBy, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(PartitionBy::None);
        }
        if s == "trace_id" {
            return Ok(PartitionBy::TraceId);
        }
        match s.strip_prefix("attribute:").map(str::trim) {
            Some(k) if !k.is_empty() => Ok(PartitionBy::Attribute(k.to_string())),
            _ => Err(format!("{s:?}: use trace_id or attribute:<key>")),
        }
    }
}

const PARTITIONERS: [&str; 6] = [
    "random",
    "consistent",
    "consistent_random",
    "murmur2",
    "murmur2_random",
    "fnv1a_random",
];

/// librdkafka properties the exporter sets for its guarantees.
const RESERVED: [&str; 4] = [
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "compression.type",
];

impl KafkaExporterConfig {
    fn client(&self) -> ClientSettings<'_> {
        ClientSettings {
            brokers: &self.brokers,
            client_id: &self.client_id,
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
            librdkafka: &self.librdkafka,
        }
    }

    fn helper(&self) -> HelperSettings {
        HelperSettings {
            timeout: self.timeout,
            retry_on_failure: self.retry_on_failure.clone(),
            sending_queue: self.sending_queue.clone(),
        }
    }

    /// The topic of `signal` when no attribute names one.
    pub fn signal_topic(&self, signal: Signal) -> String {
        let specific = match signal {
            Signal::Traces => &self.traces_topic,
            Signal::Metrics => &self.metrics_topic,
            Signal::Logs => &self.logs_topic,
        };
        if !specific.is_empty() {
            specific.clone()
        } else if !self.topic.is_empty() {
            self.topic.clone()
        } else {
            match signal {
                Signal::Traces => "otlp_spans",
                Signal::Metrics => "otlp_metrics",
                Signal::Logs => "otlp_logs",
            }
            .to_string()
        }
    }
}

impl ComponentConfig for KafkaExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = self.client().validate(&RESERVED);
        for (k, v) in [
            ("topic", &self.topic),
            ("traces_topic", &self.traces_topic),
            ("metrics_topic", &self.metrics_topic),
            ("logs_topic", &self.logs_topic),
        ] {
            if v.chars().any(|c| c.is_whitespace() || c == '^') {
                e.push(FieldError::new(k, format!("{v:?} is not a topic name")));
            }
        }
        if let Err(m) = PartitionBy::parse(&self.partition_by) {
            e.push(FieldError::new("partition_by", m));
        }
        if !PARTITIONERS.contains(&self.partitioner.as_str()) {
            e.push(FieldError::new(
                "partitioner",
                format!("{:?}: use one of {}", self.partitioner, PARTITIONERS.join(", ")),
            ));
        }
        if self.max_message_bytes.bytes() < 1024 {
            e.push(FieldError::new("max_message_bytes", "must be at least 1KiB"));
        }
        if self.encoding == ExporterEncoding::BusinessJson {
            e.extend(self.business.validate("business"));
        }
        e.extend(self.helper().validate());
        e
    }
}

/// Creates `kafka` exporters.
pub struct KafkaExporterFactory;

impl ExporterFactory for KafkaExporterFactory {
    type Config = KafkaExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "kafka",
            kind: ComponentKind::Exporter,
            stability: Stability::Alpha,
            description: "Produces OTLP data or business events to Kafka topics (idempotent, acks=all), keyed by trace or attribute",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[],
        }
    }

    fn create(&self, cfg: KafkaExporterConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        if cfg.encoding == ExporterEncoding::BusinessJson
            && let Some(s) = ctx.signals.iter().find(|s| **s != Signal::Logs)
        {
            return Err(ComponentError::Config(format!(
                "encoding business_json writes log records only, but the exporter is used in a {s} pipeline"
            )));
        }
        let queue = open_queue(&cfg.helper(), ctx)?;
        Ok(Box::new(KafkaExporter { cfg, queue }))
    }
}

/// A created `kafka` exporter.
pub struct KafkaExporter {
    cfg: KafkaExporterConfig,
    /// The persistent sending queue (`sending_queue.storage`), opened at create.
    queue: Option<Arc<PersistentQueue>>,
}

impl KafkaExporter {
    fn producer_config(cfg: &KafkaExporterConfig) -> ClientConfig {
        let mut c = cfg.client().client_config();
        // librdkafka gives up on a message a little before the attempt's timeout, so a
        // delivery report (and a retry of only what failed) comes before the attempt is cut.
        let timeout_ms = if cfg.timeout.is_zero() {
            300_000
        } else {
            let t = cfg.timeout.get().as_millis();
            t.saturating_sub((t / 10).min(1000)).max(1)
        };
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", cfg.compression.as_str())
            .set("partitioner", &cfg.partitioner)
            .set(
                "message.max.bytes",
                (cfg.max_message_bytes.bytes().saturating_add(100_000)).to_string(),
            )
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("linger.ms", "5")
            .set_log_level(crate::client::log_level(&cfg.librdkafka));
        for (k, v) in &cfg.librdkafka {
            c.set(k, &v.0);
        }
        c
    }
}

impl Exporter for KafkaExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let KafkaExporter { cfg, queue } = *self;
        let exporter = ctx.id.to_string();
        let client_config = Self::producer_config(&cfg);
        let make = {
            let exporter = exporter.clone();
            move |c: &ClientConfig| -> Result<FutureProducer<ProducerCallbacks>, KafkaError> {
                c.create_with_context(ProducerCallbacks {
                    component: format!("exporter/{exporter}"),
                })
            }
        };
        let producer = make(&client_config)
            .map_err(|e| ComponentError::Other(format!("cannot create the kafka producer: {e}")))?;
        let partition_by = PartitionBy::parse(&cfg.partition_by).map_err(ComponentError::Config)?;
        let topics = Signal::ALL.map(|s| cfg.signal_topic(s));
        let sender = Arc::new(KafkaSender {
            exporter,
            producer: RwLock::new(producer),
            client_config,
            make: Box::new(make),
            fenced: AtomicBool::new(false),
            plan: Plan {
                encoding: cfg.encoding,
                partition_by,
                traces_by_id: cfg.partition_traces_by_id,
                topic_attribute: cfg.topic_from_attribute.trim().to_string(),
                topics,
                max_bytes: cfg.max_message_bytes.as_usize(),
                business: cfg.business.clone(),
            },
        });
        Ok(start_exporter_with(ctx, &cfg.helper(), queue, sender))
    }
}

type MakeProducer = dyn Fn(&ClientConfig) -> Result<FutureProducer<ProducerCallbacks>, KafkaError> + Send + Sync;

/// Sends batches.
struct KafkaSender {
    exporter: String,
    producer: RwLock<FutureProducer<ProducerCallbacks>>,
    client_config: ClientConfig,
    make: Box<MakeProducer>,
    /// A delivery failed because the broker no longer accepts the producer's id and epoch ([`is_fenced`]): the next
    /// send recreates the producer.
    fenced: AtomicBool,
    plan: Plan,
}

/// How a batch becomes messages.
#[derive(Debug, Clone)]
pub struct Plan {
    pub encoding: ExporterEncoding,
    pub partition_by: PartitionBy,
    /// `partition_traces_by_id`: spans are keyed by trace id whatever `partition_by` says.
    pub traces_by_id: bool,
    pub topic_attribute: String,
    /// Default topic per signal (traces, metrics, logs).
    pub topics: [String; 3],
    pub max_bytes: usize,
    pub business: BusinessMapping,
}

/// One Kafka message to produce. `part` is the data it carries when the batch became several
/// messages, to retry only what failed.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub topic: String,
    pub key: Option<String>,
    pub value: Bytes,
    pub headers: Vec<(String, String)>,
    pub part: Option<Payload>,
}

/// Why a batch could not be turned into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(String);

fn attr_text<'a>(attrs: &'a [KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    let s: Option<&'a str> = match v {
        Value::StringValue(s) => Some(s),
        _ => None,
    };
    match (s, v) {
        (Some(s), _) => Some(s.to_string()),
        (None, Value::IntValue(i)) => Some(i.to_string()),
        (None, Value::BoolValue(b)) => Some(b.to_string()),
        (None, Value::DoubleValue(d)) => Some(d.to_string()),
        (None, Value::BytesValue(b)) => Some(hex(b)),
        _ => None,
    }
}

fn resource_attrs(r: &Option<Resource>) -> &[KeyValue] {
    r.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default()
}

/// (topic, key) of one message group.
type GroupKey = (String, Option<String>);

/// One group: its key, its resources, and the (resource, scope) input position of its last item.
type Group<R> = (GroupKey, Vec<R>, Option<(usize, usize)>);

/// Items grouped by key, each group keeping its resource and scope headers.
struct Groups<R> {
    index: HashMap<GroupKey, usize>,
    groups: Vec<Group<R>>,
}

impl<R> Groups<R> {
    fn new() -> Self {
        Groups {
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }

    /// The group of `key` and where its last item was put (resource, scope index in the input).
    fn slot(&mut self, key: GroupKey) -> &mut Group<R> {
        let n = self.groups.len();
        let i = *self.index.entry(key.clone()).or_insert(n);
        if i == n {
            self.groups.push((key, Vec::new(), None));
        }
        let last = self.groups.len() - 1;
        let i = i.min(last);
        &mut self.groups[i]
    }
}

impl Plan {
    fn topic_for(&self, signal: Signal, item: &[KeyValue], resource: &[KeyValue]) -> String {
        if !self.topic_attribute.is_empty()
            && let Some(t) =
                attr_text(item, &self.topic_attribute).or_else(|| attr_text(resource, &self.topic_attribute))
            && !t.trim().is_empty()
        {
            return t.trim().to_string();
        }
        let i = match signal {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        };
        self.topics.get(i).cloned().unwrap_or_default()
    }

    /// How messages of `signal` are keyed.
    fn partition_of(&self, signal: Signal) -> &PartitionBy {
        const TRACE_ID: &PartitionBy = &PartitionBy::TraceId;
        if signal == Signal::Traces && self.traces_by_id {
            TRACE_ID
        } else {
            &self.partition_by
        }
    }

    fn key_for(&self, signal: Signal, trace_id: &[u8], item: &[KeyValue], resource: &[KeyValue]) -> Option<String> {
        match self.partition_of(signal) {
            PartitionBy::None => None,
            PartitionBy::TraceId => (!trace_id.is_empty() && trace_id.iter().any(|b| *b != 0)).then(|| hex(trace_id)),
            PartitionBy::Attribute(k) => attr_text(item, k).or_else(|| attr_text(resource, k)),
        }
    }

    fn needs_grouping(&self, signal: Signal) -> bool {
        *self.partition_of(signal) != PartitionBy::None || !self.topic_attribute.is_empty()
    }

    /// Spans keyed by trace id (and no topic from attributes): one message per trace id, split from the
    /// encoded request by [`bizpilot_core::view::split_by_trace_id`] without decoding it; a request of one
    /// trace is forwarded as it is.
    fn split_traces_by_id(&self, payload: &mut Payload) -> Result<Vec<OutMessage>, PlanError> {
        let topic = self.topic_for(Signal::Traces, &[], &[]);
        let bytes = payload.encoded();
        let key = |id: &[u8]| (!id.is_empty()).then(|| hex(id));
        if payload.items() == 0 {
            return Ok(Vec::new());
        }
        // One walk: the groups come with their span counts, so they are not walked again.
        let groups: Vec<(Option<String>, Bytes, Payload)> = match bizpilot_core::view::split_traces(&bytes) {
            TraceSplit::Many(parts) => parts
                .into_iter()
                .map(|g| {
                    let k = key(g.trace_id());
                    let mut part = Payload::Traces(g.into_traces());
                    (k, part.encoded(), part)
                })
                .collect(),
            TraceSplit::One(id) => {
                let Payload::Traces(t) = payload else {
                    return Ok(Vec::new());
                };
                vec![(key(id), bytes.clone(), Payload::Traces(t.encoded_copy()))]
            }
        };
        let mut out = Vec::with_capacity(groups.len());
        for (key, value, part) in groups {
            if value.len() > self.max_bytes && part.items() > 1 {
                self.encode_sized(topic.clone(), key, part, &mut out)?;
                continue;
            }
            out.push(OutMessage {
                topic: topic.clone(),
                key,
                value,
                headers: Vec::new(),
                part: Some(part),
            });
        }
        Ok(out)
    }

    /// Turns a payload into messages.
    pub fn messages(&self, payload: &mut Payload) -> Result<Vec<OutMessage>, PlanError> {
        if self.encoding == ExporterEncoding::BusinessJson {
            return self.business_messages(payload);
        }
        let signal = payload.signal();
        if signal == Signal::Traces
            && *self.partition_of(signal) == PartitionBy::TraceId
            && self.topic_attribute.is_empty()
            && self.encoding == ExporterEncoding::OtlpProto
        {
            return self.split_traces_by_id(payload);
        }
        let groups: Vec<(GroupKey, Payload)> = if !self.needs_grouping(signal) {
            // One message holding the batch as it is (its cached encoding when it has one).
            let topic = self.topic_for(signal, &[], &[]);
            let value = self.encode(payload)?;
            if value.len() <= self.max_bytes || payload.items() <= 1 {
                if payload.items() == 0 && value.is_empty() {
                    return Ok(Vec::new());
                }
                return Ok(vec![OutMessage {
                    topic,
                    key: None,
                    value,
                    headers: Vec::new(),
                    part: None,
                }]);
            }
            vec![((topic, None), payload.clone())]
        } else {
            self.group(payload)?
        };
        let mut out = Vec::new();
        for ((topic, key), part) in groups {
            self.encode_sized(topic, key, part, &mut out)?;
        }
        Ok(out)
    }

    fn encode(&self, p: &mut Payload) -> Result<Bytes, PlanError> {
        Ok(match self.encoding {
            ExporterEncoding::OtlpJson => Bytes::from(p.to_json().map_err(|e| PlanError(e.to_string()))?),
            _ => p.encoded(),
        })
    }

    /// Encodes `part`, halving it until each message fits `max_bytes`.
    fn encode_sized(
        &self,
        topic: String,
        key: Option<String>,
        mut part: Payload,
        out: &mut Vec<OutMessage>,
    ) -> Result<(), PlanError> {
        let value = self.encode(&mut part)?;
        let items = part.items();
        if value.len() > self.max_bytes && items > 1 {
            let rest = part.split_off(items / 2).map_err(|e| PlanError(e.to_string()))?;
            self.encode_sized(topic.clone(), key.clone(), part, out)?;
            return self.encode_sized(topic, key, rest, out);
        }
        if items == 0 && value.is_empty() {
            return Ok(());
        }
        out.push(OutMessage {
            topic,
            key,
            value,
            headers: Vec::new(),
            part: Some(part),
        });
        Ok(())
    }

    fn group(&self, payload: &mut Payload) -> Result<Vec<(GroupKey, Payload)>, PlanError> {
        let err = |e: bizpilot_core::pdata::DataError| PlanError(e.to_string());
        Ok(match payload {
            Payload::Traces(t) => {
                let msg = t.message().map_err(err)?.clone();
                let mut g: Groups<ResourceSpans> = Groups::new();
                for (ri, mut rs) in msg.resource_spans.into_iter().enumerate() {
                    let scopes = std::mem::take(&mut rs.scope_spans);
                    for (si, mut ss) in scopes.into_iter().enumerate() {
                        let spans = std::mem::take(&mut ss.spans);
                        for span in spans {
                            let res = resource_attrs(&rs.resource);
                            let key = (
                                self.topic_for(Signal::Traces, &span.attributes, res),
                                self.key_for(Signal::Traces, &span.trace_id, &span.attributes, res),
                            );
                            let slot = g.slot(key);
                            if slot.2 != Some((ri, si)) {
                                if slot.2.map(|x| x.0) != Some(ri) {
                                    slot.1.push(ResourceSpans {
                                        scope_spans: Vec::new(),
                                        ..rs.clone()
                                    });
                                }
                                if let Some(r) = slot.1.last_mut() {
                                    r.scope_spans.push(ScopeSpans {
                                        spans: Vec::new(),
                                        ..ss.clone()
                                    });
                                }
                                slot.2 = Some((ri, si));
                            }
                            if let Some(s) = slot.1.last_mut().and_then(|r| r.scope_spans.last_mut()) {
                                s.spans.push(span);
                            }
                        }
                    }
                }
                g.groups
                    .into_iter()
                    .map(|(k, rs, _)| {
                        (
                            k,
                            Payload::Traces(Traces::from_message(ExportTraceServiceRequest { resource_spans: rs })),
                        )
                    })
                    .collect()
            }
            Payload::Logs(l) => {
                let msg = l.message().map_err(err)?.clone();
                let mut g: Groups<ResourceLogs> = Groups::new();
                for (ri, mut rl) in msg.resource_logs.into_iter().enumerate() {
                    let scopes = std::mem::take(&mut rl.scope_logs);
                    for (si, mut sl) in scopes.into_iter().enumerate() {
                        let recs = std::mem::take(&mut sl.log_records);
                        for rec in recs {
                            let res = resource_attrs(&rl.resource);
                            let key = (
                                self.topic_for(Signal::Logs, &rec.attributes, res),
                                self.key_for(Signal::Logs, &rec.trace_id, &rec.attributes, res),
                            );
                            let slot = g.slot(key);
                            if slot.2 != Some((ri, si)) {
                                if slot.2.map(|x| x.0) != Some(ri) {
                                    slot.1.push(ResourceLogs {
                                        scope_logs: Vec::new(),
                                        ..rl.clone()
                                    });
                                }
                                if let Some(r) = slot.1.last_mut() {
                                    r.scope_logs.push(ScopeLogs {
                                        log_records: Vec::new(),
                                        ..sl.clone()
                                    });
                                }
                                slot.2 = Some((ri, si));
                            }
                            if let Some(s) = slot.1.last_mut().and_then(|r| r.scope_logs.last_mut()) {
                                s.log_records.push(rec);
                            }
                        }
                    }
                }
                g.groups
                    .into_iter()
                    .map(|(k, rl, _)| {
                        (
                            k,
                            Payload::Logs(Logs::from_message(ExportLogsServiceRequest { resource_logs: rl })),
                        )
                    })
                    .collect()
            }
            Payload::Metrics(m) => {
                // Metrics are keyed and routed by resource attributes only.
                let msg = m.message().map_err(err)?.clone();
                let mut g: Groups<_> = Groups::new();
                for rm in msg.resource_metrics {
                    let res = resource_attrs(&rm.resource);
                    let key = (
                        self.topic_for(Signal::Metrics, &[], res),
                        self.key_for(Signal::Metrics, &[], &[], res),
                    );
                    g.slot(key).1.push(rm);
                }
                g.groups
                    .into_iter()
                    .map(|(k, rm, _)| {
                        (
                            k,
                            Payload::Metrics(Metrics::from_message(ExportMetricsServiceRequest {
                                resource_metrics: rm,
                            })),
                        )
                    })
                    .collect()
            }
        })
    }

    fn business_messages(&self, payload: &mut Payload) -> Result<Vec<OutMessage>, PlanError> {
        let Payload::Logs(l) = payload else {
            return Err(PlanError(format!(
                "encoding business_json cannot write {}",
                payload.signal()
            )));
        };
        let msg = l.message().map_err(|e| PlanError(e.to_string()))?;
        let mut out = Vec::new();
        for rl in &msg.resource_logs {
            let res = resource_attrs(&rl.resource);
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    let Some(json) = self.business.write(rec) else {
                        continue;
                    };
                    let value = serde_json::to_vec(&json).map_err(|e| PlanError(e.to_string()))?;
                    let mut headers = Vec::new();
                    if let Some(tp) = TraceParent::from_ids(&rec.trace_id, &rec.span_id, (rec.flags & 0xff) as u8) {
                        headers.push(("traceparent".to_string(), tp.to_header()));
                    }
                    let part = Payload::Logs(Logs::from_message(ExportLogsServiceRequest {
                        resource_logs: vec![ResourceLogs {
                            scope_logs: vec![ScopeLogs {
                                log_records: vec![rec.clone()],
                                ..sl.clone()
                            }],
                            ..rl.clone()
                        }],
                    }));
                    out.push(OutMessage {
                        topic: self.topic_for(Signal::Logs, &rec.attributes, res),
                        key: self.key_for(Signal::Logs, &rec.trace_id, &rec.attributes, res),
                        value: Bytes::from(value),
                        headers,
                        part: Some(part),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Whether a delivery failed because the broker refused the producer's id or epoch. librdkafka raises a fatal error
/// for this only while acquiring a producer id; a refused produce just fails its messages, and the producer keeps
/// the refused id and epoch, so every later produce fails the same way. A producer with a new id does not.
///
/// A Kafka broker refuses a non-transactional idempotent producer so only after losing its state; tansu (the test
/// broker) also refuses the epoch librdkafka bumps itself after a message timed out in flight
/// (`rd_kafka_idemp_drain_epoch_bump`), which Kafka accepts.
fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// Whether a delivery error can never succeed by retrying.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

impl KafkaSender {
    fn producer(&self) -> FutureProducer<ProducerCallbacks> {
        let p = self
            .producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fatal = p.client().fatal_error();
        let fenced = self.fenced.swap(false, Ordering::SeqCst);
        if fatal.is_some() || fenced {
            let why = match &fatal {
                Some((code, reason)) => {
                    tracing::warn!(exporter = %self.exporter, ?code, %reason, "kafka producer hit a fatal error: recreating it");
                    "fatal_error"
                }
                None => {
                    tracing::warn!(exporter = %self.exporter, "the broker refused the kafka producer's id or epoch: recreating it");
                    "fenced"
                }
            };
            counter!("bizpilot_kafka_exporter_producer_recreations_total", "exporter" => self.exporter.clone(),
                "reason" => why)
            .increment(1);
            match (self.make)(&self.client_config) {
                Ok(fresh) => {
                    *self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
                    return fresh;
                }
                Err(e) => tracing::warn!(exporter = %self.exporter, error = %e, "cannot recreate the kafka producer"),
            }
        }
        p
    }

    fn count_failure(&self, topic: &str, e: &KafkaError) {
        counter!("bizpilot_kafka_exporter_delivery_failures_total", "exporter" => self.exporter.clone(),
            "topic" => topic.to_string(), "reason" => error_kind(e))
        .increment(1);
    }
}

impl BatchSender for KafkaSender {
    async fn send(&self, batch: &mut Batch) -> Result<Sent, ExportError> {
        let signal = batch.signal();
        let messages = self
            .plan
            .messages(&mut batch.payload)
            .map_err(|e| ExportError::permanent(e.to_string()))?;
        if self.plan.encoding == ExporterEncoding::BusinessJson {
            let skipped = batch.items().saturating_sub(messages.len());
            if skipped > 0 {
                counter!("bizpilot_kafka_exporter_skipped_log_records_total", "exporter" => self.exporter.clone())
                    .increment(skipped as u64);
            }
        }
        if messages.is_empty() {
            return Ok(Sent::ALL);
        }
        let producer = self.producer();
        // Enqueue everything, then wait for every delivery report.
        let mut pending = Vec::with_capacity(messages.len());
        let mut failed: Vec<(usize, KafkaError)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&m.topic).payload(m.value.as_ref()).headers(headers);
            if let Some(k) = &m.key {
                record = record.key(k.as_str());
            }
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push((i, d));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => {
                        failed.push((i, e));
                        break;
                    }
                }
            }
        }
        for (i, d) in pending {
            match d.await {
                Ok(Ok(_)) => {
                    if let Some(m) = messages.get(i) {
                        counter!("bizpilot_kafka_exporter_messages_total", "exporter" => self.exporter.clone(),
                            "topic" => m.topic.clone())
                        .increment(1);
                    }
                }
                Ok(Err((e, _))) => failed.push((i, e)),
                Err(_) => failed.push((i, KafkaError::Canceled)),
            }
        }
        if failed.is_empty() {
            return Ok(Sent::ALL);
        }
        failed.sort_by_key(|(i, _)| *i);
        for (i, e) in &failed {
            if let Some(m) = messages.get(*i) {
                self.count_failure(&m.topic, e);
            }
        }
        if failed.iter().any(|(_, e)| is_fenced(e)) {
            self.fenced.store(true, Ordering::SeqCst);
        }
        let retryable = failed.iter().any(|(_, e)| !is_permanent(e));
        let first = failed.first().map(|(_, e)| e.to_string()).unwrap_or_default();
        let reason = format!(
            "{} of {} kafka messages not delivered ({signal}): {first}",
            failed.len(),
            messages.len()
        );
        if !retryable {
            return Err(ExportError::permanent(reason));
        }
        // Retry only what failed.
        if failed.len() < messages.len() {
            let mut parts = failed
                .iter()
                .filter_map(|(i, _)| messages.get(*i).and_then(|m| m.part.clone()));
            if let Some(mut rest) = parts.next() {
                for p in parts {
                    let _ = rest.append(p);
                }
                batch.payload = rest;
            }
        }
        Err(ExportError::retryable(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::parse_config;
    use bizpilot_core::pdata::proto::common::v1::AnyValue;
    use bizpilot_core::pdata::proto::logs::v1::LogRecord;
    use bizpilot_core::pdata::proto::trace::v1::Span;

    fn parse(yaml: &str) -> Result<KafkaExporterConfig, Vec<FieldError>> {
        parse_config::<KafkaExporterConfig>(&serde_yaml::from_str(yaml).unwrap())
    }

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn plan(yaml: &str) -> Plan {
        let c = parse(yaml).unwrap();
        Plan {
            encoding: c.encoding,
            partition_by: PartitionBy::parse(&c.partition_by).unwrap(),
            traces_by_id: c.partition_traces_by_id,
            topic_attribute: c.topic_from_attribute.clone(),
            topics: Signal::ALL.map(|s| c.signal_topic(s)),
            max_bytes: c.max_message_bytes.as_usize(),
            business: c.business.clone(),
        }
    }

    fn spans(specs: &[(&str, &[u8])]) -> Payload {
        // Two resources, each with a scope, spans spread over them.
        let mk = |svc: &str, range: &[(&str, &[u8])]| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", svc)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: range
                    .iter()
                    .map(|(order, trace)| Span {
                        name: format!("span-{order}"),
                        trace_id: trace.to_vec(),
                        attributes: if order.is_empty() {
                            vec![]
                        } else {
                            vec![s("order.id", order)]
                        },
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (a, b) = specs.split_at(specs.len() / 2);
        Payload::Traces(Traces::from_message(ExportTraceServiceRequest {
            resource_spans: vec![mk("cart", a), mk("checkout", b)],
        }))
    }

    fn names(p: &Payload) -> Vec<String> {
        let Payload::Traces(t) = p else { panic!() };
        t.clone()
            .into_message()
            .unwrap()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn config_defaults_topics_and_errors() {
        let c = parse("").unwrap();
        assert_eq!(c.signal_topic(Signal::Traces), "otlp_spans");
        assert_eq!(c.partitioner, "murmur2_random");
        let c = parse("topic: all\nlogs_topic: events").unwrap();
        assert_eq!(c.signal_topic(Signal::Metrics), "all");
        assert_eq!(c.signal_topic(Signal::Logs), "events");
        let paths: Vec<String> =
            parse("topic: 'a b'\npartition_by: order\npartitioner: java\nmax_message_bytes: 10\ncompression: brotli")
                .unwrap_err()
                .into_iter()
                .map(|e| e.path)
                .collect();
        assert_eq!(paths, ["compression"], "serde stops at the unknown variant");
        let paths: Vec<String> = parse(
            "topic: 'a b'\npartition_by: order\npartitioner: java\nmax_message_bytes: 10\n\
             sending_queue: {queue_size: 0}\nlibrdkafka: {acks: '1'}",
        )
        .unwrap_err()
        .into_iter()
        .map(|e| e.path)
        .collect();
        assert_eq!(
            paths,
            [
                "librdkafka.acks",
                "topic",
                "partition_by",
                "partitioner",
                "max_message_bytes",
                "sending_queue.queue_size"
            ]
        );
        assert_eq!(
            PartitionBy::parse("attribute: business.order.id"),
            Ok(PartitionBy::Attribute("business.order.id".into()))
        );
        assert!(PartitionBy::parse("attribute:").is_err());
    }

    #[test]
    fn unkeyed_batches_are_one_message_without_decoding() {
        let p = plan("traces_topic: spans");
        let bytes = spans(&[("o1", &[1; 16]), ("o2", &[2; 16])]).encoded();
        let mut forwarded = Payload::Traces(Traces::from_bytes(bytes.clone()).unwrap());
        let m = p.messages(&mut forwarded).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic, "spans");
        assert_eq!(m[0].key, None);
        assert_eq!(m[0].value, bytes, "forwarded as received");
        assert!(m[0].part.is_none(), "nothing to retry separately");
    }

    #[test]
    fn splits_a_batch_by_key_keeping_resources_and_scopes() {
        let p = plan("partition_by: attribute:order.id");
        let mut payload = spans(&[("o1", &[1; 16]), ("o2", &[2; 16]), ("o1", &[3; 16]), ("", &[4; 16])]);
        let m = p.messages(&mut payload).unwrap();
        let keys: Vec<Option<String>> = m.iter().map(|x| x.key.clone()).collect();
        assert_eq!(keys, [Some("o1".into()), Some("o2".into()), None]);
        assert_eq!(
            names(m[0].part.as_ref().unwrap()),
            ["span-o1", "span-o1"],
            "one message per key, across resources"
        );
        let Some(Payload::Traces(t)) = &m[0].part else { panic!() };
        let msg = t.clone().into_message().unwrap();
        assert_eq!(msg.resource_spans.len(), 2, "each span keeps its own resource");
        let decoded = ExportTraceServiceRequest::decode_from(&m[0].value);
        assert_eq!(decoded.resource_spans.len(), 2);
        let by_trace = plan("partition_by: trace_id");
        let mut payload = spans(&[("a", &[0xab; 16]), ("b", &[0; 16])]);
        let m = by_trace.messages(&mut payload).unwrap();
        assert_eq!(m[0].key.as_deref(), Some("abababababababababababababababab"));
        assert_eq!(m[1].key, None, "no trace id, no key");
    }

    #[test]
    fn partition_traces_by_id_splits_encoded_requests_per_trace_without_decoding() {
        let p = plan("partition_by: attribute:order.id\npartition_traces_by_id: true");
        let bytes = spans(&[("o1", &[1; 16]), ("o2", &[2; 16]), ("o1", &[1; 16]), ("o3", &[0; 16])]).encoded();
        let mut forwarded = Payload::Traces(Traces::from_bytes(bytes.clone()).unwrap());
        let before = bizpilot_core::pdata::work_on_this_thread();
        let m = p.messages(&mut forwarded).unwrap();
        let work = bizpilot_core::pdata::work_on_this_thread().since(&before);
        let Payload::Traces(t) = &forwarded else { panic!() };
        assert!(t.decoded().is_none(), "the request was not decoded");
        {
            use bizpilot_core::pdata::Work::*;
            assert_eq!(
                [Validate, Decode, Encode, Walk, Copy].map(|w| work.get(w)),
                [0, 0, 0, 1, 1],
                "one walk and one copy (the split), nothing validated, decoded or encoded again"
            );
        }
        let keys: Vec<Option<String>> = m.iter().map(|x| x.key.clone()).collect();
        assert_eq!(
            keys,
            [Some("01".repeat(16)), Some("02".repeat(16)), None],
            "keyed by trace, not order"
        );
        assert_eq!(names(m[0].part.as_ref().unwrap()), ["span-o1", "span-o1"]);
        let decoded = ExportTraceServiceRequest::decode_from(&m[0].value);
        assert_eq!(decoded.resource_spans.len(), 2, "each span keeps its own resource");
        // One trace: the request's bytes, as they came, after one walk.
        let one = spans(&[("a", &[5; 16]), ("b", &[5; 16])]).encoded();
        let mut one_payload = Payload::Traces(Traces::from_bytes(one.clone()).unwrap());
        let before = bizpilot_core::pdata::work_on_this_thread();
        let m = p.messages(&mut one_payload).unwrap();
        let work = bizpilot_core::pdata::work_on_this_thread().since(&before);
        assert_eq!(work.get(bizpilot_core::pdata::Work::Walk), 1);
        assert_eq!(work.get(bizpilot_core::pdata::Work::Validate), 0);
        assert_eq!(
            (m.len(), m[0].value.clone(), m[0].key.clone()),
            (1, one, Some("05".repeat(16)))
        );
        // Logs still follow partition_by.
        assert!(parse("partition_traces_by_id: true").unwrap().partition_traces_by_id);
    }

    trait DecodeFrom {
        fn decode_from(b: &[u8]) -> Self;
    }
    impl DecodeFrom for ExportTraceServiceRequest {
        fn decode_from(b: &[u8]) -> Self {
            <Self as prost::Message>::decode(b).unwrap()
        }
    }

    #[test]
    fn topic_from_attribute_and_size_limit() {
        let p = plan("topic_from_attribute: order.id\ntraces_topic: fallback");
        let mut payload = spans(&[("t1", &[1; 16]), ("", &[2; 16])]);
        let topics: Vec<String> = p.messages(&mut payload).unwrap().into_iter().map(|m| m.topic).collect();
        assert_eq!(topics, ["t1", "fallback"]);
        let small = Plan {
            max_bytes: 60,
            ..plan("")
        };
        let mut payload = spans(&[("o1", &[1; 16]), ("o2", &[2; 16]), ("o3", &[3; 16]), ("o4", &[4; 16])]);
        let m = small.messages(&mut payload).unwrap();
        assert!(m.len() > 1, "split to fit");
        let all: Vec<String> = m.iter().flat_map(|x| names(x.part.as_ref().unwrap())).collect();
        assert_eq!(
            all,
            ["span-o1", "span-o2", "span-o3", "span-o4"],
            "nothing lost, order kept"
        );
    }

    #[test]
    fn logs_group_by_trace_and_metrics_by_resource_attribute() {
        use bizpilot_core::pdata::proto::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
        let rec = |t: u8| LogRecord {
            trace_id: vec![t; 16],
            ..Default::default()
        };
        let mut logs = Payload::Logs(Logs::from_message(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![
                    ScopeLogs {
                        log_records: vec![rec(1), rec(2)],
                        ..Default::default()
                    },
                    ScopeLogs {
                        log_records: vec![rec(1)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        }));
        let m = plan("partition_by: trace_id").messages(&mut logs).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].topic, "otlp_logs");
        let Some(Payload::Logs(l)) = &m[0].part else { panic!() };
        assert_eq!(l.items(), 2, "both records of trace 1, in their two scopes");
        assert_eq!(l.clone().into_message().unwrap().resource_logs[0].scope_logs.len(), 2);
        let res = |tenant: &str| ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![s("tenant", tenant)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut metrics = Payload::Metrics(Metrics::from_message(ExportMetricsServiceRequest {
            resource_metrics: vec![res("a"), res("b"), res("a")],
        }));
        let m = plan("partition_by: attribute:tenant\nmetrics_topic: mx")
            .messages(&mut metrics)
            .unwrap();
        let keys: Vec<_> = m.iter().map(|x| (x.topic.as_str(), x.key.as_deref())).collect();
        assert_eq!(keys, [("mx", Some("a")), ("mx", Some("b"))]);
    }

    #[test]
    fn business_json_writes_event_records_with_traceparent() {
        let p = plan("encoding: business_json\npartition_by: attribute:order.id\nlogs_topic: orders");
        let rec = LogRecord {
            event_name: "order.paid".into(),
            time_unix_nano: 1_735_689_601_234_000_000,
            attributes: vec![
                s("event.name", "order.paid"),
                s("order.id", "o-9"),
                s("order.amount", "9.99"),
            ],
            trace_id: vec![0x11; 16],
            span_id: vec![0x22; 8],
            flags: 1,
            ..Default::default()
        };
        let mut payload = Payload::Logs(Logs::from_message(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![rec, LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }));
        let m = p.messages(&mut payload).unwrap();
        assert_eq!(m.len(), 1, "the plain log record is skipped");
        assert_eq!(m[0].topic, "orders");
        assert_eq!(m[0].key.as_deref(), Some("o-9"));
        let json: serde_json::Value = serde_json::from_slice(&m[0].value).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"order.paid","time":"2025-01-01T00:00:01.234Z","order_id":"o-9","amount":"9.99"})
        );
        assert_eq!(
            m[0].headers,
            [(
                "traceparent".to_string(),
                "00-11111111111111111111111111111111-2222222222222222-01".to_string()
            )]
        );
        let mut traces = spans(&[("o", &[1; 16])]);
        assert!(p.messages(&mut traces).is_err());
    }
}
