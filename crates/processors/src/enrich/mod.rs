//! The `enrich` processor (traces and logs): joins business context onto spans
//! and log records as attributes (default namespace `business.`).
//!
//! Per item, in order:
//!
//! 1. **rules** (those without `after_join`), in order: each has an optional
//!    condition (`when`) and one action;
//! 2. the **state join** with a `business_state` extension: by the order key
//!    (order → customer id, order value and currency, cart items, tier) and the
//!    customer key (customer → tier);
//! 3. the **lookup joins**, in order: a table row by a key attribute, its columns
//!    copied to attributes;
//! 4. the rules marked `after_join: true` (e.g. classify a joined order value).
//!
//! **Precedence** (business semantics §2): the item's own attributes, then the
//! state, then lookup tables. No step overwrites an attribute that is already
//! there (rules can opt in with `overwrite: true`), so whatever an earlier source
//! set stays.
//!
//! **Join window.** A span carrying an order key whose order is not yet in the
//! state may wait up to `join.window` for the business event: it is taken out
//! of its batch (the rest goes on), released as soon as the order is written to
//! the state (the processor subscribes to key arrivals), or at the deadline,
//! then unenriched by the state and counted as a miss. At most
//! `join.max_held_spans` wait at once; beyond that spans go on immediately
//! (counted as overflow). A held span keeps its batch's acknowledgements, so a
//! source hears back only once the span was handed on. At shutdown, held spans
//! are released at once. Log records are never held.
//!
//! Everything is compiled at start: regexes, attribute names, thresholds. A span
//! that no rule matches costs comparisons only, and no allocation.
//!
//! **Encoded data stays encoded.** Traces as the OTLP receivers hand them on (protobuf
//! bytes) are enriched on the bytes: each span is read through a zero-copy view, the
//! rules and joins see its attributes plus what earlier rules added, and only the spans
//! that change are re-written (new attributes appended, removed ones dropped, the
//! enclosing lengths fixed); the request is never decoded into owned structs nor
//! re-encoded. One visible difference with decoding: an attribute of the span's own that a
//! rule replaces (`overwrite: true`) moves to the end of the list instead of keeping its
//! place. A span that waits in the join window is taken out of the request in the same pass
//! and kept encoded. The decoded path is taken for traces that arrive decoded (OTLP/JSON) and
//! for log records.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `rules` | `[]` | ordered rules, see below |
//! | `rules[].name` | — | a label, for humans |
//! | `rules[].when.service` | — | `service.name` is this (or one of this list) |
//! | `rules[].when.resource` | — | map: resource attributes equal to these values |
//! | `rules[].when.span_name` | — | span name (log records: event name) is exactly this (or one of this list) |
//! | `rules[].when.span_name_regex` | — | span name (event name) matches this regular expression |
//! | `rules[].when.attributes` | — | map: item attributes equal to these values |
//! | `rules[].when.exists` | — | item attributes that must be present |
//! | `rules[].after_join` | `false` | run after the joins instead of before |
//! | `rules[].copy` | — | `{from, to, overwrite}`: copy an attribute; `to` defaults to `business.` + `from` without a leading `demo.`/`app.` |
//! | `rules[].rename` | — | `{from, to, overwrite}`: move an attribute (same default `to`); `from` is removed even when `to` exists |
//! | `rules[].parse_money` | — | `{from \| units+nanos, currency_from, default_currency, to: business.order.value, currency_to: business.currency, overwrite}`: read money (string `"123.45"`/`"USD 123.45"`, double through its shortest decimal form, int, `{units, nanos, currency_code}` map, or a units and a nanos attribute) and write the exact decimal string and the currency code |
//! | `rules[].set` | — | `{key, value, overwrite}`: set a constant (string, int, float or bool) |
//! | `rules[].classify` | — | `{from, to, thresholds: [{min, label}], otherwise, overwrite}`: the label of the highest threshold the (exact decimal) value reaches; `otherwise` below all |
//! | `rules[].delete` | — | an attribute name or a list of them |
//! | `join.state` | — | id of a `business_state` extension; none: no state join |
//! | `join.order_key` | `business.order.id` | attribute holding the order id |
//! | `join.customer_key` | `business.customer.id` | attribute holding the customer id |
//! | `join.window` | `0s` | how long a span may wait for its order; `0` = never wait |
//! | `join.max_held_spans` | `10000` | most spans waiting at once |
//! | `join.link_traces` | `false` | record each trace's customer and tier (after the rules and the join: `join.customer_key`, `join.attributes.customer_tier`) in the state's trace links, so that a business event of the same trace that names no customer (the OpenTelemetry Demo's `OrderResult`, by its `traceparent`) gets them, in either arrival order (`docs/order-result-join.md`) |
//! | `join.attributes.customer_id` | `business.customer.id` | where the order's customer goes (empty: not written) |
//! | `join.attributes.customer_tier` | `business.customer.tier` | the customer's tier |
//! | `join.attributes.order_value` | `business.order.value` | the order value, exact decimal string |
//! | `join.attributes.currency` | `business.currency` | the order value's currency code |
//! | `join.attributes.cart_items` | `business.cart.items` | number of line items (int) |
//! | `lookups[].extension` | (required) | id of a `lookup` extension |
//! | `lookups[].key` | (required) | attribute whose value is looked up |
//! | `lookups[].attributes` | (required) | map: table column → attribute |
//! | `lookups[].overwrite` | `false` | replace attributes already present |
//!
//! ```yaml
//! extensions:
//!   business_state: {max_orders: 100000, ttl: 1h}
//!   lookup/customers: {file: customers.csv, key: customer_id}
//! processors:
//!   enrich:
//!     rules:
//!       - copy: {from: demo.order.id}            # → business.order.id
//!       - copy: {from: user.id, to: business.customer.id}
//!       - copy: {from: demo.user_context.loyalty_level, to: business.customer.tier}
//!       - when: {span_name: oteldemo.CheckoutService/PlaceOrder}
//!         parse_money: {from: demo.order.amount, currency_from: demo.user_context.selected_currency, default_currency: USD}
//!       - after_join: true
//!         classify:
//!           from: business.order.value
//!           to: business.order.size
//!           thresholds: [{min: 0, label: small}, {min: 100, label: medium}, {min: 1000, label: large}]
//!     join:
//!       state: business_state
//!       window: 2s
//!     lookups:
//!       - extension: lookup/customers
//!         key: business.customer.id
//!         attributes: {tier: business.customer.tier, segment: business.customer.segment}
//! service:
//!   extensions: [business_state, lookup/customers]
//! ```
//!
//! Self-telemetry (labels `processor`, `pipeline`): `bizpilot_processor_enrich_items_total`,
//! `bizpilot_processor_enrich_enriched_items_total`, `bizpilot_processor_enrich_join_hits_total{source}` and
//! `bizpilot_processor_enrich_join_misses_total{source}` (`source` = `order`, `customer`, `lookup`),
//! `bizpilot_processor_enrich_held_spans_total`, `bizpilot_processor_enrich_hold_overflow_spans_total`,
//! `bizpilot_processor_enrich_released_spans_total{reason}` (`arrival`, `timeout`, `shutdown`),
//! `bizpilot_processor_enrich_parse_errors_total` and the gauge `bizpilot_processor_enrich_held_spans`.
//! A span's join counts once, when it leaves the processor.

