//! The configuration model, in the OpenTelemetry Collector's shape:
//! `receivers`, `processors`, `exporters`, `connectors`, `extensions` and
//! `service` (`extensions`, `pipelines`, `telemetry`).
//!
//! [`validate`] checks everything before anything starts and reports every
//! problem at once, each with its dotted path and, where known, its file and line.

pub mod load;
pub mod types;

pub use load::{Diagnostic, Env, Location, ProcessEnv, RawConfig, Severity, Source, load};
pub use types::{ByteSize, ComponentId, Duration, PipelineId};

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::component::{ComponentKind, Registry};
use crate::pdata::Signal;

/// Log output settings (`service.telemetry.logs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsTelemetry {
    /// `trace`, `debug`, `info`, `warn` or `error`, or a `tracing` filter directive.
    pub level: String,
    /// `text` or `json`.
    pub encoding: LogEncoding,
}

impl Default for LogsTelemetry {
    fn default() -> Self {
        Self {
            level: "info".into(),
            encoding: LogEncoding::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    Text,
    Json,
}

/// Self-telemetry endpoint settings (`service.telemetry.metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsTelemetry {
    /// Address of the admin server with `/metrics`, `/healthz`, `/readyz` and the data API
    /// `/api/v1/...`; empty disables it. Loopback by default, like the Collector's endpoints: the
    /// data API lists customers.
    pub address: String,
    /// Credentials the data API (`/api/v1/...`) requires from peers that are not on loopback.
    /// Without them, the data API answers only loopback peers (403 otherwise); `/metrics`,
    /// `/healthz` and `/readyz` stay open.
    pub auth: Option<AdminAuth>,
}

/// `service.telemetry.metrics.auth`: a static bearer token.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminAuth {
    /// Requests must send `authorization: Bearer <bearer_token>`.
    pub bearer_token: String,
}

/// The admin server's default address (loopback only).
pub const DEFAULT_ADMIN_ADDRESS: &str = "localhost:8888";

impl Default for MetricsTelemetry {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADMIN_ADDRESS.into(),
            auth: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub logs: LogsTelemetry,
    pub metrics: MetricsTelemetry,
}

/// One pipeline: receivers → processors (in order) → exporters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub receivers: Vec<ComponentId>,
    pub processors: Vec<ComponentId>,
    pub exporters: Vec<ComponentId>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServiceSection {
    extensions: Vec<ComponentId>,
    pipelines: Option<Value>,
    telemetry: TelemetryConfig,
    shutdown_timeout: Duration,
}

impl Default for ServiceSection {
    fn default() -> Self {
        Self {
            extensions: Vec::new(),
            pipelines: None,
            telemetry: TelemetryConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Raw config of every defined component, in file order.
    pub components: Vec<(ComponentKind, ComponentId, Value)>,
    /// Extensions enabled in `service.extensions`, in start order.
    pub extensions: Vec<ComponentId>,
    pub pipelines: Vec<(PipelineId, PipelineConfig)>,
    pub telemetry: TelemetryConfig,
    /// How long shutdown may take to drain accepted data to the exporters.
    pub shutdown_timeout: std::time::Duration,
}

impl Config {
    pub fn component(&self, kind: ComponentKind, id: &ComponentId) -> Option<&Value> {
        self.components
            .iter()
            .find(|(k, i, _)| *k == kind && i == id)
            .map(|(_, _, v)| v)
    }
}

const TOP_LEVEL: [&str; 6] = [
    "receivers",
    "processors",
    "exporters",
    "connectors",
    "extensions",
    "service",
];
const KINDS: [ComponentKind; 5] = [
    ComponentKind::Receiver,
    ComponentKind::Processor,
    ComponentKind::Exporter,
    ComponentKind::Connector,
    ComponentKind::Extension,
];

struct Checker<'a> {
    raw: &'a RawConfig,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        let mut d = Diagnostic::error(path.clone(), msg);
        d.location = self.raw.index.locate(&path);
        self.diags.push(d);
    }
    fn warning(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        let mut d = Diagnostic::warning(path.clone(), msg);
        d.location = self.raw.index.locate(&path);
        self.diags.push(d);
    }
}

