//! Lookup tables: reference data (customer id → tier, segment; sku → price)
//! read from a CSV, JSON or YAML file, keyed by one column, and reloaded when
//! the file changes.
//!
//! Formats:
//! - **CSV**: a header row naming the columns, then one row per record. Cells are
//!   trimmed strings; an empty cell is absent.
//! - **JSON**: an array of objects: `[{"id": "c1", "tier": "gold"}, …]`.
//! - **YAML**: a list of maps: `- {id: c1, tier: gold}`.
//!
//! JSON and YAML cells may be strings, integers, floats or booleans (`null` is
//! absent; nested lists and maps are an error). The key column must be present
//! and non-empty in every row (strings or integers). When a key appears twice,
//! the later row wins and a warning is logged.
//!
//! **Reloading** ([`Lookup::watch`]): the file's modification time, size and inode
//! are polled every interval; when they change, the file is read and parsed, and
//! the new table replaces the old one atomically (readers see either the old or
//! the new table, never a mix, and never wait). A new version that cannot be read
//! or parsed leaves the old table in place, logs an error naming the file and the
//! line, and increments `bizpilot_lookup_reload_errors_total{table}`. That version
//! is not retried until the file changes again. Successful reloads count in
//! `bizpilot_lookup_reloads_total{table}`; the gauge `bizpilot_lookup_rows{table}`
//! holds the row count.

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, counter, gauge};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// File format of a lookup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Csv,
    Json,
    Yaml,
}

impl TableFormat {
    /// The format named by a file's extension (`.csv`, `.json`, `.yaml`/`.yml`).
    pub fn from_path(p: &Path) -> Option<TableFormat> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(TableFormat::Csv),
            "json" => Some(TableFormat::Json),
            "yaml" | "yml" => Some(TableFormat::Yaml),
            _ => None,
        }
    }
}

impl fmt::Display for TableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableFormat::Csv => "csv",
            TableFormat::Json => "json",
            TableFormat::Yaml => "yaml",
        })
    }
}

/// One cell of a lookup table.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl LookupValue {
    /// The cell as an OTLP attribute value.
    pub fn to_value(&self) -> Value {
        match self {
            LookupValue::Str(s) => Value::StringValue(s.clone()),
            LookupValue::Int(i) => Value::IntValue(*i),
            LookupValue::Double(d) => Value::DoubleValue(*d),
            LookupValue::Bool(b) => Value::BoolValue(*b),
        }
    }

    /// The cell as text.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            LookupValue::Str(s) => Cow::Borrowed(s),
            LookupValue::Int(i) => Cow::Owned(i.to_string()),
            LookupValue::Double(d) => Cow::Owned(d.to_string()),
            LookupValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

/// One row: the non-empty cells by column name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    cells: Vec<(Arc<str>, LookupValue)>,
}

impl Row {
    /// The cell of `column`, if present.
    pub fn get(&self, column: &str) -> Option<&LookupValue> {
        self.cells.iter().find(|(c, _)| &**c == column).map(|(_, v)| v)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LookupValue)> {
        self.cells.iter().map(|(c, v)| (&**c, v))
    }
}

/// Why a table could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl ParseError {
    fn new(line: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

/// A parsed table.
#[derive(Debug, Clone, Default)]
pub struct LookupTable {
    key: String,
    rows: HashMap<String, Row>,
    columns: Vec<Arc<str>>,
    duplicates: usize,
}

/// Interns column names so rows share them.
#[derive(Default)]
struct Columns {
    names: Vec<Arc<str>>,
}

impl Columns {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(c) = self.names.iter().find(|c| &***c == name) {
            return c.clone();
        }
        let c: Arc<str> = Arc::from(name);
        self.names.push(c.clone());
        c
    }
}

impl LookupTable {
    /// Parses `text` in `format`, keyed by the column `key`.
    pub fn parse(text: &str, format: TableFormat, key: &str) -> Result<LookupTable, ParseError> {
        let mut cols = Columns::default();
        let rows = match format {
            TableFormat::Csv => parse_csv(text, key, &mut cols)?,
            TableFormat::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                let rows = TableSeed { key, cols: &mut cols }
                    .deserialize(&mut de)
                    .map_err(|e| ParseError::new(Some(e.line()).filter(|l| *l > 0), e.to_string()))?;
                de.end().map_err(|e| ParseError::new(Some(e.line()), e.to_string()))?;
                rows
            }
            TableFormat::Yaml => {
                let de = serde_yaml::Deserializer::from_str(text);
                TableSeed { key, cols: &mut cols }
                    .deserialize(de)
                    .map_err(|e| ParseError::new(e.location().map(|l| l.line()), e.to_string()))?
            }
        };
        let mut map = HashMap::with_capacity(rows.len());
        let mut duplicates = 0;
        for (k, row) in rows {
            if map.insert(k, row).is_some() {
                duplicates += 1;
            }
        }
        Ok(LookupTable {
            key: key.to_string(),
            rows: map,
            columns: cols.names,
            duplicates,
        })
    }

    /// The row whose key column is `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Row> {
        self.rows.get(key)
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The key column.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// Every column seen, in first-seen order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| &**c)
    }
    /// Rows whose key repeated an earlier row's (the later row was kept).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }
}

