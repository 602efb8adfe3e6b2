//! The `memory_limiter` processor: refuses new data while the process uses too
//! much memory, so receivers answer with a retryable error (gRPC
//! `RESOURCE_EXHAUSTED`, HTTP 429) instead of the process running out of memory.
//!
//! Every `check_interval` it measures the process's resident memory
//! (`/proc/self/statm` × page size). While that is above the soft limit
//! (`limit − spike`), the admission gate it puts in front of its pipelines
//! refuses with [`Refusal::MemoryLimit`]. Data already accepted passes through unchanged.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `check_interval` | `1s` | how often memory is measured |
//! | `limit_mib` | `0` | hard limit in MiB; set this or `limit_percentage` |
//! | `spike_limit_mib` | `0` (20% of the limit) | headroom in MiB below the hard limit; soft limit = limit − spike |
//! | `limit_percentage` | `0` | hard limit as a percentage of the memory available: the cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), else total RAM |
//! | `spike_limit_percentage` | `0` (20% of the limit) | headroom as a percentage of the memory available |
//!
//! Exactly one of `limit_mib` and `limit_percentage` must be set; the spike must be below the limit.
//!
//! ```yaml
//! processors:
//!   memory_limiter:
//!     check_interval: 1s
//!     limit_mib: 512
//!     spike_limit_mib: 128
//! ```
//!
//! Self-telemetry (labels `processor`, `pipeline`): gauges
//! `bizpilot_processor_memory_limiter_usage_bytes`, `…_soft_limit_bytes`, `…_hard_limit_bytes`,
//! and the counter `bizpilot_processor_memory_limiter_refusals_total` (refused requests).

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};
use serde::Deserialize;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bizpilot_core::config::Duration;
use bizpilot_core::stage::Wake;
use bizpilot_core::{
    Admission, Batch, ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, FieldError, Out,
    Processor, ProcessorFactory, Refusal, Signal, Stability, Stage, StageInfo,
};

/// The component type name.
pub const TYPE: &str = "memory_limiter";

pub const USAGE_METRIC: &str = "bizpilot_processor_memory_limiter_usage_bytes";
pub const SOFT_LIMIT_METRIC: &str = "bizpilot_processor_memory_limiter_soft_limit_bytes";
pub const HARD_LIMIT_METRIC: &str = "bizpilot_processor_memory_limiter_hard_limit_bytes";
pub const REFUSALS_METRIC: &str = "bizpilot_processor_memory_limiter_refusals_total";

const MIB: u64 = 1 << 20;

/// `memory_limiter` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimiterConfig {
    pub check_interval: Duration,
    pub limit_mib: u64,
    pub spike_limit_mib: u64,
    pub limit_percentage: u32,
    pub spike_limit_percentage: u32,
}

impl Default for MemoryLimiterConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            limit_mib: 0,
            spike_limit_mib: 0,
            limit_percentage: 0,
            spike_limit_percentage: 0,
        }
    }
}

impl ComponentConfig for MemoryLimiterConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.check_interval.is_zero() {
            errors.push(FieldError::new("check_interval", "must be greater than 0"));
        }
        match (self.limit_mib > 0, self.limit_percentage > 0) {
            (false, false) => errors.push(FieldError::new(
                "limit_mib",
                "one of limit_mib or limit_percentage must be set",
            )),
            (true, true) => errors.push(FieldError::new(
                "limit_percentage",
                "set either limit_mib or limit_percentage, not both",
            )),
            _ => {}
        }
        if self.limit_mib > 0 && self.spike_limit_mib >= self.limit_mib {
            errors.push(FieldError::new(
                "spike_limit_mib",
                format!("must be < limit_mib ({})", self.limit_mib),
            ));
        }
        if self.limit_percentage > 100 {
            errors.push(FieldError::new("limit_percentage", "must be between 1 and 100"));
        }
        if self.limit_percentage > 0 && self.spike_limit_percentage >= self.limit_percentage {
            errors.push(FieldError::new(
                "spike_limit_percentage",
                format!("must be < limit_percentage ({})", self.limit_percentage),
            ));
        }
        if self.limit_mib == 0 && self.limit_percentage > 0 && self.spike_limit_mib > 0 {
            errors.push(FieldError::new(
                "spike_limit_mib",
                "applies only with limit_mib; use spike_limit_percentage with limit_percentage",
            ));
        }
        if self.limit_percentage == 0 && self.limit_mib > 0 && self.spike_limit_percentage > 0 {
            errors.push(FieldError::new(
                "spike_limit_percentage",
                "applies only with limit_percentage; use spike_limit_mib with limit_mib",
            ));
        }
        errors
    }
}

