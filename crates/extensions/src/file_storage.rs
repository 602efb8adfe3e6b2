//! The `file_storage` extension: durable, crash-safe storage of component state in one local
//! file, like the OpenTelemetry Collector's `file_storage` (which keeps bbolt files). Stateful
//! components name it in their config (`storage: file_storage`) and checkpoint into their own
//! namespace; at start they restore from it, so a restart — graceful or `SIGKILL` — continues
//! their figures. See `docs/durable-state.md` for what is checkpointed, when, and what a crash
//! can lose.
//!
//! The file is a [redb](https://github.com/cberner/redb) database (pure Rust, ACID,
//! copy-on-write B-trees, crash-safe: a commit that returned survives a crash; a torn write
//! leaves the previous commit). Layout, versioned: a table `bizpilot.meta` holding
//! `format = "bizpilot-file-storage/1"`, and one table `state/<component id>` per component.
//! A file without that marker (another program's database, a newer format) or one redb cannot
//! read (corrupt) stops the start with an error naming the file, unless `recreate: true`, which
//! moves the unusable file aside (`<file>.unusable-<unix seconds>`) and starts from empty.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `directory` | `bizpilot-data` | directory of the file (relative to the working directory) |
//! | `create_directory` | `true` | create the directory (and parents) when missing |
//! | `file` | the extension id (`file_storage`, `file_storage_x` for `file_storage/x`) + `.redb` | file name in `directory` |
//! | `recreate` | `false` | start from empty (keeping the unusable file beside it) when the file is corrupt or foreign |
//!
//! ```yaml
//! extensions:
//!   file_storage:
//!     directory: ${env:BIZPILOT_STORAGE_DIR:-/var/lib/bizpilot}
//!   business_state:
//!     storage: file_storage
//! service:
//!   extensions: [file_storage, business_state]
//! ```
//!
//! Only one process may open a file at a time; a second one fails to start with "already open". redb's page cache
//! is bounded at 2 MiB (at most half of it dirty pages of the open write; the rest goes to the file as written).
//! Self-telemetry (label `extension`): `bizpilot_storage_commits_total`,
//! `bizpilot_storage_commit_errors_total`, `bizpilot_storage_file_bytes` (gauge, after each commit).

use serde::Deserialize;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bizpilot_core::storage::{Entries, Storage, StorageClient, StorageError, StorageHandle, StorageOp};
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Extension, ExtensionContext,
    ExtensionFactory, FieldError, Running, Stability,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The component type name.
pub const TYPE: &str = "file_storage";

/// The format marker written into every file.
pub const FORMAT: &str = "bizpilot-file-storage/1";

const META: TableDefinition<&str, &str> = TableDefinition::new("bizpilot.meta");

/// redb's page cache: 2 MiB (redb's default, 1 GiB, lets the resident size grow with everything written — a
/// journal of every span, for one — up to that much). Checkpoints are written, and read back once at start, so a
/// read cache buys little: redb keeps at most half of it as dirty pages of the open write transaction and writes
/// the rest to the file as it goes (the operating system's page cache still serves the re-reads). At 16 MiB the
/// checkpoints' commits held about 10 MB of heap at 50k spans/s (docs/one-walk.md, "Memory").
const CACHE_BYTES: usize = 2 * 1024 * 1024;

/// Config of the `file_storage` extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileStorageConfig {
    pub directory: PathBuf,
    pub create_directory: bool,
    pub file: Option<String>,
    pub recreate: bool,
}

impl Default for FileStorageConfig {
    fn default() -> Self {
        FileStorageConfig {
            directory: PathBuf::from("bizpilot-data"),
            create_directory: true,
            file: None,
            recreate: false,
        }
    }
}

impl ComponentConfig for FileStorageConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.directory.as_os_str().is_empty() {
            errs.push(FieldError::new("directory", "must not be empty"));
        }
        if let Some(f) = &self.file
            && (f.is_empty() || f.contains('/') || f == "." || f == "..")
        {
            errs.push(FieldError::new("file", "must be a plain file name (no directory)"));
        }
        errs
    }
}

/// Makes `file_storage` extensions.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorageExtensionFactory;

/// A running `file_storage` extension.
pub struct FileStorageExtension {
    storage: Arc<FileStorage>,
}

impl FileStorageExtension {
    pub fn path(&self) -> &Path {
        &self.storage.path
    }
}

