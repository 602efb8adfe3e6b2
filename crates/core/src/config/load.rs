//! Reading config files: YAML parsing, `${env:NAME}` substitution, merging
//! several files in order, and remembering where each key was written.

use serde_yaml::{Mapping, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a config key was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in the configuration, with the path of the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Dotted path, e.g. `processors.batch.timeout`.
    pub path: String,
    pub message: String,
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{sev}: {}", self.message)?;
        } else {
            write!(f, "{sev}: {}: {}", self.path, self.message)?;
        }
        if let Some(loc) = &self.location {
            write!(f, " (at {loc})")?;
        }
        Ok(())
    }
}

/// Where each key path appears in the source files (the last file that set it wins).
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, Location>,
}

impl LineIndex {
    /// Finds the location of `path`, or of its closest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(l.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Indexes block-style YAML keys and sequence items by dotted path. Flow-style
    /// collections (`{a: 1}`) are indexed at their parent key only.
    fn scan(&mut self, file: &str, text: &str) {
        // (indent, path, next sequence index for items under this entry)
        struct Entry {
            indent: usize,
            path: String,
            seq: usize,
        }
        let mut stack: Vec<Entry> = Vec::new();
        for (no, raw) in text.lines().enumerate() {
            let line_no = no + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let mut indent = raw.len() - trimmed.len();
            let mut content = trimmed;
            // Sequence items, possibly several on one line ("- - a").
            while content == "-" || content.starts_with("- ") {
                while stack.last().is_some_and(|e| e.indent > indent) {
                    stack.pop();
                }
                // An item entry at the same indent is a sibling item: replace it.
                if stack
                    .last()
                    .is_some_and(|e| e.indent == indent && e.path.ends_with(']'))
                {
                    stack.pop();
                }
                let (parent, idx) = match stack.last_mut() {
                    Some(e) => {
                        let i = e.seq;
                        e.seq += 1;
                        (e.path.clone(), i)
                    }
                    None => (String::new(), 0),
                };
                let path = format!("{parent}[{idx}]");
                self.lines.insert(
                    path.clone(),
                    Location {
                        file: file.to_string(),
                        line: line_no,
                    },
                );
                stack.push(Entry { indent, path, seq: 0 });
                let rest = content[1..].trim_start();
                indent += content.len() - rest.len();
                content = rest;
                // The item's own mapping keys sit one level deeper than the dash.
                if let Some(e) = stack.last_mut() {
                    e.indent = indent - 1;
                }
            }
            let Some(key) = mapping_key(content) else { continue };
            while stack.last().is_some_and(|e| e.indent >= indent) {
                stack.pop();
            }
            let path = match stack.last() {
                Some(e) if !e.path.is_empty() => format!("{}.{}", e.path, key),
                _ => key.to_string(),
            };
            self.lines.insert(
                path.clone(),
                Location {
                    file: file.to_string(),
                    line: line_no,
                },
            );
            stack.push(Entry { indent, path, seq: 0 });
        }
    }
}

/// The key of a `key: value` or `key:` line, unquoted.
fn mapping_key(content: &str) -> Option<&str> {
    if let Some(q) = content.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = content[1..].find(q)? + 1;
        let after = content[end + 1..].trim_start();
        return after.starts_with(':').then(|| &content[1..end]);
    }
    let mut search = 0;
    while let Some(i) = content[search..].find(':') {
        let at = search + i;
        let next = content[at + 1..].chars().next();
        if next.is_none() || next == Some(' ') || next == Some('\t') {
            let key = content[..at].trim_end();
            if key.is_empty() || key.starts_with(['{', '[', '#', '&', '*', '!', '|', '>']) {
                return None;
            }
            return Some(key);
        }
        search = at + 1;
    }
    None
}

/// Config files merged into one YAML tree, with the source location of each key.
#[derive(Debug, Clone)]
pub struct RawConfig {
    pub root: Value,
    pub index: LineIndex,
}

/// Something to read a config from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// YAML text with a name to show in messages (e.g. the embedded default).
    Text {
        name: String,
        text: String,
    },
}

impl Source {
    pub fn file(p: impl AsRef<Path>) -> Self {
        Source::File(p.as_ref().to_path_buf())
    }
    fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Text { name, .. } => name.clone(),
        }
    }
}

/// Looks up environment variables; a seam for tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads, substitutes and merges `sources` in order. Problems are returned as
/// diagnostics; a source that cannot be read or parsed contributes nothing.
pub fn load(sources: &[Source], env: &dyn Env) -> (RawConfig, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut root = Value::Mapping(Mapping::new());
    let mut index = LineIndex::default();
    for src in sources {
        let name = src.name();
        let text = match src {
            Source::File(p) => match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(Diagnostic::error("", format!("cannot read config file {name}: {e}")));
                    continue;
                }
            },
            Source::Text { text, .. } => text.clone(),
        };
        let mut value: Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                let mut d = Diagnostic::error("", format!("{name}: invalid YAML: {e}"));
                d.location = e.location().map(|l| Location {
                    file: name.clone(),
                    line: l.line(),
                });
                diags.push(d);
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        if !value.is_mapping() {
            diags.push(Diagnostic::error(
                "",
                format!("{name}: the top level must be a mapping"),
            ));
            continue;
        }
        let mut file_index = LineIndex::default();
        file_index.scan(&name, &text);
        substitute_env(&mut value, "", env, &file_index, &mut diags);
        index.lines.extend(file_index.lines);
        merge(&mut root, value);
    }
    (RawConfig { root, index }, diags)
}

/// Deep-merges `over` into `base`: mappings merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_mapping() && v.is_mapping() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => format!("{other:?}"),
    }
}

