//! The `redaction` processor (traces, metrics, logs): keeps personal data from
//! leaving the process. Customer identifiers are replaced by a keyed hash
//! (HMAC-SHA256, hex) that is stable, so joins and distinct counts still work
//! downstream; other attributes can be deleted or masked; e-mail addresses and
//! card numbers are masked wherever they appear in a string value.
//!
//! It applies to resource, scope, span, span event, span link, log record and
//! metric data point (and exemplar) attributes, to log bodies, and to span
//! status messages (patterns only). Attribute rules match keys at any depth
//! inside map values (a log body that is a map included); patterns scan every
//! string, inside lists and maps too. Order per attribute: `delete`, then `hash`,
//! then `mask`; `patterns` scan every string value left.
//!
//! A value to hash is hashed as its text (an int `42` and a string `"42"` hash
//! alike); a list is hashed element by element. The processor **refuses to
//! start** when `hash` is configured and the key's environment variable is unset
//! or empty.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `hash.key_env` | `BIZPILOT_HASH_KEY` | environment variable holding the HMAC key (required at start) |
//! | `hash.attributes` | (required with `hash`) | attribute keys whose values are replaced by their keyed hash |
//! | `delete` | `[]` | attribute keys removed |
//! | `mask` | `[]` | list of `{attributes: [..], replacement}`: values of these keys replaced by `replacement` |
//! | `patterns` | `[]` | `email`, `credit_card` (13–19 digits passing the Luhn check, spaces or dashes allowed), or `{regex, replacement}`: matches masked inside every string value |
//! | `replacement` | `****` | what masked values and pattern matches become (unless an entry sets its own) |
//!
//! ```yaml
//! processors:
//!   redaction:
//!     hash:
//!       key_env: BIZPILOT_HASH_KEY
//!       attributes: [user.id, app.user.id, business.customer.id, customer.id]
//!     delete: [client.address, http.request.header.cookie]
//!     mask:
//!       - attributes: [demo.payment.card_number]
//!     patterns: [email, credit_card]
//! ```
//!
//! Self-telemetry (labels `processor`, `pipeline`): `bizpilot_processor_redaction_hashed_total`,
//! `bizpilot_processor_redaction_deleted_total`, `bizpilot_processor_redaction_masked_total`
//! (attribute masks and pattern matches).

use metrics::{Counter, counter};
use regex::Regex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bizpilot_business::KeyedHasher;
use bizpilot_business::attrs::{AnyValue, KeyValue, Value};
use bizpilot_core::stage::reason;
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, FieldError, Out, Payload,
    Processor, ProcessorFactory, Signal, Stability, Stage,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{Exemplar, Metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Status;
use prost::Message;

use bizpilot_core::Traces;
use bizpilot_core::pb::{len_field_size, put_len_field, put_varint};
use bizpilot_core::view::{self, AnyValueView, AttrPlace, FieldEdits};

/// Writes the length-delimited field `tag` holding a `KeyValue` of `key` and the string `value`.
fn put_string_kv(out: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    let any_len = len_field_size(1, value.len());
    let kv_len = len_field_size(1, key.len()) + len_field_size(2, any_len);
    put_varint(out, (u64::from(tag) << 3) | 2);
    put_varint(out, kv_len as u64);
    put_len_field(out, 1, key.as_bytes());
    put_varint(out, (2 << 3) | 2);
    put_varint(out, any_len as u64);
    put_len_field(out, 1, value.as_bytes());
}

/// The component type name.
pub const TYPE: &str = "redaction";

/// `hash`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashConfig {
    pub key_env: String,
    pub attributes: Vec<String>,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            key_env: "BIZPILOT_HASH_KEY".into(),
            attributes: Vec::new(),
        }
    }
}

/// One `mask` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    pub attributes: Vec<String>,
    pub replacement: Option<String>,
}

/// A custom pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub regex: String,
    #[serde(default)]
    pub replacement: Option<String>,
}

/// A value pattern: a built-in name or a regex.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PatternConfig {
    Named(String),
    Custom(CustomPattern),
}

/// Config of the `redaction` processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    pub hash: Option<HashConfig>,
    pub delete: Vec<String>,
    pub mask: Vec<MaskConfig>,
    pub patterns: Vec<PatternConfig>,
    pub replacement: String,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            hash: None,
            delete: Vec::new(),
            mask: Vec::new(),
            patterns: Vec::new(),
            replacement: "****".into(),
        }
    }
}

const EMAIL: &str = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}";
const CARD: &str = r"\b\d(?:[ \-]?\d){12,18}\b";

