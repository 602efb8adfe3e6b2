//! Entry points of the business-event fuzz targets under `fuzz/` (cargo-fuzz), shared with the
//! test that replays their seed corpora (`fuzz/corpus/business_{json,protobuf}/`). Each decodes
//! arbitrary bytes the way the Kafka receiver does and must return without panicking; what it
//! accepts must be a valid logs payload. Not for data paths.

use crate::business::BusinessMapping;
use crate::codec::{Decoder, MessageMeta};
use crate::pb::{DESCRIPTOR_SET, ReflectedMessage};
use crate::traceparent::TraceParent;
use bizpilot_core::pdata::{Payload, Signal};

fn meta() -> MessageMeta {
    MessageMeta {
        timestamp_unix_nano: Some(1_735_689_600_000_000_000),
        traceparent: TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        now_unix_nano: 1_735_689_601_000_000_000,
    }
}

fn check(decoder: &Decoder, data: &[u8]) {
    for m in [
        meta(),
        MessageMeta {
            traceparent: None,
            timestamp_unix_nano: None,
            ..meta()
        },
    ] {
        if let Ok(mut p) = decoder.decode(Some(data), &m) {
            assert_eq!(p.signal(), Signal::Logs);
            assert_eq!(p.items(), 1, "one event, one log record");
            // The record is valid OTLP (ids, nesting), like everything a receiver hands on.
            let bytes = p.encoded();
            Payload::from_bytes(Signal::Logs, bytes).expect("a business event makes valid OTLP");
        }
    }
}

/// `encoding: business_json` with the default field mapping.
pub fn business_json(data: &[u8]) {
    check(&Decoder::BusinessJson(BusinessMapping::default()), data);
}

/// `encoding: business_proto` (bizpilot's `bizpilot.v1.BusinessEvent`), and the same schema
/// read by reflection as a user descriptor (`encoding: protobuf` with `descriptor_file`).
pub fn business_protobuf(data: &[u8]) {
    check(&Decoder::BusinessProto, data);
    if let Ok(message) = ReflectedMessage::from_descriptor_set(DESCRIPTOR_SET, "bizpilot.v1.BusinessEvent") {
        check(
            &Decoder::Protobuf {
                message,
                mapping: BusinessMapping::default(),
            },
            data,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpora_replay_through_the_fuzz_entry_points() {
        let mut accepted = 0;
        for (target, f) in [
            ("business_json", business_json as fn(&[u8])),
            ("business_protobuf", business_protobuf),
        ] {
            for (p, data) in bizpilot_core::fuzz::seed_corpus(target) {
                let r = std::panic::catch_unwind(|| f(&data));
                assert!(r.is_ok(), "{target}: {} fails", p.display());
                let d = match target {
                    "business_json" => Decoder::BusinessJson(BusinessMapping::default()),
                    _ => Decoder::BusinessProto,
                };
                accepted += usize::from(d.decode(Some(data.as_slice()), &meta()).is_ok());
            }
        }
        assert!(
            accepted >= 6,
            "{accepted} seeds decode: the corpora must hold valid events too"
        );
    }
}
