//! `bizpilot replay --config pipeline.yaml --input <files…>`: feeds recorded OTLP data (see
//! `bizpilot_connectors::kpi::recording`: binary `BZPOTLP1` recordings or OTLP/JSON lines) through the
//! pipelines of a config at full speed, with a progress bar on stderr.
//!
//! Every receiver of the config is replaced by one `replay` receiver that sends the recorded requests, by
//! signal, into the pipelines those receivers fed (connectors stay as they are). Requests are sent in
//! event-time order (each request by its earliest item; equal times keep file order) across all input files,
//! or in file order with `--order file`; each waits for room in the pipeline, so nothing is dropped. When all
//! are sent, the service shuts down as on SIGTERM: what was accepted drains to the exporters, and components
//! that aggregate over event time (the `order_kpi` connector) emit their final figures. Components that take
//! their time from the data give the same outputs as the live run on the same data, and identical outputs on
//! every replay.

use std::collections::{BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bizpilot_connectors::kpi::recording::{self, Recorded};
use bizpilot_core::{
    Batch, ComponentError, ComponentId, ComponentInfo, ComponentKind, CreateContext, Payload, Receiver,
    ReceiverContext, ReceiverFactory, Running, RunningService, Signal, Stability,
};
use tokio::sync::oneshot;

/// The order in which recorded requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// By each request's earliest event time, across all files (stable).
    EventTime,
    /// As they are in the files, files in the order given.
    File,
}

/// The receiver type replacing the config's receivers.
pub const TYPE: &str = "replay";

#[derive(Debug, Default)]
struct Progress {
    requests: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
}

