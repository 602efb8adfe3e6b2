//! Pipeline stages on the shop payload (512 spans per request): enrichment with the OpenTelemetry Demo preset,
//! joining encoded batches, the channel hand-off between components, and business-impact aggregation.
//!
//! `cargo bench -p bizpilot-benches --bench pipeline`. Throughput is in spans: ns/span ÷ 1000 = CPU-seconds per
//! million spans.

use bizpilot_benches::{SPANS_PER_REQUEST, demo_enrich_yaml, impact_yaml, shop_requests};
use bizpilot_connectors::impact::{BusinessImpactConfig, Compiled, Engine as ImpactEngine};
use bizpilot_core::component::parse_config;
use bizpilot_core::{Batch, Extensions, Payload, Traces};
use bizpilot_processors::enrich::Engine as EnrichEngine;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::hint::black_box;
use std::time::{Duration, Instant};

const REQUESTS: usize = 64;
const MERGED: usize = 16;

fn decode(b: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(b).expect("valid")
}

fn enrich(c: &mut Criterion) {
    let reqs = shop_requests(16);
    let n = reqs.len();
    let decoded: Vec<_> = reqs.iter().map(|b| decode(b)).collect();
    let engine = EnrichEngine::from_yaml(&demo_enrich_yaml(), &Extensions::default()).expect("demo preset");
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    let mut i = 0;
    g.bench_function("passthrough (validating walk only)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(Traces::from_bytes(reqs[i].clone()).expect("valid").items())
        })
    });
    g.bench_function("demo preset: apply to decoded spans", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % n;
                decoded[i].clone()
            },
            |mut r| {
                black_box(engine.apply_traces(&mut r));
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("demo preset: bytes in, decode + apply + encode, bytes out", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            let mut t = Traces::from_bytes(reqs[i].clone()).expect("valid");
            engine.apply_traces(t.message_mut().expect("decode"));
            black_box(t.encoded())
        })
    });
    g.bench_function("demo preset: bytes→bytes via views (with the validating walk)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            let mut t = Traces::from_bytes(reqs[i].clone()).expect("valid");
            engine.apply_encoded(&mut t);
            black_box(t.encoded())
        })
    });
    let validated: Vec<Traces> = reqs
        .iter()
        .map(|b| Traces::from_bytes(b.clone()).expect("valid"))
        .collect();
    g.bench_function("demo preset: bytes→bytes via views", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % n;
                validated[i].clone()
            },
            |mut t| {
                engine.apply_encoded(&mut t);
                // Dropped here, as an exporter drops what it sent (criterion would keep a batch of outputs).
                black_box(t.encoded().len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let reqs = shop_requests(MERGED);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements((MERGED * SPANS_PER_REQUEST) as u64));
    g.bench_function("merge 16 encoded requests", |b| {
        b.iter_batched(
            || {
                reqs.iter()
                    .map(|r| Batch::new(Payload::Traces(Traces::from_bytes(r.clone()).expect("valid"))))
                    .collect::<Vec<_>>()
            },
            |batches| {
                let mut it = batches.into_iter();
                let mut acc = it.next().expect("one");
                for b in it {
                    acc.merge(b).expect("merge");
                }
                black_box(acc.payload.encoded())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn channel(c: &mut Criterion) {
    let reqs = shop_requests(1);
    let batch = Batch::new(Payload::Traces(Traces::from_bytes(reqs[0].clone()).expect("valid")));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    g.bench_function("tokio mpsc(128) hand-off of a 512-span Batch", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(128);
                let consumer = tokio::spawn(async move {
                    let mut n = 0usize;
                    while let Some(b) = rx.recv().await {
                        n += b.items();
                    }
                    n
                });
                let t = Instant::now();
                for _ in 0..iters {
                    tx.send(batch.clone()).await.expect("send");
                }
                drop(tx);
                black_box(consumer.await.expect("consumer"));
                t.elapsed()
            })
        })
    });
    g.finish();
}

fn impact(c: &mut Criterion) {
    let reqs = shop_requests(REQUESTS);
    let enrich = EnrichEngine::from_yaml(&demo_enrich_yaml(), &Extensions::default()).expect("demo preset");
    let enriched: Vec<ExportTraceServiceRequest> = reqs
        .iter()
        .map(|b| {
            let mut r = decode(b);
            enrich.apply_traces(&mut r);
            r
        })
        .collect();
    let encoded: Vec<Vec<u8>> = enriched.iter().map(|r| r.encode_to_vec()).collect();
    let cfg: BusinessImpactConfig = parse_config(&impact_yaml()).expect("impact config");
    let mut g = c.benchmark_group("impact");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    g.bench_function("business_impact ingest (decoded, enriched spans)", |b| {
        b.iter_custom(|iters| ingest_passes(iters, &cfg, &enriched, &encoded, Ingest::Decoded))
    });
    g.bench_function("business_impact decode + ingest", |b| {
        b.iter_custom(|iters| ingest_passes(iters, &cfg, &enriched, &encoded, Ingest::DecodeFirst))
    });
    g.bench_function("business_impact ingest via views", |b| {
        b.iter_custom(|iters| ingest_passes(iters, &cfg, &enriched, &encoded, Ingest::Views))
    });
    g.finish();
}

#[derive(Clone, Copy, PartialEq)]
enum Ingest {
    Decoded,
    DecodeFirst,
    Views,
}

/// Ingests `iters` requests, with a fresh engine for every pass over them (span ids and times would repeat
/// otherwise); building engines is not timed.
fn ingest_passes(
    iters: u64,
    cfg: &BusinessImpactConfig,
    enriched: &[ExportTraceServiceRequest],
    encoded: &[Vec<u8>],
    how: Ingest,
) -> Duration {
    let new_engine = || ImpactEngine::new(Compiled::new(cfg, None, None, None).expect("compile"), "bench");
    let mut total = Duration::ZERO;
    let mut engine = new_engine();
    let mut i = 0usize;
    for _ in 0..iters {
        if i == enriched.len() {
            engine = new_engine();
            i = 0;
        }
        let t = Instant::now();
        match how {
            Ingest::Decoded => engine.ingest(&enriched[i]),
            Ingest::DecodeFirst => engine.ingest(&decode(&encoded[i])),
            Ingest::Views => engine.ingest_encoded(&encoded[i]),
        }
        black_box(engine.take_logs());
        total += t.elapsed();
        i += 1;
    }
    total
}

criterion_group!(benches, enrich, merge, channel, impact);
criterion_main!(benches);