/// The limits in bytes, resolved from a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub hard: u64,
    pub soft: u64,
}

/// Why limits could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot determine the memory available for limit_percentage: {0}")]
    Total(#[source] io::Error),
    #[error("neither limit_mib nor limit_percentage is set")]
    Unset,
    #[error("the soft limit would be 0 (spike {spike} bytes >= limit {hard} bytes)")]
    Empty { hard: u64, spike: u64 },
}

impl MemoryLimiterConfig {
    /// Hard and soft limits; `total` (memory available) is asked for only with percentages.
    pub fn limits(&self, total: impl FnOnce() -> io::Result<u64>) -> Result<Limits, LimitError> {
        let (hard, spike) = if self.limit_mib > 0 {
            let hard = self.limit_mib.saturating_mul(MIB);
            let spike = if self.spike_limit_mib > 0 {
                self.spike_limit_mib.saturating_mul(MIB)
            } else {
                hard / 5
            };
            (hard, spike)
        } else if self.limit_percentage > 0 {
            let total = total().map_err(LimitError::Total)?;
            let pct = |p: u32| (u128::from(total) * u128::from(p) / 100) as u64;
            let hard = pct(self.limit_percentage);
            let spike = if self.spike_limit_percentage > 0 {
                pct(self.spike_limit_percentage)
            } else {
                hard / 5
            };
            (hard, spike)
        } else {
            return Err(LimitError::Unset);
        };
        if spike >= hard {
            return Err(LimitError::Empty { hard, spike });
        }
        Ok(Limits {
            hard,
            soft: hard - spike,
        })
    }
}

/// Where memory figures come from; [`ProcMemory`] in production, a fake in tests.
pub trait MemorySource: Send + Sync + 'static {
    /// Resident memory of this process, in bytes.
    fn resident_bytes(&self) -> io::Result<u64>;
    /// Memory available to this process: its cgroup's limit, else total RAM.
    fn total_bytes(&self) -> io::Result<u64>;
}

/// Reads Linux `/proc` and `/sys/fs/cgroup`.
#[derive(Debug, Clone)]
pub struct ProcMemory {
    root: PathBuf,
}

impl Default for ProcMemory {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }
}

impl ProcMemory {
    /// Reads below `root` instead of `/` (for tests: a fake `proc/` and `sys/` tree).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    fn page_size(&self) -> u64 {
        static SYSTEM: OnceLock<u64> = OnceLock::new();
        let read = || {
            std::fs::read(self.path("proc/self/auxv"))
                .ok()
                .and_then(|a| parse_auxv_page_size(&a))
                .unwrap_or(4096)
        };
        if self.root == Path::new("/") {
            *SYSTEM.get_or_init(read)
        } else {
            read()
        }
    }

    /// The cgroup memory limit, if one is set.
    fn cgroup_limit(&self) -> Option<u64> {
        let cgroup = std::fs::read_to_string(self.path("proc/self/cgroup")).unwrap_or_default();
        let (v2, v1) = cgroup_paths(&cgroup);
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = v2 {
            candidates.push(self.path(&format!("sys/fs/cgroup{}/memory.max", p.trim_end_matches('/'))));
        }
        candidates.push(self.path("sys/fs/cgroup/memory.max"));
        if let Some(p) = v1 {
            candidates.push(self.path(&format!(
                "sys/fs/cgroup/memory{}/memory.limit_in_bytes",
                p.trim_end_matches('/')
            )));
        }
        candidates.push(self.path("sys/fs/cgroup/memory/memory.limit_in_bytes"));
        candidates
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok().and_then(|t| parse_cgroup_limit(&t)))
    }
}

