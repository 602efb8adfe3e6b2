//! The `kafka` receiver against a real broker (tansu) with an in-process pipeline whose
//! acknowledgements the test controls: out-of-order acks, failed deliveries, shutdown commits,
//! a full pipeline, and a rebalance.

#[path = "../../../tests/kafka_harness.rs"]
mod kafka_harness;
#[allow(dead_code)]
#[path = "../../../tests/common/ports.rs"]
mod ports;
/// The e2e tests' port allocator, which `kafka_harness` reaches as `crate::common` (std only).
mod common {
    pub use super::ports::free_port;
}

use bizpilot_core::{
    Batch, ComponentId, CreateContext, Extensions, Output, Payload, ReceiverContext, ReceiverFactory, ReceiverOutput,
    Signal, Target, parse_config,
};
use bizpilot_kafka::{KafkaReceiverConfig, KafkaReceiverFactory};
use kafka_harness::{Msg, Tansu, committed, create_topics, produce};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn order_of(b: &mut Batch) -> Vec<String> {
    let Payload::Logs(l) = &mut b.payload else {
        panic!("logs expected")
    };
    l.message()
        .unwrap()
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .flat_map(|r| &r.attributes)
        .filter(|a| a.key == "order.id")
        .map(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(bizpilot_core::pdata::proto::common::v1::any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("order.id {other:?}"),
        })
        .collect()
}

struct Started {
    running: bizpilot_core::Running,
    shutdown: CancellationToken,
    rx: mpsc::Receiver<Batch>,
}

