//! The command line: `validate`, `components`, `--version`, and every shipped pipeline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn bizpilot(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin()).args(args).output().expect("run bizpilot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn validate_reports_every_mistake_with_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"receivers:
  otlp:
    protocols:
      grpc:
processors:
  batch:
    timeout: 5x
exporters:
  debug:
    verbosty: detailed
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp/missing]
"#,
    )
    .unwrap();
    let (code, stdout, _) = bizpilot(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    // 1. a bad duration, with its path and line
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("processors.batch.timeout: invalid duration \"5x\"") && l.contains(":7)")),
        "{stdout}"
    );
    // 2. an unknown key (a typo), with its path and line
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("exporters.debug") && l.contains("verbosty") && l.contains(":10)")),
        "{stdout}"
    );
    // 3. a reference to an undefined component
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("service.pipelines.traces.exporters[0]") && l.contains("otlp/missing")),
        "{stdout}"
    );
    assert!(stdout.contains("3 error(s)"), "{stdout}");
}

#[test]
fn validate_warns_about_unused_definitions_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        "receivers:\n  otlp:\n    protocols:\n      http:\nexporters:\n  debug:\n  debug/unused:\nservice:\n  pipelines:\n    logs:\n      receivers: [otlp]\n      exporters: [debug]\n",
    )
    .unwrap();
    let (code, stdout, _) = bizpilot(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("warning: exporters.debug/unused: defined but not used"),
        "{stdout}"
    );
}

#[test]
fn several_config_files_merge_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &a,
        "receivers:\n  otlp:\n    protocols:\n      http:\nprocessors:\n  batch:\n    timeout: nonsense\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n      exporters: [debug]\n",
    )
    .unwrap();
    std::fs::write(&b, "processors:\n  batch:\n    timeout: 1s\n").unwrap();
    let (code, stdout, _) = bizpilot(&["validate", "--config", a.to_str().unwrap()]);
    assert_eq!(code, 1, "first file alone is invalid: {stdout}");
    let (code, stdout, _) = bizpilot(&[
        "validate",
        "--config",
        a.to_str().unwrap(),
        "--config",
        b.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "the second file fixes it: {stdout}");
}

#[test]
fn every_shipped_pipeline_validates() {
    let dir = workspace_root().join("pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("pipelines/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (code, stdout, stderr) = bizpilot(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}:\n{stdout}{stderr}", path.display());
        assert!(!stdout.contains("error:"), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 1);
}

/// The load harness's business pipelines measure the shipped path: they validate, and their demo preset (enrich
/// rules, business_impact) is the shipped default pipeline's, so a preset change cannot leave the figures measuring
/// an old one.
#[test]
fn the_bench_pipelines_validate_and_carry_the_shipped_preset() {
    let root = workspace_root();
    let read = |p: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let shipped = read("pipelines/opentelemetry-demo.yaml");
    for bench in ["benches/pipelines/business.yaml", "benches/pipelines/ingest.yaml"] {
        let b = read(bench);
        assert_eq!(
            b["processors"]["enrich/opentelemetry-demo"], shipped["processors"]["enrich/opentelemetry-demo"],
            "{bench}: enrich preset"
        );
        // Where its state is kept is the deployment's business: the bench measures it on and off (scenarios
        // `business-durable` and `business` of benches/harness.py).
        let mut preset = shipped["connectors"]["business_impact"].clone();
        if let Some(m) = preset.as_mapping_mut() {
            m.remove("storage");
            m.remove("checkpoint_interval");
        }
        assert_eq!(b["connectors"]["business_impact"], preset, "{bench}: business_impact");
    }
    for bench in ["forward", "decode", "business", "ingest"] {
        let path = root.join(format!("benches/pipelines/{bench}.yaml"));
        let env = [
            ("BENCH_OTLP_GRPC", "127.0.0.1:1"),
            ("BENCH_OTLP_HTTP", "127.0.0.1:2"),
            ("BENCH_SINK", "127.0.0.1:3"),
            ("BENCH_PROM", "127.0.0.1:4"),
            ("BENCH_ADMIN", "127.0.0.1:5"),
        ];
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizpilot"))
            .args(["validate", "--config", path.to_str().unwrap()])
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}:\n{text}", path.display());
        assert!(!text.contains("error:"), "{text}");
    }
}

