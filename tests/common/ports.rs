//! Ports for a test's servers (std only, so that tests outside this crate can include it: `crates/kafka/tests`
//! reaches it through `tests/kafka_harness.rs`). Why and how: the module doc of `tests/common/mod.rs`, "Ports".

use std::net::TcpListener;
use std::sync::Mutex;

/// A loopback port for a server of the test to bind: free now, outside the kernel's ephemeral range and never
/// handed out before in this process (see the module doc, "Ports").
pub fn free_port() -> u16 {
    let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let a = ports.get_or_insert_with(PortAllocator::new);
    a.take(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .unwrap_or_else(|| panic!("no free loopback port left in {:?}", a.range))
}

static PORTS: Mutex<Option<PortAllocator>> = Mutex::new(None);

/// Hands out ports of `range` round-robin from a per-process starting point, each at most once.
pub struct PortAllocator {
    /// Half-open: `start..end`.
    pub range: (u16, u16),
    next: u16,
    given: std::collections::HashSet<u16>,
}

impl PortAllocator {
    /// Over [`test_port_range`], starting at a place of its own (PID and clock).
    pub fn new() -> Self {
        let range =
            test_port_range(&std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = u64::from(std::process::id()).wrapping_mul(7919) ^ u64::from(nanos);
        Self::starting_at(range, seed)
    }

    /// Over `range`, starting at `seed` folded into it.
    pub fn starting_at(range: (u16, u16), seed: u64) -> Self {
        let len = u64::from(range.1.saturating_sub(range.0)).max(1);
        // `seed % len < len <= u16::MAX`, so the sum stays in `range`.
        let next = range.0 + u16::try_from(seed % len).unwrap_or(0);
        PortAllocator {
            range,
            next,
            given: Default::default(),
        }
    }

    /// The next port not handed out before for which `free` holds; `None` once every port of the range is taken.
    pub fn take(&mut self, free: impl Fn(u16) -> bool) -> Option<u16> {
        let (start, end) = self.range;
        for _ in start..end {
            let p = self.next;
            self.next = if p + 1 >= end { start } else { p + 1 };
            if !self.given.contains(&p) && free(p) {
                self.given.insert(p);
                return Some(p);
            }
        }
        None
    }
}

impl Default for PortAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// Where test servers get their ports, given the kernel's ephemeral range (the text of
/// `/proc/sys/net/ipv4/ip_local_port_range`, "low high"): from 15000 (above the defaults a shipped config may
/// bind, such as 13133, 9090, 4317) up to the ephemeral range, else above it; if the ephemeral range leaves
/// neither 1,000 ports, all of 15000–65535 (then only the bind check and the set protect a port).
pub fn test_port_range(ip_local_port_range: &str) -> (u16, u16) {
    const FLOOR: u16 = 15_000;
    let mut it = ip_local_port_range.split_whitespace().map(|v| v.parse::<u16>());
    let (low, high) = match (it.next(), it.next()) {
        (Some(Ok(l)), Some(Ok(h))) if l <= h => (l, h),
        _ => (32_768, 60_999),
    };
    if low >= FLOOR + 1_000 {
        (FLOOR, low)
    } else if high <= u16::MAX - 1_000 {
        (high.max(FLOOR - 1) + 1, u16::MAX)
    } else {
        (FLOOR, u16::MAX)
    }
}