impl MemorySource for ProcMemory {
    fn resident_bytes(&self) -> io::Result<u64> {
        let statm = std::fs::read_to_string(self.path("proc/self/statm"))?;
        let pages = parse_statm_resident(&statm)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/statm format"))?;
        Ok(pages.saturating_mul(self.page_size()))
    }

    fn total_bytes(&self) -> io::Result<u64> {
        let ram = std::fs::read_to_string(self.path("proc/meminfo"))
            .ok()
            .and_then(|t| parse_meminfo_total(&t));
        match (self.cgroup_limit(), ram) {
            (Some(c), Some(r)) => Ok(c.min(r)),
            (Some(c), None) => Ok(c),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup memory limit and no MemTotal in /proc/meminfo",
            )),
        }
    }
}

/// Resident pages: the second field of `/proc/self/statm`.
fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    Some(n.saturating_mul(mult))
}

/// A cgroup memory limit file; `max` and the "unlimited" huge values give `None`.
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let n: u64 = t.parse().ok()?;
    // cgroup v1 reports "no limit" as a huge page-aligned number.
    (n > 0 && n < (1 << 62)).then_some(n)
}

/// The cgroup v2 path and the v1 memory controller path from `/proc/self/cgroup`.
fn cgroup_paths(text: &str) -> (Option<&str>, Option<&str>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

/// `AT_PAGESZ` from `/proc/self/auxv` (pairs of native-endian machine words).
fn parse_auxv_page_size(auxv: &[u8]) -> Option<u64> {
    const AT_PAGESZ: usize = 6;
    let word = std::mem::size_of::<usize>();
    auxv.chunks_exact(word * 2).find_map(|pair| {
        let (k, v) = pair.split_at(word);
        let key = usize::from_ne_bytes(k.try_into().ok()?);
        let val = usize::from_ne_bytes(v.try_into().ok()?);
        (key == AT_PAGESZ && val > 0).then_some(val as u64)
    })
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// The admission gate: refuses while the last measurement is above the soft limit.
pub struct MemoryGate {
    used: AtomicU64,
    limits: Limits,
    refusals: Counter,
}

impl fmt::Debug for MemoryGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGate")
            .field("used", &self.used())
            .field("limits", &self.limits)
            .finish()
    }
}

impl MemoryGate {
    /// Last measured resident memory, in bytes.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

impl Admission for MemoryGate {
    fn check(&self) -> Result<(), Refusal> {
        let used = self.used();
        if used <= self.limits.soft {
            return Ok(());
        }
        self.refusals.increment(1);
        let which = if used > self.limits.hard { "hard" } else { "soft" };
        Err(Refusal::MemoryLimit(format!(
            "{} MiB in use, above the {which} limit of {} MiB",
            mib(used),
            mib(if used > self.limits.hard {
                self.limits.hard
            } else {
                self.limits.soft
            })
        )))
    }
}

/// Measures memory into a [`MemoryGate`].
pub struct MemoryLimiter {
    gate: Arc<MemoryGate>,
    source: Arc<dyn MemorySource>,
    usage: Gauge,
    above: bool,
    read_failed: bool,
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter").field("gate", &self.gate).finish()
    }
}

impl MemoryLimiter {
    /// A limiter with self-telemetry labelled `processor`/`pipeline`; takes a first measurement.
    pub fn new(limits: Limits, source: Arc<dyn MemorySource>, processor: &str, pipeline: &str) -> Self {
        describe_gauge!(
            USAGE_METRIC,
            Unit::Bytes,
            "Resident memory measured by the memory limiter."
        );
        describe_gauge!(
            SOFT_LIMIT_METRIC,
            Unit::Bytes,
            "Memory limiter soft limit: above it, data is refused."
        );
        describe_gauge!(HARD_LIMIT_METRIC, Unit::Bytes, "Memory limiter hard limit.");
        describe_counter!(
            REFUSALS_METRIC,
            Unit::Count,
            "Requests refused (retryable) because memory was above the soft limit."
        );
        let labels = [("processor", processor.to_string()), ("pipeline", pipeline.to_string())];
        gauge!(SOFT_LIMIT_METRIC, &labels).set(limits.soft as f64);
        gauge!(HARD_LIMIT_METRIC, &labels).set(limits.hard as f64);
        let mut limiter = Self {
            gate: Arc::new(MemoryGate {
                used: AtomicU64::new(0),
                limits,
                refusals: counter!(REFUSALS_METRIC, &labels),
            }),
            source,
            usage: gauge!(USAGE_METRIC, &labels),
            above: false,
            read_failed: false,
        };
        limiter.measure();
        limiter
    }