impl ComponentConfig for RedactionConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut seen: HashMap<&str, String> = HashMap::new();
        fn claim<'a>(seen: &mut HashMap<&'a str, String>, key: &'a str, path: String, errs: &mut Vec<FieldError>) {
            if key.trim().is_empty() {
                errs.push(FieldError::new(path, "attribute names must not be empty"));
            } else if let Some(first) = seen.get(key) {
                errs.push(FieldError::new(path, format!("{key:?} is already listed in {first}")));
            } else {
                seen.insert(key, path);
            }
        }
        for (i, k) in self.delete.iter().enumerate() {
            claim(&mut seen, k, format!("delete[{i}]"), &mut errs);
        }
        if let Some(h) = &self.hash {
            if h.key_env.trim().is_empty() {
                errs.push(FieldError::new(
                    "hash.key_env",
                    "required: the environment variable holding the key",
                ));
            }
            if h.attributes.is_empty() {
                errs.push(FieldError::new("hash.attributes", "list the attributes to hash"));
            }
            for (i, k) in h.attributes.iter().enumerate() {
                claim(&mut seen, k, format!("hash.attributes[{i}]"), &mut errs);
            }
        }
        for (i, m) in self.mask.iter().enumerate() {
            if m.attributes.is_empty() {
                errs.push(FieldError::new(
                    format!("mask[{i}].attributes"),
                    "list the attributes to mask",
                ));
            }
            for (j, k) in m.attributes.iter().enumerate() {
                claim(&mut seen, k, format!("mask[{i}].attributes[{j}]"), &mut errs);
            }
        }
        for (i, p) in self.patterns.iter().enumerate() {
            match p {
                PatternConfig::Named(n) if n == "email" || n == "credit_card" => {}
                PatternConfig::Named(n) => errs.push(FieldError::new(
                    format!("patterns[{i}]"),
                    format!("unknown pattern {n:?} (expected email, credit_card or {{regex: ...}})"),
                )),
                PatternConfig::Custom(c) => {
                    if let Err(e) = Regex::new(&c.regex) {
                        errs.push(FieldError::new(format!("patterns[{i}].regex"), e.to_string()));
                    }
                }
            }
        }
        errs
    }
}

#[derive(Debug, Clone)]
enum KeyRule {
    Delete,
    Hash,
    Mask(Arc<str>),
}

#[derive(Debug)]
enum Check {
    Email,
    Card,
    Any,
}

#[derive(Debug)]
struct Pattern {
    regex: Regex,
    check: Check,
    replacement: String,
}

impl Pattern {
    /// A cheap test that rules a string out before running the regex.
    #[inline]
    fn may_match(&self, s: &str) -> bool {
        match self.check {
            Check::Email => s.as_bytes().contains(&b'@'),
            Check::Card => s.bytes().filter(u8::is_ascii_digit).nth(12).is_some(),
            Check::Any => true,
        }
    }
}

/// Whether `text[start..end]` is part of a longer dash-joined identifier (a UUID such as
/// `07012961-8881-4640-a4b4-…` holds 16 digits in a row that can pass the Luhn check).
fn inside_dashed_identifier(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let after = b.get(end) == Some(&b'-') && b.get(end + 1).is_some_and(u8::is_ascii_alphanumeric);
    let before =
        start >= 2 && b.get(start - 1) == Some(&b'-') && b.get(start - 2).is_some_and(u8::is_ascii_alphanumeric);
    after || before
}

/// The Luhn checksum of the digits in `s`.
fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    let mut n = 0;
    for b in s.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
        n += 1;
    }
    (13..=19).contains(&n) && sum.is_multiple_of(10)
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactionCounts {
    pub hashed: u64,
    pub deleted: u64,
    pub masked: u64,
}

