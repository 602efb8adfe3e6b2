//! The keyed business state: order id → [`OrderContext`], customer id →
//! [`CustomerContext`], built from business events and read by enrichment.
//!
//! Each [`KeyedStore`] is bounded and observable:
//!
//! - **Bound**: at most `max_entries` keys. The store is split into shards (each
//!   behind its own `RwLock`, so reads on different keys never wait on one
//!   another and reads of one shard share its lock); the shards' capacities add
//!   up to exactly `max_entries`. When a shard is full, its *least recently
//!   updated* key is evicted. Reads do not change the eviction order, so they
//!   only take a read lock.
//! - **TTL**: a key not updated for `ttl` is gone: reads treat it as absent at
//!   once, and it is removed on the shard's next write or by [`KeyedStore::purge_expired`]
//!   (the `business_state` extension calls it periodically). Since every key has
//!   the same TTL, the least recently updated key is always the first to expire,
//!   so expiry pops from the front of the same order as eviction.
//! - **Counters**: hits, misses, updates, evictions and expirations, both as
//!   [`StoreStats`] and as `metrics` counters
//!   `bizpilot_business_state_{hits,misses,updates,evictions,expirations}_total{extension,store}`
//!   with gauge `bizpilot_business_state_entries{extension,store}` (`store` is `orders`, `customers`
//!   or `traces`).
//!
//! **Trace links** (store `traces`, trace id in lower-case hex → [`TraceLink`]) join a business
//! event that names no customer (the OpenTelemetry Demo's `OrderResult`) to the customer of the
//! trace its `traceparent` names, in either arrival order: a span records its trace's customer and
//! tier ([`BusinessState::link_span`], called by the enrich processor), an event records its
//! trace's order ([`BusinessState::apply_traced`]); whichever comes second completes the order.
//! Joins are counted in `bizpilot_business_state_trace_joins_total{extension,first}` (`first` =
//! `span` or `event`); an event still without a customer is a miss of the `traces` store.
//! - **Arrivals**: [`KeyedStore::subscribe`] gives every key written from then on, so a
//!   component waiting for a key (the enrich processor's join window) learns
//!   when it appears instead of polling. A subscriber that lags is told so
//!   (`RecvError::Lagged`) and should re-check what it waits for with [`KeyedStore::contains`].
//!
//! Time is `tokio::time::Instant`, so tests can pause and advance it.

use metrics::{Counter, Gauge, counter, gauge};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::context::{CustomerContext, OrderContext, TraceLink};
use crate::event::BusinessEvent;

/// Keys buffered for a subscriber that has not read them yet.
const CHANGES_CAPACITY: usize = 4096;
/// Shards are used only when each holds at least this many keys.
const MIN_PER_SHARD: usize = 256;
const MAX_SHARDS: usize = 16;

/// Counter values of one store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    pub updates: u64,
    pub evictions: u64,
    pub expirations: u64,
}

struct Count {
    local: AtomicU64,
    metric: Counter,
}

