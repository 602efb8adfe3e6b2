//! The deployment files (`deploy/`, `pipelines/sidecar.yaml`, `pipelines/gateway.yaml`), checked
//! with the real binary and real tools:
//!
//! - every bizpilot config embedded in `deploy/` (Kubernetes ConfigMaps, the Helm chart's default
//!   values and its rendered ConfigMaps in both modes, the config the systemd unit names) passes
//!   `bizpilot validate` with the environment its container or unit sets, and is the same as the
//!   `pipelines/` file it copies;
//! - the plain manifests and `helm template` output validate against the Kubernetes API schemas
//!   (`kubernetes-validate --strict`, offline), and the pods' wiring holds together (the
//!   `--config` path is a mounted ConfigMap key, probes hit the admin port, listen ports are
//!   declared container ports);
//! - the Dockerfile installs the shared libraries the binary links and copies what it runs;
//! - the sidecar and gateway pipelines run: an app's spans go app → sidecar → gateway → backend,
//!   enriched, with customer ids hashed, and SIGTERM drains both;
//! - the Grafana dashboard is valid JSON and every metric its PromQL uses is one bizpilot exposes.
//!
//! `kubernetes-validate` and `helm` come from `.ci/prereq-deploy.sh`; without them the tests that
//! need them fail and say so.

mod common;

use common::{Bizpilot, Downstream, free_port, http_get, http_request_full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Kubernetes versions the manifests are validated against: the oldest supported (native
/// sidecars and the preStop sleep action need 1.30) and the newest schema the validator has.
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
const PREREQ: &str = ".ci/prereq-deploy.sh";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

/// The documents of a (multi-document) YAML stream; empty documents are skipped.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let v: Value = serde_yaml::from_str(cur).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}\n{cur}"));
        if !v.is_null() {
            docs.push(v);
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut cur);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur);
    docs
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn get_str<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

fn seq<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn kind(v: &Value) -> &str {
    get_str(v, "kind")
}

fn name(v: &Value) -> &str {
    get_str(v, "metadata.name")
}

fn parse_config(text: &str, what: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what}: the bizpilot config is not YAML: {e}\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// bizpilot validate

/// `bizpilot validate` on `config` with exactly `env` as the environment: must be valid, without
/// warnings.
fn assert_valid_config(what: &str, config: &str, env: &BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::bin())
        .env_clear()
        .envs(env)
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run bizpilot validate");
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("config is valid") && t.contains(" 0 warning(s)"),
        "{what}: `bizpilot validate` rejects the config (or warns):\n{t}\n--- config ---\n{config}"
    );
}

/// `${env:NAME}` references that have no `:-default`.
fn env_refs_without_default(config: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = config;
    while let Some(i) = rest.find("${env:") {
        rest = &rest[i + 6..];
        let end = rest.find('}').unwrap_or(rest.len());
        let inner = &rest[..end];
        if !inner.contains(":-") {
            out.insert(inner.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tools

/// `${env:NAME:-default}` / `${env:NAME}` in `value`, resolved with `env` (then the default).
fn resolve_env(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${env:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        out.push_str(env.get(name).map(String::as_str).unwrap_or(default));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The host, port and path the config's `health_check` extension serves (Collector defaults
/// `localhost:13133` and `/`), with `env` applied; `None` when the service does not run one.
fn health_check_endpoint(config: &str, env: &BTreeMap<String, String>) -> Option<(String, u16, String)> {
    let v = parse_config(config, "config");
    let id = seq(&v, "service.extensions")
        .into_iter()
        .filter_map(Value::as_str)
        .find(|id| *id == "health_check" || id.starts_with("health_check/"))?
        .to_string();
    let ext = v.get("extensions").and_then(|e| e.get(id.as_str()));
    let field = |k: &str, default: &str| {
        ext.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(|s| resolve_env(s, env))
            .unwrap_or_else(|| default.to_string())
    };
    let endpoint = field("endpoint", "localhost:13133");
    let (host, port) = endpoint.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, field("path", "/")))
}

fn tool_missing(tool: &str) -> ! {
    panic!(
        "{tool} is not installed: run `bash {PREREQ}` (CI runs it from .ci/run before the tests), \
         then run the tests again"
    )
}

fn kubernetes_validate_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Validates the manifest files with `kubernetes-validate --strict` for every version in
/// [`K8S_VERSIONS`]; returns the output. Only a custom resource (no schema) may warn.
fn kubernetes_validate(files: &[PathBuf], allowed_unknown_kinds: &[&str]) -> String {
    if !kubernetes_validate_installed() {
        tool_missing("kubernetes-validate (PyPI)");
    }
    let mut all = String::new();
    for v in K8S_VERSIONS {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", v])
            .args(files)
            .output()
            .expect("run kubernetes-validate");
        let t = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate (Kubernetes {v}) rejects the manifests:\n{t}"
        );
        for line in t.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                allowed_unknown_kinds
                    .iter()
                    .any(|k| line.contains(&format!("schema for kind {k} "))),
                "unexpected warning from kubernetes-validate (Kubernetes {v}): {line}"
            );
        }
        all.push_str(&t);
    }
    all
}

fn helm() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("helm")).collect())
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/local/bin/helm"));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin/helm"));
    }
    candidates
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .unwrap_or_else(|| tool_missing("helm"))
}

const CHART: &str = "deploy/helm/bizpilot";

fn helm_run(args: &[&str]) -> Output {
    Command::new(helm())
        .current_dir(root())
        .args(args)
        .output()
        .expect("run helm")
}