/// The compiled redaction rules, applied synchronously to decoded requests.
pub struct Redactor {
    rules: HashMap<String, KeyRule>,
    has_delete: bool,
    hasher: Option<KeyedHasher>,
    patterns: Vec<Pattern>,
    totals: [AtomicU64; 3],
    metrics: Option<[Counter; 3]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &self.rules.len())
            .field("hashing", &self.hasher.is_some())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Redactor {
    /// Compiles `cfg`, reading the hashing key from the environment variable it names.
    pub fn new(cfg: &RedactionConfig) -> Result<Redactor, String> {
        let hasher = match &cfg.hash {
            Some(h) => Some(KeyedHasher::from_env(&h.key_env).map_err(|e| {
                format!("hash.key_env: {e}: refusing to start without a hashing key (set it to a long random secret)")
            })?),
            None => None,
        };
        Self::build(cfg, hasher)
    }

    /// Compiles `cfg` with an explicit hashing key (tests, benchmarks).
    pub fn with_key(cfg: &RedactionConfig, key: &[u8]) -> Result<Redactor, String> {
        let hasher = match &cfg.hash {
            Some(_) => Some(KeyedHasher::new(key).map_err(|e| format!("hash: {e}"))?),
            None => None,
        };
        Self::build(cfg, hasher)
    }

    fn build(cfg: &RedactionConfig, hasher: Option<KeyedHasher>) -> Result<Redactor, String> {
        let errs = cfg.validate();
        if let Some(e) = errs.first() {
            return Err(format!("{}: {}", e.path, e.message));
        }
        let mut rules = HashMap::new();
        for k in &cfg.delete {
            rules.insert(k.clone(), KeyRule::Delete);
        }
        if let Some(h) = &cfg.hash {
            for k in &h.attributes {
                rules.insert(k.clone(), KeyRule::Hash);
            }
        }
        for m in &cfg.mask {
            let r: Arc<str> = Arc::from(m.replacement.as_deref().unwrap_or(&cfg.replacement));
            for k in &m.attributes {
                rules.insert(k.clone(), KeyRule::Mask(r.clone()));
            }
        }
        let mut patterns = Vec::new();
        for p in &cfg.patterns {
            let (re, check, rep) = match p {
                PatternConfig::Named(n) if n == "email" => (EMAIL, Check::Email, None),
                PatternConfig::Named(_) => (CARD, Check::Card, None),
                PatternConfig::Custom(c) => (c.regex.as_str(), Check::Any, c.replacement.clone()),
            };
            patterns.push(Pattern {
                regex: Regex::new(re).map_err(|e| e.to_string())?,
                check,
                replacement: rep.unwrap_or_else(|| cfg.replacement.clone()),
            });
        }
        Ok(Redactor {
            has_delete: !cfg.delete.is_empty(),
            rules,
            hasher,
            patterns,
            totals: Default::default(),
            metrics: None,
        })
    }

    fn with_metrics(mut self, processor: &str, pipeline: &str) -> Self {
        let c = |n: &'static str| counter!(n, "processor" => processor.to_string(), "pipeline" => pipeline.to_string());
        self.metrics = Some([
            c("bizpilot_processor_redaction_hashed_total"),
            c("bizpilot_processor_redaction_deleted_total"),
            c("bizpilot_processor_redaction_masked_total"),
        ]);
        self
    }

    /// Totals since the redactor was built.
    pub fn totals(&self) -> RedactionCounts {
        RedactionCounts {
            hashed: self.totals[0].load(Ordering::Relaxed),
            deleted: self.totals[1].load(Ordering::Relaxed),
            masked: self.totals[2].load(Ordering::Relaxed),
        }
    }

    fn record(&self, c: RedactionCounts) {
        for (i, n) in [c.hashed, c.deleted, c.masked].into_iter().enumerate() {
            if n == 0 {
                continue;
            }
            if let Some(t) = self.totals.get(i) {
                t.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(m) = self.metrics.as_ref().and_then(|m| m.get(i)) {
                m.increment(n);
            }
        }
    }

    fn hash_value(&self, v: &mut AnyValue, c: &mut RedactionCounts) {
        let Some(h) = &self.hasher else { return };
        let hashed = match &v.value {
            Some(Value::StringValue(s)) => Some(h.hash_hex(s.as_bytes())),
            Some(Value::IntValue(i)) => Some(h.hash_hex(i.to_string().as_bytes())),
            Some(Value::DoubleValue(d)) => Some(h.hash_hex(d.to_string().as_bytes())),
            Some(Value::BoolValue(b)) => Some(h.hash_hex(if *b { b"true" } else { b"false" })),
            Some(Value::BytesValue(b)) => Some(h.hash_hex(b)),
            _ => None,
        };
        match hashed {
            Some(x) => {
                v.value = Some(Value::StringValue(x));
                c.hashed += 1;
            }
            None => match &mut v.value {
                Some(Value::ArrayValue(a)) => {
                    for x in &mut a.values {
                        self.hash_value(x, c);
                    }
                }
                Some(Value::KvlistValue(l)) => self.redact_attrs(&mut l.values, c),
                _ => {}
            },
        }
    }

    /// Applies the key rules and patterns to an attribute list (recursively).
    fn redact_attrs(&self, attrs: &mut Vec<KeyValue>, c: &mut RedactionCounts) {
        if self.has_delete {
            let before = attrs.len();
            attrs.retain(|kv| !matches!(self.rules.get(kv.key.as_str()), Some(KeyRule::Delete)));
            c.deleted += (before - attrs.len()) as u64;
        }
        for kv in attrs.iter_mut() {
            let Some(v) = kv.value.as_mut() else { continue };
            match self.rules.get(kv.key.as_str()) {
                Some(KeyRule::Hash) => self.hash_value(v, c),
                Some(KeyRule::Mask(r)) => {
                    v.value = Some(Value::StringValue(r.to_string()));
                    c.masked += 1;
                }
                _ => self.scan(v, c),
            }
        }
    }

    /// Masks pattern matches in a value (and in nested lists and maps).
    fn scan(&self, v: &mut AnyValue, c: &mut RedactionCounts) {
        match &mut v.value {
            Some(Value::StringValue(s)) => self.mask_string(s, c),
            Some(Value::ArrayValue(a)) => {
                for x in &mut a.values {
                    self.scan(x, c);
                }
            }
            Some(Value::KvlistValue(l)) => self.redact_attrs(&mut l.values, c),
            _ => {}
        }
    }

    fn mask_string(&self, s: &mut String, c: &mut RedactionCounts) {
        if let Some(m) = self.masked(s, c) {
            *s = m;
        }
    }

    /// `s` with every pattern's matches masked (the patterns in order, each on what the previous left),
    /// or `None` when nothing matched.
    fn masked(&self, s: &str, c: &mut RedactionCounts) -> Option<String> {
        let mut cur: Option<String> = None;
        for p in &self.patterns {
            let text = cur.as_deref().unwrap_or(s);
            if !p.may_match(text) {
                continue;
            }
            let mut n = 0u64;
            let replaced = p.regex.replace_all(text, |caps: &regex::Captures<'_>| {
                let Some(whole) = caps.get(0) else { return String::new() };
                let m = whole.as_str();
                if matches!(p.check, Check::Card)
                    && (!luhn(m) || inside_dashed_identifier(text, whole.start(), whole.end()))
                {
                    m.to_string()
                } else {
                    n += 1;
                    p.replacement.clone()
                }
            });
            if n > 0 {
                let new = replaced.into_owned();
                cur = Some(new);
                c.masked += n;
            }
        }
        cur
    }

    fn redact_resource(&self, r: &mut Option<Resource>, c: &mut RedactionCounts) {
        if let Some(r) = r {
            self.redact_attrs(&mut r.attributes, c);
        }
    }

    fn redact_scope(&self, s: &mut Option<InstrumentationScope>, c: &mut RedactionCounts) {
        if let Some(s) = s {
            self.redact_attrs(&mut s.attributes, c);
        }
    }

    /// Redacts a traces request in place.
    pub fn redact_traces(&self, req: &mut ExportTraceServiceRequest) -> RedactionCounts {
        let mut c = RedactionCounts::default();
        for rs in &mut req.resource_spans {
            self.redact_resource(&mut rs.resource, &mut c);
            for ss in &mut rs.scope_spans {
                self.redact_scope(&mut ss.scope, &mut c);
                for span in &mut ss.spans {
                    self.redact_attrs(&mut span.attributes, &mut c);
                    for e in &mut span.events {
                        self.redact_attrs(&mut e.attributes, &mut c);
                    }
                    for l in &mut span.links {
                        self.redact_attrs(&mut l.attributes, &mut c);
                    }
                    if let Some(st) = span.status.as_mut() {
                        self.mask_string(&mut st.message, &mut c);
                    }
                }
            }
        }
        self.record(c);
        c
    }

    /// Redacts an encoded traces request without decoding it: one walk over its attributes and status
    /// messages ([`view::for_each_trace_attribute`]) finds what to change, and the changes are written back
    /// through one edit list applied in one pass ([`Traces::edit_fields`]: the request is copied once, and
    /// only when something changed). Only an attribute that a rule names or whose value is a list or map,
    /// or a status whose message matches a pattern, is decoded, alone, and redacted by the same code as the
    /// decoded path; deletions and string values are handled on the bytes. Gives what
    /// [`Redactor::redact_traces`] gives on the decoded request, counting the same (tests below, on random
    /// and recorded requests).
    pub fn redact_traces_encoded(&self, t: &mut Traces) -> RedactionCounts {
        let mut c = RedactionCounts::default();
        t.edit_fields(|bytes, edits| {
            view::for_each_trace_attribute(bytes, |place, field, range| {
                if place == AttrPlace::Status {
                    self.edit_status(field, range, edits, &mut c);
                } else {
                    self.edit_attribute(place, field, range, edits, &mut c);
                }
            });
        });
        self.record(c);
        c
    }

    /// The edit for one encoded attribute (`KeyValue`) at `range`, if it changes.
    fn edit_attribute(
        &self,
        place: AttrPlace,
        kv: &[u8],
        range: std::ops::Range<usize>,
        edits: &mut FieldEdits,
        c: &mut RedactionCounts,
    ) {
        let (key, value) = view::split_key_value(kv);
        let key = std::str::from_utf8(key).unwrap_or("");
        match self.rules.get(key) {
            Some(KeyRule::Delete) => {
                edits.delete(range);
                c.deleted += 1;
                return;
            }
            Some(_) => {}
            None => {
                if self.patterns.is_empty() {
                    return;
                }
                match AnyValueView::parse(value) {
                    AnyValueView::Str(s) => {
                        if let Some(m) = self.masked(s, c) {
                            edits.replace_with(range, |out| put_string_kv(out, place.field(), key, &m));
                        }
                        return;
                    }
                    AnyValueView::Array(_) | AnyValueView::KvList(_) => {}
                    _ => return,
                }
            }
        }
        // Hash or mask, or patterns inside a list or map: this attribute alone, decoded.
        let Ok(decoded) = KeyValue::decode(kv) else { return };
        let before = *c;
        let mut one = vec![decoded];
        self.redact_attrs(&mut one, c);
        if *c != before {
            match one.first() {
                Some(kv) => edits.replace_len_field(range, place.field(), &kv.encode_to_vec()),
                None => edits.delete(range),
            }
        }
    }

    /// The edit for a span's encoded `Status` at `range`, if its message matches a pattern.
    fn edit_status(
        &self,
        status: &[u8],
        range: std::ops::Range<usize>,
        edits: &mut FieldEdits,
        c: &mut RedactionCounts,
    ) {
        if self.patterns.is_empty() {
            return;
        }
        let mut message = "";
        for (tag, w, _) in view::Fields::new(status) {
            if let (2, view::Wire::Bytes(b)) = (tag, w) {
                message = std::str::from_utf8(b).unwrap_or("");
            }
        }
        if let Some(m) = self.masked(message, c)
            && let Ok(mut st) = Status::decode(status)
        {
            st.message = m;
            edits.replace_len_field(range, AttrPlace::Status.field(), &st.encode_to_vec());
        }
    }

    /// Redacts a logs request in place (bodies included).
    pub fn redact_logs(&self, req: &mut ExportLogsServiceRequest) -> RedactionCounts {
        let mut c = RedactionCounts::default();
        for rl in &mut req.resource_logs {
            self.redact_resource(&mut rl.resource, &mut c);
            for sl in &mut rl.scope_logs {
                self.redact_scope(&mut sl.scope, &mut c);
                for rec in &mut sl.log_records {
                    self.redact_attrs(&mut rec.attributes, &mut c);
                    if let Some(b) = rec.body.as_mut() {
                        self.scan(b, &mut c);
                    }
                }
            }
        }
        self.record(c);
        c
    }

    fn redact_exemplars(&self, ex: &mut [Exemplar], c: &mut RedactionCounts) {
        for e in ex {
            self.redact_attrs(&mut e.filtered_attributes, c);
        }
    }

    fn redact_metric(&self, m: &mut Metric, c: &mut RedactionCounts) {
        match &mut m.data {
            Some(Data::Gauge(g)) => {
                for p in &mut g.data_points {
                    self.redact_attrs(&mut p.attributes, c);
                    self.redact_exemplars(&mut p.exemplars, c);
                }
            }
            Some(Data::Sum(s)) => {
                for p in &mut s.data_points {
                    self.redact_attrs(&mut p.attributes, c);
                    self.redact_exemplars(&mut p.exemplars, c);
                }
            }
            Some(Data::Histogram(h)) => {
                for p in &mut h.data_points {
                    self.redact_attrs(&mut p.attributes, c);
                    self.redact_exemplars(&mut p.exemplars, c);
                }
            }
            Some(Data::ExponentialHistogram(h)) => {
                for p in &mut h.data_points {
                    self.redact_attrs(&mut p.attributes, c);
                    self.redact_exemplars(&mut p.exemplars, c);
                }
            }
            Some(Data::Summary(s)) => {
                for p in &mut s.data_points {
                    self.redact_attrs(&mut p.attributes, c);
                }
            }
            None => {}
        }
    }

    /// Redacts a metrics request in place.
    pub fn redact_metrics(&self, req: &mut ExportMetricsServiceRequest) -> RedactionCounts {
        let mut c = RedactionCounts::default();
        for rm in &mut req.resource_metrics {
            self.redact_resource(&mut rm.resource, &mut c);
            for sm in &mut rm.scope_metrics {
                self.redact_scope(&mut sm.scope, &mut c);
                for m in &mut sm.metrics {
                    self.redact_metric(m, &mut c);
                }
            }
        }
        self.record(c);
        c
    }

    /// Redacts a batch's payload in place: encoded traces on their bytes
    /// ([`Redactor::redact_traces_encoded`]), the rest decoded. A payload that cannot be decoded is given up
    /// (failed and dropped) rather than passed on unredacted.
    pub fn redact_batch(&self, mut batch: Batch) -> Result<Batch, Batch> {
        let r = match &mut batch.payload {
            // Held encoded (as a receiver hands it on): redacted on the bytes.
            Payload::Traces(t) if t.encoded_bytes().is_some() => {
                self.redact_traces_encoded(t);
                Ok(())
            }
            Payload::Traces(t) => t.message_mut().map(|m| {
                self.redact_traces(m);
            }),
            Payload::Metrics(t) => t.message_mut().map(|m| {
                self.redact_metrics(m);
            }),
            Payload::Logs(t) => t.message_mut().map(|m| {
                self.redact_logs(m);
            }),
        };
        match r {
            Ok(()) => Ok(batch),
            Err(e) => {
                tracing::error!(error = %e, items = batch.items(), "redaction: cannot decode data; dropping it rather than passing it on unredacted");
                Err(batch)
            }
        }
    }
}