fn parse_csv(text: &str, key: &str, cols: &mut Columns) -> Result<Vec<(String, Row)>, ParseError> {
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize);
        ParseError::new(line, e.to_string())
    };
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(csv_err)?.clone();
    if headers.is_empty() {
        return Err(ParseError::new(Some(1), "no header row"));
    }
    let names: Vec<Arc<str>> = headers.iter().map(|h| cols.intern(h)).collect();
    let key_idx = headers
        .iter()
        .position(|h| h == key)
        .ok_or_else(|| ParseError::new(Some(1), format!("no column named {key:?} (the key) in the header")))?;
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map(|p| p.line() as usize);
        let k = rec.get(key_idx).unwrap_or("");
        if k.is_empty() {
            return Err(ParseError::new(line, format!("empty key column {key:?}")));
        }
        let cells = names
            .iter()
            .zip(rec.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(c, v)| (c.clone(), LookupValue::Str(v.to_string())))
            .collect();
        rows.push((k.to_string(), Row { cells }));
    }
    Ok(rows)
}

/// Deserializes a sequence of maps into rows keyed by `key`.
struct TableSeed<'a> {
    key: &'a str,
    cols: &'a mut Columns,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = Vec<(String, Row)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_> {
    type Value = Vec<(String, Row)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of rows (maps from column to value)")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        while let Some(r) = seq.next_element_seed(RowSeed {
            key: self.key,
            cols: &mut *self.cols,
        })? {
            rows.push(r);
        }
        Ok(rows)
    }
}

struct RowSeed<'a> {
    key: &'a str,
    cols: &'a mut Columns,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = (String, Row);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = (String, Row);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row: a map from column to value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut cells = Vec::new();
        let mut key = None;
        while let Some(col) = map.next_key::<String>()? {
            let Cell(v) = map.next_value()?;
            let Some(v) = v else { continue };
            if col == self.key {
                let k = match &v {
                    LookupValue::Str(s) => s.trim().to_string(),
                    LookupValue::Int(i) => i.to_string(),
                    _ => {
                        return Err(de::Error::custom(format!(
                            "the key column {:?} must be a string or an integer",
                            self.key
                        )));
                    }
                };
                if k.is_empty() {
                    return Err(de::Error::custom(format!("empty key column {:?}", self.key)));
                }
                key = Some(k);
            }
            cells.push((self.cols.intern(&col), v));
        }
        match key {
            Some(k) => Ok((k, Row { cells })),
            None => Err(de::Error::custom(format!("row without the key column {:?}", self.key))),
        }
    }
}

