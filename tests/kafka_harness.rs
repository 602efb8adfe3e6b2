//! Kafka test harness: a real Kafka-protocol broker (`tansu`, in-memory storage) started on a
//! free loopback port and stopped by PID, plus blocking helpers to create topics, produce and
//! read messages with librdkafka.
//!
//! `tansu` is installed by `.ci/prereq-kafka.sh` (`cargo install tansu --features dynostore`);
//! set `TANSU` to use another binary.
//!
//! tansu 0.6 answers a fetch only with record batches that *start* at or after the requested
//! offset, so a consumer resuming in the middle of a multi-record batch would miss the rest of
//! it (a broker limitation that would pass for message loss). The test producer therefore
//! writes one record per batch (`batch.num.messages=1`); readers start at batch boundaries.
//!
//! tansu's port comes from `tests/common`'s allocator (`free_port`, see "Ports" there), so a test including this
//! file includes `tests/common` as `mod common` too.
#![allow(dead_code)]

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `tansu` binary: `$TANSU`, else on `PATH`, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TANSU") {
        candidates.push(PathBuf::from(p));
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
        }
        if let Some(home) = std::env::var_os("CARGO_HOME") {
            candidates.push(PathBuf::from(home).join("bin/tansu"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the Kafka tests need the `tansu` broker, which was not found (TANSU, PATH, ~/.cargo/bin): \
             run `bash .ci/prereq-kafka.sh` (cargo install tansu --features dynostore) or set TANSU=/path/to/tansu"
        )
    })
}

/// A tansu broker with in-memory storage, stopped (by PID) when dropped.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    pub bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = tansu_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        for _attempt in 0..5 {
            let port = crate::common::free_port();
            let log = dir.path().join(format!("tansu-{port}.log"));
            let out = std::fs::File::create(&log).expect("tansu log file");
            let err = out.try_clone().expect("tansu log file");
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .arg("broker")
                .arg("--listener-url")
                .arg(&url)
                .arg("--advertised-listener-url")
                .arg(&url)
                .arg("--storage-engine")
                .arg("memory://tansu/")
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut t = Tansu {
                child: Some(child),
                port,
                bootstrap: format!("127.0.0.1:{port}"),
                log,
                _dir: tempfile::tempdir().expect("tempdir"),
            };
            let addr: SocketAddr = t.bootstrap.parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Some(c) = t.child.as_mut()
                    && let Ok(Some(_)) = c.try_wait()
                {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    t._dir = dir;
                    return t;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("tansu did not start on port {port}:\n{}", t.logs());
        }
        panic!("tansu did not start after 5 attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends the broker a signal by PID with kill(1) (`STOP`, `CONT`: pause and resume it).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} tansu failed");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a future on a fresh single-threaded runtime in its own thread (usable from async tests).
fn run_async<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("helper thread")
}

/// Creates topics with `partitions` partitions each.
pub fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) {
    let bootstrap = bootstrap.to_string();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    run_async(async move {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = admin.create_topics(new.iter(), &opts).await.expect("create topics");
        for r in res {
            if let Err((t, e)) = r {
                assert_eq!(
                    e,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "cannot create topic {t}: {e}"
                );
            }
        }
    });
}

/// A message to produce.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    pub fn value(v: impl Into<Vec<u8>>) -> Msg {
        Msg {
            value: v.into(),
            ..Default::default()
        }
    }
    pub fn keyed(k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) -> Msg {
        Msg {
            key: Some(k.into()),
            value: v.into(),
            ..Default::default()
        }
    }
}

struct CountFailures(Arc<AtomicUsize>);

impl rdkafka::ClientContext for CountFailures {}

impl ProducerContext for CountFailures {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("test producer: delivery failed: {e}");
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Produces `msgs` (murmur2_random partitioner, like the Java client), waiting for every delivery.
pub fn produce(bootstrap: &str, topic: &str, msgs: &[Msg]) {
    let failures = Arc::new(AtomicUsize::new(0));
    let producer: BaseProducer<CountFailures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create_with_context(CountFailures(failures.clone()))
        .expect("producer");
    for m in msgs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(m.value.as_slice()).headers(headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_slice());
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert_eq!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "produce failed"
                    );
                    rec = r;
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush the test producer");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "test messages not delivered");
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Number of partitions of `topic`.
pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0)
}

