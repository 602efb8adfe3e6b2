//! An order's partition moves between two engines through a changelog in memory.

use std::collections::BTreeSet;

use bizpilot_business::attrs::kv_str;
use bizpilot_business::changelog::{ChangelogSink, MemoryChangelog, PartitionedState, partition_of};
use bizpilot_core::config::Duration;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

use super::*;
use crate::kpi::config::{KpiConfig, OrderKpiConfig};
use crate::kpi::engine::{Compiled, Outcome};
use crate::kpi::partition::KpiPartitions;

const S: u64 = 1_000_000_000;
const M: u64 = 60 * S;
const H: u64 = 60 * M;
/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600 * S;
const P: i32 = 4;
const PREFIX: &str = "kpi[order_kpi]/";

fn engine() -> Engine {
    let c = OrderKpiConfig {
        kpis: vec![KpiConfig {
            name: "fulfilled".into(),
            from: None,
            to: None,
            deadline: Duration::from_secs(2 * 3600),
        }],
        allowed_lateness: Duration::from_secs(120),
        evaluation_interval: Duration::from_secs(60),
        metrics_interval: Duration::from_secs(600),
        ..Default::default()
    };
    let mut e = Engine::new(Compiled::new(&c, |id| Err(format!("no {id}"))).unwrap());
    e.record_resolutions();
    e
}

