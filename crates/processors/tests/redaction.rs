//! Redaction over a generated shop workload: spans (enriched first, as in a pipeline) and
//! business-event log records carrying customer ids and e-mail addresses go through the
//! `redaction` processor; the encoded output must hold no raw id and no address, and the
//! hashes must still join spans with events.

use std::collections::{BTreeSet, HashMap};

use bizpilot_business::KeyedHasher;
use bizpilot_business::attrs::{self, AnyValue, KeyValueList, Value};
use bizpilot_core::config::Duration as CfgDuration;
use bizpilot_core::{
    Batch, ComponentId, CreateContext, Extensions, Logs, Output, Payload, PipelineId, ProcessorContext,
    ProcessorFactory, Signal, Target, Traces,
};
use bizpilot_processors::enrich::Engine;
use bizpilot_processors::redaction::{RedactionConfig, RedactionProcessorFactory, Redactor};
use bizpilot_shopgen::{Shop, ShopConfig, pack_events};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
hash:
  key_env: BIZPILOT_TEST_REDACTION_KEY_NEVER_SET
  attributes: [user.id, app.user.id, business.customer.id, customer.id]
delete: [session.id]
patterns: [email, credit_card]
"#;

fn config() -> RedactionConfig {
    let raw: serde_yaml::Value = serde_yaml::from_str(CONFIG).unwrap();
    bizpilot_core::parse_config(&raw).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Spans and event logs of a small workload, with e-mail addresses added where a customer shows.
fn workload() -> (
    Vec<ExportTraceServiceRequest>,
    Vec<ExportLogsServiceRequest>,
    Vec<String>,
) {
    let w = Shop::generate(&ShopConfig {
        duration: CfgDuration::from_secs(60),
        customers: 500,
        ..Default::default()
    })
    .unwrap();
    let emails: HashMap<String, String> = w
        .catalog
        .customers
        .iter()
        .map(|c| (c.id.clone(), c.email.clone()))
        .collect();
    let mut traces = w.trace_requests(500);
    for t in &mut traces {
        for s in t
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            if let Some(e) = attrs::get_str(&s.attributes, "user.id")
                .and_then(|c| emails.get(c))
                .cloned()
            {
                attrs::set_str(&mut s.attributes, "user.email", e.clone());
                attrs::set_str(&mut s.attributes, "note", format!("card 4111-1111-1111-1111 of <{e}>"));
            }
        }
    }
    let mut logs = pack_events(w.events(), 200);
    for (i, rec) in logs
        .iter_mut()
        .flat_map(|l| &mut l.resource_logs)
        .flat_map(|r| &mut r.scope_logs)
        .flat_map(|s| &mut s.log_records)
        .enumerate()
    {
        let c = attrs::get_str(&rec.attributes, "customer.id").unwrap().to_string();
        let e = emails[&c].clone();
        rec.body = Some(AnyValue {
            value: Some(if i % 2 == 0 {
                Value::StringValue(format!("receipt sent to {e}"))
            } else {
                Value::KvlistValue(KeyValueList {
                    values: vec![attrs::kv_str("customer.id", c), attrs::kv_str("to", e)],
                })
            }),
        });
    }
    let customers = w.catalog.customers.iter().map(|c| c.id.clone()).collect();
    (traces, logs, customers)
}

