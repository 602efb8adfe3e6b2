//! State that moves with its partition (issue #17 item 2, `docs/partition-state.md`), against a real
//! broker (tansu): the `business_state` changelog's produce and restore paths.
//!
//! Replica A applies a stream of business events keyed by order id and checkpoints its state into the
//! compacted changelog topic (the epoch that gates the events' offset commit is committed only once the
//! produce is acknowledged). A is then gone; replica B takes over two of the four partitions and restores
//! the changelog partitions of the same numbers. Ground truth: the partition each event landed on in the
//! real events topic (librdkafka's `murmur2_random`, as the gateway's producers use), and A's state.
//!
//! This test drives the library API; the `kafka` receiver's `changelog` option, its restore-before-consume
//! in the rebalance callback and the readiness hold are tested end to end with two gateways in
//! `tests/partition_e2e.rs`.

mod common;
mod kafka_harness;

use bizpilot_business::changelog::{ChangelogSink, partition_of};
use bizpilot_business::{BusinessEvent, BusinessState, StateConfig};
use bizpilot_kafka::changelog::KafkaChangelog;
use kafka_harness::{Msg, Tansu, create_topics, produce, read_topic};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const PARTITIONS: i32 = 4;
const ORDERS: usize = 2_000;
const EVENTS_TOPIC: &str = "shop.events";
const CHANGELOG: &str = "bizpilot.business-state.changelog";

fn order(i: usize) -> String {
    format!("o-{i:06}")
}

fn customer(i: usize) -> String {
    format!("cust-{:06}", (i * 7919) % 300)
}

fn placed(i: usize) -> BusinessEvent {
    let mut ev = BusinessEvent::new("order.placed", 1_700_000_000_000_000_000 + i as u64);
    ev.order_id = Some(order(i));
    ev.customer_id = Some(customer(i));
    ev.customer_tier = Some(if i.is_multiple_of(3) { "gold" } else { "silver" }.into());
    ev.amount =
        Some(bizpilot_core::Money::parse(&format!("USD {}.{:02}", 10 + i % 90, i % 100), None).expect("amount"));
    ev
}

#[test]
fn a_partitions_new_owner_restores_its_orders_and_customers_from_the_changelog() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap.clone();
    create_topics(&bootstrap, &[EVENTS_TOPIC, CHANGELOG], PARTITIONS);

    // The source: events keyed by order id, partitioned by the real client. Ground truth for routing.
    let msgs: Vec<Msg> = (0..ORDERS)
        .map(|i| {
            Msg::keyed(
                order(i),
                format!(
                    r#"{{"type":"order.placed","order_id":"{}","customer_id":"{}"}}"#,
                    order(i),
                    customer(i)
                ),
            )
        })
        .collect();
    produce(&bootstrap, EVENTS_TOPIC, &msgs);
    let source = read_topic(
        &bootstrap,
        EVENTS_TOPIC,
        ORDERS,
        Duration::from_secs(2),
        Duration::from_secs(120),
    );
    let mut source_partition: HashMap<String, i32> = HashMap::new();
    for r in &source {
        let key = String::from_utf8(r.key.clone().expect("keyed")).expect("utf-8 key");
        source_partition.insert(key, r.partition);
    }
    assert_eq!(
        source_partition.len(),
        ORDERS,
        "every event read back from the source topic"
    );
    for (o, p) in &source_partition {
        assert_eq!(
            *p,
            partition_of(o, PARTITIONS),
            "the changelog routes {o} to its source partition"
        );
    }

    // Replica A: applies the events, checkpoints into the changelog in several epochs.
    // One record per batch: tansu answers a fetch only with batches that start at or after the offset
    // asked for, so a read resuming inside a batch would skip the rest of it (kafka_harness.rs).
    let changelog = KafkaChangelog::new(
        &bootstrap,
        CHANGELOG,
        Duration::from_secs(60),
        &[("batch.num.messages", "1")],
    )
    .expect("changelog");
    assert_eq!(changelog.partitions(), PARTITIONS);
    let a = BusinessState::new("a", StateConfig::default());
    a.track_changes();
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(500) {
        for i in chunk {
            a.apply(&placed(*i));
        }
        let epoch = a.change_epoch();
        assert!(a.durable_epoch() < epoch);
        let n = a
            .checkpoint_with(None, Some(&changelog))
            .expect("checkpoint into the changelog");
        assert!(n > 0);
        assert!(
            a.durable_epoch() >= epoch,
            "the epoch is durable once the produce is acknowledged"
        );
    }
    // Later changes: some orders are paid, some evicted (tombstones).
    for i in (0..ORDERS).step_by(10) {
        let mut ev = BusinessEvent::new("order.paid", 1_800_000_000_000_000_000 + i as u64);
        ev.order_id = Some(order(i));
        a.apply(&ev);
    }
    let evicted: BTreeSet<String> = (5..ORDERS).step_by(50).map(order).collect();
    for o in &evicted {
        a.orders.remove(o);
    }
    a.checkpoint_with(None, Some(&changelog)).expect("last checkpoint");

    // A is gone. B takes partitions 1 and 3 over and restores them before consuming.
    let moved = [1, 3];
    let b = BusinessState::new("b", StateConfig::default());
    let mut records = 0;
    for p in moved {
        let r = changelog.restore(p, &b).expect("restore");
        eprintln!(
            "restored changelog partition {p}: {} records, {} orders, {} customers in {:.3} s",
            r.records, r.restored.orders, r.restored.customers, r.seconds
        );
        assert_eq!(r.restored.unreadable, 0);
        records += r.records;
    }
    assert!(records > 0);

    // Every order of the moved partitions is enriched on B exactly as on A; no other order is there.
    let mut checked = 0;
    for (o, p) in &source_partition {
        let want = a.orders.peek(o);
        let got = b.orders.peek(o);
        if moved.contains(p) {
            assert_eq!(got, want, "{o} (partition {p})");
            if let Some(ctx) = want {
                // The customer came along. Its entry is as of the last change of one of the moved
                // partitions' orders (A may have updated it since from an order of another partition).
                let c = ctx.customer_id().expect("customer");
                let (got_c, want_c) = (b.customers.peek(c), a.customers.peek(c));
                let (got_c, want_c) = (got_c.expect("customer restored"), want_c.expect("customer on A"));
                assert_eq!(got_c.tier(), want_c.tier(), "tier of {c} of {o}");
                assert!(
                    got_c.last_event_unix_nano >= ctx.first_event_unix_nano,
                    "{c} as of {o} or later"
                );
                checked += 1;
            } else {
                assert!(evicted.contains(o), "{o} is missing on A only if evicted");
            }
        } else {
            assert!(got.is_none(), "{o} of partition {p} did not move");
        }
    }
    let expected = source_partition
        .iter()
        .filter(|(o, p)| moved.contains(p) && !evicted.contains(*o))
        .count();
    assert_eq!(checked, expected);
    assert!(checked > ORDERS / 4, "{checked} orders moved");

    // At least once: a partition read again (a second rebalance) changes nothing.
    let before: Vec<_> = (0..ORDERS).map(|i| b.orders.peek(&order(i))).collect();
    changelog.restore(1, &b).expect("restore again");
    let after: Vec<_> = (0..ORDERS).map(|i| b.orders.peek(&order(i))).collect();
    assert_eq!(before, after);

    // Control: a new owner without the changelog has none of the moved orders (what this test catches
    // when the changelog is not written or not read).
    let without = BusinessState::new("c", StateConfig::default());
    assert!(source_partition.keys().all(|o| without.orders.peek(o).is_none()));
}
