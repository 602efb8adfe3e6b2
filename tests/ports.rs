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

/// A port taken by someone else between the pick and bizpilot's bind: the start fails with a message that says
/// so, not a bare exit.
#[test]
fn a_start_on_a_taken_port_says_so() {
    let (grpc, admin) = (free_port(), common::free_addr());
    // Someone else holds the OTLP port.
    let _held = std::net::TcpListener::bind(("127.0.0.1", grpc)).expect("hold the port");
    let config = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{grpc}\n\
         exporters:\n  debug: {{}}\n\
         service:\n  telemetry:\n    metrics:\n      address: {admin}\n  pipelines:\n    traces:\n      \
         receivers: [otlp]\n      exporters: [debug]\n"
    );
    let Err(panic) = std::panic::catch_unwind(|| common::Bizpilot::start(&config, admin)) else {
        panic!("bizpilot started on a port held by someone else");
    };
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("was taken by another process"),
        "the failure names the taken port: {msg}"
    );
}