/// Makes `redaction` processors.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedactionProcessorFactory;

/// A created `redaction` processor.
#[derive(Debug)]
pub struct RedactionProcessor {
    redactor: Arc<Redactor>,
}

impl RedactionProcessor {
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.clone()
    }
}

impl ProcessorFactory for RedactionProcessorFactory {
    type Config = RedactionConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Processor,
            stability: Stability::Alpha,
            description: "Hashes customer identifiers (HMAC-SHA256), deletes or masks attributes, masks e-mails and card numbers",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        let pipeline = ctx.pipeline.map(|p| p.to_string()).unwrap_or_default();
        let r = Redactor::new(&config)
            .map_err(ComponentError::Config)?
            .with_metrics(&ctx.id.to_string(), &pipeline);
        Ok(Box::new(RedactionProcessor { redactor: Arc::new(r) }))
    }
}

impl Processor for RedactionProcessor {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        self
    }
}

impl Stage for RedactionProcessor {
    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        match self.redactor.redact_batch(batch) {
            Ok(b) => out.send(b),
            Err(b) => out.fail(b, reason::ERROR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::attrs::{self, kv, kv_i64, kv_str};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

    fn cfg(yaml: &str) -> RedactionConfig {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        bizpilot_core::parse_config(&raw).unwrap()
    }

    const YAML: &str = r#"
hash: {attributes: [user.id, customer.id]}
delete: [session.id]
mask: [{attributes: [card.number]}, {attributes: [secret], replacement: "[x]"}]
patterns: [email, credit_card, {regex: 'tok-[0-9]+', replacement: "tok-?"}]
"#;

    #[test]
    fn uuids_are_not_card_numbers() {
        let r = Redactor::with_key(&cfg("patterns: [credit_card]"), b"k").unwrap();
        let mut c = RedactionCounts::default();
        // The first 16 digits of this UUID pass the Luhn check.
        let mut uuid = "order 07012961-8881-4640-a4b4-5d6e7f8a9b0c done".to_string();
        assert!(luhn("07012961-8881-4640"), "the test needs a Luhn-valid digit run");
        r.mask_string(&mut uuid, &mut c);
        assert_eq!(uuid, "order 07012961-8881-4640-a4b4-5d6e7f8a9b0c done");
        let mut card = "paid with 4111-1111-1111-1111 today".to_string();
        r.mask_string(&mut card, &mut c);
        assert_eq!(card, "paid with **** today");
    }

    #[test]
    fn luhn_check() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("1234"));
    }

