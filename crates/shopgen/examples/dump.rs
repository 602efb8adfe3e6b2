//! Prints a workload: `cargo run -p bizpilot-shopgen --example dump [config.yaml]`.
//!
//! The first emissions (spans decoded, events as JSON), then the ground truth as JSON with its long lists
//! (enrichment, episodes, KPI orders) cut to their first entries.

use bizpilot_shopgen::{EmissionKind, Shop, ShopConfig};

fn main() {
    let cfg: ShopConfig = match std::env::args().nth(1) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).expect("readable config");
            serde_yaml::from_str(&text).expect("valid config")
        }
        None => ShopConfig::default(),
    };
    let w = Shop::generate(&cfg).expect("valid config");
    for e in w.emissions.iter().take(12) {
        match &e.kind {
            EmissionKind::Trace(t) => {
                println!(
                    "{} trace {}",
                    e.arrival_unix_nano,
                    bizpilot_shopgen::spans::hex(&t.trace_id)
                );
                for (r, s) in t.decode_spans() {
                    let attrs: Vec<String> = s
                        .attributes
                        .iter()
                        .map(|a| format!("{}={:?}", a.key, a.value.as_ref().and_then(|v| v.value.as_ref())))
                        .collect();
                    println!("  [{}] {} {:?} {}", r.service.name(), s.name, s.status, attrs.join(" "));
                }
            }
            EmissionKind::Event(ev) => println!("{} event {}", e.arrival_unix_nano, ev.to_json()),
        }
    }
    let mut truth = serde_json::to_value(&w.truth).expect("serializable");
    let cut = |v: &mut serde_json::Value| {
        if let Some(a) = v.as_array_mut() {
            a.truncate(3);
        }
    };
    cut(&mut truth["enrichment"]);
    cut(&mut truth["kpi"]["orders"]);
    cut(&mut truth["impact"]["impact_list"]);
    if let Some(ops) = truth["impact"]["operations"].as_array_mut() {
        for op in ops {
            cut(&mut op["episodes"]);
        }
    }
    println!("{}", serde_json::to_string_pretty(&truth).expect("json"));
}