mod config;
mod engine;
mod hold;
mod target;

pub use config::{
    ClassifyConfig, CopyConfig, EnrichConfig, JoinAttributes, JoinConfig, LookupJoinConfig, OneOrMany,
    ParseMoneyConfig, RuleConfig, ScalarConfig, SetConfig, ThresholdConfig, WhenConfig, default_target,
};
pub use engine::{Engine, EnrichStats, Item};

use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use bizpilot_core::stage::Wake;
use bizpilot_core::{
    Batch, ComponentError, ComponentInfo, ComponentKind, CreateContext, Extensions, Out, Payload, Processor,
    ProcessorFactory, Signal, Stability, Stage,
};

use engine::{HoldCtx, Release};
use hold::Holder;

/// The component type name.
pub const TYPE: &str = "enrich";

/// Makes `enrich` processors.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnrichProcessorFactory;

impl ProcessorFactory for EnrichProcessorFactory {
    type Config = EnrichConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Processor,
            stability: Stability::Alpha,
            description: "Joins business context (rules, business state, lookup tables) onto spans and log records",
            signals: &[Signal::Traces, Signal::Logs],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Processor>, ComponentError> {
        let pipeline = ctx.pipeline.map(|p| p.to_string()).unwrap_or_default();
        let p = EnrichProcessor::new(&config, ctx.extensions, &ctx.id.to_string(), &pipeline)?;
        Ok(Box::new(p))
    }
}

/// A created `enrich` processor.
#[derive(Debug)]
pub struct EnrichProcessor {
    engine: Arc<Engine>,
}

impl EnrichProcessor {
    pub fn new(
        config: &EnrichConfig,
        extensions: &Extensions,
        id: &str,
        pipeline: &str,
    ) -> Result<EnrichProcessor, ComponentError> {
        let engine = Engine::new(config, extensions, id, pipeline).map_err(ComponentError::Config)?;
        Ok(EnrichProcessor {
            engine: Arc::new(engine),
        })
    }

    /// The compiled engine (its stats stay readable after the processor started).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }
}

impl Processor for EnrichProcessor {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        let engine = self.engine;
        let holder = engine.window().map(|w| Holder::new(w, engine.max_held()));
        let sub = match (&holder, engine.state()) {
            (Some(_), Some(state)) => Some(state.orders.subscribe()),
            _ => None,
        };
        Box::new(EnrichStage {
            engine,
            holder,
            sub,
            woke: None,
        })
    }
}

