//! Config parsing and validation, through the registry as the binary uses it.

use bizpilot_core::{ComponentKind, FieldError, Registry};

fn check(type_name: &str, yaml: &str) -> Result<(), Vec<FieldError>> {
    let mut r = Registry::new();
    bizpilot_exporters::register(&mut r);
    let f = r.get(ComponentKind::Exporter, type_name).expect("registered");
    let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    f.check(&raw)
}

fn paths(r: Result<(), Vec<FieldError>>) -> Vec<String> {
    r.expect_err("expected errors").into_iter().map(|e| e.path).collect()
}

#[test]
fn all_exporters_are_registered() {
    let mut r = Registry::new();
    bizpilot_exporters::register(&mut r);
    let types = r.types(ComponentKind::Exporter);
    for t in ["debug", "otlp", "otlphttp"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
}

#[test]
fn valid_configs() {
    check("otlp", "endpoint: collector:4317").unwrap();
    check(
        "otlp",
        "endpoint: https://collector:4317\ntls: {ca_file: /ca.pem}\nheaders: {x-api-key: k}\ncompression: zstd\n\
         compression_level: 19\ntimeout: 10s\nretry_on_failure: {enabled: true, initial_interval: 1s, \
         randomization_factor: 0.2, multiplier: 2, max_interval: 10s, max_elapsed_time: 0}\n\
         sending_queue: {enabled: true, num_consumers: 2, queue_size: 50}",
    )
    .unwrap();
    check(
        "otlphttp",
        "endpoint: http://localhost:4318\nencoding: json\ncompression: none",
    )
    .unwrap();
    check("otlphttp", "traces_endpoint: https://x.example/v1/traces").unwrap();
    check("debug", "verbosity: detailed").unwrap();
    check("debug", "~").unwrap();
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let e = check("otlp", "endpoint: a:1\nretry_on_failure: {enabld: true}").unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "retry_on_failure.enabld");
    assert!(e[0].message.contains("enabld"), "{}", e[0].message);
    let e = check("otlp", "endpoint: a:1\ntls: {ca: x}").unwrap_err();
    assert_eq!(e[0].path, "tls.ca");
    let e = check("otlphttp", "endpoint: http://a:1\nsending_queue: {size: 3}").unwrap_err();
    assert_eq!(e[0].path, "sending_queue.size");
    let e = check("debug", "verbosity: basic\nsampling_initial: 2").unwrap_err();
    assert_eq!(e[0].path, "sampling_initial");
}

#[test]
fn bad_compression_and_level() {
    let e = check("otlp", "endpoint: a:1\ncompression: snappy").unwrap_err();
    assert_eq!(e[0].path, "compression");
    assert!(e[0].message.contains("snappy"), "{}", e[0].message);
    assert_eq!(
        paths(check("otlp", "endpoint: a:1\ncompression_level: 12")),
        ["compression_level"]
    );
    assert_eq!(
        paths(check(
            "otlphttp",
            "endpoint: http://a:1\ncompression: zstd\ncompression_level: 40"
        )),
        ["compression_level"]
    );
    check("otlp", "endpoint: a:1\ncompression: ''").unwrap();
    let e = check("otlphttp", "endpoint: http://a:1\nencoding: xml").unwrap_err();
    assert_eq!(e[0].path, "encoding");
    let e = check("debug", "verbosity: loud").unwrap_err();
    assert_eq!(e[0].path, "verbosity");
}

#[test]
fn bad_endpoints() {
    assert_eq!(paths(check("otlp", "{}")), ["endpoint"]);
    assert_eq!(paths(check("otlp", "endpoint: localhost")), ["endpoint"]);
    assert_eq!(paths(check("otlp", "endpoint: ftp://a:1")), ["endpoint"]);
    assert_eq!(paths(check("otlp", "endpoint: http://a:1/v1/traces")), ["endpoint"]);
    assert_eq!(paths(check("otlphttp", "{}")), ["endpoint"]);
    assert_eq!(paths(check("otlphttp", "endpoint: localhost:4318")), ["endpoint"]);
    assert_eq!(
        paths(check("otlphttp", "endpoint: http://a:1\nlogs_endpoint: 'grpc://b:2'")),
        ["logs_endpoint"]
    );
}

#[test]
fn every_problem_is_reported() {
    let e = paths(check(
        "otlp",
        "endpoint: nope\nheaders: {'bad header': x}\ntls: {cert_file: c.pem}\n\
         retry_on_failure: {initial_interval: 0, randomization_factor: 2, multiplier: 0.5}\n\
         sending_queue: {num_consumers: 0, queue_size: 0}",
    ));
    assert_eq!(
        e,
        [
            "endpoint",
            "tls.key_file",
            "headers.bad header",
            "retry_on_failure.initial_interval",
            "retry_on_failure.randomization_factor",
            "retry_on_failure.multiplier",
            "sending_queue.num_consumers",
            "sending_queue.queue_size",
        ]
    );
    // Disabled sections are not checked.
    check(
        "otlp",
        "endpoint: a:1\nretry_on_failure: {enabled: false, initial_interval: 0}\nsending_queue: {enabled: false, queue_size: 0}",
    )
    .unwrap();
}

#[test]
fn durations_need_units() {
    let e = check("otlp", "endpoint: a:1\ntimeout: 5").unwrap_err();
    assert_eq!(e[0].path, "timeout");
}

#[test]
fn sending_queue_storage_names_a_storage_extension_and_needs_the_queue() {
    check(
        "otlp",
        "endpoint: a:1\nsending_queue: {storage: file_storage, queue_size: 10}",
    )
    .unwrap();
    check(
        "otlphttp",
        "endpoint: http://a:1\nsending_queue: {storage: file_storage/queue}",
    )
    .unwrap();
    assert_eq!(
        paths(check(
            "otlp",
            "endpoint: a:1\nsending_queue: {enabled: false, storage: file_storage}"
        )),
        vec!["sending_queue.storage"]
    );
    assert_eq!(
        paths(check("otlphttp", "endpoint: http://a:1\nsending_queue: {storage: ''}")),
        vec!["sending_queue.storage"]
    );
}