    pub fn gate(&self) -> Arc<MemoryGate> {
        self.gate.clone()
    }

    /// Reads resident memory and updates the gate; returns the value read.
    pub fn measure(&mut self) -> Option<u64> {
        let used = match self.source.resident_bytes() {
            Ok(u) => {
                self.read_failed = false;
                u
            }
            Err(e) => {
                if !self.read_failed {
                    tracing::warn!(error = %e, "memory_limiter: cannot read memory usage; keeping the last value");
                }
                self.read_failed = true;
                return None;
            }
        };
        self.gate.used.store(used, Ordering::Relaxed);
        self.usage.set(used as f64);
        let limits = self.gate.limits;
        let above = used > limits.soft;
        if above && !self.above {
            tracing::warn!(
                used_mib = mib(used),
                soft_limit_mib = mib(limits.soft),
                hard_limit_mib = mib(limits.hard),
                "memory usage above the soft limit: refusing data"
            );
        } else if !above && self.above {
            tracing::info!(
                used_mib = mib(used),
                soft_limit_mib = mib(limits.soft),
                "memory usage back below the soft limit: accepting data"
            );
        }
        self.above = above;
        Some(used)
    }
}

/// Makes `memory_limiter` processors.
#[derive(Clone)]
pub struct MemoryLimiterProcessorFactory {
    source: Arc<dyn MemorySource>,
}

impl Default for MemoryLimiterProcessorFactory {
    fn default() -> Self {
        Self::with_source(Arc::new(ProcMemory::default()))
    }
}

impl fmt::Debug for MemoryLimiterProcessorFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiterProcessorFactory").finish_non_exhaustive()
    }
}

impl MemoryLimiterProcessorFactory {
    /// A factory whose limiters read memory from `source`.
    pub fn with_source(source: Arc<dyn MemorySource>) -> Self {
        Self { source }
    }
}

impl ProcessorFactory for MemoryLimiterProcessorFactory {
    type Config = MemoryLimiterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Processor,
            stability: Stability::Beta,
            description: "Refuses data (retryable) while the process's memory is above a soft limit.",
            signals: &Signal::ALL,
            connects: &[],
        }
    }

    fn create(
        &self,
        config: MemoryLimiterConfig,
        ctx: &CreateContext<'_>,
    ) -> Result<Box<dyn Processor>, ComponentError> {
        let limits = config
            .limits(|| self.source.total_bytes())
            .map_err(|e| ComponentError::Config(e.to_string()))?;
        let pipeline = ctx.pipeline.map(|p| p.to_string()).unwrap_or_default();
        let limiter = MemoryLimiter::new(limits, self.source.clone(), &ctx.id.to_string(), &pipeline);
        tracing::debug!(
            processor = %ctx.id,
            pipeline = %pipeline,
            soft_limit_mib = mib(limits.soft),
            hard_limit_mib = mib(limits.hard),
            "memory_limiter created"
        );
        Ok(Box::new(MemoryLimiterProcessor {
            limiter,
            interval: config.check_interval.get(),
        }))
    }
}

/// A `memory_limiter` processor of one pipeline.
#[derive(Debug)]
pub struct MemoryLimiterProcessor {
    limiter: MemoryLimiter,
    interval: std::time::Duration,
}

impl MemoryLimiterProcessor {
    pub fn new(limiter: MemoryLimiter, interval: std::time::Duration) -> Self {
        Self { limiter, interval }
    }
}

impl Processor for MemoryLimiterProcessor {
    fn admission(&self) -> Option<Arc<dyn Admission>> {
        Some(self.limiter.gate())
    }

    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        Box::new(LimiterStage {
            limiter: self.limiter,
            interval: self.interval,
            tick: None,
        })
    }
}

