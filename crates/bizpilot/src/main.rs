//! The `bizpilot` binary.

mod admin;
mod board;
mod plan;
mod replay;
mod unit_test;

use anyhow::Context;
use bizpilot_core::config::{self, Diagnostic, LogEncoding, ProcessEnv, Source};
use bizpilot_core::{Registry, RunningService};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// The pipeline `bizpilot run` uses when no `--config` is given: the OpenTelemetry Demo preset
/// with business impact and Prometheus out (`pipelines/opentelemetry-demo.yaml`).
pub const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/opentelemetry-demo.yaml");

#[derive(Parser)]
#[command(
    name = "bizpilot",
    version,
    about = "An autopilot for the business: OTLP and Kafka in, business impact out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines (the embedded default pipeline when no --config is given).
    Run {
        /// YAML config files, merged in order (later files override earlier ones).
        #[arg(long = "config", short = 'c', value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Check config files and print every problem; exit 1 if there is an error.
    Validate {
        #[arg(long = "config", short = 'c', value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// List every component type with its stability and signals.
    Components,
    /// Print the embedded default pipeline.
    DefaultConfig,
    /// Feed recorded OTLP data (binary recordings or OTLP/JSON lines) through a config's pipelines at full speed.
    Replay {
        #[arg(long = "config", short = 'c', value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
        /// Recordings to replay.
        #[arg(long = "input", short = 'i', value_name = "FILE", num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Send requests by earliest event time across files, or as they are in the files.
        #[arg(long, value_enum, default_value = "event-time")]
        order: replay::Order,
        /// No progress bar on stderr.
        #[arg(long)]
        no_progress: bool,
    },
    /// Capacity plan of the config's `capacity_planner` connector, from recorded spans.
    Plan {
        #[arg(long = "config", short = 'c', value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
        /// Recordings (as for replay).
        #[arg(long = "input", short = 'i', value_name = "FILE", num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Print the plan as JSON (the shape of GET /api/v1/plan).
        #[arg(long)]
        json: bool,
        /// Only this campaign.
        #[arg(long)]
        campaign: Option<String>,
        /// The connector id, when the config has several capacity_planner connectors.
        #[arg(long)]
        connector: Option<String>,
    },
    /// Run pipeline unit tests: inputs in OTLP/JSON, expected attributes, metrics and records (see docs/pipeline-tests.md).
    Test {
        #[arg(long = "config", short = 'c', value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
        /// Test files (default: tests/<config name>.test.yaml next to each config).
        #[arg(value_name = "TESTS")]
        tests: Vec<PathBuf>,
    },
}

fn registry() -> Registry {
    let mut r = Registry::new();
    bizpilot_receivers::register(&mut r);
    bizpilot_processors::register(&mut r);
    bizpilot_exporters::register(&mut r);
    bizpilot_connectors::register(&mut r);
    bizpilot_extensions::register(&mut r);
    bizpilot_kafka::register(&mut r);
    r
}

fn sources(files: &[PathBuf]) -> Vec<Source> {
    if files.is_empty() {
        vec![Source::Text {
            name: "<embedded default pipeline>".into(),
            text: DEFAULT_PIPELINE.into(),
        }]
    } else {
        files.iter().map(Source::file).collect()
    }
}

/// Loads and validates; prints diagnostics to stderr. `None` when there is an error.
fn load_config(files: &[PathBuf], registry: &Registry) -> (Option<config::Config>, Vec<Diagnostic>) {
    let (raw, mut diags) = config::load(&sources(files), &ProcessEnv);
    if diags.iter().any(Diagnostic::is_error) {
        return (None, diags);
    }
    let (cfg, more) = config::validate(&raw, registry);
    diags.extend(more);
    (cfg, diags)
}

fn init_logging(cfg: &config::TelemetryConfig) {
    let filter = std::env::var("BIZPILOT_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.logs.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: not in files, the journal or container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cfg.logs.encoding {
        LogEncoding::Json => builder.json().try_init(),
        LogEncoding::Text => builder.try_init(),
    };
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

async fn run(files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let (cfg, diags) = load_config(&files, &registry);
    for d in &diags {
        eprintln!("{d}");
    }
    let Some(cfg) = cfg else {
        eprintln!("bizpilot: the configuration has errors; nothing was started");
        return Ok(ExitCode::from(1));
    };
    init_logging(&cfg.telemetry);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    bizpilot_core::telemetry::describe();
    metrics::gauge!("bizpilot_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    let admin_stop = CancellationToken::new();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service_ready = std::sync::Arc::new(std::sync::OnceLock::new());
    let api = bizpilot_core::ApiRegistry::default();
    if !cfg.telemetry.metrics.address.is_empty() {
        let addr = admin::serve(
            &cfg.telemetry.metrics.address,
            admin::AdminState {
                metrics,
                ready: ready.clone(),
                service_ready: service_ready.clone(),
                api: api.clone(),
                token: cfg
                    .telemetry
                    .metrics
                    .auth
                    .as_ref()
                    .map(|a| bizpilot_core::auth::BearerToken::new(&a.bearer_token)),
            },
            admin_stop.clone(),
        )
        .await?;
        tracing::info!(address = %addr, "admin server listening (/metrics, /healthz, /readyz)");
    }

    let service = RunningService::start_with_api(&cfg, &registry, api)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    let _ = service_ready.set(service.readiness());
    ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(pipelines = cfg.pipelines.len(), "bizpilot started");

    let sig = shutdown_signal().await;
    ready.store(false, std::sync::atomic::Ordering::Release);
    tracing::info!(signal = sig, deadline = ?cfg.shutdown_timeout, "shutting down: draining accepted data");
    let report = service.shutdown(cfg.shutdown_timeout).await;
    admin_stop.cancel();
    if report.is_clean() {
        tracing::info!("shutdown complete");
    } else {
        tracing::warn!(timed_out = ?report.timed_out, errors = ?report.errors, "shutdown finished with problems");
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(files: Vec<PathBuf>) -> ExitCode {
    let registry = registry();
    let (cfg, diags) = load_config(&files, &registry);
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match cfg {
        Some(c) if errors == 0 => {
            println!(
                "config is valid: {} pipeline(s), {} warning(s)",
                c.pipelines.len(),
                warnings
            );
            ExitCode::SUCCESS
        }
        _ => {
            println!("config is invalid: {errors} error(s), {warnings} warning(s)");
            ExitCode::from(1)
        }
    }
}

fn components() {
    let registry = registry();
    println!(
        "{:<10} {:<22} {:<12} {:<24} DESCRIPTION",
        "KIND", "TYPE", "STABILITY", "SIGNALS"
    );
    for info in registry.list() {
        let signals = if info.connects.is_empty() {
            info.signals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        } else {
            info.connects
                .iter()
                .map(|(a, b)| format!("{a}->{b}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:<10} {:<22} {:<12} {:<24} {}",
            info.kind.as_str(),
            info.type_name,
            info.stability.to_string(),
            signals,
            info.description
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(config),
        Command::Components => {
            components();
            ExitCode::SUCCESS
        }
        Command::DefaultConfig => {
            print!("{DEFAULT_PIPELINE}");
            ExitCode::SUCCESS
        }
        Command::Replay {
            config,
            input,
            order,
            no_progress,
        } => replay::main(config, input, order, !no_progress),
        Command::Plan {
            config,
            input,
            json,
            campaign,
            connector,
        } => plan::main(config, input, json, campaign, connector),
        Command::Test { config, tests } => unit_test::main(config, tests),
        Command::Run { config } => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("bizpilot: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(run(config)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bizpilot: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
