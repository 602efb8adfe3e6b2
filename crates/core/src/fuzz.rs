//! Entry points of the fuzz targets under `fuzz/` (cargo-fuzz), shared with the tests that
//! replay the seed corpus (`fuzz/corpus/<target>/`) on every `cargo test`. Each takes arbitrary
//! bytes and must return without panicking; the checks inside (`assert!`) are the properties
//! the fuzzer looks for counterexamples to. Not for data paths.

use bytes::Bytes;
use prost::Message;

use crate::Registry;
use crate::config::{self, Source};
use crate::pdata::{Otlp, OtlpMessage, Payload, Signal};
use crate::view::{self, AnyValueView, ValueRef};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// The fuzz targets and the corpus directories named after them.
pub const TARGETS: &[&str] = &[
    "otlp_protobuf",
    "otlp_json",
    "view_walk",
    "view_equivalence",
    "config",
    "business_json",
    "business_protobuf",
];

fn protobuf_one<M: OtlpMessage>(data: &[u8]) {
    let Ok(mut otlp) = Otlp::<M>::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    let items = otlp.items();
    // What the walk accepts, prost decodes (components decode later and must not fail).
    let msg = match otlp.message() {
        Ok(m) => m.clone(),
        Err(e) => panic!("the walk accepted what prost refuses: {e}"),
    };
    assert_eq!(msg.item_count(), items, "the walk and prost count different items");
    // Re-encoded, it is still valid and counts the same.
    let again = Otlp::<M>::from_bytes(Bytes::from(msg.encode_to_vec())).expect("re-encoded message is valid");
    assert_eq!(again.items(), items);
}

/// The OTLP protobuf decoder: the validating walk, then prost, for every signal.
pub fn otlp_protobuf(data: &[u8]) {
    protobuf_one::<ExportTraceServiceRequest>(data);
    protobuf_one::<ExportMetricsServiceRequest>(data);
    protobuf_one::<ExportLogsServiceRequest>(data);
}

/// The OTLP/JSON decoder: what it accepts, it writes as JSON it accepts again, unchanged.
pub fn otlp_json(data: &[u8]) {
    for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
        let Ok(mut p) = Payload::from_json(signal, data) else {
            continue;
        };
        let items = p.items();
        let json = p.to_json().expect("accepted JSON re-encodes");
        let mut back = Payload::from_json(signal, &json).expect("our own JSON is accepted");
        assert_eq!(back.items(), items);
        assert_eq!(
            back.to_json().expect("re-encodes"),
            json,
            "JSON round trip changed the data"
        );
    }
}

fn touch_value(raw: &[u8]) {
    let v = AnyValueView::parse(raw);
    let _ = (v.as_str(), v.as_i64());
    if let Some(r) = ValueRef::from_encoded(raw) {
        let _ = (r.as_text(), r.as_i64(), r.to_value());
    }
    let _ = view::decode_any_value(raw);
}

/// The views over unvalidated bytes: any input is read without panicking.
pub fn view_walk(data: &[u8]) {
    view::for_each_span(data, |resource, span| {
        let _ = resource.service_name();
        for kv in resource.attributes().iter() {
            touch_value(kv.value_bytes);
        }
        let _ = (span.is_error(), span.name.len(), span.trace_id.len());
        let attrs = span.attributes();
        for kv in attrs.iter() {
            let _ = attrs.get(kv.key);
            touch_value(kv.value_bytes);
        }
    });
}

