//! The in-kernel repeat-RST check's socket scope: a window count like the peer and port scopes
//! (at most one alert per window), never the socket's lifetime count. A listening socket
//! answers each stray ACK with an RST of its own and stays open, so one socket collects RSTs
//! at the times the test chooses; nstat counts them independently.
use std::{net::TcpListener, time::Duration};

use crate::{
    common::{can_run_kernel_tests, netns::delta, netns::TestNetns, tracer::Tracer, workload},
    KERNEL,
};

/// RSTs, from one listener each, at the given offsets (ms) from the start; returns the
/// listeners' cookies in order.
fn rsts_at(schedules: Vec<(u16, Vec<u64>)>) -> Vec<u64> {
    let handles: Vec<_> = schedules
        .into_iter()
        .map(|(port, offsets)| {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            let cookie = workload::cookie(&listener);
            let start = std::time::Instant::now();
            std::thread::spawn(move || {
                for at in offsets {
                    let due = start + Duration::from_millis(at);
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                    // Ephemeral source port: the peer scope keys it by address alone.
                    workload::stray_ack(40_000, port);
                }
                drop(listener);
                cookie
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn socket_scope_repeat_rst_counts_within_a_window_not_over_the_socket_lifetime() {
    if !can_run_kernel_tests("repeat_rst_socket_scope") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("repeat");
    // The default window: 1 s.
    let tracer = Tracer::start(&ns.name, &[]);
    let before = ns.nstat();
    // Spread: three RSTs 1.5 s apart, never two within a window. Burst: two within 100 ms.
    // Sustained: one every 600 ms, so two in each of two windows ([0, 1 s) and [1.2, 2.2 s)).
    let cookies = ns.enter(|| {
        rsts_at(vec![
            (7101, vec![0, 1500, 3000]),
            (7102, vec![0, 100]),
            (7103, vec![0, 600, 1200, 1800]),
        ])
    });
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();
    assert_eq!(
        delta(&before, &after, "TcpOutRsts"),
        9,
        "the listeners' RSTs (nstat)"
    );
    let (spread, burst, sustained) = (cookies[0], cookies[1], cookies[2]);
    let sent_by = |c: u64| {
        trace
            .of_kind("rst_sent")
            .filter(|e| e["cookie"].as_u64() == Some(c))
            .count()
    };
    assert_eq!(
        (sent_by(spread), sent_by(burst), sent_by(sustained)),
        (3, 2, 4),
        "RSTs sent per listener"
    );
    let alerts = |c: u64| -> Vec<u64> {
        trace
            .of_kind("repeat_rst")
            .filter(|e| e["repeat_scope"] == "socket" && e["cookie"].as_u64() == Some(c))
            .map(|e| e["repeat_count"].as_u64().unwrap())
            .collect()
    };
    eprintln!(
        "== socket-scope alerts: spread {:?}, burst {:?}, sustained {:?}",
        alerts(spread),
        alerts(burst),
        alerts(sustained)
    );
    assert_eq!(
        alerts(spread),
        Vec::<u64>::new(),
        "RSTs spread over more than the window are not a burst"
    );
    assert_eq!(alerts(burst), [2], "two RSTs within the window");
    assert_eq!(
        alerts(sustained),
        [2, 2],
        "once per window, with the window's count"
    );
    // Nine RSTs from one peer address and three service ports: under both thresholds.
    assert_eq!(
        trace.of_kind("repeat_rst").count(),
        3,
        "no peer or port alert"
    );
}
