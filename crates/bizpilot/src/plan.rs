//! `bizpilot plan --config pipeline.yaml --input <recordings…> [--json] [--campaign NAME] [--connector ID]`:
//! the capacity plan of a config's `capacity_planner` connector computed offline from recorded spans (the
//! recordings `bizpilot replay` reads: binary `BZPOTLP1` or OTLP/JSON lines). The spans go through the same
//! model the live connector keeps, in event-time order; the plan is printed as a table, or as the JSON
//! `GET /api/v1/plan` returns.

use std::path::PathBuf;
use std::process::ExitCode;

use bizpilot_connectors::kpi::recording;
use bizpilot_connectors::plan::{self as capacity, CapacityPlannerConfig, Model, Settings, planner};
use bizpilot_core::{ComponentKind, Signal, Traces};

/// Runs `bizpilot plan`.
pub fn main(
    config: Vec<PathBuf>,
    input: Vec<PathBuf>,
    json: bool,
    campaign: Option<String>,
    connector: Option<String>,
) -> ExitCode {
    match run(config, input, json, campaign, connector) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bizpilot: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(
    config: Vec<PathBuf>,
    input: Vec<PathBuf>,
    json: bool,
    campaign: Option<String>,
    connector: Option<String>,
) -> Result<(), String> {
    let registry = super::registry();
    let (cfg, diags) = super::load_config(&config, &registry);
    for d in &diags {
        eprintln!("{d}");
    }
    let cfg = cfg.ok_or("the configuration has errors; no plan computed")?;
    let planners: Vec<_> = cfg
        .components
        .iter()
        .filter(|(k, id, _)| *k == ComponentKind::Connector && id.type_name() == capacity::TYPE)
        .filter(|(_, id, _)| connector.as_deref().is_none_or(|c| id.to_string() == c))
        .collect();
    let Some((_, id, raw)) = planners.first() else {
        return Err(match connector {
            Some(c) => format!("the configuration has no connector {c:?} of type {}", capacity::TYPE),
            None => format!("the configuration has no {} connector", capacity::TYPE),
        });
    };
    if planners.len() > 1 {
        eprintln!(
            "bizpilot: several {} connectors; planning with {id} (choose with --connector)",
            capacity::TYPE
        );
    }
    let pc: CapacityPlannerConfig = if raw.is_null() {
        CapacityPlannerConfig::default()
    } else {
        serde_yaml::from_value((*raw).clone()).map_err(|e| format!("connectors.{id}: {e}"))?
    };
    let settings = Settings::new(&pc).map_err(|e| format!("connectors.{id}: {e}"))?;
    let mut model = Model::new(settings);
    let mut records = Vec::new();
    for p in &input {
        records.extend(recording::read(p).map_err(|e| e.to_string())?);
    }
    recording::sort_by_event_time(&mut records);
    let mut requests = 0usize;
    for r in records {
        if r.signal != Signal::Traces {
            continue;
        }
        let mut t = Traces::from_bytes(r.bytes.into()).map_err(|e| format!("invalid traces request: {e}"))?;
        model.ingest(&mut t);
        requests += 1;
    }
    if requests == 0 {
        return Err("the recordings hold no traces".into());
    }
    model.flush();
    let mut plan = planner::plan(&id.to_string(), &pc, &model.observed());
    if let Some(name) = &campaign {
        plan.campaigns.retain(|c| &c.name == name);
        if plan.campaigns.is_empty() {
            let known: Vec<&str> = pc.campaigns.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "no campaign {name:?} in connectors.{id} (campaigns: {})",
                known.join(", ")
            ));
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&plan).map_err(|e| format!("cannot render the plan: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", planner::render(&plan));
    }
    Ok(())
}