/// Joins a path and a key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn substitute_env(v: &mut Value, path: &str, env: &dyn Env, index: &LineIndex, diags: &mut Vec<Diagnostic>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let p = join(path, &key_str(k));
                substitute_env(val, &p, env, index, diags);
            }
        }
        Value::Sequence(s) => {
            for (i, val) in s.iter_mut().enumerate() {
                substitute_env(val, &format!("{path}[{i}]"), env, index, diags);
            }
        }
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok((out, whole, missing)) => {
                for name in missing {
                    let mut d = Diagnostic::warning(
                        path,
                        format!("environment variable {name} is not set; using an empty string"),
                    );
                    d.location = index.locate(path);
                    diags.push(d);
                }
                // A value that is exactly one reference takes the type its text has
                // in YAML (a number stays a number); embedded references stay strings.
                *v = if whole {
                    match serde_yaml::from_str::<Value>(&out) {
                        Ok(parsed) if !parsed.is_mapping() && !parsed.is_sequence() && !out.is_empty() => parsed,
                        _ => Value::String(out),
                    }
                } else {
                    Value::String(out)
                };
            }
            Err(msg) => {
                let mut d = Diagnostic::error(path, msg);
                d.location = index.locate(path);
                diags.push(d);
            }
        },
        _ => {}
    }
}

/// Expands `${env:NAME}`, `${env:NAME:-default}`, `${NAME}` and `$$` (a literal `$`).
/// Returns the text, whether the input was exactly one reference, and unset names.
fn expand(s: &str, env: &dyn Env) -> Result<(String, bool, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut refs = 0;
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(inner_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = inner_start
            .find('}')
            .ok_or_else(|| format!("unterminated variable reference in {s:?}"))?;
        let inner = &inner_start[..end];
        let spec = inner.strip_prefix("env:").unwrap_or(inner);
        if inner.contains(':') && !inner.starts_with("env:") {
            return Err(format!(
                "unsupported reference ${{{inner}}} in {s:?}: only ${{env:NAME}} and ${{env:NAME:-default}} are supported"
            ));
        }
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?} in {s:?}"));
        }
        match (env.var(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => missing.push(name.to_string()),
        }
        refs += 1;
        rest = &inner_start[end + 1..];
    }
    out.push_str(rest);
    let whole = refs == 1 && s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
    Ok((out, whole, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("PORT".to_string(), "4317".to_string()),
            ("HOST".to_string(), "h".to_string()),
        ])
    }

    #[test]
    fn expands_env_references() {
        let e = env();
        assert_eq!(expand("${env:HOST}:${env:PORT}", &e).unwrap().0, "h:4317");
        assert_eq!(expand("${env:NOPE:-x}", &e).unwrap().0, "x");
        assert_eq!(expand("$${env:HOST}", &e).unwrap().0, "${env:HOST}");
        let (out, whole, missing) = expand("${env:NOPE}", &e).unwrap();
        assert_eq!((out.as_str(), whole, missing), ("", true, vec!["NOPE".to_string()]));
        assert!(expand("${file:/etc/x}", &e).is_err());
        assert!(expand("${env:HOST", &e).is_err());
    }

    #[test]
    fn whole_reference_keeps_yaml_type() {
        let src = Source::Text {
            name: "t.yaml".into(),
            text: "a:\n  port: ${env:PORT}\n  addr: \"${env:HOST}:1\"\n".into(),
        };
        let (raw, diags) = load(&[src], &env());
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(raw.root["a"]["port"], Value::Number(4317.into()));
        assert_eq!(raw.root["a"]["addr"], Value::String("h:1".into()));
    }

    #[test]
    fn later_files_override_earlier_ones_deeply() {
        let a = Source::Text {
            name: "a.yaml".into(),
            text: "processors:\n  batch:\n    timeout: 1s\n    send_batch_size: 10\n".into(),
        };
        let b = Source::Text {
            name: "b.yaml".into(),
            text: "processors:\n  batch:\n    timeout: 2s\n".into(),
        };
        let (raw, diags) = load(&[a, b], &env());
        assert!(diags.is_empty());
        assert_eq!(raw.root["processors"]["batch"]["timeout"], Value::String("2s".into()));
        assert_eq!(
            raw.root["processors"]["batch"]["send_batch_size"],
            Value::Number(10.into())
        );
        assert_eq!(
            raw.index.locate("processors.batch.timeout"),
            Some(Location {
                file: "b.yaml".into(),
                line: 3
            })
        );
        assert_eq!(
            raw.index.locate("processors.batch.send_batch_size").map(|l| l.line),
            Some(4)
        );
    }

    #[test]
    fn indexes_sequences_and_nested_keys() {
        let text = "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters:\n        - debug\n        - otlp/out\n    logs:\n      receivers:\n      - otlp\n";
        let mut idx = LineIndex::default();
        idx.scan("f", text);
        let line = |p: &str| idx.locate(p).map(|l| l.line);
        assert_eq!(line("service.pipelines.traces.receivers"), Some(4));
        assert_eq!(line("service.pipelines.traces.exporters[1]"), Some(7));
        assert_eq!(line("service.pipelines.logs.receivers[0]"), Some(10));
        assert_eq!(line("service.pipelines.logs"), Some(8));
        assert_eq!(line("service.pipelines.traces.receivers[0]"), Some(4));
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let src = Source::Text {
            name: "bad.yaml".into(),
            text: "receivers:\n  otlp:\n   - a\n  b: [\n".into(),
        };
        let (_, diags) = load(&[src], &env());
        assert_eq!(diags.len(), 1);
        assert!(diags[0].location.is_some(), "{:?}", diags[0]);
    }
}
