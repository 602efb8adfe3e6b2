//! The changelog of partitioned state on Kafka (`business_state`, `order_kpi`): a compacted topic partitioned like the business
//! events topic (`docs/partition-state.md`). [`KafkaChangelog`] is a
//! [`ChangelogSink`]: a checkpoint's changes are produced to their partitions (explicitly, routed by
//! [`bizpilot_business::changelog`]) and the call returns only once every record is acknowledged
//! (`acks=all`, idempotent producer), so the epoch that gates the events' offset commit is
//! committed only when its changes are in the changelog. [`KafkaChangelog::restore`] reads one
//! changelog partition from its beginning to the high watermark it had when the read started and
//! applies it ([`bizpilot_business::BusinessState::apply_changelog`]).
//!
//! Create the topic beforehand, like the other topics: `cleanup.policy=compact` and as many
//! partitions as the business events topic.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bizpilot_business::BusinessState;
use bizpilot_business::changelog::{
    ChangelogError, ChangelogRecord, ChangelogSink, PartitionRestored, PartitionedState, RawRecord,
};
use bizpilot_business::checkpoint::Restored;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Counts failed deliveries (a checkpoint fails if any of its records failed).
struct Deliveries(Arc<AtomicUsize>);

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            tracing::warn!(error = %e, "business state changelog record not delivered");
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A changelog topic of partitioned state (`business_state`, `order_kpi`; several may share it).
pub struct KafkaChangelog {
    topic: String,
    bootstrap: String,
    /// Connection and security settings (of the restore consumers too).
    base: ClientConfig,
    partitions: i32,
    timeout: Duration,
    producer: BaseProducer<Deliveries>,
    failures: Arc<AtomicUsize>,
    /// With [`KafkaChangelog::restrict_to_owned`]: the partitions this replica owns; records of
    /// other partitions are not written (their new owner writes them).
    owned: Mutex<Option<BTreeSet<i32>>>,
    skipped: AtomicUsize,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("topic", &self.topic)
            .field("bootstrap", &self.bootstrap)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// What [`KafkaChangelog::restore`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartitionRestore {
    /// Records read (puts and tombstones).
    pub records: usize,
    pub restored: Restored,
    pub seconds: f64,
}