/// `helm template` of the chart as release `bizpilot-gateway` in namespace `bizpilot`.
fn helm_template(set: &[&str]) -> String {
    let mut args = vec!["template", "bizpilot-gateway", CHART, "--namespace", "bizpilot"];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = helm_run(&args);
    assert!(out.status.success(), "helm {}:\n{}", args.join(" "), text(&out));
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Pods: the bizpilot containers and their configs

/// A container running `bizpilot run --config P`, with the config it reads.
struct BizpilotContainer {
    what: String,
    config: String,
    env: BTreeMap<String, String>,
}

/// Finds the bizpilot containers of a pod spec and checks their wiring: the `--config` file is a
/// key of a mounted ConfigMap (from `configmaps`), every `${env:X}` without a default is set,
/// probes hit the admin port, and every port the container listens on for other pods is declared.
fn bizpilot_containers(
    pod_spec: &Value,
    configmaps: &BTreeMap<String, BTreeMap<String, String>>,
    what: &str,
) -> Vec<BizpilotContainer> {
    let mut found = Vec::new();
    let containers = seq(pod_spec, "initContainers")
        .into_iter()
        .chain(seq(pod_spec, "containers"));
    for c in containers {
        let cname = get_str(c, "name");
        let what = format!("{what}, container {cname}");
        let args: Vec<&str> = seq(c, "args").iter().filter_map(|a| a.as_str()).collect();
        let Some(i) = args.iter().position(|a| *a == "--config") else {
            continue;
        };
        assert_eq!(args.first(), Some(&"run"), "{what}: args {args:?}");
        let path = Path::new(
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{what}: --config without a file")),
        );
        let dir = path.parent().unwrap().to_str().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let mount = seq(c, "volumeMounts")
            .into_iter()
            .find(|m| get_str(m, "mountPath") == dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir} (for --config {})", path.display()));
        let volume_name = get_str(mount, "name");
        let volume = seq(pod_spec, "volumes")
            .into_iter()
            .find(|v| get_str(v, "name") == volume_name)
            .unwrap_or_else(|| panic!("{what}: no volume {volume_name}"));
        let cm = get_str(volume, "configMap.name");
        assert!(!cm.is_empty(), "{what}: volume {volume_name} is not a ConfigMap");
        let config = configmaps
            .get(cm)
            .and_then(|d| d.get(file))
            .unwrap_or_else(|| panic!("{what}: ConfigMap {cm} has no key {file} (known: {configmaps:?})"))
            .clone();

        let mut env = BTreeMap::new();
        let mut from_secrets = BTreeSet::new();
        for e in seq(c, "env") {
            let n = get_str(e, "name").to_string();
            if let Some(v) = get(e, "value").and_then(Value::as_str) {
                env.insert(n, v.to_string());
            } else {
                assert!(get(e, "valueFrom").is_some(), "{what}: env {n} has no value");
                from_secrets.insert(n);
            }
        }
        for r in env_refs_without_default(&config) {
            assert!(
                env.contains_key(&r) || from_secrets.contains(&r),
                "{what}: the config needs ${{env:{r}}} and the container does not set it"
            );
        }

        // Durable state: the root filesystem is read-only, so a config that checkpoints (a
        // file_storage extension, directory from BIZPILOT_STORAGE_DIR) needs that variable set to a
        // writable volume; and wherever the variable is set, it must point at one.
        if config.contains("file_storage") {
            assert!(
                env.contains_key("BIZPILOT_STORAGE_DIR"),
                "{what}: the config checkpoints (file_storage) but BIZPILOT_STORAGE_DIR is not set"
            );
        }
        if let Some(dir) = env.get("BIZPILOT_STORAGE_DIR") {
            let mount = seq(c, "volumeMounts")
                .into_iter()
                .find(|m| get_str(m, "mountPath") == dir.as_str())
                .unwrap_or_else(|| panic!("{what}: BIZPILOT_STORAGE_DIR={dir} is not a mounted volume"));
            assert_ne!(
                get(mount, "readOnly"),
                Some(&Value::Bool(true)),
                "{what}: {dir} is read-only"
            );
            let volume_name = get_str(mount, "name");
            let volume = seq(pod_spec, "volumes")
                .into_iter()
                .find(|v| get_str(v, "name") == volume_name)
                .unwrap_or_else(|| panic!("{what}: no volume {volume_name}"));
            assert!(
                get(volume, "emptyDir").is_some() || get(volume, "persistentVolumeClaim").is_some(),
                "{what}: the state volume {volume_name} must be an emptyDir or a PersistentVolumeClaim"
            );
        }

        // Ports: named container ports, listen addresses from the environment, probes.
        let ports: BTreeMap<String, u64> = seq(c, "ports")
            .into_iter()
            .map(|p| {
                (
                    get_str(p, "name").to_string(),
                    get(p, "containerPort").and_then(Value::as_u64).unwrap(),
                )
            })
            .collect();
        if let Some(admin) = env.get("BIZPILOT_ADMIN_ENDPOINT") {
            assert!(
                admin.starts_with("0.0.0.0:") || admin.starts_with("127.0.0.1:") || admin.starts_with("localhost:"),
                "{what}: BIZPILOT_ADMIN_ENDPOINT={admin}"
            );
        }
        for (k, v) in &env {
            if let Some(port) = v.strip_prefix("0.0.0.0:") {
                let port: u64 = port.parse().unwrap_or_else(|_| panic!("{what}: {k}={v}"));
                assert!(
                    ports.values().any(|p| *p == port),
                    "{what}: {k}={v} listens on a port the container does not declare ({ports:?})"
                );
            }
        }
        // Every probe requests what the config's health_check extension serves, on an address the
        // kubelet reaches (the pod IP).
        let (health_host, health_port, health_path) = health_check_endpoint(&config, &env)
            .unwrap_or_else(|| panic!("{what}: the config has no health_check extension in service.extensions"));
        assert_eq!(
            health_host, "0.0.0.0",
            "{what}: health_check must listen on all interfaces for the kubelet"
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(p) = get(c, probe) else {
                assert!(probe == "startupProbe", "{what}: no {probe}");
                continue;
            };
            let port = match get(p, "httpGet.port").unwrap_or_else(|| panic!("{what}: {probe} is not httpGet")) {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(s) => *ports
                    .get(s)
                    .unwrap_or_else(|| panic!("{what}: {probe} uses undeclared port {s}")),
                other => panic!("{what}: {probe} port {other:?}"),
            };
            assert_eq!(
                port,
                u64::from(health_port),
                "{what}: {probe} must probe the health_check port"
            );
            assert_eq!(get_str(p, "httpGet.path"), health_path, "{what}: {probe} path");
        }

        // Hardening.
        let sc = get(c, "securityContext").unwrap_or_else(|| panic!("{what}: no securityContext"));
        assert_eq!(get(sc, "readOnlyRootFilesystem"), Some(&Value::Bool(true)), "{what}");
        assert_eq!(get(sc, "allowPrivilegeEscalation"), Some(&Value::Bool(false)), "{what}");
        assert_eq!(get(sc, "runAsNonRoot"), Some(&Value::Bool(true)), "{what}");
        assert!(
            get(c, "resources.requests").is_some() && get(c, "resources.limits").is_some(),
            "{what}"
        );

        // For validation: secrets get a placeholder (the redaction key is needed at start only).
        for s in from_secrets {
            env.insert(s, "placeholder".into());
        }
        found.push(BizpilotContainer { what, config, env });
    }
    found
}

/// The ConfigMaps of a set of manifests: name → data.
fn configmaps(docs: &[Value]) -> BTreeMap<String, BTreeMap<String, String>> {
    docs.iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(|d| {
            let data = get(d, "data")
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (name(d).to_string(), data)
        })
        .collect()
}

/// Checks every bizpilot container of the manifests; returns them.
fn check_workloads(docs: &[Value], what: &str) -> Vec<BizpilotContainer> {
    let cms = configmaps(docs);
    let mut found = Vec::new();
    for d in docs {
        if ["Deployment", "StatefulSet", "DaemonSet"].contains(&kind(d)) {
            let spec = get(d, "spec.template.spec").unwrap();
            let w = format!("{what}: {} {}", kind(d), name(d));
            assert_eq!(
                get(spec, "securityContext.runAsNonRoot"),
                Some(&Value::Bool(true)),
                "{w}"
            );
            assert_eq!(
                get(spec, "automountServiceAccountToken"),
                Some(&Value::Bool(false)),
                "{w}"
            );
            found.extend(bizpilot_containers(spec, &cms, &w));
        }
    }
    for c in &found {
        assert_valid_config(&c.what, &c.config, &c.env);
    }
    found
}

/// The shipped pipeline a deployed config is a copy of.
fn assert_same_as_pipeline(config: &str, pipeline: &str, what: &str) {
    let shipped = parse_config(&read(pipeline), pipeline);
    assert!(
        parse_config(config, what) == shipped,
        "{what}: the config differs from {pipeline}; keep the copies in deploy/ the same as the pipeline\n\
         --- {what} ---\n{config}"
    );
}

fn write_temp(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()) == Some(ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Plain Kubernetes manifests

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let files = files_under(&root().join("deploy/kubernetes"), "yaml");
    assert!(files.len() >= 8, "{files:?}");
    let out = kubernetes_validate(&files, &[]);
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        assert!(
            out.contains(&format!("{} passed", f.display())),
            "{rel} was not validated:\n{out}"
        );
    }

    // The validator is strict: an unknown field and a wrong type are caught.
    let dir = tempfile::tempdir().unwrap();
    let bad =
        read("deploy/kubernetes/gateway/deployment.yaml").replace("readOnlyRootFilesystem", "readOnlyRootFilesytem");
    let bad = write_temp(dir.path(), "bad.yaml", &bad);
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSIONS[0]])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed:\n{}", text(&out));
}

