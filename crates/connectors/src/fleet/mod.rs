//! The `business_fleet` connector (traces → traces): the publishing half of **fleet-wide figures**
//! (`docs/fleet.md`). Each replica of a scaled-out gateway passes on only the spans that business impact is
//! computed from — business operations, the spans of their traces that carry business context, ERROR spans
//! (root causes) — to a pipeline that writes them to a Kafka topic. Every replica reads that whole topic into a
//! second `business_impact` connector (`business_impact/fleet`), which therefore sees every operation of the
//! fleet once (duplicates from redeliveries and rebalances are dropped by span id) and computes every figure as
//! one process would: distinct affected customers, revenue at risk and recovered per customer, one incident per
//! outage, goal attainment.
//!
//! A span is kept when any of these holds:
//!
//! - its status is ERROR (`errors`): the root cause of a failed operation is the deepest ERROR span of its trace;
//! - its name is one of `span_names` (the operations' spans, which may carry no business attribute);
//! - one of its attributes starts with one of `attribute_prefixes`: the business context that `trace_context`
//!   reads from other spans of the trace (tier, value, currency, customer), as the `enrich` processor wrote it.
//!
//! Everything else (the bulk of the spans) is absorbed and counted as consumed. A kept span is passed on as it
//! is (its ids, times, status and attributes), and with it the batch's acknowledgements: a `kafka` receiver
//! upstream commits a message's offset only once the kept spans are on the fleet topic, so a replica killed at
//! any moment loses nothing from the fleet's figures (its partitions' new owners read the uncommitted messages
//! again; the fleet drops the spans it had already).
//!
//! Requests whose spans are all kept or all dropped are not decoded (one walk over the encoding); a request with
//! both is decoded once to remove the others.
//!
//! # Metrics
//!
//! `bizpilot_connector_business_fleet_spans_total{connector, decision}`: spans `kept` (published) and `skipped`.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `span_names` | `[]` | span names always kept (the `span_name` of each `business_impact` operation) |
//! | `attribute_prefixes` | `[business.]` | spans with an attribute whose key starts with one of these are kept |
//! | `errors` | `true` | keep spans whose status is ERROR |
//!
//! ```yaml
//! connectors:
//!   business_fleet:
//!     span_names: [oteldemo.CheckoutService/PlaceOrder, grpc.oteldemo.PaymentService/Charge]
//! service:
//!   pipelines:
//!     traces:
//!       receivers: [kafka/spans]
//!       processors: [enrich/gateway, batch]
//!       exporters: [business_impact, business_fleet]
//!     traces/fleet_out:
//!       receivers: [business_fleet]
//!       exporters: [kafka/fleet]
//! ```

use serde::Deserialize;
use std::collections::HashSet;

use bizpilot_core::stage::reason;
use bizpilot_core::view::{ResourceView, SpanView};
use bizpilot_core::{
    Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, Connector, ConnectorFactory, CreateContext,
    FieldError, Out, Payload, Signal, Stability, Stage, StageInfo,
};

/// The component type name.
pub const TYPE: &str = "business_fleet";

/// Config of the `business_fleet` connector (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessFleetConfig {
    pub span_names: Vec<String>,
    pub attribute_prefixes: Vec<String>,
    pub errors: bool,
}

impl Default for BusinessFleetConfig {
    fn default() -> Self {
        BusinessFleetConfig {
            span_names: Vec::new(),
            attribute_prefixes: vec!["business.".into()],
            errors: true,
        }
    }
}

impl ComponentConfig for BusinessFleetConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        for (i, p) in self.attribute_prefixes.iter().enumerate() {
            if p.is_empty() {
                e.push(FieldError::new(
                    format!("attribute_prefixes[{i}]"),
                    "must not be empty (it would keep every span with an attribute)",
                ));
            }
        }
        if self.span_names.is_empty() && self.attribute_prefixes.is_empty() && !self.errors {
            e.push(FieldError::new(
                "",
                "keeps no span: set span_names, attribute_prefixes or errors",
            ));
        }
        e
    }
}

/// Makes `business_fleet` connectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusinessFleetConnectorFactory;

