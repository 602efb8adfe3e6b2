//! Checkpoints of a [`BusinessState`] in a storage extension's namespace
//! ([`bizpilot_core::storage`]), so that orders, customers and trace links survive a restart.
//!
//! Incremental: only the keys written or removed since the previous checkpoint are written
//! (or deleted), in one atomic batch. Format, versioned by the key `_format`
//! (`business_state/1`): one entry per key, `o/<order id>`, `c/<customer id>`, `t/<trace id>`,
//! whose value is JSON `{"at_ms": <wall-clock Unix ms of the key's last update>, "v": <the
//! order, customer or link>}`. At restore the keys are put back oldest first, each as old as its
//! `at_ms` says (so the TTL counts the downtime too, and eviction order is kept); a key older
//! than the TTL is dropped.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bizpilot_core::storage::{StorageClient, StorageError, StorageOp};

use crate::changelog::{ChangelogError, ChangelogSink};
use crate::context::{CustomerContext, OrderContext, TraceLink};
use crate::state::{BusinessState, KeyedStore};

/// Why a checkpoint failed (its changes stay pending for the next one).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
}

pub(crate) const FORMAT_KEY: &[u8] = b"_format";
/// The format written and read by this build.
pub const FORMAT: &[u8] = b"business_state/1";

#[derive(Serialize)]
pub(crate) struct EntryOut<'a, T> {
    pub(crate) at_ms: u64,
    pub(crate) v: &'a T,
}

#[derive(Deserialize)]
pub(crate) struct EntryIn<T> {
    pub(crate) at_ms: u64,
    pub(crate) v: T,
}

/// What a restore put back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub orders: usize,
    pub customers: usize,
    pub traces: usize,
    /// Keys older than their store's TTL, dropped.
    pub expired: usize,
    /// Entries that could not be read (logged and skipped).
    pub unreadable: usize,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A key taken for a checkpoint: its current value, or `None` when it is gone.
pub(crate) type Taken<V> = (Arc<str>, Option<Arc<V>>);

fn changes_of<V: Clone + Send + Sync + Serialize + 'static>(
    store: &KeyedStore<V>,
    prefix: &str,
    now: u64,
    ops: &mut Vec<StorageOp>,
) -> Vec<Taken<V>> {
    let mut keys = Vec::new();
    for (key, cur) in store.take_changes() {
        let k = format!("{prefix}{key}").into_bytes();
        let value = match cur {
            Some((value, age)) => {
                let at_ms = now.saturating_sub(age.as_millis() as u64);
                match serde_json::to_vec(&EntryOut { at_ms, v: &*value }) {
                    Ok(v) => ops.push(StorageOp::Put(k, v)),
                    Err(e) => tracing::warn!(key = %key, error = %e, "business state entry not checkpointed"),
                }
                Some(value)
            }
            None => {
                ops.push(StorageOp::Delete(k));
                None
            }
        };
        keys.push((key, value));
    }
    keys
}

fn keys_of<V>(taken: Vec<Taken<V>>) -> impl Iterator<Item = Arc<str>> {
    taken.into_iter().map(|(k, _)| k)
}

impl BusinessState {
    /// Starts remembering changes for [`BusinessState::checkpoint`].
    pub fn track_changes(&self) {
        self.orders.track_changes();
        self.customers.track_changes();
        self.traces.track_changes();
    }

    /// Writes the changes since the last checkpoint into `client`, atomically; returns how many
    /// keys were written or deleted. On failure the changes stay pending for the next call.
    ///
    /// The checkpoint closes the current change epoch first, so that once it returns `Ok`, every
    /// change made before a writer read [`BusinessState::change_epoch`] as that epoch is durable
    /// ([`BusinessState::wait_durable`] returns). A failed checkpoint makes nothing durable; the
    /// next successful one covers its changes too.
    pub fn checkpoint(&self, client: &dyn StorageClient) -> Result<usize, StorageError> {
        self.checkpoint_with(Some(client), None).map_err(|e| match e {
            CheckpointError::Storage(e) => e,
            // Without a changelog there is no changelog error.
            CheckpointError::Changelog(e) => StorageError::Io {
                path: "changelog".into(),
                reason: e.to_string(),
            },
        })
    }

