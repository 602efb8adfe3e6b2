//! `bizpilot test --config pipeline.yaml [TESTS…]`: unit tests for pipelines, in the spirit of `vector test`.
//!
//! A test file (YAML, by convention `pipelines/tests/<pipeline>.test.yaml`; without TESTS on the command line,
//! `tests/<stem>.test.yaml` next to each `--config` file) holds test cases. Each case feeds **inputs** (OTLP/JSON
//! requests, exactly what an OTLP/HTTP client sends, so spans, log records and business events seen elsewhere
//! can be pasted) into the config's pipelines and checks **outputs** at named points:
//!
//! ```yaml
//! tests:
//!   - name: a failed checkout puts the cart at risk
//!     inputs:
//!       - insert_at: otlp            # a receiver (every pipeline it feeds) or a pipeline id (only that pipeline);
//!         traces:                    #   optional when one receiver alone feeds the signal
//!           resourceSpans: [...]     # OTLP/JSON ExportTraceServiceRequest (or logs: / metrics:)
//!     outputs:
//!       - extract_from: enrich/opentelemetry-demo   # a processor, connector, exporter or pipeline id
//!         spans:
//!           - name: oteldemo.CheckoutService/PlaceOrder        # selects spans by name (optional)
//!             where: {user.id: c-1}                            # and by attribute values (optional)
//!             count: 1                                         # exactly this many selected (optional)
//!             attributes:
//!               business.currency: EUR                         # equals (numbers compared as exact decimals)
//!               business.order.size: {absent: true}
//!               business.customer.id: {regex: "^c-[0-9]+$"}
//!       - extract_from: business_impact
//!         metrics:
//!           - name: business.revenue.at_risk
//!             attributes: {operation: checkout, currency: EUR}  # a subset of the series' attributes; one series
//!             value: "123.45"                                   # exact decimal; or count:/sum: for histograms
//!           - {name: business.revenue.lost, attributes: {operation: checkout}, absent: true}
//!         logs:
//!           - name: business.impact                            # event name
//!             count: 1
//!             attributes: {business.cart.value: "123.45", business.currency: EUR}
//! ```
//!
//! **How a case runs.** In-process, with no network: the config's pipelines are built as `bizpilot run`
//! builds them, except that every receiver is replaced by an injection point and every exporter that would
//! leave the process (all but `business_events`, which writes the in-process business state) by a capture
//! sink; extensions and connectors stay. A `extract_from` point gets a transparent tap: after a processor (in
//! every pipeline that has it), at the start of the pipelines a connector feeds, at the end of a pipeline,
//! or in place of an exporter. Inputs are sent in order; each is handed on (acknowledged by everything
//! downstream) before the next is sent, waiting at most 10 s (a span held in a join window for an order
//! event that never comes is not waited for). After the last input the service shuts down as on SIGTERM:
//! held spans go on, connectors that keep time by the data make everything final (as `bizpilot replay`
//! does) and emit their last figures. Each case starts from a fresh service (empty state).
//!
//! **Expectations.** Span and log expectations hold when at least one selected item has every listed
//! attribute condition (`count` makes the selection exact); attributes are looked up on the item, then on
//! its resource. Metric expectations read the last point of the one series that carries the listed
//! attributes (metrics are cumulative: the last point is the final figure); money is compared exactly as a
//! decimal (a double point is read through its shortest decimal form, as the `enrich` processor reads
//! doubles). Log records are selected by `name` = their event name (`business.impact`, `business.incident`,
//! `kpi.at_risk`).
//!
//! **Output.** One line per case (`ok`/`FAILED`), each failed expectation with the test, the point, the
//! attribute and what was there instead, the item's whole attribute set, and the config rules that write the
//! attribute (`enrich/x rules[10]: {parse_money: …}`); then a summary line `N passed, M failed`. The exit
//! code is 1 when a case failed or a file could not be read, so it can gate CI.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bizpilot_core::pdata::proto::common::v1::{AnyValue, KeyValue, any_value::Value as AnyV};
use bizpilot_core::pdata::proto::metrics::v1::{metric::Data, number_data_point::Value as NumV};
use bizpilot_core::{
    Ack, Batch, ComponentError, ComponentId, ComponentInfo, ComponentKind, Config, CreateContext, Payload, Processor,
    ProcessorFactory, Receiver, ReceiverContext, ReceiverFactory, ReceiverOutput, Running, RunningService, Signal,
    Stability,
};
use serde::Deserialize;

/// Exporters that stay in a test run: they only write in-process state other components read.
const KEPT_EXPORTERS: [&str; 1] = ["business_events"];
/// How long an input may take to be handed on before the next is sent anyway.
const SETTLE: Duration = Duration::from_secs(10);

/// Why a test file or case could not run (as opposed to an expectation that failed).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Setup(String),
}