impl Count {
    fn new(name: &'static str, extension: &str, store: &'static str) -> Self {
        Count {
            local: AtomicU64::new(0),
            metric: counter!(name, "extension" => extension.to_string(), "store" => store),
        }
    }
    #[inline]
    fn add(&self, n: u64) {
        if n > 0 {
            self.local.fetch_add(n, Ordering::Relaxed);
            self.metric.increment(n);
        }
    }
    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

struct Counters {
    hits: Count,
    misses: Count,
    updates: Count,
    evictions: Count,
    expirations: Count,
    entries: Gauge,
}

struct Slot<V> {
    key: Arc<str>,
    value: Arc<V>,
    seq: u64,
    updated: Instant,
}

struct Shard<V> {
    map: HashMap<Arc<str>, Slot<V>>,
    /// Update sequence → key: the first entry is the least recently updated.
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    cap: usize,
    /// Keys written or removed since the last checkpoint (only while changes are tracked).
    dirty: HashSet<Arc<str>>,
}

/// A key written or removed since the last checkpoint: its value and time since its last update, or
/// `None` when it is gone.
pub type Change<V> = (Arc<str>, Option<(Arc<V>, Duration)>);

/// A bounded, sharded map from a string key to a shared value, with TTL and counters.
pub struct KeyedStore<V> {
    store: &'static str,
    shards: Box<[RwLock<Shard<V>>]>,
    hasher: RandomState,
    ttl: Option<Duration>,
    max_entries: usize,
    len: AtomicUsize,
    counters: Counters,
    changes: broadcast::Sender<Arc<str>>,
    /// Whether writes are remembered for [`KeyedStore::take_changes`] (checkpointing).
    tracking: AtomicBool,
}

impl<V> std::fmt::Debug for KeyedStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStore")
            .field("store", &self.store)
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl<V> KeyedStore<V> {
    /// Keys currently held (expired keys not yet purged included).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Clone + Send + Sync + 'static> KeyedStore<V> {
    /// A store of at most `max_entries` keys (at least 1), each living `ttl` after its
    /// last update (`None`: until evicted). `extension` and `store` label the metrics.
    pub fn new(extension: &str, store: &'static str, max_entries: usize, ttl: Option<Duration>) -> Self {
        let max_entries = max_entries.max(1);
        let mut n = 1;
        while n < MAX_SHARDS && max_entries / (n * 2) >= MIN_PER_SHARD {
            n *= 2;
        }
        let (base, extra) = (max_entries / n, max_entries % n);
        let shards = (0..n)
            .map(|i| {
                RwLock::new(Shard {
                    map: HashMap::new(),
                    order: BTreeMap::new(),
                    next_seq: 0,
                    cap: base + usize::from(i < extra),
                    dirty: HashSet::new(),
                })
            })
            .collect();
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        KeyedStore {
            store,
            shards,
            hasher: RandomState::new(),
            ttl: ttl.filter(|t| !t.is_zero()),
            max_entries,
            len: AtomicUsize::new(0),
            counters: Counters {
                hits: Count::new("bizpilot_business_state_hits_total", extension, store),
                misses: Count::new("bizpilot_business_state_misses_total", extension, store),
                updates: Count::new("bizpilot_business_state_updates_total", extension, store),
                evictions: Count::new("bizpilot_business_state_evictions_total", extension, store),
                expirations: Count::new("bizpilot_business_state_expirations_total", extension, store),
                entries: gauge!("bizpilot_business_state_entries", "extension" => extension.to_string(), "store" => store),
            },
            changes,
            tracking: AtomicBool::new(false),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Shard<V>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // `i` is always in range; fall back to the first shard rather than panic.
        self.shards.get(i).unwrap_or(&self.shards[0])
    }

    #[inline]
    fn live(&self, slot: &Slot<V>, now: Option<Instant>) -> bool {
        match (self.ttl, now) {
            (Some(ttl), Some(now)) => now.saturating_duration_since(slot.updated) < ttl,
            _ => true,
        }
    }

    /// The value of `key`, counting a hit or a miss.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        let v = self.peek(key);
        if v.is_some() {
            self.counters.hits.add(1);
        } else {
            self.counters.misses.add(1);
        }
        v
    }

    /// The value of `key` without counting.
    pub fn peek(&self, key: &str) -> Option<Arc<V>> {
        let now = self.ttl.map(|_| Instant::now());
        let shard = read(self.shard(key));
        shard
            .map
            .get(key)
            .filter(|s| self.live(s, now))
            .map(|s| s.value.clone())
    }

    /// How long ago `key` was last updated, if it is present (not expired).
    pub fn age(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let shard = read(self.shard(key));
        shard
            .map
            .get(key)
            .filter(|s| self.live(s, Some(now)))
            .map(|s| now.saturating_duration_since(s.updated))
    }

    /// Whether `key` is present (not expired), without counting.
    pub fn contains(&self, key: &str) -> bool {
        let now = self.ttl.map(|_| Instant::now());
        read(self.shard(key)).map.get(key).is_some_and(|s| self.live(s, now))
    }

    /// Removes expired keys from the front of a shard.
    fn expire_front(&self, sh: &mut Shard<V>, now: Instant) -> u64 {
        let Some(ttl) = self.ttl else { return 0 };
        let mut n = 0;
        while let Some(entry) = sh.order.first_entry() {
            let key = entry.get();
            let expired = sh
                .map
                .get(key)
                .is_none_or(|s| now.saturating_duration_since(s.updated) >= ttl);
            if !expired {
                break;
            }
            let key = entry.remove();
            if sh.map.remove(&key).is_some() {
                n += 1;
                if self.tracking.load(Ordering::Relaxed) {
                    sh.dirty.insert(key);
                }
            }
        }
        n
    }

    /// Creates or changes `key`: `init` makes a new value, `change` edits it (a shared
    /// value is copied first, so readers holding the old one are unaffected). The key
    /// becomes the most recently updated; the least recently updated key of a full
    /// shard is evicted. Returns the new value.
    pub fn update(&self, key: &str, init: impl FnOnce() -> V, change: impl FnOnce(&mut V)) -> Arc<V> {
        let now = Instant::now();
        let (value, key_arc, expired, evicted, delta) = {
            let mut guard = write(self.shard(key));
            let sh = &mut *guard;
            let expired = self.expire_front(sh, now);
            let seq = sh.next_seq;
            sh.next_seq += 1;
            let mut delta: isize = -(expired as isize);
            let (value, key_arc) = match sh.map.get_mut(key) {
                Some(slot) => {
                    let k = slot.key.clone();
                    change(Arc::make_mut(&mut slot.value));
                    sh.order.remove(&slot.seq);
                    slot.seq = seq;
                    slot.updated = now;
                    (slot.value.clone(), k)
                }
                None => {
                    let k: Arc<str> = Arc::from(key);
                    let mut v = init();
                    change(&mut v);
                    let v = Arc::new(v);
                    sh.map.insert(
                        k.clone(),
                        Slot {
                            key: k.clone(),
                            value: v.clone(),
                            seq,
                            updated: now,
                        },
                    );
                    delta += 1;
                    (v, k)
                }
            };
            sh.order.insert(seq, key_arc.clone());
            let tracking = self.tracking.load(Ordering::Relaxed);
            if tracking {
                sh.dirty.insert(key_arc.clone());
            }
            let evicted = Self::evict_over_cap(sh, tracking);
            delta -= evicted as isize;
            (value, key_arc, expired, evicted, delta)
        };
        self.adjust_len(delta);
        self.counters.updates.add(1);
        self.counters.expirations.add(expired);
        self.counters.evictions.add(evicted);
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(key_arc);
        }
        value
    }

