//! The `lookup` extension: a reference table (customer id → tier, segment,
//! lifetime value; sku → price…) read from a CSV, JSON or YAML file, keyed by
//! one column, and reloaded without a restart when the file changes.
//!
//! The `enrich` processor joins it onto spans by a key attribute; other
//! components get it with `ctx.extensions.get::<bizpilot_business::Lookup>(&id)`.
//!
//! The file must be readable and valid when bizpilot starts. Afterwards its
//! modification time, size and inode are polled every `reload_interval`; a
//! changed file is parsed and swapped in atomically. A new version that is
//! malformed is rejected: the previous table stays live, the error is logged
//! with the file and line, and `bizpilot_lookup_reload_errors_total{table}` is
//! incremented (`table` is the extension id). See [`bizpilot_business::lookup`]
//! for the formats.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `file` | (required) | path of the table file |
//! | `format` | from the file extension | `csv`, `json` (an array of objects) or `yaml` (a list of maps) |
//! | `key` | (required) | the column rows are looked up by |
//! | `reload_interval` | `2s` | how often the file is checked for changes; `0` never reloads |
//!
//! ```yaml
//! extensions:
//!   lookup/customers:
//!     file: /etc/bizpilot/customers.csv
//!     key: customer_id
//!     reload_interval: 5s
//! service:
//!   extensions: [lookup/customers]
//! ```

use serde::Deserialize;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bizpilot_business::{Lookup, TableFormat};
use bizpilot_core::config::Duration;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Extension, ExtensionContext,
    ExtensionFactory, FieldError, Running, Stability,
};

/// The component type name.
pub const TYPE: &str = "lookup";

/// Config of the `lookup` extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    pub file: PathBuf,
    pub format: Option<TableFormat>,
    pub key: String,
    pub reload_interval: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            file: PathBuf::new(),
            format: None,
            key: String::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

impl ComponentConfig for LookupConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.file.as_os_str().is_empty() {
            errs.push(FieldError::new("file", "required: the path of the table file"));
        } else if self.format.is_none() && TableFormat::from_path(&self.file).is_none() {
            errs.push(FieldError::new(
                "format",
                format!(
                    "cannot tell the format of {} from its name: set format to csv, json or yaml",
                    self.file.display()
                ),
            ));
        }
        if self.key.trim().is_empty() {
            errs.push(FieldError::new("key", "required: the column rows are looked up by"));
        }
        errs
    }
}

/// Makes `lookup` extensions.
#[derive(Debug, Default, Clone, Copy)]
pub struct LookupExtensionFactory;

/// A running `lookup` extension.
pub struct LookupExtension {
    lookup: Arc<Lookup>,
    reload_interval: std::time::Duration,
}

impl LookupExtension {
    /// Opens the table file (it must be valid now).
    pub fn open(name: &str, config: &LookupConfig) -> Result<Self, ComponentError> {
        let lookup = Lookup::open(name, &config.file, config.format, config.key.clone())
            .map_err(|e| ComponentError::Other(format!("lookup table {e}")))?;
        Ok(LookupExtension {
            lookup: Arc::new(lookup),
            reload_interval: config.reload_interval.get(),
        })
    }

    pub fn lookup(&self) -> &Arc<Lookup> {
        &self.lookup
    }

    pub fn file(&self) -> &Path {
        self.lookup.path()
    }
}

impl ExtensionFactory for LookupExtensionFactory {
    type Config = LookupConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Extension,
            stability: Stability::Alpha,
            description: "Reference table from a CSV, JSON or YAML file, reloaded when it changes",
            signals: &[],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Arc<dyn Extension>, ComponentError> {
        Ok(Arc::new(LookupExtension::open(&ctx.id.to_string(), &config)?))
    }
}

impl Extension for LookupExtension {
    fn start(self: Arc<Self>, ctx: ExtensionContext) -> Result<Running, ComponentError> {
        if self.reload_interval.is_zero() {
            return Ok(Running::idle());
        }
        let lookup = self.lookup.clone();
        let every = self.reload_interval;
        Ok(Running::spawn(async move {
            lookup.watch(every, ctx.shutdown).await;
            Ok(())
        }))
    }

    fn shared(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self.lookup.clone()
    }
}
