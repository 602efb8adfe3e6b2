//! Keeps the load tools working, without timing anything: the generator against the sink over gRPC, over HTTP
//! with gzip, open loop and in truth-file mode, with the sink refusing some requests so that retries are exercised; every
//! span sent must arrive exactly once and both JSON summaries must parse.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_bizpilot-loadgen");

fn send(addr: &str, extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args([
            "--endpoint",
            &format!("http://{addr}"),
            "--batch-size",
            "256",
            "--ring-spans",
            "8192",
        ])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the generator");
    assert!(out.status.success(), "generator failed: {out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(line.lines().count(), 1, "one summary line: {line}");
    let v: Value = serde_json::from_str(&line).expect("summary is JSON");
    assert_eq!(v["mode"], "send");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["dropped_spans"], 0, "{v}");
    assert_eq!(v["sent_spans"], v["acknowledged_spans"], "{v}");
    assert_eq!(v["sent_log_records"], v["acknowledged_log_records"], "{v}");
    assert!(v["acknowledged_spans"].as_u64().unwrap() > 0, "{v}");
    v
}

#[test]
fn generator_and_sink_agree() {
    let mut sink = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0", "--refuse-every", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sink");
    let mut first = String::new();
    BufReader::new(sink.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();

    let grpc = send(&addr, &["--rate", "4000", "--duration", "1s", "--retry-initial", "5ms"]);
    assert!(
        grpc["refused"].as_u64().unwrap() > 0,
        "the sink refuses every 7th request: {grpc}"
    );
    assert_eq!(grpc["refused"], grpc["retries"]);
    // Open loop: every request leaves on schedule in its own task (the cap is never reached at this rate); the
    // workload shaped so that its event time follows the wall clock.
    let open = send(
        &addr,
        &[
            "--rate",
            "4000",
            "--duration",
            "1s",
            "--open-loop",
            "64",
            "--realtime",
            "--retry-initial",
            "5ms",
        ],
    );
    assert_eq!(open["open_loop"]["unsent_spans"], 0, "{open}");
    assert!(open["open_loop"]["peak_inflight"].as_u64().unwrap() >= 1, "{open}");
    assert!(
        grpc.get("open_loop").is_none(),
        "closed loop has no open-loop figures: {grpc}"
    );
    let http = send(
        &addr,
        &[
            "--protocol",
            "http",
            "--gzip",
            "--spans",
            "2048",
            "--retry-initial",
            "5ms",
        ],
    );
    assert!(http["acknowledged_spans"].as_u64().unwrap() >= 2048);
    let dir = std::env::temp_dir().join(format!("loadgen-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truth_path = dir.join("truth.json");
    let truth_run = send(
        &addr,
        &[
            "--truth-file",
            truth_path.to_str().unwrap(),
            "--shop-duration",
            "20s",
            "--orders-per-sec",
            "2",
            "--payment-outage",
            "5s-10s:0.9",
            "--retry-initial",
            "5ms",
        ],
    );
    let truth: Value = serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).expect("truth is JSON");
    assert!(truth.is_object());
    let _ = std::fs::remove_dir_all(&dir);

    let status = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut out = String::new();
    sink.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(sink.wait().unwrap().success());
    let s: Value = serde_json::from_str(out.trim()).expect("sink summary is JSON");
    assert_eq!(s["mode"], "sink");
    let sum = |k: &str| -> u64 {
        [&grpc, &open, &http, &truth_run]
            .iter()
            .map(|v| v[k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(s["spans"].as_u64().unwrap(), sum("acknowledged_spans"), "{s}");
    assert_eq!(
        s["log_records"].as_u64().unwrap(),
        sum("acknowledged_log_records"),
        "{s}"
    );
    assert_eq!(s["invalid_requests"], 0);
    assert!(s["added_latency_ms"]["count"].as_u64().unwrap() > 0, "{s}");
}