    /// [`BusinessState::checkpoint`] into local storage, a changelog topic, or both: the epoch is
    /// committed once every destination has the changes (the changelog's produce acknowledged;
    /// see [`crate::changelog`]). On any failure the changes stay pending for the next call.
    pub fn checkpoint_with(
        &self,
        client: Option<&dyn StorageClient>,
        changelog: Option<&dyn ChangelogSink>,
    ) -> Result<usize, CheckpointError> {
        let closed = self.durability.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let now = now_ms();
        let mut ops = vec![StorageOp::Put(FORMAT_KEY.to_vec(), FORMAT.to_vec())];
        let o = changes_of(&self.orders, "o/", now, &mut ops);
        let c = changes_of(&self.customers, "c/", now, &mut ops);
        let t = changes_of(&self.traces, "t/", now, &mut ops);
        let n = ops.len() - 1;
        if n > 0 {
            let mut result = client.map_or(Ok(()), |client| client.apply(&ops).map_err(CheckpointError::from));
            if result.is_ok()
                && let Some(sink) = changelog
            {
                let records = crate::changelog::route(&ops[1..], &o, &t, sink.partitions());
                result = sink.send(&records).map_err(CheckpointError::from);
            }
            if let Err(e) = result {
                self.orders.requeue_changes(keys_of(o));
                self.customers.requeue_changes(keys_of(c));
                self.traces.requeue_changes(keys_of(t));
                return Err(e);
            }
        }
        // Epochs only grow; a concurrent checkpoint that closed a later epoch may have been first.
        self.durability.committed.send_if_modified(|c| {
            let newer = closed > *c;
            if newer {
                *c = closed;
            }
            newer
        });
        Ok(n)
    }

    /// Puts back what `client` holds. Call on an empty state, before it is shared.
    pub fn restore_from(&self, client: &dyn StorageClient, owner: &str) -> Result<Restored, StorageError> {
        let entries = client.load_all()?;
        let mut restored = Restored::default();
        if entries.is_empty() {
            return Ok(restored);
        }
        match entries.iter().find(|(k, _)| k == FORMAT_KEY) {
            Some((_, v)) if v == FORMAT => {}
            Some((_, v)) => {
                return Err(StorageError::Decode {
                    owner: owner.to_string(),
                    reason: format!(
                        "format {:?}, this build reads {:?}",
                        String::from_utf8_lossy(v),
                        String::from_utf8_lossy(FORMAT)
                    ),
                });
            }
            None => {
                return Err(StorageError::Decode {
                    owner: owner.to_string(),
                    reason: "no format marker: not a business_state checkpoint".into(),
                });
            }
        }
        let now = now_ms();
        let mut read = Entries::default();
        for (k, v) in &entries {
            if k == FORMAT_KEY {
                continue;
            }
            let key = String::from_utf8_lossy(k);
            match decode_entry(&key, v) {
                Ok((id, at, entry)) => read.push(id, at, entry),
                Err(e) => {
                    tracing::warn!(owner, key = %key, error = %e, "stored business state entry unreadable, skipped");
                    restored.unreadable += 1;
                }
            }
        }
        self.put_back_all(read, now, &mut restored);
        Ok(restored)
    }
}

/// Entries read back from a checkpoint or a changelog: `(at_ms, key, value)` per store.
#[derive(Default)]
pub(crate) struct Entries {
    pub(crate) orders: Vec<(u64, String, OrderContext)>,
    pub(crate) customers: Vec<(u64, String, CustomerContext)>,
    pub(crate) traces: Vec<(u64, String, TraceLink)>,
}

/// One stored entry's value, by the store its key (`o/`, `c/`, `t/`) names.
pub(crate) enum Entry {
    Order(OrderContext),
    Customer(CustomerContext),
    Trace(TraceLink),
}

/// Decodes the entry stored under `key`: its id (the key without its prefix), `at_ms` and value.
pub(crate) fn decode_entry<'k>(key: &'k str, v: &[u8]) -> Result<(&'k str, u64, Entry), String> {
    match key.split_at_checked(2) {
        Some(("o/", id)) => decode(v).map(|e: EntryIn<_>| (id, e.at_ms, Entry::Order(e.v))),
        Some(("c/", id)) => decode(v).map(|e: EntryIn<_>| (id, e.at_ms, Entry::Customer(e.v))),
        Some(("t/", id)) => decode(v).map(|e: EntryIn<_>| (id, e.at_ms, Entry::Trace(e.v))),
        _ => Err(format!("unknown key {key:?}")),
    }
}

impl Entries {
    pub(crate) fn push(&mut self, id: &str, at: u64, entry: Entry) {
        let id = id.to_string();
        match entry {
            Entry::Order(v) => self.orders.push((at, id, v)),
            Entry::Customer(v) => self.customers.push((at, id, v)),
            Entry::Trace(v) => self.traces.push((at, id, v)),
        }
    }
}