// ---------------------------------------------------------------------------------------------------------------
// The test file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    inputs: Vec<Input>,
    #[serde(default)]
    outputs: Vec<OutputSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    insert_at: Option<String>,
    #[serde(default)]
    traces: Option<serde_yaml::Value>,
    #[serde(default)]
    logs: Option<serde_yaml::Value>,
    #[serde(default)]
    metrics: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputSpec {
    extract_from: String,
    #[serde(default)]
    spans: Vec<ItemSpec>,
    #[serde(default)]
    logs: Vec<ItemSpec>,
    #[serde(default)]
    metrics: Vec<MetricSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "where")]
    where_: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    attributes: BTreeMap<String, Cond>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Cond {
    Ops(CondOps),
    Equals(serde_yaml::Value),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CondOps {
    #[serde(default)]
    equals: Option<serde_yaml::Value>,
    #[serde(default)]
    absent: Option<bool>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSpec {
    name: String,
    #[serde(default)]
    attributes: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    value: Option<serde_yaml::Value>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    sum: Option<serde_yaml::Value>,
    #[serde(default)]
    absent: bool,
}

fn parse_file(path: &Path) -> Result<TestFile, TestError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // serde_yaml's messages name the path inside the file and the line already.
    serde_yaml::from_str(&text).map_err(|e| TestError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Values.

/// A YAML scalar as the string it is compared as.
fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An attribute value as text: strings as they are, numbers in their shortest decimal form.
fn any_text(v: &AnyValue) -> String {
    match &v.value {
        None => String::new(),
        Some(AnyV::StringValue(s)) => s.clone(),
        Some(AnyV::StringValueStrindex(i)) => format!("(string table index {i})"),
        Some(AnyV::IntValue(i)) => i.to_string(),
        Some(AnyV::DoubleValue(d)) => d.to_string(),
        Some(AnyV::BoolValue(b)) => b.to_string(),
        Some(AnyV::BytesValue(b)) => bizpilot_connectors::kpi::output::hex(b),
        Some(AnyV::ArrayValue(a)) => format!("[{}]", a.values.iter().map(any_quoted).collect::<Vec<_>>().join(", ")),
        Some(AnyV::KvlistValue(l)) => format!(
            "{{{}}}",
            l.values
                .iter()
                .map(|kv| format!("{}: {}", kv.key, kv.value.as_ref().map(any_quoted).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn any_quoted(v: &AnyValue) -> String {
    match &v.value {
        Some(AnyV::StringValue(s)) => format!("{s:?}"),
        _ => any_text(v),
    }
}

/// `-012.3400` → `-12.34`; `None` when `s` is not a plain decimal number.
fn decimal(s: &str) -> Option<String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut out = String::new();
    if neg && !(int == "0" && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// Equal as text, or as exact decimals.
fn same(actual: &str, expected: &str) -> bool {
    actual == expected || matches!((decimal(actual), decimal(expected)), (Some(a), Some(e)) if a == e)
}

fn find<'a>(own: &'a [KeyValue], resource: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    own.iter()
        .chain(resource.iter())
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn attr_set(own: &[KeyValue]) -> String {
    let mut v: Vec<String> = own
        .iter()
        .map(|kv| format!("{}: {}", kv.key, kv.value.as_ref().map(any_quoted).unwrap_or_default()))
        .collect();
    v.sort();
    format!("{{{}}}", v.join(", "))
}

/// One line of YAML flow style, for quoting config.
fn flow(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        serde_yaml::Value::Sequence(s) => format!("[{}]", s.iter().map(flow).collect::<Vec<_>>().join(", ")),
        serde_yaml::Value::Tagged(t) => flow(&t.value),
        serde_yaml::Value::Null => "null".into(),
        other => scalar(other).unwrap_or_default(),
    }
}

/// Whether `v` writes `attr`: a string equal to it anywhere but under a `from`-like key.
fn writes(v: &serde_yaml::Value, attr: &str, under: Option<&str>) -> bool {
    match v {
        serde_yaml::Value::String(s) => s == attr && !matches!(under, Some(k) if k == "from" || k.ends_with("_from")),
        serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| writes(v, attr, k.as_str())),
        serde_yaml::Value::Sequence(s) => s.iter().any(|v| writes(v, attr, under)),
        serde_yaml::Value::Tagged(t) => writes(&t.value, attr, under),
        _ => false,
    }
}

/// Where the processors' configs write `attr`, one line each: a rule (`enrich/x rules[10]: {…}`) or a
/// setting (`redaction hash.attributes[1]`).
fn rules_writing(cfg: &Config, attr: &str) -> Vec<String> {
    fn settings(v: &serde_yaml::Value, attr: &str, path: &str, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let key = flow(k);
                    if key == "from" || key.ends_with("_from") {
                        continue;
                    }
                    let p = if path.is_empty() { key } else { format!("{path}.{key}") };
                    settings(v, attr, &p, out);
                }
            }
            serde_yaml::Value::Sequence(s) => {
                for (i, v) in s.iter().enumerate() {
                    settings(v, attr, &format!("{path}[{i}]"), out);
                }
            }
            serde_yaml::Value::Tagged(t) => settings(&t.value, attr, path, out),
            other => {
                if scalar(other).is_some_and(|s| s == attr) {
                    out.push(path.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (kind, id, raw) in &cfg.components {
        if *kind != ComponentKind::Processor {
            continue;
        }
        let rules = match raw.get("rules") {
            Some(serde_yaml::Value::Sequence(rules)) => rules.as_slice(),
            _ => &[],
        };
        for (i, r) in rules.iter().enumerate() {
            if writes(r, attr, None) {
                out.push(format!("{id} rules[{i}]: {}", flow(r)));
            }
        }
        if let serde_yaml::Value::Mapping(m) = raw {
            for (k, v) in m {
                if flow(k) != "rules" {
                    let mut found = Vec::new();
                    settings(v, attr, &flow(k), &mut found);
                    out.extend(found.into_iter().map(|p| format!("{id} {p}")));
                }
            }
        }
    }
    out
}

/// The item of a component's config list (`operations`, `goals`, …) whose `name` is `name`.
fn config_item_named(cfg: &Config, id: &str, name: &str) -> Option<String> {
    let (_, cid, raw) = cfg.components.iter().find(|(_, cid, _)| cid.to_string() == id)?;
    let m = raw.as_mapping()?;
    for (k, v) in m {
        if let serde_yaml::Value::Sequence(items) = v {
            for (i, it) in items.iter().enumerate() {
                if it.get("name").and_then(|n| n.as_str()) == Some(name) {
                    return Some(format!("{cid} {}[{i}]: {}", flow(k), flow(it)));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------------------------
// The injection points, taps and capture sinks.

#[derive(Default)]
struct Shared {
    /// Point name → what passed there, in order.
    captured: Mutex<HashMap<String, Vec<Payload>>>,
    /// Tap or capture component id → point name.
    points: Mutex<HashMap<String, String>>,
    /// Injection receiver id → its outputs (taken out before shutdown).
    injectors: Mutex<HashMap<String, ReceiverOutput>>,
}

impl Shared {
    fn capture(&self, id: &ComponentId, payload: &Payload) {
        let point = self
            .points
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id.to_string())
            .cloned();
        if let Some(p) = point {
            self.captured
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(p)
                .or_default()
                .push(payload.clone());
        }
    }
}

const INJECT: &str = "test_inject";
const TAP: &str = "test_tap";
const CAPTURE: &str = "test_capture";

/// The test components take no settings.
type NoConfig = bizpilot_connectors::forward::ForwardConfig;

fn info(type_name: &'static str, kind: ComponentKind, description: &'static str) -> ComponentInfo {
    ComponentInfo {
        type_name,
        kind,
        stability: Stability::Development,
        description,
        signals: &Signal::ALL,
        connects: &[],
    }
}

struct InjectFactory(Arc<Shared>);
struct Inject(Arc<Shared>);

impl ReceiverFactory for InjectFactory {
    type Config = NoConfig;
    fn info(&self) -> ComponentInfo {
        info(INJECT, ComponentKind::Receiver, "Test inputs (bizpilot test only).")
    }
    fn create(&self, _: NoConfig, _: &CreateContext<'_>) -> Result<Box<dyn Receiver>, ComponentError> {
        Ok(Box::new(Inject(self.0.clone())))
    }
}

impl Receiver for Inject {
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError> {
        self.0
            .injectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ctx.id.to_string(), ctx.output);
        Ok(Running::idle())
    }
}

struct TapFactory(Arc<Shared>);
struct Tap(Arc<Shared>, ComponentId);

impl ProcessorFactory for TapFactory {
    type Config = NoConfig;
    fn info(&self) -> ComponentInfo {
        info(
            TAP,
            ComponentKind::Processor,
            "Records what passes (bizpilot test only).",
        )
    }
    fn create(&self, _: NoConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        Ok(Box::new(Tap(self.0.clone(), ctx.id.clone())))
    }
}

impl Processor for Tap {
    fn into_stage(self: Box<Self>) -> Box<dyn bizpilot_core::Stage> {
        let Tap(shared, id) = *self;
        bizpilot_core::stage::map(move |b| {
            shared.capture(&id, &b.payload);
            Some(b)
        })
    }
}

struct CaptureFactory(Arc<Shared>);
struct Capture(Arc<Shared>);

impl bizpilot_core::ExporterFactory for CaptureFactory {
    type Config = NoConfig;
    fn info(&self) -> ComponentInfo {
        info(
            CAPTURE,
            ComponentKind::Exporter,
            "Keeps what it gets (bizpilot test only).",
        )
    }
    fn create(&self, _: NoConfig, _: &CreateContext<'_>) -> Result<Box<dyn bizpilot_core::Exporter>, ComponentError> {
        Ok(Box::new(Capture(self.0.clone())))
    }
}

impl bizpilot_core::Exporter for Capture {
    fn start(self: Box<Self>, ctx: bizpilot_core::ExporterContext) -> Result<Running, ComponentError> {
        let shared = self.0;
        let bizpilot_core::ExporterContext { id, mut input, .. } = ctx;
        Ok(Running::spawn(async move {
            while let Some(b) = input.recv().await {
                shared.capture(&id, &b.payload);
            }
            Ok(())
        }))
    }
}

fn cid(type_name: &str, name: String) -> ComponentId {
    ComponentId::new(type_name, Some(name))
}

/// The config of one case, rewired, and where each input goes.
struct Rewired {
    cfg: Config,
    /// Original receiver id → its injection receiver.
    receivers: HashMap<String, String>,
    /// Pipeline id → its own injection receiver.
    pipelines: HashMap<String, String>,
    /// The case's storage directory, removed when the case ends.
    _storage: Option<CaseDir>,
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct CaseDir(PathBuf);

impl CaseDir {
    fn create() -> std::io::Result<CaseDir> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("bizpilot-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(CaseDir(dir))
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::debug!(dir = %self.0.display(), error = %e, "could not remove a test's storage directory");
        }
    }
}

fn rewire(base: &Config, case: &TestCase, shared: &Shared) -> Result<Rewired, TestError> {
    let mut cfg = base.clone();
    let mut points = HashMap::new();
    // What `extract_from` names; when a receiver and an exporter share the id, the exporter (a receiver's output
    // is the test's input).
    let kind_of = |id: &str| -> Option<ComponentKind> {
        let mut kinds = base
            .components
            .iter()
            .filter(|(_, c, _)| c.to_string() == id)
            .map(|(k, _, _)| *k);
        let first = kinds.next()?;
        Some(match first {
            ComponentKind::Receiver => kinds.next().unwrap_or(first),
            _ => first,
        })
    };

    // Receivers → injection points.
    let mut receivers = HashMap::new();
    // Kept apart: a receiver and an exporter may share an id (`kafka/fleet` reads and writes one topic).
    let mut replaced_receivers: HashMap<ComponentId, ComponentId> = HashMap::new();
    let mut replaced_exporters: HashMap<ComponentId, ComponentId> = HashMap::new();
    let mut n = 0;
    for (k, id, _) in &base.components {
        if *k == ComponentKind::Receiver {
            n += 1;
            let inj = cid(INJECT, format!("r{n}"));
            receivers.insert(id.to_string(), inj.to_string());
            replaced_receivers.insert(id.clone(), inj);
        }
    }
    // Exporters that leave the process → capture sinks, each a point named after the exporter.
    for (k, id, _) in &base.components {
        if *k == ComponentKind::Exporter && !KEPT_EXPORTERS.contains(&id.type_name()) {
            n += 1;
            let cap = cid(CAPTURE, format!("e{n}"));
            points.insert(cap.to_string(), id.to_string());
            replaced_exporters.insert(id.clone(), cap);
        }
    }
    cfg.components.retain(|(k, id, _)| {
        !(*k == ComponentKind::Receiver || (*k == ComponentKind::Exporter && !KEPT_EXPORTERS.contains(&id.type_name())))
    });
    // Extensions that only listen (the probes' health_check) would open a port: no network here.
    let listens = |id: &ComponentId| id.type_name() == bizpilot_extensions::health_check::TYPE;
    cfg.extensions.retain(|id| !listens(id));
    cfg.components
        .retain(|(k, id, _)| !(*k == ComponentKind::Extension && listens(id)));
    // Durable storage would carry state from one case into the next: every case gets storage of its own, in a
    // fresh directory removed when the case ends, so the checkpoint and journal code runs in pipeline tests too.
    let stores = |id: &ComponentId| bizpilot_core::storage::STORAGE_EXTENSION_TYPES.contains(&id.type_name());
    let storage = if cfg.extensions.iter().any(stores) {
        let dir = CaseDir::create().map_err(|e| TestError::Setup(format!("storage directory: {e}")))?;
        for (k, id, v) in cfg.components.iter_mut() {
            if *k == ComponentKind::Extension && stores(id) {
                if v.is_null() {
                    *v = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
                }
                if let Some(m) = v.as_mapping_mut() {
                    let own = dir.0.join(id.to_string().replace('/', "_"));
                    m.insert("directory".into(), own.to_string_lossy().into_owned().into());
                    m.insert("create_directory".into(), true.into());
                }
            }
        }
        Some(dir)
    } else {
        None
    };
    for new in replaced_receivers.values() {
        cfg.components
            .push((ComponentKind::Receiver, new.clone(), serde_yaml::Value::Null));
    }
    for new in replaced_exporters.values() {
        cfg.components
            .push((ComponentKind::Exporter, new.clone(), serde_yaml::Value::Null));
    }
    for (_, pc) in cfg.pipelines.iter_mut() {
        for (ids, replaced) in [
            (&mut pc.receivers, &replaced_receivers),
            (&mut pc.exporters, &replaced_exporters),
        ] {
            for r in ids.iter_mut() {
                if let Some(new) = replaced.get(r) {
                    *r = new.clone();
                }
            }
        }
    }

    // Inputs addressed to one pipeline get a receiver of their own.
    let mut pipelines = HashMap::new();
    for input in &case.inputs {
        let Some(at) = &input.insert_at else { continue };
        if receivers.contains_key(at) || pipelines.contains_key(at) {
            continue;
        }
        let Some((_, pc)) = cfg.pipelines.iter_mut().find(|(p, _)| p.to_string() == *at) else {
            return Err(TestError::Setup(format!(
                "insert_at {at}: no receiver or pipeline of that name in the config"
            )));
        };
        n += 1;
        let inj = cid(INJECT, format!("p{n}"));
        pc.receivers.push(inj.clone());
        cfg.components
            .push((ComponentKind::Receiver, inj.clone(), serde_yaml::Value::Null));
        pipelines.insert(at.clone(), inj.to_string());
    }

    // Taps.
    let mut tapped = BTreeSet::new();
    for out in &case.outputs {
        let at = out.extract_from.as_str();
        if !tapped.insert(at.to_string()) {
            continue;
        }
        let mut add_tap = |pc: &mut bizpilot_core::config::PipelineConfig, pos: usize, n: &mut usize| -> ComponentId {
            *n += 1;
            let tap = cid(TAP, format!("t{n}"));
            pc.processors.insert(pos, tap.clone());
            points.insert(tap.to_string(), at.to_string());
            tap
        };
        let mut taps = Vec::new();
        match kind_of(at) {
            Some(ComponentKind::Processor) => {
                for (_, pc) in cfg.pipelines.iter_mut() {
                    if let Some(i) = pc.processors.iter().position(|p| p.to_string() == at) {
                        taps.push(add_tap(pc, i + 1, &mut n));
                    }
                }
            }
            Some(ComponentKind::Connector) => {
                for (_, pc) in cfg.pipelines.iter_mut() {
                    if pc.receivers.iter().any(|r| r.to_string() == at) {
                        taps.push(add_tap(pc, 0, &mut n));
                    }
                }
                if taps.is_empty() {
                    return Err(TestError::Setup(format!(
                        "extract_from {at}: the connector feeds no pipeline"
                    )));
                }
            }
            Some(ComponentKind::Exporter) => {
                if KEPT_EXPORTERS.contains(&at.split('/').next().unwrap_or(at)) {
                    for (_, pc) in cfg.pipelines.iter_mut() {
                        if pc.exporters.iter().any(|e| e.to_string() == at) {
                            let end = pc.processors.len();
                            taps.push(add_tap(pc, end, &mut n));
                        }
                    }
                }
                // Other exporters are capture sinks already.
            }
            Some(ComponentKind::Receiver) => {
                return Err(TestError::Setup(format!(
                    "extract_from {at}: a receiver's output is the test's input; name a processor, connector, exporter or pipeline"
                )));
            }
            _ => match cfg.pipelines.iter_mut().find(|(p, _)| p.to_string() == at) {
                Some((_, pc)) => {
                    let end = pc.processors.len();
                    taps.push(add_tap(pc, end, &mut n));
                }
                None => {
                    return Err(TestError::Setup(format!(
                        "extract_from {at}: no processor, connector, exporter or pipeline of that name in the config"
                    )));
                }
            },
        }
        for t in taps {
            cfg.components
                .push((ComponentKind::Processor, t, serde_yaml::Value::Null));
        }
    }
    *shared.points.lock().unwrap_or_else(PoisonError::into_inner) = points;
    Ok(Rewired {
        cfg,
        receivers,
        pipelines,
        _storage: storage,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Running a case.

fn input_payload(input: &Input) -> Result<Payload, TestError> {
    let given: Vec<(Signal, &serde_yaml::Value)> = [
        (Signal::Traces, &input.traces),
        (Signal::Logs, &input.logs),
        (Signal::Metrics, &input.metrics),
    ]
    .into_iter()
    .filter_map(|(s, v)| v.as_ref().map(|v| (s, v)))
    .collect();
    let [(signal, value)] = given.as_slice() else {
        return Err(TestError::Setup(
            "an input has exactly one of traces:, logs:, metrics: (an OTLP/JSON request)".into(),
        ));
    };
    let json = serde_json::to_vec(value).map_err(|e| TestError::Setup(format!("input {signal}: {e}")))?;
    Payload::from_json(*signal, &json).map_err(|e| TestError::Setup(format!("input {signal}: not OTLP/JSON: {e}")))
}

/// The injection receiver an input goes to.
fn target_of(input: &Input, signal: Signal, base: &Config, rw: &Rewired) -> Result<String, TestError> {
    if let Some(at) = &input.insert_at {
        return rw
            .receivers
            .get(at)
            .or_else(|| rw.pipelines.get(at))
            .cloned()
            .ok_or_else(|| TestError::Setup(format!("insert_at {at}: no receiver or pipeline of that name")));
    }
    let feeding: BTreeSet<String> = base
        .pipelines
        .iter()
        .filter(|(p, _)| p.signal == signal)
        .flat_map(|(_, pc)| pc.receivers.iter().map(|r| r.to_string()))
        .filter(|r| rw.receivers.contains_key(r))
        .collect();
    match feeding.len() {
        1 => Ok(feeding
            .into_iter()
            .next()
            .and_then(|r| rw.receivers.get(&r).cloned())
            .unwrap_or_default()),
        0 => Err(TestError::Setup(format!(
            "no receiver feeds a {signal} pipeline; give insert_at: <pipeline>"
        ))),
        _ => Err(TestError::Setup(format!(
            "several receivers feed {signal} pipelines ({}); give insert_at",
            feeding.into_iter().collect::<Vec<_>>().join(", ")
        ))),
    }
}

async fn run_case(
    base: &Config,
    registry: &bizpilot_core::Registry,
    shared: &Arc<Shared>,
    case: &TestCase,
) -> Result<HashMap<String, Vec<Payload>>, TestError> {
    shared.captured.lock().unwrap_or_else(PoisonError::into_inner).clear();
    shared.injectors.lock().unwrap_or_else(PoisonError::into_inner).clear();
    let rw = rewire(base, case, shared)?;
    let mut sends = Vec::new();
    for (i, input) in case.inputs.iter().enumerate() {
        let payload = input_payload(input).map_err(|e| TestError::Setup(format!("inputs[{i}]: {e}")))?;
        let target =
            target_of(input, payload.signal(), base, &rw).map_err(|e| TestError::Setup(format!("inputs[{i}]: {e}")))?;
        sends.push((i, target, payload));
    }
    let service = RunningService::start(&rw.cfg, registry)
        .await
        .map_err(|e| TestError::Setup(format!("cannot start the pipelines: {e}")))?;
    let mut outcome = Ok(());
    let last = sends.len().saturating_sub(1);
    for (i, target, payload) in sends {
        let signal = payload.signal();
        let out = shared
            .injectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .and_then(|o| o.get(signal).cloned());
        let Some(out) = out else {
            outcome = Err(TestError::Setup(format!(
                "inputs[{i}]: {} feeds no {signal} pipeline",
                input_name(&case.inputs[i], &rw, &target)
            )));
            break;
        };
        let (ack, handed_on) = Ack::channel();
        if out.send(Batch::with_ack(payload, ack)).await.is_err() {
            outcome = Err(TestError::Setup(format!("inputs[{i}]: the pipeline refused it")));
            break;
        }
        drop(out);
        if i < last {
            let _ = tokio::time::timeout(SETTLE, handed_on).await;
        }
    }
    shared.injectors.lock().unwrap_or_else(PoisonError::into_inner).clear();
    let report = service
        .shutdown(rw.cfg.shutdown_timeout.max(Duration::from_secs(10)))
        .await;
    outcome?;
    if !report.is_clean() {
        return Err(TestError::Setup(format!(
            "the pipelines did not shut down cleanly: timed out {:?}, errors {:?}",
            report.timed_out, report.errors
        )));
    }
    Ok(std::mem::take(
        &mut *shared.captured.lock().unwrap_or_else(PoisonError::into_inner),
    ))
}

fn input_name(input: &Input, rw: &Rewired, target: &str) -> String {
    input.insert_at.clone().unwrap_or_else(|| {
        rw.receivers
            .iter()
            .find(|(_, v)| v.as_str() == target)
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Checking.

/// A span or log record, flattened.
struct Item {
    name: String,
    own: Vec<KeyValue>,
    resource: Vec<KeyValue>,
}

fn items(payloads: &[Payload], signal: Signal) -> Vec<Item> {
    let mut out = Vec::new();
    for p in payloads {
        match (p.clone(), signal) {
            (Payload::Traces(t), Signal::Traces) => {
                let Ok(m) = t.into_message() else { continue };
                for rs in m.resource_spans {
                    let res = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Item {
                                name: s.name,
                                own: s.attributes,
                                resource: res.clone(),
                            });
                        }
                    }
                }
            }
            (Payload::Logs(l), Signal::Logs) => {
                let Ok(m) = l.into_message() else { continue };
                for rl in m.resource_logs {
                    let res = rl.resource.map(|r| r.attributes).unwrap_or_default();
                    for sl in rl.scope_logs {
                        for r in sl.log_records {
                            let name = if r.event_name.is_empty() {
                                r.attributes
                                    .iter()
                                    .find(|kv| kv.key == "event.name")
                                    .and_then(|kv| kv.value.as_ref())
                                    .map(any_text)
                                    .unwrap_or_default()
                            } else {
                                r.event_name
                            };
                            out.push(Item {
                                name,
                                own: r.attributes,
                                resource: res.clone(),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A metric series' last point.
struct Series {
    name: String,
    attrs: BTreeMap<String, String>,
    value: Option<String>,
    count: Option<u64>,
    sum: Option<String>,
}

impl Series {
    fn label(&self) -> String {
        format!(
            "{}{{{}}}",
            self.name,
            self.attrs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

fn series(payloads: &[Payload]) -> Vec<Series> {
    let mut by_key: BTreeMap<(String, Vec<(String, String)>), Series> = BTreeMap::new();
    let mut put = |name: &str, attrs: &[KeyValue], value: Option<String>, count: Option<u64>, sum: Option<String>| {
        let attrs: BTreeMap<String, String> = attrs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_text).unwrap_or_default()))
            .collect();
        let key = (name.to_string(), attrs.clone().into_iter().collect());
        by_key.insert(
            key,
            Series {
                name: name.to_string(),
                attrs,
                value,
                count,
                sum,
            },
        );
    };
    for p in payloads {
        let Payload::Metrics(m) = p.clone() else { continue };
        let Ok(m) = m.into_message() else { continue };
        for rm in m.resource_metrics {
            for sm in rm.scope_metrics {
                for metric in sm.metrics {
                    let num = |v: &Option<NumV>| match v {
                        Some(NumV::AsDouble(d)) => Some(d.to_string()),
                        Some(NumV::AsInt(i)) => Some(i.to_string()),
                        None => None,
                    };
                    match &metric.data {
                        Some(Data::Sum(s)) => {
                            for dp in &s.data_points {
                                put(&metric.name, &dp.attributes, num(&dp.value), None, None);
                            }
                        }
                        Some(Data::Gauge(g)) => {
                            for dp in &g.data_points {
                                put(&metric.name, &dp.attributes, num(&dp.value), None, None);
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            for dp in &h.data_points {
                                put(
                                    &metric.name,
                                    &dp.attributes,
                                    None,
                                    Some(dp.count),
                                    dp.sum.map(|s| s.to_string()),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    by_key.into_values().collect()
}

fn check_item(cfg: &Config, at: &str, kind: &str, spec: &ItemSpec, all: &[Item], failures: &mut Vec<String>) {
    let mut what = kind.to_string();
    if let Some(n) = &spec.name {
        let _ = write!(what, " named {n:?}");
    }
    let wheres: Vec<(String, Option<String>)> = spec.where_.iter().map(|(k, v)| (k.clone(), scalar(v))).collect();
    if !wheres.is_empty() {
        let _ = write!(
            what,
            " where {}",
            wheres
                .iter()
                .map(|(k, v)| format!("{k} = {:?}", v.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" and ")
        );
    }
    let selected: Vec<&Item> = all
        .iter()
        .filter(|it| spec.name.as_ref().is_none_or(|n| &it.name == n))
        .filter(|it| {
            wheres.iter().all(|(k, v)| {
                let got = find(&it.own, &it.resource, k).map(any_text);
                matches!((got, v), (Some(g), Some(v)) if same(&g, v))
            })
        })
        .collect();
    let seen = || {
        let mut names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            format!("      nothing reached {at}")
        } else {
            format!("      {kind}s after {at}: {}", names.join(", "))
        }
    };
    if let Some(c) = spec.count
        && selected.len() != c
    {
        failures.push(format!(
            "expected {c} {what} after {at}, found {}\n{}",
            selected.len(),
            seen()
        ));
        return;
    }
    if spec.attributes.is_empty() {
        return;
    }
    if selected.is_empty() {
        failures.push(format!("expected a {what} after {at}, found none\n{}", seen()));
        return;
    }
    let mut best: Option<(usize, Vec<Problem>)> = None;
    for (i, it) in selected.iter().enumerate() {
        let mut problems = Vec::new();
        for (key, cond) in &spec.attributes {
            if let Some(p) = check_attr(key, cond, find(&it.own, &it.resource, key)) {
                problems.push((key.clone(), p));
            }
        }
        if problems.is_empty() {
            return;
        }
        if best.as_ref().is_none_or(|(_, b)| problems.len() < b.len()) {
            best = Some((i, problems));
        }
    }
    let Some((i, problems)) = best else { return };
    let it = selected[i];
    let mut msg = String::new();
    for (n, (key, (want, got))) in problems.iter().enumerate() {
        if n > 0 {
            msg.push_str("\n    ");
        }
        let _ = write!(msg, "expected {key} {want} after {at}, {got}");
        let rules = rules_writing(cfg, key);
        if rules.is_empty() {
            let _ = write!(
                msg,
                "\n      no rule or setting of a processor names {key} (a join or a component default may write it)"
            );
        } else {
            for r in rules {
                let _ = write!(msg, "\n      rule: {r}");
            }
        }
    }
    let _ = write!(
        msg,
        "\n      in the {what}{}: {}",
        if selected.len() > 1 {
            format!(" (closest of {})", selected.len())
        } else {
            String::new()
        },
        attr_set(&it.own)
    );
    failures.push(msg);
}

/// A failed attribute condition: the attribute, what was expected, what was there.
type Problem = (String, (String, String));

/// What is wrong with one attribute, as (what was expected, what was there), or `None`.
fn check_attr(key: &str, cond: &Cond, got: Option<&AnyValue>) -> Option<(String, String)> {
    let got_text = got.map(any_text);
    let got_desc = got
        .map(|v| format!("got {}", any_quoted(v)))
        .unwrap_or_else(|| "got nothing (absent)".into());
    let (equals, absent, regex) = match cond {
        Cond::Equals(v) => (Some(v), None, None),
        Cond::Ops(o) => (o.equals.as_ref(), o.absent, o.regex.as_deref()),
    };
    if let Some(e) = equals {
        let Some(e) = scalar(e) else {
            return Some((
                "= (not a scalar)".into(),
                format!("use a string, number or boolean for {key}"),
            ));
        };
        if !got_text.as_ref().is_some_and(|g| same(g, &e)) {
            return Some((format!("= {e:?}"), got_desc));
        }
    }
    match absent {
        Some(true) if got.is_some() => return Some(("absent".into(), got_desc)),
        Some(false) if got.is_none() => return Some(("present".into(), got_desc)),
        _ => {}
    }
    if let Some(r) = regex {
        match regex::Regex::new(r) {
            Err(e) => return Some((format!("to match /{r}/"), format!("but the regex is invalid: {e}"))),
            Ok(re) if !got_text.as_ref().is_some_and(|g| re.is_match(g)) => {
                return Some((format!("to match /{r}/"), got_desc));
            }
            _ => {}
        }
    }
    None
}

fn check_metric(cfg: &Config, at: &str, spec: &MetricSpec, all: &[Series], failures: &mut Vec<String>) {
    let want: Vec<(String, String)> = spec
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), scalar(v).unwrap_or_default()))
        .collect();
    let label = format!(
        "{}{{{}}}",
        spec.name,
        want.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let named: Vec<&Series> = all.iter().filter(|s| s.name == spec.name).collect();
    let matching: Vec<&Series> = named
        .iter()
        .copied()
        .filter(|s| want.iter().all(|(k, v)| s.attrs.get(k).is_some_and(|g| same(g, v))))
        .collect();
    let listing = |v: &[&Series]| {
        v.iter()
            .map(|s| {
                format!(
                    "      {} = {}",
                    s.label(),
                    s.value
                        .clone()
                        .or(s.count.map(|c| format!("count {c}")))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let operation_rule = || {
        want.iter()
            .find(|(k, _)| k == "operation" || k == "goal")
            .and_then(|(_, v)| config_item_named(cfg, at, v))
            .map(|r| format!("\n      rule: {r}"))
            .unwrap_or_default()
    };
    if spec.absent {
        if !matching.is_empty() {
            failures.push(format!(
                "expected no series {label} after {at}, found:\n{}",
                listing(&matching)
            ));
        }
        return;
    }
    let s = match matching.as_slice() {
        [s] => *s,
        [] => {
            let mut msg = format!("expected a series {label} after {at}, found none{}", operation_rule());
            if named.is_empty() {
                let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                names.dedup();
                if names.is_empty() {
                    let _ = write!(msg, "\n      no metrics reached {at}");
                } else {
                    let _ = write!(msg, "\n      metrics after {at}: {}", names.join(", "));
                }
            } else {
                let _ = write!(msg, "\n      series of {}:\n{}", spec.name, listing(&named));
            }
            failures.push(msg);
            return;
        }
        many => {
            failures.push(format!(
                "{label} matches {} series after {at}; name more attributes:\n{}",
                many.len(),
                listing(many)
            ));
            return;
        }
    };
    let mut problems = Vec::new();
    if let Some(v) = &spec.value {
        let e = scalar(v).unwrap_or_default();
        if !s.value.as_ref().is_some_and(|g| same(g, &e)) {
            problems.push((format!("= {e}"), s.value.clone().unwrap_or_else(|| "no value".into())));
        }
    }
    if let Some(c) = spec.count
        && s.count != Some(c)
    {
        problems.push((
            format!("count = {c}"),
            s.count.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
        ));
    }
    if let Some(v) = &spec.sum {
        let e = scalar(v).unwrap_or_default();
        if !s.sum.as_ref().is_some_and(|g| same(g, &e)) {
            problems.push((format!("sum = {e}"), s.sum.clone().unwrap_or_else(|| "none".into())));
        }
    }
    for (want, got) in problems {
        failures.push(format!(
            "expected {} {want} after {at}, got {got}{}",
            s.label(),
            operation_rule()
        ));
    }
}

fn check(cfg: &Config, case: &TestCase, captured: &HashMap<String, Vec<Payload>>) -> Vec<String> {
    let mut failures = Vec::new();
    let empty = Vec::new();
    for out in &case.outputs {
        let at = out.extract_from.as_str();
        let got = captured.get(at).unwrap_or(&empty);
        if !out.spans.is_empty() {
            let spans = items(got, Signal::Traces);
            for s in &out.spans {
                check_item(cfg, at, "span", s, &spans, &mut failures);
            }
        }
        if !out.logs.is_empty() {
            let logs = items(got, Signal::Logs);
            for s in &out.logs {
                check_item(cfg, at, "log record", s, &logs, &mut failures);
            }
        }
        if !out.metrics.is_empty() {
            let all = series(got);
            for m in &out.metrics {
                check_metric(cfg, at, m, &all, &mut failures);
            }
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------------------------
// The command.

/// The test files for `configs` when none are given: `tests/<stem>.test.yaml` next to each config.
fn default_tests(configs: &[PathBuf]) -> Vec<PathBuf> {
    configs
        .iter()
        .filter_map(|c| {
            let stem = c.file_stem()?.to_str()?;
            let p = c
                .parent()
                .unwrap_or(Path::new(""))
                .join("tests")
                .join(format!("{stem}.test.yaml"));
            p.exists().then_some(p)
        })
        .collect()
}

async fn run(config: Vec<PathBuf>, tests: Vec<PathBuf>) -> ExitCode {
    let shared = Arc::new(Shared::default());
    let mut registry = super::registry();
    registry
        .receiver(InjectFactory(shared.clone()))
        .processor(TapFactory(shared.clone()))
        .exporter(CaptureFactory(shared.clone()));
    let (cfg, diags) = super::load_config(&config, &registry);
    for d in &diags {
        println!("{d}");
    }
    let Some(cfg) = cfg else {
        println!("the configuration has errors; no test ran");
        return ExitCode::from(1);
    };
    let tests = if tests.is_empty() {
        default_tests(&config)
    } else {
        tests
    };
    if tests.is_empty() {
        println!(
            "no test files: give them after the options, or put them at tests/<config name>.test.yaml next to the config"
        );
        return ExitCode::from(1);
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &tests {
        let parsed = match parse_file(file) {
            Ok(f) => f,
            Err(e) => {
                println!("error: {e}");
                failed += 1;
                continue;
            }
        };
        println!("{}: {} test(s)", file.display(), parsed.tests.len());
        for case in &parsed.tests {
            let result = run_case(&cfg, &registry, &shared, case).await;
            let failures = match result {
                Ok(captured) => check(&cfg, case, &captured),
                Err(e) => vec![format!("could not run: {e}")],
            };
            if failures.is_empty() {
                passed += 1;
                println!("test {} ... ok", case.name);
            } else {
                failed += 1;
                println!("test {} ... FAILED", case.name);
                for f in failures {
                    println!("  {}: {f}", case.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs `bizpilot test`.
pub fn main(config: Vec<PathBuf>, tests: Vec<PathBuf>) -> ExitCode {
    let filter = std::env::var("BIZPILOT_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bizpilot: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(config, tests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_exactly() {
        assert!(same("123.45", "123.450"));
        assert!(same("0.1", ".1"));
        assert!(same("-0", "0"));
        assert!(!same("123.45", "123.44"));
        assert!(!same("123.45", "123.4500001"));
        assert!(same("EUR", "EUR"));
        assert!(!same("EUR", "USD"));
        // A double read through its shortest decimal form.
        assert!(same(&(0.1f64 + 0.2).to_string(), "0.30000000000000004"));
        assert!(!same(&(0.1f64 + 0.2).to_string(), "0.3"));
    }

    #[test]
    fn rules_are_found_by_what_they_write() {
        let rule: serde_yaml::Value =
            serde_yaml::from_str("parse_money: {from: demo.order.amount, currency_from: demo.user.currency, to: business.order.value, currency_to: business.currency}")
                .unwrap_or_default();
        assert!(writes(&rule, "business.currency", None));
        assert!(writes(&rule, "business.order.value", None));
        assert!(!writes(&rule, "demo.user.currency", None));
        assert!(!writes(&rule, "demo.order.amount", None));
        assert_eq!(
            flow(&rule),
            "{parse_money: {from: demo.order.amount, currency_from: demo.user.currency, to: business.order.value, currency_to: business.currency}}"
        );
    }
}
