//! A map of the engine's per-order state whose copy for a snapshot is cheap: copy-on-write shards.
//!
//! The map is split into [`SHARDS`] hash maps, each behind an [`Arc`]. [`CowMap::clone`] (what a snapshot takes on
//! the stage's thread) copies the `Arc`s only; the snapshot's encoding then reads the shards on another thread. A
//! write to a shard still shared with a snapshot being encoded copies that shard first ([`Arc::make_mut`]), so
//! only the shards written to while a snapshot is encoded are ever copied, one at a time, and the map is the sole
//! owner of its shards again once the encoding is done. Iteration order is a hash map's (arbitrary), as before:
//! the engine does not depend on it.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Shards of a [`CowMap`]: a write while a snapshot is encoded copies `len / SHARDS` entries (about 250 at a
/// million open orders).
pub const SHARDS: usize = 4096;

type Shard<V> = HashMap<Box<str>, V>;

/// A `HashMap<Box<str>, V>` in copy-on-write shards (see the module).
pub struct CowMap<V> {
    shards: Box<[Arc<Shard<V>>]>,
    len: usize,
}

impl<V> Clone for CowMap<V> {
    /// Shares every shard: O([`SHARDS`]), whatever the length.
    fn clone(&self) -> Self {
        CowMap {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        CowMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

/// FNV-1a: a fixed, cheap hash choosing the shard (the shards' own maps keep std's randomised one).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(k: &Q) -> usize {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    k.hash(&mut h);
    let h = h.finish();
    // Fold the high bits in: FNV's low bits alone mix poorly.
    ((h ^ (h >> 29)) as usize) & (SHARDS - 1)
}

impl<V: Clone> CowMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(k)].get(k)
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(k)].contains_key(k)
    }

    /// The shard holding `k`, copied first if a snapshot shares it; `None` (nothing copied) when a shared shard lacks
    /// `k`. An unshared shard is returned as it is, `k` or not: the caller's own lookup answers.
    fn owning_shard<Q>(&mut self, k: &Q) -> Option<&mut Shard<V>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &mut self.shards[shard_of(k)];
        // Unshared (no snapshot in flight, the usual case): no copy to avoid, so no second lookup either.
        if Arc::get_mut(shard).is_none() && !shard.contains_key(k) {
            return None;
        }
        Some(Arc::make_mut(shard))
    }

    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.owning_shard(k)?.get_mut(k)
    }

    pub fn insert(&mut self, k: Box<str>, v: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[shard_of(&k)]).insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = self.owning_shard(k)?.remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Box<str>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// The keys of the shards that differ from `earlier` (a copy of this map taken before), in either: every key
    /// inserted, changed or removed since is among them. A shard this map still shares with `earlier` is unchanged
    /// and skipped, so the cost follows what was written, not the map's length.
    pub fn keys_changed_since<'a>(&'a self, earlier: &'a CowMap<V>) -> impl Iterator<Item = &'a Box<str>> + 'a {
        self.shards
            .iter()
            .zip(earlier.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .flat_map(|(a, b)| a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))))
    }

    /// Copies every shard a snapshot still shares.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Box<str>, &mut V)> {
        self.shards.iter_mut().flat_map(|s| Arc::make_mut(s).iter_mut())
    }
}

impl<'a, V: Clone> IntoIterator for &'a CowMap<V> {
    type Item = (&'a Box<str>, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a Box<str>, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// As a map, as `HashMap` is: snapshots of either read as the other.
impl<V: Clone + Serialize> Serialize for CowMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Clone + Deserialize<'de>> Deserialize<'de> for CowMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Clone + Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = CowMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of order ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<CowMap<V>, A::Error> {
                let mut m = CowMap::default();
                while let Some((k, v)) = a.next_entry::<Box<str>, V>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_its_contents_while_the_map_changes() {
        let mut m: CowMap<u64> = CowMap::default();
        for i in 0..10_000u64 {
            m.insert(format!("o-{i}").into(), i);
        }
        let copy = m.clone();
        for i in 0..5_000u64 {
            *m.get_mut(format!("o-{i}").as_str()).unwrap() += 1;
            m.remove(format!("o-{}", i + 5_000).as_str());
        }
        m.insert("new".into(), 7);
        for (_, v) in m.iter_mut() {
            *v += 1;
        }
        assert_eq!(copy.len(), 10_000);
        assert_eq!(copy.iter().count(), 10_000);
        assert!(copy.iter().all(|(k, v)| **k == *format!("o-{v}")));
        assert_eq!(m.len(), 5_001);
        assert_eq!(m.iter().count(), 5_001);
        assert_eq!(m.get("o-3"), Some(&5));
        assert_eq!(m.get("new"), Some(&8));
        assert!(!m.contains_key("o-6000") && copy.contains_key("o-6000"));
        // Encoded as a map: a std HashMap reads it back.
        let mut buf = Vec::new();
        ciborium::into_writer(&copy, &mut buf).unwrap();
        let back: HashMap<Box<str>, u64> = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(back.len(), 10_000);
        let again: CowMap<u64> = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(again.len(), 10_000);
        assert_eq!(again.get("o-42"), Some(&42));
    }
}