/// A scalar cell; `None` for null.
struct Cell(Option<LookupValue>);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cell;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell, E> {
                Ok(Cell(Some(LookupValue::Str(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Cell, E> {
                Ok(Cell(Some(LookupValue::Str(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell, E> {
                Ok(Cell(Some(LookupValue::Int(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell, E> {
                Ok(Cell(Some(match i64::try_from(v) {
                    Ok(i) => LookupValue::Int(i),
                    Err(_) => LookupValue::Str(v.to_string()),
                })))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell, E> {
                Ok(Cell(Some(LookupValue::Double(v))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cell, E> {
                Ok(Cell(Some(LookupValue::Bool(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
                Ok(Cell(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Cell, E> {
                Ok(Cell(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Cell, A::Error> {
                Err(de::Error::custom("nested lists are not supported in a lookup table"))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Cell, A::Error> {
                Err(de::Error::custom("nested maps are not supported in a lookup table"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A lookup table file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", location(path, *line))]
pub struct LookupError {
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// Result of one check of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file did not change (or changed to a version already rejected).
    Unchanged,
    /// A new version is live, with this many rows.
    Reloaded(usize),
    /// A new version was rejected; the old table stays.
    Failed(LookupError),
}

/// Counter values of a lookup table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    pub rows: usize,
    pub reloads: u64,
    pub reload_errors: u64,
}

/// A live lookup table bound to its file. Cheap to read from many threads.
pub struct Lookup {
    name: String,
    path: PathBuf,
    format: TableFormat,
    key: String,
    table: ArcSwap<LookupTable>,
    seen: Mutex<Option<Fingerprint>>,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    reloads_metric: Counter,
    errors_metric: Counter,
    rows_metric: Gauge,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("format", &self.format)
            .field("key", &self.key)
            .field("rows", &self.table.load().len())
            .finish()
    }
}

impl Lookup {
    /// Reads the file the first time. `name` labels logs and metrics; `format` defaults
    /// to the file's extension. Fails if the file cannot be read or parsed.
    pub fn open(
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        format: Option<TableFormat>,
        key: impl Into<String>,
    ) -> Result<Lookup, LookupError> {
        let name = name.into();
        let path = path.into();
        let key = key.into();
        let format = match format.or_else(|| TableFormat::from_path(&path)) {
            Some(f) => f,
            None => {
                return Err(LookupError {
                    path,
                    line: None,
                    message: "cannot tell the format from the file name: set format to csv, json or yaml".into(),
                });
            }
        };
        let fp = fingerprint(&path).map_err(|e| LookupError {
            path: path.clone(),
            line: None,
            message: e.to_string(),
        })?;
        let table = read_table(&path, format, &key)?;
        let lookup = Lookup {
            reloads_metric: counter!("bizpilot_lookup_reloads_total", "table" => name.clone()),
            errors_metric: counter!("bizpilot_lookup_reload_errors_total", "table" => name.clone()),
            rows_metric: gauge!("bizpilot_lookup_rows", "table" => name.clone()),
            name,
            path,
            format,
            key,
            table: ArcSwap::from_pointee(LookupTable::default()),
            seen: Mutex::new(Some(fp)),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        };
        lookup.install(table);
        Ok(lookup)
    }

    fn install(&self, table: LookupTable) {
        if table.duplicates() > 0 {
            tracing::warn!(
                table = %self.name,
                file = %self.path.display(),
                duplicates = table.duplicates(),
                "lookup table has repeated keys; the later rows were kept"
            );
        }
        self.rows_metric.set(table.len() as f64);
        self.table.store(Arc::new(table));
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn format(&self) -> TableFormat {
        self.format
    }
    /// The key column.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current table. Hold it for a batch, not forever: a reload installs a new one.
    pub fn table(&self) -> Arc<LookupTable> {
        self.table.load_full()
    }

    /// Runs `f` on the row of `key` in the current table.
    pub fn with_row<R>(&self, key: &str, f: impl FnOnce(&Row) -> R) -> Option<R> {
        let t = self.table.load();
        t.get(key).map(f)
    }

    pub fn stats(&self) -> LookupStats {
        LookupStats {
            rows: self.table.load().len(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_errors: self.reload_errors.load(Ordering::Relaxed),
        }
    }

    /// Checks the file once and reloads it if it changed (blocking file I/O).
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let fp = match fingerprint(&self.path) {
            Ok(fp) => fp,
            Err(e) => {
                // A file briefly missing while being replaced is not an error worth a
                // counter every poll; report it once per disappearance.
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.is_none() {
                    return ReloadOutcome::Unchanged;
                }
                *seen = None;
                drop(seen);
                let err = LookupError {
                    path: self.path.clone(),
                    line: None,
                    message: e.to_string(),
                };
                return self.failed(err);
            }
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == Some(fp) {
                return ReloadOutcome::Unchanged;
            }
            *seen = Some(fp);
        }
        match read_table(&self.path, self.format, &self.key) {
            Ok(t) => {
                let n = t.len();
                self.install(t);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.reloads_metric.increment(1);
                tracing::info!(table = %self.name, file = %self.path.display(), rows = n, "lookup table reloaded");
                ReloadOutcome::Reloaded(n)
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: LookupError) -> ReloadOutcome {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
        self.errors_metric.increment(1);
        tracing::error!(
            table = %self.name,
            file = %self.path.display(),
            line = e.line,
            error = %e,
            "lookup table reload failed; keeping the previous version"
        );
        ReloadOutcome::Failed(e)
    }

    /// Polls the file every `interval` until `shutdown` is cancelled, reloading on change.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.reload_if_changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn read_table(path: &Path, format: TableFormat, key: &str) -> Result<LookupTable, LookupError> {
    let text = std::fs::read_to_string(path).map_err(|e| LookupError {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    })?;
    LookupTable::parse(&text, format, key).map_err(|e| LookupError {
        path: path.to_path_buf(),
        line: e.line,
        message: e.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_tables() {
        let t = LookupTable::parse("id, tier ,ltv\nc1,gold,100.5\n c2 ,silver,\n", TableFormat::Csv, "id").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("c1").unwrap().get("tier"), Some(&LookupValue::Str("gold".into())));
        assert_eq!(t.get("c2").unwrap().get("ltv"), None);
        assert_eq!(t.columns().collect::<Vec<_>>(), ["id", "tier", "ltv"]);
        let e = LookupTable::parse("id,tier\nc1,gold\nc2,silver,extra\n", TableFormat::Csv, "id").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = LookupTable::parse("id,tier\nc1,gold\n,silver\n", TableFormat::Csv, "id").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = LookupTable::parse("name,tier\nc1,gold\n", TableFormat::Csv, "id").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn json_tables() {
        let t = LookupTable::parse(
            r#"[{"id": "c1", "tier": "gold", "n": 3, "x": null}, {"id": 42, "vip": true, "ltv": 1.5}]"#,
            TableFormat::Json,
            "id",
        )
        .unwrap();
        assert_eq!(t.get("c1").unwrap().get("n"), Some(&LookupValue::Int(3)));
        assert_eq!(t.get("c1").unwrap().get("x"), None);
        assert_eq!(t.get("42").unwrap().get("vip"), Some(&LookupValue::Bool(true)));
        let e = LookupTable::parse("[\n{\"id\": \"a\"},\n{\"tier\": \"x\"}\n]", TableFormat::Json, "id").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = LookupTable::parse("[\n{\"id\": \"a\"},\n{\"id\": \"b\",,}\n]", TableFormat::Json, "id").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = LookupTable::parse("[{\"id\": {\"a\": 1}}]", TableFormat::Json, "id").unwrap_err();
        assert!(e.message.contains("nested"), "{e:?}");
    }

    #[test]
    fn yaml_tables() {
        let t = LookupTable::parse(
            "- id: c1\n  tier: gold\n- {id: c2, tier: silver}\n",
            TableFormat::Yaml,
            "id",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("c2").unwrap().get("tier").unwrap().as_str(), "silver");
        let e = LookupTable::parse("- id: c1\n  tier: gold\n- tier: silver\n", TableFormat::Yaml, "id").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = LookupTable::parse("- id: c1\n  tier: [gold\n", TableFormat::Yaml, "id").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
        let dup = LookupTable::parse("- {id: a, t: 1}\n- {id: a, t: 2}\n", TableFormat::Yaml, "id").unwrap();
        assert_eq!((dup.len(), dup.duplicates()), (1, 1));
        assert_eq!(dup.get("a").unwrap().get("t"), Some(&LookupValue::Int(2)));
    }

    #[test]
    fn reload_keeps_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customers.csv");
        std::fs::write(&path, "id,tier\nc1,gold\n").unwrap();
        let l = Lookup::open("customers", &path, None, "id").unwrap();
        assert_eq!(l.format(), TableFormat::Csv);
        assert_eq!(l.reload_if_changed(), ReloadOutcome::Unchanged);
        std::fs::write(&path, "id,tier\nc1,gold\nc2,silver,oops\n").unwrap();
        let ReloadOutcome::Failed(e) = l.reload_if_changed() else {
            panic!("expected a failure")
        };
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("customers.csv:3"), "{e}");
        assert_eq!(
            l.reload_if_changed(),
            ReloadOutcome::Unchanged,
            "a rejected version is not retried"
        );
        assert_eq!(
            l.with_row("c1", |r| r.get("tier").unwrap().as_str().into_owned())
                .as_deref(),
            Some("gold")
        );
        std::fs::write(&path, "id,tier\nc1,platinum\nc2,silver\nc3,bronze\n").unwrap();
        assert_eq!(l.reload_if_changed(), ReloadOutcome::Reloaded(3));
        assert_eq!(l.table().get("c1").unwrap().get("tier").unwrap().as_str(), "platinum");
        assert_eq!(
            l.stats(),
            LookupStats {
                rows: 3,
                reloads: 1,
                reload_errors: 1
            }
        );
        assert!(Lookup::open("x", dir.path().join("missing.csv"), None, "id").is_err());
        assert!(Lookup::open("x", dir.path().join("t.txt"), None, "id").is_err());
    }
}
