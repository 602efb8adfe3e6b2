//! The `kafka` receiver: consumes topics as a consumer group and feeds one pipeline signal,
//! at least once.
//!
//! # At least once
//!
//! librdkafka's automatic offset *store* is off: an offset is stored (and then committed by
//! the periodic auto-commit, or synchronously on revocation and shutdown) only once every
//! message before it in its partition was acknowledged by the pipeline (each message's batch
//! carries a [`bizpilot_core::Ack`]). The stored offset is the partition's contiguous
//! low-water mark ([`crate::offsets`]): a slow or failed message is never skipped by a later
//! success.
//!
//! - **Failed delivery** (a `Failed` acknowledgement: an exporter gave up, the data was
//!   refused downstream): the partition is *rewound*. Commits stop at the failed offset, the
//!   partition is paused for a backoff (`redelivery.initial_interval`, doubling up to
//!   `redelivery.max_interval`), then consumed again from the failed offset. Messages after it
//!   that were already delivered are delivered again (duplicates, bounded by what was in
//!   flight). A message is retried until it is delivered; messages of other partitions go on.
//! - **Backpressure**: a message the pipeline does not take within `pipeline_wait` (full
//!   queues, memory limiter) pauses every assigned partition; the message's partition is
//!   seeked back to it. Consumption resumes when the pipeline has room again. A partition with
//!   `max_in_flight` unacknowledged messages is paused until half of them are acknowledged.
//!   Nothing is buffered beyond librdkafka's bounded prefetch.
//! - **Rebalances**: when partitions are revoked, the receiver waits (at most
//!   `drain_timeout`) for their in-flight messages, then commits what is done synchronously.
//!   Messages still in flight after the deadline are read again by the new owner.
//! - **Shutdown**: consumption stops, the pipeline is released, in-flight messages are waited
//!   for (at most `drain_timeout`), the low-water marks are committed, and the consumer leaves
//!   its group. A crash loses nothing: at worst what was in flight is read again.
//!
//! # Bad messages
//!
//! A message that cannot be decoded never stops its partition: it is counted in
//! `bizpilot_kafka_receiver_bad_messages_total{receiver,topic,reason}`, logged with its topic,
//! partition, offset and reason and, with `dead_letter_topic`, produced there with its
//! original key, value and headers plus `bizpilot.error`, `bizpilot.source.topic`,
//! `bizpilot.source.partition` and `bizpilot.source.offset`. Its offset counts as done once
//! the dead-letter produce succeeded (a failed produce rewinds like a failed delivery).
//!
//! # State that moves with its partition (`changelog`)
//!
//! With `changelog`, the checkpoints of the states it names (the `business_state` extension; `order_kpi`
//! connectors, whose open orders then move too, `docs/partition-state.md`) also go to the changelog topic
//! (record partition = the partition of the order's events, `murmur2(order id)`), and an event's
//! offset is committed only once its change is acknowledged there. When the group assigns this
//! receiver partitions it did not hold just before, the rebalance callback reads those changelog
//! partitions to their end and applies them to the state *before it returns*, so no event of them
//! is processed first; the service's readiness (`health_check`) is held down meanwhile. The time is
//! logged ("state restored from the changelog", with what each state put back) and kept in
//! `bizpilot_kafka_receiver_changelog_restore_seconds{receiver}`;
//! `bizpilot_kafka_receiver_changelog_restored_records_total{receiver}` and
//! `bizpilot_kafka_receiver_changelog_restore_errors_total{receiver}` count. The changelog writes an order's
//! changes to partition `murmur2(order id) mod partitions`, the partition the Java client's partitioner (and
//! the Kafka exporter's default `murmur2_random`) gives an event keyed by its order id; an event consumed from
//! another partition (the events were produced with another key or partitioner) still flows, but is counted in
//! `bizpilot_kafka_receiver_changelog_misrouted_events_total{receiver}` and the first one is logged: after a
//! handover its order's state would be restored on the wrong replica. A partition whose restore
//! fails (broker down beyond `changelog.timeout`) is consumed anyway, logged as an error: its orders
//! are joined again as their events arrive. Revoked partitions are no longer written (the new owner
//! writes them); after each assignment, `order_kpi` drops the open orders of the partitions it no longer
//! owns, while the `business_state` keeps them until its bound or TTL drops them.
//!
//! # Self-telemetry
//!
//! `bizpilot_receiver_accepted_<items>_total` / `…_refused_…` (transport `kafka`),
//! `bizpilot_kafka_consumer_lag{receiver,topic,partition}` (from librdkafka statistics: high
//! watermark minus the stored offset), `bizpilot_kafka_receiver_messages_total{receiver,topic}`,
//! `bizpilot_kafka_receiver_bad_messages_total`, `bizpilot_kafka_receiver_dead_lettered_total`,
//! `bizpilot_kafka_receiver_redeliveries_total{receiver,topic}`,
//! `bizpilot_kafka_receiver_in_flight_messages{receiver}`,
//! `bizpilot_kafka_receiver_paused_partitions{receiver}`,
//! `bizpilot_kafka_receiver_commit_failures_total{receiver}`,
//! `bizpilot_kafka_receiver_consume_errors_total{receiver,error}` and
//! `bizpilot_kafka_client_errors_total{component,error}` (broker down, transport failures…).
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `brokers` | `[localhost:9092]` | bootstrap brokers, `host:port` |
//! | `topics` | — (required) | topics to consume; an entry starting with `^` is a regex subscription |
//! | `group_id` | `bizpilot` | consumer group |
//! | `client_id` | `bizpilot` | client id |
//! | `initial_offset` | `latest` | where a group without committed offsets starts: `earliest` or `latest` |
//! | `encoding` | `otlp_proto` | `otlp_proto`, `otlp_json`, `business_json`, `business_proto` (`bizpilot.v1.BusinessEvent`), `protobuf`, `otel_demo_order_result` (the OpenTelemetry Demo's `oteldemo.OrderResult` on topic `orders`: [`crate::otel_demo`]) |
//! | `signal` | the pipeline's | `traces`, `metrics` or `logs` for the OTLP encodings (business encodings give logs) |
//! | `business.*` | see below | field mapping of `business_json` and `protobuf` ([`crate::business::BusinessMapping`]) |
//! | `protobuf.descriptor_set_file` | — | encoded `FileDescriptorSet` (`protoc --descriptor_set_out`, `buf build -o`) |
//! | `protobuf.message` | — | full message name, e.g. `shop.v1.OrderEvent` |
//! | `max_in_flight` | `1000` | unacknowledged messages per partition before it is paused |
//! | `pipeline_wait` | `1s` | how long a message waits for room in the pipeline before consumption pauses |
//! | `commit_interval` | `1s` | auto-commit period of the stored offsets |
//! | `commit_offsets` | `true` | `false`: never commit, so every start reads from `initial_offset` again (a reader that rebuilds its state from a whole topic at each start, e.g. the fleet stage of `docs/fleet.md`; give each such reader its own `group_id`) |
//! | `drain_timeout` | `10s` | wait for in-flight messages on revocation and shutdown |
//! | `redelivery.initial_interval` | `500ms` | pause before a failed message is consumed again |
//! | `redelivery.max_interval` | `30s` | longest such pause (the pause doubles per consecutive failure) |
//! | `dead_letter_topic` | — | where bad messages go; empty = count, log and skip them |
//! | `statistics_interval` | `5s` | librdkafka statistics period (consumer lag); `0` = off |
//! | `tls.ca_file`, `tls.cert_file`, `tls.key_file`, `tls.insecure_skip_verify` | — | TLS (on when `tls` is present) |
//! | `sasl.mechanism`, `sasl.username`, `sasl.password` | — | `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` |
//! | `librdkafka` | `{}` | further librdkafka consumer properties, passed through (e.g. `session.timeout.ms: 10000`) |
//! | `changelog.topic` | — | state that moves with its partition (`docs/partition-state.md`), on the receiver of the business events: the compacted changelog topic of the `business_state` (create it with `cleanup.policy=compact` and as many partitions as the one events topic); none: no changelog |
//! | `changelog.state` | — | id (or list of ids) of the states the changelog carries: the `business_state` extension (orders, customers, trace links) and `order_kpi` connectors with `storage` (open orders); they share the topic |
//! | `changelog.timeout` | `60s` | longest wait for a checkpoint's produce acknowledgement, and for one partition's restore |
//! | `changelog.librdkafka` | `{}` | further librdkafka properties of the changelog producer (brokers, TLS and SASL are the receiver's) |
//!
//! `business` keys (JSON field names; empty = not read; a dotted name also finds nested
//! objects): `event_type` (`type`), `default_event_type` (—), `time` (`time`), `order_id`
//! (`order_id`), `customer_id` (`customer_id`), `customer_tier` (`customer_tier`), `amount`
//! (`amount`), `currency` (`currency`), `default_currency` (—), `shipping` (`shipping`),
//! `items` (`items`), `item_sku` (`sku`), `item_quantity` (`quantity`), `item_unit_price`
//! (`unit_price`), `keep_other_fields` (`true`). See [`crate::business`] for the log records
//! produced. A W3C `traceparent` header becomes the records' `trace_id`/`span_id` (OTLP log
//! records keep a trace context they already have).
//!
//! ```yaml
//! receivers:
//!   kafka/orders:
//!     brokers: [kafka-1:9092, kafka-2:9092]
//!     topics: [shop.orders]
//!     group_id: bizpilot-orders
//!     initial_offset: earliest
//!     encoding: business_json
//!     business: {event_type: kind, order_id: order.id, default_currency: EUR}
//!     dead_letter_topic: shop.orders.dlq
//!     sasl: {mechanism: SCRAM-SHA-512, username: bizpilot, password: "${env:KAFKA_PASSWORD}"}
//!     tls: {ca_file: /etc/kafka/ca.pem}
//!   kafka/spans:
//!     brokers: [kafka-1:9092]
//!     topics: ["^otlp\\.spans\\..*"]
//!     encoding: otlp_proto
//!     signal: traces
//! ```