#[test]
fn kubernetes_manifests_run_valid_configs_wired_to_their_pods() {
    for (dir, pipeline, expect) in [
        (
            "deploy/kubernetes/gateway",
            "pipelines/gateway.yaml",
            "bizpilot-gateway",
        ),
        (
            "deploy/kubernetes/sidecar",
            "pipelines/sidecar.yaml",
            "bizpilot-sidecar",
        ),
    ] {
        let docs: Vec<Value> = files_under(&root().join(dir), "yaml")
            .iter()
            .flat_map(|f| yaml_docs(&std::fs::read_to_string(f).unwrap(), &f.display().to_string()))
            .collect();

        // Every config in a ConfigMap validates, and is the shipped pipeline.
        let cms = configmaps(&docs);
        let mut configs = 0;
        for (cm, data) in &cms {
            for (key, config) in data {
                if key.ends_with(".yaml") || key.ends_with(".yml") {
                    let what = format!("{dir}: ConfigMap {cm}, {key}");
                    assert_valid_config(&what, config, &BTreeMap::new());
                    assert_same_as_pipeline(config, pipeline, &what);
                    configs += 1;
                }
            }
        }
        assert!(configs >= 1 && cms.contains_key(expect), "{dir}: {cms:?}");

        // ... and the pods that read it are wired to it.
        let containers = check_workloads(&docs, dir);
        assert_eq!(containers.len(), 1, "{dir}: one bizpilot container expected");
        if dir.ends_with("gateway") {
            assert!(
                containers[0].env.contains_key("BIZPILOT_STORAGE_DIR"),
                "{dir}: the gateway must give its checkpoints a writable volume (BIZPILOT_STORAGE_DIR)"
            );
        }

        // All resources of a directory live in one namespace, which the directory creates.
        let ns: BTreeSet<&str> = docs
            .iter()
            .filter(|d| kind(d) != "Namespace")
            .map(|d| get_str(d, "metadata.namespace"))
            .collect();
        let created: BTreeSet<&str> = docs.iter().filter(|d| kind(d) == "Namespace").map(name).collect();
        assert_eq!(ns, created, "{dir}: namespaces");
    }

    // The gateway: Service, HPA on CPU, PDB, all pointing at the Deployment's pods.
    let docs: Vec<Value> = files_under(&root().join("deploy/kubernetes/gateway"), "yaml")
        .iter()
        .flat_map(|f| yaml_docs(&std::fs::read_to_string(f).unwrap(), "gateway"))
        .collect();
    check_gateway_objects(&docs, "deploy/kubernetes/gateway");

    // The sidecar: the app exports to the sidecar on localhost, which runs as a native sidecar.
    let docs = yaml_docs(&read("deploy/kubernetes/sidecar/deployment.yaml"), "sidecar");
    let spec = get(&docs[0], "spec.template.spec").unwrap();
    let init = seq(spec, "initContainers");
    assert_eq!(
        get_str(init[0], "restartPolicy"),
        "Always",
        "bizpilot must be a native sidecar"
    );
    let app_env: Vec<(&str, &str)> = seq(spec, "containers")
        .iter()
        .flat_map(|c| seq(c, "env"))
        .map(|e| (get_str(e, "name"), get_str(e, "value")))
        .collect();
    assert!(
        app_env.contains(&("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")),
        "{app_env:?}"
    );
}