fn feed(e: &mut Engine, events: &[(&str, String, u64)]) {
    let records = events
        .iter()
        .map(|(name, order, t)| LogRecord {
            time_unix_nano: *t,
            event_name: (*name).into(),
            attributes: vec![kv_str("order.id", order)],
            ..Default::default()
        })
        .collect();
    e.ingest_logs(&ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    e.advance();
}

/// 40 orders placed a minute apart; each of the 4 partitions gets a late "tick" order so every engine's clock
/// reaches the end. Returns (placed events, later events: paid and delivered, some after the 2 h deadline, some
/// never delivered).
#[allow(clippy::type_complexity)]
fn orders() -> (Vec<(&'static str, String, u64)>, Vec<(&'static str, String, u64)>) {
    let mut placed = Vec::new();
    let mut later = Vec::new();
    for i in 0..40u64 {
        let o = format!("o{i}");
        let t = T0 + i * M;
        placed.push(("order.placed", o.clone(), t));
        later.push(("order.paid", o.clone(), t + 50 * M));
        match i % 4 {
            0 => later.push(("order.delivered", o, t + 90 * M)),  // in time
            1 => later.push(("order.delivered", o, t + 150 * M)), // breached, delivered late
            2 => later.push(("order.cancelled", o, t + 100 * M)), // excluded
            _ => {}                                               // never delivered: breached at the deadline
        }
    }
    // One tick per partition, far after every deadline.
    for p in 0..P {
        let tick = (0..)
            .map(|i| format!("tick{i}"))
            .find(|o| partition_of(o, P) == p)
            .unwrap();
        later.push(("order.placed", tick, T0 + 8 * H));
    }
    later.sort_by_key(|(_, _, t)| *t);
    (placed, later)
}

fn outcomes(e: &mut Engine) -> Vec<(String, Outcome)> {
    e.take_resolutions()
        .into_iter()
        .map(|r| (r.order_id.to_string(), r.outcome))
        .collect()
}

fn in_partitions(events: &[(&'static str, String, u64)], ps: &[i32]) -> Vec<(&'static str, String, u64)> {
    events
        .iter()
        .filter(|(_, o, _)| ps.contains(&partition_of(o, P)))
        .cloned()
        .collect()
}

/// Writes `e`'s changes since the last call to `log`.
fn checkpoint(e: &Engine, tracker: &mut ChangeTracker, log: &MemoryChangelog) -> usize {
    let records = tracker.records(e.change_copy(), PREFIX, P).unwrap();
    log.send(&records).unwrap();
    tracker.written();
    records.len()
}

/// Restores changelog partition `p` of `log` into `e` through the connector's [`KpiPartitions`] (as the Kafka
/// receiver's rebalance callback does, and the stage then).
fn restore(e: &mut Engine, log: &MemoryChangelog, p: i32) -> usize {
    let kp = KpiPartitions::new("order_kpi", true);
    let r = kp.restore_partition(p, log.read(p));
    assert_eq!(r.unreadable, 0);
    kp.apply(e);
    r.entries
}

/// Runs the handover: A sees every placed event and checkpoints; partitions 2 and 3 move to B (restored from the
/// changelog, or not: `changelog` false); the later events go to each partition's owner.
fn handover(changelog: bool) -> (Vec<(String, Outcome)>, (u64, u64), usize) {
    let (placed, later) = orders();
    let (mut a, mut b) = (engine(), engine());
    let log = MemoryChangelog::new(P);
    let mut tracker = ChangeTracker::default();
    feed(&mut a, &placed);
    // The newest placed events still wait for the watermark: they must move too.
    assert!(a.pending() > 0);
    assert!(checkpoint(&a, &mut tracker, &log) >= 40);
    let moved = if changelog {
        let n = restore(&mut b, &log, 2) + restore(&mut b, &log, 3);
        let kp = KpiPartitions::new("order_kpi", true);
        kp.owned(&BTreeSet::from([0, 1]), P);
        kp.apply(&mut a);
        n
    } else {
        0
    };
    feed(&mut a, &in_partitions(&later, &[0, 1]));
    feed(&mut b, &in_partitions(&later, &[2, 3]));
    a.finish();
    b.finish();
    let mut all = outcomes(&mut a);
    all.extend(outcomes(&mut b));
    all.sort();
    let (ta, tb) = (a.figures[0].totals(), b.figures[0].totals());
    (all, (ta.0 + tb.0, ta.1 + tb.1), moved)
}

fn truth() -> (Vec<(String, Outcome)>, (u64, u64)) {
    let (placed, later) = orders();
    let mut one = engine();
    feed(&mut one, &placed);
    feed(&mut one, &later);
    one.finish();
    let mut all = outcomes(&mut one);
    all.sort();
    (all, one.figures[0].totals())
}

#[test]
fn moved_open_orders_resolve_on_their_new_owner_as_in_one_engine() {
    let (want, want_totals) = truth();
    assert_eq!(
        want_totals,
        (10, 20),
        "10 in time, 10 delivered late + 10 never delivered"
    );
    let (got, totals, moved) = handover(true);
    let in_23 = (0..40)
        .filter(|i| [2, 3].contains(&partition_of(&format!("o{i}"), P)))
        .count();
    assert!(in_23 > 5 && moved == in_23, "moved {moved} of {in_23}");
    assert_eq!(totals, want_totals, "in time, breached: the two engines add up to one");
    assert_eq!(got, want, "every order's outcome");
}

#[test]
fn without_the_changelog_the_figures_do_not_add_up() {
    let (want, want_totals) = truth();
    let (got, totals, _) = handover(false);
    assert_ne!(totals, want_totals);
    assert_ne!(got, want);
}

#[test]
fn a_restore_applied_twice_gives_the_same_state_and_the_same_counts() {
    let (placed, later) = orders();
    let log = MemoryChangelog::new(P);
    let mut a = engine();
    let mut tracker = ChangeTracker::default();
    feed(&mut a, &placed);
    checkpoint(&a, &mut tracker, &log);
    let (mut once, mut twice) = (engine(), engine());
    for p in 0..P {
        restore(&mut once, &log, p);
        restore(&mut twice, &log, p);
        restore(&mut twice, &log, p);
    }
    assert_eq!(once.open_orders(), twice.open_orders());
    assert_eq!(once.pending(), twice.pending());
    for e in [&mut once, &mut twice] {
        feed(e, &later);
        e.finish();
    }
    assert_eq!(once.figures[0].totals(), twice.figures[0].totals());
    assert_eq!(once.figures[0].totals(), truth().1);
}

#[test]
fn unchanged_orders_are_not_written_again_and_closed_or_dropped_ones_are_tombstoned() {
    let log = MemoryChangelog::new(P);
    let mut a = engine();
    let mut tracker = ChangeTracker::default();
    feed(
        &mut a,
        &[("order.placed", "o1".into(), T0), ("order.placed", "o2".into(), T0)],
    );
    // Past the watermark: applied.
    feed(&mut a, &[("order.placed", "o3".into(), T0 + 10 * M)]);
    assert_eq!(checkpoint(&a, &mut tracker, &log), 3);
    assert_eq!(checkpoint(&a, &mut tracker, &log), 0, "nothing changed");
    // o1 delivered: a record saying it closed (a straggling event must not reopen it on a new owner).
    feed(&mut a, &[("order.delivered", "o1".into(), T0 + 11 * M)]);
    feed(&mut a, &[("order.placed", "o4".into(), T0 + 20 * M)]);
    let n = checkpoint(&a, &mut tracker, &log);
    assert!(n >= 2, "o1 and o4 at least, got {n}");
    let last = |key: &str| {
        (0..P)
            .flat_map(|p| log.read(p))
            .filter(|(k, _)| k == format!("{PREFIX}{key}").as_bytes())
            .last()
            .map(|(_, v)| v)
    };
    let o1 = last("o1").expect("o1 written").expect("not a tombstone");
    let RestoredOrder(r) = decode_record(&o1).unwrap();
    assert!(r.order.is_none() && r.closed.is_some());
    // Closed memory (1 h) ends: o1 is forgotten, a tombstone.
    feed(&mut a, &[("order.placed", "o5".into(), T0 + 2 * H)]);
    checkpoint(&a, &mut tracker, &log);
    assert_eq!(last("o1"), Some(None), "tombstone once forgotten");
    // A partition moved away: its orders are dropped and tombstoned (the Kafka sink writes only owned partitions).
    let p2 = partition_of("o2", P);
    let dropped = a.retain_orders(|id| partition_of(id, P) != p2);
    assert!(dropped >= 1);
    checkpoint(&a, &mut tracker, &log);
    assert_eq!(last("o2"), Some(None));
    // A new owner of o2's partition gets nothing of it; one of o3's gets o3.
    let mut b = engine();
    restore(&mut b, &log, p2);
    let p3 = partition_of("o3", P);
    if p3 != p2 {
        restore(&mut b, &log, p3);
    }
    let ids: Vec<String> = b.orders.iter().map(|(k, _)| k.to_string()).collect();
    assert!(
        !ids.contains(&"o2".to_string()) && ids.contains(&"o3".to_string()),
        "{ids:?}"
    );
}

#[test]
fn a_failed_write_is_written_again_by_the_next_checkpoint() {
    let log = MemoryChangelog::new(P);
    let mut a = engine();
    let mut tracker = ChangeTracker::default();
    feed(
        &mut a,
        &[
            ("order.placed", "o1".into(), T0),
            ("order.placed", "o2".into(), T0 + 10 * M),
        ],
    );
    let records = tracker.records(a.change_copy(), PREFIX, P).unwrap();
    log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(log.send(&records).is_err());
    // Not marked written: the next checkpoint compares with the same earlier copy.
    log.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(checkpoint(&a, &mut tracker, &log), 2);
}