impl KafkaChangelog {
    /// Connects to `bootstrap` and reads `topic`'s partition count; a missing topic is an error.
    /// `timeout` bounds a produce's acknowledgement and a restore; `producer` are further librdkafka
    /// properties of the producer (security settings, batching).
    pub fn new(
        bootstrap: &str,
        topic: &str,
        timeout: Duration,
        producer: &[(&str, &str)],
    ) -> Result<Self, ChangelogError> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", bootstrap);
        Self::with_client(base, topic, timeout, producer)
    }

    /// [`KafkaChangelog::new`] with the connection and security settings of `base` (a component's
    /// client settings: brokers, client id, TLS, SASL), used by the producer and the restore reads.
    pub fn with_client(
        base: ClientConfig,
        topic: &str,
        timeout: Duration,
        producer: &[(&str, &str)],
    ) -> Result<Self, ChangelogError> {
        let err = |reason: String| ChangelogError::Produce {
            topic: topic.to_string(),
            reason,
        };
        let failures = Arc::new(AtomicUsize::new(0));
        let mut config = base.clone();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        for (k, v) in producer {
            config.set(*k, *v);
        }
        let producer: BaseProducer<Deliveries> = config
            .create_with_context(Deliveries(failures.clone()))
            .map_err(|e| err(e.to_string()))?;
        let md = producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| err(e.to_string()))?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            return Err(err(
                "topic not found: create it beforehand (cleanup.policy=compact, as many partitions as the events topic)"
                    .into(),
            ));
        }
        Ok(KafkaChangelog {
            topic: topic.to_string(),
            bootstrap: base.get("bootstrap.servers").unwrap_or_default().to_string(),
            base,
            partitions,
            timeout,
            producer,
            failures,
            owned: Mutex::new(None),
            skipped: AtomicUsize::new(0),
        })
    }

    /// From now on, write only the records of partitions marked [`KafkaChangelog::own`]ed (none
    /// yet): a replica in a consumer group writes the partitions it consumes, never one that moved
    /// to another replica (whose changes, expiries included, are the new owner's to write).
    pub fn restrict_to_owned(&self) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        owned.get_or_insert_with(BTreeSet::new);
    }

    /// Marks `partition` owned (its records are written).
    pub fn own(&self, partition: i32) {
        if let Some(o) = self.owned.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            o.insert(partition);
        }
    }

    /// Marks `partition` not owned (its records are no longer written).
    pub fn disown(&self, partition: i32) {
        if let Some(o) = self.owned.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            o.remove(&partition);
        }
    }

    /// Records not written because their partition is not owned, so far.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads changelog partition `partition` from its beginning to its high watermark (as of the
    /// start of the read) and applies it to `state`. Blocking; `timeout` bounds it.
    pub fn restore(&self, partition: i32, state: &BusinessState) -> Result<PartitionRestore, ChangelogError> {
        let started = Instant::now();
        let records = self.read(partition)?;
        let n = records.len();
        let restored = state.apply_changelog(records);
        Ok(PartitionRestore {
            records: n,
            restored,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Reads changelog partition `partition` once and gives each of `states` its records (by
    /// [`PartitionedState::owns_key`]; a record no state owns is counted as unreadable). Blocking; `timeout`
    /// bounds the read. Returns the records read and what each state put back.
    pub fn restore_states(
        &self,
        partition: i32,
        states: &[Arc<dyn PartitionedState>],
    ) -> Result<(usize, Vec<PartitionRestored>), ChangelogError> {
        let records = self.read(partition)?;
        let n = records.len();
        let mut per: Vec<Vec<RawRecord>> = states.iter().map(|_| Vec::new()).collect();
        let mut stray = 0;
        for (k, v) in records {
            match states.iter().position(|s| s.owns_key(&k)) {
                Some(i) => per[i].push((k, v)),
                None => stray += 1,
            }
        }
        if stray > 0 {
            tracing::warn!(topic = %self.topic, partition, records = stray,
                "changelog records of no configured state, skipped");
        }
        let mut out: Vec<PartitionRestored> = states
            .iter()
            .zip(per)
            .map(|(s, recs)| s.restore_partition(partition, recs))
            .collect();
        if let Some(first) = out.first_mut() {
            first.unreadable += stray;
        }
        Ok((n, out))
    }

    /// The records (key, value or `None` for a tombstone) of changelog partition `partition`, from its
    /// beginning to its high watermark as of the start of the read, in write order.
    pub fn read(&self, partition: i32) -> Result<Vec<RawRecord>, ChangelogError> {
        let started = Instant::now();
        let err = |reason: String| ChangelogError::Restore {
            topic: self.topic.clone(),
            partition,
            reason,
        };
        let consumer: BaseConsumer = self
            .base
            .clone()
            // Assigned, never subscribed or committed: the group id only satisfies the client.
            .set("group.id", "bizpilot-business-state-restore")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| err(e.to_string()))?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)
            .map_err(|e| err(e.to_string()))?;
        let mut records = Vec::new();
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
                .map_err(|e| err(e.to_string()))?;
            consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
            let deadline = started + self.timeout;
            let mut last = low - 1;
            while last < high - 1 {
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "read to offset {last} of {high} within {:?}",
                        self.timeout
                    )));
                }
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        last = m.offset();
                        if m.offset() >= high {
                            break;
                        }
                        if let Some(k) = m.key() {
                            records.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                        }
                    }
                    Some(Err(e)) => tracing::debug!(topic = %self.topic, partition, error = %e, "changelog read"),
                    None => {}
                }
            }
        }
        Ok(records)
    }
}

impl ChangelogSink for KafkaChangelog {
    fn partitions(&self) -> i32 {
        self.partitions
    }

    fn send(&self, records: &[ChangelogRecord]) -> Result<(), ChangelogError> {
        let err = |reason: String| ChangelogError::Produce {
            topic: self.topic.clone(),
            reason,
        };
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let all = records.len();
        let records: Vec<&ChangelogRecord> = match &owned {
            None => records.iter().collect(),
            Some(owned) => records.iter().filter(|r| owned.contains(&r.partition)).collect(),
        };
        if records.len() < all {
            self.skipped.fetch_add(all - records.len(), Ordering::Relaxed);
        }
        let before = self.failures.load(Ordering::SeqCst);
        let deadline = Instant::now() + self.timeout;
        for r in &records {
            let mut rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topic).partition(r.partition).key(r.key.as_slice());
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_slice());
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) if Instant::now() < deadline => {
                        rec = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(err(e.to_string())),
                }
            }
        }
        self.producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| err(format!("not acknowledged in time: {e}")))?;
        let failed = self.failures.load(Ordering::SeqCst) - before;
        if failed > 0 {
            return Err(err(format!("{failed} of {} records not delivered", records.len())));
        }
        Ok(())
    }
}