    fn adjust_len(&self, delta: isize) {
        let len = if delta >= 0 {
            self.len.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
        } else {
            let d = delta.unsigned_abs();
            self.len.fetch_sub(d, Ordering::Relaxed).saturating_sub(d)
        };
        self.counters.entries.set(len as f64);
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &str) -> Option<Arc<V>> {
        let slot = {
            let mut sh = write(self.shard(key));
            let slot = sh.map.remove(key)?;
            sh.order.remove(&slot.seq);
            if self.tracking.load(Ordering::Relaxed) {
                sh.dirty.insert(slot.key.clone());
            }
            slot
        };
        self.adjust_len(-1);
        Some(slot.value)
    }

    /// Evicts the least recently updated keys of a shard over its capacity; returns how many.
    fn evict_over_cap(sh: &mut Shard<V>, tracking: bool) -> u64 {
        let mut evicted = 0u64;
        while sh.map.len() > sh.cap {
            let Some((_, old)) = sh.order.pop_first() else { break };
            if sh.map.remove(&old).is_some() {
                evicted += 1;
                if tracking {
                    sh.dirty.insert(old);
                }
            }
        }
        evicted
    }

    /// From now on, remember every key written or removed, for [`KeyedStore::take_changes`].
    /// Whether changes are being tracked for checkpoints.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    pub fn track_changes(&self) {
        self.tracking.store(true, Ordering::Relaxed);
    }

    /// The keys written or removed since the last call (or since [`KeyedStore::track_changes`]):
    /// each with its value and the time since its last update, or `None` if it is gone.
    pub fn take_changes(&self) -> Vec<Change<V>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let mut guard = write(s);
            let sh = &mut *guard;
            for key in std::mem::take(&mut sh.dirty) {
                let cur = sh
                    .map
                    .get(&key)
                    .filter(|slot| self.live(slot, Some(now)))
                    .map(|slot| (slot.value.clone(), now.saturating_duration_since(slot.updated)));
                out.push((key, cur));
            }
        }
        out
    }

    /// Marks keys as changed again (a checkpoint that took them failed to commit).
    pub fn requeue_changes(&self, keys: impl IntoIterator<Item = Arc<str>>) {
        for key in keys {
            write(self.shard(&key)).dirty.insert(key);
        }
    }

    /// Puts back a key restored from a checkpoint, last updated `age` ago. Call in order of
    /// last update (oldest first) so that eviction order is kept; a key older than the TTL is
    /// skipped. Not counted as an update and not announced to subscribers.
    pub fn restore(&self, key: &str, value: V, age: Duration) -> bool {
        if self.ttl.is_some_and(|ttl| age >= ttl) {
            return false;
        }
        let now = Instant::now();
        let updated = now.checked_sub(age).unwrap_or(now);
        let tracking = self.tracking.load(Ordering::Relaxed);
        let delta = {
            let mut guard = write(self.shard(key));
            let sh = &mut *guard;
            let seq = sh.next_seq;
            sh.next_seq += 1;
            let k: Arc<str> = Arc::from(key);
            let mut delta: isize = 1;
            if let Some(old) = sh.map.insert(
                k.clone(),
                Slot {
                    key: k.clone(),
                    value: Arc::new(value),
                    seq,
                    updated,
                },
            ) {
                sh.order.remove(&old.seq);
                delta = 0;
            }
            sh.order.insert(seq, k);
            delta - Self::evict_over_cap(sh, tracking) as isize
        };
        self.adjust_len(delta);
        true
    }

    /// Removes every expired key; returns how many.
    pub fn purge_expired(&self) -> u64 {
        if self.ttl.is_none() {
            return 0;
        }
        let now = Instant::now();
        let mut total = 0;
        for s in self.shards.iter() {
            let n = self.expire_front(&mut write(s), now);
            total += n;
        }
        self.adjust_len(-(total as isize));
        self.counters.expirations.add(total);
        total
    }

    /// The bound on keys.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Every key written after this call, in write order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// Announces `key` to subscribers as if it had just been written (keys put back by a restore
    /// into a running state: the enrich join's waiters are released at once). Whether anyone
    /// listens or not, nothing else changes.
    pub fn announce(&self, key: &str) {
        if self.changes.receiver_count() > 0 && self.contains(key) {
            let _ = self.changes.send(Arc::from(key));
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.len(),
            hits: self.counters.hits.get(),
            misses: self.counters.misses.get(),
            updates: self.counters.updates.get(),
            evictions: self.counters.evictions.get(),
            expirations: self.counters.expirations.get(),
        }
    }
}

