//! The e2e tests' port allocator (`tests/common`, "Ports"): no port is handed out twice in one test binary, however
//! many tests ask at once, and none comes from the kernel's ephemeral range.

mod common;

use common::{PortAllocator, free_port, test_port_range};
use std::collections::HashSet;

#[test]
fn no_port_is_handed_out_twice_across_threads() {
    const THREADS: usize = 8;
    const EACH: usize = 200;
    let got: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| (0..EACH).map(|_| free_port()).collect::<Vec<u16>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
    });
    let distinct: HashSet<u16> = got.iter().copied().collect();
    assert_eq!(got.len(), THREADS * EACH);
    assert_eq!(distinct.len(), got.len(), "a port was handed out twice");
    let (low, high) =
        test_port_range(&std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default());
    assert!(
        got.iter().all(|p| (low..high).contains(p)),
        "every port in {low}..{high}"
    );
}

#[test]
fn a_port_in_use_is_skipped_and_a_full_range_ends() {
    let mut a = PortAllocator::starting_at((20_000, 20_005), 2);
    // 20002 (the starting point) is "in use": the allocator goes on to the next and wraps around.
    let taken: Vec<Option<u16>> = (0..5).map(|_| a.take(|p| p != 20_002)).collect();
    assert_eq!(
        taken,
        vec![Some(20_003), Some(20_004), Some(20_000), Some(20_001), None]
    );
    // Once 20002 is free it is handed out, once.
    assert_eq!(a.take(|_| true), Some(20_002));
    assert_eq!(a.take(|_| true), None);
}

#[test]
fn the_range_avoids_the_kernels_ephemeral_ports() {
    assert_eq!(test_port_range("32768\t60999\n"), (15_000, 32_768));
    // An ephemeral range from low down: the ports above it.
    assert_eq!(test_port_range("10000 40000"), (40_001, 65_535));
    // No room on either side: all of 15000.. (the bind check and the set still hold).
    assert_eq!(test_port_range("1024 65535"), (15_000, 65_535));
    // Unreadable: Linux's default range.
    assert_eq!(test_port_range(""), (15_000, 32_768));
}
