//! The "KPI shop": the time-compressed shopgen workload the `order_kpi` end-to-end tests share (a 2 h fulfilment
//! deadline, a payment outage with retries, a shipping slowdown, duplicates and reordering), with the settings in
//! which they differ as overrides. `tests/kpiack.rs`, `tests/kpi_replay.rs`, `tests/kpi_accuracy.rs` and
//! `tests/gateway_week_e2e.rs` compute their ground truth from it: a change here changes theirs.

use bizpilot_shopgen::ShopConfig;

/// The settings the KPI tests vary; everything else is fixed in [`KpiShop::yaml`].
#[derive(Debug, Clone)]
pub struct KpiShop {
    pub seed: u64,
    /// Orders are placed during `duration`; `tail` more lets them finish.
    pub duration: &'static str,
    pub tail: &'static str,
    pub customers: u32,
    /// `[start, end)` of the payment outage (90 % of charges fail).
    pub payment_outage: (&'static str, &'static str),
    /// Shipping slows down from here on.
    pub slow_shipping_from: &'static str,
    /// 20 % of the business events arrive 100 ms to 30 s after their spans.
    pub events_after_spans: bool,
    /// The revenue-at-risk episode window of the ground truth (`impact_window`; shopgen's default, 1 h, if none).
    pub impact_window: Option<&'static str>,
}

impl Default for KpiShop {
    /// Six hours of orders and three of tail, 2,000 customers, the outage at 1 h, the slowdown from 2 h.
    fn default() -> Self {
        KpiShop {
            seed: 17,
            duration: "6h",
            tail: "3h",
            customers: 2000,
            payment_outage: ("1h", "1h10m"),
            slow_shipping_from: "2h",
            events_after_spans: false,
            impact_window: None,
        }
    }
}

impl KpiShop {
    /// The shopgen YAML of these settings.
    pub fn yaml(&self) -> String {
        let KpiShop {
            seed,
            duration,
            tail,
            customers,
            payment_outage: (outage_start, outage_end),
            slow_shipping_from,
            events_after_spans,
            impact_window,
        } = self;
        let mut y = format!(
            r#"
seed: {seed}
duration: {duration}
tail: {tail}
orders_per_sec: 0.1
customers: {customers}
browse_traces: {{min: 0, max: 1}}
add_item_traces: false
fulfilment:
  deadline: 2h
  ship_delay: {{min: 5m, max: 40m}}
  delivery_delay: {{min: 20m, max: 1h}}
  abandoned_cancel_after: 10m
injections:
  payment_outages: [{{start: {outage_start}, end: {outage_end}, failure_probability: 0.9}}]
  retries: {{probability: 0.8, delay: {{min: 30m, max: 80m}}, max_attempts: 2}}
  slow_shipping: {{start: {slow_shipping_from}, ship_latency: 4s, extra_delay: {{min: 50m, max: 100m}}}}
  duplicates: {{probability: 0.01, max_delay: 5s}}
  out_of_order: {{probability: 0.05, max_delay: 10s}}
"#
        );
        if *events_after_spans {
            y.push_str("  events_after_spans: {probability: 0.2, delay: {min: 100ms, max: 30s}}\n");
        }
        if let Some(w) = impact_window {
            y.push_str(&format!("impact_window: {w}\n"));
        }
        y
    }

    /// The shopgen config of these settings.
    pub fn config(&self) -> ShopConfig {
        serde_yaml::from_str(&self.yaml()).expect("a valid KPI shop")
    }
}
