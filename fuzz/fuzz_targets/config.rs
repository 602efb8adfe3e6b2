#![no_main]
use std::sync::OnceLock;

/// Every component type bizpilot registers (as the binary does), so that validation reaches the
/// component configs.
fn registry() -> &'static bizpilot_core::Registry {
    static R: OnceLock<bizpilot_core::Registry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = bizpilot_core::Registry::new();
        bizpilot_receivers::register(&mut r);
        bizpilot_processors::register(&mut r);
        bizpilot_exporters::register(&mut r);
        bizpilot_connectors::register(&mut r);
        bizpilot_extensions::register(&mut r);
        bizpilot_kafka::register(&mut r);
        r
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| bizpilot_core::fuzz::config(data, registry()));