    #[test]
    fn redacts_every_place() {
        let r = Redactor::with_key(&cfg(YAML), b"k").unwrap();
        let h = KeyedHasher::new(b"k").unwrap();
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("user.id", "u-1"), kv_str("owner", "ops@example.com")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        attributes: vec![
                            kv_i64("customer.id", 42),
                            kv_str("session.id", "s"),
                            kv_str("card.number", "4111111111111111"),
                            kv_str("secret", "x"),
                            kv_str(
                                "note",
                                "mail jane.doe@shop.example or pay 4111 1111 1111 1111, not 1234567890123",
                            ),
                            kv_str("t", "tok-123"),
                            kv(
                                "nested",
                                Value::KvlistValue(KeyValueList {
                                    values: vec![
                                        kv_str("user.id", "u-2"),
                                        kv(
                                            "list",
                                            Value::ArrayValue(ArrayValue {
                                                values: vec![AnyValue {
                                                    value: Some(Value::StringValue("a@b.io".into())),
                                                }],
                                            }),
                                        ),
                                    ],
                                }),
                            ),
                        ],
                        events: vec![span::Event {
                            attributes: vec![kv_str("user.id", "u-3")],
                            ..Default::default()
                        }],
                        links: vec![span::Link {
                            attributes: vec![kv_str("customer.id", "c-9")],
                            ..Default::default()
                        }],
                        status: Some(Status {
                            message: "no account for x@y.com".into(),
                            code: 2,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let c = r.redact_traces(&mut req);
        let rs = &req.resource_spans[0];
        let res = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs::get_str(res, "user.id"), Some(h.hash_hex(b"u-1").as_str()));
        assert_eq!(attrs::get_str(res, "owner"), Some("****"));
        let sp = &rs.scope_spans[0].spans[0];
        let a = &sp.attributes;
        assert_eq!(attrs::get_str(a, "customer.id"), Some(h.hash_hex(b"42").as_str()));
        assert!(!attrs::contains(a, "session.id"));
        assert_eq!(attrs::get_str(a, "card.number"), Some("****"));
        assert_eq!(attrs::get_str(a, "secret"), Some("[x]"));
        assert_eq!(
            attrs::get_str(a, "note"),
            Some("mail **** or pay ****, not 1234567890123")
        );
        assert_eq!(attrs::get_str(a, "t"), Some("tok-?"));
        let Some(Value::KvlistValue(n)) = attrs::get(a, "nested") else {
            panic!()
        };
        assert_eq!(attrs::get_str(&n.values, "user.id"), Some(h.hash_hex(b"u-2").as_str()));
        let text = format!("{req:?}");
        for raw in ["u-1", "u-2", "u-3", "c-9", "@", "4111"] {
            assert!(!text.contains(raw), "{raw} leaked: {text}");
        }
        assert_eq!(c.deleted, 1);
        assert_eq!(c.hashed, 5);
        assert_eq!(c.masked, 8);
        assert_eq!(r.totals(), c);
    }

    #[test]
    fn log_bodies() {
        let r = Redactor::with_key(&cfg(YAML), b"k").unwrap();
        let mut req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord {
                            body: Some(AnyValue {
                                value: Some(Value::StringValue("user bob@example.org logged in".into())),
                            }),
                            ..Default::default()
                        },
                        LogRecord {
                            body: Some(AnyValue {
                                value: Some(Value::KvlistValue(KeyValueList {
                                    values: vec![kv_str("customer.id", "c-1"), kv_str("session.id", "s")],
                                })),
                            }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        r.redact_logs(&mut req);
        let text = format!("{req:?}");
        assert!(!text.contains("bob@"), "{text}");
        assert!(!text.contains("c-1"), "{text}");
        assert!(!text.contains("session.id"), "{text}");
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }

        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    const KEYS: &[&str] = &[
        "user.id",
        "customer.id",
        "session.id",
        "card.number",
        "secret",
        "note",
        "other",
        "t",
    ];
    const TEXTS: &[&str] = &[
        "plain",
        "mail jane.doe@shop.example now",
        "pay 4111 1111 1111 1111 or 4111-1111-1111-1112",
        "order 07012961-8881-4640-a4b4-5d6e7f8a9b0c",
        "tok-42 and a@b.io and 5500-0000-0000-0004",
        "",
        "1234567890123",
    ];

    fn random_value(rng: &mut Rng, depth: u32) -> Option<Value> {
        let long = "y".repeat(rng.below(3) as usize * 70);
        Some(match rng.below(if depth < 2 { 9 } else { 7 }) {
            0 => return None,
            1 => Value::IntValue(rng.below(1000) as i64 - 500),
            2 => Value::DoubleValue(rng.below(1000) as f64 / 8.0),
            3 => Value::BoolValue(rng.below(2) == 0),
            4 => Value::BytesValue(b"raw@bytes.io".to_vec()),
            5 | 6 => Value::StringValue(format!("{}{long}", rng.pick(TEXTS))),
            7 => Value::ArrayValue(ArrayValue {
                values: (0..rng.below(3))
                    .map(|_| AnyValue {
                        value: random_value(rng, depth + 1),
                    })
                    .collect(),
            }),
            _ => Value::KvlistValue(KeyValueList {
                values: random_attrs(rng, depth + 1, 3),
            }),
        })
    }

    fn random_attrs(rng: &mut Rng, depth: u32, max: u64) -> Vec<KeyValue> {
        (0..rng.below(max))
            .map(|_| KeyValue {
                key: rng.pick(KEYS).to_string(),
                // Absent (no `value` field) now and then, as well as present but empty.
                value: (rng.below(8) > 0).then(|| AnyValue {
                    value: random_value(rng, depth),
                }),
                ..Default::default()
            })
            .collect()
    }

    fn random_request(rng: &mut Rng) -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        ExportTraceServiceRequest {
            resource_spans: (0..rng.below(3))
                .map(|_| ResourceSpans {
                    resource: (rng.below(3) > 0).then(|| Resource {
                        attributes: random_attrs(rng, 0, 4),
                        ..Default::default()
                    }),
                    scope_spans: (0..rng.below(3))
                        .map(|_| ScopeSpans {
                            scope: (rng.below(2) > 0).then(|| InstrumentationScope {
                                name: "lib".into(),
                                attributes: random_attrs(rng, 0, 3),
                                ..Default::default()
                            }),
                            spans: (0..rng.below(4))
                                .map(|i| Span {
                                    name: format!("s{i}"),
                                    trace_id: vec![1; 16],
                                    span_id: vec![i as u8 + 1; 8],
                                    attributes: random_attrs(rng, 0, 7),
                                    events: (0..rng.below(2))
                                        .map(|_| span::Event {
                                            attributes: random_attrs(rng, 0, 3),
                                            ..Default::default()
                                        })
                                        .collect(),
                                    links: (0..rng.below(2))
                                        .map(|_| span::Link {
                                            span_id: vec![7; 8],
                                            attributes: random_attrs(rng, 0, 3),
                                            ..Default::default()
                                        })
                                        .collect(),
                                    status: (rng.below(2) > 0).then(|| Status {
                                        message: rng.pick(TEXTS).to_string(),
                                        code: 2,
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Both paths on the encoding `bytes`: the decoded path (decode, redact, as before) and the view path
    /// (`redact_batch` on the data as a receiver hands it on). Asserts they give the same request and
    /// counts, that the view path decoded nothing and walked the request once; returns the counts.
    fn assert_paths_agree(yaml: &str, bytes: &[u8], what: &str) -> RedactionCounts {
        use bizpilot_core::pdata::{Work, work_on_this_thread};
        let decoded_r = Redactor::with_key(&cfg(yaml), b"k").unwrap();
        let view_r = Redactor::with_key(&cfg(yaml), b"k").unwrap();
        let Ok(t) = Traces::from_bytes(bytes.to_vec().into()) else {
            return RedactionCounts::default();
        };
        // Non-canonical bytes are held decoded by `from_bytes`: both paths are then the decoded one.
        let encoded = t.encoded_bytes().is_some();
        let mut want = ExportTraceServiceRequest::decode(bytes).expect("the walk accepted it");
        let want_counts = decoded_r.redact_traces(&mut want);
        let before = work_on_this_thread();
        let out = view_r
            .redact_batch(Batch::new(Payload::Traces(t)))
            .unwrap_or_else(|_| panic!("{what}: refused"));
        let work = work_on_this_thread().since(&before);
        let Payload::Traces(mut t) = out.payload else { panic!() };
        if encoded {
            assert!(t.decoded().is_none(), "{what}: the view path decoded the request");
            assert_eq!(
                (work.get(Work::Decode), work.get(Work::Encode), work.get(Work::Walk)),
                (0, 0, 1),
                "{what}: one walk, no decode, no encode"
            );
            assert_eq!(
                work.get(Work::Copy),
                u64::from(want_counts != RedactionCounts::default()),
                "{what}: copies"
            );
        }
        let got = t.message().unwrap().clone();
        // Compared through their Debug form: a NaN double equals itself there.
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{what}");
        assert_eq!(view_r.totals(), want_counts, "{what}: counts");
        want_counts
    }

    /// Property: on random requests (attributes in every place, nested lists and maps, values of every type,
    /// absent and empty values, PII in strings, long values so that lengths need multi-byte varints) the view
    /// path gives exactly what the decoded path gives.
    #[test]
    fn view_path_equals_decoded_path_on_random_requests() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut total = RedactionCounts::default();
        for round in 0..1500 {
            let req = random_request(&mut rng);
            let c = assert_paths_agree(YAML, &req.encode_to_vec(), &format!("round {round}"));
            total.hashed += c.hashed;
            total.deleted += c.deleted;
            total.masked += c.masked;
        }
        // The rounds exercised every rule.
        assert!(
            total.hashed > 100 && total.deleted > 100 && total.masked > 100,
            "{total:?}"
        );
    }

    /// The fuzz corpora (malformed, duplicated and non-canonical fields, deep values) and the shop
    /// workload (the OpenTelemetry Demo's span tree and attributes): the same on both paths.
    #[test]
    fn view_path_equals_decoded_path_on_fuzz_corpora_and_shop_traffic() {
        for target in ["otlp_protobuf", "view_equivalence", "view_walk"] {
            for (path, data) in bizpilot_core::fuzz::seed_corpus(target) {
                assert_paths_agree(YAML, &data, &path.display().to_string());
            }
        }
        let shop: bizpilot_shopgen::ShopConfig =
            serde_yaml::from_str("seed: 11\nduration: 3m\norders_per_sec: 2\ncustomers: 500").unwrap();
        let workload = bizpilot_shopgen::Shop::generate(&shop).unwrap();
        let shop_yaml = r#"
hash: {attributes: [user.id, app.user.id]}
delete: [demo.payment.card_type, client.address]
mask: [{attributes: [demo.order.id]}]
patterns: [email, credit_card, {regex: 'charge [a-z]+', replacement: "charge ?"}, {regex: 'SKU-00[0-4]'}]
"#;
        let mut total = RedactionCounts::default();
        let requests = workload.trace_requests_encoded(512);
        assert!(requests.len() > 3, "{}", requests.len());
        for (i, bytes) in requests.iter().enumerate() {
            let c = assert_paths_agree(shop_yaml, bytes, &format!("shop request {i}"));
            total.hashed += c.hashed;
            total.deleted += c.deleted;
            total.masked += c.masked;
        }
        assert!(total.hashed > 0 && total.deleted > 0 && total.masked > 0, "{total:?}");
        // The embedded default pipeline's own redaction on the same traffic.
        let preset: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../pipelines/opentelemetry-demo.yaml")).unwrap();
        let own = serde_yaml::to_string(&preset["processors"]["redaction"]).unwrap();
        for (i, bytes) in requests.iter().enumerate() {
            assert_paths_agree(&own, bytes, &format!("shop request {i}, preset"));
        }
    }

    #[test]
    fn config_checks() {
        let bad = |yaml: &str, path: &str| {
            let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            let errs = bizpilot_core::parse_config::<RedactionConfig>(&raw).unwrap_err();
            assert!(errs.iter().any(|e| e.path == path), "{yaml}: {errs:?}");
        };
        bad("hash: {attributes: []}", "hash.attributes");
        bad("hash: {key_env: '', attributes: [a]}", "hash.key_env");
        bad("delete: [a]\nmask: [{attributes: [a]}]", "mask[0].attributes[0]");
        bad("patterns: [phone]", "patterns[0]");
        bad("patterns: [{regex: '('}]", "patterns[0].regex");
        let c = cfg("hash: {key_env: BIZPILOT_TEST_NEVER_SET_KEY, attributes: [user.id]}");
        let e = Redactor::new(&c).unwrap_err();
        assert!(e.contains("BIZPILOT_TEST_NEVER_SET_KEY is not set"), "{e}");
        assert!(Redactor::new(&cfg("delete: [a]")).is_ok(), "no key needed without hash");
    }
}