#[test]
fn embedded_default_pipeline_validates_and_matches_the_shipped_file() {
    let (code, stdout, _) = bizpilot(&["default-config"]);
    assert_eq!(code, 0);
    let shipped = std::fs::read_to_string(workspace_root().join("pipelines/opentelemetry-demo.yaml")).unwrap();
    assert_eq!(stdout, shipped);
    let (code, stdout, _) = bizpilot(&["validate"]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn components_lists_types_with_stability() {
    let (code, stdout, _) = bizpilot(&["components"]);
    assert_eq!(code, 0);
    for (kind, ty) in [
        ("receiver", "otlp"),
        ("processor", "batch"),
        ("processor", "memory_limiter"),
        ("exporter", "otlp"),
        ("exporter", "otlphttp"),
        ("exporter", "debug"),
        ("connector", "forward"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == [kind, ty]),
            "{kind} {ty} missing:\n{stdout}"
        );
    }
    let (code, stdout, _) = bizpilot(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("bizpilot "), "{stdout}");
}

/// The component reference (`docs/components.md`) is generated from the components' module
/// documentation, so it cannot drift from the code: this test fails when it is stale.
/// Regenerate with `BIZPILOT_BLESS=1 cargo test -p bizpilot --test config_e2e component_reference`.
#[test]
fn component_reference_is_generated_from_the_module_docs() {
    let root = workspace_root();
    let sources: &[(&str, &str)] = &[
        ("receiver `otlp`", "crates/receivers/src/otlp/mod.rs"),
        ("receiver `kafka`", "crates/kafka/src/receiver.rs"),
        (
            "receiver `kafka`: the OpenTelemetry Demo's `OrderResult`",
            "crates/kafka/src/otel_demo.rs",
        ),
        (
            "processors and connectors: the stage driver",
            "crates/core/src/stage.rs",
        ),
        ("processor `batch`", "crates/processors/src/batch.rs"),
        ("processor `memory_limiter`", "crates/processors/src/memory_limiter.rs"),
        ("processor `enrich`", "crates/processors/src/enrich/mod.rs"),
        ("processor `redaction`", "crates/processors/src/redaction.rs"),
        ("exporter `otlp` (gRPC)", "crates/exporters/src/otlp/grpc.rs"),
        ("exporter `otlphttp`", "crates/exporters/src/otlp/http.rs"),
        (
            "exporters: sending queue, retry and timeout",
            "crates/exporters/src/helper/mod.rs",
        ),
        ("exporter `debug`", "crates/exporters/src/debug.rs"),
        ("exporter `prometheus`", "crates/exporters/src/prometheus/mod.rs"),
        ("exporter `business_events`", "crates/exporters/src/business_events.rs"),
        ("exporter `kafka`", "crates/kafka/src/exporter.rs"),
        ("connector `forward`", "crates/connectors/src/forward.rs"),
        ("connector `business_fleet`", "crates/connectors/src/fleet/mod.rs"),
        ("connector `business_impact`", "crates/connectors/src/impact/mod.rs"),
        (
            "connector `business_impact`: trace-aware operations",
            "crates/connectors/src/impact/trace.rs",
        ),
        ("connector `order_kpi`", "crates/connectors/src/kpi/mod.rs"),
        ("connector `capacity_planner`", "crates/connectors/src/plan/mod.rs"),
        ("extension `business_state`", "crates/extensions/src/business_state.rs"),
        ("extension `lookup`", "crates/extensions/src/lookup.rs"),
        ("extension `health_check`", "crates/extensions/src/health_check.rs"),
        ("extension `file_storage`", "crates/extensions/src/file_storage.rs"),
    ];
    let mut doc = String::from(
        "# Component reference\n\n<!-- Generated from the module documentation of each component by \
         tests/config_e2e.rs; do not edit by hand. -->\n\nEvery component's configuration, with defaults and an \
         example. `bizpilot components` lists the types with their stability and signals.\n",
    );
    for (title, path) in sources {
        let text = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let body: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .filter(|l| l.starts_with("//!"))
            .map(|l| l.strip_prefix("//! ").unwrap_or(l.strip_prefix("//!").unwrap_or(l)))
            .collect();
        assert!(!body.is_empty(), "{path} has no module documentation");
        doc.push_str(&format!("\n## {title}\n\n_Source: `{path}`_\n\n{}\n", body.join("\n")));
    }
    let target = root.join("docs/components.md");
    if std::env::var_os("BIZPILOT_BLESS").is_some() {
        std::fs::write(&target, &doc).unwrap();
    }
    let current = std::fs::read_to_string(&target).unwrap_or_default();
    assert!(
        current == doc,
        "docs/components.md is stale; regenerate it with BIZPILOT_BLESS=1 cargo test -p bizpilot --test config_e2e component_reference"
    );
}