use bizpilot_business::BusinessState;
use bizpilot_business::changelog::{ChangelogSink, PartitionedState};
use bizpilot_core::config::Duration;
use bizpilot_core::telemetry::ReceiverTelemetry;
use bizpilot_core::tls::TlsClientSettings;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, FieldError, Output, Payload,
    Readiness, Receiver, ReceiverContext, ReceiverFactory, Refusal, Running, Signal, Stability,
};
use metrics::{counter, gauge};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::business::BusinessMapping;
use crate::changelog::KafkaChangelog;
use crate::client::{ClientSettings, PropertyValue, SaslSettings, error_kind};
use crate::codec::{Decoder, MessageMeta, ReceiverEncoding};
use crate::offsets::{OffsetTracker, Outcome, Ticket, TopicPartition};
use crate::pb::ReflectedMessage;
use crate::traceparent::TraceParent;

/// `initial_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffset {
    #[default]
    Latest,
    Earliest,
}

/// `redelivery`: the pause before a failed message is consumed again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedeliverySettings {
    pub initial_interval: Duration,
    pub max_interval: Duration,
}

impl Default for RedeliverySettings {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
        }
    }
}

impl RedeliverySettings {
    /// The pause after the `n`th consecutive failure (n ≥ 1), with ±20 % jitter.
    pub fn delay(&self, n: u32) -> std::time::Duration {
        let base = self.initial_interval.get();
        let max = self.max_interval.get().max(base);
        let d = base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(max);
        let jitter = rand::random_range(0.8..1.2);
        d.mul_f64(jitter).min(max)
    }
}

/// `protobuf`: the user schema of the `protobuf` encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtobufSettings {
    pub descriptor_set_file: String,
    pub message: String,
}

/// Config of the `kafka` receiver (see the module documentation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaReceiverConfig {
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    pub group_id: String,
    pub client_id: String,
    pub initial_offset: InitialOffset,
    pub encoding: ReceiverEncoding,
    pub signal: Option<String>,
    pub business: BusinessMapping,
    pub protobuf: ProtobufSettings,
    pub max_in_flight: usize,
    pub pipeline_wait: Duration,
    pub commit_interval: Duration,
    /// `false`: offsets are never committed; every start reads from `initial_offset` again.
    pub commit_offsets: bool,
    pub drain_timeout: Duration,
    pub redelivery: RedeliverySettings,
    pub dead_letter_topic: String,
    pub statistics_interval: Duration,
    pub tls: Option<TlsClientSettings>,
    pub sasl: Option<SaslSettings>,
    pub librdkafka: BTreeMap<String, PropertyValue>,
    /// The `business_state` changelog this receiver's partitions carry ([`ChangelogSettings`]).
    pub changelog: Option<ChangelogSettings>,
}

/// `changelog`: state that moves with its partition (`docs/partition-state.md`). The receiver
/// consumes the business events topic; the `business_state` extension `state` writes its changes to
/// the compacted changelog `topic` (partition = the event's partition, `murmur2(order id)`), and
/// restores a partition's changelog before any event of a newly assigned partition is consumed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangelogSettings {
    pub topic: String,
    /// Ids of the states the changelog carries: the `business_state` extension, `order_kpi` connectors
    /// (one id or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub state: Vec<String>,
    /// Bounds a checkpoint's produce acknowledgement and one partition's restore.
    pub timeout: Duration,
    /// Further librdkafka properties of the changelog producer (e.g. `batch.num.messages`).
    pub librdkafka: BTreeMap<String, PropertyValue>,
}

impl Default for ChangelogSettings {
    fn default() -> Self {
        ChangelogSettings {
            topic: String::new(),
            state: Vec::new(),
            timeout: Duration::from_secs(60),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// One id or a list of ids.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for KafkaReceiverConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["localhost:9092".into()],
            topics: Vec::new(),
            group_id: "bizpilot".into(),
            client_id: "bizpilot".into(),
            initial_offset: InitialOffset::default(),
            encoding: ReceiverEncoding::default(),
            signal: None,
            business: BusinessMapping::default(),
            protobuf: ProtobufSettings::default(),
            max_in_flight: 1000,
            pipeline_wait: Duration::from_secs(1),
            commit_interval: Duration::from_secs(1),
            commit_offsets: true,
            drain_timeout: Duration::from_secs(10),
            redelivery: RedeliverySettings::default(),
            dead_letter_topic: String::new(),
            statistics_interval: Duration::from_secs(5),
            tls: None,
            sasl: None,
            librdkafka: BTreeMap::new(),
            changelog: None,
        }
    }
}

/// librdkafka properties the receiver sets for its guarantees.
const RESERVED: [&str; 6] = [
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "auto.commit.interval.ms",
];

impl KafkaReceiverConfig {
    fn client(&self) -> ClientSettings<'_> {
        ClientSettings {
            brokers: &self.brokers,
            client_id: &self.client_id,
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
            librdkafka: &self.librdkafka,
        }
    }

    fn signal(&self) -> Result<Option<Signal>, String> {
        match &self.signal {
            None => Ok(None),
            Some(s) => Signal::parse(s)
                .map(Some)
                .ok_or_else(|| format!("{s:?} is not a signal: use traces, metrics or logs")),
        }
    }
}