fn start(yaml: &str, capacity: usize) -> Started {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BIZPILOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let cfg: KafkaReceiverConfig = parse_config(&serde_yaml::from_str(yaml).unwrap()).unwrap();
    let id: ComponentId = "kafka".parse().unwrap();
    let ext = Extensions::default();
    let ctx = CreateContext {
        id: &id,
        pipeline: None,
        signals: [Signal::Logs].into_iter().collect(),
        output_signals: Default::default(),
        extensions: &ext,
    };
    let r = KafkaReceiverFactory.create(cfg, &ctx).unwrap();
    let (tx, rx) = mpsc::channel(capacity);
    let output = Output::new(
        vec![Target {
            name: "logs".into(),
            sender: tx,
        }],
        vec![],
    );
    let shutdown = CancellationToken::new();
    let running = r
        .start(ReceiverContext {
            id,
            output: ReceiverOutput::new(HashMap::from([(Signal::Logs, output)])),
            shutdown: shutdown.clone(),
        })
        .unwrap();
    Started { running, shutdown, rx }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_out_of_order_acks_never_skip_a_message() {
    let broker = Tansu::start();
    create_topics(&broker.bootstrap, &["events"], 2);
    let n = 300;
    let msgs: Vec<Msg> = (0..n)
        .map(|i| {
            Msg::keyed(
                format!("k{i}"),
                format!(r#"{{"type":"order.placed","order_id":"o-{i}"}}"#),
            )
        })
        .collect();
    produce(&broker.bootstrap, "events", &msgs);
    let yaml = format!(
        "brokers: [{}]\ntopics: [events]\ngroup_id: g1\ninitial_offset: earliest\nencoding: business_json\n\
         max_in_flight: 20\ncommit_interval: 100ms\nredelivery: {{initial_interval: 50ms, max_interval: 200ms}}\n\
         statistics_interval: 0s\npipeline_wait: 50ms",
        broker.bootstrap
    );
    let mut s = start(&yaml, 8);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut held: Vec<Batch> = Vec::new();
    let mut failed_once = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n && Instant::now() < deadline {
        let Ok(Some(mut b)) = tokio::time::timeout(Duration::from_millis(500), s.rx.recv()).await else {
            // Nothing new: release what is held (acknowledged late, out of order).
            held.clear();
            continue;
        };
        let ids = order_of(&mut b);
        for id in &ids {
            *seen.entry(id.clone()).or_default() += 1;
        }
        if !failed_once && ids.iter().any(|i| i == "o-77") {
            failed_once = true;
            b.fail();
            drop(b);
        } else if held.len() < 5 {
            held.push(b);
        } else {
            // Acknowledge newest first.
            drop(b);
            while let Some(h) = held.pop() {
                drop(h);
            }
        }
    }
    drop(held);
    assert_eq!(seen.len(), n, "every message delivered");
    assert!(seen["o-77"] >= 2, "the failed message was consumed again");
    // Everything acknowledged: the committed offsets reach the end of both partitions.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Keep the pipeline drained (redeliveries after the failure).
        while let Ok(b) = s.rx.try_recv() {
            drop(b);
        }
        let c = committed(&broker.bootstrap, "g1", "events");
        if c.iter().sum::<i64>() == n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "committed offsets {c:?} never reached {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.shutdown.cancel();
    drop(s.rx);
    tokio::time::timeout(Duration::from_secs(20), s.running.join())
        .await
        .expect("receiver stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_only_what_was_acknowledged() {
    let broker = Tansu::start();
    create_topics(&broker.bootstrap, &["single"], 1);
    let msgs: Vec<Msg> = (0..50)
        .map(|i| Msg::value(format!(r#"{{"type":"order.paid","order_id":"o-{i}"}}"#)))
        .collect();
    produce(&broker.bootstrap, "single", &msgs);
    let yaml = format!(
        "brokers: [{}]\ntopics: [single]\ngroup_id: g2\ninitial_offset: earliest\nencoding: business_json\n\
         commit_interval: 100ms\ndrain_timeout: 1s\nstatistics_interval: 0s\n",
        broker.bootstrap
    );
    let mut s = start(&yaml, 100);
    let mut got = Vec::new();
    while got.len() < 50 {
        let b = tokio::time::timeout(Duration::from_secs(30), s.rx.recv())
            .await
            .expect("messages arrive")
            .expect("open");
        got.push(b);
    }
    // Acknowledge offsets 0..10 and 20..50; 10 stays in flight through shutdown.
    let stuck = got.remove(10);
    got.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), s.running.join())
        .await
        .expect("receiver stops within drain_timeout")
        .unwrap();
    assert_eq!(
        committed(&broker.bootstrap, "g2", "single"),
        vec![10],
        "the mark stops at the unacknowledged message"
    );
    drop(stuck);
    // A new consumer of the group starts at the unacknowledged message.
    let mut s = start(&yaml, 100);
    let mut b = tokio::time::timeout(Duration::from_secs(30), s.rx.recv())
        .await
        .expect("redelivered")
        .unwrap();
    assert_eq!(order_of(&mut b), ["o-10"]);
    s.shutdown.cancel();
    drop(s.rx);
    let _ = tokio::time::timeout(Duration::from_secs(20), s.running.join()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_pauses_consumption_without_loss_or_duplicates() {
    let broker = Tansu::start();
    create_topics(&broker.bootstrap, &["slow"], 2);
    let n = 120;
    let msgs: Vec<Msg> = (0..n)
        .map(|i| {
            Msg::keyed(
                format!("k{i}"),
                format!(r#"{{"type":"cart.updated","order_id":"o-{i}"}}"#),
            )
        })
        .collect();
    produce(&broker.bootstrap, "slow", &msgs);
    let yaml = format!(
        "brokers: [{}]\ntopics: [slow]\ngroup_id: g-slow\ninitial_offset: earliest\nencoding: business_json\n\
         pipeline_wait: 20ms\nstatistics_interval: 0s\n\
         librdkafka: {{fetch.wait.max.ms: 50, fetch.error.backoff.ms: 10, fetch.queue.backoff.ms: 10}}",
        broker.bootstrap
    );
    // A pipeline with room for one batch, drained slowly: the receiver must pause and seek back.
    let mut s = start(&yaml, 1);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n && Instant::now() < deadline {
        if let Ok(Some(mut b)) = tokio::time::timeout(Duration::from_millis(500), s.rx.recv()).await {
            for id in order_of(&mut b) {
                *seen.entry(id).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert_eq!(seen.len(), n, "every message delivered");
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        dups.is_empty(),
        "refused messages are consumed again exactly once: {dups:?}"
    );
    s.shutdown.cancel();
    drop(s.rx);
    let _ = tokio::time::timeout(Duration::from_secs(20), s.running.join()).await;
}

/// Rebalance: a second member joins while the first holds unacknowledged messages. The first
/// waits for them (drain_timeout) before giving its partitions away and commits what is done,
/// so nothing is skipped and little is read twice. (tansu, not librdkafka's mock cluster: the
/// mock refuses offset commits while a rebalance is in progress, which Kafka brokers accept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_drained_and_committed_before_they_move() {
    let broker = Tansu::start();
    let b = broker.bootstrap.clone();
    create_topics(&b, &["rb"], 4);
    let n = 400;
    let msgs: Vec<Msg> = (0..n)
        .map(|i| {
            Msg::keyed(
                format!("k{i}"),
                format!(r#"{{"type":"order.placed","order_id":"o-{i}"}}"#),
            )
        })
        .collect();
    produce(&b, "rb", &msgs);
    let yaml = format!(
        "brokers: [{b}]\ntopics: [rb]\ngroup_id: g-rb\ninitial_offset: earliest\nencoding: business_json\n\
         drain_timeout: 10s\ncommit_interval: 100ms\nstatistics_interval: 0s\n\
         librdkafka: {{session.timeout.ms: 6000, heartbeat.interval.ms: 500}}"
    );
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let consume = |mut rx: mpsc::Receiver<Batch>, hold: Duration| {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut held: Vec<Batch> = Vec::new();
            let mut last = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                    Ok(Some(mut b)) => {
                        for id in order_of(&mut b) {
                            *seen.lock().unwrap().entry(id).or_default() += 1;
                        }
                        held.push(b);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                if last.elapsed() >= hold {
                    held.clear();
                    last = Instant::now();
                }
            }
        })
    };
    let a = start(&yaml, 1000);
    let a_task = consume(a.rx, Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "the first member got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second member joins: the first must give up partitions while holding acks.
    let b2 = start(&yaml, 1000);
    let b_task = consume(b2.rx, Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} delivered",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = committed(&b, "g-rb", "rb");
        if c.iter().sum::<i64>() == n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "committed {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total: usize = seen.lock().unwrap().values().sum();
    eprintln!("{total} deliveries of {n} messages across a rebalance");
    assert!(
        total - n <= 100,
        "duplicates limited to what was not yet acknowledged at the revocation"
    );
    a.shutdown.cancel();
    b2.shutdown.cancel();
    let (mut ra, mut rb) = (a.running, b2.running);
    let _ = tokio::time::timeout(Duration::from_secs(20), ra.join()).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), rb.join()).await;
    a_task.abort();
    b_task.abort();
}