impl ConnectorFactory for BusinessFleetConnectorFactory {
    type Config = BusinessFleetConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Connector,
            stability: Stability::Alpha,
            description: "Passes on the spans business impact is computed from, for fleet-wide figures",
            signals: &[Signal::Traces],
            connects: &[(Signal::Traces, Signal::Traces)],
        }
    }

    fn create(
        &self,
        config: BusinessFleetConfig,
        ctx: &CreateContext<'_>,
    ) -> Result<Box<dyn Connector>, ComponentError> {
        if ctx.signals.iter().any(|s| *s != Signal::Traces) || !ctx.output_signals.contains(&Signal::Traces) {
            return Err(ComponentError::Config(format!(
                "{TYPE} connects a traces pipeline to a traces pipeline"
            )));
        }
        Ok(Box::new(BusinessFleetConnector {
            keep: Keep {
                span_names: config.span_names.into_iter().collect(),
                prefixes: config.attribute_prefixes,
                errors: config.errors,
            },
        }))
    }
}

/// Which spans are kept.
#[derive(Debug, Clone)]
struct Keep {
    span_names: HashSet<String>,
    prefixes: Vec<String>,
    errors: bool,
}

impl Keep {
    fn view(&self, s: &SpanView<'_>) -> bool {
        (self.errors && s.is_error())
            || self.span_names.contains(s.name)
            || s.attributes()
                .iter()
                .any(|kv| self.prefixes.iter().any(|p| kv.key.starts_with(p.as_str())))
    }
}

/// A `business_fleet` connector.
#[derive(Debug, Clone)]
pub struct BusinessFleetConnector {
    keep: Keep,
}

impl Connector for BusinessFleetConnector {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        Box::new(Task {
            keep: self.keep,
            kept: None,
            skipped: None,
        })
    }
}

struct Task {
    keep: Keep,
    kept: Option<metrics::Counter>,
    skipped: Option<metrics::Counter>,
}

impl Stage for Task {
    fn start(&mut self, info: &StageInfo) {
        let c = |d: &'static str| metrics::counter!("bizpilot_connector_business_fleet_spans_total", "connector" => info.id.clone(), "decision" => d);
        self.kept = Some(c("kept"));
        self.skipped = Some(c("skipped"));
    }

    fn on_batch(&mut self, mut batch: Batch, out: &mut Out) {
        let Payload::Traces(t) = &mut batch.payload else {
            out.fail(batch, reason::UNSUPPORTED_SIGNAL);
            return;
        };
        let mut flags: Vec<bool> = Vec::new();
        t.for_each_span(|_: &ResourceView<'_>, s| flags.push(self.keep.view(s)));
        let total = flags.len();
        let kept = flags.iter().filter(|k| **k).count();
        if let Some(c) = &self.kept {
            c.increment(kept as u64);
        }
        if let Some(c) = &self.skipped {
            c.increment((total - kept) as u64);
        }
        if kept == 0 {
            out.consume(batch);
            return;
        }
        if kept < total {
            // Mixed: remove the others from the decoded request, in the order the walk saw the spans.
            match t.message_mut() {
                Ok(req) => {
                    let mut flag = flags.iter().copied();
                    for rs in &mut req.resource_spans {
                        for ss in &mut rs.scope_spans {
                            ss.spans.retain(|_| flag.next().unwrap_or(true));
                        }
                        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
                    }
                    req.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
                    t.recount();
                    out.consumed_items(Signal::Traces, total - kept);
                }
                // Receivers validated the bytes; should it happen, everything goes on (nothing is lost).
                Err(e) => tracing::warn!(error = %e, "cannot decode a traces request; passing it on whole"),
            }
        }
        out.send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::component::{Output, Target};
    use bizpilot_core::{Ack, ConnectorContext, Delivery, Extensions, ReceiverOutput, Traces};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn span(name: &str, id: u8, error: bool, attrs: &[(&str, &str)]) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: name.into(),
            end_time_unix_nano: 10,
            status: error.then(|| Status {
                code: 2,
                message: "down".into(),
            }),
            attributes: attrs
                .iter()
                .map(|(k, v)| bizpilot_business::attrs::kv(*k, any_value::Value::StringValue((*v).into())))
                .collect(),
            ..Default::default()
        }
    }

