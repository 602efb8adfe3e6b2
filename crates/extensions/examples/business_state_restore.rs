//! Cost of the join's durable state (`business_state` on `file_storage`) per open order: disk bytes per
//! order, the time to checkpoint them, and the time a restart takes to restore them (issue #17's cost
//! benchmark: "restore time per million open orders, and disk bytes per open order").
//!
//! ```sh
//! cargo run --release -p bizpilot-extensions --example business_state_restore -- 1000000
//! ```
//!
//! Builds a `business_state` holding N open orders (an `order.placed` each: customer, tier, order value and
//! three line items with prices; one customer per five orders), checkpoints it into a fresh redb file exactly as
//! the extension does, then opens the file again and restores it into an empty state, as a restarted gateway
//! does. Prints one line per figure; the restored state is checked against the written one.

use bizpilot_business::{BusinessEvent, BusinessState, LineItem, StateConfig};
use bizpilot_core::Money;
use bizpilot_core::storage::Storage;
use bizpilot_extensions::file_storage::FileStorage;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bizpilot.redb");
    // The bound is split among shards, each evicting on its own: leave headroom, as a deployment does.
    let cfg = StateConfig {
        max_orders: n + n / 5 + 64,
        max_customers: n,
        ..StateConfig::default()
    };
    let tiers = ["gold", "silver", "bronze", "platinum"];
    let price = |cents: u64| Money::parse(&format!("USD {}.{:02}", cents / 100, cents % 100), None);

    let state = BusinessState::new("business_state", cfg);
    state.track_changes();
    let started = Instant::now();
    for i in 0..n {
        let mut ev = BusinessEvent::new("order.placed", 1_700_000_000_000_000_000 + i as u64 * 1_000_000);
        ev.order_id = Some(format!("ord-{i:08}-{:04x}", i.wrapping_mul(2_654_435_761) & 0xffff));
        ev.customer_id = Some(format!("cust-{:07}", i / 5));
        ev.customer_tier = Some(tiers[i % tiers.len()].into());
        ev.amount = Some(price(1_000 + (i as u64 * 7_919) % 90_000)?);
        ev.items = (0..3)
            .map(|k| {
                Ok(LineItem {
                    sku: format!("SKU-{:05}", (i * 3 + k) % 20_000),
                    quantity: 1 + (i + k) as i64 % 3,
                    unit_price: Some(price(500 + ((i + k) as u64 * 131) % 20_000)?),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        state.apply(&ev);
    }
    let built = started.elapsed();
    let storage = FileStorage::open(&path, false, "file_storage")?;
    let client = storage.client("business_state")?;
    let started = Instant::now();
    let written = state.checkpoint(&*client)?;
    let checkpoint = started.elapsed();
    drop(client);
    drop(storage);
    let bytes = std::fs::metadata(&path)?.len();

    let storage = FileStorage::open(&path, false, "file_storage")?;
    let client = storage.client("business_state")?;
    let restored_state = BusinessState::new("business_state", cfg);
    let started = Instant::now();
    let restored = restored_state.restore_from(&*client, "business_state")?;
    let restore = started.elapsed();
    let logical: usize = client.load_all()?.iter().map(|(k, v)| k.len() + v.len()).sum();
    anyhow::ensure!(
        restored.orders == n && restored.unreadable == 0,
        "restored {} of {n} orders ({} unreadable)",
        restored.orders,
        restored.unreadable
    );
    for i in [0, n / 2, n - 1] {
        let id = format!("ord-{i:08}-{:04x}", i.wrapping_mul(2_654_435_761) & 0xffff);
        anyhow::ensure!(
            restored_state.order(&id) == state.order(&id),
            "order {id} differs after the restore"
        );
    }

    let per_m = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("open orders                     {n}");
    println!("customers                       {}", restored.customers);
    println!("entries written                 {written}");
    println!("state built from events         {:.2} s", built.as_secs_f64());
    println!(
        "checkpoint (all orders new)     {:.2} s  ({:.1} s per million orders)",
        checkpoint.as_secs_f64(),
        per_m(checkpoint)
    );
    println!(
        "file on disk                    {bytes} B  ({:.0} B per open order, customers included)",
        bytes as f64 / n as f64
    );
    println!(
        "keys + values stored            {logical} B  ({:.0} B per open order; the rest is redb's pages and free space)",
        logical as f64 / n as f64
    );
    println!(
        "restore (open, read, rebuild)   {:.2} s  ({:.1} s per million orders)",
        restore.as_secs_f64(),
        per_m(restore)
    );
    Ok(())
}