impl ExtensionFactory for FileStorageExtensionFactory {
    type Config = FileStorageConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Extension,
            stability: Stability::Alpha,
            description: "Durable, crash-safe storage of component state (checkpoints) in a local file",
            signals: &[],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Arc<dyn Extension>, ComponentError> {
        let file = config
            .file
            .clone()
            .unwrap_or_else(|| format!("{}.redb", ctx.id.to_string().replace('/', "_")));
        if config.create_directory {
            std::fs::create_dir_all(&config.directory).map_err(|e| {
                ComponentError::Other(format!("file_storage directory {}: {e}", config.directory.display()))
            })?;
        }
        let path = config.directory.join(file);
        let storage = FileStorage::open(&path, config.recreate, &ctx.id.to_string())
            .map_err(|e| ComponentError::Other(e.to_string()))?;
        Ok(Arc::new(FileStorageExtension {
            storage: Arc::new(storage),
        }))
    }
}

impl Extension for FileStorageExtension {
    fn start(self: Arc<Self>, _ctx: ExtensionContext) -> Result<Running, ComponentError> {
        // Nothing runs: commits happen in the callers' checkpoints; the file closes when the
        // last client is dropped.
        Ok(Running::spawn(async { Ok(()) }))
    }

    fn shared(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        Arc::new(StorageHandle(self.storage.clone()))
    }
}

/// A redb file with bizpilot's layout.
pub struct FileStorage {
    db: Arc<Database>,
    path: PathBuf,
    extension: String,
}