#[test]
fn no_raw_customer_id_or_email_leaves_and_hashes_still_join() {
    let (mut traces, mut logs, customers) = workload();
    // As in a pipeline: the demo preset copies user.id to business.customer.id first.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../pipelines/opentelemetry-demo.yaml"
    ))
    .unwrap();
    let root: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let preset = serde_yaml::to_string(&root["processors"]["enrich/opentelemetry-demo"]).unwrap();
    let enrich = Engine::from_yaml(&preset, &Extensions::default()).unwrap();
    let key = b"a long random secret";
    let r = Redactor::with_key(&config(), key).unwrap();
    let h = KeyedHasher::new(key).unwrap();

    let mut out = Vec::new();
    let mut span_hash_by_order: HashMap<String, String> = HashMap::new();
    for (i, t) in traces.iter_mut().enumerate() {
        // Both enrich paths: on the encoding (views), and decoded.
        if i % 2 == 0 {
            let mut enc = Traces::from_bytes(t.encode_to_vec().into()).unwrap();
            enrich.apply_encoded(&mut enc);
            *t = enc.into_message().unwrap();
        } else {
            enrich.apply_traces(t);
        }
        assert!(contains(&t.encode_to_vec(), b"cust-"), "the input does carry ids");
        r.redact_traces(t);
        for s in t
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            if let (Some(o), Some(c)) = (
                attrs::get_str(&s.attributes, "demo.order.id"),
                attrs::get_str(&s.attributes, "business.customer.id"),
            ) {
                assert_eq!(attrs::get_str(&s.attributes, "user.id"), Some(c), "same id, same hash");
                span_hash_by_order.insert(o.to_string(), c.to_string());
            }
        }
        out.extend(t.encode_to_vec());
    }
    let mut joined = 0;
    for l in &mut logs {
        r.redact_logs(l);
        for rec in l
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            let o = attrs::get_str(&rec.attributes, "order.id").unwrap();
            let c = attrs::get_str(&rec.attributes, "customer.id").unwrap();
            assert_eq!(c.len(), 64);
            if let Some(span_c) = span_hash_by_order.get(o) {
                assert_eq!(span_c, c, "a span's hashed customer joins its event's");
                joined += 1;
            }
        }
        out.extend(l.encode_to_vec());
    }
    assert!(joined > 100, "{joined}");
    assert!(out.len() > 100_000);
    for needle in [&b"cust-"[..], b"@example.com", b"4111-1111", b"session.id"] {
        assert!(!contains(&out, needle), "{} leaked", String::from_utf8_lossy(needle));
    }
    // Spot-check: the hash of a known customer is there instead.
    let first = &customers[0];
    let any_known = customers
        .iter()
        .any(|c| contains(&out, h.hash_hex(c.as_bytes()).as_bytes()));
    assert!(any_known, "hashes of {first}… present");
    let t = r.totals();
    assert!(t.hashed > 0 && t.masked > 0 && t.deleted > 0, "{t:?}");
}

#[tokio::test]
async fn the_processor_refuses_to_start_without_a_key_and_redacts_every_signal() {
    let id: ComponentId = "redaction".parse().unwrap();
    let pipeline: PipelineId = "traces".parse().unwrap();
    let exts = Extensions::default();
    let ctx = CreateContext {
        id: &id,
        pipeline: Some(&pipeline),
        signals: BTreeSet::from([Signal::Traces]),
        output_signals: BTreeSet::new(),
        extensions: &exts,
    };
    let Err(e) = RedactionProcessorFactory.create(config(), &ctx) else {
        panic!("must refuse to start without BIZPILOT_TEST_REDACTION_KEY_NEVER_SET")
    };
    assert!(e.to_string().contains("hash.key_env"), "{e}");

    // Without hashing no key is needed; through the running processor.
    let raw: serde_yaml::Value = serde_yaml::from_str("{delete: [user.id], patterns: [email]}").unwrap();
    let cfg: RedactionConfig = bizpilot_core::parse_config(&raw).unwrap();
    let p = RedactionProcessorFactory.create(cfg, &ctx).unwrap();
    let (tx, in_rx) = mpsc::channel(4);
    let (out_tx, mut out_rx) = mpsc::channel(4);
    let mut running = p
        .start(ProcessorContext {
            id: id.clone(),
            pipeline,
            input: in_rx,
            output: Output::new(
                vec![Target {
                    name: "out".into(),
                    sender: out_tx,
                }],
                Vec::new(),
            ),
            abort: CancellationToken::new(),
        })
        .unwrap();
    let (traces, logs, _) = workload();
    let n = traces.len() + logs.len();
    let feeder = tokio::spawn(async move {
        for t in traces {
            tx.send(Batch::new(Payload::Traces(Traces::from_message(t))))
                .await
                .unwrap();
        }
        for l in logs {
            tx.send(Batch::new(Payload::Logs(Logs::from_message(l)))).await.unwrap();
        }
    });
    let mut got = 0;
    while let Some(mut b) = out_rx.recv().await {
        let bytes = b.payload.encoded();
        assert!(!contains(&bytes, b"@example.com"));
        got += 1;
        if got == n {
            break;
        }
    }
    feeder.await.unwrap();
    running.join().await.unwrap();
}