/// What the replay receiver sends, and how far it got.
struct Feed {
    records: Mutex<Option<Vec<Recorded>>>,
    progress: Arc<Progress>,
    done: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

/// The replay receiver takes no settings (an empty config, as the `forward` connector's).
type ReplayReceiverConfig = bizpilot_connectors::forward::ForwardConfig;

struct ReplayReceiverFactory(Arc<Feed>);

impl ReceiverFactory for ReplayReceiverFactory {
    type Config = ReplayReceiverConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Receiver,
            stability: Stability::Development,
            description: "Sends recorded OTLP requests (bizpilot replay only).",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(&self, _: ReplayReceiverConfig, _: &CreateContext<'_>) -> Result<Box<dyn Receiver>, ComponentError> {
        Ok(Box::new(ReplayReceiver(self.0.clone())))
    }
}

struct ReplayReceiver(Arc<Feed>);

impl Receiver for ReplayReceiver {
    fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Running, ComponentError> {
        let feed = self.0;
        let records = feed
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let done = feed.done.lock().unwrap_or_else(PoisonError::into_inner).take();
        let progress = feed.progress.clone();
        Ok(Running::spawn(async move {
            let ReceiverContext { output, shutdown, .. } = ctx;
            let mut result = Ok(());
            for r in records {
                if shutdown.is_cancelled() {
                    result = Err("interrupted".to_string());
                    break;
                }
                let size = r.bytes.len() as u64;
                let items = r.items as u64;
                let Some(out) = output.get(r.signal) else {
                    progress.skipped.fetch_add(1, Ordering::Relaxed);
                    progress.requests.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.fetch_add(size, Ordering::Relaxed);
                    continue;
                };
                let payload = match Payload::from_bytes(r.signal, r.bytes.into()) {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(format!("invalid {} request: {e}", r.signal));
                        break;
                    }
                };
                let sent = tokio::select! {
                    s = out.send(Batch::new(payload)) => s,
                    _ = shutdown.cancelled() => {
                        result = Err("interrupted".to_string());
                        break;
                    }
                };
                if let Err(e) = sent {
                    result = Err(format!("the pipeline refused data: {e}"));
                    break;
                }
                progress.requests.fetch_add(1, Ordering::Relaxed);
                progress.items.fetch_add(items, Ordering::Relaxed);
                progress.bytes.fetch_add(size, Ordering::Relaxed);
            }
            drop(output);
            if let Some(d) = done {
                let _ = d.send(result);
            }
            Ok(())
        }))
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Draws the progress bar until `stop`.
async fn draw(progress: Arc<Progress>, total: (u64, u64), stop: Arc<AtomicBool>) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_decile = 0;
    loop {
        let finished = stop.load(Ordering::Acquire);
        let n = progress.requests.load(Ordering::Relaxed);
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let frac = if total.1 == 0 {
            1.0
        } else {
            bytes as f64 / total.1 as f64
        };
        let elapsed = started.elapsed().as_secs_f64();
        let eta = if frac > 0.0 { elapsed / frac - elapsed } else { 0.0 };
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let line = format!(
            "replay [{}{}] {:5.1} % {n}/{} requests, {:.1}/{:.1} MiB, {:.1} s, ETA {:.0} s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            total.0,
            mib(bytes),
            mib(total.1),
            elapsed,
            eta.max(0.0)
        );
        {
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r{line}");
                if finished {
                    let _ = writeln!(err);
                }
            } else {
                let decile = (frac * 10.0) as u32;
                if decile > last_decile || finished {
                    last_decile = decile;
                    let _ = writeln!(err, "{line}");
                }
            }
            let _ = err.flush();
        }
        if finished {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn load(inputs: &[PathBuf], order: Order) -> Result<Vec<Recorded>, String> {
    let mut all = Vec::new();
    for p in inputs {
        all.extend(recording::read(p).map_err(|e| e.to_string())?);
    }
    if order == Order::EventTime {
        recording::sort_by_event_time(&mut all);
    }
    Ok(all)
}

async fn run(config: Vec<PathBuf>, inputs: Vec<PathBuf>, order: Order, progress_bar: bool) -> Result<ExitCode, String> {
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = oneshot::channel();
    let feed = Arc::new(Feed {
        records: Mutex::new(None),
        progress: progress.clone(),
        done: Mutex::new(Some(done_tx)),
    });
    let mut registry = super::registry();
    registry.receiver(ReplayReceiverFactory(feed.clone()));
    let (cfg, diags) = super::load_config(&config, &registry);
    for d in &diags {
        eprintln!("{d}");
    }
    let Some(mut cfg) = cfg else {
        eprintln!("bizpilot: the configuration has errors; nothing was replayed");
        return Ok(ExitCode::from(1));
    };
    super::init_logging(&cfg.telemetry);

    let records = load(&inputs, order)?;
    let total = (
        records.len() as u64,
        records.iter().map(|r| r.bytes.len() as u64).sum::<u64>(),
    );
    let recorded: BTreeSet<Signal> = records.iter().map(|r| r.signal).collect();

    // Replace every receiver by the replay receiver.
    let replay_id: ComponentId = TYPE.parse().map_err(|e: String| e)?;
    let receivers: HashSet<ComponentId> = cfg
        .components
        .iter()
        .filter(|(k, _, _)| *k == ComponentKind::Receiver)
        .map(|(_, id, _)| id.clone())
        .collect();
    cfg.components.retain(|(k, _, _)| *k != ComponentKind::Receiver);
    cfg.components
        .push((ComponentKind::Receiver, replay_id.clone(), serde_yaml::Value::Null));
    let mut fed = BTreeSet::new();
    for (pid, pc) in cfg.pipelines.iter_mut() {
        let before = pc.receivers.len();
        pc.receivers.retain(|r| !receivers.contains(r));
        if pc.receivers.len() < before {
            pc.receivers.insert(0, replay_id.clone());
            fed.insert(pid.signal);
        }
    }
    for s in recorded.difference(&fed) {
        eprintln!("bizpilot: warning: the recording holds {s} but no pipeline receives {s} from a receiver; skipped");
    }
    *feed.records.lock().unwrap_or_else(PoisonError::into_inner) = Some(records);

    let started = Instant::now();
    let service = RunningService::start(&cfg, &registry)
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let bar = progress_bar.then(|| tokio::spawn(draw(progress.clone(), total, stop.clone())));
    let outcome = tokio::select! {
        r = done_rx => r.unwrap_or_else(|_| Err("the replay receiver did not start".into())),
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    stop.store(true, Ordering::Release);
    if let Some(b) = bar {
        let _ = b.await;
    }
    let report = service.shutdown(cfg.shutdown_timeout).await;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let items = progress.items.load(Ordering::Relaxed);
    eprintln!(
        "replayed {} requests ({} items, {:.1} MiB) in {:.2} s: {:.0} items/s{}",
        progress.requests.load(Ordering::Relaxed),
        items,
        mib(progress.bytes.load(Ordering::Relaxed)),
        secs,
        items as f64 / secs,
        match progress.skipped.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} requests skipped (no pipeline for their signal)"),
        }
    );
    if let Err(e) = outcome {
        eprintln!("bizpilot: replay stopped: {e}");
        return Ok(ExitCode::from(1));
    }
    if !report.is_clean() {
        eprintln!(
            "bizpilot: shutdown finished with problems: timed out {:?}, errors {:?}",
            report.timed_out, report.errors
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `bizpilot replay`.
pub fn main(config: Vec<PathBuf>, input: Vec<PathBuf>, order: Order, progress_bar: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bizpilot: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(config, input, order, progress_bar)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bizpilot: {e}");
            ExitCode::from(1)
        }
    }
}