fn io(path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn unusable(path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unusable {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl FileStorage {
    /// Opens (or creates) the file at `path`; with `recreate`, an unusable file is moved aside
    /// and a new one started.
    pub fn open(path: &Path, recreate: bool, extension: &str) -> Result<FileStorage, StorageError> {
        match Self::open_checked(path) {
            Ok(db) => Ok(FileStorage {
                db: Arc::new(db),
                path: path.to_path_buf(),
                extension: extension.to_string(),
            }),
            Err(e @ StorageError::Unusable { .. }) if recreate => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.unusable-{secs}", path.display()));
                std::fs::rename(path, &aside).map_err(|r| io(path, r))?;
                tracing::warn!(file = %path.display(), kept = %aside.display(), error = %e,
                    "storage file unusable; starting from empty state (recreate: true)");
                let db = Self::open_checked(path)?;
                Ok(FileStorage {
                    db: Arc::new(db),
                    path: path.to_path_buf(),
                    extension: extension.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path) -> Result<Database, StorageError> {
        let existed = path.exists();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => io(path, "already open by another process"),
                // redb reports a file that is not a database (or is torn) as invalid data.
                redb::DatabaseError::Storage(redb::StorageError::Io(err))
                    if !matches!(
                        err.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    io(path, err)
                }
                other => unusable(path, other),
            })?;
        if existed {
            let rtx = db.begin_read().map_err(|e| unusable(path, e))?;
            let format = match rtx.open_table(META) {
                Ok(t) => t
                    .get("format")
                    .map_err(|e| unusable(path, e))?
                    .map(|v| v.value().to_string()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(unusable(path, e)),
            };
            match format.as_deref() {
                Some(FORMAT) => return Ok(db),
                Some(other) => return Err(unusable(path, format!("format {other:?}, this build reads {FORMAT:?}"))),
                // A file redb created but nothing committed into yet (a crash at first start) is empty.
                None if rtx.list_tables().map_err(|e| unusable(path, e))?.next().is_some() => {
                    return Err(unusable(path, "not a bizpilot storage file (no format marker)"));
                }
                None => {}
            }
        }
        let wtx = db.begin_write().map_err(|e| io(path, e))?;
        {
            let mut meta = wtx.open_table(META).map_err(|e| io(path, e))?;
            meta.insert("format", FORMAT).map_err(|e| io(path, e))?;
        }
        wtx.commit().map_err(|e| io(path, e))?;
        Ok(db)
    }
}

impl Storage for FileStorage {
    fn client(&self, owner: &str) -> Result<Arc<dyn StorageClient>, StorageError> {
        Ok(Arc::new(FileClient {
            db: self.db.clone(),
            path: self.path.clone(),
            table: format!("state/{owner}"),
            commits: metrics::counter!("bizpilot_storage_commits_total", "extension" => self.extension.clone()),
            errors: metrics::counter!("bizpilot_storage_commit_errors_total", "extension" => self.extension.clone()),
            size: metrics::gauge!("bizpilot_storage_file_bytes", "extension" => self.extension.clone()),
        }))
    }
}

/// A component's table in a [`FileStorage`].
struct FileClient {
    db: Arc<Database>,
    path: PathBuf,
    table: String,
    commits: metrics::Counter,
    errors: metrics::Counter,
    size: metrics::Gauge,
}

impl FileClient {
    fn def(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    fn commit(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
        let path = &self.path;
        let wtx = self.db.begin_write().map_err(|e| io(path, e))?;
        {
            let mut t = wtx.open_table(self.def()).map_err(|e| io(path, e))?;
            for op in ops {
                match op {
                    StorageOp::Put(k, v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(|e| io(path, e))?;
                    }
                    StorageOp::Delete(k) => {
                        t.remove(k.as_slice()).map_err(|e| io(path, e))?;
                    }
                }
            }
        }
        wtx.commit().map_err(|e| io(path, e))
    }
}

impl StorageClient for FileClient {
    fn load_all(&self) -> Result<Entries, StorageError> {
        self.scan(&[], usize::MAX)
    }

    fn scan(&self, from: &[u8], limit: usize) -> Result<Entries, StorageError> {
        let path = &self.path;
        let rtx = self.db.begin_read().map_err(|e| io(path, e))?;
        let t = match rtx.open_table(self.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(unusable(path, e)),
        };
        let mut out = Vec::new();
        for item in t.range(from..).map_err(|e| unusable(path, e))?.take(limit) {
            let (k, v) = item.map_err(|e| unusable(path, e))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: &[StorageOp]) -> Result<(), StorageError> {
        match self.commit(ops) {
            Ok(()) => {
                self.commits.increment(1);
                if let Ok(m) = std::fs::metadata(&self.path) {
                    self.size.set(m.len() as f64);
                }
                Ok(())
            }
            Err(e) => {
                self.errors.increment(1);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> StorageOp {
        StorageOp::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn state_survives_reopening_and_namespaces_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = FileStorage::open(&path, false, "file_storage").unwrap();
            let a = s.client("business_state").unwrap();
            a.apply(&[put("o/1", "x"), put("o/2", "y")]).unwrap();
            a.apply(&[StorageOp::Delete(b"o/1".to_vec()), put("o/3", "z")]).unwrap();
            s.client("other").unwrap().apply(&[put("k", "v")]).unwrap();
        }
        let s = FileStorage::open(&path, false, "file_storage").unwrap();
        let got = s.client("business_state").unwrap().load_all().unwrap();
        assert_eq!(
            got,
            vec![(b"o/2".to_vec(), b"y".to_vec()), (b"o/3".to_vec(), b"z".to_vec())]
        );
        assert_eq!(s.client("other").unwrap().load_all().unwrap().len(), 1);
        assert!(s.client("new").unwrap().load_all().unwrap().is_empty());
    }

    #[test]
    fn scan_reads_in_key_order_from_a_key_at_most_limit_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(&dir.path().join("s.redb"), false, "file_storage").unwrap();
        let c = s.client("q").unwrap();
        c.apply(&[put("b", "2"), put("d", "4"), put("a", "1"), put("c", "3")])
            .unwrap();
        let keys = |e: Entries| {
            e.into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(c.scan(b"b", 2).unwrap()), ["b", "c"]);
        assert_eq!(keys(c.scan(b"bb", 10).unwrap()), ["c", "d"]);
        assert!(c.scan(b"e", 10).unwrap().is_empty());
        assert_eq!(keys(c.load_all().unwrap()), ["a", "b", "c", "d"]);
        assert!(s.client("empty").unwrap().scan(b"", 10).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused_naming_it_unless_recreate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.redb");
        std::fs::write(
            &path,
            b"this is not a database, it is a text file that someone put here",
        )
        .unwrap();
        let err = FileStorage::open(&path, false, "file_storage")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("recreate"), "{err}");
        // The file is untouched.
        assert!(std::fs::read(&path).unwrap().starts_with(b"this is not"));

        // A redb file of another program (no format marker) is foreign.
        let foreign = dir.path().join("foreign.redb");
        {
            let db = Database::create(&foreign).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(TableDefinition::<&str, u64>::new("theirs")).unwrap();
                t.insert("k", 1).unwrap();
            }
            w.commit().unwrap();
        }
        let err = FileStorage::open(&foreign, false, "file_storage")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no format marker"), "{err}");

        // recreate: start empty, keep the old file beside.
        let s = FileStorage::open(&path, true, "file_storage").unwrap();
        assert!(s.client("x").unwrap().load_all().unwrap().is_empty());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("bad.redb.unusable-"))
            .collect();
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_file_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(META).unwrap();
                t.insert("format", "bizpilot-file-storage/99").unwrap();
            }
            w.commit().unwrap();
        }
        let err = FileStorage::open(&path, false, "file_storage")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bizpilot-file-storage/99"), "{err}");
    }
}