impl ComponentConfig for KafkaReceiverConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = self.client().validate(&RESERVED);
        if self.topics.is_empty() {
            e.push(FieldError::new("topics", "at least one topic is required"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.trim().is_empty() {
                e.push(FieldError::new(format!("topics[{i}]"), "must not be empty"));
            } else if t.starts_with('^')
                && let Err(err) = regex::Regex::new(t)
            {
                e.push(FieldError::new(format!("topics[{i}]"), format!("invalid regex: {err}")));
            }
        }
        if self.group_id.trim().is_empty() {
            e.push(FieldError::new("group_id", "must not be empty"));
        }
        match self.signal() {
            Err(m) => e.push(FieldError::new("signal", m)),
            Ok(Some(s)) => {
                if let Some(fixed) = self.encoding.fixed_signal()
                    && fixed != s
                {
                    e.push(FieldError::new(
                        "signal",
                        format!("encoding {} always gives {fixed}", self.encoding.as_str()),
                    ));
                }
            }
            Ok(None) => {}
        }
        if matches!(
            self.encoding,
            ReceiverEncoding::BusinessJson | ReceiverEncoding::Protobuf
        ) {
            e.extend(self.business.validate("business"));
        }
        if self.encoding == ReceiverEncoding::Protobuf {
            if self.protobuf.descriptor_set_file.trim().is_empty() {
                e.push(FieldError::new(
                    "protobuf.descriptor_set_file",
                    "required with encoding protobuf",
                ));
            }
            if self.protobuf.message.trim().is_empty() {
                e.push(FieldError::new("protobuf.message", "required with encoding protobuf"));
            }
        }
        if self.max_in_flight == 0 {
            e.push(FieldError::new("max_in_flight", "must be at least 1"));
        }
        if self.commit_interval.is_zero() {
            e.push(FieldError::new("commit_interval", "must be greater than 0"));
        }
        if self.redelivery.initial_interval.is_zero() {
            e.push(FieldError::new("redelivery.initial_interval", "must be greater than 0"));
        }
        if self.redelivery.max_interval < self.redelivery.initial_interval {
            e.push(FieldError::new(
                "redelivery.max_interval",
                "must not be less than initial_interval",
            ));
        }
        let dlq = self.dead_letter_topic.trim();
        let consumed = self
            .topics
            .iter()
            .map(|t| t.trim())
            .any(|t| t == dlq || (t.starts_with('^') && regex::Regex::new(t).is_ok_and(|r| r.is_match(dlq))));
        if !dlq.is_empty() && (dlq.starts_with('^') || consumed) {
            e.push(FieldError::new(
                "dead_letter_topic",
                "must be a plain topic name that is not consumed by this receiver",
            ));
        }
        if let Some(c) = &self.changelog {
            e.extend(self.validate_changelog(c));
        }
        e
    }
}

impl KafkaReceiverConfig {
    fn validate_changelog(&self, c: &ChangelogSettings) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.encoding.fixed_signal() != Some(Signal::Logs) {
            e.push(FieldError::new(
                "changelog",
                format!(
                    "only for business events (encoding business_json, business_proto, protobuf or \
                     otel_demo_order_result), not {}: the changelog mirrors the business events topic's partitions",
                    self.encoding.as_str()
                ),
            ));
        }
        if self.topics.len() != 1 || self.topics.iter().any(|t| t.trim().starts_with('^')) {
            e.push(FieldError::new(
                "changelog",
                "needs exactly one topic, not a regex: the changelog's partition i is the events topic's partition i",
            ));
        }
        let topic = c.topic.trim();
        if topic.is_empty() {
            e.push(FieldError::new(
                "changelog.topic",
                "required: the compacted changelog topic",
            ));
        } else if self.topics.iter().any(|t| t.trim() == topic) || topic == self.dead_letter_topic.trim() {
            e.push(FieldError::new(
                "changelog.topic",
                "must not be a topic this receiver consumes or dead-letters to",
            ));
        }
        if c.state.iter().all(|s| s.trim().is_empty()) {
            e.push(FieldError::new(
                "changelog.state",
                "required: id of the business_state extension (and of order_kpi connectors) whose state the changelog carries",
            ));
        } else {
            let many = c.state.len() > 1;
            let path = |i: usize| {
                if many {
                    format!("changelog.state[{i}]")
                } else {
                    "changelog.state".to_string()
                }
            };
            for (i, id) in c.state.iter().enumerate() {
                if id.trim().parse::<bizpilot_core::ComponentId>().is_err() {
                    e.push(FieldError::new(path(i), "not a component id"));
                } else if c.state[..i].iter().any(|o| o.trim() == id.trim()) {
                    e.push(FieldError::new(path(i), "named twice"));
                }
            }
        }
        if c.timeout.is_zero() {
            e.push(FieldError::new("changelog.timeout", "must be greater than 0"));
        }
        for k in c.librdkafka.keys() {
            if ["bootstrap.servers", "enable.idempotence", "acks"].contains(&k.as_str()) {
                e.push(FieldError::new(
                    format!("changelog.librdkafka.{k}"),
                    "set by the receiver (brokers come from `brokers`; produces are idempotent with acks=all)",
                ));
            }
        }
        e
    }
}

/// Creates `kafka` receivers.
pub struct KafkaReceiverFactory;

impl ReceiverFactory for KafkaReceiverFactory {
    type Config = KafkaReceiverConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: "kafka",
            kind: ComponentKind::Receiver,
            stability: Stability::Alpha,
            description: "Consumes OTLP data or business events from Kafka topics, committing offsets only after delivery",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[],
        }
    }

    fn create(&self, cfg: KafkaReceiverConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Receiver>, ComponentError> {
        let configured = cfg.signal().map_err(ComponentError::Config)?;
        let signal = match (cfg.encoding.fixed_signal(), configured) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                let mut used = ctx.signals.iter();
                match (used.next(), used.next()) {
                    (Some(s), None) => *s,
                    _ => {
                        return Err(ComponentError::Config(format!(
                            "signal: set it (traces, metrics or logs) for encoding {}: the receiver is used in \
                             pipelines of several signals",
                            cfg.encoding.as_str()
                        )));
                    }
                }
            }
        };
        if let Some(other) = ctx.signals.iter().find(|s| **s != signal) {
            return Err(ComponentError::Config(format!(
                "the receiver gives {signal} (encoding {}) but is used in a {other} pipeline: use one kafka \
                 receiver per signal",
                cfg.encoding.as_str()
            )));
        }
        let decoder = match cfg.encoding {
            ReceiverEncoding::OtlpProto => Decoder::Otlp { signal, json: false },
            ReceiverEncoding::OtlpJson => Decoder::Otlp { signal, json: true },
            ReceiverEncoding::BusinessJson => Decoder::BusinessJson(cfg.business.clone()),
            ReceiverEncoding::BusinessProto => Decoder::BusinessProto,
            ReceiverEncoding::OtelDemoOrderResult => Decoder::OtelDemoOrderResult,
            ReceiverEncoding::Protobuf => Decoder::Protobuf {
                message: ReflectedMessage::from_file(&cfg.protobuf.descriptor_set_file, &cfg.protobuf.message)
                    .map_err(|e| ComponentError::Config(format!("protobuf: {e}")))?,
                mapping: cfg.business.clone(),
            },
        };
        let changelog = match &cfg.changelog {
            None => None,
            Some(c) => {
                let mut states = Vec::new();
                for (i, id) in c.state.iter().enumerate() {
                    let path = if c.state.len() > 1 {
                        format!("changelog.state[{i}]")
                    } else {
                        "changelog.state".to_string()
                    };
                    let id: bizpilot_core::ComponentId = id
                        .trim()
                        .parse()
                        .map_err(|e| ComponentError::Config(format!("{path}: {e}")))?;
                    states.push((
                        id.to_string(),
                        partitioned_state(ctx, &id).map_err(|e| ComponentError::Config(format!("{path}: {e}")))?,
                    ));
                }
                Some((states, ctx.extensions.readiness().clone()))
            }
        };
        Ok(Box::new(KafkaReceiver {
            cfg,
            decoder,
            signal,
            changelog,
        }))
    }
}

/// The partitioned state `id` names: the `business_state` extension, or a component (an `order_kpi` connector)
/// that published one ([`bizpilot_core::Extensions::publish`]).
fn partitioned_state(
    ctx: &CreateContext<'_>,
    id: &bizpilot_core::ComponentId,
) -> Result<Arc<dyn PartitionedState>, String> {
    if let Some(s) = ctx.extensions.published::<Arc<dyn PartitionedState>>(id) {
        return Ok((*s).clone());
    }
    ctx.extensions
        .get::<BusinessState>(id)
        .map(|s| s as Arc<dyn PartitionedState>)
        .map_err(|e| {
            format!("{e} (a changelog carries a business_state extension or an order_kpi connector with `storage`)")
        })
}