/// Reads `topic` from the beginning (every partition, no consumer group) until at least `min` messages were read,
/// every partition was read to its high watermark (its end, asked of the broker) and the high watermarks did not
/// move for `quiet`; or until `timeout` passed.
///
/// The end is known, not guessed from a pause: a slow broker (tansu serving one record per batch to a loaded
/// machine) can pause longer than any idle limit, but it cannot make the reader stop short of the end. `quiet`
/// only waits out writers that are still producing (their messages move the high watermark).
///
/// A reader session that gets nothing for `STALL` while it is behind is replaced by a new one that resumes after
/// the last message of each partition: tansu sometimes stops answering one consumer's fetches of a backlog (seen on
/// a loaded machine, with other consumers busy on other topics of the same broker), while a new consumer reads on.
pub fn read_topic(bootstrap: &str, topic: &str, min: usize, quiet: Duration, timeout: Duration) -> Vec<Record> {
    const STALL: Duration = Duration::from_secs(3);
    let n = partition_count(bootstrap, topic);
    let mut next: Vec<Offset> = (0..n).map(|_| Offset::Beginning).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut last_new = Instant::now();
    // The partitions' (low, high) watermarks and since when they have been as they are.
    let mut ends: Option<(Vec<(i64, i64)>, Instant)> = None;
    let mut sessions = 0;
    'session: while Instant::now() < deadline {
        sessions += 1;
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bizpilot-test-reader")
            .set("enable.auto.commit", "false")
            // tansu holds every fetch answer for half of this wait even when it has records (tansu-storage 0.6
            // `service/fetch.rs`): librdkafka's 500 ms made a 2,021-record read take 5.3 s alone, 10 ms 1.4 s.
            .set("fetch.wait.max.ms", "10")
            // The end read to is the high watermark; a read_committed reader (librdkafka's default) stops at the
            // last stable offset, which tansu 0.6 computes from transaction state it keeps (tansu-storage
            // `offset_stage`). No bizpilot producer is transactional, so both read the same records.
            .set("isolation.level", "read_uncommitted")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next.iter().enumerate() {
            tpl.add_partition_offset(topic, p as i32, *o).expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(slot) = usize::try_from(m.partition()).ok().and_then(|p| next.get_mut(p)) {
                        *slot = Offset::Offset(m.offset() + 1);
                    }
                    out.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        headers: m
                            .headers()
                            .map(|h| {
                                (0..h.count())
                                    .filter_map(|i| h.try_get(i))
                                    .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                    last_new = Instant::now();
                }
                Some(Err(e)) => eprintln!("test reader: {e}"),
                None => {
                    // The consumer's position also moves past offsets that carry no message (transaction markers).
                    if let Ok(pos) = c.position() {
                        for (p, slot) in next.iter_mut().enumerate() {
                            if let Some(Offset::Offset(o)) = pos.find_partition(topic, p as i32).map(|e| e.offset())
                                && !matches!(*slot, Offset::Offset(s) if s >= o)
                            {
                                *slot = Offset::Offset(o);
                            }
                        }
                    }
                    if out.len() >= min && at_end(&next, ends.as_ref().map(|(w, _)| w.as_slice())) {
                        // At the ends as last asked: ask again; done once they have stood still for `quiet`.
                        let now = watermarks(&c, topic, n);
                        match &ends {
                            Some((w, since)) if *w == now => {
                                if since.elapsed() >= quiet {
                                    break 'session;
                                }
                            }
                            _ => ends = Some((now, Instant::now())),
                        }
                        continue;
                    }
                    if ends.is_none() && out.len() >= min {
                        ends = Some((watermarks(&c, topic, n), Instant::now()));
                        continue;
                    }
                    if last_new.elapsed() >= STALL {
                        eprintln!(
                            "test reader: {topic}: session {sessions} stalled with {} messages read; (low, high) \
                             watermarks {:?}, positions {next:?}",
                            out.len(),
                            watermarks(&c, topic, n)
                        );
                        last_new = Instant::now();
                        continue 'session;
                    }
                }
            }
        }
    }
    if sessions > 1 {
        eprintln!("test reader: {topic}: {} messages in {sessions} sessions", out.len());
    }
    out
}

/// The (low, high) watermarks of `topic`'s `n` partitions (`(-1, -1)` for one the broker did not answer).
fn watermarks(c: &BaseConsumer, topic: &str, n: i32) -> Vec<(i64, i64)> {
    (0..n)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or((-1, -1))
        })
        .collect()
}

/// Whether the positions `next` are at the high watermarks `ends` (a partition not read yet is there when it is
/// empty); `false` without watermarks or for a partition whose watermarks are unknown.
fn at_end(next: &[Offset], ends: Option<&[(i64, i64)]>) -> bool {
    let Some(ends) = ends else { return false };
    next.len() == ends.len()
        && next.iter().zip(ends).all(|(o, &(low, high))| {
            high >= 0
                && match o {
                    Offset::Offset(o) => *o >= high,
                    _ => high <= low,
                }
        })
}

/// Waits until `group`'s committed offsets of `topic` add up to at least `total` (every record consumed and
/// committed); panics after `timeout` with the offsets and `context()` (e.g. the consumer's logs).
pub fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    total: usize,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let offsets = committed(bootstrap, group, topic);
        if offsets.iter().sum::<i64>() >= total as i64 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {offsets:?} of {total} records of {topic}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The committed offsets of `group` for `topic`'s partitions (`-1` = none).
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let n = partition_count(bootstrap, topic);
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..n)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// What the `kafka` receivers of a bizpilot process hold now, read from its JSON log (`service.telemetry.logs.
/// encoding: json`): receiver id → (topic, partition) of its latest "partitions assigned" (empty after a
/// "partitions revoked"), and how many assignments each receiver logged so far.
pub fn receiver_assignments(
    logs: &str,
) -> std::collections::BTreeMap<String, (std::collections::BTreeSet<(String, i32)>, usize)> {
    let mut out: std::collections::BTreeMap<String, (std::collections::BTreeSet<(String, i32)>, usize)> =
        std::collections::BTreeMap::new();
    for line in logs.lines().filter(|l| l.contains("\"partitions ")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        let (Some(msg), Some(receiver)) = (f["message"].as_str(), f["receiver"].as_str()) else {
            continue;
        };
        let entry = out.entry(receiver.to_string()).or_default();
        match msg {
            "partitions assigned" => {
                entry.0 = f["partitions"]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|tp| {
                        let (topic, p) = tp.trim().strip_suffix(']')?.rsplit_once('[')?;
                        Some((topic.to_string(), p.parse().ok()?))
                    })
                    .collect();
                entry.1 += 1;
            }
            "partitions revoked" => entry.0.clear(),
            _ => {}
        }
    }
    out
}

/// The partition numbers `receiver` holds now (see [`receiver_assignments`]).
pub fn held_partitions(logs: &str, receiver: &str) -> std::collections::BTreeSet<i32> {
    receiver_assignments(logs)
        .get(receiver)
        .map(|(tps, _)| tps.iter().map(|(_, p)| *p).collect())
        .unwrap_or_default()
}