/// The key of a trace in the `traces` store: its id in lower-case hex; `None` for an id that is not
/// 16 bytes or is all zero (no trace).
pub fn trace_key(trace_id: &[u8]) -> Option<String> {
    if trace_id.len() != 16 || trace_id.iter().all(|b| *b == 0) {
        return None;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in trace_id {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    Some(s)
}

/// Bounds of a [`BusinessState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateConfig {
    pub max_orders: usize,
    pub max_customers: usize,
    /// How long a key lives after its last update; `None` = until evicted.
    pub ttl: Option<Duration>,
    /// Most trace links held (trace id → customer, tier, order).
    pub max_traces: usize,
    /// How long a trace link lives after its last update; `None` = until evicted.
    pub trace_ttl: Option<Duration>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_orders: 100_000,
            max_customers: 100_000,
            ttl: Some(Duration::from_secs(3600)),
            max_traces: 100_000,
            trace_ttl: Some(Duration::from_secs(300)),
        }
    }
}

/// Which parts of the state an event changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub order: bool,
    pub customer: bool,
}

/// Orders and customers, as the `business_state` extension shares them.
#[derive(Debug)]
pub struct BusinessState {
    pub orders: KeyedStore<OrderContext>,
    pub customers: KeyedStore<CustomerContext>,
    /// Trace id (lower-case hex) → what the trace said about its customer and order.
    pub traces: KeyedStore<TraceLink>,
    joins_span_first: Counter,
    joins_event_first: Counter,
    join_counts: [AtomicU64; 2],
    /// What is durable: see [`BusinessState::change_epoch`].
    pub(crate) durability: Durability,
    /// Where checkpoints also go: see [`crate::changelog`].
    pub(crate) changelog: std::sync::OnceLock<Arc<dyn crate::changelog::ChangelogSink>>,
}