/// Enriches one batch; held spans leave it. `None` when nothing is left to send.
///
/// Traces held encoded (what the OTLP receivers hand on) are enriched on their bytes, through
/// views ([`Engine::process_encoded`]): never decoded nor re-encoded, held spans kept encoded too. The
/// decoded path is taken for traces that arrived decoded (OTLP/JSON: cheaper than encoding them first,
/// the exporter encodes once anyway) and for log records.
fn process(engine: &Engine, holder: Option<&mut Holder>, mut batch: Batch) -> Option<Batch> {
    let Batch { payload, acks } = &mut batch;
    match payload {
        Payload::Traces(t) => {
            let before = t.items();
            let hold = holder.map(|h| HoldCtx {
                holder: h,
                batch_acks: acks,
                acks: None,
                now: tokio::time::Instant::now(),
            });
            let c = if t.encoded_bytes().is_some() {
                engine.process_encoded(t, hold)
            } else {
                let msg = match t.message_mut() {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "enrich: cannot decode traces; passing them on unchanged");
                        return Some(batch);
                    }
                };
                let c = engine.process_traces(msg, hold);
                if c.held > 0 {
                    t.recount();
                }
                c
            };
            if c.held > 0 && t.is_empty() && before > 0 {
                return None;
            }
        }
        Payload::Logs(l) => match l.message_mut() {
            Ok(m) => {
                engine.apply_logs(m);
            }
            Err(e) => tracing::warn!(error = %e, "enrich: cannot decode logs; passing them on unchanged"),
        },
        Payload::Metrics(_) => {}
    }
    Some(batch)
}

/// The processor's stage: enriches each batch; with a join window, holds spans whose order
/// result has not arrived and releases them when it does (a business-state subscription wakes
/// the stage), when their wait ends (the stage's timer), or at the end.
struct EnrichStage {
    engine: Arc<Engine>,
    holder: Option<Holder>,
    sub: Option<broadcast::Receiver<Arc<str>>>,
    /// What the subscription delivered, for [`Stage::on_wake`].
    woke: Option<Result<Arc<str>, RecvError>>,
}

impl EnrichStage {
    fn send(&self, batch: Option<Batch>, out: &mut Out) {
        if let Some(b) = batch {
            out.send(b);
        }
    }

    /// Releases everything still held (input closed, or the run ends early).
    fn release_all(&mut self, out: &mut Out) {
        if let Some(h) = self.holder.as_mut() {
            let all = h.take_all();
            self.engine.set_held_gauge(0);
            self.send(self.engine.release(all, Release::Shutdown), out);
        }
    }
}

impl Stage for EnrichStage {
    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        let b = process(&self.engine, self.holder.as_mut(), batch);
        if let Some(h) = self.holder.as_ref() {
            self.engine.set_held_gauge(h.len());
        }
        self.send(b, out);
    }

    fn deadline(&mut self) -> Option<tokio::time::Instant> {
        self.holder.as_mut().and_then(|h| h.next_deadline())
    }

    fn on_timer(&mut self, out: &mut Out) {
        let Some(h) = self.holder.as_mut() else { return };
        let expired = h.take_expired(tokio::time::Instant::now());
        self.engine.set_held_gauge(h.len());
        self.send(self.engine.release(expired, Release::Timeout), out);
    }

    fn wake(&mut self) -> Wake<'_> {
        match self.sub.as_mut() {
            Some(sub) => {
                let woke = &mut self.woke;
                Box::pin(async move {
                    *woke = Some(sub.recv().await);
                })
            }
            None => Box::pin(std::future::pending()),
        }
    }

    fn on_wake(&mut self, out: &mut Out) {
        let (Some(key), Some(h)) = (self.woke.take(), self.holder.as_mut()) else {
            return;
        };
        let mut released = Vec::new();
        match key {
            Ok(k) => {
                released.extend(h.take_key(&k));
                // Drain what else has arrived, to release it in the same batch.
                if let Some(s) = self.sub.as_mut() {
                    for _ in 0..1024 {
                        match s.try_recv() {
                            Ok(k) => released.extend(h.take_key(&k)),
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(RecvError::Lagged(_)) => {
                // Some arrivals were missed: check every key still waited for.
                if let Some(state) = self.engine.state() {
                    for k in h.keys() {
                        if state.orders.contains(&k) {
                            released.extend(h.take_key(&k));
                        }
                    }
                }
            }
            Err(RecvError::Closed) => self.sub = None,
        }
        self.engine.set_held_gauge(h.len());
        self.send(self.engine.release(released, Release::Arrival), out);
    }

    fn on_drain(&mut self, out: &mut Out) {
        self.release_all(out);
    }

    /// The driver fails what is released here.
    fn on_abort(&mut self, out: &mut Out) {
        self.release_all(out);
    }
}

#[cfg(test)]
mod tests;