/// A created `kafka` receiver.
pub struct KafkaReceiver {
    cfg: KafkaReceiverConfig,
    decoder: Decoder,
    signal: Signal,
    /// With `changelog`: the states it carries (by id) and the service's readiness (held down during restores).
    changelog: Option<(NamedStates, Readiness)>,
}

/// The states a changelog carries, with their ids.
type NamedStates = Vec<(String, Arc<dyn PartitionedState>)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a blocking librdkafka call without stalling the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a partition is paused (any reason keeps it paused).
const PAUSE_CAP: u8 = 1;
const PAUSE_BACKOFF: u8 = 2;
const PAUSE_PIPELINE: u8 = 4;
const PAUSE_STOP: u8 = 8;

#[derive(Debug, Default)]
struct PartitionControl {
    paused: u8,
    /// Consecutive failed deliveries (for the redelivery backoff).
    failures: u32,
    last_failed: Option<i64>,
    resume_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    offsets: OffsetTracker,
    control: HashMap<TopicPartition, PartitionControl>,
    /// The pipeline refused a message: every partition is paused until it has room.
    blocked: bool,
}

impl State {
    /// Sets or clears a pause reason; returns the partitions whose paused state changed
    /// (`true` = must be paused now, `false` = must be resumed).
    fn set_pause(&mut self, tp: &TopicPartition, reason: u8, on: bool) -> Option<bool> {
        let c = self.control.entry(tp.clone()).or_default();
        let before = c.paused != 0;
        if on {
            c.paused |= reason;
        } else {
            c.paused &= !reason;
        }
        let after = c.paused != 0;
        (before != after).then_some(after)
    }

    fn paused_count(&self) -> usize {
        self.control.values().filter(|c| c.paused != 0).count()
    }
}

/// State shared by the consumer task, librdkafka callbacks and acknowledgement callbacks.
struct Shared {
    receiver: String,
    state: Mutex<State>,
    /// Notified on every recorded outcome (for synchronous waits in rebalance callbacks).
    changed: Condvar,
    /// Wakes the consumer task.
    wake: Notify,
    drain_timeout: std::time::Duration,
    /// `commit_offsets`: whether done offsets are committed.
    commit: bool,
}

impl Shared {
    fn resolve(&self, ticket: &Ticket, delivered: bool) {
        let outcome = lock(&self.state).offsets.resolve(ticket, delivered);
        if outcome != Outcome::Stale {
            self.changed.notify_all();
            self.wake.notify_one();
        }
    }

    fn ack(self: &Arc<Self>, ticket: Ticket) -> bizpilot_core::Ack {
        let shared = self.clone();
        bizpilot_core::Ack::new(move |d| shared.resolve(&ticket, d == bizpilot_core::Delivery::Delivered))
    }
}

