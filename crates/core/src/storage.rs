//! Durable key-value storage for component state, in the shape of the OpenTelemetry
//! Collector's storage API (`extension/xextension/storage`): a *storage extension* (such as
//! `file_storage`) hands each stateful component its own namespace, a [`StorageClient`], in
//! which the component writes checkpoints and from which it restores them at start.
//!
//! A component finds its storage by the extension id its config names:
//! `ctx.extensions.get::<StorageHandle>(&id)?.client(&ctx.id.to_string())`. Storage
//! extensions are started before every other extension, so a component that restores its
//! state in `create` finds them whatever the order of `service.extensions`.
//!
//! Keys and values are bytes; what they mean (and their format version) is the component's
//! business. Writes are applied in batches, atomically: after a crash a namespace holds the
//! state of some complete batch, never half of one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Why storage could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The file could not be opened, read or written.
    #[error("storage file {path}: {reason}")]
    Io { path: String, reason: String },
    /// The file exists but is not a storage file of this format (corrupt, foreign or from a
    /// newer version).
    #[error(
        "storage file {path} is not usable: {reason} (move it away, or set `recreate: true` on the storage \
         extension to start from empty state, keeping the old file beside it)"
    )]
    Unusable { path: String, reason: String },
    /// A component's stored state could not be read back.
    #[error("stored state of {owner}: {reason}")]
    Decode { owner: String, reason: String },
}

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A component's own namespace in a storage extension.
pub trait StorageClient: Send + Sync {
    /// Every key and value of the namespace, in key order.
    fn load_all(&self) -> Result<Entries, StorageError>;
    /// Applies `ops` in order, atomically and durably (when this returns `Ok`, a crash keeps them).
    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError>;
    /// At most `limit` entries whose key is at least `from`, in key order: reading a large namespace in bounded
    /// chunks. The default reads the whole namespace; stores override it with a range read.
    fn scan(&self, from: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let mut all = self.load_all()?;
        all.retain(|(k, _)| k.as_slice() >= from);
        all.truncate(limit);
        Ok(all)
    }
}

/// A storage extension: namespaces by owner (the component id).
pub trait Storage: Send + Sync {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError>;
}

/// What a storage extension shares with other components (through `Extensions::get`).
#[derive(Clone)]
pub struct StorageHandle(pub Arc<dyn Storage>);

impl std::fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageHandle")
    }
}

impl StorageHandle {
    pub fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        self.0.client(owner)
    }
}

/// The namespace of component `owner` in the storage extension whose id a component's config names (its
/// `storage:` key): the one way components resolve their storage. A bad id or a missing extension is a config
/// error; storage that cannot be opened is reported as is.
pub fn client_for(
    extensions: &crate::Extensions,
    storage: &str,
    owner: &str,
) -> Result<Arc<dyn StorageClient>, crate::ComponentError> {
    let id: crate::ComponentId = storage
        .parse()
        .map_err(|e| crate::ComponentError::Config(format!("storage: {e}")))?;
    let handle = extensions
        .get::<StorageHandle>(&id)
        .map_err(|e| crate::ComponentError::Config(format!("storage: {e}")))?;
    handle
        .client(owner)
        .map_err(|e| crate::ComponentError::Other(e.to_string()))
}

/// Extension types that provide storage: started before the other extensions.
pub const STORAGE_EXTENSION_TYPES: &[&str] = &["file_storage"];

/// Storage in memory, for tests: survives as long as the value (clones share it).
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    spaces: Arc<Mutex<BTreeMap<String, Arc<MemoryClient>>>>,
}

/// A namespace of [`MemoryStorage`].
#[derive(Debug, Default)]
pub struct MemoryClient {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Storage for MemoryStorage {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(spaces.entry(owner.to_string()).or_default().clone())
    }
}

impl StorageClient for MemoryClient {
    fn load_all(&self) -> Result<Entries, StorageError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                StorageOp::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                StorageOp::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, from: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .range(from.to_vec()..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_keeps_namespaces_apart_and_applies_in_order() {
        let s = StorageHandle(Arc::new(MemoryStorage::default()));
        let a = s.client("a").unwrap();
        let b = s.client("b").unwrap();
        a.apply(&[
            StorageOp::Put(b"k".to_vec(), b"1".to_vec()),
            StorageOp::Put(b"j".to_vec(), b"2".to_vec()),
            StorageOp::Delete(b"k".to_vec()),
        ])
        .unwrap();
        assert_eq!(a.load_all().unwrap(), vec![(b"j".to_vec(), b"2".to_vec())]);
        assert!(b.load_all().unwrap().is_empty());
        // A second client of the same owner sees the same namespace.
        assert_eq!(s.client("a").unwrap().load_all().unwrap().len(), 1);
    }
}