    fn request(groups: Vec<Vec<Span>>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: groups
                .into_iter()
                .map(|spans| ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn names(req: &ExportTraceServiceRequest) -> Vec<String> {
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Runs one request (encoded, as a receiver hands it on) through a connector started by the stage driver:
    /// what was passed on (if anything), and the request's acknowledgement outcome.
    fn run(cfg: BusinessFleetConfig, req: ExportTraceServiceRequest) -> (Option<ExportTraceServiceRequest>, Delivery) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let id = "business_fleet".parse().unwrap();
            let ext = Extensions::default();
            let ctx = CreateContext {
                id: &id,
                pipeline: None,
                signals: [Signal::Traces].into_iter().collect(),
                output_signals: [Signal::Traces].into_iter().collect(),
                extensions: &ext,
            };
            let connector = BusinessFleetConnectorFactory.create(cfg, &ctx).unwrap();
            let (tx, rx) = mpsc::channel(4);
            let (otx, mut orx) = mpsc::channel(4);
            let output = Output::new(
                vec![Target {
                    name: "traces/fleet_out".into(),
                    sender: otx,
                }],
                Vec::new(),
            );
            let mut running = connector
                .start(ConnectorContext {
                    id: id.clone(),
                    input: rx,
                    output: ReceiverOutput::new(HashMap::from([(Signal::Traces, output)])),
                    abort: CancellationToken::new(),
                })
                .unwrap();
            let traces = Traces::from_bytes(req.encode_to_vec().into()).unwrap();
            let (ack, done) = Ack::channel();
            tx.send(Batch::with_ack(Payload::Traces(traces), ack)).await.unwrap();
            drop(tx);
            let mut sent = Vec::new();
            while let Some(b) = orx.recv().await {
                sent.push(b);
            }
            running.join().await.unwrap();
            assert!(sent.len() <= 1);
            let got = sent.pop().map(|b| match b.payload {
                Payload::Traces(t) => t.into_message().unwrap(),
                _ => panic!("not traces"),
            });
            // The acknowledgement is held by what was passed on, until that is dropped.
            let outcome = tokio::time::timeout(Duration::from_secs(5), done)
                .await
                .unwrap()
                .unwrap();
            (got, outcome)
        })
    }

    #[test]
    fn keeps_operations_business_context_and_errors_in_order_and_nothing_else() {
        let cfg = BusinessFleetConfig {
            span_names: vec!["PlaceOrder".into()],
            ..Default::default()
        };
        let req = request(vec![
            vec![
                span("GET /", 1, false, &[("http.route", "/")]),
                span("PlaceOrder", 2, false, &[]),
                span("charge", 3, false, &[("business.customer.tier", "gold")]),
            ],
            vec![span("browse", 4, false, &[])],
            vec![
                span("db", 5, true, &[]),
                span("cache", 6, false, &[("businessless", "x")]),
            ],
        ]);
        let (got, ack) = run(cfg, req);
        let got = got.expect("something is kept");
        assert_eq!(ack, Delivery::Delivered);
        assert_eq!(names(&got), ["PlaceOrder", "charge", "db"]);
        // Empty resources are removed; the kept spans are unchanged.
        assert_eq!(got.resource_spans.len(), 2);
        assert_eq!(got.resource_spans[0].scope_spans[0].spans[1].span_id, vec![3; 8]);
    }

    #[test]
    fn a_request_with_nothing_to_keep_is_absorbed_and_one_with_only_kept_spans_passes_whole() {
        let none = request(vec![vec![span("GET /", 1, false, &[])]]);
        assert_eq!(run(BusinessFleetConfig::default(), none), (None, Delivery::Delivered));
        let all = request(vec![vec![
            span("a", 1, false, &[("business.order.id", "o-1")]),
            span("b", 2, true, &[]),
        ]]);
        let got = run(BusinessFleetConfig::default(), all.clone()).0.unwrap();
        assert_eq!(got, all);
        // Without `errors`, the ERROR span goes.
        let cfg = BusinessFleetConfig {
            errors: false,
            ..Default::default()
        };
        assert_eq!(names(&run(cfg, all).0.unwrap()), ["a"]);
    }

    #[test]
    fn a_config_that_keeps_nothing_or_everything_is_refused() {
        let bad = BusinessFleetConfig {
            span_names: vec![],
            attribute_prefixes: vec![],
            errors: false,
        };
        assert_eq!(bad.validate().len(), 1);
        let all = BusinessFleetConfig {
            attribute_prefixes: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(all.validate()[0].path, "attribute_prefixes[0]");
        assert!(BusinessFleetConfig::default().validate().is_empty());
    }
}
