//! Gateways of the shipped Kafka topology (`pipelines/gateway-kafka.yaml`) as test processes: started with an
//! overlay, each with its own OTLP backend, and the wait until a consumer group's partitions are spread over them.
//! Used with `kafka_harness.rs` (include both with `#[path]`).
#![allow(dead_code)]

use crate::common::{Bizpilot, Downstream, free_addr, workspace_root};
use crate::kafka_harness::{held_partitions, receiver_assignments};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One `bizpilot run --config pipelines/gateway-kafka.yaml` with its Prometheus endpoint and OTLP backend.
pub struct Gateway {
    pub name: &'static str,
    pub bp: Bizpilot,
    pub prometheus: SocketAddr,
    /// Prometheus endpoint of the fleet figures (`prometheus/fleet`).
    pub fleet_prometheus: SocketAddr,
    pub backend: Downstream,
}

/// The fleet topic of a consumer group's gateways (`BIZPILOT_FLEET_TOPIC`): one per group, so that gateways of
/// different groups (a test's single-instance reference) do not merge their figures.
pub fn fleet_topic(group: &str) -> String {
    format!("{group}.fleet")
}

/// Starts a gateway named `name` (its `HOSTNAME`, hence its client id) in consumer group `group`.
pub fn start_gateway(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    overlay: &str,
) -> Gateway {
    start_gateway_with(rt, name, group, brokers, &[], overlay)
}

/// [`start_gateway`] with more config files (workspace-relative) between the shipped pipeline and `overlay`, e.g.
/// `pipelines/overlays/gateway-kafka-fleet.yaml`, whose fleet topic is then the group's ([`fleet_topic`]; create it).
pub fn start_gateway_with(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    configs: &[&str],
    overlay: &str,
) -> Gateway {
    start_gateway_env(rt, name, group, brokers, configs, overlay, &[])
}

/// [`start_gateway_with`] with more environment, after the gateway's own (e.g. `BIZPILOT_STORAGE_DIR`, so that a
/// restarted gateway finds its predecessor's durable state).
pub fn start_gateway_env(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    configs: &[&str],
    overlay: &str,
    extra_env: &[(&str, &str)],
) -> Gateway {
    let backend = rt.block_on(Downstream::start());
    let (admin, prometheus, fleet_prometheus) = (free_addr(), free_addr(), free_addr());
    let fleet = fleet_topic(group);
    let env = [
        ("HOSTNAME", name.to_string()),
        ("BIZPILOT_KAFKA_BROKERS", brokers.to_string()),
        ("BIZPILOT_KAFKA_GROUP", group.to_string()),
        ("BIZPILOT_OTLP_BACKEND_ENDPOINT", format!("http://{}", backend.addr)),
        ("BIZPILOT_PROMETHEUS_ENDPOINT", prometheus.to_string()),
        ("BIZPILOT_FLEET_PROMETHEUS_ENDPOINT", fleet_prometheus.to_string()),
        ("BIZPILOT_FLEET_TOPIC", fleet),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
    ];
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra_env);
    let dir = tempfile::tempdir().expect("tempdir");
    let over = dir.path().join("overlay.yaml");
    std::fs::write(&over, overlay).expect("write overlay");
    let mut files = vec![workspace_root().join("pipelines/gateway-kafka.yaml")];
    files.extend(configs.iter().map(|c| workspace_root().join(c)));
    files.push(over);
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let bp = Bizpilot::start_with(&paths, admin, dir, &env);
    Gateway {
        name,
        bp,
        prometheus,
        fleet_prometheus,
        backend,
    }
}

/// Waits until the spans and events receivers of each gateway hold the same partition numbers of both topics and
/// the gateways together hold every one of `partitions` once; returns each one's partitions.
pub fn wait_aligned(gateways: &[&Gateway], partitions: i32, timeout: Duration) -> Vec<BTreeSet<i32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let held: Vec<(BTreeSet<i32>, BTreeSet<i32>)> = gateways
            .iter()
            .map(|g| {
                let logs = g.bp.logs();
                (
                    held_partitions(&logs, "kafka/spans"),
                    held_partitions(&logs, "kafka/events"),
                )
            })
            .collect();
        let spans: Vec<i32> = held.iter().flat_map(|(s, _)| s.iter().copied()).collect();
        let distinct: BTreeSet<i32> = spans.iter().copied().collect();
        if held.iter().all(|(s, e)| s == e && !s.is_empty())
            && spans.len() == partitions as usize
            && distinct.len() == partitions as usize
        {
            return held.into_iter().map(|(s, _)| s).collect();
        }
        assert!(
            Instant::now() < deadline,
            "partitions not aligned after {timeout:?}: {:?}",
            gateways
                .iter()
                .map(|g| (g.name, receiver_assignments(&g.bp.logs())))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shipped gateway named `name`, alone in consumer group `group`, with `overlay` and its durable state in
/// `storage` (`BIZPILOT_STORAGE_DIR`), not waiting for its partitions (a restarted one may need longer, see
/// `tests/gateway_week_e2e.rs`).
pub fn start_gateway_storage(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    overlay: &str,
    storage: &std::path::Path,
) -> Gateway {
    let storage = storage.display().to_string();
    start_gateway_env(
        rt,
        name,
        group,
        brokers,
        &[],
        overlay,
        &[("BIZPILOT_STORAGE_DIR", storage.as_str())],
    )
}

/// Spans the gateway's `kafka/spans` receiver accepted so far.
pub fn accepted_spans(g: &Gateway) -> f64 {
    g.bp.metric_sum("bizpilot_receiver_accepted_spans_total", &["receiver=\"kafka/spans\""])
}

/// A gateway of the shipped topology with its `health_check` on `health`: with `changelog`, the overlay
/// `pipelines/overlays/gateway-kafka-changelog.yaml` and then `overlay`; without, only `without` (the tests'
/// `…_NO_CHANGELOG=1` runs, which must fail).
#[allow(clippy::too_many_arguments)]
pub fn start_changelog_gateway(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    group: &str,
    brokers: &str,
    health: SocketAddr,
    changelog: bool,
    overlay: &str,
    without: &str,
) -> Gateway {
    let health = health.to_string();
    let env = [("BIZPILOT_HEALTH_ENDPOINT", health.as_str())];
    if changelog {
        let configs = ["pipelines/overlays/gateway-kafka-changelog.yaml"];
        start_gateway_env(rt, name, group, brokers, &configs, overlay, &env)
    } else {
        start_gateway_env(rt, name, group, brokers, &[], without, &env)
    }
}

/// Waits until `ok`, at most `timeout` (then panics naming `what`); returns how long it took.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}