/// Passes batches on unchanged; measures memory every `interval`, also while a batch waits
/// for room downstream (the driver polls [`Stage::wake`] then).
struct LimiterStage {
    limiter: MemoryLimiter,
    interval: std::time::Duration,
    tick: Option<tokio::time::Interval>,
}

impl Stage for LimiterStage {
    fn start(&mut self, _: &StageInfo) {
        let first = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(first, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.tick = Some(tick);
    }

    fn on_batch(&mut self, batch: Batch, out: &mut Out) {
        out.send(batch);
    }

    fn wake(&mut self) -> Wake<'_> {
        match self.tick.as_mut() {
            Some(t) => Box::pin(async move {
                t.tick().await;
            }),
            None => Box::pin(std::future::pending()),
        }
    }

    fn on_wake(&mut self, _: &mut Out) {
        self.limiter.measure();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::ack::{Ack, Delivery};
    use bizpilot_core::component::{Target, parse_config};
    use bizpilot_core::{Output, Payload, ProcessorContext, Traces};
    use std::time::Duration as StdDuration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// A memory source the test sets.
    #[derive(Default)]
    struct Fake {
        used: AtomicU64,
        total: AtomicU64,
    }

    impl MemorySource for Fake {
        fn resident_bytes(&self) -> io::Result<u64> {
            match self.used.load(Ordering::Relaxed) {
                u64::MAX => Err(io::Error::other("unreadable")),
                u => Ok(u),
            }
        }
        fn total_bytes(&self) -> io::Result<u64> {
            Ok(self.total.load(Ordering::Relaxed))
        }
    }

    fn yaml(s: &str) -> serde_yaml::Value {
        serde_yaml::from_str(s).unwrap()
    }

    fn errors(s: &str) -> Vec<FieldError> {
        parse_config::<MemoryLimiterConfig>(&yaml(s)).unwrap_err()
    }

    #[test]
    fn validation() {
        let c: MemoryLimiterConfig = parse_config(&yaml("limit_mib: 512")).unwrap();
        assert_eq!(c.check_interval.get(), StdDuration::from_secs(1));
        assert!(parse_config::<MemoryLimiterConfig>(&yaml("limit_percentage: 80\nspike_limit_percentage: 20")).is_ok());

        let e = parse_config::<MemoryLimiterConfig>(&serde_yaml::Value::Null).unwrap_err();
        assert_eq!(e[0].path, "limit_mib");
        assert!(e[0].message.contains("one of limit_mib or limit_percentage"));

        let e = errors("limit_mib: 512\nlimit_percentage: 50");
        assert_eq!(
            e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["limit_percentage"]
        );

        let e = errors("limit_mib: 100\nspike_limit_mib: 100");
        assert_eq!(e, vec![FieldError::new("spike_limit_mib", "must be < limit_mib (100)")]);

        let e = errors("limit_percentage: 50\nspike_limit_percentage: 60");
        assert_eq!(e[0].path, "spike_limit_percentage");

        let e = errors("limit_percentage: 150");
        assert_eq!(e[0].path, "limit_percentage");

        // Every problem at once.
        let e = errors("check_interval: 0\nlimit_mib: 10\nspike_limit_mib: 20\nspike_limit_percentage: 5");
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["check_interval", "spike_limit_mib", "spike_limit_percentage"]);

        let e = errors("limit_mb: 10");
        assert_eq!(e[0].path, "limit_mb");
        assert!(e[0].message.contains("limit_mb"), "{e:?}");
    }