/// Which changes a checkpoint has made durable.
///
/// Changes happen in numbered epochs. A checkpoint first closes the current epoch (the counter
/// moves on), then takes the changes recorded so far: every change made before a writer read
/// epoch `e` is in the checkpoint that closes `e`. Once that checkpoint is committed, `committed`
/// becomes `e`. Without checkpoints (no storage) every epoch counts as durable at once.
#[derive(Debug)]
pub(crate) struct Durability {
    pub(crate) epoch: AtomicU64,
    pub(crate) committed: tokio::sync::watch::Sender<u64>,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            epoch: AtomicU64::new(1),
            committed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl BusinessState {
    /// `name` labels the metrics (the extension id).
    pub fn new(name: &str, cfg: StateConfig) -> Self {
        let joins = |first: &'static str| counter!("bizpilot_business_state_trace_joins_total", "extension" => name.to_string(), "first" => first);
        BusinessState {
            orders: KeyedStore::new(name, "orders", cfg.max_orders, cfg.ttl),
            customers: KeyedStore::new(name, "customers", cfg.max_customers, cfg.ttl),
            traces: KeyedStore::new(name, "traces", cfg.max_traces.max(1), cfg.trace_ttl),
            joins_span_first: joins("span"),
            joins_event_first: joins("event"),
            join_counts: [AtomicU64::new(0), AtomicU64::new(0)],
            durability: Durability::default(),
            changelog: std::sync::OnceLock::new(),
        }
    }

    /// The epoch of the changes made so far by this thread's writes: once
    /// [`BusinessState::wait_durable`] of it returns, they are in a committed checkpoint. Read it
    /// after the writes.
    pub fn change_epoch(&self) -> u64 {
        self.durability.epoch.load(Ordering::SeqCst)
    }

    /// Whether changes are checkpointed (a storage extension is configured): otherwise nothing
    /// is ever waited for.
    pub fn is_checkpointed(&self) -> bool {
        self.orders.is_tracking()
    }

    /// The latest epoch whose changes are all in a committed checkpoint.
    pub fn durable_epoch(&self) -> u64 {
        if self.is_checkpointed() {
            *self.durability.committed.borrow()
        } else {
            u64::MAX
        }
    }

    /// Waits until the changes of `epoch` are in a committed checkpoint (at once without
    /// checkpoints).
    pub async fn wait_durable(&self, epoch: u64) {
        if !self.is_checkpointed() {
            return;
        }
        let mut rx = self.durability.committed.subscribe();
        // `wait_for` only fails when the sender is gone, and the state owns it.
        let _ = rx.wait_for(|c| *c >= epoch).await;
    }

    /// Orders completed by a trace link so far: `(span first, event first)`.
    pub fn trace_joins(&self) -> (u64, u64) {
        (
            self.join_counts[0].load(Ordering::Relaxed),
            self.join_counts[1].load(Ordering::Relaxed),
        )
    }

    /// A span of trace `trace_id` (lower-case hex) names its customer and/or tier. Remembered for
    /// events of the same trace that come later; an order an event of this trace named earlier
    /// gets them now (if it has none). Costs one read when the link already knows them.
    pub fn link_span(&self, trace_id: &str, customer: Option<&str>, tier: Option<&str>) {
        if trace_id.is_empty() || (customer.is_none() && tier.is_none()) {
            return;
        }
        if let Some(l) = self.traces.peek(trace_id)
            && (customer.is_none() || l.customer_id.is_some())
            && (tier.is_none() || l.customer_tier.is_some())
        {
            return;
        }
        let link = self.traces.update(trace_id, TraceLink::default, |l| {
            if l.customer_id.is_none() {
                l.customer_id = customer.map(str::to_string);
            }
            if l.customer_tier.is_none() {
                l.customer_tier = tier.map(str::to_string);
            }
        });
        if let Some(order) = link.order_id.as_deref()
            && self.orders.contains(order)
        {
            let mut filled = false;
            self.orders.update(
                order,
                || OrderContext::new(order),
                |o| {
                    filled = o.fill_customer(link.customer_id.as_deref(), link.customer_tier.as_deref());
                },
            );
            if filled {
                self.joins_event_first.increment(1);
                self.join_counts[1].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// [`BusinessState::apply`] for an event of trace `trace_id` (lower-case hex; empty = none):
    /// a customer or tier the event lacks is taken from the trace's spans seen so far, and the
    /// event's order is remembered as the trace's (for spans of the trace still to come).
    pub fn apply_traced(&self, ev: &mut BusinessEvent, trace_id: &str) -> Applied {
        if !trace_id.is_empty() && (ev.customer_id.is_none() || ev.customer_tier.is_none()) {
            let had_customer = ev.customer_id.is_some();
            if let Some(l) = self.traces.get(trace_id) {
                if ev.customer_id.is_none() {
                    ev.customer_id.clone_from(&l.customer_id);
                }
                if ev.customer_tier.is_none() {
                    ev.customer_tier.clone_from(&l.customer_tier);
                }
            }
            if !had_customer && ev.customer_id.is_some() {
                self.joins_span_first.increment(1);
                self.join_counts[0].fetch_add(1, Ordering::Relaxed);
            }
        }
        // The trace's order: for spans still to come, and for readers that have only the trace
        // (the impact records of a failed operation of the trace).
        if !trace_id.is_empty()
            && let Some(order) = ev.order_id.as_deref()
            && self
                .traces
                .peek(trace_id)
                .is_none_or(|l| l.order_id.as_deref() != Some(order))
        {
            self.traces.update(trace_id, TraceLink::default, |l| {
                l.order_id = Some(order.to_string());
            });
        }
        self.apply(ev)
    }

    /// Folds an event into the order (if it names one) and the customer (if it names one).
    pub fn apply(&self, ev: &BusinessEvent) -> Applied {
        let mut applied = Applied::default();
        if let Some(id) = ev.order_id.as_deref() {
            self.orders.update(id, || OrderContext::new(id), |o| o.apply(ev));
            applied.order = true;
        }
        if let Some(id) = ev.customer_id.as_deref() {
            self.customers.update(id, || CustomerContext::new(id), |c| c.apply(ev));
            applied.customer = true;
        }
        applied
    }

    /// The order `id`, counting a hit or miss.
    pub fn order(&self, id: &str) -> Option<Arc<OrderContext>> {
        self.orders.get(id)
    }

    /// The order an event of trace `trace_id` (lower-case hex) named, without counting a hit or miss.
    pub fn order_of_trace(&self, trace_id: &str) -> Option<Arc<OrderContext>> {
        let link = self.traces.peek(trace_id)?;
        self.orders.peek(link.order_id.as_deref()?)
    }

    /// The customer `id`, counting a hit or miss.
    pub fn customer(&self, id: &str) -> Option<Arc<CustomerContext>> {
        self.customers.get(id)
    }

    /// Removes expired orders and customers.
    pub fn purge_expired(&self) -> u64 {
        self.orders.purge_expired() + self.customers.purge_expired() + self.traces.purge_expired()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize, ttl: Option<Duration>) -> KeyedStore<u64> {
        KeyedStore::new("test", "orders", max, ttl)
    }

    #[test]
    fn bounded_and_evicts_least_recently_updated() {
        let s = store(3, None);
        for k in ["a", "b", "c"] {
            s.update(k, || 0, |v| *v += 1);
        }
        s.update("a", || 0, |v| *v += 1); // a is now the most recent
        assert!(s.get("b").is_some()); // reads do not refresh
        s.update("d", || 0, |v| *v += 1);
        assert!(s.peek("b").is_none(), "b was least recently updated");
        assert_eq!(*s.peek("a").unwrap(), 2);
        let st = s.stats();
        assert_eq!((st.entries, st.evictions, st.updates, st.hits), (3, 1, 5, 1));
    }

    #[test]
    fn never_exceeds_the_bound_with_many_keys() {
        for max in [1, 7, 1000, 5000] {
            let s = store(max, None);
            for i in 0..(max * 10 + 3) {
                s.update(&format!("k{i}"), || i as u64, |_| {});
                assert!(s.len() <= max);
            }
            assert_eq!(s.len(), max, "every shard fills up");
            let real: usize = s.shards.iter().map(|sh| read(sh).map.len()).sum();
            assert_eq!(real, max);
            assert_eq!(s.stats().evictions as usize, max * 9 + 3);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_keys() {
        let s = store(100, Some(Duration::from_secs(10)));
        s.update("a", || 1, |_| {});
        tokio::time::advance(Duration::from_secs(6)).await;
        s.update("b", || 2, |_| {});
        assert!(s.contains("a"));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(s.get("a").is_none(), "a expired 1s ago");
        assert!(s.get("b").is_some());
        assert_eq!(s.purge_expired(), 1);
        assert_eq!(s.len(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        s.update("c", || 3, |_| {}); // a write purges the shard's expired front too
        assert!(s.peek("b").is_none());
        assert_eq!(s.stats().expirations, 2);
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn subscribers_see_written_keys() {
        let s = store(10, None);
        let mut rx = s.subscribe();
        s.update("x", || 0, |_| {});
        assert_eq!(&*rx.recv().await.unwrap(), "x");
    }

    fn order_result(order: &str) -> BusinessEvent {
        let mut ev = BusinessEvent::new("order.placed", 10);
        ev.order_id = Some(order.into());
        ev.amount = Some(bizpilot_core::Money::parse("EUR 12.34", None).unwrap());
        ev
    }

    #[test]
    fn trace_links_join_in_both_arrival_orders() {
        let st = BusinessState::new("business_state", StateConfig::default());
        // Span first: PlaceOrder (customer), then charge (tier), then the OrderResult.
        st.link_span("t1", Some("u1"), None);
        st.link_span("t1", None, Some("gold"));
        let mut ev = order_result("o1");
        st.apply_traced(&mut ev, "t1");
        assert_eq!(ev.customer_id.as_deref(), Some("u1"));
        let o = st.order("o1").unwrap();
        assert_eq!((o.customer_id(), o.customer_tier()), (Some("u1"), Some("gold")));
        assert_eq!(o.value().unwrap().to_string(), "EUR 12.34");
        assert_eq!(st.customer("u1").unwrap().tier(), Some("gold"));
        // Event first: the OrderResult, then charge (tier only), then PlaceOrder (customer).
        let mut ev = order_result("o2");
        st.apply_traced(&mut ev, "t2");
        assert_eq!(st.order("o2").unwrap().customer_id(), None);
        st.link_span("t2", None, Some("silver"));
        assert_eq!(st.order("o2").unwrap().customer_tier(), Some("silver"));
        assert_eq!(st.order("o2").unwrap().customer_id(), None);
        st.link_span("t2", Some("u2"), None);
        let o = st.order("o2").unwrap();
        assert_eq!((o.customer_id(), o.customer_tier()), (Some("u2"), Some("silver")));
        assert_eq!(o.events, 1, "a link is not an event");
        // A later span of a known trace changes nothing and writes nothing.
        let updates = st.traces.stats().updates;
        st.link_span("t2", Some("u2"), Some("silver"));
        assert_eq!(st.traces.stats().updates, updates);
        // An event's own customer is kept; an event without a trace is a plain apply.
        st.link_span("t3", Some("span-user"), None);
        let mut ev = order_result("o3");
        ev.customer_id = Some("event-user".into());
        st.apply_traced(&mut ev, "t3");
        assert_eq!(st.order("o3").unwrap().customer_id(), Some("event-user"));
        let mut ev = order_result("o4");
        st.apply_traced(&mut ev, "");
        assert_eq!(st.order("o4").unwrap().customer_id(), None);
        assert_eq!(st.trace_joins(), (1, 1));
    }

    #[test]
    fn trace_keys() {
        let id: Vec<u8> = (0..16).map(|i| i * 17).collect();
        assert_eq!(trace_key(&id).unwrap(), "00112233445566778899aabbccddeeff");
        assert_eq!(trace_key(&[0; 16]), None);
        assert_eq!(trace_key(&[1; 8]), None);
    }

    #[test]
    fn trace_links_are_bounded() {
        let st = BusinessState::new(
            "business_state",
            StateConfig {
                max_traces: 2,
                ..StateConfig::default()
            },
        );
        for t in ["a", "b", "c"] {
            st.link_span(t, Some("u"), None);
        }
        assert_eq!(st.traces.len(), 2);
        assert_eq!(st.traces.stats().evictions, 1);
        let mut ev = order_result("o");
        st.apply_traced(&mut ev, "a");
        assert_eq!(ev.customer_id, None, "the evicted trace is a miss");
        assert_eq!(st.traces.stats().misses, 1);
    }

    #[test]
    fn business_state_applies_events() {
        let st = BusinessState::new("business_state", StateConfig::default());
        let mut ev = BusinessEvent::new("order.placed", 1);
        ev.order_id = Some("o1".into());
        ev.customer_id = Some("c1".into());
        ev.customer_tier = Some("gold".into());
        assert_eq!(
            st.apply(&ev),
            Applied {
                order: true,
                customer: true
            }
        );
        let o = st.order("o1").unwrap();
        assert_eq!(o.customer_id(), Some("c1"));
        assert_eq!(st.customer("c1").unwrap().tier(), Some("gold"));
        assert!(st.order("nope").is_none());
        assert_eq!(st.orders.stats().misses, 1);
        // A reader's copy is not changed by later updates.
        ev.customer_id = Some("c2".into());
        ev.time_unix_nano = 2;
        st.apply(&ev);
        assert_eq!(o.customer_id(), Some("c1"));
        assert_eq!(st.order("o1").unwrap().customer_id(), Some("c2"));
    }
}