impl BusinessState {
    /// Puts `entries` back, each store oldest first, and counts them into `restored`.
    pub(crate) fn put_back_all(&self, entries: Entries, now: u64, restored: &mut Restored) {
        let (n, x) = put_back(&self.orders, entries.orders, now);
        restored.orders = n;
        restored.expired += x;
        let (n, x) = put_back(&self.customers, entries.customers, now);
        restored.customers = n;
        restored.expired += x;
        let (n, x) = put_back(&self.traces, entries.traces, now);
        restored.traces = n;
        restored.expired += x;
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<EntryIn<T>, String> {
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

pub(crate) fn put_back<V: Clone + Send + Sync + 'static>(
    store: &KeyedStore<V>,
    mut items: Vec<(u64, String, V)>,
    now: u64,
) -> (usize, usize) {
    items.sort_by_key(|(at, _, _)| *at);
    let (mut kept, mut expired) = (0, 0);
    for (at, key, value) in items {
        let age = Duration::from_millis(now.saturating_sub(at));
        if store.restore(&key, value, age) {
            kept += 1;
        } else {
            expired += 1;
        }
    }
    (kept, expired)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::BusinessEvent;
    use crate::state::StateConfig;
    use bizpilot_core::storage::{MemoryStorage, Storage};

    /// A business event of `order` (and `customer`, tier gold, and `amount` when given); also used by the changelog's tests.
    pub(crate) fn event(
        name: &str,
        t: u64,
        order: &str,
        customer: Option<&str>,
        amount: Option<&str>,
    ) -> BusinessEvent {
        let mut ev = BusinessEvent::new(name, t);
        ev.order_id = Some(order.into());
        ev.customer_id = customer.map(Into::into);
        ev.customer_tier = customer.map(|_| "gold".into());
        ev.amount = amount.map(|a| bizpilot_core::Money::parse(a, None).unwrap());
        ev
    }

    fn cfg(max_orders: usize) -> StateConfig {
        StateConfig {
            max_orders,
            ..StateConfig::default()
        }
    }

    #[tokio::test]
    async fn a_restored_state_equals_the_checkpointed_one_and_removals_are_carried() {
        let storage = MemoryStorage::default();
        let client = storage.client("business_state").unwrap();
        let a = BusinessState::new("business_state", cfg(3));
        a.track_changes();
        for i in 0..4 {
            let (o, c, amount) = (format!("o{i}"), format!("c{i}"), format!("EUR 1{i}.25"));
            a.apply(&event("order.placed", 10 + i, &o, Some(&c), Some(&amount)));
        }
        a.link_span("0102030405060708090a0b0c0d0e0f10", Some("c9"), Some("silver"));
        assert_eq!(
            a.checkpoint(&*client).unwrap(),
            4 + 4 + 1,
            "o1..o3, a delete of o0 (evicted), c0..c3, 1 link"
        );
        // Nothing changed: nothing written.
        assert_eq!(a.checkpoint(&*client).unwrap(), 0);
        // An update and a removal are carried by the next checkpoint.
        a.apply(&event("order.paid", 100, "o2", None, None));
        a.orders.remove("o3");
        assert_eq!(a.checkpoint(&*client).unwrap(), 2);

        let b = BusinessState::new("business_state", cfg(3));
        let r = b.restore_from(&*client, "business_state").unwrap();
        assert_eq!(
            (r.orders, r.customers, r.traces, r.expired, r.unreadable),
            (2, 4, 1, 0, 0)
        );
        for id in ["o1", "o2"] {
            assert_eq!(b.orders.peek(id), a.orders.peek(id), "{id}");
        }
        assert!(b.orders.peek("o3").is_none() && b.orders.peek("o0").is_none());
        assert_eq!(b.customers.peek("c2"), a.customers.peek("c2"));
        assert_eq!(
            b.traces.peek("0102030405060708090a0b0c0d0e0f10"),
            a.traces.peek("0102030405060708090a0b0c0d0e0f10")
        );
        // The value survived exactly (money as a decimal string).
        assert_eq!(b.orders.peek("o1").unwrap().value().unwrap().to_string(), "EUR 11.25");
    }

    #[tokio::test]
    async fn a_checkpoint_of_another_format_is_refused_and_bad_entries_are_counted() {
        let storage = MemoryStorage::default();
        let client = storage.client("x").unwrap();
        client
            .apply(&[
                StorageOp::Put(FORMAT_KEY.to_vec(), b"business_state/9".to_vec()),
                StorageOp::Put(b"o/1".to_vec(), b"{}".to_vec()),
            ])
            .unwrap();
        let s = BusinessState::new("x", StateConfig::default());
        let err = s.restore_from(&*client, "business_state").unwrap_err().to_string();
        assert!(
            err.contains("business_state/9") && err.contains("business_state"),
            "{err}"
        );

        client
            .apply(&[StorageOp::Put(FORMAT_KEY.to_vec(), FORMAT.to_vec())])
            .unwrap();
        let r = s.restore_from(&*client, "business_state").unwrap();
        assert_eq!((r.orders, r.unreadable), (0, 1));
    }
}
