//! `bizpilot test` over every shipped pipeline (pipelines/<name>.yaml with pipelines/tests/<name>.test.yaml),
//! and the failures it must report: a broken enrichment rule, a wrong money figure, a malformed test file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `bizpilot test` from the workspace root (the lookup table path of business-join.yaml is relative to it).
fn bizpilot_test(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bizpilot"))
        .arg("test")
        .args(args)
        .current_dir(root())
        // The key the sidecar tests' expected hashes were computed with.
        .env("BIZPILOT_HASH_KEY", "bizpilot-test-key")
        .env_remove("BIZPILOT_CUSTOMERS_FILE")
        .output()
        .expect("run bizpilot test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// `N passed, M failed` from the last line.
fn summary(stdout: &str) -> (usize, usize) {
    let last = stdout.lines().last().unwrap_or_default();
    let nums: Vec<usize> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(
        last.ends_with(" failed") && nums.len() == 2,
        "no summary line in:\n{stdout}"
    );
    (nums[0], nums[1])
}

#[test]
fn every_shipped_pipeline_passes_its_tests() {
    let mut pipelines: Vec<PathBuf> = std::fs::read_dir(root().join("pipelines"))
        .expect("pipelines/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    pipelines.sort();
    assert!(pipelines.len() >= 7, "pipelines: {pipelines:?}");
    for p in pipelines {
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let tests = root().join("pipelines/tests").join(format!("{name}.test.yaml"));
        assert!(
            tests.exists(),
            "pipelines/{name}.yaml has no tests: add pipelines/tests/{name}.test.yaml"
        );
        let config = format!("pipelines/{name}.yaml");
        let (out, stdout) = bizpilot_test(&["--config", &config]);
        let (passed, failed) = summary(&stdout);
        assert!(
            out.status.success() && failed == 0 && passed > 0,
            "bizpilot test --config {config}: {passed} passed, {failed} failed\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn demo_with(replace: &str, with: &str) -> tempfile::TempDir {
    let shipped = std::fs::read_to_string(root().join("pipelines/opentelemetry-demo.yaml")).expect("demo pipeline");
    assert!(
        shipped.contains(replace),
        "the demo pipeline no longer has `{replace}`: update this test"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("broken.yaml"), shipped.replacen(replace, with, 1)).expect("write");
    dir
}

#[test]
fn a_broken_rule_fails_with_a_diff_naming_the_rule() {
    let dir = demo_with(
        "copy: {from: user.id, to: business.customer.id}",
        "copy: {from: user.uid, to: business.customer.id}",
    );
    let config = dir.path().join("broken.yaml");
    let (out, stdout) = bizpilot_test(&[
        "--config",
        config.to_str().unwrap_or_default(),
        "pipelines/tests/opentelemetry-demo.test.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (_, failed) = summary(&stdout);
    assert!(failed >= 1, "{stdout}");
    for want in [
        "test a successful PlaceOrder gets its business context and counts as revenue ... FAILED",
        "expected business.customer.id = \"c-1\" after enrich/opentelemetry-demo, got nothing (absent)",
        "rule: enrich/opentelemetry-demo rules[2]: {copy: {from: user.uid, to: business.customer.id}}",
        "user.id: \"c-1\"",
    ] {
        assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    }
}

#[test]
fn a_wrong_money_figure_fails_to_the_cent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped =
        std::fs::read_to_string(root().join("pipelines/tests/opentelemetry-demo.test.yaml")).expect("demo tests");
    let wrong = r#"          - name: business.revenue
            attributes: {operation: checkout, currency: EUR}
            value: "123.45""#;
    assert!(shipped.contains(wrong), "the demo tests changed: update this test");
    let tests = dir.path().join("wrong.test.yaml");
    std::fs::write(&tests, shipped.replacen(wrong, &wrong.replace("123.45", "123.44"), 1)).expect("write");
    let (out, stdout) = bizpilot_test(&[
        "--config",
        "pipelines/opentelemetry-demo.yaml",
        tests.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (passed, failed) = summary(&stdout);
    assert_eq!(failed, 1, "{stdout}");
    assert!(passed >= 1, "{stdout}");
    let want = "expected business.revenue{currency=EUR,customer.tier=unknown,operation=checkout} = 123.44 after business_impact, got 123.45";
    assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    assert!(
        stdout.contains("rule: business_impact operations[0]: {name: checkout, span_name: "),
        "{stdout}"
    );
}

#[test]
fn a_malformed_test_file_is_an_error_naming_the_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tests = dir.path().join("bad.test.yaml");
    std::fs::write(
        &tests,
        "tests:\n  - name: x\n    inputs: []\n    outputs:\n      - extract_from: batch\n        spanz: []\n",
    )
    .expect("write");
    let (out, stdout) = bizpilot_test(&["--config", "pipelines/sidecar.yaml", tests.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("bad.test.yaml: tests[0].outputs[0]: unknown field `spanz`, expected one of `extract_from`, `spans`, `logs`, `metrics` at line 6 column 9"),
        "{stdout}"
    );
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");
}

/// Each case of a pipeline with durable storage gets a file store of its own in a fresh temporary directory
/// (so checkpoint code runs under `bizpilot test`), and nothing is left behind.
#[test]
fn storage_runs_in_a_fresh_directory_per_case_and_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bizpilot"))
        .args(["test", "--config", "pipelines/business-join.yaml"])
        .current_dir(root())
        .env("TMPDIR", tmp.path())
        .env_remove("BIZPILOT_CUSTOMERS_FILE")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run bizpilot test");
    fn stores(dir: &Path, found: &mut std::collections::BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stores(&p, found);
            } else if p.extension().is_some_and(|x| x == "redb") {
                found.insert(p.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(p));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut case_dirs = std::collections::BTreeSet::new();
    while child.try_wait().expect("wait").is_none() {
        let mut now = std::collections::BTreeSet::new();
        stores(tmp.path(), &mut now);
        for e in std::fs::read_dir(tmp.path()).into_iter().flatten().flatten() {
            case_dirs.insert(e.file_name());
        }
        seen.extend(now);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (passed, failed) = summary(&stdout);
    assert!(out.status.success() && failed == 0 && passed > 1, "{stdout}");
    assert!(
        !seen.is_empty(),
        "no store file appeared under {}",
        tmp.path().display()
    );
    assert!(
        case_dirs.len() > 1,
        "the cases shared one storage directory: {case_dirs:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A receiver and an exporter may share an id (`kafka/fleet` reads and writes one topic): each is replaced by
/// its own injection or capture point.
#[test]
fn a_receiver_and_an_exporter_with_one_id_are_both_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("same-id.yaml");
    std::fs::write(
        &config,
        "receivers:\n  otlp/same:\n    protocols: {grpc: {endpoint: 127.0.0.1:4317}}\n\
         exporters:\n  otlp/same:\n    endpoint: 127.0.0.1:4318\n\
         service:\n  pipelines:\n    traces:\n      receivers: [otlp/same]\n      exporters: [otlp/same]\n",
    )
    .expect("write config");
    let tests = dir.path().join("same-id.test.yaml");
    std::fs::write(
        &tests,
        "tests:\n  - name: a span goes through\n    inputs:\n      - traces:\n          resourceSpans:\n\
         \x20           - scopeSpans:\n                - spans:\n                    - traceId: 1a2b3c4d5e6f708192a3b4c5d6e7f801\n\
         \x20                     spanId: \"1122334455667788\"\n                      name: through\n\
         \x20                     startTimeUnixNano: \"1767225600000000000\"\n\
         \x20                     endTimeUnixNano: \"1767225600200000000\"\n\
         \x20   outputs:\n      - extract_from: otlp/same\n        spans:\n          - name: through\n",
    )
    .expect("write tests");
    let (out, stdout) = bizpilot_test(&[
        "--config",
        config.to_str().unwrap_or_default(),
        tests.to_str().unwrap_or_default(),
    ]);
    assert!(
        out.status.success() && summary(&stdout) == (1, 0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