    #[test]
    fn limits_from_mib_and_percentages() {
        let c = |s: &str| parse_config::<MemoryLimiterConfig>(&yaml(s)).unwrap();
        let never = || -> io::Result<u64> { panic!("total not needed") };
        assert_eq!(
            c("limit_mib: 100").limits(never).unwrap(),
            Limits {
                hard: 100 * MIB,
                soft: 80 * MIB
            }
        );
        assert_eq!(
            c("limit_mib: 100\nspike_limit_mib: 30").limits(never).unwrap(),
            Limits {
                hard: 100 * MIB,
                soft: 70 * MIB
            }
        );
        let total = || Ok(1000 * MIB);
        assert_eq!(
            c("limit_percentage: 80\nspike_limit_percentage: 20")
                .limits(total)
                .unwrap(),
            Limits {
                hard: 800 * MIB,
                soft: 600 * MIB
            }
        );
        assert_eq!(
            c("limit_percentage: 50").limits(total).unwrap(),
            Limits {
                hard: 500 * MIB,
                soft: 400 * MIB
            }
        );
        let failing = || Err(io::Error::other("no meminfo"));
        assert!(matches!(
            c("limit_percentage: 50").limits(failing),
            Err(LimitError::Total(_))
        ));
    }

    #[test]
    fn gate_refuses_above_the_soft_limit_only() {
        let src = Arc::new(Fake::default());
        let limits = Limits {
            hard: 100 * MIB,
            soft: 80 * MIB,
        };
        src.used.store(10 * MIB, Ordering::Relaxed);
        let mut l = MemoryLimiter::new(limits, src.clone(), "memory_limiter", "traces");
        let gate = l.gate();
        assert_eq!(gate.used(), 10 * MIB, "measured at creation");
        assert!(gate.check().is_ok());

        src.used.store(80 * MIB, Ordering::Relaxed);
        l.measure();
        assert!(gate.check().is_ok(), "at the soft limit is still fine");

        src.used.store(90 * MIB, Ordering::Relaxed);
        assert_eq!(l.measure(), Some(90 * MIB));
        let r = gate.check().unwrap_err();
        assert!(
            matches!(&r, Refusal::MemoryLimit(m) if m.contains("soft limit of 80 MiB")),
            "{r:?}"
        );
        assert_eq!(r.reason(), "memory_limit");

        src.used.store(120 * MIB, Ordering::Relaxed);
        l.measure();
        assert!(matches!(gate.check(), Err(Refusal::MemoryLimit(m)) if m.contains("hard limit")));

        // A failed read keeps the last value.
        src.used.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(l.measure(), None);
        assert!(gate.check().is_err());

        src.used.store(50 * MIB, Ordering::Relaxed);
        l.measure();
        assert!(gate.check().is_ok());
    }