fn tpl_of<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tp in tps {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

fn apply_pauses<C: ConsumerContext>(consumer: &impl Consumer<C>, receiver: &str, changes: &[(TopicPartition, bool)]) {
    let pause: Vec<&TopicPartition> = changes.iter().filter(|(_, p)| *p).map(|(tp, _)| tp).collect();
    let resume: Vec<&TopicPartition> = changes.iter().filter(|(_, p)| !*p).map(|(tp, _)| tp).collect();
    if !pause.is_empty()
        && let Err(e) = consumer.pause(&tpl_of(pause.iter().copied()))
    {
        tracing::warn!(receiver, error = %e, "cannot pause partitions");
    }
    if !resume.is_empty()
        && let Err(e) = consumer.resume(&tpl_of(resume.iter().copied()))
    {
        tracing::warn!(receiver, error = %e, "cannot resume partitions");
    }
}

/// The order id of the first business event in `payload` that the changelog would write to another
/// partition than `partition` (of `partitions`), if any.
fn misrouted_order(payload: &Payload, partition: i32, partitions: i32) -> Option<String> {
    let Payload::Logs(logs) = payload else {
        return None;
    };
    logs.decoded()?
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .filter_map(|r| bizpilot_business::attrs::get_str(&r.attributes, crate::business::attr::ORDER_ID))
        .find(|order| bizpilot_business::changelog::partition_of(order, partitions) != partition)
        .map(str::to_string)
}

/// librdkafka callbacks of the consumer.
struct ConsumerCallbacks {
    shared: Arc<Shared>,
    changelog: Option<ChangelogBinding>,
}

/// The changelog of a receiver with `changelog` (`docs/partition-state.md`): of the `business_state`, and of
/// `order_kpi` connectors.
struct ChangelogBinding {
    sink: Arc<KafkaChangelog>,
    /// The states it carries (ids for the logs).
    states: Vec<Arc<dyn PartitionedState>>,
    ids: Vec<String>,
    readiness: Readiness,
    receiver: String,
    /// Partitions revoked (not lost) at the last rebalance: if they are assigned again right away
    /// (an eager rebalance revokes everything), nobody else consumed them and the state here is current.
    revoked: Mutex<BTreeSet<i32>>,
    restore_seconds: metrics::Gauge,
    restored_records: metrics::Counter,
    restore_errors: metrics::Counter,
    /// Events whose order the changelog writes to another partition than the one they came from.
    misrouted: metrics::Counter,
    misrouted_logged: std::sync::atomic::AtomicBool,
}

impl ChangelogBinding {
    /// Connects to the changelog topic and attaches it to the state: from now on checkpoints write the
    /// changes of the partitions this receiver owns.
    fn start(
        cfg: &KafkaReceiverConfig,
        settings: &ChangelogSettings,
        receiver: &str,
        states: NamedStates,
        readiness: Readiness,
    ) -> Result<ChangelogBinding, ComponentError> {
        let none = BTreeMap::new();
        let base = ClientSettings {
            librdkafka: &none,
            ..cfg.client()
        }
        .client_config();
        let props: Vec<(&str, &str)> = settings
            .librdkafka
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_str()))
            .collect();
        let sink = KafkaChangelog::with_client(base, settings.topic.trim(), settings.timeout.get(), &props)
            .map_err(|e| ComponentError::Other(format!("changelog: {e}")))?;
        sink.restrict_to_owned();
        let sink = Arc::new(sink);
        for (id, state) in &states {
            state
                .attach_changelog(sink.clone())
                .map_err(|e| ComponentError::Config(format!("changelog.state: {id}: {e}")))?;
        }
        let (ids, states): (Vec<String>, Vec<Arc<dyn PartitionedState>>) = states.into_iter().unzip();
        tracing::info!(receiver, topic = %sink.topic(), state = %ids.join(","), partitions = sink.partitions(),
            "changelog attached");
        Ok(ChangelogBinding {
            sink,
            states,
            ids,
            readiness,
            receiver: receiver.to_string(),
            revoked: Mutex::new(BTreeSet::new()),
            restore_seconds: gauge!("bizpilot_kafka_receiver_changelog_restore_seconds", "receiver" => receiver.to_string()),
            restored_records: counter!("bizpilot_kafka_receiver_changelog_restored_records_total", "receiver" => receiver.to_string()),
            restore_errors: counter!("bizpilot_kafka_receiver_changelog_restore_errors_total", "receiver" => receiver.to_string()),
            misrouted: counter!("bizpilot_kafka_receiver_changelog_misrouted_events_total", "receiver" => receiver.to_string()),
            misrouted_logged: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Checks that the changelog writes the orders of an event that came from `partition` to that same
    /// partition number. The changelog routes an order by `murmur2(order id) mod partitions` (the Java
    /// client's partitioner, which the sidecars' Kafka exporter uses); an events topic produced with another
    /// partitioner or key would put an order's state where the order's new owner does not read it after a
    /// handover. Such events still flow; they are counted and the first one is logged.
    fn check_routing(&self, topic: &str, partition: i32, offset: i64, payload: &Payload) {
        let Some(order) = misrouted_order(payload, partition, self.sink.partitions()) else {
            return;
        };
        self.misrouted.increment(1);
        if !self.misrouted_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(receiver = %self.receiver, topic, partition, offset, order = %order,
                changelog_partition = bizpilot_business::changelog::partition_of(&order, self.sink.partitions()),
                "business event on another partition than its order's changelog partition: produce the events \
                 keyed by order id with the murmur2 partitioner, or a handover restores this order's state on the \
                 wrong replica (counted in bizpilot_kafka_receiver_changelog_misrouted_events_total; logged once)");
        }
    }

    /// Restores the changelog partitions of the newly assigned `partitions` (synchronously: the
    /// consumer delivers nothing of them until the rebalance callback returns), with the service
    /// not ready meanwhile; then writes their changes from now on.
    fn assigned(&self, partitions: &[i32]) {
        let revoked = std::mem::take(&mut *lock(&self.revoked));
        let new: Vec<i32> = partitions.iter().copied().filter(|p| !revoked.contains(p)).collect();
        if !new.is_empty() {
            let _not_ready = self.readiness.hold();
            let started = Instant::now();
            let (mut records, mut failed) = (0, Vec::new());
            let mut entries = vec![0usize; self.states.len()];
            for &p in &new {
                let one = Instant::now();
                match blocking(|| self.sink.restore_states(p, &self.states)) {
                    Ok((n, per)) => {
                        records += n;
                        for (i, r) in per.iter().enumerate() {
                            entries[i] += r.entries;
                            tracing::debug!(receiver = %self.receiver, partition = p, state = %self.ids[i],
                                entries = r.entries, unreadable = r.unreadable, detail = %r.detail,
                                "changelog partition restored");
                        }
                        tracing::debug!(receiver = %self.receiver, partition = p, records = n,
                            seconds = one.elapsed().as_secs_f64(), "changelog partition read");
                    }
                    Err(e) => {
                        self.restore_errors.increment(1);
                        tracing::error!(receiver = %self.receiver, partition = p, error = %e,
                            "changelog partition not restored: its orders are joined again as their events arrive");
                        failed.push(p);
                    }
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            self.restore_seconds.set(seconds);
            self.restored_records.increment(records as u64);
            let restored = self
                .ids
                .iter()
                .zip(&entries)
                .map(|(id, n)| format!("{id}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(receiver = %self.receiver, topic = %self.sink.topic(),
                partitions = %new.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                failed = failed.len(), records, restored = %restored, seconds,
                "state restored from the changelog");
        }
        for &p in partitions {
            self.sink.own(p);
        }
        // States whose entries belong to one partition each drop the partitions that moved away (restored by
        // their new owner), here rather than at the revocation: an eager rebalance revokes everything first.
        let owned: BTreeSet<i32> = partitions.iter().copied().collect();
        for s in &self.states {
            s.owned(&owned, self.sink.partitions());
        }
    }

    /// Stops writing the revoked partitions (their new owner writes them). Their state is kept here until the
    /// next assignment ([`PartitionedState::owned`]: `order_kpi` drops them then, `business_state` keeps them
    /// for its bound and TTL); if they come back a restore brings the newer changes.
    fn revoked(&self, partitions: &[i32], lost: bool) {
        let mut revoked = lock(&self.revoked);
        for &p in partitions {
            self.sink.disown(p);
            if !lost {
                revoked.insert(p);
            }
        }
    }
}

impl ClientContext for ConsumerCallbacks {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || !p.desired {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
                if lag >= 0 {
                    gauge!("bizpilot_kafka_consumer_lag", "receiver" => self.shared.receiver.clone(),
                        "topic" => topic.clone(), "partition" => id.to_string())
                    .set(lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = error_kind(&error);
        counter!("bizpilot_kafka_client_errors_total", "component" => format!("receiver/{}", self.shared.receiver),
            "error" => kind)
        .increment(1);
        tracing::warn!(receiver = %self.shared.receiver, error = %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for ConsumerCallbacks {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.on_revoke(base, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(receiver = %self.shared.receiver, error = %e, "consumer group rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.on_assign(base, tpl);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::trace!(receiver = %self.shared.receiver, partitions = offsets.count(), "offsets committed")
            }
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                counter!("bizpilot_kafka_receiver_commit_failures_total", "receiver" => self.shared.receiver.clone())
                    .increment(1);
                tracing::warn!(receiver = %self.shared.receiver, error = %e, "offset commit failed (retried at the next commit)");
            }
        }
    }
}

impl ConsumerCallbacks {
    fn on_assign(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let tps: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let mut st = lock(&self.shared.state);
        let mut changes = Vec::new();
        for tp in &tps {
            st.offsets.assign(tp.clone());
            st.control.entry(tp.clone()).or_default();
            if st.blocked {
                st.set_pause(tp, PAUSE_PIPELINE, true);
            }
            let paused = st.control.get(tp).is_some_and(|c| c.paused != 0);
            // Make librdkafka's pause state match ours whatever it kept from an earlier assignment.
            changes.push((tp.clone(), paused));
        }
        apply_pauses(base, &self.shared.receiver, &changes);
        drop(st);
        tracing::info!(receiver = %self.shared.receiver, partitions = %list(&tps), "partitions assigned");
        if let Some(c) = &self.changelog {
            c.assigned(&tps.iter().map(|tp| tp.partition).collect::<Vec<_>>());
        }
    }

    /// Waits for the revoked partitions' in-flight messages (at most `drain_timeout`), commits
    /// what is done, and forgets them.
    fn on_revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let tps: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let receiver = &self.shared.receiver;
        let lost = base.assignment_lost();
        if !lost {
            let deadline = Instant::now() + self.shared.drain_timeout;
            let pending = blocking(|| {
                let mut st = lock(&self.shared.state);
                loop {
                    let pending: usize = tps
                        .iter()
                        .filter_map(|tp| st.offsets.get(tp))
                        .map(|p| p.in_flight())
                        .sum();
                    let now = Instant::now();
                    if pending == 0 || now >= deadline {
                        return pending;
                    }
                    st = match self.shared.changed.wait_timeout(st, deadline - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            });
            if pending > 0 {
                tracing::warn!(receiver = %receiver, pending, partitions = %list(&tps),
                    "revoked partitions still had messages in flight after drain_timeout: the next owner reads them again");
            }
            let marks: Vec<(TopicPartition, i64)> = {
                let st = lock(&self.shared.state);
                tps.iter()
                    .filter_map(|tp| st.offsets.get(tp)?.committable().map(|o| (tp.clone(), o)))
                    .collect()
            };
            if self.shared.commit {
                commit_marks(base, receiver, &marks);
            }
        }
        let mut st = lock(&self.shared.state);
        for tp in &tps {
            st.offsets.remove(tp);
            st.control.remove(tp);
            gauge!("bizpilot_kafka_consumer_lag", "receiver" => receiver.clone(), "topic" => tp.topic.to_string(),
                "partition" => tp.partition.to_string())
            .set(0.0);
        }
        drop(st);
        self.shared.changed.notify_all();
        if let Some(c) = &self.changelog {
            c.revoked(&tps.iter().map(|tp| tp.partition).collect::<Vec<_>>(), lost);
        }
        tracing::info!(receiver = %receiver, partitions = %list(&tps), lost, "partitions revoked");
    }
}

/// Stores and synchronously commits `marks`.
fn commit_marks<C: ConsumerContext>(consumer: &impl Consumer<C>, receiver: &str, marks: &[(TopicPartition, i64)]) {
    if marks.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in marks {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o)) {
            tracing::warn!(receiver, error = %e, "cannot build the offset list");
        }
    }
    let _ = consumer.store_offsets(&tpl);
    match blocking(|| consumer.commit(&tpl, CommitMode::Sync)) {
        Ok(()) => {
            tracing::debug!(receiver, offsets = %marks.iter().map(|(tp, o)| format!("{tp}@{o}")).collect::<Vec<_>>().join(","),
                "offsets committed")
        }
        Err(e) => {
            counter!("bizpilot_kafka_receiver_commit_failures_total", "receiver" => receiver.to_string()).increment(1);
            tracing::warn!(receiver, error = %e, "offset commit failed: the uncommitted messages will be read again");
        }
    }
}

fn list(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The dead-letter producer.
struct DeadLetter {
    topic: String,
    producer: FutureProducer<ProducerCallbacks>,
}

/// Counts a producer's client errors.
pub(crate) struct ProducerCallbacks {
    pub(crate) component: String,
}

impl ClientContext for ProducerCallbacks {
    fn stats(&self, _: Statistics) {}

    fn error(&self, error: KafkaError, reason: &str) {
        counter!("bizpilot_kafka_client_errors_total", "component" => self.component.clone(), "error" => error_kind(&error))
            .increment(1);
        tracing::warn!(component = %self.component, error = %error, "kafka client error: {reason}");
    }
}

impl Receiver for KafkaReceiver {
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError> {
        let KafkaReceiver {
            cfg,
            decoder,
            signal,
            changelog,
        } = *self;
        let receiver = ctx.id.to_string();
        let output = ctx
            .output
            .get(signal)
            .cloned()
            .ok_or_else(|| ComponentError::Config(format!("no {signal} pipeline uses this receiver")))?;
        drop(ctx.output);
        let mut cc = cfg.client().client_config();
        cc.set("group.id", &cfg.group_id)
            .set("enable.auto.commit", if cfg.commit_offsets { "true" } else { "false" })
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.commit.interval.ms",
                cfg.commit_interval.get().as_millis().max(1).to_string(),
            )
            .set(
                "auto.offset.reset",
                match cfg.initial_offset {
                    InitialOffset::Earliest => "earliest",
                    InitialOffset::Latest => "latest",
                },
            )
            .set(
                "statistics.interval.ms",
                cfg.statistics_interval.get().as_millis().to_string(),
            )
            .set_log_level(crate::client::log_level(&cfg.librdkafka));
        for (k, v) in &cfg.librdkafka {
            cc.set(k, &v.0);
        }
        let shared = Arc::new(Shared {
            receiver: receiver.clone(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake: Notify::new(),
            drain_timeout: cfg.drain_timeout.get(),
            commit: cfg.commit_offsets,
        });
        let changelog = match (changelog, &cfg.changelog) {
            (Some((state, readiness)), Some(settings)) => {
                Some(ChangelogBinding::start(&cfg, settings, &receiver, state, readiness)?)
            }
            _ => None,
        };
        let consumer: StreamConsumer<ConsumerCallbacks> = cc
            .create_with_context(ConsumerCallbacks {
                shared: shared.clone(),
                changelog,
            })
            .map_err(|e| ComponentError::Other(format!("cannot create the kafka consumer: {e}")))?;
        let topics: Vec<&str> = cfg.topics.iter().map(|t| t.trim()).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ComponentError::Other(format!("cannot subscribe to {}: {e}", topics.join(", "))))?;
        let dead_letter = if cfg.dead_letter_topic.is_empty() {
            None
        } else {
            let mut pc = cfg.client().client_config();
            pc.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set_log_level(crate::client::log_level(&cfg.librdkafka));
            let producer = pc
                .create_with_context(ProducerCallbacks {
                    component: format!("receiver/{receiver}/dead_letter"),
                })
                .map_err(|e| ComponentError::Other(format!("cannot create the dead-letter producer: {e}")))?;
            Some(DeadLetter {
                topic: cfg.dead_letter_topic.clone(),
                producer,
            })
        };
        tracing::info!(receiver = %receiver, topics = %topics.join(","), group = %cfg.group_id,
            encoding = cfg.encoding.as_str(), %signal, "kafka receiver started");
        let runner = Runner {
            telemetry: ReceiverTelemetry::new(&receiver, "kafka"),
            receiver,
            consumer,
            shared,
            decoder,
            signal,
            output: Some(output),
            dead_letter,
            max_in_flight: cfg.max_in_flight,
            pipeline_wait: cfg.pipeline_wait.get(),
            drain_timeout: cfg.drain_timeout.get(),
            redelivery: cfg.redelivery.clone(),
        };
        Ok(Running::spawn(runner.run(ctx.shutdown)))
    }
}

/// The consumer task.
struct Runner {
    receiver: String,
    consumer: StreamConsumer<ConsumerCallbacks>,
    shared: Arc<Shared>,
    decoder: Decoder,
    signal: Signal,
    output: Option<Output>,
    dead_letter: Option<DeadLetter>,
    telemetry: ReceiverTelemetry,
    max_in_flight: usize,
    pipeline_wait: std::time::Duration,
    drain_timeout: std::time::Duration,
    redelivery: RedeliverySettings,
}

/// What happened to a consumed message.
enum Handled {
    Continue,
    /// The pipeline is shutting down.
    Stop,
}

impl Runner {
    async fn run(self, shutdown: CancellationToken) -> Result<(), ComponentError> {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let mut last_logged: HashMap<String, Instant> = HashMap::new();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.maintain();
            let handled = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.shared.wake.notified() => Handled::Continue,
                _ = tick.tick() => Handled::Continue,
                m = self.consumer.recv() => match m {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => {
                        self.consume_error(&e, &mut last_logged);
                        Handled::Continue
                    }
                },
            };
            if let Handled::Stop = handled {
                break;
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Counts a consume error (unknown topic, broker down…) and logs it at most every 10 s per kind.
    fn consume_error(&self, e: &KafkaError, last_logged: &mut HashMap<String, Instant>) {
        let kind = error_kind(e);
        counter!("bizpilot_kafka_receiver_consume_errors_total", "receiver" => self.receiver.clone(),
            "error" => kind.clone())
        .increment(1);
        let now = Instant::now();
        if last_logged
            .get(&kind)
            .is_none_or(|t| now.duration_since(*t) >= std::time::Duration::from_secs(10))
        {
            last_logged.insert(kind, now);
            tracing::warn!(receiver = %self.receiver, error = %e, "kafka consume error");
        }
    }

    /// Decodes a message and hands it to the pipeline (or to the dead-letter topic).
    async fn handle(&self, msg: BorrowedMessage<'_>) -> Handled {
        let tp = TopicPartition::new(msg.topic(), msg.partition());
        let offset = msg.offset();
        counter!("bizpilot_kafka_receiver_messages_total", "receiver" => self.receiver.clone(),
            "topic" => tp.topic.to_string())
        .increment(1);
        let traceparent = msg.headers().and_then(|h| {
            (0..h.count())
                .filter_map(|i| h.try_get(i))
                .find(|x| x.key.eq_ignore_ascii_case("traceparent"))
                .and_then(|x| x.value.and_then(TraceParent::parse))
        });
        let meta = MessageMeta {
            timestamp_unix_nano: msg
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| ms.saturating_mul(1_000_000)),
            traceparent,
            now_unix_nano: now_unix_nanos(),
        };
        match self.decoder.decode(msg.payload(), &meta) {
            Ok(payload) => {
                if let Some(changelog) = &self.consumer.context().changelog {
                    changelog.check_routing(&tp.topic, tp.partition, offset, &payload);
                }
                drop(msg);
                self.deliver(tp, offset, payload).await
            }
            Err(e) => {
                counter!("bizpilot_kafka_receiver_bad_messages_total", "receiver" => self.receiver.clone(),
                    "topic" => tp.topic.to_string(), "reason" => e.reason)
                .increment(1);
                tracing::warn!(receiver = %self.receiver, topic = %tp.topic, partition = tp.partition, offset,
                    reason = e.reason, error = %e, dead_letter = self.dead_letter.is_some(), "bad message");
                let ticket = lock(&self.shared.state).offsets.track(&tp, offset);
                match &self.dead_letter {
                    None => self.shared.resolve(&ticket, true),
                    Some(dl) => self.dead_letter(dl, &msg, ticket, &e.to_string()),
                }
                Handled::Continue
            }
        }
    }

    /// Produces a bad message to the dead-letter topic; its offset is done when that succeeded.
    fn dead_letter(&self, dl: &DeadLetter, msg: &BorrowedMessage<'_>, ticket: Ticket, error: &str) {
        let mut headers = msg.headers().map(|h| h.detach()).unwrap_or_default();
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        for (k, v) in [
            ("bizpilot.error", error),
            ("bizpilot.source.topic", msg.topic()),
            ("bizpilot.source.partition", partition.as_str()),
            ("bizpilot.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dl.topic).headers(headers);
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        let shared = self.shared.clone();
        let receiver = self.receiver.clone();
        let topic = ticket.tp.topic.to_string();
        match dl.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    let ok = matches!(delivery.await, Ok(Ok(_)));
                    if ok {
                        counter!("bizpilot_kafka_receiver_dead_lettered_total", "receiver" => receiver, "topic" => topic)
                            .increment(1);
                    } else {
                        tracing::warn!(receiver = %receiver, topic = %topic, offset = ticket.offset,
                            "dead-letter produce failed: the message will be read again");
                    }
                    shared.resolve(&ticket, ok);
                });
            }
            Err((e, _)) => {
                tracing::warn!(receiver = %receiver, error = %e, "dead-letter produce failed: the message will be read again");
                shared.resolve(&ticket, false);
            }
        }
    }

    async fn deliver(&self, tp: TopicPartition, offset: i64, payload: Payload) -> Handled {
        let items = payload.items();
        let ticket = {
            let mut st = lock(&self.shared.state);
            let t = st.offsets.track(&tp, offset);
            if st.offsets.get(&tp).is_some_and(|p| p.in_flight() >= self.max_in_flight)
                && let Some(change) = st.set_pause(&tp, PAUSE_CAP, true)
            {
                apply_pauses(&self.consumer, &self.receiver, &[(tp.clone(), change)]);
            }
            t
        };
        if items == 0 {
            self.shared.resolve(&ticket, true);
            return Handled::Continue;
        }
        let Some(output) = &self.output else {
            return Handled::Stop;
        };
        let batch = Batch::with_ack(payload, self.shared.ack(ticket));
        match output.send_with_deadline(batch, self.pipeline_wait).await {
            Ok(()) => {
                self.telemetry.accepted(self.signal, items);
                Handled::Continue
            }
            Err(refusal) => {
                self.telemetry.refusal(self.signal, items, &refusal);
                let mut st = lock(&self.shared.state);
                if let Some(p) = st.offsets.get_mut(&tp) {
                    p.rewind_to(offset);
                }
                if refusal == Refusal::ShuttingDown {
                    return Handled::Stop;
                }
                // Pause everything, then seek this partition back to the refused message.
                st.blocked = true;
                let tps: Vec<TopicPartition> = st.control.keys().cloned().collect();
                let changes: Vec<(TopicPartition, bool)> = tps
                    .into_iter()
                    .filter_map(|t| st.set_pause(&t, PAUSE_PIPELINE, true).map(|c| (t, c)))
                    .collect();
                apply_pauses(&self.consumer, &self.receiver, &changes);
                self.seek(&tp, offset);
                tracing::debug!(receiver = %self.receiver, %tp, offset, reason = %refusal,
                    "pipeline refused a message: consumption paused");
                Handled::Continue
            }
        }
    }

    fn seek(&self, tp: &TopicPartition, offset: i64) {
        // Asynchronous: ordered after the pause issued before it, so fetching restarts at `offset`.
        if let Err(e) = self.consumer.seek(
            &tp.topic,
            tp.partition,
            Offset::Offset(offset),
            std::time::Duration::ZERO,
        ) {
            tracing::warn!(receiver = %self.receiver, %tp, offset, error = %e, "cannot seek back");
        }
    }

    /// Stores low-water marks, rewinds failed partitions, and pauses or resumes partitions.
    fn maintain(&self) {
        let now = Instant::now();
        let mut st = lock(&self.shared.state);
        let mut changes: Vec<(TopicPartition, bool)> = Vec::new();
        // Failed deliveries: pause, seek back, resume after the backoff.
        let failed: Vec<(TopicPartition, i64)> = st
            .offsets
            .partitions_mut()
            .filter_map(|(tp, p)| p.rewind().map(|o| (tp.clone(), o)))
            .collect();
        for (tp, offset) in &failed {
            let c = st.control.entry(tp.clone()).or_default();
            c.failures = c.failures.saturating_add(1);
            c.last_failed = Some(*offset);
            let delay = self.redelivery.delay(c.failures);
            c.resume_at = Some(now + delay);
            let attempt = c.failures;
            if let Some(ch) = st.set_pause(tp, PAUSE_BACKOFF, true) {
                changes.push((tp.clone(), ch));
            }
            counter!("bizpilot_kafka_receiver_redeliveries_total", "receiver" => self.receiver.clone(),
                "topic" => tp.topic.to_string())
            .increment(1);
            tracing::warn!(receiver = %self.receiver, topic = %tp.topic, partition = tp.partition, offset,
                attempt, "delivery failed: the partition is read again from this offset in {delay:?}");
        }
        if !changes.is_empty() {
            apply_pauses(&self.consumer, &self.receiver, &changes);
            changes.clear();
        }
        for (tp, offset) in &failed {
            self.seek(tp, *offset);
        }
        // Store the marks that moved.
        let marks = st.offsets.to_store();
        if !marks.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (tp, o) in &marks {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o));
            }
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => {
                    for (tp, o) in &marks {
                        if let Some(p) = st.offsets.get_mut(tp) {
                            p.set_stored(*o);
                        }
                    }
                }
                Err(e) => tracing::debug!(receiver = %self.receiver, error = %e, "cannot store offsets yet"),
            }
        }
        // Backoffs that ended, failure streaks that were overcome, in-flight caps with room again.
        let half = (self.max_in_flight / 2).max(1);
        let tps: Vec<TopicPartition> = st.control.keys().cloned().collect();
        for tp in tps {
            let mark = st.offsets.get(&tp).and_then(|p| p.committable());
            let in_flight = st.offsets.get(&tp).map_or(0, |p| p.in_flight());
            let Some(c) = st.control.get_mut(&tp) else { continue };
            if c.last_failed.is_some_and(|f| mark.is_some_and(|m| m > f)) {
                c.failures = 0;
                c.last_failed = None;
            }
            let backoff_over = c.resume_at.is_some_and(|t| t <= now);
            if backoff_over {
                c.resume_at = None;
            }
            let cap_room = c.paused & PAUSE_CAP != 0 && in_flight <= half;
            if backoff_over && let Some(ch) = st.set_pause(&tp, PAUSE_BACKOFF, false) {
                changes.push((tp.clone(), ch));
            }
            if cap_room && let Some(ch) = st.set_pause(&tp, PAUSE_CAP, false) {
                changes.push((tp.clone(), ch));
            }
        }
        if st.blocked
            && let Some(out) = &self.output
            && out.admit().is_ok()
            && out.free_slots() > 0
        {
            st.blocked = false;
            let tps: Vec<TopicPartition> = st.control.keys().cloned().collect();
            for tp in tps {
                if let Some(ch) = st.set_pause(&tp, PAUSE_PIPELINE, false) {
                    changes.push((tp, ch));
                }
            }
            tracing::debug!(receiver = %self.receiver, "pipeline has room again: consumption resumed");
        }
        apply_pauses(&self.consumer, &self.receiver, &changes);
        gauge!("bizpilot_kafka_receiver_in_flight_messages", "receiver" => self.receiver.clone())
            .set(st.offsets.in_flight() as f64);
        gauge!("bizpilot_kafka_receiver_paused_partitions", "receiver" => self.receiver.clone())
            .set(st.paused_count() as f64);
    }

    /// Stops consuming, releases the pipeline, waits for in-flight messages, commits, leaves the group.
    async fn stop(mut self) {
        {
            let mut st = lock(&self.shared.state);
            let tps: Vec<TopicPartition> = st.control.keys().cloned().collect();
            let changes: Vec<(TopicPartition, bool)> = tps
                .into_iter()
                .filter_map(|t| st.set_pause(&t, PAUSE_STOP, true).map(|c| (t, c)))
                .collect();
            apply_pauses(&self.consumer, &self.receiver, &changes);
        }
        // Downstream sees its input close once every receiver let go, and drains.
        self.output = None;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        loop {
            let pending = lock(&self.shared.state).offsets.in_flight();
            if pending == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(receiver = %self.receiver, pending,
                    "shutdown: messages still in flight after drain_timeout are read again at the next start");
                break;
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let marks: Vec<(TopicPartition, i64)> = {
            let st = lock(&self.shared.state);
            st.offsets
                .partitions()
                .filter_map(|(tp, p)| p.committable().map(|o| (tp.clone(), o)))
                .collect()
        };
        if self.shared.commit {
            commit_marks(&self.consumer, &self.receiver, &marks);
        }
        let Runner {
            consumer,
            dead_letter,
            receiver,
            ..
        } = self;
        blocking(move || {
            if let Some(dl) = &dead_letter {
                let _ = rdkafka::producer::Producer::flush(&dl.producer, std::time::Duration::from_secs(5));
            }
            drop(dead_letter);
            drop(consumer);
        });
        tracing::info!(receiver = %receiver, "kafka receiver stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::parse_config;

    fn parse(yaml: &str) -> Result<KafkaReceiverConfig, Vec<FieldError>> {
        parse_config::<KafkaReceiverConfig>(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn an_event_on_another_partition_than_its_changelog_partition_is_found() {
        use bizpilot_business::changelog::partition_of;
        let event = |order: &str| {
            let json = format!(r#"{{"type":"order.placed","order_id":"{order}","customer_id":"c-1"}}"#);
            let meta = MessageMeta {
                timestamp_unix_nano: Some(1_000),
                traceparent: None,
                now_unix_nano: 2_000,
            };
            Decoder::BusinessJson(BusinessMapping::default())
                .decode(Some(json.as_bytes()), &meta)
                .unwrap()
        };
        let home = partition_of("o-17", 4);
        assert_eq!(misrouted_order(&event("o-17"), home, 4), None, "its own partition");
        assert_eq!(
            misrouted_order(&event("o-17"), (home + 1) % 4, 4).as_deref(),
            Some("o-17"),
            "another partition"
        );
        let no_order = Decoder::BusinessJson(BusinessMapping::default())
            .decode(
                Some(br#"{"type":"customer.updated","customer_id":"c-1"}"#),
                &MessageMeta {
                    timestamp_unix_nano: Some(1_000),
                    traceparent: None,
                    now_unix_nano: 2_000,
                },
            )
            .unwrap();
        assert_eq!(misrouted_order(&no_order, 0, 4), None, "no order id: nothing to check");
    }

    fn paths(yaml: &str) -> Vec<String> {
        parse(yaml).unwrap_err().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn defaults_and_a_full_config() {
        let c = parse("topics: [t]").unwrap();
        assert_eq!(c.brokers, vec!["localhost:9092"]);
        assert_eq!(c.initial_offset, InitialOffset::Latest);
        assert_eq!(c.encoding, ReceiverEncoding::OtlpProto);
        assert_eq!(c.max_in_flight, 1000);
        assert!(c.commit_offsets, "offsets are committed unless asked not to");
        assert!(!parse("topics: [t]\ncommit_offsets: false").unwrap().commit_offsets);
        let c = parse(
            r#"
brokers: [k1:9092, k2:9092]
topics: [orders, "^shop\\..*"]
group_id: g
initial_offset: earliest
encoding: business_json
business: {event_type: kind, default_currency: EUR}
max_in_flight: 10
pipeline_wait: 200ms
redelivery: {initial_interval: 1s, max_interval: 1m}
dead_letter_topic: orders.dlq
sasl: {mechanism: PLAIN, username: u, password: p}
tls: {ca_file: /ca.pem}
librdkafka: {session.timeout.ms: 6000, check.crcs: true}
"#,
        )
        .unwrap();
        assert_eq!(c.business.event_type, "kind");
        assert_eq!(
            c.librdkafka.get("session.timeout.ms"),
            Some(&PropertyValue("6000".into()))
        );
        assert_eq!(c.redelivery.max_interval, Duration::from_secs(60));
    }

    #[test]
    fn a_changelog_is_validated_with_its_paths() {
        let ok = parse(
            "{topics: [shop.orders], encoding: business_json, changelog: {topic: shop.orders.state, state: business_state}}",
        )
        .unwrap();
        let c = ok.changelog.unwrap();
        assert_eq!(
            (c.topic.as_str(), c.state.as_slice()),
            ("shop.orders.state", &["business_state".to_string()][..])
        );
        let two =
            parse("{topics: [o], encoding: business_json, changelog: {topic: c, state: [business_state, order_kpi]}}")
                .unwrap();
        assert_eq!(two.changelog.unwrap().state, ["business_state", "order_kpi"]);
        assert_eq!(
            paths(
                "{topics: [o], encoding: business_json, changelog: {topic: c, state: [business_state, '1x', business_state]}}"
            ),
            ["changelog.state[1]", "changelog.state[2]"]
        );
        assert_eq!(c.timeout.get(), std::time::Duration::from_secs(60));
        assert_eq!(
            paths(
                "{topics: [a, b], encoding: otlp_proto, changelog: {topic: a, state: '', timeout: 0s, \
                 librdkafka: {acks: '1', batch.num.messages: 1}}}"
            ),
            [
                "changelog",
                "changelog",
                "changelog.topic",
                "changelog.state",
                "changelog.timeout",
                "changelog.librdkafka.acks"
            ]
        );
        assert_eq!(
            paths("{topics: [o], encoding: business_json, changelog: {state: business_state}}"),
            ["changelog.topic"]
        );
        assert_eq!(
            paths("{topics: [o], encoding: business_json, changelog: {topic: c, state: b, tpoic: x}}").len(),
            1,
            "unknown keys are refused"
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        assert_eq!(
            paths(
                r#"
brokers: []
topics: ["", "^(unclosed"]
group_id: ""
encoding: business_json
signal: traces
business: {event_type: "", default_currency: EURO}
max_in_flight: 0
redelivery: {initial_interval: 2s, max_interval: 1s}
dead_letter_topic: "^x"
librdkafka: {enable.auto.offset.store: true, bootstrap.servers: x:1}
"#
            ),
            [
                "brokers",
                "librdkafka.bootstrap.servers",
                "librdkafka.enable.auto.offset.store",
                "topics[0]",
                "topics[1]",
                "group_id",
                "signal",
                "business.event_type",
                "business.default_currency",
                "max_in_flight",
                "redelivery.max_interval",
                "dead_letter_topic"
            ]
        );
        assert_eq!(
            paths("topics: [t]\nencoding: protobuf"),
            ["protobuf.descriptor_set_file", "protobuf.message"]
        );
        assert_eq!(paths("topics: [t]\nsignal: spans"), ["signal"]);
        assert_eq!(paths("topics: [t]\ndead_letter_topic: t"), ["dead_letter_topic"]);
        assert_eq!(
            paths("topics: [\"^orders.*\"]\ndead_letter_topic: orders.dlq"),
            ["dead_letter_topic"]
        );
        assert_eq!(paths("topics: [t]\nencodng: otlp_json"), ["encodng"]);
        assert_eq!(paths("topics: [t]\nencoding: avro"), ["encoding"]);
    }

    #[test]
    fn redelivery_backoff_grows_to_the_limit() {
        let r = RedeliverySettings {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
        };
        let ms = |n| r.delay(n).as_millis();
        assert!((80..=120).contains(&ms(1)), "{}", ms(1));
        assert!((320..=480).contains(&ms(3)), "{}", ms(3));
        assert!(ms(10) <= 1000);
        assert!(ms(60) <= 1000);
    }
}
