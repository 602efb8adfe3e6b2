//! `debug` exporter: consumes every signal at every verbosity and reports delivery.

use crate::common::*;
use bizpilot_core::{Ack, Batch, Delivery};
use bizpilot_exporters::DebugExporterFactory;
use std::time::Duration;

#[tokio::test]
async fn consumes_every_signal_at_every_verbosity() {
    for verbosity in ["basic", "normal", "detailed"] {
        let id = format!("debug/{verbosity}");
        let h = start(DebugExporterFactory, &id, &format!("verbosity: {verbosity}"), 4);
        let mut acks = Vec::new();
        for b in all_signals(verbosity) {
            let (ack, rx) = Ack::channel();
            h.tx.send(Batch::with_ack(b.payload, ack)).await.unwrap();
            acks.push(rx);
        }
        h.finish(Duration::from_secs(5)).await;
        for a in acks {
            assert_eq!(a.await.unwrap(), Delivery::Delivered);
        }
        assert_eq!(counter("bizpilot_exporter_sent_spans_total", &id), 3);
        assert_eq!(counter("bizpilot_exporter_sent_log_records_total", &id), 5);
    }
}