/// Deployment, Service, HPA and PDB of a gateway agree with each other.
fn check_gateway_objects(docs: &[Value], what: &str) {
    let one = |k: &str| {
        let v: Vec<&Value> = docs.iter().filter(|d| kind(d) == k).collect();
        assert_eq!(v.len(), 1, "{what}: one {k} expected");
        v[0]
    };
    let deploy = one("Deployment");
    let pod_labels = get(deploy, "spec.template.metadata.labels")
        .and_then(Value::as_mapping)
        .unwrap();
    let selects_pods = |sel: &Value, w: &str| {
        let sel = sel.as_mapping().unwrap_or_else(|| panic!("{what}: {w}: no selector"));
        assert!(!sel.is_empty(), "{what}: {w}: empty selector");
        for (k, v) in sel {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{what}: {w} selects {k:?}={v:?}, the pods lack it"
            );
        }
    };
    let svc = one("Service");
    selects_pods(get(svc, "spec.selector").unwrap(), "Service");
    let pdb = one("PodDisruptionBudget");
    selects_pods(get(pdb, "spec.selector.matchLabels").unwrap(), "PodDisruptionBudget");
    let hpa = one("HorizontalPodAutoscaler");
    assert_eq!(get_str(hpa, "spec.scaleTargetRef.kind"), "Deployment");
    assert_eq!(
        get_str(hpa, "spec.scaleTargetRef.name"),
        name(deploy),
        "{what}: HPA target"
    );
    assert!(
        seq(hpa, "spec.metrics")
            .iter()
            .any(|m| get_str(m, "resource.name") == "cpu"),
        "{what}: the HPA scales on CPU"
    );
    let min = get(hpa, "spec.minReplicas").and_then(Value::as_u64).unwrap();
    assert!(min >= 2, "{what}: with a PDB, at least two replicas");

    // Service ports point at named container ports.
    let container = seq(deploy, "spec.template.spec.containers")[0];
    let cports: BTreeSet<&str> = seq(container, "ports").iter().map(|p| get_str(p, "name")).collect();
    let sports: BTreeSet<&str> = seq(svc, "spec.ports").iter().map(|p| get_str(p, "name")).collect();
    for p in seq(svc, "spec.ports") {
        let target = get_str(p, "targetPort");
        assert!(
            cports.contains(target),
            "{what}: Service targetPort {target} not in {cports:?}"
        );
    }
    for p in ["otlp-grpc", "otlp-http", "admin", "prometheus"] {
        assert!(sports.contains(p), "{what}: the Service lacks port {p}");
    }
    // SIGTERM drains within shutdown_timeout: the grace period must be longer.
    let grace = get(deploy, "spec.template.spec.terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap();
    assert!(
        grace > 30,
        "{what}: terminationGracePeriodSeconds {grace} ≤ shutdown_timeout (30s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Helm

#[test]
fn helm_chart_lints_and_renders_valid_manifests_in_both_modes() {
    // The default values hold the shipped pipelines.
    let values = parse_config(&read(&format!("{CHART}/values.yaml")), "values.yaml");
    for mode in ["gateway", "sidecar"] {
        let config = serde_yaml::to_string(get(&values, &format!("config.{mode}")).unwrap()).unwrap();
        let what = format!("{CHART}/values.yaml config.{mode}");
        assert_valid_config(&what, &config, &BTreeMap::new());
        assert_same_as_pipeline(&config, &format!("pipelines/{mode}.yaml"), &what);
    }

    for mode in ["gateway", "sidecar"] {
        let out = helm_run(&["lint", "--strict", CHART, "--set", &format!("mode={mode}")]);
        assert!(out.status.success(), "helm lint ({mode}):\n{}", text(&out));
    }
    let out = helm_run(&["template", "x", CHART, "--set", "mode=agent"]);
    assert!(
        !out.status.success() && text(&out).contains("mode must be gateway or sidecar"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let kinds = |docs: &[Value]| docs.iter().map(|d| kind(d).to_string()).collect::<BTreeSet<_>>();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    // Gateway, defaults: HPA and PDB on, no ServiceMonitor.
    let rendered = helm_template(&[]);
    let docs = yaml_docs(&rendered, "helm template (gateway)");
    assert_eq!(
        kinds(&docs),
        set(&[
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ])
    );
    kubernetes_validate(&[write_temp(dir.path(), "gateway.yaml", &rendered)], &[]);
    check_gateway_objects(&docs, "helm (gateway)");
    for c in check_workloads(&docs, "helm (gateway)") {
        assert_same_as_pipeline(&c.config, "pipelines/gateway.yaml", &c.what);
        assert_eq!(
            c.env.get("BIZPILOT_STORAGE_DIR").map(String::as_str),
            Some("/var/lib/bizpilot/data"),
            "{}: the checkpoints' volume",
            c.what
        );
    }
    // A PersistentVolumeClaim instead of the emptyDir keeps the state across reschedules.
    let rendered = helm_template(&[
        "storage.volume.emptyDir=null",
        "storage.volume.persistentVolumeClaim.claimName=bizpilot-state",
    ]);
    let docs = yaml_docs(&rendered, "helm template (gateway, state on a claim)");
    kubernetes_validate(&[write_temp(dir.path(), "claim.yaml", &rendered)], &[]);
    check_workloads(&docs, "helm (gateway, state on a claim)");
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    let claim = seq(deploy, "spec.template.spec.volumes")
        .into_iter()
        .find(|v| get_str(v, "name") == "bizpilot-state")
        .and_then(|v| get(v, "persistentVolumeClaim.claimName"))
        .and_then(Value::as_str);
    assert_eq!(claim, Some("bizpilot-state"));
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    assert!(get(deploy, "spec.replicas").is_none(), "the HPA owns the replica count");
    assert_eq!(
        get(deploy, "metadata.name").and_then(Value::as_str),
        Some("bizpilot-gateway")
    );

    // Gateway, toggles: no HPA, no PDB, a ServiceMonitor on both metrics ports.
    let rendered = helm_template(&[
        "gateway.autoscaling.enabled=false",
        "gateway.podDisruptionBudget.enabled=false",
        "serviceMonitor.enabled=true",
        "gateway.replicas=3",
    ]);
    let docs = yaml_docs(&rendered, "helm template (gateway, toggles)");
    assert_eq!(
        kinds(&docs),
        set(&["ConfigMap", "Deployment", "Service", "ServiceAccount", "ServiceMonitor"])
    );
    kubernetes_validate(
        &[write_temp(dir.path(), "toggles.yaml", &rendered)],
        &["ServiceMonitor"],
    );
    check_workloads(&docs, "helm (gateway, toggles)");
    let deploy = docs.iter().find(|d| kind(d) == "Deployment").unwrap();
    assert_eq!(get(deploy, "spec.replicas").and_then(Value::as_u64), Some(3));
    let svc = docs.iter().find(|d| kind(d) == "Service").unwrap();
    let sm = docs.iter().find(|d| kind(d) == "ServiceMonitor").unwrap();
    assert_eq!(get_str(sm, "apiVersion"), "monitoring.coreos.com/v1");
    let svc_labels = get(svc, "metadata.labels").and_then(Value::as_mapping).unwrap();
    for (k, v) in get(sm, "spec.selector.matchLabels")
        .and_then(Value::as_mapping)
        .unwrap()
    {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "the ServiceMonitor does not select the Service"
        );
    }
    let svc_ports: BTreeSet<&str> = seq(svc, "spec.ports").iter().map(|p| get_str(p, "name")).collect();
    let sm_ports: BTreeSet<&str> = seq(sm, "spec.endpoints").iter().map(|e| get_str(e, "port")).collect();
    assert_eq!(
        sm_ports,
        ["admin", "prometheus"].into_iter().collect(),
        "ServiceMonitor endpoints"
    );
    assert!(sm_ports.is_subset(&svc_ports));

    // Sidecar: only the config and the snippet to add to an application's pod.
    let rendered = helm_template(&["mode=sidecar"]);
    let docs = yaml_docs(&rendered, "helm template (sidecar)");
    assert_eq!(kinds(&docs), set(&["ConfigMap"]));
    assert_eq!(docs.len(), 2);
    kubernetes_validate(&[write_temp(dir.path(), "sidecar.yaml", &rendered)], &[]);
    let cms = configmaps(&docs);
    let snippet = &cms["bizpilot-gateway-snippet"];
    let container: Value = serde_yaml::from_str(&snippet["container.yaml"]).unwrap();
    let volumes: Value = serde_yaml::from_str(&snippet["volumes.yaml"]).unwrap();
    assert_eq!(get_str(&container, "restartPolicy"), "Always", "a native sidecar");
    // The snippet, pasted into an application's Deployment, is a valid workload whose bizpilot
    // reads a valid config.
    let app: Value = serde_yaml::from_str(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: bizpilot}}
spec:
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      automountServiceAccountToken: false
      securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
      initContainers: [{container}]
      containers:
        - name: app
          image: registry.example.com/app:1
          env: [{{name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://localhost:4317"}}]
      volumes: {volumes}
"#,
        container = serde_json::to_string(&container).unwrap(),
        volumes = serde_json::to_string(&volumes).unwrap(),
    ))
    .unwrap();
    let app_text = serde_yaml::to_string(&app).unwrap();
    kubernetes_validate(&[write_temp(dir.path(), "app.yaml", &app_text)], &[]);
    let mut all = docs.clone();
    all.push(app);
    let found = check_workloads(&all, "helm (sidecar snippet in an app)");
    assert_eq!(found.len(), 1);
    assert_same_as_pipeline(&found[0].config, "pipelines/sidecar.yaml", &found[0].what);
}

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn systemd_unit_is_hardened_and_runs_a_valid_config() {
    let unit = read("deploy/systemd/bizpilot.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| directives.contains(&(k, v));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
        // Checkpoints go to the unit's own writable state directory (%S = /var/lib).
        ("StateDirectory", "bizpilot"),
        ("Environment", "BIZPILOT_STORAGE_DIR=%S/bizpilot"),
    ] {
        assert!(has(k, v), "bizpilot.service lacks {k}={v}");
    }
    // The stop timeout leaves room for the drain (shutdown_timeout 30s).
    let stop = directives.iter().find(|(k, _)| *k == "TimeoutStopSec").unwrap().1;
    assert!(
        stop.trim_end_matches('s').parse::<u64>().unwrap() > 30,
        "TimeoutStopSec={stop}"
    );

    // Every config the unit names is shipped beside it (/etc/bizpilot/X ← deploy/systemd/X) and valid.
    let mut configs = BTreeSet::new();
    for (k, v) in &directives {
        if k.starts_with("Exec") {
            let words: Vec<&str> = v.split_whitespace().collect();
            for w in words.windows(2).filter(|w| w[0] == "--config") {
                configs.insert(w[1].to_string());
            }
        }
    }
    assert_eq!(configs.len(), 1, "{configs:?}");
    for c in &configs {
        let file = c
            .strip_prefix("/etc/bizpilot/")
            .unwrap_or_else(|| panic!("{c} is not under /etc/bizpilot"));
        let rel = format!("deploy/systemd/{file}");
        let config = read(&rel);
        assert_valid_config(&rel, &config, &BTreeMap::new());
        assert_same_as_pipeline(&config, "pipelines/gateway.yaml", &rel);
    }

    // systemd's own check (offline), on a copy that runs the binary just built.
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("systemd-analyze is not installed: skipping `systemd-analyze verify` (the checks above ran)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = unit.replace("/usr/local/bin/bizpilot", common::bin().to_str().unwrap());
    let path = write_temp(dir.path(), "bizpilot.service", &copy);
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "systemd-analyze verify:\n{t}");
    for bad in [
        "Unknown key",
        "Unknown section",
        "Failed to parse",
        "ignoring",
        "Invalid",
    ] {
        assert!(!t.contains(bad), "systemd-analyze verify complains:\n{t}");
    }
}

// ---------------------------------------------------------------------------------------------
// Docker

#[test]
fn dockerfile_builds_what_it_runs_and_ships_the_libraries_the_binary_links() {
    let df = read("deploy/docker/Dockerfile");
    // Joined continuation lines, without comments.
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in df.lines() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let instr = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .collect()
    };
    let froms = instr("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms.last().unwrap().contains("slim") || froms.last().unwrap().contains("distroless"));
    assert_eq!(instr("EXPOSE"), vec!["4317 4318 8888 8889 13133"]);
    assert_eq!(instr("CMD"), vec![r#"["run"]"#]);
    let user = instr("USER");
    let uid = user.last().expect("USER").split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().map(|u| u > 0).unwrap_or(false),
        "a numeric non-root USER: {user:?}"
    );
    // The HEALTHCHECK asks the default pipeline's health_check extension (port and path).
    let healthcheck = instr("HEALTHCHECK").join(" ");
    let port_env = instr("ENV")
        .iter()
        .find_map(|e| e.strip_prefix("BIZPILOT_HEALTH_PORT="))
        .expect("ENV BIZPILOT_HEALTH_PORT")
        .to_string();
    let (_, port, path) = health_check_endpoint(&read("pipelines/opentelemetry-demo.yaml"), &BTreeMap::new())
        .expect("the default pipeline runs health_check");
    assert_eq!(port_env, port.to_string(), "ENV BIZPILOT_HEALTH_PORT");
    assert!(healthcheck.contains("${BIZPILOT_HEALTH_PORT}"), "{healthcheck}");
    assert!(healthcheck.contains(&format!("GET {path} HTTP/1.0")), "{healthcheck}");
    // Checkpoints (BIZPILOT_STORAGE_DIR) live under a declared VOLUME owned by the runtime user.
    let storage = instr("ENV")
        .iter()
        .find_map(|e| e.strip_prefix("BIZPILOT_STORAGE_DIR="))
        .expect("ENV BIZPILOT_STORAGE_DIR")
        .to_string();
    let volumes = instr("VOLUME").join(" ");
    let volume = volumes.trim_matches(|c| c == '[' || c == ']' || c == '"');
    assert!(
        !volume.is_empty() && storage.starts_with(volume),
        "BIZPILOT_STORAGE_DIR={storage} is not under the image's VOLUME {volumes:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("chown bizpilot:bizpilot {volume}"))),
        "the runtime user must own {volume}"
    );
    // The entrypoint is the binary the builder copies.
    let entry = instr("ENTRYPOINT");
    assert!(
        instr("COPY")
            .iter()
            .any(|c| c.starts_with("--from=builder") && entry[0].contains(c.split_whitespace().last().unwrap())),
        "ENTRYPOINT {entry:?} is not what the builder stage copies"
    );
    // Cargo is run with the lock file; the toolchain is at least the workspace's rust-version.
    assert!(lines.iter().any(|l| l.contains("cargo build --release --locked")));
    let ws = read("Cargo.toml");
    let msrv = ws
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    let rust = instr("ARG")
        .into_iter()
        .find_map(|a| a.strip_prefix("RUST_VERSION="))
        .unwrap();
    let ver = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(ver(rust) >= ver(msrv), "RUST_VERSION {rust} < rust-version {msrv}");
    // The pipelines the build validates exist, and nothing it copies is excluded from the context.
    for l in &lines {
        for w in l.split_whitespace().filter(|w| w.starts_with("pipelines/")) {
            assert!(root().join(w).exists(), "the Dockerfile uses {w}, which does not exist");
        }
    }
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "proto", "pipelines", "tests"] {
        assert!(root().join(needed).exists() || needed == "proto", "{needed}");
        assert!(
            !ignored.iter().any(|i| i == needed),
            ".dockerignore excludes {needed}, which the build needs"
        );
    }
    assert!(
        ignored.iter().any(|i| i == "target"),
        ".dockerignore must exclude target/"
    );

    // The runtime stage installs the Debian package of every shared library the binary links.
    let runtime_stage = df.rsplit("\nFROM ").next().unwrap();
    let out = Command::new("ldd").arg(common::bin()).output().expect("run ldd");
    let ldd = String::from_utf8_lossy(&out.stdout).into_owned();
    let in_base = [
        "linux-vdso.so",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "libstdc++.so",
        "libzstd.so",
        "liblzma.so",
    ];
    let packages = [
        ("libssl.so.3", "libssl3"),
        ("libcrypto.so.3", "libssl3"),
        ("libz.so.1", "zlib1g"),
        ("libsasl2.so.2", "libsasl2-2"),
        ("libcurl.so.4", "libcurl4"),
    ];
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        if in_base.iter().any(|b| lib.starts_with(b) || lib.contains(b)) {
            continue;
        }
        let pkg = packages
            .iter()
            .find(|(l, _)| lib.starts_with(l))
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("the binary links {lib}: add its Debian package to the runtime stage and here"));
        assert!(
            runtime_stage.contains(&format!(" {pkg}")),
            "the binary links {lib}: the runtime stage must install {pkg}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar and gateway pipelines, run

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(any_value::Value::StringValue(s)) => s,
        _ => "",
    }
}

/// OpenTelemetry-Demo-style checkout spans: `n` orders of 123.45 USD by 7 customers, every
/// `fail_every`-th failing.
fn checkout_request(n: usize, fail_every: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| {
            let failed = fail_every > 0 && i % fail_every == 0;
            let attributes = vec![
                kv("user.id", s(&format!("cust-{:06}", i % 7))),
                kv("demo.order.id", s(&format!("order-{i}"))),
                kv(
                    "demo.user_context.loyalty_level",
                    s(["gold", "silver", "bronze"][(i / 3) % 3]),
                ),
                kv("demo.user_context.selected_currency", s("USD")),
                kv("demo.order.items.count", any_value::Value::IntValue(2)),
                kv("note", s("contact jane.doe@example.com")),
                kv("demo.order.amount", any_value::Value::DoubleValue(123.45)),
            ];
            Span {
                trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: "oteldemo.CheckoutService/PlaceOrder".into(),
                kind: 2,
                start_time_unix_nano: now_ns() - 1_000_000_000 + i as u64 * 1000,
                end_time_unix_nano: now_ns() - 900_000_000 + i as u64 * 1000,
                attributes,
                status: Some(Status {
                    code: if failed {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Ok as i32
                    },
                    message: if failed {
                        "payment declined".into()
                    } else {
                        String::new()
                    },
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("checkout"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gauge_request(name: &str, value: f64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("checkout"))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: now_ns(),
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn post_protobuf(addr: SocketAddr, path: &str, body: &[u8]) {
    let (status, _, resp) = http_request_full(addr, "POST", path, &[("Content-Type", "application/x-protobuf")], body)
        .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"));
    assert_eq!(status, 200, "POST {path}: {}", String::from_utf8_lossy(&resp));
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A shipped pipeline run with its listen addresses moved to free loopback ports.
struct Running {
    bp: Bizpilot,
    grpc: u16,
    http: u16,
    extra: BTreeMap<&'static str, u16>,
}

fn run_pipeline(pipeline: &str, env: &[(&str, String)], extra_ports: &[&'static str]) -> Running {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let mut all: Vec<(String, String)> = vec![
        ("BIZPILOT_OTLP_GRPC_ENDPOINT".into(), format!("127.0.0.1:{grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT".into(), format!("127.0.0.1:{http}")),
        ("BIZPILOT_ADMIN_ENDPOINT".into(), format!("127.0.0.1:{admin}")),
    ];
    let mut extra = BTreeMap::new();
    for var in extra_ports {
        let p = free_port();
        all.push((var.to_string(), format!("127.0.0.1:{p}")));
        extra.insert(*var, p);
    }
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let path = root().join(pipeline);
    let bp = Bizpilot::start_with(&[path.as_path()], loopback(admin), tempfile::tempdir().unwrap(), &refs);
    Running { bp, grpc, http, extra }
}

#[test]
fn sidecar_without_a_hash_key_refuses_to_start() {
    // (under timeout(1), so that a sidecar that starts anyway cannot hang the test)
    let out = Command::new("timeout")
        .arg("20")
        .arg(common::bin())
        .env_remove("BIZPILOT_HASH_KEY")
        .env("BIZPILOT_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{}", free_port()))
        .env("BIZPILOT_OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{}", free_port()))
        .env("BIZPILOT_ADMIN_ENDPOINT", format!("127.0.0.1:{}", free_port()))
        .args(["run", "--config"])
        .arg(root().join("pipelines/sidecar.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("BIZPILOT_HASH_KEY"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_to_sidecar_to_gateway_to_backend_enriched_and_redacted_then_drained() {
    let backend = Downstream::start().await;
    let mut gateway = run_pipeline(
        "pipelines/gateway.yaml",
        &[("BIZPILOT_OTLP_BACKEND_ENDPOINT", format!("http://{}", backend.addr))],
        &["BIZPILOT_PROMETHEUS_ENDPOINT"],
    );
    let mut sidecar = run_pipeline(
        "pipelines/sidecar.yaml",
        &[
            ("BIZPILOT_GATEWAY_ENDPOINT", format!("127.0.0.1:{}", gateway.grpc)),
            ("BIZPILOT_HASH_KEY", "deploy-e2e-key".into()),
        ],
        &[],
    );

    // The app exports spans and a metric to the sidecar on localhost (OTLP/HTTP here; gRPC works alike).
    const N: usize = 40;
    let app = loopback(sidecar.http);
    let (traces, metrics) = (
        checkout_request(N, 4).encode_to_vec(),
        gauge_request("shop.cart.size", 3.0).encode_to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        post_protobuf(app, "/v1/traces", &traces);
        post_protobuf(app, "/v1/metrics", &metrics);
    })
    .await
    .unwrap();

    backend
        .wait_for(Duration::from_secs(20), "the app's spans at the backend", |r| {
            r.span_count() >= N
        })
        .await;
    let spans = backend.received(|r| r.spans());
    assert_eq!(spans.len(), N, "each span exactly once");
    for sp in &spans {
        let order = attr_str(sp, "business.order.id");
        assert!(order.starts_with("order-"), "business.order.id: {sp:?}");
        let customer = attr_str(sp, "business.customer.id");
        assert!(
            customer.len() == 64 && customer.chars().all(|c| c.is_ascii_hexdigit()),
            "the customer id leaves the pod hashed: {customer:?}"
        );
        assert_eq!(attr_str(sp, "user.id"), customer, "user.id is hashed with the same key");
        assert!(!attr_str(sp, "note").contains("jane.doe@example.com"), "e-mail masked");
        assert!(attr_str(sp, "business.customer.tier").len() > 2);
        assert_eq!(attr_str(sp, "business.order.value"), "123.45");
        assert_eq!(attr_str(sp, "business.currency"), "USD");
    }
    let distinct: BTreeSet<&str> = spans.iter().map(|s| attr_str(s, "business.customer.id")).collect();
    assert_eq!(distinct.len(), 7, "hashing is stable: 7 customers, 7 hashes");

    // The metric reached the backend and the gateway's Prometheus endpoint.
    backend
        .wait_for(Duration::from_secs(20), "the app's metric at the backend", |r| {
            !r.metrics.is_empty()
        })
        .await;
    let prom = loopback(gateway.extra["BIZPILOT_PROMETHEUS_ENDPOINT"]);
    let scrape = http_get(prom, "/metrics")
        .expect("scrape the gateway's prometheus exporter")
        .1;
    assert!(scrape.contains("shop_cart_size"), "{scrape}");

    // Self-telemetry of both tiers counted the spans.
    assert_eq!(
        sidecar.bp.metric_sum("bizpilot_exporter_sent_spans_total", &[]),
        N as f64
    );
    assert!(gateway.bp.metric_sum("bizpilot_receiver_accepted_spans_total", &[]) >= N as f64);

    // SIGTERM drains: the sidecar first (as Kubernetes stops a native sidecar last, after the
    // app), then the gateway; both exit 0.
    for (name, r) in [("sidecar", &mut sidecar), ("gateway", &mut gateway)] {
        r.bp.signal("TERM");
        let status = r.bp.wait_exit(Duration::from_secs(40));
        assert!(status.success(), "{name} exited with {status}\n{}", r.bp.logs());
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

/// Metric names the dashboard charts although no component emits them yet. The test fails once
/// one of them is emitted, so that this list and the dashboard are reconciled with the real name.
const PENDING_METRICS: [&str; 0] = [];

/// Charted business metrics that the gateway pipeline of this test does not produce but another shipped pipeline
/// does: the capacity planner's gauges (`pipelines/capacity-plan.yaml`). They must still be in the source;
/// `tests/plan_e2e.rs` checks that each appears in a live scrape of that pipeline.
const OTHER_PIPELINE_METRICS: [&str; 5] = [
    "business_capacity_required_replicas",
    "business_capacity_headroom_ratio",
    "business_capacity_utilization_ratio",
    "business_capacity_saturation_multiple",
    "business_capacity_staff_required",
];

const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "label_values",
    "vector",
    "scalar",
    "time",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "absent",
    "changes",
    "resets",
    "sort",
    "sort_desc",
    "label_replace",
    "label_join",
    "sum_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "inf",
    "nan",
];

/// Removes `open…close` spans (not nested across kinds), keeping the delimiters.
fn blank_between(s: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        if c == open {
            depth += 1;
            if depth == 1 {
                out.push(c);
            }
        } else if c == close && depth > 0 {
            depth -= 1;
            if depth == 0 {
                out.push(c);
            }
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

fn identifiers(s: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            // Skip `$variables` and numbers such as `1e3`.
            let prev = if start > 0 { b[start - 1] as char } else { ' ' };
            if prev != '$' && !prev.is_ascii_digit() && prev != '.' {
                out.push((s[start..i].to_string(), i));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names and the label names a PromQL expression uses.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    // Grafana's `label_values(metric, label)`.
    if let Some(args) = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        let (m, l) = args.rsplit_once(',').unwrap_or(("", args));
        let (metrics, mut labels) = promql_names(m);
        labels.insert(l.trim().to_string());
        return (metrics, labels);
    }
    // Strings out first (label values may contain anything).
    let mut no_strings = String::new();
    let mut in_str = false;
    for c in expr.chars() {
        if c == '"' {
            in_str = !in_str;
            no_strings.push('"');
        } else if !in_str {
            no_strings.push(c);
        }
    }
    // Labels: inside `{...}` (matchers) and the parentheses after by/without/on/ignoring/group_*.
    let mut labels = BTreeSet::new();
    let mut rest = no_strings.as_str();
    while let Some(i) = rest.find('{') {
        let end = rest[i..].find('}').map(|e| i + e).unwrap_or(rest.len());
        for (id, _) in identifiers(&rest[i + 1..end]) {
            labels.insert(id);
        }
        rest = &rest[end..];
    }
    let ids = identifiers(&no_strings);
    for w in ids.windows(1) {
        let (word, end) = &w[0];
        if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str()) {
            let after = no_strings[*end..].trim_start();
            if let Some(inner) = after.strip_prefix('(') {
                let close = inner.find(')').unwrap_or(inner.len());
                for (id, _) in identifiers(&inner[..close]) {
                    labels.insert(id);
                }
            }
        }
    }
    // Metrics: identifiers outside braces, brackets and label lists that are neither keywords
    // nor function calls.
    let mut stripped = blank_between(&blank_between(&no_strings, '{', '}'), '[', ']');
    for kw in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        let mut out = String::new();
        let mut rest = stripped.as_str();
        while let Some((pos, _)) = identifiers(rest)
            .into_iter()
            .find(|(id, _)| id == kw)
            .map(|(_, e)| (e, ()))
        {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            let trimmed = after.trim_start();
            if let Some(inner) = trimmed.strip_prefix('(') {
                let close = inner.find(')').map(|c| c + 1).unwrap_or(inner.len());
                rest = &inner[close..];
                out.push(' ');
            } else {
                rest = after;
            }
        }
        out.push_str(rest);
        stripped = out;
    }
    let mut metrics = BTreeSet::new();
    for (id, end) in identifiers(&stripped) {
        let is_call = stripped[end..].trim_start().starts_with('(');
        if PROMQL_WORDS.contains(&id.as_str()) || is_call {
            continue;
        }
        metrics.insert(id);
    }
    (metrics, labels)
}

/// Every PromQL expression of the dashboard (panels, rows' panels, template variables).
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    fn panels<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut exprs = Vec::new();
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
            exprs.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap();
            exprs.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    exprs
}

/// Metric names in the source: `"bizpilot_…"` literals, the names `item_counter_name` builds,
/// and the Prometheus names the connectors' docs list (`business_…`).
fn metric_names_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for f in files_under(&root().join("crates"), "rs") {
        let src = std::fs::read_to_string(&f).unwrap();
        for (id, end) in identifiers(&src) {
            let quoted = src[end..].starts_with('"') && src[..end - id.len()].ends_with('"');
            let ticked = src[end..].starts_with('`') && src[..end - id.len()].ends_with('`');
            if (id.starts_with("bizpilot_") && quoted)
                || ((id.starts_with("business_") || id.starts_with("kpi_")) && ticked)
            {
                names.insert(id);
            }
        }
        let mut rest = src.as_str();
        while let Some(i) = rest.find("item_counter_name(\"") {
            rest = &rest[i + "item_counter_name(\"".len()..];
            let parts: Vec<&str> = rest.splitn(4, '"').collect();
            if parts.len() == 4 && parts[1].trim() == "," {
                for item in ["spans", "metric_points", "log_records"] {
                    names.insert(format!("bizpilot_{}_{}_{item}_total", parts[0], parts[2]));
                }
            }
        }
    }
    names
}

/// Prometheus text: metric name → label names seen.
fn scrape_names(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.rfind('}').unwrap();
            let mut in_str = false;
            let mut key = String::new();
            for c in line[name_end + 1..end].chars() {
                match c {
                    '"' => in_str = !in_str,
                    '=' if !in_str => {
                        labels.insert(key.trim().trim_start_matches(',').trim().to_string());
                        key.clear();
                    }
                    _ if !in_str => key.push(c),
                    _ => {}
                }
            }
        }
    }
    out
}

#[test]
fn grafana_dashboard_is_valid_and_charts_only_metrics_bizpilot_exposes() {
    let text = read("deploy/grafana/bizpilot-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string() && dash["schemaVersion"].as_u64() >= Some(36));
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource"),
        "a datasource variable, so the dashboard imports anywhere"
    );

    // Panels: unique ids, a position, the datasource variable.
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id {}", p["id"]);
        assert!(p["gridPos"]["w"].as_u64().unwrap() > 0, "{}", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "panel {} has no query",
                p["title"]
            );
        }
    }

    // What bizpilot exposes: the names in the source, and a live scrape of the shipped gateway
    // pipeline (self-telemetry on the admin port, business metrics on the prometheus exporter)
    // after checkout spans went through it. The overlay only shortens the connector's timers.
    let source = metric_names_in_source();
    let dir = tempfile::tempdir().unwrap();
    let overlay = write_temp(
        dir.path(),
        "fast.yaml",
        "connectors:\n  business_impact:\n    allowed_lateness: 1s\n    idle_timeout: 1s\n    metrics_flush_interval: 1s\n    \
         dedup_window: 2s\n",
    );
    let (grpc, http, admin, prom) = (free_port(), free_port(), free_port(), free_port());
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http}")),
        ("BIZPILOT_ADMIN_ENDPOINT", format!("127.0.0.1:{admin}")),
        ("BIZPILOT_PROMETHEUS_ENDPOINT", format!("127.0.0.1:{prom}")),
        // Nothing listens there: the OTLP export fails and retries, which is fine here.
        (
            "BIZPILOT_OTLP_BACKEND_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        ),
    ];
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gateway = root().join("pipelines/gateway.yaml");
    let bp = Bizpilot::start_with(
        &[gateway.as_path(), overlay.as_path()],
        loopback(admin),
        tempfile::tempdir().unwrap(),
        &refs,
    );
    // Failures, recoveries (a customer's later success) and losses (a customer whose last
    // attempt failed, once the shortened dedup window has passed).
    post_protobuf(loopback(http), "/v1/traces", &checkout_request(60, 3).encode_to_vec());
    // The connector keeps time by the data: a later span moves event time past the dedup window,
    // so the failures not followed by a success of the same customer become losses.
    std::thread::sleep(Duration::from_millis(3500));
    post_protobuf(loopback(http), "/v1/traces", &checkout_request(1, 0).encode_to_vec());
    let charted: BTreeSet<String> = dashboard_exprs(&dash)
        .iter()
        .flat_map(|(_, e)| promql_names(e).0)
        .filter(|m| {
            m.starts_with("business_")
                && !PENDING_METRICS.contains(&m.as_str())
                && !OTHER_PIPELINE_METRICS.contains(&m.as_str())
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let business = loop {
        let t = http_get(loopback(prom), "/metrics").map(|r| r.1).unwrap_or_default();
        let names = scrape_names(&t);
        if charted.iter().all(|m| names.contains_key(m)) || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut scraped = scrape_names(&business);
    for (k, v) in scrape_names(&bp.metrics()) {
        scraped.entry(k).or_default().extend(v);
    }

    let base = |m: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(b) = m.strip_suffix(suffix)
                && (source.contains(b) || scraped.contains_key(b))
            {
                return b.to_string();
            }
        }
        m.to_string()
    };
    let mut used = BTreeSet::new();
    for (panel, expr) in dashboard_exprs(&dash) {
        let (metrics, labels) = promql_names(&expr);
        assert!(!metrics.is_empty(), "{panel}: no metric in {expr}");
        for m in &metrics {
            used.insert(m.clone());
            if PENDING_METRICS.contains(&m.as_str()) {
                continue;
            }
            let b = base(m);
            assert!(
                source.contains(&b) || scraped.contains_key(m),
                "{panel}: {m} is not a metric bizpilot exposes (expr: {expr})"
            );
            if m.starts_with("business_") && !OTHER_PIPELINE_METRICS.contains(&m.as_str()) {
                assert!(
                    scraped.contains_key(m),
                    "{panel}: {m} does not appear when the shipped gateway pipeline runs (expr: {expr})\n{business}"
                );
            }
        }
        // Labels it groups or filters by exist on a metric it reads (when the scrape has one).
        let seen: BTreeSet<&String> = metrics.iter().filter_map(|m| scraped.get(m)).flatten().collect();
        if metrics.iter().any(|m| scraped.contains_key(m)) {
            for l in &labels {
                assert!(
                    seen.contains(l) || ["instance", "job", "le"].contains(&l.as_str()),
                    "{panel}: label {l} is on none of {metrics:?} (expr: {expr})"
                );
            }
        }
    }
    for p in PENDING_METRICS {
        assert!(
            used.contains(p),
            "{p} is no longer charted: drop it from PENDING_METRICS"
        );
        assert!(
            !source.contains(p) && !scraped.contains_key(p),
            "{p} is emitted now: remove it from PENDING_METRICS and check the dashboard's query"
        );
    }
    // The business metrics and the pipeline's health are both on the dashboard.
    for needed in [
        "business_revenue_total",
        "business_revenue_at_risk_total",
        "business_operations_total",
        "business_affected_customers",
        "business_incident_open",
        "bizpilot_receiver_accepted_spans_total",
        "bizpilot_receiver_refused_spans_total",
        "bizpilot_exporter_sent_spans_total",
        "bizpilot_exporter_send_failed_spans_total",
        "bizpilot_exporter_queue_size",
        "bizpilot_exporter_queue_capacity",
    ] {
        assert!(used.contains(needed), "the dashboard does not chart {needed}");
    }
}

#[test]
fn promql_names_are_read_from_expressions() {
    let names = |e: &str| {
        let (m, l) = promql_names(e);
        (
            m.into_iter().collect::<Vec<_>>().join(" "),
            l.into_iter().collect::<Vec<_>>().join(" "),
        )
    };
    assert_eq!(
        names(
            r#"sum by (customer_tier) (rate(business_operations_total{operation="checkout", outcome=~"fail.*"}[$__rate_interval]))"#
        ),
        (
            "business_operations_total".into(),
            "customer_tier operation outcome".into()
        )
    );
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, operation) (rate(business_operation_duration_seconds_bucket[5m])))"#
        ),
        (
            "business_operation_duration_seconds_bucket".into(),
            "le operation".into()
        )
    );
    assert_eq!(
        names(
            r#"max by (exporter) (bizpilot_exporter_queue_size{instance=~"$instance"} / bizpilot_exporter_queue_capacity)"#
        ),
        (
            "bizpilot_exporter_queue_capacity bizpilot_exporter_queue_size".into(),
            "exporter instance".into()
        )
    );
    assert_eq!(
        names("count(max by (operation) (business_incident_open) > 0) or vector(0)"),
        ("business_incident_open".into(), "operation".into())
    );
    assert_eq!(
        names("3600 * sum without (instance) (rate(bizpilot_typo_total[1m]))"),
        ("bizpilot_typo_total".into(), "instance".into())
    );
    assert_eq!(
        names("label_values(bizpilot_build_info, instance)"),
        ("bizpilot_build_info".into(), "instance".into())
    );
    // A name bizpilot does not expose is not in the source.
    let source = metric_names_in_source();
    assert!(source.contains("bizpilot_exporter_sent_spans_total") && source.contains("business_revenue_total"));
    assert!(
        source.contains("bizpilot_receiver_refused_log_records_total"),
        "item_counter_name expansions"
    );
    assert!(!source.contains("bizpilot_typo_total"));
}

