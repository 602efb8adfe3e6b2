//! Decode, encode and compression costs on the shop payload (512 spans per `ExportTraceServiceRequest`).
//!
//! `cargo bench -p bizpilot-benches --bench codec`. Throughput is in spans ("elements"): the time per span is
//! the reported time divided by 512, and ns/span ÷ 1000 = CPU-seconds per million spans.

use bizpilot_benches::{SPANS_PER_REQUEST, shop_requests};
use bizpilot_core::Traces;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::hint::black_box;
use std::io::Write;

const REQUESTS: usize = 16;

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3), flate2::Compression::new(level));
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish")
}

fn codec(c: &mut Criterion) {
    let reqs = shop_requests(REQUESTS);
    let decoded: Vec<ExportTraceServiceRequest> = reqs
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(b.as_ref()).expect("valid"))
        .collect();
    let bytes: usize = reqs.iter().map(|b| b.len()).sum();
    let n = reqs.len();
    eprintln!(
        "payload: {n} requests × {SPANS_PER_REQUEST} spans, {} bytes/request, {} bytes/span",
        bytes / n,
        bytes / (n * SPANS_PER_REQUEST)
    );
    for (name, out) in [
        ("gzip 1", gzip(&reqs[0], 1).len()),
        ("gzip 6", gzip(&reqs[0], 6).len()),
        ("zstd 1", zstd::bulk::compress(&reqs[0], 1).expect("zstd").len()),
    ] {
        eprintln!("{name}: ratio {:.2}", reqs[0].len() as f64 / out as f64);
    }

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    let mut i = 0;
    g.bench_function("walk (Traces::from_bytes)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(Traces::from_bytes(reqs[i].clone()).expect("valid").items())
        })
    });
    g.bench_function("prost (owned structs)", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(ExportTraceServiceRequest::decode(reqs[i].as_ref()).expect("valid"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    g.bench_function("prost", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(decoded[i].encode_to_vec())
        })
    });
    g.bench_function("prost decode + encode", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            let m = ExportTraceServiceRequest::decode(reqs[i].as_ref()).expect("valid");
            black_box(m.encode_to_vec())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    for level in [1u32, 6] {
        g.bench_function(format!("gzip {level}"), |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(gzip(&reqs[i], level))
            })
        });
    }
    g.bench_function("zstd 1", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(zstd::bulk::compress(&reqs[i], 1).expect("zstd"))
        })
    });
    let gz: Vec<Vec<u8>> = reqs.iter().map(|r| gzip(r, 1)).collect();
    g.bench_function("gunzip (level 1 data)", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % n;
                &gz[i]
            },
            |data| {
                let mut out = Vec::with_capacity(300_000);
                let mut d = flate2::write::GzDecoder::new(&mut out);
                d.write_all(data).expect("gunzip");
                d.finish().expect("gunzip");
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