fn yaml_key(k: &Value) -> Option<&str> {
    k.as_str()
}

fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (strsim(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!(" (did you mean {c:?}?)"),
        None => String::new(),
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Checks a loaded config against the registry. Returns the config when there is
/// no error, and every diagnostic (errors and warnings) found.
pub fn validate(raw: &RawConfig, registry: &Registry) -> (Option<Config>, Vec<Diagnostic>) {
    let mut c = Checker { raw, diags: Vec::new() };
    let empty = serde_yaml::Mapping::new();
    let root = raw.root.as_mapping().unwrap_or(&empty);

    for (k, _) in root {
        match yaml_key(k) {
            Some(key) if TOP_LEVEL.contains(&key) => {}
            Some(key) => {
                let hint = suggest(key, TOP_LEVEL);
                c.error(
                    key,
                    format!("unknown top-level key{hint}; expected one of {}", TOP_LEVEL.join(", ")),
                );
            }
            None => c.error("", format!("invalid top-level key {k:?}")),
        }
    }

    // Component definitions.
    let mut components: Vec<(ComponentKind, ComponentId, Value)> = Vec::new();
    for kind in KINDS {
        let section = kind.section();
        let Some(v) = root.get(section) else { continue };
        if v.is_null() {
            continue;
        }
        let Some(map) = v.as_mapping() else {
            c.error(section, "must be a mapping of component id to its settings");
            continue;
        };
        for (k, cfg) in map {
            let Some(key) = yaml_key(k) else {
                c.error(section, format!("invalid component id {k:?}"));
                continue;
            };
            let path = format!("{section}.{key}");
            let id: ComponentId = match key.parse() {
                Ok(id) => id,
                Err(e) => {
                    c.error(path, e);
                    continue;
                }
            };
            match registry.get(kind, id.type_name()) {
                None => {
                    let known = registry.types(kind);
                    let hint = suggest(id.type_name(), known.iter().copied());
                    c.error(
                        path,
                        format!(
                            "unknown {} type {:?}{hint}; known types: {}",
                            kind.as_str(),
                            id.type_name(),
                            known.join(", ")
                        ),
                    );
                }
                Some(f) => {
                    if let Err(errs) = f.check(cfg) {
                        for e in errs {
                            let p = if e.path.is_empty() {
                                path.clone()
                            } else {
                                format!("{path}.{}", e.path)
                            };
                            c.error(p, e.message);
                        }
                    }
                }
            }
            components.push((kind, id, cfg.clone()));
        }
    }
    let defined = |kind: ComponentKind, id: &ComponentId| components.iter().any(|(k, i, _)| *k == kind && i == id);

    // Service section.
    let service_val = root.get("service").cloned().unwrap_or(Value::Null);
    let service: ServiceSection = if service_val.is_null() {
        c.error(
            "service",
            "missing: at least one pipeline must be defined in service.pipelines",
        );
        ServiceSection::default()
    } else {
        match serde_path_to_error::deserialize::<_, ServiceSection>(&service_val) {
            Ok(s) => s,
            Err(e) => {
                let p = e.path().to_string();
                c.error(format!("service.{p}"), e.into_inner().to_string());
                ServiceSection::default()
            }
        }
    };
    if tracing_level_invalid(&service.telemetry.logs.level) {
        c.error(
            "service.telemetry.logs.level",
            format!("invalid level {:?}", service.telemetry.logs.level),
        );
    }
    if let Some(auth) = &service.telemetry.metrics.auth
        && auth.bearer_token.trim().is_empty()
    {
        c.error(
            "service.telemetry.metrics.auth.bearer_token",
            "required when auth is set (e.g. ${env:BIZPILOT_ADMIN_TOKEN})",
        );
    }
    if !service.telemetry.metrics.address.is_empty()
        && service
            .telemetry
            .metrics
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
        && !service.telemetry.metrics.address.contains(':')
    {
        c.error(
            "service.telemetry.metrics.address",
            format!(
                "invalid address {:?} (expected host:port)",
                service.telemetry.metrics.address
            ),
        );
    }
    for (i, ext) in service.extensions.iter().enumerate() {
        if !defined(ComponentKind::Extension, ext) {
            c.error(
                format!("service.extensions[{i}]"),
                format!("extension {ext} is not defined in extensions"),
            );
        }
    }

    // Pipelines.
    let mut pipelines: Vec<(PipelineId, PipelineConfig)> = Vec::new();
    match &service.pipelines {
        None | Some(Value::Null) => {
            if !service_val.is_null() {
                c.error("service.pipelines", "missing: at least one pipeline must be defined");
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(key) = yaml_key(k) else {
                    c.error("service.pipelines", format!("invalid pipeline id {k:?}"));
                    continue;
                };
                let path = format!("service.pipelines.{key}");
                let pid: PipelineId = match key.parse() {
                    Ok(p) => p,
                    Err(e) => {
                        c.error(path, e);
                        continue;
                    }
                };
                let pc: PipelineConfig = match serde_path_to_error::deserialize(v) {
                    Ok(pc) => pc,
                    Err(e) => {
                        let p = e.path().to_string();
                        c.error(format!("{path}.{p}"), e.into_inner().to_string());
                        continue;
                    }
                };
                pipelines.push((pid, pc));
            }
            if m.is_empty() {
                c.error("service.pipelines", "at least one pipeline must be defined");
            }
        }
        Some(_) => c.error("service.pipelines", "must be a mapping of pipeline id to pipeline"),
    }

    let connector_info: HashMap<&ComponentId, &'static [(Signal, Signal)]> = components
        .iter()
        .filter(|(k, _, _)| *k == ComponentKind::Connector)
        .filter_map(|(_, id, _)| {
            registry
                .get(ComponentKind::Connector, id.type_name())
                .map(|f| (id, f.info().connects))
        })
        .collect();

    let mut used: HashSet<(ComponentKind, ComponentId)> = HashSet::new();
    // connector → (signals as exporter, signals as receiver)
    let mut connector_use: BTreeMap<ComponentId, (BTreeSet<Signal>, BTreeSet<Signal>)> = BTreeMap::new();

    for (pid, pc) in &pipelines {
        let base = format!("service.pipelines.{pid}");
        if pc.receivers.is_empty() {
            c.error(format!("{base}.receivers"), "a pipeline needs at least one receiver");
        }
        if pc.exporters.is_empty() {
            c.error(format!("{base}.exporters"), "a pipeline needs at least one exporter");
        }
        let lists: [(&str, &Vec<ComponentId>, ComponentKind); 3] = [
            ("receivers", &pc.receivers, ComponentKind::Receiver),
            ("processors", &pc.processors, ComponentKind::Processor),
            ("exporters", &pc.exporters, ComponentKind::Exporter),
        ];
        for (list, ids, kind) in lists {
            let mut seen = HashSet::new();
            for (i, id) in ids.iter().enumerate() {
                let path = format!("{base}.{list}[{i}]");
                if !seen.insert(id) {
                    c.error(path.clone(), format!("{id} is listed twice"));
                    continue;
                }
                let is_connector = kind != ComponentKind::Processor && defined(ComponentKind::Connector, id);
                if is_connector {
                    used.insert((ComponentKind::Connector, id.clone()));
                    let entry = connector_use.entry(id.clone()).or_default();
                    if kind == ComponentKind::Exporter {
                        entry.0.insert(pid.signal);
                    } else {
                        entry.1.insert(pid.signal);
                    }
                    continue;
                }
                if !defined(kind, id) {
                    let hint = suggest(
                        &id.to_string(),
                        components
                            .iter()
                            .filter(|(k, _, _)| *k == kind)
                            .map(|(_, i, _)| i.to_string())
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                    );
                    c.error(
                        path,
                        format!("{} {id} is not defined in {}{hint}", kind.as_str(), kind.section()),
                    );
                    continue;
                }
                used.insert((kind, id.clone()));
                if let Some(f) = registry.get(kind, id.type_name()) {
                    let info = f.info();
                    if !info.signals.contains(&pid.signal) {
                        c.error(
                            path,
                            format!(
                                "{} {id} does not support {} (supports: {})",
                                kind.as_str(),
                                pid.signal,
                                signal_list(info.signals)
                            ),
                        );
                    }
                }
            }
        }
    }

    for (id, (as_exporter, as_receiver)) in &connector_use {
        let path = format!("connectors.{id}");
        if as_exporter.is_empty() {
            c.error(
                path.clone(),
                "connector is used as a receiver but no pipeline exports to it",
            );
        }
        if as_receiver.is_empty() {
            c.error(
                path.clone(),
                "connector is used as an exporter but no pipeline receives from it",
            );
        }
        if let Some(pairs) = connector_info.get(id) {
            // As in the Collector: every signal the connector consumes must lead to at least one
            // signal it produces, and every signal it produces must come from one it consumes.
            let list = || {
                pairs
                    .iter()
                    .map(|(a, b)| format!("{a}→{b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for i in as_exporter {
                if !as_receiver.iter().any(|o| pairs.contains(&(*i, *o))) {
                    c.error(
                        path.clone(),
                        format!(
                            "connector consumes {i} but feeds no pipeline it can produce from it (supports: {})",
                            list()
                        ),
                    );
                }
            }
            for o in as_receiver {
                if !as_exporter.iter().any(|i| pairs.contains(&(*i, *o))) {
                    c.error(
                        path.clone(),
                        format!(
                            "connector feeds {o} pipelines but consumes nothing it turns into {o} (supports: {})",
                            list()
                        ),
                    );
                }
            }
        }
    }

    if let Some(cycle) = find_cycle(&pipelines, &connector_use) {
        c.error(
            "service.pipelines",
            format!("pipelines form a cycle through connectors: {}", cycle.join(" → ")),
        );
    }

    for (kind, id, _) in &components {
        if *kind == ComponentKind::Extension {
            if !service.extensions.contains(id) {
                c.warning(
                    format!("extensions.{id}"),
                    "defined but not enabled in service.extensions",
                );
            }
        } else if !used.contains(&(*kind, id.clone())) {
            c.warning(
                format!("{}.{id}", kind.section()),
                "defined but not used in any pipeline",
            );
        }
    }

    let has_error = c.diags.iter().any(Diagnostic::is_error);
    let config = (!has_error).then(|| Config {
        components,
        extensions: service.extensions.clone(),
        pipelines,
        telemetry: service.telemetry.clone(),
        shutdown_timeout: service.shutdown_timeout.get(),
    });
    (config, c.diags)
}

fn signal_list(s: &[Signal]) -> String {
    s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
}

fn tracing_level_invalid(level: &str) -> bool {
    tracing_subscriber::EnvFilter::builder().parse(level).is_err()
}

/// A cycle of pipelines linked by connectors, if any.
fn find_cycle(
    pipelines: &[(PipelineId, PipelineConfig)],
    connectors: &BTreeMap<ComponentId, (BTreeSet<Signal>, BTreeSet<Signal>)>,
) -> Option<Vec<String>> {
    let n = pipelines.len();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (a, (_, pa)) in pipelines.iter().enumerate() {
        for (b, (_, pb)) in pipelines.iter().enumerate() {
            let linked = pa
                .exporters
                .iter()
                .any(|e| connectors.contains_key(e) && pb.receivers.contains(e));
            if linked {
                edges[a].push(b);
            }
        }
    }
    // 0 = unvisited, 1 = on stack, 2 = done
    fn dfs(v: usize, edges: &[Vec<usize>], state: &mut [u8], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[v] = 1;
        stack.push(v);
        for &w in &edges[v] {
            if state[w] == 1 {
                let start = stack.iter().position(|&x| x == w).unwrap_or(0);
                let mut cyc = stack[start..].to_vec();
                cyc.push(w);
                return Some(cyc);
            }
            if state[w] == 0
                && let Some(c) = dfs(w, edges, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[v] = 2;
        None
    }
    let mut state = vec![0u8; n];
    for v in 0..n {
        if state[v] == 0 {
            let mut stack = Vec::new();
            if let Some(c) = dfs(v, &edges, &mut state, &mut stack) {
                return Some(c.into_iter().map(|i| pipelines[i].0.to_string()).collect());
            }
        }
    }
    None
}