// ---------------------------------------------------------------------------------------------
// docs/deployment.md

/// Component types `bizpilot components` lists, as `kind type`.
fn registered_components() -> BTreeSet<String> {
    let out = Command::new(common::bin()).arg("components").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(format!("{} {}", w.next()?, w.next()?))
        })
        .collect()
}

#[test]
fn full_configs_in_the_deployment_guide_validate() {
    let doc = read("docs/deployment.md");
    let registered = registered_components();
    let mut blocks = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let block = block.split("```").next().unwrap();
        if !block.starts_with("# bizpilot-config") {
            continue;
        }
        blocks += 1;
        let config = parse_config(block, "docs/deployment.md");
        let mut missing = Vec::new();
        for (section, kind) in [
            ("receivers", "receiver"),
            ("processors", "processor"),
            ("exporters", "exporter"),
            ("connectors", "connector"),
            ("extensions", "extension"),
        ] {
            for id in get(&config, section).and_then(Value::as_mapping).into_iter().flatten() {
                let ty = id.0.as_str().unwrap().split('/').next().unwrap();
                if !registered.contains(&format!("{kind} {ty}")) {
                    missing.push(format!("{kind} {ty}"));
                }
            }
        }
        if missing.is_empty() {
            assert_valid_config("docs/deployment.md (bizpilot-config block)", block, &BTreeMap::new());
        } else {
            eprintln!(
                "docs/deployment.md: a bizpilot-config block uses {missing:?}, not in this binary yet: not validated"
            );
        }
    }
    assert!(blocks >= 1, "docs/deployment.md has no `# bizpilot-config` block");
}