/// A span read through views equals the decoded span, for every request the walk accepts.
pub fn view_equivalence(data: &[u8]) {
    // The production path: the receiver's `from_bytes` (which decodes non-canonical bytes),
    // then the views; compared with a plain decode of the original bytes.
    let Ok(mut traces) = Otlp::<ExportTraceServiceRequest>::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    let decoded = ExportTraceServiceRequest::decode(data).expect("the walk accepted it");
    assert_eq!(traces.items(), decoded.item_count(), "span count");
    let data = traces.encoded();
    let data = &data[..];
    let mut spans = decoded.resource_spans.iter().flat_map(|rs| {
        rs.scope_spans
            .iter()
            .flat_map(move |ss| ss.spans.iter().map(move |s| (rs.resource.as_ref(), s)))
    });
    view::for_each_span(data, |resource, v| {
        let (res, s) = spans.next().expect("the views see no more spans than prost");
        assert_eq!(v.trace_id, s.trace_id.as_slice());
        assert_eq!(v.span_id, s.span_id.as_slice());
        assert_eq!(v.parent_span_id, s.parent_span_id.as_slice());
        assert_eq!(v.name, s.name);
        assert_eq!(v.kind, s.kind);
        assert_eq!(v.start_time_unix_nano, s.start_time_unix_nano);
        assert_eq!(v.end_time_unix_nano, s.end_time_unix_nano);
        let status = s.status.clone().unwrap_or_default();
        assert_eq!(v.status_code, status.code);
        assert_eq!(v.status_message, status.message);
        let ours: Vec<_> = v.attributes().iter().collect();
        assert_eq!(ours.len(), s.attributes.len(), "attribute count");
        for (kv, d) in ours.iter().zip(&s.attributes) {
            assert_eq!(kv.key, d.key);
            let from_view = ValueRef::from_encoded(kv.value_bytes);
            let decoded_value = d.value.as_ref().and_then(|a| a.value.as_ref());
            // Compared through their Debug form: a NaN double (anywhere in the value) equals itself there, as
            // it must for two readings of the same bytes, while `==` would call them different.
            assert_eq!(
                format!("{from_view:?}"),
                format!("{:?}", decoded_value.map(ValueRef::from_value)),
                "value of {}",
                d.key
            );
        }
        let res_attrs = res.map(|r| r.attributes.len()).unwrap_or(0);
        assert_eq!(
            resource.attributes().iter().count(),
            res_attrs,
            "resource attribute count"
        );
    });
    assert!(spans.next().is_none(), "prost sees more spans than the views");
}

/// The config loader (YAML, `${env:…}` substitution, merge) and validation against `registry`,
/// with a fixed environment: every mistake is a diagnostic, never a panic.
pub fn config(data: &[u8], registry: &Registry) {
    let text = String::from_utf8_lossy(data).into_owned();
    let env: std::collections::HashMap<String, String> =
        [("BIZPILOT_FUZZ".to_string(), "0.0.0.0:4317".to_string())].into();
    let sources = [Source::Text {
        name: "fuzz.yaml".into(),
        text,
    }];
    let (raw, diags) = config::load(&sources, &env);
    for d in &diags {
        let _ = d.to_string();
    }
    if diags.iter().any(|d| d.is_error()) {
        return;
    }
    let (_cfg, diags) = config::validate(&raw, registry);
    for d in &diags {
        let _ = d.to_string();
    }
}

/// The seed corpus of `target` (`fuzz/corpus/<target>/`, in file-name order), for the tests that
/// replay it. Panics when the directory is missing or holds fewer than 10 files.
pub fn seed_corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: a seed corpus of at least 10 files",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpora_replay_through_the_fuzz_entry_points() {
        // (Inside this crate no component crate can register: the fuzz target uses them all.)
        let registry = Registry::new();
        for (target, f) in [
            ("otlp_protobuf", otlp_protobuf as fn(&[u8])),
            ("otlp_json", otlp_json),
            ("view_walk", view_walk),
            ("view_equivalence", view_equivalence),
        ] {
            for (path, data) in seed_corpus(target) {
                let r = std::panic::catch_unwind(|| f(&data));
                assert!(r.is_ok(), "{target}: {} fails", path.display());
            }
        }
        for (path, data) in seed_corpus("config") {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config(&data, &registry)));
            assert!(r.is_ok(), "config: {} fails", path.display());
        }
    }

    #[test]
    fn the_corpora_hold_inputs_that_are_accepted() {
        // A corpus of only garbage would test little: some seeds must pass the decoders.
        let ok = seed_corpus("otlp_protobuf")
            .iter()
            .filter(|(_, d)| {
                Payload::from_bytes(Signal::Traces, Bytes::copy_from_slice(d)).is_ok_and(|p| p.items() > 0)
            })
            .count();
        assert!(ok >= 3, "{ok} accepted trace seeds");
        let ok = seed_corpus("otlp_json")
            .iter()
            .filter(|(_, d)| Payload::from_json(Signal::Traces, d).is_ok_and(|p| p.items() > 0))
            .count();
        assert!(ok >= 3, "{ok} accepted JSON seeds");
    }
}