    fn traces(n: usize) -> Batch {
        use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
        use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
        Batch::new(Payload::Traces(Traces::from_message(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })))
    }

    #[tokio::test(start_paused = true)]
    async fn processor_measures_on_its_interval_and_passes_data_through() {
        let src = Arc::new(Fake::default());
        src.used.store(10 * MIB, Ordering::Relaxed);
        let factory = MemoryLimiterProcessorFactory::with_source(src.clone());
        let cfg: MemoryLimiterConfig = parse_config(&yaml("check_interval: 100ms\nlimit_mib: 100")).unwrap();
        let id = "memory_limiter".parse().unwrap();
        let pipeline = "traces".parse().unwrap();
        let ext = bizpilot_core::Extensions::default();
        let ctx = CreateContext {
            id: &id,
            pipeline: Some(&pipeline),
            signals: [Signal::Traces].into(),
            output_signals: Default::default(),
            extensions: &ext,
        };
        let proc_ = factory.create(cfg, &ctx).unwrap();
        let gate = proc_.admission().expect("memory_limiter has a gate");

        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        // The gate also sits on the output here, as the graph puts it in front of the pipeline.
        let entry = Output::new(
            vec![Target {
                name: "in".into(),
                sender: in_tx,
            }],
            vec![gate.clone()],
        );
        let mut running = proc_
            .start(ProcessorContext {
                id,
                pipeline,
                input: in_rx,
                output: Output::new(
                    vec![Target {
                        name: "out".into(),
                        sender: out_tx,
                    }],
                    Vec::new(),
                ),
                abort: CancellationToken::new(),
            })
            .unwrap();

        let (ack, rx) = Ack::channel();
        let mut b = traces(3);
        b.acks.push(ack);
        entry.send_with_deadline(b, StdDuration::from_secs(1)).await.unwrap();
        let got = out_rx.recv().await.unwrap();
        assert_eq!(got.items(), 3);
        drop(got);
        assert_eq!(rx.await.unwrap(), Delivery::Delivered);

        src.used.store(95 * MIB, Ordering::Relaxed);
        assert!(gate.check().is_ok(), "not measured yet");
        tokio::time::sleep(StdDuration::from_millis(150)).await;
        let refused = entry.send_with_deadline(traces(1), StdDuration::from_secs(1)).await;
        assert!(matches!(refused, Err(Refusal::MemoryLimit(_))), "{refused:?}");

        src.used.store(20 * MIB, Ordering::Relaxed);
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        entry
            .send_with_deadline(traces(1), StdDuration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(out_rx.recv().await.unwrap().items(), 1);

        drop(entry);
        running.join().await.unwrap();
        assert!(out_rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn abort_fails_data_waiting_for_room() {
        let src = Arc::new(Fake::default());
        let limiter = MemoryLimiter::new(Limits { hard: MIB, soft: MIB }, src, "m", "traces");
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let abort = CancellationToken::new();
        let proc_: Box<dyn Processor> = Box::new(MemoryLimiterProcessor::new(limiter, StdDuration::from_secs(1)));
        let mut running = proc_
            .start(ProcessorContext {
                id: "m".parse().unwrap(),
                pipeline: "traces".parse().unwrap(),
                input: in_rx,
                output: Output::new(
                    vec![Target {
                        name: "out".into(),
                        sender: out_tx,
                    }],
                    Vec::new(),
                ),
                abort: abort.clone(),
            })
            .unwrap();
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (ack, rx) = Ack::channel();
            let mut b = traces(1);
            b.acks.push(ack);
            in_tx.send(b).await.unwrap();
            rxs.push(rx);
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        abort.cancel();
        running.join().await.unwrap();
        // The first is in the (never read) output channel; the others failed.
        let mut rxs = rxs.into_iter();
        let mut first = rxs.next().unwrap();
        assert!(first.try_recv().is_err());
        for rx in rxs {
            assert_eq!(rx.await.unwrap(), Delivery::Failed);
        }
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(parse_statm_resident("12345 678 90 1 0 200 0\n"), Some(678));
        assert_eq!(parse_statm_resident(""), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:       16318412 kB\nMemFree: 1 kB\n"),
            Some(16318412 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None, "v1 unlimited");
        assert_eq!(
            cgroup_paths("0::/system.slice/x.service\n"),
            (Some("/system.slice/x.service"), None)
        );
        assert_eq!(
            cgroup_paths("12:cpu,cpuacct:/a\n4:memory:/docker/abc\n"),
            (None, Some("/docker/abc"))
        );
        let word = std::mem::size_of::<usize>();
        let mut auxv = Vec::new();
        for (k, v) in [(3usize, 64usize), (6, 16384), (0, 0)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv.len(), 6 * word);
        assert_eq!(parse_auxv_page_size(&auxv), Some(16384));
    }

    #[test]
    fn proc_memory_reads_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w("proc/self/statm", "1000 100 0 0 0 0 0\n");
        w("proc/meminfo", "MemTotal: 1048576 kB\n");
        let m = ProcMemory::with_root(dir.path());
        assert_eq!(m.resident_bytes().unwrap(), 100 * 4096, "page size defaults to 4096");
        assert_eq!(m.total_bytes().unwrap(), 1024 * MIB, "no cgroup: total RAM");
        w("proc/self/cgroup", "0::/app\n");
        w("sys/fs/cgroup/app/memory.max", "268435456\n");
        assert_eq!(m.total_bytes().unwrap(), 256 * MIB, "cgroup v2 limit");
        w("sys/fs/cgroup/app/memory.max", "max\n");
        assert_eq!(m.total_bytes().unwrap(), 1024 * MIB);
    }

    #[test]
    fn real_proc_memory_is_plausible() {
        let m = ProcMemory::default();
        if let Ok(rss) = m.resident_bytes() {
            assert!(rss > MIB, "{rss}");
            let total = m.total_bytes().unwrap();
            assert!(total > rss, "{total} > {rss}");
        }
    }
}
